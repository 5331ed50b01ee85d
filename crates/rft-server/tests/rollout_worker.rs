//! `rft serve` as a rollout worker: vLLM's run-time LoRA endpoints (loading only from under the
//! adapter root, vLLM's 404/400 codes, keys when keys are set) and `/v1/completions` with
//! token-id prompts, `n`, `seed`, `logprobs` and `return_token_ids`, what a trainer samples
//! through, on a tiny random model.

mod common;

use std::path::Path;

use candle_core::Device;
use common::jobs::tiny_model;
use common::Server;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_model::{Architecture, ModelConfig};
use serde_json::{json, Value};

/// A PEFT adapter over the tiny model, written to `dir`.
fn adapter(dir: &Path, base: &str, seed: u64) {
    let config = ModelConfig::tiny(Architecture::Llama);
    let lora = LoraConfig {
        rank: 2,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(&config, lora, seed, &Device::Cpu).unwrap();
    adapter.save_peft(dir, base).unwrap();
}

fn worker(tmp: &Path, keys: &[&str]) -> (Server, String) {
    let model = tiny_model(tmp, Architecture::Llama, 3);
    let root = tmp.join("adapters");
    std::fs::create_dir_all(&root).unwrap();
    let server = Server::start_with(&tmp.join("data"), keys, |config| {
        config.adapter_root = Some(root.clone());
    });
    (server, model.to_str().unwrap().to_owned())
}

#[test]
fn adapters_load_only_from_under_the_root_with_vllms_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = worker(tmp.path(), &[]);
    let root = tmp.path().join("adapters");
    adapter(&root.join("job-v1"), &base, 1);
    adapter(&tmp.path().join("outside"), &base, 2);
    std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("escape")).unwrap();
    let load = |name: &str, path: &str, inplace: bool| {
        server.post_text(
            "/load_lora_adapter",
            &json!({"lora_name": name, "lora_path": path, "load_inplace": inplace}),
        )
    };
    let outside = tmp.path().join("outside");
    for bad in [
        outside.to_str().unwrap(),
        "../outside",
        "escape",
        "job-v1/../../outside",
        "missing",
        "/etc",
    ] {
        let (status, text) = load("bad", bad, false);
        assert_eq!(status, 404, "{bad}: {text}");
        assert!(!text.contains(tmp.path().to_str().unwrap()), "{text}");
    }
    let (status, text) = load("job-v1", "job-v1", false);
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, "Success: LoRA adapter 'job-v1' added successfully.");
    let (status, text) = load("job-v1", "job-v1", false);
    assert_eq!(status, 400, "{text}");
    let absolute = root.join("job-v1");
    let (status, text) = load("job-v1", absolute.to_str().unwrap(), true);
    assert_eq!(status, 200, "{text}");
    // Listed with its base as the parent.
    let (_, models) = server.get("/models");
    let listed = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "job-v1")
        .cloned()
        .unwrap();
    assert_eq!(listed["parent"], base.as_str());
    // A name that is a base model's, or not a name.
    let (status, _) = load(&base, "job-v1", false);
    assert_eq!(status, 400);
    let (status, _) = load("", "job-v1", false);
    assert_eq!(status, 400);
    // A known hub model's name, even one not downloaded here, is not an adapter's.
    let (status, _) = load("smollm2-135m-instruct", "job-v1", false);
    assert_eq!(status, 400);
    // An adapter whose weights file is a link to a file elsewhere is refused.
    let linked = root.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::copy(
        root.join("job-v1/adapter_config.json"),
        linked.join("adapter_config.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        tmp.path().join("outside/adapter_model.safetensors"),
        linked.join("adapter_model.safetensors"),
    )
    .unwrap();
    let (status, text) = load("linked", "linked", false);
    assert_eq!(status, 404, "{text}");
    // Unloaded once, then unknown.
    let unload = |name: &str| server.post_text("/unload_lora_adapter", &json!({"lora_name": name}));
    let (status, text) = unload("job-v1");
    assert_eq!(status, 200, "{text}");
    let (status, text) = unload("job-v1");
    assert_eq!(status, 404, "{text}");
    let (status, body) = server.post(
        "/completions",
        &json!({"model": "job-v1", "prompt": [2, 3], "max_tokens": 2}),
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn without_a_root_the_endpoints_are_off_and_keys_are_required() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Llama, 3);
    let server = Server::start(&tmp.path().join("data"), &[]);
    let (status, _) = server.post_text(
        "/load_lora_adapter",
        &json!({"lora_name": "a", "lora_path": model.to_str().unwrap()}),
    );
    assert_eq!(status, 404);
    drop(server);
    let keyed = tempfile::tempdir().unwrap();
    let (server, _) = worker(keyed.path(), &["sekret"]);
    let status = server
        .agent
        .post(format!("{}/load_lora_adapter", server.base))
        .header("Content-Type", "application/json")
        .send(json!({"lora_name": "a", "lora_path": "a"}).to_string())
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 401);
}

