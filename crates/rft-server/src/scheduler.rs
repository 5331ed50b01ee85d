//! The job worker: claims queued jobs from the database with leases and runs them, one at a
//! time. `rft serve` runs one in its own process (the default); `rft worker` runs only this,
//! on any machine that reaches the same database and blob store, as many as there are GPUs.
//!
//! A worker holds a job by its lease ([`rft_store::Lease`]): a heartbeat thread renews it every
//! third of its duration and reads the job's status, so a pause or cancel made through any API
//! process reaches the worker within a heartbeat. A worker that stops heartbeating (killed,
//! partitioned) loses the job when its lease expires: the sweeper every worker runs puts the
//! job back in the queue, and another worker resumes it from its newest complete state in the
//! blob store ([`crate::job_storage`]). A worker whose lease was taken over finds out at its
//! next heartbeat or step, and stops without touching the job.
//!
//! Status machine (spec §4.3): `validating_files` → `queued` → `running` → `succeeded` |
//! `failed` | `cancelled`; `running` → `paused` (pause) → `queued` (resume). The database status
//! is the user's intent: pause and cancel set it at once, and the trainer stops at its next
//! step boundary (after writing a checkpoint); the worker never overwrites an intent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rft_store::blobs::Blobs;
use rft_store::{Lease, Store, StoreError};
use rft_train::job::{run_job_with, JobControl, JobOutcome};
use rft_train::TrainError;
use rft_types::api::event::EventLevel;
use rft_types::api::file::FileObject;
use rft_types::api::hyperparameters::Hyperparameters as HyperparametersRequest;
use rft_types::api::job::{
    CreateJob, CreateMethod, CreateReinforcement, FineTuningJob, JobError, JobStatus,
};

use crate::job_storage::{self, note, retrying, StoreSink, LEASE_LOST};
use crate::{now, ServeError};

/// How long a job whose model does not fit the memory budget waits before it is tried again.
const MEMORY_RETRY: Duration = Duration::from_secs(5);
/// How often an idle worker looks for work (a wake from this process's API comes at once).
const POLL: Duration = Duration::from_millis(500);
/// How often a worker looks for jobs whose worker vanished.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// How long a claimed job stays this worker's without a heartbeat.
    pub lease: Duration,
    /// Names this worker in leases and logs; unique per process.
    pub id: String,
}

impl WorkerSettings {
    /// A worker id from this host, this process and a random part.
    pub fn new(lease: Duration) -> WorkerSettings {
        WorkerSettings {
            lease,
            id: format!(
                "{}:{}:{}:{}",
                hostname(),
                std::process::id(),
                &crate::new_id("")[..8],
                process_space()
            ),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into())
}

/// Whether the worker named `owner` has stopped, as far as this machine can tell: only for
/// SQLite, whose workers all run on this machine (a process of this host that no longer
/// exists). PostgreSQL's workers may be anywhere, even on another machine with this host
/// name: there only the lease's expiry counts.
/// Whether a lease's holder has stopped, as far as `store`'s kind tells: on SQLite (one
/// machine) [`gone_on_this_host`]; on PostgreSQL nobody is judged (only the lease's expiry).
pub(crate) fn abandoned_by(store: &Store) -> impl Fn(&str) -> bool + Sync {
    let local = store.is_local();
    move |owner: &str| local && gone_on_this_host(owner)
}

pub(crate) fn gone_on_this_host(owner: &str) -> bool {
    judge_gone(
        owner,
        &hostname(),
        &process_space(),
        std::process::id(),
        |pid| std::path::Path::new(&format!("/proc/{pid}")).exists(),
    )
}

/// Where a process id means something: this boot of the machine and this PID namespace
/// (`<boot id>.<pid namespace inode>`). Two containers that share a host name (host
/// networking) have different namespaces: neither can see the other's processes, so neither
/// judges the other.
fn process_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().chars().take(8).collect::<String>())
        .unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| {
            l.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    format!("{boot}.{namespace}")
}

