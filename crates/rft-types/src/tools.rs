//! Function tool definitions (chat-completions `tools`), checked the same way wherever a client
//! can offer them: dataset rows, `POST /v1/chat/completions` and eval runs' `sampling_params`.
//!
//! One checker, because the three entry points feed the same chat template: a tool that one of
//! them accepted and another refused would make a dataset trainable but not evaluable.

use serde_json::Value;

/// Most tools one prompt may offer (OpenAI's limit for chat completions and eval runs).
pub const MAX_TOOLS: usize = 128;

/// Longest tool name (OpenAI's rule: 1–64 of `[A-Za-z0-9_-]`).
pub const MAX_TOOL_NAME: usize = 64;

/// Why a `tools` list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ToolsError {
    /// The offending field, relative to the list (`tools`, `tools[3].function.name`).
    pub field: String,
    /// What was wrong and what is accepted.
    pub message: String,
}

/// Checks a `tools` list: at most [`MAX_TOOLS`] entries, each `{"type": "function",
/// "function": {"name": …}}` with a name of 1–64 letters, digits, `_` or `-`, and `parameters`,
/// when given, a JSON object (a JSON Schema). Names must be unique: a template renders them
/// side by side and a parsed call is matched back by name.
pub fn check_tools(tools: &[Value]) -> Result<(), ToolsError> {
    let error = |field: String, message: String| ToolsError { field, message };
    if tools.len() > MAX_TOOLS {
        return Err(error(
            "tools".into(),
            format!(
                "{} tools offered; at most {MAX_TOOLS} tools may be offered",
                tools.len()
            ),
        ));
    }
    let mut names: Vec<&str> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if !tool.is_object() {
            return Err(error(
                format!("tools[{i}]"),
                "expected an object like {\"type\": \"function\", \"function\": {\"name\": …}}"
                    .into(),
            ));
        }
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(error(
                format!("tools[{i}].type"),
                "must be \"function\" (the only tool type open-weight chat templates render)"
                    .into(),
            ));
        }
        let name = tool
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let valid = (1..=MAX_TOOL_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(error(
                format!("tools[{i}].function.name"),
                format!("must be 1 to {MAX_TOOL_NAME} letters, digits, underscores or dashes"),
            ));
        }
        if names.contains(&name) {
            return Err(error(
                format!("tools[{i}].function.name"),
                format!("{name:?} is offered twice; tool names must be unique"),
            ));
        }
        names.push(name);
        if let Some(parameters) = tool.pointer("/function/parameters") {
            if !parameters.is_object() {
                return Err(error(
                    format!("tools[{i}].function.parameters"),
                    "must be a JSON Schema object".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}})
    }

    #[test]
    fn function_tools_with_valid_names_pass() {
        assert_eq!(
            check_tools(&[tool("get_weather"), tool("convert-currency")]),
            Ok(())
        );
        assert_eq!(check_tools(&[]), Ok(()));
    }

    #[test]
    fn the_limit_is_128_tools() {
        let tools: Vec<Value> = (0..MAX_TOOLS).map(|i| tool(&format!("t{i}"))).collect();
        assert_eq!(check_tools(&tools), Ok(()));
        let more: Vec<Value> = (0..=MAX_TOOLS).map(|i| tool(&format!("t{i}"))).collect();
        let err = check_tools(&more).unwrap_err();
        assert_eq!(err.field, "tools");
        assert!(err.message.contains("129"), "{err}");
    }

    #[test]
    fn each_malformed_tool_names_its_field() {
        let cases = [
            (json!("get_weather"), "tools[0]"),
            (json!({"type": "code_interpreter"}), "tools[0].type"),
            (
                json!({"type": "function", "function": {}}),
                "tools[0].function.name",
            ),
            (tool(&"x".repeat(65)), "tools[0].function.name"),
            (tool("rm -rf /"), "tools[0].function.name"),
            (tool("ünïcode"), "tools[0].function.name"),
            (
                json!({"type": "function", "function": {"name": "f", "parameters": "{}"}}),
                "tools[0].function.parameters",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(
                check_tools(std::slice::from_ref(&bad)).unwrap_err().field,
                field,
                "{bad}"
            );
        }
        let twice = check_tools(&[tool("f"), tool("f")]).unwrap_err();
        assert_eq!(twice.field, "tools[1].function.name");
    }
}
