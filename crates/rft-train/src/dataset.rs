//! The job's rows: RFT dataset files read (`rft_types::read_dataset`, shared with the evals and
//! the server's file check) and rendered once with the model's chat template.

use std::path::Path;

use rft_model::engine::Engine;
use rft_types::DatasetRow;
use serde_json::Value;

use crate::TrainError;

/// Reads an RFT dataset, every error with file and line ([`TrainError::Dataset`]).
pub fn read_dataset(path: &Path) -> Result<Vec<DatasetRow>, TrainError> {
    Ok(rft_types::read_dataset(path)?)
}

/// A dataset row with its prompt rendered, ready for sampling.
#[derive(Debug, Clone)]
pub struct PreparedRow {
    /// The row (its `item` is what the grader sees).
    pub row: DatasetRow,
    /// The chat template applied to its `messages` and `tools`, as token ids.
    pub prompt: Vec<u32>,
}

/// Renders `rows` (read from `path`, named in errors) with `engine`'s chat template.
pub fn prepare_rows(
    engine: &Engine,
    rows: Vec<DatasetRow>,
    path: &Path,
) -> Result<Vec<PreparedRow>, TrainError> {
    rows.into_iter()
        .enumerate()
        .map(|(idx, row)| {
            // The chat template takes messages as JSON; a message is always representable.
            let messages = row
                .messages
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<Value>, _>>()
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            let prompt = engine
                .chat_prompt(&messages, row.tools.as_deref())
                .map_err(|e| TrainError::Dataset {
                    path: path.to_owned(),
                    line: idx + 1,
                    message: format!("cannot render the chat template: {e}"),
                })?;
            Ok(PreparedRow { row, prompt })
        })
        .collect()
}
