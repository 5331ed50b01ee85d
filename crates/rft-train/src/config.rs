//! A job's configuration: the body of OpenAI's `POST /fine_tuning/jobs` for
//! `method.type = "reinforcement"`, with file paths in place of file ids, and its
//! hyperparameters resolved (`"auto"` → a recorded number). `docs/training.md` documents every
//! mapping.

use rft_types::api::hyperparameters::{
    Auto, Hyperparameters as HyperparametersRequest, LossType, LrSchedule, ReasoningEffort,
    ScaleRewards,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::loss::LossFn;
use crate::TrainError;

/// The request body (the fields OpenRFT reads).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Base model: a name, a GGUF file or a model folder.
    pub model: String,
    /// Training JSONL path.
    pub training_file: String,
    /// Validation JSONL path.
    #[serde(default)]
    pub validation_file: Option<String>,
    /// `{type: "reinforcement", reinforcement: {...}}`.
    pub method: Method,
    /// Deprecated top-level hyperparameters; ignored when `method` gives them, as OpenAI does.
    #[serde(default)]
    pub hyperparameters: Option<Value>,
    /// Inserted into the fine-tuned model's name.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Seed of everything random (data order, sampling, LoRA init).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Free-form metadata, echoed.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Accepted and ignored (no W&B here).
    #[serde(default)]
    pub integrations: Option<Value>,
}

/// The fine-tuning method.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Method {
    /// Only `reinforcement` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The reinforcement settings.
    #[serde(default)]
    pub reinforcement: Option<Reinforcement>,
}

/// `method.reinforcement`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Reinforcement {
    /// The grader (spec §2.1), as JSON.
    pub grader: Value,
    /// Hyperparameters (`"auto"` or a value each) and OpenRFT's extensions, as given.
    #[serde(default)]
    pub hyperparameters: HyperparametersRequest,
    /// Structured outputs for the policy.
    #[serde(default)]
    pub response_format: Option<Value>,
}

/// Every hyperparameter with its value resolved: what the loop runs with and `job.json`
/// records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Prompts per optimizer step.
    pub batch_size: usize,
    /// Multiplies [`BASE_LEARNING_RATE`].
    pub learning_rate_multiplier: f64,
    /// Passes over the training data.
    pub n_epochs: usize,
    /// Scales the group size: `G = round(8 × compute_multiplier)`, at least 2.
    pub compute_multiplier: f64,
    /// Steps between validations.
    pub eval_interval: usize,
    /// Samples per validation row.
    pub eval_samples: usize,
    /// Recorded; the supported models have no thinking mode.
    pub reasoning_effort: ReasoningEffort,
    /// LoRA rank.
    pub lora_rank: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// The policy loss.
    pub loss_type: LossType,
    /// KL coefficient (k3 estimator against the base model); 0 skips the reference pass.
    pub beta: f64,
    /// Lower clip ε.
    pub epsilon: f64,
    /// Upper clip ε (DAPO's clip-higher).
    pub epsilon_high: f64,
    /// Sampling temperature of the policy.
    pub temperature: f64,
    /// Most tokens per completion.
    pub max_completion_tokens: usize,
    /// Optimizer passes over each rollout batch.
    pub num_iterations: usize,
    /// Divide advantages by the group's std (`group`) or not (`none`, Dr. GRPO).
    pub scale_rewards: ScaleRewards,
    /// Drop groups whose rewards are all equal.
    pub dynamic_sampling: bool,
    /// With `dynamic_sampling`: extra sampling rounds per step that replace dropped groups
    /// with fresh training rows until the batch has `batch_size` groups with signal (DAPO's
    /// dynamic sampling); 0 trains on what is left.
    pub max_refill_rounds: usize,
    /// DAPO's soft overlong punishment: completions within this many tokens of
    /// `max_completion_tokens` get a reward penalty growing linearly to
    /// `overlong_penalty_factor` at the limit; 0 turns it off.
    pub overlong_buffer: usize,
    /// The penalty at `max_completion_tokens` (see `overlong_buffer`).
    pub overlong_penalty_factor: f64,
    /// Mask truncated completions out of the loss.
    pub mask_truncated: bool,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// The schedule after warm-up.
    pub lr_schedule: LrSchedule,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
}

/// The LoRA learning rate `learning_rate_multiplier` scales (RL on LoRA wants a rate about 10×
/// full fine-tuning's; 2e-5 × 10 is the common Tinker/ART choice for small models).
pub const BASE_LEARNING_RATE: f64 = 2e-4;

/// The error for a value outside its range; the key comes from the field's name.
fn out_of_range(key: &str, expected: String, got: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!(
        "method.reinforcement.hyperparameters.{key}: expected \"auto\" or {expected}, got {got}"
    ))
}

/// A number in `[min, max]`, or `default` when unset or `"auto"`.
fn number(
    key: &str,
    given: Option<Auto<f64>>,
    default: f64,
    min: f64,
    max: f64,
) -> Result<f64, TrainError> {
    match given.and_then(Auto::value) {
        None => Ok(default),
        Some(x) if (min..=max).contains(&x) => Ok(x),
        Some(x) => Err(out_of_range(key, format!("a number in [{min}, {max}]"), x)),
    }
}

