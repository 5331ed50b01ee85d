//! The model under test: the local engine (any model `rft generate` takes, adapters included) or
//! an OpenAI-compatible chat-completions endpoint, both behind [`Policy::generate`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rft_grade::judge::{JudgeClient, JudgeConfig};
use rft_model::constrain::ResponseFormat;
use rft_model::engine::Engine;
use rft_model::sample::SamplingParams;
use rft_model::tool_calls::{finish_reason, parse_offered};
use serde_json::{json, Value};

use crate::data::EvalRow;
use crate::EvalError;

/// How to sample the model.
#[derive(Debug, Clone)]
pub struct SamplingOptions {
    /// Samples per row (K); at least 2 for the learnability check.
    pub samples: usize,
    /// Sampling temperature (default 1.0: what RFT samples with).
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Most new tokens per sample.
    pub max_tokens: usize,
    /// Base seed; each row's seed derives from it and the row index, so a resumed eval samples
    /// what an uninterrupted one would have.
    pub seed: u64,
    /// OpenAI's `response_format` (`json_schema` / `json_object`), as JSON.
    pub response_format: Option<Value>,
    /// Raised from another thread to stop the eval: decoding stops at its next step and
    /// `run_eval` returns [`EvalError::Cancelled`] after the batch in flight.
    pub cancel: Option<rft_model::sample::Cancel>,
}

/// Equal when they sample the same way (the cancel flag is not part of that).
impl PartialEq for SamplingOptions {
    fn eq(&self, other: &SamplingOptions) -> bool {
        self.samples == other.samples
            && self.temperature == other.temperature
            && self.top_p == other.top_p
            && self.max_tokens == other.max_tokens
            && self.seed == other.seed
            && self.response_format == other.response_format
    }
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            samples: 4,
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 256,
            seed: 0,
            response_format: None,
            cancel: None,
        }
    }
}

/// One generated answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    /// The answer's text (outside its tool calls, when it called tools).
    pub text: String,
    /// The tools it called, in chat-completions `tool_calls` shape: what graders see as
    /// `sample.output_tools`.
    pub tool_calls: Vec<Value>,
    /// `stop`, `length`, ...
    pub finish_reason: String,
    /// Prompt tokens (counted once per sample, as the API bills them).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Why the model produced nothing, when the call failed.
    pub error: Option<String>,
}

/// An OpenAI-compatible chat endpoint and the model name to ask for.
#[derive(Debug)]
pub struct RemoteModel {
    client: Arc<JudgeClient>,
    model: String,
    concurrency: usize,
}

impl RemoteModel {
    /// A client for `{base_url}/chat/completions`, with up to `concurrency` requests in flight
    /// and the judge client's timeouts and retries.
    pub fn new(base_url: &str, api_key: Option<&str>, model: &str, concurrency: usize) -> Self {
        let config = JudgeConfig {
            base_url: base_url.to_owned(),
            api_key: api_key.map(str::to_owned),
            max_concurrency: concurrency.max(1),
            // A policy answer can be long; the judge's defaults assume a short verdict.
            timeout: Duration::from_secs(300),
            deadline: Duration::from_secs(600),
            ..JudgeConfig::default()
        };
        RemoteModel {
            client: JudgeClient::new(config),
            model: model.to_owned(),
            concurrency: concurrency.max(1),
        }
    }

    fn body(&self, row: &EvalRow, options: &SamplingOptions, seed: u64) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": row.messages,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "max_completion_tokens": options.max_tokens,
            "seed": seed,
        });
        if let Some(tools) = &row.tools {
            body["tools"] = json!(tools);
        }
        if let Some(format) = &options.response_format {
            body["response_format"] = format.clone();
        }
        body
    }

    fn call(&self, body: &Value) -> Generated {
        match self.client.complete(body) {
            Ok(completion) => Generated {
                text: completion
                    .content
                    .or(completion.refusal)
                    .unwrap_or_default(),
                finish_reason: completion.finish_reason.unwrap_or_else(|| "stop".into()),
                tool_calls: completion.tool_calls,
                prompt_tokens: completion.usage.prompt_tokens,
                completion_tokens: completion.usage.completion_tokens,
                error: None,
            },
            Err(err) => Generated {
                finish_reason: "error".into(),
                error: Some(err.to_string()),
                ..Generated::default()
            },
        }
    }
}

/// The model under test.
#[derive(Debug)]
pub enum Policy {
    /// The local engine.
    Local(Box<Engine>),
    /// An OpenAI-compatible endpoint.
    Remote(RemoteModel),
}

