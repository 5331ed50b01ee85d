//! Rewards → the training batch: group-relative advantages, dynamic sampling and each loss
//! type's normalisation. The losses in [`crate::loss`] are plain sums; every GRPO-family choice
//! (which groups count, how advantages are scaled, what a token weighs) is made here, once, for
//! the RFT loop and for anyone composing the primitives themselves (`rft bench grpo` does).

use rft_model::sample::{Completion, FinishReason};
use rft_types::api::hyperparameters::{LossType, ScaleRewards};

use crate::config::Hyperparameters;
use crate::primitives::Datum;

/// One prompt's sampled group and the grader's rewards, in the same order.
#[derive(Debug, Clone, Copy)]
pub struct GradedGroup<'a> {
    /// The rendered prompt's token ids.
    pub prompt: &'a [u32],
    /// The group's completions.
    pub completions: &'a [&'a Completion],
    /// One reward per completion.
    pub rewards: &'a [f64],
}

/// What [`build_batch`] hands to `forward_backward`.
#[derive(Debug, Clone, Default)]
pub struct RolloutBatch {
    /// The datums, advantages already normalised for the loss type.
    pub datums: Vec<Datum>,
    /// Fraction of groups whose rewards were all equal (no signal).
    pub frac_zero_std_groups: f64,
    /// Per-token weights of the KL term, concatenated over the datums (the loss type's
    /// normalisation, so the KL is averaged the same way as the policy loss).
    pub kl_weights: Vec<f32>,
}