/// [`gone_on_this_host`] with this process's host, process space, pid and a liveness check:
/// a holder of this host and space whose process does not exist has stopped; one of an earlier
/// boot of this host has too; anything else (another host, another namespace, an owner written
/// by an older version) is left to its lease's expiry.
fn judge_gone(
    owner: &str,
    host: &str,
    space: &str,
    own_pid: u32,
    alive: impl Fn(u32) -> bool,
) -> bool {
    let parts: Vec<&str> = owner.splitn(4, ':').collect();
    let [owner_host, pid, _, owner_space] = parts[..] else {
        return false;
    };
    if owner_host != host || owner_space.is_empty() {
        return false;
    }
    let (boot, namespace) = owner_space.split_once('.').unwrap_or((owner_space, ""));
    let (our_boot, our_namespace) = space.split_once('.').unwrap_or((space, ""));
    if !boot.is_empty() && !our_boot.is_empty() && boot != our_boot {
        return true;
    }
    if namespace != our_namespace {
        return false;
    }
    match pid.parse::<u32>() {
        Ok(pid) if pid == own_pid => false,
        Ok(pid) => !alive(pid),
        Err(_) => false,
    }
}

/// Runs queued jobs one at a time on a thread of its own, so the API stays responsive.
#[derive(Debug)]
pub(crate) struct Scheduler {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) struct Inner {
    store: Arc<Store>,
    blobs: Blobs,
    catalog: Arc<crate::catalog::Catalog>,
    /// Where jobs borrow their base models (shared with chat, Tinker and evals).
    host: Arc<rft_model::host::EngineHost>,
    /// Jobs requeued because their model did not fit the memory budget (their event is
    /// written once).
    waiting_for_memory: Mutex<HashSet<String>>,
    /// The rollout fleet jobs sample on; `None`: in this process.
    rollout: Option<crate::RolloutSettings>,
    settings: WorkerSettings,
    wake: (Mutex<bool>, Condvar),
    running: Mutex<Option<(String, Arc<JobControl>)>>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("worker", &self.settings.id)
            .finish()
    }
}

