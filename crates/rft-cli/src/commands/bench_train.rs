//! `rft bench train-memory`: one forward and backward pass of the LoRA training path (completion
//! log-probs of a batch, differentiable with respect to a fresh adapter), with wall times and the
//! process's resident memory: RSS before loading the model, after loading it, and the peak
//! (`VmHWM` from `/proc/self/status`) of each path measured: the checkpointed one the trainer
//! uses, and the plain graph. Also checks that every adapter tensor got a gradient. Token ids are
//! pseudo-random (fixed seed) and every sequence has its own prompt: no prompt sharing, the
//! costlier case; the cost does not depend on the ids themselves.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rft_model::hub::{resolve_model, ModelLocation};
use rft_model::lora::{LoraAdapter, LoraConfig, Projection};
use rft_model::train::{
    check_all_gradients, checkpointed_backward, completion_logprobs, TokenSequence,
};
use rft_model::CausalLm;

/// Arguments of `rft bench train-memory`.
#[derive(Debug, Args)]
pub(crate) struct BenchTrainMemoryArgs {
    /// The device: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "RFT_DEVICE")]
    pub(crate) device: String,
    /// A model name, a GGUF file, a model folder or a cached hub id.
    #[arg(long, default_value = rft_model::hub::SMOLLM2_135M_INSTRUCT.name)]
    pub(crate) model: String,
    /// Sequences in the batch.
    #[arg(long, default_value_t = 8)]
    pub(crate) batch: usize,
    /// Tokens per sequence, prompt and completion together.
    #[arg(long, default_value_t = 256)]
    pub(crate) seq: usize,
    /// Prompt tokens of each sequence (the rest are scored completion tokens).
    #[arg(long, default_value_t = 64)]
    pub(crate) prompt: usize,
    /// Forward+backward passes to time (the peak is over all of them).
    #[arg(long, default_value_t = 1)]
    pub(crate) repeats: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = LoraConfig::default().rank)]
    pub(crate) rank: usize,
    /// Which training paths to measure, in this order: `checkpointed` (per-layer activation
    /// checkpointing, what the trainer uses) and `plain` (`completion_logprobs` + `backward`).
    #[arg(long, value_delimiter = ',', default_value = "checkpointed,plain")]
    pub(crate) modes: Vec<TrainMode>,
    /// Projections that carry an adapter (`q,k,v,o,gate,up,down`; `all`), to see what each
    /// costs in memory.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub(crate) lora_targets: Vec<String>,
}

/// A training path to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TrainMode {
    /// `checkpointed_backward`: one layer's graph at a time, one more forward pass.
    Checkpointed,
    /// `completion_logprobs` + `backward`: the whole graph at once.
    Plain,
}

impl TrainMode {
    fn name(self) -> &'static str {
        match self {
            TrainMode::Checkpointed => "checkpointed",
            TrainMode::Plain => "plain",
        }
    }
}

