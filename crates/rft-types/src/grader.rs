//! Grader specifications (spec §2): the JSON a user writes to say how a sample is scored.
//!
//! Parsing goes through [`Grader::from_value`] rather than a derived `Deserialize`, because serde's
//! internally tagged enums buffer their input and lose the JSON path; users need errors such as
//! `graders.name.evaluation_metric: unknown metric "blue"; expected one of ...`.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A grader of any type. Serialises to the wire shape, with `type` as the discriminator.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Grader {
    /// Compares two rendered strings (§2.3).
    StringCheck(StringCheckGrader),
    /// Scores the similarity of two rendered strings with a text metric (§2.4).
    TextSimilarity(TextSimilarityGrader),
    /// Runs user Python code (§2.7).
    Python(PythonGrader),
    /// Asks a model for a numeric score (§2.5).
    ScoreModel(ScoreModelGrader),
    /// Asks a model to pick a label (§2.6).
    LabelModel(LabelModelGrader),
    /// Combines named child graders with a formula (§2.8).
    Multi(MultiGrader),
}

/// The `type` values, in the order error messages list them.
pub const GRADER_TYPES: [&str; 6] = [
    "string_check",
    "text_similarity",
    "python",
    "score_model",
    "label_model",
    "multi",
];

impl Grader {
    /// The grader's `name` field.
    pub fn name(&self) -> &str {
        match self {
            Grader::StringCheck(g) => &g.name,
            Grader::TextSimilarity(g) => &g.name,
            Grader::Python(g) => &g.name,
            Grader::ScoreModel(g) => &g.name,
            Grader::LabelModel(g) => &g.name,
            Grader::Multi(g) => &g.name,
        }
    }

    /// The wire name of the grader's type, e.g. `"string_check"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Grader::StringCheck(_) => "string_check",
            Grader::TextSimilarity(_) => "text_similarity",
            Grader::Python(_) => "python",
            Grader::ScoreModel(_) => "score_model",
            Grader::LabelModel(_) => "label_model",
            Grader::Multi(_) => "multi",
        }
    }

    /// Parses a grader from JSON text; errors name the JSON path of the problem.
    pub fn from_json_str(text: &str) -> Result<Grader, SpecError> {
        let value: Value = serde_json::from_str(text).map_err(|e| SpecError {
            path: String::new(),
            message: format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        })?;
        Grader::from_value(&value)
    }

    /// Parses a grader from a JSON value; errors name the JSON path of the problem.
    pub fn from_value(value: &Value) -> Result<Grader, SpecError> {
        parse_grader(value, &Path::root(), Nesting::TopLevel)
    }
}

impl<'de> Deserialize<'de> for Grader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Grader::from_value(&value).map_err(de::Error::custom)
    }
}

/// `string_check`: 1 when the comparison holds, else 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StringCheckGrader {
    /// The grader's name.
    pub name: String,
    /// Templated text, usually `{{sample.output_text}}`.
    pub input: String,
    /// Templated text compared against `input`.
    pub reference: String,
    /// The comparison.
    pub operation: StringCheckOperation,
}

/// The comparisons of `string_check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringCheckOperation {
    /// Exactly equal, case-sensitive.
    Eq,
    /// Not exactly equal, case-sensitive. `neq` (the guide's spelling) is accepted as an alias.
    Ne,
    /// `input` contains `reference`, case-sensitive.
    Like,
    /// `input` contains `reference`, ignoring case.
    Ilike,
}

impl<'de> Deserialize<'de> for StringCheckOperation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "eq" => Ok(Self::Eq),
            "ne" | "neq" => Ok(Self::Ne),
            "like" => Ok(Self::Like),
            "ilike" => Ok(Self::Ilike),
            other => Err(de::Error::custom(format!(
                "unknown operation {other:?}; expected one of \"eq\", \"ne\", \"like\", \"ilike\""
            ))),
        }
    }
}

