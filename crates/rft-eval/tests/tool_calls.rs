//! Evals on rows that offer tools: the model's tool calls reach the grader as
//! `sample.output_tools`, the results file keeps them, and output items show them as the
//! assistant's `tool_calls` — from the local engine (a tiny model forced into a call's shape by
//! a JSON schema) and from an OpenAI-compatible endpoint that answers with `tool_calls`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use common::write_lines;
use rft_eval::data::read_data;
use rft_eval::objects::{build_objects, RunInfo};
use rft_eval::policy::{Policy, RemoteModel, SamplingOptions};
use rft_eval::run::{run_eval, EvalConfig};
use rft_grade::{compile, compile_with};
use rft_model::config::Architecture;
use rft_types::Grader;
use serde_json::{json, Value};

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

fn grader() -> Grader {
    Grader::from_value(&json!({
        "type": "string_check", "name": "called", "operation": "eq",
        "input": "{{ sample.output_tools[0].function.name }}:{{ sample.output_tools[0].function.arguments }}",
        "reference": "get_weather:{\"city\":\"{{ item.city }}\"}"
    }))
    .unwrap()
}

#[test]
fn local_tool_calls_are_graded_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    rft_model::tiny::write_tiny_model(&model_dir, Architecture::Qwen2, 4).unwrap();
    let path = write_lines(
        dir.path(),
        "data.jsonl",
        &[
            json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}],
                   "tools": tools(), "city": "Oslo"}),
            json!({"messages": [{"role": "user", "content": "Weather in Rome?"}],
                   "tools": tools(), "city": "Paris"}),
        ],
    );
    let data = read_data(&path).unwrap();
    let spec = grader();
    let policy = Policy::load_local(model_dir.to_str().unwrap()).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"name": {"const": "get_weather"},
                       "arguments": {"type": "object", "properties": {"city": {"const": "Oslo"}},
                                     "required": ["city"], "additionalProperties": false}},
        "required": ["name", "arguments"], "additionalProperties": false
    });
    let sampling = SamplingOptions {
        samples: 2,
        max_tokens: 64,
        response_format: Some(json!({"type": "json_schema",
            "json_schema": {"name": "call", "strict": true, "schema": schema}})),
        ..SamplingOptions::default()
    };
    let config = EvalConfig {
        sampling: sampling.clone(),
        output: Some(dir.path().join("results.jsonl")),
    };
    let results = run_eval(
        &data,
        Some(&policy),
        &compile(&spec).unwrap(),
        &config,
        &mut |_, _| {},
    )
    .unwrap();
    // Row 0 wants Oslo (what the schema forces), row 1 Paris.
    assert_eq!(results[0].rewards(), vec![1.0, 1.0]);
    assert_eq!(results[1].rewards(), vec![0.0, 0.0]);
    let first = &results[0].samples[0];
    assert_eq!(first.finish_reason, "tool_calls");
    assert_eq!(first.sample.output_text, "");
    assert_eq!(first.sample.output_tools[0]["type"], "function");
    assert!(first.sample.output_tools[0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    // A Python grader sees the same calls as `sample["output_tools"]`.
    let source = "import json\ndef grade(sample, item):\n    call = sample['output_tools'][0]['function']\n    args = json.loads(call['arguments'])\n    return 1.0 if call['name'] == 'get_weather' and args['city'] == item['city'] and sample['output_text'] == '' else 0.0\n";
    let python =
        Grader::from_value(&json!({"type": "python", "name": "py", "source": source})).unwrap();
    let python = compile_with(&python, &common::python_context()).unwrap();
    for (row, want) in [(0, 1.0), (1, 0.0)] {
        let graded = python.grade(
            &results[row].samples[0].sample,
            &data.rows[row].item_value(),
        );
        assert_eq!(graded.reward, want, "{:?}", graded.metadata.errors);
    }
    // The results file keeps the calls (a resumed eval grades the same samples).
    let line = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
    assert!(line.contains("\"output_tools\":[{"), "{line}");

    let objects = build_objects(
        &data,
        &spec,
        &results,
        &RunInfo {
            name: "tools",
            model: Some("tiny"),
            sampling: &sampling,
            pass_threshold: 1.0,
            created_at: 1,
            report_url: None,
        },
    );
    let item = serde_json::to_value(&objects.output_items[0]).unwrap();
    let output = &item["sample"]["output"][0];
    assert_eq!(output["role"], "assistant");
    assert_eq!(output["content"], Value::Null);
    assert_eq!(output["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(item["sample"]["finish_reason"], "tool_calls");
}

/// Serves `count` chat requests, each answered with a call to `get_weather` for Oslo, and
/// returns the requests' bodies.
fn tool_calling_server(count: usize) -> (String, std::thread::JoinHandle<Vec<Value>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for stream in listener.incoming().take(count) {
            let stream = stream.unwrap();
            let mut reader = BufReader::new(&stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            bodies.push(serde_json::from_slice(&body).unwrap());
            let reply = json!({
                "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_abc", "type": "function", "function":
                        {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
            })
            .to_string();
            let mut stream = &stream;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            )
            .unwrap();
        }
        bodies
    });
    (url, handle)
}

#[test]
fn remote_tool_calls_are_graded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_lines(
        dir.path(),
        "data.jsonl",
        &[
            json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}],
                 "tools": tools(), "city": "Oslo"}),
        ],
    );
    let data = read_data(&path).unwrap();
    let (url, server) = tool_calling_server(2);
    let policy = Policy::Remote(RemoteModel::new(&url, None, "m", 1));
    let config = EvalConfig {
        sampling: SamplingOptions {
            samples: 2,
            ..SamplingOptions::default()
        },
        output: None,
    };
    let results = run_eval(
        &data,
        Some(&policy),
        &compile(&grader()).unwrap(),
        &config,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(results[0].rewards(), vec![1.0, 1.0]);
    assert_eq!(results[0].samples[0].finish_reason, "tool_calls");
    assert_eq!(
        results[0].samples[0].sample.output_tools[0]["id"],
        "call_abc"
    );
    let bodies = server.join().unwrap();
    assert_eq!(
        bodies[0]["tools"],
        tools(),
        "the tools are sent to the endpoint"
    );
}
