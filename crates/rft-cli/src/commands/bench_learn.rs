//! `rft bench learn`: how well a job learns, over seeds, and with `--reference` how well TRL's
//! `GRPOTrainer` learns the same job (`scripts/learn_reference.py`).
//!
//! Speed benchmarks say nothing of learning: a faster step that learns less is not a better
//! trainer. This runs the job (the quickstart's by default, or `--config`) once per seed with
//! OpenRFT's trainer, and with `--reference` once per seed with TRL on the same GGUF weights,
//! the same rows, the same resolved settings (prompts per step, group size, steps, learning
//! rate and schedule, loss and clipping, reward scaling, truncation masking, iterations,
//! temperature, completion tokens, LoRA rank and alpha, gradient clip, precision) and the same
//! grader. What TRL cannot express is said, not hidden: it keeps groups whose rewards are all
//! equal in the loss's token count (OpenRFT's `dynamic_sampling` drops them), scores the
//! loss's log-probs at the sampling temperature (OpenRFT at 1), and counts schedule steps from
//! 0 (OpenRFT from 1). The grader is the same: TRL's rewards and validation scores come from `rft
//! grade` on the job's grader. Both validate on the job's validation rows before training,
//! every `eval_interval` steps and after the last, sampling each row `eval_samples` times at
//! the job's temperature.
//!
//! Per engine it prints the validation before training, the best and the final (mean and
//! standard deviation over seeds) and the wall time, and writes every curve to
//! `bench-learn.json` and a plot to `bench-learn.svg` in `--output`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rft_model::hub::{resolve_model, ModelLocation};
use rft_train::config::{parse_job, Hyperparameters, BASE_LEARNING_RATE};
use rft_train::job::{run_job, JobControl};
use rft_types::api::hyperparameters::{LossType, LrSchedule, ScaleRewards};
use rft_types::api::job::CreateJob;
use rft_types::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bench_decode::{reference_python, run_reference};

const REFERENCE_SCRIPT: &str = include_str!("../../../../scripts/learn_reference.py");

/// Arguments of `rft bench learn`.
#[derive(Debug, Args)]
pub(crate) struct BenchLearnArgs {
    /// The job (as `rft train --config` takes it); default: the quickstart's job, all of its
    /// steps (examples/quickstart/job.json).
    #[arg(long, value_name = "JOB.json")]
    pub(crate) config: Option<PathBuf>,
    /// Seeds to run each engine with.
    #[arg(long, value_delimiter = ',', default_value = "7,1,2")]
    pub(crate) seeds: Vec<u64>,
    /// Also train with TRL's GRPOTrainer on the same job (needs .venv-bench).
    #[arg(long)]
    pub(crate) reference: bool,
    /// Only TRL's side (with --reference): OpenRFT's curves (and TRL's of other seeds) are
    /// read from an earlier bench-learn.json in --output.
    #[arg(long)]
    pub(crate) reference_only: bool,
    /// TRL's `per_device_train_batch_size` (the rest of the batch as gradient accumulation);
    /// default: the whole batch.
    #[arg(long)]
    pub(crate) micro_batch: Option<usize>,
    /// The Python of the reference environment (default: .venv-bench at the repository root).
    #[arg(long, env = "RFT_BENCH_PYTHON")]
    pub(crate) python: Option<PathBuf>,
    /// Where the runs, bench-learn.json and bench-learn.svg go.
    #[arg(long, default_value = "runs/bench-learn")]
    pub(crate) output: PathBuf,
    /// Train nothing: print the table and draw the plot again from --output's bench-learn.json
    /// (runs of one job gathered there from several invocations, say).
    #[arg(long, conflicts_with_all = ["reference", "reference_only"])]
    pub(crate) replot: bool,
}

/// One validation point: the mean reward over the validation rows' samples, and its standard
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Point {
    step: usize,
    mean: f64,
    #[serde(default)]
    stderr: f64,
    /// One greedy answer per row (absent from runs made before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    greedy: Option<f64>,
}

/// One run's validation curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Curve {
    /// `openrft` or `trl`.
    engine: String,
    seed: u64,
    wall_seconds: f64,
    validation: Vec<Point>,
}

/// `bench-learn.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Results {
    /// The job's name (its suffix), for the plot's title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    /// The job's steps (from OpenRFT's runs).
    steps: Option<usize>,
    runs: Vec<Curve>,
}

