//! `/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events, checkpoints.
//! The worker that runs jobs is [`crate::scheduler`]; where a job's progress is kept,
//! [`crate::job_storage`].
//!
//! The job object in the database holds the job's state as the API shows it; its events are
//! rows of the database too, and its checkpoints, adapters and optimizer state are in the blob
//! store, all written durably. So after `kill -9` nothing acknowledged is lost: the job is
//! requeued and another worker (or the restarted server) resumes it from its latest state.
//!
//! The action routes read (and ignore) their body: an unread body makes hyper close the
//! keep-alive connection, and clients that pool connections then fail their next request.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use rft_store::ListQuery;
use rft_train::config::Hyperparameters;
use rft_types::api::checkpoint::Checkpoint;
use rft_types::api::common::List;
use rft_types::api::event::{EventLevel, JobEvent};
use rft_types::api::file::{FileObject, FilePurpose};
use rft_types::api::hyperparameters::Hyperparameters as HyperparametersRequest;
use rft_types::api::job::{CreateJob, FineTuningJob, JobMethod, JobStatus, ReinforcementMethod};
use serde_json::Value;

use crate::error::{parse_body, ApiJson};
use crate::graders::parse_grader;
use crate::job_storage::note;
use crate::{new_id, now, parse_limit, parse_metadata, ApiError, SharedState};

fn file_param(state: &SharedState, id: &str, key: &str) -> Result<String, ApiError> {
    let file = state
        .store
        .get_object::<FileObject>("file", id)?
        .ok_or_else(|| {
            ApiError::bad_request(format!("invalid {key}: no file with id '{id}'"))
                .with_param(key)
                .with_code("invalid_file_id")
        })?;
    if file.purpose != FilePurpose::FineTune {
        return Err(ApiError::bad_request(format!(
            "invalid {key}: file {id} has purpose '{}'; upload it with purpose 'fine-tune'",
            file.purpose.as_str()
        ))
        .with_param(key));
    }
    Ok(file.id)
}

