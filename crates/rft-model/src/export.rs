//! `rft export --merged`: a full Hugging Face model folder with an adapter folded into the
//! weights, loadable by transformers, vLLM, llama.cpp's converter, and OpenRFT itself.

use std::collections::HashMap;
use std::path::Path;

use rft_types::paths::{persist, temp_path, write_atomic};
use serde_json::json;

use crate::engine::Engine;
use crate::ModelError;

/// Writes `config.json`, `model.safetensors` (f32), `tokenizer.json`, `tokenizer_config.json`
/// (with the chat template) and `generation_config.json` of `engine`'s model, with its adapter
/// merged when it has one, into `out` (created if needed).
pub fn export_merged(engine: &Engine, out: &Path) -> Result<(), ModelError> {
    let io = |source| ModelError::Io {
        path: out.to_owned(),
        source,
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let model = match &engine.adapter {
        // A bf16 base is merged in f32 (and written so): rounded back to bf16, small updates
        // of the adapter would vanish.
        Some(adapter) if !engine.model.merges_exactly() => engine
            .model
            .with_precision(crate::Precision::F32)?
            .merged(adapter)?,
        Some(adapter) => engine.model.merged(adapter)?,
        None => engine.model.clone(),
    };
    let tensors: HashMap<String, candle_core::Tensor> = model.named_weights().into_iter().collect();
    let weights = out.join("model.safetensors");
    let temp = temp_path(&weights);
    candle_core::safetensors::save(&tensors, &temp)?;
    persist(&temp, &weights).map_err(io)?;
    let write_json = |name: &str, value: serde_json::Value| -> Result<(), ModelError> {
        let text =
            serde_json::to_vec_pretty(&value).map_err(|e| ModelError::Format(e.to_string()))?;
        let path = out.join(name);
        write_atomic(&path, &text).map_err(|source| ModelError::Io { path, source })
    };
    let tokenizer = &engine.tokenizer;
    let mut config = model.config().to_hf_json();
    config["eos_token_id"] = json!(tokenizer.eos_token_id());
    config["bos_token_id"] = json!(tokenizer.bos_token_id());
    write_json("config.json", config)?;
    let tokenizer_json = out.join("tokenizer.json");
    tokenizer
        .hf()
        .save(&tokenizer_json, false)
        .map_err(|e| ModelError::Format(format!("{}: {e}", tokenizer_json.display())))?;
    write_json(
        "tokenizer_config.json",
        json!({
            "chat_template": tokenizer.chat_template_source(),
            "eos_token": tokenizer.eos_token(),
            "bos_token": tokenizer.bos_token(),
            "clean_up_tokenization_spaces": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )?;
    write_json(
        "generation_config.json",
        json!({
            "eos_token_id": tokenizer.eos_token_ids(),
            "bos_token_id": tokenizer.bos_token_id(),
        }),
    )?;
    Ok(())
}
