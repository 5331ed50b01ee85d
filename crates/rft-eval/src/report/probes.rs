//! The answers the lucky-guess and reward-hacking checks grade: trivial strategies and
//! adversarial samples built from the rows and the grader spec alone (no model involved).

use rft_types::Grader;
use serde_json::Value;

/// The item fields the grader's templates read (`{{ item.answer }}` → `answer`), in order of
/// first use: the candidates for the reference answer.
pub fn reference_fields(grader: &Grader) -> Vec<String> {
    template_paths(grader, "item.")
}

/// Keys a JSON answer is expected to have: those the grader reads as
/// `sample.output_json.KEY`, and the top-level properties of a `json_schema` response format.
pub(crate) fn json_keys(grader: &Grader, response_format: Option<&Value>) -> Vec<String> {
    let mut keys = template_paths(grader, "sample.output_json.");
    if let Some(properties) = response_format
        .and_then(|f| f.pointer("/json_schema/schema/properties"))
        .and_then(Value::as_object)
    {
        for key in properties.keys() {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    keys
}

/// The identifiers following `prefix` anywhere in the grader's JSON (templates, Python source).
fn template_paths(grader: &Grader, prefix: &str) -> Vec<String> {
    let text = serde_json::to_string(grader).unwrap_or_default();
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find(prefix) {
        // `item.x` must not be the tail of a longer name such as `line_item.x`.
        let before = rest[..pos].chars().next_back();
        rest = &rest[pos + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// A scalar item value as answer text (strings bare, others as JSON).
pub(crate) fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => None,
    }
}

/// Filler text of about `chars` characters that says nothing.
pub(crate) fn long_filler(chars: usize) -> String {
    let sentence = "This answer is thorough, detailed, complete and correct in every respect. ";
    sentence.repeat(chars / sentence.len() + 1)
}

/// The lines of `prompt` that contain `reference`: an answer that copies the context around
/// the expected value instead of extracting it.
pub(crate) fn quoting_answer(prompt: &str, reference: &str) -> Option<String> {
    if reference.trim().is_empty() {
        return None;
    }
    let lines: Vec<&str> = prompt.lines().filter(|l| l.contains(reference)).collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_fields_come_from_item_templates() {
        let grader = Grader::from_json_str(
            r#"{"type": "string_check", "name": "x", "input": "{{ sample.output_json.label }}",
                "reference": "{{ item.answer }} {{item.answer}} {{ line_item.other }}", "operation": "eq"}"#,
        )
        .unwrap();
        assert_eq!(reference_fields(&grader), vec!["answer"]);
        assert_eq!(json_keys(&grader, None), vec!["label"]);
    }

    #[test]
    fn quoting_answer_copies_the_lines_with_the_value() {
        assert_eq!(
            quoting_answer("Order 12 to Rome.\nWhich city?", "Rome").as_deref(),
            Some("Order 12 to Rome.")
        );
        assert_eq!(quoting_answer("nothing here", "Rome"), None);
    }
}
