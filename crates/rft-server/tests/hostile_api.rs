//! Hostile requests against `rft serve`: each must end in a clear error in OpenAI's envelope
//! (or a grader error flag) while the server keeps serving. Every test sends its attack, checks
//! the answer, then checks that a normal request still works. docs/security.md has the threat
//! model these tests stand for.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use rft_model::Architecture;
use serde_json::{json, Value};

mod common;
use common::http::raw;
use common::jobs::{rows, tiny_model};
use common::Server;

/// The server still answers a normal request.
fn assert_alive(server: &Server) {
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/run",
        &json!({"grader": {"type": "string_check", "name": "ok", "operation": "eq",
                           "input": "{{ sample.output_text }}", "reference": "a"},
                "model_sample": "a"}),
    );
    assert_eq!(status, 200, "the server stopped serving: {body}");
    assert_eq!(body["reward"], 1.0);
}

fn assert_envelope(body: &Value) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["type"].is_string(),
        "not OpenAI's error envelope: {body}"
    );
}

fn nested_formula(depth: usize) -> String {
    format!("{}a{}", "(".repeat(depth), ")".repeat(depth))
}

fn multi_grader(formula: &str) -> Value {
    json!({"type": "multi", "name": "m", "calculate_output": formula,
           "graders": {"a": {"type": "string_check", "name": "a", "operation": "eq",
                             "input": "{{ sample.output_text }}", "reference": "x"}}})
}

#[test]
fn deeply_nested_formulas_are_refused_everywhere_a_grader_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 5);
    let server = Server::start(&tmp.path().join("data"), &[]);
    // Deep but short: the depth limit answers.
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/validate",
        &json!({"grader": multi_grader(&nested_formula(1500))}),
    );
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("deep") || m.contains("nest")),
        "the error should say the formula nests too deep: {body}"
    );
    // The 6 KB attack: the length limit answers first.
    let grader = multi_grader(&nested_formula(3000));
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/validate",
        &json!({"grader": grader}),
    );
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body);
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/run",
        &json!({"grader": grader, "model_sample": "x"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post(
        "/evals",
        &json!({"data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
                "testing_criteria": [grader]}),
    );
    assert_eq!(status, 400, "{body}");
    let (_, file) = server.upload(
        "train.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        "fine-tune",
    );
    let (status, body) = server.post(
        "/fine_tuning/jobs",
        &json!({"model": model.to_str().unwrap(), "training_file": file["id"],
                "method": {"type": "reinforcement", "reinforcement": {"grader": grader}}}),
    );
    assert_eq!(status, 400, "{body}");
    assert_alive(&server);
}

#[test]
fn a_template_that_would_render_gigabytes_is_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let template = "{{ item.x }}".repeat(2048);
    let (status, body) = server.post(
        "/fine_tuning/alpha/graders/run",
        &json!({"grader": {"type": "string_check", "name": "big", "operation": "eq",
                           "input": template, "reference": "a"},
                "model_sample": "a", "item": {"x": "x".repeat(1 << 20)}}),
    );
    // A grade that cannot be computed is a 200 with reward 0 and an error flag, as OpenAI's
    // graders report it.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reward"], 0.0, "{body}");
    let errors = &body["metadata"]["errors"];
    assert!(
        errors
            .as_object()
            .is_some_and(|e| e.values().any(|v| v == &json!(true))),
        "no error flag raised: {body}"
    );
    assert_alive(&server);
}

#[test]
fn a_chunked_body_is_held_to_the_json_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let host = server.address();
    let mut request = format!(
        "POST /v1/fine_tuning/alpha/graders/validate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    // 40 MiB of a JSON string, in 1 MiB chunks: past the 32 MiB limit, without Content-Length.
    request.extend_from_slice(b"1\r\n\"\r\n");
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..40 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"1\r\n\"\r\n0\r\n\r\n");
    let (status, text) = raw(&server, &request);
    assert_eq!(status, 413, "{}", &text[..text.len().min(500)]);
    assert!(text.contains("request_too_large"), "{text}");
    assert_alive(&server);
}

