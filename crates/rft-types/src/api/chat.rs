//! Chat completions (`POST /v1/chat/completions`): the answer objects, plain and streamed.

use serde::{Deserialize, Serialize};

/// Token counts of one chat request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUsage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Sampled tokens, over every choice.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl ChatUsage {
    /// Usage of a prompt and its completions.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> ChatUsage {
        ChatUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `"chat.completion"`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model name as the request gave it.
    pub model: String,
    /// One per sample (`n`).
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: ChatUsage,
    /// Always `"openrft"`.
    pub system_fingerprint: String,
    /// Always `"default"`.
    pub service_tier: String,
}

/// One sample of a [`ChatCompletion`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its position.
    pub index: usize,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Per-token log-probs, with `logprobs: true`.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: String,
}

/// The assistant message of a choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always `"assistant"`.
    pub role: String,
    /// The sampled text (outside any tool calls); null when the model only called tools.
    pub content: Option<String>,
    /// Always null.
    pub refusal: Option<String>,
    /// Always empty.
    pub annotations: Vec<serde_json::Value>,
    /// The tools the model called (`[{id, type: "function", function: {name, arguments}}]`),
    /// present only when it called any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

impl AssistantMessage {
    /// The assistant saying `content`.
    pub fn new(content: String) -> AssistantMessage {
        AssistantMessage {
            role: "assistant".into(),
            content: Some(content),
            refusal: None,
            annotations: Vec::new(),
            tool_calls: None,
        }
    }

    /// The assistant calling tools, with the text it wrote beside the calls (`content` is null
    /// when that text is empty, as OpenAI answers).
    pub fn with_tool_calls(
        content: String,
        tool_calls: Vec<serde_json::Value>,
    ) -> AssistantMessage {
        AssistantMessage {
            content: (!content.is_empty()).then_some(content),
            tool_calls: Some(tool_calls),
            ..AssistantMessage::new(String::new())
        }
    }
}

/// `choices[].logprobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// One record per sampled token.
    pub content: Vec<TokenLogprob>,
    /// Always null.
    pub refusal: Option<Vec<TokenLogprob>>,
}

/// One token's log-prob record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's share of the text.
    pub token: String,
    /// Its log-probability under the model.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Always empty: alternatives are not recorded.
    pub top_logprobs: Vec<serde_json::Value>,
}

/// A `chat.completion.chunk` of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// The same `chatcmpl-…` for every chunk of one answer.
    pub id: String,
    /// Always `"chat.completion.chunk"`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model name as the request gave it.
    pub model: String,
    /// Always `"openrft"`.
    pub system_fingerprint: String,
    /// The pieces this chunk carries (none in the usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Only in the last chunk, with `stream_options.include_usage`.
    pub usage: Option<ChatUsage>,
}

/// One choice's piece of a [`ChatChunk`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// The choice it belongs to.
    pub index: usize,
    /// What to append.
    pub delta: Delta,
    /// The token's record, with `logprobs: true`.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// What a chunk appends to a choice: the role chunk has `role`, `content: ""` and
/// `refusal: null`; content chunks `content`; the finish chunk nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `"assistant"`, in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `null`, in the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Option<String>>,
    /// Pieces of tool calls, in OpenAI's delta shape: the first piece of a call has its
    /// `index`, `id`, `type` and `function.name` (with empty `arguments`), later pieces the
    /// same `index` and more `function.arguments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

impl ChunkChoice {
    /// The first chunk of a choice.
    pub fn role(index: usize) -> ChunkChoice {
        ChunkChoice {
            index,
            delta: Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                refusal: Some(None),
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: None,
        }
    }

    /// New text of a choice.
    pub fn text(index: usize, text: String, logprobs: Option<ChoiceLogprobs>) -> ChunkChoice {
        ChunkChoice {
            index,
            delta: Delta {
                content: Some(text),
                ..Delta::default()
            },
            logprobs,
            finish_reason: None,
        }
    }

    /// Tool-call pieces of a choice (see [`Delta::tool_calls`]).
    pub fn tool_calls(index: usize, tool_calls: Vec<serde_json::Value>) -> ChunkChoice {
        ChunkChoice {
            index,
            delta: Delta {
                tool_calls: Some(tool_calls),
                ..Delta::default()
            },
            logprobs: None,
            finish_reason: None,
        }
    }

    /// The last chunk of a choice.
    pub fn finish(index: usize, reason: &str) -> ChunkChoice {
        ChunkChoice {
            index,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(reason.to_owned()),
        }
    }
}

/// `POST /v1/chat/completions`: the fields OpenRFT reads (others, such as `user`, are
/// accepted and ignored, as OpenAI's optional settings are). Ranges are checked by the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name.
    pub model: String,
    /// The conversation: the client's messages, rendered by the model's chat template.
    pub messages: Vec<serde_json::Value>,
    /// Samples (1–128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Sampling temperature (0–2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus mass (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Completion token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// The older name of `max_completion_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Strings that end a sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Seed of the samples' generators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Structured outputs (parsed by the engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    /// Per-token log-probs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// `{include_usage}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Tool definitions, passed to the chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `"none"`, `"auto"`, `"required"` or `{"type": "function", "function": {"name"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
    /// Whether one answer may call several tools (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl ChatRequest {
    /// A user message, as the `messages` array holds it.
    pub fn user_message(content: impl Into<String>) -> serde_json::Value {
        let mut message = serde_json::Map::new();
        message.insert("role".into(), "user".into());
        message.insert("content".into(), serde_json::Value::String(content.into()));
        serde_json::Value::Object(message)
    }
}
