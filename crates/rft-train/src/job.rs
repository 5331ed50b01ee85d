//! The RFT loop: OpenAI's reinforcement fine-tuning job, run on the training primitives.
//!
//! Per step: take `batch_size` rows (a seeded shuffle per epoch), render their messages with the
//! chat template, sample `G` completions each with the current policy, grade them, compute
//! group-relative advantages, drop groups with no signal (dynamic sampling), and update the LoRA
//! weights with the chosen loss. Every `eval_interval` steps (and at the end) the validation set
//! is sampled and graded, a checkpoint is written, and the 3 best checkpoints plus the latest
//! are kept.
//!
//! Everything random is derived from `(seed, step, row)`, and the state at a step boundary is
//! fully on disk (adapter, optimizer moments, step), so a resumed run replays exactly what an
//! uninterrupted one would have done.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use rft_grade::{compile, CompiledGrader, GradeRequest};
use rft_model::constrain::ResponseFormat;
use rft_model::engine::Engine;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_model::sample::{Completion, FinishReason, SamplingParams};
use rft_types::{DatasetRow, Grader, Sample};
use serde_json::{json, Value};

use crate::advantage::{build_batch, has_signal, GradedGroup, RolloutBatch};
use crate::config::{Hyperparameters, JobRequest};
use crate::primitives::{AdamParams, KlPenalty, TrainingClient};
use crate::TrainError;

/// If more than this fraction of a step's samples fail to grade, the job fails (OpenAI fails
/// jobs whose grader errors on most samples; the exact threshold is ours).
pub const MAX_GRADER_ERROR_FRACTION: f64 = 0.5;

/// How a caller steers a running job.
#[derive(Debug, Default)]
pub struct JobControl {
    /// Set to pause at the next step boundary (a checkpoint is written first).
    pub pause: AtomicBool,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// All steps ran.
    Succeeded,
    /// Paused at a step boundary; resume with [`run_job`] on the same folder.
    Paused,
}

/// A summary of a finished (or paused) job.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// Succeeded or paused.
    pub outcome: JobOutcome,
    /// Steps completed.
    pub steps: usize,
    /// Total steps.
    pub total_steps: usize,
    /// Validation reward before training (step 0).
    pub baseline_valid_reward: Option<f64>,
    /// Validation reward at the last validation.
    pub final_valid_reward: Option<f64>,
    /// The fine-tuned model's name.
    pub fine_tuned_model: String,
    /// Where the final adapter is.
    pub final_adapter: PathBuf,
    /// Train reward mean of each step.
    pub train_rewards: Vec<f64>,
}

/// A dataset row ready for sampling.
struct Prepared {
    row: DatasetRow,
    prompt: Vec<u32>,
}

/// Appends one event to `dir/events.jsonl` (fsynced) and returns it.
///
/// Ids number the file's lines (`ftevent-<job>-000042`), counted under an exclusive lock on
/// the file: the loop and the server (its "paused", "cancelled" messages) may append at the
/// same moment, and a count kept in memory would go stale as soon as the other one writes,
/// or after a restart. Counting every line, torn ones included, keeps ids unique and in file
/// order.
fn write_event(
    dir: &Path,
    job_id: &str,
    level: &str,
    message: String,
    data: Option<Value>,
) -> Result<Value, TrainError> {
    use std::io::Read;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = dir.join("events.jsonl");
    let io = |source| TrainError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    // Released when `file` is closed, including on an early return.
    file.lock().map_err(io)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io)?;
    let mut count = text.iter().filter(|&&b| b == b'\n').count();
    // A crash mid-write can leave a last line without its newline: end it, so this event
    // starts a line of its own (the torn line is skipped by readers, but keeps its number).
    if text.last().is_some_and(|&b| b != b'\n') {
        file.write_all(b"\n").map_err(io)?;
        count += 1;
    }
    let event = json!({
        "id": format!("ftevent-{}-{count:06}", job_id.trim_start_matches("ftjob-")),
        "object": "fine_tuning.job.event",
        "created_at": now,
        "level": level,
        "message": message,
        "type": if data.is_some() { "metrics" } else { "message" },
        "data": data.unwrap_or(json!({})),
    });
    writeln!(file, "{event}").map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(event)
}

/// Appends an event to a job folder from outside the loop (the server's "queued", "cancelled",
/// "failed" messages). Safe while [`run_job`] runs on the folder: appends are serialised by a
/// lock on the events file.
pub fn append_event(
    dir: &Path,
    job_id: &str,
    level: &str,
    message: impl Into<String>,
) -> Result<Value, TrainError> {
    write_event(dir, job_id, level, message.into(), None)
}

