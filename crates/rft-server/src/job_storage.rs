//! Where a job's progress lives beyond the worker that runs it: its events in the database
//! (every API process lists them; keys make each write idempotent), its state, checkpoints and
//! final adapter in the blob store (`jobs/<job id>/…`, each folder with its manifest written
//! last). The worker trains in a local working copy of the job folder (`<data>/jobs/<id>`);
//! with the default local blob store that folder *is* the blob store's, and copying is skipped.
//!
//! The order at the end of a step is what makes a takeover exact: the trainer writes the
//! step's events (keyed `step-N/…`), then [`StoreSink::step_saved`] publishes the state as
//! `jobs/<id>/state/step-N/` (manifest last) and renews the lease. A worker killed anywhere in
//! between leaves either state N−1 (the step is retrained, and its events, written again under
//! the same keys, are dropped) or state N (the step's events are all there). A resumed job
//! starts from the newest state with a manifest, never from a half-written one.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rft_store::blobs::Blobs;
use rft_store::{Lease, Store, StoreError};
use rft_train::events::EventSink;
use rft_train::TrainError;
use rft_types::api::checkpoint::Checkpoint;
use rft_types::api::event::{EventBody, EventLevel, JobEvent};

/// How long a write of an event or a status waits out a database outage before it fails.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(180);
/// The largest `checkpoints.jsonl` read from the blob store.
const MAX_LIST_BYTES: u64 = 16 << 20;

/// Runs `f`, a wait on the blob store, where it may block: called from a request handler on the
/// server's multi-threaded runtime, the thread first hands its other tasks to the runtime
/// (`block_in_place`), so a slow S3 fetch stalls no other request; elsewhere it just runs.
fn off_async<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs `f` again while the database is unavailable (restarting, say), with backoff, for up
/// to [`OUTAGE_PATIENCE`]; any other error at once.
pub(crate) fn retrying<T>(
    what: &str,
    mut f: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if e.is_unavailable() && start.elapsed() < OUTAGE_PATIENCE => {
                attempt += 1;
                let wait = rft_grade::http::backoff(
                    Duration::from_millis(400),
                    Duration::from_secs(5),
                    attempt,
                );
                tracing::warn!("{what}: {e}; trying again in {:.1} s", wait.as_secs_f64());
                std::thread::sleep(wait);
            }
            other => return other,
        }
    }
}

/// An event's id: its job and its database sequence number, so ids are unique and increase
/// whichever process wrote them.
fn event_id(job_id: &str, seq: i64) -> String {
    format!("ftevent-{}-{seq:06}", job_id.trim_start_matches("ftjob-"))
}

/// Writes an event of job `job_id` under `key` (a second write of the key returns the first).
pub(crate) fn write_event(
    store: &Store,
    job_id: &str,
    key: &str,
    level: EventLevel,
    message: String,
    body: EventBody,
) -> Result<JobEvent, StoreError> {
    let (stored, _) = store.append_event(job_id, key, |seq| {
        event_json(job_id, seq, level, message, body)
    })?;
    parse_event(store, job_id, stored)
}

/// [`write_event`] under `lease` (its job's): `None` once the lease is not this worker's.
pub(crate) fn write_event_leased(
    store: &Store,
    lease: &Lease,
    key: &str,
    level: EventLevel,
    message: String,
    body: EventBody,
) -> Result<Option<JobEvent>, StoreError> {
    let job_id = lease.id.as_str();
    let written = store.append_event_leased(lease, key, |seq| {
        event_json(job_id, seq, level, message, body)
    })?;
    written
        .map(|(stored, _)| parse_event(store, job_id, stored))
        .transpose()
}

/// The stored JSON of a new event, given the sequence number the database gave it.
fn event_json(
    job_id: &str,
    seq: i64,
    level: EventLevel,
    message: String,
    body: EventBody,
) -> serde_json::Value {
    let event = JobEvent {
        id: event_id(job_id, seq),
        object: JobEvent::OBJECT.into(),
        created_at: crate::now(),
        level,
        message,
        body,
    };
    serde_json::to_value(&event).unwrap_or_default()
}

