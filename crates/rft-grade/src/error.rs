//! The errors of grader compilation and validation.

use rft_types::SpecError;

use crate::formula::FormulaError;
use crate::metrics::WordNetError;

/// Why a grader cannot be compiled or does not validate.
#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    /// The grader JSON is malformed.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The grader is valid but this build cannot run it yet.
    #[error("{path}: {what} is not supported yet: {why}")]
    Unsupported {
        /// JSON path of the grader, e.g. `graders.style` (empty for the root).
        path: String,
        /// What cannot run, e.g. `the python grader`.
        what: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// A multi grader's formula does not parse.
    #[error("{path}calculate_output: {source}")]
    Formula {
        /// JSON path prefix of the multi grader (`""` or `graders.x.`).
        path: String,
        /// The parse error.
        source: FormulaError,
    },
    /// A multi grader's formula reads a name that is not one of its graders.
    #[error("{path}calculate_output: unknown variable {name:?}; the formula can use the keys of `graders`: {known}")]
    UnknownFormulaVariable {
        /// JSON path prefix of the multi grader.
        path: String,
        /// The unknown name.
        name: String,
        /// The keys it could have used.
        known: String,
    },
    /// A template refers to something other than `item.…` or `sample.…`.
    #[error("{path}: template {{{{{reference}}}}} is not a variable of the item or sample namespace (write {{{{item.field}}}} or {{{{sample.output_text}}}})")]
    InvalidTemplate {
        /// JSON path of the templated field.
        path: String,
        /// The text between the braces.
        reference: String,
    },
    /// A Python grader's source is larger than the sandbox accepts.
    #[error("{path}source: {bytes} bytes is over the {limit}-byte limit for Python grader source")]
    SourceTooLarge {
        /// JSON path prefix of the python grader.
        path: String,
        /// The source's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Python graders cannot run here (no environment, no sandbox).
    // Not a `source` field: the message already says it all, and error chains would repeat it.
    #[error("{path}: {error}")]
    Python {
        /// JSON path of the python grader (`grader` for the root).
        path: String,
        /// Why.
        error: crate::python::PythonSetupError,
    },
    /// Model graders cannot call their judge with this configuration.
    #[error("{path}: {error}")]
    Judge {
        /// JSON path of the model grader (`grader` for the root).
        path: String,
        /// What is wrong with the judge configuration.
        error: crate::judge::JudgeSetupError,
    },
    /// A `cosine` grader was compiled without an embedder.
    #[error("{path}: the cosine metric needs a sentence-embedding model and none is configured: set RFT_EMBEDDINGS_BASE_URL to an OpenAI-compatible API root (e.g. https://api.openai.com/v1), or grade with the `rft` command, which uses the local all-MiniLM-L6-v2 model (library users: set GraderContext::embedder)")]
    NoEmbedder {
        /// JSON path of the text_similarity grader (`grader` for the root).
        path: String,
    },
    /// The embedder of a `cosine` grader is misconfigured.
    // Not a `source` field: the message already says it all, and error chains would repeat it.
    #[error("{path}: {error}")]
    Embedder {
        /// JSON path of the text_similarity grader (`grader` for the root).
        path: String,
        /// What is wrong with the configuration.
        error: crate::embed::EmbedError,
    },
    /// WordNet, which METEOR needs, is not installed.
    #[error(transparent)]
    WordNet(#[from] WordNetError),
}
