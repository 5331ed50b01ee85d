//! `score_model` and `label_model` (spec §2.5, §2.6): templated messages in, a judge's
//! structured answer out.
//!
//! The choices where the spec is silent (docs/graders.md, "Model graders"):
//! - OpenRFT's own system prompt comes first and asks for a JSON object whose `steps` come
//!   before the `result` (or `label`): structured outputs are generated in schema order, so the
//!   judge reasons before it commits to a score;
//! - the answer is constrained with a strict `json_schema` response format; a `label_model`
//!   schema makes `label` an `enum` of the grader's labels;
//! - `developer` messages are sent as `system`, and leading system messages are merged into the
//!   system prompt, because many open models' chat templates accept one system message only,
//!   and only first;
//! - text-only content is sent as one string (parts joined by newlines), which every server
//!   accepts; images and audio become chat-completions content parts.

use std::sync::Arc;

use rft_types::{
    ContentItem, EvalMessage, LabelModelGrader, MessageContent, MessageRole, ScoreModelGrader,
    TokenUsage, TypedContent,
};
use serde_json::{json, Map, Value};

use super::{CallError, Completion, JudgeClient};
use crate::template::{MissingVariable, Scope, Template};

/// The most characters of an unparseable answer kept in `metadata.scores.raw_answer`.
const MAX_RAW_ANSWER_CHARS: usize = 4000;

/// The name of the `json_schema` response format of each grader type.
const SCORE_SCHEMA_NAME: &str = "score_model_grade";
const LABEL_SCHEMA_NAME: &str = "label_model_grade";

/// A compiled `score_model` or `label_model` grader.
#[derive(Debug)]
pub(crate) struct ModelGrader {
    client: Arc<JudgeClient>,
    model: String,
    system_prompt: String,
    messages: Vec<MessageTemplate>,
    /// `response_format` plus the sampling parameters: the request less its messages.
    request: Map<String, Value>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Score {
        low: f64,
        high: f64,
    },
    Label {
        labels: Vec<String>,
        passing: Vec<String>,
    },
}

#[derive(Debug)]
struct MessageTemplate {
    role: &'static str,
    content: ContentTemplate,
}

#[derive(Debug)]
enum ContentTemplate {
    Text(Template),
    Parts(Vec<PartTemplate>),
}

#[derive(Debug)]
enum PartTemplate {
    Text(Template),
    Image {
        url: Template,
        detail: Option<Template>,
    },
    Audio {
        data: Template,
        format: Template,
    },
}

/// What one model grade produced.
#[derive(Debug)]
pub(crate) struct Judgement {
    /// The reward, or why there is none.
    pub(crate) result: Result<f64, Failure>,
    /// What the judge call cost; `None` when no answer came back.
    pub(crate) usage: Option<TokenUsage>,
    /// The model the endpoint says answered.
    pub(crate) sampled_model: Option<String>,
    /// `metadata.scores`: the judge's steps and result, or what could not be parsed.
    pub(crate) scores: Map<String, Value>,
}

/// Why a model grade has no reward.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A template variable is missing; the judge was not called.
    MissingVariable(MissingVariable),
    /// The judge refused (a `refusal` message, or a content filter).
    Refusal,
    /// The judge's answer is not the requested JSON.
    Parse(String),
    /// The call failed, after retries.
    Server(CallError),
}

