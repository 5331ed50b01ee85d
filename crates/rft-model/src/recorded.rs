//! The hidden states a rollout computed, kept for the training pass that follows it.
//!
//! An on-policy RL step samples completions with the current weights and then trains on exactly
//! those tokens with the same weights, so the training forward (every layer's input for every
//! prompt and completion token) repeats what sampling already computed. [`Sampler::run_recording`]
//! keeps those states (`layers + 1` vectors of `hidden` floats per token: 70 KiB per token for
//! SmolLM2-135M) and [`crate::train::checkpointed_backward_with`] starts from them, skipping one
//! of the three forward-sized passes of a checkpointed training step.
//!
//! The states come from the sampler's batched, KV-cached decode (of the adapter merged into f32
//! weights, or applied unmerged over a bf16 base as the trainer applies it), so they equal the
//! training forward's to f32 rounding; a sampler in another precision than the trainer keeps
//! none. A sequence is looked up by its exact prompt and completion tokens, so states can only
//! ever be used for the tokens they were computed from.
//!
//! [`Sampler::run_recording`]: crate::sample::Sampler::run_recording

use std::collections::HashMap;

use candle_core::Tensor;

use crate::sample::SampleRequest;
use crate::{CausalLm, ModelError};

/// One decode batch's states, as its sampler collected them.
#[derive(Default)]
pub(crate) struct Recorder {
    /// Per layer boundary: each prefill row's real prompt states, `(p, hidden)`.
    prompts: Vec<Vec<Tensor>>,
    prompt_tokens: usize,
    /// Per prefill row: where its prompt starts in the concatenated prompt states.
    prompt_starts: Vec<usize>,
    /// Per layer boundary: each decode step's states, `(active rows, hidden)`.
    steps: Vec<Vec<Tensor>>,
    fed_tokens: usize,
    /// Per sample row: the position of each fed token's state in the concatenated steps.
    fed: Vec<Vec<u32>>,
}

impl Recorder {
    /// The prefill's states: `layers + 1` tensors `(rows, width, hidden)`, row `i` left-padded
    /// with `pads[i]` tokens.
    pub(crate) fn prefill(
        &mut self,
        states: Vec<Tensor>,
        pads: &[usize],
    ) -> Result<(), ModelError> {
        let width = states.first().map_or(Ok(0), |s| s.dim(1))?;
        self.prompts = vec![Vec::with_capacity(pads.len()); states.len()];
        for (row, &pad) in pads.iter().enumerate() {
            self.prompt_starts.push(self.prompt_tokens);
            self.prompt_tokens += width - pad;
            for (boundary, state) in states.iter().enumerate() {
                self.prompts[boundary].push(state.get(row)?.narrow(0, pad, width - pad)?);
            }
        }
        Ok(())
    }

    /// One decode step's states: `layers + 1` tensors `(active.len(), 1, hidden)`, batch row
    /// `i` decoding sample row `active[i]` of `rows` sample rows.
    pub(crate) fn step(
        &mut self,
        states: Vec<Tensor>,
        active: &[usize],
        rows: usize,
    ) -> Result<(), ModelError> {
        if self.fed.len() < rows {
            self.fed.resize(rows, Vec::new());
        }
        if self.steps.is_empty() {
            self.steps = vec![Vec::new(); states.len()];
        }
        for (boundary, state) in states.into_iter().enumerate() {
            self.steps[boundary].push(state.squeeze(1)?);
        }
        for (batch_row, &row) in active.iter().enumerate() {
            self.fed[row].push((self.fed_tokens + batch_row) as u32);
        }
        self.fed_tokens += active.len();
        Ok(())
    }

    /// The finished record: `rows[i]` is sample row `i`'s prompt, its completion and the
    /// prefill row its prompt came from.
    pub(crate) fn finish(
        self,
        rows: Vec<(Vec<u32>, Vec<u32>, usize)>,
    ) -> Result<RecordPart, ModelError> {
        let cat = |pieces: Vec<Vec<Tensor>>| -> candle_core::Result<Vec<Tensor>> {
            pieces.into_iter().map(|p| Tensor::cat(&p, 0)).collect()
        };
        let mut fed = self.fed;
        fed.resize(rows.len(), Vec::new());
        Ok(RecordPart {
            prompts: cat(self.prompts)?,
            fed: if self.steps.is_empty() {
                Vec::new()
            } else {
                cat(self.steps)?
            },
            rows: rows
                .into_iter()
                .zip(fed)
                .map(|((prompt, completion, prefill_row), fed)| RecordedRow {
                    prompt,
                    completion,
                    prompt_start: self.prompt_starts[prefill_row],
                    fed,
                })
                .collect(),
        })
    }
}

/// The record of one decode batch (one shard of a rollout).
pub(crate) struct RecordPart {
    prompts: Vec<Tensor>,
    fed: Vec<Tensor>,
    rows: Vec<RecordedRow>,
}

