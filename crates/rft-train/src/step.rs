//! One RL step on the primitives: sample → grade → group → advantages → `forward_backward` →
//! `optim_step` → a report. The RFT loop ([`crate::job`]) runs one per training step and
//! `rft bench grpo` times it, so what is measured is what trains.

use std::time::Instant;

use rft_grade::{CompiledGrader, GradeRequest};
use rft_model::constrain::ResponseFormat;
use rft_model::sample::{Completion, FinishReason, SamplingParams};
use rft_model::tool_calls::sample_of;
use rft_types::{GraderErrors, GraderMetadata, RunGraderResponse};

use crate::advantage::{build_batch, has_signal, GradedGroup, RolloutBatch};
use crate::config::Hyperparameters;
use crate::dataset::PreparedRow;
use rft_types::api::hyperparameters::RolloutCorrection;

use crate::primitives::{AdamParams, KlPenalty, TrainingClient};
use crate::rollouts::Policy;
use crate::seed::mix;
use crate::TrainError;

/// If more than this fraction of a step's samples fail to grade, the step fails (OpenAI fails
/// jobs whose grader errors on most samples; the exact threshold is ours).
pub(crate) const MAX_GRADER_ERROR_FRACTION: f64 = 0.5;

/// One prompt's samples, each with its grade.
pub type GradedRollout = Vec<(Completion, RunGraderResponse)>;

/// What every step of a run shares.
#[derive(Clone, Copy)]
pub struct StepContext<'a> {
    /// The resolved hyperparameters (sampling, advantages, loss, optimizer).
    pub hyper: &'a Hyperparameters,
    /// The job's grader.
    pub grader: &'a CompiledGrader,
    /// Structured outputs for the policy.
    pub response_format: Option<&'a ResponseFormat>,
    /// Sample every completion to `max_completion_tokens`, past end-of-sequence: for
    /// benchmarks, whose work must not depend on what the policy happens to say.
    pub ignore_eos: bool,
    /// Where completions come from: this process ([`crate::rollouts::LocalRollouts`]) or a
    /// rollout fleet ([`crate::rollouts::RemoteRollouts`]).
    pub rollouts: &'a dyn crate::rollouts::RolloutEngine,
}

/// One step's rows and randomness.
#[derive(Clone, Copy)]
pub struct StepInput<'a> {
    /// The step, for messages.
    pub step: usize,
    /// The rows of the batch.
    pub rows: &'a [&'a PreparedRow],
    /// Samples per row (`G`).
    pub group_size: usize,
    /// Every draw of the step derives from it: the batch's rollout from `mix(seed)`, refill
    /// round `r` from `mix(seed ^ mix(0x5EED + r))`.
    pub seed: u64,
    /// Rows dynamic sampling may draw replacement groups from, in order (used only with
    /// `dynamic_sampling` and `max_refill_rounds > 0`).
    pub refill_candidates: &'a [&'a PreparedRow],
    /// The optimizer's learning rate for this step.
    pub learning_rate: f64,
}

/// Wall-clock seconds of a step's phases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepSeconds {
    /// Sampling (refill rounds included).
    pub sampling: f64,
    /// Grading (refill rounds included).
    pub grading: f64,
    /// Advantages, reference pass and optimizer updates.
    pub training: f64,
}

/// A grader's mean reward over a set of samples (one per child of a multi grader).
#[derive(Debug, Clone, PartialEq)]
pub struct GraderMean {
    /// The grader's name, or the child's key.
    pub name: String,
    /// The grader's type, or `sub_grader` for a child.
    pub kind: String,
    /// The mean reward.
    pub mean: f64,
}

