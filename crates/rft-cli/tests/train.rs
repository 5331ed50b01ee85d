//! `rft train`, `rft generate` on its result, `rft export --merged`, and `--resume`, on a tiny
//! model the test writes itself.

use std::path::Path;

use serde_json::json;

mod common;
use common::{rft, tiny_job};

#[test]
fn train_then_generate_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_job(dir.path(), Some("cli"));
    let out = dir.path().join("run");
    let result = rft(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("Step 4/4"), "{stderr}");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.contains("fine-tuned model: ft:model:cli:ftjob-"),
        "{stdout}"
    );
    let job: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("job.json")).unwrap()).unwrap();
    assert_eq!(
        job["method"]["reinforcement"]["hyperparameters"]["batch_size"],
        2
    );

    let final_dir = out.join("final");
    let result = rft(&[
        "generate",
        "--model",
        final_dir.to_str().unwrap(),
        "--prompt",
        "Say x",
        "--max-tokens",
        "3",
        "--json",
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&result.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(line["ids"].as_array().unwrap().len() <= 3);

    let merged = dir.path().join("merged");
    let result = rft(&[
        "export",
        "--model",
        final_dir.to_str().unwrap(),
        "--merged",
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "{file} missing");
    }

    // Resuming a finished job re-runs nothing and succeeds.
    let result = rft(&["train", "--resume", out.to_str().unwrap()]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

#[test]
fn rollouts_can_be_sampled_on_an_rft_serve_worker() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_job(dir.path(), None);
    let model = dir.path().join("model");
    let adapters = dir.path().join("adapters");
    std::fs::create_dir_all(&adapters).unwrap();
    let worker = common::Serve::start_with(&dir.path().join("worker"), "", 0, |command| {
        command
            .arg("--model")
            .arg(&model)
            .arg("--adapter-root")
            .arg(&adapters);
    });
    let out = dir.path().join("run");
    let result = rft(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--rollout-url",
        &worker.base,
        "--adapter-dir",
        adapters.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("Step 4/4"), "{stderr}");
    // The versions it published are in the shared folder, named after the run.
    let published: Vec<String> = std::fs::read_dir(&adapters)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !published.is_empty() && published.iter().all(|n| n.starts_with("run-")),
        "{published:?}"
    );
    // --rollout-url without --adapter-dir is refused before anything runs.
    let result = rft(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--rollout-url",
        &worker.base,
    ]);
    assert!(!result.status.success());
}

#[test]
fn a_bad_job_file_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_job(dir.path(), Some("cli"));
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["method"]["reinforcement"]["hyperparameters"]["n_epoch"] = json!(2);
    std::fs::write(&config, value.to_string()).unwrap();
    let result = rft(&["train", "--config", config.to_str().unwrap()]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("n_epoch"), "{stderr}");

    value["method"]["type"] = json!("supervised");
    std::fs::write(&config, value.to_string()).unwrap();
    let result = rft(&["train", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("supervised"), "{stderr}");
}

#[test]
fn the_quickstart_files_are_a_valid_job() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let text = std::fs::read_to_string(root.join("job.json")).unwrap();
    let request = rft_train::config::parse_job(serde_json::from_str(&text).unwrap()).unwrap();
    let grader = rft_train::config::grader(&request).unwrap();
    rft_grade::validate(&rft_types::Grader::from_value(grader).unwrap()).unwrap();
    let rows = rft_train::dataset::read_dataset(&root.join("train.jsonl")).unwrap();
    let valid = rft_train::dataset::read_dataset(&root.join("valid.jsonl")).unwrap();
    assert!(rows.len() >= 48 && !valid.is_empty());
    // Validation rows are never trained on.
    for v in &valid {
        assert!(rows.iter().all(|r| r.messages != v.messages));
    }
    let result = rft(&[
        "grader",
        "validate",
        root.join("grader.json").to_str().unwrap(),
    ]);
    assert!(result.status.success());
}
