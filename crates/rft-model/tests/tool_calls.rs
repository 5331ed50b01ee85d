//! Tools in prompts and tool calls in answers, with the real Llama 3.1, Llama 3.2 and Qwen2.5
//! chat templates (fixtures written out from their published `tokenizer_config.json`): the
//! renderings equal Jinja2's with transformers' settings (`scripts/tool_template_reference.py`),
//! OpenAI-shaped tool calls (arguments as a JSON string) render as the templates expect, a
//! template that ignores tools gets the documented fallback prompt, and what each template
//! teaches parses back into the same calls.

use std::path::{Path, PathBuf};

use rft_model::tokenizer::ChatTemplate;
use rft_model::tool_calls::{parse_tool_calls, ParsedOutput, ToolCall, ToolCallFormat};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn template(name: &str, bos: Option<&str>, eos: Option<&str>) -> ChatTemplate {
    let source =
        std::fs::read_to_string(fixtures().join("tokenizer_templates").join(name)).unwrap();
    ChatTemplate::new(&source, bos, eos).unwrap()
}

fn weather_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    })
}

#[test]
fn tool_templates_match_jinja2() {
    let path = fixtures().join("tool_templates.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let name = row["name"].as_str().unwrap();
        let t = template(
            row["template"].as_str().unwrap(),
            row["bos_token"].as_str(),
            row["eos_token"].as_str(),
        );
        assert!(t.renders_tools(), "{name}");
        let messages = row["messages"].as_array().unwrap();
        let tools = row["tools"].as_array().map(Vec::as_slice);
        let extra = row["extra"].as_object().unwrap();
        let got = t.render_prompt_with(messages, tools, extra);
        match (got, row["expected"].as_str()) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{name}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?} ({})", row["error"]),
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn formats_follow_the_template_family() {
    let llama31 = template("llama3_1.jinja", Some("<|begin_of_text|>"), None);
    let llama32 = template("llama3_2.jinja", Some("<|begin_of_text|>"), None);
    let qwen = template("qwen2_5_tools.jinja", None, Some("<|im_end|>"));
    let smol = template("smollm2.jinja", None, None);
    assert_eq!(llama31.tool_call_format(), ToolCallFormat::Llama3Json);
    assert_eq!(llama32.tool_call_format(), ToolCallFormat::Llama3Json);
    assert_eq!(qwen.tool_call_format(), ToolCallFormat::Hermes);
    assert!(!smol.renders_tools());
    assert_eq!(smol.tool_call_format(), ToolCallFormat::Hermes);
    assert_eq!(
        ChatTemplate::chatml(None, None).tool_call_format(),
        ToolCallFormat::Hermes
    );
}

#[test]
fn templates_that_ignore_tools_get_the_fallback_prompt() {
    let smol = template("smollm2.jinja", None, None);
    let tools = [weather_tool()];
    let user = json!({"role": "user", "content": "Weather in Oslo?"});
    let got = smol
        .render_prompt(std::slice::from_ref(&user), Some(&tools))
        .unwrap();
    let prompt = ChatTemplate::fallback_tools_prompt(&tools);
    assert_eq!(
        got,
        format!("<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert!(prompt.starts_with("# Tools\n"));
    assert!(prompt
        .contains("\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""));
    assert!(prompt.ends_with(
        "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    ));

    // A system message keeps its text, the tools prompt after it; a tool round trip renders as
    // Hermes blocks.
    let call = ParsedOutput {
        content: String::new(),
        tool_calls: vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Oslo"}"#.into(),
        }],
    };
    let messages = [
        json!({"role": "system", "content": "Be brief."}),
        user,
        call.assistant_message(),
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 3}"}),
    ];
    let got = smol.render_prompt(&messages, Some(&tools)).unwrap();
    assert_eq!(
        got,
        format!(
            "<|im_start|>system\nBe brief.\n\n{prompt}<|im_end|>\n<|im_start|>user\nWeather in Oslo?<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{{\"name\":\"get_weather\",\"arguments\":{{\"city\":\"Oslo\"}}}}\n</tool_call><|im_end|>\n\
             <|im_start|>tool\n<tool_response>\n{{\"temp\": 3}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
        )
    );
    // No tools and no tool turns: the template's own rendering, untouched.
    let plain = [json!({"role": "user", "content": "hi"})];
    assert_eq!(
        smol.render_prompt(&plain, Some(&[])).unwrap(),
        smol.render(&plain, None, true).unwrap()
    );
}

/// The assistant turn a template renders for `message`: what a model taught by it writes.
fn assistant_turn(t: &ChatTemplate, message: &Value, open: &str, close: &str) -> String {
    let messages = [json!({"role": "user", "content": "q"}), message.clone()];
    let mut extra = serde_json::Map::new();
    extra.insert("date_string".into(), "26 Jul 2024".into());
    let rendered = t
        .render_with(
            &rft_model::tool_calls::arguments_as_objects(&messages),
            Some(&[weather_tool()]),
            false,
            &extra,
        )
        .unwrap();
    let start = rendered.rfind(open).map_or(0, |i| i + open.len());
    let turn = &rendered[start..];
    turn.strip_suffix(close).unwrap_or(turn).to_owned()
}

#[test]
fn calls_the_templates_render_parse_back() {
    let original = ParsedOutput {
        content: String::new(),
        tool_calls: vec![ToolCall {
            id: "call_x".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Zürich"}"#.into(),
        }],
    };
    let message = original.assistant_message();
    for (name, open, close) in [
        (
            "qwen2_5_tools.jinja",
            "<|im_start|>assistant",
            "<|im_end|>\n",
        ),
        (
            "llama3_1.jinja",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        (
            "llama3_2.jinja",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
    ] {
        let t = template(name, None, None);
        let turn = assistant_turn(&t, &message, open, close);
        let parsed = parse_tool_calls(&turn, t.tool_call_format());
        assert_eq!(parsed.content, "", "{name}: {turn:?}");
        assert_eq!(parsed.tool_calls.len(), 1, "{name}: {turn:?}");
        assert_eq!(parsed.tool_calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&parsed.tool_calls[0].arguments).unwrap(),
            json!({"city": "Zürich"}),
            "{name}"
        );
    }
}
