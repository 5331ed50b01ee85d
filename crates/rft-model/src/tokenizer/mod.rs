//! Text to token ids and back, and chat templates, for the models OpenRFT samples from.
//!
//! A [`Tokenizer`] wraps Hugging Face's `tokenizers` crate and is loaded either from a model
//! folder's `tokenizer.json` ([`Tokenizer::from_hf_dir`], the reference whenever it exists) or
//! from a GGUF's metadata ([`Tokenizer::from_gguf`], byte-level BPE only, with the family's
//! pre-tokenizer rebuilt from `tokenizer.ggml.pre`). Both give the ids Python `transformers`
//! gives; `tests/tokenizer.rs` checks that against fixtures made by
//! `scripts/tokenizer_reference.py`.
//!
//! A [`ChatTemplate`] renders the model's Jinja chat template (from `tokenizer_config.json` or
//! the GGUF's `tokenizer.chat_template`) the way `apply_chat_template` does.

mod bytes;
mod gguf;
mod hf;
mod pre;
mod stream;
mod template;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;

pub use stream::DecodeStream;
pub use template::ChatTemplate;

/// Why a tokenizer or chat template could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A model folder has no `tokenizer.json`.
    #[error("{path} does not exist\nhint: a Hugging Face model folder needs its tokenizer.json; for a GGUF model use Tokenizer::from_gguf")]
    MissingTokenizerJson {
        /// The missing file.
        path: PathBuf,
    },
    /// A file is not valid JSON or not what `tokenizers` expects.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A GGUF metadata field is missing or malformed.
    #[error("GGUF metadata field {field}: {message}")]
    GgufField {
        /// The field, e.g. `tokenizer.ggml.tokens`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The GGUF's vocabulary is not byte-level BPE.
    #[error("GGUF tokenizer.ggml.model = {model:?} is not supported: only byte-level BPE (\"gpt2\") vocabularies are built from GGUF metadata\nhint: put the model's tokenizer.json and tokenizer_config.json in a folder and load that with Tokenizer::from_hf_dir")]
    UnsupportedGgufModel {
        /// The `tokenizer.ggml.model` value.
        model: String,
    },
    /// The GGUF names a pre-tokenizer this module does not implement.
    #[error("GGUF tokenizer.ggml.pre = {pre:?} is not a pre-tokenizer OpenRFT implements (it knows {known}); guessing would give wrong token ids\nhint: put the model's tokenizer.json and tokenizer_config.json in a folder and load that with Tokenizer::from_hf_dir", known = pre::SUPPORTED_PRE)]
    UnsupportedPreTokenizer {
        /// The `tokenizer.ggml.pre` value.
        pre: String,
    },
    /// The `tokenizers` pipeline could not be assembled.
    #[error("cannot build {what}: {message}")]
    Build {
        /// The part being built.
        what: String,
        /// The underlying error.
        message: String,
    },
    /// Encoding text failed.
    #[error("cannot encode text: {message}")]
    Encode {
        /// The underlying error.
        message: String,
    },
    /// Decoding ids failed.
    #[error("cannot decode token ids: {message}")]
    Decode {
        /// The underlying error.
        message: String,
    },
    /// A chat template does not parse or failed while rendering.
    #[error("chat template: {message}")]
    Template {
        /// minijinja's error, with the template line where it knows it.
        message: String,
    },
    /// A chat template called `raise_exception`: it refuses this conversation (e.g. roles that
    /// do not alternate).
    #[error("the chat template rejected the conversation: {message}")]
    TemplateException {
        /// The template's own message.
        message: String,
    },
}

/// How `encode(.., add_special = true)` adds BOS/EOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddSpecial {
    /// The `tokenizer.json` post-processor decides (Llama-3's prepends BOS).
    PostProcessor,
    /// Fixed flags: GGUF's `tokenizer.ggml.add_{bos,eos}_token`, or `add_bos_token` /
    /// `add_eos_token` in `tokenizer_config.json`, which make transformers replace the
    /// post-processor.
    Explicit {
        /// Prepend BOS.
        bos: bool,
        /// Append EOS.
        eos: bool,
    },
}

