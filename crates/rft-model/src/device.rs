//! Which device tensors live on: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda`
//! feature. Every command that picks a device parses its choice here, so the error for a
//! CPU-only build is the same everywhere.

use candle_core::Device;

use crate::ModelError;

/// The device named by `spec`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.as_str() {
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(ModelError::Format(format!(
                    "unknown device {spec:?}: expected cpu, cuda or cuda:N"
                )))
            }
        },
    };
    cuda(ordinal)
}

/// The device named by `RFT_DEVICE` (`cpu` when unset): what commands without a `--device`
/// of their own run on (`rft train`, `rft generate`, evals of a local model).
pub fn from_env() -> Result<Device, ModelError> {
    match std::env::var("RFT_DEVICE") {
        Ok(name) if !name.trim().is_empty() => {
            parse_device(&name).map_err(|e| ModelError::Format(format!("RFT_DEVICE: {e}")))
        }
        _ => Ok(Device::Cpu),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, ModelError> {
    Device::new_cuda(ordinal).map_err(|e| {
        ModelError::Format(format!(
            "cannot open CUDA device {ordinal}: {e} (is the NVIDIA driver loaded and the GPU visible?)"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device, ModelError> {
    Err(ModelError::Format(
        "this build has no CUDA support: rebuild with `cargo build --release -p rft-cli --features cuda`, which needs the CUDA toolkit (OpenRFT's README.md, section CUDA)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_names_are_refused() {
        assert!(matches!(parse_device("CPU"), Ok(Device::Cpu)));
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda").is_err());
    }
}
