//! Loading weights into one layout: Hugging Face tensor names, f32, PyTorch orientation
//! (`(out_features, in_features)`), whatever the file format.
//!
//! GGUF files are dequantised once at load time (every quant type candle reads); their tensor
//! names are mapped to Hugging Face names, and llama.cpp's permutation of the Llama q/k
//! projections (made so its interleaved RoPE kernel can be used) is undone, so one rotary
//! implementation (Hugging Face's rotate-half) serves every format and LoRA adapters keep PEFT's
//! layout.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::config::{Architecture, ModelConfig};
use crate::ModelError;

/// Frozen weights by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
}

impl Weights {
    /// Builds weights from named tensors (tests build tiny random models this way).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: PathBuf) -> Weights {
        Weights { tensors, source }
    }

    /// Takes a tensor out by name; an error names the file and the missing tensor.
    pub fn take(&mut self, name: &str) -> Result<Tensor, ModelError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                file: self.source.clone(),
            })
    }

    /// Takes a tensor if present.
    pub fn take_optional(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Reads a tensor without taking it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Names still present, sorted (to report unused tensors).
    pub fn remaining(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// A GGUF file opened: its header and the dequantised weights.
pub fn load_gguf(
    path: &Path,
    device: &Device,
) -> Result<(gguf_file::Content, ModelConfig, Weights), ModelError> {
    let io_err = |e: std::io::Error| ModelError::Io {
        path: path.to_owned(),
        source: e,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| ModelError::Corrupt {
        path: path.to_owned(),
        message: format!("not a readable GGUF file: {e}"),
    })?;
    let config = ModelConfig::from_gguf(&content)?;
    let mut tensors = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for gguf_name in names {
        let Some(hf_name) = hf_name(&gguf_name) else {
            tracing::debug!("ignoring GGUF tensor {gguf_name}");
            continue;
        };
        let qtensor =
            content
                .tensor(&mut file, &gguf_name, device)
                .map_err(|e| ModelError::Corrupt {
                    path: path.to_owned(),
                    message: format!("tensor {gguf_name}: {e}"),
                })?;
        let mut tensor = qtensor
            .dequantize(device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| ModelError::Corrupt {
                path: path.to_owned(),
                message: format!("tensor {gguf_name}: {e}"),
            })?;
        if config.architecture == Architecture::Llama {
            if hf_name.contains("self_attn.q_proj.") {
                tensor = unpermute_rotary(&tensor, config.num_heads)?;
            } else if hf_name.contains("self_attn.k_proj.") {
                tensor = unpermute_rotary(&tensor, config.num_kv_heads)?;
            }
        }
        tensors.insert(hf_name, tensor);
    }
    Ok((
        content,
        config,
        Weights::from_tensors(tensors, path.to_owned()),
    ))
}

/// The safetensors files of a Hugging Face folder (one file, or the shards an index names),
/// converted to f32.
pub fn load_safetensors_dir(dir: &Path, device: &Device) -> Result<Weights, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
            path: index.clone(),
            source: e,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Corrupt {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let mut shards: Vec<String> = value["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Corrupt {
                path: index.clone(),
                message: "no weight_map".into(),
            })?
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut tensors = HashMap::new();
    for file in &files {
        if !file.exists() {
            return Err(ModelError::MissingFile {
                path: file.clone(),
                hint: "a Hugging Face model folder needs model.safetensors (or the shards model.safetensors.index.json names)".into(),
            });
        }
        let loaded =
            candle_core::safetensors::load(file, device).map_err(|e| ModelError::Corrupt {
                path: file.clone(),
                message: e.to_string(),
            })?;
        for (name, tensor) in loaded {
            let tensor = tensor
                .to_dtype(DType::F32)
                .map_err(|e| ModelError::Corrupt {
                    path: file.clone(),
                    message: format!("{name}: {e}"),
                })?;
            tensors.insert(name, tensor);
        }
    }
    Ok(Weights::from_tensors(tensors, dir.to_owned()))
}

/// llama.cpp's tensor names → Hugging Face's.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf_part = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_part}.{kind}"))
}

/// Inverts `convert_hf_to_gguf.py`'s `permute`: rows of each head were reordered from
/// (half, pair) to (pair, half); put them back.
fn unpermute_rotary(tensor: &Tensor, n_heads: usize) -> Result<Tensor, ModelError> {
    let dims = tensor.dims().to_vec();
    let rows = dims[0];
    let head_dim = rows / n_heads;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![n_heads, head_dim / 2, 2];
    shape.extend(&rest);
    let permuted = tensor
        .reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(permuted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.3.ffn_down.weight").unwrap(),
            "model.layers.3.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> Result<(), ModelError> {
        // permute(w) = w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)
        let (heads, head_dim, cols) = (2, 4, 3);
        let original = Tensor::arange(0f32, (heads * head_dim * cols) as f32, &Device::Cpu)?
            .reshape((heads * head_dim, cols))?;
        let permuted = original
            .reshape((heads, 2, head_dim / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((heads * head_dim, cols))?;
        let restored = unpermute_rotary(&permuted, heads)?;
        assert_eq!(restored.to_vec2::<f32>()?, original.to_vec2::<f32>()?);
        Ok(())
    }
}
