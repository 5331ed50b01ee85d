//! The Tinker-compatible API (`/api/v1`) at the HTTP level, on a tiny random model: its keys,
//! its futures, and every limit a client could push (sessions, models, samples, bodies,
//! `tinker://` paths).

mod common;

use std::path::Path;

use common::tinker::{Api, KEY};
use serde_json::json;

#[test]
fn x_api_key_is_accepted_like_a_bearer_key() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let get = |header: Option<(&str, &str)>| {
        let mut request = api.server.agent.get(format!("{}/api/v1/healthz", api.root));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.call().unwrap().status().as_u16()
    };
    assert_eq!(get(Some(("X-API-Key", KEY))), 200);
    assert_eq!(get(Some(("Authorization", &format!("Bearer {KEY}")))), 200);
    assert_eq!(get(Some(("X-API-Key", "tml-wrong"))), 401);
    assert_eq!(get(Some(("X-API-Key", "tml-test-ke"))), 401);
    assert_eq!(get(None), 401);
    // The OpenAI routes take the same header.
    let status = api
        .server
        .agent
        .get(format!("{}/v1/models", api.root))
        .header("X-API-Key", KEY)
        .call()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 200);
}

#[test]
fn a_model_trains_saves_and_samples_through_futures() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    let session = api.session();
    let (status, created) = api.create_model(&session, 0, &model);
    assert_eq!(status, 200, "{created}");
    let done = api.json_result(created["request_id"].as_str().unwrap());
    let model_id = done["model_id"].as_str().unwrap().to_owned();
    assert_eq!(model_id, format!("{session}:train:0"));
    let (status, info) = api.post("/get_info", json!({"model_id": model_id}));
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["lora_rank"], 2);
    // The tokenizer folder get_info names loads (tokenizer.json is there).
    let tokenizer = info["model_data"]["tokenizer_id"].as_str().unwrap();
    assert!(Path::new(tokenizer).join("tokenizer.json").is_file());

    // Optimizer step with nothing accumulated, then save, then sample from the save.
    let (status, step) = api.post(
        "/optim_step",
        json!({"model_id": model_id, "seq_id": 1, "adam_params": {"learning_rate": 0.01}}),
    );
    assert_eq!(status, 200, "{step}");
    let metrics = api.json_result(step["request_id"].as_str().unwrap());
    assert!(
        metrics["metrics"]["grad_norm:mean"].is_number(),
        "{metrics}"
    );
    let (status, saved) = api.post(
        "/save_weights_for_sampler",
        json!({"model_id": model_id, "seq_id": 2, "path": "w1"}),
    );
    assert_eq!(status, 200, "{saved}");
    let saved = api.json_result(saved["request_id"].as_str().unwrap());
    let path = saved["path"].as_str().unwrap().to_owned();
    assert_eq!(path, format!("tinker://{model_id}/sampler_weights/w1"));
    let (status, sample) = api.post(
        "/asample",
        json!({"num_samples": 2, "model_path": path,
               "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
               "sampling_params": {"max_tokens": 4, "seed": 3}}),
    );
    assert_eq!(status, 200, "{sample}");
    assert_eq!(sample["sample_sequence_ids"].as_array().unwrap().len(), 2);
    let (kind, body) = api.result(sample["request_id"].as_str().unwrap());
    assert_eq!(kind, "application/x-protobuf");
    assert!(!body.is_empty());
    // Listed, described, and a second save under the same name is refused.
    let listed = api
        .server
        .agent
        .get(format!(
            "{}/api/v1/training_runs/{model_id}/checkpoints",
            api.root
        ))
        .header("X-API-Key", KEY)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(listed.contains("sampler_weights/w1"), "{listed}");
    let (status, described) = api.post("/weights_info", json!({"tinker_path": path}));
    assert_eq!(status, 200, "{described}");
    assert_eq!(described["lora_rank"], 2);
    let (_, again) = api.post(
        "/save_weights_for_sampler",
        json!({"model_id": model_id, "seq_id": 3, "path": "w1"}),
    );
    let failed = api.json_result(again["request_id"].as_str().unwrap());
    assert_eq!(failed["category"], "user", "{failed}");
    // Unknown futures are 404.
    let (status, _) = api.post("/retrieve_future", json!({"request_id": "req_nope"}));
    assert_eq!(status, 404);
    // A finished session's models are gone and its heartbeat is 410.
    let (status, _) = api.post(&format!("/sessions/{session}/finish"), json!({}));
    assert_eq!(status, 200);
    let (status, _) = api.post("/session_heartbeat", json!({"session_id": session}));
    assert_eq!(status, 410);
    let (status, _) = api.post("/get_info", json!({"model_id": model_id}));
    assert_eq!(status, 404);
}

#[test]
fn sessions_and_models_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    let session = api.session();
    // Four training models at once; the fifth is refused until a session closes.
    for seq in 0..4 {
        let (status, body) = api.create_model(&session, seq, &model);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = api.create_model(&session, 4, &model);
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains('4'), "the cap is said: {body}");
    // The same model id twice is refused.
    let other = api.session();
    let (status, _) = api.create_model(&other, 0, &model);
    assert_eq!(status, 429);
    api.post(&format!("/sessions/{session}/finish"), json!({}));
    let (status, body) = api.create_model(&other, 0, &model);
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.create_model(&other, 0, &model);
    assert_eq!(status, 400);
    // Models are only made from served base models, and only LoRA.
    let (status, _) = api.create_model(&other, 1, "/etc");
    assert_eq!(status, 400);
    let (status, _) = api.post(
        "/create_model",
        json!({"session_id": other, "model_seq_id": 2, "base_model": model, "lora_config": {"rank": 100000}}),
    );
    assert_eq!(status, 400);
    // 64 sessions at once (one is open: the first was finished).
    for _ in 0..63 {
        api.session();
    }
    let (status, body) = api.post(
        "/create_session",
        json!({"tags": [], "user_metadata": null, "sdk_version": "test"}),
    );
    assert_eq!(status, 429, "{body}");
}

