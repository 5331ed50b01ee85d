//! `rft bench grpo`: the wall time of one GRPO step on the default model, split into sampling,
//! grading and training, and with `--reference` the same step in the same run by TRL's
//! `GRPOTrainer` (PyTorch CPU, PEFT LoRA) on the same GGUF weights (`scripts/grpo_reference.py`).
//!
//! The step is the trainer's own: `rft_train::step::run_step` (sample → grade → group
//! advantages and DAPO weights → `forward_backward` → `optim_step`), the function `rft train`
//! runs every step, timed by the phases it reports. Both sides draw `group` completions of
//! exactly `tokens` tokens for each of the first `prompts` rows of the quickstart task
//! (end-of-sequence is ignored, so the work does not depend on what the policy happens to say),
//! grade them with the quickstart grader, and take one optimiser step of LoRA rank 16 on all
//! seven projections (`--natural-length`: both sides stop at end-of-sequence instead, and the
//! tokens each side sampled are printed per step).
//!
//! TRL is tuned before it is compared: `--micro-batches 4,8,16,64` runs one TRL process per
//! micro-batch size (the rest of the batch as gradient accumulation, generation of the whole
//! batch in one call, `torch.set_num_threads` at the core count), prints each configuration,
//! and compares OpenRFT with the fastest one, per phase and per step, with the spread of the
//! timed steps on both sides.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rft_grade::compile;
use rft_model::engine::Engine;
use rft_model::hub::{resolve_model, ModelLocation};
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_train::config::Hyperparameters;
use rft_train::dataset::{prepare_rows, PreparedRow};
use rft_train::primitives::TrainingClient;
use rft_train::step::{run_step, StepContext, StepInput};
use rft_types::api::hyperparameters::{Auto, Hyperparameters as HyperparametersRequest};
use rft_types::{DatasetRow, Grader};
use serde_json::{json, Value};

use super::bench_decode::{load_average, reference_python, run_reference};

const REFERENCE_SCRIPT: &str = include_str!("../../../../scripts/grpo_reference.py");
const QUICKSTART_TRAIN: &str = include_str!("../../../../examples/quickstart/train.jsonl");
const QUICKSTART_GRADER: &str = include_str!("../../../../examples/quickstart/grader.json");

/// Arguments of `rft bench grpo`.
#[derive(Debug, Args)]
pub(crate) struct BenchGrpoArgs {
    /// A model name, a GGUF file, a model folder or a cached hub id (the reference needs a GGUF).
    #[arg(long, default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
    pub(crate) model: String,
    /// Instead of --model: a real model's shape with seeded random weights, built here (no
    /// download; cached under $RFT_HOME/shapes): smollm2-135m, qwen2.5-0.5b, qwen3-0.6b,
    /// qwen3-1.7b. Throughput depends on the shape, not on the values.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(rft_model::config::SHAPES))]
    pub(crate) shape: Option<String>,
    /// The device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "RFT_DEVICE")]
    pub(crate) device: String,
    /// TRL's side in bf16 (`bf16=True`, the model in bfloat16) as well as in float32.
    #[arg(long)]
    pub(crate) reference_bf16: bool,
    /// Prompts per step (rows of examples/quickstart/train.jsonl, from the first).
    #[arg(long, default_value_t = 8)]
    pub(crate) prompts: usize,
    /// Completions per prompt (the group size G).
    #[arg(long, default_value_t = 8)]
    pub(crate) group: usize,
    /// Tokens per completion (all of them: end-of-sequence is ignored).
    #[arg(long, default_value_t = 64)]
    pub(crate) tokens: usize,
    /// GRPO steps to time on each side; the first one is reported but left out of the mean when
    /// there are more (it pays one-off costs: allocator growth, PyTorch's first-call setup).
    #[arg(long, default_value_t = 2)]
    pub(crate) steps: usize,
    /// LoRA rank (on all seven projections; alpha is twice the rank).
    #[arg(long, default_value_t = 16)]
    pub(crate) rank: usize,
    /// Also run TRL's GRPOTrainer in the same run (needs .venv-bench, see
    /// `scripts/bench_env.sh`).
    #[arg(long)]
    pub(crate) reference: bool,
    /// The Python of the reference environment (default: .venv-bench at the repository root).
    #[arg(long, env = "RFT_BENCH_PYTHON")]
    pub(crate) python: Option<std::path::PathBuf>,
    /// TRL micro-batch sizes to try (`per_device_train_batch_size`, with gradient accumulation
    /// making up the batch); each must divide prompts × group. The fastest is compared.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,64")]
    pub(crate) micro_batches: Vec<usize>,
    /// Let completions stop at end-of-sequence on both sides instead of forcing `--tokens`.
    #[arg(long)]
    pub(crate) natural_length: bool,
}