/// The resume state's folder in `checkpoints/`, and the two names `save_latest` swaps it
/// through.
const LATEST: &str = "latest";
const LATEST_NEW: &str = "latest.new";
const LATEST_OLD: &str = "latest.old";
/// Written last into a state folder: `{"step": n}`.
const PROGRESS: &str = "progress.json";

/// The step of a complete state folder (its `progress.json`, written last, and the optimizer
/// state it follows); `None` for a missing or half-written one.
fn complete_step(dir: &Path) -> Option<u64> {
    if !dir.join("optimizer.json").is_file() {
        return None;
    }
    crate::read_json(&dir.join(PROGRESS)).ok()?["step"].as_u64()
}

/// Puts back `checkpoints/latest` when a kill between `save_latest`'s two renames left only
/// `latest.old` (the previous state) and `latest.new` (the new one, complete once its
/// `progress.json` exists): the newest complete one becomes `latest`, with one rename. Without
/// this, the job would restart from step 0.
pub(crate) fn recover_latest(checkpoints: &Path) -> Result<(), TrainError> {
    let latest = checkpoints.join(LATEST);
    if complete_step(&latest).is_some() {
        return Ok(());
    }
    // On a tie the new one wins (`max_by_key` keeps the last maximum): they hold the same step.
    let Some((step, found)) = [LATEST_OLD, LATEST_NEW]
        .iter()
        .map(|name| checkpoints.join(name))
        .filter_map(|dir| complete_step(&dir).map(|step| (step, dir)))
        .max_by_key(|(step, _)| *step)
    else {
        return Ok(());
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TrainError::Io { path, source }
    };
    if latest.exists() {
        // Incomplete (checked above): nothing in it can be resumed from.
        std::fs::remove_dir_all(&latest).map_err(io(&latest))?;
    }
    std::fs::rename(&found, &latest).map_err(io(&found))?;
    rft_types::paths::sync_dir(checkpoints).map_err(io(checkpoints))?;
    tracing::warn!(
        "{}: the last save was interrupted; resuming from {} (step {step})",
        checkpoints.display(),
        found.display()
    );
    Ok(())
}

/// A job folder's events, oldest first.
pub fn read_events(dir: &Path) -> Vec<Value> {
    read_jsonl(&dir.join("events.jsonl"))
}

/// A job folder's kept checkpoints (`fine_tuning.job.checkpoint` objects), by step.
pub fn read_checkpoints(dir: &Path) -> Vec<Value> {
    let mut all = read_jsonl(&dir.join("checkpoints.jsonl"));
    all.sort_by_key(|c| c["step_number"].as_u64().unwrap_or(0));
    all
}

/// The JSON lines of a file; a line cut short by a crash mid-write is skipped.
fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Reads an RFT dataset, every error with file and line.
pub fn read_dataset(path: &Path) -> Result<Vec<DatasetRow>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut rows = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = DatasetRow::from_json_line(line).map_err(|e| TrainError::Dataset {
            path: path.to_owned(),
            line: idx + 1,
            message: if e.field.is_empty() {
                e.message.clone()
            } else {
                format!("{}: {}", e.field, e.message)
            },
        })?;
        match row.messages.last() {
            Some(last) if last.role == "user" => {}
            Some(last) => {
                return Err(TrainError::Dataset {
                    path: path.to_owned(),
                    line: idx + 1,
                    message: format!(
                        "the last message is from {:?}; RFT prompts end with a user message (the model writes the reply)",
                        last.role
                    ),
                })
            }
            None => unreachable!("rows have at least one message"),
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(TrainError::Dataset {
            path: path.to_owned(),
            line: 0,
            message: "the file has no rows".into(),
        });
    }
    Ok(rows)
}

