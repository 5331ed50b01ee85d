//! The JSON shapes of the Tinker API: every request body as a `Deserialize` struct (unknown
//! fields ignored as the SDK's newer versions add some; wrong types refused with the JSON path)
//! and every response as a `Serialize` struct, with enums where the protocol has a closed set
//! (loss names, stops, chunk types). The protobuf messages are in [`crate::proto`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::TinkerError;

// ---------------------------------------------------------------------------------------------
// Requests

/// `{session_id}`.
#[derive(Debug, Deserialize)]
pub struct SessionRef {
    /// The session.
    pub session_id: String,
}

/// `lora_config` of `create_model`.
#[derive(Debug, Deserialize)]
pub struct LoraRequest {
    /// LoRA rank.
    pub rank: usize,
    /// Seed of the initialisation.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Adapters on the MLP projections.
    #[serde(default = "yes")]
    pub train_mlp: bool,
    /// Adapters on the attention projections.
    #[serde(default = "yes")]
    pub train_attn: bool,
    /// Accepted and ignored: the output head is never trained.
    #[serde(default)]
    pub train_unembed: Option<bool>,
}

fn yes() -> bool {
    true
}

/// The optimizers a client may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW, the only one OpenRFT trains with.
    Adamw,
}

/// `optimizer_config`.
#[derive(Debug, Deserialize)]
pub struct OptimizerConfig {
    /// The optimizer.
    #[serde(rename = "type")]
    pub kind: OptimizerKind,
}

/// `create_model`.
#[derive(Debug, Deserialize)]
pub struct CreateModel {
    /// The session it belongs to.
    pub session_id: String,
    /// Its number within the session.
    pub model_seq_id: u32,
    /// The base model's name.
    pub base_model: String,
    /// The adapter (required).
    #[serde(default)]
    pub lora_config: Option<LoraRequest>,
    /// The optimizer (AdamW).
    #[serde(default)]
    pub optimizer_config: Option<OptimizerConfig>,
}

/// `{model_id}`.
#[derive(Debug, Deserialize)]
pub struct ModelRef {
    /// The training model.
    pub model_id: String,
}

/// `adam_params` of `optim_step`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamRequest {
    /// Learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// Second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Denominator epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables it.
    #[serde(default)]
    pub grad_clip_norm: f64,
}

impl Default for AdamRequest {
    fn default() -> AdamRequest {
        AdamRequest {
            learning_rate: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
            grad_clip_norm: 0.0,
        }
    }
}

fn default_lr() -> f64 {
    1e-4
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-12
}

/// `optim_step`.
#[derive(Debug, Deserialize)]
pub struct OptimStep {
    /// The training model.
    pub model_id: String,
    /// Order within the model.
    #[serde(default)]
    pub seq_id: Option<i64>,
    /// AdamW's settings.
    #[serde(default, alias = "optim_params")]
    pub adam_params: Option<AdamRequest>,
    /// Another optimizer's settings: refused.
    #[serde(default)]
    pub optimizer_params: Option<serde::de::IgnoredAny>,
}

/// `save_weights` / `save_weights_for_sampler`.
#[derive(Debug, Deserialize)]
pub struct SaveWeights {
    /// The training model.
    pub model_id: String,
    /// The checkpoint's name (made up when absent).
    #[serde(default)]
    pub path: Option<String>,
    /// Order within the model.
    #[serde(default)]
    pub seq_id: Option<i64>,
    /// Replace a checkpoint of that name.
    #[serde(default)]
    pub overwrite: bool,
}

/// `load_weights`: into an existing model, or into a new one of a session.
#[derive(Debug, Deserialize)]
pub struct LoadWeights {
    /// An existing model.
    #[serde(default)]
    pub model_id: Option<String>,
    /// Order within the model.
    #[serde(default)]
    pub seq_id: Option<i64>,
    /// The session of a new model.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The new model's number.
    #[serde(default)]
    pub model_seq_id: Option<u32>,
    /// The base model the checkpoint must have been trained from.
    #[serde(default)]
    pub base_model: Option<String>,
    /// The `tinker://` checkpoint.
    pub path: String,
    /// Load the optimizer state too.
    pub optimizer: bool,
    /// The optimizer (AdamW).
    #[serde(default)]
    pub optimizer_config: Option<OptimizerConfig>,
}

/// `weights_info`.
#[derive(Debug, Deserialize)]
pub struct WeightsInfoRequest {
    /// The `tinker://` checkpoint.
    pub tinker_path: String,
}