/// `POST /v1/fine_tuning/jobs`.
pub(crate) async fn create(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<FineTuningJob>, ApiError> {
    let request: CreateJob = parse_body(body)?;
    let model = request.model;
    if model.is_empty() {
        return Err(
            ApiError::bad_request("Missing required parameter: 'model'.").with_param("model"),
        );
    }
    // Base models only, from the allow list: a model name is never a path the client picks.
    if state.inference.catalog().resolve(&model).is_none() {
        return Err(ApiError::bad_request(format!(
            "The model '{model}' does not exist or cannot be fine-tuned here. GET /v1/models lists the base models this server serves."
        ))
        .with_param("model")
        .with_code("model_not_found"));
    }
    let training_file = file_param(&state, &request.training_file, "training_file")?;
    let validation_file = request
        .validation_file
        .as_deref()
        .map(|id| file_param(&state, id, "validation_file"))
        .transpose()?;
    let method = request.method.ok_or_else(|| {
        ApiError::bad_request(
            "Missing method: OpenRFT runs reinforcement fine-tuning; send method = {type: 'reinforcement', reinforcement: {grader, hyperparameters}}",
        )
        .with_param("method")
    })?;
    match method.kind.as_str() {
        "reinforcement" => {}
        kind @ ("supervised" | "dpo") => {
            return Err(ApiError::bad_request(format!(
                "method.type '{kind}' is not supported yet: OpenRFT runs reinforcement fine-tuning (method.type 'reinforcement')"
            ))
            .with_param("method.type"))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid method.type '{other}': expected 'reinforcement'"
            ))
            .with_param("method.type"))
        }
    }
    let reinforcement = method.reinforcement.ok_or_else(|| {
        ApiError::bad_request("Missing required parameter: 'method.reinforcement'.")
            .with_param("method.reinforcement")
    })?;
    parse_grader(reinforcement.grader.as_ref(), "method.reinforcement.grader")?;
    let hyper =
        HyperparametersRequest::from_value(&reinforcement.hyperparameters).map_err(|e| {
            let param = if e.path.is_empty() {
                "method.reinforcement.hyperparameters".to_owned()
            } else {
                format!("method.reinforcement.hyperparameters.{}", e.path)
            };
            ApiError::bad_request(format!("Invalid hyperparameters: {e}")).with_param(param)
        })?;
    // Ranges are the trainer's: checked now, so a bad value is a 400 and not a failed job.
    Hyperparameters::from_request(&hyper, 1).map_err(|e| {
        ApiError::bad_request(format!("Invalid hyperparameters: {e}"))
            .with_param("method.reinforcement.hyperparameters")
    })?;
    let response_format = reinforcement.response_format.filter(|v| !v.is_null());
    if let Some(format) = &response_format {
        rft_model::constrain::ResponseFormat::from_value(format).map_err(|e| {
            ApiError::bad_request(format!("Invalid response_format: {e}"))
                .with_param("method.reinforcement.response_format")
        })?;
    }
    let suffix = match request.suffix {
        None => None,
        Some(s) if (1..=64).contains(&s.chars().count()) => Some(s),
        Some(_) => {
            return Err(
                ApiError::bad_request("suffix must be a string of 1 to 64 characters")
                    .with_param("suffix"),
            )
        }
    };
    let seed = match request.seed {
        None => {
            let id = new_id("");
            u64::from_str_radix(&id[..8], 16).unwrap_or(42) % 2_147_483_648
        }
        Some(s) if s <= 2_147_483_647 => s,
        Some(_) => {
            return Err(
                ApiError::bad_request("seed must be an integer from 0 to 2147483647")
                    .with_param("seed"),
            )
        }
    };
    let metadata = parse_metadata(request.metadata.as_ref())?;
    let echo = hyper.with_unset_as_auto();
    let id = new_id("ftjob-");
    let job = FineTuningJob {
        id: id.clone(),
        object: "fine_tuning.job".into(),
        created_at: now(),
        status: JobStatus::ValidatingFiles,
        model,
        training_file,
        validation_file,
        method: JobMethod {
            kind: "reinforcement".into(),
            reinforcement: ReinforcementMethod {
                grader: reinforcement.grader.unwrap_or(Value::Null),
                hyperparameters: echo.clone(),
                response_format,
            },
        },
        // OpenAI's deprecated top-level three, until the trainer resolves them.
        hyperparameters: HyperparametersRequest {
            batch_size: echo.batch_size,
            learning_rate_multiplier: echo.learning_rate_multiplier,
            n_epochs: echo.n_epochs,
            ..HyperparametersRequest::default()
        },
        seed,
        suffix: suffix.clone(),
        user_provided_suffix: suffix,
        fine_tuned_model: None,
        finished_at: None,
        error: None,
        organization_id: "org-openrft".into(),
        result_files: Vec::new(),
        trained_tokens: None,
        estimated_finish: None,
        integrations: request.integrations,
        metadata,
        shared_with_openai: false,
        eval_id: None,
    };
    state.store.insert_object("job", None, &job)?;
    note(
        &state.store,
        &id,
        EventLevel::Info,
        format!("Created fine-tuning job: {id}"),
    );
    state.scheduler.wake();
    Ok(Json(job))
}

fn existing(state: &SharedState, id: &str) -> Result<FineTuningJob, ApiError> {
    state
        .store
        .get_object("job", id)?
        .ok_or_else(|| ApiError::not_found("fine-tuning job", id).with_param("fine_tuning_job_id"))
}

/// `GET /v1/fine_tuning/jobs`: newest first; `metadata[k]=v` filters, `metadata=null` keeps jobs
/// without metadata.
pub(crate) async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<FineTuningJob>>, ApiError> {
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 10_000)?;
    let body = if query.get("metadata").map(String::as_str) == Some("null") {
        vec![rft_store::BodyFilter::Empty { field: "metadata" }]
    } else {
        query
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                Some(rft_store::BodyFilter::EntryEquals {
                    field: "metadata",
                    key,
                    value: v,
                })
            })
            .collect()
    };
    let (data, has_more) = state.store.list_objects(
        "job",
        &ListQuery {
            descending: true,
            after: query.get("after").map(String::as_str),
            limit,
            body,
            ..Default::default()
        },
    )?;
    Ok(Json(List::with_cursor(
        data,
        has_more,
        |j: &FineTuningJob| &j.id,
    )))
}

/// `GET /v1/fine_tuning/jobs/{id}`.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    existing(&state, &id).map(Json)
}

