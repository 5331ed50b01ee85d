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
use rft_train::checkpoints::read_checkpoints;
use rft_train::config::Hyperparameters;
use rft_train::events::{append_event, read_events};
use rft_train::job::{run_job_on, JobControl, JobOutcome};
use rft_train::TrainError;
use rft_types::api::checkpoint::Checkpoint;
use rft_types::api::common::List;
use rft_types::api::event::{EventLevel, JobEvent};
use rft_types::api::file::{FileObject, FilePurpose};
use rft_types::api::hyperparameters::Hyperparameters as HyperparametersRequest;
use rft_types::api::job::{
    CreateJob, CreateMethod, CreateReinforcement, FineTuningJob, JobError, JobMethod, JobStatus,
    ReinforcementMethod,
};
use serde_json::Value;

use crate::error::{parse_body, ApiJson};
use crate::graders::parse_grader;
use crate::{new_id, now, parse_limit, parse_metadata, ApiError, ServeError, SharedState};

/// How long a job whose model does not fit the memory budget waits before it is tried again.
const MEMORY_RETRY: Duration = Duration::from_secs(5);

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
    /// Where jobs borrow their base models (shared with chat, Tinker and evals).
    host: Arc<rft_model::host::EngineHost>,
    /// Jobs requeued because their model did not fit the memory budget (their event is
    /// written once).
    waiting_for_memory: Mutex<std::collections::HashSet<String>>,
    /// The rollout fleet jobs sample on; `None`: in this process.
    rollout: Option<crate::RolloutSettings>,
    wake: (Mutex<bool>, Condvar),
    running: Mutex<Option<(String, Arc<JobControl>)>>,
    stopping: AtomicBool,
}

impl Scheduler {
    /// Requeues jobs a previous process left `running`, and starts the scheduler thread.
    pub(crate) fn start(
        store: Arc<Store>,
        catalog: Arc<crate::catalog::Catalog>,
        host: Arc<rft_model::host::EngineHost>,
        rollout: Option<crate::RolloutSettings>,
    ) -> Result<Scheduler, ServeError> {
        for job in store.with_status_objects::<FineTuningJob>("job", &["running"])? {
            let id = job.id;
            store.modify_object::<FineTuningJob, ()>(&id, |j| {
                j.status = JobStatus::Queued;
                Ok(())
            })?;
            let _ = append_event(
                &store.job_dir(&id),
                &id,
                EventLevel::Info,
                "The server restarted while the job was running; it resumes from its latest checkpoint",
            );
            tracing::info!(job = %id, "requeued after a restart");
        }
        let inner = Arc::new(Inner {
            store,
            catalog,
            host,
            waiting_for_memory: Mutex::new(std::collections::HashSet::new()),
            rollout,
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
                .with_status_objects::<FineTuningJob>("job", &["validating_files", "running"])
                .ok()
                .and_then(|jobs| jobs.into_iter().next())
                .map(|j| j.id)
        });
        tracing::error!("the scheduler recovered from a panic: {message}");
        if let Some(id) = current {
            let error = JobError {
                code: "internal_error".into(),
                message: "The trainer stopped on an internal error; the server log has the details. Create the job again.".into(),
                param: None,
            };
            if let Err(e) = self.fail(&id, error) {
                tracing::error!(job = %id, "cannot record the failure: {e}");
            }
        }
    }

