//! The judge client of model graders: one OpenAI-compatible chat-completions endpoint
//! (`POST {base_url}/chat/completions`), called with a blocking HTTP client.
//!
//! Grading has no async runtime, and a judge call is a single request/response, so a blocking
//! client with a bounded number of calls in flight is all it needs. The client bounds how long a
//! grade can wait on a judge that is slow or down: each attempt has a timeout, retries are few
//! and backed off, and the whole call has a deadline (docs/graders.md, "Model graders").
//!
//! Configuration comes from [`JudgeConfig`] (code) or [`JudgeConfig::from_env`] (operators):
//! `RFT_JUDGE_BASE_URL`, `RFT_JUDGE_API_KEY` (else `OPENAI_API_KEY`),
//! `RFT_JUDGE_MAX_CONCURRENCY`, `RFT_JUDGE_TIMEOUT_SECS`, `RFT_JUDGE_MAX_RETRIES`,
//! `RFT_JUDGE_DEADLINE_SECS`.

pub(crate) mod model;

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rft_types::TokenUsage;
use serde_json::Value;

use crate::http::{self, plural, retry_after};

/// The endpoint used when none is configured.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The most of an error response's body kept in error details.
const MAX_DETAILS_CHARS: usize = 2000;

/// The largest response body read from a judge; a chat completion is a few kilobytes.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Where the judge is and how patiently to call it. Build one with [`JudgeConfig::from_env`]
/// or [`JudgeConfig::default`] and adjust fields.
#[derive(Clone)]
pub struct JudgeConfig {
    /// The API root, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`;
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set; local servers usually need none.
    pub api_key: Option<String>,
    /// The most judge calls in flight at once through this client (default 16). Also the size
    /// of the thread pool [`crate::CompiledGrader::grade_all`] uses for model graders.
    pub max_concurrency: usize,
    /// The longest one HTTP attempt may take, connecting to reading the last byte (default 60 s).
    pub timeout: Duration,
    /// Retries after a failed attempt (429, 5xx, timeout, connection error); default 3.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, with jitter (default 0.5 s).
    pub initial_backoff: Duration,
    /// The longest computed backoff (default 8 s).
    pub max_backoff: Duration,
    /// The longest wait a `Retry-After` header can ask for (default 30 s).
    pub max_retry_after: Duration,
    /// The longest one judge call may take, retries and backoff included (default 180 s):
    /// no attempt starts after it, and an attempt's timeout is cut to what remains.
    pub deadline: Duration,
}

impl Default for JudgeConfig {
    /// The defaults, without reading the environment (and so without an API key).
    fn default() -> JudgeConfig {
        JudgeConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            max_concurrency: 16,
            timeout: Duration::from_secs(60),
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
            deadline: Duration::from_secs(180),
        }
    }
}

// The API key must never reach a log line.
impl fmt::Debug for JudgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JudgeConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_concurrency", &self.max_concurrency)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl JudgeConfig {
    /// The defaults plus the environment: `RFT_JUDGE_BASE_URL`, `RFT_JUDGE_API_KEY` (falling
    /// back to `OPENAI_API_KEY`), `RFT_JUDGE_MAX_CONCURRENCY`, `RFT_JUDGE_TIMEOUT_SECS`,
    /// `RFT_JUDGE_MAX_RETRIES`, `RFT_JUDGE_DEADLINE_SECS`. Values that do not parse are
    /// ignored with a warning; a zero timeout or deadline is ignored.
    pub fn from_env() -> JudgeConfig {
        let mut config = JudgeConfig::default();
        let text = |key: &str| {
            std::env::var(key)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number = |key: &str| {
            let value = text(key)?;
            match value.parse::<f64>() {
                Ok(n) if n.is_finite() && n >= 0.0 => Some(n),
                _ => {
                    tracing::warn!("ignoring {key}={value:?}: expected a non-negative number");
                    None
                }
            }
        };
        if let Some(url) = text("RFT_JUDGE_BASE_URL") {
            config.base_url = url;
        }
        config.api_key = text("RFT_JUDGE_API_KEY").or_else(|| text("OPENAI_API_KEY"));
        if let Some(n) = number("RFT_JUDGE_MAX_CONCURRENCY") {
            config.max_concurrency = (n as usize).max(1);
        }
        // A zero timeout or deadline would fail every call without trying it.
        if let Some(n) = number("RFT_JUDGE_TIMEOUT_SECS").filter(|n| *n > 0.0) {
            config.timeout = Duration::from_secs_f64(n);
        }
        if let Some(n) = number("RFT_JUDGE_MAX_RETRIES") {
            config.max_retries = n as u32;
        }
        if let Some(n) = number("RFT_JUDGE_DEADLINE_SECS").filter(|n| *n > 0.0) {
            config.deadline = Duration::from_secs_f64(n);
        }
        config
    }

    /// `{base_url}/chat/completions`.
    pub fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

/// Why model graders cannot call their judge with this configuration; found when a grader is
/// compiled, so a typo fails once instead of on every sample.
#[derive(Debug, thiserror::Error)]
pub enum JudgeSetupError {
    /// The base URL is not an `http://` or `https://` URL.
    #[error("the judge base URL {0:?} is not an http:// or https:// URL; set RFT_JUDGE_BASE_URL to e.g. https://api.openai.com/v1 or http://localhost:8000/v1")]
    BadBaseUrl(String),
    /// OpenAI's API is configured, but no key.
    #[error("the judge endpoint {0} needs an API key: set RFT_JUDGE_API_KEY (or OPENAI_API_KEY), or point RFT_JUDGE_BASE_URL at your own server")]
    MissingApiKey(String),
}

/// Why a chat-completions call failed, after any retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The endpoint answered with an error status.
    #[error("HTTP {status} from {endpoint} ({attempts} attempt{s}): {body}", s = plural(*attempts))]
    Status {
        /// The HTTP status of the last attempt.
        status: u16,
        /// The URL called.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// An excerpt of the last response body.
        body: String,
    },
    /// The request did not get an answer: connection refused or reset, timeout, TLS failure.
    #[error("calling {endpoint} failed ({attempts} attempt{s}): {message}", s = plural(*attempts))]
    Transport {
        /// The URL called.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// What went wrong.
        message: String,
    },
    /// The endpoint answered 2xx with something that is not a chat completion.
    #[error("{endpoint} answered with something that is not a chat completion: {message}")]
    Malformed {
        /// The URL called.
        endpoint: String,
        /// What was wrong with the body.
        message: String,
    },
}

