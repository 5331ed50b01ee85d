//! The API end to end on a tiny random model, over real HTTP: files, graders, an RFT job from
//! creation to success, its events and checkpoints, chat with the fine-tuned model (plain and
//! streamed), pause/resume/cancel, the error envelope, and auth.

use std::path::Path;
use std::time::Duration;

use rft_model::Architecture;
use serde_json::{json, Value};

mod common;
use common::http::sse_chunks;
use common::jobs::{has_x, rows, start_job, tiny_model, upload_train_valid};
use common::Server;

fn dataset(count: usize) -> String {
    rows(count, |i| format!("Say x please {i}"))
}

fn job_body(model: &Path, train: &str, valid: &str, hyper: Value) -> Value {
    json!({
        "model": model.to_str().unwrap(),
        "training_file": train,
        "validation_file": valid,
        "suffix": "toy",
        "seed": 3,
        "metadata": {"team": "rl"},
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": has_x(),
            "hyperparameters": hyper,
        }}
    })
}

#[test]
fn an_rft_job_runs_end_to_end_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 5);
    let server = Server::start(&tmp.path().join("data"), &[]);

    // Files.
    let (status, train) = server.upload("train.jsonl", &dataset(6), "fine-tune");
    assert_eq!(status, 200, "{train}");
    assert_eq!(train["status"], "processed");
    let (_, valid) = server.upload("valid.jsonl", &dataset(2), "fine-tune");
    let (_, bad) = server.upload("bad.jsonl", "{\"messages\": []}\nnot json\n", "fine-tune");
    assert_eq!(bad["status"], "error");
    assert!(
        bad["status_details"]
            .as_str()
            .unwrap()
            .contains("bad.jsonl:1"),
        "{bad}"
    );
    let (status, listed) = server.get("/files?purpose=fine-tune&limit=2");
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert_eq!(listed["has_more"], true);
    let (status, _) = server.upload("x.txt", "hi", "nonsense");
    assert_eq!(status, 400);

    // Graders.
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/run",
        &json!({"grader": has_x(), "model_sample": "xx", "item": {"target": "x"}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reward"], 1.0);
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/validate",
        &json!({"grader": {"type": "text_similarity", "name": "t", "input": "a", "reference": "b",
                           "evaluation_metric": "nope"}}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["param"]
        .as_str()
        .unwrap()
        .starts_with("grader"));

    // A job whose training file is malformed fails with the line.
    let bad_job = job_body(
        &model,
        bad["id"].as_str().unwrap(),
        valid["id"].as_str().unwrap(),
        json!({}),
    );
    let (status, created) = server.post("/fine_tuning/jobs", &bad_job);
    assert_eq!(status, 200, "{created}");
    let failed = server.wait_for(
        created["id"].as_str().unwrap(),
        &["failed"],
        Duration::from_secs(60),
    );
    assert_eq!(failed["error"]["param"], "training_file");
    assert!(
        failed["error"]["message"].as_str().unwrap().contains(":1:"),
        "{failed}"
    );

    // A real job.
    let body = job_body(
        &model,
        train["id"].as_str().unwrap(),
        valid["id"].as_str().unwrap(),
        json!({"batch_size": 2, "n_epochs": 1, "compute_multiplier": 0.5, "eval_interval": 1,
               "eval_samples": 2, "lora_rank": 4, "max_completion_tokens": 4}),
    );
    let (status, job) = server.post("/fine_tuning/jobs", &body);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["object"], "fine_tuning.job");
    assert_eq!(
        job["method"]["reinforcement"]["hyperparameters"]["eval_samples"],
        2
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let done = server.wait_for(&id, &["succeeded", "failed"], Duration::from_secs(300));
    assert_eq!(done["status"], "succeeded", "{done}");
    let ft = done["fine_tuned_model"].as_str().unwrap().to_owned();
    assert!(ft.starts_with("ft:") && ft.ends_with(&id), "{ft}");
    assert_eq!(done["hyperparameters"]["batch_size"], 2);

    let (_, events) = server.get(&format!("/fine_tuning/jobs/{id}/events?limit=100"));
    let events = events["data"].as_array().unwrap().clone();
    assert!(events.iter().any(|e| e["type"] == "metrics"));
    let created_at: Vec<i64> = events
        .iter()
        .map(|e| e["created_at"].as_i64().unwrap())
        .collect();
    assert!(created_at.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let (_, first_two) = server.get(&format!("/fine_tuning/jobs/{id}/events?limit=2"));
    let cursor = first_two["data"][1]["id"].as_str().unwrap();
    let (_, next) = server.get(&format!(
        "/fine_tuning/jobs/{id}/events?limit=1&after={cursor}"
    ));
    assert_eq!(next["data"][0]["id"], events[2]["id"]);

    let (_, checkpoints) = server.get(&format!("/fine_tuning/jobs/{id}/checkpoints"));
    let checkpoints = checkpoints["data"].as_array().unwrap().clone();
    assert!(!checkpoints.is_empty() && checkpoints.len() <= 3);
    let ckpt_model = checkpoints[0]["fine_tuned_model_checkpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(checkpoints[0].get("path").is_none());

    let (_, models) = server.get("/models");
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(names.contains(&ft.as_str()) && names.contains(&ckpt_model.as_str()));

    // Chat with the fine-tuned model and a checkpoint.
    for name in [&ft, &ckpt_model] {
        let (status, chat) = server.post(
            "/chat/completions",
            &json!({"model": name, "messages": [{"role": "user", "content": "Say x"}],
                    "max_completion_tokens": 5, "n": 2, "seed": 1, "logprobs": true}),
        );
        assert_eq!(status, 200, "{chat}");
        assert_eq!(chat["choices"].as_array().unwrap().len(), 2);
        assert!(chat["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert!(chat["choices"][0]["logprobs"]["content"].is_array());
    }
    let (_, text) = server.post_text(
        "/chat/completions",
        &json!({"model": ft, "messages": [{"role": "user", "content": "Say x"}],
                "max_tokens": 5, "stream": true, "seed": 1,
                "stream_options": {"include_usage": true}}),
    );
    let chunks = sse_chunks(&text);
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"].is_string()));
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(pieces >= 2, "the text came in one piece: {text}");
    // With logprobs, every token's chunk carries its record.
    let (_, text) = server.post_text(
        "/chat/completions",
        &json!({"model": ft, "messages": [{"role": "user", "content": "Say x"}],
                "max_tokens": 5, "stream": true, "seed": 1, "logprobs": true}),
    );
    let records: usize = sse_chunks(&text)
        .into_iter()
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert!((1..=5).contains(&records), "{text}");

    // State machine errors and unknown ids.
    let (status, body) = server.post(&format!("/fine_tuning/jobs/{id}/pause"), &json!({}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/fine_tuning/jobs/ftjob-nope");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "not_found_error");
    let (status, _) = server.post(
        "/chat/completions",
        &json!({"model": "ft:nope:x:ftjob-nope", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 404);
    let (status, body) = server.post(
        "/fine_tuning/jobs",
        &json!({"model": "m", "training_file": train["id"], "method": {"type": "supervised"}}),
    );
    assert_eq!(status, 400, "{body}");
    let (_, listed) = server.get("/fine_tuning/jobs?metadata[team]=rl&limit=10");
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    let (_, listed) = server.get("/fine_tuning/jobs?metadata[team]=other");
    assert!(listed["data"].as_array().unwrap().is_empty());
}

#[test]
fn pause_resume_and_cancel_follow_the_status_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Llama, 9);
    let server = Server::start(&tmp.path().join("data"), &[]);
    let (train, valid) = upload_train_valid(&server, &dataset(40), &dataset(1));
    let body = job_body(
        &model,
        train["id"].as_str().unwrap(),
        valid["id"].as_str().unwrap(),
        // Many epochs: the job must still be running when the test cancels it after the
        // resume (a tiny model runs a 20-step epoch faster than the status is polled).
        json!({"batch_size": 2, "n_epochs": 50, "compute_multiplier": 0.25, "eval_interval": 5000,
               "eval_samples": 1, "lora_rank": 2, "max_completion_tokens": 3}),
    );
    let id = start_job(&server, &body);
    let (status, paused) = server.post(&format!("/fine_tuning/jobs/{id}/pause"), &json!({}));
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["status"], "paused");
    // The trainer stops at its step boundary and says so.
    server.wait_for_event(
        &id,
        "Paused after step",
        100,
        Duration::from_secs(60),
        "no pause event",
    );
    let (status, resumed) = server.post(&format!("/fine_tuning/jobs/{id}/resume"), &json!({}));
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"], "queued");
    server.wait_for(&id, &["running"], Duration::from_secs(60));
    let (status, cancelled) = server.post(&format!("/fine_tuning/jobs/{id}/cancel"), &json!({}));
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "cancelled");
    let (status, _) = server.post(&format!("/fine_tuning/jobs/{id}/resume"), &json!({}));
    assert_eq!(status, 400);
}

#[test]
fn api_keys_are_required_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["sekret"]);
    let (status, _) = server.get("/models");
    assert_eq!(status, 200);
    let anonymous = Server {
        base: server.base.clone(),
        key: None,
        agent: server.agent.clone(),
        stop: None,
        thread: None,
    };
    let (status, body) = anonymous.get("/models");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    let wrong = Server {
        base: server.base.clone(),
        key: Some("nope".into()),
        agent: server.agent.clone(),
        stop: None,
        thread: None,
    };
    let (status, _) = wrong.get("/files");
    assert_eq!(status, 401);
}

#[test]
fn graders_and_chats_under_concurrent_load_while_a_job_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 3);
    let server = Server::start(&tmp.path().join("data"), &[]);
    let (train, valid) = upload_train_valid(&server, &dataset(20), &dataset(1));
    let body = job_body(
        &model,
        train["id"].as_str().unwrap(),
        valid["id"].as_str().unwrap(),
        json!({"batch_size": 2, "n_epochs": 50, "compute_multiplier": 0.25, "eval_interval": 1000,
               "eval_samples": 1, "lora_rank": 2, "max_completion_tokens": 3}),
    );
    let id = start_job(&server, &body);
    let plan = rft_server::loadtest::LoadPlan {
        grader_requests: 300,
        grader_clients: 16,
        chat_requests: 40,
        chat_clients: 8,
        chat_model: model.to_str().unwrap().to_owned(),
        chat_max_tokens: 4,
    };
    let (graders, chats) = rft_server::loadtest::run(&server.base, None, &plan);
    assert_eq!(graders.requests, 300);
    assert!(graders.failures.is_empty(), "{:?}", graders.failures);
    assert_eq!(graders.ok + graders.rejected, 300);
    assert_eq!(chats.requests, 40);
    assert!(chats.failures.is_empty(), "{:?}", chats.failures);
    assert!(chats.ok > 0);
    let (_, running) = server.get(&format!("/fine_tuning/jobs/{id}"));
    assert_eq!(
        running["status"], "running",
        "the job trained through the load"
    );
    server.post(&format!("/fine_tuning/jobs/{id}/cancel"), &json!({}));
}

#[test]
fn openapi_describes_every_route() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let root = server.root();
    let mut response = server
        .agent
        .get(format!("{root}/openapi.json"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (method, path, _, _) in rft_server::ROUTES {
        assert!(
            paths[*path][*method]["operationId"].is_string(),
            "{method} {path} missing"
        );
    }
    assert!(paths.contains_key("/v1/fine_tuning/jobs/{job_id}/pause"));
    // Tinker's routes are in the same document, under /api/v1, each with its own operation.
    for route in rft_tinker::ROUTES {
        let path = format!("/api/v1{}", route.path);
        assert!(
            paths[&path][route.method]["operationId"].is_string(),
            "{} {path} missing",
            route.method
        );
    }
    let mut ids: Vec<&str> = paths
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids are unique");
    assert!(
        paths["/api/v1/forward_backward"]["post"]["requestBody"]["content"]
            ["application/x-protobuf"]
            .is_object()
    );
    let (status, body) = server.get("/no/such/route");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_url");
}