/// What `learn_reference.py` reads.
#[derive(Debug, Serialize)]
struct ReferenceRequest {
    gguf: PathBuf,
    rft: PathBuf,
    grader: PathBuf,
    train: Vec<ReferenceRow>,
    valid: Vec<ReferenceRow>,
    seed: u64,
    threads: usize,
    micro_batch: Option<usize>,
    /// TRL in bf16 (`bf16=True`, the model in bfloat16) when OpenRFT runs bf16 (`--dtype`).
    bf16: bool,
    hyper: ReferenceSettings,
}

/// A dataset row as the reference takes it: the chat messages, and the `item` it is graded
/// against.
#[derive(Debug, Serialize)]
struct ReferenceRow {
    messages: Vec<ChatMessage>,
    item: Map<String, Value>,
}

/// The job's resolved settings, in TRL's terms.
#[derive(Debug, Serialize)]
struct ReferenceSettings {
    batch_size: usize,
    group_size: usize,
    steps: usize,
    epochs_of_rows: usize,
    learning_rate: f64,
    lr_schedule: &'static str,
    warmup_steps: usize,
    loss_type: &'static str,
    epsilon: f64,
    epsilon_high: f64,
    scale_rewards: &'static str,
    mask_truncated: bool,
    num_iterations: usize,
    beta: f64,
    temperature: f64,
    max_completion_tokens: usize,
    lora_rank: usize,
    lora_alpha: f64,
    max_grad_norm: f64,
    weight_decay: f64,
    eval_interval: usize,
    eval_samples: usize,
}

/// What `learn_reference.py` writes (other keys are kept in its file only).
#[derive(Debug, Deserialize)]
struct ReferenceResult {
    wall_seconds: f64,
    validation: Vec<Point>,
}

impl Curve {
    fn before(&self) -> f64 {
        self.validation.first().map_or(f64::NAN, |p| p.mean)
    }

    fn final_(&self) -> f64 {
        self.validation.last().map_or(f64::NAN, |p| p.mean)
    }

    fn best(&self) -> f64 {
        self.validation
            .iter()
            .skip(1)
            .map(|p| p.mean)
            .fold(f64::NAN, f64::max)
    }

    /// The greedy answers' mean at the last validation, where it was measured.
    fn final_greedy(&self) -> Option<f64> {
        self.validation.last().and_then(|p| p.greedy)
    }
}

pub(crate) fn learn(args: &BenchLearnArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds needs at least one seed");
    anyhow::ensure!(
        !args.reference_only || args.reference,
        "--reference-only needs --reference"
    );
    let results_path = args.output.join("bench-learn.json");
    if args.replot {
        let results = read_results(&results_path)?;
        return report(&results, &results_path, &args.output);
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let job = load_job(args)?;
    let python = if args.reference {
        Some(reference_python(args.python.as_deref())?)
    } else {
        None
    };
    let mut results = Results {
        task: job.suffix.clone(),
        ..Results::default()
    };
    if args.reference_only {
        let earlier = read_results(&results_path)?;
        results.steps = earlier.steps;
        // OpenRFT's runs, and TRL's of the seeds not asked for again.
        results.runs = earlier
            .runs
            .into_iter()
            .filter(|c| c.engine == "openrft" || !args.seeds.contains(&c.seed))
            .collect();
    } else {
        for &seed in &args.seeds {
            let (curve, steps) = run_ours(&job, seed, &args.output)?;
            results.steps = Some(steps);
            results.runs.push(curve);
            write_results(&results_path, &results)?;
        }
    }
    if let Some(python) = &python {
        let steps = results
            .steps
            .context("no OpenRFT run says how many steps the job has")?;
        for &seed in &args.seeds {
            let request = reference_request(&job, seed, steps, args.micro_batch)?;
            eprintln!("TRL, seed {seed}: {steps} steps ...");
            let result = run_reference(
                python,
                "learn_reference.py",
                REFERENCE_SCRIPT,
                &serde_json::to_value(&request)?,
            )?;
            let result: ReferenceResult =
                serde_json::from_value(result).context("the reference's result")?;
            results.runs.push(Curve {
                engine: "trl".into(),
                seed,
                validation: result.validation,
                wall_seconds: result.wall_seconds,
            });
            write_results(&results_path, &results)?;
        }
    }
    report(&results, &results_path, &args.output)
}

/// An earlier run's bench-learn.json.
fn read_results(path: &Path) -> anyhow::Result<Results> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the earlier runs' {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bench-learn.json", path.display()))
}

