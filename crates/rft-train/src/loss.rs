//! The policy-gradient losses `forward_backward` offers, as Tinker names them, plus GSPO.
//!
//! Every loss is a **sum** of per-token (GSPO: per-sequence) terms; the caller supplies the
//! advantages already multiplied by whatever normalisation its algorithm uses (per-sequence mean
//! for GRPO, a constant for Dr.GRPO, the batch's token count for DAPO). Hiding a mean inside the
//! loss is how the GRPO-family bugs in the literature happened; here the loop owns it.
//!
//! Notation, per token `t`: `lp` the current policy's log-prob (differentiable), `lp_old` the
//! sampler's, `r = exp(lp − lp_old)`, `A` the advantage (or weight).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which loss, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "loss_fn", rename_all = "snake_case")]
pub enum LossFn {
    /// `−Σ A·lp`: supervised learning with per-token weights.
    CrossEntropy,
    /// `−Σ r·A`: the on-policy or off-policy policy gradient, no clipping.
    ImportanceSampling,
    /// `−Σ min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)`: PPO's clipped surrogate (DAPO's
    /// clip-higher when `epsilon_high > epsilon_low`).
    Ppo {
        /// ε_low.
        epsilon_low: f64,
        /// ε_high.
        epsilon_high: f64,
    },
    /// `−Σ sg(clip(r, 1−ε_low, 1+ε_high))·A·lp`: CISPO clips the importance weight, not the
    /// update, so every token keeps a gradient.
    Cispo {
        /// ε_low.
        epsilon_low: f64,
        /// ε_high.
        epsilon_high: f64,
    },
    /// `−Σ (A·lp − β/2·(lp − lp_old)²)`: direct reward optimisation's quadratic penalty.
    Dro {
        /// β.
        beta: f64,
    },
    /// GSPO: one ratio per sequence, `s = exp(mean_t(lp − lp_old))`, clipped PPO-style:
    /// `−Σ_seq min(s·A, clip(s, 1−ε_low, 1+ε_high)·A)`, with `A` the sequence's advantage
    /// (read from its first token).
    Gspo {
        /// ε_low.
        epsilon_low: f64,
        /// ε_high.
        epsilon_high: f64,
    },
}

/// A loss value with what the caller logs about it.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar to differentiate.
    pub loss: Tensor,
    /// Fraction of terms (tokens, or sequences for GSPO) whose ratio was clipped.
    pub clip_fraction: f64,
    /// Mean importance ratio over the terms.
    pub ratio_mean: f64,
}

/// The loss over packed tokens: `lp`, `old`, `advantages` all `(tokens)`; `spans` give each
/// sequence's tokens (needed by GSPO).
pub fn compute(
    loss_fn: &LossFn,
    lp: &Tensor,
    old: &Tensor,
    advantages: &Tensor,
    spans: &[std::ops::Range<usize>],
) -> Result<LossOutput> {
    let n = lp.dim(0)?;
    if n == 0 {
        return Ok(LossOutput {
            loss: Tensor::zeros((), lp.dtype(), lp.device())?,
            clip_fraction: 0.0,
            ratio_mean: 1.0,
        });
    }
    let log_ratio = (lp - old)?;
    let ratio = log_ratio.exp()?;
    let ratio_mean = ratio
        .mean_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let clipped_fraction = |r: &Tensor, lo: f64, hi: f64| -> Result<f64> {
        let outside = (r.lt(lo)?.to_dtype(candle_core::DType::F64)?
            + r.gt(hi)?.to_dtype(candle_core::DType::F64)?)?;
        outside.mean_all()?.to_scalar::<f64>()
    };
    let (loss, clip_fraction) = match loss_fn {
        LossFn::CrossEntropy => ((lp * advantages)?.sum_all()?.neg()?, 0.0),
        LossFn::ImportanceSampling => ((&ratio * advantages)?.sum_all()?.neg()?, 0.0),
        LossFn::Ppo {
            epsilon_low,
            epsilon_high,
        } => {
            let (lo, hi) = (1.0 - epsilon_low, 1.0 + epsilon_high);
            let unclipped = (&ratio * advantages)?;
            let clipped = (ratio.clamp(lo, hi)? * advantages)?;
            (
                unclipped.minimum(&clipped)?.sum_all()?.neg()?,
                clipped_fraction(&ratio, lo, hi)?,
            )
        }
        LossFn::Cispo {
            epsilon_low,
            epsilon_high,
        } => {
            let (lo, hi) = (1.0 - epsilon_low, 1.0 + epsilon_high);
            let weight = ratio.detach().clamp(lo, hi)?;
            (
                (weight * advantages)?.mul(lp)?.sum_all()?.neg()?,
                clipped_fraction(&ratio, lo, hi)?,
            )
        }
        LossFn::Dro { beta } => {
            let gain = (lp * advantages)?;
            let penalty = (log_ratio.sqr()? * (beta / 2.0))?;
            ((gain - penalty)?.sum_all()?.neg()?, 0.0)
        }
        LossFn::Gspo {
            epsilon_low,
            epsilon_high,
        } => {
            let (lo, hi) = (1.0 - epsilon_low, 1.0 + epsilon_high);
            let mut terms = Vec::new();
            let mut clipped = 0usize;
            let mut counted = 0usize;
            for span in spans.iter().filter(|s| !s.is_empty()) {
                let s = log_ratio
                    .narrow(0, span.start, span.len())?
                    .mean_all()?
                    .exp()?;
                let a = advantages.narrow(0, span.start, 1)?.squeeze(0)?;
                let s_value = s.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if s_value < lo || s_value > hi {
                    clipped += 1;
                }
                counted += 1;
                let unclipped = (&s * &a)?;
                let clipped_term = (s.clamp(lo, hi)? * &a)?;
                terms.push(unclipped.minimum(&clipped_term)?);
            }
            let loss = if terms.is_empty() {
                Tensor::zeros((), lp.dtype(), lp.device())?
            } else {
                Tensor::stack(&terms, 0)?.sum_all()?.neg()?
            };
            (loss, clipped as f64 / counted.max(1) as f64)
        }
    };
    Ok(LossOutput {
        loss,
        clip_fraction,
        ratio_mean,
    })
}