#[test]
fn hostile_bodies_and_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    let session = api.session();
    let (_, created) = api.create_model(&session, 0, &model);
    let model_id = api.json_result(created["request_id"].as_str().unwrap())["model_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A zstd bomb: 80 MiB of zeros in a few KiB, refused at the decompressed cap.
    let bomb = ruzstd::encoding::compress_to_vec(
        &vec![0u8; 80 << 20][..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    assert_eq!(api.raw("/forward_backward", Some("zstd"), bomb), 413);
    assert_eq!(
        api.raw("/forward_backward", Some("zstd"), b"garbage".to_vec()),
        400
    );
    assert_eq!(api.raw("/forward_backward", None, vec![0xff; 64]), 400);
    assert_eq!(api.raw("/forward_backward", Some("gzip"), Vec::new()), 400);

    // Paths that would leave the data folder.
    let planted = dir.path().join("data/tinker/runs");
    std::fs::create_dir_all(&planted).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("/etc", planted.join("sess_1-train-0")).unwrap();
    for bad in [
        "tinker://../../etc/weights/passwd".to_owned(),
        format!("tinker://{model_id}/weights/.."),
        format!("tinker://{model_id}/weights/../../x"),
        format!("tinker://{model_id}/weights//etc"),
        "/etc/passwd".to_owned(),
        "tinker://sess_1:train:0/weights/ssl".to_owned(),
    ] {
        for (route, body) in [
            ("/weights_info", json!({"tinker_path": bad})),
            (
                "/load_weights",
                json!({"model_id": model_id, "seq_id": 1, "path": bad, "optimizer": false}),
            ),
            (
                "/create_sampling_session",
                json!({"session_id": session, "sampling_session_seq_id": 0, "model_path": bad}),
            ),
        ] {
            let (status, answer) = api.post(route, body);
            assert!(
                matches!(status, 400 | 404),
                "{route} {bad}: {status} {answer}"
            );
            assert!(!answer.to_string().contains("/etc"), "{answer}");
        }
    }
    for bad_name in ["..", "a/b", ".x", "a b"] {
        let (status, _) = api.post(
            "/save_weights",
            json!({"model_id": model_id, "seq_id": 1, "path": bad_name}),
        );
        assert_eq!(status, 400, "{bad_name}");
    }

    // Sampling bounds.
    let sample = |n: usize, max_tokens: usize| {
        api.post(
            "/asample",
            json!({"num_samples": n, "base_model": model,
                   "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
                   "sampling_params": {"max_tokens": max_tokens}}),
        )
        .0
    };
    assert_eq!(sample(0, 4), 400);
    assert_eq!(sample(129, 4), 400);
    assert_eq!(sample(1, 100_000), 400);
    assert_eq!(sample(1, 0), 400);
    let (status, _) = api.post(
        "/asample",
        json!({"num_samples": 1, "base_model": model,
               "prompt": {"chunks": [{"type": "image", "data": "x", "format": "png"}]},
               "sampling_params": {"max_tokens": 4}}),
    );
    assert_eq!(status, 400);
    let (status, _) = api.post(
        "/asample",
        json!({"num_samples": 1, "base_model": model, "topk_prompt_logprobs": 5,
               "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]},
               "sampling_params": {"max_tokens": 4}}),
    );
    assert_eq!(status, 400);
    // A prompt past the model's context fails as a user error (the tiny model's context is
    // small; the server learns it once the model is loaded).
    let (_, long) = api.post(
        "/asample",
        json!({"num_samples": 1, "base_model": model,
               "prompt": {"chunks": [{"type": "encoded_text", "tokens": vec![1; 600]}]},
               "sampling_params": {"max_tokens": 8}}),
    );
    if let Some(id) = long["request_id"].as_str() {
        let failed = api.json_result(id);
        assert_eq!(failed["category"], "user", "{failed}");
    }
}

#[test]
fn a_models_requests_run_in_seq_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path());
    let model = Api::model(dir.path());
    let session = api.session();
    let (_, created) = api.create_model(&session, 0, &model);
    let model_id = api.json_result(created["request_id"].as_str().unwrap())["model_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Sent 3, 2, 1: run 1, 2, 3. Both saves use one name, so the one that runs first wins
    // and the other is refused.
    let save = |seq: u64| {
        let (status, body) = api.post(
            "/save_weights",
            json!({"model_id": model_id, "seq_id": seq, "path": "same"}),
        );
        assert_eq!(status, 200, "{body}");
        body["request_id"].as_str().unwrap().to_owned()
    };
    let third = save(3);
    let second = save(2);
    let (status, first) = api.post(
        "/optim_step",
        json!({"model_id": model_id, "seq_id": 1, "adam_params": {}}),
    );
    assert_eq!(status, 200, "{first}");
    let first = api.json_result(first["request_id"].as_str().unwrap());
    assert!(first["metrics"].is_object(), "{first}");
    let second = api.json_result(&second);
    assert!(
        second["path"].as_str().unwrap().ends_with("/weights/same"),
        "{second}"
    );
    let third = api.json_result(&third);
    assert_eq!(third["category"], "user", "{third}");
}