#[test]
fn model_names_are_not_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 5);
    let server = Server::start(&tmp.path().join("data"), &[]);
    let chat = |model: &str| {
        server.post(
            "/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2}),
        )
    };
    let (_, missing) = chat("/no/such/folder");
    for hostile in [
        "/etc/shadow",
        "/etc/passwd",
        "/root",
        "/",
        "../../etc",
        "Cargo.toml",
    ] {
        let (status, body) = chat(hostile);
        assert_eq!(status, 404, "{hostile}: {body}");
        assert_eq!(
            body["error"]["code"], "model_not_found",
            "{hostile}: {body}"
        );
        // Whether the path exists must not show: same answer as a path that does not
        // (past the name it echoes).
        let after_name = |v: &Value| {
            let message = v["error"]["message"].as_str().unwrap().to_owned();
            message.split_once("' ").map(|(_, rest)| rest.to_owned())
        };
        assert_eq!(after_name(&body), after_name(&missing), "{hostile}");
        assert!(after_name(&body).is_some(), "{body}");
        let text = body.to_string();
        assert!(!text.contains("root:") && !text.contains("GGUF"), "{text}");
    }
    let (_, file) = server.upload(
        "train.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        "fine-tune",
    );
    let (status, body) = server.post(
        "/fine_tuning/jobs",
        &json!({"model": "/etc/passwd", "training_file": file["id"],
                "method": {"type": "reinforcement", "reinforcement": {"grader":
                    {"type": "string_check", "name": "a", "operation": "eq",
                     "input": "{{ sample.output_text }}", "reference": "x"}}}}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (_, models) = server.get("/models");
    assert!(
        !models.to_string().contains("/etc/"),
        "a refused name is listed: {models}"
    );
    // The allowed model still answers.
    let (status, body) = chat(model.to_str().unwrap());
    assert_eq!(status, 200, "{body}");
    assert_alive(&server);
}

#[test]
fn server_errors_carry_no_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, &[]);
    let (_, file) = server.upload("notes.txt", "hello", "user_data");
    let id = file["id"].as_str().unwrap();
    // The blob vanishes behind the server's back: reading it is the server's fault.
    std::fs::remove_file(data.join("files").join(id)).unwrap();
    let (status, body) = server.get(&format!("/files/{id}/content"));
    assert_eq!(status, 500, "{body}");
    assert_envelope(&body);
    let text = body.to_string();
    assert!(
        !text.contains(tmp.path().to_str().unwrap()) && !text.contains("/files/"),
        "the error shows a server path: {text}"
    );
    assert!(text.contains("reference"), "{text}");
    assert_alive(&server);
}

#[test]
fn the_data_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, &[]);
    let (_, file) = server.upload("notes.txt", "secret", "user_data");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("files")), 0o700);
    assert_eq!(mode(&data.join("openrft.db")), 0o600);
    assert_eq!(
        mode(&data.join("files").join(file["id"].as_str().unwrap())),
        0o600
    );
    assert_alive(&server);
}

