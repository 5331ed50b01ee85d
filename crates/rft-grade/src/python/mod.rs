//! Python graders (spec §2.7): user code `grade(sample, item) -> float`, run by a pool of
//! long-lived, sandboxed worker processes.
//!
//! Each compiled Python grader owns its workers (at most one per core by default). A worker
//! compiles the grader's source once and then grades many samples over a pipe, one JSON line
//! each way (`worker.py`). Workers never switch graders, so one grader's global state never
//! leaks into another's. A worker that crashes, times out or breaks the protocol is killed and
//! replaced on the next grade, and the grade that hit it reports the error.
//!
//! **A cap on worker processes across graders.** Every grader compiled by one [`PythonRuntime`]
//! draws its workers from a shared budget of [`PythonConfig::max_total_workers`] processes
//! (default twice the cores, `RFT_PYTHON_MAX_WORKERS`), so that many graders compiled at once
//! (the HTTP server compiles one per `graders/run` request) cannot fork hundreds of
//! interpreters. A grade that needs a new worker while the budget is spent first kills an *idle*
//! worker of another grader (it is respawned when that grader needs it again), and otherwise
//! waits for one to become idle or exit, at most the grade timeout; then it reports a
//! `worker_limit` server error. A worker holds its slot from spawn to death. The one-off probe
//! that checks each image tag's interpreter at compile time is not counted (one at a time, and
//! killed at once).
//!
//! Interpreters: `image_tag` selects an environment built by `rft setup python` under
//! `$RFT_HOME/python/<tag>`, and only the tags of [`IMAGES`] are accepted (a tag is joined into a
//! path, so anything else, such as `/tmp/x` or `../x`, could name an interpreter outside the
//! home); `RFT_PYTHON` (an operator setting) names one interpreter for every tag instead, which
//! the tests use.

mod sandbox;
mod setup;

pub use setup::{setup, SetupError, SetupOutcome, IMAGES};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::sandbox::{Limits, Sandbox};

/// The grader environment OpenAI documents, and the one OpenRFT builds by default.
pub const DEFAULT_IMAGE_TAG: &str = "2025-05-08";

/// The largest protocol line a worker may send (a reward, or an error with its details).
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// The worker's trusted bootstrap.
const WORKER_SOURCE: &str = include_str!("worker.py");

/// How Python graders run. Build one with [`PythonConfig::from_env`] and adjust fields.
#[derive(Debug, Clone)]
pub struct PythonConfig {
    /// OpenRFT's data folder (`$RFT_HOME`, default `~/.cache/openrft`); environments live in
    /// `python/<tag>/venv` beneath it.
    pub home: PathBuf,
    /// One interpreter for every `image_tag` (`RFT_PYTHON`), bypassing the built environments.
    pub interpreter: Option<PathBuf>,
    /// Worker processes per grader; default: the number of cores.
    pub workers: usize,
    /// Worker processes alive at once across every grader of a runtime
    /// (`RFT_PYTHON_MAX_WORKERS`); default: twice the number of cores. See the module docs.
    pub max_total_workers: usize,
    /// Wall-clock limit of one `grade` call; default 120 s (spec §2.7).
    pub timeout: Duration,
    /// Address-space limit of a worker; default 2 GiB (spec §2.7).
    pub memory_bytes: u64,
    /// Most characters of printed output kept for error details; default 64 KiB.
    pub output_limit: usize,
    /// Whether the kernel sandbox is required (default) or explicitly switched off by the
    /// operator (`RFT_PYTHON_SANDBOX=off`).
    pub sandbox: SandboxMode,
}

/// Whether workers run in the kernel sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Refuse to run Python graders where the sandbox cannot be applied.
    Required,
    /// Run without the sandbox: only for hosts that isolate graders some other way.
    Disabled,
}

