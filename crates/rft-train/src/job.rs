//! The RFT loop: OpenAI's reinforcement fine-tuning job, one [`run_step`] per training step.
//!
//! Per step: take `batch_size` rows (a seeded shuffle per epoch) and run the RL step on them
//! (sample `G` completions each, grade, group advantages, dynamic sampling, update). Every
//! `eval_interval` steps (and at the end) the validation set is sampled and graded, a
//! checkpoint is written, and the 3 best checkpoints plus the latest are kept.
//!
//! Everything random is derived from `(seed, step, row)`, and the state at a step boundary is
//! fully on disk (adapter, optimizer moments, step), so a resumed run replays exactly what an
//! uninterrupted one would have done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rft_grade::{compile, CompiledGrader};
use rft_model::constrain::ResponseFormat;
use rft_model::host::EngineHost;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_types::api::event::{
    GraderErrorCounts, GraderScore, JobEvent, PhaseSeconds, SampleUsage, Scores, StepErrors,
    StepMetrics, StepTiming, StepUsage, TrainStepMetrics,
};
use rft_types::api::job::CreateJob;
use rft_types::Grader;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoints::{self, NewCheckpoint};
use crate::config::{self, Hyperparameters};
use crate::dataset::{prepare_rows, read_dataset, PreparedRow};
use crate::events::{EventLog, EventSink, FileEvents};
use crate::primitives::TrainingClient;
use crate::rollouts::{LocalRollouts, Policy, RolloutEngine};
use crate::seed::{epoch_order, mix};
use crate::step::{
    grader_means, rollout, run_step, run_step_on, GraderMean, Prefetched, StepContext, StepInput,
    StepReport,
};
use crate::TrainError;

/// How a caller steers a running job.
#[derive(Debug, Default)]
pub struct JobControl {
    /// Set to pause at the next step boundary (a checkpoint is written first).
    pub pause: AtomicBool,
    /// Set to resume without the "Resumed from the checkpoint" event: a server that takes a
    /// job over from a stopped worker keeps the job's events those of one uninterrupted run.
    pub quiet_resume: AtomicBool,
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
    /// The kept checkpoint with the best validation reward (OpenAI keeps the best ones too);
    /// `fine_tuned_model` stays the final model.
    pub best_checkpoint: Option<rft_types::api::checkpoint::Checkpoint>,
}

/// `job.json`: a `fine_tuning.job`-shaped record of the job as run, every hyperparameter
/// resolved. The server reads its `hyperparameters` once the job starts.
#[derive(Serialize)]
struct JobRecord<'a> {
    id: &'a str,
    object: &'static str,
    model: &'a str,
    training_file: &'a str,
    validation_file: Option<&'a str>,
    seed: u64,
    suffix: Option<&'a str>,
    method: MethodRecord<'a>,
    fine_tuned_model: &'a str,
    hyperparameters: OpenAiHyperparameters,
}

#[derive(Serialize)]
struct MethodRecord<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    reinforcement: ReinforcementRecord<'a>,
}

#[derive(Serialize)]
struct ReinforcementRecord<'a> {
    grader: &'a Value,
    hyperparameters: &'a Hyperparameters,
    response_format: Option<&'a Value>,
}

/// The job object's top-level `hyperparameters` (OpenAI's three, resolved).
#[derive(Serialize)]
struct OpenAiHyperparameters {
    batch_size: usize,
    learning_rate_multiplier: f64,
    n_epochs: usize,
}

/// What the loop reads back from a `job.json` the server (or an earlier run) wrote: the id
/// its events and model names must carry.
#[derive(Deserialize)]
struct JobId {
    #[serde(default)]
    id: Option<String>,
}

struct Loop<'a> {
    request: &'a CreateJob,
    hyper: Hyperparameters,
    client: TrainingClient,
    grader: CompiledGrader,
    grader_type: String,
    response_format: Option<ResponseFormat>,
    train: Vec<PreparedRow>,
    valid: Vec<PreparedRow>,
    seed: u64,
    dir: PathBuf,
    job_id: String,
    fine_tuned_model: String,
    rollouts: &'a dyn RolloutEngine,
}