/// A stored event as the API's type.
fn parse_event(
    store: &Store,
    job_id: &str,
    stored: rft_store::StoredEvent,
) -> Result<JobEvent, StoreError> {
    serde_json::from_value(stored.body).map_err(|e| StoreError::Corrupt {
        path: store.describe().into(),
        id: event_id(job_id, stored.seq),
        message: e.to_string(),
    })
}

/// Writes a one-off message event (the API's "Created", "Job cancelled", …).
pub(crate) fn message(
    store: &Store,
    job_id: &str,
    level: EventLevel,
    message: impl Into<String>,
) -> Result<JobEvent, StoreError> {
    let key = format!("message-{}", crate::new_id(""));
    write_event(
        store,
        job_id,
        &key,
        level,
        message.into(),
        EventBody::Message {},
    )
}

/// [`message`], logged instead of failing: these messages never decide a job's fate.
pub(crate) fn note(store: &Store, job_id: &str, level: EventLevel, text: impl Into<String>) {
    if let Err(e) = message(store, job_id, level, text) {
        tracing::warn!(job = %job_id, "cannot record an event: {e}");
    }
}

/// The key of a job's "Job cancelled" event, which the API and the worker may both write.
pub(crate) const CANCELLED_KEY: &str = "cancelled";

/// [`note`] under `key`: written once, whoever writes it first.
pub(crate) fn note_once(store: &Store, job_id: &str, key: &str, text: &str) {
    let written = write_event(
        store,
        job_id,
        key,
        EventLevel::Info,
        text.to_owned(),
        EventBody::Message {},
    );
    if let Err(e) = written {
        tracing::warn!(job = %job_id, "cannot record an event: {e}");
    }
}

/// Job `job_id`'s events, oldest first.
pub(crate) fn events(store: &Store, job_id: &str) -> Result<Vec<JobEvent>, StoreError> {
    store
        .events(job_id)?
        .into_iter()
        .map(|stored| parse_event(store, job_id, stored))
        .collect()
}

/// Whether the blob store's folder for jobs is the data folder itself (the default).
pub(crate) fn blobs_are_local(store: &Store, blobs: &Blobs) -> bool {
    blobs.local_root().is_some_and(|root| root == store.root())
}

/// A storage failure, saying which store failed (the job's public error names it).
fn train_error(what: &str, e: impl std::fmt::Display) -> TrainError {
    let store = if what.starts_with("writing an event") || what.starts_with("renewing") {
        "database"
    } else {
        "blob store"
    };
    TrainError::Storage(format!("{what} ({store}): {e}"))
}

/// The steps of job `job_id`'s states in the blob store, each with whether it is complete
/// (its manifest written), in no particular order.
fn published_states(blobs: &Blobs, job_id: &str) -> Result<Vec<(usize, bool)>, TrainError> {
    let prefix = format!("jobs/{job_id}/state/step-");
    let listed = blobs
        .list(&format!("jobs/{job_id}/state"))
        .map_err(|e| train_error("listing the job's saved states", e))?;
    let mut states: std::collections::BTreeMap<usize, bool> = Default::default();
    for (key, _) in &listed {
        let Some((step, file)) = key.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else {
            continue;
        };
        if let Ok(step) = step.parse() {
            *states.entry(step).or_default() |= file == "MANIFEST.json";
        }
    }
    Ok(states.into_iter().collect())
}

/// The newest complete state of job `job_id` in the blob store: its step.
fn newest_state(blobs: &Blobs, job_id: &str) -> Result<Option<usize>, TrainError> {
    Ok(published_states(blobs, job_id)?
        .into_iter()
        .filter(|&(_, complete)| complete)
        .map(|(step, _)| step)
        .max())
}

