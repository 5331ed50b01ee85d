//! Sentence embeddings for the `cosine` metric of `text_similarity` graders: the [`Embedder`]
//! seam, a client for OpenAI-compatible embeddings endpoints ([`RemoteEmbedder`]), and the
//! cosine itself ([`cosine_similarity`]).
//!
//! This crate runs no model: the local default, all-MiniLM-L6-v2, lives in `rft-model` (which
//! owns everything tensor-shaped), and the `rft` binary plugs it in through
//! [`crate::GraderContext::embedder`]. A remote endpoint is configured by the environment
//! (docs/graders.md, "Embeddings"): `RFT_EMBEDDINGS_BASE_URL`, `RFT_EMBEDDINGS_API_KEY` and
//! `RFT_EMBEDDINGS_MODEL` (default [`DEFAULT_EMBEDDINGS_MODEL`], the model OpenAI's graders use).
//!
//! The HTTP client is blocking, like the judge's ([`crate::judge`]): one grade makes one
//! request, with a per-attempt timeout and a few backed-off retries on 429, 5xx and connection
//! failures.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::{self, excerpt, plural, retry_after};

/// The embeddings model requested from a remote endpoint when `RFT_EMBEDDINGS_MODEL` is unset:
/// the one OpenAI documents for its `cosine` metric.
pub const DEFAULT_EMBEDDINGS_MODEL: &str = "text-embedding-3-large";

/// The most texts sent in one embeddings request (OpenAI accepts 2048).
const MAX_TEXTS_PER_REQUEST: usize = 512;

/// The largest response body read; 512 vectors of 3072 floats in JSON are about 30 MB.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// The most of an error response's body kept in an error message.
const MAX_DETAILS_CHARS: usize = 2000;

/// Turns texts into vectors, for the `cosine` metric.
///
/// Implementations must return one vector per text, in order, all of one length, and be
/// callable from many grading threads at once.
pub trait Embedder: Send + Sync + fmt::Debug {
    /// One embedding per text, in the order of `texts`.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// The model's name, for logs and error messages.
    fn name(&self) -> &str;

    /// Checks what can be checked without embedding anything (a URL's scheme, a missing API
    /// key), so a misconfiguration fails when a grader is compiled rather than on every
    /// sample. The default accepts.
    fn check(&self) -> Result<(), EmbedError> {
        Ok(())
    }
}

/// Why texts could not be embedded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    /// The base URL is not an `http://` or `https://` URL.
    #[error("the embeddings base URL {0:?} is not an http:// or https:// URL; set RFT_EMBEDDINGS_BASE_URL to e.g. https://api.openai.com/v1 or http://localhost:8000/v1")]
    BadBaseUrl(String),
    /// OpenAI's API is configured, but no key.
    #[error("the embeddings endpoint {0} needs an API key: set RFT_EMBEDDINGS_API_KEY (or OPENAI_API_KEY)")]
    MissingApiKey(String),
    /// The endpoint answered with an error status.
    #[error("HTTP {status} from {endpoint} ({attempts} attempt{s}): {body}", s = plural(*attempts))]
    Status {
        /// The HTTP status.
        status: u16,
        /// The URL called.
        endpoint: String,
        /// How many attempts were made.
        attempts: u32,
        /// The start of the response body.
        body: String,
    },
    /// The request got no answer: connection refused or reset, timeout, TLS failure.
    #[error("calling {endpoint} failed ({attempts} attempt{s}): {message}", s = plural(*attempts))]
    Transport {
        /// The URL called.
        endpoint: String,
        /// How many attempts were made.
        attempts: u32,
        /// What went wrong.
        message: String,
    },
    /// The endpoint answered 2xx with something that is not the embeddings asked for.
    #[error("{endpoint} answered with something that is not an embeddings response: {message}")]
    Malformed {
        /// The URL called.
        endpoint: String,
        /// What is wrong with the answer.
        message: String,
    },
    /// A local model failed (its files, its tokenizer, a tensor operation).
    #[error("embedding model {model}: {message}")]
    Model {
        /// The model's name.
        model: String,
        /// What went wrong.
        message: String,
    },
}

/// The cosine of the angle between two embeddings, as sentence-transformers'
/// `util.cos_sim(a, b)` computes it: each vector divided by its norm (at least 1e-12, so a zero
/// vector gives 0), then the dot product; in f64. `None` when the lengths differ, a vector is
/// empty, or the result is not finite.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let norm = |v: &[f32]| {
        v.iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let cosine = dot / (norm(a) * norm(b));
    cosine.is_finite().then_some(cosine)
}

/// Where a remote embeddings endpoint is and how patiently to call it.
#[derive(Clone)]
pub struct EmbeddingsConfig {
    /// The API root, e.g. `https://api.openai.com/v1`; requests go to `{base_url}/embeddings`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// The `model` of the request.
    pub model: String,
    /// The longest one HTTP attempt may take (default 60 s).
    pub timeout: Duration,
    /// Retries after a failed attempt (429, 5xx, timeout, connection error); default 3.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, with jitter (default 0.5 s).
    pub initial_backoff: Duration,
    /// The longest computed backoff (default 8 s).
    pub max_backoff: Duration,
    /// The longest wait a `Retry-After` header can ask for (default 30 s).
    pub max_retry_after: Duration,
}

