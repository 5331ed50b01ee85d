//! The RFT loop end to end on a tiny random model: reward rises on a toy task, a paused and
//! resumed run equals an uninterrupted one, a killed run resumes from its last complete state,
//! and bad input fails with the file and line.

use std::path::Path;
use std::sync::atomic::Ordering;

use rft_model::Architecture;
use rft_train::config::parse_job;
use rft_train::events::append_event;
use rft_train::job::{run_job, JobControl, JobOutcome};
use rft_types::api::event::{EventLevel, JobEvent};
use rft_types::api::job::CreateJob;
use serde_json::{json, Value};

/// A toy task: the reward is 1 when the completion contains `x`. A random tiny model emits it
/// now and then, so groups carry signal and RL can push its probability up.
fn setup(dir: &Path, rows: usize, extra: Value) -> CreateJob {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, Architecture::Qwen2, 5).unwrap();
    let mut train = String::new();
    for i in 0..rows {
        train.push_str(
            &json!({"messages": [{"role": "user", "content": format!("Say x please {i}")}], "target": "x"})
                .to_string(),
        );
        train.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), &train).unwrap();
    std::fs::write(
        dir.join("valid.jsonl"),
        json!({"messages": [{"role": "user", "content": "Say x now"}], "target": "x"}).to_string()
            + "\n",
    )
    .unwrap();
    let mut hyper = json!({
        "batch_size": 4, "n_epochs": 1, "compute_multiplier": 1, "eval_interval": 3,
        "eval_samples": 4, "learning_rate_multiplier": 50, "lora_rank": 4,
        "max_completion_tokens": 6
    });
    for (k, v) in extra.as_object().unwrap() {
        hyper[k] = v.clone();
    }
    parse_job(json!({
        "model": model.to_str().unwrap(),
        "training_file": dir.join("train.jsonl").to_str().unwrap(),
        "validation_file": dir.join("valid.jsonl").to_str().unwrap(),
        "seed": 3,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": {"type": "string_check", "name": "has_x", "operation": "like",
                       "input": "{{sample.output_text}}", "reference": "{{item.target}}"},
            "hyperparameters": hyper
        }}
    }))
    .unwrap()
}

/// The mean train reward of the last third of the steps beats the first third's by 0.1.
fn assert_rewards_rise(rewards: &[f64], run: &str) {
    let third = rewards.len() / 3;
    let first: f64 = rewards[..third].iter().sum::<f64>() / third as f64;
    let last: f64 = rewards[rewards.len() - third..].iter().sum::<f64>() / third as f64;
    assert!(
        last > first + 0.1,
        "{run}: train rewards did not rise ({first:.3} -> {last:.3}): {rewards:?}"
    );
}

fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn metrics(dir: &Path) -> Vec<Value> {
    events(dir)
        .into_iter()
        .filter(|e| e["type"] == "metrics" && e["data"]["step"].as_u64() > Some(0))
        .map(|e| e["data"].clone())
        .collect()
}

/// Whether `event` is the metrics event of `step`.
fn at_step(event: &JobEvent, step: usize) -> bool {
    event.metrics().is_some_and(|m| m.step == step)
}

