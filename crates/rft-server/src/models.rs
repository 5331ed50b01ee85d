//! `GET /v1/models`: the base models, the fine-tuned models of succeeded jobs, and every kept
//! checkpoint; all of them are served by `/v1/chat/completions`.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::{now, ApiError, SharedState};

fn model(id: &str, created: i64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

fn all_models(state: &SharedState) -> Result<Vec<Value>, ApiError> {
    // Base models are the catalog's (the allow list), never whatever a job named.
    let catalog = state.inference.catalog();
    let mut out: Vec<Value> = catalog
        .names()
        .iter()
        .map(|name| model(name, now(), "openrft"))
        .collect();
    let jobs = state.store.all("job", None, false)?;
    for job in &jobs {
        let created = job["created_at"].as_i64().unwrap_or(0);
        if job["model"]
            .as_str()
            .and_then(|m| catalog.resolve(m))
            .is_none()
        {
            continue;
        }
        if job["status"] == "succeeded" {
            if let Some(ft) = job["fine_tuned_model"].as_str() {
                out.push(model(
                    ft,
                    job["finished_at"].as_i64().unwrap_or(created),
                    "user",
                ));
            }
        }
        let id = job["id"].as_str().unwrap_or_default();
        for ckpt in rft_train::job::read_checkpoints(&state.store.job_dir(id)) {
            if let Some(name) = ckpt["fine_tuned_model_checkpoint"].as_str() {
                out.push(model(
                    name,
                    ckpt["created_at"].as_i64().unwrap_or(created),
                    "user",
                ));
            }
        }
    }
    Ok(out)
}

/// `GET /v1/models`.
pub(crate) async fn list(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"object": "list", "data": all_models(&state)?})))
}

/// `GET /v1/models/{model}`.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    all_models(&state)?
        .into_iter()
        .find(|m| m["id"] == name.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found("model", &name)
                .with_param("model")
                .with_code("model_not_found")
        })
}