/// `text_similarity`: a similarity metric between two rendered strings, in 0..1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSimilarityGrader {
    /// The grader's name.
    pub name: String,
    /// Templated text, usually `{{sample.output_text}}`.
    pub input: String,
    /// Templated reference text.
    pub reference: String,
    /// Which metric.
    pub evaluation_metric: EvaluationMetric,
    /// Evals only: the score at or above which a sample passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_threshold: Option<f64>,
}

/// The metrics of `text_similarity`; docs/graders.md defines each by its reference implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaluationMetric {
    /// Cosine similarity of sentence embeddings.
    Cosine,
    /// rapidfuzz `WRatio` with `default_process`, divided by 100.
    FuzzyMatch,
    /// sacrebleu sentence BLEU, divided by 100.
    Bleu,
    /// nltk sentence GLEU.
    Gleu,
    /// nltk METEOR with WordNet synonyms.
    Meteor,
    /// rouge_score ROUGE-1 F-measure.
    #[serde(rename = "rouge_1")]
    Rouge1,
    /// rouge_score ROUGE-2 F-measure.
    #[serde(rename = "rouge_2")]
    Rouge2,
    /// rouge_score ROUGE-3 F-measure.
    #[serde(rename = "rouge_3")]
    Rouge3,
    /// rouge_score ROUGE-4 F-measure.
    #[serde(rename = "rouge_4")]
    Rouge4,
    /// rouge_score ROUGE-5 F-measure.
    #[serde(rename = "rouge_5")]
    Rouge5,
    /// rouge_score ROUGE-L F-measure.
    #[serde(rename = "rouge_l")]
    RougeL,
}

impl EvaluationMetric {
    /// Every metric, in the spec's order.
    pub const ALL: [EvaluationMetric; 11] = [
        Self::Cosine,
        Self::FuzzyMatch,
        Self::Bleu,
        Self::Gleu,
        Self::Meteor,
        Self::Rouge1,
        Self::Rouge2,
        Self::Rouge3,
        Self::Rouge4,
        Self::Rouge5,
        Self::RougeL,
    ];

    /// The wire name, e.g. `"rouge_l"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::FuzzyMatch => "fuzzy_match",
            Self::Bleu => "bleu",
            Self::Gleu => "gleu",
            Self::Meteor => "meteor",
            Self::Rouge1 => "rouge_1",
            Self::Rouge2 => "rouge_2",
            Self::Rouge3 => "rouge_3",
            Self::Rouge4 => "rouge_4",
            Self::Rouge5 => "rouge_5",
            Self::RougeL => "rouge_l",
        }
    }
}

impl fmt::Display for EvaluationMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EvaluationMetric {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EvaluationMetric::ALL
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<String> = EvaluationMetric::ALL
                    .iter()
                    .map(|m| format!("{:?}", m.as_str()))
                    .collect();
                de::Error::custom(format!(
                    "unknown metric {text:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// `python`: user code defining `grade(sample, item) -> float`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonGrader {
    /// The grader's name.
    pub name: String,
    /// Python source defining `grade(sample, item)`.
    pub source: String,
    /// The grader environment; `"2025-05-08"` is the documented tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,
    /// Evals only: the score at or above which a sample passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_threshold: Option<f64>,
}

/// `score_model`: a model reads templated messages and answers with a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreModelGrader {
    /// The grader's name.
    pub name: String,
    /// The judge model's name, as the judge endpoint knows it.
    pub model: String,
    /// Templated messages sent to the judge.
    pub input: Vec<EvalMessage>,
    /// Scores are clipped into this range; `[0, 1]` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
    /// Sampling parameters for the judge call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_params: Option<ScoreModelSamplingParams>,
    /// Evals only: the score at or above which a sample passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_threshold: Option<f64>,
}

/// Sampling parameters of a `score_model` judge call; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreModelSamplingParams {
    /// Completion token limit (the spec's spelling, with "completions").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completions_tokens: Option<u64>,
    /// `none|minimal|low|medium|high|xhigh|max`, for reasoning judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
}