#[cfg(test)]
mod tests {
    //! Each loss's value and gradient on a hand-computed example.

    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
    }

    fn run(loss_fn: LossFn, lp: &[f64], old: &[f64], adv: &[f64]) -> (f64, Vec<f64>, f64) {
        let var = Var::from_tensor(&t(lp)).unwrap();
        let spans = std::slice::from_ref(&(0..lp.len())).to_vec();
        let out = compute(&loss_fn, var.as_tensor(), &t(old), &t(adv), &spans).unwrap();
        let grads = out.loss.backward().unwrap();
        let g = grads.get(var.as_tensor()).unwrap().to_vec1().unwrap();
        (out.loss.to_scalar().unwrap(), g, out.clip_fraction)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn cross_entropy() {
        let (loss, g, _) = run(
            LossFn::CrossEntropy,
            &[-1.0, -2.0],
            &[0.0, 0.0],
            &[1.0, 0.5],
        );
        close(loss, 2.0);
        close(g[0], -1.0);
        close(g[1], -0.5);
    }

    #[test]
    fn importance_sampling_on_policy_is_reinforce() {
        // lp == old: ratio 1, gradient −A (REINFORCE).
        let (loss, g, _) = run(
            LossFn::ImportanceSampling,
            &[-1.0, -0.5],
            &[-1.0, -0.5],
            &[2.0, -1.0],
        );
        close(loss, -1.0);
        close(g[0], -2.0);
        close(g[1], 1.0);
    }

    #[test]
    fn ppo_clips_only_outside_the_trust_region() {
        let ln = f64::ln;
        // Token 0: r = 1.5 > 1.28 with A > 0 → clipped (no gradient).
        // Token 1: r = 0.5 < 0.8 with A > 0 → unclipped min is r·A (gradient r·A).
        let loss_fn = LossFn::Ppo {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
        };
        let (loss, g, frac) = run(loss_fn, &[ln(1.5), ln(0.5)], &[0.0, 0.0], &[1.0, 1.0]);
        close(loss, -(1.28 + 0.5));
        close(g[0], 0.0);
        close(g[1], -0.5);
        close(frac, 1.0);
    }

    #[test]
    fn cispo_keeps_a_gradient_on_clipped_tokens() {
        let ln = f64::ln;
        let loss_fn = LossFn::Cispo {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
        };
        let (_, g, _) = run(loss_fn, &[ln(1.5), ln(1.0)], &[0.0, 0.0], &[1.0, 2.0]);
        close(g[0], -1.28);
        close(g[1], -2.0);
    }

    #[test]
    fn dro_penalises_moving_away() {
        let (loss, g, _) = run(LossFn::Dro { beta: 0.5 }, &[-1.0], &[-2.0], &[1.0]);
        // −(A·lp − β/2·(lp−old)²) = −(−1 − 0.25) = 1.25; d/dlp = −(A − β·(lp−old)) = −0.5
        close(loss, 1.25);
        close(g[0], -0.5);
    }

    #[test]
    fn gspo_uses_one_ratio_per_sequence() {
        let loss_fn = LossFn::Gspo {
            epsilon_low: 0.2,
            epsilon_high: 0.28,
        };
        // mean log ratio 0.1 → s = e^0.1 inside the region; d/dlp_t = −s·A / T
        let (loss, g, frac) = run(loss_fn, &[0.0, 0.2], &[0.0, 0.0], &[2.0, 2.0]);
        let s = 0.1f64.exp();
        close(loss, -s * 2.0);
        close(g[0], -s * 2.0 / 2.0);
        close(g[1], -s * 2.0 / 2.0);
        close(frac, 0.0);
    }
}
