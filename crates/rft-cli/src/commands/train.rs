//! `rft train` and `rft quickstart`: run an RFT job from a job file, or the built-in one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rft_train::config::parse_job;
use rft_train::job::{run_job_on, JobControl, JobOutcome, JobSummary};
use rft_types::api::hyperparameters::Auto;
use rft_types::api::job::CreateJob;
use serde_json::Value;

use crate::cli::{ExportArgs, QuickstartArgs, TrainArgs};

/// The built-in task: files a user can copy from `examples/quickstart/`.
const QUICKSTART_TRAIN: &str = include_str!("../../../../examples/quickstart/train.jsonl");
const QUICKSTART_VALID: &str = include_str!("../../../../examples/quickstart/valid.jsonl");
const QUICKSTART_GRADER: &str = include_str!("../../../../examples/quickstart/grader.json");
const QUICKSTART_JOB: &str = include_str!("../../../../examples/quickstart/job.json");
/// Steps of `rft quickstart` unless `--steps` says otherwise.
const QUICKSTART_STEPS: usize = 12;

pub(crate) fn train(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    let (request, dir) = match (&args.resume, &args.config) {
        (Some(dir), _) => {
            let path = dir.join("request.json");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("{} is not a job folder (no request.json)", dir.display())
            })?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            (parse_job(value)?, dir.clone())
        }
        (None, Some(config)) => {
            let request = read_job(config)?;
            let dir = args.output.clone().unwrap_or_else(|| {
                PathBuf::from("runs").join(
                    config
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "job".into()),
                )
            });
            (request, dir)
        }
        (None, None) => anyhow::bail!("give --config JOB.json or --resume DIR"),
    };
    let summary = match &args.adapter_dir {
        Some(adapter_dir) if !args.rollout_urls.is_empty() => {
            let remote = remote_rollouts(args, adapter_dir, &dir)?;
            let summary = run_with(&request, &dir, &remote)?;
            let timings = remote.timings();
            eprintln!(
                "rollout fleet: {} versions published (adapter written and loaded on every replica) in p50 {:.3} s, p95 {:.3} s; from a publish to each replica's first completion under it: p50 {:.3} s, p95 {:.3} s",
                timings.publish.len(),
                percentile(&timings.publish, 0.5),
                percentile(&timings.publish, 0.95),
                percentile(&timings.first_completion, 0.5),
                percentile(&timings.first_completion, 0.95),
            );
            summary
        }
        _ => run(&request, &dir)?,
    };
    print_summary(&summary, &dir)?;
    Ok(ExitCode::SUCCESS)
}

/// The `q` quantile of `values` (nearest rank; NaN for none).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

/// The rollout fleet of `--rollout-url`: adapters named after the run folder and a random
/// suffix, so two runs never share a name; its key from `RFT_ROLLOUT_API_KEY`.
fn remote_rollouts(
    args: &TrainArgs,
    adapter_dir: &Path,
    dir: &Path,
) -> anyhow::Result<rft_train::rollouts::RemoteRollouts> {
    let folder: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let suffix = rft_model::request::seed_or_random(None) & 0xffff_ffff;
    let config = rft_train::rollouts::RemoteConfig {
        urls: args.rollout_urls.clone(),
        admin_urls: args.rollout_admin_urls.clone(),
        adapter_dir: adapter_dir.to_owned(),
        name_prefix: format!("{folder}-{suffix:08x}"),
        // Every version asynchronous steps may still be sampling (`max_off_policy_steps` ≤ 8),
        // and the one being published.
        keep_versions: 9,
        api_key: std::env::var("RFT_ROLLOUT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        timeout: std::time::Duration::from_secs(600),
        publisher: None,
    };
    Ok(rft_train::rollouts::RemoteRollouts::new(config)?)
}

/// Reads a job file; dataset paths are taken relative to the job file's folder.
pub(crate) fn read_job(path: &Path) -> anyhow::Result<CreateJob> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    let mut value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for key in ["training_file", "validation_file"] {
        if let Some(file) = value.get(key).and_then(Value::as_str) {
            let resolved = base.join(file);
            value[key] = Value::String(resolved.to_string_lossy().into_owned());
        }
    }
    parse_job(value).with_context(|| format!("invalid job in {}", path.display()))
}

/// The device jobs train on: `RFT_DEVICE` (as `rft serve --device` reads it): cpu (the
/// default), or cuda / cuda:N in a build with the `cuda` feature.
fn job_device() -> anyhow::Result<candle_core::Device> {
    Ok(rft_model::device::from_env()?)
}

/// Runs a job in `dir`, printing its events; Ctrl-C pauses it at the next step boundary.
pub(crate) fn run(request: &CreateJob, dir: &Path) -> anyhow::Result<JobSummary> {
    run_with(request, dir, &rft_train::rollouts::LocalRollouts)
}

