//! The eval objects of spec §5 (`eval`, `eval.run`, `eval.run.output_item`), built from an eval
//! run so the HTTP server can expose them unchanged. Field names follow the spec byte for byte.

use rft_types::{Grader, RunGraderResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::{DataFormat, EvalData};
use crate::policy::{mix, SamplingOptions};
use crate::run::{has_error, RowResult, SampleResult};

/// The pass threshold of graders whose score is a pass/fail stamp (string_check, label_model).
pub const BINARY_PASS_THRESHOLD: f64 = 1.0;
/// The pass threshold of continuous graders that carry none (spec: optional for python and
/// score_model; RFT graders such as `multi` have none).
pub const DEFAULT_PASS_THRESHOLD: f64 = 0.5;

/// `{type: "custom", schema}`: the response form of a custom data source config (§5.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSourceConfig {
    /// Always `custom`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A JSON Schema with `properties.item` (the item schema) and `properties.sample`.
    pub schema: Value,
}

/// A testing criterion: the grader spec with its `pass_threshold` and an `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestingCriterion {
    /// `<name>-<hex>`, as the spec's examples show.
    pub id: String,
    /// An item passes when its score is at least this.
    pub pass_threshold: f64,
    /// The grader spec's own fields (`type`, `name`, ...).
    #[serde(flatten)]
    pub grader: Map<String, Value>,
}

/// `object: "eval"` (§5.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// `eval_<hex>`.
    pub id: String,
    /// Always `eval`.
    pub object: String,
    /// The eval's name.
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// String pairs; OpenRFT records the dataset path.
    pub metadata: Map<String, Value>,
    /// The data source config.
    pub data_source_config: DataSourceConfig,
    /// One criterion: the grader.
    pub testing_criteria: Vec<TestingCriterion>,
}

/// `{total, errored, failed, passed}` over output items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultCounts {
    /// Output items.
    pub total: usize,
    /// Items whose sampling or grading failed.
    pub errored: usize,
    /// Items graded below a criterion's threshold.
    pub failed: usize,
    /// Items that passed every criterion.
    pub passed: usize,
}

/// Token usage of one model in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// The model.
    pub model_name: String,
    /// Calls (one per sample).
    pub invocation_count: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// Cached prompt tokens (0: no cache is reported).
    pub cached_tokens: u64,
}

/// Pass/fail counts of one criterion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CriterionResult {
    /// The criterion's id.
    pub testing_criteria: String,
    /// Items that passed it.
    pub passed: usize,
    /// Items that did not.
    pub failed: usize,
}

/// `{code, message}` of a failed run or sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// A short code.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// `object: "eval.run"` (§5.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRun {
    /// `evalrun_<hex>`.
    pub id: String,
    /// Always `eval.run`.
    pub object: String,
    /// The eval.
    pub eval_id: String,
    /// `completed` once every row is graded.
    pub status: String,
    /// The model under test (`given` samples: none was called).
    pub model: String,
    /// The run's name.
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// A local `file://` URL of `report.html` when a report was written.
    pub report_url: Option<String>,
    /// Counts over output items.
    pub result_counts: ResultCounts,
    /// Tokens per model.
    pub per_model_usage: Vec<ModelUsage>,
    /// Counts per criterion.
    pub per_testing_criteria_results: Vec<CriterionResult>,
    /// The data source as it would be submitted.
    pub data_source: Value,
    /// String pairs.
    pub metadata: Map<String, Value>,
    /// Why the run failed; null when it did not.
    pub error: Option<ApiError>,
}

/// A grader result of an output item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradeResult {
    /// The criterion's grader name.
    pub name: String,
    /// Hyphenated grader type, e.g. `string-check-grader`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The reward.
    pub score: f64,
    /// `score >= pass_threshold` and no grader error.
    pub passed: bool,
    /// Intermediate data: the grader's metadata and sub-rewards.
    pub sample: Option<Value>,
}

/// The token usage of a sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleUsage {
    /// Their sum.
    pub total_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
}

/// The `sample` of an output item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSample {
    /// The prompt messages `{role, content}`.
    pub input: Vec<Value>,
    /// The answer `[{role: "assistant", content}]`.
    pub output: Vec<Value>,
    /// `stop`, `length`, `error`, `given`.
    pub finish_reason: String,
    /// The model.
    pub model: String,
    /// Token usage.
    pub usage: SampleUsage,
    /// Why sampling failed.
    pub error: Option<ApiError>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Token limit.
    pub max_completion_tokens: u64,
    /// Nucleus mass.
    pub top_p: f64,
    /// The base seed.
    pub seed: u64,
}