/// The parts of a chat completion that graders and evals read.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response's `model`: the model that actually answered.
    pub model: Option<String>,
    /// `choices[0].message.content`, with text parts joined if it is a list.
    pub content: Option<String>,
    /// `choices[0].message.refusal` when present and not null.
    pub refusal: Option<String>,
    /// `choices[0].finish_reason`.
    pub finish_reason: Option<String>,
    /// `choices[0].message.tool_calls`, as given (empty when absent): what an eval's
    /// `sample.output_tools` holds.
    pub tool_calls: Vec<Value>,
    /// `usage`, zeros where absent.
    pub usage: TokenUsage,
}

/// Calls one judge endpoint for every model grader compiled with it. Cheap to create: no
/// connection is made, and no thread started, until the first call.
pub struct JudgeClient {
    config: JudgeConfig,
    endpoint: String,
    agent: ureq::Agent,
    slots: Slots,
    pool: OnceLock<Option<rayon::ThreadPool>>,
}

impl fmt::Debug for JudgeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JudgeClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JudgeClient {
    /// A client with this configuration.
    pub fn new(config: JudgeConfig) -> Arc<JudgeClient> {
        let agent = http::agent_config(config.timeout)
            .max_idle_connections_per_host(config.max_concurrency.max(1))
            .build()
            .new_agent();
        Arc::new(JudgeClient {
            endpoint: config.endpoint(),
            slots: Slots::new(config.max_concurrency.max(1)),
            config,
            agent,
            pool: OnceLock::new(),
        })
    }