/// Runs (or resumes) a job in `dir`, calling `on_event` with every event it writes; its base
/// model is loaded on the CPU for this job alone (`rft train`).
pub fn run_job(
    request: &CreateJob,
    dir: &Path,
    control: &JobControl,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<JobSummary, TrainError> {
    let host = Arc::new(EngineHost::new(Device::Cpu, u64::MAX));
    run_job_on(&host, &LocalRollouts, request, dir, control, on_event)
}

/// [`run_job`] with its base model borrowed from `host` (the server's engine host, so a job
/// shares the weights chat, Tinker and evals already hold, on the host's device, within its
/// memory budget; the job holds it until it ends) and its rollouts from `rollouts` (this
/// process, or a rollout fleet).
pub fn run_job_on(
    host: &Arc<EngineHost>,
    rollouts: &dyn RolloutEngine,
    request: &CreateJob,
    dir: &Path,
    control: &JobControl,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<JobSummary, TrainError> {
    run_job_with(host, rollouts, request, dir, control, None, on_event)
}

/// [`run_job_on`] with its events (and each step's saved state) going to `sink` instead of
/// the folder's `events.jsonl`: the server's database and blob store.
pub fn run_job_with(
    host: &Arc<EngineHost>,
    rollouts: &dyn RolloutEngine,
    request: &CreateJob,
    dir: &Path,
    control: &JobControl,
    sink: Option<&mut dyn EventSink>,
    on_event: &mut dyn FnMut(&JobEvent),
) -> Result<JobSummary, TrainError> {
    let reinforcement = config::reinforcement(request)?;
    let grader_spec = Grader::from_value(config::grader(request)?)
        .map_err(|e| TrainError::Grader(e.to_string()))?;
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
    let train_path = Path::new(&request.training_file);
    let train_rows = read_dataset(train_path)?;
    let valid_path = Path::new(request.validation_file.as_deref().unwrap_or_default());
    let valid_rows = match &request.validation_file {
        Some(_) => read_dataset(valid_path)?,
        None => Vec::new(),
    };
    let hyper =
        Hyperparameters::from_request(&config::hyperparameters(request)?, train_rows.len())?;
    let seed = request.seed.unwrap_or(42);
    let checkpoints_dir = dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints_dir).map_err(|source| TrainError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let base = host.base(&request.model)?;
    let device = host.device().clone();
    // The client's engine shares the host's weights; `base` stays borrowed for the whole job.
    let engine = base.share();
    let train = prepare_rows(&engine, train_rows, train_path)?;
    let valid = prepare_rows(&engine, valid_rows, valid_path)?;
    let lora = LoraConfig {
        rank: hyper.lora_rank,
        alpha: hyper.lora_alpha,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(engine.model.config(), lora, seed, &device)?;
    let mut client = TrainingClient::on_host(engine, adapter, host.clone());
    let job_id = match crate::read_json::<JobId>(&dir.join("job.json")) {
        Ok(job) => job.id.unwrap_or_else(|| "ftjob-local".into()),
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
    checkpoints::recover_latest(&checkpoints_dir)?;
    let resumed_at = match checkpoints::latest(&checkpoints_dir) {
        Some((latest, step)) => {
            client.load_state(&latest)?;
            Some(step)
        }
        None => None,
    };
    let mut state = Loop {
        request,
        hyper,
        client,
        grader,
        grader_type: grader_spec.type_name().to_owned(),
        response_format,
        train,
        valid,
        seed,
        dir: dir.to_owned(),
        job_id,
        fine_tuned_model,
        rollouts,
    };
    state.write_job_file()?;
    let mut file_events;
    let sink: &mut dyn EventSink = match sink {
        Some(sink) => sink,
        None => {
            file_events = FileEvents::new(dir, &state.job_id);
            &mut file_events
        }
    };
    let mut events = EventLog::new(sink, on_event);
    state.run(control, resumed_at, &mut events)
}

impl Loop<'_> {
    fn steps_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.hyper.batch_size)
    }

    fn total_steps(&self) -> usize {
        self.steps_per_epoch() * self.hyper.n_epochs
    }

    fn write_job_file(&self) -> Result<(), TrainError> {
        let reinforcement = config::reinforcement(self.request)?;
        crate::write_json_atomic(
            &self.dir.join("job.json"),
            &JobRecord {
                id: &self.job_id,
                object: "fine_tuning.job",
                model: &self.request.model,
                training_file: &self.request.training_file,
                validation_file: self.request.validation_file.as_deref(),
                seed: self.seed,
                suffix: self.request.suffix.as_deref(),
                method: MethodRecord {
                    kind: "reinforcement",
                    reinforcement: ReinforcementRecord {
                        grader: config::grader(self.request)?,
                        hyperparameters: &self.hyper,
                        response_format: reinforcement.response_format.as_ref(),
                    },
                },
                fine_tuned_model: &self.fine_tuned_model,
                hyperparameters: OpenAiHyperparameters {
                    batch_size: self.hyper.batch_size,
                    learning_rate_multiplier: self.hyper.learning_rate_multiplier,
                    n_epochs: self.hyper.n_epochs,
                },
            },
        )
    }

    fn context(&self) -> StepContext<'_> {
        StepContext {
            hyper: &self.hyper,
            grader: &self.grader,
            response_format: self.response_format.as_ref(),
            ignore_eos: false,
            rollouts: self.rollouts,
        }
    }

    /// Samples and grades the validation set after `step`: the mean reward, its standard error
    /// and each grader's mean. Its answers are kept as the latest (and, the first time, the
    /// first) validation samples.
    fn validate(&self, seed: u64, step: usize) -> Result<Option<ValidPoint>, TrainError> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let rows: Vec<&PreparedRow> = self.valid.iter().collect();
        let graded = rollout(
            Policy::Client(&self.client),
            &self.context(),
            &rows,
            self.hyper.eval_samples,
            mix(seed ^ 0xE7A1),
        )?;
        if let Err(e) = crate::samples::write_validation(&self.dir, step, &rows, &graded.groups) {
            tracing::warn!("cannot record the validation samples: {e}");
        }
        let all: Vec<&rft_types::RunGraderResponse> =
            graded.groups.iter().flatten().map(|(_, g)| g).collect();
        let rewards: Vec<f64> = all.iter().map(|g| g.reward).collect();
        let mean = crate::step::mean(rewards.iter().copied(), rewards.len());
        let greedy = if self.hyper.temperature > 0.0 {
            self.validate_greedy(&rows)?
        } else {
            // Sampled at temperature 0 already: every sample is the greedy answer.
            mean
        };
        Ok(Some(ValidPoint {
            mean,
            stderr: standard_error(&rewards),
            greedy,
            graders: grader_means(&all),
        }))
    }

    /// The mean reward of one greedy answer per validation row. It draws nothing from the
    /// job's random streams, so a run's training and sampled validation are the same with it.
    fn validate_greedy(&self, rows: &[&PreparedRow]) -> Result<f64, TrainError> {
        let hyper = Hyperparameters {
            temperature: 0.0,
            ..self.hyper.clone()
        };
        let context = StepContext {
            hyper: &hyper,
            ..self.context()
        };
        let graded = rollout(Policy::Client(&self.client), &context, rows, 1, 0)?;
        let rewards = graded.groups.iter().flatten().map(|(_, g)| g.reward);
        Ok(crate::step::mean(rewards, rows.len()))
    }

    fn run(
        &mut self,
        control: &JobControl,
        resumed_at: Option<usize>,
        events: &mut EventLog<'_>,
    ) -> Result<JobSummary, TrainError> {
        let total = self.total_steps();
        let mut baseline = None;
        let mut last_valid = None;
        let mut train_rewards = Vec::new();
        // Saved with the resume state: a resumed job warns where an uninterrupted one would.
        let mut collapse_watch = checkpoints::latest_collapse(&self.dir.join("checkpoints"));
        let start_step = match resumed_at {
            Some(step) => {
                if control.quiet_resume.load(Ordering::SeqCst) {
                    tracing::info!(job = %self.job_id, "resumed from the checkpoint of step {step}");
                } else {
                    events.info(
                        &format!("resumed-{step}-{}", crate::unix_now()),
                        format!("Resumed from the checkpoint of step {step}"),
                    )?;
                }
                step
            }
            None => {
                events.info("started", format!(
                    "Job started: {} training rows, {} validation rows, {total} steps, group size {}",
                    self.train.len(),
                    self.valid.len(),
                    self.hyper.group_size()
                ))?;
                if let Some(point) = self.validate(mix(self.seed), 0)? {
                    baseline = Some(point.mean);
                    events.metrics(
                        "step-0/metrics",
                        format!(
                            "Step 0/{total}, full validation mean reward={:.4} ± {:.4} (greedy {:.4})",
                            point.mean, point.stderr, point.greedy
                        ),
                        baseline_metrics(total, point),
                    )?;
                }
                0
            }
        };
        let checkpoints_dir = self.dir.join("checkpoints");
        // With `max_off_policy_steps`: the rollouts sampled ahead, `(step, rollout, version)`.
        let mut ahead: std::collections::VecDeque<(usize, crate::step::Rollout, u64)> =
            std::collections::VecDeque::new();
        for step in (start_step + 1)..=total {
            if control.pause.load(Ordering::SeqCst) {
                checkpoints::save_latest_with(
                    &self.client,
                    &checkpoints_dir,
                    step - 1,
                    &collapse_watch,
                )?;
                events.info(
                    &format!("paused-{}-{}", step - 1, crate::unix_now()),
                    format!("Paused after step {}", step - 1),
                )?;
                events.step_saved(step - 1, &self.dir)?;
                return Ok(self.summary(
                    JobOutcome::Paused,
                    step - 1,
                    baseline,
                    last_valid,
                    train_rewards,
                ));
            }
            let t_step = Instant::now();
            let per_epoch = self.steps_per_epoch();
            let rows = step_rows(
                &self.train,
                self.hyper.batch_size,
                self.seed,
                per_epoch,
                step,
            );
            // Refill rows: a shuffle of the rows outside the batch seeded by the step, so a
            // resumed run refills exactly as an uninterrupted one.
            let refill_candidates: Vec<&PreparedRow> =
                if self.hyper.dynamic_sampling && self.hyper.max_refill_rounds > 0 {
                    epoch_order(self.train.len(), mix(self.seed ^ 0xD1CE), step)
                        .into_iter()
                        .map(|i| &self.train[i])
                        .filter(|p| !rows.iter().any(|b| std::ptr::eq(*b, *p)))
                        .collect()
                } else {
                    Vec::new()
                };
            let learning_rate = self.hyper.learning_rate_at(step, total);
            // Built from the fields (not `self.context()`): the step borrows the client
            // mutably beside them.
            let ctx = StepContext {
                hyper: &self.hyper,
                grader: &self.grader,
                response_format: self.response_format.as_ref(),
                ignore_eos: false,
                rollouts: self.rollouts,
            };
            let input = StepInput {
                step,
                rows: &rows,
                group_size: self.hyper.group_size(),
                seed: self.seed ^ mix(step as u64),
                refill_candidates: &refill_candidates,
                learning_rate,
            };
            let m = self.hyper.max_off_policy_steps;
            let mut report = if m == 0 {
                run_step(&mut self.client, &ctx, &input)?
            } else {
                let ahead_rows = |t: usize| {
                    step_rows(&self.train, self.hyper.batch_size, self.seed, per_epoch, t)
                };
                off_policy_step(
                    &mut self.client,
                    &ctx,
                    &input,
                    &mut ahead,
                    (step + m).min(total),
                    self.seed,
                    &ahead_rows,
                )?
            };
            train_rewards.push(report.train_reward_mean);
            // Diagnostics for the dashboard: a full disk here is logged, not fatal.
            if let Err(e) = crate::samples::write_step(
                &self.dir,
                step,
                rows.len(),
                std::mem::take(&mut report.groups),
            ) {
                tracing::warn!("cannot record the samples of step {step}: {e}");
            }

            let validate_now = step % self.hyper.eval_interval == 0 || step == total;
            let t_eval = Instant::now();
            let valid = if validate_now {
                self.validate(mix(self.seed ^ step as u64), step)?
            } else {
                None
            };
            let eval_seconds = t_eval.elapsed().as_secs_f64();
            let train_mean = report.train_reward_mean;
            let mut graders: Vec<GraderScore> = report
                .graders
                .iter()
                .map(|g| GraderScore {
                    name: g.name.clone(),
                    kind: g.kind.clone(),
                    train_reward_mean: Some(g.mean),
                    valid_reward_mean: None,
                })
                .collect();
            let mut message = format!("Step {step}/{total} , train mean reward={train_mean:.4}");
            if let Some(point) = &valid {
                for (score, v) in graders.iter_mut().zip(&point.graders) {
                    score.valid_reward_mean = Some(v.mean);
                }
                message.push_str(&format!(
                    ", full validation mean reward={:.4} ± {:.4} (greedy {:.4})",
                    point.mean, point.stderr, point.greedy
                ));
                last_valid = Some(point.mean);
            }
            let metrics = StepMetrics {
                step,
                total_steps: total,
                scores: Scores {
                    train_reward_mean: Some(train_mean),
                    graders,
                    valid_reward_mean: valid.as_ref().map(|v| v.mean),
                    valid_reward_stderr: valid.as_ref().map(|v| v.stderr),
                    valid_greedy_reward_mean: valid.as_ref().map(|v| v.greedy),
                },
                full_valid_mean_reward: valid.as_ref().map(|v| v.mean),
                train: Some(TrainStepMetrics {
                    errors: StepErrors {
                        graders: vec![GraderErrorCounts {
                            name: self.grader.name().to_owned(),
                            kind: self.grader_type.clone(),
                            train_other_error_count: report.grader_errors,
                            train_other_error_mean: report.grader_errors as f64
                                / report.samples.max(1) as f64,
                        }],
                    },
                    timing: StepTiming {
                        step: PhaseSeconds {
                            // OpenAI's `sampling` is the whole rollout: grading included.
                            sampling: report.seconds.sampling + report.seconds.grading,
                            training: report.seconds.training,
                            eval: eval_seconds,
                            full_iteration: t_step.elapsed().as_secs_f64(),
                        },
                    },
                    usage: StepUsage {
                        samples: SampleUsage::default(),
                    },
                    train_mean_reward: train_mean,
                    completion_tokens_mean: report.completion_tokens_mean,
                    completion_tokens_count: report.completion_tokens_count,
                    frac_zero_std_groups: report.frac_zero_std_groups,
                    refill_groups: report.refill_groups,
                    frac_truncated: report.frac_truncated,
                    loss: report.loss,
                    kl: report.kl,
                    entropy: report.entropy,
                    clip_fraction: report.clip_fraction,
                    grad_norm: report.grad_norm,
                    learning_rate,
                    rollout_logprob_diff: report.rollout_logprob_diff,
                    rollout_kl_k3: report.rollout_kl_k3,
                    rollout_is_corrected: report.rollout_is_corrected,
                    off_policy_steps: report.off_policy_steps,
                }),
            };
            // Observed before the state is saved, so the saved watch includes this step.
            let collapse =
                collapse_watch.observe(step, report.frac_zero_std_groups, report.entropy);
            checkpoints::save_latest_with(&self.client, &checkpoints_dir, step, &collapse_watch)?;
            if let Some(ValidPoint { mean, .. }) = valid {
                checkpoints::save_checkpoint(
                    &self.client,
                    &self.dir,
                    &NewCheckpoint {
                        job_id: &self.job_id,
                        fine_tuned_model: &self.fine_tuned_model,
                        step,
                        train_reward_mean: train_mean,
                        valid_reward_mean: mean,
                    },
                )?;
                events.info(
                    &format!("step-{step}/checkpoint"),
                    format!("Checkpoint created at step {step}"),
                )?;
            }
            events.metrics(&format!("step-{step}/metrics"), message, metrics)?;
            if let Some(warning) = collapse {
                events.warn(&format!("step-{step}/collapse"), warning)?;
            }
            events.step_saved(step, &self.dir)?;
        }
        self.client
            .save_weights_for_sampler(&self.dir.join("final"))?;
        events.finished(&self.dir)?;
        events.info(
            "completed",
            format!(
                "The job has successfully completed: {}",
                self.fine_tuned_model
            ),
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
            // The latest of equals: the nearer the end, the more it learned.
            best_checkpoint: checkpoints::read_checkpoints(&self.dir)
                .into_iter()
                .max_by(|a, b| {
                    a.metrics
                        .valid_reward_mean
                        .total_cmp(&b.metrics.valid_reward_mean)
                        .then(a.step_number.cmp(&b.step_number))
                }),
        }
    }
}