/// `object: "eval.run.output_item"` (§5.6): one per sample (K per row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputItem {
    /// `outputitem_<hex>`.
    pub id: String,
    /// Always `eval.run.output_item`.
    pub object: String,
    /// The run.
    pub run_id: String,
    /// The eval.
    pub eval_id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `pass`, `fail` or `error` (sampling or grading failed).
    pub status: String,
    /// The row index.
    pub datasource_item_id: usize,
    /// The row's item.
    pub datasource_item: Value,
    /// One result per criterion.
    pub results: Vec<GradeResult>,
    /// What the model was asked and answered.
    pub sample: OutputSample,
}

/// Everything an eval run produces, in spec shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalObjects {
    /// The eval.
    pub eval: Eval,
    /// Its run.
    pub run: EvalRun,
    /// The run's output items, K per row in row order.
    pub output_items: Vec<OutputItem>,
}

/// The threshold a grader's samples pass at: its own `pass_threshold`, else 1 for pass/fail
/// graders, else [`DEFAULT_PASS_THRESHOLD`].
pub fn pass_threshold(grader: &Grader) -> f64 {
    match grader {
        Grader::ScoreModel(g) => g.pass_threshold.unwrap_or(DEFAULT_PASS_THRESHOLD),
        Grader::TextSimilarity(g) => g.pass_threshold.unwrap_or(DEFAULT_PASS_THRESHOLD),
        Grader::Python(g) => g.pass_threshold.unwrap_or(DEFAULT_PASS_THRESHOLD),
        Grader::StringCheck(_) | Grader::LabelModel(_) => BINARY_PASS_THRESHOLD,
        Grader::Multi(_) => DEFAULT_PASS_THRESHOLD,
    }
}

/// What describes the run besides its results.
#[derive(Debug, Clone)]
pub struct RunInfo<'a> {
    /// The eval's name.
    pub name: &'a str,
    /// The model's name (`None`: the samples were given).
    pub model: Option<&'a str>,
    /// Sampling options used.
    pub sampling: &'a SamplingOptions,
    /// The criterion's threshold (usually [`pass_threshold`]).
    pub pass_threshold: f64,
    /// Unix seconds.
    pub created_at: u64,
    /// `file://` URL of the report, if any.
    pub report_url: Option<String>,
}

/// The assistant message of an output item's `sample.output`, in the same shape the server's
/// eval runs write.
fn output_message(sample: &rft_types::Sample) -> Value {
    json!(rft_types::api::eval::OutputMessage::of(sample))
}