/// A cheap, well-mixed 64-bit hash (splitmix64) for deriving per-row seeds: the trainer's
/// `rft_train::seed::mix`, repeated here (five lines) so evals do not depend on the trainer.
/// It must not change: eval runs are reproducible from their seed.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Policy {
    /// Loads a local model spec (name, GGUF, folder, hub id or adapter folder) on the device
    /// `RFT_DEVICE` names (the CPU by default).
    pub fn load_local(spec: &str) -> Result<Policy, EvalError> {
        let device = rft_model::device::from_env()?;
        Ok(Policy::Local(Box::new(Engine::load(spec, &device)?)))
    }

    /// The model's name, as the run's `model` field reports it.
    pub fn name(&self) -> String {
        match self {
            Policy::Local(engine) => engine.base.clone(),
            Policy::Remote(remote) => remote.model.clone(),
        }
    }

    /// Rows the caller should hand over at once: the local engine batches their prefill; a
    /// remote endpoint gets one request per sample in flight up to its concurrency.
    pub fn batch_rows(&self) -> usize {
        match self {
            Policy::Local(_) => 8,
            Policy::Remote(remote) => remote.concurrency.max(4),
        }
    }

    /// Samples `options.samples` answers for each row.
    pub fn generate(
        &self,
        rows: &[&EvalRow],
        options: &SamplingOptions,
    ) -> Result<Vec<Vec<Generated>>, EvalError> {
        match self {
            Policy::Local(engine) => generate_local(engine, rows, options),
            Policy::Remote(remote) => generate_remote(remote, rows, options),
        }
    }
}

fn row_seed(options: &SamplingOptions, row: &EvalRow) -> u64 {
    mix(options.seed ^ mix(row.index as u64))
}

fn generate_local(
    engine: &Engine,
    rows: &[&EvalRow],
    options: &SamplingOptions,
) -> Result<Vec<Vec<Generated>>, EvalError> {
    let format = options
        .response_format
        .as_ref()
        .map(|v| {
            ResponseFormat::from_value(v)
                .map_err(|e| EvalError::Config(format!("response_format: {e}")))
        })
        .transpose()?;
    let mut requests = Vec::with_capacity(rows.len());
    let mut prompt_lens = Vec::with_capacity(rows.len());
    for row in rows {
        let messages: Vec<Value> = row
            .messages
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
            .collect();
        let prompt = engine
            .chat_prompt(&messages, row.tools.as_deref())
            .map_err(|e| {
                EvalError::Config(format!(
                    "row {}: cannot render the chat template: {e}",
                    row.index + 1
                ))
            })?;
        prompt_lens.push(prompt.len() as u64);
        let params = SamplingParams {
            temperature: options.temperature,
            top_p: options.top_p,
            max_tokens: options.max_tokens,
            seed: row_seed(options, row),
            cancel: options.cancel.clone(),
            ..SamplingParams::default()
        };
        requests.push(engine.request(prompt, options.samples.max(1), params, format.as_ref())?);
    }
    let completions = engine.sampler().run(&requests)?;
    // Rows that offer tools get their answers' tool calls parsed out, as chat completions
    // would return them.
    let tool_format = engine.tool_call_format();
    Ok(completions
        .into_iter()
        .zip(prompt_lens)
        .zip(rows)
        .map(|((group, prompt_tokens), row)| {
            group
                .into_iter()
                .map(|c| {
                    let text = c.text.as_deref().unwrap_or_default();
                    let parsed = parse_offered(text, row.tools.as_deref(), tool_format);
                    let called = !parsed.tool_calls.is_empty();
                    Generated {
                        tool_calls: parsed.tool_calls_json(),
                        text: parsed.content,
                        finish_reason: finish_reason(c.finish_reason.as_str(), called).to_owned(),
                        prompt_tokens,
                        completion_tokens: c.ids.len() as u64,
                        error: None,
                    }
                })
                .collect()
        })
        .collect())
}

fn generate_remote(
    remote: &RemoteModel,
    rows: &[&EvalRow],
    options: &SamplingOptions,
) -> Result<Vec<Vec<Generated>>, EvalError> {
    let k = options.samples.max(1);
    let jobs: Vec<(usize, usize)> = (0..rows.len())
        .flat_map(|r| (0..k).map(move |s| (r, s)))
        .collect();
    let results: Mutex<Vec<Vec<Generated>>> =
        Mutex::new(vec![vec![Generated::default(); k]; rows.len()]);
    let next = AtomicUsize::new(0);
    let workers = remote.concurrency.min(jobs.len()).max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(r, s)) = jobs.get(idx) else { break };
                let row = rows[r];
                let body = remote.body(row, options, mix(row_seed(options, row) ^ s as u64));
                let generated = remote.call(&body);
                if let Ok(mut results) = results.lock() {
                    results[r][s] = generated;
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| EvalError::Remote("a sampling thread panicked".into()))?;
    // One failed sample is data; a batch where every call failed is a broken endpoint, and
    // going on would only fill the results file with errors.
    let all_failed = results.iter().flatten().all(|g| g.error.is_some());
    if all_failed {
        if let Some(message) = results.iter().flatten().find_map(|g| g.error.clone()) {
            return Err(EvalError::Remote(format!(
                "{message}; check --base-url (it usually ends in /v1), --api-key and --model"
            )));
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mix_is_splitmix64() {
        // splitmix64's first outputs for states 0 and 42: the values the trainer's copy gives.
        assert_eq!(super::mix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(super::mix(42), 0xBDD7_3226_2FEB_6E95);
    }
}
