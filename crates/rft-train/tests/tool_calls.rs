//! Rollouts on rows that offer tools: the samples' tool calls reach the grader as
//! `sample.output_tools`. A tiny random model cannot call tools by itself, so its answers are
//! forced into a call's shape with a JSON schema (`{"name": one of two tools, "arguments":
//! {...}}`); which tool it picks is its own draw, so rewards vary and the job trains.

use std::path::Path;

use rft_model::Architecture;
use rft_train::config::parse_job;
use rft_train::job::{run_job, JobControl, JobOutcome};
use rft_types::api::job::CreateJob;
use serde_json::{json, Value};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "search", "description": "Web search.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    ])
}

fn request(dir: &Path, grader: Value) -> CreateJob {
    let model = dir.join("model");
    rft_model::tiny::write_tiny_model(&model, Architecture::Qwen2, 11).unwrap();
    let mut train = String::new();
    for i in 0..8 {
        train.push_str(
            &json!({"messages": [{"role": "user", "content": format!("Weather in Paris? {i}")}],
                    "tools": tools(), "want": "get_weather"})
            .to_string(),
        );
        train.push('\n');
    }
    std::fs::write(dir.join("train.jsonl"), &train).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"enum": ["get_weather", "search"]},
            "arguments": {"type": "object", "properties": {"city": {"const": "Paris"}},
                          "required": ["city"], "additionalProperties": false}
        },
        "required": ["name", "arguments"],
        "additionalProperties": false
    });
    parse_job(json!({
        "model": model.to_str().unwrap(),
        "training_file": dir.join("train.jsonl").to_str().unwrap(),
        "seed": 5,
        "method": {"type": "reinforcement", "reinforcement": {
            "grader": grader,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "call", "strict": true, "schema": schema}},
            "hyperparameters": {"batch_size": 4, "n_epochs": 1, "compute_multiplier": 1,
                                "lora_rank": 4, "max_completion_tokens": 64}
        }}
    }))
    .unwrap()
}

#[test]
fn graders_read_sample_output_tools_in_rollouts() {
    let tmp = tempfile::tempdir().unwrap();
    // The reward is 1 when the first call names the tool the row wants, 0.5 more when its
    // arguments are right: every sample needs `output_tools[0]`, or the template variable is
    // missing, the sample errors and the step fails.
    let grader = json!({"type": "multi", "name": "tool", "calculate_output": "0.5 * name + 0.5 * args",
    "graders": {
        "name": {"type": "string_check", "name": "name", "operation": "eq",
                 "input": "{{ sample.output_tools[0].function.name }}",
                 "reference": "{{ item.want }}"},
        "args": {"type": "string_check", "name": "args", "operation": "eq",
                 "input": "{{ sample.output_tools[0].function.arguments }}",
                 "reference": "{\"city\":\"Paris\"}"}
    }});
    let request = request(tmp.path(), grader);
    let out = tmp.path().join("run");
    let summary = run_job(&request, &out, &JobControl::default(), &mut |_| {}).unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    assert_eq!(summary.steps, 2);
    for &reward in &summary.train_rewards {
        // The arguments are always right (forced); the name is the model's pick.
        assert!(
            (0.5..=1.0).contains(&reward),
            "rewards: {:?}",
            summary.train_rewards
        );
    }
}

#[test]
fn output_text_is_the_content_outside_the_calls() {
    let tmp = tempfile::tempdir().unwrap();
    // The whole answer is a call, so the text beside it (`output_text`) is empty on every
    // sample: had it been the raw completion, this grader would score 0.
    let grader = json!({"type": "string_check", "name": "text", "operation": "eq",
                        "input": "{{ sample.output_text }}", "reference": ""});
    let request = request(tmp.path(), grader);
    let summary = run_job(
        &request,
        &tmp.path().join("run"),
        &JobControl::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.outcome, JobOutcome::Succeeded);
    assert!(
        summary.train_rewards.iter().all(|&r| r == 1.0),
        "{:?}",
        summary.train_rewards
    );
}