/// Seconds per phase of one step, and the tokens it sampled.
#[derive(Debug, Clone, Copy, Default)]
struct StepTime {
    sampling: f64,
    grading: f64,
    training: f64,
    total: f64,
    completion_tokens: usize,
}

impl StepTime {
    fn from_value(v: &Value) -> StepTime {
        let get = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        StepTime {
            sampling: get("sampling"),
            grading: get("grading"),
            training: get("training"),
            total: get("total"),
            completion_tokens: v["completion_tokens"].as_u64().unwrap_or(0) as usize,
        }
    }
}

/// One phase over the timed steps: the median and the range.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// Over the steps after the first (it pays one-off costs: allocator growth, PyTorch's
    /// first-call setup), or the only step.
    fn of(steps: &[StepTime], phase: fn(&StepTime) -> f64) -> Spread {
        let kept = if steps.len() > 1 { &steps[1..] } else { steps };
        let mut values: Vec<f64> = kept.iter().map(phase).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median [min–max]`.
    fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} [{:.d$}-{:.d$}]",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }

    /// `reference / self` as a ratio of medians, with the range from the extremes
    /// (slowest reference step over our fastest, and the other way round).
    fn speedup(&self, reference: &Spread) -> String {
        format!(
            "{:.2}x [{:.2}-{:.2}]",
            reference.median / self.median,
            reference.min / self.max,
            reference.max / self.min
        )
    }
}

/// The phases of a side's timed steps.
struct Phases {
    sampling: Spread,
    grading: Spread,
    training: Spread,
    total: Spread,
}

impl Phases {
    fn of(steps: &[StepTime]) -> Phases {
        Phases {
            sampling: Spread::of(steps, |s| s.sampling),
            grading: Spread::of(steps, |s| s.grading),
            training: Spread::of(steps, |s| s.training),
            total: Spread::of(steps, |s| s.total),
        }
    }
}

/// One TRL configuration's result.
struct ReferenceRun {
    micro_batch: usize,
    /// TRL in bfloat16 (`bf16=True`), not float32.
    bf16: bool,
    accumulation: usize,
    steps: Vec<StepTime>,
    versions: Value,
    prompt_tokens: Value,
}

/// The folder of a random model at `shape`, written the first time (seed 7).
fn shape_model(shape: &str) -> anyhow::Result<std::path::PathBuf> {
    let config =
        rft_model::ModelConfig::shape(shape).with_context(|| format!("unknown shape {shape}"))?;
    let dir = rft_model::hub::rft_home()
        .join("shapes")
        .join(format!("{shape}-seed7"));
    if !dir.join("model.safetensors").is_file() || !dir.join("tokenizer.json").is_file() {
        eprintln!(
            "building {shape} ({:.2} B parameters) with random weights in {}",
            config.parameter_count() as f64 / 1e9,
            dir.display()
        );
        let staging = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&staging);
        rft_model::tiny::write_random_model(&staging, &config, 7)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging, &dir)
            .with_context(|| format!("cannot move the model into {}", dir.display()))?;
    }
    Ok(dir)
}

pub(crate) fn grpo(args: &BenchGrpoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.prompts >= 1, "--prompts must be at least 1");
    anyhow::ensure!(
        args.group >= 2,
        "--group must be at least 2 (GRPO compares within a group)"
    );
    anyhow::ensure!(args.tokens >= 1, "--tokens must be at least 1");
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    let completions = args.prompts * args.group;
    if args.reference {
        anyhow::ensure!(
            !args.micro_batches.is_empty(),
            "--micro-batches needs at least one size"
        );
        for &m in &args.micro_batches {
            anyhow::ensure!(
                m >= 1 && completions.is_multiple_of(m),
                "--micro-batches {m}: must divide the batch of {completions} completions ({} prompts x {} samples)",
                args.prompts,
                args.group
            );
        }
    }
    let rows: Vec<DatasetRow> = QUICKSTART_TRAIN
        .lines()
        .take(args.prompts)
        .enumerate()
        .map(|(i, line)| {
            DatasetRow::from_json_line(line)
                .with_context(|| format!("examples/quickstart/train.jsonl:{}", i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        rows.len() == args.prompts,
        "--prompts {}: the quickstart task has only {} rows",
        args.prompts,
        rows.len()
    );
    let grader_json: Value = serde_json::from_str(QUICKSTART_GRADER)?;
    let grader = compile(&Grader::from_value(&grader_json)?)?;
    // DAPO (the default loss) with the bench's rank; the LR is OpenRFT's default for LoRA.
    // Dynamic sampling is off so every group is trained, as TRL does (it never drops groups):
    // the same work on both sides whatever the rewards.
    let hyper = Hyperparameters::from_request(
        &HyperparametersRequest {
            lora_rank: Some(Auto::Value(args.rank)),
            lora_alpha: Some(Auto::Value(2.0 * args.rank as f64)),
            max_completion_tokens: Some(Auto::Value(args.tokens)),
            dynamic_sampling: Some(Auto::Value(false)),
            ..HyperparametersRequest::default()
        },
        args.prompts,
    )?;

    let location = match &args.shape {
        Some(shape) => ModelLocation::HfDir(shape_model(shape)?),
        None => resolve_model(&args.model)?,
    };
    let path = match &location {
        ModelLocation::Gguf(path) | ModelLocation::HfDir(path) => path.clone(),
    };
    let python = if args.reference {
        Some(reference_python(args.python.as_deref())?)
    } else {
        None
    };
    let device = rft_model::device::parse_device(&args.device)?;

    let start = Instant::now();
    let engine = Engine::load_base(&path.to_string_lossy(), &device)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let lora = LoraConfig {
        rank: hyper.lora_rank,
        alpha: hyper.lora_alpha,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(engine.model.config(), lora, 7, &device)?;
    let prepared = prepare_rows(&engine, rows, Path::new("examples/quickstart/train.jsonl"))?;
    let prompts: Vec<&[u32]> = prepared.iter().map(|p| p.prompt.as_slice()).collect();
    let mut client = TrainingClient::new(engine, adapter);
    let threads = rayon::current_num_threads();
    eprintln!(
        "model {} loaded in {:.1} s; {threads} threads; {} prompts ({}–{} tokens) x {} samples x {} tokens, LoRA r{} on 7 projections, loss {}",
        path.display(),
        start.elapsed().as_secs_f64(),
        args.prompts,
        prompts.iter().map(|p| p.len()).min().unwrap_or(0),
        prompts.iter().map(|p| p.len()).max().unwrap_or(0),
        args.group,
        args.tokens,
        hyper.lora_rank,
        hyper.loss_type,
    );

    let load_before = load_average();
    let mut ours = Vec::new();
    let batch: Vec<&PreparedRow> = prepared.iter().collect();
    let ctx = StepContext {
        hyper: &hyper,
        grader: &grader,
        response_format: None,
        // Every completion runs to `tokens`, as TRL's min_new_tokens, unless both sides are
        // asked to stop at end-of-sequence.
        ignore_eos: !args.natural_length,
        rollouts: &rft_train::rollouts::LocalRollouts,
    };
    for step in 0..args.steps {
        let t_step = Instant::now();
        let report = run_step(
            &mut client,
            &ctx,
            &StepInput {
                step: step + 1,
                rows: &batch,
                group_size: args.group,
                seed: step as u64,
                refill_candidates: &[],
                learning_rate: hyper.learning_rate(),
            },
        )?;
        let time = StepTime {
            sampling: report.seconds.sampling,
            grading: report.seconds.grading,
            training: report.seconds.training,
            total: t_step.elapsed().as_secs_f64(),
            completion_tokens: report.completion_tokens_count,
        };
        eprintln!(
            "rft step {}: sampling {:.2} s, grading {:.4} s, training {:.2} s ({} of {} sequences trained, loss {:.4}, grad norm {:.4}, reward mean {:.3})",
            step + 1,
            time.sampling,
            time.grading,
            time.training,
            report.trained_sequences,
            args.prompts * args.group,
            report.loss,
            report.grad_norm,
            report.train_reward_mean,
        );
        ours.push(time);
    }

    let mut references = Vec::new();
    if let Some(python) = &python {
        let precisions: &[bool] = if args.reference_bf16 {
            &[false, true]
        } else {
            &[false]
        };
        for (&micro_batch, &bf16) in args
            .micro_batches
            .iter()
            .flat_map(|m| precisions.iter().map(move |b| (m, b)))
        {
            let (gguf, model_dir) = match &location {
                ModelLocation::Gguf(path) => (Some(path), None),
                ModelLocation::HfDir(path) => (None, Some(path)),
            };
            let request = json!({
                "gguf": gguf,
                "model_dir": model_dir,
                "bf16": bf16,
                "device": args.device,
                "prompts": prepared.iter().map(|p| json!({
                    "messages": p.row.messages,
                    "answer": p.row.item_value()["answer"],
                })).collect::<Vec<_>>(),
                "group_size": args.group,
                "completion_tokens": args.tokens,
                "natural_length": args.natural_length,
                "micro_batch": micro_batch,
                "steps": args.steps,
                "threads": threads,
                "lora_rank": hyper.lora_rank,
                "lora_alpha": hyper.lora_alpha,
                "learning_rate": hyper.learning_rate(),
                "max_grad_norm": hyper.max_grad_norm,
                "loss_type": hyper.loss_type,
                "epsilon": hyper.epsilon,
                "epsilon_high": hyper.epsilon_high,
                "seed": 7,
            });
            eprintln!(
                "TRL with micro-batch {micro_batch} x {} accumulation steps{}",
                completions / micro_batch,
                if bf16 { ", bf16" } else { "" }
            );
            let result = run_reference(python, "grpo_reference.py", REFERENCE_SCRIPT, &request)?;
            let steps: Vec<StepTime> = result["steps"]
                .as_array()
                .map(|s| s.iter().map(StepTime::from_value).collect())
                .unwrap_or_default();
            anyhow::ensure!(
                steps.len() == args.steps,
                "TRL (micro-batch {micro_batch}) reported {} steps instead of {}",
                steps.len(),
                args.steps
            );
            references.push(ReferenceRun {
                micro_batch,
                bf16,
                accumulation: completions / micro_batch,
                steps,
                versions: result["versions"].clone(),
                prompt_tokens: result["prompt_tokens"].clone(),
            });
        }
    }

    outln!(
        "GRPO step: {} prompts x {} samples x {} tokens ({}), LoRA r{}, {} threads; median [min-max] of steps {}",
        args.prompts,
        args.group,
        args.tokens,
        if args.natural_length {
            "stopping at end-of-sequence"
        } else {
            "forced to full length"
        },
        hyper.lora_rank,
        threads,
        if args.steps > 1 {
            format!("2..{}", args.steps)
        } else {
            "1".into()
        }
    );
    outln!(
        "{:<36} {:>22} {:>22} {:>22} {:>22}",
        "engine",
        "sampling s",
        "grading s",
        "training s",
        "step s"
    );
    let row = |name: &str, p: &Phases| -> anyhow::Result<()> {
        outln!(
            "{name:<36} {:>22} {:>22} {:>22} {:>22}",
            p.sampling.show(2),
            p.grading.show(4),
            p.training.show(2),
            p.total.show(2)
        );
        Ok(())
    };
    let ours_phases = Phases::of(&ours);
    row("openrft", &ours_phases)?;
    let mut configurations = Vec::with_capacity(references.len());
    for reference in &references {
        let phases = Phases::of(&reference.steps);
        row(
            &format!(
                "trl {} mb {} x {}{}",
                reference.versions["trl"].as_str().unwrap_or("?"),
                reference.micro_batch,
                reference.accumulation,
                if reference.bf16 { " bf16" } else { "" }
            ),
            &phases,
        )?;
        configurations.push((reference, phases));
    }
    let fastest = configurations
        .into_iter()
        .min_by(|a, b| a.1.total.median.total_cmp(&b.1.total.median));
    if let Some((best, trl)) = fastest {
        let versions = &best.versions;
        outln!(
            "fastest TRL configuration: {}per_device_train_batch_size {}, gradient_accumulation_steps {}, generation of all {completions} completions in one call, {threads} torch threads (TRL {} / transformers {} / peft {} / torch {})",
            if best.bf16 { "bf16=True, " } else { "" },
            best.micro_batch,
            best.accumulation,
            versions["trl"].as_str().unwrap_or("?"),
            versions["transformers"].as_str().unwrap_or("?"),
            versions["peft"].as_str().unwrap_or("?"),
            versions["torch"].as_str().unwrap_or("?"),
        );
        outln!(
            "openrft speed-up against it (median [range]): step {}, sampling {}, training {}",
            ours_phases.total.speedup(&trl.total),
            ours_phases.sampling.speedup(&trl.sampling),
            ours_phases.training.speedup(&trl.training),
        );
        let ours_tokens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        outln!(
            "prompt tokens: openrft {:?}, trl {}",
            ours_tokens,
            best.prompt_tokens
        );
        for (i, t) in best.steps.iter().enumerate() {
            outln!(
                "trl step {}: sampling {:.2} s, grading {:.4} s, training {:.2} s, step {:.2} s, {} completion tokens",
                i + 1,
                t.sampling,
                t.grading,
                t.training,
                t.total,
                t.completion_tokens
            );
        }
    }
    for (i, t) in ours.iter().enumerate() {
        outln!(
            "openrft step {}: sampling {:.2} s, grading {:.4} s, training {:.2} s, step {:.2} s, {} completion tokens",
            i + 1,
            t.sampling,
            t.grading,
            t.training,
            t.total,
            t.completion_tokens
        );
    }
    outln!(
        "load average (1 min) before / after: {load_before} / {}",
        load_average()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(total: f64) -> StepTime {
        StepTime {
            total,
            sampling: total / 2.0,
            ..StepTime::default()
        }
    }

    #[test]
    fn the_spread_leaves_out_the_first_step_and_takes_the_median() {
        let steps = [step(100.0), step(40.0), step(44.0), step(42.0)];
        let spread = Spread::of(&steps, |s| s.total);
        assert_eq!((spread.median, spread.min, spread.max), (42.0, 40.0, 44.0));
        let even = Spread::of(&steps[..3], |s| s.total);
        assert_eq!(even.median, 42.0);
        let only = Spread::of(&steps[..1], |s| s.total);
        assert_eq!(only.median, 100.0);
    }

    #[test]
    fn the_speed_up_range_pairs_the_extremes() {
        let ours = Spread {
            median: 10.0,
            min: 9.0,
            max: 11.0,
        };
        let trl = Spread {
            median: 60.0,
            min: 55.0,
            max: 66.0,
        };
        assert_eq!(ours.speedup(&trl), "6.00x [5.00-7.33]");
    }
}
