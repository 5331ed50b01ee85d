//! Evals, their runs and output items (`/v1/evals`).
//!
//! What a client sends as data (`data_source`, rows' `item`, rendered `input` messages, grader
//! JSON) stays `serde_json::Value`: it is the client's own shape, echoed back as given.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::Metadata;
use crate::GraderMetadata;

/// An eval: a data-source schema and testing criteria.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// `eval_…`.
    pub id: String,
    /// Always `"eval"`.
    pub object: String,
    /// The client's name for it.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// `{}` when absent.
    pub metadata: Metadata,
    /// `{type: "custom", schema}`.
    pub data_source_config: DataSourceConfig,
    /// Graders with a pass threshold.
    pub testing_criteria: Vec<TestingCriterion>,
}

/// The schema rows follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSourceConfig {
    /// Always `"custom"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `{type: object, properties: {item, sample?}, required}`.
    pub schema: Value,
}

/// A grader (its JSON as the client sent it) with its id and pass threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestingCriterion {
    /// The grader's fields.
    #[serde(flatten)]
    pub grader: Map<String, Value>,
    /// `<grader name>-<12 hex digits>`.
    pub id: String,
    /// A score passes when it is at least this.
    pub pass_threshold: f64,
}

/// A run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a runner.
    Queued,
    /// Running.
    InProgress,
    /// Every row graded.
    Completed,
    /// Cancelled by the client (OpenAI spells it with one `l`).
    Canceled,
    /// Stopped on an error.
    Failed,
}

/// An eval run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRun {
    /// `evalrun_…`.
    pub id: String,
    /// Always `"eval.run"`.
    pub object: String,
    /// Its eval.
    pub eval_id: String,
    /// Where it is.
    pub status: RunStatus,
    /// The sampled model (`completions` sources); empty for `jsonl` (given samples).
    pub model: String,
    /// The client's name for it.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Null from the server; `rft eval --report` gives the local `file://` URL of its
    /// `report.html`.
    pub report_url: Option<String>,
    /// Rows so far.
    pub result_counts: ResultCounts,
    /// Sampling usage, per model.
    pub per_model_usage: Option<Vec<ModelUsage>>,
    /// Passes and fails, per criterion.
    pub per_testing_criteria_results: Option<Vec<CriterionResult>>,
    /// The data source as the client sent it.
    pub data_source: Value,
    /// `{}` when absent.
    pub metadata: Metadata,
    /// Why it failed.
    pub error: Option<RunError>,
}

/// `result_counts` of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultCounts {
    /// Output items recorded.
    pub total: u64,
    /// Items whose sampling failed or whose grading raised an error flag.
    pub errored: u64,
    /// Items that failed a criterion (without an error).
    pub failed: u64,
    /// Items that passed every criterion.
    pub passed: u64,
}

/// One model's sampling usage in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// The model.
    pub model_name: String,
    /// Chat calls.
    pub invocation_count: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Sampled tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// Always 0.
    pub cached_tokens: u64,
}

/// One criterion's tally in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriterionResult {
    /// The criterion's id.
    pub testing_criteria: String,
    /// Rows it passed.
    pub passed: u64,
    /// Rows it failed.
    pub failed: u64,
}

/// `{code, message}`: why a run, or the sampling of an output item, failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// A stable code (`run_failed`, `server_restarted`, …).
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// Whether an output item passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Every criterion passed.
    Pass,
    /// A criterion failed, or sampling or grading errored (counted as `errored`).
    Fail,
}

/// One graded sample of a run: one per row from the server, K per row from `rft eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputItem {
    /// `outputitem_…`.
    pub id: String,
    /// Always `"eval.run.output_item"`.
    pub object: String,
    /// Its run.
    pub run_id: String,
    /// Its eval.
    pub eval_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Pass or fail.
    pub status: ItemStatus,
    /// The row's index in the data source.
    pub datasource_item_id: usize,
    /// The row's `item`, as given.
    pub datasource_item: Value,
    /// One result per criterion.
    pub results: Vec<CriterionOutcome>,
    /// What was graded.
    pub sample: OutputSample,
}

/// One criterion's result on one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionOutcome {
    /// The grader's name.
    pub name: String,
    /// The result type (`string-check-grader`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// The reward.
    pub score: f64,
    /// Whether it reached the threshold without an error flag.
    pub passed: bool,
    /// Always null.
    pub sample: Option<Value>,
    /// The criterion's id.
    pub testing_criteria: String,
    /// The grader's metadata (error flags, timing).
    pub metadata: GraderMetadata,
    /// A multi grader's children's rewards.
    pub sub_rewards: IndexMap<String, f64>,
}

