//! The rollout seam: where an RL step's completions come from. [`LocalRollouts`] samples in
//! this process with the training client's own engine (today's loop, the default);
//! [`RemoteRollouts`] samples on inference servers that speak vLLM's OpenAI-compatible API
//! (vLLM itself, or `rft serve --adapter-root` workers). The step, graders, advantages and
//! losses never know which.
//!
//! The remote engine, per policy version:
//! 1. writes the adapter in PEFT's layout under an immutable name, `<job>-v<version>`, into a
//!    folder every rollout server reads (a shared volume), written to a temporary name and
//!    renamed so no server ever sees half of it;
//! 2. calls `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` on every replica's admin
//!    URL (a router does not fan admin calls out) and `POST /v1/unload_lora_adapter` for the
//!    versions older than the ones it keeps;
//! 3. samples with `POST /v1/completions`: the prompt as token ids, `n`, `max_tokens`,
//!    `temperature`, `top_p`, `top_k`, `seed`, `logprobs: 1`, `return_token_ids: true`, `model`
//!    the version's name, and `response_format` when the job has one; it reads each choice's
//!    `token_ids` and `logprobs.token_logprobs`.
//!
//! Every answer is checked before it reaches a gradient: the number of choices, token ids
//! within the vocabulary, one finite log-prob (≤ 0) per token, a known finish reason. A server
//! that fails, times out or answers something malformed is retried on the next replica, up to
//! three times per replica (after a pause when it was busy); then the step fails with an error
//! naming the server and what was wrong. At most `MAX_IN_FLIGHT` requests are sent at once.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rft_grade::http;
use rft_model::constrain::ResponseFormat;
use rft_model::sample::{Completion, FinishReason, SampleRequest};
use serde::{Deserialize, Serialize};

use crate::primitives::{PolicySnapshot, TrainingClient};
use crate::TrainError;

/// The policy a rollout samples from: the training client as it is (synchronous steps), or a
/// snapshot of an earlier version (asynchronous off-policy steps sample while it trains).
#[derive(Clone, Copy)]
pub enum Policy<'a> {
    /// The client's current policy.
    Client(&'a TrainingClient),
    /// A frozen version.
    Snapshot(&'a PolicySnapshot),
}

impl Policy<'_> {
    /// The base model, tokenizer and chat template.
    pub fn engine(&self) -> &rft_model::engine::Engine {
        match self {
            Policy::Client(client) => client.engine(),
            Policy::Snapshot(snapshot) => &snapshot.engine,
        }
    }

    /// The policy's version.
    pub fn version(&self) -> u64 {
        match self {
            Policy::Client(client) => client.version(),
            Policy::Snapshot(snapshot) => snapshot.version,
        }
    }

    fn save_for_sampler(&self, dir: &Path) -> Result<(), TrainError> {
        match self {
            Policy::Client(client) => client.save_weights_for_sampler(dir),
            Policy::Snapshot(snapshot) => snapshot.save_for_sampler(dir),
        }
    }
}

/// Where a step's completions come from.
pub trait RolloutEngine: Send + Sync {
    /// Samples `requests` under `policy`. `response_format` is the job's structured-output
    /// format, which `requests` already carry as compiled constraints for an engine in this
    /// process.
    fn sample(
        &self,
        policy: Policy<'_>,
        requests: &[SampleRequest],
        response_format: Option<&ResponseFormat>,
    ) -> Result<Vec<Vec<Completion>>, TrainError>;
}

/// Samples in this process with the training client's engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalRollouts;

impl RolloutEngine for LocalRollouts {
    fn sample(
        &self,
        policy: Policy<'_>,
        requests: &[SampleRequest],
        _response_format: Option<&ResponseFormat>,
    ) -> Result<Vec<Vec<Completion>>, TrainError> {
        match policy {
            Policy::Client(client) => client.sample(requests),
            Policy::Snapshot(snapshot) => snapshot.sample(requests),
        }
    }
}

