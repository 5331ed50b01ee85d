//! Tool calls in sampled text: the chat-completions `tool_calls` a model wrote in its chat
//! template's own syntax, parsed out of the completion.
//!
//! Open-weight models call tools by writing text their chat template taught them:
//! - **Hermes** (Qwen2.5, Qwen3, Hermes, and OpenRFT's system-prompt fallback for templates that
//!   ignore `tools`): `<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks, one per call,
//!   anywhere in the reply.
//! - **Llama 3.x JSON** (Llama 3.1, 3.2, 3.3): the reply *is* the call,
//!   `{"name": …, "parameters": {…}}`, optionally after `<|python_tag|>`; several calls are
//!   separated by `;`.
//!
//! [`ToolCallFormat::detect`] picks the family from the template source; [`parse_tool_calls`]
//! tries that family first and the other one when the first finds nothing, because a fine-tuned
//! model or a hand-written template may use either. What is not a well-formed call stays text:
//! a malformed block is never a tool call, never an error, and never lost from the content.
//! Sizes are bounded ([`MAX_PARSE_BYTES`], [`MAX_TOOL_CALLS`], [`MAX_NAME_BYTES`]), and JSON
//! nesting is bounded by `serde_json`'s recursion limit.

use serde_json::{json, Map, Value};

/// Texts longer than this are not searched for tool calls (they stay text).
pub const MAX_PARSE_BYTES: usize = 1 << 20;
/// Tool calls kept from one sample; blocks past this stay in the content as text.
pub const MAX_TOOL_CALLS: usize = 64;
/// Longest function name accepted (OpenAI's own limit is 64 characters).
pub const MAX_NAME_BYTES: usize = 256;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// The syntax a model writes its tool calls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name", "arguments"}</tool_call>` blocks (Qwen2.5, Hermes, the fallback).
    Hermes,
    /// A bare JSON object `{"name", "parameters"}`, optionally after `<|python_tag|>` (Llama 3.x).
    Llama3Json,
}

impl ToolCallFormat {
    /// The family a chat template teaches: Hermes when it mentions `<tool_call>`, Llama 3.x
    /// JSON when it mentions `<|python_tag|>` or the `"parameters"` format with an `ipython`
    /// role, Hermes otherwise (the most common format, and the fallback prompt's).
    pub fn detect(template_source: &str) -> ToolCallFormat {
        if template_source.contains(OPEN) {
            ToolCallFormat::Hermes
        } else if template_source.contains(PYTHON_TAG)
            || (template_source.contains("\"parameters\"") && template_source.contains("ipython"))
        {
            ToolCallFormat::Llama3Json
        } else {
            ToolCallFormat::Hermes
        }
    }

    fn other(self) -> ToolCallFormat {
        match self {
            ToolCallFormat::Hermes => ToolCallFormat::Llama3Json,
            ToolCallFormat::Llama3Json => ToolCallFormat::Hermes,
        }
    }
}

/// One function call, as chat completions return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_` and 24 hex digits, derived from the sample's text and the call's position, so
    /// the same text always gets the same ids (rollouts are reproducible from their seed).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as a JSON string (compact JSON when the model wrote an object).
    pub arguments: String,
}

impl ToolCall {
    /// `{id, type: "function", function: {name, arguments}}`: one entry of chat completions'
    /// `message.tool_calls` and of the grader's `sample.output_tools`.
    pub fn to_value(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// A sampled text split into what the assistant said and the tools it called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedOutput {
    /// The text outside the tool calls (trimmed when there were calls; the whole text, as
    /// sampled, when there were none).
    pub content: String,
    /// The calls, in the order written.
    pub tool_calls: Vec<ToolCall>,
}

impl ParsedOutput {
    /// Text without tool calls.
    pub fn text(text: &str) -> ParsedOutput {
        ParsedOutput {
            content: text.to_owned(),
            tool_calls: Vec::new(),
        }
    }

    /// The calls in chat-completions shape.
    pub fn tool_calls_json(&self) -> Vec<Value> {
        self.tool_calls.iter().map(ToolCall::to_value).collect()
    }

