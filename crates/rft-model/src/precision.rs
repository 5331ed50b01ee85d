//! The engine's precision: the type the frozen base model's weights are held and multiplied in.
//!
//! Only the frozen base changes: LoRA matrices, their gradients, the optimizer's state, the
//! loss and every log-prob reduction stay in f32 whatever is chosen, as mixed-precision
//! training does (the adapter's updates are far below bf16's resolution of its weights).
//!
//! - `f32`: everything in f32 (the CPU's default).
//! - `bf16`: weights in bf16, half the memory and half the bytes each token streams. On a GPU
//!   the activations are bf16 too and the products run in bf16 with f32 accumulation (cuBLAS);
//!   norms, soft-max and log-probs accumulate in f32 (the GPU's default). On the CPU the
//!   activations stay f32, as candle's CPU backend has no bf16 products: the packed kernels
//!   multiply the bf16 weights with f32 accumulation (`crate::packed`, bf16 panels).
//!
//! `RFT_DTYPE` (`f32` or `bf16`) overrides the default for every model a process loads; the
//! commands' `--dtype` flags set it. `RFT_SAMPLER_DTYPE` (`--sampler-dtype`) samples a
//! training job's rollouts in another precision than the one it trains in.

use candle_core::{DType, Device};

use crate::ModelError;

/// What the frozen base model is held and multiplied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Weights and activations in f32.
    F32,
    /// Weights in bf16; activations bf16 on a GPU, f32 on the CPU.
    Bf16,
}

impl Precision {
    /// `f32` or `bf16` (also `float32`, `bfloat16`).
    pub fn parse(name: &str) -> Result<Precision, ModelError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(ModelError::Format(format!(
                "unknown precision {other:?}: expected f32 or bf16"
            ))),
        }
    }

    /// bf16 on a GPU, f32 on the CPU.
    pub fn default_for(device: &Device) -> Precision {
        if device.is_cpu() {
            Precision::F32
        } else {
            Precision::Bf16
        }
    }

    /// `RFT_DTYPE` when set, else [`Precision::default_for`] the device.
    pub fn resolve(device: &Device) -> Result<Precision, ModelError> {
        Ok(Precision::from_var("RFT_DTYPE")?.unwrap_or(Precision::default_for(device)))
    }

    /// The precision an environment variable names, `None` when it is unset or empty.
    fn from_var(name: &str) -> Result<Option<Precision>, ModelError> {
        match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => Precision::parse(&value)
                .map(Some)
                .map_err(|e| ModelError::Format(format!("{name}: {e}"))),
            _ => Ok(None),
        }
    }

    /// `RFT_SAMPLER_DTYPE` when set: the precision rollouts are sampled in when it should
    /// differ from the trained model's (a bf16 sampler for an f32 trainer on the CPU streams
    /// half the bytes per token). `None` samples in the model's own precision.
    pub fn sampler_from_env() -> Result<Option<Precision>, ModelError> {
        Precision::from_var("RFT_SAMPLER_DTYPE")
    }

    /// The type of the frozen weights (projections, embeddings, output head).
    pub fn weight_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The type of the activations (and of the norms' scales and biases) on `device`.
    pub fn activation_dtype(self, device: &Device) -> DType {
        match self {
            Precision::Bf16 if !device.is_cpu() => DType::BF16,
            _ => DType::F32,
        }
    }

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_defaults_follow_the_device() {
        assert_eq!(Precision::parse("BF16").ok(), Some(Precision::Bf16));
        assert_eq!(Precision::parse(" f32 ").ok(), Some(Precision::F32));
        assert!(Precision::parse("f16").is_err());
        assert_eq!(Precision::default_for(&Device::Cpu), Precision::F32);
        assert_eq!(Precision::Bf16.weight_dtype(), DType::BF16);
        // The CPU keeps f32 activations: its backend has no bf16 products.
        assert_eq!(Precision::Bf16.activation_dtype(&Device::Cpu), DType::F32);
    }
}