impl PythonConfig {
    /// Defaults plus the environment: `RFT_HOME`, `RFT_PYTHON`, `RFT_PYTHON_WORKERS`,
    /// `RFT_PYTHON_MAX_WORKERS`, `RFT_PYTHON_TIMEOUT_SECS`, `RFT_PYTHON_SANDBOX=off`.
    pub fn from_env() -> PythonConfig {
        let env_number = |key: &str| std::env::var(key).ok().and_then(|v| v.parse::<u64>().ok());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PythonConfig {
            home: rft_home(),
            interpreter: std::env::var_os("RFT_PYTHON").map(PathBuf::from),
            workers: env_number("RFT_PYTHON_WORKERS")
                .map(|n| n.max(1) as usize)
                .unwrap_or(cores),
            max_total_workers: env_number("RFT_PYTHON_MAX_WORKERS")
                .map(|n| n.clamp(1, 1 << 16) as usize)
                .unwrap_or(2 * cores),
            timeout: Duration::from_secs(env_number("RFT_PYTHON_TIMEOUT_SECS").unwrap_or(120)),
            memory_bytes: 2 << 30,
            output_limit: 64 * 1024,
            sandbox: match std::env::var("RFT_PYTHON_SANDBOX").as_deref() {
                Ok("off") => SandboxMode::Disabled,
                _ => SandboxMode::Required,
            },
        }
    }

    /// The folder `rft setup python` builds the environment of `tag` in. Only meaningful for a
    /// tag of [`IMAGES`]; interpreters are resolved through [`check_image_tag`] and a check that
    /// the folder stays inside the home.
    pub fn environment_dir(&self, tag: &str) -> PathBuf {
        self.home.join("python").join(tag)
    }

    /// [`PythonConfig::environment_dir`] for a known tag whose folder (links resolved, where it
    /// exists) lies inside the home: defence in depth behind `rft_grade::validate`.
    fn checked_environment_dir(&self, tag: &str) -> Result<PathBuf, PythonSetupError> {
        check_image_tag(tag)?;
        let mut components = Path::new(tag).components();
        let single_name = matches!(
            (components.next(), components.next()),
            (Some(Component::Normal(_)), None)
        );
        let base = self.home.join("python");
        let dir = base.join(tag);
        let outside = || PythonSetupError::OutsideHome {
            tag: tag.to_owned(),
            path: dir.clone(),
        };
        if !single_name || !dir.starts_with(&base) {
            return Err(outside());
        }
        if let (Ok(home), Ok(real)) = (
            std::fs::canonicalize(&self.home),
            std::fs::canonicalize(&dir),
        ) {
            if !real.starts_with(&home) {
                return Err(outside());
            }
        }
        Ok(dir)
    }
}

/// Accepts only the image tags OpenRFT knows ([`IMAGES`]); the error names the field and lists
/// them.
pub fn check_image_tag(tag: &str) -> Result<(), PythonSetupError> {
    if IMAGES.iter().any(|(known, _)| *known == tag) {
        return Ok(());
    }
    // The tag is echoed back; a hostile one may be huge.
    let mut shown: String = tag.chars().take(100).collect();
    if shown.len() < tag.len() {
        shown.push_str("...");
    }
    Err(PythonSetupError::UnknownImageTag {
        tag: shown,
        known: IMAGES.map(|(t, _)| t).join(", "),
    })
}

/// OpenRFT's data folder (`$RFT_HOME`, default `~/.cache/openrft`).
pub fn rft_home() -> PathBuf {
    rft_types::paths::rft_home()
}

/// Why Python graders cannot run at all on this host or with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum PythonSetupError {
    /// The environment for an image tag has not been built.
    #[error("the Python grader environment {tag:?} is not set up ({path} is missing); run `rft setup python --tag {tag}`, or set RFT_PYTHON to an interpreter")]
    MissingEnvironment {
        /// The image tag.
        tag: String,
        /// The interpreter path that was expected.
        path: PathBuf,
    },
    /// The interpreter could not be started or inspected.
    #[error("cannot run the Python interpreter {path}: {message}")]
    Interpreter {
        /// The interpreter.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `image_tag` is not one of [`IMAGES`].
    #[error("unknown image_tag {tag:?}; accepted image_tag values: {known}")]
    UnknownImageTag {
        /// The requested tag (shortened when long).
        tag: String,
        /// The accepted tags.
        known: String,
    },
    /// The environment folder of a tag resolves outside `$RFT_HOME`.
    #[error("image_tag {tag:?}: the environment folder {path} resolves outside the RFT home; refusing to run its interpreter")]
    OutsideHome {
        /// The image tag.
        tag: String,
        /// The folder.
        path: PathBuf,
    },
    /// The kernel sandbox is unavailable and the operator has not opted out.
    #[error("refusing to run Python graders: the sandbox cannot be applied on this host ({0}); fix the host, or set RFT_PYTHON_SANDBOX=off to run graders unsandboxed at your own risk")]
    SandboxUnavailable(String),
}