    /// The assistant message this output is: `content` (null when the model only called
    /// tools) and `tool_calls` when there are any. A multi-turn loop appends it to the
    /// conversation, then one `{"role": "tool", "tool_call_id", "content"}` message per call,
    /// and renders the conversation again.
    pub fn assistant_message(&self) -> Value {
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert(
            "content".into(),
            if self.content.is_empty() && !self.tool_calls.is_empty() {
                Value::Null
            } else {
                Value::String(self.content.clone())
            },
        );
        if !self.tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(self.tool_calls_json()));
        }
        Value::Object(message)
    }
}

/// Splits `text` into content and tool calls, trying `format` first and the other family when
/// `format` finds none. Never fails: text that holds no well-formed call comes back whole.
pub fn parse_tool_calls(text: &str, format: ToolCallFormat) -> ParsedOutput {
    if text.len() > MAX_PARSE_BYTES {
        return ParsedOutput::text(text);
    }
    let parsed = parse_as(text, format).or_else(|| parse_as(text, format.other()));
    match parsed {
        Some((content, calls)) => ParsedOutput {
            content: content.trim().to_owned(),
            tool_calls: calls
                .into_iter()
                .enumerate()
                .map(|(index, (name, arguments))| ToolCall {
                    id: call_id(text, index),
                    name,
                    arguments,
                })
                .collect(),
        },
        None => ParsedOutput::text(text),
    }
}

/// [`parse_tool_calls`] when the conversation offered tools (`tools` non-empty); otherwise the
/// text as it is: a model is only taken to call tools it was offered, as OpenAI answers.
pub fn parse_offered(text: &str, tools: Option<&[Value]>, format: ToolCallFormat) -> ParsedOutput {
    match tools {
        Some(tools) if !tools.is_empty() => parse_tool_calls(text, format),
        _ => ParsedOutput::text(text),
    }
}

/// The chat-completions `finish_reason` of a completion: the sampler's (`stop`, `length`, ...),
/// except that a completion which stopped after calling tools reports `tool_calls`, as OpenAI's
/// API does.
pub fn finish_reason(sampled: &str, called_tools: bool) -> &str {
    match sampled {
        "stop" if called_tools => "tool_calls",
        other => other,
    }
}

/// The grader's `sample` of a sampled text: `output_text` the content outside tool calls and
/// `output_tools` the calls, when tools were offered; the plain text sample otherwise.
pub fn sample_of(text: &str, tools: Option<&[Value]>, format: ToolCallFormat) -> rft_types::Sample {
    let parsed = parse_offered(text, tools, format);
    if parsed.tool_calls.is_empty() {
        rft_types::Sample::from_text(text)
    } else {
        rft_types::Sample::from_message(&parsed.content, parsed.tool_calls_json())
    }
}

/// A call before it has an id: the name and the arguments string.
type RawCall = (String, String);

fn parse_as(text: &str, format: ToolCallFormat) -> Option<(String, Vec<RawCall>)> {
    match format {
        ToolCallFormat::Hermes => parse_hermes(text),
        ToolCallFormat::Llama3Json => parse_llama(text),
    }
}

/// `<tool_call>…</tool_call>` blocks anywhere; the last may lack its closing tag (the model
/// stopped right after the JSON). A block that is not a call stays in the content verbatim.
fn parse_hermes(text: &str) -> Option<(String, Vec<RawCall>)> {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let (body, block_len, next) = match after.find(CLOSE) {
            Some(end) => (
                &after[..end],
                OPEN.len() + end + CLOSE.len(),
                &after[end + CLOSE.len()..],
            ),
            None => (after, OPEN.len() + after.len(), ""),
        };
        match call_from_json(body) {
            Some(call) if calls.len() < MAX_TOOL_CALLS => calls.push(call),
            _ => content.push_str(&rest[start..start + block_len]),
        }
        rest = next;
    }
    content.push_str(rest);
    (!calls.is_empty()).then_some((content, calls))
}