/// `label_model`: a model reads templated messages and picks one of `labels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelModelGrader {
    /// The grader's name.
    pub name: String,
    /// The judge model's name.
    pub model: String,
    /// Templated messages sent to the judge.
    pub input: Vec<EvalMessage>,
    /// The labels the judge chooses from.
    pub labels: Vec<String>,
    /// The labels that count as a pass; a subset of `labels`.
    pub passing_labels: Vec<String>,
}

/// `multi`: named child graders combined by `calculate_output`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiGrader {
    /// The grader's name.
    pub name: String,
    /// Children keyed by the names `calculate_output` uses, in the order given.
    pub graders: IndexMap<String, Grader>,
    /// Arithmetic over the child keys, e.g. `"(name + email) / 2"`.
    pub calculate_output: String,
}

/// A message of a model grader's `input` (spec §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMessage {
    /// `user`, `assistant`, `system` or `developer`.
    pub role: MessageRole,
    /// Text or content items; every string may hold templates.
    pub content: MessageContent,
    /// Always `"message"` when present.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The roles a model grader message may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// The user.
    User,
    /// The assistant.
    Assistant,
    /// System instructions.
    System,
    /// Developer instructions.
    Developer,
}

/// A message's content: a plain string, one item, or a list of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// A list of content items.
    Items(Vec<ContentItem>),
    /// A single content item.
    Item(ContentItem),
}

/// One content item of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ContentItem {
    /// A bare string.
    Text(String),
    /// A typed item (`input_text`, `output_text`, `input_image`, `input_audio`).
    Typed(TypedContent),
}

/// The typed content items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TypedContent {
    /// Text given to the model.
    InputText {
        /// The text.
        text: String,
    },
    /// Text the model produced earlier.
    OutputText {
        /// The text.
        text: String,
    },
    /// An image by URL (or data URL).
    InputImage {
        /// The image URL.
        image_url: String,
        /// `high`, `low` or `auto`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Base64 audio.
    InputAudio {
        /// The audio payload.
        input_audio: InputAudio,
    },
}

/// A base64 audio payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputAudio {
    /// Base64 data (may be a template).
    pub data: String,
    /// `mp3` or `wav`.
    pub format: String,
}

/// A grader spec that could not be parsed: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The JSON path of the offending value, e.g. `graders.name.evaluation_metric`; empty for the root.
    pub path: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A JSON path being built while descending into a grader.
#[derive(Clone)]
struct Path(String);

impl Path {
    fn root() -> Path {
        Path(String::new())
    }

    fn key(&self, key: &str) -> Path {
        if self.0.is_empty() {
            Path(key.to_owned())
        } else {
            Path(format!("{}.{key}", self.0))
        }
    }

