//! The training path: per-token log-probs of given completions, differentiable with respect to a
//! LoRA adapter, and the check that every trainable tensor received a gradient.
//!
//! Sequences are right-padded into one batch: attention is causal, so padding after a sequence
//! is never seen by its real tokens and needs no mask, and every row keeps positions `0..len`,
//! exactly as in sampling. Only the hidden states that predict completion tokens go through the
//! output projection, in vocabulary-sized chunks ([`crate::ops::token_logprobs`]).

use std::collections::HashMap;
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};

use crate::lora::LoraAdapter;
use crate::model::{repeat_batch, AdapterUse, CausalLm, KvCache};
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
///
/// Consecutive sequences with the same prompt (the `n` samples of one prompt, as the RFT loop
/// produces them) share one forward pass over the prompt: its keys and values are computed once
/// and repeated over the group, and backward sums the group's gradients into them. For a
/// 60-token prompt with 8 completions of 25 tokens this is 2.5× less work than encoding each
/// sequence whole, with the same result.
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
    let mut picked = Vec::new();
    let mut targets = Vec::with_capacity(total);
    let mut start = 0;
    while start < sequences.len() {
        let prompt = &sequences[start].prompt;
        let end = start
            + sequences[start..]
                .iter()
                .take_while(|s| &s.prompt == prompt)
                .count();
        let group = &sequences[start..end];
        if group.iter().all(|s| s.completion.is_empty()) {
            start = end;
            continue;
        }
        picked.push(if group.len() == 1 {
            whole_sequences(model, adapter, group)?
        } else {
            shared_prompt(model, adapter, group)?
        });
        targets.extend(group.iter().flat_map(|s| s.completion.iter().copied()));
        start = end;
    }
    let picked = Tensor::cat(&picked, 0)?;
    let targets = Tensor::from_vec(targets, total, device)?;
    let logprobs = ops::token_logprobs(&picked, model.lm_head(), &targets)?;
    Ok(SequenceLogprobs { logprobs, spans })
}

/// The hidden states that predict each completion token `(tokens, d)`, each sequence encoded
/// whole (right-padded together).
fn whole_sequences(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    sequences: &[TokenSequence],
) -> Result<Tensor, ModelError> {
    let device = model.device();
    // The last token of a sequence predicts nothing that is scored: it is not fed.
    let width = sequences
        .iter()
        .map(|s| s.prompt.len() + s.completion.len() - 1)
        .max()
        .unwrap_or(1)
        .max(1);
    let b = sequences.len();
    let mut ids = vec![0u32; b * width];
    let mut rows = Vec::new();
    for (row, seq) in sequences.iter().enumerate() {
        let fed = seq
            .prompt
            .iter()
            .chain(&seq.completion)
            .take(seq.prompt.len() + seq.completion.len() - 1);
        for (col, &id) in fed.enumerate() {
            ids[row * width + col] = id;
        }
        for j in 0..seq.completion.len() {
            rows.push((row * width + seq.prompt.len() - 1 + j) as u32);
        }
    }
    let ids = Tensor::from_vec(ids, (b, width), device)?;
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..width as u32).collect();
    let positions = Tensor::from_vec(positions, (b, width), device)?;
    let hidden = model.trainable_hidden(&ids, &positions, None, None, adapter)?;
    let d = hidden.dim(2)?;
    let n = rows.len();
    Ok(hidden
        .reshape((b * width, d))?
        .index_select(&Tensor::from_vec(rows, n, device)?, 0)?)
}