/// A cheap, well-mixed 64-bit hash (splitmix64) for deriving seeds.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The row order of one epoch: a seeded Fisher–Yates shuffle.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = mix(seed ^ mix(epoch as u64 + 1));
    for i in (1..n).rev() {
        state = mix(state);
        let j = (state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// One prompt's graded samples.
type GradedRollout = Vec<(Completion, rft_types::RunGraderResponse)>;

struct Loop<'a> {
    request: &'a JobRequest,
    hyper: Hyperparameters,
    client: TrainingClient,
    grader: CompiledGrader,
    grader_json: Value,
    response_format: Option<ResponseFormat>,
    train: Vec<Prepared>,
    valid: Vec<Prepared>,
    seed: u64,
    dir: PathBuf,
    job_id: String,
    fine_tuned_model: String,
}

/// Runs (or resumes) a job in `dir`, calling `on_event` with every event it writes.
pub fn run_job(
    request: &JobRequest,
    dir: &Path,
    control: &JobControl,
    on_event: &mut dyn FnMut(&Value),
) -> Result<JobSummary, TrainError> {
    let reinforcement = request.reinforcement()?;
    let grader_spec =
        Grader::from_value(&reinforcement.grader).map_err(|e| TrainError::Grader(e.to_string()))?;
    let grader = compile(&grader_spec).map_err(|e| TrainError::Grader(e.to_string()))?;
    let response_format = reinforcement
        .response_format
        .as_ref()
        .filter(|v| !v.is_null())
        .map(|v| {
            ResponseFormat::from_value(v)
                .map_err(|e| TrainError::Config(format!("method.reinforcement.{e}")))
        })
        .transpose()?;
    let train_rows = read_dataset(Path::new(&request.training_file))?;
    let valid_rows = match &request.validation_file {
        Some(path) => read_dataset(Path::new(path))?,
        None => Vec::new(),
    };
    let hyper = Hyperparameters::resolve(&reinforcement.hyperparameters, train_rows.len())?;
    let seed = request.seed.unwrap_or(42);
    std::fs::create_dir_all(dir.join("checkpoints")).map_err(|source| TrainError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let engine = Engine::load_base(&request.model, &Device::Cpu)?;
    let prepare = |rows: Vec<DatasetRow>, path: &str| -> Result<Vec<Prepared>, TrainError> {
        rows.into_iter()
            .enumerate()
            .map(|(idx, row)| {
                let messages: Vec<Value> = row
                    .messages
                    .iter()
                    .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                    .collect();
                let prompt = engine
                    .chat_prompt(&messages, row.tools.as_deref())
                    .map_err(|e| TrainError::Dataset {
                        path: PathBuf::from(path),
                        line: idx + 1,
                        message: format!("cannot render the chat template: {e}"),
                    })?;
                Ok(Prepared { row, prompt })
            })
            .collect()
    };
    let train = prepare(train_rows, &request.training_file)?;
    let valid = prepare(
        valid_rows,
        request.validation_file.as_deref().unwrap_or_default(),
    )?;
    let lora = LoraConfig {
        rank: hyper.lora_rank,
        alpha: hyper.lora_alpha,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(engine.model.config(), lora, seed, &Device::Cpu)?;
    let mut client = TrainingClient::new(engine, adapter);
    let job_id = match crate::read_json(&dir.join("job.json")) {
        Ok(job) => job["id"].as_str().unwrap_or("ftjob-local").to_owned(),
        Err(_) => format!("ftjob-{:016x}", mix(seed ^ std::process::id() as u64)),
    };
    let base_name = Path::new(&request.model)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| request.model.clone());
    let fine_tuned_model = format!(
        "ft:{base_name}:{}:{job_id}",
        request.suffix.as_deref().unwrap_or("openrft")
    );
    // Resume from the latest state if there is one (after putting back the one a crash in
    // `save_latest` may have left under another name).
    recover_latest(&dir.join("checkpoints"))?;
    let latest = dir.join("checkpoints/latest");
    let resumed = latest.join("optimizer.json").is_file();
    if resumed {
        client.load_state(&latest)?;
    }
    let mut state = Loop {
        request,
        hyper,
        client,
        grader,
        grader_json: reinforcement.grader.clone(),
        response_format,
        train,
        valid,
        seed,
        dir: dir.to_owned(),
        job_id,
        fine_tuned_model,
    };
    state.write_job_file()?;
    state.run(control, resumed, on_event)
}

impl Loop<'_> {
    fn total_steps(&self) -> usize {
        let per_epoch = self.train.len().div_ceil(self.hyper.batch_size);
        per_epoch * self.hyper.n_epochs
    }

    fn write_job_file(&self) -> Result<(), TrainError> {
        let mut method = serde_json::to_value(&self.request.method).unwrap_or(Value::Null);
        method["reinforcement"]["hyperparameters"] = self.hyper.to_value();
        crate::write_json_atomic(
            &self.dir.join("job.json"),
            &json!({
                "id": self.job_id,
                "object": "fine_tuning.job",
                "model": self.request.model,
                "training_file": self.request.training_file,
                "validation_file": self.request.validation_file,
                "seed": self.seed,
                "suffix": self.request.suffix,
                "method": method,
                "fine_tuned_model": self.fine_tuned_model,
                "hyperparameters": {
                    "batch_size": self.hyper.batch_size,
                    "learning_rate_multiplier": self.hyper.learning_rate_multiplier,
                    "n_epochs": self.hyper.n_epochs,
                },
            }),
        )
    }

    fn event(
        &self,
        level: &str,
        message: String,
        data: Option<Value>,
        on_event: &mut dyn FnMut(&Value),
    ) -> Result<(), TrainError> {
        let event = write_event(&self.dir, &self.job_id, level, message, data)?;
        on_event(&event);
        Ok(())
    }

    fn sampling_params(&self, seed: u64, temperature: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            max_tokens: self.hyper.max_completion_tokens,
            seed,
            ..SamplingParams::default()
        }
    }

    /// Samples `n` completions for each of `rows` and grades them.
    fn rollout(
        &self,
        rows: &[&Prepared],
        n: usize,
        seed: u64,
    ) -> Result<Vec<Vec<(Completion, rft_types::RunGraderResponse)>>, TrainError> {
        let engine = self.client.engine();
        let requests = rows
            .iter()
            .enumerate()
            .map(|(idx, p)| {
                engine.request(
                    p.prompt.clone(),
                    n,
                    self.sampling_params(mix(seed ^ idx as u64), self.hyper.temperature),
                    self.response_format.as_ref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let completions = self.client.sample(&requests)?;
        let mut grade_requests = Vec::new();
        for (p, group) in rows.iter().zip(&completions) {
            for c in group {
                grade_requests.push(GradeRequest {
                    sample: Sample::from_text(c.text.as_deref().unwrap_or_default()),
                    item: p.row.item_value(),
                });
            }
        }
        let mut grades = self.grader.grade_all(&grade_requests).into_iter();
        Ok(completions
            .into_iter()
            .map(|group| {
                group
                    .into_iter()
                    .map(|c| (c, grades.next().unwrap_or_else(empty_grade)))
                    .collect()
            })
            .collect())
    }

    /// DAPO's dynamic sampling: while the step's groups with reward spread are fewer than
    /// `batch_size` and `max_refill_rounds` allow, samples and grades fresh training rows for
    /// the missing groups. Rows come from a shuffle of the rows outside the step's batch seeded
    /// by the step, so a resumed run refills exactly as an uninterrupted one.
    /// Returns the added rows (indices into the training set) and their graded groups.
    fn refill(
        &self,
        batch: &[&Prepared],
        graded: &[GradedRollout],
        step: usize,
    ) -> Result<(Vec<usize>, Vec<GradedRollout>), TrainError> {
        let mut rows: Vec<usize> = Vec::new();
        let mut groups: Vec<GradedRollout> = Vec::new();
        if !self.hyper.dynamic_sampling || self.hyper.max_refill_rounds == 0 {
            return Ok((rows, groups));
        }
        let carries_signal = |group: &GradedRollout| {
            let completions: Vec<&Completion> = group.iter().map(|(c, _)| c).collect();
            let rewards: Vec<f64> = group.iter().map(|(_, g)| g.reward).collect();
            has_signal(
                &self.hyper,
                &GradedGroup {
                    prompt: &[],
                    completions: &completions,
                    rewards: &rewards,
                },
            )
        };
        let in_batch = |p: &Prepared| batch.iter().any(|b| std::ptr::eq(*b, p));
        let candidates: Vec<usize> = epoch_order(self.train.len(), mix(self.seed ^ 0xD1CE), step)
            .into_iter()
            .filter(|&i| !in_batch(&self.train[i]))
            .collect();
        let mut next = 0;
        let mut with_signal = graded.iter().filter(|g| carries_signal(g)).count();
        for round in 0..self.hyper.max_refill_rounds {
            let missing = self.hyper.batch_size.saturating_sub(with_signal);
            if missing == 0 || next >= candidates.len() {
                break;
            }
            let take = &candidates[next..(next + missing).min(candidates.len())];
            next += take.len();
            let seed = mix(self.seed ^ mix(step as u64) ^ mix(0x5EED + round as u64));
            let prepared: Vec<&Prepared> = take.iter().map(|&i| &self.train[i]).collect();
            let fresh = self.rollout(&prepared, self.hyper.group_size(), seed)?;
            for (&row, group) in take.iter().zip(fresh) {
                if carries_signal(&group) {
                    with_signal += 1;
                    rows.push(row);
                    groups.push(group);
                }
            }
        }
        Ok((rows, groups))
    }

    fn validate(&self, seed: u64) -> Result<Option<(f64, Value)>, TrainError> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let rows: Vec<&Prepared> = self.valid.iter().collect();
        let graded = self.rollout(&rows, self.hyper.eval_samples, mix(seed ^ 0xE7A1))?;
        let all: Vec<&rft_types::RunGraderResponse> =
            graded.iter().flatten().map(|(_, g)| g).collect();
        let mean = all.iter().map(|g| g.reward).sum::<f64>() / all.len().max(1) as f64;
        Ok(Some((mean, per_grader(&all))))
    }

    fn run(
        &mut self,
        control: &JobControl,
        resumed: bool,
        on_event: &mut dyn FnMut(&Value),
    ) -> Result<JobSummary, TrainError> {
        let total = self.total_steps();
        let mut start_step = crate::read_json(&self.dir.join("checkpoints/latest/progress.json"))
            .ok()
            .and_then(|p| p["step"].as_u64())
            .unwrap_or(0) as usize;
        let mut baseline = None;
        let mut last_valid = None;
        let mut train_rewards = Vec::new();
        if resumed {
            self.event(
                "info",
                format!("Resumed from the checkpoint of step {start_step}"),
                None,
                on_event,
            )?;
        } else {
            start_step = 0;
            self.event(
                "info",
                format!(
                    "Job started: {} training rows, {} validation rows, {total} steps, group size {}",
                    self.train.len(),
                    self.valid.len(),
                    self.hyper.group_size()
                ),
                None,
                on_event,
            )?;
            if let Some((mean, graders)) = self.validate(mix(self.seed))? {
                baseline = Some(mean);
                self.event(
                    "info",
                    format!("Step 0/{total}, full validation mean reward={mean:.4}"),
                    Some(json!({"step": 0, "total_steps": total,
                        "scores": {"valid_reward_mean": mean, "graders": graders},
                        "full_valid_mean_reward": mean})),
                    on_event,
                )?;
            }
        }
        let mut checkpoints: Vec<(usize, f64)> = self.read_checkpoint_index();
        for step in (start_step + 1)..=total {
            if control.pause.load(Ordering::SeqCst) {
                self.save_latest(step - 1)?;
                self.event(
                    "info",
                    format!("Paused after step {}", step - 1),
                    None,
                    on_event,
                )?;
                return Ok(self.summary(
                    JobOutcome::Paused,
                    step - 1,
                    baseline,
                    last_valid,
                    train_rewards,
                ));
            }
            let t_step = Instant::now();
            let per_epoch = self.train.len().div_ceil(self.hyper.batch_size);
            let epoch = (step - 1) / per_epoch;
            let within = (step - 1) % per_epoch;
            let order = epoch_order(self.train.len(), self.seed, epoch);
            let rows: Vec<&Prepared> = order
                .iter()
                .skip(within * self.hyper.batch_size)
                .take(self.hyper.batch_size)
                .map(|&i| &self.train[i])
                .collect();
            let g = self.hyper.group_size();
            let t_sample = Instant::now();
            let graded = self.rollout(&rows, g, mix(self.seed ^ mix(step as u64)))?;
            let sampling_seconds = t_sample.elapsed().as_secs_f64();
            let all: Vec<&rft_types::RunGraderResponse> =
                graded.iter().flatten().map(|(_, r)| r).collect();
            let errors = all.iter().filter(|g| g.metadata.errors.any()).count();
            if errors as f64 > MAX_GRADER_ERROR_FRACTION * all.len() as f64 {
                let example = all
                    .iter()
                    .find(|g| g.metadata.errors.any())
                    .map(|g| serde_json::to_string(&g.metadata.errors).unwrap_or_default())
                    .unwrap_or_default();
                return Err(TrainError::Grading(format!(
                    "the grader failed on {errors} of {} samples at step {step} (more than {:.0}%); first errors: {example}",
                    all.len(),
                    MAX_GRADER_ERROR_FRACTION * 100.0
                )));
            }
            let train_mean = all.iter().map(|g| g.reward).sum::<f64>() / all.len().max(1) as f64;
            train_rewards.push(train_mean);
            let t_refill = Instant::now();
            let (refill_rows, refill_graded) = self.refill(&rows, &graded, step)?;
            let refill_rows: Vec<&Prepared> = refill_rows.iter().map(|&i| &self.train[i]).collect();
            let sampling_seconds = sampling_seconds + t_refill.elapsed().as_secs_f64();

            // Advantages, dynamic sampling, normalisation.
            let t_train = Instant::now();
            let completions: Vec<Vec<&Completion>> = graded
                .iter()
                .chain(&refill_graded)
                .map(|group| group.iter().map(|(c, _)| c).collect())
                .collect();
            let rewards: Vec<Vec<f64>> = graded
                .iter()
                .chain(&refill_graded)
                .map(|group| group.iter().map(|(_, g)| g.reward).collect())
                .collect();
            let groups: Vec<GradedGroup<'_>> = rows
                .iter()
                .chain(&refill_rows)
                .zip(&completions)
                .zip(&rewards)
                .map(|((p, completions), rewards)| GradedGroup {
                    prompt: &p.prompt,
                    completions,
                    rewards,
                })
                .collect();
            let RolloutBatch {
                datums: batch,
                frac_zero_std_groups: zero_std_groups,
                kl_weights,
            } = build_batch(&self.hyper, &groups);
            let mut loss = 0.0;
            let mut clip_fraction = 0.0;
            let mut kl = None;
            let mut grad_norm = 0.0;
            if !batch.is_empty() {
                let reference = if self.hyper.beta > 0.0 {
                    Some(self.client.reference_logprobs(&batch)?)
                } else {
                    None
                };
                let lr = self.hyper.learning_rate_at(step, total);
                for _ in 0..self.hyper.num_iterations {
                    let out = self.client.forward_backward(
                        &batch,
                        &self.hyper.loss_fn(),
                        reference.as_ref().map(|r| KlPenalty {
                            beta: self.hyper.beta,
                            reference: r,
                            weights: &kl_weights,
                        }),
                    )?;
                    loss = out.loss;
                    clip_fraction = out.clip_fraction;
                    kl = out.kl;
                    grad_norm = self
                        .client
                        .optim_step(&AdamParams {
                            learning_rate: lr,
                            weight_decay: self.hyper.weight_decay,
                            grad_clip_norm: self.hyper.max_grad_norm,
                            ..AdamParams::default()
                        })?
                        .grad_norm;
                }
            }
            // With no group carrying signal the step still counts; the weights do not move.
            let training_seconds = t_train.elapsed().as_secs_f64();
            let lengths: Vec<usize> = graded.iter().flatten().map(|(c, _)| c.ids.len()).collect();
            let completion_mean =
                lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
            let nll: Vec<f64> = graded
                .iter()
                .flatten()
                .flat_map(|(c, _)| c.logprobs.iter().map(|&l| -f64::from(l)))
                .collect();
            let entropy = nll.iter().sum::<f64>() / nll.len().max(1) as f64;
            let truncated = graded
                .iter()
                .flatten()
                .filter(|(c, _)| c.finish_reason == FinishReason::Length)
                .count() as f64
                / lengths.len().max(1) as f64;

            let validate_now = step % self.hyper.eval_interval == 0 || step == total;
            let t_eval = Instant::now();
            let valid = if validate_now {
                self.validate(mix(self.seed ^ step as u64))?
            } else {
                None
            };
            let eval_seconds = t_eval.elapsed().as_secs_f64();
            let mut scores = json!({
                "train_reward_mean": train_mean,
                "graders": per_grader(&all),
            });
            let mut message = format!("Step {step}/{total} , train mean reward={train_mean:.4}");
            if let Some((mean, graders)) = &valid {
                scores["valid_reward_mean"] = json!(mean);
                merge_valid(&mut scores["graders"], graders);
                message.push_str(&format!(", full validation mean reward={mean:.4}"));
                last_valid = Some(*mean);
            }
            let data = json!({
                "step": step,
                "total_steps": total,
                "scores": scores,
                "errors": {"graders": [{"name": self.grader.name(), "type": self.grader_json["type"],
                    "train_other_error_count": errors, "train_other_error_mean": errors as f64 / all.len().max(1) as f64}]},
                "timing": {"step": {"sampling": sampling_seconds, "training": training_seconds,
                    "eval": eval_seconds, "full_iteration": t_step.elapsed().as_secs_f64()}},
                "usage": {"samples": {"train_reasoning_tokens_mean": 0, "train_reasoning_tokens_count": 0}},
                "train_mean_reward": train_mean,
                "full_valid_mean_reward": valid.as_ref().map(|v| v.0),
                "completion_tokens_mean": completion_mean,
                "completion_tokens_count": lengths.iter().sum::<usize>(),
                "frac_zero_std_groups": zero_std_groups,
                "refill_groups": refill_rows.len(),
                "frac_truncated": truncated,
                "loss": loss,
                "kl": kl,
                "entropy": entropy,
                "clip_fraction": clip_fraction,
                "grad_norm": grad_norm,
                "learning_rate": self.hyper.learning_rate_at(step, total),
            });
            self.save_latest(step)?;
            if let Some((mean, _)) = valid {
                self.checkpoint(step, mean, train_mean, &mut checkpoints, on_event)?;
            }
            self.event("info", message, Some(data), on_event)?;
        }
        self.client
            .save_weights_for_sampler(&self.dir.join("final"))?;
        self.event(
            "info",
            format!(
                "The job has successfully completed: {}",
                self.fine_tuned_model
            ),
            None,
            on_event,
        )?;
        Ok(self.summary(
            JobOutcome::Succeeded,
            total,
            baseline,
            last_valid,
            train_rewards,
        ))
    }

    fn summary(
        &self,
        outcome: JobOutcome,
        steps: usize,
        baseline: Option<f64>,
        last_valid: Option<f64>,
        train_rewards: Vec<f64>,
    ) -> JobSummary {
        JobSummary {
            outcome,
            steps,
            total_steps: self.total_steps(),
            baseline_valid_reward: baseline,
            final_valid_reward: last_valid,
            fine_tuned_model: self.fine_tuned_model.clone(),
            final_adapter: self.dir.join("final"),
            train_rewards,
        }
    }

    /// Writes the state after `step` to `checkpoints/latest`. The new state is written beside
    /// the old one (`latest.new`, `progress.json` last), then swapped in with two renames; a
    /// kill between them leaves no `latest`, which [`recover_latest`] repairs on resume.
    fn save_latest(&self, step: usize) -> Result<(), TrainError> {
        let checkpoints = self.dir.join("checkpoints");
        let latest = checkpoints.join(LATEST);
        let staging = checkpoints.join(LATEST_NEW);
        let old = checkpoints.join(LATEST_OLD);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TrainError::Io { path, source }
        };
        let _ = std::fs::remove_dir_all(&staging);
        self.client.save_state(&staging)?;
        // Last: its presence marks the folder complete (every file before it was fsynced).
        crate::write_json_atomic(&staging.join(PROGRESS), &json!({"step": step}))?;
        let _ = std::fs::remove_dir_all(&old);
        if latest.exists() {
            std::fs::rename(&latest, &old).map_err(io(&latest))?;
        }
        std::fs::rename(&staging, &latest).map_err(io(&latest))?;
        // The renames live in the folder: make them durable before the step counts as saved.
        rft_types::paths::sync_dir(&checkpoints).map_err(io(&checkpoints))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    fn read_checkpoint_index(&self) -> Vec<(usize, f64)> {
        std::fs::read_to_string(self.dir.join("checkpoints.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|c| {
                Some((
                    c["step_number"].as_u64()? as usize,
                    c["metrics"]["valid_reward_mean"].as_f64()?,
                ))
            })
            .collect()
    }

    fn checkpoint(
        &self,
        step: usize,
        valid_mean: f64,
        train_mean: f64,
        kept: &mut Vec<(usize, f64)>,
        on_event: &mut dyn FnMut(&Value),
    ) -> Result<(), TrainError> {
        let dir = self.dir.join(format!("checkpoints/step-{step}"));
        self.client.save_weights_for_sampler(&dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let record = json!({
            "id": format!("ftckpt-{}-{step}", self.job_id.trim_start_matches("ftjob-")),
            "object": "fine_tuning.job.checkpoint",
            "created_at": now,
            "fine_tuned_model_checkpoint": format!("{}:ckpt-step-{step}", self.fine_tuned_model),
            "fine_tuning_job_id": self.job_id,
            "step_number": step,
            "metrics": {"step": step, "train_reward_mean": train_mean, "valid_reward_mean": valid_mean},
            "path": dir,
        });
        let path = self.dir.join("checkpoints.jsonl");
        kept.retain(|(s, _)| *s != step);
        kept.push((step, valid_mean));
        // Keep the 3 best by validation reward (ties: the later step).
        let mut ranked = kept.clone();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        let keep: Vec<usize> = ranked.iter().take(3).map(|(s, _)| *s).collect();
        for (s, _) in kept.iter().filter(|(s, _)| !keep.contains(s)) {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("checkpoints/step-{s}")));
        }
        kept.retain(|(s, _)| keep.contains(s));
        let mut lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|c| {
                c["step_number"]
                    .as_u64()
                    .is_some_and(|s| keep.contains(&(s as usize)) && s as usize != step)
            })
            .collect();
        lines.push(record);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        rft_types::paths::write_atomic(&path, text.as_bytes()).map_err(|source| {
            TrainError::Io {
                path: path.clone(),
                source,
            }
        })?;
        self.event(
            "info",
            format!("Checkpoint created at step {step}"),
            None,
            on_event,
        )
    }
}

