//! The shape of a causal language model, read from a GGUF header or a Hugging Face
//! `config.json`, for the three supported architectures.

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use crate::ModelError;

/// The transformer families OpenRFT runs. They share every layer; they differ in three flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama (SmolLM2, Llama 3): no biases.
    Llama,
    /// Qwen2 / Qwen2.5: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: RMS norms on q and k per head, no biases.
    Qwen3,
}

impl Architecture {
    /// The name GGUF (`general.architecture`) and OpenRFT use.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }

    /// q/k/v projections carry a bias.
    pub fn has_qkv_bias(self) -> bool {
        self == Architecture::Qwen2
    }

    /// q and k are RMS-normalised per head before the rotary embedding.
    pub fn has_qk_norm(self) -> bool {
        self == Architecture::Qwen3
    }
}

/// The resolved shape of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which family.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Rotary embedding base.
    pub rope_theta: f64,
    /// Epsilon of every RMS norm.
    pub rms_norm_eps: f64,
    /// The output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
}

/// The names [`ModelConfig::shape`] knows.
pub const SHAPES: &[&str] = &["smollm2-135m", "qwen2.5-0.5b", "qwen3-0.6b", "qwen3-1.7b"];

impl ModelConfig {
    /// Reads the shape from a GGUF header (`<arch>.block_count`, ...).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<ModelConfig, ModelError> {
        let arch_name = gguf_string(content, "general.architecture")?;
        let architecture = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "architecture {other:?}; OpenRFT runs llama, qwen2 and qwen3"
                )))
            }
        };
        let key = |name: &str| format!("{arch_name}.{name}");
        let hidden_size = gguf_usize(content, &key("embedding_length"))?;
        let num_heads = gguf_usize(content, &key("attention.head_count"))?;
        let num_kv_heads =
            gguf_usize(content, &key("attention.head_count_kv")).unwrap_or(num_heads);
        let head_dim =
            gguf_usize(content, &key("attention.key_length")).unwrap_or(hidden_size / num_heads);
        let vocab_size = match gguf_usize(content, &key("vocab_size")) {
            Ok(n) => n,
            Err(_) => match content.metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(tokens)) => tokens.len(),
                _ => {
                    return Err(ModelError::Format(
                        "GGUF has neither <arch>.vocab_size nor tokenizer.ggml.tokens".into(),
                    ))
                }
            },
        };
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: gguf_usize(content, &key("feed_forward_length"))?,
            num_layers: gguf_usize(content, &key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: gguf_f64(content, &key("rope.freq_base")).unwrap_or(10_000.0),
            rms_norm_eps: gguf_f64(content, &key("attention.layer_norm_rms_epsilon"))?,
            // GGUF stores a separate `output.weight` only when the head is untied.
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            max_position_embeddings: gguf_usize(content, &key("context_length")).unwrap_or(4096),
        })
    }

    /// Reads the shape from a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<ModelConfig, ModelError> {
        #[derive(Deserialize)]
        struct HfConfig {
            model_type: String,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rope_theta: Option<f64>,
            /// transformers >= 5 writes `rope_theta` here instead of at the top level.
            rope_parameters: Option<RopeParameters>,
            rms_norm_eps: f64,
            tie_word_embeddings: Option<bool>,
            max_position_embeddings: Option<usize>,
        }
        #[derive(Deserialize)]
        struct RopeParameters {
            rope_theta: Option<f64>,
        }
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let architecture = match hf.model_type.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "config.json model_type {other:?}; OpenRFT runs llama, qwen2 and qwen3"
                )))
            }
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rope_theta: hf
                .rope_theta
                .or(hf.rope_parameters.and_then(|r| r.rope_theta))
                .unwrap_or(10_000.0),
            rms_norm_eps: hf.rms_norm_eps,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
        })
    }
}

impl ModelConfig {
    /// A tiny shape for tests and benchmarks of the machinery (random weights): vocab 97,
    /// hidden 32, 2 layers, 4 query heads over 2 key/value heads.
    pub fn tiny(architecture: Architecture) -> ModelConfig {
        ModelConfig {
            architecture,
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: architecture == Architecture::Llama,
            max_position_embeddings: 512,
        }
    }