/// Makes the local working folder `dir` of job `job_id` match what the blob store holds before
/// the trainer resumes it: the newest complete state becomes `checkpoints/latest` (a newer
/// local one, saved but never published, is dropped: its step's events may be missing), and on
/// a remote blob store the checkpoints list, the kept checkpoints and the trainer's `job.json`
/// are fetched. Returns the step the job resumes after.
pub(crate) fn restore(
    store: &Store,
    blobs: &Blobs,
    job_id: &str,
    dir: &Path,
) -> Result<Option<usize>, TrainError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TrainError::Io { path, source }
    };
    let checkpoints = dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).map_err(io(&checkpoints))?;
    let newest = newest_state(blobs, job_id)?;
    for stale in ["latest", "latest.new", "latest.old"] {
        let path = checkpoints.join(stale);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    if let Some(step) = newest {
        let prefix = format!("jobs/{job_id}/state/step-{step}");
        blobs
            .fetch_dir(&prefix, &checkpoints.join("latest"))
            .map_err(|e| train_error("fetching the job's saved state", e))?;
    }
    if !blobs_are_local(store, blobs) {
        for name in ["job.json", "checkpoints/checkpoints.jsonl"] {
            blobs
                .get_file(&format!("jobs/{job_id}/{name}"), &dir.join(name))
                .map_err(|e| train_error("fetching the job's records", e))?;
        }
        for checkpoint in rft_train::checkpoints::read_checkpoints(dir) {
            let rel = format!("checkpoints/step-{}", checkpoint.step_number);
            blobs
                .fetch_dir(&format!("jobs/{job_id}/{rel}"), &dir.join(&rel))
                .map_err(|e| train_error("fetching a checkpoint", e))?;
        }
        // The samples too: publishing mirrors the local folder, and would drop the earlier ones.
        sync_samples(store, blobs, job_id);
    }
    Ok(newest)
}

/// The trainer's events and saved states, into the database and the blob store, under a lease.
pub(crate) struct StoreSink {
    pub(crate) store: Arc<Store>,
    pub(crate) blobs: Blobs,
    pub(crate) job_id: String,
    pub(crate) lease: Lease,
    pub(crate) lease_duration: Duration,
    /// Checkpoint folders already in the blob store.
    pub(crate) published: HashSet<String>,
    /// Called once with the trainer's `job.json` after its first event.
    pub(crate) on_first_event: Option<Box<dyn FnOnce() + Send>>,
}

impl StoreSink {
    fn publish(&mut self, prefix: &str, dir: &Path) -> Result<(), TrainError> {
        self.blobs
            .publish_dir(prefix, dir)
            .map(|_| ())
            .map_err(|e| train_error("saving to the blob store", e))
    }

    /// Mirrors the job folder's `samples/` (which keeps only its latest steps) to the blob
    /// store: new and changed files up, files the folder dropped removed.
    fn publish_samples(&self, samples: &Path) -> Result<(), String> {
        let prefix = format!("jobs/{}/samples", self.job_id);
        let remote: std::collections::HashMap<String, u64> = self
            .blobs
            .list(&prefix)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|(key, size)| Some((key.rsplit('/').next()?.to_owned(), size)))
            .collect();
        let mut local = HashSet::new();
        if let Ok(entries) = std::fs::read_dir(samples) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if !path.is_file() || name.contains(".tmp-") {
                    continue;
                }
                let size = entry.metadata().map(|m| m.len()).ok();
                // Step files are written once; the validation files change in place.
                if remote.get(&name).copied() != size || name.starts_with("valid-") {
                    self.blobs
                        .put_file(&format!("{prefix}/{name}"), &path)
                        .map_err(|e| e.to_string())?;
                }
                local.insert(name);
            }
        }
        for name in remote.keys().filter(|n| !local.contains(*n)) {
            let _ = self.blobs.delete(&format!("{prefix}/{name}"));
        }
        Ok(())
    }

    /// Stops the job if its lease was lost: another worker runs it now.
    fn check_lease(&self) -> Result<(), TrainError> {
        let held = retrying("renewing the job's lease", || {
            self.store.renew(&self.lease, self.lease_duration)
        })
        .map_err(|e| train_error("renewing the job's lease", e))?;
        match held {
            Some(_) => Ok(()),
            None => Err(TrainError::Storage(LEASE_LOST.into())),
        }
    }
}

