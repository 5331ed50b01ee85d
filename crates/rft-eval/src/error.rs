//! The crate's one error type.

use std::path::PathBuf;

/// Why an eval could not run or its results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of the dataset (or of the results file) is wrong.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 for the file as a whole).
        line: usize,
        /// What was wrong and how to fix it.
        message: String,
    },
    /// The options do not fit together or do not fit the data.
    #[error("{0}")]
    Config(String),
    /// The model engine failed.
    #[error(transparent)]
    Model(#[from] rft_model::ModelError),
    /// The remote model endpoint failed on every sample of a batch.
    #[error("the model endpoint failed: {0}")]
    Remote(String),
    /// The eval was cancelled (`SamplingOptions::cancel` raised) before it finished.
    #[error("the eval was cancelled")]
    Cancelled,
    /// The report could not be drawn.
    #[error("cannot draw the plot {plot}: {message}")]
    Plot {
        /// Which plot.
        plot: String,
        /// What failed.
        message: String,
    },
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
        move |source| EvalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
