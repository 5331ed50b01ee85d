//! Fine-tuning job events (spec §4.5) and the metrics a training step reports in them (§4.6),
//! as the trainer writes them to a job's `events.jsonl` and the server lists them.

use serde::{Deserialize, Deserializer, Serialize};

/// One `fine_tuning.job.event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// `ftevent-<job>-<n>`, `n` the event's line in `events.jsonl`.
    pub id: String,
    /// Always [`JobEvent::OBJECT`].
    pub object: String,
    /// Unix seconds.
    pub created_at: i64,
    /// `info`, `warn` or `error`.
    pub level: EventLevel,
    /// What happened, for people.
    pub message: String,
    /// `type` and `data`.
    #[serde(flatten)]
    pub body: EventBody,
}

/// An event's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    /// Progress.
    Info,
    /// Something the user should know.
    Warn,
    /// The job failed.
    Error,
}

/// An event's `type` with its `data`: the two travel together, so a metrics event always has
/// metrics and a message event always has `data: {}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    /// A plain message; `data` is `{}`.
    Message {},
    /// A step's metrics.
    Metrics(Box<StepMetrics>),
}

impl JobEvent {
    /// The `object` of every event.
    pub const OBJECT: &'static str = "fine_tuning.job.event";

    /// The step metrics of a `metrics` event.
    pub fn metrics(&self) -> Option<&StepMetrics> {
        match &self.body {
            EventBody::Metrics(metrics) => Some(metrics),
            EventBody::Message {} => None,
        }
    }
}

/// The `data` of a `metrics` event (spec §4.6 and OpenRFT's extras, `docs/training.md`). The
/// baseline validation before training (step 0) has only `step`, `total_steps`, `scores` and
/// `full_valid_mean_reward`; a training step has the rest too ([`TrainStepMetrics`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The step (0 for the baseline validation).
    pub step: usize,
    /// Steps of the whole job.
    pub total_steps: usize,
    /// Reward means.
    pub scores: Scores,
    /// The validation mean (legacy key); null on steps without validation.
    pub full_valid_mean_reward: Option<f64>,
    /// What a training step adds; absent for the baseline.
    #[serde(flatten)]
    pub train: Option<TrainStepMetrics>,
}

/// `scores`: the means of the step's rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Mean reward over every sample of the step's batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_reward_mean: Option<f64>,
    /// One entry per child of a multi grader (or the grader itself).
    pub graders: Vec<GraderScore>,
    /// Mean reward over the validation samples, on validation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_reward_mean: Option<f64>,
    /// The standard error of `valid_reward_mean` (the rewards' standard deviation over the
    /// validation rows and samples, divided by the square root of their count): a drop smaller
    /// than about twice this is noise. An OpenRFT addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_reward_stderr: Option<f64>,
    /// Mean reward of one greedy (temperature 0) answer per validation row, on validation
    /// steps: what the policy says when it is not sampled. Sampled and greedy can move apart
    /// (a policy that sharpens onto its best answer gains more greedy than sampled). An
    /// OpenRFT addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_greedy_reward_mean: Option<f64>,
}

/// One grader's means in `scores.graders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraderScore {
    /// The grader's name (for a multi grader's child, its key).
    pub name: String,
    /// The grader's type (`sub_grader` for a multi grader's child).
    #[serde(rename = "type")]
    pub kind: String,
    /// Mean over the training samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_reward_mean: Option<f64>,
    /// Mean over the validation samples, on validation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_reward_mean: Option<f64>,
}

/// What a training step reports beside its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainStepMetrics {
    /// Grading failures.
    pub errors: StepErrors,
    /// Seconds per phase.
    pub timing: StepTiming,
    /// Reasoning-token usage of the policy.
    pub usage: StepUsage,
    /// Mean training reward (legacy key, = `scores.train_reward_mean`).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_mean_reward: f64,
    /// Mean completion length of the batch's samples, in tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub completion_tokens_mean: f64,
    /// Completion tokens sampled for the batch.
    pub completion_tokens_count: usize,
    /// Fraction of groups whose rewards were all equal.
    #[serde(deserialize_with = "nan_if_null")]
    pub frac_zero_std_groups: f64,
    /// Groups dynamic sampling added in refill rounds.
    pub refill_groups: usize,
    /// Fraction of samples cut at `max_completion_tokens`.
    #[serde(deserialize_with = "nan_if_null")]
    pub frac_truncated: f64,
    /// The loss of the last optimizer pass (0 when no group carried signal).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// KL to the base model per token, when `beta > 0`; null otherwise.
    pub kl: Option<f64>,
    /// Mean negative log-prob of the sampled tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub entropy: f64,
    /// Fraction of clipped loss terms.
    #[serde(deserialize_with = "nan_if_null")]
    pub clip_fraction: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// The learning rate of the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub learning_rate: f64,
    /// The sampler's log-probs against the trainer's for the same tokens under the same
    /// policy version (before the step's update): the mean of |Δ log p| per token. Near 0 for
    /// the in-process sampler (float rounding); what a remote rollout engine adds shows here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_logprob_diff: Option<f64>,
    /// The k3 estimate of KL(sampler ‖ trainer) per token over the same tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_kl_k3: Option<f64>,
    /// With `rollout_correction`: the fraction of tokens whose importance ratio was capped
    /// (`tis`) or that were masked out (`mis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_is_corrected: Option<f64>,
    /// With `max_off_policy_steps`: how many versions behind the trained policy the step's
    /// samples were drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_policy_steps: Option<u64>,
}

