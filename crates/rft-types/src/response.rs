//! What grading returns (spec §7.1): the `RunGraderResponse` of `graders/run`.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The result of grading one sample. Every field is always present on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunGraderResponse {
    /// The score; 0 whenever an error flag is set.
    pub reward: f64,
    /// Who graded, how long it took, and what went wrong.
    pub metadata: GraderMetadata,
    /// For `multi` graders, each child's reward by its key; empty otherwise.
    pub sub_rewards: IndexMap<String, f64>,
    /// Token usage of model graders, by model name; empty for graders that call no model.
    pub model_grader_token_usage_per_model: IndexMap<String, TokenUsage>,
}

/// The `metadata` object of a [`RunGraderResponse`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraderMetadata {
    /// The grader's `name`.
    pub name: String,
    /// The grader's `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Error flags; all false on success.
    pub errors: GraderErrors,
    /// Wall-clock seconds spent grading this sample.
    pub execution_time: f64,
    /// Free-form scores: for `multi`, each child's reward by key; empty otherwise.
    pub scores: Map<String, Value>,
    /// Total token usage of a model grader's calls; null for graders that call no model.
    pub token_usage: Option<TokenUsage>,
    /// The model a model grader actually called; null otherwise.
    pub sampled_model_name: Option<String>,
}

/// Token counts of model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Prompt plus completion tokens.
    pub total_tokens: u64,
    /// Prompt tokens served from a cache.
    pub cached_tokens: u64,
}

impl TokenUsage {
    /// Adds another call's usage to this one.
    pub fn add(&mut self, other: &TokenUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// The error flags of spec §7.1. A set flag means the reward is 0 and was not earned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraderErrors {
    /// `calculate_output` of a multi grader did not parse, or evaluated to a non-finite number.
    pub formula_parse_error: bool,
    /// The sample could not be parsed as required (e.g. invalid JSON against a response format).
    pub sample_parse_error: bool,
    /// The sample was cut off by the completion token limit.
    pub truncated_observation_error: bool,
    /// The grader produced no reward at all (e.g. a multi formula referencing no result).
    pub unresponsive_reward_error: bool,
    /// A template variable was not found in the item or the sample.
    pub invalid_variable_error: bool,
    /// Any other failure (e.g. a metric that is unavailable on this installation).
    pub other_error: bool,
    /// The Python sandbox itself failed.
    pub python_grader_server_error: bool,
    /// What kind of sandbox failure.
    pub python_grader_server_error_type: Option<String>,
    /// The user's Python code raised or returned a non-number.
    pub python_grader_runtime_error: bool,
    /// The traceback or description of the Python failure.
    pub python_grader_runtime_error_details: Option<String>,
    /// The judge endpoint failed.
    pub model_grader_server_error: bool,
    /// The judge refused to grade.
    pub model_grader_refusal_error: bool,
    /// The judge's answer could not be parsed.
    pub model_grader_parse_error: bool,
    /// What the judge endpoint said when it failed.
    pub model_grader_server_error_details: Option<String>,
}

impl GraderErrors {
    /// True when any flag is set.
    pub fn any(&self) -> bool {
        self.formula_parse_error
            || self.sample_parse_error
            || self.truncated_observation_error
            || self.unresponsive_reward_error
            || self.invalid_variable_error
            || self.other_error
            || self.python_grader_server_error
            || self.python_grader_runtime_error
            || self.model_grader_server_error
            || self.model_grader_refusal_error
            || self.model_grader_parse_error
    }

    /// Sets every flag that is set in `other` (details keep the first value seen).
    pub fn merge(&mut self, other: &GraderErrors) {
        self.formula_parse_error |= other.formula_parse_error;
        self.sample_parse_error |= other.sample_parse_error;
        self.truncated_observation_error |= other.truncated_observation_error;
        self.unresponsive_reward_error |= other.unresponsive_reward_error;
        self.invalid_variable_error |= other.invalid_variable_error;
        self.other_error |= other.other_error;
        self.python_grader_server_error |= other.python_grader_server_error;
        self.python_grader_runtime_error |= other.python_grader_runtime_error;
        self.model_grader_server_error |= other.model_grader_server_error;
        self.model_grader_refusal_error |= other.model_grader_refusal_error;
        self.model_grader_parse_error |= other.model_grader_parse_error;
        for (mine, theirs) in [
            (
                &mut self.python_grader_server_error_type,
                &other.python_grader_server_error_type,
            ),
            (
                &mut self.python_grader_runtime_error_details,
                &other.python_grader_runtime_error_details,
            ),
            (
                &mut self.model_grader_server_error_details,
                &other.model_grader_server_error_details,
            ),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_has_every_field() {
        let response = RunGraderResponse {
            reward: 1.0,
            metadata: GraderMetadata {
                name: "g".into(),
                kind: "string_check".into(),
                errors: GraderErrors::default(),
                execution_time: 0.5,
                scores: Map::new(),
                token_usage: None,
                sampled_model_name: None,
            },
            sub_rewards: IndexMap::new(),
            model_grader_token_usage_per_model: IndexMap::new(),
        };
        let value = serde_json::to_value(&response).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "reward",
                "metadata",
                "sub_rewards",
                "model_grader_token_usage_per_model"
            ]
        );
        let errors = value["metadata"]["errors"].as_object().unwrap();
        assert_eq!(errors.len(), 14);
        assert!(errors["python_grader_runtime_error_details"].is_null());
        assert!(value["metadata"]["token_usage"].is_null());
        assert_eq!(value["metadata"]["type"], "string_check");
    }
}
