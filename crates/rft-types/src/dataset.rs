//! RFT dataset rows (spec §6.2): `messages`, optional `tools`, and every other key as the `item`;
//! and [`read_dataset`], the one reader of an RFT dataset file.
//!
//! The file reader lives here, beside the row it parses, rather than in the trainer: the trainer,
//! the evals (`rft eval` must read exactly the rows a job trains on, with the same line-numbered
//! errors) and the server's file check all need it, and none of them should depend on another
//! for it. It is plain file reading and JSON, within this crate's no-grading, no-tensor rule.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One line of an RFT training or validation file.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    /// The prompt conversation; the last message is the user's.
    pub messages: Vec<ChatMessage>,
    /// Function tool definitions in chat-completions shape, when the row offers tools.
    pub tools: Option<Vec<Value>>,
    /// Every other key of the line: the `item` template namespace.
    pub item: Map<String, Value>,
}

/// A chat message of a dataset row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `developer`, `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or content parts; absent on assistant messages that only call tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    /// Other message fields (`tool_calls`, `tool_call_id`, `name`, `weight`) kept as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The roles a dataset message may take. `system` is outside OpenAI's RFT union but every
/// open-weight chat template understands it, so OpenRFT accepts it.
pub const DATASET_ROLES: [&str; 5] = ["developer", "system", "user", "assistant", "tool"];

/// Why a dataset line was rejected; the caller adds the file and line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RowError {
    /// The offending field (e.g. `messages[2].role`), empty for the whole line.
    pub field: String,
    /// What was wrong.
    pub message: String,
}

/// Why an RFT dataset file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not a valid row (or the file has none).
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number; 0 for the file as a whole.
        line: usize,
        /// What was wrong, with the field when there is one.
        message: String,
    },
}

/// Reads an RFT dataset: one row per non-blank line, each ending with a user message (the
/// model writes the reply). Errors carry the file and line.
pub fn read_dataset(path: &Path) -> Result<Vec<DatasetRow>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let line_error = |idx: usize, message: String| DatasetError::Line {
        path: path.to_owned(),
        line: idx + 1,
        message,
    };
    let mut rows = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A row error's message already starts with its field.
        let row = DatasetRow::from_json_line(line).map_err(|e| line_error(idx, e.message))?;
        // Rows always have a message (`from_value` refuses an empty list).
        if let Some(last) = row.messages.last().filter(|m| m.role != "user") {
            return Err(line_error(
                idx,
                format!(
                    "the last message is from {:?}; RFT prompts end with a user message (the model writes the reply)",
                    last.role
                ),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(DatasetError::Line {
            path: path.to_owned(),
            line: 0,
            message: "the file has no rows".into(),
        });
    }
    Ok(rows)
}

impl DatasetRow {
    /// Parses one JSONL line of an RFT dataset.
    pub fn from_json_line(line: &str) -> Result<DatasetRow, RowError> {
        let value: Value = serde_json::from_str(line).map_err(|e| RowError {
            field: String::new(),
            message: format!("invalid JSON at column {}: {e}", e.column()),
        })?;
        DatasetRow::from_value(value)
    }

    /// Builds a row from a parsed JSON object.
    pub fn from_value(value: Value) -> Result<DatasetRow, RowError> {
        let Value::Object(mut item) = value else {
            return Err(row_error("", "expected a JSON object on each line"));
        };
        let messages = match item.remove("messages") {
            Some(Value::Array(messages)) => messages,
            Some(_) => return Err(row_error("messages", "expected an array of messages")),
            None => return Err(row_error(
                "messages",
                "missing field `messages`: every row needs the prompt as a list of chat messages",
            )),
        };
        if messages.is_empty() {
            return Err(row_error("messages", "expected at least one message"));
        }
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(idx, message)| parse_message(idx, message))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = match item.remove("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(tools)) => Some(tools),
            Some(_) => return Err(row_error("tools", "expected an array of tool definitions")),
        };
        if let Some(tools) = &tools {
            crate::tools::check_tools(tools).map_err(|e| row_error(&e.field, &e.message))?;
        }
        Ok(DatasetRow {
            messages,
            tools,
            item,
        })
    }

    /// The row's `item` namespace as a JSON value.
    pub fn item_value(&self) -> Value {
        Value::Object(self.item.clone())
    }
}

fn parse_message(idx: usize, message: Value) -> Result<ChatMessage, RowError> {
    let field = format!("messages[{idx}]");
    let message: ChatMessage = serde_json::from_value(message)
        .map_err(|e| row_error(&field, &format!("not a chat message: {e}")))?;
    if !DATASET_ROLES.contains(&message.role.as_str()) {
        return Err(row_error(
            &format!("{field}.role"),
            &format!(
                "unknown role {:?}; expected one of {}",
                message.role,
                DATASET_ROLES.map(|r| format!("{r:?}")).join(", ")
            ),
        ));
    }
    Ok(message)
}

fn row_error(field: &str, message: &str) -> RowError {
    RowError {
        field: field.to_owned(),
        message: if field.is_empty() {
            message.to_owned()
        } else {
            format!("{field}: {message}")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn other_keys_become_the_item() {
        let row = DatasetRow::from_json_line(
            r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [], "answer": 4, "meta": {"a": [1]}}"#,
        )
        .unwrap();
        assert_eq!(row.item_value(), json!({"answer": 4, "meta": {"a": [1]}}));
        assert_eq!(row.tools, Some(vec![]));
        assert_eq!(row.messages[0].role, "user");
    }

    #[test]
    fn malformed_tools_are_refused_with_their_field() {
        let err = DatasetRow::from_json_line(
            r#"{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "bad name"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "tools[0].function.name");
        assert!(
            err.message
                .starts_with("tools[0].function.name: must be 1 to 64"),
            "{err}"
        );
    }

    #[test]
    fn missing_messages_is_named() {
        let err = DatasetRow::from_json_line(r#"{"answer": 4}"#).unwrap_err();
        assert_eq!(err.field, "messages");
        assert!(err.message.contains("missing field `messages`"));
    }

    #[test]
    fn bad_role_is_named_with_index() {
        let err = DatasetRow::from_json_line(
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "messages[1].role");
    }

    #[test]
    fn files_are_read_with_line_numbers() {
        let dir = std::env::temp_dir().join(format!("rft-types-dataset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("train.jsonl");
        let user = r#"{"messages": [{"role": "user", "content": "q"}], "answer": 1}"#;
        std::fs::write(&path, format!("{user}\n\n{user}\n")).unwrap();
        assert_eq!(read_dataset(&path).unwrap().len(), 2);
        std::fs::write(&path, format!("{user}\n{{\"answer\": 4}}\n")).unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(err.ends_with("train.jsonl:2: messages: missing field `messages`: every row needs the prompt as a list of chat messages"), "{err}");
        let reply = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
        std::fs::write(&path, reply).unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(
            err.contains("train.jsonl:1: the last message is from \"assistant\""),
            "{err}"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("train.jsonl:0: the file has no rows"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_json_gives_column() {
        let err = DatasetRow::from_json_line(r#"{"messages": [}"#).unwrap_err();
        assert!(
            err.message.starts_with("invalid JSON at column"),
            "{}",
            err.message
        );
    }
}