/// [`run`] with its rollouts from `rollouts`.
fn run_with(
    request: &CreateJob,
    dir: &Path,
    rollouts: &dyn rft_train::rollouts::RolloutEngine,
) -> anyhow::Result<JobSummary> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let request_path = dir.join("request.json");
    if !request_path.exists() {
        std::fs::write(&request_path, serde_json::to_vec_pretty(request)?)
            .with_context(|| format!("cannot write {}", request_path.display()))?;
    }
    let control = Arc::new(JobControl::default());
    let handler = control.clone();
    // A second Ctrl-C (or a handler already set by an embedding process) is left alone.
    let _ = ctrlc::set_handler(move || {
        eprintln!("pausing after the current step (Ctrl-C again to kill)...");
        if handler.pause.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let progress = Progress::new();
    let host = std::sync::Arc::new(rft_model::host::EngineHost::new(job_device()?, u64::MAX));
    let result = run_job_on(&host, rollouts, request, dir, &control, &mut |event| {
        progress.event(event)
    });
    progress.finish();
    let summary = result.with_context(|| format!("the job in {} failed", dir.display()))?;
    Ok(summary)
}

/// A run's progress on stderr: each event as a line, and below them, in a terminal only, a bar
/// with the step, the latest mean rewards and the time left. Piped, `ProgressDrawTarget::stderr`
/// draws nothing, so logs and CI output get the event lines alone, with no control characters.
struct Progress {
    bar: indicatif::ProgressBar,
    /// Whether the bar has a position yet: the first one (a resumed job starts past 0) resets
    /// the time estimate, which would otherwise count the skipped steps as done in no time.
    started: std::cell::Cell<bool>,
    /// The latest validation reward and its standard error (validation runs every
    /// `eval_interval` steps only).
    valid: std::cell::Cell<Option<(f64, f64, Option<f64>)>>,
}

impl Progress {
    fn new() -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "step {pos}/{len} [{bar:30}] {msg} ({eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message("starting");
        Progress {
            bar,
            started: std::cell::Cell::new(false),
            valid: std::cell::Cell::new(None),
        }
    }

    fn event(&self, event: &rft_types::api::event::JobEvent) {
        // Printed around the bar, so the line is not drawn over it; warnings stand out.
        let warning = event.level == rft_types::api::event::EventLevel::Warn;
        self.bar.suspend(|| {
            if warning {
                eprintln!("warning: {}", event.message);
            } else {
                eprintln!("{}", event.message);
            }
        });
        let Some(metrics) = event.metrics() else {
            return;
        };
        self.bar.set_length(metrics.total_steps as u64);
        self.bar.set_position(metrics.step as u64);
        if !self.started.replace(true) {
            self.bar.reset_eta();
        }
        let mut message = String::new();
        if let Some(train) = metrics.scores.train_reward_mean {
            message.push_str(&format!("reward {train:.3}"));
        }
        if let Some(valid) = metrics.full_valid_mean_reward {
            self.valid.set(Some((
                valid,
                metrics.scores.valid_reward_stderr.unwrap_or(0.0),
                metrics.scores.valid_greedy_reward_mean,
            )));
        }
        if let Some((valid, stderr, greedy)) = self.valid.get() {
            if !message.is_empty() {
                message.push_str(", ");
            }
            message.push_str(&format!("validation {valid:.3} ± {stderr:.3}"));
            if let Some(greedy) = greedy {
                message.push_str(&format!(" (greedy {greedy:.3})"));
            }
        }
        self.bar.set_message(message);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub(crate) fn print_summary(summary: &JobSummary, dir: &Path) -> anyhow::Result<()> {
    match summary.outcome {
        JobOutcome::Paused => outln!(
            "paused after step {}/{}; continue with: rft train --resume {}",
            summary.steps,
            summary.total_steps,
            dir.display()
        ),
        JobOutcome::Succeeded => {
            outln!("fine-tuned model: {}", summary.fine_tuned_model);
            outln!("adapter (PEFT): {}", summary.final_adapter.display());
        }
    }
    if let Some(base) = summary.baseline_valid_reward {
        outln!("validation reward before training: {base:.3}");
    }
    if let Some(last) = summary.final_valid_reward {
        outln!("validation reward after training:  {last:.3}");
    }
    if let Some(best) = &summary.best_checkpoint {
        outln!(
            "best checkpoint: step {} (validation reward {:.3}): {}",
            best.step_number,
            best.metrics.valid_reward_mean,
            best.fine_tuned_model_checkpoint
        );
        outln!(
            "  its adapter (PEFT): {}",
            dir.join(format!("checkpoints/step-{}", best.step_number))
                .display()
        );
    }
    Ok(())
}

/// The quickstart's job (examples/quickstart/job.json, all of its steps) with its data written
/// into `data`.
pub(crate) fn quickstart_job(data: &Path) -> anyhow::Result<Value> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    for (name, content) in [
        ("train.jsonl", QUICKSTART_TRAIN),
        ("valid.jsonl", QUICKSTART_VALID),
        ("grader.json", QUICKSTART_GRADER),
    ] {
        std::fs::write(data.join(name), content)
            .with_context(|| format!("cannot write {}", data.join(name).display()))?;
    }
    let mut job: Value = serde_json::from_str(QUICKSTART_JOB).context("the built-in job.json")?;
    job["training_file"] = Value::String(data.join("train.jsonl").to_string_lossy().into_owned());
    job["validation_file"] = Value::String(data.join("valid.jsonl").to_string_lossy().into_owned());
    job["method"]["reinforcement"]["grader"] =
        serde_json::from_str(QUICKSTART_GRADER).context("the built-in grader.json")?;
    Ok(job)
}

pub(crate) fn quickstart(args: &QuickstartArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| rft_types::paths::rft_home().join("quickstart"));
    let data = dir.join("data");
    let mut job = quickstart_job(&data)?;
    // The built-in run is sized for about ten minutes on two CPU cores.
    if let Some(steps) = args.steps.or(Some(QUICKSTART_STEPS)) {
        let batch = job["method"]["reinforcement"]["hyperparameters"]["batch_size"]
            .as_u64()
            .unwrap_or(8) as usize;
        let rows = QUICKSTART_TRAIN
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        anyhow::ensure!(steps >= 1, "--steps must be at least 1");
        let keep = (steps * batch).min(rows);
        let trimmed: String = QUICKSTART_TRAIN
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(keep)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(data.join("train.jsonl"), trimmed)?;
        let interval = job["method"]["reinforcement"]["hyperparameters"]["eval_interval"]
            .as_u64()
            .unwrap_or(4) as usize;
        job["method"]["reinforcement"]["hyperparameters"]["eval_interval"] =
            Value::from(interval.min(steps).max(1));
    }
    eprintln!(
        "OpenRFT quickstart: the default model ({}), the task in examples/quickstart/",
        rft_model::hub::SMOLLM2_135M_INSTRUCT.name
    );
    rft_model::hub::SMOLLM2_135M_INSTRUCT
        .ensure()
        .context("cannot fetch the default model")?;
    let request = parse_job(job)?;
    let run_dir = dir.join("run");
    // A quickstart always starts fresh.
    let _ = std::fs::remove_dir_all(&run_dir);
    let summary = run(&request, &run_dir)?;
    print_summary(&summary, &run_dir)?;
    if let (Some(before), Some(after)) = (summary.baseline_valid_reward, summary.final_valid_reward)
    {
        outln!("change: {:+.3}", after - before);
    }
    if summary.outcome == JobOutcome::Succeeded {
        show_before_after(&request, &summary.final_adapter, 4)?;
    }
    outln!(
        "took {:.1} min; events: {}",
        started.elapsed().as_secs_f64() / 60.0,
        run_dir.join("events.jsonl").display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.merged, "only --merged export exists");
    let engine = rft_model::engine::Engine::load(&args.model, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot load model {}", args.model))?;
    rft_model::export::export_merged(&engine, &args.output)
        .with_context(|| format!("cannot export to {}", args.output.display()))?;
    outln!(
        "wrote {} ({}{})",
        args.output.display(),
        engine.base,
        if engine.adapter.is_some() {
            " + adapter, merged"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Greedy answers of the base model and of the trained adapter to the first `rows` validation
/// prompts, with their rewards.
fn show_before_after(request: &CreateJob, adapter_dir: &Path, rows: usize) -> anyhow::Result<()> {
    use rft_model::sample::{Sampler, SamplingParams};
    let device = job_device()?;
    let engine = rft_model::engine::Engine::load_base(&request.model, &device)?;
    let adapter =
        rft_model::lora::LoraAdapter::load_peft(adapter_dir, engine.model.config(), &device)?;
    let grader = rft_types::Grader::from_value(rft_train::config::grader(request)?)?;
    let grader = rft_grade::compile(&grader)?;
    let Some(valid) = &request.validation_file else {
        return Ok(());
    };
    let dataset = rft_train::dataset::read_dataset(Path::new(valid))?;
    // Short answers unless the job set a length: this is a glimpse, not an evaluation.
    let max_tokens = rft_train::config::hyperparameters(request)?
        .max_completion_tokens
        .and_then(Auto::value)
        .unwrap_or(64);
    outln!("\nbefore → after (greedy), first {rows} validation rows:");
    for row in dataset.iter().take(rows) {
        let messages: Vec<Value> = row
            .messages
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        let prompt = engine.chat_prompt(&messages, row.tools.as_deref())?;
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..SamplingParams::default()
        };
        let mut answers = Vec::new();
        for adapter in [None, Some(&adapter)] {
            let sampler = Sampler {
                model: &engine.model,
                adapter,
                tokenizer: Some(&engine.tokenizer),
            };
            let request = engine.request(prompt.clone(), 1, params.clone(), None)?;
            let text = sampler
                .run(&[request])?
                .pop()
                .and_then(|mut c| c.pop())
                .and_then(|c| c.text)
                .unwrap_or_default();
            let reward = grader
                .grade(&rft_types::Sample::from_text(&text), &row.item_value())
                .reward;
            answers.push((text, reward));
        }
        let question = messages
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .replace('\n', " ");
        outln!("- {question}");
        outln!("    before ({:.2}): {:?}", answers[0].1, answers[0].0);
        outln!("    after  ({:.2}): {:?}", answers[1].1, answers[1].0);
    }
    Ok(())
}