/// An integer in `[min, max]`, or `default` when unset or `"auto"`.
fn int(
    key: &str,
    given: Option<Auto<usize>>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, TrainError> {
    match given.and_then(Auto::value) {
        None => Ok(default),
        Some(x) if (min..=max).contains(&x) => Ok(x),
        Some(x) => Err(out_of_range(
            key,
            format!("an integer in [{min}, {max}]"),
            x,
        )),
    }
}

/// A value with no range (enums, booleans), or `default` when unset or `"auto"`.
fn choice<T>(given: Option<Auto<T>>, default: T) -> T {
    given.and_then(Auto::value).unwrap_or(default)
}

/// `check!(request.field, default, min, max)`: the range check of one field, named by it (so
/// the message's key cannot drift from the field).
macro_rules! check {
    ($check:ident, $request:ident . $field:ident, $($arg:expr),+) => {
        $check(stringify!($field), $request.$field, $($arg),+)?
    };
}

impl Hyperparameters {
    /// Resolves `method.reinforcement.hyperparameters` given as JSON, for a training set of
    /// `train_rows` rows. Unknown keys and values out of range are errors naming the key.
    pub fn resolve(value: &Value, train_rows: usize) -> Result<Hyperparameters, TrainError> {
        let request = HyperparametersRequest::from_value(value)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        Hyperparameters::from_request(&request, train_rows)
    }

    /// Resolves parsed hyperparameters: `"auto"` and unset keys take OpenRFT's values
    /// (`docs/training.md`), set ones are range-checked.
    pub fn from_request(
        request: &HyperparametersRequest,
        train_rows: usize,
    ) -> Result<Hyperparameters, TrainError> {
        let r = request;
        // auto batch size: 8 prompts, fewer for tiny datasets (at least one full step per epoch).
        let batch_size = check!(int, r.batch_size, 8.min(train_rows.max(1)), 1, 256);
        let loss_type = choice(r.loss_type, LossType::Dapo);
        // Dr. GRPO's point is not scaling by the std: its default follows the loss.
        let scale_default = match loss_type {
            LossType::DrGrpo => ScaleRewards::Unscaled,
            LossType::Grpo | LossType::Dapo | LossType::Gspo | LossType::Cispo => {
                ScaleRewards::Group
            }
        };
        Ok(Hyperparameters {
            batch_size,
            learning_rate_multiplier: check!(number, r.learning_rate_multiplier, 1.0, 1e-6, 1e3),
            n_epochs: check!(int, r.n_epochs, 1, 1, 50),
            compute_multiplier: check!(number, r.compute_multiplier, 1.0, 0.00001, 10.0),
            eval_interval: check!(int, r.eval_interval, 5, 1, 1_000_000),
            eval_samples: check!(int, r.eval_samples, 4, 1, 64),
            reasoning_effort: choice(r.reasoning_effort, ReasoningEffort::Default),
            lora_rank: check!(int, r.lora_rank, 16, 1, 1024),
            lora_alpha: check!(number, r.lora_alpha, 32.0, 1e-6, 1e6),
            beta: check!(number, r.beta, 0.0, 0.0, 100.0),
            epsilon: check!(number, r.epsilon, 0.2, 0.0, 10.0),
            epsilon_high: check!(number, r.epsilon_high, 0.28, 0.0, 10.0),
            temperature: check!(number, r.temperature, 1.0, 0.0, 2.0),
            max_completion_tokens: check!(int, r.max_completion_tokens, 256, 1, 32_768),
            num_iterations: check!(int, r.num_iterations, 1, 1, 16),
            scale_rewards: choice(r.scale_rewards, scale_default),
            dynamic_sampling: choice(r.dynamic_sampling, true),
            max_refill_rounds: check!(int, r.max_refill_rounds, 0, 0, 16),
            overlong_buffer: check!(int, r.overlong_buffer, 0, 0, 32_768),
            overlong_penalty_factor: check!(number, r.overlong_penalty_factor, 1.0, 0.0, 100.0),
            mask_truncated: choice(r.mask_truncated, false),
            weight_decay: check!(number, r.weight_decay, 0.0, 0.0, 1.0),
            warmup_steps: check!(int, r.warmup_steps, 0, 0, 1_000_000),
            lr_schedule: choice(r.lr_schedule, LrSchedule::Constant),
            max_grad_norm: check!(number, r.max_grad_norm, 1.0, 0.0, 1e6),
            loss_type,
        })
    }

    /// DAPO's soft overlong penalty for a completion of `tokens` tokens (0 or negative).
    pub fn overlong_penalty(&self, tokens: usize) -> f64 {
        let limit = self.max_completion_tokens;
        let buffer = self.overlong_buffer.min(limit);
        if buffer == 0 || tokens + buffer <= limit {
            return 0.0;
        }
        let into = (tokens.min(limit) + buffer - limit) as f64;
        -self.overlong_penalty_factor * into / buffer as f64
    }

    /// The group size `G`.
    pub fn group_size(&self) -> usize {
        ((8.0 * self.compute_multiplier).round() as usize).max(2)
    }

    /// The learning rate.
    pub fn learning_rate(&self) -> f64 {
        BASE_LEARNING_RATE * self.learning_rate_multiplier
    }

    /// The learning rate at `step` (1-based) of `total` steps.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let base = self.learning_rate();
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return base * step as f64 / self.warmup_steps as f64;
        }
        match self.lr_schedule {
            LrSchedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step.saturating_sub(self.warmup_steps)) as f64 / span;
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
            LrSchedule::Constant => base,
        }
    }

    /// The loss the loop hands to `forward_backward`.
    pub fn loss_fn(&self) -> LossFn {
        match self.loss_type {
            LossType::Gspo => LossFn::Gspo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high,
            },
            LossType::Cispo => LossFn::Cispo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high,
            },
            // DAPO clips higher; GRPO and Dr. GRPO clip symmetrically.
            LossType::Dapo => LossFn::Ppo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high,
            },
            LossType::Grpo | LossType::DrGrpo => LossFn::Ppo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon,
            },
        }
    }
}

