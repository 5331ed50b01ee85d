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
//! seven projections.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
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
}

/// Seconds per phase of one step.
#[derive(Debug, Clone, Copy, Default)]
struct StepTime {
    sampling: f64,
    grading: f64,
    training: f64,
    total: f64,
}

impl StepTime {
    fn from_value(v: &Value) -> StepTime {
        let get = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        StepTime {
            sampling: get("sampling"),
            grading: get("grading"),
            training: get("training"),
            total: get("total"),
        }
    }
}

/// The mean of the steps after the first (or the only step).
fn steady(steps: &[StepTime]) -> StepTime {
    let kept = if steps.len() > 1 { &steps[1..] } else { steps };
    let n = kept.len().max(1) as f64;
    let sum = |f: fn(&StepTime) -> f64| kept.iter().map(f).sum::<f64>() / n;
    StepTime {
        sampling: sum(|s| s.sampling),
        grading: sum(|s| s.grading),
        training: sum(|s| s.training),
        total: sum(|s| s.total),
    }
}

pub(crate) fn grpo(args: &BenchGrpoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.prompts >= 1, "--prompts must be at least 1");
    anyhow::ensure!(
        args.group >= 2,
        "--group must be at least 2 (GRPO compares within a group)"
    );
    anyhow::ensure!(args.tokens >= 1, "--tokens must be at least 1");
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
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

    let location = resolve_model(&args.model)?;
    let path = match &location {
        ModelLocation::Gguf(path) | ModelLocation::HfDir(path) => path.clone(),
    };
    let python = if args.reference {
        anyhow::ensure!(
            matches!(location, ModelLocation::Gguf(_)),
            "--reference loads the same GGUF file in TRL; {} is not one",
            path.display()
        );
        Some(reference_python(args.python.as_deref())?)
    } else {
        None
    };

    let start = Instant::now();
    let engine = Engine::load_base(&path.to_string_lossy(), &Device::Cpu)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let lora = LoraConfig {
        rank: hyper.lora_rank,
        alpha: hyper.lora_alpha,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(engine.model.config(), lora, 7, &Device::Cpu)?;
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
        // Every completion runs to `tokens`, as TRL's min_new_tokens.
        ignore_eos: true,
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

    let reference = match &python {
        Some(python) => {
            let request = json!({
                "gguf": path,
                "prompts": prepared.iter().map(|p| json!({
                    "messages": p.row.messages,
                    "answer": p.row.item_value()["answer"],
                })).collect::<Vec<_>>(),
                "group_size": args.group,
                "completion_tokens": args.tokens,
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
            Some(run_reference(
                python,
                "grpo_reference.py",
                REFERENCE_SCRIPT,
                &request,
            )?)
        }
        None => None,
    };

    println!(
        "GRPO step: {} prompts x {} samples x {} tokens, LoRA r{}, {} threads, mean of steps {}",
        args.prompts,
        args.group,
        args.tokens,
        hyper.lora_rank,
        threads,
        if args.steps > 1 {
            format!("2..{}", args.steps)
        } else {
            "1".into()
        }
    );
    println!(
        "{:<28} {:>11} {:>11} {:>11} {:>11}",
        "engine", "sampling s", "grading s", "training s", "step s"
    );
    let row = |name: &str, t: &StepTime| {
        println!(
            "{name:<28} {:>11.2} {:>11.4} {:>11.2} {:>11.2}",
            t.sampling, t.grading, t.training, t.total
        );
    };
    let ours_steady = steady(&ours);
    row("openrft", &ours_steady);
    if let Some(reference) = &reference {
        let steps: Vec<StepTime> = reference["steps"]
            .as_array()
            .map(|s| s.iter().map(StepTime::from_value).collect())
            .unwrap_or_default();
        anyhow::ensure!(
            steps.len() == args.steps,
            "TRL reported {} steps instead of {}",
            steps.len(),
            args.steps
        );
        let trl = steady(&steps);
        let versions = &reference["versions"];
        row(
            &format!(
                "trl {} / torch {}",
                versions["trl"].as_str().unwrap_or("?"),
                versions["torch"].as_str().unwrap_or("?")
            ),
            &trl,
        );
        println!(
            "openrft speed-up: {:.2}x per step (sampling {:.2}x, training {:.2}x)",
            trl.total / ours_steady.total,
            trl.sampling / ours_steady.sampling,
            trl.training / ours_steady.training
        );
        let ours_tokens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        println!(
            "prompt tokens: openrft {:?}, trl {}",
            ours_tokens, reference["prompt_tokens"]
        );
    }
    for (i, t) in ours.iter().enumerate() {
        println!(
            "openrft step {}: sampling {:.2} s, grading {:.4} s, training {:.2} s, step {:.2} s",
            i + 1,
            t.sampling,
            t.grading,
            t.training,
            t.total
        );
    }
    println!(
        "load average (1 min) before / after: {load_before} / {}",
        load_average()
    );
    Ok(ExitCode::SUCCESS)
}