/// `create_sampling_session`.
#[derive(Debug, Deserialize)]
pub struct CreateSampler {
    /// The session it belongs to.
    pub session_id: String,
    /// A base model to sample.
    #[serde(default)]
    pub base_model: Option<String>,
    /// Or a checkpoint's adapter.
    #[serde(default)]
    pub model_path: Option<String>,
}

/// The type of a prompt chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ChunkKind {
    /// Token ids.
    #[default]
    #[serde(rename = "encoded_text")]
    EncodedText,
    /// Images and anything newer: refused, OpenRFT serves text models.
    #[serde(other)]
    Unsupported,
}

/// One chunk of a prompt.
#[derive(Debug, Deserialize)]
pub struct Chunk {
    /// Its type (`encoded_text` when absent).
    #[serde(rename = "type", default)]
    pub kind: ChunkKind,
    /// Its tokens.
    #[serde(default)]
    pub tokens: Option<Vec<u32>>,
}

/// A prompt: chunks of tokens.
#[derive(Debug, Deserialize)]
pub struct ModelInput {
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
}

impl ModelInput {
    /// The prompt's tokens, chunk after chunk.
    pub fn tokens(&self) -> Result<Vec<u32>, TinkerError> {
        let mut tokens = Vec::new();
        for chunk in &self.chunks {
            match (chunk.kind, &chunk.tokens) {
                (ChunkKind::EncodedText, Some(list)) => tokens.extend_from_slice(list),
                (ChunkKind::EncodedText, None) => {
                    return Err(TinkerError::bad_request("a prompt chunk has no tokens")
                        .with_param("prompt"))
                }
                (ChunkKind::Unsupported, _) => {
                    return Err(TinkerError::bad_request(
                        "only encoded_text chunks are supported: OpenRFT serves text models",
                    )
                    .with_param("prompt"))
                }
            }
        }
        Ok(tokens)
    }
}

/// `sampling_params.stop`: strings or token ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One string.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// Strings.
    Texts(Vec<String>),
}

/// `sampling_params` of `asample`.
#[derive(Debug, Deserialize)]
pub struct SamplingParamsRequest {
    /// Most new tokens per sample.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stops; none means the model's end of turn.
    #[serde(default)]
    pub stop: Option<Stop>,
    /// Temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Top-k (-1: off).
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Nucleus mass.
    #[serde(default)]
    pub top_p: Option<f64>,
}

/// `asample`.
#[derive(Debug, Deserialize)]
pub struct AsampleRequest {
    /// Samples.
    #[serde(default = "one_sample")]
    pub num_samples: usize,
    /// The prompt.
    pub prompt: ModelInput,
    /// How to sample.
    pub sampling_params: SamplingParamsRequest,
    /// A base model to sample, without a sampling session.
    #[serde(default)]
    pub base_model: Option<String>,
    /// A checkpoint to sample, without a sampling session.
    #[serde(default)]
    pub model_path: Option<String>,
    /// The sampling session.
    #[serde(default)]
    pub sampling_session_id: Option<String>,
    /// Return the prompt's log-probs.
    #[serde(default)]
    pub prompt_logprobs: Option<bool>,
    /// Not supported (must be 0).
    #[serde(default)]
    pub topk_prompt_logprobs: usize,
    /// Not supported (must be 0).
    #[serde(default)]
    pub topk_sample_logprobs: usize,
    /// Not supported (must be absent).
    #[serde(default)]
    pub target_prompt_logprobs: Option<serde::de::IgnoredAny>,
    /// Not supported (must be 0).
    #[serde(default)]
    pub prompt_alt_tokens_k: usize,
    /// Not supported (must be absent).
    #[serde(default)]
    pub prompt_logprobs_last_n: Option<usize>,
}

fn one_sample() -> usize {
    1
}

/// `retrieve_future`.
#[derive(Debug, Deserialize)]
pub struct RetrieveFuture {
    /// The future.
    pub request_id: String,
}

/// `?limit=&offset=` of the checkpoint list.
#[derive(Debug, Deserialize)]
pub struct Page {
    /// Page size.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Entries skipped.
    #[serde(default)]
    pub offset: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// The losses

/// The losses `forward_backward` takes, by Tinker's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossName {
    /// Supervised.
    CrossEntropy,
    /// Policy gradient with an importance ratio.
    ImportanceSampling,
    /// Clipped ratio.
    Ppo,
    /// Clipped importance weights.
    Cispo,
    /// Direct reward optimisation.
    Dro,
    /// Sequence-level ratio.
    Gspo,
}

impl LossName {
    /// Tinker's name → the loss; `None` for a loss OpenRFT does not have.
    pub fn parse(name: &str) -> Option<LossName> {
        Some(match name {
            "cross_entropy" => LossName::CrossEntropy,
            "importance_sampling" => LossName::ImportanceSampling,
            "ppo" => LossName::Ppo,
            "cispo" => LossName::Cispo,
            "dro" => LossName::Dro,
            "gspo" => LossName::Gspo,
            _ => return None,
        })
    }

