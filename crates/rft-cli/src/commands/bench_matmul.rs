//! `rft bench matmul`: the matmul shapes of a GRPO step on SmolLM2-135M, one thread each (a
//! rollout or training shard runs on one core), through candle's matmul (`gemm` 0.19) and
//! through `rft_model::packed` with each micro-kernel this CPU runs, in the same run.
//!
//! The packed weights are packed before timing: that is how they are used (once per rollout
//! for sampling, once per model for training), so packing is not part of any figure.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Args;
use rft_model::packed::{Kernel, PackedWeight};

/// Arguments of `rft bench matmul`.
#[derive(Debug, Args)]
pub(crate) struct BenchMatmulArgs {
    /// Seconds of work per measurement (the best repeat is reported).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) seconds: f64,
}

/// `(name, m, k, n)` for `x: (m, k) @ Wᵀ` with `W: (n, k)`.
const SHAPES: [(&str, usize, usize, usize); 8] = [
    ("decode q/o (32 rows)", 32, 576, 576),
    ("decode up (32 rows)", 32, 576, 1536),
    ("decode down (32 rows)", 32, 1536, 576),
    ("decode head (32 rows)", 32, 576, 49152),
    ("train up (2400 rows)", 2400, 576, 1536),
    ("train down (2400 rows)", 2400, 1536, 576),
    ("train head (256 rows)", 256, 576, 49152),
    ("train head^T (256 rows)", 256, 49152, 576),
];

pub(crate) fn matmul(args: &BenchMatmulArgs) -> anyhow::Result<ExitCode> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| run(args))
}

fn run(args: &BenchMatmulArgs) -> anyhow::Result<ExitCode> {
    let kernels: Vec<Kernel> = [Kernel::Avx2, Kernel::Avx512]
        .into_iter()
        .filter(|&kernel| {
            let probe = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu);
            probe
                .ok()
                .and_then(|w| PackedWeight::pack_for(&w, kernel).ok().flatten())
                .is_some()
        })
        .collect();
    println!(
        "one thread; GFLOP/s (best of repeats over about {:.1} s); kernels here: {kernels:?}",
        args.seconds
    );
    print!("{:<26} {:>10}", "shape", "candle");
    for kernel in &kernels {
        print!(" {:>10}", format!("{kernel:?}"));
    }
    for kernel in &kernels {
        print!(" {:>12}", format!("{kernel:?}/candle"));
    }
    println!();
    for (name, m, k, n) in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let flops = 2.0 * (m * k * n) as f64;
        let candle = best_gflops(flops, args.seconds, || Ok(x.matmul(&w.t()?)?))?;
        let mut packed = Vec::new();
        for &kernel in &kernels {
            let weight = PackedWeight::pack_for(&w, kernel)?
                .ok_or_else(|| anyhow::anyhow!("{kernel:?} did not pack"))?;
            packed.push(best_gflops(flops, args.seconds, || {
                Ok(weight.matmul_t(&x)?)
            })?);
        }
        print!("{name:<26} {candle:>10.1}");
        for gflops in &packed {
            print!(" {gflops:>10.1}");
        }
        for gflops in &packed {
            print!(" {:>11.2}x", gflops / candle);
        }
        println!();
    }
    // A decode step multiplies by every weight of the model once, so its weights come from
    // memory, not cache: the same product cycling over distinct weights (about 300 MB of them,
    // like the 135M model's 540 MB) shows the memory-bound rate.
    let (m, k, n) = (32, 576, 1536);
    let count = (300 << 20) / (4 * k * n);
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let weights = (0..count)
        .map(|_| Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu))
        .collect::<Result<Vec<_>, _>>()?;
    let flops = 2.0 * (m * k * n * count) as f64;
    let candle = best_gflops(flops, args.seconds, || {
        let mut last = None;
        for w in &weights {
            last = Some(x.matmul(&w.t()?)?);
        }
        last.ok_or_else(|| anyhow::anyhow!("no weights"))
    })?;
    let mut packed = Vec::new();
    for &kernel in &kernels {
        let panels = weights
            .iter()
            .map(|w| {
                PackedWeight::pack_for(w, kernel)?
                    .ok_or_else(|| anyhow::anyhow!("{kernel:?} did not pack"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        packed.push(best_gflops(flops, args.seconds, || {
            let mut last = None;
            for w in &panels {
                last = Some(w.matmul_t(&x)?);
            }
            last.ok_or_else(|| anyhow::anyhow!("no weights"))
        })?);
    }
    print!(
        "{:<26} {candle:>10.1}",
        format!("decode up, {count} weights")
    );
    for gflops in &packed {
        print!(" {gflops:>10.1}");
    }
    for gflops in &packed {
        print!(" {:>11.2}x", gflops / candle);
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

fn best_gflops(
    flops: f64,
    seconds: f64,
    mut op: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut repeats = 0;
    while repeats < 3 || (start.elapsed().as_secs_f64() < seconds && repeats < 10_000) {
        let begin = Instant::now();
        let out = op()?;
        let _ = out.dims();
        best = best.min(begin.elapsed().as_secs_f64());
        repeats += 1;
    }
    Ok(flops / best / 1e9)
}