    fn error(&self, message: impl Into<String>) -> SpecError {
        SpecError {
            path: self.0.clone(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Nesting {
    TopLevel,
    MultiChild,
}

fn parse_grader(value: &Value, path: &Path, nesting: Nesting) -> Result<Grader, SpecError> {
    let Some(object) = value.as_object() else {
        return Err(path.error(format!("expected a grader object, got {}", describe(value))));
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => {
            return Err(path
                .key("type")
                .error(format!("expected a string, got {}", describe(other))))
        }
        None => {
            return Err(path.error(format!(
                "missing field `type`; expected one of {}",
                quoted(&GRADER_TYPES)
            )))
        }
    };
    match kind {
        "string_check" => typed(value, path).map(Grader::StringCheck),
        "text_similarity" => typed(value, path).map(Grader::TextSimilarity),
        "python" => typed(value, path).map(Grader::Python),
        "score_model" => {
            let grader: ScoreModelGrader = typed(value, path)?;
            if let Some([low, high]) = grader.range {
                if !(low.is_finite() && high.is_finite() && low < high) {
                    return Err(path.key("range").error(format!(
                        "expected [min, max] with min < max, got [{low}, {high}]"
                    )));
                }
            }
            Ok(Grader::ScoreModel(grader))
        }
        "label_model" => {
            let grader: LabelModelGrader = typed(value, path)?;
            if grader.labels.is_empty() {
                return Err(path.key("labels").error("expected at least one label"));
            }
            if let Some(stray) = grader
                .passing_labels
                .iter()
                .find(|l| !grader.labels.contains(l))
            {
                return Err(path.key("passing_labels").error(format!(
                    "{stray:?} is not one of `labels` ({})",
                    quoted(&grader.labels)
                )));
            }
            Ok(Grader::LabelModel(grader))
        }
        "multi" if nesting == Nesting::MultiChild => Err(path
            .key("type")
            .error("a multi grader cannot contain another multi grader")),
        "multi" => parse_multi(object, path).map(Grader::Multi),
        other => Err(path.key("type").error(format!(
            "unknown grader type {other:?}; expected one of {}",
            quoted(&GRADER_TYPES)
        ))),
    }
}

fn parse_multi(
    object: &serde_json::Map<String, Value>,
    path: &Path,
) -> Result<MultiGrader, SpecError> {
    let name = required_string(object, "name", path)?;
    let calculate_output = required_string(object, "calculate_output", path)?;
    let graders_path = path.key("graders");
    let children = object
        .get("graders")
        .ok_or_else(|| path.error("missing field `graders`"))?;
    let mut graders = IndexMap::new();
    match children {
        // A single grader object, as SDK-generated clients send it: keyed by its own name.
        Value::Object(map) if map.contains_key("type") => {
            let child = parse_grader(children, &graders_path, Nesting::MultiChild)?;
            graders.insert(child.name().to_owned(), child);
        }
        // The canonical named map.
        Value::Object(map) => {
            for (key, child) in map {
                let child = parse_grader(child, &graders_path.key(key), Nesting::MultiChild)?;
                graders.insert(key.clone(), child);
            }
        }
        // An array, as the spec's example shows: keyed by each child's name.
        Value::Array(items) => {
            for (idx, child) in items.iter().enumerate() {
                let child_path = Path(format!("{}[{idx}]", graders_path.0));
                let child = parse_grader(child, &child_path, Nesting::MultiChild)?;
                if graders.contains_key(child.name()) {
                    return Err(child_path.key("name").error(format!(
                        "duplicate grader name {:?}: in an array every child needs its own name",
                        child.name()
                    )));
                }
                graders.insert(child.name().to_owned(), child);
            }
        }
        other => {
            return Err(graders_path.error(format!(
                "expected a map of named graders, got {}",
                describe(other)
            )))
        }
    }
    if graders.is_empty() {
        return Err(graders_path.error("expected at least one grader"));
    }
    Ok(MultiGrader {
        name,
        graders,
        calculate_output,
    })
}

fn required_string(
    object: &serde_json::Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<String, SpecError> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(path
            .key(key)
            .error(format!("expected a string, got {}", describe(other)))),
        None => Err(path.error(format!("missing field `{key}`"))),
    }
}

/// Deserialises one grader struct, keeping the path of the failing field.
fn typed<T: DeserializeOwned>(value: &Value, path: &Path) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let full = match (path.0.is_empty(), inner == ".") {
            (_, true) => path.0.clone(),
            (true, false) => inner,
            (false, false) if inner.starts_with('[') => format!("{}{inner}", path.0),
            (false, false) => format!("{}.{inner}", path.0),
        };
        SpecError {
            path: full,
            message: err.into_inner().to_string(),
        }
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn quoted<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(value: Value) -> String {
        Grader::from_value(&value).unwrap_err().to_string()
    }

    #[test]
    fn unknown_metric_names_path_and_choices() {
        let err = error_of(json!({
            "type": "multi", "name": "m", "calculate_output": "name",
            "graders": {"name": {"type": "text_similarity", "name": "n", "input": "a",
                                  "reference": "b", "evaluation_metric": "blue"}}
        }));
        assert!(
            err.starts_with("graders.name.evaluation_metric: unknown metric \"blue\"; expected one of \"cosine\""),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_reported_at_its_parent() {
        let err =
            error_of(json!({"type": "string_check", "name": "s", "input": "a", "operation": "eq"}));
        assert_eq!(err, "missing field `reference`");
    }

    #[test]
    fn wrong_type_names_field() {
        let err = error_of(
            json!({"type": "string_check", "name": "s", "input": 3, "reference": "a", "operation": "eq"}),
        );
        assert!(
            err.starts_with("input: invalid type: integer `3`, expected a string"),
            "{err}"
        );
    }

    #[test]
    fn unknown_grader_type_lists_choices() {
        let err = error_of(json!({"type": "regex", "name": "r"}));
        assert!(
            err.starts_with(
                "type: unknown grader type \"regex\"; expected one of \"string_check\""
            ),
            "{err}"
        );
    }

    #[test]
    fn neq_is_accepted_and_normalised_to_ne() {
        let g = Grader::from_value(&json!({"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "neq"})).unwrap();
        assert_eq!(serde_json::to_value(&g).unwrap()["operation"], "ne");
    }

    #[test]
    fn multi_round_trips_with_named_map_in_order() {
        let spec = json!({
            "type": "multi", "name": "m", "calculate_output": "(b + a) / 2",
            "graders": {
                "b": {"type": "string_check", "name": "bb", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"},
                "a": {"type": "text_similarity", "name": "aa", "input": "x", "reference": "y", "evaluation_metric": "rouge_l"}
            }
        });
        let grader = Grader::from_value(&spec).unwrap();
        assert_eq!(serde_json::to_value(&grader).unwrap(), spec);
    }

    #[test]
    fn multi_accepts_array_and_single_object_keyed_by_name() {
        let child = json!({"type": "string_check", "name": "exact", "input": "a", "reference": "a", "operation": "eq"});
        for graders in [json!([child.clone()]), child.clone()] {
            let Grader::Multi(m) = Grader::from_value(&json!({"type": "multi", "name": "m", "calculate_output": "exact", "graders": graders})).unwrap() else {
                panic!("not multi")
            };
            assert_eq!(m.graders.keys().collect::<Vec<_>>(), ["exact"]);
        }
    }

    #[test]
    fn nested_multi_is_rejected() {
        let err = error_of(
            json!({"type": "multi", "name": "m", "calculate_output": "x",
            "graders": {"x": {"type": "multi", "name": "inner", "calculate_output": "1", "graders": {}}}}),
        );
        assert_eq!(
            err,
            "graders.x.type: a multi grader cannot contain another multi grader"
        );
    }

    #[test]
    fn passing_labels_must_be_labels() {
        let err = error_of(json!({"type": "label_model", "name": "l", "model": "m",
            "input": [{"role": "user", "content": "hi"}], "labels": ["a", "b"], "passing_labels": ["c"]}));
        assert_eq!(
            err,
            "passing_labels: \"c\" is not one of `labels` (\"a\", \"b\")"
        );
    }

    #[test]
    fn score_model_messages_accept_every_content_shape() {
        let spec = json!({"type": "score_model", "name": "s", "model": "judge", "range": [0.0, 10.0],
        "input": [
            {"role": "system", "content": "be fair"},
            {"role": "user", "type": "message", "content": {"type": "input_text", "text": "{{item.q}}"}},
            {"role": "user", "content": [{"type": "input_image", "image_url": "{{item.url}}", "detail": "auto"}, "bare"]}
        ]});
        let grader = Grader::from_value(&spec).unwrap();
        assert_eq!(serde_json::to_value(&grader).unwrap(), spec);
    }
}