/// Like [`whole_sequences`] for sequences that share one prompt: the prompt is encoded once.
fn shared_prompt(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    group: &[TokenSequence],
) -> Result<Tensor, ModelError> {
    let device = model.device();
    let prompt = &group[0].prompt;
    let p = prompt.len();
    let mut cache = KvCache::new();
    let prompt_hidden = model.trainable_hidden(
        &Tensor::from_vec(prompt.clone(), (1, p), device)?,
        &Tensor::from_vec((0..p as u32).collect::<Vec<_>>(), (1, p), device)?,
        None,
        Some(&mut cache),
        adapter,
    )?;
    let d = prompt_hidden.dim(2)?;
    // Predicts every completion's first token.
    let last = prompt_hidden.narrow(1, p - 1, 1)?.reshape((1, d))?;
    let k = group.len();
    let width = group
        .iter()
        .map(|s| s.completion.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let mut rows = Vec::new();
    for (row, seq) in group.iter().enumerate() {
        for j in 0..seq.completion.len() {
            // Row 0 of the stacked states is the prompt's last; completion token j ≥ 1 is
            // predicted by the state at column j − 1 of its row.
            rows.push(if j == 0 {
                0
            } else {
                (1 + row * width + j - 1) as u32
            });
        }
    }
    let states = if width == 0 {
        last
    } else {
        let mut ids = vec![0u32; k * width];
        for (row, seq) in group.iter().enumerate() {
            for (col, &id) in seq.completion.iter().take(width).enumerate() {
                if col + 1 < seq.completion.len() {
                    ids[row * width + col] = id;
                }
            }
        }
        let positions: Vec<u32> = (0..k)
            .flat_map(|_| (p as u32)..(p + width) as u32)
            .collect();
        let mut cache = cache.repeat_rows(k)?;
        let completion_hidden = model.trainable_hidden(
            &Tensor::from_vec(ids, (k, width), device)?,
            &Tensor::from_vec(positions, (k, width), device)?,
            None,
            Some(&mut cache),
            adapter,
        )?;
        Tensor::cat(&[&last, &completion_hidden.reshape((k * width, d))?], 0)?
    };
    let n = rows.len();
    Ok(states.index_select(&Tensor::from_vec(rows, n, device)?, 0)?)
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

/// What [`checkpointed_backward`] computed.
#[derive(Debug)]
pub struct CheckpointedOutput {
    /// The log-probs of every completion token, packed (values, not a graph).
    pub logprobs: Vec<f32>,
    /// Where each sequence's tokens lie in `logprobs`.
    pub spans: Vec<Range<usize>>,
    /// The loss `loss_fn` returned.
    pub loss: f64,
    /// The gradient of the loss for every adapter tensor, by `Var` id.
    pub grads: HashMap<TensorId, Tensor>,
}

/// One prompt with the completions sampled from it: the unit the training forward shares.
struct Group {
    prompt: Vec<u32>,
    /// Completion tokens fed (each completion but its last token), right-padded: `(k, width)`.
    fed: Vec<u32>,
    k: usize,
    width: usize,
    /// Rows of `[prompt's last state; fed states]` that predict each completion token.
    rows: Vec<u32>,
}

/// Per-pass constants of a group: rotary tables and masks.
struct Pass {
    ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

/// The gradient of `loss_fn(completion log-probs)` with respect to the adapter, with per-layer
/// activation checkpointing: the forward runs once without a graph, keeping only each layer's
/// input; backward then walks the layers from the top, re-running one layer at a time with its
/// input as a variable and pulling the incoming gradient through it. Peak memory is one layer's
/// graph plus one hidden state per layer and token, instead of every activation of every layer;
/// the price is one more forward pass. Prompts are shared per group as in
/// [`completion_logprobs`]. The gradients equal those of `completion_logprobs` + `backward`.
pub fn checkpointed_backward(
    model: &CausalLm,
    adapter: &LoraAdapter,
    sequences: &[TokenSequence],
    loss_fn: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<CheckpointedOutput, ModelError> {
    let device = model.device().clone();
    let mut spans = Vec::with_capacity(sequences.len());
    let mut total = 0;
    let vocab = model.config().vocab_size as u32;
    for (idx, seq) in sequences.iter().enumerate() {
        if seq.prompt.is_empty() {
            return Err(ModelError::Format(format!(
                "sequence {idx}: the prompt is empty; a completion needs at least one token to condition on"
            )));
        }
        if let Some(bad) = seq
            .prompt
            .iter()
            .chain(&seq.completion)
            .find(|&&id| id >= vocab)
        {
            return Err(ModelError::Format(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        spans.push(total..total + seq.completion.len());
        total += seq.completion.len();
    }
    // Group consecutive sequences that share a prompt.
    let mut groups = Vec::new();
    let mut targets = Vec::with_capacity(total);
    let mut start = 0;
    while start < sequences.len() {
        let prompt = &sequences[start].prompt;
        let end = start
            + sequences[start..]
                .iter()
                .take_while(|s| &s.prompt == prompt)
                .count();
        let members = &sequences[start..end];
        start = end;
        if members.iter().all(|s| s.completion.is_empty()) {
            continue;
        }
        let k = members.len();
        let width = members
            .iter()
            .map(|s| s.completion.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut fed = vec![0u32; k * width];
        let mut rows = Vec::new();
        for (row, seq) in members.iter().enumerate() {
            for (j, &id) in seq.completion.iter().enumerate() {
                if j + 1 < seq.completion.len() {
                    fed[row * width + j] = id;
                }
                rows.push(if j == 0 {
                    0
                } else {
                    (1 + row * width + j - 1) as u32
                });
                targets.push(id);
            }
        }
        groups.push(Group {
            prompt: prompt.clone(),
            fed,
            k,
            width,
            rows,
        });
    }
    if total == 0 {
        let loss = loss_fn(&Tensor::zeros(0, DType::F32, &device)?)?;
        return Ok(CheckpointedOutput {
            logprobs: Vec::new(),
            spans,
            loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            grads: HashMap::new(),
        });
    }
    let passes = groups
        .iter()
        .map(|g| -> Result<(Pass, Option<Pass>), ModelError> {
            let p = g.prompt.len();
            let pass = |ids: Tensor, positions: Vec<u32>, b: usize, t: usize, seen: usize| {
                let positions = Tensor::from_vec(positions, (b, t), &device)?;
                let (cos, sin) = model.rotary(&positions)?;
                let mask = model.attention_mask(b, t, seen, None)?;
                Ok::<Pass, ModelError>(Pass {
                    ids,
                    cos,
                    sin,
                    mask,
                })
            };
            let prompt = pass(
                Tensor::from_vec(g.prompt.clone(), (1, p), &device)?,
                (0..p as u32).collect(),
                1,
                p,
                0,
            )?;
            let fed = if g.width == 0 {
                None
            } else {
                Some(pass(
                    Tensor::from_vec(g.fed.clone(), (g.k, g.width), &device)?,
                    (0..g.k)
                        .flat_map(|_| (p as u32)..(p + g.width) as u32)
                        .collect(),
                    g.k,
                    g.width,
                    p,
                )?)
            };
            Ok((prompt, fed))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // One layer over every group: the prompt pass, then the completions attending to it.
    let run_layer = |idx: usize,
                     inputs: &[(Tensor, Option<Tensor>)],
                     use_: AdapterUse<'_>|
     -> Result<Vec<(Tensor, Option<Tensor>)>, ModelError> {
        groups
            .iter()
            .zip(&passes)
            .zip(inputs)
            .map(|((g, (prompt, fed)), (x_prompt, x_fed))| {
                let mut slot = None;
                let y_prompt = model.layer_forward(
                    idx,
                    x_prompt,
                    &prompt.cos,
                    &prompt.sin,
                    prompt.mask.as_ref(),
                    Some(&mut slot),
                    use_,
                )?;
                let y_fed = match (fed, x_fed, slot) {
                    (Some(fed), Some(x_fed), Some((k_cache, v_cache))) => {
                        let mut slot =
                            Some((repeat_batch(&k_cache, g.k)?, repeat_batch(&v_cache, g.k)?));
                        Some(model.layer_forward(
                            idx,
                            x_fed,
                            &fed.cos,
                            &fed.sin,
                            fed.mask.as_ref(),
                            Some(&mut slot),
                            use_,
                        )?)
                    }
                    _ => None,
                };
                Ok((y_prompt, y_fed))
            })
            .collect()
    };

    // Forward without a graph, keeping every layer's input.
    let mut layer_inputs: Vec<Vec<(Tensor, Option<Tensor>)>> =
        Vec::with_capacity(model.num_layers());
    let mut current: Vec<(Tensor, Option<Tensor>)> = passes
        .iter()
        .map(|(prompt, fed)| {
            Ok((
                model.embed(&prompt.ids)?,
                fed.as_ref().map(|f| model.embed(&f.ids)).transpose()?,
            ))
        })
        .collect::<Result<_, ModelError>>()?;
    for idx in 0..model.num_layers() {
        let next = run_layer(idx, &current, AdapterUse::Frozen(adapter))?;
        layer_inputs.push(std::mem::replace(&mut current, next));
    }

    // The top: final norm, log-probs, the caller's loss; gradients to the last hidden states.
    let tops: Vec<(Var, Option<Var>)> = current
        .iter()
        .map(|(p, f)| {
            Ok((
                Var::from_tensor(p)?,
                f.as_ref().map(Var::from_tensor).transpose()?,
            ))
        })
        .collect::<Result<_, candle_core::Error>>()?;
    let mut picked = Vec::with_capacity(groups.len());
    for (g, (p, f)) in groups.iter().zip(&tops) {
        let d = p.as_tensor().dim(2)?;
        let plen = g.prompt.len();
        let last = model
            .final_norm(&p.as_tensor().narrow(1, plen - 1, 1)?)?
            .reshape((1, d))?;
        let states = match f {
            Some(f) => Tensor::cat(
                &[
                    &last,
                    &model
                        .final_norm(f.as_tensor())?
                        .reshape((g.k * g.width, d))?,
                ],
                0,
            )?,
            None => last,
        };
        let n = g.rows.len();
        picked.push(states.index_select(&Tensor::from_vec(g.rows.clone(), n, &device)?, 0)?);
    }
    let picked = Tensor::cat(&picked, 0)?;
    let targets = Tensor::from_vec(targets, total, &device)?;
    let logprobs = ops::token_logprobs(&picked, model.lm_head(), &targets)?;
    let loss = loss_fn(&logprobs)?;
    let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let logprob_values: Vec<f32> = logprobs.to_dtype(DType::F32)?.to_vec1()?;
    let top_grads = loss.backward()?;
    let grad_of = |var: &Var| -> candle_core::Result<Tensor> {
        match top_grads.get(var.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => var.as_tensor().zeros_like(),
        }
    };
    let mut incoming: Vec<(Tensor, Option<Tensor>)> = tops
        .iter()
        .map(|(p, f)| Ok((grad_of(p)?, f.as_ref().map(grad_of).transpose()?)))
        .collect::<Result<_, candle_core::Error>>()?;
    drop(top_grads);

    // Down the layers: recompute each with a graph and pull the gradient through it.
    let mut grads = HashMap::new();
    for idx in (0..model.num_layers()).rev() {
        let inputs = &layer_inputs[idx];
        let vars: Vec<(Var, Option<Var>)> = inputs
            .iter()
            .map(|(p, f)| {
                Ok((
                    Var::from_tensor(p)?,
                    f.as_ref().map(Var::from_tensor).transpose()?,
                ))
            })
            .collect::<Result<_, candle_core::Error>>()?;
        let tracked: Vec<(Tensor, Option<Tensor>)> = vars
            .iter()
            .map(|(p, f)| {
                (
                    p.as_tensor().clone(),
                    f.as_ref().map(|f| f.as_tensor().clone()),
                )
            })
            .collect();
        let outputs = run_layer(idx, &tracked, AdapterUse::Trainable(adapter))?;
        let mut surrogate = Tensor::zeros((), outputs[0].0.dtype(), &device)?;
        for ((y_p, y_f), (g_p, g_f)) in outputs.iter().zip(&incoming) {
            surrogate = (surrogate + (y_p * g_p)?.sum_all()?)?;
            if let (Some(y_f), Some(g_f)) = (y_f, g_f) {
                surrogate = (surrogate + (y_f * g_f)?.sum_all()?)?;
            }
        }
        let layer_grads = surrogate.backward()?;
        for (name, var) in adapter.named_vars() {
            if !name.contains(&format!(".layers.{idx}.")) {
                continue;
            }
            if let Some(g) = layer_grads.get(var.as_tensor()) {
                grads.insert(var.as_tensor().id(), g.clone());
            }
        }
        if idx > 0 {
            incoming = vars
                .iter()
                .map(|(p, f)| {
                    let g = |v: &Var| match layer_grads.get(v.as_tensor()) {
                        Some(g) => Ok(g.clone()),
                        None => v.as_tensor().zeros_like(),
                    };
                    Ok((g(p)?, f.as_ref().map(g).transpose()?))
                })
                .collect::<Result<_, candle_core::Error>>()?;
        }
    }
    let missing: Vec<String> = adapter
        .named_vars()
        .into_iter()
        .filter(|(_, var)| !grads.contains_key(&var.as_tensor().id()))
        .map(|(name, _)| name)
        .collect();
    if let Some(first) = missing.first() {
        return Err(ModelError::MissingGradients {
            count: missing.len(),
            first: first.clone(),
        });
    }
    Ok(CheckpointedOutput {
        logprobs: logprob_values,
        spans,
        loss: loss_value,
        grads,
    })
}