/// Prints the table and draws the plot of `results`.
fn report(results: &Results, results_path: &Path, output: &Path) -> anyhow::Result<ExitCode> {
    print_table(&results.runs)?;
    let svg = output.join("bench-learn.svg");
    let task = results.task.as_deref().unwrap_or("the job");
    std::fs::write(&svg, plot(task, &results.runs))
        .with_context(|| format!("cannot write {}", svg.display()))?;
    outln!(
        "curves: {}; plot: {}",
        results_path.display(),
        svg.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The job to run, its files' paths made absolute.
fn load_job(args: &BenchLearnArgs) -> anyhow::Result<CreateJob> {
    match &args.config {
        Some(path) => super::train::read_job(path),
        None => {
            let data = args.output.join("data");
            std::fs::create_dir_all(&data)?;
            let job = super::train::quickstart_job(&std::path::absolute(&data)?)?;
            rft_model::hub::SMOLLM2_135M_INSTRUCT
                .ensure()
                .context("cannot fetch the default model")?;
            Ok(parse_job(job)?)
        }
    }
}

/// OpenRFT's run at `seed`: its validation curve and the job's step count.
fn run_ours(job: &CreateJob, seed: u64, output: &Path) -> anyhow::Result<(Curve, usize)> {
    let mut request = job.clone();
    request.seed = Some(seed);
    let dir = output.join(format!("openrft-seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("OpenRFT, seed {seed} → {}", dir.display());
    let started = Instant::now();
    run_job(&request, &dir, &JobControl::default(), &mut |_| {})?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let mut validation = Vec::new();
    let mut steps = 0;
    for event in rft_train::events::read_events(&dir) {
        let Some(metrics) = event.metrics() else {
            continue;
        };
        steps = steps.max(metrics.total_steps);
        if let Some(mean) = metrics.scores.valid_reward_mean {
            validation.push(Point {
                step: metrics.step,
                mean,
                stderr: metrics.scores.valid_reward_stderr.unwrap_or(0.0),
                greedy: metrics.scores.valid_greedy_reward_mean,
            });
        }
    }
    validation.sort_by_key(|p| p.step);
    validation.dedup_by_key(|p| p.step);
    let curve = Curve {
        engine: "openrft".into(),
        seed,
        validation,
        wall_seconds,
    };
    anyhow::ensure!(
        !curve.validation.is_empty(),
        "the run recorded no validation"
    );
    eprintln!(
        "OpenRFT, seed {seed}: validation {:.3} → {:.3} in {wall_seconds:.0} s",
        curve.before(),
        curve.final_()
    );
    Ok((curve, steps))
}

/// What `learn_reference.py` needs: the job's weights, rows, grader and resolved settings.
fn reference_request(
    job: &CreateJob,
    seed: u64,
    steps: usize,
    micro_batch: Option<usize>,
) -> anyhow::Result<ReferenceRequest> {
    let gguf = match resolve_model(&job.model)? {
        ModelLocation::Gguf(path) => path,
        ModelLocation::HfDir(path) => anyhow::bail!(
            "--reference loads the same GGUF file in transformers; {} is a folder",
            path.display()
        ),
    };
    let grader = rft_train::config::grader(job)?.clone();
    let train = rows(Path::new(&job.training_file))?;
    let valid_file = job
        .validation_file
        .as_deref()
        .context("--reference compares validation curves: the job needs a validation_file")?;
    let valid = rows(Path::new(valid_file))?;
    let hyper =
        Hyperparameters::from_request(&rft_train::config::hyperparameters(job)?, train.len())?;
    let loss_type = match hyper.loss_type {
        LossType::Dapo => "dapo",
        LossType::Grpo => "grpo",
        LossType::DrGrpo => "dr_grpo",
        other => anyhow::bail!("TRL has no {other:?} loss to compare with"),
    };
    // Hugging Face's plain "constant" ignores warm-up steps; its "cosine" warms up itself.
    let lr_schedule = match (hyper.lr_schedule, hyper.warmup_steps) {
        (LrSchedule::Constant, 0) => "constant",
        (LrSchedule::Constant, _) => "constant_with_warmup",
        (LrSchedule::Cosine, _) => "cosine",
    };
    // GRPO and Dr. GRPO clip symmetrically here (`Hyperparameters::loss_fn`), DAPO higher.
    let epsilon_high = match hyper.loss_type {
        LossType::Dapo => hyper.epsilon_high,
        _ => hyper.epsilon,
    };
    let scale_rewards = match hyper.scale_rewards {
        ScaleRewards::Group => "group",
        ScaleRewards::Unscaled => "none",
    };
    // What TRL cannot be told: its loss divides the logits by the temperature and samples
    // greedily only one completion per prompt; it has no overlong penalty.
    anyhow::ensure!(
        hyper.temperature > 0.0,
        "--reference: TRL cannot sample a group greedily (temperature 0)"
    );
    anyhow::ensure!(
        hyper.overlong_buffer == 0,
        "--reference: TRL has no overlong penalty; set overlong_buffer 0 to compare"
    );
    if hyper.temperature != 1.0 {
        eprintln!(
            "note: TRL scores the loss's log-probs at temperature {} and OpenRFT at 1; the objectives differ",
            hyper.temperature
        );
    }
    let grader_dir = std::env::temp_dir().join(format!("rft-bench-learn-{}", std::process::id()));
    std::fs::create_dir_all(&grader_dir)?;
    let grader_path = grader_dir.join("grader.json");
    std::fs::write(&grader_path, grader.to_string())?;
    let rows_per_step = hyper.batch_size;
    Ok(ReferenceRequest {
        gguf,
        rft: this_binary()?,
        grader: grader_path,
        seed,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        micro_batch,
        bf16: rft_model::Precision::resolve(&candle_core::Device::Cpu)?
            == rft_model::Precision::Bf16,
        hyper: ReferenceSettings {
            batch_size: rows_per_step,
            group_size: hyper.group_size(),
            steps,
            epochs_of_rows: (steps * rows_per_step).div_ceil(train.len().max(1)),
            learning_rate: BASE_LEARNING_RATE * hyper.learning_rate_multiplier,
            lr_schedule,
            warmup_steps: hyper.warmup_steps,
            loss_type,
            epsilon: hyper.epsilon,
            epsilon_high,
            scale_rewards,
            mask_truncated: hyper.mask_truncated,
            num_iterations: hyper.num_iterations,
            beta: hyper.beta,
            temperature: hyper.temperature,
            max_completion_tokens: hyper.max_completion_tokens,
            lora_rank: hyper.lora_rank,
            lora_alpha: hyper.lora_alpha,
            max_grad_norm: hyper.max_grad_norm,
            weight_decay: hyper.weight_decay,
            eval_interval: hyper.eval_interval,
            eval_samples: hyper.eval_samples,
        },
        train,
        valid,
    })
}

/// This binary's path, for the reference's `rft grade` calls. A rebuild during a long run
/// replaces the file: Linux then names the running one "PATH (deleted)", and the new binary at
/// PATH grades the same way.
fn this_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?;
    let text = path.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => path,
    })
}

/// A dataset's rows as the reference takes them.
fn rows(path: &Path) -> anyhow::Result<Vec<ReferenceRow>> {
    let rows =
        rft_types::read_dataset(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(rows
        .into_iter()
        .map(|row| ReferenceRow {
            messages: row.messages,
            item: row.item,
        })
        .collect())
}

fn write_results(path: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(results)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Mean and sample standard deviation.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

fn print_table(curves: &[Curve]) -> anyhow::Result<()> {
    outln!(
        "{:<8} {:>5} {:>8} {:>16} {:>16} {:>16} {:>16} {:>10}",
        "engine",
        "seeds",
        "before",
        "best",
        "final",
        "best − final",
        "final greedy",
        "wall (s)"
    );
    for engine in ["openrft", "trl"] {
        let runs: Vec<&Curve> = curves.iter().filter(|c| c.engine == engine).collect();
        if runs.is_empty() {
            continue;
        }
        let column =
            |f: &dyn Fn(&Curve) -> f64| mean_sd(&runs.iter().map(|c| f(c)).collect::<Vec<_>>());
        let (before, _) = column(&|c| c.before());
        let (best, best_sd) = column(&|c| c.best());
        let (last, last_sd) = column(&|c| c.final_());
        let (drop, drop_sd) = column(&|c| c.best() - c.final_());
        let (wall, _) = column(&|c| c.wall_seconds);
        let greedy: Option<Vec<f64>> = runs.iter().map(|c| c.final_greedy()).collect();
        let greedy = greedy.map_or_else(
            || "-".to_owned(),
            |g| {
                let (mean, sd) = mean_sd(&g);
                format!("{mean:.3} ± {sd:.3}")
            },
        );
        outln!(
            "{engine:<8} {:>5} {before:>8.3} {:>16} {:>16} {:>16} {greedy:>16} {wall:>10.0}",
            runs.len(),
            format!("{best:.3} ± {best_sd:.3}"),
            format!("{last:.3} ± {last_sd:.3}"),
            format!("{drop:.3} ± {drop_sd:.3}"),
        );
        for run in &runs {
            let curve: Vec<String> = run
                .validation
                .iter()
                .map(|p| match p.greedy {
                    Some(g) => format!("{}:{:.2}±{:.2}/g{g:.2}", p.step, p.mean, p.stderr),
                    None => format!("{}:{:.2}±{:.2}", p.step, p.mean, p.stderr),
                })
                .collect();
            outln!("  seed {:<4} {}", run.seed, curve.join(" "));
        }
    }
    outln!(
        "(± over seeds: the sample standard deviation; per point: the standard error; /g: the greedy answers' mean)"
    );
    Ok(())
}

/// Every validation curve of `task` on one chart: OpenRFT in blue, TRL in orange, one line per
/// seed.
fn plot(task: &str, curves: &[Curve]) -> String {
    let (width, height, left, bottom, top, right) = (640.0, 400.0, 50.0, 40.0, 30.0, 110.0_f64);
    let max_step = curves
        .iter()
        .flat_map(|c| c.validation.iter().map(|p| p.step))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |step: f64| left + step / max_step * (width - left - right);
    let y = |reward: f64| height - bottom - reward.clamp(0.0, 1.0) * (height - bottom - top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\">{}: validation reward by step (one line per seed)</text>\n",
        xml_text(task)
    );
    for tick in 0..=5 {
        let value = tick as f64 / 5.0;
        svg += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{value:.1}</text>\n",
            width - right,
            left - 6.0,
            y(value) + 4.0,
            y0 = y(value)
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">step (of {max_step})</text>\n",
        (left + width - right) / 2.0,
        height - 10.0
    );
    for (engine, colour, label) in [("openrft", "#1f77b4", "OpenRFT"), ("trl", "#ff7f0e", "TRL")] {
        for curve in curves.iter().filter(|c| c.engine == engine) {
            let points: Vec<String> = curve
                .validation
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.step as f64), y(p.mean)))
                .collect();
            svg += &format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                points.join(" ")
            );
        }
        let row = if engine == "openrft" { 0.0 } else { 1.0 };
        svg += &format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{label}</text>\n",
            width - right + 10.0,
            width - right + 30.0,
            top + 20.0 + row * 20.0,
            top + 20.0 + row * 20.0,
            width - right + 35.0,
            top + 24.0 + row * 20.0
        );
    }
    svg + "</svg>\n"
}

/// `text` for an SVG text node: a job's suffix is the user's, so markup in it stays text.
fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_final_and_the_plot_come_from_the_curves() {
        let point = |step, mean| Point {
            step,
            mean,
            stderr: 0.05,
            greedy: Some(mean + 0.1),
        };
        let curve = Curve {
            engine: "openrft".into(),
            seed: 7,
            validation: vec![point(0, 0.1), point(4, 0.7), point(8, 0.6)],
            wall_seconds: 10.0,
        };
        assert_eq!(curve.before(), 0.1);
        assert_eq!(curve.best(), 0.7);
        assert_eq!(curve.final_(), 0.6);
        assert_eq!(curve.final_greedy(), Some(0.7));
        let text = serde_json::to_string(&curve).unwrap();
        let back: Curve = serde_json::from_str(&text).unwrap();
        assert_eq!(back.validation, curve.validation);
        let svg = plot("a <task>", &[curve]);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
        assert!(svg.contains("a &lt;task&gt;: validation reward") && !svg.contains("<task>"));
        assert_eq!(mean_sd(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
    }
}