#[test]
fn without_keys_foreign_hosts_and_cross_site_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    let get = |headers: &str| {
        raw(
            &server,
            format!("GET /v1/models HTTP/1.1\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    let host = server.address();
    // DNS rebinding: a page on evil.example resolves its name to 127.0.0.1.
    let (status, text) = get("Host: evil.example:8000\r\n");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("\"error\""), "{text}");
    let (status, text) = get(&format!("Host: {host}\r\nOrigin: http://evil.example\r\n"));
    assert_eq!(status, 403, "{text}");
    let (status, text) = get(&format!("Host: {host}\r\nSec-Fetch-Site: cross-site\r\n"));
    assert_eq!(status, 403, "{text}");
    // A cross-site form upload (a page POSTing multipart, which needs no CORS preflight).
    let boundary = "b";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let (status, text) = raw(
        &server,
        format!(
            "POST /v1/files HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(status, 403, "{text}");
    let (_, files) = server.get("/files");
    assert_eq!(files["data"].as_array().map(Vec::len), Some(0));
    // Loopback names and same-origin pages are fine.
    for ok in [
        format!("Host: {host}\r\n"),
        "Host: localhost:9\r\n".to_owned(),
        "Host: [::1]:9\r\n".to_owned(),
        format!("Host: {host}\r\nOrigin: http://localhost:3000\r\nSec-Fetch-Site: same-site\r\n"),
    ] {
        let (status, text) = get(&ok);
        assert_eq!(status, 200, "{ok}: {text}");
    }
    assert_alive(&server);
}

#[test]
fn with_keys_any_host_is_served_to_a_key_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["sekret"]);
    let (status, text) = raw(
        &server,
        b"GET /v1/models HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer sekret\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let (status, _) = raw(
        &server,
        b"GET /v1/models HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer sekreT\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401);
}

#[test]
fn chat_work_is_bounded_by_the_context_and_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 5);
    let server = Server::start_with(&tmp.path().join("data"), &[], |c| {
        c.max_request_tokens = 4096;
    });
    let model = model.to_str().unwrap();
    let (status, body) = server.post(
        "/chat/completions",
        &json!({"model": model, "n": 128, "max_tokens": 1_000_000,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body);
    // A prompt longer than the model's context.
    let (status, body) = server.post(
        "/chat/completions",
        &json!({"model": model, "max_tokens": 4,
                "messages": [{"role": "user", "content": "word ".repeat(100_000)}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded", "{body}");
    // An unset max_tokens is cut to what the context leaves.
    let (status, body) = server.post(
        "/chat/completions",
        &json!({"model": model, "n": 2, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_alive(&server);
}

#[test]
fn a_burst_past_the_limit_gets_429_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &[], |c| {
        c.max_concurrent_requests = 1;
    });
    let host = server.address();
    // One request holds the only slot: its body never finishes arriving.
    let mut hold = TcpStream::connect(&host).unwrap();
    hold.write_all(
        format!(
            "POST /v1/fine_tuning/alpha/graders/validate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"grader\""
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = raw(
        &server,
        format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 429, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after:"), "{text}");
    assert!(text.contains("rate_limit_exceeded"), "{text}");
    drop(hold);
    std::thread::sleep(Duration::from_millis(300));
    assert_alive(&server);
}

#[test]
fn uploads_are_held_to_the_upload_limit_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_with(&data, &[], |c| c.max_upload_bytes = 1000);
    let (status, body) = server.upload("big.txt", &"x".repeat(5000), "user_data");
    assert_eq!(status, 413, "{body}");
    assert_envelope(&body);
    let left: Vec<_> = std::fs::read_dir(data.join("files"))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert!(left.is_empty(), "an aborted upload left {left:?}");
    let (status, body) = server.upload("small.txt", "ok", "user_data");
    assert_eq!(status, 200, "{body}");
    assert_alive(&server);
}

#[test]
fn image_tags_are_names_not_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &[]);
    for tag in ["/tmp/evil", "../../tmp/evil", "2025-05-08/../../x"] {
        let (status, body) = server.post(
            "/fine_tuning/alpha/graders/validate",
            &json!({"grader": {"type": "python", "name": "p", "image_tag": tag,
                               "source": "def grade(sample, item):\n    return 1.0\n"}}),
        );
        assert_eq!(status, 400, "{tag}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("image_tag")),
            "{body}"
        );
    }
    assert_alive(&server);
}

#[test]
fn cancelling_a_job_as_it_starts_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Qwen2, 5);
    let server = Server::start(&tmp.path().join("data"), &[]);
    let (_, file) = server.upload(
        "train.jsonl",
        &rows(40, |i| format!("Say x {i}")),
        "fine-tune",
    );
    let mut ids = Vec::new();
    // Cancel at staggered moments around the scheduler's start of the job.
    for delay_ms in [0u64, 5, 20, 50, 100] {
        let (status, job) = server.post(
            "/fine_tuning/jobs",
            &json!({"model": model.to_str().unwrap(), "training_file": file["id"], "seed": 1,
                    "method": {"type": "reinforcement", "reinforcement": {
                        "grader": {"type": "string_check", "name": "a", "operation": "like",
                                   "input": "{{ sample.output_text }}", "reference": "x"},
                        "hyperparameters": {"n_epochs": 50, "batch_size": 2,
                                            "max_completion_tokens": 4}}}}),
        );
        assert_eq!(status, 200, "{job}");
        let id = job["id"].as_str().unwrap().to_owned();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let (status, body) = server.post(&format!("/fine_tuning/jobs/{id}/cancel"), &json!({}));
        assert_eq!(status, 200, "{body}");
        ids.push(id);
    }
    // A cancelled job stays cancelled, and the scheduler moves on: a job created after them
    // runs to its end (jobs run one at a time, so one that ignored its cancel would hold it).
    let (_, last) = server.post(
        "/fine_tuning/jobs",
        &json!({"model": model.to_str().unwrap(), "training_file": file["id"], "seed": 2,
                "method": {"type": "reinforcement", "reinforcement": {
                    "grader": {"type": "string_check", "name": "a", "operation": "like",
                               "input": "{{ sample.output_text }}", "reference": "x"},
                    "hyperparameters": {"n_epochs": 1, "batch_size": 4,
                                        "max_completion_tokens": 4}}}}),
    );
    let last = server.wait_for(
        last["id"].as_str().unwrap(),
        &["succeeded", "failed"],
        Duration::from_secs(300),
    );
    assert_eq!(last["status"], "succeeded", "{last}");
    for id in &ids {
        let (_, job) = server.get(&format!("/fine_tuning/jobs/{id}"));
        assert_eq!(job["status"], "cancelled", "{job}");
        let (_, events) = server.get(&format!("/fine_tuning/jobs/{id}/events?limit=1000"));
        let events = events["data"].as_array().unwrap();
        let steps = events.iter().filter(|e| e["type"] == "metrics").count();
        // 50 epochs of 20 steps were asked for: a job whose cancel was missed runs all 1,000
        // (a tiny model trains some steps before a late cancel lands, and that is fine).
        assert!(
            steps < 1000,
            "job {id} ran all its {steps} steps despite its cancel"
        );
        let mut event_ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
        let count = event_ids.len();
        event_ids.sort_unstable();
        event_ids.dedup();
        assert_eq!(event_ids.len(), count, "events share ids in job {id}");
    }
    assert_alive(&server);
}
