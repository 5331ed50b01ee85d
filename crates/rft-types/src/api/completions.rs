//! The legacy `POST /v1/completions` as vLLM serves it (OpenAI's fields plus vLLM's `top_k`
//! and `return_token_ids`), and vLLM's run-time LoRA endpoints (`/v1/load_lora_adapter`,
//! `/v1/unload_lora_adapter`): the surface a trainer drives a rollout server through, so an
//! `rft serve` worker and a vLLM server are interchangeable behind it.

use serde::{Deserialize, Serialize};

use crate::api::chat::{ChatUsage, Stop};

/// A completions prompt: text, token ids, or a batch of either.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text prompt.
    Text(String),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several text prompts.
    Texts(Vec<String>),
    /// Several prompts as token ids.
    TokenBatch(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// A served model: a base, an `ft:` model or checkpoint, or a loaded adapter's name.
    pub model: String,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Samples per prompt.
    #[serde(default)]
    pub n: Option<u32>,
    /// New tokens per sample (OpenAI's default is 16).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus mass.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// vLLM's top-k (-1 or 0: off).
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Log-probs of the sampled tokens: 0 or 1 (the sampled token's own).
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// vLLM: return the prompt's and each choice's token ids.
    #[serde(default)]
    pub return_token_ids: Option<bool>,
    /// Put the prompt's text before each choice's.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Streaming: not served on this route.
    #[serde(default)]
    pub stream: Option<bool>,
    /// vLLM's prefix-cache salt: accepted, and meaningless here (no prefix cache).
    #[serde(default)]
    pub cache_salt: Option<String>,
    /// Structured output, as chat completions take it (`json_schema`, `json_object`).
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,
}

/// A choice's log-probs, OpenAI's legacy shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    /// Each sampled token as text.
    pub tokens: Vec<String>,
    /// log p of each sampled token under the model.
    pub token_logprobs: Vec<f32>,
    /// The alternatives per position: not computed (null per position).
    pub top_logprobs: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    /// Each token's character offset in the choice's text.
    pub text_offset: Vec<usize>,
}

/// One choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// Prompt-major: prompt `p`'s sample `j` is `p × n + j`.
    pub index: usize,
    /// The text.
    pub text: String,
    /// With `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// vLLM: the sampled token ids (with `return_token_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// vLLM: the prompt's token ids (with `return_token_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

/// `text_completion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The model as asked.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    pub usage: ChatUsage,
}

/// vLLM's `POST /v1/load_lora_adapter`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadLoraAdapter {
    /// The name completions and chat will take as `model`.
    pub lora_name: String,
    /// The PEFT folder, under the server's adapter root.
    pub lora_path: String,
    /// Replace an adapter already loaded under the name.
    #[serde(default)]
    pub load_inplace: bool,
}

/// vLLM's `POST /v1/unload_lora_adapter`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnloadLoraAdapter {
    /// The adapter's name.
    pub lora_name: String,
    /// Accepted as vLLM does, and unused.
    #[serde(default)]
    pub lora_int_id: Option<i64>,
}
