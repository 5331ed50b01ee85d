//! Compiling a grader spec once and grading many samples with it.
//!
//! [`compile`] checks what can be checked up front (metric availability, template syntax) and
//! parses templates and formulas, so that [`CompiledGrader::grade`] only renders and scores.
//! Problems that OpenAI reports per sample (a missing template variable, a formula that does not
//! parse, a judge that is down) stay per-sample error flags, as in `graders/run`; [`validate`]
//! reports the static ones up front.

use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use rayon::prelude::*;
use rft_types::{
    EvaluationMetric, Grader, GraderErrors, GraderMetadata, RunGraderResponse, Sample, SpecError,
    StringCheckOperation, TokenUsage,
};
use serde_json::{Map, Value};

use crate::embed::{cosine_similarity, Embedder, RemoteEmbedder};
use crate::error::GradeError;
use crate::formula::{EvalError, Formula, FormulaError};
use crate::judge::model::{Failure, ModelGrader};
use crate::judge::JudgeClient;
use crate::metrics::{self, WordNet};
use crate::python::{PythonGrader, PythonOutcome, PythonRuntime};
use crate::template::{RenderBudget, RenderError, Scope, Template};

/// The most Python source a grader may carry (spec §2.7: "source < 256 kB").
pub const MAX_PYTHON_SOURCE_BYTES: usize = 256 * 1024;

/// A grader ready to grade: templates and formulas parsed, resources loaded.
#[derive(Debug)]
pub struct CompiledGrader {
    name: String,
    kind: &'static str,
    body: Body,
    /// The judge this grader or one of its children calls; `grade_all` runs such graders on
    /// the judge's thread pool.
    judge: Option<Arc<JudgeClient>>,
}

#[derive(Debug)]
enum Body {
    StringCheck {
        input: Template,
        reference: Template,
        operation: StringCheckOperation,
    },
    TextSimilarity {
        input: Template,
        reference: Template,
        metric: Metric,
    },
    /// `text_similarity` with the `cosine` metric, which needs an embedder and can fail.
    Cosine {
        input: Template,
        reference: Template,
        embedder: Arc<dyn Embedder>,
    },
    Multi {
        children: Vec<(String, CompiledGrader)>,
        formula: Result<Formula, FormulaError>,
    },
    Python(PythonGrader),
    /// `score_model` and `label_model`.
    Model(ModelGrader),
}

#[derive(Debug, Clone, Copy)]
enum Metric {
    FuzzyMatch,
    Bleu,
    Gleu,
    Meteor(&'static WordNet),
    RougeN(usize),
    RougeL,
}

/// One sample to grade and the dataset item it answers.
#[derive(Debug, Clone)]
pub struct GradeRequest {
    /// The model's output.
    pub sample: Sample,
    /// The dataset row's item fields.
    pub item: Value,
}

/// What graders need from outside themselves: the Python runtime, the judge endpoint of model
/// graders and the embedder of the `cosine` metric. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct GraderContext {
    /// Runs Python graders.
    pub python: Arc<PythonRuntime>,
    /// Calls the judge model of `score_model` and `label_model` graders.
    pub judge: Arc<JudgeClient>,
    /// Embeds texts for the `cosine` metric of `text_similarity` graders; without one, such
    /// graders do not compile. The `rft` binary installs the local all-MiniLM-L6-v2 model here
    /// when no remote endpoint is configured.
    pub embedder: Option<Arc<dyn Embedder>>,
}

impl GraderContext {
    /// The process-wide context, configured from the environment (docs/graders.md). Building
    /// it starts no process and makes no network call. Its embedder is the remote endpoint of
    /// `RFT_EMBEDDINGS_BASE_URL` when that is set, else none.
    pub fn shared() -> GraderContext {
        GraderContext {
            python: PythonRuntime::shared(),
            judge: JudgeClient::shared(),
            embedder: RemoteEmbedder::shared(),
        }
    }
}

