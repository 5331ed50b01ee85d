//! Token choices made where the logits are: on a GPU, a decode step copies back two numbers per
//! row (the chosen id and its log-prob) instead of the whole `(rows, vocab)` logits, about 40 MB
//! a step at 64 rows of a 152k vocabulary.
//!
//! Everything is tensor code (reductions, comparisons, small matmuls), so it runs on any device;
//! the CPU keeps its own per-row loop (`Sampler::step`), which needs no copy and stops early,
//! except where [`set_device_choices`] asks for this path (tests, benchmarks).
//!
//! - The log-prob is the model's own: `logit − log Σ exp(logits)`, at temperature 1, as the CPU
//!   path reports it.
//! - Greedy rows take the arg-max.
//! - Sampled rows: weights `exp((l − max) / T)`; top-k keeps the weights at or above the k-th
//!   largest and top-p the largest whose mass reaches `p`, each threshold found by bisection
//!   (a sort of a 152k row does not fit the GPU sort kernel's shared memory); ties at a
//!   threshold are all kept. The draw inverts the cumulative weights in vocabulary order at
//!   `u · total`, with `u` from the row's own generator: the same token the CPU draws for the
//!   full distribution (to f32 summation order), and one from the same distribution under
//!   top-k or top-p (the CPU draws those in probability order).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor, D};

use crate::ModelError;

static ON_EVERY_DEVICE: AtomicBool = AtomicBool::new(false);

/// Makes the CPU choose tokens through the device path too (process-wide): for tests that check
/// the GPU's path on the CPU, and for benchmarks.
pub fn set_device_choices(on_cpu: bool) {
    ON_EVERY_DEVICE.store(on_cpu, Ordering::Relaxed);
}

/// Whether rows on `device` choose their tokens on it.
pub(crate) fn chooses_on(device: &Device) -> bool {
    !device.is_cpu() || ON_EVERY_DEVICE.load(Ordering::Relaxed)
}

/// How one row chooses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowChoice {
    /// ≤ 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// ≥ 1: off.
    pub top_p: f32,
    /// The row's uniform draw in [0, 1) (unused when greedy).
    pub uniform: f32,
}

/// Bisection steps for a threshold: weights lie in (0, 1], so 30 halvings resolve it to 1e-9.
const BISECTION_STEPS: usize = 30;
/// Columns summed per block of the cumulative sum: a block is one `(c × c)` triangular product.
const SCAN_BLOCK: usize = 128;

