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
        .filter(|kernel| kernel.supported())
        .collect();
    outln!(
        "one thread; GFLOP/s (best of repeats over about {:.1} s); kernels here: {kernels:?}",
        args.seconds
    );
    out!("{:<26} {:>10}", "shape", "candle");
    for kernel in &kernels {
        out!(" {:>10}", format!("{kernel:?}"));
    }
    for kernel in &kernels {
        out!(" {:>12}", format!("{kernel:?}/candle"));
    }
    outln!();
    for (name, m, k, n) in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let flops = 2.0 * (m * k * n) as f64;
        let candle = best_gflops(flops, args.seconds, || Ok(x.matmul(&w.t()?)?))?;
        let mut packed = Vec::new();
        for &kernel in &kernels {
            let weight = pack(&w, kernel)?;
            packed.push(best_gflops(flops, args.seconds, || {
                Ok(weight.matmul_t(&x)?)
            })?);
        }
        print_row(name, candle, &packed)?;
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
            .map(|w| pack(w, kernel))
            .collect::<anyhow::Result<Vec<_>>>()?;
        packed.push(best_gflops(flops, args.seconds, || {
            let mut last = None;
            for w in &panels {
                last = Some(w.matmul_t(&x)?);
            }
            last.ok_or_else(|| anyhow::anyhow!("no weights"))
        })?);
    }
    print_row(&format!("decode up, {count} weights"), candle, &packed)?;
    if let Some(&kernel) = kernels.last() {
        two_streams(&x, &weights, kernel, args.seconds)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Two threads (a rollout's two shards) each multiplying 32 rows by every weight in turn: with
/// a copy of the weights each, and with the same weights, in lockstep (a barrier after each
/// product) so the second reader may find a weight still in the shared cache.
fn two_streams(x: &Tensor, weights: &[Tensor], kernel: Kernel, seconds: f64) -> anyhow::Result<()> {
    let pack_all = || -> anyhow::Result<Vec<PackedWeight>> {
        weights.iter().map(|w| pack(w, kernel)).collect()
    };
    let first = pack_all()?;
    let second = pack_all()?;
    let (m, k) = x.dims2()?;
    let n = weights.first().map_or(Ok(0), |w| w.dim(0))?;
    let flops = 2.0 * 2.0 * (m * k * n * weights.len()) as f64;
    let repeats = 5.max((seconds * 4.0) as usize);
    let run = |own: bool| -> anyhow::Result<f64> {
        let barrier = std::sync::Barrier::new(2);
        let worker = |set: &[PackedWeight]| -> anyhow::Result<()> {
            for w in set {
                w.matmul_t(x)?;
                if !own {
                    barrier.wait();
                }
            }
            Ok(())
        };
        let (mine, theirs) = (&first, if own { &second } else { &first });
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let start = Instant::now();
            std::thread::scope(|scope| -> anyhow::Result<()> {
                let worker = &worker;
                let other = scope.spawn(move || worker(theirs));
                worker(mine)?;
                other
                    .join()
                    .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?
            })?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(flops / best / 1e9)
    };
    let own = run(true)?;
    let shared = run(false)?;
    outln!(
        "two threads, {} weights of {k}x{n}, {kernel:?}: {own:.1} GFLOP/s with a copy each, {shared:.1} sharing them in lockstep ({:.2}x)",
        weights.len(),
        shared / own
    );
    Ok(())
}

fn pack(weight: &Tensor, kernel: Kernel) -> anyhow::Result<PackedWeight> {
    PackedWeight::pack_for(weight, kernel)?
        .ok_or_else(|| anyhow::anyhow!("{kernel:?} did not pack"))
}

/// One line of the table: candle's rate, each kernel's, and each kernel's ratio to candle.
fn print_row(name: &str, candle: f64, packed: &[f64]) -> anyhow::Result<()> {
    out!("{name:<26} {candle:>10.1}");
    for gflops in packed {
        out!(" {gflops:>10.1}");
    }
    for gflops in packed {
        out!(" {:>11.2}x", gflops / candle);
    }
    outln!();
    Ok(())
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
