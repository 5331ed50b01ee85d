//! The fine-tuning job object (`/v1/fine_tuning/jobs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::Metadata;
use super::hyperparameters::Hyperparameters;

/// A job's status (spec §4.3): `validating_files` → `queued` → `running` → `succeeded` |
/// `failed` | `cancelled`; `running` → `paused` → `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Its files are being checked.
    ValidatingFiles,
    /// Waiting for the trainer.
    Queued,
    /// Training.
    Running,
    /// Stopped at a step boundary, checkpointed; `resume` queues it again.
    Paused,
    /// Done: `fine_tuned_model` is set.
    Succeeded,
    /// Stopped on an error: `error` says why.
    Failed,
    /// Cancelled by the client.
    Cancelled,
}

impl JobStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Paused => "paused",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job can change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A reinforcement fine-tuning job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuningJob {
    /// `ftjob-…`.
    pub id: String,
    /// Always `"fine_tuning.job"`.
    pub object: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Where it is.
    pub status: JobStatus,
    /// The base model's name.
    pub model: String,
    /// The training file's id.
    pub training_file: String,
    /// The validation file's id.
    pub validation_file: Option<String>,
    /// `{type: "reinforcement", reinforcement: {grader, hyperparameters, response_format}}`.
    pub method: JobMethod,
    /// `"auto"` for the unset OpenAI keys until the job starts, then every resolved value.
    pub hyperparameters: Hyperparameters,
    /// The seed of everything random.
    pub seed: u64,
    /// The suffix of the fine-tuned model's name.
    pub suffix: Option<String>,
    /// The suffix as the client gave it.
    pub user_provided_suffix: Option<String>,
    /// `ft:…`, once succeeded.
    pub fine_tuned_model: Option<String>,
    /// Unix seconds, once final.
    pub finished_at: Option<i64>,
    /// Why it failed.
    pub error: Option<JobError>,
    /// Always `org-openrft`.
    pub organization_id: String,
    /// Always empty.
    pub result_files: Vec<String>,
    /// Completion tokens sampled for training, once succeeded.
    pub trained_tokens: Option<u64>,
    /// Always null.
    pub estimated_finish: Option<i64>,
    /// Echoed.
    pub integrations: Option<Value>,
    /// The client's metadata.
    pub metadata: Option<Metadata>,
    /// Always false.
    pub shared_with_openai: bool,
    /// Always null.
    pub eval_id: Option<String>,
}

/// `method` of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMethod {
    /// Always `"reinforcement"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The reinforcement settings.
    pub reinforcement: ReinforcementMethod,
}

/// `method.reinforcement` as the job echoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReinforcementMethod {
    /// The grader's JSON, as sent (parsed by `Grader::from_value`).
    pub grader: Value,
    /// The hyperparameters, `"auto"` where unset.
    pub hyperparameters: Hyperparameters,
    /// Structured outputs for the policy.
    pub response_format: Option<Value>,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// `invalid_file`, `grader_error`, `invalid_hyperparameters`, `model_error`,
    /// `training_error`, `internal_error`.
    pub code: String,
    /// What went wrong, for people (no server paths).
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
}

/// `POST /v1/fine_tuning/jobs`: the fields OpenRFT reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateJob {
    /// The base model's name.
    pub model: String,
    /// The training file's id.
    pub training_file: String,
    /// The validation file's id.
    #[serde(default)]
    pub validation_file: Option<String>,
    /// `{type, reinforcement}`.
    #[serde(default)]
    pub method: Option<CreateMethod>,
    /// Deprecated top-level hyperparameters; `method` gives them (ignored, as OpenAI does).
    #[serde(default)]
    pub hyperparameters: Option<Value>,
    /// 1–64 characters for the fine-tuned model's name.
    #[serde(default)]
    pub suffix: Option<String>,
    /// 0–2³¹−1.
    #[serde(default)]
    pub seed: Option<u64>,
    /// At most 16 string pairs.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Echoed.
    #[serde(default)]
    pub integrations: Option<Value>,
}

impl CreateJob {
    /// Every top-level key of the request, in declaration order, taken from the type's serde
    /// field list: what a strict reader (the trainer's job files) accepts.
    pub fn names() -> &'static [&'static str] {
        let mut fields = None;
        let _ = CreateJob::deserialize(super::hyperparameters::Introspect(&mut fields));
        fields.unwrap_or(&[])
    }
}

/// `method` of [`CreateJob`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateMethod {
    /// `reinforcement` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The reinforcement settings.
    #[serde(default)]
    pub reinforcement: Option<CreateReinforcement>,
}

/// `method.reinforcement` of [`CreateJob`]: the grader and the hyperparameters stay JSON until
/// their own parsers (with JSON-path errors) read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateReinforcement {
    /// The grader.
    #[serde(default)]
    pub grader: Option<Value>,
    /// `"auto"` or a value per key.
    #[serde(default)]
    pub hyperparameters: Value,
    /// Structured outputs for the policy.
    #[serde(default)]
    pub response_format: Option<Value>,
}