    /// The process-wide client configured from the environment ([`JudgeConfig::from_env`]).
    pub fn shared() -> Arc<JudgeClient> {
        static SHARED: OnceLock<Arc<JudgeClient>> = OnceLock::new();
        SHARED
            .get_or_init(|| JudgeClient::new(JudgeConfig::from_env()))
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &JudgeConfig {
        &self.config
    }

    /// Checks what can be checked without a network call: the URL scheme, and that OpenAI's
    /// own API gets a key.
    pub fn check(&self) -> Result<(), JudgeSetupError> {
        let url = self.config.base_url.trim();
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .filter(|rest| !rest.is_empty() && !rest.starts_with('/'))
            .ok_or_else(|| JudgeSetupError::BadBaseUrl(self.config.base_url.clone()))?;
        let host = rest.split(['/', ':']).next().unwrap_or_default();
        if host.eq_ignore_ascii_case("api.openai.com") && self.config.api_key.is_none() {
            return Err(JudgeSetupError::MissingApiKey(self.endpoint.clone()));
        }
        Ok(())
    }

    /// A thread pool with one thread per allowed concurrent call, for grading many samples
    /// with model graders: their time is spent waiting on the judge, not on the CPU, so the
    /// global pool (one thread per core) would leave most of the allowed calls unused.
    /// `None` when the threads cannot be started; callers then use the global pool.
    pub(crate) fn thread_pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.config.max_concurrency.max(1))
                    .thread_name(|i| format!("rft-judge-{i}"))
                    .build()
                    .map_err(|e| tracing::warn!("cannot start the judge thread pool: {e}"))
                    .ok()
            })
            .as_ref()
    }

    /// Posts a chat-completions request, retrying as configured. Evals use it to sample the
    /// model under test from any OpenAI-compatible endpoint with the judge's retry policy.
    ///
    /// The concurrency slot is held for the whole call, backoff included, so that a judge that
    /// is rate-limiting never sees more than `max_concurrency` callers at once.
    pub fn complete(&self, request: &Value) -> Result<Completion, CallError> {
        let body = request.to_string();
        let _slot = self.slots.acquire();
        let deadline = Instant::now() + self.config.deadline;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let failure = match self.attempt(&body, self.config.timeout.min(remaining)) {
                Attempt::Done(text) => return parse_completion(&text, &self.endpoint),
                Attempt::Fatal(failure) => return Err(failure.into_error(self, attempt)),
                Attempt::Retry(failure) => failure,
            };
            let wait = match failure.retry_after {
                Some(asked) => asked.min(self.config.max_retry_after),
                None => self.backoff(attempt),
            };
            let retries_left = attempt <= self.config.max_retries;
            if !retries_left || Instant::now() + wait >= deadline {
                return Err(failure.into_error(self, attempt));
            }
            tracing::debug!(
                "judge attempt {attempt} failed ({}); retrying in {wait:?}",
                failure.message
            );
            std::thread::sleep(wait);
        }
    }

    fn attempt(&self, body: &str, timeout: Duration) -> Attempt {
        if timeout.is_zero() {
            return Attempt::Fatal(Failure::transport(
                "no time left for an attempt before the call's deadline",
            ));
        }
        let mut request = self
            .agent
            .post(&self.endpoint)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send(body.as_bytes()) {
            Ok(response) => response,
            Err(err) => {
                let failure = Failure::transport(&describe_transport(&err, timeout));
                return if transient(&err) {
                    Attempt::Retry(failure)
                } else {
                    Attempt::Fatal(failure)
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_string();
        let text = match text {
            Ok(text) => text,
            Err(err) => {
                let failure = Failure::transport(&describe_transport(&err, timeout));
                return if transient(&err) {
                    Attempt::Retry(failure)
                } else {
                    Attempt::Fatal(failure)
                };
            }
        };
        if (200..300).contains(&status) {
            return Attempt::Done(text);
        }
        let failure = Failure {
            status: Some(status),
            message: excerpt(&text),
            retry_after,
        };
        // 408 (request timeout) and 409 (OpenAI's "conflict, try again") are transient too.
        if status == 429 || status == 408 || status == 409 || status >= 500 {
            Attempt::Retry(failure)
        } else {
            Attempt::Fatal(failure)
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        http::backoff(
            self.config.initial_backoff,
            self.config.max_backoff,
            attempt,
        )
    }
}

enum Attempt {
    Done(String),
    Retry(Failure),
    Fatal(Failure),
}

/// One failed attempt.
struct Failure {
    status: Option<u16>,
    message: String,
    retry_after: Option<Duration>,
}

impl Failure {
    fn transport(message: &str) -> Failure {
        Failure {
            status: None,
            message: message.to_owned(),
            retry_after: None,
        }
    }

    fn into_error(self, client: &JudgeClient, attempts: u32) -> CallError {
        match self.status {
            Some(status) => CallError::Status {
                status,
                endpoint: client.endpoint.clone(),
                attempts,
                body: self.message,
            },
            None => CallError::Transport {
                endpoint: client.endpoint.clone(),
                attempts,
                message: self.message,
            },
        }
    }
}

/// Failures worth another attempt: the server may answer next time. A host that does not
/// resolve, a bad certificate or a malformed URL will not get better by retrying.
fn transient(err: &ureq::Error) -> bool {
    matches!(
        err,
        ureq::Error::Timeout(_)
            | ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

fn describe_transport(err: &ureq::Error, timeout: Duration) -> String {
    match err {
        ureq::Error::Timeout(_) => format!("no complete answer within {timeout:?}"),
        other => other.to_string(),
    }
}

fn excerpt(text: &str) -> String {
    http::excerpt(text, MAX_DETAILS_CHARS)
}

fn parse_completion(text: &str, endpoint: &str) -> Result<Completion, CallError> {
    let malformed = |message: String| CallError::Malformed {
        endpoint: endpoint.to_owned(),
        message,
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| malformed(format!("{e}; the body starts {:?}", excerpt_short(text))))?;
    let choice = value
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| malformed("it has no `choices[0]`".to_owned()))?;
    let message = choice
        .get("message")
        .ok_or_else(|| malformed("`choices[0]` has no `message`".to_owned()))?;
    let content = match message.get("content") {
        Some(Value::String(text)) => Some(text.clone()),
        // Some servers answer with content parts; their text is the answer.
        Some(Value::Array(parts)) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<String>(),
        ),
        _ => None,
    };
    let text_field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let usage = value.get("usage").cloned().unwrap_or(Value::Null);
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let prompt_tokens = count(&usage["prompt_tokens"]);
    let completion_tokens = count(&usage["completion_tokens"]);
    let total_tokens = usage["total_tokens"]
        .as_u64()
        .unwrap_or(prompt_tokens + completion_tokens);
    Ok(Completion {
        model: text_field(&value, "model"),
        content,
        refusal: text_field(message, "refusal"),
        finish_reason: text_field(choice, "finish_reason"),
        tool_calls: message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        usage: TokenUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cached_tokens: count(&usage["prompt_tokens_details"]["cached_tokens"]),
        },
    })
}

fn excerpt_short(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// A counting semaphore: the calls in flight through one client.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> Slot<'_> {
        // A poisoned lock only means another caller panicked while counting; the count is
        // still right, since it is changed in one statement.
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}