impl Scheduler {
    /// Starts the worker thread; `enabled: false` (an API-only process) starts none, and
    /// [`Scheduler::wake`] and [`Scheduler::stop_if_running`] do nothing.
    pub(crate) fn start(
        store: Arc<Store>,
        blobs: Blobs,
        catalog: Arc<crate::catalog::Catalog>,
        host: Arc<rft_model::host::EngineHost>,
        rollout: Option<crate::RolloutSettings>,
        settings: WorkerSettings,
        enabled: bool,
    ) -> Result<Scheduler, ServeError> {
        let inner = Arc::new(Inner {
            store,
            blobs,
            catalog,
            host,
            waiting_for_memory: Mutex::new(HashSet::new()),
            rollout,
            settings,
            wake: (Mutex::new(false), Condvar::new()),
            running: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let thread = if enabled {
            tracing::info!(worker = %inner.settings.id, "job worker started");
            let worker = inner.clone();
            Some(
                std::thread::Builder::new()
                    .name("rft-scheduler".into())
                    .spawn(move || worker.run())
                    .map_err(|e| ServeError::Thread("scheduler", e))?,
            )
        } else {
            None
        };
        Ok(Scheduler {
            inner,
            thread: Mutex::new(thread),
        })
    }

    /// Looks for work now rather than at the next poll.
    pub(crate) fn wake(&self) {
        self.inner.wake();
    }

    /// Asks the running job `id` (if it is the one running here) to stop at its next step
    /// boundary. Returns whether it was (the worker then writes the job's event when it stops).
    pub(crate) fn stop_if_running(&self, id: &str) -> bool {
        self.inner.stop_if_running(id)
    }

    /// Pauses the running job (checkpointed; requeued for the next start) and joins the thread.
    pub(crate) fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        if let Some((_, control)) = self.inner.running().as_ref() {
            control.pause.store(true, Ordering::SeqCst);
        }
        self.wake();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// A worker with no API: `rft worker`. Runs until SIGTERM or Ctrl-C, then pauses the running
/// job at its next step boundary (checkpointed and requeued for another worker).
pub fn run_worker(
    config: &crate::ServerConfig,
    settings: WorkerSettings,
) -> Result<(), ServeError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Thread("signal runtime", e))?;
    std::thread::Builder::new()
        .name("rft-signals".into())
        .spawn(move || {
            runtime.block_on(crate::shutdown_signal());
            flag.store(true, Ordering::SeqCst);
        })
        .map_err(|e| ServeError::Thread("signals", e))?;
    run_worker_until(config, settings, &stop)
}

/// [`run_worker`] until `stop` is set (tests).
pub fn run_worker_until(
    config: &crate::ServerConfig,
    settings: WorkerSettings,
    stop: &AtomicBool,
) -> Result<(), ServeError> {
    let config = crate::ServerConfig {
        serves_api: false,
        run_jobs: true,
        ..config.clone()
    };
    let config = &config;
    let (store, blobs) = crate::open_storage(config)?;
    let catalog = Arc::new(crate::catalog::Catalog::new(config));
    let device = rft_model::device::parse_device(&config.device).map_err(ServeError::Device)?;
    let host = Arc::new(rft_model::host::EngineHost::new(
        device,
        config.max_loaded_model_bytes,
    ));
    eprintln!(
        "worker {} on {} (artefacts in {})",
        settings.id,
        store.describe(),
        blobs.describe()
    );
    let scheduler = Scheduler::start(
        store,
        blobs,
        catalog,
        host,
        config.rollout.clone(),
        settings,
        true,
    )?;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("stopping: pausing the running job at its next step boundary");
    scheduler.shutdown();
    Ok(())
}

impl Inner {
    fn wake(&self) {
        let (flag, cv) = &self.wake;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<(String, Arc<JobControl>)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop_if_running(&self, id: &str) -> bool {
        match self.running().as_ref() {
            Some((running_id, control)) if running_id == id => {
                control.pause.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    fn run(&self) {
        let mut last_sweep: Option<Instant> = None;
        // After this worker saw the database away, it sweeps nothing for a lease: the other
        // workers were as cut off as it was, and their heartbeats need a moment to renew the
        // leases the outage let expire.
        let mut quiet_until: Option<Instant> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            let quiet = quiet_until.is_some_and(|t| Instant::now() < t);
            if !quiet && last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                if self.sweep() {
                    quiet_until = Some(Instant::now() + self.settings.lease);
                }
            }
            // A panic while validating or training fails that job (below) and the worker goes
            // on with the next one.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.next_step()));
            match step {
                Ok(Ok(true)) => continue,
                Ok(Ok(false)) => {}
                Ok(Err(e)) if e.is_unavailable() => {
                    tracing::warn!("worker: {e}; trying again shortly");
                    quiet_until = Some(Instant::now() + self.settings.lease);
                }
                Ok(Err(e)) => tracing::error!("worker: {e}"),
                Err(panic) => self.recover_from_panic(&crate::panic_message(&*panic)),
            }
            let (flag, cv) = &self.wake;
            let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
            let (mut guard, _) = cv
                .wait_timeout_while(guard, POLL, |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *guard = false;
        }
    }

    /// Requeues the jobs whose worker vanished (lease expired; on SQLite also a worker process
    /// of this host that no longer exists, so a restarted `rft serve` resumes at once).
    /// Returns whether the database was unavailable.
    fn sweep(&self) -> bool {
        let gone = abandoned_by(&self.store);
        let mut outage = false;
        match self
            .store
            .requeue_expired::<FineTuningJob>("job", "running", &gone, |j| {
                j.status = JobStatus::Queued;
            }) {
            Ok(moved) => {
                for id in moved {
                    tracing::warn!(job = %id, "its worker stopped: requeued to resume from its latest state");
                }
            }
            Err(e) => {
                outage |= e.is_unavailable();
                tracing::warn!("cannot look for abandoned jobs: {e}");
            }
        }
        // A job being validated by a worker that vanished goes back to validation.
        if let Err(e) =
            self.store
                .requeue_expired::<FineTuningJob>("job", "validating_files", &gone, |_| {})
        {
            outage |= e.is_unavailable();
        }
        outage
    }

    /// Fails the job a panic interrupted, so it is not picked up again and again.
    fn recover_from_panic(&self, message: &str) {
        let current = self.running().take().map(|(id, _)| id);
        tracing::error!("the worker recovered from a panic: {message}");
        if let Some(id) = current {
            let error = JobError {
                code: "internal_error".into(),
                message: "The trainer stopped on an internal error; the server log has the details. Create the job again.".into(),
                param: None,
            };
            if let Err(e) = self.fail(&id, None, error) {
                tracing::error!(job = %id, "cannot record the failure: {e}");
            }
        }
    }

    /// Validates or runs one job; false when there was nothing to do.
    fn next_step(&self) -> Result<bool, StoreError> {
        let owner = &self.settings.id;
        let lease = self.settings.lease;
        if let Some((job, lease)) = self.store.claim::<FineTuningJob>(
            "job",
            JobStatus::ValidatingFiles.as_str(),
            owner,
            lease,
            |_| {},
        )? {
            // Held for the whole validation (a training file on S3 may take a while to fetch);
            // registered, so a panic in it fails the job instead of looping.
            let control = Arc::new(JobControl::default());
            *self.running() = Some((job.id.clone(), control.clone()));
            let outcome = self.with_heartbeat(&lease, &control, |_| self.validate(&job, &lease));
            *self.running() = None;
            let _ = self.store.release(&lease);
            outcome?;
            return Ok(true);
        }
        let control = Arc::new(JobControl::default());
        control.quiet_resume.store(true, Ordering::SeqCst);
        let claimed = self.store.claim::<FineTuningJob>(
            "job",
            JobStatus::Queued.as_str(),
            owner,
            lease,
            |j| j.status = JobStatus::Running,
        )?;
        let Some((job, lease)) = claimed else {
            return Ok(false);
        };
        // A pause or cancel made through this process from here on finds the control; one made
        // through another process (or in the instant before) reaches it at the first heartbeat,
        // which renews at once.
        *self.running() = Some((job.id.clone(), control.clone()));
        let outcome = self.with_heartbeat(&lease, &control, |lost| {
            self.train(&job, &lease, &control, lost)
        });
        *self.running() = None;
        let _ = self.store.release(&lease);
        outcome?;
        Ok(true)
    }

    /// Runs `work` while a heartbeat thread renews `lease` (at once, then every third of it, and
    /// every second while renewals fail) and passes on what it reads: a status that is not
    /// `running` pauses `control`'s job; a lost lease sets the flag `work` is given and pauses
    /// it too. The heartbeat ends however `work` ends, a panic included.
    fn with_heartbeat<T>(
        &self,
        lease: &Lease,
        control: &JobControl,
        work: impl FnOnce(&AtomicBool) -> T,
    ) -> T {
        let done = AtomicBool::new(false);
        let lost = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| self.heartbeat(lease, control, &done, &lost));
            // The scope waits for the heartbeat, which stops only once this is set.
            let _stop_heartbeat = SetOnDrop(&done);
            work(&lost)
        })
    }