/// What a loader found, before the lookups `Tokenizer` precomputes.
pub(crate) struct Parts {
    pub(crate) inner: tokenizers::Tokenizer,
    pub(crate) add_special: AddSpecial,
    pub(crate) bos_token: Option<String>,
    pub(crate) eos_token: Option<String>,
    /// Further ids that end generation (GGUF `eot`/`eom` ids, generation_config.json).
    pub(crate) extra_eos_ids: Vec<u32>,
    pub(crate) chat_template: Option<String>,
    /// Whether vocabulary entries are spelled in GPT-2's byte alphabet.
    pub(crate) byte_level: bool,
}

/// Special tokens that end a turn or a document in common chat formats: generation stops on
/// them even where the model's config names only one EOS (SmolLM2 names `<|im_end|>`, yet a
/// base model ends documents with `<|endoftext|>`).
const END_TOKENS: [&str; 8] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "<|return|>",
];

/// A tokenizer for one model: encoding, decoding, special ids, token bytes, chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    add_special: AddSpecial,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
    /// Indexed by id; empty for ids the vocabulary skips.
    token_bytes: Vec<Vec<u8>>,
    /// Indexed by id.
    special: Vec<bool>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .field("add_special", &self.add_special)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF describes (`tokenizer.ggml.*` metadata): a byte-level BPE
    /// (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizer its `tokenizer.ggml.pre` names
    /// (`smollm`, `llama-bpe`/`llama3`, `qwen2`, `gpt-2`/`default`), control tokens
    /// (`token_type` 3) as special tokens and user-defined ones (4) as added tokens.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Tokenizer, TokenizerError> {
        Ok(Self::from_parts(gguf::parts(content)?))
    }

    /// Reads a GGUF file's metadata and builds its tokenizer (see [`Tokenizer::from_gguf`]).
    pub fn from_gguf_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let io_err = |source| TokenizerError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| TokenizerError::Parse {
            path: path.to_owned(),
            message: format!("not a readable GGUF file: {e}"),
        })?;
        Self::from_gguf(&content)
    }

    /// Loads a Hugging Face model folder: `tokenizer.json` (required), and when present
    /// `tokenizer_config.json` (chat template, BOS/EOS tokens, `add_bos_token`),
    /// `chat_template.jinja` and `generation_config.json` (further EOS ids).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        Ok(Self::from_parts(hf::parts(dir)?))
    }

    /// Loads whatever `path` is: a model folder, a `tokenizer.json`, or a GGUF file. A GGUF with
    /// a `tokenizer.json` beside it uses that file, since `tokenizer.json` is the reference and
    /// GGUF metadata can only approximate it; the GGUF's chat template fills in when the folder
    /// has none.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        if path.is_dir() {
            return Self::from_hf_dir(path);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        if path.file_name().is_some_and(|n| n == "tokenizer.json") {
            return Self::from_hf_dir(dir);
        }
        if dir.join("tokenizer.json").is_file() {
            let mut tokenizer = Self::from_hf_dir(dir)?;
            if tokenizer.chat_template.is_none() {
                tokenizer.chat_template = Self::from_gguf_file(path)
                    .ok()
                    .and_then(|gguf| gguf.chat_template);
            }
            return Ok(tokenizer);
        }
        Self::from_gguf_file(path)
    }

    fn from_parts(parts: Parts) -> Tokenizer {
        let Parts {
            inner,
            add_special,
            bos_token,
            eos_token,
            extra_eos_ids,
            chat_template,
            byte_level,
        } = parts;
        let resolve =
            |token: Option<String>| token.and_then(|t| inner.token_to_id(&t).map(|id| (t, id)));
        let bos = resolve(bos_token);
        let eos = resolve(eos_token);

        let vocab = inner.get_vocab(true);
        let added = inner.get_added_tokens_decoder();
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut token_bytes = vec![Vec::new(); size];
        let mut special = vec![false; size];
        let alphabet = bytes::ByteLevelAlphabet::new();
        for (token, &id) in &vocab {
            let Some(slot) = token_bytes.get_mut(id as usize) else {
                continue;
            };
            *slot = match added.get(&id) {
                // Added tokens are matched in the raw text, so they stand for their content.
                Some(a) => a.content.as_bytes().to_vec(),
                None if byte_level => alphabet
                    .decode(token)
                    .unwrap_or_else(|| token.as_bytes().to_vec()),
                None => bytes::sentencepiece_token_bytes(token),
            };
        }
        for (&id, a) in &added {
            if let Some(flag) = special.get_mut(id as usize) {
                *flag = a.special;
            }
        }

        // Configured ids first; a name from END_TOKENS counts only as a special token, never as
        // plain text that happens to be in the vocabulary.
        let configured = eos.iter().map(|(_, id)| *id).chain(extra_eos_ids);
        let named = END_TOKENS
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .filter(|&id| special.get(id as usize).copied().unwrap_or(false));
        let mut seen = HashSet::new();
        let eos_ids = configured
            .chain(named)
            .filter(|id| seen.insert(*id))
            .collect();

        Tokenizer {
            inner,
            add_special,
            bos,
            eos,
            eos_ids,
            chat_template,
            token_bytes,
            special,
        }
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) are always
    /// recognised, as in transformers; `add_special` adds the BOS/EOS the model's config asks
    /// for (Llama-3 prepends `<|begin_of_text|>`; SmolLM2 and Qwen2 add nothing).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encode_err = |e: tokenizers::Error| TokenizerError::Encode {
            message: e.to_string(),
        };
        match self.add_special {
            AddSpecial::PostProcessor => Ok(self
                .inner
                .encode_fast(text, add_special)
                .map_err(encode_err)?
                .get_ids()
                .to_vec()),
            AddSpecial::Explicit { bos, eos } => {
                let encoding = self.inner.encode_fast(text, false).map_err(encode_err)?;
                let mut ids = Vec::with_capacity(encoding.len() + 2);
                if add_special && bos {
                    ids.extend(self.bos_token_id());
                }
                ids.extend_from_slice(encoding.get_ids());
                if add_special && eos {
                    ids.extend(self.eos_token_id());
                }
                Ok(ids)
            }
        }
    }

    /// The text for `ids`; `skip_special` drops special tokens (`<|im_end|>`) but keeps
    /// non-special added ones (`<tool_call>`). Incomplete UTF-8 at the end becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode {
                message: e.to_string(),
            })
    }

    /// An incremental decoder for streaming generated ids as text (see [`DecodeStream`]).
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special)
    }

    /// Every id that ends generation: the configured EOS first, then the GGUF's
    /// `eot`/`eom` ids or generation_config.json's `eos_token_id`, then end-of-turn special
    /// tokens the vocabulary has (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The configured EOS id, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|(_, id)| *id)
    }

    /// The configured EOS token text (the chat template's `eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|(t, _)| t.as_str())
    }

    /// The configured BOS id, if any (Qwen2 has none).
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(_, id)| *id)
    }

    /// The configured BOS token text (the chat template's `bos_token`).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(t, _)| t.as_str())
    }

    /// One more than the largest id the tokenizer knows, added tokens included. The model's
    /// embedding may have more rows (padding); ids beyond this decode to nothing.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The id of a token given in vocabulary spelling (`"Ġthe"`, `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special token (dropped by `decode(.., skip_special = true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The bytes token `id` stands for in text: a byte-level token's raw bytes (possibly part of
    /// a UTF-8 character), an added token's content. `None` beyond the vocabulary.
    /// Constrained decoding marks special tokens itself (llguidance prefixes them with 0xFF).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(Vec::as_slice)
    }

    /// [`Tokenizer::token_bytes`] for every id, indexed by id.
    pub fn all_token_bytes(&self) -> &[Vec<u8>] {
        &self.token_bytes
    }

    /// The model's own chat template source, if it has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template with its BOS/EOS tokens, or ChatML when the model has none.
    pub fn chat_template(&self) -> Result<ChatTemplate, TokenizerError> {
        match &self.chat_template {
            Some(source) => ChatTemplate::new(source, self.bos_token(), self.eos_token()),
            None => Ok(ChatTemplate::chatml(self.bos_token(), self.eos_token())),
        }
    }

    /// The wrapped `tokenizers` tokenizer, for what this type does not expose.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
