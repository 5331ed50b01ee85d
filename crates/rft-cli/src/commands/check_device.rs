//! `rft check-device`: does the engine compute the same thing on this device as on the CPU?
//! For tiny random Llama, Qwen2 and Qwen3 models (written on the spot: no download, so it runs
//! on a GPU machine with no network): the logits of a batch, the completion log-probs and every
//! LoRA gradient of the checkpointed training path, and greedy samples, each compared with the
//! CPU's f32, once with the device in f32 (equal to reduction order) and once in bf16 (within
//! the tolerance `rft-model`'s precision test holds the CPU's bf16 to). Then, unless
//! `--skip-speed`, the speed of a SmolLM2-135M-shaped random model on the device in both
//! precisions: a GRPO-sized decode (64 rows x 64 tokens) and one training pass over 8 prompts x
//! 8 completions.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_model::sample::{sample, SamplingParams};
use rft_model::train::{checkpointed_backward, TokenSequence};
use rft_model::{Architecture, CausalLm, KvCache, Logits, ModelConfig, Precision};

/// Arguments of `rft check-device`.
#[derive(Debug, Args)]
pub(crate) struct CheckDeviceArgs {
    /// The device to check against the CPU: `cuda`, `cuda:N` (or `cpu`, which checks nothing).
    #[arg(long, default_value = "cuda")]
    pub(crate) device: String,
    /// Only the parity checks.
    #[arg(long)]
    pub(crate) skip_speed: bool,
}

/// Largest |device − CPU| allowed for logits and log-probs, and for gradients relative to
/// max(1, |gradient|), per precision on the device (the CPU runs f32): f32 differs only in
/// reduction order; bf16 by its rounding, bounded as `crates/rft-model/tests/precision.rs`
/// bounds it on the CPU.
fn tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-3,
        Precision::Bf16 => 5e-2,
    }
}

/// The next value of a splitmix64 stream over `state`.
fn splitmix(state: &mut u64) -> u64 {
    let value = rft_train::seed::mix(*state);
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    value
}

