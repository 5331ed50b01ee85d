//! A job's configuration: the body of OpenAI's `POST /fine_tuning/jobs` for
//! `method.type = "reinforcement"` (rft-types' [`CreateJob`], with file paths in place of file
//! ids; [`parse_job`] reads and checks it), and its hyperparameters resolved (`"auto"` → a
//! recorded number). `docs/training.md` documents every mapping.

use rft_types::api::hyperparameters::{
    Auto, Hyperparameters as HyperparametersRequest, LossType, LrSchedule, ReasoningEffort,
    RolloutCorrection, ScaleRewards,
};
use rft_types::api::job::{CreateJob, CreateReinforcement};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::loss::LossFn;
use crate::TrainError;

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
    /// Rollouts of the next steps sampled while the current one trains, at most this many
    /// versions behind the trained policy; 0 is the synchronous loop.
    #[serde(default)]
    pub max_off_policy_steps: usize,
    /// Correction for a sampler whose log-probs differ from the trainer's.
    #[serde(default = "no_correction")]
    pub rollout_correction: RolloutCorrection,
    /// The importance ratio's cap (TIS) or band `[1/C, C]` (MIS).
    #[serde(default = "default_is_cap")]
    pub rollout_is_cap: f64,
}

// A job folder written before these settings existed resumes without them.
fn no_correction() -> RolloutCorrection {
    RolloutCorrection::None
}

fn default_is_cap() -> f64 {
    2.0
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
        // GSPO weighs a sequence by one ratio: a per-token cap or mask would change only its
        // first token's.
        if loss_type == LossType::Gspo
            && matches!(
                r.rollout_correction,
                Some(Auto::Value(RolloutCorrection::Tis | RolloutCorrection::Mis))
            )
        {
            return Err(TrainError::Config(
                "hyperparameters.rollout_correction: tis and mis correct tokens; gspo weighs whole sequences, so use rollout_correction none with it".into(),
            ));
        }
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
            max_off_policy_steps: check!(int, r.max_off_policy_steps, 0, 0, 8),
            // Off by default, asynchronous steps included: with `max_off_policy_steps` the
            // loss's ratio is already clipped against the sampler's own log-probs, and on the
            // quickstart task TIS and MIS on stale samples did worse than that clip
            // (docs/performance.md).
            rollout_correction: choice(r.rollout_correction, RolloutCorrection::None),
            rollout_is_cap: check!(number, r.rollout_is_cap, 2.0, 1.0, 100.0),
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

/// Parses a job body for the trainer: the base model is a name, a GGUF file or a model folder,
/// and the files are JSONL paths. Stricter than the server's parse of the same type: an unknown
/// top-level key is refused (a typo must not silently train with a default), and `method`,
/// `method.reinforcement`, its grader and its hyperparameters' keys are checked here. Errors
/// name the field by its JSON path.
pub fn parse_job(value: Value) -> Result<CreateJob, TrainError> {
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
    let invalid = |message: String| TrainError::Config(format!("invalid job: {message}"));
    let known = CreateJob::names();
    if let Some(unknown) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
    {
        let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        return Err(invalid(format!(
            "unknown field `{unknown}`, expected one of {}",
            expected.join(", ")
        )));
    }
    let job: CreateJob = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner();
        invalid(if path == "." {
            message.to_string()
        } else {
            format!("{path}: {message}")
        })
    })?;
    let Some(method) = &job.method else {
        return Err(invalid("missing field `method`".into()));
    };
    if method.kind != "reinforcement" {
        return Err(unsupported_method(&method.kind));
    }
    let Some(reinforcement) = &method.reinforcement else {
        return Err(TrainError::Config(
            "method.reinforcement is required (it holds the grader)".into(),
        ));
    };
    if reinforcement.grader.as_ref().is_none_or(Value::is_null) {
        return Err(invalid(
            "method.reinforcement: missing field `grader`".into(),
        ));
    }
    HyperparametersRequest::from_value(&reinforcement.hyperparameters)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(suffix) = &job.suffix {
        if suffix.is_empty() || suffix.chars().count() > 64 {
            return Err(TrainError::Config(
                "suffix must be 1 to 64 characters".into(),
            ));
        }
    }
    Ok(job)
}

/// `method.reinforcement` of a job: an error unless the method is reinforcement and has it.
pub fn reinforcement(job: &CreateJob) -> Result<&CreateReinforcement, TrainError> {
    match &job.method {
        Some(method) if method.kind != "reinforcement" => Err(unsupported_method(&method.kind)),
        Some(method) => method
            .reinforcement
            .as_ref()
            .ok_or_else(|| TrainError::Config("method.reinforcement is required".into())),
        None => Err(TrainError::Config("method is required".into())),
    }
}

/// The job's grader JSON (`method.reinforcement.grader`, spec §2.1).
pub fn grader(job: &CreateJob) -> Result<&Value, TrainError> {
    reinforcement(job)?
        .grader
        .as_ref()
        .ok_or_else(|| TrainError::Config("method.reinforcement.grader is required".into()))
}

/// The job's hyperparameters as given (`"auto"` or a value per key), keys checked.
pub fn hyperparameters(job: &CreateJob) -> Result<HyperparametersRequest, TrainError> {
    HyperparametersRequest::from_value(&reinforcement(job)?.hyperparameters)
        .map_err(|e| TrainError::Config(e.to_string()))
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
        let err = parse_job(job(serde_json::json!({"n_epochs": "x"}))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid job: method.reinforcement.hyperparameters.n_epochs: "),
            "{err}"
        );
        let err = parse_job(job(serde_json::json!({"n_epoch": 2}))).unwrap_err();
        assert!(err.to_string().contains("`n_epoch`"), "{err}");
        let mut supervised = job(serde_json::json!({"n_epoch": 2}));
        supervised["method"]["type"] = "supervised".into();
        let err = parse_job(supervised).unwrap_err();
        assert!(
            err.to_string().contains("\"supervised\" is not supported"),
            "{err}"
        );
        let request = parse_job(job(Value::Null)).unwrap();
        assert_eq!(hyperparameters(&request).unwrap(), Default::default());
        // A typo at the top level is refused, not ignored.
        let mut typo = job(Value::Null);
        typo["trainig_file"] = "t.jsonl".into();
        let err = parse_job(typo).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `trainig_file`"),
            "{err}"
        );
        // A missing grader or method is named.
        let mut no_grader = job(Value::Null);
        no_grader["method"]["reinforcement"]
            .as_object_mut()
            .unwrap()
            .remove("grader");
        let err = parse_job(no_grader).unwrap_err();
        assert!(err.to_string().contains("`grader`"), "{err}");
        let err =
            parse_job(serde_json::json!({"model": "m", "training_file": "t.jsonl"})).unwrap_err();
        assert!(err.to_string().contains("`method`"), "{err}");
        // What the CLI writes as request.json parses back to the same job.
        let again = parse_job(serde_json::to_value(&request).unwrap()).unwrap();
        assert_eq!(again, request);
    }
}
