//! A job trained through `rft serve` rollout workers on loopback, as through a vLLM fleet: the
//! trainer publishes each policy version to a shared folder, loads it on every worker and
//! samples there. It finishes like the job trained with the local engine, goes on when a worker
//! dies, and stops with an error naming the server when the answers are malformed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use rft_model::Architecture;
use rft_train::config::parse_job;
use rft_train::job::{run_job, run_job_on, JobControl, JobOutcome, JobSummary};
use rft_train::rollouts::{RemoteConfig, RemoteRollouts};
use rft_train::TrainError;
use rft_types::api::event::JobEvent;
use rft_types::api::job::CreateJob;
use serde_json::{json, Value};

/// The toy task of rft-train's job tests: reward 1 when the answer contains "x".
fn setup(dir: &Path) -> CreateJob {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, Architecture::Qwen2, 5).unwrap();
    let train: String = (0..12)
        .map(|i| {
            json!({"messages": [{"role": "user", "content": format!("Say x please {i}")}], "target": "x"})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.join("train.jsonl"), train).unwrap();
    std::fs::write(
        dir.join("valid.jsonl"),
        json!({"messages": [{"role": "user", "content": "Say x now"}], "target": "x"}).to_string()
            + "\n",
    )
    .unwrap();
    parse_job(json!({
        "model": model.to_str().unwrap(),
        "training_file": dir.join("train.jsonl").to_str().unwrap(),
        "validation_file": dir.join("valid.jsonl").to_str().unwrap(),
        "seed": 3,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": {"type": "string_check", "name": "has_x", "operation": "like",
                       "input": "{{sample.output_text}}", "reference": "{{item.target}}"},
            "hyperparameters": {"batch_size": 4, "n_epochs": 1, "compute_multiplier": 1,
                "eval_interval": 3, "eval_samples": 4, "learning_rate_multiplier": 50,
                "lora_rank": 4, "max_completion_tokens": 6}
        }}
    }))
    .unwrap()
}

/// A rollout worker serving the job's model, loading adapters from `adapters`.
fn worker(dir: &Path, model: &str, adapters: &Path) -> Server {
    let model = model.to_owned();
    let adapters = adapters.to_owned();
    Server::start_with(dir, &[], move |config| {
        config.models = vec![model];
        config.adapter_root = Some(adapters);
    })
}

fn remote(urls: Vec<String>, adapters: &Path) -> RemoteRollouts {
    RemoteRollouts::new(RemoteConfig {
        urls,
        admin_urls: Vec::new(),
        adapter_dir: adapters.to_owned(),
        name_prefix: "fleet-test".into(),
        keep_versions: 3,
        api_key: None,
        timeout: Duration::from_secs(60),
        publisher: None,
    })
    .unwrap()
}

/// Trains `request` into `dir` with rollouts from `fleet`, on an engine host of its own.
fn train_on(
    fleet: &RemoteRollouts,
    request: &CreateJob,
    dir: &Path,
) -> Result<JobSummary, TrainError> {
    train_with_events(fleet, request, dir, &mut |_| {})
}

/// [`train_on`], calling `on_event` with every event.
fn train_with_events(
    fleet: &RemoteRollouts,
    request: &CreateJob,
    dir: &Path,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<JobSummary, TrainError> {
    let host = Arc::new(rft_model::host::EngineHost::new(
        candle_core::Device::Cpu,
        u64::MAX,
    ));
    run_job_on(&host, fleet, request, dir, &JobControl::default(), on_event)
}

/// The `key` field of every metrics event of a job folder that has one.
fn metric(dir: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["data"][key].as_f64())
        .collect()
}

/// `(train reward per step, last validation reward)` from a job folder's events.
fn rewards(dir: &Path) -> (Vec<f64>, f64) {
    let mut train = Vec::new();
    let mut valid = f64::NAN;
    for line in std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
    {
        let event: Value = serde_json::from_str(line).unwrap();
        if event["type"] != "metrics" {
            continue;
        }
        let data = &event["data"];
        if let Some(r) = data["scores"]["train_reward_mean"].as_f64() {
            train.push(r);
        }
        if let Some(r) = data["scores"]["valid_reward_mean"].as_f64() {
            valid = r;
        }
    }
    (train, valid)
}