fn ids(n: usize, vocab: usize, state: &mut u64) -> Vec<u32> {
    (0..n)
        .map(|_| (splitmix(state) % vocab as u64) as u32)
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn report(label: &str, value: f32, limit: f32, failures: &mut usize) -> anyhow::Result<()> {
    let ok = value <= limit;
    if !ok {
        *failures += 1;
    }
    outln!(
        "  {label:<34} {value:>10.2e}  {}",
        if ok { "ok" } else { "FAILED" }
    );
    Ok(())
}

pub(crate) fn check(args: &CheckDeviceArgs) -> anyhow::Result<ExitCode> {
    let device = rft_model::device::parse_device(&args.device)?;
    outln!("device {} ({device:?}) against the CPU", args.device);
    let dir = std::env::temp_dir().join(format!("rft-check-device-{}", std::process::id()));
    let mut failures = 0;
    let mut state = 42u64;
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let model_dir = dir.join(format!("{arch:?}"));
        rft_model::tiny::write_tiny_model(&model_dir, arch, 7)?;
        let cpu = CausalLm::load_with(&model_dir, &Device::Cpu, Precision::F32)?;
        for precision in [Precision::F32, Precision::Bf16] {
            let dev = CausalLm::load_with(&model_dir, &device, precision).with_context(|| {
                format!("cannot load the tiny {arch:?} model on {}", args.device)
            })?;
            outln!("{arch:?} (tiny random model), {precision} on the device");
            failures += compare(&cpu, &dev, &device, &model_dir, precision, &mut state)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if !args.skip_speed {
        for precision in [Precision::F32, Precision::Bf16] {
            speed(&device, precision, &mut state)?;
        }
    }
    if failures > 0 {
        outln!("{failures} check(s) FAILED");
        return Ok(ExitCode::FAILURE);
    }
    outln!("all parity checks passed");
    Ok(ExitCode::SUCCESS)
}

/// One model on the device against the CPU's f32; returns the failed checks.
fn compare(
    cpu: &CausalLm,
    dev: &CausalLm,
    device: &Device,
    model_dir: &std::path::Path,
    precision: Precision,
    state: &mut u64,
) -> anyhow::Result<usize> {
    let limit = tolerance(precision);
    let mut failures = 0;
    let vocab = cpu.config().vocab_size;

    let tokens = ids(2 * 9, vocab, state);
    let positions: Vec<u32> = (0..2).flat_map(|_| 0..9u32).collect();
    let forward = |model: &CausalLm, on: &Device| -> anyhow::Result<Tensor> {
        Ok(model.forward(
            &Tensor::from_vec(tokens.clone(), (2, 9), on)?,
            &Tensor::from_vec(positions.clone(), (2, 9), on)?,
            None,
            &mut KvCache::new(),
            Logits::All,
        )?)
    };
    let diff = max_abs_diff(&forward(cpu, &Device::Cpu)?, &forward(dev, device)?)?;
    report("logits (2 x 9 tokens)", diff, limit, &mut failures)?;

    // An adapter with non-zero B (PEFT's init has B = 0, which would hide A's gradients),
    // moved to the device through its PEFT files.
    let adapter = LoraAdapter::new(
        cpu.config(),
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        },
        3,
        &Device::Cpu,
    )?;
    for (name, var) in adapter.named_vars() {
        if name.contains("lora_B") {
            let t = var.as_tensor();
            let values: Vec<f32> = (0..t.elem_count())
                .map(|_| ((splitmix(state) % 10_000) as f32 / 10_000.0 - 0.5) * 0.4)
                .collect();
            var.set(&Tensor::from_vec(values, t.dims(), &Device::Cpu)?)?;
        }
    }
    let adapter_dir = model_dir.join("adapter");
    adapter.save_peft(&adapter_dir, "tiny")?;
    let dev_adapter = LoraAdapter::load_peft(&adapter_dir, dev.config(), device)?;
    let prompt = ids(5, vocab, state);
    let sequences: Vec<TokenSequence> = (0..3)
        .map(|i| TokenSequence {
            prompt: prompt.clone(),
            completion: ids(4 + i, vocab, state),
        })
        .collect();
    let loss = |lp: &Tensor, _: &[std::ops::Range<usize>]| lp.sum_all()?.neg();
    let on_cpu = checkpointed_backward(cpu, &adapter, &sequences, loss)?;
    let on_dev = checkpointed_backward(dev, &dev_adapter, &sequences, loss)?;
    let lp_diff = on_cpu
        .logprobs
        .iter()
        .zip(&on_dev.logprobs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    report("completion log-probs", lp_diff, limit, &mut failures)?;
    let mut worst = 0f32;
    for ((_, c), (_, d)) in adapter.named_vars().iter().zip(dev_adapter.named_vars()) {
        let (Some(gc), Some(gd)) = (
            on_cpu.grads.get(&c.as_tensor().id()),
            on_dev.grads.get(&d.as_tensor().id()),
        ) else {
            anyhow::bail!("an adapter tensor got no gradient on one side");
        };
        let scale = gc
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?
            .max(1.0);
        worst = worst.max(max_abs_diff(gc, gd)? / scale);
    }
    report("LoRA gradients (relative)", worst, limit, &mut failures)?;

    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 12,
        stop_ids: Vec::new(),
        ..SamplingParams::default()
    };
    let a = sample(cpu, &prompt, 2, &params)?;
    let b = sample(dev, &prompt, 2, &params)?;
    let same = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.ids.iter().zip(&y.ids).take_while(|(p, q)| p == q).count())
        .min()
        .unwrap_or(0);
    outln!("  greedy tokens equal to the CPU's:  {same} of 12");
    Ok(failures)
}

/// A SmolLM2-135M-shaped random model in `precision` on `device`: a rollout-sized decode and
/// one training pass.
fn speed(device: &Device, precision: Precision, state: &mut u64) -> anyhow::Result<()> {
    let config = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1_536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100_000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        max_position_embeddings: 8_192,
    };
    let model = CausalLm::random(config, 1, DType::F32, device)?.with_precision(precision)?;
    let prompt = ids(85, 49_152, state);
    let params = SamplingParams {
        temperature: 1.0,
        max_tokens: 64,
        stop_ids: Vec::new(),
        seed: 1,
        ..SamplingParams::default()
    };
    sample(&model, &prompt, 2, &params)?; // warm-up: kernels, allocator
    let start = Instant::now();
    let out = sample(&model, &prompt, 64, &params)?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(|c| c.ids.len()).sum();
    outln!(
        "SmolLM2-135M-shaped random model ({precision}): decode 64 rows x 64 tokens after an 85-token prompt: {seconds:.2} s ({:.0} tok/s)",
        tokens as f64 / seconds
    );
    let adapter = LoraAdapter::new(model.config(), LoraConfig::default(), 3, device)?;
    let sequences: Vec<TokenSequence> = (0..8)
        .flat_map(|_| {
            let prompt = ids(85, 49_152, state);
            (0..8)
                .map(|_| TokenSequence {
                    prompt: prompt.clone(),
                    completion: ids(64, 49_152, state),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let loss = |lp: &Tensor, _: &[std::ops::Range<usize>]| lp.sum_all()?.neg();
    checkpointed_backward(&model, &adapter, &sequences[..8], loss)?; // warm-up
    let start = Instant::now();
    checkpointed_backward(&model, &adapter, &sequences, loss)?;
    outln!(
        "  training pass (checkpointed, LoRA r16 on 7 projections) over 8 prompts x 8 completions of 64 tokens: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