/// `errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepErrors {
    /// One entry for the job's grader.
    pub graders: Vec<GraderErrorCounts>,
}

/// A grader's failures on the step's training samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraderErrorCounts {
    /// The grader's name.
    pub name: String,
    /// The grader's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Samples with any error flag.
    pub train_other_error_count: usize,
    /// The same, as a fraction of the samples.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_other_error_mean: f64,
}

/// `timing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Seconds per phase of the step.
    pub step: PhaseSeconds,
}

/// Seconds per phase of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Rollout: sampling and grading, refill rounds included.
    #[serde(deserialize_with = "nan_if_null")]
    pub sampling: f64,
    /// Advantages and optimizer updates.
    #[serde(deserialize_with = "nan_if_null")]
    pub training: f64,
    /// Validation (0 on steps without it).
    #[serde(deserialize_with = "nan_if_null")]
    pub eval: f64,
    /// The whole step.
    #[serde(deserialize_with = "nan_if_null")]
    pub full_iteration: f64,
}

/// `usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepUsage {
    /// The policy's reasoning tokens.
    pub samples: SampleUsage,
}

/// Reasoning tokens of the policy's samples: OpenRFT's models have no thinking mode, so both
/// are 0 (integers on the wire, as the trainer has always written them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleUsage {
    /// Mean reasoning tokens per training sample.
    pub train_reasoning_tokens_mean: u64,
    /// Reasoning tokens of the training samples.
    pub train_reasoning_tokens_count: u64,
}

/// serde_json writes a non-finite float (a diverged loss) as `null`; reading it back gives NaN
/// instead of refusing the whole event.
pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message() -> JobEvent {
        JobEvent {
            id: "ftevent-x-000001".into(),
            object: JobEvent::OBJECT.into(),
            created_at: 7,
            level: EventLevel::Info,
            message: "Job started".into(),
            body: EventBody::Message {},
        }
    }

    #[test]
    fn a_message_event_has_empty_data() {
        let text = serde_json::to_string(&message()).unwrap();
        assert_eq!(
            text,
            r#"{"id":"ftevent-x-000001","object":"fine_tuning.job.event","created_at":7,"level":"info","message":"Job started","type":"message","data":{}}"#
        );
        assert_eq!(serde_json::from_str::<JobEvent>(&text).unwrap(), message());
    }

    #[test]
    fn metrics_events_round_trip_both_shapes() {
        let baseline = json!({"id": "e", "object": "fine_tuning.job.event", "created_at": 1,
            "level": "info", "message": "Step 0/3", "type": "metrics",
            "data": {"step": 0, "total_steps": 3,
                     "scores": {"graders": [{"name": "g", "type": "string_check",
                                             "train_reward_mean": 0.5}],
                                "valid_reward_mean": 0.5},
                     "full_valid_mean_reward": 0.5}});
        let event: JobEvent = serde_json::from_value(baseline.clone()).unwrap();
        assert_eq!(event.metrics().map(|m| m.train.is_none()), Some(true));
        assert_eq!(serde_json::to_value(&event).unwrap(), baseline);

        let step = json!({"id": "e", "object": "fine_tuning.job.event", "created_at": 1,
            "level": "info", "message": "Step 1/3", "type": "metrics",
            "data": {"step": 1, "total_steps": 3,
                     "scores": {"train_reward_mean": 0.25, "graders": [
                         {"name": "g", "type": "string_check", "train_reward_mean": 0.25}]},
                     "errors": {"graders": [{"name": "g", "type": "string_check",
                         "train_other_error_count": 0, "train_other_error_mean": 0.0}]},
                     "timing": {"step": {"sampling": 1.0, "training": 2.0, "eval": 0.0,
                                         "full_iteration": 3.0}},
                     "usage": {"samples": {"train_reasoning_tokens_mean": 0,
                                           "train_reasoning_tokens_count": 0}},
                     "train_mean_reward": 0.25, "full_valid_mean_reward": null,
                     "completion_tokens_mean": 4.5, "completion_tokens_count": 36,
                     "frac_zero_std_groups": 0.5, "refill_groups": 0, "frac_truncated": 0.0,
                     "loss": null, "kl": null, "entropy": 1.5, "clip_fraction": 0.0,
                     "grad_norm": 0.1, "learning_rate": 0.0002}});
        let event: JobEvent = serde_json::from_value(step.clone()).unwrap();
        let train = event.metrics().and_then(|m| m.train.as_ref()).unwrap();
        assert_eq!(train.completion_tokens_count, 36);
        assert!(train.loss.is_nan(), "a diverged loss reads back as NaN");
        assert_eq!(serde_json::to_value(&event).unwrap(), step);
    }
}
