//! A job's configuration: the body of OpenAI's `POST /fine_tuning/jobs` for
//! `method.type = "reinforcement"`, with file paths in place of file ids, and its
//! hyperparameters resolved (`"auto"` → a recorded number). `docs/training.md` documents every
//! mapping.

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
    /// Hyperparameters (`"auto"` or a value each) and OpenRFT's extensions.
    #[serde(default)]
    pub hyperparameters: Value,
    /// Structured outputs for the policy.
    #[serde(default)]
    pub response_format: Option<Value>,
}

/// Every hyperparameter with its value resolved.
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
    pub reasoning_effort: String,
    /// LoRA rank.
    pub lora_rank: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// `grpo`, `dr_grpo`, `dapo`, `gspo` or `cispo`.
    pub loss_type: String,
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
    /// `group` (divide by the group's std) or `none` (Dr.GRPO).
    pub scale_rewards: String,
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
    /// `constant` or `cosine`.
    pub lr_schedule: String,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
}

/// The LoRA learning rate `learning_rate_multiplier` scales (RL on LoRA wants a rate about 10×
/// full fine-tuning's; 2e-5 × 10 is the common Tinker/ART choice for small models).
pub const BASE_LEARNING_RATE: f64 = 2e-4;

impl Hyperparameters {
    /// Resolves `method.reinforcement.hyperparameters` for a training set of `train_rows`
    /// rows. Unknown keys are an error naming the key.
    pub fn resolve(value: &Value, train_rows: usize) -> Result<Hyperparameters, TrainError> {
        let empty = serde_json::Map::new();
        let map = match value {
            Value::Null => &empty,
            Value::Object(map) => map,
            _ => {
                return Err(TrainError::Config(
                    "method.reinforcement.hyperparameters must be an object".into(),
                ))
            }
        };
        const KNOWN: &[&str] = &[
            "batch_size",
            "learning_rate_multiplier",
            "n_epochs",
            "compute_multiplier",
            "eval_interval",
            "eval_samples",
            "reasoning_effort",
            "lora_rank",
            "lora_alpha",
            "loss_type",
            "beta",
            "epsilon",
            "epsilon_high",
            "temperature",
            "max_completion_tokens",
            "num_iterations",
            "scale_rewards",
            "dynamic_sampling",
            "max_refill_rounds",
            "overlong_buffer",
            "overlong_penalty_factor",
            "mask_truncated",
            "weight_decay",
            "warmup_steps",
            "lr_schedule",
            "max_grad_norm",
        ];
        if let Some(key) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(TrainError::Config(format!(
                "method.reinforcement.hyperparameters.{key}: unknown hyperparameter; known: {}",
                KNOWN.join(", ")
            )));
        }
        let field = |key: &str| map.get(key).filter(|v| !v.is_null() && *v != "auto");
        let number = |key: &str, default: f64, min: f64, max: f64| -> Result<f64, TrainError> {
            match field(key) {
                None => Ok(default),
                Some(v) => match v.as_f64() {
                    Some(x) if x >= min && x <= max => Ok(x),
                    _ => Err(TrainError::Config(format!(
                        "method.reinforcement.hyperparameters.{key}: expected \"auto\" or a number in [{min}, {max}], got {v}"
                    ))),
                },
            }
        };
        let int = |key: &str,
                   default: usize,
                   min: usize,
                   max: usize|
         -> Result<usize, TrainError> {
            match field(key) {
                None => Ok(default),
                Some(v) => match v.as_u64() {
                    Some(x) if x as usize >= min && x as usize <= max => Ok(x as usize),
                    _ => Err(TrainError::Config(format!(
                        "method.reinforcement.hyperparameters.{key}: expected \"auto\" or an integer in [{min}, {max}], got {v}"
                    ))),
                },
            }
        };
        let text = |key: &str, default: &str, allowed: &[&str]| -> Result<String, TrainError> {
            match field(key) {
                None => Ok(default.to_owned()),
                Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(s.clone()),
                Some(v) => Err(TrainError::Config(format!(
                    "method.reinforcement.hyperparameters.{key}: expected one of {}, got {v}",
                    allowed.join(", ")
                ))),
            }
        };
        let boolean = |key: &str, default: bool| -> Result<bool, TrainError> {
            match field(key) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(TrainError::Config(format!(
                    "method.reinforcement.hyperparameters.{key}: expected true or false, got {v}"
                ))),
            }
        };
        // auto batch size: 8 prompts, fewer for tiny datasets (at least one full step per epoch).
        let batch_size = int("batch_size", 8.min(train_rows.max(1)), 1, 256)?;
        let loss_type = text(
            "loss_type",
            "dapo",
            &["grpo", "dr_grpo", "dapo", "gspo", "cispo"],
        )?;
        Ok(Hyperparameters {
            batch_size,
            learning_rate_multiplier: number("learning_rate_multiplier", 1.0, 1e-6, 1e3)?,
            n_epochs: int("n_epochs", 1, 1, 50)?,
            compute_multiplier: number("compute_multiplier", 1.0, 0.00001, 10.0)?,
            eval_interval: int("eval_interval", 5, 1, 1_000_000)?,
            eval_samples: int("eval_samples", 4, 1, 64)?,
            reasoning_effort: text(
                "reasoning_effort",
                "default",
                &["default", "low", "medium", "high"],
            )?,
            lora_rank: int("lora_rank", 16, 1, 1024)?,
            lora_alpha: number("lora_alpha", 32.0, 1e-6, 1e6)?,
            beta: number("beta", 0.0, 0.0, 100.0)?,
            epsilon: number("epsilon", 0.2, 0.0, 10.0)?,
            epsilon_high: number("epsilon_high", 0.28, 0.0, 10.0)?,
            temperature: number("temperature", 1.0, 0.0, 2.0)?,
            max_completion_tokens: int("max_completion_tokens", 256, 1, 32_768)?,
            num_iterations: int("num_iterations", 1, 1, 16)?,
            scale_rewards: text(
                "scale_rewards",
                if loss_type == "dr_grpo" {
                    "none"
                } else {
                    "group"
                },
                &["group", "none"],
            )?,
            dynamic_sampling: boolean("dynamic_sampling", true)?,
            max_refill_rounds: int("max_refill_rounds", 0, 0, 16)?,
            overlong_buffer: int("overlong_buffer", 0, 0, 32_768)?,
            overlong_penalty_factor: number("overlong_penalty_factor", 1.0, 0.0, 100.0)?,
            mask_truncated: boolean("mask_truncated", false)?,
            weight_decay: number("weight_decay", 0.0, 0.0, 1.0)?,
            warmup_steps: int("warmup_steps", 0, 0, 1_000_000)?,
            lr_schedule: text("lr_schedule", "constant", &["constant", "cosine"])?,
            max_grad_norm: number("max_grad_norm", 1.0, 0.0, 1e6)?,
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
        match self.lr_schedule.as_str() {
            "cosine" => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step.saturating_sub(self.warmup_steps)) as f64 / span;
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
            _ => base,
        }
    }

    /// The loss the loop hands to `forward_backward`.
    pub fn loss_fn(&self) -> LossFn {
        match self.loss_type.as_str() {
            "gspo" => LossFn::Gspo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high,
            },
            "cispo" => LossFn::Cispo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high,
            },
            // grpo and dr_grpo clip symmetrically; dapo clips higher.
            "dapo" => LossFn::Ppo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon_high,
            },
            _ => LossFn::Ppo {
                epsilon_low: self.epsilon,
                epsilon_high: self.epsilon,
            },
        }
    }

    /// The JSON recorded in the job (every value resolved).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl JobRequest {
    /// Parses a job body; errors name the field.
    pub fn from_value(value: Value) -> Result<JobRequest, TrainError> {
        let request: JobRequest = serde_json::from_value(value)
            .map_err(|e| TrainError::Config(format!("invalid job: {e}")))?;
        if request.method.kind != "reinforcement" {
            return Err(TrainError::Config(format!(
                "method.type {:?} is not supported; OpenRFT runs \"reinforcement\" jobs",
                request.method.kind
            )));
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
        assert_eq!(h.loss_type, "dapo");
        let err = Hyperparameters::resolve(&serde_json::json!({"batchsize": 4}), 10).unwrap_err();
        assert!(err.to_string().contains("batchsize"), "{err}");
        let err = Hyperparameters::resolve(&serde_json::json!({"n_epochs": 0}), 10).unwrap_err();
        assert!(err.to_string().contains("n_epochs"), "{err}");
    }

    #[test]
    fn dr_grpo_does_not_scale_by_the_std() {
        let h = Hyperparameters::resolve(&serde_json::json!({"loss_type": "dr_grpo"}), 10).unwrap();
        assert_eq!(h.scale_rewards, "none");
    }
}
