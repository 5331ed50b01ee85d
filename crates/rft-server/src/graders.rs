//! `POST /v1/fine_tuning/alpha/graders/run` and `/validate` (spec §1.4, §7), on `rft-grade`.
//!
//! An invalid grader is a 400 whose `param` is the JSON path of the fault
//! (`grader.graders.style.evaluation_metric`). A sample that fails to grade is not an HTTP
//! error: it is a 200 with reward 0 and the error flag set, as OpenAI's graders report it.

use axum::extract::State;
use axum::Json;
use rft_types::{Grader, Sample};
use serde_json::{json, Value};

use crate::error::ApiJson;
use crate::{ApiError, SharedState};

/// Parses and checks `body.grader`, as `validate` does.
pub fn parse_grader(value: Option<&Value>, param: &str) -> Result<Grader, ApiError> {
    let value = value.ok_or_else(|| {
        ApiError::bad_request(format!("Missing required parameter: '{param}'.")).with_param(param)
    })?;
    let grader = Grader::from_value(value).map_err(|e| {
        let at = if e.path.is_empty() {
            param.to_owned()
        } else {
            format!("{param}.{}", e.path)
        };
        ApiError::bad_request(format!("Invalid grader at '{at}': {}", e.message)).with_param(at)
    })?;
    rft_grade::validate(&grader).map_err(|e| {
        ApiError::bad_request(format!("Invalid grader: {e}"))
            .with_param(param)
            .with_code("invalid_grader")
    })?;
    Ok(grader)
}

/// `POST /v1/fine_tuning/alpha/graders/validate`: `{"grader": <the grader>}` or a 400.
pub async fn validate(ApiJson(body): ApiJson<Value>) -> Result<Json<Value>, ApiError> {
    parse_grader(body.get("grader"), "grader")?;
    Ok(Json(json!({"grader": body["grader"]})))
}

/// `POST /v1/fine_tuning/alpha/graders/run`: grades `model_sample` against `item`.
pub async fn run(
    State(_state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let grader = parse_grader(body.get("grader"), "grader")?;
    let sample = match body.get("model_sample") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid type for 'model_sample': expected a string.",
            )
            .with_param("model_sample"))
        }
        None => {
            return Err(
                ApiError::bad_request("Missing required parameter: 'model_sample'.")
                    .with_param("model_sample"),
            )
        }
    };
    let item = match body.get("item") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(
                ApiError::bad_request("Invalid type for 'item': expected an object.")
                    .with_param("item"),
            )
        }
    };
    // Compiling can start Python workers and grading can call a judge: off the async threads.
    let result = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let compiled = rft_grade::compile(&grader).map_err(|e| {
            ApiError::bad_request(format!("This grader cannot run here: {e}"))
                .with_param("grader")
                .with_code("unsupported_grader")
        })?;
        let response = compiled.grade(&Sample::from_text(&sample), &item);
        serde_json::to_value(response).map_err(|e| ApiError::internal(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("grading task failed: {e}")))??;
    Ok(Json(result))
}