/// What one step did. Reward and length statistics are over the batch's own samples; groups
/// added by refill rounds (chosen for their spread) only count in `refill_groups`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean reward.
    pub train_reward_mean: f64,
    /// Mean reward per grader.
    pub graders: Vec<GraderMean>,
    /// Samples graded.
    pub samples: usize,
    /// Samples with an error flag.
    pub grader_errors: usize,
    /// Groups refill rounds added.
    pub refill_groups: usize,
    /// Fraction of groups (refilled ones included) whose rewards were all equal.
    pub frac_zero_std_groups: f64,
    /// Sequences the update trained on.
    pub trained_sequences: usize,
    /// The loss of the last optimizer pass (0 when nothing was trained).
    pub loss: f64,
    /// Fraction of clipped terms in the last pass.
    pub clip_fraction: f64,
    /// KL to the base model per token, when `beta > 0`.
    pub kl: Option<f64>,
    /// Gradient norm of the last pass.
    pub grad_norm: f64,
    /// Mean |Δ log p| per token between the sampler's log-probs and the trainer's (same
    /// version), when anything was trained.
    pub rollout_logprob_diff: Option<f64>,
    /// k3 estimate of KL(sampler ‖ trainer) per token, when anything was trained.
    pub rollout_kl_k3: Option<f64>,
    /// With a rollout correction: the fraction of tokens whose importance ratio was capped
    /// (TIS) or that were masked out (MIS).
    pub rollout_is_corrected: Option<f64>,
    /// With asynchronous rollouts: how many versions behind the trained policy the batch's
    /// samples were drawn.
    pub off_policy_steps: Option<u64>,
    /// Completion tokens sampled.
    pub completion_tokens_count: usize,
    /// Mean completion length.
    pub completion_tokens_mean: f64,
    /// Fraction of samples cut at `max_completion_tokens`.
    pub frac_truncated: f64,
    /// Mean negative log-prob of the sampled tokens.
    pub entropy: f64,
    /// Seconds per phase.
    pub seconds: StepSeconds,
    /// The batch's first groups as text with their grades, bounded
    /// ([`crate::samples::step_groups`]): what the job folder keeps of the step's samples.
    pub groups: Vec<crate::samples::SampleGroup>,
}

/// A graded rollout and what it cost.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// One group per row.
    pub groups: Vec<GradedRollout>,
    /// Sampling and grading seconds (training is 0).
    pub seconds: StepSeconds,
}