/// The outcome of one Python grade.
#[derive(Debug, Clone, PartialEq)]
pub enum PythonOutcome {
    /// `grade` returned this finite number.
    Reward(f64),
    /// The user's code failed: it raised, returned a non-number, timed out, ran out of memory
    /// or killed its worker. The details are a traceback or a description.
    Runtime(String),
    /// The sandbox or the worker machinery failed, not the user's code.
    Server {
        /// A short machine-readable kind, e.g. `spawn_failed`.
        kind: String,
        /// What happened.
        details: String,
    },
}

/// Starts interpreters for Python graders; shared by every grader compiled with it.
#[derive(Debug)]
pub struct PythonRuntime {
    config: PythonConfig,
    interpreters: Mutex<HashMap<String, Arc<Interpreter>>>,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct Interpreter {
    executable: PathBuf,
    sandbox: Option<Sandbox>,
}

impl PythonRuntime {
    /// A runtime with this configuration; nothing is started until a grader needs it.
    pub fn new(config: PythonConfig) -> Arc<PythonRuntime> {
        let budget = Arc::new(Budget {
            max: config.max_total_workers.max(1),
            live: Mutex::new(0),
            freed: Condvar::new(),
            pools: Mutex::new(Vec::new()),
        });
        Arc::new(PythonRuntime {
            config,
            interpreters: Mutex::new(HashMap::new()),
            budget,
        })
    }

    /// The process-wide runtime configured from the environment.
    pub fn shared() -> Arc<PythonRuntime> {
        static SHARED: OnceLock<Arc<PythonRuntime>> = OnceLock::new();
        SHARED
            .get_or_init(|| PythonRuntime::new(PythonConfig::from_env()))
            .clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &PythonConfig {
        &self.config
    }

    /// Worker processes alive now across every grader of this runtime (at most
    /// [`PythonConfig::max_total_workers`]).
    pub fn live_workers(&self) -> usize {
        *lock(&self.budget.live)
    }

    /// Compiles a grader: resolves its interpreter and sandbox. The source itself is compiled
    /// by each worker when it starts.
    pub fn compile(
        self: &Arc<Self>,
        source: &str,
        image_tag: Option<&str>,
    ) -> Result<PythonGrader, PythonSetupError> {
        let interpreter = self.interpreter(image_tag.unwrap_or(DEFAULT_IMAGE_TAG))?;
        let shared = Arc::new(PoolShared {
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                live: 0,
            }),
            available: Condvar::new(),
        });
        {
            let mut pools = lock(&self.budget.pools);
            pools.retain(|pool| pool.strong_count() > 0);
            pools.push(Arc::downgrade(&shared));
        }
        Ok(PythonGrader {
            config: self.config.clone(),
            interpreter,
            source: Arc::from(source),
            shared,
            budget: self.budget.clone(),
            load_error: OnceLock::new(),
        })
    }

    fn interpreter(&self, tag: &str) -> Result<Arc<Interpreter>, PythonSetupError> {
        check_image_tag(tag)?;
        let mut interpreters = lock(&self.interpreters);
        if let Some(found) = interpreters.get(tag) {
            return Ok(found.clone());
        }
        let path = match &self.config.interpreter {
            Some(path) => path.clone(),
            None => {
                let path = self
                    .config
                    .checked_environment_dir(tag)?
                    .join("venv/bin/python");
                if !path.exists() {
                    return Err(PythonSetupError::MissingEnvironment {
                        tag: tag.to_owned(),
                        path,
                    });
                }
                path
            }
        };
        let (executable, read_paths) = inspect_interpreter(&path)?;
        let sandbox = match self.config.sandbox {
            SandboxMode::Disabled => {
                tracing::warn!("Python graders run WITHOUT the sandbox (RFT_PYTHON_SANDBOX=off)");
                None
            }
            SandboxMode::Required => {
                let limits = Limits {
                    memory_bytes: self.config.memory_bytes,
                    cpu_seconds: self.config.timeout.as_secs() + 5,
                    file_bytes: 1 << 30,
                    open_files: 256,
                };
                let sandbox = Sandbox::new(&read_paths, limits)
                    .map_err(|e| PythonSetupError::SandboxUnavailable(e.to_string()))?;
                tracing::debug!(abi = sandbox.landlock_abi(), "Python sandbox ready");
                Some(sandbox)
            }
        };
        let interpreter = Arc::new(Interpreter {
            executable,
            sandbox,
        });
        probe(&interpreter, &self.config)?;
        interpreters.insert(tag.to_owned(), interpreter.clone());
        Ok(interpreter)
    }
}

