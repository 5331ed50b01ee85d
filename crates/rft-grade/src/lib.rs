//! OpenRFT's graders: everything that turns a model's sample into a reward.
//!
//! This crate owns template rendering ([`template`]), every grader type ([`compile`] turns a
//! [`rft_types::Grader`] into a [`CompiledGrader`]), the text-similarity metrics ([`metrics`],
//! each an exact port of a Python reference), the multi-grader formula language ([`formula`]),
//! the judge client of model graders ([`judge`]) and the embedder seam of the `cosine` metric
//! ([`embed`]).
//! It knows nothing of tensors, HTTP servers or storage: the trainer, the evals and the server
//! all call [`CompiledGrader::grade`] and get the spec's `RunGraderResponse`.
//!
//! ```
//! use rft_grade::compile;
//! use rft_types::{Grader, Sample};
//! let grader = Grader::from_json_str(
//!     r#"{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
//!         "reference": "{{item.answer}}", "operation": "eq"}"#,
//! )?;
//! let compiled = compile(&grader)?;
//! let result = compiled.grade(&Sample::from_text("Paris"), &serde_json::json!({"answer": "Paris"}));
//! assert_eq!(result.reward, 1.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// Unsafe code only in the modules that allow it below, each block with its `// SAFETY:`.
#![deny(unsafe_code)]

pub mod embed;
mod error;
pub mod formula;
mod grader;
pub mod http;
pub mod judge;
pub mod metrics;
// The kernel sandbox: fork/exec hooks and raw system calls.
#[allow(unsafe_code)]
pub mod python;
pub mod template;

pub use embed::{EmbedError, Embedder, EmbeddingsConfig, RemoteEmbedder};
pub use error::GradeError;
pub use grader::{
    compile, compile_with, validate, CompiledGrader, GradeRequest, GraderContext,
    MAX_PYTHON_SOURCE_BYTES,
};
pub use judge::{JudgeClient, JudgeConfig};