fn empty_grade() -> rft_types::RunGraderResponse {
    serde_json::from_value(json!({
        "reward": 0.0,
        "metadata": {"name": "", "type": "", "errors": {"other_error": true}, "execution_time": 0.0,
            "scores": {}, "token_usage": null, "sampled_model_name": null},
        "sub_rewards": {},
        "model_grader_token_usage_per_model": {}
    }))
    .unwrap_or_else(|_| unreachable!("a literal response parses"))
}

/// `[{name, type, train_reward_mean}]` per child of a multi grader (or the grader itself).
fn per_grader(all: &[&rft_types::RunGraderResponse]) -> Value {
    let Some(first) = all.first() else {
        return json!([]);
    };
    let n = all.len() as f64;
    if first.sub_rewards.is_empty() {
        let mean = all.iter().map(|g| g.reward).sum::<f64>() / n;
        return json!([{"name": first.metadata.name, "type": first.metadata.kind, "train_reward_mean": mean}]);
    }
    let entries: Vec<Value> = first
        .sub_rewards
        .keys()
        .map(|key| {
            let mean = all
                .iter()
                .map(|g| g.sub_rewards.get(key).copied().unwrap_or(0.0))
                .sum::<f64>()
                / n;
            json!({"name": key, "type": "sub_grader", "train_reward_mean": mean})
        })
        .collect();
    Value::Array(entries)
}