/// Asks the (trusted, unsandboxed) interpreter where it lives, so the sandbox can allow reads
/// of exactly its installation and the system libraries.
fn inspect_interpreter(path: &Path) -> Result<(PathBuf, Vec<PathBuf>), PythonSetupError> {
    let error = |message: String| PythonSetupError::Interpreter {
        path: path.to_owned(),
        message,
    };
    let output = Command::new(path)
        .args(["-I", "-c", "import json, sys; print(json.dumps({'executable': sys.executable, 'paths': [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + sys.path}))"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| error(e.to_string()))?;
    if !output.status.success() {
        return Err(error(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let info: Value = serde_json::from_slice(&output.stdout).map_err(|e| error(e.to_string()))?;
    let executable = info["executable"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| error("it reported no sys.executable".to_owned()))?;
    let mut read_paths: Vec<PathBuf> = info["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    // The interpreter may be a link into another prefix (venvs link to their base).
    if let Ok(real) = std::fs::canonicalize(&executable) {
        if let Some(parent) = real.parent().and_then(Path::parent) {
            read_paths.push(parent.to_owned());
        }
    }
    for system in [
        "/usr/lib",
        "/usr/lib64",
        "/lib",
        "/lib64",
        "/usr/local/lib",
        "/usr/share/zoneinfo",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/sys/devices/system/cpu",
    ] {
        read_paths.push(PathBuf::from(system));
    }
    read_paths.sort();
    read_paths.dedup();
    Ok((executable, read_paths))
}

/// Starts one worker with a trivial grader, so a host that cannot sandbox fails at compile
/// time with a clear message instead of on every sample.
fn probe(interpreter: &Interpreter, config: &PythonConfig) -> Result<(), PythonSetupError> {
    let probe_source: Arc<str> = Arc::from("def grade(sample, item):\n    return 1.0\n");
    let mut worker =
        Worker::spawn(interpreter, config, &probe_source, None).map_err(|e| match e {
            WorkerError::Spawn(message) if interpreter.sandbox.is_some() => {
                PythonSetupError::SandboxUnavailable(message)
            }
            other => PythonSetupError::Interpreter {
                path: interpreter.executable.clone(),
                message: other.to_string(),
            },
        })?;
    worker.kill();
    Ok(())
}

/// A compiled Python grader and its workers.
#[derive(Debug)]
pub struct PythonGrader {
    config: PythonConfig,
    interpreter: Arc<Interpreter>,
    source: Arc<str>,
    shared: Arc<PoolShared>,
    budget: Arc<Budget>,
    /// Set when the source failed to load once: loading is deterministic, so later grades
    /// report the same error without starting a process.
    load_error: OnceLock<String>,
}

/// A grader's workers; the runtime's budget keeps a weak reference to reap idle ones.
#[derive(Debug)]
struct PoolShared {
    pool: Mutex<Pool>,
    /// Signalled when a worker of this grader becomes idle or goes away.
    available: Condvar,
}

#[derive(Debug)]
struct Pool {
    idle: Vec<Worker>,
    /// Workers in existence: idle ones plus those grading right now.
    live: usize,
}

/// Locks a mutex, going on after a panic elsewhere: every state it guards stays consistent
/// between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime-wide budget of worker processes.
///
/// Lock order: `pools`, then one grader's pool; `live` is taken last and alone (a [`Slot`] may
/// be dropped while a pool is locked).
#[derive(Debug)]
struct Budget {
    max: usize,
    live: Mutex<usize>,
    /// Signalled whenever a slot is given back.
    freed: Condvar,
    /// Every grader compiled by the runtime (dead ones are pruned as they are met).
    pools: Mutex<Vec<Weak<PoolShared>>>,
}

/// One worker process's place in the budget, given back when dropped.
#[derive(Debug)]
struct Slot {
    budget: Arc<Budget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *lock(&self.budget.live) -= 1;
        self.budget.freed.notify_all();
    }
}

impl Budget {
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut live = lock(&self.live);
        if *live >= self.max {
            return None;
        }
        *live += 1;
        Some(Slot {
            budget: self.clone(),
        })
    }

    /// Kills one idle worker of a grader other than `own`; returns whether there was one.
    fn reap_idle(&self, own: &Arc<PoolShared>) -> bool {
        let victim = {
            let mut pools = lock(&self.pools);
            pools.retain(|pool| pool.strong_count() > 0);
            pools
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|shared| !Arc::ptr_eq(shared, own))
                .find_map(|shared| {
                    let mut pool = lock(&shared.pool);
                    let worker = pool.idle.pop()?;
                    pool.live -= 1;
                    shared.available.notify_one();
                    Some(worker)
                })
        };
        match victim {
            Some(mut worker) => {
                worker.kill();
                true
            }
            None => false,
        }
    }

    /// Waits until a slot may be free, `deadline` at the latest. Wakes at least every 50 ms,
    /// so a worker that became idle meanwhile (and can be reaped or reused) is noticed.
    fn wait(&self, deadline: Instant) {
        let live = lock(&self.live);
        if *live < self.max {
            return;
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        drop(
            self.freed
                .wait_timeout(live, wait)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

impl PythonGrader {
    /// Grades one sample. `sample` and `item` are the JSON values `grade` receives.
    pub fn grade(&self, sample: &Value, item: &Value) -> PythonOutcome {
        if let Some(details) = self.load_error.get() {
            return PythonOutcome::Runtime(details.clone());
        }
        let mut worker = match self.take_worker() {
            Ok(worker) => worker,
            Err(err) => {
                // A busy budget never counted a worker for this grade.
                if !matches!(err, WorkerError::Busy(_)) {
                    self.release(None);
                }
                if let WorkerError::Load(details) = &err {
                    let _ = self.load_error.set(details.clone());
                }
                return err.into_outcome(&self.config);
            }
        };
        let request = json!({"sample": sample, "item": item}).to_string();
        let result = worker.request(&request, self.config.timeout);
        match result {
            Ok(response) => {
                let outcome = parse_response(&response);
                self.release(Some(worker));
                outcome
            }
            Err(err) => {
                worker.kill();
                self.release(None);
                err.into_outcome(&self.config)
            }
        }
    }

    /// An idle worker of this grader, or a new one once this grader is under its own limit
    /// and the runtime's budget has (or, by reaping another grader's idle worker, makes) room.
    /// Waiting for the budget is bounded by the grade timeout.
    fn take_worker(&self) -> Result<Worker, WorkerError> {
        let deadline = Instant::now() + self.config.timeout;
        let mut pool = lock(&self.shared.pool);
        loop {
            while let Some(mut worker) = pool.idle.pop() {
                if worker.is_alive() {
                    return Ok(worker);
                }
                // It died while idle (killed from outside): not this grade's fault, so start
                // another.
                pool.live -= 1;
                drop(pool);
                worker.kill();
                pool = lock(&self.shared.pool);
            }
            if pool.live < self.config.workers {
                if let Some(slot) = self.budget.try_take() {
                    pool.live += 1;
                    drop(pool);
                    return Worker::spawn(
                        &self.interpreter,
                        &self.config,
                        &self.source,
                        Some(slot),
                    );
                }
                drop(pool);
                if !self.budget.reap_idle(&self.shared) {
                    if Instant::now() >= deadline {
                        return Err(WorkerError::Busy(self.budget.max));
                    }
                    self.budget.wait(deadline);
                }
                pool = lock(&self.shared.pool);
                continue;
            }
            // Every worker this grader may have is grading: one comes back within a timeout.
            pool = self
                .shared
                .available
                .wait(pool)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Returns a healthy worker to the pool, or records that one is gone.
    fn release(&self, worker: Option<Worker>) {
        let mut pool = lock(&self.shared.pool);
        match worker {
            Some(worker) => pool.idle.push(worker),
            None => pool.live -= 1,
        }
        self.shared.available.notify_one();
    }
}

impl Drop for PythonGrader {
    fn drop(&mut self) {
        let idle: Vec<Worker> = lock(&self.shared.pool).idle.drain(..).collect();
        for mut worker in idle {
            worker.kill();
        }
    }
}

fn parse_response(line: &str) -> PythonOutcome {
    let Ok(message) = serde_json::from_str::<Value>(line) else {
        return PythonOutcome::Server {
            kind: "protocol_error".to_owned(),
            details: "the worker sent a malformed reply".to_owned(),
        };
    };
    if let Some(reward) = message.get("reward").and_then(Value::as_f64) {
        return PythonOutcome::Reward(reward);
    }
    let details = message
        .get("details")
        .and_then(Value::as_str)
        .unwrap_or("grade() failed")
        .to_owned();
    PythonOutcome::Runtime(details)
}

#[derive(Debug)]
enum WorkerError {
    /// The process could not be started (or its sandbox applied).
    Spawn(String),
    /// The grader source failed to load: a deterministic user error.
    Load(String),
    /// No reply within the time limit.
    Timeout,
    /// The process died or closed its pipe.
    Died(String),
    /// The runtime's budget of worker processes (this many) stayed spent for a whole timeout.
    Busy(usize),
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Spawn(m) => write!(f, "cannot start the worker: {m}"),
            WorkerError::Load(m) => write!(f, "the grader source failed to load: {m}"),
            WorkerError::Timeout => f.write_str("the worker did not answer in time"),
            WorkerError::Died(m) => write!(f, "the worker died: {m}"),
            WorkerError::Busy(max) => write!(f, "all {max} Python worker processes are busy"),
        }
    }
}

impl WorkerError {
    fn into_outcome(self, config: &PythonConfig) -> PythonOutcome {
        match self {
            WorkerError::Spawn(details) => PythonOutcome::Server {
                kind: "spawn_failed".to_owned(),
                details,
            },
            WorkerError::Load(details) => PythonOutcome::Runtime(details),
            WorkerError::Timeout => PythonOutcome::Runtime(format!(
                "TimeoutError: grade() did not return within {} s; the worker was killed",
                config.timeout.as_secs_f64()
            )),
            WorkerError::Died(how) => PythonOutcome::Runtime(format!(
                "the grader's process died while grading ({how}); it may have exceeded the {} MiB memory limit, crashed the interpreter or exited",
                config.memory_bytes >> 20
            )),
            WorkerError::Busy(max) => PythonOutcome::Server {
                kind: "worker_limit".to_owned(),
                details: format!(
                    "all {max} Python worker processes of this server (RFT_PYTHON_MAX_WORKERS) stayed busy for {} s",
                    config.timeout.as_secs_f64()
                ),
            },
        }
    }
}

#[derive(Debug)]
struct Worker {
    /// The sandbox's supervisor when sandboxed (it exits as the interpreter did, with 128 + the
    /// signal when one killed it), the interpreter itself otherwise.
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Option<String>>,
    /// The worker's private folder, removed with the worker.
    workdir: PathBuf,
    sandboxed: bool,
    /// The worker's place in the runtime's budget (none for the compile-time probe); dropped,
    /// and so given back, with the worker, after the process is gone.
    _slot: Option<Slot>,
}

impl Worker {
    fn spawn(
        interpreter: &Interpreter,
        config: &PythonConfig,
        source: &Arc<str>,
        slot: Option<Slot>,
    ) -> Result<Worker, WorkerError> {
        let workdir = private_dir().map_err(|e| WorkerError::Spawn(e.to_string()))?;
        let mut command = Command::new(&interpreter.executable);
        command
            .args(["-I", "-B", "-c", WORKER_SOURCE])
            .current_dir(&workdir)
            .env_clear()
            .env("HOME", &workdir)
            .env("TMPDIR", &workdir)
            .env("LANG", "C.UTF-8")
            .env("PYTHONHASHSEED", "0")
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some(parent) = interpreter.executable.parent().and_then(Path::parent) {
            let nltk = parent.join("nltk_data");
            if nltk.is_dir() {
                command.env("NLTK_DATA", nltk);
            }
        }
        if let Some(sandbox) = &interpreter.sandbox {
            let pre_exec = sandbox
                .pre_exec(&workdir)
                .map_err(|e| WorkerError::Spawn(format!("sandbox setup: {e}")))?;
            // SAFETY: the closure only makes syscalls on memory prepared before the fork.
            unsafe { command.pre_exec(pre_exec) };
        }
        let mut child = spawn_from_lasting_thread(command).map_err(|e| {
            let _ = std::fs::remove_dir_all(&workdir);
            WorkerError::Spawn(e.to_string())
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(WorkerError::Spawn("the worker has no pipes".to_owned()));
        };
        let (sender, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                let read = (&mut reader)
                    .take(MAX_RESPONSE_BYTES)
                    .read_until(b'\n', &mut line);
                let reply = match read {
                    Ok(n) if n > 0 && line.ends_with(b"\n") => {
                        Some(String::from_utf8_lossy(&line).into_owned())
                    }
                    _ => None,
                };
                let done = reply.is_none();
                if sender.send(reply).is_err() || done {
                    return;
                }
            }
        });
        let mut worker = Worker {
            child,
            stdin,
            replies,
            workdir,
            sandboxed: interpreter.sandbox.is_some(),
            _slot: slot,
        };
        let setup = json!({"source": &**source, "output_limit": config.output_limit}).to_string();
        let reply = match worker.request(&setup, config.timeout) {
            Ok(reply) => reply,
            Err(err) => {
                worker.kill();
                return Err(match err {
                    WorkerError::Died(how) => {
                        WorkerError::Spawn(format!("the worker exited at start ({how})"))
                    }
                    other => other,
                });
            }
        };
        match serde_json::from_str::<Value>(&reply) {
            Ok(message) if message.get("loaded") == Some(&Value::Bool(true)) => Ok(worker),
            Ok(message) => {
                worker.kill();
                Err(WorkerError::Load(
                    message
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned(),
                ))
            }
            Err(_) => {
                worker.kill();
                Err(WorkerError::Spawn(
                    "the worker sent a malformed reply".to_owned(),
                ))
            }
        }
    }

    fn request(&mut self, line: &str, timeout: Duration) -> Result<String, WorkerError> {
        let sent = self
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.write_all(b"\n"))
            .and_then(|()| self.stdin.flush());
        if let Err(err) = sent {
            return Err(WorkerError::Died(self.exit_description(&err.to_string())));
        }
        match self.replies.recv_timeout(timeout) {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                Err(WorkerError::Died(self.exit_description("closed its pipe")))
            }
            Err(RecvTimeoutError::Timeout) => Err(WorkerError::Timeout),
        }
    }

    fn exit_description(&mut self, fallback: &str) -> String {
        use std::os::unix::process::ExitStatusExt;
        // Give a dying process a moment to be reaped so its signal can be named.
        for _ in 0..50 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return match (status.code(), status.signal()) {
                    (_, Some(signal)) => format!("killed by signal {signal}"),
                    // The sandbox's supervisor reports the interpreter's death by a signal as
                    // 128 + the signal, as shells do.
                    (Some(code @ 129..=192), _) if self.sandboxed => {
                        format!("killed by signal {}", code - 128)
                    }
                    (Some(code), _) => format!("exit code {code}"),
                    _ => fallback.to_owned(),
                };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        fallback.to_owned()
    }

    fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        // The worker leads its own process group, which the sandboxed interpreter shares with
        // its supervisor; kill the whole group (the interpreter also dies with its supervisor).
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: a plain syscall; the group is this worker's, which nothing else can reuse
        // while `child` is not reaped.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        } else {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}

/// Runs `command.spawn()` on one thread that lives as long as the process.
///
/// The sandbox's supervisor has `PR_SET_PDEATHSIG` towards the *thread* that forked it, not the
/// process. Forked from the grading thread, a worker would die when that thread exits: a scoped
/// thread, or a blocking-pool thread retiring after idling, would take with it a worker that sat
/// idle in the pool and that another thread may be grading with at that very moment (the grade
/// then fails as "the worker died"). Forked from a thread that never exits, workers die with the
/// server and with nothing else.
fn spawn_from_lasting_thread(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::SyncSender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rft-python-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in requests {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| sender)
    });
    let Some(spawner) = spawner else {
        return Err(std::io::Error::other(
            "the thread that starts Python workers could not be created",
        ));
    };
    let (reply, spawned) = mpsc::sync_channel(1);
    spawner
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the thread that starts Python workers is gone"))?;
    spawned
        .recv()
        .map_err(|_| std::io::Error::other("the thread that starts Python workers is gone"))?
}

/// A fresh folder only this worker may write to.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "rft-grader-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}
