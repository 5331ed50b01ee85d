//! The wire types of OpenAI's reinforcement fine-tuning API, as OpenRFT speaks them.
//!
//! This crate owns the JSON shapes of OpenAI's reinforcement fine-tuning API (graders, datasets,
//! and the API's objects in [`api`]) and nothing else: it depends on serde alone, never on grading, tensors, HTTP or storage. Field names match
//! the spec byte for byte; deriving `Serialize` here is a compatibility promise.
//!
//! The main types: [`Grader`] (every grader spec, parsed with JSON-path errors), [`RunGraderResponse`]
//! (what grading returns), [`DatasetRow`] (a line of an RFT dataset) and [`Sample`] (a model output
//! as graders see it).
//!
//! ```
//! use rft_types::Grader;
//! let grader = Grader::from_json_str(
//!     r#"{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
//!         "reference": "{{item.answer}}", "operation": "eq"}"#,
//! )?;
//! assert_eq!(grader.type_name(), "string_check");
//! # Ok::<(), rft_types::SpecError>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
mod dataset;
mod grader;
pub mod ids;
pub mod paths;
mod response;
mod sample;
pub mod tools;

pub use dataset::{read_dataset, ChatMessage, DatasetError, DatasetRow, RowError, DATASET_ROLES};
pub use grader::{
    ContentItem, EvalMessage, EvaluationMetric, Grader, InputAudio, LabelModelGrader,
    MessageContent, MessageRole, MultiGrader, PythonGrader, ScoreModelGrader,
    ScoreModelSamplingParams, SpecError, StringCheckGrader, StringCheckOperation,
    TextSimilarityGrader, TypedContent, GRADER_TYPES,
};
pub use response::{GraderErrors, GraderMetadata, RunGraderResponse, TokenUsage};
pub use sample::Sample;
