//! OpenRFT's trainer: the four training primitives ([`primitives`]) and the RFT loop built on
//! them ([`job`]), with OpenAI's job semantics (hyperparameters, metrics events, checkpoints,
//! pause and resume).
//!
//! The loop is a client of the primitives: it samples groups, grades them with `rft-grade`,
//! turns rewards into advantages, and calls `forward_backward` and `optim_step`. See
//! `docs/training.md` for the algorithms and the mapping of OpenAI's hyperparameters.

pub mod advantage;
pub mod config;
pub mod job;
pub mod loss;
pub mod primitives;

use std::path::{Path, PathBuf};

/// Why training could not go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model engine failed.
    #[error(transparent)]
    Model(#[from] rft_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file's content is wrong.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The job configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// A dataset line is wrong.
    #[error("{path}:{line}: {message}")]
    Dataset {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// The grader could not be compiled.
    #[error("invalid grader: {0}")]
    Grader(String),
    /// A call violated a primitive's contract.
    #[error("{0}")]
    Invalid(String),
    /// Too many samples failed to grade.
    #[error("{0}")]
    Grading(String),
}

/// Writes JSON atomically (`rft_types::paths::write_atomic`).
pub(crate) fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Invalid(e.to_string()))?;
    rft_types::paths::write_atomic(path, &text).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