    /// Reads both files as the trainer will; a problem fails the job with its line number.
    fn validate(&self, job: &FineTuningJob, lease: &Lease) -> Result<(), StoreError> {
        let id = job.id.as_str();
        let mut failure = None;
        let files = [
            ("training_file", Some(&job.training_file)),
            ("validation_file", job.validation_file.as_ref()),
        ];
        for (param, file_id) in files {
            let Some(file_id) = file_id else {
                continue;
            };
            note(
                &self.store,
                id,
                EventLevel::Info,
                format!("Validating {param} {file_id}"),
            );
            let read = job_storage::ensure_file(&self.store, &self.blobs, file_id).and_then(|()| {
                rft_train::dataset::read_dataset(&self.store.file_path(file_id)).map(|_| ())
            });
            if let Err(e) = read {
                failure = Some(self.describe_failure(job, &e));
                break;
            }
        }
        match failure {
            None => {
                let moved = self
                    .store
                    .modify_object_leased::<FineTuningJob, ()>(lease, |j| {
                        if j.status != JobStatus::ValidatingFiles {
                            return Err(());
                        }
                        j.status = JobStatus::Queued;
                        Ok(())
                    })?;
                if matches!(moved, Some(Ok(_))) {
                    note(
                        &self.store,
                        id,
                        EventLevel::Info,
                        "Files validated, moving job to queued state",
                    );
                }
            }
            Some(error) => self.fail(id, Some(lease), error)?,
        }
        Ok(())
    }