/// The chosen token and its log-prob for every row of `logits: (rows, vocab)`.
pub(crate) fn choose(
    logits: &Tensor,
    rows: &[RowChoice],
) -> Result<(Vec<u32>, Vec<f32>), ModelError> {
    let (n, vocab) = logits.dims2()?;
    if n != rows.len() {
        return Err(ModelError::Format(format!(
            "choose: {} rows of logits, {} choices",
            n,
            rows.len()
        )));
    }
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let device = logits.device();
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let log_norm = (shifted.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;

    let column = |values: Vec<f32>| Tensor::from_vec(values, (n, 1), device);
    let greedy: Vec<bool> = rows.iter().map(|r| r.temperature <= 0.0).collect();
    let inv_t = column(
        rows.iter()
            .map(|r| {
                if r.temperature > 0.0 {
                    1.0 / r.temperature
                } else {
                    1.0
                }
            })
            .collect(),
    )?;
    let weights = shifted.broadcast_mul(&inv_t)?.exp()?;
    let weights = keep_top_k(&weights, rows, device)?;
    let weights = keep_top_p(&weights, rows, device)?;

    // u · total, then the first column whose running sum exceeds it.
    let total = weights.sum_keepdim(D::Minus1)?;
    let target = total.broadcast_mul(&column(rows.iter().map(|r| r.uniform).collect())?)?;
    let running = cumulative_sum(&weights)?;
    let below = running.broadcast_le(&target)?.to_dtype(DType::F32)?;
    let drawn = below.sum_keepdim(D::Minus1)?;
    // u · total can round to the total itself: then the last column with weight.
    let index = Tensor::arange(0f32, vocab as f32, device)?.unsqueeze(0)?;
    let last_kept = weights
        .gt(0.0)?
        .to_dtype(DType::F32)?
        .broadcast_mul(&index)?
        .max_keepdim(D::Minus1)?;
    let drawn = drawn.minimum(&last_kept)?;
    let argmax = logits.argmax_keepdim(D::Minus1)?.to_dtype(DType::F32)?;
    let is_greedy = column(greedy.iter().map(|&g| f32::from(u8::from(g))).collect())?;
    let chosen = (is_greedy.mul(&argmax)? + is_greedy.affine(-1.0, 1.0)?.mul(&drawn)?)?
        .to_dtype(DType::U32)?;
    let logprob = (logits.gather(&chosen, D::Minus1)? - log_norm)?;
    // The only copies back: two numbers per row.
    let ids = chosen.squeeze(1)?.to_vec1::<u32>()?;
    let logprobs = logprob.squeeze(1)?.to_vec1::<f32>()?;
    Ok((ids, logprobs))
}

/// `weights` with everything below each row's k-th largest weight zeroed (rows with `top_k`
/// 0 untouched).
fn keep_top_k(weights: &Tensor, rows: &[RowChoice], device: &Device) -> Result<Tensor, ModelError> {
    let vocab = weights.dim(1)?;
    if rows.iter().all(|r| r.top_k == 0 || r.top_k >= vocab) {
        return Ok(weights.clone());
    }
    let n = rows.len();
    let k: Vec<f32> = rows
        .iter()
        .map(|r| {
            if r.top_k == 0 {
                vocab as f32
            } else {
                r.top_k.min(vocab) as f32
            }
        })
        .collect();
    let k = Tensor::from_vec(k, (n, 1), device)?;
    // The largest threshold that still keeps at least k weights.
    let threshold = bisect(n, device, |mid| {
        let kept = weights
            .broadcast_ge(mid)?
            .to_dtype(DType::F32)?
            .sum_keepdim(D::Minus1)?;
        Ok(kept.ge(&k)?)
    })?;
    mask_below(weights, &threshold)
}

/// `weights` with each row cut to its nucleus: the largest weights whose share of the row's
/// total reaches `top_p` (rows with `top_p` ≥ 1 untouched).
fn keep_top_p(weights: &Tensor, rows: &[RowChoice], device: &Device) -> Result<Tensor, ModelError> {
    if rows.iter().all(|r| r.top_p >= 1.0) {
        return Ok(weights.clone());
    }
    let n = rows.len();
    let total = weights.sum_keepdim(D::Minus1)?;
    let probs = weights.broadcast_div(&total)?;
    let p: Vec<f32> = rows.iter().map(|r| r.top_p.min(1.0)).collect();
    let p = Tensor::from_vec(p, (n, 1), device)?;
    // The largest probability threshold whose kept mass still reaches p.
    let threshold = bisect(n, device, |mid| {
        let kept = probs.broadcast_ge(mid)?.to_dtype(DType::F32)?;
        let mass = (probs.mul(&kept)?).sum_keepdim(D::Minus1)?;
        Ok(mass.ge(&p)?)
    })?;
    // Thresholds are on probabilities; the mask applies to the same row of weights.
    let keep = probs.broadcast_ge(&threshold)?.to_dtype(DType::F32)?;
    Ok(weights.mul(&keep)?)
}

/// Per row, the largest `τ` in [0, 1] for which `holds(τ)` (a `(rows, 1)` mask) is true,
/// assuming it holds at 0 and stops holding as `τ` grows.
fn bisect(
    n: usize,
    device: &Device,
    holds: impl Fn(&Tensor) -> Result<Tensor, ModelError>,
) -> Result<Tensor, ModelError> {
    let mut lo = Tensor::zeros((n, 1), DType::F32, device)?;
    let mut hi = Tensor::ones((n, 1), DType::F32, device)?;
    for _ in 0..BISECTION_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let ok = holds(&mid)?;
        lo = ok.where_cond(&mid, &lo)?;
        hi = ok.where_cond(&hi, &mid)?;
    }
    Ok(lo)
}

/// `weights` with the entries below each row's `threshold` zeroed.
fn mask_below(weights: &Tensor, threshold: &Tensor) -> Result<Tensor, ModelError> {
    let keep = weights.broadcast_ge(threshold)?.to_dtype(DType::F32)?;
    Ok(weights.mul(&keep)?)
}

