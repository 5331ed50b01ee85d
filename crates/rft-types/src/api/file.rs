//! The file object (`/v1/files`).

use serde::{Deserialize, Serialize};

/// An uploaded file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// Always `"file"`.
    pub object: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// The name the client uploaded it under (never used as a path).
    pub filename: String,
    /// What it is for.
    pub purpose: FilePurpose,
    /// `processed`, or `error` when a `fine-tune` file failed its check.
    pub status: FileStatus,
    /// Unix seconds, with `expires_after`.
    pub expires_at: Option<i64>,
    /// The first problem of an `error` file (`name.jsonl:LINE: …`).
    pub status_details: Option<String>,
}

/// `purpose` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilePurpose {
    /// `assistants`.
    #[serde(rename = "assistants")]
    Assistants,
    /// `batch`.
    #[serde(rename = "batch")]
    Batch,
    /// `fine-tune`: checked line by line as an RFT dataset.
    #[serde(rename = "fine-tune")]
    FineTune,
    /// `vision`.
    #[serde(rename = "vision")]
    Vision,
    /// `user_data`.
    #[serde(rename = "user_data")]
    UserData,
    /// `evals`.
    #[serde(rename = "evals")]
    Evals,
}

impl FilePurpose {
    /// Every purpose, as the wire spells it.
    pub const ALL: [(&'static str, FilePurpose); 6] = [
        ("assistants", FilePurpose::Assistants),
        ("batch", FilePurpose::Batch),
        ("fine-tune", FilePurpose::FineTune),
        ("vision", FilePurpose::Vision),
        ("user_data", FilePurpose::UserData),
        ("evals", FilePurpose::Evals),
    ];

    /// The purpose a form field names.
    pub fn parse(text: &str) -> Option<FilePurpose> {
        FilePurpose::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, p)| *p)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        FilePurpose::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("user_data", |(name, _)| name)
    }
}

/// Whether a file is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Stored (and, for `fine-tune`, every row checked).
    Processed,
    /// A `fine-tune` file with a bad row (`status_details` says which).
    Error,
}
