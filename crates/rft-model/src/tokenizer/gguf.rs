//! Building a byte-level BPE tokenizer from a GGUF's `tokenizer.ggml.*` metadata, the way
//! llama.cpp's `convert_hf_to_gguf.py` wrote it from the model's `tokenizer.json`.
//!
//! The file stores every token (normal tokens in byte-level spelling, added tokens as plain
//! text), the merges as `"a b"` strings, a type per token (1 normal, 3 control, 4 user-defined,
//! 5 unused padding) and the special ids; what it lacks is the pre-tokenizer, which
//! [`super::pre`] rebuilds from `tokenizer.ggml.pre`.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::AddedToken;

use super::pre::PreTokenizerKind;
use super::{AddSpecial, Parts, TokenizerError};

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`: special tokens such as `<|im_start|>`.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// llama.cpp's `LLAMA_TOKEN_TYPE_USER_DEFINED`: added but not special, such as `<tool_call>`.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn field_err(field: &str, message: impl Into<String>) -> TokenizerError {
    TokenizerError::GgufField {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn get<'a>(content: &'a Content, field: &str) -> Option<&'a Value> {
    content.metadata.get(field)
}

fn require<'a>(content: &'a Content, field: &str) -> Result<&'a Value, TokenizerError> {
    get(content, field).ok_or_else(|| {
        field_err(
            field,
            "missing; the GGUF carries no tokenizer (re-convert it with llama.cpp's convert_hf_to_gguf.py, or load the model's tokenizer.json)",
        )
    })
}

fn as_str<'a>(value: &'a Value, field: &str) -> Result<&'a str, TokenizerError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(field_err(
            field,
            format!("expected a string, found {:?}", other.value_type()),
        )),
    }
}

fn as_int(value: &Value, field: &str) -> Result<i64, TokenizerError> {
    Ok(match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::I64(v) => v,
        Value::U64(v) => {
            i64::try_from(v).map_err(|_| field_err(field, format!("{v} is out of range")))?
        }
        ref other => {
            return Err(field_err(
                field,
                format!("expected an integer, found {:?}", other.value_type()),
            ))
        }
    })
}

fn as_array<'a>(value: &'a Value, field: &str) -> Result<&'a [Value], TokenizerError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(field_err(
            field,
            format!("expected an array, found {:?}", other.value_type()),
        )),
    }
}

fn optional_bool(content: &Content, field: &str) -> Result<Option<bool>, TokenizerError> {
    match get(content, field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(field_err(
            field,
            format!("expected a bool, found {:?}", other.value_type()),
        )),
    }
}

/// A token id field, checked against the vocabulary.
fn optional_id(
    content: &Content,
    field: &str,
    n_tokens: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(value) = get(content, field) else {
        return Ok(None);
    };
    let id = as_int(value, field)?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
        _ => Err(field_err(
            field,
            format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
        )),
    }
}

/// Reads the GGUF's tokenizer into [`Parts`].
pub(crate) fn parts(content: &Content) -> Result<Parts, TokenizerError> {
    let model_field = "tokenizer.ggml.model";
    let model = as_str(require(content, model_field)?, model_field)?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedGgufModel {
            model: model.to_owned(),
        });
    }
    let pre_field = "tokenizer.ggml.pre";
    let pre = get(content, pre_field)
        .map(|v| as_str(v, pre_field))
        .transpose()?;
    let kind = PreTokenizerKind::from_gguf_pre(pre)?;

    let tokens_field = "tokenizer.ggml.tokens";
    let tokens = as_array(require(content, tokens_field)?, tokens_field)?
        .iter()
        .map(|v| as_str(v, tokens_field))
        .collect::<Result<Vec<_>, _>>()?;
    let types_field = "tokenizer.ggml.token_type";
    let types = match get(content, types_field) {
        None => vec![1; tokens.len()],
        Some(v) => as_array(v, types_field)?
            .iter()
            .map(|v| as_int(v, types_field))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if types.len() != tokens.len() {
        return Err(field_err(
            types_field,
            format!(
                "has {} entries but tokenizer.ggml.tokens has {}",
                types.len(),
                tokens.len()
            ),
        ));
    }
    let merges_field = "tokenizer.ggml.merges";
    let merges = as_array(require(content, merges_field)?, merges_field)?
        .iter()
        .map(|v| {
            let merge = as_str(v, merges_field)?;
            // Byte-level symbols never contain a space (it is spelled "Ġ"), so the first space
            // separates the pair.
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| {
                    field_err(
                        merges_field,
                        format!("entry {merge:?} is not two symbols separated by a space"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, t)| u32::try_from(id).ok().map(|id| ((*t).to_owned(), id)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(kind.ignore_merges())
        .build()
        .map_err(|e| TokenizerError::Build {
            what: "the BPE model from tokenizer.ggml.tokens and tokenizer.ggml.merges".to_owned(),
            message: e.to_string(),
        })?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_normalizer(kind.normalizer())
        .map_err(|e| TokenizerError::Build {
            what: "the normalizer".to_owned(),
            message: e.to_string(),
        })?;
    inner.with_pre_tokenizer(Some(kind.pre_tokenizer()?));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));

    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL)
        .map(|(t, _)| AddedToken::from(*t, true))
        .collect();
    let user_defined: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, _)| AddedToken::from(*t, false).normalized(false))
        .collect();
    let add_err = |e: tokenizers::Error| TokenizerError::Build {
        what: "the added tokens from tokenizer.ggml.token_type".to_owned(),
        message: e.to_string(),
    };
    inner.add_special_tokens(control).map_err(add_err)?;
    inner.add_tokens(user_defined).map_err(add_err)?;

    let n = tokens.len();
    let token_at = |id: Option<u32>| {
        id.and_then(|id| tokens.get(id as usize))
            .map(|t| (*t).to_owned())
    };
    let bos = optional_id(content, "tokenizer.ggml.bos_token_id", n)?;
    let eos = optional_id(content, "tokenizer.ggml.eos_token_id", n)?;
    let mut extra_eos_ids = Vec::new();
    for field in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        extra_eos_ids.extend(optional_id(content, field, n)?);
    }
    let add_bos =
        optional_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(kind.default_add_bos());
    let add_eos = optional_bool(content, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let template_field = "tokenizer.chat_template";
    let chat_template = get(content, template_field)
        .map(|v| as_str(v, template_field).map(str::to_owned))
        .transpose()?;

    Ok(Parts {
        inner,
        add_special: AddSpecial::Explicit {
            bos: add_bos,
            eos: add_eos,
        },
        bos_token: token_at(bos),
        eos_token: token_at(eos),
        extra_eos_ids,
        chat_template,
        byte_level: true,
    })
}
