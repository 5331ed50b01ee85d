//! The `sample` namespace of templates and Python graders (spec §3): what the model produced.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One model output, in the shape graders see.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The output as text.
    pub output_text: String,
    /// The output parsed as JSON, when it parses (or a response format was used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_json: Option<Value>,
    /// Tool calls, in chat-completions `tool_calls` shape.
    #[serde(default)]
    pub output_tools: Vec<Value>,
    /// The chat-completions `choices` array, when the sample came from one.
    #[serde(default)]
    pub choices: Vec<Value>,
    /// Audio output (`{data, transcript}`), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_audio: Option<Value>,
}

impl Sample {
    /// The sample of `graders/run`: `model_sample` is the text, and `output_json` is set
    /// when the text (ignoring surrounding whitespace) parses as JSON (spec §3).
    pub fn from_text(text: &str) -> Sample {
        Sample {
            output_text: text.to_owned(),
            output_json: parse_json_output(text),
            ..Sample::default()
        }
    }

    /// The sample of a chat answer that may call tools: `content` is the assistant's text
    /// outside its tool calls (chat completions' `message.content`, empty when the model only
    /// called tools) and `tool_calls` the calls in `message.tool_calls` shape
    /// (`[{id, type: "function", function: {name, arguments}}]`). `output_json` follows the
    /// content, as in [`Sample::from_text`].
    pub fn from_message(content: &str, tool_calls: Vec<Value>) -> Sample {
        Sample {
            output_tools: tool_calls,
            ..Sample::from_text(content)
        }
    }

    /// The sample as a JSON object, the root of the `sample` template namespace.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "output_text".into(),
            Value::String(self.output_text.clone()),
        );
        if let Some(json) = &self.output_json {
            map.insert("output_json".into(), json.clone());
        }
        map.insert(
            "output_tools".into(),
            Value::Array(self.output_tools.clone()),
        );
        map.insert("choices".into(), Value::Array(self.choices.clone()));
        if let Some(audio) = &self.output_audio {
            map.insert("output_audio".into(), audio.clone());
        }
        Value::Object(map)
    }
}

fn parse_json_output(text: &str) -> Option<Value> {
    serde_json::from_str(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_json_set_when_text_parses() {
        assert_eq!(
            Sample::from_text(" {\"a\": 1} ").output_json,
            Some(json!({"a": 1}))
        );
        assert_eq!(Sample::from_text("[1]").output_json, Some(json!([1])));
        assert_eq!(Sample::from_text("42").output_json, Some(json!(42)));
        assert_eq!(Sample::from_text("hello").output_json, None);
        assert_eq!(Sample::from_text("{broken").output_json, None);
    }

    #[test]
    fn messages_with_tool_calls_fill_output_tools() {
        let call = json!({"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":1}"}});
        let sample = Sample::from_message("", vec![call.clone()]);
        assert_eq!(sample.output_text, "");
        assert_eq!(sample.output_json, None);
        let value = sample.to_value();
        assert_eq!(value["output_tools"][0], call);
        assert_eq!(value["output_tools"][0]["function"]["name"], "f");
        assert_eq!(
            Sample::from_message("[1]", Vec::new()),
            Sample::from_text("[1]")
        );
    }
}