/// How to reach a rollout fleet.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Where completions are sent: the replicas' (or a router's) base URLs, `…/v1` or
    /// without it. A failed call goes to the next one.
    pub urls: Vec<String>,
    /// Every replica's admin base URL (adapters are loaded on each); the completion URLs when
    /// empty.
    pub admin_urls: Vec<String>,
    /// The folder adapters are written to, readable by every replica at the same path.
    pub adapter_dir: PathBuf,
    /// The prefix of adapter names (`<prefix>-v<version>`): the job's id.
    pub name_prefix: String,
    /// Policy versions kept loaded (older ones are unloaded).
    pub keep_versions: usize,
    /// The servers' API key, sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// Per call.
    pub timeout: Duration,
    /// Where versions go instead of a folder every replica reads (`adapter_dir` is then only
    /// where they are written first): a shared blob store, for replicas that fetch from it.
    pub publisher: Option<std::sync::Arc<dyn AdapterPublisher>>,
}

/// Makes a written adapter version readable by every replica, other than through a shared
/// folder: the server's blob store (`rft serve --blobs s3://…` on both sides).
pub trait AdapterPublisher: std::fmt::Debug + Send + Sync {
    /// Publishes the PEFT folder `dir` as version `name`; returns the `lora_path` the replicas
    /// are told to load.
    fn publish(&self, name: &str, dir: &Path) -> Result<String, String>;
    /// Removes version `name` (unloaded everywhere).
    fn remove(&self, name: &str);
}

/// Samples on vLLM-compatible servers (module docs).
#[derive(Debug)]
pub struct RemoteRollouts {
    config: RemoteConfig,
    agent: ureq::Agent,
    /// Versions published, oldest first: `(version, name, completion URLs that have it)`.
    published: Mutex<VecDeque<(u64, String, Vec<usize>)>>,
    timings: Mutex<Timings>,
}

/// What publishing and the first samples of each version took, for `rft train` to report.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Per version: writing the adapter and loading it on every replica, seconds.
    pub publish: Vec<f64>,
    /// Per version and replica: from the start of the publish to the replica's first
    /// completion under the new version, seconds.
    pub first_completion: Vec<f64>,
    /// When the current version's publish started, and the replicas that answered since.
    current: Option<(std::time::Instant, Vec<usize>)>,
}

/// Largest answer read from a rollout server for an admin call.
const MAX_ADMIN_RESPONSE_BYTES: u64 = 1 << 20;
/// What a completions answer may take per sampled token (id, log-prob, text and JSON
/// around them), beyond [`MAX_ADMIN_RESPONSE_BYTES`]: the answer is read only up to what the
/// request asked for, so a hostile server cannot make the trainer buffer more.
const RESPONSE_BYTES_PER_TOKEN: u64 = 512;

fn endpoint(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    format!("{base}/v1/{path}")
}

#[derive(Serialize)]
struct LoadAdapter<'a> {
    lora_name: &'a str,
    lora_path: String,
}

#[derive(Serialize)]
struct UnloadAdapter<'a> {
    lora_name: &'a str,
}

#[derive(Serialize)]
struct CompletionCall<'a> {
    model: &'a str,
    prompt: &'a [u32],
    n: usize,
    max_tokens: usize,
    temperature: f64,
    top_p: f64,
    top_k: i64,
    /// vLLM takes a signed 64-bit seed: the engine's u64 seed is sent as its two's-complement
    /// `i64`, which `rft serve` turns back into the same u64.
    seed: i64,
    logprobs: u32,
    return_token_ids: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct CompletionAnswer {
    choices: Vec<ChoiceAnswer>,
}