// The API key must never reach a log line.
impl fmt::Debug for EmbeddingsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddingsConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl EmbeddingsConfig {
    /// A configuration for `base_url` with the defaults: no key, [`DEFAULT_EMBEDDINGS_MODEL`].
    pub fn new(base_url: &str) -> EmbeddingsConfig {
        EmbeddingsConfig {
            base_url: base_url.to_owned(),
            api_key: None,
            model: DEFAULT_EMBEDDINGS_MODEL.to_owned(),
            timeout: Duration::from_secs(60),
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }

    /// The configuration the environment asks for: `None` unless `RFT_EMBEDDINGS_BASE_URL` is
    /// set. The key is `RFT_EMBEDDINGS_API_KEY`; for OpenAI's own API (`api.openai.com`),
    /// `OPENAI_API_KEY` when that is unset (never for other hosts, which must not receive an
    /// OpenAI key by accident). The model is `RFT_EMBEDDINGS_MODEL`, else
    /// [`DEFAULT_EMBEDDINGS_MODEL`].
    pub fn from_env() -> Option<EmbeddingsConfig> {
        let text = |key: &str| {
            std::env::var(key)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = EmbeddingsConfig::new(&text("RFT_EMBEDDINGS_BASE_URL")?);
        config.api_key = text("RFT_EMBEDDINGS_API_KEY");
        if config.api_key.is_none() && config.is_openai() {
            config.api_key = text("OPENAI_API_KEY");
        }
        if let Some(model) = text("RFT_EMBEDDINGS_MODEL") {
            config.model = model;
        }
        Some(config)
    }

    /// `{base_url}/embeddings`.
    pub fn endpoint(&self) -> String {
        format!("{}/embeddings", self.base_url.trim().trim_end_matches('/'))
    }

    /// The host of the base URL, when it is an `http(s)://` URL.
    fn host(&self) -> Option<&str> {
        let url = self.base_url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .filter(|rest| !rest.is_empty() && !rest.starts_with('/'))?;
        rest.split(['/', ':']).next()
    }

    fn is_openai(&self) -> bool {
        self.host()
            .is_some_and(|host| host.eq_ignore_ascii_case("api.openai.com"))
    }
}

/// An OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`). Cheap to create:
/// no connection is made until the first call.
pub struct RemoteEmbedder {
    config: EmbeddingsConfig,
    endpoint: String,
    agent: ureq::Agent,
}

impl fmt::Debug for RemoteEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteEmbedder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RemoteEmbedder {
    /// A client with this configuration.
    pub fn new(config: EmbeddingsConfig) -> RemoteEmbedder {
        let agent = http::agent_config(config.timeout).build().new_agent();
        RemoteEmbedder {
            endpoint: config.endpoint(),
            config,
            agent,
        }
    }

    /// The process-wide client the environment configures ([`EmbeddingsConfig::from_env`]);
    /// `None` when `RFT_EMBEDDINGS_BASE_URL` is unset.
    pub fn shared() -> Option<Arc<dyn Embedder>> {
        static SHARED: OnceLock<Option<Arc<dyn Embedder>>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                EmbeddingsConfig::from_env()
                    .map(|config| Arc::new(RemoteEmbedder::new(config)) as Arc<dyn Embedder>)
            })
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EmbeddingsConfig {
        &self.config
    }

    fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = json!({
            "model": self.config.model,
            "input": texts,
            "encoding_format": "float",
        })
        .to_string();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(&body) {
                Ok(text) => return self.parse(&text, texts.len()),
                Err(failure) => failure,
            };
            let wait = match failure.retry_after {
                Some(asked) => asked.min(self.config.max_retry_after),
                None => self.backoff(attempt),
            };
            if !failure.transient || attempt > self.config.max_retries {
                return Err(failure.into_error(&self.endpoint, attempt));
            }
            tracing::debug!(
                "embeddings attempt {attempt} failed ({}); retrying in {wait:?}",
                failure.message
            );
            std::thread::sleep(wait);
        }
    }

    fn attempt(&self, body: &str) -> Result<String, Failure> {
        let mut request = self
            .agent
            .post(&self.endpoint)
            .header("content-type", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let transport = |err: ureq::Error| Failure {
            status: None,
            message: match &err {
                ureq::Error::Timeout(_) => {
                    format!("no complete answer within {:?}", self.config.timeout)
                }
                other => other.to_string(),
            },
            retry_after: None,
            // A host that does not resolve or a bad certificate will not get better by retrying.
            transient: matches!(
                err,
                ureq::Error::Timeout(_)
                    | ureq::Error::Io(_)
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Protocol(_)
                    | ureq::Error::BodyStalled
            ),
        };
        let mut response = request.send(body.as_bytes()).map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string()
            .map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        Err(Failure {
            status: Some(status),
            message: excerpt(&text, MAX_DETAILS_CHARS),
            retry_after,
            // 408 (request timeout) and 409 (OpenAI's "conflict, try again") are transient too.
            transient: status == 429 || status == 408 || status == 409 || status >= 500,
        })
    }

    /// `{"data": [{"index": i, "embedding": [...]}, ...]}` → vectors in input order.
    fn parse(&self, text: &str, expected: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let malformed = |message: String| EmbedError::Malformed {
            endpoint: self.endpoint.clone(),
            message,
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| malformed(format!("{e}; the body starts {:?}", excerpt(text, 200))))?;
        let data = value
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("it has no `data` array".to_owned()))?;
        if data.len() != expected {
            return Err(malformed(format!(
                "{} embeddings for {expected} inputs",
                data.len()
            )));
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (position, item) in data.iter().enumerate() {
            // `index` is optional in some servers' answers; the position then stands for it.
            let index = match item.get("index") {
                None => position,
                Some(index) => index
                    .as_u64()
                    .map(|i| i as usize)
                    .filter(|i| *i < expected)
                    .ok_or_else(|| malformed(format!("`data[{position}].index` is {index}")))?,
            };
            let numbers = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    malformed(format!("`data[{position}].embedding` is not an array"))
                })?;
            let vector = numbers
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| {
                    malformed(format!(
                        "`data[{position}].embedding` holds something other than finite numbers"
                    ))
                })?;
            if vectors[index].replace(vector).is_some() {
                return Err(malformed(format!("index {index} appears twice")));
            }
        }
        let vectors: Vec<Vec<f32>> = vectors.into_iter().flatten().collect();
        let dimension = vectors.first().map_or(0, Vec::len);
        if dimension == 0 || vectors.iter().any(|v| v.len() != dimension) {
            return Err(malformed(
                "the embeddings are empty or of different lengths".to_owned(),
            ));
        }
        Ok(vectors)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        http::backoff(
            self.config.initial_backoff,
            self.config.max_backoff,
            attempt,
        )
    }
}