impl ModelGrader {
    /// Compiles a `score_model` grader; `range` must already be checked (finite, low < high).
    pub(crate) fn score(grader: &ScoreModelGrader, client: Arc<JudgeClient>) -> ModelGrader {
        let [low, high] = grader.range.unwrap_or([0.0, 1.0]);
        let mut request = Map::new();
        request.insert(
            "response_format".into(),
            response_format(SCORE_SCHEMA_NAME, json!({"type": "number"}), "result"),
        );
        if let Some(params) = &grader.sampling_params {
            let mut set = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    request.insert(key.to_owned(), value);
                }
            };
            set("temperature", params.temperature.map(Value::from));
            set("top_p", params.top_p.map(Value::from));
            set("seed", params.seed.map(Value::from));
            // The spec's `max_completions_tokens` is chat completions' `max_completion_tokens`.
            set(
                "max_completion_tokens",
                params.max_completions_tokens.map(Value::from),
            );
            set(
                "reasoning_effort",
                params.reasoning_effort.clone().map(Value::from),
            );
        }
        ModelGrader {
            client,
            model: grader.model.clone(),
            system_prompt: score_prompt(low, high),
            messages: grader.input.iter().map(MessageTemplate::compile).collect(),
            request,
            kind: Kind::Score { low, high },
        }
    }

    /// Compiles a `label_model` grader.
    pub(crate) fn label(grader: &LabelModelGrader, client: Arc<JudgeClient>) -> ModelGrader {
        let mut request = Map::new();
        request.insert(
            "response_format".into(),
            response_format(
                LABEL_SCHEMA_NAME,
                json!({"type": "string", "enum": grader.labels}),
                "label",
            ),
        );
        ModelGrader {
            client,
            model: grader.model.clone(),
            system_prompt: label_prompt(&grader.labels),
            messages: grader.input.iter().map(MessageTemplate::compile).collect(),
            request,
            kind: Kind::Label {
                labels: grader.labels.clone(),
                passing: grader.passing_labels.clone(),
            },
        }
    }

    /// The judge client this grader calls.
    pub(crate) fn client(&self) -> &Arc<JudgeClient> {
        &self.client
    }

    /// The judge model's name, as the grader names it.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// Renders the messages, calls the judge and scores its answer.
    pub(crate) fn grade(&self, scope: Scope<'_>) -> Judgement {
        let request = match self.request(scope) {
            Ok(request) => request,
            Err(missing) => return Judgement::failed(Failure::MissingVariable(missing)),
        };
        match self.client.complete(&request) {
            Ok(completion) => self.judge(completion),
            Err(err) => Judgement::failed(Failure::Server(err)),
        }
    }

    /// The full chat-completions request for one sample.
    pub(crate) fn request(&self, scope: Scope<'_>) -> Result<Value, MissingVariable> {
        let mut system = self.system_prompt.clone();
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        let mut leading = true;
        for template in &self.messages {
            let message = template.render(scope)?;
            let merged = leading && message.role == "system";
            match (&message.content, merged) {
                (Value::String(text), true) => {
                    system.push_str("\n\n");
                    system.push_str(text);
                }
                _ => {
                    leading = false;
                    messages.push(json!({"role": message.role, "content": message.content}));
                }
            }
        }
        messages.insert(0, json!({"role": "system", "content": system}));
        let mut request = Map::new();
        request.insert("model".into(), Value::from(self.model.as_str()));
        request.insert("messages".into(), Value::Array(messages));
        request.extend(self.request.clone());
        Ok(Value::Object(request))
    }

    fn judge(&self, completion: Completion) -> Judgement {
        let mut judgement = Judgement {
            result: Err(Failure::Refusal),
            usage: Some(completion.usage),
            sampled_model: completion.model.clone(),
            scores: Map::new(),
        };
        if let Some(refusal) = completion.refusal {
            judgement.scores.insert("refusal".into(), refusal.into());
            return judgement;
        }
        if completion.finish_reason.as_deref() == Some("content_filter") {
            judgement
                .scores
                .insert("refusal".into(), "content_filter".into());
            return judgement;
        }
        let raw = completion.content.unwrap_or_default();
        judgement.result = match self.read_answer(&raw, &mut judgement.scores) {
            Ok(reward) => Ok(reward),
            Err(why) => {
                judgement.scores.insert(
                    "raw_answer".into(),
                    Value::from(truncate(&raw, MAX_RAW_ANSWER_CHARS)),
                );
                Err(Failure::Parse(why))
            }
        };
        judgement
    }

    /// Reads the structured answer; the steps go to `scores` even if the result is unusable.
    fn read_answer(&self, raw: &str, scores: &mut Map<String, Value>) -> Result<f64, String> {
        let answer: Value = serde_json::from_str(strip_code_fence(raw))
            .map_err(|e| format!("the answer is not JSON: {e}"))?;
        let Value::Object(mut answer) = answer else {
            return Err("the answer is not a JSON object".to_owned());
        };
        if let Some(steps) = answer.remove("steps") {
            scores.insert("steps".into(), steps);
        }
        match &self.kind {
            Kind::Score { low, high } => {
                let result = answer
                    .get("result")
                    .and_then(Value::as_f64)
                    .filter(|r| r.is_finite())
                    .ok_or_else(|| "the answer has no numeric `result`".to_owned())?;
                scores.insert("result".into(), Value::from(result));
                Ok(result.clamp(*low, *high))
            }
            Kind::Label { labels, passing } => {
                let label = answer
                    .get("label")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "the answer has no string `label`".to_owned())?;
                scores.insert("label".into(), Value::from(label));
                if !labels.iter().any(|l| l == label) {
                    return Err(format!("{label:?} is not one of the grader's labels"));
                }
                Ok(if passing.iter().any(|l| l == label) {
                    1.0
                } else {
                    0.0
                })
            }
        }
    }
}

impl Judgement {
    fn failed(failure: Failure) -> Judgement {
        Judgement {
            result: Err(failure),
            usage: None,
            sampled_model: None,
            scores: Map::new(),
        }
    }
}

/// The system prompt of `score_model` (docs/graders.md quotes it).
pub(crate) fn score_prompt(low: f64, high: f64) -> String {
    format!(
        "You are a grader. The messages after this one say what to grade and how to score it.\n\
         Reason step by step, then answer with one JSON object and nothing else:\n\
         {{\"steps\": [{{\"description\": \"<what you checked>\", \"conclusion\": \"<what you found>\"}}], \"result\": <score>}}\n\
         \"result\" is the score: one number from {low} to {high}, on the scale the instructions define."
    )
}