/// The message of the error that stops a worker whose job was taken over.
pub(crate) const LEASE_LOST: &str = "the job's lease was lost: another worker runs it now";

impl EventSink for StoreSink {
    fn write(
        &mut self,
        key: &str,
        level: EventLevel,
        message: String,
        body: EventBody,
    ) -> Result<JobEvent, TrainError> {
        // Fenced by the lease: a worker whose job was requeued or taken over writes nothing.
        let event = retrying("writing an event", || {
            write_event_leased(
                &self.store,
                &self.lease,
                key,
                level,
                message.clone(),
                body.clone(),
            )
        })
        .map_err(|e| train_error("writing an event", e))?
        .ok_or_else(|| TrainError::Storage(LEASE_LOST.into()))?;
        if let Some(first) = self.on_first_event.take() {
            first();
        }
        Ok(event)
    }

    fn step_saved(&mut self, step: usize, dir: &Path) -> Result<(), TrainError> {
        let job = self.job_id.clone();
        // Before anything is written: a worker that lost the job must not touch its files.
        self.check_lease()?;
        if !blobs_are_local(&self.store, &self.blobs) {
            // The kept checkpoints (new ones uploaded once; dropped ones removed), their list,
            // and the trainer's record of the job; samples for the dashboard.
            let kept: HashSet<String> = rft_train::checkpoints::read_checkpoints(dir)
                .iter()
                .map(|c| format!("checkpoints/step-{}", c.step_number))
                .collect();
            for rel in &kept {
                if !self.published.contains(rel) {
                    self.publish(&format!("jobs/{job}/{rel}"), &dir.join(rel))?;
                    self.published.insert(rel.clone());
                }
            }
            for gone in self
                .published
                .difference(&kept)
                .cloned()
                .collect::<Vec<_>>()
            {
                let _ = self.blobs.delete_prefix(&format!("jobs/{job}/{gone}"));
                self.published.remove(&gone);
            }
            for name in ["job.json", "checkpoints/checkpoints.jsonl"] {
                let path = dir.join(name);
                if path.is_file() {
                    self.blobs
                        .put_file(&format!("jobs/{job}/{name}"), &path)
                        .map_err(|e| train_error("saving to the blob store", e))?;
                }
            }
            // Samples are the dashboard's, not the job's: a failure is logged, not fatal.
            if let Err(e) = self.publish_samples(&dir.join("samples")) {
                tracing::warn!(job = %job, "cannot publish the samples of step {step}: {e}");
            }
        }
        // The state last: a resume starts from it, so everything it implies must be there.
        self.check_lease()?;
        self.publish(
            &format!("jobs/{job}/state/step-{step}"),
            &dir.join("checkpoints/latest"),
        )?;
        // The previous state stays until this one is complete; older ones go.
        if let Ok(states) = published_states(&self.blobs, &job) {
            for (old, _) in states.into_iter().filter(|&(s, _)| s + 1 < step) {
                let _ = self
                    .blobs
                    .delete_prefix(&format!("jobs/{job}/state/step-{old}"));
            }
        }
        Ok(())
    }

    fn finished(&mut self, dir: &Path) -> Result<(), TrainError> {
        if !blobs_are_local(&self.store, &self.blobs) {
            let job = self.job_id.clone();
            self.publish(&format!("jobs/{job}/final"), &dir.join("final"))?;
        }
        self.check_lease()
    }
}

/// Job `job_id`'s kept checkpoints: from its working folder when the blob store is local, or
/// the list the worker published.
pub(crate) fn checkpoints(store: &Store, blobs: &Blobs, job_id: &str) -> Vec<Checkpoint> {
    let dir = store.job_dir(job_id);
    if blobs_are_local(store, blobs) {
        return rft_train::checkpoints::read_checkpoints(&dir);
    }
    let key = format!("jobs/{job_id}/checkpoints/checkpoints.jsonl");
    match off_async(|| blobs.get(&key, MAX_LIST_BYTES)) {
        Ok(Some(bytes)) => {
            rft_train::checkpoints::parse_checkpoints(&String::from_utf8_lossy(&bytes))
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(job = %job_id, "cannot read the checkpoints list: {e}");
            Vec::new()
        }
    }
}

