//! `method.reinforcement.hyperparameters` as a job request gives it (spec §4.2): OpenAI's keys,
//! each `"auto"` or a value, and OpenRFT's extensions (`docs/training.md`) in the same object.
//!
//! This is the request, not the resolved values: it keeps which keys the client set, so the
//! job object can echo them (and `"auto"` for OpenAI's unset keys). The trainer turns it into
//! numbers (`rft_train::config::Hyperparameters::from_request`), where the ranges are checked.
//! Unknown keys are refused here: a typo must not silently train with a default.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// `"auto"` (the server picks) or a value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Auto<T> {
    /// `"auto"`.
    #[default]
    Auto,
    /// A value the client chose.
    Value(T),
}

impl<T> Auto<T> {
    /// The chosen value, `None` for `"auto"`.
    pub fn value(self) -> Option<T> {
        match self {
            Auto::Auto => None,
            Auto::Value(v) => Some(v),
        }
    }
}

impl<T: Serialize> Serialize for Auto<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Auto::Auto => serializer.serialize_str("auto"),
            Auto::Value(value) => value.serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Auto<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffered as JSON so "auto" can be told apart from a T that is itself a string (the
        // enums below) before T sees it.
        let value = Value::deserialize(deserializer)?;
        if value == "auto" {
            return Ok(Auto::Auto);
        }
        T::deserialize(value)
            .map(Auto::Value)
            .map_err(|e| de::Error::custom(format!("expected \"auto\" or a value: {e}")))
    }
}

/// The policy loss (`docs/training.md`, "Losses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// PPO's clipped surrogate, clipped symmetrically, each sequence averaged.
    Grpo,
    /// Dr. GRPO: as `grpo`, normalised by a constant (no length bias), no std scaling.
    DrGrpo,
    /// DAPO: clip-higher, token-level mean over the batch (OpenRFT's default).
    Dapo,
    /// GSPO: one importance ratio per sequence.
    Gspo,
    /// CISPO: clipped importance weights on a REINFORCE term.
    Cispo,
}

/// Whether advantages are divided by their group's standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's std (GRPO).
    Group,
    /// Leave them unscaled (Dr. GRPO); `"none"` on the wire.
    #[serde(rename = "none")]
    Unscaled,
}

/// How a step corrects for a sampler whose log-probs differ from the trainer's (a rollout fleet
/// in other precision or kernels), with `r = π_trainer / π_sampler` per token: `none` trains on
/// the samples as they are; `tis` (truncated importance sampling) weighs each token by
/// `min(r, rollout_is_cap)`; `mis` (masked importance sampling) drops the tokens whose `r`
/// leaves `[1 / rollout_is_cap, rollout_is_cap]`. Either way the clip ratio is then taken
/// against the trainer's own log-probs of the sampling version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCorrection {
    /// No correction.
    None,
    /// Truncated importance sampling.
    Tis,
    /// Masked importance sampling.
    Mis,
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Cosine decay to 0 at the last step.
    Cosine,
}

/// OpenAI's `reasoning_effort`: accepted and recorded; OpenRFT's models have no thinking mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningEffort {
    /// The model's own default.
    Default,
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
}