/// One validation pass: the mean reward, its standard error, each grader's mean.
struct ValidPoint {
    mean: f64,
    stderr: f64,
    /// One greedy answer per row.
    greedy: f64,
    graders: Vec<GraderMean>,
}

/// The standard error of the mean of `values` (sample standard deviation over √n); 0 for
/// fewer than two values.
fn standard_error(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (variance / n as f64).sqrt()
}

/// The metrics of the validation before training (step 0).
fn baseline_metrics(total: usize, point: ValidPoint) -> StepMetrics {
    let (mean, stderr) = (point.mean, point.stderr);
    StepMetrics {
        step: 0,
        total_steps: total,
        scores: Scores {
            train_reward_mean: None,
            valid_reward_stderr: Some(stderr),
            valid_greedy_reward_mean: Some(point.greedy),
            graders: point
                .graders
                .into_iter()
                .map(|g| GraderScore {
                    name: g.name,
                    kind: g.kind,
                    // The baseline event has always listed each grader's validation mean under
                    // `train_reward_mean`; kept as is so the wire does not change.
                    train_reward_mean: Some(g.mean),
                    valid_reward_mean: None,
                })
                .collect(),
            valid_reward_mean: Some(mean),
        },
        full_valid_mean_reward: Some(mean),
        train: None,
    }
}