/// Makes the adapter folder `rel` of job `job_id` (`final`, `checkpoints/step-N`) present in
/// the local working copy, fetching it from a remote blob store when missing; false when the
/// blob store has no complete copy.
pub(crate) fn ensure_adapter(store: &Store, blobs: &Blobs, job_id: &str, rel: &str) -> bool {
    let local = store.job_dir(job_id).join(rel);
    if blobs_are_local(store, blobs) || local.join("adapter_config.json").is_file() {
        return true;
    }
    match off_async(|| blobs.fetch_dir(&format!("jobs/{job_id}/{rel}"), &local)) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(job = %job_id, "cannot fetch the adapter {rel}: {e}");
            false
        }
    }
}

/// Makes uploaded file `file_id` present in the local data folder (a worker on another machine
/// than the API process that took the upload).
pub(crate) fn ensure_file(store: &Store, blobs: &Blobs, file_id: &str) -> Result<(), TrainError> {
    let path = store.file_path(file_id);
    if blobs_are_local(store, blobs) || path.is_file() {
        return Ok(());
    }
    match off_async(|| blobs.get_file(&format!("files/{file_id}"), &path)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TrainError::Config(format!(
            "the file {file_id} is missing from the blob store"
        ))),
        Err(e) => Err(train_error("fetching a file from the blob store", e)),
    }
}

/// The blob-store prefix of rollout adapter versions, and the `lora_path` scheme that names
/// one of them to a rollout server started with the same `--blobs`.
pub(crate) const ADAPTERS_PREFIX: &str = "adapters";
pub(crate) const BLOB_PATH_SCHEME: &str = "blob:";

/// Rollout adapter versions published through the blob store: a replica started with the same
/// `--blobs` fetches `blob:adapters/<name>` into its adapter root (no shared folder needed).
#[derive(Debug)]
pub(crate) struct BlobAdapters {
    pub(crate) blobs: Blobs,
}

impl rft_train::rollouts::AdapterPublisher for BlobAdapters {
    fn publish(&self, name: &str, dir: &Path) -> Result<String, String> {
        let key = format!("{ADAPTERS_PREFIX}/{name}");
        self.blobs
            .publish_dir(&key, dir)
            .map_err(|e| format!("the blob store: {e}"))?;
        Ok(format!("{BLOB_PATH_SCHEME}{key}"))
    }

    fn remove(&self, name: &str) {
        let _ = self
            .blobs
            .delete_prefix(&format!("{ADAPTERS_PREFIX}/{name}"));
    }
}

/// The adapter version a `blob:adapters/<name>` path names, fetched from the blob store into
/// `root/blobs/<name>` (once; versions are immutable); `None` when the path is not of that
/// form, `Err` when the blob store has no complete copy or cannot be read.
pub(crate) fn fetch_blob_adapter(
    blobs: &Blobs,
    root: &Path,
    lora_path: &str,
) -> Option<Result<std::path::PathBuf, String>> {
    let key = lora_path.strip_prefix(BLOB_PATH_SCHEME)?;
    let name = key
        .strip_prefix(&format!("{ADAPTERS_PREFIX}/"))
        .unwrap_or_default();
    // One plain name: it becomes a folder name here.
    let plain = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !plain {
        return Some(Err(format!(
            "'{lora_path}' is not a blob adapter path: expected blob:adapters/NAME (letters, digits, '-', '_', '.')"
        )));
    }
    let local = root.join("blobs").join(name);
    // One fetch at a time: loads of one version racing each other would replace the folder
    // under one another's feet; after the first, the others find it complete.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    if local.join("adapter_config.json").is_file()
        && local.join("adapter_model.safetensors").is_file()
    {
        return Some(Ok(local));
    }
    Some(match blobs.fetch_dir(key, &local) {
        Ok(Some(_)) => Ok(local),
        Ok(None) => Err(format!("the blob store has no complete adapter at {key}")),
        Err(e) => Err(format!("cannot fetch {key} from the blob store: {e}")),
    })
}

