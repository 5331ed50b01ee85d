//! The eval objects of spec §5 (`eval`, `eval.run`, `eval.run.output_item`: the types of
//! `rft_types::api::eval`) built from graded samples. This is the one path: `rft eval` writes
//! them from its results ([`build_objects`]) and the server's eval runs record them row by row,
//! both through [`RunBuilder`], so the same samples give the same items, counts and statuses.
//!
//! The pass rule: a score passes a criterion when it is at least the criterion's
//! `pass_threshold` and the grader raised no error flag. An item passes when every criterion
//! passes; an item whose sampling failed or whose grading raised an error flag counts as
//! `errored` and has status `fail` (spec §5.6 leaves the status open).

use rft_types::api::common::Metadata;
use rft_types::api::eval::{
    CriterionOutcome, CriterionResult, DataSourceConfig, Eval, EvalRun, ItemStatus, ModelUsage,
    OutputItem, OutputMessage, OutputSample, ResultCounts, RunError, RunStatus, SampleUsage,
    TestingCriterion,
};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::{json, Map, Value};

use crate::data::{DataFormat, EvalData};
use crate::policy::{mix, SamplingOptions};
use crate::run::{has_error, RowResult};

/// The pass threshold of graders whose score is a pass/fail stamp (string_check, label_model).
pub const BINARY_PASS_THRESHOLD: f64 = 1.0;
/// The pass threshold of continuous graders that carry none (spec: optional for python and
/// score_model; RFT graders such as `multi` have none).
pub const DEFAULT_PASS_THRESHOLD: f64 = 0.5;

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

/// A result's `type` as OpenAI's examples write it: `string-check-grader`.
pub fn result_type(grader: &Grader) -> String {
    format!("{}-grader", grader.type_name().replace('_', "-"))
}

/// A testing criterion of an eval (§5.1, §5.3): the grader's JSON fields, an id
/// `<grader name>-<id_suffix>` and the pass threshold (`None`: the grader's, [`pass_threshold`]).
pub fn testing_criterion(
    grader: &Grader,
    fields: Map<String, Value>,
    threshold: Option<f64>,
    id_suffix: &str,
) -> TestingCriterion {
    TestingCriterion {
        grader: fields,
        id: format!("{}-{id_suffix}", grader.name()),
        pass_threshold: threshold.unwrap_or_else(|| pass_threshold(grader)),
    }
}

/// The response form of a `custom` data source config (§5.2): `properties.item` is the item
/// schema, and `properties.sample` is [`sample_schema`] when rows carry (or get) a sample.
pub fn data_source_config(item_schema: Value, include_sample_schema: bool) -> DataSourceConfig {
    let mut properties = Map::new();
    properties.insert("item".into(), item_schema);
    let mut required = vec!["item"];
    if include_sample_schema {
        properties.insert("sample".into(), sample_schema());
        required.push("sample");
    }
    DataSourceConfig {
        kind: "custom".into(),
        schema: json!({"type": "object", "properties": properties, "required": required}),
    }
}

/// The JSON Schema of a row's `sample` (the spec leaves it open): the fields graders read.
pub fn sample_schema() -> Value {
    json!({"type": "object", "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    }, "required": ["output_text"]})
}

/// A testing criterion as grading a sample needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    /// The criterion's id (`per_testing_criteria_results[].testing_criteria`).
    pub id: String,
    /// The grader's name.
    pub name: String,
    /// The result type, [`result_type`].
    pub kind: String,
    /// A score passes when it is at least this.
    pub pass_threshold: f64,
}

impl Criterion {
    /// The criterion of an eval's testing criterion, whose grader is `grader`.
    pub fn new(criterion: &TestingCriterion, grader: &Grader) -> Criterion {
        Criterion {
            id: criterion.id.clone(),
            name: grader.name().to_owned(),
            kind: result_type(grader),
            pass_threshold: criterion.pass_threshold,
        }
    }

    /// This criterion's result on a grader response.
    pub fn outcome(&self, grade: RunGraderResponse) -> CriterionOutcome {
        CriterionOutcome {
            name: self.name.clone(),
            kind: self.kind.clone(),
            score: grade.reward,
            passed: !has_error(&grade) && grade.reward >= self.pass_threshold,
            sample: None,
            testing_criteria: self.id.clone(),
            metadata: grade.metadata,
            sub_rewards: grade.sub_rewards,
        }
    }
}

/// The sampling settings every output item of a run records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemSampling {
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Completion token limit.
    pub max_completion_tokens: u64,
}

