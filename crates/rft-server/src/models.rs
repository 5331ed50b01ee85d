//! `GET /v1/models`: the base models, the fine-tuned models of succeeded jobs, and every kept
//! checkpoint; all of them are served by `/v1/chat/completions`.

use axum::extract::{Path, State};
use axum::Json;
use rft_types::api::common::Model;
use rft_types::api::job::{FineTuningJob, JobStatus};
use serde::Serialize;

use crate::{now, ApiError, SharedState};

/// `GET /v1/models`' answer: OpenAI's model list has no paging fields.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

fn all_models(state: &SharedState) -> Result<Vec<Model>, ApiError> {
    // Base models are the catalog's (the allow list), never whatever a job named.
    let catalog = state.inference.catalog();
    let mut out: Vec<Model> = catalog
        .names()
        .iter()
        .map(|name| Model::new(name.as_str(), now(), "openrft"))
        .collect();
    let jobs: Vec<FineTuningJob> = state.store.all_objects("job", None, false)?;
    // Many jobs share a base: ask the catalog (which may look at the disk) once per name.
    let mut served = std::collections::HashMap::new();
    for job in &jobs {
        let is_served = *served
            .entry(job.model.as_str())
            .or_insert_with(|| catalog.resolve(&job.model).is_some());
        if !is_served {
            continue;
        }
        if job.status == JobStatus::Succeeded {
            if let Some(ft) = &job.fine_tuned_model {
                out.push(Model::new(
                    ft.as_str(),
                    job.finished_at.unwrap_or(job.created_at),
                    "user",
                ));
            }
        }
        for ckpt in rft_train::checkpoints::read_checkpoints(&state.store.job_dir(&job.id)) {
            out.push(Model::new(
                ckpt.fine_tuned_model_checkpoint,
                ckpt.created_at,
                "user",
            ));
        }
    }
    // Adapters loaded at run time, with their base as vLLM lists them.
    for (name, base) in state.inference.adapters.list() {
        let mut model = Model::new(name, now(), "user");
        model.parent = Some(base);
        out.push(model);
    }
    Ok(out)
}

/// `GET /v1/models`.
pub(crate) async fn list(State(state): State<SharedState>) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList {
        object: "list",
        data: all_models(&state)?,
    }))
}

/// `GET /v1/models/{model}`.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<Model>, ApiError> {
    all_models(&state)?
        .into_iter()
        .find(|m| m.id == name)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found("model", &name)
                .with_param("model")
                .with_code("model_not_found")
        })
}