/// Adds `valid_reward_mean` from validation's per-grader list into the step's list.
fn merge_valid(train: &mut Value, valid: &Value) {
    if let (Some(train), Some(valid)) = (train.as_array_mut(), valid.as_array()) {
        for (t, v) in train.iter_mut().zip(valid) {
            t["valid_reward_mean"] = v["train_reward_mean"].clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(dir: &Path, step: Option<u64>) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("optimizer.json"), "{}").unwrap();
        if let Some(step) = step {
            std::fs::write(dir.join(PROGRESS), json!({"step": step}).to_string()).unwrap();
        }
    }

    fn latest_step(checkpoints: &Path) -> Option<u64> {
        complete_step(&checkpoints.join(LATEST))
    }

    #[test]
    fn a_save_cut_between_its_renames_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path();
        // Killed between the renames: old and a complete new, no latest.
        state(&ck.join(LATEST_OLD), Some(4));
        state(&ck.join(LATEST_NEW), Some(5));
        recover_latest(ck).unwrap();
        assert_eq!(latest_step(ck), Some(5));
        assert!(!ck.join(LATEST_NEW).exists());
        // A complete latest is never replaced.
        state(&ck.join(LATEST_NEW), Some(9));
        recover_latest(ck).unwrap();
        assert_eq!(latest_step(ck), Some(5));
    }

    #[test]
    fn a_half_written_new_state_falls_back_to_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = tmp.path();
        state(&ck.join(LATEST_OLD), Some(4));
        state(&ck.join(LATEST_NEW), None);
        recover_latest(ck).unwrap();
        assert_eq!(latest_step(ck), Some(4));
        // Nothing complete anywhere: nothing to resume, no error.
        let empty = tmp.path().join("empty");
        state(&empty.join(LATEST_NEW), None);
        recover_latest(&empty).unwrap();
        assert_eq!(latest_step(&empty), None);
    }

    #[test]
    fn concurrent_writers_get_unique_event_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        // A torn last line, as a kill mid-write leaves it, keeps its number.
        std::fs::write(dir.join("events.jsonl"), "{\"id\": \"torn").unwrap();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        append_event(&dir, "ftjob-x", "info", format!("{w}-{i}")).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let events = read_events(&dir);
        assert_eq!(events.len(), 100);
        let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
        let in_file_order = ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, in_file_order, "ids follow the file's order");
        ids.dedup();
        assert_eq!(ids.len(), 100, "duplicate event ids");
        assert_eq!(ids[0], "ftevent-x-000001");
    }
}
