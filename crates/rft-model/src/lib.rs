//! OpenRFT's model engine: open-weight models on candle, for sampling rollouts and for the
//! differentiable forward the trainer needs.
//!
//! This crate owns everything tensor-shaped; nothing above it (`rft-train`, `rft-eval`,
//! `rft-server`) touches candle directly, and it knows nothing of grading, HTTP or storage.
//!
//! Built so far: fetching models shipped in PyPI wheels ([`hub`]) and the sentence-embedding
//! model behind the `cosine` metric ([`embed`]). The causal-LM engine is issue 4's remainder.
#![deny(missing_docs)]

pub mod config;
pub mod constrain;
pub mod device;
pub mod embed;
pub mod engine;
mod error;
pub mod export;
pub mod hub;
pub mod lora;
pub mod model;
pub mod ops;
pub mod packed;
pub mod parallel;
pub mod recorded;
pub mod sample;
pub mod tiny;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::ModelError;
pub use model::{CausalLm, KvCache, Logits};