/// Applies a user action: `allowed` statuses move to `to`; anything else is a 400 naming the
/// current status.
fn transition(
    state: &SharedState,
    id: &str,
    action: &str,
    allowed: &[JobStatus],
    to: JobStatus,
) -> Result<FineTuningJob, ApiError> {
    let changed = state
        .store
        .modify_object::<FineTuningJob, JobStatus>(id, |job| {
            if !allowed.contains(&job.status) {
                return Err(job.status);
            }
            job.status = to;
            if to == JobStatus::Cancelled {
                job.finished_at = Some(now());
            }
            Ok(())
        })?;
    match changed {
        None => Err(ApiError::not_found("fine-tuning job", id).with_param("fine_tuning_job_id")),
        Some(Err(status)) => Err(ApiError::bad_request(format!(
            "Cannot {action} job {id}: its status is '{}'; {action} applies to jobs that are {}.",
            status.as_str(),
            allowed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ))
        .with_code("invalid_job_status")),
        Some(Ok(job)) => Ok(job),
    }
}

/// `POST /v1/fine_tuning/jobs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    _body: Bytes,
) -> Result<Json<FineTuningJob>, ApiError> {
    existing(&state, &id)?;
    let job = transition(
        &state,
        &id,
        "cancel",
        &[
            JobStatus::ValidatingFiles,
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Paused,
        ],
        JobStatus::Cancelled,
    )?;
    // Whatever the status was, the scheduler may be starting this very job: stop it. Its
    // worker (this process's, or another's, which hears of it at its next heartbeat) writes
    // the event when it stops, under the same key: one "Job cancelled" whoever writes first.
    if !state.scheduler.stop_if_running(&id) {
        crate::job_storage::note_once(
            &state.store,
            &id,
            crate::job_storage::CANCELLED_KEY,
            "Job cancelled",
        );
    }
    Ok(Json(job))
}

/// `POST /v1/fine_tuning/jobs/{id}/pause`: the trainer writes a checkpoint at its next step
/// boundary and stops; the job shows `paused` at once.
pub(crate) async fn pause(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    _body: Bytes,
) -> Result<Json<FineTuningJob>, ApiError> {
    let before = existing(&state, &id)?;
    let job = transition(
        &state,
        &id,
        "pause",
        &[JobStatus::Queued, JobStatus::Running],
        JobStatus::Paused,
    )?;
    // A running job's trainer says "Paused after step N" when it stops, wherever it runs.
    if !state.scheduler.stop_if_running(&id) && before.status != JobStatus::Running {
        note(&state.store, &id, EventLevel::Info, "Job paused");
    }
    Ok(Json(job))
}

/// `POST /v1/fine_tuning/jobs/{id}/resume`: back to `queued`; the trainer continues from the
/// pause checkpoint with the same data order, optimizer and RNG state.
pub(crate) async fn resume(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    _body: Bytes,
) -> Result<Json<FineTuningJob>, ApiError> {
    let job = transition(
        &state,
        &id,
        "resume",
        &[JobStatus::Paused],
        JobStatus::Queued,
    )?;
    note(
        &state.store,
        &id,
        EventLevel::Info,
        "Job resumed: it continues from its pause checkpoint",
    );
    state.scheduler.wake();
    Ok(Json(job))
}

/// Newest first, starting after the `after` id: `(page, has_more)`.
fn page_newest_first<T>(
    mut all: Vec<T>,
    id: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, bool) {
    all.reverse();
    let start = match after {
        Some(cursor) => all
            .iter()
            .position(|e| id(e) == cursor)
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let rest = all.len().saturating_sub(start);
    (
        all.into_iter().skip(start).take(limit).collect(),
        rest > limit,
    )
}

/// `GET /v1/fine_tuning/jobs/{id}/events`: newest first.
pub(crate) async fn events(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<JobEvent>>, ApiError> {
    existing(&state, &id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 10_000)?;
    let all = crate::job_storage::events(&state.store, &id)?;
    let (data, has_more) = page_newest_first(
        all,
        |e: &JobEvent| &e.id,
        query.get("after").map(String::as_str),
        limit,
    );
    Ok(Json(List::plain(data, has_more)))
}

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints`: the kept checkpoints, newest first.
pub(crate) async fn checkpoints(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<Checkpoint>>, ApiError> {
    existing(&state, &id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 10, 10_000)?;
    // The typed checkpoint has no `path`: the trainer's adapter folder is never served.
    let all = crate::job_storage::checkpoints(&state.store, &state.blobs, &id);
    let (data, has_more) = page_newest_first(
        all,
        |c: &Checkpoint| &c.id,
        query.get("after").map(String::as_str),
        limit,
    );
    Ok(Json(List::with_cursor(data, has_more, |c: &Checkpoint| {
        &c.id
    })))
}