    /// The shape of a real model by name ([`SHAPES`]), to build with random weights where
    /// none can be downloaded (a GPU machine without network): throughput depends on the shape,
    /// not on the values. Values from each model's published `config.json`.
    pub fn shape(name: &str) -> Option<ModelConfig> {
        let (architecture, vocab_size, hidden_size, intermediate_size, num_layers) = match name {
            "smollm2-135m" => (Architecture::Llama, 49_152, 576, 1536, 30),
            "qwen2.5-0.5b" => (Architecture::Qwen2, 151_936, 896, 4864, 24),
            "qwen3-0.6b" => (Architecture::Qwen3, 151_936, 1024, 3072, 28),
            "qwen3-1.7b" => (Architecture::Qwen3, 151_936, 2048, 6144, 28),
            _ => return None,
        };
        let (num_heads, num_kv_heads, head_dim, rope_theta, rms_norm_eps, max_positions) =
            match name {
                "smollm2-135m" => (9, 3, 64, 100_000.0, 1e-5, 8192),
                "qwen2.5-0.5b" => (14, 2, 64, 1_000_000.0, 1e-6, 32_768),
                _ => (16, 8, 128, 1_000_000.0, 1e-6, 40_960),
            };
        Some(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rms_norm_eps,
            tie_word_embeddings: true,
            max_position_embeddings: max_positions,
        })
    }

    /// Parameters of the model (embeddings once when tied).
    pub fn parameter_count(&self) -> u64 {
        let (h, v) = (self.hidden_size as u64, self.vocab_size as u64);
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let bias = if self.architecture.has_qkv_bias() {
            q + 2 * kv
        } else {
            0
        };
        let norms = if self.architecture == Architecture::Qwen3 {
            2 * self.head_dim as u64
        } else {
            0
        };
        let attention = h * q + 2 * h * kv + q * h + bias + norms;
        let mlp = 3 * h * self.intermediate_size as u64;
        let layer = attention + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * layer + h + head
    }

    /// The Hugging Face `config.json` of this shape (for exported models).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (model_class, model_type) = match self.architecture {
            Architecture::Llama => ("LlamaForCausalLM", "llama"),
            Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Architecture::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        };
        serde_json::json!({
            "architectures": [model_class],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "attention_bias": self.architecture.has_qkv_bias(),
            "torch_dtype": "float32",
        })
    }
}

fn gguf_value<'a>(
    content: &'a gguf_file::Content,
    key: &str,
) -> Result<&'a gguf_file::Value, ModelError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| ModelError::Format(format!("GGUF metadata has no {key}")))
}

fn gguf_string(content: &gguf_file::Content, key: &str) -> Result<String, ModelError> {
    gguf_value(content, key)?
        .to_string()
        .cloned()
        .map_err(|e| ModelError::Format(format!("GGUF metadata {key}: {e}")))
}

fn gguf_usize(content: &gguf_file::Content, key: &str) -> Result<usize, ModelError> {
    let value = gguf_value(content, key)?;
    let n = match value {
        gguf_file::Value::U8(v) => u64::from(*v),
        gguf_file::Value::U16(v) => u64::from(*v),
        gguf_file::Value::U32(v) => u64::from(*v),
        gguf_file::Value::U64(v) => *v,
        gguf_file::Value::I32(v) if *v >= 0 => *v as u64,
        gguf_file::Value::I64(v) if *v >= 0 => *v as u64,
        other => {
            return Err(ModelError::Format(format!(
                "GGUF metadata {key}: expected a count, got {other:?}"
            )))
        }
    };
    Ok(n as usize)
}

fn gguf_f64(content: &gguf_file::Content, key: &str) -> Result<f64, ModelError> {
    match gguf_value(content, key)? {
        gguf_file::Value::F32(v) => Ok(f64::from(*v)),
        gguf_file::Value::F64(v) => Ok(*v),
        other => Err(ModelError::Format(format!(
            "GGUF metadata {key}: expected a float, got {other:?}"
        ))),
    }
}