    /// Validates or runs one job; false when there was nothing to do.
    fn next_step(&self) -> Result<bool, rft_store::StoreError> {
        if let Some(job) = self
            .store
            .with_status_objects::<FineTuningJob>("job", &["validating_files"])?
            .into_iter()
            .next()
        {
            self.validate(&job)?;
            return Ok(true);
        }
        if let Some(job) = self
            .store
            .with_status_objects::<FineTuningJob>("job", &["queued"])?
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
    fn validate(&self, job: &FineTuningJob) -> Result<(), rft_store::StoreError> {
        let id = job.id.as_str();
        let dir = self.store.job_dir(id);
        let mut failure = None;
        let files = [
            ("training_file", Some(&job.training_file)),
            ("validation_file", job.validation_file.as_ref()),
        ];
        for (param, file_id) in files {
            let Some(file_id) = file_id else {
                continue;
            };
            let _ = append_event(
                &dir,
                id,
                EventLevel::Info,
                format!("Validating {param} {file_id}"),
            );
            if let Err(e) = rft_train::dataset::read_dataset(&self.file_path(file_id)) {
                failure = Some(self.describe_failure(job, &e));
                break;
            }
        }
        match failure {
            None => {
                let _ = append_event(
                    &dir,
                    id,
                    EventLevel::Info,
                    "Files validated, moving job to queued state",
                );
                self.set_status_unless_changed(id, JobStatus::ValidatingFiles, JobStatus::Queued)?;
            }
            Some(error) => self.fail(id, error)?,
        }
        Ok(())
    }

    /// Moves `id` from `from` to `to`; does nothing if the user changed the status meanwhile.
    fn set_status_unless_changed(
        &self,
        id: &str,
        from: JobStatus,
        to: JobStatus,
    ) -> Result<bool, rft_store::StoreError> {
        let changed = self.store.modify_object::<FineTuningJob, ()>(id, |j| {
            if j.status != from {
                return Err(());
            }
            j.status = to;
            Ok(())
        })?;
        Ok(matches!(changed, Some(Ok(_))))
    }

    fn fail(&self, id: &str, error: JobError) -> Result<(), rft_store::StoreError> {
        let _ = append_event(
            &self.store.job_dir(id),
            id,
            EventLevel::Error,
            format!("Job failed: {}", error.message),
        );
        tracing::warn!(job = %id, "failed: {}", error.message);
        self.store.modify_object::<FineTuningJob, ()>(id, |j| {
            if !j.status.is_final() {
                j.status = JobStatus::Failed;
                j.error = Some(error);
                j.finished_at = Some(now());
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The job's `error` object for a trainer error: the code says which part was wrong, the
    /// message names the uploaded file (not our blob path) and the line.
    fn describe_failure(&self, job: &FineTuningJob, e: &TrainError) -> JobError {
        let mut message = e.to_string();
        let mut param = None;
        let files = [
            ("training_file", Some(&job.training_file)),
            ("validation_file", job.validation_file.as_ref()),
        ];
        for (key, file_id) in files {
            if let Some(file_id) = file_id {
                let blob = self.file_path(file_id).display().to_string();
                if message.contains(&blob) {
                    param = Some(key.to_owned());
                    let name = self
                        .store
                        .get_object::<FileObject>("file", file_id)
                        .ok()
                        .flatten()
                        .map(|f| f.filename)
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
        if param.is_none() && matches!(e, TrainError::Model(_)) {
            param = Some("model".into());
        }
        // The job object is public: no server path may show in it (the blob paths were
        // replaced above; the model's and the data folder's go too).
        JobError {
            code: code.into(),
            message: crate::error::redact_paths(&message),
            param,
        }
    }

    /// The remote rollout engine of job `id` when the server has a rollout fleet: its adapters
    /// are named `<job id>-v<version>`.
    fn remote_rollouts(
        &self,
        id: &str,
    ) -> Result<Option<rft_train::rollouts::RemoteRollouts>, TrainError> {
        let Some(settings) = &self.rollout else {
            return Ok(None);
        };
        rft_train::rollouts::RemoteRollouts::new(rft_train::rollouts::RemoteConfig {
            urls: settings.urls.clone(),
            admin_urls: settings.admin_urls.clone(),
            adapter_dir: settings.adapter_dir.clone(),
            // The job's id and a suffix of this run: a resumed job's versions count from 0
            // again and must never meet the adapters an earlier run left loaded.
            name_prefix: format!(
                "{id}-{:08x}",
                rft_model::request::seed_or_random(None) & 0xffff_ffff
            ),
            // Every version asynchronous steps may still be sampling (`max_off_policy_steps` ≤ 8),
            // and the one being published.
            keep_versions: 9,
            api_key: settings.api_key.clone(),
            timeout: Duration::from_secs(600),
        })
        .map(Some)
    }

    fn train(&self, job: &FineTuningJob) -> Result<(), rft_store::StoreError> {
        let id = job.id.clone();
        // The control is registered before the job shows `running`: a pause or cancel that
        // sees `running` always finds it, however early in the job it comes.
        let control = Arc::new(JobControl::default());
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((id.clone(), control.clone()));
        if !self.set_status_unless_changed(&id, JobStatus::Queued, JobStatus::Running)? {
            *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Ok(());
        }
        let dir = self.store.job_dir(&id);
        let fresh = !dir.join("job.json").is_file();
        if fresh {
            // The trainer takes its job id from job.json, so its events and model names use ours.
            let _ = std::fs::create_dir_all(&dir);
            let record = TrainerJobId { id: id.clone() };
            let _ = rft_types::paths::write_atomic(
                &dir.join("job.json"),
                serde_json::to_string(&record)
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
        let _ = append_event(&dir, &id, EventLevel::Info, "Fine-tuning job started");
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
        let local = rft_train::rollouts::LocalRollouts;
        let remote = match self.remote_rollouts(&id) {
            Ok(remote) => remote,
            Err(e) => {
                *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let error = self.describe_failure(job, &e);
                return self.fail(&id, error);
            }
        };
        let rollouts: &dyn rft_train::rollouts::RolloutEngine = match &remote {
            Some(remote) => remote,
            None => &local,
        };
        let result = run_job_on(
            &self.host,
            rollouts,
            &request,
            &dir,
            &control,
            &mut |_event| {
                // After the trainer's first event its job.json holds the resolved hyperparameters.
                if !resolved {
                    resolved = true;
                    if let Ok(text) = std::fs::read_to_string(dir.join("job.json")) {
                        if let Ok(trainer) = serde_json::from_str::<TrainerJob>(&text) {
                            let _ = store.modify_object::<FineTuningJob, ()>(&id, |j| {
                                j.hyperparameters = trainer.hyperparameters;
                                j.fine_tuned_model = None;
                                Ok(())
                            });
                        }
                    }
                }
            },
        );
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match result {
            Ok(summary) if summary.outcome == JobOutcome::Succeeded => {
                let trained_tokens = trained_tokens(&dir);
                let model = summary.fine_tuned_model.clone();
                self.store.modify_object::<FineTuningJob, ()>(&id, |j| {
                    if !j.status.is_final() {
                        j.status = JobStatus::Succeeded;
                        j.fine_tuned_model = Some(model.clone());
                        j.finished_at = Some(now());
                        j.trained_tokens = Some(trained_tokens);
                    }
                    Ok(())
                })?;
                tracing::info!(job = %id, "succeeded: {model}");
            }
            Ok(summary) => {
                let status = self
                    .store
                    .get_object::<FineTuningJob>("job", &id)?
                    .map(|j| j.status);
                if status == Some(JobStatus::Cancelled) {
                    let _ = append_event(&dir, &id, EventLevel::Info, "Job cancelled");
                } else if self.stopping.load(Ordering::SeqCst) && status == Some(JobStatus::Running)
                {
                    let _ = append_event(
                        &dir,
                        &id,
                        EventLevel::Info,
                        format!(
                            "The server stopped; the job was checkpointed after step {} and resumes when the server starts again",
                            summary.steps
                        ),
                    );
                    self.set_status_unless_changed(&id, JobStatus::Running, JobStatus::Queued)?;
                } else if status == Some(JobStatus::Running) {
                    // Paused by a control we no longer know of: record it as paused.
                    self.set_status_unless_changed(&id, JobStatus::Running, JobStatus::Paused)?;
                }
            }
            Err(TrainError::Model(rft_model::ModelError::MemoryBudget { .. })) => {
                // Not the job's fault: the models in use (a Tinker session, chat) fill the
                // memory budget. The job waits in the queue, said once in its events, and is
                // tried again after a pause.
                let first = self
                    .waiting_for_memory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                if first {
                    let _ = append_event(
                        &dir,
                        &id,
                        EventLevel::Info,
                        "Waiting for model memory: the models in use fill the server's budget (rft serve --max-model-gib); the job starts when one is released",
                    );
                }
                self.set_status_unless_changed(&id, JobStatus::Running, JobStatus::Queued)?;
                let (flag, cv) = &self.wake;
                let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
                let _ = cv
                    .wait_timeout(guard, MEMORY_RETRY)
                    .unwrap_or_else(|e| e.into_inner());
                return Ok(());
            }
            Err(e) => {
                let error = self.describe_failure(job, &e);
                self.fail(&id, error)?;
            }
        }
        self.waiting_for_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        Ok(())
    }

    /// The trainer's job: file ids become the blobs' paths, the model name the spec the
    /// catalog serves it from.
    fn job_request(&self, job: &FineTuningJob) -> Result<CreateJob, TrainError> {
        let path = |id: &str| self.file_path(id).display().to_string();
        let model = self.catalog.resolve(&job.model).ok_or_else(|| {
            TrainError::Config(format!(
                "the model '{}' is not served here (start the server with --model to allow it)",
                job.model
            ))
        })?;
        let reinforcement = &job.method.reinforcement;
        let hyperparameters = serde_json::to_value(&reinforcement.hyperparameters)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(CreateJob {
            model,
            training_file: path(&job.training_file),
            validation_file: job.validation_file.as_deref().map(path),
            method: Some(CreateMethod {
                kind: job.method.kind.clone(),
                reinforcement: Some(CreateReinforcement {
                    grader: Some(reinforcement.grader.clone()),
                    hyperparameters,
                    response_format: reinforcement.response_format.clone(),
                }),
            }),
            hyperparameters: None,
            suffix: job.user_provided_suffix.clone(),
            seed: Some(job.seed),
            metadata: None,
            integrations: None,
        })
    }
}

/// What the server writes into a fresh job folder's `job.json`: the trainer takes its job id
/// from it, so its events and model names use the server's.
#[derive(serde::Serialize)]
struct TrainerJobId {
    id: String,
}

/// What the server reads back from the trainer's `job.json`: the resolved hyperparameters.
#[derive(serde::Deserialize)]
struct TrainerJob {
    hyperparameters: HyperparametersRequest,
}

/// Completion tokens sampled for training, summed over the metrics events.
fn trained_tokens(dir: &Path) -> u64 {
    read_events(dir)
        .iter()
        .filter_map(|e| e.metrics()?.train.as_ref())
        .map(|t| t.completion_tokens_count as u64)
        .sum()
}

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
    let _ = append_event(
        &state.store.job_dir(&id),
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
    // Whatever the status was, the scheduler may be starting this very job: stop it.
    if !state.scheduler.stop_if_running(&id) {
        let _ = append_event(
            &state.store.job_dir(&id),
            &id,
            EventLevel::Info,
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
    existing(&state, &id)?;
    let job = transition(
        &state,
        &id,
        "pause",
        &[JobStatus::Queued, JobStatus::Running],
        JobStatus::Paused,
    )?;
    if !state.scheduler.stop_if_running(&id) {
        let _ = append_event(
            &state.store.job_dir(&id),
            &id,
            EventLevel::Info,
            "Job paused",
        );
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
    let all = read_events(&state.store.job_dir(&id));
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
    let all = read_checkpoints(&state.store.job_dir(&id));
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
