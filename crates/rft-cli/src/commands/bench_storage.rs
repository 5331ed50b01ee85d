//! `rft bench storage`: the storage a deployment past one machine stands on, SQLite against
//! PostgreSQL and the local folder against S3, in one run:
//!
//! 1. claims: tiny jobs claimed, finished and released by 1, 2 and 4 workers (each with its own
//!    connection, as separate `rft worker` processes have); jobs/s and claim latency;
//! 2. lease takeover: a worker stops renewing a 1 s lease; the time until a second worker,
//!    with a sweeper, claims the job;
//! 3. blobs: `put_file`/`get_file` of an adapter-sized file and a multi-part checkpoint, and
//!    `publish_dir`/`fetch_dir` of an adapter folder;
//! 4. API reads: a job of realistic size and its 200 events, read through the store (what the
//!    handler does) and through the HTTP API of a real server.
//!
//! PostgreSQL figures come from databases the bench creates on the server `--database` names
//! (never the one it names), so it never reads or writes real data.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rft_server::{BackgroundServer, ServerConfig};
use rft_store::blobs::Blobs;
use rft_store::{Lease, Store};
use rft_types::api::event::{EventBody, EventLevel, JobEvent};
use rft_types::api::job::FineTuningJob;
use serde::{Deserialize, Serialize};

/// Arguments of `rft bench storage`.
#[derive(Debug, Args)]
pub(crate) struct BenchStorageArgs {
    /// A PostgreSQL server (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE) for the PostgreSQL
    /// columns; the bench creates fresh databases next to the one named and never touches it.
    /// Without it only SQLite is measured.
    #[arg(
        long,
        value_name = "URL",
        env = "RFT_BENCH_DATABASE_URL",
        hide_env_values = true
    )]
    pub(crate) database: Option<String>,
    /// An S3 bucket and prefix (s3://BUCKET/PREFIX; the bucket must exist), configured by the
    /// usual AWS variables, to compare with the local folder. The bench deletes what it wrote.
    #[arg(long, value_name = "URL")]
    pub(crate) blobs: Option<String>,
    /// Tiny jobs per claims trial (each worker count, each database).
    #[arg(long, default_value_t = 400)]
    pub(crate) jobs: usize,
    /// Lease takeovers per database (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) takeovers: usize,
    /// Reads per API-read measurement.
    #[arg(long, default_value_t = 500)]
    pub(crate) reads: usize,
    /// Also write the results to this file as JSON.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
}

/// Worker counts of the claims trials.
const WORKERS: [usize; 3] = [1, 2, 4];
/// The lease of the takeover trials.
const TAKEOVER_LEASE: Duration = Duration::from_secs(1);
/// How often the takeover's sweeper and second worker poll.
const TAKEOVER_POLL: Duration = Duration::from_millis(100);
/// Runs per blob measurement (the median is reported).
const BLOB_RUNS: usize = 3;
/// An adapter's size.
const ADAPTER_BYTES: usize = 8 << 20;
/// A checkpoint's size (16 parts of 8 MiB on S3).
const CHECKPOINT_BYTES: usize = 128 << 20;
/// The optimizer state of the published folder.
const OPTIMIZER_BYTES: usize = 16 << 20;
/// Events of the job the API reads.
const EVENTS: usize = 200;
/// The size the job the API reads is padded to, bytes of JSON.
const JOB_BYTES: usize = 3 << 10;

/// The job of the claims and takeover trials.
#[derive(Debug, Serialize, Deserialize)]
struct TinyJob {
    id: String,
    status: String,
}

/// A database under test: SQLite in a folder, or a fresh PostgreSQL database per use.
#[derive(Clone, Copy)]
enum Backend<'a> {
    Sqlite,
    Postgres(&'a str),
}

impl Backend<'_> {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// The `--database` of a fresh, empty database: `None` for SQLite (a fresh folder is).
    fn fresh(self) -> anyhow::Result<Option<String>> {
        match self {
            Backend::Sqlite => Ok(None),
            Backend::Postgres(server) => rft_store::testing::fresh_database(server)
                .map(Some)
                .context("cannot create a database for the bench"),
        }
    }
}

fn connect(database: Option<&str>, dir: &Path) -> anyhow::Result<Store> {
    Store::connect(database, dir)
        .with_context(|| format!("cannot open the store in {}", dir.display()))
}

