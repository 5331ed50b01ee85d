//! Tiny self-contained model folders for tests and examples: random weights of
//! [`ModelConfig::tiny`] shape with a character-level tokenizer and a chat template, written in
//! the Hugging Face layout, so every crate can run the full pipeline (load, template, sample,
//! train, serve) in milliseconds without a download.

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::json;

use crate::config::{Architecture, ModelConfig};
use crate::model::CausalLm;
use crate::ModelError;

/// The chat template of tiny models (no newlines: the vocabulary has none).
pub const TINY_CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}";

/// The tiny vocabulary's size: two specials and the printable ASCII characters.
const TINY_VOCAB: usize = 97;

/// Writes `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` of a
/// random tiny model into `dir`. The vocabulary is `<|im_start|>` (0), `<|im_end|>` (1, the end
/// of turn) and the 95 printable ASCII characters (ids 2–96), one token each.
pub fn write_tiny_model(
    dir: &Path,
    architecture: Architecture,
    seed: u64,
) -> Result<(), ModelError> {
    write_random_model(dir, &ModelConfig::tiny(architecture), seed)
}

/// [`write_tiny_model`] at any shape (a real model's: [`ModelConfig::shape`]), with seeded
/// random weights: what a machine that can download nothing measures throughput on. The
/// vocabulary is the tiny one, padded to the shape's size with tokens `<|tN|>` (never produced
/// by encoding text, decoded as themselves), so the embedding and output layers have their
/// real size.
pub fn write_random_model(dir: &Path, config: &ModelConfig, seed: u64) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ModelError::Io { path, source }
    };
    if config.vocab_size < TINY_VOCAB {
        return Err(ModelError::Format(format!(
            "a random model needs a vocabulary of at least {TINY_VOCAB} tokens, not {}",
            config.vocab_size
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = config.clone();
    let model = CausalLm::random(config.clone(), seed, DType::F32, &Device::Cpu)?;
    let weights: std::collections::HashMap<String, candle_core::Tensor> =
        model.named_weights().into_iter().collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))?;
    let write = |name: &str, value: serde_json::Value| -> Result<(), ModelError> {
        let path = dir.join(name);
        let text =
            serde_json::to_string_pretty(&value).map_err(|e| ModelError::Format(e.to_string()))?;
        std::fs::write(&path, text).map_err(io(&path))
    };
    write("config.json", config.to_hf_json())?;
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|im_start|>".into(), json!(0));
    vocab.insert("<|im_end|>".into(), json!(1));
    for (idx, byte) in (32u8..127).enumerate() {
        vocab.insert((byte as char).to_string(), json!(idx + 2));
    }
    for id in TINY_VOCAB..config.vocab_size {
        vocab.insert(format!("<|t{id}|>"), serde_json::Value::from(id));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    write(
        "tokenizer.json",
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(0, "<|im_start|>"), special(1, "<|im_end|>")],
            "normalizer": null,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."},
                              "behavior": "Isolated", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "?"}
        }),
    )?;
    write(
        "tokenizer_config.json",
        json!({
            "chat_template": TINY_CHAT_TEMPLATE,
            "eos_token": "<|im_end|>",
            "bos_token": null,
            "pad_token": "<|im_end|>"
        }),
    )?;
    Ok(())
}