struct RecordedRow {
    prompt: Vec<u32>,
    completion: Vec<u32>,
    prompt_start: usize,
    fed: Vec<u32>,
}

/// The residual stream a rollout computed at every layer boundary, for every prompt and fed
/// completion token, by sequence.
pub struct RecordedStates {
    /// Per layer boundary (`layers + 1`): every prompt's states, `(prompt tokens, hidden)`.
    prompts: Vec<Tensor>,
    /// Per layer boundary: every fed completion token's state, `(fed tokens + 1, hidden)`; the
    /// last row is zeros, the filler for the padding after a shorter completion.
    fed: Vec<Tensor>,
    /// By (prompt, completion): the prompt's start in `prompts`, each fed token's row in `fed`.
    rows: HashMap<SequenceKey, (usize, Vec<u32>)>,
}

/// A sampled sequence's tokens: prompt, completion.
type SequenceKey = (Vec<u32>, Vec<u32>);

/// Where one sequence's states lie in a [`RecordedStates`].
pub(crate) struct RecordedSequence<'r> {
    pub(crate) prompt_start: usize,
    pub(crate) fed: &'r [u32],
}

impl RecordedStates {
    /// The bytes recording `requests` takes at most on `model`.
    pub fn estimate_bytes(model: &CausalLm, requests: &[SampleRequest]) -> usize {
        let config = model.config();
        let per_token =
            (config.num_layers + 1) * config.hidden_size * model.lm_head().dtype().size_in_bytes();
        let tokens: usize = requests
            .iter()
            .map(|r| r.prompt.len() + r.n * r.params.max_tokens)
            .sum();
        tokens * per_token
    }

    /// The parts' states as one record; `None` when no part decoded past its first token
    /// (then the training forward has nothing to skip).
    pub(crate) fn merge(parts: Vec<RecordPart>) -> Result<Option<RecordedStates>, ModelError> {
        let Some(first) = parts.iter().find(|p| !p.fed.is_empty()) else {
            return Ok(None);
        };
        let zero = first.fed[0].narrow(0, 0, 1)?.zeros_like()?;
        let boundaries = first.fed.len();
        let mut prompts: Vec<Vec<Tensor>> = vec![Vec::new(); boundaries];
        let mut fed: Vec<Vec<Tensor>> = vec![Vec::new(); boundaries];
        let mut rows = HashMap::new();
        let (mut prompt_offset, mut fed_offset) = (0, 0);
        for part in parts {
            for row in part.rows {
                let positions = row.fed.iter().map(|p| p + fed_offset as u32).collect();
                rows.insert(
                    (row.prompt, row.completion),
                    (row.prompt_start + prompt_offset, positions),
                );
            }
            if let Some(p) = part.prompts.first() {
                prompt_offset += p.dim(0)?;
            }
            if let Some(f) = part.fed.first() {
                fed_offset += f.dim(0)?;
            }
            for (boundary, t) in part.prompts.into_iter().enumerate() {
                prompts[boundary].push(t);
            }
            for (boundary, t) in part.fed.into_iter().enumerate() {
                fed[boundary].push(t);
            }
        }
        let prompts = prompts
            .iter()
            .map(|p| Tensor::cat(p, 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fed = fed
            .into_iter()
            .map(|mut f| {
                f.push(zero.clone());
                Tensor::cat(&f, 0)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(RecordedStates { prompts, fed, rows }))
    }

    /// Layer boundaries recorded (layers + 1).
    pub(crate) fn boundaries(&self) -> usize {
        self.fed.len()
    }

    /// The row of zeros in [`RecordedStates::fed_states`].
    pub(crate) fn filler(&self) -> Result<u32, ModelError> {
        Ok(self
            .fed
            .first()
            .map_or(Ok(0), |f| f.dim(0))?
            .saturating_sub(1) as u32)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.prompts
            .iter()
            .chain(&self.fed)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Sequences recorded.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Where the states of `prompt` + `completion` lie, if this exact sequence was sampled.
    pub(crate) fn find(&self, prompt: &[u32], completion: &[u32]) -> Option<RecordedSequence<'_>> {
        // The key owns its vectors; the lookup clones the two token lists once per sequence.
        let (prompt_start, fed) = self.rows.get(&(prompt.to_vec(), completion.to_vec()))?;
        (fed.len() + 1 >= completion.len()).then_some(RecordedSequence {
            prompt_start: *prompt_start,
            fed,
        })
    }

    /// `(p, hidden)` prompt states at `boundary` starting at `start`.
    pub(crate) fn prompt_states(
        &self,
        boundary: usize,
        start: usize,
        len: usize,
    ) -> Result<Tensor, ModelError> {
        Ok(self.prompts[boundary].narrow(0, start, len)?)
    }

    /// The fed-token states at `boundary` for `positions` (the filler row for padding).
    pub(crate) fn fed_states(
        &self,
        boundary: usize,
        positions: &Tensor,
    ) -> Result<Tensor, ModelError> {
        Ok(self.fed[boundary].index_select(positions, 0)?)
    }
}