    /// Moves the leased job from `from` to `to`; does nothing if the user changed the status
    /// meanwhile or the lease was lost.
    fn set_status_unless_changed(
        &self,
        lease: &Lease,
        from: JobStatus,
        to: JobStatus,
    ) -> Result<bool, StoreError> {
        let changed = retrying("updating a job", || {
            self.store
                .modify_object_leased::<FineTuningJob, ()>(lease, |j| {
                    if j.status != from {
                        return Err(());
                    }
                    j.status = to;
                    Ok(())
                })
        })?;
        Ok(matches!(changed, Some(Ok(_))))
    }

    /// Fails job `id` (under `lease` when one is held: a lost lease changes nothing).
    fn fail(&self, id: &str, lease: Option<&Lease>, error: JobError) -> Result<(), StoreError> {
        tracing::warn!(job = %id, "failed: {}", error.message);
        let text = format!("Job failed: {}", error.message);
        let change = |j: &mut FineTuningJob| -> Result<(), ()> {
            if j.status.is_final() {
                return Err(());
            }
            j.status = JobStatus::Failed;
            j.error = Some(error.clone());
            j.finished_at = Some(now());
            Ok(())
        };
        let changed = retrying("failing a job", || match lease {
            Some(lease) => self.store.modify_object_leased(lease, change),
            None => self.store.modify_object(id, change),
        })?;
        if matches!(changed, Some(Ok(_))) {
            note(&self.store, id, EventLevel::Error, text);
        }
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
                let blob = self.store.file_path(file_id).display().to_string();
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
            TrainError::Storage(_) => "storage_error",
            _ => "training_error",
        };
        if param.is_none() && matches!(e, TrainError::Model(_)) {
            param = Some("model".into());
        }
        // Where the job's progress is kept failed: the details (addresses, buckets) stay in the
        // log; the job object says what failed.
        if let TrainError::Storage(detail) = e {
            tracing::error!(job = %job.id, "storage failed: {detail}");
            let what = if detail.contains("(blob store)") {
                "the blob store"
            } else {
                "the database"
            };
            return JobError {
                code: code.into(),
                message: format!(
                    "Storage failed: {what} did not take the job's progress after its retries; the states saved before it are complete, and the server log has the details."
                ),
                param: None,
            };
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
        // Without a shared folder, versions are written to this worker's data folder and
        // published through the blob store.
        let (adapter_dir, publisher) = match &settings.adapter_dir {
            Some(dir) => (dir.clone(), None),
            None => (
                self.store.root().join("rollout-adapters"),
                Some(Arc::new(job_storage::BlobAdapters {
                    blobs: self.blobs.clone(),
                })
                    as Arc<dyn rft_train::rollouts::AdapterPublisher>),
            ),
        };
        rft_train::rollouts::RemoteRollouts::new(rft_train::rollouts::RemoteConfig {
            urls: settings.urls.clone(),
            admin_urls: settings.admin_urls.clone(),
            adapter_dir,
            publisher,
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

    /// Renews `lease` every third of its duration while the job runs, and passes on what it
    /// reads: a status other than `running` (a pause or cancel through any API process) or a
    /// lost lease stops the trainer at its next step boundary.
    fn heartbeat(&self, lease: &Lease, control: &JobControl, done: &AtomicBool, lost: &AtomicBool) {
        let every = self.settings.lease / 3;
        // Renew at once: the claim's lease may have run a while already.
        let mut wait = Duration::ZERO;
        let mut last = Instant::now();
        while !done.load(Ordering::SeqCst) {
            if last.elapsed() < wait {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            last = Instant::now();
            wait = every;
            match self.store.renew(lease, self.settings.lease) {
                Ok(Some(body)) => {
                    let status = serde_json::from_value::<StatusOf>(body).map(|s| s.status);
                    if !matches!(status, Ok(JobStatus::Running | JobStatus::ValidatingFiles)) {
                        control.pause.store(true, Ordering::SeqCst);
                    }
                }
                Ok(None) => {
                    tracing::warn!(job = %lease.id, "lease lost: another worker runs the job now; stopping");
                    lost.store(true, Ordering::SeqCst);
                    control.pause.store(true, Ordering::SeqCst);
                    return;
                }
                // The database is away: keep working, and try again every second, so the lease
                // is renewed as soon as it is back (before other workers' sweepers, which wait a
                // lease after an outage of their own).
                Err(e) => {
                    tracing::warn!(job = %lease.id, "cannot renew the lease: {e}");
                    wait = Duration::from_secs(1).min(every);
                }
            }
        }
    }

    fn train(
        &self,
        job: &FineTuningJob,
        lease: &Lease,
        control: &Arc<JobControl>,
        lost: &AtomicBool,
    ) -> Result<(), StoreError> {
        let id = job.id.clone();
        let dir = self.store.job_dir(&id);
        let prepared = (|| -> Result<(CreateJob, Option<usize>), TrainError> {
            for file in [Some(&job.training_file), job.validation_file.as_ref()]
                .into_iter()
                .flatten()
            {
                job_storage::ensure_file(&self.store, &self.blobs, file)?;
            }
            std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
                path: dir.clone(),
                source,
            })?;
            let resumed = job_storage::restore(&self.store, &self.blobs, &id, &dir)?;
            // The trainer takes its job id from job.json, so its events and model names use
            // ours (a fetched one has it already).
            if !dir.join("job.json").is_file() {
                let record = serde_json::to_string(&TrainerJobId { id: &id }).unwrap_or_default();
                rft_types::paths::write_atomic(&dir.join("job.json"), record.as_bytes()).map_err(
                    |source| TrainError::Io {
                        path: dir.clone(),
                        source,
                    },
                )?;
            }
            Ok((self.job_request(job)?, resumed))
        })();
        let (request, resumed) = match prepared {
            Ok(p) => p,
            Err(e) => return self.fail(&id, Some(lease), self.describe_failure(job, &e)),
        };
        if resumed.is_none() {
            // Keyed: a job taken over before its first saved step says it once.
            let _ = retrying("writing an event", || {
                job_storage::write_event(
                    &self.store,
                    &id,
                    "server-started",
                    EventLevel::Info,
                    "Fine-tuning job started".into(),
                    rft_types::api::event::EventBody::Message {},
                )
            });
        }
        tracing::info!(job = %id, worker = %self.settings.id, resumed_after = ?resumed, "training");
        let local = rft_train::rollouts::LocalRollouts;
        let remote = match self.remote_rollouts(&id) {
            Ok(remote) => remote,
            Err(e) => return self.fail(&id, Some(lease), self.describe_failure(job, &e)),
        };
        let rollouts: &dyn rft_train::rollouts::RolloutEngine = match &remote {
            Some(remote) => remote,
            None => &local,
        };
        let store = self.store.clone();
        let trainer_record = dir.join("job.json");
        let hyper_lease = lease.clone();
        let mut sink = StoreSink {
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            job_id: id.clone(),
            lease: lease.clone(),
            lease_duration: self.settings.lease,
            // What a previous worker published (and this one restored) is there already, and
            // goes when the trainer drops it.
            published: rft_train::checkpoints::read_checkpoints(&dir)
                .iter()
                .map(|c| format!("checkpoints/step-{}", c.step_number))
                .collect(),
            // After the trainer's first event its job.json holds the resolved hyperparameters.
            on_first_event: Some(Box::new(move || {
                if let Ok(text) = std::fs::read_to_string(&trainer_record) {
                    if let Ok(trainer) = serde_json::from_str::<TrainerJob>(&text) {
                        let _ =
                            store.modify_object_leased::<FineTuningJob, ()>(&hyper_lease, |j| {
                                j.hyperparameters = trainer.hyperparameters;
                                j.fine_tuned_model = None;
                                Ok(())
                            });
                    }
                }
            })),
        };
        let result = run_job_with(
            &self.host,
            rollouts,
            &request,
            &dir,
            control,
            Some(&mut sink),
            &mut |_| {},
        );
        if lost.load(Ordering::SeqCst)
            || matches!(&result, Err(TrainError::Storage(m)) if m == LEASE_LOST)
        {
            tracing::warn!(job = %id, "stopped: another worker took the job over");
            return Ok(());
        }
        match result {
            Ok(summary) if summary.outcome == JobOutcome::Succeeded => {
                let trained_tokens = trained_tokens(&self.store, &id);
                let model = summary.fine_tuned_model.clone();
                retrying("recording the job's success", || {
                    self.store
                        .modify_object_leased::<FineTuningJob, ()>(lease, |j| {
                            if !j.status.is_final() {
                                j.status = JobStatus::Succeeded;
                                j.fine_tuned_model = Some(model.clone());
                                j.finished_at = Some(now());
                                j.trained_tokens = Some(trained_tokens);
                            }
                            Ok(())
                        })
                })?;
                tracing::info!(job = %id, "succeeded: {model}");
            }
            Ok(summary) => {
                let status = retrying("reading a job", || {
                    self.store.get_object::<FineTuningJob>("job", &id)
                })?
                .map(|j| j.status);
                if status == Some(JobStatus::Cancelled) {
                    job_storage::note_once(
                        &self.store,
                        &id,
                        job_storage::CANCELLED_KEY,
                        "Job cancelled",
                    );
                } else if self.stopping.load(Ordering::SeqCst) && status == Some(JobStatus::Running)
                {
                    note(
                        &self.store,
                        &id,
                        EventLevel::Info,
                        format!(
                            "The server stopped; the job was checkpointed after step {} and resumes when a worker starts again",
                            summary.steps
                        ),
                    );
                    self.set_status_unless_changed(lease, JobStatus::Running, JobStatus::Queued)?;
                } else if status == Some(JobStatus::Running) {
                    // Paused by a control we no longer know of: record it as paused.
                    self.set_status_unless_changed(lease, JobStatus::Running, JobStatus::Paused)?;
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
                    note(
                        &self.store,
                        &id,
                        EventLevel::Info,
                        "Waiting for model memory: the models in use fill the server's budget (rft serve --max-model-gib); the job starts when one is released",
                    );
                }
                self.set_status_unless_changed(lease, JobStatus::Running, JobStatus::Queued)?;
                let (flag, cv) = &self.wake;
                let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
                let _ = cv
                    .wait_timeout(guard, MEMORY_RETRY)
                    .unwrap_or_else(|e| e.into_inner());
                return Ok(());
            }
            Err(e) => {
                let error = self.describe_failure(job, &e);
                self.fail(&id, Some(lease), error)?;
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
        let path = |id: &str| self.store.file_path(id).display().to_string();
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

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the server writes into a fresh job folder's `job.json`: the trainer takes its job id
/// from it, so its events and model names use the server's.
#[derive(serde::Serialize)]
struct TrainerJobId<'a> {
    id: &'a str,
}

/// The status of a job body a lease renewal returns.
#[derive(serde::Deserialize)]
struct StatusOf {
    status: JobStatus,
}

/// What the server reads back from the trainer's `job.json`: the resolved hyperparameters.
#[derive(serde::Deserialize)]
struct TrainerJob {
    hyperparameters: HyperparametersRequest,
}

/// Completion tokens sampled for training, summed over the metrics events.
fn trained_tokens(store: &Store, id: &str) -> u64 {
    job_storage::events(store, id)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.metrics()?.train.as_ref())
        .map(|t| t.completion_tokens_count as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::judge_gone;

    #[test]
    fn only_a_dead_process_of_this_host_boot_and_namespace_is_gone() {
        let alive = |pid: u32| pid == 200;
        let judge = |owner: &str| judge_gone(owner, "node-a", "b00t.4026", 100, alive);
        // This host, boot and namespace: gone exactly when its process is.
        assert!(judge("node-a:300:abcd1234:b00t.4026"));
        assert!(!judge("node-a:200:abcd1234:b00t.4026"));
        assert!(!judge("node-a:100:abcd1234:b00t.4026"), "this process");
        // Another namespace on the same host name (host networking): not ours to judge.
        assert!(!judge("node-a:300:abcd1234:b00t.9999"));
        // An earlier boot of this host: every process of it has stopped.
        assert!(judge("node-a:200:abcd1234:0ld0.4026"));
        // Another host, an older owner format, garbage: left to the lease's expiry.
        assert!(!judge("node-b:300:abcd1234:b00t.4026"));
        assert!(!judge("node-a:300:abcd1234"));
        assert!(!judge("node-a:x:abcd1234:b00t.4026"));
        assert!(!judge(""));
    }
}