impl Embedder for RemoteEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let start = Instant::now();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_TEXTS_PER_REQUEST) {
            out.extend(self.request(chunk)?);
        }
        tracing::trace!("embedded {} texts in {:?}", texts.len(), start.elapsed());
        Ok(out)
    }

    fn name(&self) -> &str {
        &self.config.model
    }

    fn check(&self) -> Result<(), EmbedError> {
        if self.config.host().is_none() {
            return Err(EmbedError::BadBaseUrl(self.config.base_url.clone()));
        }
        if self.config.is_openai() && self.config.api_key.is_none() {
            return Err(EmbedError::MissingApiKey(self.endpoint.clone()));
        }
        Ok(())
    }
}

/// One failed attempt.
struct Failure {
    status: Option<u16>,
    message: String,
    retry_after: Option<Duration>,
    transient: bool,
}

impl Failure {
    fn into_error(self, endpoint: &str, attempts: u32) -> EmbedError {
        match self.status {
            Some(status) => EmbedError::Status {
                status,
                endpoint: endpoint.to_owned(),
                attempts,
                body: self.message,
            },
            None => EmbedError::Transport {
                endpoint: endpoint.to_owned(),
                attempts,
                message: self.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_matches_cos_sim() {
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[0.0, 2.0]), Some(0.0));
        let c = cosine_similarity(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap_or(0.0);
        assert!((c - 1.0).abs() < 1e-12);
        let c = cosine_similarity(&[1.0, 0.0], &[-3.0, 0.0]).unwrap_or(0.0);
        assert!((c + 1.0).abs() < 1e-12);
        // cos_sim clamps the norm at 1e-12, so a zero vector is orthogonal to everything.
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), Some(0.0));
        assert_eq!(cosine_similarity(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(cosine_similarity(&[], &[]), None);
        assert_eq!(cosine_similarity(&[f32::MAX; 4], &[f32::MAX; 4]), Some(1.0));
    }

    #[test]
    fn checks_the_url_and_the_openai_key() {
        let check = |url: &str, key: Option<&str>| {
            let mut config = EmbeddingsConfig::new(url);
            config.api_key = key.map(str::to_owned);
            RemoteEmbedder::new(config).check()
        };
        assert!(matches!(
            check("localhost:8000/v1", None),
            Err(EmbedError::BadBaseUrl(_))
        ));
        assert!(matches!(
            check("https://api.openai.com/v1", None),
            Err(EmbedError::MissingApiKey(_))
        ));
        assert!(check("https://api.openai.com/v1", Some("sk-test")).is_ok());
        assert!(check("http://127.0.0.1:8000/v1/", None).is_ok());
        assert_eq!(
            EmbeddingsConfig::new("http://h/v1/").endpoint(),
            "http://h/v1/embeddings"
        );
    }

    #[test]
    fn the_key_never_reaches_debug_output() {
        let mut config = EmbeddingsConfig::new("https://api.openai.com/v1");
        config.api_key = Some("sk-secret".to_owned());
        let shown = format!("{:?}", RemoteEmbedder::new(config));
        assert!(
            !shown.contains("sk-secret") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