/// Brings the job's `samples/` into this process's working copy from a remote blob store (the
/// dashboard of an API process whose workers run elsewhere): files missing or of another size
/// are fetched. Logged, not fatal: the dashboard shows what is there.
pub(crate) fn sync_samples(store: &Store, blobs: &Blobs, job_id: &str) {
    if blobs_are_local(store, blobs) {
        return;
    }
    let dir = store.job_dir(job_id).join("samples");
    let listed = match blobs.list(&format!("jobs/{job_id}/samples")) {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(job = %job_id, "cannot list the job's samples: {e}");
            return;
        }
    };
    for (key, size) in listed {
        let Some(name) = key.rsplit('/').next() else {
            continue;
        };
        let path = dir.join(name);
        let have = std::fs::metadata(&path).map(|m| m.len()).ok();
        if have != Some(size) {
            if let Err(e) = blobs.get_file(&key, &path) {
                tracing::warn!(job = %job_id, "cannot fetch {name}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_adapter_paths_name_one_plain_version_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(&tmp.path().join("blobs")).unwrap();
        let root = tmp.path().join("root");
        // Not a blob path: left to the adapter root's own checks.
        assert!(fetch_blob_adapter(&blobs, &root, "/tmp/x").is_none());
        for hostile in [
            "blob:adapters/../../etc",
            "blob:adapters/a/b",
            "blob:adapters/",
            "blob:adapters/.hidden",
            "blob:other/x",
            "blob:adapters/x\0y",
            &format!("blob:adapters/{}", "a".repeat(300)),
        ] {
            match fetch_blob_adapter(&blobs, &root, hostile) {
                Some(Err(_)) => {}
                other => panic!("{hostile:?}: {other:?}"),
            }
        }
        assert!(!root.exists(), "nothing written for a refused path");
        // A version never published (or half published: no manifest) is not loaded.
        assert!(matches!(
            fetch_blob_adapter(&blobs, &root, "blob:adapters/job-v1"),
            Some(Err(m)) if m.contains("no complete adapter")
        ));
        // A published one is fetched into root/blobs/<name>.
        let version = tmp.path().join("v2");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(version.join("adapter_config.json"), "{}").unwrap();
        std::fs::write(version.join("adapter_model.safetensors"), b"weights").unwrap();
        let publisher = BlobAdapters {
            blobs: blobs.clone(),
        };
        let path =
            rft_train::rollouts::AdapterPublisher::publish(&publisher, "job-v2", &version).unwrap();
        assert_eq!(path, "blob:adapters/job-v2");
        let fetched = fetch_blob_adapter(&blobs, &root, &path).unwrap().unwrap();
        assert_eq!(fetched, root.join("blobs/job-v2"));
        assert_eq!(
            std::fs::read(fetched.join("adapter_model.safetensors")).unwrap(),
            b"weights"
        );
        rft_train::rollouts::AdapterPublisher::remove(&publisher, "job-v2");
        assert!(blobs.manifest("adapters/job-v2").unwrap().is_none());
    }
}

#[cfg(test)]
mod off_async_tests {
    use super::off_async;

    #[test]
    fn waits_run_from_handlers_from_the_blocking_pool_and_without_a_runtime() {
        assert_eq!(off_async(|| 1), 1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            // On a worker thread (a request handler).
            let handler = tokio::spawn(async { off_async(|| 2) }).await.unwrap();
            assert_eq!(handler, 2);
            // On the blocking pool (spawn_blocking).
            let pooled = tokio::task::spawn_blocking(|| off_async(|| 3))
                .await
                .unwrap();
            assert_eq!(pooled, 3);
        });
        // A current-thread runtime (where block_in_place would panic) just runs it.
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(single.block_on(async { off_async(|| 4) }), 4);
    }
}