macro_rules! wire_names {
    ($($ty:ident { $($variant:ident => $name:literal),* $(,)? })*) => {$(
        impl $ty {
            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),*
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

wire_names! {
    LossType { Grpo => "grpo", DrGrpo => "dr_grpo", Dapo => "dapo", Gspo => "gspo", Cispo => "cispo" }
    ScaleRewards { Group => "group", Unscaled => "none" }
    LrSchedule { Constant => "constant", Cosine => "cosine" }
    ReasoningEffort { Default => "default", Low => "low", Medium => "medium", High => "high" }
}

/// `method.reinforcement.hyperparameters`. A field is `None` when the key was left out (or
/// null), `Some(Auto::Auto)` for `"auto"`. Serializing writes the keys that are set, in this
/// order. Only a JSON object (or null, for none) parses.
// `remote = "Self"` makes the derives inherent functions, so the trait impls below can wrap
// them: a derived struct would also accept a JSON array, field by position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Hyperparameters {
    /// Prompts per optimizer step (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<Auto<usize>>,
    /// Multiplies the base learning rate (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate_multiplier: Option<Auto<f64>>,
    /// Passes over the training data (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_epochs: Option<Auto<usize>>,
    /// Scales the group size (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_multiplier: Option<Auto<f64>>,
    /// Steps between validations (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_interval: Option<Auto<usize>>,
    /// Samples per validation row (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_samples: Option<Auto<usize>>,
    /// OpenAI's reasoning effort (recorded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<Auto<ReasoningEffort>>,
    /// LoRA rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<Auto<usize>>,
    /// LoRA alpha.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<Auto<f64>>,
    /// The policy loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_type: Option<Auto<LossType>>,
    /// KL coefficient against the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<Auto<f64>>,
    /// Lower clip ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<Auto<f64>>,
    /// Upper clip ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_high: Option<Auto<f64>>,
    /// Sampling temperature of the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Auto<f64>>,
    /// Most tokens per completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<Auto<usize>>,
    /// Optimizer passes over each rollout batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_iterations: Option<Auto<usize>>,
    /// Whether advantages are divided by the group's std.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_rewards: Option<Auto<ScaleRewards>>,
    /// Drop groups whose rewards are all equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_sampling: Option<Auto<bool>>,
    /// Extra sampling rounds that replace dropped groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_refill_rounds: Option<Auto<usize>>,
    /// DAPO's soft overlong buffer, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlong_buffer: Option<Auto<usize>>,
    /// DAPO's overlong penalty at the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlong_penalty_factor: Option<Auto<f64>>,
    /// Leave truncated completions out of the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_truncated: Option<Auto<bool>>,
    /// AdamW weight decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<Auto<f64>>,
    /// Steps of linear warm-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<Auto<usize>>,
    /// The schedule after warm-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<Auto<LrSchedule>>,
    /// Global gradient-norm clip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<Auto<f64>>,
    /// Rollouts of the next steps sampled while the current one trains, at most this many
    /// versions behind (0: synchronous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_off_policy_steps: Option<Auto<usize>>,
    /// Correction for a sampler that differs from the trainer (`none`, `tis`, `mis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_correction: Option<Auto<RolloutCorrection>>,
    /// The importance ratio's cap (TIS) or band `[1/C, C]` (MIS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_is_cap: Option<Auto<f64>>,
}

impl Serialize for Hyperparameters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Hyperparameters::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Hyperparameters {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Hyperparameters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of hyperparameters")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Hyperparameters, E> {
                Ok(Hyperparameters::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Hyperparameters, A::Error> {
                Hyperparameters::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_any(ObjectOnly)
    }
}

/// A deserializer that only records the field list a struct's derived `Deserialize` asks for:
/// how a request type's list of known keys is read from the type itself (the derive hands out
/// a `'static` list, so reading it costs nothing).
pub(crate) struct Introspect<'a>(pub(crate) &'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for Introspect<'_> {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs are introspected"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("introspection only"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// Hyperparameters that could not be parsed: the key (JSON path) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("method.reinforcement.hyperparameters{}: {message}", dotted(.path))]
pub struct HyperparametersError {
    /// The offending key (e.g. `batch_size`); empty for the object as a whole (an unknown key,
    /// which the message names, or a value that is not an object).
    pub path: String,
    /// What was wrong and what was expected.
    pub message: String,
}

fn dotted(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(".{path}")
    }
}

impl Hyperparameters {
    /// Parses the JSON object; `null` is an empty object. Errors name the key.
    pub fn from_value(value: &Value) -> Result<Hyperparameters, HyperparametersError> {
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            HyperparametersError {
                path: if path == "." { String::new() } else { path },
                message: err.into_inner().to_string(),
            }
        })
    }

    /// Every hyperparameter name, in declaration order: the one list of known keys. Taken from
    /// the type's serde field list, so it cannot drift from what parsing accepts.
    pub fn names() -> &'static [&'static str] {
        let mut fields = None;
        let _ = Hyperparameters::deserialize(Introspect(&mut fields));
        fields.unwrap_or(&[])
    }

    /// The object the job echoes (spec §4.2): the keys as set, and `"auto"` for each of
    /// OpenAI's keys left out (`reasoning_effort`: `"default"`), as OpenAI's job objects show.
    pub fn with_unset_as_auto(&self) -> Hyperparameters {
        Hyperparameters {
            batch_size: self.batch_size.or(Some(Auto::Auto)),
            learning_rate_multiplier: self.learning_rate_multiplier.or(Some(Auto::Auto)),
            n_epochs: self.n_epochs.or(Some(Auto::Auto)),
            compute_multiplier: self.compute_multiplier.or(Some(Auto::Auto)),
            eval_interval: self.eval_interval.or(Some(Auto::Auto)),
            eval_samples: self.eval_samples.or(Some(Auto::Auto)),
            reasoning_effort: self
                .reasoning_effort
                .or(Some(Auto::Value(ReasoningEffort::Default))),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn auto_or_a_value_round_trips() {
        let h = Hyperparameters::from_value(&json!({
            "batch_size": "auto", "n_epochs": 2, "loss_type": "dr_grpo",
            "scale_rewards": "none", "learning_rate_multiplier": null
        }))
        .unwrap();
        assert_eq!(h.batch_size, Some(Auto::Auto));
        assert_eq!(h.n_epochs, Some(Auto::Value(2)));
        assert_eq!(h.loss_type, Some(Auto::Value(LossType::DrGrpo)));
        assert_eq!(h.scale_rewards, Some(Auto::Value(ScaleRewards::Unscaled)));
        assert_eq!(h.learning_rate_multiplier, None);
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            json!({"batch_size": "auto", "n_epochs": 2, "loss_type": "dr_grpo",
                   "scale_rewards": "none"})
        );
        assert_eq!(
            Hyperparameters::from_value(&Value::Null).unwrap(),
            Hyperparameters::default()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = Hyperparameters::from_value(&json!({"batchsize": 4})).unwrap_err();
        assert!(err.to_string().contains("`batchsize`"), "{err}");
        assert!(err.to_string().contains("batch_size"), "{err}");
        let err = Hyperparameters::from_value(&json!({"n_epochs": "two"})).unwrap_err();
        assert_eq!(err.path, "n_epochs");
        assert!(
            err.to_string()
                .starts_with("method.reinforcement.hyperparameters.n_epochs: expected \"auto\""),
            "{err}"
        );
        let err = Hyperparameters::from_value(&json!({"loss_type": "ppo"})).unwrap_err();
        assert_eq!(err.path, "loss_type");
        assert!(err.message.contains("dr_grpo"), "{err}");
        let err = Hyperparameters::from_value(&json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "method.reinforcement.hyperparameters: invalid type: sequence, expected an object of hyperparameters"
        );
    }

    #[test]
    fn names_come_from_the_type() {
        let names = Hyperparameters::names();
        assert_eq!(names.len(), 29);
        assert_eq!(names[0], "batch_size");
        assert!(names.contains(&"lr_schedule"));
        for name in [
            "max_off_policy_steps",
            "rollout_correction",
            "rollout_is_cap",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        // Every name parses; nothing else does.
        for name in names {
            let mut object = serde_json::Map::new();
            object.insert((*name).to_owned(), json!("auto"));
            Hyperparameters::from_value(&Value::Object(object)).unwrap();
        }
    }

    #[test]
    fn the_echo_fills_openai_keys_only() {
        let h = Hyperparameters::from_value(&json!({"n_epochs": 3, "lora_rank": 4})).unwrap();
        assert_eq!(
            serde_json::to_value(h.with_unset_as_auto()).unwrap(),
            json!({"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 3,
                   "compute_multiplier": "auto", "eval_interval": "auto", "eval_samples": "auto",
                   "reasoning_effort": "default", "lora_rank": 4})
        );
    }
}
