//! The training path: per-token log-probs of given completions, differentiable with respect to a
//! LoRA adapter, and the check that every trainable tensor received a gradient.
//!
//! Sequences are right-padded into one batch: attention is causal, so padding after a sequence
//! is never seen by its real tokens and needs no mask, and every row keeps positions `0..len`,
//! exactly as in sampling. Only the hidden states that predict completion tokens go through the
//! output projection, in vocabulary-sized chunks ([`crate::ops::token_logprobs`]).

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::lora::LoraAdapter;
use crate::model::CausalLm;
use crate::ops;
use crate::ModelError;

/// A prompt and the completion whose tokens are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSequence {
    /// Conditioning tokens (at least one).
    pub prompt: Vec<u32>,
    /// Scored tokens.
    pub completion: Vec<u32>,
}

/// Log-probs of every completion token of a batch, packed.
#[derive(Debug, Clone)]
pub struct SequenceLogprobs {
    /// `(total completion tokens)`, f32 (f64 for an f64 model): sequence `i`'s tokens are
    /// `spans[i]`.
    pub logprobs: Tensor,
    /// Where each sequence's tokens lie in `logprobs`.
    pub spans: Vec<Range<usize>>,
}

/// `log p(completion[j] | prompt, completion[..j])` for every sequence and token, under the base
/// model plus `adapter`. The result is in the adapter's graph: call `backward()` on a loss built
/// from it.
pub fn completion_logprobs(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    sequences: &[TokenSequence],
) -> Result<SequenceLogprobs, ModelError> {
    let device = model.device();
    let mut spans = Vec::with_capacity(sequences.len());
    let mut total = 0;
    for (idx, seq) in sequences.iter().enumerate() {
        if seq.prompt.is_empty() {
            return Err(ModelError::Format(format!(
                "sequence {idx}: the prompt is empty; a completion needs at least one token to condition on"
            )));
        }
        spans.push(total..total + seq.completion.len());
        total += seq.completion.len();
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = sequences
        .iter()
        .flat_map(|s| s.prompt.iter().chain(&s.completion))
        .find(|&&id| id >= vocab)
    {
        return Err(ModelError::Format(format!(
            "token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    if total == 0 {
        return Ok(SequenceLogprobs {
            logprobs: Tensor::zeros(0, candle_core::DType::F32, device)?,
            spans,
        });
    }
    // The last token of a sequence predicts nothing that is scored: it is not fed.
    let width = sequences
        .iter()
        .map(|s| s.prompt.len() + s.completion.len() - 1)
        .max()
        .unwrap_or(1);
    let b = sequences.len();
    let mut ids = vec![0u32; b * width];
    let mut rows = Vec::with_capacity(total);
    let mut targets = Vec::with_capacity(total);
    for (row, seq) in sequences.iter().enumerate() {
        let fed = seq
            .prompt
            .iter()
            .chain(&seq.completion)
            .take(seq.prompt.len() + seq.completion.len() - 1);
        for (col, &id) in fed.enumerate() {
            ids[row * width + col] = id;
        }
        for (j, &target) in seq.completion.iter().enumerate() {
            rows.push((row * width + seq.prompt.len() - 1 + j) as u32);
            targets.push(target);
        }
    }
    let ids = Tensor::from_vec(ids, (b, width), device)?;
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..width as u32).collect();
    let positions = Tensor::from_vec(positions, (b, width), device)?;
    let hidden = model.trainable_hidden(&ids, &positions, None, adapter)?;
    let d = hidden.dim(2)?;
    let rows = Tensor::from_vec(rows, total, device)?;
    let picked = hidden.reshape((b * width, d))?.index_select(&rows, 0)?;
    let targets = Tensor::from_vec(targets, total, device)?;
    let logprobs = ops::token_logprobs(&picked, model.lm_head(), &targets)?;
    Ok(SequenceLogprobs { logprobs, spans })
}

/// Fails unless every tensor of `adapter` has a gradient in `grads`: a missing gradient means
/// the graph was cut somewhere (a fused op without backward, a detached tensor), and training
/// would silently not move those weights.
pub fn check_all_gradients(adapter: &LoraAdapter, grads: &GradStore) -> Result<(), ModelError> {
    let missing: Vec<String> = adapter
        .named_vars()
        .into_iter()
        .filter(|(_, var)| grads.get(var.as_tensor()).is_none())
        .map(|(name, _)| name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ModelError::MissingGradients {
            count: missing.len(),
            first: missing[0].clone(),
        })
    }
}