/// The sample part of an output item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSample {
    /// The rendered input messages (empty for `jsonl`).
    pub input: Vec<Value>,
    /// The assistant's answer.
    pub output: Vec<OutputMessage>,
    /// `stop`, `length` or `tool_calls`; `given` (`rft eval`) or `stop` (the server) for a
    /// given sample, `error` when sampling failed.
    pub finish_reason: String,
    /// The sampled model.
    pub model: String,
    /// Token counts.
    pub usage: SampleUsage,
    /// Why sampling failed (`sampling_error`; `rft eval` only: the server fails the run).
    pub error: Option<RunError>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Completion token limit.
    pub max_completion_tokens: u64,
    /// Nucleus mass.
    pub top_p: f64,
    /// The row's seed (the server), or the run's base seed (`rft eval`).
    pub seed: u64,
}

/// One output message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputMessage {
    /// Always `"assistant"`.
    pub role: String,
    /// The text outside any tool calls; null when the answer only called tools (as chat
    /// completions answer).
    pub content: Option<String>,
    /// The answer's tool calls in chat-completions shape, when tools were offered and called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
}

impl OutputMessage {
    /// The assistant message of a graded sample.
    pub fn of(sample: &crate::Sample) -> OutputMessage {
        let content = if sample.output_text.is_empty() && !sample.output_tools.is_empty() {
            None
        } else {
            Some(sample.output_text.clone())
        };
        OutputMessage {
            role: "assistant".into(),
            content,
            tool_calls: sample.output_tools.clone(),
        }
    }
}

/// Token counts of one sampled row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleUsage {
    /// Prompt plus completion.
    pub total_tokens: u64,
    /// Sampled tokens.
    pub completion_tokens: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Always 0.
    pub cached_tokens: u64,
}

/// `POST /v1/evals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateEval {
    /// The eval's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Free-form metadata (checked by the server).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// What rows look like.
    pub data_source_config: DataSourceConfigRequest,
    /// Graders, each with an optional `pass_threshold` (parsed as graders by the server).
    pub testing_criteria: Vec<Map<String, Value>>,
}

/// `data_source_config` of [`CreateEval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DataSourceConfigRequest {
    /// Rows of the client's own shape.
    Custom {
        /// The JSON Schema of a row's `item`.
        item_schema: Map<String, Value>,
        /// Whether rows carry a `sample` too.
        #[serde(default)]
        include_sample_schema: bool,
    },
    /// OpenAI's stored logs (refused here: a local server has none).
    Logs {
        /// Ignored.
        #[serde(flatten)]
        rest: Map<String, Value>,
    },
    /// OpenAI's stored completions (refused here).
    StoredCompletions {
        /// Ignored.
        #[serde(flatten)]
        rest: Map<String, Value>,
    },
}

/// `POST /v1/evals/{eval_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEval {
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// New metadata (replaces the old); `null` clears it.
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Value>,
}

/// Tells a field given as `null` (`Some(Value::Null)`) from a field left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `POST /v1/evals/{eval_id}/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateRun {
    /// The run's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Free-form metadata (checked by the server).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Where rows come from, and how samples are made.
    pub data_source: RunDataSource,
}

/// `data_source` of [`CreateRun`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunDataSource {
    /// Rows with their samples, graded as they are.
    Jsonl {
        /// The rows.
        source: RunSource,
    },
    /// Rows whose samples are sampled from a model served here.
    Completions {
        /// The model.
        model: String,
        /// The rows.
        source: RunSource,
        /// The messages to render per row.
        input_messages: InputMessages,
        /// How to sample.
        #[serde(default)]
        sampling_params: RunSamplingParams,
    },
    /// OpenAI's Responses API (refused here).
    Responses {
        /// Ignored.
        #[serde(flatten)]
        rest: Map<String, Value>,
    },
}

/// Where a run's rows are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunSource {
    /// Inline rows.
    FileContent {
        /// `{item, sample?}` rows.
        content: Vec<SourceRow>,
    },
    /// Rows in an uploaded JSONL file.
    FileId {
        /// The file.
        id: String,
    },
}

/// One row of a run's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRow {
    /// The row's fields, for templates and graders.
    pub item: Map<String, Value>,
    /// A given sample (a string, a Sample object or a chat completion), for `jsonl`.
    #[serde(default)]
    pub sample: Option<Value>,
}

/// `input_messages` of a completions source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputMessages {
    /// Messages whose `content` strings are templates over the row.
    Template {
        /// The messages.
        template: Vec<Value>,
    },
}

/// `sampling_params` of a completions source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSamplingParams {
    /// Default 1.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Default 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Default: the server's chat default.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Default 42; row `i` samples with `seed ^ i`.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Structured outputs.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Function tools offered with every prompt (at most 128); the answers' calls reach
    /// graders as `sample.output_tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
}
