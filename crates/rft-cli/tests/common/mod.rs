//! What the `rft` command's tests share: running the binary, a tiny job that `rft train` runs
//! in a few seconds, `rft serve` as a process on a loopback port, and an HTTP agent that
//! returns every status instead of failing on it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::json;

/// Runs `rft` with `args`, without `RFT_LOG` (so stderr is what a user sees).
pub(crate) fn rft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(args)
        .env_remove("RFT_LOG")
        .output()
        .expect("the rft binary runs")
}

/// The workspace's root folder.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An HTTP agent for which a 4xx or 5xx is an answer, not an error.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// A tiny job `rft train` runs in a few seconds: 4 steps, validation every 2. Writes a tiny
/// model, `train.jsonl` and `valid.jsonl` into `dir`, and the job (with `suffix`, if any) to
/// `dir/job.json`, whose path it returns.
pub(crate) fn tiny_job(dir: &Path, suffix: Option<&str>) -> PathBuf {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, rft_model::Architecture::Llama, 2).unwrap();
    let rows: String = (0..8)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("Say x {i}")}], "answer": "x"})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("train.jsonl"), &rows).unwrap();
    std::fs::write(
        dir.join("valid.jsonl"),
        &rows[..rows.find('\n').unwrap() + 1],
    )
    .unwrap();
    // Built key by key so that the file's keys keep one order, with or without a suffix.
    let mut job = json!({
        "model": model.to_str().unwrap(),
        "training_file": "train.jsonl",
        "validation_file": "valid.jsonl",
    });
    if let Some(suffix) = suffix {
        job["suffix"] = json!(suffix);
    }
    job["method"] = json!({"type": "reinforcement", "reinforcement": {
        "grader": {"type": "string_check", "name": "x", "operation": "like",
                   "input": "{{sample.output_text}}", "reference": "{{item.answer}}"},
        "hyperparameters": {"batch_size": 2, "eval_interval": 2, "eval_samples": 2,
                            "max_completion_tokens": 4, "compute_multiplier": 0.5}
    }});
    let path = dir.join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    path
}

/// `rft serve` as a child process, killed when dropped.
pub(crate) struct Serve {
    pub(crate) child: Child,
    /// `http://127.0.0.1:PORT/v1`, as the server said when it started listening.
    pub(crate) base: String,
}

impl Serve {
    /// `rft serve` on a free port with the data folder `data` and the API key `key`.
    pub(crate) fn start(data: &Path, key: &str) -> Serve {
        Serve::start_with(data, key, 0, |_| {})
    }

    /// `rft serve --port PORT --data DATA` (port 0: any free one), with what `adjust` adds to
    /// the command and the API key `key`; returns once the server says it listens.
    pub(crate) fn start_with(
        data: &Path,
        key: &str,
        port: u16,
        adjust: impl FnOnce(&mut Command),
    ) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rft"));
        command
            .args(["serve", "--port", &port.to_string(), "--data"])
            .arg(data);
        adjust(&mut command);
        let mut child = command
            .env("RFT_API_KEYS", key)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("rft serve exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("listening on ") {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, base }
    }

    /// `http://127.0.0.1:PORT`: the dashboard's root, and the Tinker SDK's base (it adds
    /// `/api/v1`).
    pub(crate) fn root(&self) -> String {
        self.base.trim_end_matches("/v1").to_owned()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