/// One asynchronous step (`max_off_policy_steps` > 0): trains on the rollout of `input.step`
/// from `ahead` (sampled now if the pipeline is empty, as at the first step or after a resume)
/// while a scoped thread samples and grades the steps after it up to `last`, from a snapshot of
/// the policy as it is before this step's update.
fn off_policy_step<'r>(
    client: &mut TrainingClient,
    ctx: &StepContext<'_>,
    input: &StepInput<'_>,
    ahead: &mut std::collections::VecDeque<(usize, crate::step::Rollout, u64)>,
    last: usize,
    job_seed: u64,
    rows_of: &dyn Fn(usize) -> Vec<&'r PreparedRow>,
) -> Result<StepReport, TrainError> {
    let step = input.step;
    if ahead.front().map(|a| a.0) != Some(step) {
        ahead.clear();
        let now = rollout(
            Policy::Client(client),
            ctx,
            input.rows,
            input.group_size,
            mix(input.seed),
        )?;
        ahead.push_back((step, now, client.version()));
    }
    let targets: Vec<usize> = (step + ahead.len()..=last).collect();
    let snapshot = if targets.is_empty() {
        None
    } else {
        Some(client.snapshot()?)
    };
    let target_rows: Vec<Vec<&PreparedRow>> = targets.iter().map(|&t| rows_of(t)).collect();
    let (_, current, version) = ahead
        .pop_front()
        .ok_or_else(|| TrainError::Invalid("no rollout for the step".into()))?;
    let staleness = client.version().saturating_sub(version);
    let (report, sampled) = std::thread::scope(|scope| {
        let producer = snapshot.map(|snapshot| {
            let targets = &targets;
            let target_rows = &target_rows;
            scope.spawn(move || {
                targets
                    .iter()
                    .zip(target_rows)
                    .map(|(&t, rows)| {
                        let seed = job_seed ^ mix(t as u64);
                        rollout(
                            Policy::Snapshot(&snapshot),
                            ctx,
                            rows,
                            ctx.hyper.group_size(),
                            mix(seed),
                        )
                        .map(|r| (t, r, snapshot.version))
                    })
                    .collect::<Result<Vec<_>, TrainError>>()
            })
        });
        let report = run_step_on(
            client,
            ctx,
            input,
            Some(Prefetched {
                rollout: current,
                staleness,
            }),
        );
        let sampled = producer.map(|p| {
            p.join()
                .unwrap_or_else(|_| Err(TrainError::Invalid("the rollout thread panicked".into())))
        });
        (report, sampled)
    });
    if let Some(sampled) = sampled {
        ahead.extend(sampled?);
    }
    report
}

/// The rows of `step` (1-based): its epoch's seeded order, its batch of `batch_size`.
fn step_rows(
    train: &[PreparedRow],
    batch_size: usize,
    seed: u64,
    per_epoch: usize,
    step: usize,
) -> Vec<&PreparedRow> {
    let epoch = (step - 1) / per_epoch;
    let within = (step - 1) % per_epoch;
    epoch_order(train.len(), seed, epoch)
        .iter()
        .skip(within * batch_size)
        .take(batch_size)
        .map(|&i| &train[i])
        .collect()
}
