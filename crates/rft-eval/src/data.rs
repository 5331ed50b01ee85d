//! What an eval reads: an RFT dataset (`messages` + item fields, sampled from the model) or an
//! OpenAI eval-run JSONL file (`{"item": ..., "sample": ...}` lines, graded as they are).

use std::path::{Path, PathBuf};

use rft_types::{ChatMessage, Sample};
use serde_json::{Map, Value};

use crate::EvalError;

/// Which of the two input formats a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// RFT training rows: the model answers `messages`, the other keys are the item.
    Rft,
    /// Eval-run rows (spec §5.4 `jsonl` source): `item` and an already produced `sample`.
    EvalRun,
}

/// One row to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    /// 0-based row index: the output items' `datasource_item_id`.
    pub index: usize,
    /// The prompt (empty for eval-run rows).
    pub messages: Vec<ChatMessage>,
    /// Function tools offered with the prompt.
    pub tools: Option<Vec<Value>>,
    /// The `item` namespace of the grader's templates.
    pub item: Map<String, Value>,
    /// The given sample of an eval-run row; graded as it is, without sampling.
    pub sample: Option<Sample>,
}

impl EvalRow {
    /// The item as a JSON object.
    pub fn item_value(&self) -> Value {
        Value::Object(self.item.clone())
    }

    /// The text of the last user message (what an "echo the prompt" answer repeats), or the
    /// empty string when the row has no prompt.
    pub fn prompt_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(|m| m.content.as_ref())
            .map(content_text)
            .unwrap_or_default()
    }

    /// The text of every message of the prompt, joined by newlines.
    pub fn full_prompt_text(&self) -> String {
        self.messages
            .iter()
            .filter_map(|m| m.content.as_ref().map(content_text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The text of a chat message's content: the string, or its parts' `text` joined.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                _ => p.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A whole input file.
#[derive(Debug, Clone)]
pub struct EvalData {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its format (detected from the first row).
    pub format: DataFormat,
    /// Its rows, in file order.
    pub rows: Vec<EvalRow>,
}

impl EvalData {
    /// Builds data from rows already in memory (tests, the server).
    pub fn from_rows(path: &Path, format: DataFormat, rows: Vec<EvalRow>) -> EvalData {
        EvalData {
            path: path.to_owned(),
            format,
            rows,
        }
    }

    /// Keeps the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.rows.truncate(n);
    }
}

/// Reads an eval input, detecting its format from the first row: a row with `messages` is an
/// RFT row; a row with `item` and no `messages` is an eval-run row. Every error names the file,
/// the line and the field.
pub fn read_data(path: &Path) -> Result<EvalData, EvalError> {
    let text = std::fs::read_to_string(path).map_err(EvalError::io(path))?;
    let first = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or_else(|| EvalError::Line {
            path: path.to_owned(),
            line: 0,
            message: "the file has no rows; give a JSONL file with one row per line".into(),
        })?;
    let first_value: Value = serde_json::from_str(first.1).map_err(|e| EvalError::Line {
        path: path.to_owned(),
        line: first.0 + 1,
        message: format!("invalid JSON at column {}: {e}", e.column()),
    })?;
    let is_eval_run = first_value.get("item").is_some() && first_value.get("messages").is_none();
    if is_eval_run {
        read_eval_run(path, &text)
    } else {
        read_rft(path)
    }
}

fn read_rft(path: &Path) -> Result<EvalData, EvalError> {
    // The trainer's reader (it lives with `DatasetRow` in rft-types): the same rows train and
    // evaluate, with the same line-numbered errors.
    let rows = rft_types::read_dataset(path).map_err(|e| match e {
        rft_types::DatasetError::Line {
            path,
            line,
            message,
        } => EvalError::Line {
            path,
            line,
            message,
        },
        rft_types::DatasetError::Io { path, source } => EvalError::Io { path, source },
    })?;
    let rows = rows
        .into_iter()
        .enumerate()
        .map(|(index, row)| EvalRow {
            index,
            messages: row.messages,
            tools: row.tools,
            item: row.item,
            sample: None,
        })
        .collect();
    Ok(EvalData::from_rows(path, DataFormat::Rft, rows))
}

fn read_eval_run(path: &Path, text: &str) -> Result<EvalData, EvalError> {
    let mut rows = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |message: String| EvalError::Line {
            path: path.to_owned(),
            line: idx + 1,
            message,
        };
        let value: Value = serde_json::from_str(line)
            .map_err(|e| fail(format!("invalid JSON at column {}: {e}", e.column())))?;
        let Value::Object(mut object) = value else {
            return Err(fail(
                "expected a JSON object {\"item\": {...}, \"sample\": {...}}".into(),
            ));
        };
        let item = match object.remove("item") {
            Some(Value::Object(item)) => item,
            Some(_) => return Err(fail("item: expected a JSON object of the row's fields".into())),
            None => {
                return Err(fail(
                    "item: missing; every line of an eval-run file is {\"item\": {...}, \"sample\": {...}} (the first line had that shape)".into(),
                ))
            }
        };
        let sample = match object.remove("sample") {
            Some(Value::String(text)) => Sample::from_text(&text),
            Some(value @ Value::Object(_)) => parse_sample(value).map_err(|e| fail(format!("sample: {e}")))?,
            Some(_) => return Err(fail("sample: expected an object like {\"output_text\": \"...\"}".into())),
            None => {
                return Err(fail(
                    "sample: missing; eval-run rows are graded as they are, so each needs the model's answer as {\"sample\": {\"output_text\": \"...\"}} (to sample a model, use an RFT dataset with `messages`)".into(),
                ))
            }
        };
        rows.push(EvalRow {
            index: rows.len(),
            messages: Vec::new(),
            tools: None,
            item,
            sample: Some(sample),
        });
    }
    Ok(EvalData::from_rows(path, DataFormat::EvalRun, rows))
}

fn parse_sample(value: Value) -> Result<Sample, String> {
    let mut sample: Sample = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if sample.output_json.is_none() {
        sample.output_json = Sample::from_text(&sample.output_text).output_json;
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn rft_rows_keep_messages_and_item() {
        let (_dir, path) = write(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}], \"answer\": \"4\"}\n",
        );
        let data = read_data(&path).unwrap();
        assert_eq!(data.format, DataFormat::Rft);
        assert_eq!(data.rows[0].prompt_text(), "2+2?");
        assert_eq!(data.rows[0].item["answer"], "4");
    }

    #[test]
    fn eval_run_rows_carry_their_sample() {
        let (_dir, path) = write(
            "{\"item\": {\"a\": 1}, \"sample\": {\"output_text\": \"{\\\"x\\\": 2}\"}}\n{\"item\": {\"a\": 2}, \"sample\": \"plain\"}\n",
        );
        let data = read_data(&path).unwrap();
        assert_eq!(data.format, DataFormat::EvalRun);
        let first = data.rows[0].sample.as_ref().unwrap();
        assert_eq!(first.output_json, Some(serde_json::json!({"x": 2})));
        assert_eq!(data.rows[1].sample.as_ref().unwrap().output_text, "plain");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let (_dir, path) =
            write("{\"item\": {}, \"sample\": {\"output_text\": \"a\"}}\n{\"item\": 3}\n");
        let err = read_data(&path).unwrap_err().to_string();
        assert!(err.contains("data.jsonl:2: item:"), "{err}");
        let (_dir, path) = write(
            "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n{\"messages\": []}\n",
        );
        let err = read_data(&path).unwrap_err().to_string();
        assert!(err.contains("data.jsonl:2: messages"), "{err}");
    }
}
