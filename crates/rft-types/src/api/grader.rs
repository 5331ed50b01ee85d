//! `graders/run` and `graders/validate` bodies. The grader itself stays JSON here: it is parsed
//! by [`crate::Grader::from_value`], whose errors name the JSON path.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/fine_tuning/alpha/graders/validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidateGraderRequest {
    /// The grader to check.
    pub grader: Value,
}

/// What `graders/validate` answers: the grader, echoed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidateGraderResponse {
    /// The grader as sent.
    pub grader: Value,
}

/// `POST /v1/fine_tuning/alpha/graders/run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunGraderRequest {
    /// The grader.
    pub grader: Value,
    /// The model output to grade.
    pub model_sample: String,
    /// The dataset row's fields; `{}` when absent.
    #[serde(default)]
    pub item: Option<Map<String, Value>>,
}