#[test]
fn a_job_trains_through_two_workers_like_the_local_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path());
    let adapters = tmp.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let w1 = worker(&tmp.path().join("w1"), &request.model, &adapters);
    let w2 = worker(&tmp.path().join("w2"), &request.model, &adapters);

    let local_dir = tmp.path().join("local");
    let local = run_job(&request, &local_dir, &JobControl::default(), &mut |_| {}).unwrap();
    let fleet = remote(vec![w1.base.clone(), w2.base.clone()], &adapters);
    let remote_dir = tmp.path().join("remote");
    let summary = train_on(&fleet, &request, &remote_dir).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    assert_eq!(summary.steps, local.steps);
    let (local_train, local_valid) = rewards(&local_dir);
    let (remote_train, remote_valid) = rewards(&remote_dir);
    assert_eq!(local_train.len(), remote_train.len());
    eprintln!(
        "train rewards local {local_train:?} remote {remote_train:?}; validation local {local_valid} remote {remote_valid}"
    );
    assert!(remote_train.iter().all(|r| (0.0..=1.0).contains(r)));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        (mean(&local_train) - mean(&remote_train)).abs() <= 0.35,
        "local {local_train:?} against remote {remote_train:?}"
    );
    // The steps report how far the workers' log-probs are from the trainer's: float rounding.
    let mismatches: Vec<f64> = metric(&remote_dir, "rollout_logprob_diff");
    eprintln!("rollout log-prob differences {mismatches:?}");
    assert!(!mismatches.is_empty());
    assert!(mismatches.iter().all(|d| *d < 1e-3), "{mismatches:?}");
    // Each version was loaded on both workers; old ones were unloaded (three kept).
    let (_, models) = w1.get("/models");
    let loaded: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["parent"].is_string())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(!loaded.is_empty() && loaded.len() <= 3, "{loaded:?}");
    assert!(loaded.iter().all(|name| name.starts_with("fleet-test-v")));
}

#[test]
fn a_worker_killed_mid_job_is_passed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path());
    let adapters = tmp.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let live = worker(&tmp.path().join("w1"), &request.model, &adapters);
    let doomed = worker(&tmp.path().join("w2"), &request.model, &adapters);
    // A third that was never up: nothing listens at its address.
    let never = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let fleet = remote(
        vec![doomed.base.clone(), never, live.base.clone()],
        &adapters,
    );
    let mut doomed = Some(doomed);
    let mut killed_after = None;
    let summary = train_with_events(&fleet, &request, &tmp.path().join("run"), &mut |event| {
        // After the first training step the second worker goes away.
        if let Some(step) = event.metrics().map(|m| m.step).filter(|&s| s >= 1) {
            if doomed.take().is_some() {
                killed_after = Some(step);
            }
        }
    })
    .unwrap();
    assert_eq!(killed_after, Some(1));
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    assert_eq!(summary.steps, summary.total_steps);
}

#[test]
fn structured_output_jobs_send_their_format_to_the_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut request = setup(tmp.path());
    let mut value = serde_json::to_value(&request).unwrap();
    value["method"]["reinforcement"]["response_format"] = json!({"type": "json_object"});
    request = parse_job(value).unwrap();
    let adapters = tmp.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let w1 = worker(&tmp.path().join("w1"), &request.model, &adapters);
    let fleet = remote(vec![w1.base.clone()], &adapters);
    let local_dir = tmp.path().join("local");
    run_job(&request, &local_dir, &JobControl::default(), &mut |_| {}).unwrap();
    let remote_dir = tmp.path().join("remote");
    let summary = train_on(&fleet, &request, &remote_dir).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    // Both ran every step.
    assert_eq!(rewards(&local_dir).0.len(), rewards(&remote_dir).0.len());
}

