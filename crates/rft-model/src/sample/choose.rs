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
//! - Sampled rows: weights `exp((l − max) / T)`; top-k keeps the logits at or above the k-th
//!   largest and top-p the largest whose mass reaches `p` (at least the top token), each
//!   threshold found by bisection on the scaled logits (a sort of a 152k row does not fit the
//!   GPU sort kernel's shared memory); ties at a threshold are all kept. The draw inverts the cumulative weights in vocabulary order at
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

/// Bisection steps for a threshold on the scaled logits: 40 halvings of a row's range (tens of
/// nats) resolve it far below f32's spacing near the top logits.
const BISECTION_STEPS: usize = 40;
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
    // Scaled logits, at most 0 (the row's maximum): the thresholds are found on them, so they
    // resolve as finely far into the tail as at the top.
    let scaled = shifted.broadcast_mul(&inv_t)?;
    let keep = keep_top_k(&scaled, rows, device)?;
    let keep = keep_top_p(&scaled, keep, rows, device)?;
    let weights = match keep {
        Some(keep) => scaled.exp()?.mul(&keep)?,
        None => scaled.exp()?,
    };

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
    // Greedy rows, and any row left with no weight at all, take the arg-max (as the CPU).
    let greedy = column(
        rows.iter()
            .map(|r| f32::from(u8::from(r.temperature <= 0.0)))
            .collect(),
    )?;
    let takes_argmax = greedy.maximum(&total.le(0.0)?.to_dtype(DType::F32)?)?;
    let chosen = (takes_argmax.mul(&argmax)? + takes_argmax.affine(-1.0, 1.0)?.mul(&drawn)?)?
        .to_dtype(DType::U32)?;
    let logprob = (logits.gather(&chosen, D::Minus1)? - log_norm)?;
    // The only copies back: two numbers per row.
    let ids = chosen.squeeze(1)?.to_vec1::<u32>()?;
    let logprobs = logprob.squeeze(1)?.to_vec1::<f32>()?;
    Ok((ids, logprobs))
}

/// The mask (1 kept, 0 not) of each row's `top_k` largest scaled logits (ties at the k-th
/// all kept); `None` when no row asks for top-k. Rows without it keep everything.
fn keep_top_k(
    scaled: &Tensor,
    rows: &[RowChoice],
    device: &Device,
) -> Result<Option<Tensor>, ModelError> {
    let vocab = scaled.dim(1)?;
    let on = |r: &RowChoice| r.top_k > 0 && r.top_k < vocab;
    if !rows.iter().any(on) {
        return Ok(None);
    }
    let n = rows.len();
    let k: Vec<f32> = rows
        .iter()
        .map(|r| if on(r) { r.top_k as f32 } else { vocab as f32 })
        .collect();
    let k = Tensor::from_vec(k, (n, 1), device)?;
    // The largest threshold that still keeps at least k logits.
    let threshold = bisect(scaled, |mid| {
        let kept = scaled
            .broadcast_ge(mid)?
            .to_dtype(DType::F32)?
            .sum_keepdim(D::Minus1)?;
        Ok(kept.ge(&k)?)
    })?;
    let keep = scaled.broadcast_ge(&threshold)?.to_dtype(DType::F32)?;
    Ok(Some(keep_rows_without(keep, rows, on, device)?))
}