/// Samples `n` completions for each of `rows` with the current policy (row `i` seeded by
/// `mix(seed ^ i)`) and grades them. Also what validation runs.
pub fn rollout(
    policy: Policy<'_>,
    ctx: &StepContext<'_>,
    rows: &[&PreparedRow],
    n: usize,
    seed: u64,
) -> Result<Rollout, TrainError> {
    let t_sample = Instant::now();
    let engine = policy.engine();
    let requests = rows
        .iter()
        .enumerate()
        .map(|(idx, p)| {
            let params = SamplingParams {
                temperature: ctx.hyper.temperature,
                max_tokens: ctx.hyper.max_completion_tokens,
                seed: mix(seed ^ idx as u64),
                ..SamplingParams::default()
            };
            let mut request = engine.request(p.prompt.clone(), n, params, ctx.response_format)?;
            if ctx.ignore_eos {
                request.params.stop_ids.clear();
            }
            Ok(request)
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    let completions = ctx
        .rollouts
        .sample(policy, &requests, ctx.response_format)?;
    let sampling = t_sample.elapsed().as_secs_f64();

    let t_grade = Instant::now();
    // Rows that offer tools get their samples' tool calls parsed into `sample.output_tools`
    // (and `output_text` is what the model wrote outside them); the trained tokens are the
    // whole completion either way.
    let tool_format = engine.tool_call_format();
    let grade_requests: Vec<GradeRequest> = rows
        .iter()
        .zip(&completions)
        .flat_map(|(p, group)| {
            group.iter().map(move |c| GradeRequest {
                sample: sample_of(
                    c.text.as_deref().unwrap_or_default(),
                    p.row.tools.as_deref(),
                    tool_format,
                ),
                item: p.row.item_value(),
            })
        })
        .collect();
    let mut grades = ctx.grader.grade_all(&grade_requests).into_iter();
    let groups = completions
        .into_iter()
        .map(|group| {
            group
                .into_iter()
                .map(|c| (c, grades.next().unwrap_or_else(missing_grade)))
                .collect()
        })
        .collect();
    Ok(Rollout {
        groups,
        seconds: StepSeconds {
            sampling,
            grading: t_grade.elapsed().as_secs_f64(),
            training: 0.0,
        },
    })
}

/// Runs one RL step: rolls out `input.rows`, fails if the grader failed on more than
/// [`MAX_GRADER_ERROR_FRACTION`] of the samples, refills groups without signal (DAPO's dynamic
/// sampling), builds the batch ([`build_batch`]) and updates the policy `num_iterations` times.
/// A step where no group carries signal leaves the weights as they were.
pub fn run_step(
    client: &mut TrainingClient,
    ctx: &StepContext<'_>,
    input: &StepInput<'_>,
) -> Result<StepReport, TrainError> {
    run_step_on(client, ctx, input, None)
}

/// The rollout of a step sampled ahead, from an earlier version of the policy (asynchronous
/// off-policy training): the rollout and how many optimizer steps behind the trained policy
/// its version was.
#[derive(Debug)]
pub struct Prefetched {
    /// The graded samples.
    pub rollout: Rollout,
    /// Versions between the sampling policy and the one this step trains.
    pub staleness: u64,
}

/// [`run_step`], with the batch's rollout `prefetched` (sampled earlier, from an older version)
/// instead of sampled now.
pub fn run_step_on(
    client: &mut TrainingClient,
    ctx: &StepContext<'_>,
    input: &StepInput<'_>,
    prefetched: Option<Prefetched>,
) -> Result<StepReport, TrainError> {
    let hyper = ctx.hyper;
    let (
        Rollout {
            groups: graded,
            mut seconds,
        },
        staleness,
    ) = match prefetched {
        Some(Prefetched { rollout, staleness }) => (rollout, Some(staleness)),
        None => (
            rollout(
                Policy::Client(client),
                ctx,
                input.rows,
                input.group_size,
                mix(input.seed),
            )?,
            None,
        ),
    };
    let all: Vec<&RunGraderResponse> = graded.iter().flatten().map(|(_, g)| g).collect();
    let grader_errors = all.iter().filter(|g| g.metadata.errors.any()).count();
    if grader_errors as f64 > MAX_GRADER_ERROR_FRACTION * all.len() as f64 {
        let example = all
            .iter()
            .find(|g| g.metadata.errors.any())
            .map(|g| serde_json::to_string(&g.metadata.errors).unwrap_or_default())
            .unwrap_or_default();
        return Err(TrainError::Grading(format!(
            "the grader failed on {grader_errors} of {} samples at step {} (more than {:.0}%); first errors: {example}",
            all.len(),
            input.step,
            MAX_GRADER_ERROR_FRACTION * 100.0
        )));
    }
    let train_reward_mean = mean(all.iter().map(|g| g.reward), all.len());
    let (refill_rows, refill_graded) = refill(client, ctx, input, &graded, &mut seconds)?;

    let t_train = Instant::now();
    let completions: Vec<Vec<&Completion>> = graded
        .iter()
        .chain(&refill_graded)
        .map(|group| group.iter().map(|(c, _)| c).collect())
        .collect();
    let rewards: Vec<Vec<f64>> = graded
        .iter()
        .chain(&refill_graded)
        .map(|group| group.iter().map(|(_, g)| g.reward).collect())
        .collect();
    let groups: Vec<GradedGroup<'_>> = input
        .rows
        .iter()
        .chain(&refill_rows)
        .zip(&completions)
        .zip(&rewards)
        .map(|((p, completions), rewards)| GradedGroup {
            prompt: &p.prompt,
            completions,
            rewards,
        })
        .collect();
    let RolloutBatch {
        datums: mut batch,
        frac_zero_std_groups,
        kl_weights,
    } = build_batch(hyper, &groups);
    let (mut loss, mut clip_fraction, mut kl, mut grad_norm) = (0.0, 0.0, None, 0.0);
    let adam = AdamParams {
        learning_rate: input.learning_rate,
        weight_decay: hyper.weight_decay,
        grad_clip_norm: hyper.max_grad_norm,
        ..AdamParams::default()
    };
    let mut mismatch = None;
    let mut corrected = None;
    if hyper.rollout_correction != RolloutCorrection::None && !batch.is_empty() {
        // The trainer's own log-probs of the sampling version, without a graph: what the
        // sampler's are compared with, weighed against and then replaced by.
        let trainer = client.policy_logprobs(&batch)?;
        mismatch = Some(sampler_mismatch(&batch, &trainer));
        corrected = Some(correct_rollouts(
            &mut batch,
            &trainer,
            hyper.rollout_correction,
            hyper.rollout_is_cap,
        ));
    }
    if !batch.is_empty() {
        let reference = if hyper.beta > 0.0 {
            Some(client.reference_logprobs(&batch)?)
        } else {
            None
        };
        for _ in 0..hyper.num_iterations {
            let out = client.forward_backward(
                &batch,
                &hyper.loss_fn(),
                reference.as_ref().map(|r| KlPenalty {
                    beta: hyper.beta,
                    reference: r,
                    weights: &kl_weights,
                }),
            )?;
            if mismatch.is_none() {
                // The first pass runs the version that sampled: its log-probs against the
                // sampler's measure what sampling elsewhere (or differently) changed.
                mismatch = Some(sampler_mismatch(&batch, &out.logprobs));
            }
            loss = out.loss;
            clip_fraction = out.clip_fraction;
            kl = out.kl;
            grad_norm = client.optim_step(&adam)?.grad_norm;
        }
    } else if hyper.dynamic_sampling && frac_zero_std_groups > 0.0 {
        // Every group left out for scoring flat: their gradient would have been zero, and the
        // step still moves on AdamW's momentum, as it would with them kept.
        for _ in 0..hyper.num_iterations {
            client.optim_step_on_momentum(&adam)?;
        }
    }
    seconds.training = t_train.elapsed().as_secs_f64();

    let samples: Vec<&Completion> = graded.iter().flatten().map(|(c, _)| c).collect();
    let completion_tokens_count: usize = samples.iter().map(|c| c.ids.len()).sum();
    let sampled_tokens: usize = samples.iter().map(|c| c.logprobs.len()).sum();
    let nll = samples
        .iter()
        .flat_map(|c| c.logprobs.iter().map(|&l| -f64::from(l)));
    let truncated = samples
        .iter()
        .filter(|c| c.finish_reason == FinishReason::Length)
        .count();
    Ok(StepReport {
        train_reward_mean,
        graders: grader_means(&all),
        samples: all.len(),
        grader_errors,
        refill_groups: refill_rows.len(),
        frac_zero_std_groups,
        trained_sequences: batch.len(),
        loss,
        clip_fraction,
        kl,
        grad_norm,
        rollout_logprob_diff: mismatch.map(|(diff, _)| diff),
        rollout_kl_k3: mismatch.map(|(_, k3)| k3),
        rollout_is_corrected: corrected,
        off_policy_steps: staleness,
        completion_tokens_count,
        completion_tokens_mean: completion_tokens_count as f64 / samples.len().max(1) as f64,
        frac_truncated: truncated as f64 / samples.len().max(1) as f64,
        entropy: mean(nll, sampled_tokens),
        seconds,
        groups: crate::samples::step_groups(input.rows, &graded),
    })
}

/// `(mean |Δ log p|, k3 KL(sampler ‖ trainer))` per token between the log-probs the sampler
/// recorded and the trainer's for the same tokens: with `r = lp_trainer − lp_sampler`, k3 is the
/// mean of `exp(r) − 1 − r`.
fn sampler_mismatch(batch: &[crate::primitives::Datum], trainer: &[Vec<f32>]) -> (f64, f64) {
    let (mut diff, mut k3, mut n) = (0.0, 0.0, 0usize);
    for (datum, logprobs) in batch.iter().zip(trainer) {
        for (&sampled, &trained) in datum.sampling_logprobs.iter().zip(logprobs) {
            let r = f64::from(trained) - f64::from(sampled);
            if r.is_finite() {
                diff += r.abs();
                k3 += r.exp_m1() - r;
                n += 1;
            }
        }
    }
    (diff / n.max(1) as f64, k3 / n.max(1) as f64)
}

/// Corrects `batch` for a sampler that differs from the trainer: with `r = exp(lp_trainer −
/// lp_sampler)` per token, TIS multiplies the token's weight by `min(r, cap)` and MIS zeroes it
/// when `r` leaves `[1/cap, cap]`; then the sampling log-probs become the trainer's, so the
/// clipped ratio of the loss is taken against the trainer's own policy. Returns the fraction of
/// tokens capped or masked.
pub fn correct_rollouts(
    batch: &mut [crate::primitives::Datum],
    trainer: &[Vec<f32>],
    correction: RolloutCorrection,
    cap: f64,
) -> f64 {
    let (mut changed, mut n) = (0usize, 0usize);
    for (datum, trained) in batch.iter_mut().zip(trainer) {
        for ((weight, sampled), &lp) in datum
            .advantages
            .iter_mut()
            .zip(datum.sampling_logprobs.iter_mut())
            .zip(trained)
        {
            let r = (f64::from(lp) - f64::from(*sampled)).exp();
            n += 1;
            match correction {
                RolloutCorrection::None => {}
                RolloutCorrection::Tis => {
                    if r > cap {
                        changed += 1;
                    }
                    *weight *= r.min(cap) as f32;
                }
                RolloutCorrection::Mis => {
                    if !(r.is_finite() && r >= 1.0 / cap && r <= cap) {
                        changed += 1;
                        *weight = 0.0;
                    }
                }
            }
            *sampled = lp;
        }
    }
    changed as f64 / n.max(1) as f64
}

/// The mean of `n` values (0 for none).
pub(crate) fn mean(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    values.sum::<f64>() / n.max(1) as f64
}

/// DAPO's dynamic sampling: while the step's groups with reward spread are fewer than
/// `batch_size` and `max_refill_rounds` allow, samples and grades fresh rows from
/// `input.refill_candidates` for the missing groups, keeping those with spread. Returns the
/// rows added and their groups; their sampling and grading time is added to `seconds`.
fn refill<'a>(
    client: &TrainingClient,
    ctx: &StepContext<'_>,
    input: &StepInput<'a>,
    graded: &[GradedRollout],
    seconds: &mut StepSeconds,
) -> Result<(Vec<&'a PreparedRow>, Vec<GradedRollout>), TrainError> {
    let hyper = ctx.hyper;
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    if !hyper.dynamic_sampling || hyper.max_refill_rounds == 0 {
        return Ok((rows, groups));
    }
    let carries_signal = |group: &GradedRollout| {
        let completions: Vec<&Completion> = group.iter().map(|(c, _)| c).collect();
        let rewards: Vec<f64> = group.iter().map(|(_, g)| g.reward).collect();
        has_signal(
            hyper,
            &GradedGroup {
                prompt: &[],
                completions: &completions,
                rewards: &rewards,
            },
        )
    };
    let candidates = input.refill_candidates;
    let mut next = 0;
    let mut with_signal = graded.iter().filter(|g| carries_signal(g)).count();
    for round in 0..hyper.max_refill_rounds {
        let missing = hyper.batch_size.saturating_sub(with_signal);
        if missing == 0 || next >= candidates.len() {
            break;
        }
        let take = &candidates[next..(next + missing).min(candidates.len())];
        next += take.len();
        let seed = mix(input.seed ^ mix(0x5EED + round as u64));
        let fresh = rollout(Policy::Client(client), ctx, take, input.group_size, seed)?;
        seconds.sampling += fresh.seconds.sampling;
        seconds.grading += fresh.seconds.grading;
        for (&row, group) in take.iter().zip(fresh.groups) {
            if carries_signal(&group) {
                with_signal += 1;
                rows.push(row);
                groups.push(group);
            }
        }
    }
    Ok((rows, groups))
}

/// Mean reward per grader: one entry per child of a multi grader (by its key), else one for
/// the grader itself.
pub(crate) fn grader_means(all: &[&RunGraderResponse]) -> Vec<GraderMean> {
    let Some(first) = all.first() else {
        return Vec::new();
    };
    if first.sub_rewards.is_empty() {
        return vec![GraderMean {
            name: first.metadata.name.clone(),
            kind: first.metadata.kind.clone(),
            mean: mean(all.iter().map(|g| g.reward), all.len()),
        }];
    }
    first
        .sub_rewards
        .keys()
        .map(|key| GraderMean {
            name: key.clone(),
            kind: "sub_grader".into(),
            mean: mean(
                all.iter()
                    .map(|g| g.sub_rewards.get(key).copied().unwrap_or(0.0)),
                all.len(),
            ),
        })
        .collect()
}

/// The grade of a sample the grader returned nothing for (never expected: `grade_all` answers
/// every request): reward 0 with `other_error`, so it counts as a failure.
fn missing_grade() -> RunGraderResponse {
    RunGraderResponse {
        reward: 0.0,
        metadata: GraderMetadata {
            name: String::new(),
            kind: String::new(),
            errors: GraderErrors {
                other_error: true,
                ..GraderErrors::default()
            },
            execution_time: 0.0,
            scores: Default::default(),
            token_usage: None,
            sampled_model_name: None,
        },
        sub_rewards: Default::default(),
        model_grader_token_usage_per_model: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::Datum;

    fn datum() -> Datum {
        Datum {
            prompt: vec![1],
            completion: vec![2, 3, 4],
            sampling_logprobs: vec![-1.0, -1.0, -1.0],
            advantages: vec![0.5, 0.5, 0.5],
        }
    }

    #[test]
    fn tis_caps_and_mis_masks_the_sampler_to_trainer_ratio() {
        // Ratios exp(0) = 1, exp(ln 3) = 3 (past a cap of 2), exp(-ln 4) = 0.25 (below 1/2).
        let trainer = vec![vec![-1.0, -1.0 + 3f32.ln(), -1.0 - 4f32.ln()]];
        let mut tis = vec![datum()];
        let capped = correct_rollouts(&mut tis, &trainer, RolloutCorrection::Tis, 2.0);
        assert!((capped - 1.0 / 3.0).abs() < 1e-12);
        let expected = [0.5, 1.0, 0.125];
        for (got, want) in tis[0].advantages.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{:?}", tis[0].advantages);
        }
        // The clip ratio is then taken against the trainer's own log-probs.
        assert_eq!(tis[0].sampling_logprobs, trainer[0]);
        let mut mis = vec![datum()];
        let masked = correct_rollouts(&mut mis, &trainer, RolloutCorrection::Mis, 2.0);
        assert!((masked - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(mis[0].advantages, vec![0.5, 0.0, 0.0]);
        // The mismatch metrics of identical log-probs are zero.
        let same = vec![vec![-1.0f32; 3]];
        assert_eq!(sampler_mismatch(&[datum()], &same), (0.0, 0.0));
    }
}
