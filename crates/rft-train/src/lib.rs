//! OpenRFT's trainer: the four training primitives ([`primitives`]), one RL step on them
//! ([`step`]) and the RFT loop that repeats it ([`job`]), with OpenAI's job semantics
//! (hyperparameters, metrics events, checkpoints, pause and resume).
//!
//! The step is a client of the primitives: it samples groups, grades them with `rft-grade`,
//! turns rewards into advantages ([`advantage`]), and calls `forward_backward` and
//! `optim_step`. Around it: the job's data ([`dataset`], [`seed`]), its event log
//! ([`events`]) and its checkpoints ([`checkpoints`]). See `docs/training.md` for the
//! algorithms and the mapping of OpenAI's hyperparameters.
#![forbid(unsafe_code)]

pub mod advantage;
pub mod checkpoints;
pub mod collapse;
pub mod config;
pub mod dataset;
pub mod events;
pub mod job;
pub mod loss;
pub mod primitives;
pub mod rollouts;
pub mod samples;
pub mod seed;
pub mod step;

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
    /// The rollout servers failed or answered something malformed (which server, and what).
    #[error("rollouts failed: {0}")]
    Rollout(String),
    /// Where the job's progress is kept (the server's database or blob store) failed, after
    /// its retries.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<rft_types::DatasetError> for TrainError {
    fn from(e: rft_types::DatasetError) -> TrainError {
        match e {
            rft_types::DatasetError::Io { path, source } => TrainError::Io { path, source },
            rft_types::DatasetError::Line {
                path,
                line,
                message,
            } => TrainError::Dataset {
                path,
                line,
                message,
            },
        }
    }
}

/// Writes JSON atomically (`rft_types::paths::write_atomic`).
pub(crate) fn write_json_atomic<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> Result<(), TrainError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Invalid(e.to_string()))?;
    rft_types::paths::write_atomic(path, &text).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Reads a JSON file into `T`; a file that does not parse as one is [`TrainError::Corrupt`].
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TrainError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Unix seconds now (0 on a clock before 1970: a timestamp is not worth failing a job for).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The JSON lines of a file that parse as `T`; a line cut short by a crash mid-write is
/// skipped, and a missing file has none.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