#[derive(Deserialize)]
struct ChoiceAnswer {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    token_ids: Option<Vec<u32>>,
    #[serde(default)]
    logprobs: Option<LogprobsAnswer>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct LogprobsAnswer {
    token_logprobs: Vec<Option<f64>>,
}

impl RemoteRollouts {
    /// A client of the fleet `config` names.
    pub fn new(config: RemoteConfig) -> Result<RemoteRollouts, TrainError> {
        if config.urls.is_empty() {
            return Err(TrainError::Config(
                "a remote rollout engine needs at least one completions URL (--rollout-url)".into(),
            ));
        }
        std::fs::create_dir_all(&config.adapter_dir).map_err(|source| TrainError::Io {
            path: config.adapter_dir.clone(),
            source,
        })?;
        let agent = http::agent_config(config.timeout).build().new_agent();
        Ok(RemoteRollouts {
            config,
            agent,
            published: Mutex::new(VecDeque::new()),
            timings: Mutex::new(Timings::default()),
        })
    }

    /// Publish and first-completion times so far.
    pub fn timings(&self) -> Timings {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn note_completion(&self, replica: usize) {
        if let Ok(mut timings) = self.timings.lock() {
            let first = match &mut timings.current {
                Some((start, seen)) if !seen.contains(&replica) => {
                    seen.push(replica);
                    Some(start.elapsed().as_secs_f64())
                }
                _ => None,
            };
            timings.first_completion.extend(first);
        }
    }

    fn admin_urls(&self) -> &[String] {
        if self.config.admin_urls.is_empty() {
            &self.config.urls
        } else {
            &self.config.admin_urls
        }
    }

    /// POSTs JSON; `(status, body text)` or a transport error as text.
    fn post(&self, url: &str, body: &impl Serialize, limit: u64) -> Result<(u16, String), String> {
        let text = serde_json::to_string(body).map_err(|e| e.to_string())?;
        let mut request = self
            .agent
            .post(url)
            .header("content-type", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let mut response = request.send(text.as_bytes()).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// Publishes the client's current version (once) on every replica that answers: its
    /// name, and which completion URLs may sample it (all of them when the admin URLs are
    /// not one per completion URL, as behind a router).
    fn publish(&self, policy: Policy<'_>) -> Result<(String, Vec<usize>), TrainError> {
        let version = policy.version();
        let name = format!("{}-v{version}", self.config.name_prefix);
        let mut published = self
            .published
            .lock()
            .map_err(|_| TrainError::Invalid("a rollout thread panicked".into()))?;
        if let Some((_, _, live)) = published.iter().find(|(v, _, _)| *v == version) {
            return Ok((name, live.clone()));
        }
        let started = std::time::Instant::now();
        let dir = self.config.adapter_dir.join(&name);
        if !dir.join("adapter_model.safetensors").is_file() {
            write_adapter(policy, &dir)?;
        }
        let lora_path = match &self.config.publisher {
            Some(publisher) => publisher
                .publish(&name, &dir)
                .map_err(|e| TrainError::Rollout(format!("cannot publish adapter {name}: {e}")))?,
            None => std::fs::canonicalize(&dir)
                .unwrap_or(dir)
                .to_string_lossy()
                .into_owned(),
        };
        let mut loaded = Vec::new();
        let mut failures = Vec::new();
        for (i, admin) in self.admin_urls().iter().enumerate() {
            let url = endpoint(admin, "load_lora_adapter");
            let answer = self.post(
                &url,
                &LoadAdapter {
                    lora_name: &name,
                    lora_path: lora_path.clone(),
                },
                MAX_ADMIN_RESPONSE_BYTES,
            );
            match answer {
                Ok((200, _)) => loaded.push(i),
                // Loaded by an earlier attempt: the same immutable folder.
                Ok((400, body)) if body.contains("already been loaded") => loaded.push(i),
                Ok((status, body)) => failures.push(format!(
                    "{url}: HTTP {status}: {}",
                    http::excerpt(&body, ERROR_EXCERPT_CHARS)
                )),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        for failure in &failures {
            tracing::warn!("adapter {name} not loaded: {failure}");
        }
        if loaded.is_empty() {
            return Err(TrainError::Rollout(format!(
                "no rollout server loaded adapter {name}: {}",
                failures.join("; ")
            )));
        }
        // Replicas that did not load this version do not sample it.
        let live: Vec<usize> = if self.config.admin_urls.is_empty()
            || self.config.admin_urls.len() == self.config.urls.len()
        {
            loaded
        } else {
            (0..self.config.urls.len()).collect()
        };
        if let Ok(mut timings) = self.timings.lock() {
            timings.publish.push(started.elapsed().as_secs_f64());
            timings.current = Some((started, Vec::new()));
        }
        published.push_back((version, name.clone(), live.clone()));
        while published.len() > self.config.keep_versions.max(1) {
            if let Some((_, old, _)) = published.pop_front() {
                for admin in self.admin_urls() {
                    // Best effort: a server that lost it already is fine.
                    let _ = self.post(
                        &endpoint(admin, "unload_lora_adapter"),
                        &UnloadAdapter { lora_name: &old },
                        MAX_ADMIN_RESPONSE_BYTES,
                    );
                }
                let _ = std::fs::remove_dir_all(self.config.adapter_dir.join(&old));
                if let Some(publisher) = &self.config.publisher {
                    publisher.remove(&old);
                }
            }
        }
        Ok((name, live))
    }

    /// One request on one server, checked.
    fn sample_one(
        &self,
        url: &str,
        model: &str,
        request: &SampleRequest,
        vocab: usize,
        response_format: Option<&ResponseFormat>,
    ) -> Result<Vec<Completion>, String> {
        let params = &request.params;
        let call = CompletionCall {
            model,
            prompt: &request.prompt,
            n: request.n,
            max_tokens: params.max_tokens,
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: if params.top_k == 0 {
                -1
            } else {
                params.top_k as i64
            },
            seed: params.seed as i64,
            logprobs: 1,
            return_token_ids: true,
            stop: &params.stop_strings,
            response_format: response_format.map(ResponseFormat::to_value),
        };
        let tokens = (request.n as u64).saturating_mul(params.max_tokens as u64);
        let limit = MAX_ADMIN_RESPONSE_BYTES
            .saturating_add(tokens.saturating_mul(RESPONSE_BYTES_PER_TOKEN));
        let (status, body) = self.post(url, &call, limit)?;
        if status != 200 {
            return Err(format!(
                "HTTP {status}: {}",
                http::excerpt(&body, ERROR_EXCERPT_CHARS)
            ));
        }
        let answer: CompletionAnswer =
            serde_json::from_str(&body).map_err(|e| format!("malformed JSON: {e}"))?;
        check_answer(answer, request, vocab)
    }
}

impl RemoteRollouts {
    /// Request `i` on the replicas in turn, each tried up to [`TRIES_PER_REPLICA`] times; a busy
    /// answer (429, 503) or a missing adapter (404: a replica behind a router still loading it)
    /// waits before the next try.
    #[allow(clippy::too_many_arguments)]
    fn sample_with_retries(
        &self,
        i: usize,
        urls: &[&String],
        live: &[usize],
        model: &str,
        request: &SampleRequest,
        vocab: usize,
        response_format: Option<&ResponseFormat>,
    ) -> Result<Vec<Completion>, TrainError> {
        let mut failures = Vec::new();
        for attempt in 0..urls.len() * TRIES_PER_REPLICA {
            let slot = (i + attempt) % urls.len();
            let url = endpoint(urls[slot], "completions");
            match self.sample_one(&url, model, request, vocab, response_format) {
                Ok(completions) => {
                    self.note_completion(live[slot]);
                    return Ok(completions);
                }
                Err(e) => {
                    tracing::warn!("rollout server {url}: {e}");
                    let busy = ["HTTP 429", "HTTP 503", "HTTP 404"]
                        .iter()
                        .any(|code| e.starts_with(code));
                    failures.push(format!("{url}: {e}"));
                    if busy {
                        std::thread::sleep(http::backoff(
                            BUSY_PAUSE,
                            MAX_BUSY_PAUSE,
                            attempt as u32 + 1,
                        ));
                    }
                }
            }
        }
        Err(TrainError::Rollout(format!(
            "every rollout server failed request {i}: {}",
            failures.join("; ")
        )))
    }
}

/// Requests sent at once (one thread each).
const MAX_IN_FLIGHT: usize = 32;
/// Tries of one request per replica before the step fails.
const TRIES_PER_REPLICA: usize = 3;
/// The first pause after a busy answer, doubled per try up to the second (jittered, so that
/// many requests refused together do not come back together).
const BUSY_PAUSE: Duration = Duration::from_millis(250);
const MAX_BUSY_PAUSE: Duration = Duration::from_secs(4);
/// How much of a failed answer's body an error quotes.
const ERROR_EXCERPT_CHARS: usize = 300;

/// Checks an answer and turns it into completions; nothing malformed passes.
fn check_answer(
    answer: CompletionAnswer,
    request: &SampleRequest,
    vocab: usize,
) -> Result<Vec<Completion>, String> {
    if answer.choices.len() != request.n {
        return Err(format!(
            "{} choices for n = {}",
            answer.choices.len(),
            request.n
        ));
    }
    let mut choices = answer.choices;
    // Prompt-major indices; one prompt per call, so 0..n.
    choices.sort_by_key(|c| c.index.unwrap_or(0));
    let mut out = Vec::with_capacity(choices.len());
    for (i, choice) in choices.into_iter().enumerate() {
        if choice.index.is_some_and(|index| index != i) {
            return Err(format!("choice indices are not 0..{}", request.n));
        }
        let ids = choice
            .token_ids
            .ok_or_else(|| format!("choice {i} has no token_ids (send return_token_ids)"))?;
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(format!(
                "choice {i}: token id {id} is outside the vocabulary of {vocab}"
            ));
        }
        if ids.len() > request.params.max_tokens {
            return Err(format!(
                "choice {i}: {} tokens for max_tokens {}",
                ids.len(),
                request.params.max_tokens
            ));
        }
        let logprobs = choice
            .logprobs
            .ok_or_else(|| format!("choice {i} has no logprobs"))?
            .token_logprobs;
        if logprobs.len() != ids.len() {
            return Err(format!(
                "choice {i}: {} log-probs for {} tokens",
                logprobs.len(),
                ids.len()
            ));
        }
        let logprobs = logprobs
            .into_iter()
            .map(|l| match l {
                Some(l) if l.is_finite() && l <= 1e-6 => Ok(l as f32),
                other => Err(format!(
                    "choice {i}: log-prob {other:?} is not a finite value ≤ 0"
                )),
            })
            .collect::<Result<Vec<f32>, String>>()?;
        let finish_reason = match choice.finish_reason.as_deref() {
            Some("stop") => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            other => return Err(format!("choice {i}: finish_reason {other:?}")),
        };
        out.push(Completion {
            ids,
            logprobs,
            finish_reason,
            text: choice.text,
        });
    }
    Ok(out)
}

/// Writes the client's adapter to `dir` through a temporary folder renamed into place.
fn write_adapter(policy: Policy<'_>, dir: &Path) -> Result<(), TrainError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let temp = parent.join(format!(
        ".tmp-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&temp);
    policy.save_for_sampler(&temp)?;
    std::fs::rename(&temp, dir).map_err(|source| TrainError::Io {
        path: dir.to_owned(),
        source,
    })
}

impl RolloutEngine for RemoteRollouts {
    fn sample(
        &self,
        policy: Policy<'_>,
        requests: &[SampleRequest],
        response_format: Option<&ResponseFormat>,
    ) -> Result<Vec<Vec<Completion>>, TrainError> {
        let (model, live) = self.publish(policy)?;
        let vocab = policy.engine().model.config().vocab_size;
        let urls: Vec<&String> = live.iter().map(|&i| &self.config.urls[i]).collect();
        let urls = &urls;
        // Requests are spread over the replicas, at most `MAX_IN_FLIGHT` at once; a failure
        // moves to the next replica, and a busy one (429, 503) is asked again after a pause.
        let mut out = Vec::with_capacity(requests.len());
        for (chunk_index, chunk) in requests.chunks(MAX_IN_FLIGHT).enumerate() {
            let results: Vec<Result<Vec<Completion>, TrainError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, request)| {
                        let i = chunk_index * MAX_IN_FLIGHT + j;
                        let model = model.as_str();
                        let live = &live;
                        scope.spawn(move || {
                            self.sample_with_retries(
                                i,
                                urls,
                                live,
                                model,
                                request,
                                vocab,
                                response_format,
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .map_err(|_| TrainError::Invalid("a rollout thread panicked".into()))?
                    })
                    .collect()
            });
            for result in results {
                out.push(result?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rft_model::sample::SamplingParams;

    fn request(n: usize) -> SampleRequest {
        SampleRequest {
            prompt: vec![1, 2],
            n,
            params: SamplingParams {
                max_tokens: 4,
                ..SamplingParams::default()
            },
            constraint: None,
        }
    }

    fn answer(json: &str) -> CompletionAnswer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn malformed_answers_never_pass() {
        let good = r#"{"choices": [{"index": 0, "text": "a", "token_ids": [5, 6],
            "logprobs": {"token_logprobs": [-0.5, -1.0]}, "finish_reason": "stop"}]}"#;
        let completions = check_answer(answer(good), &request(1), 97).unwrap();
        assert_eq!(completions[0].ids, vec![5, 6]);
        assert_eq!(completions[0].logprobs, vec![-0.5, -1.0]);
        for (bad, why) in [
            (r#"{"choices": []}"#, "choices"),
            (
                r#"{"choices": [{"token_ids": [500], "logprobs": {"token_logprobs": [-1]}, "finish_reason": "stop"}]}"#,
                "vocabulary",
            ),
            (
                r#"{"choices": [{"token_ids": [5, 6], "logprobs": {"token_logprobs": [-1]}, "finish_reason": "stop"}]}"#,
                "log-probs for",
            ),
            (
                r#"{"choices": [{"token_ids": [5], "logprobs": {"token_logprobs": [null]}, "finish_reason": "stop"}]}"#,
                "not a finite",
            ),
            (
                r#"{"choices": [{"token_ids": [5], "logprobs": {"token_logprobs": [0.5]}, "finish_reason": "stop"}]}"#,
                "not a finite",
            ),
            (
                r#"{"choices": [{"token_ids": [5], "finish_reason": "stop"}]}"#,
                "no logprobs",
            ),
            (
                r#"{"choices": [{"logprobs": {"token_logprobs": []}, "finish_reason": "stop"}]}"#,
                "token_ids",
            ),
            (
                r#"{"choices": [{"token_ids": [5], "logprobs": {"token_logprobs": [-1]}, "finish_reason": "abort"}]}"#,
                "finish_reason",
            ),
            (
                r#"{"choices": [{"token_ids": [5,5,5,5,5], "logprobs": {"token_logprobs": [-1,-1,-1,-1,-1]}, "finish_reason": "length"}]}"#,
                "max_tokens",
            ),
        ] {
            let error = check_answer(answer(bad), &request(1), 97).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
        // NaN cannot be JSON; a string where a number belongs is malformed JSON.
        assert!(serde_json::from_str::<CompletionAnswer>(
            r#"{"choices": [{"logprobs": {"token_logprobs": ["NaN"]}}]}"#
        )
        .is_err());
    }

    #[test]
    fn endpoints_take_a_base_with_or_without_v1() {
        assert_eq!(
            endpoint("http://a:1/v1/", "completions"),
            "http://a:1/v1/completions"
        );
        assert_eq!(
            endpoint("http://a:1", "load_lora_adapter"),
            "http://a:1/v1/load_lora_adapter"
        );
    }
}