/// Llama 3.x: the reply (or what follows `<|python_tag|>`) is one or more JSON calls separated
/// by `;`. Text before a `<|python_tag|>` is content; so is anything after the last call.
fn parse_llama(text: &str) -> Option<(String, Vec<RawCall>)> {
    let (before, json_part) = match text.find(PYTHON_TAG) {
        Some(i) => (&text[..i], &text[i + PYTHON_TAG.len()..]),
        None => ("", text),
    };
    let mut rest = json_part.trim_start();
    let mut calls = Vec::new();
    while rest.starts_with('{') && calls.len() < MAX_TOOL_CALLS {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let Some(Ok(value)) = stream.next() else {
            break;
        };
        let Some(call) = call_from_value(value) else {
            break;
        };
        calls.push(call);
        rest = rest[stream.byte_offset()..].trim_start();
        if let Some(after) = rest.strip_prefix(';') {
            rest = after.trim_start();
        }
    }
    if calls.is_empty() {
        return None;
    }
    let mut content = before.to_owned();
    content.push_str(rest);
    Some((content, calls))
}

fn call_from_json(body: &str) -> Option<RawCall> {
    call_from_value(serde_json::from_str(body.trim()).ok()?)
}

/// `{"name", "arguments" | "parameters"}`, also wrapped as OpenAI writes it
/// (`{"type": "function", "function": {…}}`). Arguments that are an object become compact JSON;
/// a string is kept as the model wrote it (OpenAI's own `arguments` need not be valid JSON);
/// none means `{}`.
fn call_from_value(value: Value) -> Option<RawCall> {
    let Value::Object(mut object) = value else {
        return None;
    };
    if !object.contains_key("name") {
        if let Some(Value::Object(inner)) = object.remove("function") {
            object = inner;
        }
    }
    let name = match object.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() && name.len() <= MAX_NAME_BYTES => {
            name.trim().to_owned()
        }
        _ => return None,
    };
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(args @ Value::Object(_)) => serde_json::to_string(args).ok()?,
        Some(_) => return None,
    };
    Some((name, arguments))
}