/// The bench's scratch folder, removed at the end whatever happens.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Milliseconds, sorted, with percentiles.
struct Latencies(Vec<f64>);

impl Latencies {
    fn new(mut ms: Vec<f64>) -> Latencies {
        ms.sort_by(f64::total_cmp);
        Latencies(ms)
    }

    /// The nearest-rank percentile `p` (0–100); NaN when empty.
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Claims

/// What a worker does when its job is done: the status written under the lease, then the lease
/// released.
fn finish(store: &Store, lease: &Lease) -> anyhow::Result<()> {
    let changed = store.modify_object_leased::<TinyJob, std::convert::Infallible>(lease, |j| {
        j.status = "succeeded".into();
        Ok(())
    })?;
    let Some(Ok(_)) = changed else {
        anyhow::bail!("{} lost its lease on {}", lease.owner, lease.id);
    };
    store.release(lease)?;
    Ok(())
}

/// One claims trial.
#[derive(Serialize)]
struct ClaimTrial {
    database: &'static str,
    workers: usize,
    jobs_per_second: f64,
    claim_p50_ms: f64,
    claim_p95_ms: f64,
}

fn claims_trial(
    backend: Backend<'_>,
    scratch: &Path,
    jobs: usize,
    workers: usize,
) -> anyhow::Result<ClaimTrial> {
    let dir = scratch.join(format!("claims-{}-{workers}", backend.name()));
    let database = backend.fresh()?;
    let store = connect(database.as_deref(), &dir)?;
    for i in 0..jobs {
        let job = TinyJob {
            id: format!("job-{i:06}"),
            status: "queued".into(),
        };
        store.insert_object("job", None, &job)?;
    }
    // One store (one connection) per worker, opened and used once before the clock starts.
    let stores = (0..workers)
        .map(|_| {
            let store = connect(database.as_deref(), &dir)?;
            store.get("job", "warm-up")?;
            Ok(store)
        })
        .collect::<anyhow::Result<Vec<Store>>>()?;
    let barrier = Barrier::new(workers + 1);
    let (results, wall) = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(w, store)| {
                let barrier = &barrier;
                scope.spawn(move || -> anyhow::Result<(usize, Vec<f64>)> {
                    let owner = format!("bench-worker-{w}");
                    let mut latencies = Vec::new();
                    barrier.wait();
                    loop {
                        let start = Instant::now();
                        let claimed = store.claim::<TinyJob>(
                            "job",
                            "queued",
                            &owner,
                            Duration::from_secs(30),
                            |j| j.status = "running".into(),
                        )?;
                        let took = start.elapsed();
                        let Some((_, lease)) = claimed else {
                            break;
                        };
                        latencies.push(ms(took));
                        finish(store, &lease)?;
                    }
                    Ok((latencies.len(), latencies))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")))
            })
            .collect();
        (results, start.elapsed())
    });
    let mut done = 0;
    let mut latencies = Vec::new();
    for result in results {
        let (n, l) = result?;
        done += n;
        latencies.extend(l);
    }
    let succeeded = store.with_status("job", &["succeeded"])?.len();
    anyhow::ensure!(
        done == jobs && succeeded == jobs,
        "{} with {workers} workers: {done} claims and {succeeded} finished jobs of {jobs}",
        backend.name()
    );
    drop(stores);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let latency = Latencies::new(latencies);
    Ok(ClaimTrial {
        database: backend.name(),
        workers,
        jobs_per_second: jobs as f64 / wall.as_secs_f64(),
        claim_p50_ms: latency.percentile(50.0),
        claim_p95_ms: latency.percentile(95.0),
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Lease takeover

/// Seconds from the dead worker's last renewal to the second worker's claim, one per run.
fn takeovers(backend: Backend<'_>, scratch: &Path, runs: usize) -> anyhow::Result<Vec<f64>> {
    let dir = scratch.join(format!("takeover-{}", backend.name()));
    let database = backend.fresh()?;
    // The dead worker's process, and the live worker's (its sweeper and its claim loop).
    let dead = connect(database.as_deref(), &dir)?;
    let live = connect(database.as_deref(), &dir)?;
    let mut out = Vec::with_capacity(runs);
    for run in 0..runs {
        let id = format!("takeover-{run}");
        dead.insert_object(
            "job",
            None,
            &TinyJob {
                id: id.clone(),
                status: "queued".into(),
            },
        )?;
        let (_, lease) = dead
            .claim::<TinyJob>("job", "queued", "dead-worker", TAKEOVER_LEASE, |j| {
                j.status = "running".into()
            })?
            .context("the first worker found nothing to claim")?;
        anyhow::ensure!(lease.id == id, "claimed {} instead of {id}", lease.id);
        // Two heartbeats, then it dies: no more renewals.
        for _ in 0..2 {
            std::thread::sleep(TAKEOVER_LEASE / 3);
            dead.renew(&lease, TAKEOVER_LEASE)?
                .context("the first worker lost its lease while renewing it")?;
        }
        let last_renewal = Instant::now();
        // The live worker's polls are not in step with the dead one's renewals: each run starts
        // them at another phase of the poll interval (0, 1/runs, 2/runs, … of it).
        let phase = TAKEOVER_POLL.mul_f64(run as f64 / runs as f64);
        let claimed = AtomicBool::new(false);
        let took = std::thread::scope(|scope| -> anyhow::Result<Duration> {
            let sweeper = scope.spawn(|| -> anyhow::Result<()> {
                std::thread::sleep(phase);
                while !claimed.load(Ordering::SeqCst) {
                    // Only expiry counts, as on PostgreSQL, where workers may be anywhere.
                    live.requeue_expired::<TinyJob>("job", "running", &|_| false, |j| {
                        j.status = "queued".into()
                    })?;
                    std::thread::sleep(TAKEOVER_POLL);
                }
                Ok(())
            });
            let worker = (|| -> anyhow::Result<Duration> {
                std::thread::sleep(phase);
                loop {
                    if let Some((job, lease)) = live.claim::<TinyJob>(
                        "job",
                        "queued",
                        "live-worker",
                        Duration::from_secs(30),
                        |j| j.status = "running".into(),
                    )? {
                        let took = last_renewal.elapsed();
                        anyhow::ensure!(job.id == id, "took over {} instead of {id}", job.id);
                        finish(&live, &lease)?;
                        return Ok(took);
                    }
                    anyhow::ensure!(
                        last_renewal.elapsed() < Duration::from_secs(60),
                        "no takeover within 60 s"
                    );
                    std::thread::sleep(TAKEOVER_POLL);
                }
            })();
            claimed.store(true, Ordering::SeqCst);
            sweeper
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the sweeper panicked")))?;
            worker
        })?;
        anyhow::ensure!(
            !dead.holds(&lease)?,
            "the dead worker still holds its lease after the takeover"
        );
        out.push(took.as_secs_f64());
    }
    drop((dead, live));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 3. Blobs

/// Fills `path` with `bytes` pseudo-random bytes (splitmix64: incompressible, no dependency).
fn random_file(path: &Path, bytes: usize, seed: u64) -> anyhow::Result<()> {
    let mut state = seed;
    let mut data = Vec::with_capacity(bytes + 8);
    while data.len() < bytes {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    data.truncate(bytes);
    std::fs::write(path, &data).with_context(|| format!("cannot write {}", path.display()))
}

/// One blob measurement.
#[derive(Serialize)]
struct BlobRow {
    store: &'static str,
    what: &'static str,
    bytes: u64,
    put_mb_s: f64,
    get_mb_s: f64,
}

fn mb_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds
}

fn blob_rows(
    label: &'static str,
    blobs: &Blobs,
    sources: &Path,
    scratch: &Path,
) -> anyhow::Result<Vec<BlobRow>> {
    let root = "bench-storage";
    let downloads = scratch.join(format!("downloads-{label}"));
    std::fs::create_dir_all(&downloads)?;
    let mut rows = Vec::new();
    for (what, name) in [
        ("adapter file, 8 MiB", "adapter_model.safetensors"),
        ("checkpoint file, 128 MiB", "checkpoint.bin"),
    ] {
        let source = sources.join(name);
        let bytes = std::fs::metadata(&source)?.len();
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for run in 0..BLOB_RUNS {
            let key = format!("{root}/{run}/{name}");
            let start = Instant::now();
            let stored = blobs.put_file(&key, &source)?;
            put.push(start.elapsed().as_secs_f64());
            anyhow::ensure!(stored == bytes, "{key}: stored {stored} of {bytes} bytes");
            let dest = downloads.join(name);
            let start = Instant::now();
            anyhow::ensure!(blobs.get_file(&key, &dest)?, "{key} vanished");
            get.push(start.elapsed().as_secs_f64());
            let got = std::fs::metadata(&dest)?.len();
            anyhow::ensure!(got == bytes, "{key}: fetched {got} of {bytes} bytes");
            std::fs::remove_file(&dest)?;
        }
        rows.push(BlobRow {
            store: label,
            what,
            bytes,
            put_mb_s: mb_s(bytes, median(put)),
            get_mb_s: mb_s(bytes, median(get)),
        });
    }
    let folder = sources.join("adapter-folder");
    let bytes: u64 = std::fs::read_dir(&folder)?
        .map(|e| Ok(e?.metadata()?.len()))
        .collect::<std::io::Result<Vec<u64>>>()?
        .iter()
        .sum();
    let (mut put, mut get) = (Vec::new(), Vec::new());
    for run in 0..BLOB_RUNS {
        let prefix = format!("{root}/folder-{run}");
        let start = Instant::now();
        let manifest = blobs.publish_dir(&prefix, &folder)?;
        put.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(
            manifest.files.len() == 3,
            "{prefix}: published {} files",
            manifest.files.len()
        );
        let dest = downloads.join("folder");
        let start = Instant::now();
        blobs
            .fetch_dir(&prefix, &dest)?
            .with_context(|| format!("{prefix} has no manifest"))?;
        get.push(start.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&dest)?;
    }
    rows.push(BlobRow {
        store: label,
        what: "adapter folder, 3 files, 24 MiB",
        bytes,
        put_mb_s: mb_s(bytes, median(put)),
        get_mb_s: mb_s(bytes, median(get)),
    });
    blobs.delete_prefix(root)?;
    Ok(rows)
}

/// A PEFT `adapter_config.json`, as a published adapter folder holds.
#[derive(Serialize)]
struct AdapterConfig {
    peft_type: &'static str,
    r: usize,
    lora_alpha: usize,
    lora_dropout: f64,
    base_model_name_or_path: &'static str,
    target_modules: &'static [&'static str],
}

fn blob_sources(scratch: &Path) -> anyhow::Result<PathBuf> {
    let sources = scratch.join("sources");
    let folder = sources.join("adapter-folder");
    std::fs::create_dir_all(&folder)?;
    random_file(&sources.join("adapter_model.safetensors"), ADAPTER_BYTES, 1)?;
    random_file(&sources.join("checkpoint.bin"), CHECKPOINT_BYTES, 2)?;
    let config = AdapterConfig {
        peft_type: "LORA",
        r: 16,
        lora_alpha: 32,
        lora_dropout: 0.0,
        base_model_name_or_path: "HuggingFaceTB/SmolLM2-135M-Instruct",
        target_modules: &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    };
    std::fs::write(
        folder.join("adapter_config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    random_file(&folder.join("adapter_model.safetensors"), ADAPTER_BYTES, 3)?;
    random_file(&folder.join("optimizer.bin"), OPTIMIZER_BYTES, 4)?;
    Ok(sources)
}

// ---------------------------------------------------------------------------------------------
// 4. API reads

/// The job the API reads: a reinforcement job mid-training with a three-part grader (one of
/// them a model grader whose prompt pads the JSON to about [`JOB_BYTES`]) and structured
/// output. `@ID@` and `@PROMPT@` are filled in (neither needs JSON escaping).
const JOB_TEMPLATE: &str = r#"{
  "id": "@ID@", "object": "fine_tuning.job", "created_at": 1765000000, "status": "running",
  "model": "smollm2-135m-instruct", "training_file": "file-6f1c2a9b0d3e4f5a6b7c8d9e",
  "validation_file": "file-0a1b2c3d4e5f60718293a4b5",
  "method": {"type": "reinforcement", "reinforcement": {
    "grader": {"type": "multi", "name": "extract_and_explain",
      "graders": {
        "exact": {"type": "string_check", "name": "exact",
          "input": "{{ sample.output_json.answer }}", "reference": "{{ item.answer }}",
          "operation": "eq"},
        "overlap": {"type": "text_similarity", "name": "overlap",
          "input": "{{ sample.output_json.explanation }}", "reference": "{{ item.explanation }}",
          "evaluation_metric": "rouge_l"},
        "judge": {"type": "score_model", "name": "judge", "model": "smollm2-135m-instruct",
          "input": [{"role": "system", "content": "@PROMPT@"},
                    {"role": "user", "content": "Question: {{ item.question }}\nReference: {{ item.answer }}\nAnswer: {{ sample.output_text }}"}],
          "range": [0, 1]}},
      "calculate_output": "0.5 * exact + 0.25 * overlap + 0.25 * judge"},
    "hyperparameters": {"batch_size": 4, "n_epochs": 1, "compute_multiplier": 1,
      "eval_interval": 4, "eval_samples": 2, "learning_rate_multiplier": 5, "lora_rank": 16,
      "max_completion_tokens": 256},
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true,
      "schema": {"type": "object", "additionalProperties": false,
        "required": ["answer", "explanation"],
        "properties": {"answer": {"type": "string"}, "explanation": {"type": "string"}}}}}}},
  "hyperparameters": {"batch_size": 4, "n_epochs": 1, "compute_multiplier": 1,
    "eval_interval": 4, "eval_samples": 2, "learning_rate_multiplier": 5, "lora_rank": 16,
    "max_completion_tokens": 256},
  "seed": 7, "suffix": "bench", "user_provided_suffix": "bench", "fine_tuned_model": null,
  "finished_at": null, "error": null, "organization_id": "org-openrft", "result_files": [],
  "trained_tokens": null, "estimated_finish": null, "integrations": null,
  "metadata": {"team": "storage-bench", "dataset": "quickstart-v3", "owner": "bench@example.com"},
  "shared_with_openai": false, "eval_id": null
}"#;

/// The job the API reads (see [`JOB_TEMPLATE`]), as the server's job type.
fn realistic_job(id: &str) -> anyhow::Result<FineTuningJob> {
    let build = |prompt: &str| -> anyhow::Result<FineTuningJob> {
        let text = JOB_TEMPLATE.replace("@ID@", id).replace("@PROMPT@", prompt);
        serde_json::from_str(&text).context("the bench's job does not parse as a job")
    };
    let base = "You grade answers to extraction questions. Score 1 when the answer names the same \
                entity as the reference and the explanation cites the passage, 0 otherwise.";
    let short = serde_json::to_string(&build(base)?)?.len();
    let sentence = " Be strict about units and dates.";
    let repeats = JOB_BYTES.saturating_sub(short) / sentence.len() + 1;
    build(&format!("{base}{}", sentence.repeat(repeats)))
}

/// A training step's metrics event as the trainer writes it; `@ID@`, `@CREATED@`, `@STEP@`,
/// `@TOTAL@` and `@REWARD@` are filled in.
const METRICS_EVENT_TEMPLATE: &str = r#"{
  "id": "@ID@", "object": "fine_tuning.job.event", "created_at": @CREATED@, "level": "info",
  "message": "Step @STEP@/@TOTAL@", "type": "metrics",
  "data": {"step": @STEP@, "total_steps": @TOTAL@,
    "scores": {"train_reward_mean": @REWARD@, "graders": [
      {"name": "exact", "type": "sub_grader", "train_reward_mean": @REWARD@},
      {"name": "overlap", "type": "sub_grader", "train_reward_mean": @REWARD@},
      {"name": "judge", "type": "sub_grader", "train_reward_mean": @REWARD@}]},
    "errors": {"graders": [{"name": "extract_and_explain", "type": "multi",
      "train_other_error_count": 0, "train_other_error_mean": 0.0}]},
    "timing": {"step": {"sampling": 11.5, "training": 7.25, "eval": 0.0, "full_iteration": 18.75}},
    "usage": {"samples": {"train_reasoning_tokens_mean": 0, "train_reasoning_tokens_count": 0}},
    "train_mean_reward": @REWARD@, "full_valid_mean_reward": null,
    "completion_tokens_mean": 42.5, "completion_tokens_count": 1360,
    "frac_zero_std_groups": 0.25, "refill_groups": 0, "frac_truncated": 0.03125,
    "loss": 0.0123, "kl": null, "entropy": 1.5, "clip_fraction": 0.01,
    "grad_norm": 0.21, "learning_rate": 0.0002}
}"#;

/// Event `n` of the job (sequence number `seq`): a few messages, then one metrics event per
/// training step, as a trainer writes them.
fn realistic_event(job_id: &str, n: usize, seq: i64) -> anyhow::Result<JobEvent> {
    const MESSAGES: [&str; 4] = [
        "Created fine-tuning job",
        "Validating training file",
        "Files validated",
        "Fine-tuning job started",
    ];
    let id = format!("ftevent-{}-{seq:06}", job_id.trim_start_matches("ftjob-"));
    let created_at = 1_765_000_000 + n as i64;
    if let Some(message) = MESSAGES.get(n) {
        return Ok(JobEvent {
            id,
            object: JobEvent::OBJECT.into(),
            created_at,
            level: EventLevel::Info,
            message: (*message).into(),
            body: EventBody::Message {},
        });
    }
    let step = n + 1 - MESSAGES.len();
    let total = EVENTS - MESSAGES.len();
    let reward = 0.2 + 0.6 * (step as f64 / total as f64);
    let text = METRICS_EVENT_TEMPLATE
        .replace("@ID@", &id)
        .replace("@CREATED@", &created_at.to_string())
        .replace("@STEP@", &step.to_string())
        .replace("@TOTAL@", &total.to_string())
        .replace("@REWARD@", &format!("{reward:.6}"));
    serde_json::from_str(&text).context("the bench's metrics event does not parse as an event")
}

/// One read measurement.
#[derive(Serialize)]
struct ReadRow {
    database: &'static str,
    read: &'static str,
    p50_ms: f64,
    p95_ms: f64,
}

impl ReadRow {
    fn new(database: &'static str, read: &'static str, latency: &Latencies) -> ReadRow {
        ReadRow {
            database,
            read,
            p50_ms: latency.percentile(50.0),
            p95_ms: latency.percentile(95.0),
        }
    }
}

fn time_calls(
    reads: usize,
    mut call: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Latencies> {
    for _ in 0..reads.min(20) {
        call()?;
    }
    let mut out = Vec::with_capacity(reads);
    for _ in 0..reads {
        let start = Instant::now();
        call()?;
        out.push(ms(start.elapsed()));
    }
    Ok(Latencies::new(out))
}

fn http_get(agent: &ureq::Agent, url: &str) -> anyhow::Result<usize> {
    let mut response = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string()?;
    anyhow::ensure!(status == 200, "GET {url}: {status}: {body}");
    Ok(body.len())
}

/// The job's JSON size and the read rows of one database.
fn api_reads(
    backend: Backend<'_>,
    scratch: &Path,
    reads: usize,
) -> anyhow::Result<(usize, usize, Vec<ReadRow>)> {
    let dir = scratch.join(format!("reads-{}", backend.name()));
    let database = backend.fresh()?;
    let store = connect(database.as_deref(), &dir)?;
    let id = "ftjob-bench0000000000000000000";
    let job = realistic_job(id)?;
    let job_bytes = serde_json::to_string(&job)?.len();
    store.insert_object("job", None, &job)?;
    let mut event_bytes = 0;
    for n in 0..EVENTS {
        let mut event = None;
        let (stored, _) = store.append_event(id, &format!("bench-{n}"), |seq| {
            let built = realistic_event(id, n, seq);
            let body = built
                .as_ref()
                .ok()
                .and_then(|e| serde_json::to_value(e).ok())
                .unwrap_or_default();
            event = Some(built);
            body
        })?;
        event.context("the event was not written")??;
        serde_json::from_value::<JobEvent>(stored.body.clone())
            .context("the stored event does not parse as an event")?;
        event_bytes += stored.body.to_string().len();
    }
    let mut rows = Vec::new();
    let latency = time_calls(reads, || {
        store.get("job", id)?.context("the job vanished")?;
        Ok(())
    })?;
    rows.push(ReadRow::new(backend.name(), "store.get(job)", &latency));
    let latency = time_calls(reads, || {
        let events = store.events(id)?;
        anyhow::ensure!(events.len() == EVENTS, "{} events", events.len());
        Ok(())
    })?;
    rows.push(ReadRow::new(
        backend.name(),
        "store.events(job), 200 events",
        &latency,
    ));
    // The same reads through a real server (API only: no worker touches the job).
    let mut config = ServerConfig::new(dir.clone());
    config.database = database.clone();
    config.run_jobs = false;
    let server = BackgroundServer::start(config)?;
    let agent = rft_server::loadtest::agent();
    let job_url = format!("{}/fine_tuning/jobs/{id}", server.base);
    let events_url = format!("{job_url}/events?limit=100");
    let latency = time_calls(reads, || http_get(&agent, &job_url).map(drop))?;
    rows.push(ReadRow::new(
        backend.name(),
        "GET /v1/fine_tuning/jobs/{id}",
        &latency,
    ));
    let latency = time_calls(reads, || http_get(&agent, &events_url).map(drop))?;
    rows.push(ReadRow::new(
        backend.name(),
        "GET …/{id}/events?limit=100",
        &latency,
    ));
    drop(server);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((job_bytes, event_bytes / EVENTS, rows))
}

// ---------------------------------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn storage(args: &BenchStorageArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    anyhow::ensure!(args.takeovers > 0, "--takeovers must be at least 1");
    anyhow::ensure!(args.reads > 0, "--reads must be at least 1");
    let database = args
        .database
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if let Some(url) = database {
        anyhow::ensure!(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "--database {}: not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            rft_store::redact_url(url)
        );
    }
    let mut backends = vec![Backend::Sqlite];
    if let Some(url) = database {
        backends.push(Backend::Postgres(url));
    } else {
        eprintln!("no --database (or RFT_BENCH_DATABASE_URL): SQLite only");
    }
    let scratch =
        Scratch(std::env::temp_dir().join(format!("rft-bench-storage-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("cannot create {}", scratch.0.display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu_model();
    outln!("rft bench storage: {cores} cores, {cpu}");
    if let Some(url) = database {
        outln!(
            "PostgreSQL: fresh databases on {}",
            rft_store::redact_url(url)
        );
    }

    // 1. Claims.
    eprintln!("claims: {} tiny jobs per trial ...", args.jobs);
    let mut claims = Vec::new();
    for &backend in &backends {
        for workers in WORKERS {
            claims.push(claims_trial(backend, &scratch.0, args.jobs, workers)?);
        }
    }
    outln!();
    outln!(
        "claims: {} tiny jobs, each claimed, finished (modify_object_leased) and released",
        args.jobs
    );
    outln!(
        "{:<11} {:>7} {:>9} {:>14} {:>14}",
        "database",
        "workers",
        "jobs/s",
        "claim p50 ms",
        "claim p95 ms"
    );
    for t in &claims {
        outln!(
            "{:<11} {:>7} {:>9.0} {:>14.2} {:>14.2}",
            t.database,
            t.workers,
            t.jobs_per_second,
            t.claim_p50_ms,
            t.claim_p95_ms
        );
    }

    // 2. Lease takeover.
    eprintln!("lease takeover: {} runs per database ...", args.takeovers);
    let mut takeover = Vec::new();
    for &backend in &backends {
        let runs_s = takeovers(backend, &scratch.0, args.takeovers)?;
        takeover.push(Takeover {
            database: backend.name(),
            lease_s: TAKEOVER_LEASE.as_secs_f64(),
            poll_ms: TAKEOVER_POLL.as_millis() as u64,
            median_s: median(runs_s.clone()),
            min_s: runs_s.iter().copied().fold(f64::INFINITY, f64::min),
            max_s: runs_s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs_s,
        });
    }
    outln!();
    outln!(
        "lease takeover: lease {:.1} s, sweeper and second worker polling every {} ms; from the last renewal to the second worker's claim",
        TAKEOVER_LEASE.as_secs_f64(),
        TAKEOVER_POLL.as_millis()
    );
    outln!(
        "{:<11} {:>9} {:>9} {:>9}",
        "database",
        "median s",
        "min s",
        "max s"
    );
    for t in &takeover {
        outln!(
            "{:<11} {:>9.3} {:>9.3} {:>9.3}",
            t.database,
            t.median_s,
            t.min_s,
            t.max_s
        );
    }

    // 3. Blobs.
    eprintln!("blobs: writing the source files ...");
    let sources = blob_sources(&scratch.0)?;
    let mut blob_stores: Vec<(&'static str, Blobs)> =
        vec![("local folder", Blobs::local(&scratch.0.join("blobs"))?)];
    if let Some(spec) = args.blobs.as_deref() {
        anyhow::ensure!(
            spec.trim().starts_with("s3://"),
            "--blobs must be s3://BUCKET/PREFIX"
        );
        blob_stores.push(("S3", Blobs::open(spec, &scratch.0.join("unused"))?));
    }
    let mut blobs = Vec::new();
    for (label, store) in &blob_stores {
        eprintln!("blobs: {label} ({}) ...", store.describe());
        blobs.extend(blob_rows(label, store, &sources, &scratch.0)?);
    }
    outln!();
    outln!("blobs: median of {BLOB_RUNS}; MB = 10^6 bytes");
    outln!(
        "{:<13} {:<32} {:>11} {:>11}",
        "store",
        "what",
        "put MB/s",
        "get MB/s"
    );
    for row in &blobs {
        outln!(
            "{:<13} {:<32} {:>11.1} {:>11.1}",
            row.store,
            row.what,
            row.put_mb_s,
            row.get_mb_s
        );
    }

    // 4. API reads.
    eprintln!("API reads: {} reads per measurement ...", args.reads);
    let mut reads = Reads {
        job_bytes: 0,
        event_bytes_mean: 0,
        events: EVENTS,
        reads: args.reads,
        rows: Vec::new(),
    };
    for &backend in &backends {
        let (job_bytes, event_bytes, rows) = api_reads(backend, &scratch.0, args.reads)?;
        reads.job_bytes = job_bytes;
        reads.event_bytes_mean = event_bytes;
        reads.rows.extend(rows);
    }
    outln!();
    outln!(
        "API reads: a {} B job with {EVENTS} events (mean {} B), {} reads each, one client",
        reads.job_bytes,
        reads.event_bytes_mean,
        args.reads
    );
    outln!(
        "{:<11} {:<31} {:>9} {:>9}",
        "database",
        "read",
        "p50 ms",
        "p95 ms"
    );
    for row in &reads.rows {
        outln!(
            "{:<11} {:<31} {:>9.3} {:>9.3}",
            row.database,
            row.read,
            row.p50_ms,
            row.p95_ms
        );
    }

    if let Some(path) = &args.json {
        let report = Report {
            machine: Machine { cores, cpu },
            jobs: args.jobs,
            claims,
            takeover,
            blobs,
            reads,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The takeover figures of one database.
#[derive(Serialize)]
struct Takeover {
    database: &'static str,
    lease_s: f64,
    poll_ms: u64,
    median_s: f64,
    min_s: f64,
    max_s: f64,
    runs_s: Vec<f64>,
}

/// The API reads of every database.
#[derive(Serialize)]
struct Reads {
    job_bytes: usize,
    event_bytes_mean: usize,
    events: usize,
    reads: usize,
    rows: Vec<ReadRow>,
}

/// Where the figures were measured.
#[derive(Serialize)]
struct Machine {
    cores: usize,
    cpu: String,
}

/// What `--json` writes.
#[derive(Serialize)]
struct Report {
    machine: Machine,
    jobs: usize,
    claims: Vec<ClaimTrial>,
    takeover: Vec<Takeover>,
    blobs: Vec<BlobRow>,
    reads: Reads,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_medians_average_the_middle_pair() {
        let latencies = Latencies::new((1..=20).rev().map(f64::from).collect());
        assert_eq!(latencies.percentile(50.0), 10.0);
        assert_eq!(latencies.percentile(95.0), 19.0);
        assert_eq!(latencies.percentile(100.0), 20.0);
        assert!(Latencies::new(Vec::new()).percentile(50.0).is_nan());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_job_and_events_parse_as_the_servers_types() {
        let job = realistic_job("ftjob-x").unwrap();
        let bytes = serde_json::to_string(&job).unwrap().len();
        assert!(
            (JOB_BYTES..JOB_BYTES + 64).contains(&bytes),
            "{bytes} bytes"
        );
        assert!(realistic_event("ftjob-x", 0, 1)
            .unwrap()
            .metrics()
            .is_none());
        let step = realistic_event("ftjob-x", EVENTS - 1, 200).unwrap();
        assert_eq!(step.id, "ftevent-x-000200");
        assert_eq!(step.metrics().map(|m| m.step), Some(EVENTS - 4));
    }

    #[test]
    fn every_job_is_claimed_once_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let trial = claims_trial(Backend::Sqlite, dir.path(), 12, 2).unwrap();
        assert_eq!(trial.workers, 2);
        assert!(trial.jobs_per_second > 0.0 && trial.claim_p50_ms <= trial.claim_p95_ms);
    }
}