/// One graded sample, to record as an output item.
#[derive(Debug, Clone)]
pub struct GradedSample<'a> {
    /// The row's index in the data source.
    pub datasource_item_id: usize,
    /// The row's `item`.
    pub item: Value,
    /// The prompt messages `{role, content}` (empty for given samples).
    pub input: Vec<Value>,
    /// What was graded.
    pub sample: &'a Sample,
    /// `stop`, `length`, `tool_calls`, `error`, or `given` / `stop` for given samples.
    pub finish_reason: String,
    /// Prompt and completion tokens (0 for given samples).
    pub prompt_tokens: u64,
    /// Tokens sampled.
    pub completion_tokens: u64,
    /// Whether a model was called for it (counted in `per_model_usage`).
    pub sampled: bool,
    /// Why sampling failed; such a sample has no grades and counts as errored.
    pub error: Option<String>,
    /// The seed recorded in the item.
    pub seed: u64,
    /// One grader response per criterion, in the eval's order (none when sampling failed).
    pub grades: Vec<RunGraderResponse>,
}

/// Builds a run's output items one at a time and counts them: what `result_counts`,
/// `per_testing_criteria_results` and `per_model_usage` say, after each item.
#[derive(Debug, Clone)]
pub struct RunBuilder {
    run_id: String,
    eval_id: String,
    model: String,
    criteria: Vec<Criterion>,
    sampling: ItemSampling,
    counts: ResultCounts,
    /// `(passed, failed)` per criterion.
    per_criterion: Vec<(u64, u64)>,
    calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl RunBuilder {
    /// A builder for `run`'s items, graded by `criteria` (the eval's, in order).
    pub fn new(run: &EvalRun, criteria: Vec<Criterion>, sampling: ItemSampling) -> RunBuilder {
        RunBuilder {
            run_id: run.id.clone(),
            eval_id: run.eval_id.clone(),
            model: run.model.clone(),
            per_criterion: vec![(0, 0); criteria.len()],
            criteria,
            sampling,
            counts: ResultCounts::default(),
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        }
    }

    /// The output item of one graded sample, counted.
    pub fn output_item(
        &mut self,
        id: String,
        created_at: i64,
        graded: GradedSample<'_>,
    ) -> OutputItem {
        let mut errored = graded.error.is_some() || graded.grades.len() != self.criteria.len();
        let mut results = Vec::with_capacity(graded.grades.len());
        for ((criterion, tally), grade) in self
            .criteria
            .iter()
            .zip(&mut self.per_criterion)
            .zip(graded.grades)
        {
            errored |= has_error(&grade);
            let outcome = criterion.outcome(grade);
            if outcome.passed {
                tally.0 += 1;
            } else {
                tally.1 += 1;
            }
            results.push(outcome);
        }
        let passed = !errored && results.iter().all(|r| r.passed);
        self.counts.total += 1;
        if errored {
            self.counts.errored += 1;
        } else if passed {
            self.counts.passed += 1;
        } else {
            self.counts.failed += 1;
        }
        if graded.sampled {
            self.calls += 1;
            self.prompt_tokens += graded.prompt_tokens;
            self.completion_tokens += graded.completion_tokens;
        }
        OutputItem {
            id,
            object: "eval.run.output_item".into(),
            run_id: self.run_id.clone(),
            eval_id: self.eval_id.clone(),
            created_at,
            status: if passed {
                ItemStatus::Pass
            } else {
                ItemStatus::Fail
            },
            datasource_item_id: graded.datasource_item_id,
            datasource_item: graded.item,
            results,
            sample: OutputSample {
                input: graded.input,
                output: vec![OutputMessage::of(graded.sample)],
                finish_reason: graded.finish_reason,
                model: self.model.clone(),
                usage: SampleUsage {
                    total_tokens: graded.prompt_tokens + graded.completion_tokens,
                    completion_tokens: graded.completion_tokens,
                    prompt_tokens: graded.prompt_tokens,
                    cached_tokens: 0,
                },
                error: graded.error.map(|message| RunError {
                    code: "sampling_error".into(),
                    message,
                }),
                temperature: self.sampling.temperature,
                max_completion_tokens: self.sampling.max_completion_tokens,
                top_p: self.sampling.top_p,
                seed: graded.seed,
            },
        }
    }

    /// The counts so far, written into the run.
    pub fn write_counts(&self, run: &mut EvalRun) {
        run.result_counts = self.counts;
        run.per_testing_criteria_results = Some(
            self.criteria
                .iter()
                .zip(&self.per_criterion)
                .map(|(c, &(passed, failed))| CriterionResult {
                    testing_criteria: c.id.clone(),
                    passed,
                    failed,
                })
                .collect(),
        );
        run.per_model_usage = Some(if self.calls > 0 {
            vec![ModelUsage {
                model_name: self.model.clone(),
                invocation_count: self.calls,
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.completion_tokens,
                total_tokens: self.prompt_tokens + self.completion_tokens,
                cached_tokens: 0,
            }]
        } else {
            Vec::new()
        });
    }
}

/// Everything an eval run of `rft eval` produces, in spec shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalObjects {
    /// The eval.
    pub eval: Eval,
    /// Its run.
    pub run: EvalRun,
    /// The run's output items, K per row in row order.
    pub output_items: Vec<OutputItem>,
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
    pub created_at: i64,
    /// `file://` URL of the report, if any.
    pub report_url: Option<String>,
}