#[test]
fn completions_sample_token_prompts_with_ids_and_logprobs() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = worker(tmp.path(), &[]);
    adapter(&tmp.path().join("adapters/v1"), &base, 4);
    let (status, text) = server.post_text(
        "/load_lora_adapter",
        &json!({"lora_name": "v1", "lora_path": "v1"}),
    );
    assert_eq!(status, 200, "{text}");
    let request = json!({"model": "v1", "prompt": [[2, 3, 4], [5, 6]], "n": 3,
                         "max_tokens": 6, "temperature": 1.0, "top_k": -1, "seed": 7,
                         "logprobs": 1, "return_token_ids": true});
    let (status, body) = server.post("/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 6);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let ids = choice["token_ids"].as_array().unwrap();
        let logprobs = choice["logprobs"]["token_logprobs"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 6, "{choice}");
        assert_eq!(ids.len(), logprobs.len(), "{choice}");
        assert!(logprobs.iter().all(|l| l.as_f64().unwrap() <= 0.0));
        assert!(ids.iter().all(|id| id.as_u64().unwrap() < 97));
        let prompt: Vec<u64> = if i < 3 { vec![2, 3, 4] } else { vec![5, 6] };
        let given: Vec<u64> = choice["prompt_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(given, prompt);
        assert!(matches!(
            choice["finish_reason"].as_str(),
            Some("stop" | "length")
        ));
    }
    assert_eq!(
        body["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        choices
            .iter()
            .map(|c| c["token_ids"].as_array().unwrap().len())
            .sum::<usize>()
    );
    // The same seed draws the same tokens.
    let (_, again) = server.post("/completions", &request);
    let ids = |body: &Value| -> Vec<Value> {
        body["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["token_ids"].clone())
            .collect()
    };
    assert_eq!(ids(&body), ids(&again));
    // Text prompts, echoed; the base model by name.
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": "ab", "max_tokens": 3, "echo": true}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("ab"));
    assert!(body["choices"][0]["token_ids"].is_null());
    // Structured output, as the trainer sends its job's response_format.
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": [2, 3], "max_tokens": 40, "seed": 1,
                "response_format": {"type": "json_object"}}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": [2, 3], "max_tokens": 4,
                "response_format": {"type": "xml"}}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "response_format");
}

#[test]
fn completions_refuse_what_is_out_of_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = worker(tmp.path(), &[]);
    for (body, param) in [
        (
            json!({"model": base, "prompt": [2, 500], "max_tokens": 2}),
            "prompt",
        ),
        (
            json!({"model": base, "prompt": [], "max_tokens": 2}),
            "prompt",
        ),
        (
            json!({"model": base, "prompt": [2], "max_tokens": 2, "logprobs": 21}),
            "logprobs",
        ),
        (
            json!({"model": base, "prompt": [2], "max_tokens": 2, "stream": true}),
            "stream",
        ),
        (
            json!({"model": base, "prompt": [2], "max_tokens": 2, "echo": true, "logprobs": 1}),
            "echo",
        ),
        (
            json!({"model": base, "prompt": vec![vec![2u32]; 4], "n": 128, "max_tokens": 200}),
            "max_tokens",
        ),
        (
            json!({"model": base, "prompt": [2], "max_tokens": 2, "n": 0}),
            "n",
        ),
        (
            json!({"model": base, "prompt": [2], "max_tokens": 2, "temperature": 3}),
            "temperature",
        ),
        (
            json!({"model": base, "prompt": vec![vec![2u32; 300]; 128], "n": 128,
                   "max_tokens": 1, "return_token_ids": true}),
            "prompt",
        ),
    ] {
        let (status, reply) = server.post("/completions", &body);
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{body}: {reply}");
    }
    let (status, reply) = server.post(
        "/completions",
        &json!({"model": "/etc/passwd", "prompt": [2], "max_tokens": 2}),
    );
    assert_eq!(status, 404, "{reply}");
    let (status, _) = server.get("/models");
    assert_eq!(status, 200);
}

