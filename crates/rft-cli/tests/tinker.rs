//! The Tinker Python SDK against a real `rft serve` on the default model
//! (tests/sdk/tinker_flow.py): a LoRA training client, sampling, forward_backward with every
//! loss, optim_step, saving and loading state, sampling from saved weights. What the SDK got
//! is then replayed through `rft_train::primitives` directly, and must be the same numbers
//! (every loss and gradient norm within 1e-4). The cookbook's RL loop runs against the server
//! too (tests/sdk/tinker_rl_loop.py), and its reward must rise.
//!
//! Both need `.venv-tinker` (scripts/test.sh makes it) and the default model; without them the
//! tests say so and pass, unless `RFT_REQUIRE_TINKER_SDK` is set (scripts/test.sh sets it once
//! both are there). The RL loop runs only with `RFT_TINKER_RL_LOOP=1` (minutes of training).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use rft_model::engine::Engine;
use rft_model::hub::SMOLLM2_135M_INSTRUCT;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_train::loss::LossFn;
use rft_train::primitives::{AdamParams, Datum, TrainingClient};
use serde_json::Value;

mod common;
use common::{repo_root, Serve};

const KEY: &str = "tml-openrft-test-key";

/// The SDK's Python, or `None` (after saying why) when the test cannot run here.
fn tinker_python() -> Option<PathBuf> {
    let python = std::env::var_os("RFT_TINKER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-tinker/bin/python"));
    let required = std::env::var_os("RFT_REQUIRE_TINKER_SDK").is_some();
    if !python.exists() {
        assert!(
            !required,
            "RFT_REQUIRE_TINKER_SDK is set but {} does not exist (scripts/test.sh creates it)",
            python.display()
        );
        eprintln!(
            "skipped: no Python with the tinker SDK at {} (scripts/test.sh creates .venv-tinker)",
            python.display()
        );
        return None;
    }
    if !SMOLLM2_135M_INSTRUCT.is_present() {
        assert!(
            !required,
            "RFT_REQUIRE_TINKER_SDK is set but the default model is not downloaded (rft models pull)"
        );
        eprintln!("skipped: the default model is not downloaded (rft models pull)");
        return None;
    }
    Some(python)
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// The server's documented mapping (docs/tinker.md), written out again: prompt `[x0]`,
/// completion the targets; GSPO scores from the first non-zero advantage.
fn datum(record: &Value, loss: &str) -> Datum {
    let tokens = ids(&record["tokens"]);
    let targets = ids(&record["targets"]);
    let (old, adv) = if loss == "cross_entropy" {
        (vec![0.0; targets.len()], floats(&record["weights"]))
    } else {
        (floats(&record["logprobs"]), floats(&record["advantages"]))
    };
    let start = if loss == "gspo" {
        adv.iter().position(|a| *a != 0.0).unwrap()
    } else {
        0
    };
    Datum {
        prompt: tokens[..=start].to_vec(),
        completion: targets[start..].to_vec(),
        sampling_logprobs: old[start..].to_vec(),
        advantages: adv[start..].to_vec(),
    }
}

fn loss_fn(name: &str, config: &Value) -> LossFn {
    let get = |k: &str| config[k].as_f64().unwrap();
    match name {
        "cross_entropy" => LossFn::CrossEntropy,
        "importance_sampling" => LossFn::ImportanceSampling,
        "ppo" => LossFn::Ppo {
            epsilon_low: 1.0 - get("clip_low_threshold"),
            epsilon_high: get("clip_high_threshold") - 1.0,
        },
        "cispo" => LossFn::Cispo {
            epsilon_low: 1.0 - get("clip_low_threshold"),
            epsilon_high: get("clip_high_threshold") - 1.0,
        },
        "gspo" => LossFn::Gspo {
            epsilon_low: 1.0 - get("clip_low_threshold"),
            epsilon_high: get("clip_high_threshold") - 1.0,
        },
        "dro" => LossFn::Dro { beta: get("beta") },
        other => panic!("{other}"),
    }
}

fn close(what: &str, sdk: f64, library: f64) {
    assert!(
        (sdk - library).abs() <= 1e-4 * library.abs().max(1.0),
        "{what}: the SDK got {sdk}, the library computes {library}"
    );
}