/// `call_` + 24 hex digits from FNV-1a over the text and the call's index, mixed by splitmix64.
fn call_id(text: &str, index: usize) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes().chain(index.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let a = splitmix(hash);
    let b = splitmix(a);
    format!("call_{a:016x}{:08x}", b >> 32)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Messages whose assistant `tool_calls` carry `arguments` as a JSON string (OpenAI's shape)
/// get them as an object instead, which is what Hugging Face templates expect
/// (`tool_call.arguments | tojson` would otherwise print a quoted string). Arguments that are
/// not a JSON object are left as they are.
pub fn arguments_as_objects(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|message| {
            let Some(calls) = message.get("tool_calls").and_then(Value::as_array) else {
                return message.clone();
            };
            let calls: Vec<Value> = calls
                .iter()
                .map(|call| {
                    let mut call = call.clone();
                    let parsed = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                        .filter(Value::is_object);
                    if let (Some(parsed), Some(function)) = (
                        parsed,
                        call.get_mut("function").and_then(Value::as_object_mut),
                    ) {
                        function.insert("arguments".into(), parsed);
                    }
                    call
                })
                .collect();
            let mut message = message.clone();
            if let Some(object) = message.as_object_mut() {
                object.insert("tool_calls".into(), Value::Array(calls));
            }
            message
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_after_tool_calls_reports_tool_calls() {
        assert_eq!(finish_reason("stop", true), "tool_calls");
        assert_eq!(finish_reason("stop", false), "stop");
        assert_eq!(finish_reason("length", true), "length");
    }

    fn calls(parsed: &ParsedOutput) -> Vec<(&str, &str)> {
        parsed
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect()
    }

    #[test]
    fn hermes_blocks_become_calls_and_the_rest_content() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
        let parsed = parse_tool_calls(text, ToolCallFormat::Hermes);
        assert_eq!(parsed.content, "Let me check.");
        assert_eq!(
            calls(&parsed),
            [("get_weather", r#"{"city":"Paris","unit":"c"}"#)]
        );
        let value = parsed.tool_calls[0].to_value();
        assert_eq!(value["type"], "function");
        assert!(value["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(value["id"].as_str().unwrap().len(), 5 + 24);
    }

    #[test]
    fn several_hermes_calls_nested_arguments_and_unicode() {
        let text = "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": {\"y\": [1, {\"z\": null}]}}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": {\"city\": \"Zürich 東京 😀\"}}</tool_call>";
        let parsed = parse_tool_calls(text, ToolCallFormat::Hermes);
        assert_eq!(parsed.content, "");
        assert_eq!(
            calls(&parsed),
            [
                ("a", r#"{"x":{"y":[1,{"z":null}]}}"#),
                ("b", r#"{"city":"Zürich 東京 😀"}"#)
            ]
        );
        assert_ne!(parsed.tool_calls[0].id, parsed.tool_calls[1].id);
        // Ids depend only on the text and position.
        assert_eq!(parsed, parse_tool_calls(text, ToolCallFormat::Hermes));
    }

    #[test]
    fn an_unclosed_last_block_is_still_a_call() {
        let parsed = parse_tool_calls(
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n",
            ToolCallFormat::Hermes,
        );
        assert_eq!(calls(&parsed), [("f", "{}")]);
    }

    #[test]
    fn malformed_calls_stay_text() {
        for text in [
            "<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": 3}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "<tool_call>[1, 2]</tool_call>",
            "{\"name\": \"f\", \"parameters\": ",
            "<|python_tag|>{\"nam",
            "<tool_call>",
            "",
        ] {
            for format in [ToolCallFormat::Hermes, ToolCallFormat::Llama3Json] {
                let parsed = parse_tool_calls(text, format);
                assert!(parsed.tool_calls.is_empty(), "{text:?}");
                assert_eq!(parsed.content, text, "the text is kept whole");
            }
        }
    }

    #[test]
    fn a_malformed_block_beside_a_good_one_stays_in_the_content() {
        let text = "<tool_call>{broken}</tool_call><tool_call>{\"name\": \"ok\"}</tool_call>";
        let parsed = parse_tool_calls(text, ToolCallFormat::Hermes);
        assert_eq!(calls(&parsed), [("ok", "{}")]);
        assert_eq!(parsed.content, "<tool_call>{broken}</tool_call>");
    }

    #[test]
    fn llama_json_with_and_without_python_tag() {
        let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        let parsed = parse_tool_calls(text, ToolCallFormat::Llama3Json);
        assert_eq!(calls(&parsed), [("get_weather", r#"{"city":"Oslo"}"#)]);
        assert_eq!(parsed.content, "");
        let tagged = format!("<|python_tag|>{text}");
        assert_eq!(
            calls(&parse_tool_calls(&tagged, ToolCallFormat::Llama3Json)),
            [("get_weather", r#"{"city":"Oslo"}"#)]
        );
        // The 3.1 template's `{"type": "function", ...}` variant, and two calls with `;`.
        let two = "{\"type\": \"function\", \"name\": \"a\", \"parameters\": {\"n\": 1}}; {\"name\": \"b\", \"arguments\": {\"m\": \"é\"}}";
        assert_eq!(
            calls(&parse_tool_calls(two, ToolCallFormat::Llama3Json)),
            [("a", r#"{"n":1}"#), ("b", r#"{"m":"é"}"#)]
        );
        // Prose before the JSON is an answer, not a call (without a python tag).
        let prose = "The call would be {\"name\": \"a\", \"parameters\": {}}";
        assert!(parse_tool_calls(prose, ToolCallFormat::Llama3Json)
            .tool_calls
            .is_empty());
        // Prose before a python tag is content.
        let mixed = "Checking.<|python_tag|>{\"name\": \"a\", \"parameters\": {}}";
        let parsed = parse_tool_calls(mixed, ToolCallFormat::Llama3Json);
        assert_eq!(parsed.content, "Checking.");
        assert_eq!(calls(&parsed), [("a", "{}")]);
    }

    #[test]
    fn the_other_family_is_the_fallback() {
        let hermes = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
        assert_eq!(
            calls(&parse_tool_calls(hermes, ToolCallFormat::Llama3Json)),
            [("f", r#"{"a":1}"#)]
        );
        let llama = "{\"name\": \"f\", \"parameters\": {\"a\": 1}}";
        assert_eq!(
            calls(&parse_tool_calls(llama, ToolCallFormat::Hermes)),
            [("f", r#"{"a":1}"#)]
        );
    }

    #[test]
    fn string_arguments_are_kept_as_written() {
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>";
        assert_eq!(
            calls(&parse_tool_calls(text, ToolCallFormat::Hermes)),
            [("f", r#"{"a": 1}"#)]
        );
    }

    #[test]
    fn limits_hold() {
        // Past MAX_TOOL_CALLS, blocks stay text.
        let block = "<tool_call>{\"name\": \"f\"}</tool_call>";
        let text = block.repeat(MAX_TOOL_CALLS + 2);
        let parsed = parse_tool_calls(&text, ToolCallFormat::Hermes);
        assert_eq!(parsed.tool_calls.len(), MAX_TOOL_CALLS);
        assert_eq!(parsed.content, block.repeat(2));
        let llama = "{\"name\": \"f\"};".repeat(MAX_TOOL_CALLS + 2);
        assert_eq!(
            parse_tool_calls(&llama, ToolCallFormat::Llama3Json)
                .tool_calls
                .len(),
            MAX_TOOL_CALLS
        );
        // A text past MAX_PARSE_BYTES is not searched.
        let mut long = block.to_owned();
        long.push_str(&" ".repeat(MAX_PARSE_BYTES));
        let parsed = parse_tool_calls(&long, ToolCallFormat::Hermes);
        assert!(parsed.tool_calls.is_empty());
        assert_eq!(parsed.content.len(), long.len());
        // A name past MAX_NAME_BYTES is not a call.
        let name = "n".repeat(MAX_NAME_BYTES + 1);
        let text = format!("<tool_call>{{\"name\": \"{name}\"}}</tool_call>");
        assert!(parse_tool_calls(&text, ToolCallFormat::Hermes)
            .tool_calls
            .is_empty());
        // Nesting deeper than serde_json's recursion limit is malformed, not a stack overflow.
        let deep = format!(
            "<tool_call>{{\"name\": \"f\", \"arguments\": {}1{}}}</tool_call>",
            "{\"a\": ".repeat(100_000),
            "}".repeat(100_000)
        );
        assert!(parse_tool_calls(&deep, ToolCallFormat::Hermes)
            .tool_calls
            .is_empty());
    }

    #[test]
    fn only_offered_tools_are_parsed_into_samples() {
        let text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        let sample = sample_of(text, Some(&tools), ToolCallFormat::Hermes);
        assert_eq!(sample.output_text, "");
        assert_eq!(sample.output_tools.len(), 1);
        assert_eq!(
            sample.output_tools[0]["function"]["arguments"],
            r#"{"a":1}"#
        );
        for offered in [None, Some(&[][..])] {
            let sample = sample_of(text, offered, ToolCallFormat::Hermes);
            assert_eq!(sample.output_text, text);
            assert!(sample.output_tools.is_empty());
        }
    }

    #[test]
    fn formats_are_detected_from_templates() {
        assert_eq!(
            ToolCallFormat::detect("{{ '<tool_call>' }}"),
            ToolCallFormat::Hermes
        );
        assert_eq!(
            ToolCallFormat::detect("{{ '<|python_tag|>' }}"),
            ToolCallFormat::Llama3Json
        );
        assert_eq!(
            ToolCallFormat::detect("{\"parameters\": x} ipython"),
            ToolCallFormat::Llama3Json
        );
        assert_eq!(
            ToolCallFormat::detect("{{ messages }}"),
            ToolCallFormat::Hermes
        );
    }

    #[test]
    fn assistant_messages_and_argument_objects() {
        let parsed = parse_tool_calls(
            "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>",
            ToolCallFormat::Hermes,
        );
        let message = parsed.assistant_message();
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"][0]["function"]["arguments"],
            r#"{"a":1}"#
        );
        let rendered = arguments_as_objects(&[message, json!({"role": "user", "content": "x"})]);
        assert_eq!(
            rendered[0]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(rendered[1], json!({"role": "user", "content": "x"}));
        assert_eq!(
            ParsedOutput::text("hi").assistant_message(),
            json!({"role": "assistant", "content": "hi"})
        );
    }
}