    /// The `loss_fn_config` keys it takes.
    pub fn settings(self) -> &'static [&'static str] {
        match self {
            LossName::Ppo | LossName::Cispo | LossName::Gspo => {
                &["clip_low_threshold", "clip_high_threshold"]
            }
            LossName::Dro => &["beta"],
            LossName::CrossEntropy | LossName::ImportanceSampling => &[],
        }
    }

    /// The `loss_fn_inputs` a datum of this loss may carry.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            LossName::CrossEntropy => &["target_tokens", "weights"],
            _ => &[
                "target_tokens",
                "logprobs",
                "advantages",
                "sequence_ratio_mask",
            ],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// `{"status": ...}`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `ok` / `accepted`.
    pub status: &'static str,
}

/// `{"type": ...}` (heartbeats).
#[derive(Debug, Serialize)]
pub struct Typed {
    /// The call's name.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// The client's feature flags (`/client/config`).
#[derive(Debug, Serialize)]
pub struct ClientConfig {
    /// No JWT.
    pub pjwt_auth_enabled: bool,
    /// Keys by API key.
    pub credential_default_source: &'static str,
    /// Chunked `forward_backward` in parallel.
    pub parallel_fwdbwd_chunks: bool,
    /// zstd bodies.
    pub proto_compress_fwdbwd: bool,
    /// Datums per chunk.
    pub fwdbwd_max_chunk_len: usize,
    /// Bytes per chunk.
    pub fwdbwd_max_chunk_bytes_count: usize,
    /// The plain `httpx` transport.
    pub use_pyqwest_transport: bool,
    /// `asample` answers through futures too (no).
    pub sample_use_retrieve_futures: bool,
    /// Custom losses run client-side.
    pub custom_loss_server_side: bool,
    /// Samplers are not joined.
    pub sample_join_sampling_session: bool,
}

/// `/client/dynamic_config`.
#[derive(Debug, Serialize)]
pub struct DynamicConfig {
    /// Seconds between refreshes.
    pub refresh_interval_sec: u64,
    /// No cancelling of samples.
    pub sample_cancel_enabled: bool,
}

/// One model of `get_server_capabilities`.
#[derive(Debug, Serialize)]
pub struct SupportedModel {
    /// Its name.
    pub model_name: String,
    /// Its context, once loaded.
    pub max_context_length: Option<usize>,
    /// Always.
    pub trainable: bool,
    /// Always.
    pub sampleable: bool,
}

/// `get_server_capabilities`.
#[derive(Debug, Serialize)]
pub struct Capabilities {
    /// The models.
    pub supported_models: Vec<SupportedModel>,
}

/// `create_session`.
#[derive(Debug, Serialize)]
pub struct SessionCreated {
    /// `create_session`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The new session.
    pub session_id: String,
}

/// A queued call's answer.
#[derive(Debug, Serialize)]
pub struct Queued {
    /// The future to fetch.
    pub request_id: String,
    /// The model it runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

/// `asample`'s answer.
#[derive(Debug, Serialize)]
pub struct SampleQueued {
    /// The future to fetch.
    pub request_id: String,
    /// One id per sample.
    pub sample_sequence_ids: Vec<String>,
}

/// `retrieve_future` of a future still running.
#[derive(Debug, Serialize)]
pub struct TryAgain {
    /// `try_again`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The future.
    pub request_id: String,
    /// `active`.
    pub queue_state: &'static str,
}

/// A failed future.
#[derive(Debug, Serialize)]
pub struct FailedFuture<'a> {
    /// What went wrong.
    pub error: &'a str,
    /// `user` or `server`.
    pub category: &'a str,
}

/// `{"type": "adamw"}`.
#[derive(Debug, Serialize)]
pub struct OptimizerOut {
    /// `adamw`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// What `weights_info` reports of a checkpoint (and `get_info` of a model).
#[derive(Debug, Serialize)]
pub struct WeightsInfo {
    /// The base model.
    pub base_model: String,
    /// AdamW.
    pub optimizer_config: OptimizerOut,
    /// Always.
    pub is_lora: bool,
    /// LoRA rank.
    pub lora_rank: usize,
    /// Never.
    pub train_unembed: bool,
    /// Adapters on the MLP.
    pub train_mlp: bool,
    /// Adapters on attention.
    pub train_attn: bool,
}

/// `get_info`'s `model_data`.
#[derive(Debug, Serialize)]
pub struct ModelData {
    /// The architecture family the SDK expects.
    pub arch: &'static str,
    /// The base model.
    pub model_name: String,
    /// Where the SDK loads the tokenizer from: a folder path for clients on this machine,
    /// otherwise the model's name (the path means nothing elsewhere and is not theirs to know).
    pub tokenizer_id: Option<String>,
}

/// `get_info`.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    /// `get_info`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The model.
    pub model_id: String,
    /// Its base and tokenizer.
    pub model_data: ModelData,
    /// AdamW.
    pub optimizer_config: OptimizerOut,
    /// Always.
    pub is_lora: bool,
    /// LoRA rank.
    pub lora_rank: usize,
    /// The base model.
    pub model_name: String,
}

/// `create_model`'s result.
#[derive(Debug, Serialize)]
pub struct ModelCreated {
    /// The model.
    pub model_id: String,
    /// `create_model`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `optim_step`'s result.
#[derive(Debug, Serialize)]
pub struct OptimStepResult {
    /// `grad_norm:mean`, `step:max`.
    pub metrics: BTreeMap<&'static str, f64>,
}

/// `save_weights` / `save_weights_for_sampler`'s result.
#[derive(Debug, Serialize)]
pub struct Saved {
    /// The `tinker://` path.
    pub path: String,
    /// The call's name.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The sampling session of a snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_session_id: Option<String>,
}

/// `load_weights`'s result.
#[derive(Debug, Serialize)]
pub struct Loaded {
    /// The `tinker://` path.
    pub path: String,
    /// The model.
    pub model_id: String,
    /// `load_weights`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `create_sampling_session`.
#[derive(Debug, Serialize)]
pub struct SamplerCreated {
    /// `create_sampling_session`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The new sampler.
    pub sampling_session_id: String,
}

/// `GET /samplers/{id}`.
#[derive(Debug, Serialize)]
pub struct SamplerInfo {
    /// The sampler.
    pub sampler_id: String,
    /// Its base model.
    pub base_model: String,
    /// Its checkpoint, if any.
    pub model_path: Option<String>,
}

/// One checkpoint as Tinker lists it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointEntry {
    /// `<kind>/<name>`.
    pub checkpoint_id: String,
    /// `training` or `sampler`.
    pub checkpoint_type: &'static str,
    /// Unix seconds.
    pub time: u64,
    /// The `tinker://` path.
    pub tinker_path: String,
    /// Bytes.
    pub size_bytes: u64,
    /// Never public.
    pub public: bool,
}

/// A run's checkpoints.
#[derive(Debug, Serialize)]
pub struct CheckpointList {
    /// Oldest first.
    pub checkpoints: Vec<CheckpointEntry>,
}

/// The paging of the list of every checkpoint.
#[derive(Debug, Serialize)]
pub struct Cursor {
    /// Entries skipped.
    pub offset: usize,
    /// Page size.
    pub limit: usize,
    /// Entries in all.
    pub total_count: usize,
}

/// Every checkpoint of the caller, newest first.
#[derive(Debug, Serialize)]
pub struct CheckpointPage {
    /// This page.
    pub checkpoints: Vec<CheckpointEntry>,
    /// Where it is.
    pub cursor: Cursor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_and_chunks_parse_into_their_kinds() {
        let stop: Stop = serde_json::from_str(r#""\n""#).unwrap();
        assert_eq!(stop, Stop::Text("\n".into()));
        let stop: Stop = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!(stop, Stop::Tokens(vec![1, 2]));
        let stop: Stop = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(stop, Stop::Texts(vec!["a".into(), "b".into()]));
        assert!(serde_json::from_str::<Stop>(r#"[1, "a"]"#).is_err());
        let input: ModelInput = serde_json::from_str(
            r#"{"chunks": [{"tokens": [1, 2]}, {"type": "encoded_text", "tokens": [3]}]}"#,
        )
        .unwrap();
        assert_eq!(input.tokens().unwrap(), vec![1, 2, 3]);
        let image: ModelInput =
            serde_json::from_str(r#"{"chunks": [{"type": "image", "data": "x"}]}"#).unwrap();
        assert!(image.tokens().is_err());
        assert!(serde_json::from_str::<ModelInput>(r#"{"chunks": [{"tokens": [-1]}]}"#).is_err());
    }

    #[test]
    fn loss_names_are_one_closed_set() {
        for name in [
            "cross_entropy",
            "importance_sampling",
            "ppo",
            "cispo",
            "dro",
            "gspo",
        ] {
            assert!(LossName::parse(name).is_some(), "{name}");
        }
        assert_eq!(LossName::parse("stable_reinforce"), None);
        assert_eq!(LossName::Dro.settings(), &["beta"]);
    }
}
