//! Fine-tuning job checkpoints (spec §4.7): the ones a job keeps, as the trainer lists them in
//! `checkpoints.jsonl` and the server serves them.

use serde::{Deserialize, Serialize};

use super::event::nan_if_null;

/// One `fine_tuning.job.checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `ftckpt-<job>-<step>`.
    pub id: String,
    /// Always [`Checkpoint::OBJECT`].
    pub object: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The model name chat completions take: `<fine-tuned model>:ckpt-step-<N>`.
    pub fine_tuned_model_checkpoint: String,
    /// The job.
    pub fine_tuning_job_id: String,
    /// The step it was taken after.
    pub step_number: usize,
    /// The step's reward means.
    pub metrics: CheckpointMetrics,
}

impl Checkpoint {
    /// The `object` of every checkpoint.
    pub const OBJECT: &'static str = "fine_tuning.job.checkpoint";
}

/// A checkpoint's `metrics` (OpenAI's SDK keys are SFT ones; RFT's are these, `docs/api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetrics {
    /// The step.
    pub step: usize,
    /// The step's mean training reward.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_reward_mean: f64,
    /// The step's validation reward: what the best checkpoints are ranked by.
    #[serde(deserialize_with = "nan_if_null")]
    pub valid_reward_mean: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_wire_shape() {
        let line = json!({"id": "ftckpt-x-3", "object": "fine_tuning.job.checkpoint",
            "created_at": 5, "fine_tuned_model_checkpoint": "ft:m:openrft:ftjob-x:ckpt-step-3",
            "fine_tuning_job_id": "ftjob-x", "step_number": 3,
            "metrics": {"step": 3, "train_reward_mean": 0.5, "valid_reward_mean": 0.75},
            "path": "/jobs/x/checkpoints/step-3"});
        // The trainer's line also names the adapter folder; the API object has no path.
        let checkpoint: Checkpoint = serde_json::from_value(line.clone()).unwrap();
        assert_eq!(checkpoint.metrics.valid_reward_mean, 0.75);
        let mut expected = line;
        expected.as_object_mut().unwrap().remove("path");
        assert_eq!(serde_json::to_value(&checkpoint).unwrap(), expected);
    }
}