#[test]
fn importance_corrections_run_and_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let adapters = tmp.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let base = setup(tmp.path());
    let w1 = worker(&tmp.path().join("w1"), &base.model, &adapters);
    for correction in ["tis", "mis"] {
        let mut value = serde_json::to_value(&base).unwrap();
        value["method"]["reinforcement"]["hyperparameters"]["rollout_correction"] =
            json!(correction);
        let request = parse_job(value).unwrap();
        let fleet = remote(vec![w1.base.clone()], &adapters);
        let dir = tmp.path().join(correction);
        let summary = train_on(&fleet, &request, &dir).unwrap();
        assert_eq!(summary.outcome, JobOutcome::Succeeded);
        let corrected: Vec<f64> = metric(&dir, "rollout_is_corrected");
        // The workers' log-probs are the trainer's to float rounding: nothing capped or masked.
        assert!(!corrected.is_empty(), "{correction}");
        assert!(
            corrected.iter().all(|c| *c == 0.0),
            "{correction}: {corrected:?}"
        );
    }
    // An unknown correction is refused with its path.
    let mut value = serde_json::to_value(&base).unwrap();
    value["method"]["reinforcement"]["hyperparameters"]["rollout_correction"] = json!("ppo");
    let error = parse_job(value).unwrap_err().to_string();
    assert!(error.contains("rollout_correction"), "{error}");
}

#[test]
fn asynchronous_rollouts_run_on_the_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let adapters = tmp.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let base = setup(tmp.path());
    let mut value = serde_json::to_value(&base).unwrap();
    value["method"]["reinforcement"]["hyperparameters"]["max_off_policy_steps"] = json!(2);
    let request = parse_job(value).unwrap();
    let w1 = worker(&tmp.path().join("w1"), &request.model, &adapters);
    let w2 = worker(&tmp.path().join("w2"), &request.model, &adapters);
    let fleet = remote(vec![w1.base.clone(), w2.base.clone()], &adapters);
    let dir = tmp.path().join("run");
    let summary = train_on(&fleet, &request, &dir).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    let staleness: Vec<u64> = metric(&dir, "off_policy_steps")
        .into_iter()
        .map(|v| v as u64)
        .collect();
    assert_eq!(staleness.len(), summary.steps, "{staleness:?}");
    assert!(staleness.iter().all(|&s| s <= 2), "{staleness:?}");
}

/// A server that answers adapter loads with 200 and every completion with `answer`.
fn stub(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let reply = if head.contains("load_lora_adapter") {
                "Success"
            } else {
                answer
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    url
}

#[test]
fn malformed_answers_stop_the_step_naming_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path());
    let adapters = tmp.path().join("adapters");
    for (answer, why) in [
        ("{not json", "malformed JSON"),
        (r#"{"choices": []}"#, "choices for n"),
        (
            // Four choices (n is the group size), the first with a token the model lacks.
            r#"{"choices": [
                {"index": 0, "token_ids": [100000], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"},
                {"index": 1, "token_ids": [5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"},
                {"index": 2, "token_ids": [5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"},
                {"index": 3, "token_ids": [5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"}]}"#,
            "outside the vocabulary",
        ),
        (
            // Far more than n × max_tokens can need: not read past the request's allowance.
            Box::leak(
                format!(r#"{{"choices": [], "pad": "{}"}}"#, "x".repeat(4 << 20)).into_boxed_str(),
            ),
            "larger than request limit",
        ),
        (
            r#"{"choices": [
                {"index": 0, "token_ids": [5, 6], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"},
                {"index": 1, "token_ids": [5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"},
                {"index": 2, "token_ids": [5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"},
                {"index": 3, "token_ids": [5], "logprobs": {"token_logprobs": [-1.0]}, "finish_reason": "stop"}]}"#,
            "log-probs for 2 tokens",
        ),
    ] {
        let url = stub(answer);
        let fleet = remote(vec![url.clone()], &adapters);
        let dir = tmp.path().join(format!("run-{}", why.replace(' ', "-")));
        let error = train_on(&fleet, &request, &dir).unwrap_err().to_string();
        assert!(error.contains(why), "{error}");
        assert!(error.contains(&url), "the server is named: {error}");
    }
}