impl JobRequest {
    /// Parses a job body; errors name the field by its JSON path.
    pub fn from_value(value: Value) -> Result<JobRequest, TrainError> {
        // Another method's job is refused for what it is, before its settings (which follow
        // that method's rules, not these) can fail to parse as reinforcement ones.
        #[derive(Deserialize)]
        struct MethodType {
            method: MethodKind,
        }
        #[derive(Deserialize)]
        struct MethodKind {
            #[serde(rename = "type")]
            kind: String,
        }
        if let Ok(MethodType { method }) = MethodType::deserialize(&value) {
            if method.kind != "reinforcement" {
                return Err(unsupported_method(&method.kind));
            }
        }
        let request: JobRequest = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner();
            TrainError::Config(if path == "." {
                format!("invalid job: {message}")
            } else {
                format!("invalid job: {path}: {message}")
            })
        })?;
        if request.method.kind != "reinforcement" {
            return Err(unsupported_method(&request.method.kind));
        }
        if request.method.reinforcement.is_none() {
            return Err(TrainError::Config(
                "method.reinforcement is required (it holds the grader)".into(),
            ));
        }
        if let Some(suffix) = &request.suffix {
            if suffix.is_empty() || suffix.chars().count() > 64 {
                return Err(TrainError::Config(
                    "suffix must be 1 to 64 characters".into(),
                ));
            }
        }
        Ok(request)
    }

    /// `method.reinforcement`.
    pub fn reinforcement(&self) -> Result<&Reinforcement, TrainError> {
        self.method
            .reinforcement
            .as_ref()
            .ok_or_else(|| TrainError::Config("method.reinforcement is required".into()))
    }
}

fn unsupported_method(kind: &str) -> TrainError {
    TrainError::Config(format!(
        "method.type {kind:?} is not supported; OpenRFT runs \"reinforcement\" jobs"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_resolves_and_unknown_keys_are_named() {
        let h = Hyperparameters::resolve(
            &serde_json::json!({"batch_size": "auto", "n_epochs": 2}),
            100,
        )
        .unwrap();
        assert_eq!(h.batch_size, 8);
        assert_eq!(h.n_epochs, 2);
        assert_eq!(h.group_size(), 8);
        assert_eq!(h.loss_type, LossType::Dapo);
        let err = Hyperparameters::resolve(&serde_json::json!({"batchsize": 4}), 10).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
        let err = Hyperparameters::resolve(&serde_json::json!({"n_epochs": 0}), 10).unwrap_err();
        assert!(err.to_string().contains("n_epochs"), "{err}");
    }

    #[test]
    fn dr_grpo_does_not_scale_by_the_std() {
        let h = Hyperparameters::resolve(&serde_json::json!({"loss_type": "dr_grpo"}), 10).unwrap();
        assert_eq!(h.scale_rewards, ScaleRewards::Unscaled);
    }

    #[test]
    fn job_errors_name_the_path() {
        let job = |hyper: Value| {
            serde_json::json!({"model": "m", "training_file": "t.jsonl", "method": {
                "type": "reinforcement",
                "reinforcement": {"grader": {}, "hyperparameters": hyper}}})
        };
        let err = JobRequest::from_value(job(serde_json::json!({"n_epochs": "x"}))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid job: method.reinforcement.hyperparameters.n_epochs: "),
            "{err}"
        );
        let err = JobRequest::from_value(job(serde_json::json!({"n_epoch": 2}))).unwrap_err();
        assert!(err.to_string().contains("`n_epoch`"), "{err}");
        let mut supervised = job(serde_json::json!({"n_epoch": 2}));
        supervised["method"]["type"] = "supervised".into();
        let err = JobRequest::from_value(supervised).unwrap_err();
        assert!(
            err.to_string().contains("\"supervised\" is not supported"),
            "{err}"
        );
        let request = JobRequest::from_value(job(Value::Null)).unwrap();
        assert_eq!(
            request.reinforcement().unwrap().hyperparameters,
            Default::default()
        );
    }
}