/// Builds the eval, the run and its output items.
pub fn build_objects(
    data: &EvalData,
    grader: &Grader,
    results: &[RowResult],
    info: &RunInfo<'_>,
) -> EvalObjects {
    let seed = mix(info.created_at
        ^ mix(data.path.to_string_lossy().len() as u64)
        ^ std::process::id() as u64);
    let eval_id = format!("eval_{:016x}", seed);
    let run_id = format!("evalrun_{:016x}", mix(seed));
    let grader_value = serde_json::to_value(grader).unwrap_or(Value::Null);
    let criterion = TestingCriterion {
        id: format!("{}-{:08x}", grader.name(), mix(seed ^ 1) as u32),
        pass_threshold: info.pass_threshold,
        grader: grader_value.as_object().cloned().unwrap_or_default(),
    };
    let mut metadata = Map::new();
    metadata.insert("dataset".into(), json!(data.path.to_string_lossy()));
    let eval = Eval {
        id: eval_id.clone(),
        object: "eval".into(),
        name: info.name.to_owned(),
        created_at: info.created_at,
        metadata: metadata.clone(),
        data_source_config: DataSourceConfig {
            kind: "custom".into(),
            schema: json!({
                "type": "object",
                "properties": {"item": item_schema(data), "sample": sample_schema()},
                "required": ["item", "sample"],
            }),
        },
        testing_criteria: vec![criterion.clone()],
    };
    let model = info.model.unwrap_or("given").to_owned();
    let mut counts = ResultCounts::default();
    let mut per_criterion = CriterionResult {
        testing_criteria: criterion.id.clone(),
        ..CriterionResult::default()
    };
    let mut usage = ModelUsage {
        model_name: model.clone(),
        ..ModelUsage::default()
    };
    let mut output_items = Vec::new();
    for row in results {
        let input: Vec<Value> = data
            .rows
            .get(row.datasource_item_id)
            .map(|r| {
                r.messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect()
            })
            .unwrap_or_default();
        for (k, sample) in row.samples.iter().enumerate() {
            let result = grade_result(sample, grader, info.pass_threshold);
            let status = match &result {
                None => "error",
                Some(r) if r.passed => "pass",
                Some(_) => "fail",
            };
            counts.total += 1;
            match status {
                "pass" => {
                    counts.passed += 1;
                    per_criterion.passed += 1;
                }
                "fail" => {
                    counts.failed += 1;
                    per_criterion.failed += 1;
                }
                _ => counts.errored += 1,
            }
            if info.model.is_some() {
                usage.invocation_count += 1;
                usage.prompt_tokens += sample.prompt_tokens;
                usage.completion_tokens += sample.completion_tokens;
            }
            output_items.push(OutputItem {
                id: format!(
                    "outputitem_{:016x}",
                    mix(seed ^ mix(row.datasource_item_id as u64) ^ k as u64)
                ),
                object: "eval.run.output_item".into(),
                run_id: run_id.clone(),
                eval_id: eval_id.clone(),
                created_at: info.created_at,
                status: status.into(),
                datasource_item_id: row.datasource_item_id,
                datasource_item: row.item.clone(),
                results: result.into_iter().collect(),
                sample: OutputSample {
                    input: input.clone(),
                    output: vec![output_message(&sample.sample)],
                    finish_reason: sample.finish_reason.clone(),
                    model: model.clone(),
                    usage: SampleUsage {
                        total_tokens: sample.prompt_tokens + sample.completion_tokens,
                        completion_tokens: sample.completion_tokens,
                        prompt_tokens: sample.prompt_tokens,
                        cached_tokens: 0,
                    },
                    error: sample.error.as_ref().map(|m| ApiError {
                        code: "sampling_error".into(),
                        message: m.clone(),
                    }),
                    temperature: info.sampling.temperature,
                    max_completion_tokens: info.sampling.max_tokens as u64,
                    top_p: info.sampling.top_p,
                    seed: info.sampling.seed,
                },
            });
        }
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    let source = json!({"type": "file_id", "id": data.path.to_string_lossy()});
    let data_source = match (data.format, info.model) {
        (DataFormat::Rft, Some(model)) => json!({
            "type": "completions",
            "source": source,
            "model": model,
            "input_messages": {"type": "item_reference", "item_reference": "messages"},
            "sampling_params": {
                "temperature": info.sampling.temperature,
                "top_p": info.sampling.top_p,
                "max_completion_tokens": info.sampling.max_tokens,
                "seed": info.sampling.seed,
                "response_format": info.sampling.response_format,
            },
        }),
        _ => json!({"type": "jsonl", "source": source}),
    };
    let run = EvalRun {
        id: run_id,
        object: "eval.run".into(),
        eval_id,
        status: "completed".into(),
        model,
        name: info.name.to_owned(),
        created_at: info.created_at,
        report_url: info.report_url.clone(),
        result_counts: counts,
        per_model_usage: if info.model.is_some() {
            vec![usage]
        } else {
            Vec::new()
        },
        per_testing_criteria_results: vec![per_criterion],
        data_source,
        metadata,
        error: None,
    };
    EvalObjects {
        eval,
        run,
        output_items,
    }
}

fn grade_result(sample: &SampleResult, grader: &Grader, threshold: f64) -> Option<GradeResult> {
    let grade: &RunGraderResponse = sample.grade.as_ref()?;
    if has_error(grade) {
        return None;
    }
    Some(GradeResult {
        name: grader.name().to_owned(),
        kind: result_type(grader),
        score: grade.reward,
        passed: grade.reward >= threshold,
        sample: Some(json!({"metadata": grade.metadata, "sub_rewards": grade.sub_rewards})),
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A JSON Schema of the items: each field's observed types; fields present in every row required.
fn item_schema(data: &EvalData) -> Value {
    let mut types: Map<String, Value> = Map::new();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for row in &data.rows {
        for (key, value) in &row.item {
            *counts.entry(key.clone()).or_default() += 1;
            let entry = types.entry(key.clone()).or_insert_with(|| json!([]));
            let t = json!(json_type(value));
            if let Some(list) = entry.as_array_mut() {
                if !list.contains(&t) {
                    list.push(t);
                }
            }
        }
    }
    let properties: Map<String, Value> = types
        .into_iter()
        .map(|(k, list)| {
            let ty = match list.as_array().map(Vec::len) {
                Some(1) => list[0].clone(),
                _ => list,
            };
            (k, json!({"type": ty}))
        })
        .collect();
    let required: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n == data.rows.len())
        .map(|(k, _)| k)
        .collect();
    json!({"type": "object", "properties": properties, "required": required})
}

/// A result's `type` as OpenAI's examples write it: `string-check-grader`.
pub fn result_type(grader: &Grader) -> String {
    format!("{}-grader", grader.type_name().replace('_', "-"))
}

fn sample_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "output_text": {"type": "string"},
            "output_json": {"type": "object"},
            "output_tools": {"type": "array"},
            "choices": {"type": "array"},
        },
        "required": ["output_text"],
    })
}