/// The inclusive running sum along each row of `(rows, vocab)`, in blocks of [`SCAN_BLOCK`]:
/// candle's `cumsum` multiplies by a `(vocab × vocab)` triangle, 92 GB for a 152k vocabulary;
/// here a block's sums are one `(c × c)` product and the blocks' offsets another.
fn cumulative_sum(values: &Tensor) -> Result<Tensor, ModelError> {
    let (n, vocab) = values.dims2()?;
    let device = values.device();
    let blocks = vocab.div_ceil(SCAN_BLOCK);
    let padded = blocks * SCAN_BLOCK;
    let values = if padded > vocab {
        Tensor::cat(
            &[
                values,
                &Tensor::zeros((n, padded - vocab), DType::F32, device)?,
            ],
            1,
        )?
    } else {
        values.clone()
    };
    let upper = |size: usize| -> Result<Tensor, ModelError> {
        // upper[i][j] = 1 for i ≤ j: x @ upper is x's inclusive running sum.
        let ones: Vec<f32> = (0..size * size)
            .map(|at| if at / size <= at % size { 1.0 } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(ones, (size, size), device)?)
    };
    let within = values
        .reshape((n * blocks, SCAN_BLOCK))?
        .matmul(&upper(SCAN_BLOCK)?)?
        .reshape((n, blocks, SCAN_BLOCK))?;
    let block_totals = within.narrow(2, SCAN_BLOCK - 1, 1)?.squeeze(2)?;
    // Exclusive running sum of the block totals: inclusive minus the block's own.
    let offsets = (block_totals.matmul(&upper(blocks)?)? - &block_totals)?;
    let running = within.broadcast_add(&offsets.unsqueeze(2)?)?;
    Ok(running.reshape((n, padded))?.narrow(1, 0, vocab)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(temperature: f32, top_k: usize, top_p: f32, uniform: f32) -> RowChoice {
        RowChoice {
            temperature,
            top_k,
            top_p,
            uniform,
        }
    }

    #[test]
    fn the_running_sum_in_blocks_equals_the_plain_one() {
        let values: Vec<f32> = (0..3 * 300).map(|i| ((i * 7) % 11) as f32 * 0.1).collect();
        let tensor = Tensor::from_vec(values.clone(), (3, 300), &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = cumulative_sum(&tensor).unwrap().to_vec2().unwrap();
        for (r, row) in got.iter().enumerate() {
            let mut sum = 0f32;
            for (c, v) in row.iter().enumerate() {
                sum += values[r * 300 + c];
                assert!((v - sum).abs() < 1e-3, "row {r} col {c}: {v} vs {sum}");
            }
        }
    }

    #[test]
    fn greedy_top_k_and_top_p_choose_what_they_allow() {
        // p ∝ 0.5, 0.3, 0.15, 0.05 (in shuffled columns).
        let probs = [0.15f32, 0.5, 0.05, 0.3];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let rows = [
            row(0.0, 0, 1.0, 0.99),
            row(1.0, 1, 1.0, 0.99),
            row(1.0, 2, 1.0, 0.99),
            row(1.0, 0, 0.6, 0.99),
            row(1.0, 0, 1.0, 0.99),
        ];
        let logits =
            Tensor::from_vec(logits.repeat(rows.len()), (rows.len(), 4), &Device::Cpu).unwrap();
        let (ids, logprobs) = choose(&logits, &rows).unwrap();
        assert_eq!(ids[0], 1, "greedy");
        assert_eq!(ids[1], 1, "top-k 1");
        // top-k 2 keeps {1, 3}; u = 0.99 lands in the last kept column.
        assert_eq!(ids[2], 3, "top-k 2");
        // top-p 0.6 keeps {1 (0.5), 3 (0.3)}.
        assert_eq!(ids[3], 3, "top-p");
        // The full distribution: u = 0.99 is past 0.15 + 0.5 + 0.05 + 0.3 · (0.99 − 0.7)/0.3.
        assert_eq!(ids[4], 3, "full");
        for (id, lp) in ids.iter().zip(&logprobs) {
            assert!((lp - probs[*id as usize].ln()).abs() < 1e-5, "{id}: {lp}");
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        let probs = [0.1f32, 0.6, 0.3];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let n = 3000;
        let rows: Vec<RowChoice> = (0..n)
            .map(|i| row(1.0, 0, 1.0, (i as f32 + 0.5) / n as f32))
            .collect();
        let logits = Tensor::from_vec(logits.repeat(n), (n, 3), &Device::Cpu).unwrap();
        let (ids, _) = choose(&logits, &rows).unwrap();
        for (token, p) in probs.iter().enumerate() {
            let share = ids.iter().filter(|&&id| id as usize == token).count() as f32 / n as f32;
            assert!((share - p).abs() < 0.002, "token {token}: {share} vs {p}");
        }
    }
}