#[test]
fn hostile_sizes_counts_and_races_leave_the_worker_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), Architecture::Llama, 3);
    let base = model.to_str().unwrap().to_owned();
    let root = tmp.path().join("adapters");
    adapter(&root.join("v1"), &base, 1);
    // A queue of four: a request of eight prompts cannot fit it.
    let server = Server::start_with(&tmp.path().join("data"), &[], |config| {
        config.adapter_root = Some(root.clone());
        config.inference_queue = 4;
    });
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": vec![vec![2u32, 3]; 8], "max_tokens": 2}),
    );
    assert_eq!(status, 429, "{body}");
    // Refused whole, it queued none of its prompts: the next request is served at once, however
    // slowly the inference thread would have drained them. Extreme values inside the types:
    // top_k past the vocabulary, the largest seed.
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": [2, 3], "max_tokens": 2, "top_k": i64::MAX,
                "seed": i64::MIN}),
    );
    assert_eq!(status, 200, "{body}");
    // Many at once: three-prompt requests racing for four places are each served whole or
    // refused whole, and every place comes back (a leaked one would refuse requests forever).
    std::thread::scope(|scope| {
        let racing: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    server.post(
                        "/completions",
                        &json!({"model": base, "prompt": vec![vec![2u32, 3]; 3], "max_tokens": 2}),
                    )
                })
            })
            .collect();
        for handle in racing {
            let (status, body) = handle.join().unwrap();
            assert!(status == 200 || status == 429, "{status}: {body}");
            if status == 200 {
                assert_eq!(body["choices"].as_array().map(Vec::len), Some(3), "{body}");
            }
        }
    });
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": vec![vec![2u32, 3]; 4], "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{body}");
    // A prompt past the model's context is refused before it is sampled.
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": vec![2u32; 100_000], "max_tokens": 2}),
    );
    assert_eq!(status, 400, "{body}");
    // Names and paths at their limits.
    let long = "a".repeat(129);
    let (status, _) = server.post_text(
        "/load_lora_adapter",
        &json!({"lora_name": long, "lora_path": "v1"}),
    );
    assert_eq!(status, 400);
    let (status, _) = server.post_text(
        "/load_lora_adapter",
        &json!({"lora_name": "n", "lora_path": "v1\u{0}/../../etc"}),
    );
    assert_eq!(status, 404);
    let (status, _) = server.post_text(
        "/load_lora_adapter",
        &json!({"lora_name": "n", "lora_path": "x/".repeat(10_000)}),
    );
    assert_eq!(status, 404);
    // Many loads and unloads of one name at once: each answers a code of vLLM's, and the
    // name ends either loaded or not.
    std::thread::scope(|scope| {
        for i in 0..16 {
            let server = &server;
            scope.spawn(move || {
                let (status, text) = if i % 2 == 0 {
                    server.post_text(
                        "/load_lora_adapter",
                        &json!({"lora_name": "raced", "lora_path": "v1"}),
                    )
                } else {
                    server.post_text("/unload_lora_adapter", &json!({"lora_name": "raced"}))
                };
                assert!(matches!(status, 200 | 400 | 404), "{status}: {text}");
            });
        }
    });
    let (status, body) = server.post(
        "/completions",
        &json!({"model": base, "prompt": [2, 3], "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn blob_adapter_paths_are_checked_and_racing_loads_of_one_version_agree() {
    // The server's blob store is its data folder: a version published there is what a worker
    // with `--blobs` publishes to S3.
    let tmp = tempfile::tempdir().unwrap();
    let (server, base) = worker(tmp.path(), &[]);
    let blobs = rft_store::blobs::Blobs::local(&tmp.path().join("data")).unwrap();
    let version = tmp.path().join("version");
    adapter(&version, &base, 4);
    blobs.publish_dir("adapters/job-v1", &version).unwrap();
    let root = tmp.path().join("adapters");
    let load = |name: &str, path: &str| {
        server.post_text(
            "/load_lora_adapter",
            &json!({"lora_name": name, "lora_path": path}),
        )
    };
    let long = format!("blob:adapters/{}", "a".repeat(10_000));
    for hostile in [
        "blob:adapters/../../etc",
        "blob:../outside",
        "blob:adapters/a/b",
        "blob:adapters/",
        "blob:adapters/.hidden",
        "blob:files/x",
        "blob:adapters/missing",
        long.as_str(),
    ] {
        let (status, text) = load("n", hostile);
        assert_eq!(status, 404, "{hostile}: {text}");
        assert!(!text.contains(tmp.path().to_str().unwrap()), "{text}");
    }
    assert!(
        !root.join("blobs").exists(),
        "nothing fetched for a refused path"
    );
    // A version whose file no longer matches its manifest is not loaded.
    blobs.publish_dir("adapters/job-v2", &version).unwrap();
    std::fs::write(
        tmp.path()
            .join("data/adapters/job-v2/adapter_model.safetensors"),
        b"tampered",
    )
    .unwrap();
    let (status, text) = load("tampered", "blob:adapters/job-v2");
    assert_eq!(status, 404, "{text}");
    // Many loads of one version at once, under different names: every one loads it.
    std::thread::scope(|scope| {
        for i in 0..12 {
            let load = &load;
            scope.spawn(move || {
                let (status, text) = load(&format!("raced-{i}"), "blob:adapters/job-v1");
                assert_eq!(status, 200, "{text}");
            });
        }
    });
    let (status, body) = server.post(
        "/completions",
        &json!({"model": "raced-3", "prompt": [2, 3], "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{body}");
}
