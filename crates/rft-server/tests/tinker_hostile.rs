//! Attacks on the Tinker API that once took the server down or let one key reach another's
//! work, each answered now with its documented 4xx (or bounded queueing) while the server
//! keeps serving: a sparse tensor whose shape asks for 64 GiB, finishing a session to get past
//! the model cap, filling the futures table, long-polls holding every request slot, keys
//! reading each other's sessions, models, futures and checkpoints, a page on another local
//! port driving a server without keys, and error messages that mangled `tinker://` paths.

mod common;

use std::time::{Duration, Instant};

use common::tinker::{Api, KEY};
use prost::Message;
use rft_tinker::proto;
use serde_json::{json, Value};

const OTHER_KEY: &str = "tml-other-key";

fn alive(api: &Api) {
    let (status, body) = api.server.get("/models");
    assert_eq!(status, 200, "the server stopped serving: {body}");
}

fn trained_model(api: &Api, session: &str, seq: u32, model: &str) -> String {
    let (status, created) = api.create_model(session, seq, model);
    assert_eq!(status, 200, "{created}");
    let done = api.json_result(created["request_id"].as_str().unwrap());
    done["model_id"].as_str().unwrap().to_owned()
}

/// A `forward_backward` body: one datum of `tokens`, its targets, and `weights`.
fn forward_backward_body(model_id: &str, tokens: &[u32], weights: proto::Tensor) -> Vec<u8> {
    let targets: Vec<i64> = tokens
        .iter()
        .skip(1)
        .map(|&t| i64::from(t))
        .chain([1])
        .collect();
    let datum = proto::Datum {
        model_input: vec![proto::Chunk {
            chunk: Some(proto::ChunkKind::EncodedText(proto::EncodedTextChunk {
                tokens: proto::i32_bytes(tokens),
            })),
        }],
        loss_fn_inputs: [
            (
                "target_tokens".to_owned(),
                proto::Tensor {
                    encoding: Some(proto::Encoding::Dense(proto::i64_bytes(&targets))),
                    dtype: proto::DType::Int64 as i32,
                    shape: vec![targets.len() as i64],
                },
            ),
            ("weights".to_owned(), weights),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    proto::ForwardBackwardRequest {
        model_id: model_id.to_owned(),
        seq_id: 1,
        loss_fn: "cross_entropy".into(),
        data: vec![datum],
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn a_sparse_tensor_shaped_for_64_gib_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    let session = api.session();
    let model_id = trained_model(&api, &session, 0, &model);
    let attack = proto::Tensor {
        encoding: Some(proto::Encoding::SparseCsr(proto::SparseCsr {
            values: Vec::new(),
            crow_indices: proto::i64_bytes(&[0, 0]),
            col_indices: Vec::new(),
        })),
        dtype: proto::DType::Float32 as i32,
        shape: vec![1, 8_589_934_592],
    };
    let body = forward_backward_body(&model_id, &[5, 6, 7], attack);
    assert!(body.len() < 200, "{} bytes", body.len());
    assert_eq!(api.raw("/forward_backward", None, body), 400);
    // A well-shaped request on the same model still trains.
    let weights = proto::Tensor {
        encoding: Some(proto::Encoding::Dense(proto::f32_bytes(&[1.0, 1.0, 1.0]))),
        dtype: proto::DType::Float32 as i32,
        shape: vec![3],
    };
    let body = forward_backward_body(&model_id, &[5, 6, 7], weights);
    assert_eq!(api.raw("/forward_backward", None, body), 200);
    alive(&api);
}

#[test]
fn sampling_requests_run_in_batches_within_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    // One byte: every request runs in a batch of its own.
    let api = Api::start_with(dir.path(), &[KEY], |config| config.max_batch_bytes = 1);
    let model = Api::model(dir.path());
    let ids: Vec<String> = (0..12)
        .map(|i| {
            let (status, body) = api.post(
                "/asample",
                json!({"num_samples": 1, "base_model": model,
                       "prompt": {"chunks": [{"tokens": vec![2 + i; 300]}]},
                       "sampling_params": {"max_tokens": 4, "seed": i}}),
            );
            assert_eq!(status, 200, "{body}");
            body["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in ids {
        let (kind, body) = api.result(&id);
        assert_eq!(kind, "application/x-protobuf");
        let response = proto::SampleResponse::decode(body.as_slice()).unwrap();
        assert_eq!(response.sequences.len(), 1);
    }
    alive(&api);
}

#[test]
fn asample_caps_samples_times_tokens_like_chat() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    // Before the model is loaded its context is taken as 8,192: only the total refuses this.
    let (status, body) = api.post(
        "/asample",
        json!({"num_samples": 128, "base_model": model,
               "prompt": {"chunks": [{"tokens": [1, 2]}]},
               "sampling_params": {"max_tokens": 4096}}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"], "sampling_params.max_tokens",
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );
    alive(&api);
}

#[test]
fn finishing_a_session_fails_its_queued_work_and_the_cap_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    let first = api.session();
    let held_model = trained_model(&api, &first, 0, &model);
    for seq in 1..4 {
        trained_model(&api, &first, seq, &model);
    }
    // Work queued behind a missing seq_id 1: held, not run.
    let held: Vec<String> = (0..5)
        .map(|i| {
            let (status, body) = api.post(
                "/optim_step",
                json!({"model_id": held_model, "seq_id": 50 + i, "adam_params": {}}),
            );
            assert_eq!(status, 200, "{body}");
            body["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let (status, _) = api.post(&format!("/sessions/{first}/finish"), json!({}));
    assert_eq!(status, 200);
    // Its futures fail at once, as the client's error.
    let started = Instant::now();
    for id in &held {
        let failed = api.json_result(id);
        assert_eq!(failed["category"], "user", "{failed}");
        assert!(
            failed["error"].as_str().unwrap().contains("closed"),
            "{failed}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    // Four models again, and never a fifth.
    let second = api.session();
    for seq in 0..4 {
        let (status, body) = api.create_model(&second, seq, &model);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = api.create_model(&second, 4, &model);
    assert_eq!(status, 429, "{body}");
    alive(&api);
}

#[test]
fn each_key_has_its_own_futures_quota() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start_with(dir.path(), &[KEY, OTHER_KEY], |_| {});
    let model = Api::model(dir.path());
    let session = api.session();
    let model_id = trained_model(&api, &session, 0, &model);
    // Held optimizer steps (seq_ids far past 1) fill this key's quota.
    let quota = rft_tinker::futures::MAX_FUTURES_PER_OWNER;
    let mut held = Vec::new();
    for i in 0..=quota {
        let (status, body) = api.post(
            "/optim_step",
            json!({"model_id": model_id, "seq_id": 10_000 + i, "adam_params": {}}),
        );
        if status != 200 {
            assert_eq!(status, 429, "{body}");
            break;
        }
        held.push(body["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(held.len(), quota, "the quota is per key and exact");
    let sample = |key: &str| {
        api.post_as(
            Some(key),
            "/asample",
            json!({"num_samples": 1, "base_model": model,
                   "prompt": {"chunks": [{"tokens": [1, 2]}]},
                   "sampling_params": {"max_tokens": 2}}),
        )
    };
    assert_eq!(sample(KEY).0, 429);
    // The other key is not affected, and its futures are unknown to this key.
    let (status, body) = sample(OTHER_KEY);
    assert_eq!(status, 200, "{body}");
    let theirs = body["request_id"].as_str().unwrap().to_owned();
    let (status, _) = api.post("/retrieve_future", json!({"request_id": theirs}));
    assert_eq!(status, 404);
    // Closing the model fails the held futures at once; each fetched one frees its place.
    api.post(&format!("/sessions/{session}/finish"), json!({}));
    assert_eq!(sample(KEY).0, 429, "unfetched results still count");
    let failed = api.json_result(&held[0]);
    assert_eq!(failed["category"], "user", "{failed}");
    let (status, body) = sample(KEY);
    assert_eq!(status, 200, "{body}");
    alive(&api);
}

#[test]
fn tinker_objects_belong_to_the_key_that_made_them() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start_with(dir.path(), &[KEY, OTHER_KEY], |_| {});
    let model = Api::model(dir.path());
    let session = api.session();
    let model_id = trained_model(&api, &session, 0, &model);
    let (_, saved) = api.post(
        "/save_weights",
        json!({"model_id": model_id, "seq_id": 1, "path": "mine"}),
    );
    let saved = api.json_result(saved["request_id"].as_str().unwrap());
    let path = saved["path"].as_str().unwrap().to_owned();
    let other = |route: &str, body: Value| api.post_as(Some(OTHER_KEY), route, body);
    // Another key cannot see, use, step, load or delete any of it.
    assert_eq!(other("/get_info", json!({"model_id": model_id})).0, 404);
    assert_eq!(
        other(
            "/optim_step",
            json!({"model_id": model_id, "seq_id": 2, "adam_params": {}})
        )
        .0,
        404
    );
    assert_eq!(other("/weights_info", json!({"tinker_path": path})).0, 404);
    assert_eq!(
        other("/session_heartbeat", json!({"session_id": session})).0,
        410
    );
    let (status, body) = other(
        "/create_model",
        json!({"session_id": session, "model_seq_id": 7, "base_model": model,
               "lora_config": {"rank": 2}}),
    );
    assert_eq!(status, 410, "{body}");
    let other_session = other("/create_session", json!({})).1["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = other(
        "/load_weights",
        json!({"session_id": other_session, "model_seq_id": 0, "path": path, "optimizer": true}),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = other(
        "/create_sampling_session",
        json!({"session_id": other_session, "model_path": path}),
    );
    assert_eq!(status, 404, "{body}");
    let list = |key: &str, route: &str| {
        api.server
            .agent
            .get(format!("{}/api/v1{route}", api.root))
            .header("X-API-Key", key)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    assert!(list(KEY, "/checkpoints").contains("weights/mine"));
    assert!(!list(OTHER_KEY, "/checkpoints").contains("weights/mine"));
    assert!(!list(OTHER_KEY, &format!("/training_runs/{model_id}/checkpoints")).contains("mine"));
    let status = api
        .server
        .agent
        .delete(format!(
            "{}/api/v1/training_runs/{model_id}/checkpoints/weights/mine",
            api.root
        ))
        .header("X-API-Key", OTHER_KEY)
        .call()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 404);
    // Finishing another key's session is refused; the owner's is fine.
    let (status, _) = other(&format!("/sessions/{session}/finish"), json!({}));
    assert_eq!(status, 404);
    let (status, info) = api.post("/get_info", json!({"model_id": model_id}));
    assert_eq!(status, 200, "{info}");
    // A key's own future is its alone.
    let (_, step) = api.post(
        "/optim_step",
        json!({"model_id": model_id, "seq_id": 2, "adam_params": {}}),
    );
    let id = step["request_id"].as_str().unwrap();
    assert_eq!(other("/retrieve_future", json!({"request_id": id})).0, 404);
    assert!(api.json_result(id)["metrics"].is_object());
    // The owner still has everything; an error names the tinker:// path whole.
    let (status, body) = api.post(
        "/weights_info",
        json!({"tinker_path": format!("tinker://{model_id}/weights/absent")}),
    );
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("tinker://{model_id}/weights/absent")),
        "{message}"
    );
    alive(&api);
}

#[test]
fn long_polls_wait_in_a_pool_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    // Four request slots for everything else.
    let api = Api::start_with(dir.path(), &[KEY], |config| {
        config.max_concurrent_requests = 4
    });
    let model = Api::model(dir.path());
    let session = api.session();
    let model_id = trained_model(&api, &session, 0, &model);
    let held: Vec<String> = (0..8)
        .map(|i| {
            let (_, body) = api.post(
                "/optim_step",
                json!({"model_id": model_id, "seq_id": 100 + i, "adam_params": {}}),
            );
            body["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    std::thread::scope(|scope| {
        let polls: Vec<_> = held
            .iter()
            .map(|id| {
                let api = &api;
                scope.spawn(move || api.post("/retrieve_future", json!({"request_id": id})))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // Eight long-polls wait; the rest of the API answers.
        alive(&api);
        let (status, body) = api.post("/healthz_is_get_only", json!({}));
        assert_eq!(status, 404, "{body}");
        // Closing the model ends the polls with its failure.
        api.post(&format!("/sessions/{session}/finish"), json!({}));
        for poll in polls {
            let (status, body) = poll.join().unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["category"], "user", "{body}");
        }
    });
}

#[test]
fn without_keys_another_local_page_cannot_send_simple_requests() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start_with(dir.path(), &[], |_| {});
    let send = |path: &str, content_type: Option<&str>, origin: Option<&str>, body: &str| {
        let mut request = api.server.agent.post(format!("{}{path}", api.root));
        if let Some(kind) = content_type {
            request = request.header("Content-Type", kind);
        }
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        let mut response = request.send(body.to_owned()).unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    let page = Some("http://localhost:3000");
    // JSON as text/plain from a page on another port: no preflight, so refused.
    let (status, text) = send("/api/v1/create_session", Some("text/plain"), page, "{}");
    assert_eq!(status, 415, "{text}");
    let (status, text) = send("/v1/fine_tuning/jobs/ftjob-x/cancel", None, page, "");
    assert_eq!(status, 415, "{text}");
    let (status, text) = send(
        "/v1/fine_tuning/jobs/ftjob-x/cancel",
        Some("application/x-www-form-urlencoded"),
        page,
        "a=b",
    );
    assert_eq!(status, 415, "{text}");
    // A body that is not JSON or protobuf is refused from programs too.
    let (status, text) = send(
        "/v1/fine_tuning/jobs/ftjob-x/cancel",
        Some("text/plain"),
        None,
        "{}",
    );
    assert_eq!(status, 415, "{text}");
    // A program on this machine (no Origin) and the server's own page are served.
    let (status, text) = send("/v1/fine_tuning/jobs/ftjob-x/cancel", None, None, "");
    assert_eq!(status, 404, "{text}");
    let own = api.root.clone();
    let (status, text) = send("/v1/fine_tuning/jobs/ftjob-x/cancel", None, Some(&own), "");
    assert_eq!(status, 404, "{text}");
    let (status, text) = send(
        "/api/v1/create_session",
        Some("application/json"),
        None,
        "{}",
    );
    assert_eq!(status, 200, "{text}");
    // Tinker's protobuf route takes protobuf only.
    let (status, text) = send("/api/v1/forward_backward", Some("text/plain"), None, "x");
    assert_eq!(status, 415, "{text}");
}

#[test]
fn a_long_poll_body_is_held_to_a_few_kib() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    // Long-polls skip the request slots, so their bodies are capped before they are read.
    let padding = "x".repeat(rft_tinker::MAX_POLL_BODY);
    let (status, body) = api.post(
        "/retrieve_future",
        json!({"request_id": "req_x", "padding": padding}),
    );
    assert_eq!(status, 413, "{body}");
    let (status, _) = api.post("/retrieve_future", json!({"request_id": "req_x"}));
    assert_eq!(status, 404);
    alive(&api);
}