/// Compiles a grader for grading with the process-wide [`GraderContext`]. Fails for graders
/// this build or host cannot run.
pub fn compile(grader: &Grader) -> Result<CompiledGrader, GradeError> {
    compile_with(grader, &GraderContext::shared())
}

/// Compiles a grader with an explicit context.
pub fn compile_with(
    grader: &Grader,
    context: &GraderContext,
) -> Result<CompiledGrader, GradeError> {
    compile_at(grader, "", context)
}

fn compile_at(
    grader: &Grader,
    path: &str,
    context: &GraderContext,
) -> Result<CompiledGrader, GradeError> {
    let body = match grader {
        Grader::StringCheck(g) => Body::StringCheck {
            input: Template::parse(&g.input),
            reference: Template::parse(&g.reference),
            operation: g.operation,
        },
        Grader::TextSimilarity(g) => {
            let input = Template::parse(&g.input);
            let reference = Template::parse(&g.reference);
            let metric = match g.evaluation_metric {
                EvaluationMetric::Cosine => None,
                EvaluationMetric::FuzzyMatch => Some(Metric::FuzzyMatch),
                EvaluationMetric::Bleu => Some(Metric::Bleu),
                EvaluationMetric::Gleu => Some(Metric::Gleu),
                EvaluationMetric::Meteor => Some(Metric::Meteor(WordNet::shared()?)),
                EvaluationMetric::Rouge1 => Some(Metric::RougeN(1)),
                EvaluationMetric::Rouge2 => Some(Metric::RougeN(2)),
                EvaluationMetric::Rouge3 => Some(Metric::RougeN(3)),
                EvaluationMetric::Rouge4 => Some(Metric::RougeN(4)),
                EvaluationMetric::Rouge5 => Some(Metric::RougeN(5)),
                EvaluationMetric::RougeL => Some(Metric::RougeL),
            };
            match metric {
                Some(metric) => Body::TextSimilarity {
                    input,
                    reference,
                    metric,
                },
                None => Body::Cosine {
                    input,
                    reference,
                    embedder: embedder_for(path, context)?,
                },
            }
        }
        Grader::Python(g) => {
            if g.source.len() > MAX_PYTHON_SOURCE_BYTES {
                return Err(GradeError::SourceTooLarge {
                    path: path.to_owned(),
                    bytes: g.source.len(),
                    limit: MAX_PYTHON_SOURCE_BYTES,
                });
            }
            let compiled = context
                .python
                .compile(&g.source, g.image_tag.as_deref())
                .map_err(|error| GradeError::Python {
                    path: display_path(path),
                    error,
                })?;
            Body::Python(compiled)
        }
        Grader::ScoreModel(g) => {
            if let Some([low, high]) = g.range {
                // Parsing checks this too, but a grader built in code skips parsing, and
                // clipping into a reversed or NaN range would panic.
                if !(low.is_finite() && high.is_finite() && low < high) {
                    return Err(GradeError::Spec(SpecError {
                        path: format!("{path}range"),
                        message: format!("expected [min, max] with min < max, got [{low}, {high}]"),
                    }));
                }
            }
            Body::Model(ModelGrader::score(g, judge_for(path, context)?))
        }
        Grader::LabelModel(g) => Body::Model(ModelGrader::label(g, judge_for(path, context)?)),
        Grader::Multi(g) => {
            let children = g
                .graders
                .iter()
                .map(|(key, child)| {
                    compile_at(child, &child_path(path, key), context).map(|c| (key.clone(), c))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Body::Multi {
                children,
                formula: Formula::parse(&g.calculate_output),
            }
        }
    };
    let judge = match &body {
        Body::Model(model) => Some(model.client().clone()),
        Body::Multi { children, .. } => children.iter().find_map(|(_, c)| c.judge.clone()),
        _ => None,
    };
    Ok(CompiledGrader {
        name: grader.name().to_owned(),
        kind: grader.type_name(),
        body,
        judge,
    })
}

fn embedder_for(path: &str, context: &GraderContext) -> Result<Arc<dyn Embedder>, GradeError> {
    let embedder = context
        .embedder
        .clone()
        .ok_or_else(|| GradeError::NoEmbedder {
            path: display_path(path),
        })?;
    embedder.check().map_err(|error| GradeError::Embedder {
        path: display_path(path),
        error,
    })?;
    Ok(embedder)
}

fn judge_for(path: &str, context: &GraderContext) -> Result<Arc<JudgeClient>, GradeError> {
    context.judge.check().map_err(|error| GradeError::Judge {
        path: display_path(path),
        error,
    })?;
    Ok(context.judge.clone())
}

/// Checks a grader beyond its JSON shape: template references, the formula and its variables,
/// Python source size and image tag. This is what `graders/validate` and `rft grader validate` run; it does not
/// require that this build can execute the grader.
pub fn validate(grader: &Grader) -> Result<(), GradeError> {
    validate_at(grader, "")
}

fn validate_at(grader: &Grader, path: &str) -> Result<(), GradeError> {
    let check = |field: &str, text: &str| -> Result<(), GradeError> {
        match Template::parse(text).variables().find_map(Result::err) {
            Some(reference) => Err(GradeError::InvalidTemplate {
                path: format!("{path}{field}"),
                reference: reference.to_owned(),
            }),
            None => Ok(()),
        }
    };
    match grader {
        Grader::StringCheck(g) => {
            check("input", &g.input)?;
            check("reference", &g.reference)
        }
        Grader::TextSimilarity(g) => {
            check("input", &g.input)?;
            check("reference", &g.reference)
        }
        Grader::Python(g) if g.source.len() > MAX_PYTHON_SOURCE_BYTES => {
            Err(GradeError::SourceTooLarge {
                path: path.to_owned(),
                bytes: g.source.len(),
                limit: MAX_PYTHON_SOURCE_BYTES,
            })
        }
        Grader::Python(g) => match g.image_tag.as_deref().map(crate::python::check_image_tag) {
            // A tag is joined into the interpreter's path: only the known ones are accepted.
            Some(Err(err)) => Err(GradeError::Spec(SpecError {
                path: format!("{path}image_tag"),
                message: err.to_string(),
            })),
            _ => Ok(()),
        },
        Grader::ScoreModel(g) => validate_messages(&g.input, path),
        Grader::LabelModel(g) => validate_messages(&g.input, path),
        Grader::Multi(g) => {
            let formula =
                Formula::parse(&g.calculate_output).map_err(|source| GradeError::Formula {
                    path: path.to_owned(),
                    source,
                })?;
            for name in formula.variables() {
                if !g.graders.contains_key(name) {
                    return Err(GradeError::UnknownFormulaVariable {
                        path: path.to_owned(),
                        name: name.to_owned(),
                        known: g.graders.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
            for (key, child) in &g.graders {
                validate_at(child, &child_path(path, key))?;
            }
            Ok(())
        }
    }
}

fn validate_messages(messages: &[rft_types::EvalMessage], path: &str) -> Result<(), GradeError> {
    for (idx, message) in messages.iter().enumerate() {
        let text = serde_json::to_value(&message.content).unwrap_or(Value::Null);
        for (field, template) in strings_in(&text, &format!("{path}input[{idx}].content")) {
            if let Some(reference) = Template::parse(template).variables().find_map(Result::err) {
                return Err(GradeError::InvalidTemplate {
                    path: field,
                    reference: reference.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn strings_in<'a>(value: &'a Value, path: &str) -> Vec<(String, &'a str)> {
    match value {
        Value::String(s) => vec![(path.to_owned(), s.as_str())],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, v)| strings_in(v, &format!("{path}[{i}]")))
            .collect(),
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| strings_in(v, &format!("{path}.{k}")))
            .collect(),
        _ => Vec::new(),
    }
}

fn child_path(path: &str, key: &str) -> String {
    format!("{path}graders.{key}.")
}

/// `graders.x.` → `graders.x`; the root grader is called `grader`.
fn display_path(path: &str) -> String {
    match path.trim_end_matches('.') {
        "" => "grader".to_owned(),
        path => path.to_owned(),
    }
}

/// The score of one grader on one sample, before it is wrapped into a response.
#[derive(Default)]
struct Outcome {
    reward: f64,
    errors: GraderErrors,
    sub_rewards: IndexMap<String, f64>,
    /// `metadata.scores` when it is not `sub_rewards` (model graders: the judge's answer).
    scores: Option<Map<String, Value>>,
    /// The total usage of the judge calls made; `None` when there were none.
    token_usage: Option<TokenUsage>,
    /// Judge usage by the graders' model names.
    usage_per_model: IndexMap<String, TokenUsage>,
    /// The model that answered, when all judge calls were answered by the same one.
    sampled_model: Option<String>,
}

impl Outcome {
    fn score(reward: f64) -> Outcome {
        Outcome {
            reward,
            ..Outcome::default()
        }
    }

    fn failed(set: impl FnOnce(&mut GraderErrors)) -> Outcome {
        let mut errors = GraderErrors::default();
        set(&mut errors);
        Outcome {
            errors,
            ..Outcome::default()
        }
    }
}

impl CompiledGrader {
    /// The grader's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether grading calls a judge model (the grader is, or contains, a model grader). Such
    /// graders spend their time waiting on the network: callers that grade many samples
    /// should run up to the judge's `max_concurrency` of them at once, as
    /// [`CompiledGrader::grade_all`] and [`CompiledGrader::install`] do.
    pub fn calls_judge(&self) -> bool {
        self.judge.is_some()
    }

    /// Grades one sample against its item.
    pub fn grade(&self, sample: &Sample, item: &Value) -> RunGraderResponse {
        let start = Instant::now();
        let sample_value = sample.to_value();
        // One budget for every template this grade renders (children, judge messages).
        let budget = RenderBudget::per_grade();
        let outcome = self.outcome(Scope::new(item, &sample_value).with_budget(&budget));
        let scores = outcome.scores.unwrap_or_else(|| {
            outcome
                .sub_rewards
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect()
        });
        RunGraderResponse {
            reward: outcome.reward,
            metadata: GraderMetadata {
                name: self.name.clone(),
                kind: self.kind.to_owned(),
                errors: outcome.errors,
                execution_time: start.elapsed().as_secs_f64(),
                scores,
                token_usage: outcome.token_usage,
                sampled_model_name: outcome.sampled_model,
            },
            sub_rewards: outcome.sub_rewards,
            model_grader_token_usage_per_model: outcome.usage_per_model,
        }
    }

    /// Grades many samples in parallel; the results are in the order of `requests`. Runs on
    /// the pool [`CompiledGrader::install`] picks.
    pub fn grade_all(&self, requests: &[GradeRequest]) -> Vec<RunGraderResponse> {
        self.install(|| {
            requests
                .par_iter()
                .map(|r| self.grade(&r.sample, &r.item))
                .collect()
        })
    }

    /// Runs `work` (typically a rayon parallel iterator that calls [`CompiledGrader::grade`])
    /// on the thread pool that suits this grader, as [`rayon::ThreadPool::install`] does.
    ///
    /// Graders that call no judge use rayon's global pool (one thread per core). Graders that
    /// call a judge use the judge client's own pool, one thread per allowed concurrent call:
    /// they wait on the network rather than compute, so one thread per core would leave most
    /// of the allowed calls unused.
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match self.judge.as_ref().and_then(|judge| judge.thread_pool()) {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    fn outcome(&self, scope: Scope<'_>) -> Outcome {
        match &self.body {
            Body::StringCheck {
                input,
                reference,
                operation,
            } => match render_pair(input, reference, scope) {
                Ok((input, reference)) => {
                    Outcome::score(string_check(&input, &reference, *operation))
                }
                Err(err) => self.render_failed(err),
            },
            Body::TextSimilarity {
                input,
                reference,
                metric,
            } => match render_pair(input, reference, scope) {
                Ok((input, reference)) => Outcome::score(metric.score(&input, &reference)),
                Err(err) => self.render_failed(err),
            },
            Body::Cosine {
                input,
                reference,
                embedder,
            } => match render_pair(input, reference, scope) {
                Ok((input, reference)) => self.cosine(embedder.as_ref(), &input, &reference),
                Err(err) => self.render_failed(err),
            },
            Body::Multi { children, formula } => multi(children, formula, scope),
            Body::Python(grader) => match grader.grade(scope.sample, scope.item) {
                PythonOutcome::Reward(reward) => Outcome::score(reward),
                PythonOutcome::Runtime(details) => Outcome::failed(|e| {
                    e.python_grader_runtime_error = true;
                    e.python_grader_runtime_error_details = Some(details);
                }),
                PythonOutcome::Server { kind, details } => {
                    tracing::warn!("python grader {}: {kind}: {details}", self.name);
                    Outcome::failed(|e| {
                        e.python_grader_server_error = true;
                        e.python_grader_server_error_type = Some(kind);
                    })
                }
            },
            Body::Model(grader) => self.model_outcome(grader, scope),
        }
    }

    /// The `cosine` metric: both texts embedded in one call, then `util.cos_sim` of the two
    /// vectors. An empty (or all-whitespace) text scores 0 without a call, as it does for every
    /// other metric; OpenAI's embeddings API would refuse it. An embedder that fails, or answers
    /// with vectors that cannot be compared, gives reward 0 with `other_error` (the reason is
    /// logged: the response has no field for it).
    fn cosine(&self, embedder: &dyn Embedder, input: &str, reference: &str) -> Outcome {
        if input.trim().is_empty() || reference.trim().is_empty() {
            return Outcome::score(0.0);
        }
        let failed = |why: &dyn std::fmt::Display| {
            tracing::warn!("text_similarity grader {}: cosine: {why}", self.name);
            Outcome::failed(|e| e.other_error = true)
        };
        match embedder.embed(&[input, reference]) {
            Ok(vectors) => match vectors.as_slice() {
                [a, b] => match cosine_similarity(a, b) {
                    Some(cosine) => Outcome::score(cosine),
                    None => failed(&format_args!(
                        "{} returned vectors of lengths {} and {} that cannot be compared",
                        embedder.name(),
                        a.len(),
                        b.len()
                    )),
                },
                other => failed(&format_args!(
                    "{} returned {} vectors for 2 texts",
                    embedder.name(),
                    other.len()
                )),
            },
            Err(err) => failed(&err),
        }
    }

    /// A template that could not be rendered: a missing variable is the user's data
    /// (`invalid_variable_error`, logged at debug); a render over a size cap is `other_error`,
    /// logged as a warning that names the cap, since the response has no field to say it.
    fn render_failed(&self, err: RenderError) -> Outcome {
        match err {
            RenderError::Missing(_) => {
                tracing::debug!("{} grader {}: {err}", self.kind, self.name);
                Outcome::failed(|e| e.invalid_variable_error = true)
            }
            RenderError::TooLarge { .. } => {
                tracing::warn!("{} grader {}: {err}", self.kind, self.name);
                Outcome::failed(|e| e.other_error = true)
            }
        }
    }

    fn model_outcome(&self, grader: &ModelGrader, scope: Scope<'_>) -> Outcome {
        let judgement = grader.grade(scope);
        let mut outcome = match judgement.result {
            Ok(reward) => Outcome::score(reward),
            Err(Failure::MissingVariable(err)) => return self.render_failed(err),
            Err(Failure::Refusal) => Outcome::failed(|e| e.model_grader_refusal_error = true),
            Err(Failure::Parse(why)) => {
                tracing::debug!("{} grader {}: {why}", self.kind, self.name);
                Outcome::failed(|e| e.model_grader_parse_error = true)
            }
            Err(Failure::Server(err)) => {
                tracing::warn!("{} grader {}: {err}", self.kind, self.name);
                Outcome::failed(|e| {
                    e.model_grader_server_error = true;
                    e.model_grader_server_error_details = Some(err.to_string());
                })
            }
        };
        outcome.scores = Some(judgement.scores);
        outcome.sampled_model = judgement.sampled_model;
        if let Some(usage) = judgement.usage {
            outcome.token_usage = Some(usage);
            outcome
                .usage_per_model
                .insert(grader.model().to_owned(), usage);
        }
        outcome
    }
}

fn render_pair(
    input: &Template,
    reference: &Template,
    scope: Scope<'_>,
) -> Result<(String, String), RenderError> {
    Ok((input.render(scope)?, reference.render(scope)?))
}

/// `ilike` folds case with Unicode's full lowercase mapping, so `Straße`/`STRASSE` still differ
/// (no ß→ss folding) but `ΣΟΦΟΣ`/`σοφος` match in any position.
fn string_check(input: &str, reference: &str, operation: StringCheckOperation) -> f64 {
    let pass = match operation {
        StringCheckOperation::Eq => input == reference,
        StringCheckOperation::Ne => input != reference,
        StringCheckOperation::Like => input.contains(reference),
        StringCheckOperation::Ilike => fold_case(input).contains(&fold_case(reference)),
    };
    if pass {
        1.0
    } else {
        0.0
    }
}

/// Lowercases per character, so that a final sigma folds to `σ` like any other sigma and
/// containment is not broken by position-dependent forms.
fn fold_case(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| if c == 'ς' { 'σ' } else { c })
        .collect()
}

impl Metric {
    fn score(self, input: &str, reference: &str) -> f64 {
        match self {
            Metric::FuzzyMatch => metrics::fuzzy_match(input, reference),
            Metric::Bleu => metrics::bleu(input, reference),
            Metric::Gleu => metrics::gleu(input, reference),
            Metric::Meteor(wordnet) => metrics::meteor(input, reference, wordnet),
            Metric::RougeN(n) => metrics::rouge_n(input, reference, n),
            Metric::RougeL => metrics::rouge_l(input, reference),
        }
    }
}

/// Children all grade the same sample; the formula combines their rewards. Any child error
/// makes the whole grade an error (reward 0, the child's flags raised), as a single grader's
/// error would: a partial score would reward a sample that could not be judged.
fn multi(
    children: &[(String, CompiledGrader)],
    formula: &Result<Formula, FormulaError>,
    scope: Scope<'_>,
) -> Outcome {
    let mut errors = GraderErrors::default();
    let mut sub_rewards = IndexMap::new();
    let mut token_usage: Option<TokenUsage> = None;
    let mut usage_per_model: IndexMap<String, TokenUsage> = IndexMap::new();
    let mut sampled_models: Vec<String> = Vec::new();
    for (key, child) in children {
        let outcome = child.outcome(scope);
        errors.merge(&outcome.errors);
        sub_rewards.insert(key.clone(), outcome.reward);
        if let Some(usage) = &outcome.token_usage {
            token_usage
                .get_or_insert_with(TokenUsage::default)
                .add(usage);
        }
        for (model, usage) in &outcome.usage_per_model {
            usage_per_model.entry(model.clone()).or_default().add(usage);
        }
        if let Some(model) = outcome.sampled_model {
            if !sampled_models.contains(&model) {
                sampled_models.push(model);
            }
        }
    }
    let reward = match formula {
        Err(err) => {
            tracing::debug!("{err}");
            errors.formula_parse_error = true;
            0.0
        }
        Ok(formula) => match formula.evaluate(&|name| sub_rewards.get(name).copied()) {
            Ok(value) => value,
            Err(EvalError::UnknownVariable(name)) => {
                tracing::debug!("calculate_output: unknown variable {name:?}");
                errors.invalid_variable_error = true;
                0.0
            }
            Err(EvalError::NotFinite) => {
                errors.other_error = true;
                0.0
            }
        },
    };
    Outcome {
        reward: if errors.any() { 0.0 } else { reward },
        errors,
        sub_rewards,
        scores: None,
        token_usage,
        usage_per_model,
        // One name says which model judged; several cannot be said in one string field.
        sampled_model: match sampled_models.len() {
            1 => sampled_models.pop(),
            _ => None,
        },
    }
}