#[test]
fn asynchronous_off_policy_steps_learn_and_report_their_staleness() {
    for m in [1usize, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let request = setup(
            tmp.path(),
            120,
            json!({"eval_interval": 10, "learning_rate_multiplier": 100, "max_off_policy_steps": m}),
        );
        let out = tmp.path().join("run");
        let summary = run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
        assert_eq!(summary.outcome, JobOutcome::Succeeded);
        assert_eq!(summary.steps, 30);
        assert_rewards_rise(&summary.train_rewards, &format!("m = {m}"));
        // Step 1 samples now; then the pipeline fills, and every later step trains on samples
        // `m` versions old (or fewer where a step trained nothing).
        let m_metrics = metrics(&out);
        let staleness: Vec<u64> = m_metrics
            .iter()
            .map(|d| d["off_policy_steps"].as_u64().unwrap())
            .collect();
        assert_eq!(staleness[0], 0, "{staleness:?}");
        assert!(staleness.iter().all(|&s| s <= m as u64), "{staleness:?}");
        assert!(staleness.contains(&(m as u64)), "{staleness:?}");
        // No importance correction unless asked: the loss clips against the sampler.
        assert!(m_metrics
            .iter()
            .all(|d| d["rollout_is_corrected"].is_null()));
        let job: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("job.json")).unwrap()).unwrap();
        let hyper = &job["method"]["reinforcement"]["hyperparameters"];
        assert_eq!(hyper["max_off_policy_steps"], m);
    }
    // GSPO weighs whole sequences: a per-token correction is refused, and none is the default.
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(
        tmp.path(),
        8,
        json!({"loss_type": "gspo", "rollout_correction": "tis"}),
    );
    let error = run_job(
        &request,
        &tmp.path().join("run"),
        &JobControl::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("rollout_correction"), "{error}");
    // Synchronous jobs report neither.
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path(), 8, json!({}));
    let out = tmp.path().join("run");
    run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
    assert!(metrics(&out)
        .iter()
        .all(|d| d["off_policy_steps"].is_null() && d["rollout_is_corrected"].is_null()));
}