/// `keep` narrowed to each row's nucleus: the largest probabilities (after top-k) whose mass
/// reaches `top_p` (at least the most likely token; ties at the edge all kept). Rows without
/// top-p keep what they had.
fn keep_top_p(
    scaled: &Tensor,
    keep: Option<Tensor>,
    rows: &[RowChoice],
    device: &Device,
) -> Result<Option<Tensor>, ModelError> {
    let on = |r: &RowChoice| r.top_p < 1.0;
    if !rows.iter().any(on) {
        return Ok(keep);
    }
    let n = rows.len();
    let weights = match &keep {
        Some(keep) => scaled.exp()?.mul(keep)?,
        None => scaled.exp()?,
    };
    let probs = weights.broadcast_div(&weights.sum_keepdim(D::Minus1)?)?;
    // A nucleus of mass 0 is the most likely token alone, as on the CPU.
    let p: Vec<f32> = rows
        .iter()
        .map(|r| r.top_p.clamp(f32::MIN_POSITIVE, 1.0))
        .collect();
    let p = Tensor::from_vec(p, (n, 1), device)?;
    // The largest scaled-logit threshold whose kept mass still reaches p.
    let threshold = bisect(scaled, |mid| {
        let above = scaled.broadcast_ge(mid)?.to_dtype(DType::F32)?;
        let mass = probs.mul(&above)?.sum_keepdim(D::Minus1)?;
        Ok(mass.ge(&p)?)
    })?;
    let nucleus = scaled.broadcast_ge(&threshold)?.to_dtype(DType::F32)?;
    // Rows with top-p take the nucleus (within their top-k); the others keep what they had.
    let off = rows_without(rows, on, device)?;
    let on_rows = off.affine(-1.0, 1.0)?;
    let before = match keep {
        Some(keep) => keep,
        None => scaled.ones_like()?,
    };
    let narrowed = nucleus.mul(&before)?.broadcast_mul(&on_rows)?;
    Ok(Some((narrowed + before.broadcast_mul(&off)?)?))
}

/// `keep` with the rows where `on` is false set to all ones.
fn keep_rows_without(
    keep: Tensor,
    rows: &[RowChoice],
    on: impl Fn(&RowChoice) -> bool,
    device: &Device,
) -> Result<Tensor, ModelError> {
    Ok(keep.broadcast_maximum(&rows_without(rows, on, device)?)?)
}

/// `(rows, 1)`: 1 where `on` is false, 0 where it holds.
fn rows_without(
    rows: &[RowChoice],
    on: impl Fn(&RowChoice) -> bool,
    device: &Device,
) -> Result<Tensor, ModelError> {
    let off: Vec<f32> = rows.iter().map(|r| f32::from(u8::from(!on(r)))).collect();
    Ok(Tensor::from_vec(off, (rows.len(), 1), device)?)
}

/// Per row of `scaled` (at most 0), the largest threshold `τ` in [row minimum, 0] for which
/// `holds(τ)` (a `(rows, 1)` mask) is true, assuming it holds at the minimum and stops holding
/// as `τ` grows.
fn bisect(
    scaled: &Tensor,
    holds: impl Fn(&Tensor) -> Result<Tensor, ModelError>,
) -> Result<Tensor, ModelError> {
    let mut lo = scaled.min_keepdim(D::Minus1)?;
    let mut hi = lo.zeros_like()?;
    for _ in 0..BISECTION_STEPS {
        let mid = ((&lo + &hi)? * 0.5)?;
        let ok = holds(&mid)?;
        lo = ok.where_cond(&mid, &lo)?;
        hi = ok.where_cond(&hi, &mid)?;
    }
    Ok(lo)
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
    fn thresholds_hold_far_in_the_tail_and_an_empty_nucleus_is_the_top_token() {
        // Logit gaps of 50 and more: weights of 1e-22 and below, which a threshold bisected on
        // the weights themselves could not tell apart from 0.
        let logits = [0f32, -50.0, -60.0, -70.0, -80.0];
        let rows: Vec<RowChoice> = [0.0f32, 0.5, 0.999_999, 1.0 - f32::EPSILON]
            .iter()
            .map(|&u| row(1.0, 2, 1.0, u))
            .chain([row(1.0, 0, 0.0, 0.7), row(0.8, 0, 0.0, 0.99)])
            .collect();
        let tensor =
            Tensor::from_vec(logits.repeat(rows.len()), (rows.len(), 5), &Device::Cpu).unwrap();
        let (ids, _) = choose(&tensor, &rows).unwrap();
        assert!(
            ids[..4].iter().all(|&id| id < 2),
            "top-k 2 kept the tail: {ids:?}"
        );
        assert_eq!(&ids[4..], &[0, 0], "top-p 0 is the most likely token alone");
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