/// Groups → datums. Advantage = reward − group mean, divided by the group's sample std unless
/// `scale_rewards = "none"` (Dr. GRPO). With `dynamic_sampling`, groups whose rewards are all
/// equal are dropped. With `overlong_buffer`, DAPO's soft overlong penalty is added to each
/// reward first ([`Hyperparameters::overlong_penalty`]). Per-token weights: `grpo`/`gspo` average each sequence then the batch,
/// `dr_grpo` divides by `max_completion_tokens` × sequences, `dapo`/`cispo` by the batch's
/// token count.
pub fn build_batch(hyper: &Hyperparameters, groups: &[GradedGroup<'_>]) -> RolloutBatch {
    let trained = |c: &Completion| {
        let masked = hyper.mask_truncated && c.finish_reason == FinishReason::Length;
        !c.ids.is_empty() && !masked
    };
    let mut kept = Vec::new();
    let mut kept_groups = 0usize;
    // (sequences, tokens) of each flat group dynamic sampling leaves out.
    let mut dropped = Vec::new();
    let mut zero = 0usize;
    for group in groups {
        let rewards = shaped_rewards(hyper, group);
        let (mean, std) = mean_std(&rewards);
        if std < ZERO_STD {
            zero += 1;
            if hyper.dynamic_sampling {
                let sequences = group.completions.iter().filter(|c| trained(c));
                dropped.push((
                    sequences.clone().count(),
                    sequences.map(|c| c.ids.len()).sum::<usize>(),
                ));
                continue;
            }
        }
        kept_groups += 1;
        let scale = match hyper.scale_rewards {
            ScaleRewards::Group => 1.0 / (std + 1e-4),
            ScaleRewards::Unscaled => 1.0,
        };
        for (c, r) in group.completions.iter().zip(&rewards) {
            if trained(c) {
                kept.push((group.prompt, *c, (r - mean) * scale));
            }
        }
    }
    // A flat group's advantages are all zero, so dynamic sampling leaves it out of the compute;
    // the loss is still normalised over the batch the step meant to train: the kept groups
    // and, while they number fewer than `batch_size` (no refill, or refills that ran out), the
    // flat ones. Normalised over the kept groups alone, a step with one informative group
    // would move the policy as far as a step with four; TRL and verl count every group, and
    // so the update is theirs at less compute (docs/training.md, "Against TRL").
    let (flat_sequences, flat_tokens) = dropped
        .iter()
        .take(hyper.batch_size.saturating_sub(kept_groups))
        .fold((0, 0), |(s, t), &(ds, dt)| (s + ds, t + dt));
    let n_seq = (kept.len() + flat_sequences).max(1) as f64;
    let total_tokens: usize = kept.iter().map(|(_, c, _)| c.ids.len()).sum::<usize>() + flat_tokens;
    let mut datums = Vec::with_capacity(kept.len());
    let mut kl_weights = Vec::new();
    for (prompt, c, advantage) in kept {
        let len = c.ids.len() as f64;
        let norm = match hyper.loss_type {
            LossType::Grpo | LossType::Gspo => 1.0 / (len * n_seq),
            LossType::DrGrpo => 1.0 / (hyper.max_completion_tokens as f64 * n_seq),
            LossType::Dapo | LossType::Cispo => 1.0 / total_tokens.max(1) as f64,
        };
        let per_token = match hyper.loss_type {
            // GSPO reads one advantage per sequence; its ratio is already a mean.
            LossType::Gspo => (advantage / n_seq) as f32,
            LossType::Grpo | LossType::DrGrpo | LossType::Dapo | LossType::Cispo => {
                (advantage * norm) as f32
            }
        };
        kl_weights.extend(std::iter::repeat_n(norm as f32, c.ids.len()));
        datums.push(Datum {
            prompt: prompt.to_vec(),
            advantages: vec![per_token; c.ids.len()],
            sampling_logprobs: c.logprobs.clone(),
            completion: c.ids.clone(),
        });
    }
    RolloutBatch {
        datums,
        frac_zero_std_groups: zero as f64 / groups.len().max(1) as f64,
        kl_weights,
    }
}

/// Below this sample std a group's rewards count as all equal: it carries no signal.
const ZERO_STD: f64 = 1e-9;

/// The rewards advantages are computed from: the grader's plus the soft overlong penalty (0
/// unless `overlong_buffer` is set).
fn shaped_rewards(hyper: &Hyperparameters, group: &GradedGroup<'_>) -> Vec<f64> {
    group
        .rewards
        .iter()
        .zip(group.completions)
        .map(|(r, c)| r + hyper.overlong_penalty(c.ids.len()))
        .collect()
}

/// Mean and sample standard deviation.
fn mean_std(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let var =
        values.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (values.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}

/// Whether `group` carries signal, by the rule [`build_batch`]'s dynamic sampling drops groups
/// by (the loop's refill asks the same question of fresh groups).
pub(crate) fn has_signal(hyper: &Hyperparameters, group: &GradedGroup<'_>) -> bool {
    mean_std(&shaped_rewards(hyper, group)).1 >= ZERO_STD
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion(len: usize, finish_reason: FinishReason) -> Completion {
        Completion {
            ids: vec![7; len],
            logprobs: vec![-1.0; len],
            text: None,
            finish_reason,
        }
    }

    fn hyper(extra: serde_json::Value) -> Hyperparameters {
        match Hyperparameters::resolve(&extra, 10) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    /// One informative group (rewards 1, 0 over 2 and 4 tokens) and one flat group (two
    /// 3-token samples scored 0.5).
    fn informative_and_flat(h: &Hyperparameters) -> RolloutBatch {
        let (a, b, c) = (
            completion(2, FinishReason::Stop),
            completion(4, FinishReason::Stop),
            completion(3, FinishReason::Stop),
        );
        build_batch(
            h,
            &[
                GradedGroup {
                    prompt: &[1],
                    completions: &[&a, &b],
                    rewards: &[1.0, 0.0],
                },
                GradedGroup {
                    prompt: &[2],
                    completions: &[&c, &c],
                    rewards: &[0.5, 0.5],
                },
            ],
        )
    }

    #[test]
    fn dapo_weighs_over_every_group_s_tokens_and_trains_the_informative_ones() {
        let batch = informative_and_flat(&hyper(json!({})));
        assert_eq!(batch.datums.len(), 2);
        assert!((batch.frac_zero_std_groups - 0.5).abs() < 1e-12);
        // Sample std of {1, 0} is 1/√2; advantages ±0.5/(0.7071 + 1e-4) over the 12 tokens of
        // both groups: the flat group is left out of the compute, not out of the normaliser.
        let expected = 0.5 / (0.5f64.sqrt() + 1e-4) / 12.0;
        assert!((f64::from(batch.datums[0].advantages[0]) - expected).abs() < 1e-6);
        assert!((f64::from(batch.datums[1].advantages[0]) + expected).abs() < 1e-6);
        assert_eq!(batch.kl_weights.len(), 6);
        // Keeping the flat group (zero advantages) trains the same weights on the rest.
        let kept = informative_and_flat(&hyper(json!({"dynamic_sampling": false})));
        assert_eq!(kept.datums.len(), 4);
        for (dropped, kept) in batch.datums.iter().zip(&kept.datums) {
            assert_eq!(dropped.advantages, kept.advantages);
        }
        assert!(kept.datums[2..]
            .iter()
            .all(|d| d.advantages.iter().all(|&a| a.abs() < 1e-9)));
        // A batch of one group that carries signal (what refills aim for) is its own
        // normaliser: 6 tokens.
        let full = informative_and_flat(&hyper(json!({"batch_size": 1})));
        let expected = 0.5 / (0.5f64.sqrt() + 1e-4) / 6.0;
        assert!((f64::from(full.datums[0].advantages[0]) - expected).abs() < 1e-6);
    }

    #[test]
    fn grpo_counts_the_flat_group_s_sequences() {
        let batch = informative_and_flat(&hyper(json!({"loss_type": "grpo"})));
        // Each sequence's mean over its tokens, then over the 4 sampled sequences.
        let expected = 0.5 / (0.5f64.sqrt() + 1e-4) / (2.0 * 4.0);
        assert!((f64::from(batch.datums[0].advantages[0]) - expected).abs() < 1e-6);
    }

    #[test]
    fn the_soft_overlong_penalty_grows_through_the_buffer() {
        let h = hyper(json!({"max_completion_tokens": 10, "overlong_buffer": 4,
                             "overlong_penalty_factor": 0.5}));
        let penalties: Vec<f64> = [5, 6, 7, 8, 10].map(|n| h.overlong_penalty(n)).to_vec();
        assert_eq!(penalties, vec![0.0, 0.0, -0.125, -0.25, -0.5]);
        assert_eq!(hyper(json!({})).overlong_penalty(256), 0.0);
        // Equal grader rewards, different lengths: the penalty alone gives the group signal.
        let (short, long) = (
            completion(3, FinishReason::Stop),
            completion(10, FinishReason::Length),
        );
        let group = [&short, &long];
        let batch = build_batch(
            &h,
            &[GradedGroup {
                prompt: &[1],
                completions: &group,
                rewards: &[1.0, 1.0],
            }],
        );
        assert_eq!(batch.frac_zero_std_groups, 0.0);
        assert!(batch.datums[0].advantages[0] > 0.0);
        assert!(batch.datums[1].advantages[0] < 0.0);
    }

    #[test]
    fn grpo_averages_each_sequence_and_masking_drops_truncated() {
        let h =
            hyper(json!({"loss_type": "grpo", "scale_rewards": "none", "mask_truncated": true}));
        let (a, b, c) = (
            completion(2, FinishReason::Stop),
            completion(4, FinishReason::Stop),
            completion(5, FinishReason::Length),
        );
        let group = [&a, &b, &c];
        let batch = build_batch(
            &h,
            &[GradedGroup {
                prompt: &[1],
                completions: &group,
                rewards: &[1.0, 0.0, 0.5],
            }],
        );
        assert_eq!(batch.datums.len(), 2);
        // Mean 0.5, no std scaling: +0.5 over 2 tokens × 2 sequences, −0.5 over 4 × 2.
        assert!((batch.datums[0].advantages[0] - 0.125).abs() < 1e-7);
        assert!((batch.datums[1].advantages[0] + 0.0625).abs() < 1e-7);
    }
}