/// Builds the eval, the completed run and its output items of `rft eval` (one grader, K
/// samples per row, each its own output item). Ids derive from the time and the dataset.
pub fn build_objects(
    data: &EvalData,
    grader: &Grader,
    results: &[RowResult],
    info: &RunInfo<'_>,
) -> EvalObjects {
    let seed = mix(info.created_at as u64
        ^ mix(data.path.to_string_lossy().len() as u64)
        ^ std::process::id() as u64);
    let grader_value = serde_json::to_value(grader).unwrap_or(Value::Null);
    let criterion = testing_criterion(
        grader,
        grader_value.as_object().cloned().unwrap_or_default(),
        Some(info.pass_threshold),
        &format!("{:012x}", mix(seed ^ 1) & 0xffff_ffff_ffff),
    );
    let mut metadata = Metadata::new();
    metadata.insert("dataset".into(), data.path.to_string_lossy().into_owned());
    let eval = Eval {
        id: format!("eval_{seed:016x}"),
        object: "eval".into(),
        name: info.name.to_owned(),
        created_at: info.created_at,
        metadata: metadata.clone(),
        data_source_config: data_source_config(item_schema(data), true),
        testing_criteria: vec![criterion],
    };
    let mut run = EvalRun {
        id: format!("evalrun_{:016x}", mix(seed)),
        object: "eval.run".into(),
        eval_id: eval.id.clone(),
        status: RunStatus::Completed,
        model: info.model.unwrap_or_default().to_owned(),
        name: info.name.to_owned(),
        created_at: info.created_at,
        report_url: info.report_url.clone(),
        result_counts: ResultCounts::default(),
        per_model_usage: None,
        per_testing_criteria_results: None,
        data_source: data_source(data, info),
        metadata,
        error: None,
    };
    let criteria = vec![Criterion::new(&eval.testing_criteria[0], grader)];
    let mut builder = RunBuilder::new(
        &run,
        criteria,
        ItemSampling {
            temperature: info.sampling.temperature,
            top_p: info.sampling.top_p,
            max_completion_tokens: info.sampling.max_tokens as u64,
        },
    );
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
            let id = format!(
                "outputitem_{:016x}",
                mix(seed ^ mix(row.datasource_item_id as u64) ^ k as u64)
            );
            let graded = GradedSample {
                datasource_item_id: row.datasource_item_id,
                item: row.item.clone(),
                input: input.clone(),
                sample: &sample.sample,
                finish_reason: sample.finish_reason.clone(),
                prompt_tokens: sample.prompt_tokens,
                completion_tokens: sample.completion_tokens,
                sampled: info.model.is_some(),
                error: sample.error.clone(),
                seed: info.sampling.seed,
                grades: sample.grade.iter().cloned().collect(),
            };
            output_items.push(builder.output_item(id, info.created_at, graded));
        }
    }
    builder.write_counts(&mut run);
    EvalObjects {
        eval,
        run,
        output_items,
    }
}

