//! `/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events, checkpoints;
//! and the scheduler that runs them.
//!
//! The job object in SQLite holds the job's state as the API shows it; the job's folder (owned
//! by the trainer) holds its progress: events, checkpoints, adapter and optimizer state, all
//! written durably. So after `kill -9` nothing acknowledged is lost: on start, jobs found
//! `running` are requeued and the trainer resumes them from their latest checkpoint.
//!
//! Status machine (spec §4.3): `validating_files` → `queued` → `running` → `succeeded` |
//! `failed` | `cancelled`; `running` → `paused` (pause) → `queued` (resume). The database status
//! is the user's intent: pause and cancel set it at once, and the trainer stops at its next
//! step boundary (after writing a checkpoint); the scheduler never overwrites an intent.
//!
//! The action routes read (and ignore) their body: an unread body makes hyper close the
//! keep-alive connection, and clients that pool connections then fail their next request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use rft_store::{ListQuery, Store};
use rft_train::config::{Hyperparameters, JobRequest};
use rft_train::job::{
    append_event, read_checkpoints, read_events, run_job, JobControl, JobOutcome,
};
use rft_train::TrainError;
use serde_json::{json, Map, Value};

use crate::error::ApiJson;
use crate::graders::parse_grader;
use crate::{
    new_id, now, parse_limit, parse_metadata, ApiError, ServeError, SharedState,
};

const TERMINAL: [&str; 3] = ["succeeded", "failed", "cancelled"];
/// The OpenAI hyperparameters echoed as `"auto"` when the request leaves them out.
const AUTO_HYPERPARAMETERS: [&str; 6] = [
    "batch_size",
    "learning_rate_multiplier",
    "n_epochs",
    "compute_multiplier",
    "eval_interval",
    "eval_samples",
];

/// Runs queued jobs one at a time on a thread of its own, so the API stays responsive.
#[derive(Debug)]
pub(crate) struct Scheduler {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    catalog: Arc<crate::catalog::Catalog>,
    wake: (Mutex<bool>, Condvar),
    running: Mutex<Option<(String, Arc<JobControl>)>>,
    stopping: AtomicBool,
}

