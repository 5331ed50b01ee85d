//! The error type of the model engine.

use std::path::PathBuf;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be.
    #[error("{path}: {message}; the file may be truncated or not a model file: fetch it again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A file a model folder needs is missing.
    #[error("{path} is missing: {hint}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// What the folder should hold.
        hint: String,
    },
    /// A weight the architecture needs is not in the file.
    #[error("{file}: no tensor {name}; is this a model of the architecture its header names?")]
    MissingTensor {
        /// The Hugging Face tensor name.
        name: String,
        /// The file or folder.
        file: PathBuf,
    },
    /// Malformed metadata.
    #[error("{0}")]
    Format(String),
    /// Something OpenRFT does not run (yet).
    #[error("unsupported {0}")]
    Unsupported(String),
    /// A tensor operation failed (shapes, devices).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Backward left trainable tensors without a gradient: the graph is cut somewhere.
    #[error("{count} trainable tensors got no gradient (first: {first}); this is a bug in the training path, please report it")]
    MissingGradients {
        /// How many.
        count: usize,
        /// The first one's name.
        first: String,
    },
    /// Tokenizing or decoding failed.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A structured-output constraint failed.
    #[error(transparent)]
    Constraint(#[from] crate::constrain::ConstraintError),
    /// Fetching a model failed.
    #[error(transparent)]
    Fetch(#[from] crate::hub::FetchError),
    /// Loading a model would take the process past its model memory budget while every
    /// resident model is in use ([`crate::host::EngineHost`]).
    #[error("loading this model needs {needed} bytes, and the {resident} bytes of models resident are all in use (the budget is {budget}); retry when a job or session using another model ends, or raise the budget (rft serve --max-model-gib)")]
    MemoryBudget {
        /// Bytes the load needs.
        needed: u64,
        /// Bytes resident and lent.
        resident: u64,
        /// The budget.
        budget: u64,
    },
}