#[test]
fn reward_rises_on_a_toy_task() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(
        tmp.path(),
        120,
        json!({"eval_interval": 10, "learning_rate_multiplier": 100}),
    );
    let out = tmp.path().join("run");
    let summary = run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    assert_eq!(summary.steps, 30);
    assert_rewards_rise(&summary.train_rewards, "synchronous");
    // What a job leaves behind.
    let m = metrics(&out);
    assert_eq!(m.len(), 30);
    assert!(m[9]["scores"]["valid_reward_mean"].is_number());
    assert!(m[0]["timing"]["step"]["sampling"].is_number());
    assert!(m[0]["frac_zero_std_groups"].is_number());
    assert!(out.join("final/adapter_model.safetensors").is_file());
    let checkpoints: Vec<Value> = std::fs::read_to_string(out.join("checkpoints.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(checkpoints.len() <= 3 && !checkpoints.is_empty());
    for c in &checkpoints {
        assert_eq!(c["object"], "fine_tuning.job.checkpoint");
        assert!(c["fine_tuned_model_checkpoint"]
            .as_str()
            .unwrap()
            .contains(":ckpt-step-"));
    }
}

#[test]
fn pause_and_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path(), 20, json!({}));
    let straight = tmp.path().join("straight");
    run_job(&request, &straight, &JobControl::default(), &mut |_| {}).unwrap();

    let paused = tmp.path().join("paused");
    let control = JobControl::default();
    let summary = run_job(&request, &paused, &control, &mut |event| {
        if at_step(event, 2) {
            control.pause.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert_eq!(summary.outcome, JobOutcome::Paused);
    assert_eq!(summary.steps, 2);
    let summary = run_job(&request, &paused, &JobControl::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    let strip = |m: Vec<Value>| -> Vec<Value> {
        m.into_iter()
            .map(|mut d| {
                d["timing"] = Value::Null;
                d
            })
            .collect()
    };
    assert_eq!(strip(metrics(&straight)), strip(metrics(&paused)));
    assert!(events(&paused)
        .iter()
        .any(|e| e["message"].as_str().unwrap().starts_with("Resumed")));
    let a = std::fs::read(straight.join("final/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(paused.join("final/adapter_model.safetensors")).unwrap();
    assert_eq!(a, b, "the resumed run ended with different weights");
}

#[test]
fn a_killed_run_resumes_from_its_last_complete_state() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path(), 20, json!({}));
    let straight = tmp.path().join("straight");
    run_job(&request, &straight, &JobControl::default(), &mut |_| {}).unwrap();

    let killed = tmp.path().join("killed");
    let control = JobControl::default();
    run_job(&request, &killed, &control, &mut |event| {
        if at_step(event, 3) {
            control.pause.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    // What a SIGKILL during step 4's save leaves: a half-written staging folder.
    let staging = killed.join("checkpoints/latest.new");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("adapter_model.safetensors"), b"garbage").unwrap();
    run_job(&request, &killed, &JobControl::default(), &mut |_| {}).unwrap();
    let a = std::fs::read(straight.join("final/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("final/adapter_model.safetensors")).unwrap();
    assert_eq!(a, b);
}

/// Copies a folder of plain files (a saved training state).
fn copy_flat(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_kill_between_the_checkpoint_renames_resumes_from_the_saved_step() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path(), 20, json!({}));
    let straight = tmp.path().join("straight");
    run_job(&request, &straight, &JobControl::default(), &mut |_| {}).unwrap();

    let killed = tmp.path().join("killed");
    let pause_at = |step: usize| {
        let control = JobControl::default();
        run_job(&request, &killed, &control, &mut |event| {
            if at_step(event, step) {
                control.pause.store(true, Ordering::SeqCst);
            }
        })
        .unwrap()
    };
    let checkpoints = killed.join("checkpoints");
    let after_2 = tmp.path().join("after-2");
    // The state after step 2, copied aside.
    assert_eq!(pause_at(2).steps, 2);
    copy_flat(&checkpoints.join("latest"), &after_2);
    // Only `latest.old` left (a kill between the renames of a first save after a resume):
    // the run goes on from step 2, not from 0.
    std::fs::rename(checkpoints.join("latest"), checkpoints.join("latest.old")).unwrap();
    assert_eq!(pause_at(3).steps, 3);
    // What a kill between save_latest's two renames leaves after step 3's save: the previous
    // state as latest.old, the complete new one as latest.new, no latest.
    std::fs::rename(checkpoints.join("latest"), checkpoints.join("latest.new")).unwrap();
    copy_flat(&after_2, &checkpoints.join("latest.old"));

    let summary = run_job(&request, &killed, &JobControl::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    let resumed: Vec<String> = events(&killed)
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.starts_with("Resumed"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        resumed,
        [
            "Resumed from the checkpoint of step 2",
            "Resumed from the checkpoint of step 3"
        ]
    );
    // Each step ran once: nothing was redone from step 0.
    let steps: Vec<u64> = metrics(&killed)
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    let a = std::fs::read(straight.join("final/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("final/adapter_model.safetensors")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn events_written_by_the_server_during_a_run_keep_ids_unique() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path(), 8, json!({}));
    let out = tmp.path().join("run");
    let mut appended = 0;
    // The server appends its own events ("Job paused", "Job cancelled") to the same file,
    // for the same job, while the loop runs.
    run_job(&request, &out, &JobControl::default(), &mut |_| {
        if appended < 5 {
            appended += 1;
            let job: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("job.json")).unwrap())
                    .unwrap();
            let id = job["id"].as_str().unwrap();
            append_event(
                &out,
                id,
                EventLevel::Info,
                format!("from the server {appended}"),
            )
            .unwrap();
        }
    })
    .unwrap();
    let all = events(&out);
    assert!(appended > 0);
    let mut ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate event ids: {all:#?}");
}

#[test]
fn bad_datasets_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(tmp.path(), 4, json!({}));
    let train = tmp.path().join("train.jsonl");
    let mut text = std::fs::read_to_string(&train).unwrap();
    text.push_str("{\"prompt\": \"no messages\"}\n");
    std::fs::write(&train, &text).unwrap();
    let err = run_job(
        &request,
        &tmp.path().join("a"),
        &JobControl::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train.jsonl:5") && err.contains("messages"),
        "{err}"
    );

    std::fs::write(
        &train,
        json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
            .to_string(),
    )
    .unwrap();
    let err = run_job(
        &request,
        &tmp.path().join("b"),
        &JobControl::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train.jsonl:1") && err.contains("user message"),
        "{err}"
    );

    std::fs::write(&train, "").unwrap();
    let err = run_job(
        &request,
        &tmp.path().join("c"),
        &JobControl::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no rows"), "{err}");
}

#[test]
fn a_grader_failing_on_most_samples_fails_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let mut request = setup(tmp.path(), 8, json!({}));
    // `item.missing` is not in any row: every sample gets invalid_variable_error.
    let method = request.method.as_mut().unwrap();
    method.reinforcement.as_mut().unwrap().grader = Some(json!({
        "type": "string_check", "name": "broken", "operation": "eq",
        "input": "{{sample.output_text}}", "reference": "{{item.missing}}"
    }));
    let err = run_job(
        &request,
        &tmp.path().join("run"),
        &JobControl::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("grader failed on"), "{err}");
}

#[test]
fn dynamic_sampling_refills_groups_without_signal() {
    // Even rows can be rewarded (the model emits `x` now and then); odd rows never can, so
    // their groups carry no signal and are dropped.
    let run = |refill_rounds: u64| {
        let tmp = tempfile::tempdir().unwrap();
        let request = setup(
            tmp.path(),
            0,
            json!({"max_refill_rounds": refill_rounds, "eval_interval": 100}),
        );
        let mut train = String::new();
        for i in 0..24 {
            let target = if i % 2 == 0 { "x" } else { "never emitted @@" };
            train.push_str(
                &json!({"messages": [{"role": "user", "content": format!("Say x please {i}")}],
                        "target": target})
                .to_string(),
            );
            train.push('\n');
        }
        std::fs::write(tmp.path().join("train.jsonl"), &train).unwrap();
        let out = tmp.path().join("run");
        run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
        metrics(&out)
    };
    let refilled = run(3);
    let plain = run(0);
    assert_eq!(refilled.len(), 6);
    assert!(plain.iter().all(|m| m["refill_groups"] == 0));
    let added: u64 = refilled
        .iter()
        .map(|m| m["refill_groups"].as_u64().unwrap())
        .sum();
    assert!(added > 0, "no group was refilled: {refilled:?}");
    for m in &refilled {
        // Refilled groups only make up for the ones dropped: at most batch_size with signal.
        let groups = 4.0 + m["refill_groups"].as_u64().unwrap() as f64;
        let with_signal = groups * (1.0 - m["frac_zero_std_groups"].as_f64().unwrap());
        assert!(with_signal <= 4.0 + 1e-9, "{m}");
    }
}

#[test]
fn a_job_without_signal_is_warned_about_once_and_the_best_checkpoint_is_named() {
    // A grader the policy can never satisfy: every sample scores 0, every group is flat, and
    // no step has a gradient: what a collapsed policy looks like from the rewards. (A policy
    // trained into collapse: `a_policy_trained_into_collapse_is_warned_about`.)
    let tmp = tempfile::tempdir().unwrap();
    let mut request = setup(tmp.path(), 40, json!({"eval_interval": 5}));
    let reinforcement = request
        .method
        .as_mut()
        .and_then(|m| m.reinforcement.as_mut())
        .unwrap();
    reinforcement.grader = Some(json!({"type": "string_check", "name": "never",
        "operation": "eq", "input": "{{sample.output_text}}",
        "reference": "a reference no sample of six tokens can equal"}));
    let out = tmp.path().join("run");
    let mut seen = Vec::new();
    let summary = run_job(&request, &out, &JobControl::default(), &mut |e| {
        seen.push(e.clone())
    })
    .unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    let warnings: Vec<&JobEvent> = seen
        .iter()
        .filter(|e| e.level == EventLevel::Warn)
        .collect();
    // Said once, after the third flat step, in the job's events.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].message.contains("collapse since step 1"),
        "{}",
        warnings[0].message
    );
    let before: Vec<usize> = seen
        .iter()
        .take_while(|e| e.id != warnings[0].id)
        .filter_map(|e| e.metrics())
        .map(|m| m.step)
        .collect();
    assert_eq!(before.last(), Some(&3), "{before:?}");
    assert!(events(&out).iter().any(|e| e["level"] == "warn"));
    // Validation points carry their standard error, and the summary names the best checkpoint.
    let valid = metrics(&out)
        .into_iter()
        .find(|d| d["scores"]["valid_reward_mean"].is_number())
        .unwrap();
    assert_eq!(
        valid["scores"]["valid_reward_stderr"].as_f64(),
        Some(0.0),
        "{valid}"
    );
    let best = summary.best_checkpoint.expect("a best checkpoint");
    assert!(best
        .fine_tuned_model_checkpoint
        .ends_with(&format!(":ckpt-step-{}", best.step_number)));
}

#[test]
fn a_policy_trained_into_collapse_is_warned_about() {
    // One-token answers rewarded only when they are the model's favourite: reinforced at ten
    // times the quickstart's rate, the policy says it and nothing else within a few steps, its
    // entropy falls to nothing and every group scores the same. Collapse, reached by training.
    let tmp = tempfile::tempdir().unwrap();
    let mut request = setup(
        tmp.path(),
        60,
        json!({"max_completion_tokens": 1, "learning_rate_multiplier": 2,
               "eval_interval": 100, "lora_rank": 8}),
    );
    // The tiny model's final norm scales the logits to about ±0.5, so no adapter can make one
    // token much likelier than another (its entropy stays near ln 97 whatever the rate): a
    // final norm ten times larger lets the logits spread as a real model's do.
    let weights_file = tmp.path().join("model").join("model.safetensors");
    let mut weights =
        candle_core::safetensors::load(&weights_file, &candle_core::Device::Cpu).unwrap();
    let norm = weights.get("model.norm.weight").unwrap();
    let scaled = (norm * 10.0).unwrap();
    weights.insert("model.norm.weight".into(), scaled);
    candle_core::safetensors::save(&weights, &weights_file).unwrap();
    // The reward: exactly the answer the model already likes best (its greedy first token for
    // the first prompt), so reinforcing it drives the policy onto that one answer.
    let engine = rft_model::engine::Engine::load(
        tmp.path().join("model").to_str().unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let prompt = engine
        .chat_prompt(
            &[json!({"role": "user", "content": "Say x please 0"})],
            None,
        )
        .unwrap();
    let greedy = rft_model::sample::sample(
        &engine.model,
        &prompt,
        1,
        &rft_model::sample::SamplingParams {
            temperature: 0.0,
            max_tokens: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let favourite = engine.tokenizer.decode(&greedy[0].ids, true).unwrap();
    assert!(
        !favourite.is_empty(),
        "the greedy answer is a special token"
    );
    for file in ["train.jsonl", "valid.jsonl"] {
        let path = tmp.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let rewritten: String = text
            .lines()
            .map(|line| {
                let mut row: Value = serde_json::from_str(line).unwrap();
                row["target"] = json!(favourite);
                row.to_string() + "\n"
            })
            .collect();
        std::fs::write(&path, rewritten).unwrap();
    }
    let reinforcement = request
        .method
        .as_mut()
        .and_then(|m| m.reinforcement.as_mut())
        .unwrap();
    reinforcement.grader = Some(json!({"type": "string_check", "name": "is_x",
        "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.target}}"}));
    let out = tmp.path().join("run");
    let mut seen = Vec::new();
    run_job(&request, &out, &JobControl::default(), &mut |e| {
        seen.push(e.clone())
    })
    .unwrap();
    let steps = metrics(&out);
    let entropies: Vec<f64> = steps.iter().filter_map(|m| m["entropy"].as_f64()).collect();
    let rewards: Vec<f64> = steps
        .iter()
        .filter_map(|m| m["train_mean_reward"].as_f64())
        .collect();
    let summary = format!("entropy {entropies:.3?}\nreward {rewards:.3?}");
    assert!(entropies.first() > Some(&1.0), "{summary}");
    let first_low = entropies
        .iter()
        .position(|&e| e < 0.05)
        .unwrap_or_else(|| panic!("the policy never collapsed: {summary}"));
    assert!(
        first_low >= 2,
        "collapsed at once, not by training: {summary}"
    );
    assert!(rewards.last() > Some(&0.95), "{summary}");
    let warnings: Vec<&JobEvent> = seen
        .iter()
        .filter(|e| e.level == EventLevel::Warn)
        .collect();
    assert!(!warnings.is_empty(), "no warning: {summary}");
    assert!(
        warnings.iter().all(|w| w.message.contains("collapse")),
        "{warnings:?}"
    );
    // Said once three collapsed steps have passed, not before.
    let steps_before: Vec<usize> = seen
        .iter()
        .take_while(|e| e.id != warnings[0].id)
        .filter_map(|e| e.metrics())
        .map(|m| m.step)
        .collect();
    let warned_after = steps_before.last().copied().unwrap_or(0);
    assert!(
        warned_after >= first_low + 3,
        "warned after step {warned_after}, entropy first low at step {}: {summary}",
        first_low + 1
    );
    assert!(events(&out).iter().any(|e| e["level"] == "warn"));
}

#[test]
fn validation_carries_its_standard_error_and_the_best_checkpoint_is_the_best_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(
        tmp.path(),
        60,
        json!({"eval_interval": 3, "eval_samples": 8, "learning_rate_multiplier": 100}),
    );
    let out = tmp.path().join("run");
    let summary = run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
    let points: Vec<(u64, f64, f64)> = events(&out)
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| {
            let s = &e["data"]["scores"];
            Some((
                e["data"]["step"].as_u64()?,
                s["valid_reward_mean"].as_f64()?,
                s["valid_reward_stderr"].as_f64()?,
            ))
        })
        .collect();
    assert!(points.len() >= 5, "{points:?}");
    for &(step, mean, stderr) in &points {
        // 8 samples of one row, rewards 0 or 1: the standard error of a proportion.
        let expected = (mean * (1.0 - mean) / 7.0).sqrt();
        assert!(
            (stderr - expected).abs() < 1e-9,
            "step {step}: {stderr} vs {expected}"
        );
    }
    let best = summary.best_checkpoint.expect("kept checkpoints");
    let kept = rft_train::checkpoints::read_checkpoints(&out);
    assert!(kept
        .iter()
        .all(|c| c.metrics.valid_reward_mean <= best.metrics.valid_reward_mean));
    // Each point also scores one greedy answer of the one validation row: 0 or 1.
    let greedy = greedy_points(&out);
    assert_eq!(greedy.len(), points.len(), "{greedy:?}");
    assert!(
        greedy.iter().all(|&(_, _, g)| g == 0.0 || g == 1.0),
        "{greedy:?}"
    );
}

/// (step, sampled mean, greedy mean) of every validation point.
fn greedy_points(out: &Path) -> Vec<(u64, f64, f64)> {
    events(out)
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| {
            let s = &e["data"]["scores"];
            Some((
                e["data"]["step"].as_u64()?,
                s["valid_reward_mean"].as_f64()?,
                s["valid_greedy_reward_mean"].as_f64()?,
            ))
        })
        .collect()
}

#[test]
fn a_policy_sampled_at_temperature_zero_validates_as_its_greedy_answers() {
    // Validated at temperature 0 every sample is the greedy answer: the sampled mean and the
    // greedy mean are one number at every point, and the event says so in its message.
    let tmp = tempfile::tempdir().unwrap();
    let request = setup(
        tmp.path(),
        24,
        json!({"eval_interval": 2, "temperature": 0, "learning_rate_multiplier": 100}),
    );
    let out = tmp.path().join("run");
    run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
    let points = greedy_points(&out);
    assert!(points.len() >= 3, "{points:?}");
    for &(step, mean, greedy) in &points {
        assert_eq!(mean, greedy, "step {step}");
    }
    assert!(events(&out).iter().any(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.contains("(greedy "))));
}

#[test]
fn dropping_flat_groups_trains_as_keeping_them_does() {
    // Flat groups have zero advantages: left out of the compute (the default) or trained
    // (dynamic_sampling false), every step's loss and gradient must be the same.
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for dynamic in [true, false] {
        let request = setup(
            tmp.path(),
            32,
            json!({"dynamic_sampling": dynamic, "learning_rate_multiplier": 20,
                   "eval_interval": 100}),
        );
        let out = tmp.path().join(format!("run-{dynamic}"));
        run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
        runs.push(metrics(&out));
    }
    let (dropped, kept) = (&runs[0], &runs[1]);
    assert_eq!(dropped.len(), kept.len());
    let mut flat_steps = 0;
    for (d, k) in dropped.iter().zip(kept) {
        assert_eq!(
            d["scores"]["train_reward_mean"],
            k["scores"]["train_reward_mean"]
        );
        let close = |key: &str| {
            let (a, b) = (d[key].as_f64().unwrap(), k[key].as_f64().unwrap());
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                "step {}: {key} {a} vs {b}",
                d["step"]
            );
        };
        close("loss");
        close("grad_norm");
        if d["frac_zero_std_groups"].as_f64() > Some(0.0) {
            flat_steps += 1;
        }
    }
    assert!(flat_steps > 0);
}