/// The run's `data_source` as it would be submitted: `completions` for a sampled RFT dataset,
/// `jsonl` for given samples; the file is named by its path.
fn data_source(data: &EvalData, info: &RunInfo<'_>) -> Value {
    let source = json!({"type": "file_id", "id": data.path.to_string_lossy()});
    match (data.format, info.model) {
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rft_types::{GraderErrors, GraderMetadata};

    fn run() -> EvalRun {
        serde_json::from_value(json!({
            "id": "evalrun_1", "object": "eval.run", "eval_id": "eval_1", "status": "in_progress",
            "model": "m", "name": "", "created_at": 1, "report_url": null,
            "result_counts": {"total": 0, "errored": 0, "failed": 0, "passed": 0},
            "per_model_usage": null, "per_testing_criteria_results": null,
            "data_source": {}, "metadata": {}, "error": null,
        }))
        .unwrap()
    }

    fn grade(reward: f64) -> RunGraderResponse {
        RunGraderResponse {
            reward,
            metadata: GraderMetadata {
                name: "g".into(),
                kind: "string_check".into(),
                errors: GraderErrors::default(),
                execution_time: 0.0,
                scores: Map::new(),
                token_usage: None,
                sampled_model_name: None,
            },
            sub_rewards: Default::default(),
            model_grader_token_usage_per_model: Default::default(),
        }
    }

    #[test]
    fn items_pass_fail_and_error_and_the_run_counts_them() {
        let criteria = ["a", "b"]
            .map(|id| Criterion {
                id: id.into(),
                name: id.into(),
                kind: "string-check-grader".into(),
                pass_threshold: 0.5,
            })
            .to_vec();
        let sampling = ItemSampling {
            temperature: 1.0,
            top_p: 1.0,
            max_completion_tokens: 8,
        };
        let mut run = run();
        let mut builder = RunBuilder::new(&run, criteria, sampling);
        let sample = Sample::from_text("x");
        let mut item = |grades: Vec<RunGraderResponse>, error: Option<&str>| {
            builder.output_item(
                "outputitem_1".into(),
                1,
                GradedSample {
                    datasource_item_id: 0,
                    item: json!({}),
                    input: Vec::new(),
                    sample: &sample,
                    finish_reason: "stop".into(),
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    sampled: true,
                    error: error.map(str::to_owned),
                    seed: 7,
                    grades,
                },
            )
        };
        let pass = item(vec![grade(1.0), grade(0.5)], None);
        assert_eq!(pass.status, ItemStatus::Pass);
        let fail = item(vec![grade(1.0), grade(0.0)], None);
        assert_eq!(fail.status, ItemStatus::Fail);
        assert_eq!(fail.results[1].testing_criteria, "b");
        let mut flagged = grade(1.0);
        flagged.metadata.errors.formula_parse_error = true;
        let errored = item(vec![grade(1.0), flagged], None);
        assert_eq!(errored.status, ItemStatus::Fail);
        assert!(!errored.results[1].passed);
        let unsampled = item(Vec::new(), Some("timeout"));
        assert_eq!(unsampled.status, ItemStatus::Fail);
        assert_eq!(unsampled.sample.error.unwrap().code, "sampling_error");
        builder.write_counts(&mut run);
        assert_eq!(
            run.result_counts,
            ResultCounts {
                total: 4,
                errored: 2,
                failed: 1,
                passed: 1
            }
        );
        let per = run.per_testing_criteria_results.unwrap();
        assert_eq!((per[0].passed, per[0].failed), (3, 0));
        assert_eq!((per[1].passed, per[1].failed), (1, 2));
        let usage = &run.per_model_usage.unwrap()[0];
        assert_eq!((usage.invocation_count, usage.total_tokens), (4, 20));
    }
}