pub(crate) fn train_memory(args: &BenchTrainMemoryArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        args.prompt >= 1 && args.seq > args.prompt,
        "--seq must exceed --prompt, which must be at least 1"
    );
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let rss_start = memory_kib("VmRSS")?;
    let location = resolve_model(&args.model)?;
    let path = match &location {
        ModelLocation::Gguf(path) | ModelLocation::HfDir(path) => path.clone(),
    };
    let device = rft_model::device::parse_device(&args.device)?;
    let start = Instant::now();
    let model = CausalLm::load(&path, &device)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let load = start.elapsed().as_secs_f64();
    let mut targets = Vec::new();
    for name in &args.lora_targets {
        if name == "all" {
            targets.extend(Projection::ALL);
        } else {
            targets.push(Projection::parse(name).with_context(|| {
                format!("unknown projection {name:?} (q, k, v, o, gate, up, down or all)")
            })?);
        }
    }
    targets.sort();
    targets.dedup();
    let lora = LoraConfig {
        rank: args.rank,
        targets,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(model.config(), lora, 0, &device)?;
    let rss_loaded = memory_kib("VmRSS")?;
    let hwm_loaded = memory_kib("VmHWM")?;

    let vocab = model.config().vocab_size as u64;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_id = move || -> u32 {
        // xorshift64*: fixed pseudo-random ids, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % vocab) as u32
    };
    let sequences: Vec<TokenSequence> = (0..args.batch)
        .map(|_| TokenSequence {
            prompt: (0..args.prompt).map(|_| next_id()).collect(),
            completion: (0..args.seq - args.prompt).map(|_| next_id()).collect(),
        })
        .collect();

    let config = model.config();
    outln!(
        "model {} ({} layers, hidden {}, vocab {}, {:?} weights), loaded in {load:.2} s",
        path.display(),
        config.num_layers,
        config.hidden_size,
        config.vocab_size,
        model.lm_head().dtype()
    );
    outln!(
        "LoRA rank {} on {:?} in every layer: {} trainable parameters",
        adapter.config().rank,
        adapter.config().targets,
        adapter.num_parameters()
    );
    outln!(
        "batch {} x {} tokens ({} prompt + {} completion), {} threads",
        args.batch,
        args.seq,
        args.prompt,
        args.seq - args.prompt,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    outln!("RSS at start: {}", gib(rss_start));
    outln!(
        "RSS after loading the model and adapter: {} (peak so far {})",
        gib(rss_loaded),
        gib(hwm_loaded)
    );
    let vars = adapter.vars();
    // The checkpointed path first: its peak is the lower one, and freed memory stays in the
    // allocator, so the plain path's peak (measured second, from a reset high-water mark) is
    // not hidden by it.
    for mode in args.modes.iter().copied() {
        let reset = reset_peak();
        let mut peak = 0;
        for repeat in 0..args.repeats {
            let start = Instant::now();
            let (forward, backward, loss_value, with_grad) = match mode {
                TrainMode::Plain => {
                    let logprobs = completion_logprobs(&model, Some(&adapter), &sequences)?;
                    let loss = logprobs.logprobs.mean_all()?.neg()?;
                    let loss_value = loss.to_scalar::<f32>()?;
                    let forward = start.elapsed().as_secs_f64();
                    let start = Instant::now();
                    let grads = loss.backward()?;
                    let backward = start.elapsed().as_secs_f64();
                    check_all_gradients(&adapter, &grads)?;
                    let with_grad = vars
                        .iter()
                        .filter(|v| grads.get(v.as_tensor()).is_some())
                        .count();
                    (Some(forward), backward, f64::from(loss_value), with_grad)
                }
                TrainMode::Checkpointed => {
                    let out = checkpointed_backward(&model, &adapter, &sequences, |lp, _| {
                        lp.mean_all()?.neg()
                    })?;
                    let total = start.elapsed().as_secs_f64();
                    let with_grad = vars
                        .iter()
                        .filter(|v| out.grads.contains_key(&v.as_tensor().id()))
                        .count();
                    (None, total, out.loss, with_grad)
                }
            };
            anyhow::ensure!(
                with_grad == vars.len(),
                "{}: only {with_grad} of {} LoRA tensors got a gradient",
                mode.name(),
                vars.len()
            );
            peak = peak.max(memory_kib("VmHWM")?);
            match forward {
                Some(forward) => outln!(
                    "{} pass {}: forward {forward:.2} s, backward {backward:.2} s, total {:.2} s; loss {loss_value:.4}; gradients for {with_grad}/{} LoRA tensors",
                    mode.name(),
                    repeat + 1,
                    forward + backward,
                    vars.len()
                ),
                None => outln!(
                    "{} pass {}: forward+backward {backward:.2} s; loss {loss_value:.4}; gradients for {with_grad}/{} LoRA tensors",
                    mode.name(),
                    repeat + 1,
                    vars.len()
                ),
            }
        }
        outln!(
            "{} peak RSS (VmHWM{}): {} — {} the 6 GB target",
            mode.name(),
            if reset {
                ", reset before"
            } else {
                ", not reset: includes earlier passes"
            },
            gib(peak),
            if peak * 1024 < 6_000_000_000 {
                "under"
            } else {
                "OVER"
            }
        );
    }
    outln!("RSS after the passes: {}", gib(memory_kib("VmRSS")?));
    Ok(ExitCode::SUCCESS)
}

/// Resets the peak RSS to the current RSS (`/proc/self/clear_refs`, Linux 4.0+); false if the
/// kernel refused.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `kB` field of `/proc/self/status` (Linux).
fn memory_kib(field: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/self/status"))
}

fn gib(kib: u64) -> String {
    format!("{:.2} GiB", kib as f64 / (1024.0 * 1024.0))
}
