//! `rft serve` as a process: OpenAI's Python SDK runs its RFT flow against it unchanged
//! (tests/sdk/openai_flow.py), and a server killed with SIGKILL mid-job comes back with the job
//! resumed and nothing it had written lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rft_model::Architecture;
use serde_json::{json, Value};

mod common;
use common::{agent, repo_root, Serve};

/// `rft serve` on `model`, with `key`.
fn serve(data: &Path, key: &str, model: &Path) -> Serve {
    // A free port, chosen first so the server can be its own judge endpoint (score_model
    // and label_model graders call RFT_JUDGE_BASE_URL).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Serve::start_with(data, key, port, |command| {
        command
            .arg("--model")
            .arg(model)
            .env("RFT_JUDGE_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
            .env("RFT_JUDGE_API_KEY", key);
    })
}

fn write_task(dir: &Path, rows: usize) -> PathBuf {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, Architecture::Qwen2, 5).unwrap();
    let row = |i: usize| {
        json!({"messages": [{"role": "user", "content": format!("Say x please {i}")}], "target": "x"})
            .to_string()
            + "\n"
    };
    std::fs::write(
        dir.join("train.jsonl"),
        (0..rows).map(row).collect::<String>(),
    )
    .unwrap();
    std::fs::write(dir.join("valid.jsonl"), row(99)).unwrap();
    model
}

#[test]
fn the_openai_python_sdk_runs_unchanged() {
    let python = std::env::var_os("RFT_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-sdk/bin/python"));
    if !python.exists() {
        assert!(
            std::env::var_os("RFT_REQUIRE_SDK").is_none(),
            "RFT_REQUIRE_SDK is set but {} does not exist (scripts/test.sh creates it)",
            python.display()
        );
        eprintln!(
            "skipped: no Python with the openai package at {} (python3 -m venv .venv-sdk && .venv-sdk/bin/pip install openai)",
            python.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 6);
    let server = serve(&tmp.path().join("data"), "sdk-key", &model);
    let output = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_flow.py"))
        .arg(&server.base)
        .arg("sdk-key")
        .arg(&model)
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "the SDK flow failed:\n{stdout}\n{stderr}"
    );
}

fn call(request: ureq::RequestBuilder<ureq::typestate::WithBody>, body: String) -> Value {
    let mut response = request
        .header("Authorization", "Bearer k")
        .send(body)
        .unwrap();
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

fn get(agent: &ureq::Agent, url: String) -> Value {
    let mut response = agent
        .get(url)
        .header("Authorization", "Bearer k")
        .call()
        .unwrap();
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

fn upload(agent: &ureq::Agent, base: &str, path: &Path) -> String {
    let boundary = "b0undary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        path.file_name().unwrap().to_string_lossy(),
        std::fs::read_to_string(path).unwrap()
    );
    let file = call(
        agent.post(format!("{base}/files")).header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        ),
        body,
    );
    file["id"].as_str().unwrap().to_owned()
}

fn events(agent: &ureq::Agent, base: &str, job: &str) -> Vec<Value> {
    get(
        agent,
        format!("{base}/fine_tuning/jobs/{job}/events?limit=10000"),
    )["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_server_killed_mid_job_resumes_it_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 40);
    let data = tmp.path().join("data");
    let agent = agent();
    let server = serve(&data, "k", &model);
    let base = server.base.clone();
    let train = upload(&agent, &base, &tmp.path().join("train.jsonl"));
    let valid = upload(&agent, &base, &tmp.path().join("valid.jsonl"));
    let job = call(
        agent
            .post(format!("{base}/fine_tuning/jobs"))
            .header("Content-Type", "application/json"),
        json!({"model": model, "training_file": train, "validation_file": valid, "seed": 1,
               "method": {"type": "reinforcement", "reinforcement": {
                   "grader": {"type": "string_check", "name": "x", "operation": "like",
                              "input": "{{sample.output_text}}", "reference": "{{item.target}}"},
                   "hyperparameters": {"batch_size": 2, "n_epochs": 2, "compute_multiplier": 0.25,
                       "eval_interval": 2, "eval_samples": 1, "lora_rank": 2,
                       "max_completion_tokens": 3}}}})
        .to_string(),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    // Kill once a few steps (and checkpoints) are on disk.
    let start = Instant::now();
    let before = loop {
        let all = events(&agent, &base, &id);
        if all.iter().filter(|e| e["type"] == "metrics").count() >= 5 {
            break all;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(server); // SIGKILL
    let server = serve(&data, "k", &model);
    let base = server.base.clone();
    let start = Instant::now();
    let done = loop {
        let job = get(&agent, format!("{base}/fine_tuning/jobs/{id}"));
        if ["succeeded", "failed"].contains(&job["status"].as_str().unwrap_or_default()) {
            break job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "job never finished: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    let after = events(&agent, &base, &id);
    for event in &before {
        assert!(after.contains(event), "event lost across the kill: {event}");
    }
    // The takeover itself writes no event: the job's events are those of one run.
    let ids: std::collections::HashSet<&str> =
        after.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), after.len(), "event ids are unique");
    let checkpoints = get(&agent, format!("{base}/fine_tuning/jobs/{id}/checkpoints"));
    let checkpoints = checkpoints["data"].as_array().unwrap();
    assert!(!checkpoints.is_empty() && checkpoints.len() <= 3);
    // The last step's metrics exist exactly once.
    let total = done["method"]["reinforcement"]["hyperparameters"]["n_epochs"].as_u64();
    assert_eq!(total, Some(2));
    let steps: Vec<u64> = after
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| e["data"]["step"].as_u64())
        .collect();
    // Every step's metrics exactly once: none lost, none written twice by the retrained step.
    let mut steps = steps;
    steps.sort_unstable();
    assert_eq!(steps, (0..=40).collect::<Vec<u64>>());
}

#[test]
fn sigterm_checkpoints_the_running_job_and_the_next_start_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = write_task(tmp.path(), 40);
    let data = tmp.path().join("data");
    let agent = agent();
    let mut server = serve(&data, "k", &model);
    let base = server.base.clone();
    let train = upload(&agent, &base, &tmp.path().join("train.jsonl"));
    let job = call(
        agent
            .post(format!("{base}/fine_tuning/jobs"))
            .header("Content-Type", "application/json"),
        json!({"model": model, "training_file": train, "seed": 2,
               "method": {"type": "reinforcement", "reinforcement": {
                   "grader": {"type": "string_check", "name": "x", "operation": "like",
                              "input": "{{sample.output_text}}", "reference": "{{item.target}}"},
                   "hyperparameters": {"batch_size": 2, "n_epochs": 10, "compute_multiplier": 0.25,
                       "eval_interval": 1000, "eval_samples": 1, "lora_rank": 2,
                       "max_completion_tokens": 3}}}})
        .to_string(),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while events(&agent, &base, &id)
        .iter()
        .filter(|e| e["type"] == "metrics")
        .count()
        < 2
    {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "rft serve exited with {exit} after SIGTERM");
    drop(server);
    let server = serve(&data, "k", &model);
    let base = server.base.clone();
    let after = events(&agent, &base, &id);
    let stopped = after.iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("The server stopped; the job was checkpointed")
    });
    assert!(stopped, "no shutdown event: {after:?}");
    let start = Instant::now();
    loop {
        let job = get(&agent, format!("{base}/fine_tuning/jobs/{id}"));
        if job["status"] == "succeeded" {
            break;
        }
        assert_ne!(job["status"], "failed", "{job}");
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "never finished: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