#[test]
fn the_tinker_sdk_computes_what_the_library_computes() {
    let Some(python) = tinker_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Serve::start(&tmp.path().join("data"), KEY);
    let out = tmp.path().join("sdk.json");
    let output = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/tinker_flow.py"))
        .arg(server.root())
        .arg(KEY)
        .arg(SMOLLM2_135M_INSTRUCT.name)
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "the SDK flow failed:\n{stdout}\n{stderr}"
    );
    drop(server);

    let sent: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let engine = Engine::load_base(SMOLLM2_135M_INSTRUCT.name, &Device::Cpu).unwrap();
    let lora = LoraConfig {
        rank: sent["rank"].as_u64().unwrap() as usize,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(
        engine.model.config(),
        lora,
        sent["seed"].as_u64().unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let mut client = TrainingClient::new(engine, adapter);
    let adam = &sent["adam"];
    let params = AdamParams {
        learning_rate: adam["learning_rate"].as_f64().unwrap(),
        beta1: adam["beta1"].as_f64().unwrap(),
        beta2: adam["beta2"].as_f64().unwrap(),
        eps: adam["eps"].as_f64().unwrap(),
        weight_decay: adam["weight_decay"].as_f64().unwrap(),
        grad_clip_norm: adam["grad_clip_norm"].as_f64().unwrap(),
    };
    let records = sent["records"].as_array().unwrap();
    let steps = sent["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6, "every loss ran");
    for step in steps {
        let name = step["loss_fn"].as_str().unwrap();
        let loss = loss_fn(name, &step["config"]);
        let batch: Vec<Datum> = records.iter().map(|r| datum(r, name)).collect();
        let forward = client.forward(&batch, &loss).unwrap();
        close(
            &format!("{name} forward loss"),
            step["forward_loss"].as_f64().unwrap(),
            forward.loss,
        );
        let first = client.forward_backward(&batch[..2], &loss, None).unwrap();
        let second = client.forward_backward(&batch[2..], &loss, None).unwrap();
        let losses = step["losses"].as_array().unwrap();
        close(
            &format!("{name} loss (chunk 1)"),
            losses[0].as_f64().unwrap(),
            first.loss,
        );
        close(
            &format!("{name} loss (chunk 2)"),
            losses[1].as_f64().unwrap(),
            second.loss,
        );
        if name != "gspo" {
            // Every position's log-prob, as the SDK received it.
            let sdk = step["logprobs"].as_array().unwrap();
            for (got, want) in sdk
                .iter()
                .zip(first.logprobs.iter().chain(&second.logprobs))
            {
                for (a, b) in floats(got).iter().zip(want) {
                    close(&format!("{name} logprob"), f64::from(*a), f64::from(*b));
                }
            }
        }
        let optim = client.optim_step(&params).unwrap();
        close(
            &format!("{name} gradient norm"),
            step["grad_norm"].as_f64().unwrap(),
            optim.grad_norm,
        );
    }
    // The state the SDK saved after these six steps scores the check batch the same.
    let check: Vec<Datum> = records.iter().map(|r| datum(r, "cross_entropy")).collect();
    let before = client.forward(&check, &LossFn::CrossEntropy).unwrap();
    close(
        "loss after six steps",
        sent["before"].as_f64().unwrap(),
        before.loss,
    );
}

#[test]
fn the_cookbook_rl_loop_raises_the_reward() {
    // Six RL steps on the default model take minutes with a release build and far longer
    // with a debug one (the model engine unoptimised): run on request,
    // `RFT_TINKER_RL_LOOP=1 cargo test --release -p rft-cli --test tinker -- cookbook`.
    if std::env::var_os("RFT_TINKER_RL_LOOP").is_none() {
        eprintln!(
            "skipping: set RFT_TINKER_RL_LOOP=1 (with --release) to run the cookbook's RL loop"
        );
        return;
    }
    let Some(python) = tinker_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Serve::start(&tmp.path().join("data"), KEY);
    let quickstart = repo_root().join("examples/quickstart");
    let output = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/tinker_rl_loop.py"))
        .arg(server.root())
        .arg(KEY)
        .arg(SMOLLM2_135M_INSTRUCT.name)
        .arg(quickstart.join("train.jsonl"))
        .arg(quickstart.join("grader.json"))
        .arg(tmp.path().join("log"))
        .arg("6")
        .args(["4", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "the cookbook's RL loop failed:\n{stdout}\n{stderr}"
    );
    let rewards: Vec<f64> = stdout
        .lines()
        .filter_map(|l| l.split(" reward ").nth(1))
        .map(|r| r.trim().parse().unwrap())
        .collect();
    assert_eq!(rewards.len(), 6, "{stdout}");
    // Rising: the last two steps beat the first two.
    let early = (rewards[0] + rewards[1]) / 2.0;
    let late = (rewards[4] + rewards[5]) / 2.0;
    assert!(late > early, "the reward did not rise: {rewards:?}");
}
