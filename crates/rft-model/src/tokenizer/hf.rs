//! Loading a Hugging Face model folder: `tokenizer.json` plus the optional
//! `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json`, read the way
//! transformers reads them.

use std::path::Path;

use serde_json::Value;

use super::{AddSpecial, Parts, TokenizerError};

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TokenizerError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// A special token in tokenizer_config.json: a string, or an AddedToken object
/// (`{"content": "<s>", ...}`), or null.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` in tokenizer_config.json: a string, or a list of `{name, template}` of which
/// transformers uses the one named "default".
fn config_template(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => {
            let template_of = |v: &Value| v.get("template")?.as_str().map(str::to_owned);
            named
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(template_of)
                .or_else(|| named.first().and_then(template_of))
        }
        _ => None,
    }
}

/// Whether the decoder spells bytes with GPT-2's alphabet (`ByteLevel`, alone or in a sequence).
fn is_byte_level(inner: &tokenizers::Tokenizer) -> bool {
    fn mentions_byte_level(v: &Value) -> bool {
        match v {
            Value::Object(o) => {
                o.get("type").and_then(Value::as_str) == Some("ByteLevel")
                    || o.values().any(mentions_byte_level)
            }
            Value::Array(a) => a.iter().any(mentions_byte_level),
            _ => false,
        }
    }
    inner
        .get_decoder()
        .and_then(|d| serde_json::to_value(d).ok())
        .is_some_and(|v| mentions_byte_level(&v))
}

pub(crate) fn parts(dir: &Path) -> Result<Parts, TokenizerError> {
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(TokenizerError::MissingTokenizerJson {
            path: tokenizer_json,
        });
    }
    let inner =
        tokenizers::Tokenizer::from_file(&tokenizer_json).map_err(|e| TokenizerError::Parse {
            path: tokenizer_json.clone(),
            message: e.to_string(),
        })?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let flag = |key: &str| config.get(key).and_then(Value::as_bool);
    // transformers (5.x) rebuilds the post-processor from these flags when the config sets
    // either one, and otherwise keeps tokenizer.json's.
    let add_special =
        if config.get("add_bos_token").is_some() || config.get("add_eos_token").is_some() {
            AddSpecial::Explicit {
                bos: flag("add_bos_token").unwrap_or(false),
                eos: flag("add_eos_token").unwrap_or(false),
            }
        } else {
            AddSpecial::PostProcessor
        };

    let jinja = dir.join("chat_template.jinja");
    let chat_template = match std::fs::read_to_string(&jinja) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => config_template(&config),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: jinja,
                source,
            })
        }
    };

    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
    let extra_eos_ids = match generation.get("eos_token_id") {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_u64).collect(),
        Some(id) => id.as_u64().into_iter().collect(),
        None => Vec::new(),
    }
    .into_iter()
    .filter_map(|id: u64| u32::try_from(id).ok())
    .collect();

    let byte_level = is_byte_level(&inner);
    Ok(Parts {
        inner,
        add_special,
        bos_token: token_text(config.get("bos_token")),
        eos_token: token_text(config.get("eos_token")),
        extra_eos_ids,
        chat_template,
        byte_level,
    })
}