/// The system prompt of `label_model` (docs/graders.md quotes it).
pub(crate) fn label_prompt(labels: &[String]) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|l| Value::from(l.as_str()).to_string())
        .collect();
    format!(
        "You are a grader. The messages after this one say what to classify and how.\n\
         Reason step by step, then answer with one JSON object and nothing else:\n\
         {{\"steps\": [{{\"description\": \"<what you checked>\", \"conclusion\": \"<what you found>\"}}], \"label\": <label>}}\n\
         \"label\" is exactly one of: {}.",
        labels.join(", ")
    )
}

/// A strict `json_schema` response format: `steps` then the answer field.
fn response_format(name: &str, answer: Value, answer_key: &str) -> Value {
    let step = json!({
        "type": "object",
        "properties": {
            "description": {"type": "string"},
            "conclusion": {"type": "string"}
        },
        "required": ["description", "conclusion"],
        "additionalProperties": false
    });
    let mut properties = Map::new();
    properties.insert("steps".into(), json!({"type": "array", "items": step}));
    properties.insert(answer_key.into(), answer);
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": true,
            "schema": {
                "type": "object",
                "properties": properties,
                "required": ["steps", answer_key],
                "additionalProperties": false
            }
        }
    })
}

/// Judges without enforced structured output sometimes wrap JSON in a Markdown code fence.
fn strip_code_fence(raw: &str) -> &str {
    let text = raw.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let Some(inner) = inner.strip_suffix("```") else {
        return text;
    };
    // Drop the info string (`json`) on the opening line.
    match inner.split_once('\n') {
        Some((_, body)) => body.trim(),
        None => inner.trim(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

struct RenderedMessage {
    role: &'static str,
    content: Value,
}

impl MessageTemplate {
    fn compile(message: &EvalMessage) -> MessageTemplate {
        let role = match message.role {
            MessageRole::User => "user",
            MessageRole::Assistant => "assistant",
            // Chat templates of open models rarely know `developer`; OpenAI treats `system`
            // as `developer` for the models that distinguish them.
            MessageRole::System | MessageRole::Developer => "system",
        };
        let content = match &message.content {
            MessageContent::Text(text) => ContentTemplate::Text(Template::parse(text)),
            MessageContent::Item(item) => ContentTemplate::Parts(vec![PartTemplate::compile(item)]),
            MessageContent::Items(items) => {
                ContentTemplate::Parts(items.iter().map(PartTemplate::compile).collect())
            }
        };
        MessageTemplate { role, content }
    }

    fn render(&self, scope: Scope<'_>) -> Result<RenderedMessage, MissingVariable> {
        let content = match &self.content {
            ContentTemplate::Text(text) => Value::String(text.render(scope)?),
            ContentTemplate::Parts(parts) => {
                let rendered = parts
                    .iter()
                    .map(|p| p.render(scope))
                    .collect::<Result<Vec<_>, _>>()?;
                let texts: Option<Vec<&str>> = rendered
                    .iter()
                    .map(|p| match p.get("type").and_then(Value::as_str) {
                        Some("text") => p.get("text").and_then(Value::as_str),
                        _ => None,
                    })
                    .collect();
                match texts {
                    Some(texts) => Value::String(texts.join("\n")),
                    None => Value::Array(rendered),
                }
            }
        };
        Ok(RenderedMessage {
            role: self.role,
            content,
        })
    }
}

impl PartTemplate {
    fn compile(item: &ContentItem) -> PartTemplate {
        match item {
            ContentItem::Text(text)
            | ContentItem::Typed(TypedContent::InputText { text })
            | ContentItem::Typed(TypedContent::OutputText { text }) => {
                PartTemplate::Text(Template::parse(text))
            }
            ContentItem::Typed(TypedContent::InputImage { image_url, detail }) => {
                PartTemplate::Image {
                    url: Template::parse(image_url),
                    detail: detail.as_deref().map(Template::parse),
                }
            }
            ContentItem::Typed(TypedContent::InputAudio { input_audio }) => PartTemplate::Audio {
                data: Template::parse(&input_audio.data),
                format: Template::parse(&input_audio.format),
            },
        }
    }

    /// The chat-completions content part.
    fn render(&self, scope: Scope<'_>) -> Result<Value, MissingVariable> {
        Ok(match self {
            PartTemplate::Text(text) => json!({"type": "text", "text": text.render(scope)?}),
            PartTemplate::Image { url, detail } => {
                let mut image = Map::new();
                image.insert("url".into(), url.render(scope)?.into());
                if let Some(detail) = detail {
                    image.insert("detail".into(), detail.render(scope)?.into());
                }
                json!({"type": "image_url", "image_url": image})
            }
            PartTemplate::Audio { data, format } => json!({
                "type": "input_audio",
                "input_audio": {"data": data.render(scope)?, "format": format.render(scope)?}
            }),
        })
    }
}
