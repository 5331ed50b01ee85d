//! The tiny job fixture: a tiny random model beside the server's data folder, JSONL rows that
//! ask for an "x", the grader that rewards one, a training and a validation file uploaded, and
//! a job created and waited for until it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rft_model::Architecture;
use serde_json::{json, Value};

use super::Server;

/// Writes a tiny random model to `dir/model`, the folder `Server::start` serves for the data
/// folder `dir/data`, and returns that path.
pub(crate) fn tiny_model(dir: &Path, architecture: Architecture, seed: u64) -> PathBuf {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, architecture, seed).unwrap();
    model
}

/// `count` dataset rows as JSONL: row `i` asks `prompt(i)`, and its item's `target` is "x".
pub(crate) fn rows(count: usize, prompt: impl Fn(usize) -> String) -> String {
    (0..count)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": prompt(i)}], "target": "x"}).to_string()
                + "\n"
        })
        .collect()
}

/// The `string_check` grader `has_x`: 1 when the answer contains the row's target.
pub(crate) fn has_x() -> Value {
    json!({"type": "string_check", "name": "has_x", "operation": "like",
           "input": "{{sample.output_text}}", "reference": "{{item.target}}"})
}

/// Uploads `train` as `train.jsonl` and `valid` as `valid.jsonl` (purpose `fine-tune`): their
/// file objects.
pub(crate) fn upload_train_valid(server: &Server, train: &str, valid: &str) -> (Value, Value) {
    let (_, train) = server.upload("train.jsonl", train, "fine-tune");
    let (_, valid) = server.upload("valid.jsonl", valid, "fine-tune");
    (train, valid)
}

/// Creates the job `body` asks for and waits (a minute at most) until it runs: its id.
pub(crate) fn start_job(server: &Server, body: &Value) -> String {
    let (_, job) = server.post("/fine_tuning/jobs", body);
    let id = job["id"].as_str().unwrap().to_owned();
    server.wait_for(&id, &["running"], Duration::from_secs(60));
    id
}
