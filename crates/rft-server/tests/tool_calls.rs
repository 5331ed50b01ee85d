//! `POST /v1/chat/completions` with `tools`: answers that call a tool come back as
//! `message.tool_calls` with `finish_reason: "tool_calls"` (plain and streamed, in OpenAI's
//! delta shape), `tool_choice: "none"` is honoured, and malformed or oversized `tools` are refused with the field named. A tiny random model cannot
//! call tools by itself, so its answers are forced into a call's shape with a JSON schema.

mod common;

use common::http::sse_chunks;
use common::jobs::tiny_model;
use common::Server;
use rft_model::Architecture;
use serde_json::{json, Value};

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

/// A `response_format` whose only answer is a call of `get_weather` for Oslo.
fn forced_call() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "call", "strict": true, "schema": {
        "type": "object",
        "properties": {"name": {"const": "get_weather"},
                       "arguments": {"type": "object", "properties": {"city": {"const": "Oslo"}},
                                     "required": ["city"], "additionalProperties": false}},
        "required": ["name", "arguments"], "additionalProperties": false}}})
}

fn start(dir: &std::path::Path) -> (Server, String) {
    let model = tiny_model(dir, Architecture::Qwen2, 5);
    // The tools prompt of a template without tools, in a character-level vocabulary, is longer
    // than a tiny model's 512 positions (128 tools are ~7000): give it room.
    let config = model.join("config.json");
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["max_position_embeddings"] = json!(16384);
    std::fs::write(&config, value.to_string()).unwrap();
    let server = Server::start(&dir.join("data"), &[]);
    (server, model.to_str().unwrap().to_owned())
}

fn request(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "seed": 3, "max_tokens": 64, "n": 2,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [weather()], "response_format": forced_call()});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn stream_chunks(server: &Server, body: &Value) -> (String, Vec<Value>) {
    let (status, text) = server.post_text("/chat/completions", body);
    assert_eq!(status, 200);
    let chunks = sse_chunks(&text);
    (text, chunks)
}

#[test]
fn answers_that_call_tools_return_tool_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, model) = start(tmp.path());
    let (status, chat) = server.post("/chat/completions", &request(&model, json!({})));
    assert_eq!(status, 200, "{chat}");
    for choice in chat["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "tool_calls", "{chat}");
        let message = &choice["message"];
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["content"], Value::Null);
        let call = &message["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"city": "Oslo"}));
    }

    let first_answer = chat.clone();

    // `tool_choice: "none"`: the same text is an answer, not a call.
    let (status, chat) = server.post(
        "/chat/completions",
        &request(&model, json!({"tool_choice": "none"})),
    );
    assert_eq!(status, 200, "{chat}");
    let choice = &chat["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none(), "{chat}");
    assert!(choice["message"]["content"]
        .as_str()
        .unwrap()
        .contains("get_weather"));

    // The next turn: the client sends the call back with the tool's result (OpenAI's shape,
    // `arguments` a string, `content` null) and the model continues.
    let call = first_answer["choices"][0]["message"].clone();
    assert!(call["tool_calls"].is_array());
    let mut body = request(&model, json!({"n": 1}));
    body["messages"] = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        call,
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 3}"}
    ]);
    body.as_object_mut().unwrap().remove("response_format");
    let (status, next) = server.post("/chat/completions", &body);
    assert_eq!(status, 200, "{next}");

    // Without tools, nothing is parsed either.
    let mut body = request(&model, json!({}));
    body.as_object_mut().unwrap().remove("tools");
    let (status, chat) = server.post("/chat/completions", &body);
    assert_eq!(status, 200, "{chat}");
    assert!(chat["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
}

#[test]
fn streamed_tool_calls_come_in_openai_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, model) = start(tmp.path());
    let (text, chunks) = stream_chunks(&server, &request(&model, json!({"stream": true, "n": 1})));
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(deltas.len(), 2, "{text}");
    let head = &deltas[0][0];
    assert_eq!(head["index"], 0);
    assert!(head["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(head["type"], "function");
    assert_eq!(head["function"]["name"], "get_weather");
    assert_eq!(head["function"]["arguments"], "");
    let tail = &deltas[1][0];
    assert_eq!(tail["index"], 0);
    assert!(tail.get("id").is_none());
    let arguments: Value =
        serde_json::from_str(tail["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Oslo"}));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| f.is_string())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    // No text chunk carries the call's JSON.
    assert!(!chunks.iter().any(|c| c["choices"][0]["delta"]["content"]
        .as_str()
        .is_some_and(|t| t.contains("get_weather"))));
}

#[test]
fn malformed_tools_are_refused_with_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, model) = start(tmp.path());
    let post = |extra: Value| {
        let mut body = json!({"model": model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        server.post("/chat/completions", &body)
    };
    let too_many: Vec<Value> = (0..129)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    for (extra, param) in [
        (json!({"tools": too_many}), "tools"),
        (
            json!({"tools": [{"type": "code", "function": {"name": "f"}}]}),
            "tools[0].type",
        ),
        (
            json!({"tools": [weather(), {"type": "function", "function": {"name": "bad name"}}]}),
            "tools[1].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "n".repeat(65)}}]}),
            "tools[0].function.name",
        ),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (
            json!({"tools": [weather()], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather()],
                   "tool_choice": {"type": "function", "function": {"name": "other"}}}),
            "tool_choice",
        ),
    ] {
        let (status, body) = post(extra.clone());
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    // 128 tools and a named tool choice are fine.
    let at_limit: Vec<Value> = (0..128)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    let (status, body) = post(json!({"tools": at_limit,
        "tool_choice": {"type": "function", "function": {"name": "f7"}}}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn eval_runs_offer_tools_and_grade_the_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, model) = start(tmp.path());
    let (status, eval) = server.post(
        "/evals",
        &json!({"name": "calls",
                "data_source_config": {"type": "custom",
                    "item_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                "testing_criteria": [{"type": "string_check", "name": "called",
                    "input": "{{ sample.output_tools[0].function.name }}",
                    "reference": "get_weather", "operation": "eq"}]}),
    );
    assert_eq!(status, 201, "{eval}");
    let eval_id = eval["id"].as_str().unwrap();
    let run_body = |tools: Value| {
        json!({"data_source": {"type": "completions", "model": model,
            "source": {"type": "file_content", "content": [{"item": {"city": "Oslo"}},
                                                          {"item": {"city": "Bergen"}}]},
            "input_messages": {"type": "template",
                "template": [{"role": "user", "content": "Weather in {{ item.city }}?"}]},
            "sampling_params": {"max_completion_tokens": 64, "seed": 1, "tools": tools,
                                "response_format": forced_call()}}})
    };

    // Malformed tools are refused at create time, with the field named.
    let (status, body) = server.post(
        &format!("/evals/{eval_id}/runs"),
        &run_body(json!([{"type": "function", "function": {"name": "bad name"}}])),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"],
        "data_source.sampling_params.tools[0].function.name"
    );

    let (status, run) = server.post(
        &format!("/evals/{eval_id}/runs"),
        &run_body(json!([weather()])),
    );
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let run = loop {
        let (_, run) = server.get(&format!("/evals/{eval_id}/runs/{run_id}"));
        if run["status"] != "queued" && run["status"] != "in_progress" {
            break run;
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["result_counts"]["passed"], 2, "{run}");
    let (_, items) = server.get(&format!("/evals/{eval_id}/runs/{run_id}/output_items"));
    for item in items["data"].as_array().unwrap() {
        let output = &item["sample"]["output"][0];
        assert_eq!(
            output["tool_calls"][0]["function"]["name"], "get_weather",
            "{item}"
        );
    }
}