impl Scheduler {
    /// Requeues jobs a previous process left `running`, and starts the scheduler thread.
    pub(crate) fn start(
        store: Arc<Store>,
        catalog: Arc<crate::catalog::Catalog>,
    ) -> Result<Scheduler, ServeError> {
        for job in store.with_status("job", &["running"])? {
            let id = job["id"].as_str().unwrap_or_default().to_owned();
            store.modify::<()>(&id, |j| {
                j["status"] = json!("queued");
                Ok(())
            })?;
            let _ = append_event(
                &store.job_dir(&id),
                &id,
                "info",
                "The server restarted while the job was running; it resumes from its latest checkpoint",
            );
            tracing::info!(job = %id, "requeued after a restart");
        }
        let inner = Arc::new(Inner {
            store,
            catalog,
            wake: (Mutex::new(false), Condvar::new()),
            running: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("rft-scheduler".into())
            .spawn(move || worker.run())
            .map_err(|e| ServeError::Thread("scheduler", e))?;
        Ok(Scheduler {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Looks for work now rather than at the next poll.
    pub(crate) fn wake(&self) {
        let (flag, cv) = &self.inner.wake;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    /// Asks the running job `id` (if it is the one running) to stop at its next step boundary.
    /// Returns whether it was (the scheduler then writes the job's event when it stops).
    fn stop_if_running(&self, id: &str) -> bool {
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref() {
            Some((running_id, control)) if running_id == id => {
                control.pause.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Pauses the running job (checkpointed; requeued for the next start) and joins the thread.
    pub(crate) fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Some((_, control)) = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            control.pause.store(true, Ordering::SeqCst);
        }
        self.wake();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn run(&self) {
        while !self.stopping.load(Ordering::SeqCst) {
            // A panic while validating or training fails that job (below) and the scheduler
            // goes on with the next one.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.next_step()));
            match step {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!("scheduler: {e}"),
                Err(panic) => self.recover_from_panic(&crate::panic_message(&*panic)),
            }
            let (flag, cv) = &self.wake;
            let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
            let (mut guard, _) = cv
                .wait_timeout_while(guard, Duration::from_secs(1), |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *guard = false;
        }
    }

    /// Fails the job a panic interrupted (the one running or being validated), so it is not
    /// picked up again and again.
    fn recover_from_panic(&self, message: &str) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|(id, _)| id);
        let current = running.or_else(|| {
            self.store
                .with_status("job", &["validating_files", "running"])
                .ok()
                .and_then(|jobs| jobs.into_iter().next())
                .and_then(|j| j["id"].as_str().map(str::to_owned))
        });
        tracing::error!("the scheduler recovered from a panic: {message}");
        if let Some(id) = current {
            let error = json!({"code": "internal_error", "param": null,
                "message": "The trainer stopped on an internal error; the server log has the details. Create the job again."});
            if let Err(e) = self.fail(&id, error) {
                tracing::error!(job = %id, "cannot record the failure: {e}");
            }
        }
    }

    /// Validates or runs one job; false when there was nothing to do.
    fn next_step(&self) -> Result<bool, rft_store::StoreError> {
        if let Some(job) = self
            .store
            .with_status("job", &["validating_files"])?
            .into_iter()
            .next()
        {
            self.validate(&job)?;
            return Ok(true);
        }
        if let Some(job) = self
            .store
            .with_status("job", &["queued"])?
            .into_iter()
            .next()
        {
            self.train(&job)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn file_path(&self, file_id: &str) -> std::path::PathBuf {
        self.store.file_path(file_id)
    }

    /// Reads both files as the trainer will; a problem fails the job with its line number.
    fn validate(&self, job: &Value) -> Result<(), rft_store::StoreError> {
        let id = job["id"].as_str().unwrap_or_default();
        let dir = self.store.job_dir(id);
        let mut failure = None;
        for param in ["training_file", "validation_file"] {
            let Some(file_id) = job[param].as_str() else {
                continue;
            };
            let _ = append_event(&dir, id, "info", format!("Validating {param} {file_id}"));
            if let Err(e) = rft_train::job::read_dataset(&self.file_path(file_id)) {
                failure = Some(self.describe_failure(job, &e));
                break;
            }
        }
        match failure {
            None => {
                let _ = append_event(
                    &dir,
                    id,
                    "info",
                    "Files validated, moving job to queued state",
                );
                self.set_status_unless_changed(id, "validating_files", "queued", None)?;
            }
            Some(error) => self.fail(id, error)?,
        }
        Ok(())
    }

    /// Moves `id` from `from` to `to`; does nothing if the user changed the status meanwhile.
    fn set_status_unless_changed(
        &self,
        id: &str,
        from: &str,
        to: &str,
        extra: Option<&dyn Fn(&mut Value)>,
    ) -> Result<bool, rft_store::StoreError> {
        let changed = self.store.modify(id, |j| {
            if j["status"] != from {
                return Err(());
            }
            j["status"] = json!(to);
            if let Some(extra) = extra {
                extra(j);
            }
            Ok(())
        })?;
        Ok(matches!(changed, Some(Ok(_))))
    }

    fn fail(&self, id: &str, error: Value) -> Result<(), rft_store::StoreError> {
        let message = error["message"].as_str().unwrap_or_default().to_owned();
        let _ = append_event(
            &self.store.job_dir(id),
            id,
            "error",
            format!("Job failed: {message}"),
        );
        tracing::warn!(job = %id, "failed: {message}");
        self.store.modify::<()>(id, |j| {
            if !TERMINAL.contains(&j["status"].as_str().unwrap_or_default()) {
                j["status"] = json!("failed");
                j["error"] = error.clone();
                j["finished_at"] = json!(now());
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The job's `error` object for a trainer error: the code says which part was wrong, the
    /// message names the uploaded file (not our blob path) and the line.
    fn describe_failure(&self, job: &Value, e: &TrainError) -> Value {
        let mut message = e.to_string();
        let mut param = Value::Null;
        for key in ["training_file", "validation_file"] {
            if let Some(file_id) = job[key].as_str() {
                let blob = self.file_path(file_id).display().to_string();
                if message.contains(&blob) {
                    param = json!(key);
                    let name = self
                        .store
                        .get("file", file_id)
                        .ok()
                        .flatten()
                        .and_then(|f| f["filename"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    message = message.replace(&blob, &format!("{key} {file_id} ({name})"));
                }
            }
        }
        let code = match e {
            TrainError::Dataset { .. } => "invalid_file",
            TrainError::Grading(_) | TrainError::Grader(_) => "grader_error",
            TrainError::Config(_) => "invalid_hyperparameters",
            TrainError::Model(_) => "model_error",
            _ => "training_error",
        };
        if param.is_null() && matches!(e, TrainError::Model(_)) {
            param = json!("model");
        }
        // The job object is public: no server path may show in it (the blob paths were
        // replaced above; the model's and the data folder's go too).
        let message = crate::error::redact_paths(&message);
        json!({"code": code, "message": message, "param": param})
    }

    fn train(&self, job: &Value) -> Result<(), rft_store::StoreError> {
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        // The control is registered before the job shows `running`: a pause or cancel that
        // sees `running` always finds it, however early in the job it comes.
        let control = Arc::new(JobControl::default());
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((id.clone(), control.clone()));
        if !self.set_status_unless_changed(&id, "queued", "running", None)? {
            *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Ok(());
        }
        let dir = self.store.job_dir(&id);
        let fresh = !dir.join("job.json").is_file();
        if fresh {
            // The trainer takes its job id from job.json, so its events and model names use ours.
            let _ = std::fs::create_dir_all(&dir);
            let _ = rft_types::paths::write_atomic(
                &dir.join("job.json"),
                json!({"id": id}).to_string().as_bytes(),
            );
        }
        let _ = append_event(&dir, &id, "info", "Fine-tuning job started");
        let request = match self.job_request(job) {
            Ok(r) => r,
            Err(e) => {
                *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return self.fail(&id, self.describe_failure(job, &e));
            }
        };
        // A pause or cancel between the status change and here already set the control.
        tracing::info!(job = %id, "training");
        let store = self.store.clone();
        let mut resolved = false;
        let result = run_job(&request, &dir, &control, &mut |_event| {
            // After the trainer's first event its job.json holds the resolved hyperparameters.
            if !resolved {
                resolved = true;
                if let Ok(text) = std::fs::read_to_string(dir.join("job.json")) {
                    if let Ok(trainer) = serde_json::from_str::<Value>(&text) {
                        let _ = store.modify::<()>(&id, |j| {
                            j["hyperparameters"] = trainer["hyperparameters"].clone();
                            j["fine_tuned_model"] = Value::Null;
                            Ok(())
                        });
                    }
                }
            }
        });
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match result {
            Ok(summary) if summary.outcome == JobOutcome::Succeeded => {
                let trained_tokens = trained_tokens(&dir);
                let model = summary.fine_tuned_model.clone();
                self.store.modify::<()>(&id, |j| {
                    if !TERMINAL.contains(&j["status"].as_str().unwrap_or_default()) {
                        j["status"] = json!("succeeded");
                        j["fine_tuned_model"] = json!(model);
                        j["finished_at"] = json!(now());
                        j["trained_tokens"] = json!(trained_tokens);
                    }
                    Ok(())
                })?;
                tracing::info!(job = %id, "succeeded: {model}");
            }
            Ok(summary) => {
                let status = self
                    .store
                    .get("job", &id)?
                    .and_then(|j| j["status"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if status == "cancelled" {
                    let _ = append_event(&dir, &id, "info", "Job cancelled");
                } else if self.stopping.load(Ordering::SeqCst) && status == "running" {
                    let _ = append_event(
                        &dir,
                        &id,
                        "info",
                        format!(
                            "The server stopped; the job was checkpointed after step {} and resumes when the server starts again",
                            summary.steps
                        ),
                    );
                    self.set_status_unless_changed(&id, "running", "queued", None)?;
                } else if status == "running" {
                    // Paused by a control we no longer know of: record it as paused.
                    self.set_status_unless_changed(&id, "running", "paused", None)?;
                }
            }
            Err(e) => {
                let error = self.describe_failure(job, &e);
                self.fail(&id, error)?;
            }
        }
        Ok(())
    }

    fn job_request(&self, job: &Value) -> Result<JobRequest, TrainError> {
        let path = |key: &str| {
            job[key]
                .as_str()
                .map(|id| self.file_path(id).display().to_string())
        };
        let name = job["model"].as_str().unwrap_or_default();
        let model = self.catalog.resolve(name).ok_or_else(|| {
            TrainError::Config(format!(
                "the model '{name}' is not served here (start the server with --model to allow it)"
            ))
        })?;
        JobRequest::from_value(json!({
            "model": model,
            "training_file": path("training_file"),
            "validation_file": path("validation_file"),
            "method": job["method"],
            "suffix": job["user_provided_suffix"],
            "seed": job["seed"],
        }))
    }
}

/// A page of job or checkpoint objects.
fn value_list(page: rft_store::Page) -> rft_types::api::common::List<Value> {
    rft_types::api::common::List::with_cursor(page.data, page.has_more, |v: &Value| {
        v.get("id").and_then(Value::as_str).unwrap_or_default()
    })
}

/// Completion tokens sampled for training, summed over the metrics events.
fn trained_tokens(dir: &Path) -> u64 {
    read_events(dir)
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| e["data"]["completion_tokens_count"].as_u64())
        .sum()
}

fn file_param(state: &SharedState, body: &Value, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => {
            let file = state.store.get("file", id)?.ok_or_else(|| {
                ApiError::bad_request(format!("invalid {key}: no file with id '{id}'"))
                    .with_param(key)
                    .with_code("invalid_file_id")
            })?;
            if file["purpose"] != "fine-tune" {
                return Err(ApiError::bad_request(format!(
                    "invalid {key}: file {id} has purpose '{}'; upload it with purpose 'fine-tune'",
                    file["purpose"].as_str().unwrap_or_default()
                ))
                .with_param(key));
            }
            Ok(Some(id.clone()))
        }
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a file id")).with_param(key)),
    }
}

/// `POST /v1/fine_tuning/jobs`.
pub(crate) async fn create(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let model = body["model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required parameter: 'model'.").with_param("model")
        })?;
    // Base models only, from the allow list: a model name is never a path the client picks.
    if state.inference.catalog().resolve(model).is_none() {
        return Err(ApiError::bad_request(format!(
            "The model '{model}' does not exist or cannot be fine-tuned here. GET /v1/models lists the base models this server serves."
        ))
        .with_param("model")
        .with_code("model_not_found"));
    }
    let training_file = file_param(&state, &body, "training_file")?.ok_or_else(|| {
        ApiError::bad_request("Missing required parameter: 'training_file'.")
            .with_param("training_file")
    })?;
    let validation_file = file_param(&state, &body, "validation_file")?;
    let method = body.get("method").cloned().unwrap_or(Value::Null);
    match method["type"].as_str() {
        Some("reinforcement") => {}
        Some(kind @ ("supervised" | "dpo")) => {
            return Err(ApiError::bad_request(format!(
                "method.type '{kind}' is not supported yet: OpenRFT runs reinforcement fine-tuning (method.type 'reinforcement')"
            ))
            .with_param("method.type"))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid method.type '{other}': expected 'reinforcement'"
            ))
            .with_param("method.type"))
        }
        None => {
            return Err(ApiError::bad_request(
                "Missing method: OpenRFT runs reinforcement fine-tuning; send method = {type: 'reinforcement', reinforcement: {grader, hyperparameters}}",
            )
            .with_param("method"))
        }
    }
    let reinforcement = &method["reinforcement"];
    parse_grader(reinforcement.get("grader"), "method.reinforcement.grader")?;
    let mut hyper = match &reinforcement["hyperparameters"] {
        Value::Null => Map::new(),
        Value::Object(map) => map.clone(),
        _ => {
            return Err(ApiError::bad_request("hyperparameters must be an object")
                .with_param("method.reinforcement.hyperparameters"))
        }
    };
    Hyperparameters::resolve(&Value::Object(hyper.clone()), 1).map_err(|e| {
        ApiError::bad_request(format!("Invalid hyperparameters: {e}"))
            .with_param("method.reinforcement.hyperparameters")
    })?;
    for key in AUTO_HYPERPARAMETERS {
        hyper.entry(key).or_insert(json!("auto"));
    }
    hyper.entry("reasoning_effort").or_insert(json!("default"));
    let response_format = reinforcement
        .get("response_format")
        .cloned()
        .unwrap_or(Value::Null);
    if !response_format.is_null() {
        rft_model::constrain::ResponseFormat::from_value(&response_format).map_err(|e| {
            ApiError::bad_request(format!("Invalid response_format: {e}"))
                .with_param("method.reinforcement.response_format")
        })?;
    }
    let suffix = match &body["suffix"] {
        Value::Null => None,
        Value::String(s) if (1..=64).contains(&s.chars().count()) => Some(s.clone()),
        _ => {
            return Err(
                ApiError::bad_request("suffix must be a string of 1 to 64 characters")
                    .with_param("suffix"),
            )
        }
    };
    let seed = match &body["seed"] {
        Value::Null => {
            let id = new_id("");
            u64::from_str_radix(&id[..8], 16).unwrap_or(42) % 2_147_483_648
        }
        v => match v.as_u64() {
            Some(s) if s <= 2_147_483_647 => s,
            _ => {
                return Err(
                    ApiError::bad_request("seed must be an integer from 0 to 2147483647")
                        .with_param("seed"),
                )
            }
        },
    };
    let metadata = parse_metadata(body.get("metadata"))?;
    let id = new_id("ftjob-");
    let mut method_echo = method.clone();
    method_echo["reinforcement"]["hyperparameters"] = Value::Object(hyper.clone());
    method_echo["reinforcement"]["response_format"] = response_format;
    let job = json!({
        "id": id,
        "object": "fine_tuning.job",
        "created_at": now(),
        "status": "validating_files",
        "model": model,
        "training_file": training_file,
        "validation_file": validation_file,
        "method": method_echo,
        "hyperparameters": {
            "batch_size": hyper["batch_size"],
            "learning_rate_multiplier": hyper["learning_rate_multiplier"],
            "n_epochs": hyper["n_epochs"],
        },
        "seed": seed,
        "suffix": suffix,
        "user_provided_suffix": suffix,
        "fine_tuned_model": null,
        "finished_at": null,
        "error": null,
        "organization_id": "org-openrft",
        "result_files": [],
        "trained_tokens": null,
        "estimated_finish": null,
        "integrations": body.get("integrations").cloned().unwrap_or(Value::Null),
        "metadata": metadata,
        "shared_with_openai": false,
        "eval_id": null,
    });
    state.store.insert("job", None, &job)?;
    let _ = append_event(
        &state.store.job_dir(&id),
        &id,
        "info",
        format!("Created fine-tuning job: {id}"),
    );
    state.scheduler.wake();
    Ok(Json(job))
}

fn existing(state: &SharedState, id: &str) -> Result<Value, ApiError> {
    state
        .store
        .get("job", id)?
        .ok_or_else(|| ApiError::not_found("fine-tuning job", id).with_param("fine_tuning_job_id"))
}

/// `GET /v1/fine_tuning/jobs`: newest first; `metadata[k]=v` filters, `metadata=null` keeps jobs
/// without metadata.
pub(crate) async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<rft_types::api::common::List<Value>>, ApiError> {
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
    let page = state.store.list(
        "job",
        &ListQuery {
            descending: true,
            after: query.get("after").map(String::as_str),
            limit,
            body,
            ..Default::default()
        },
    )?;
    Ok(Json(value_list(page)))
}

/// `GET /v1/fine_tuning/jobs/{id}`.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &id).map(Json)
}

/// Applies a user action: `allowed` statuses move to `to`; anything else is a 400 naming the
/// current status.
fn transition(
    state: &SharedState,
    id: &str,
    action: &str,
    allowed: &[&str],
    to: &str,
) -> Result<Value, ApiError> {
    let changed = state.store.modify(id, |job| {
        let status = job["status"].as_str().unwrap_or_default().to_owned();
        if !allowed.contains(&status.as_str()) {
            return Err(status);
        }
        job["status"] = json!(to);
        if to == "cancelled" {
            job["finished_at"] = json!(now());
        }
        Ok(())
    })?;
    match changed {
        None => Err(ApiError::not_found("fine-tuning job", id).with_param("fine_tuning_job_id")),
        Some(Err(status)) => Err(ApiError::bad_request(format!(
            "Cannot {action} job {id}: its status is '{status}'; {action} applies to jobs that are {}.",
            allowed.join(" or ")
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
) -> Result<Json<Value>, ApiError> {
    existing(&state, &id)?;
    let job = transition(
        &state,
        &id,
        "cancel",
        &["validating_files", "queued", "running", "paused"],
        "cancelled",
    )?;
    // Whatever the status was, the scheduler may be starting this very job: stop it.
    if !state.scheduler.stop_if_running(&id) {
        let _ = append_event(&state.store.job_dir(&id), &id, "info", "Job cancelled");
    }
    Ok(Json(job))
}

/// `POST /v1/fine_tuning/jobs/{id}/pause`: the trainer writes a checkpoint at its next step
/// boundary and stops; the job shows `paused` at once.
pub(crate) async fn pause(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    _body: Bytes,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &id)?;
    let job = transition(&state, &id, "pause", &["queued", "running"], "paused")?;
    if !state.scheduler.stop_if_running(&id) {
        let _ = append_event(&state.store.job_dir(&id), &id, "info", "Job paused");
    }
    Ok(Json(job))
}

/// `POST /v1/fine_tuning/jobs/{id}/resume`: back to `queued`; the trainer continues from the
/// pause checkpoint with the same data order, optimizer and RNG state.
pub(crate) async fn resume(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    _body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let job = transition(&state, &id, "resume", &["paused"], "queued")?;
    state.scheduler.wake();
    Ok(Json(job))
}

/// Newest first, starting after the `after` id.
fn page_newest_first(mut all: Vec<Value>, after: Option<&str>, limit: usize) -> rft_store::Page {
    all.reverse();
    let start = match after {
        Some(cursor) => all
            .iter()
            .position(|e| e["id"].as_str() == Some(cursor))
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let rest = all.len().saturating_sub(start);
    rft_store::Page {
        data: all.into_iter().skip(start).take(limit).collect(),
        has_more: rest > limit,
    }
}

/// `GET /v1/fine_tuning/jobs/{id}/events`: newest first.
pub(crate) async fn events(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    existing(&state, &id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 10_000)?;
    let all = read_events(&state.store.job_dir(&id));
    let page = page_newest_first(all, query.get("after").map(String::as_str), limit);
    Ok(Json(
        json!({"object": "list", "data": page.data, "has_more": page.has_more}),
    ))
}

/// `GET /v1/fine_tuning/jobs/{id}/checkpoints`: the kept checkpoints, newest first.
pub(crate) async fn checkpoints(
    State(state): State<SharedState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<rft_types::api::common::List<Value>>, ApiError> {
    existing(&state, &id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 10, 10_000)?;
    let all: Vec<Value> = read_checkpoints(&state.store.job_dir(&id))
        .into_iter()
        .map(|mut c| {
            if let Some(map) = c.as_object_mut() {
                map.remove("path");
            }
            c
        })
        .collect();
    let page = page_newest_first(all, query.get("after").map(String::as_str), limit);
    Ok(Json(value_list(page)))
}
