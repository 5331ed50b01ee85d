//! The training path: per-token log-probs of given completions, differentiable with respect to a
//! LoRA adapter, and the check that every trainable tensor received a gradient.
//!
//! Consecutive sequences with the same prompt (the `n` samples of one prompt, as the RFT loop
//! produces them) form a group that shares one forward pass over the prompt: its keys and values
//! are computed once and repeated over the group's completions, which are right-padded into one
//! batch (attention is causal, so padding after a completion is never seen by its real tokens)
//! and keep positions `prompt_len..`, exactly as in sampling. For a 60-token prompt with 8
//! completions of 25 tokens this is 2.5× less work than encoding each sequence whole. Only the
//! hidden states that predict completion tokens go through the output projection, in
//! vocabulary-sized chunks ([`crate::ops::token_logprobs`]).

use std::collections::HashMap;
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};

use crate::lora::LoraAdapter;
use crate::model::{repeat_batch, AdapterUse, CausalLm, LayerCache, PassInput};
use crate::ops;
use crate::parallel;
use crate::recorded::RecordedStates;
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
/// from it (or use [`checkpointed_backward`], which needs far less memory).
pub fn completion_logprobs(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    sequences: &[TokenSequence],
) -> Result<SequenceLogprobs, ModelError> {
    logprobs_with(
        model,
        adapter.map_or(AdapterUse::None, AdapterUse::Trainable),
        sequences,
    )
}

/// [`completion_logprobs`] with `adapter`'s values only: nothing is recorded for backward.
/// For scoring through an adapter that cannot be merged exactly (a bf16 model:
/// `CausalLm::merges_exactly`).
pub fn frozen_completion_logprobs(
    model: &CausalLm,
    adapter: &LoraAdapter,
    sequences: &[TokenSequence],
) -> Result<SequenceLogprobs, ModelError> {
    logprobs_with(model, AdapterUse::Frozen(adapter), sequences)
}

fn logprobs_with(
    model: &CausalLm,
    use_: AdapterUse<'_>,
    sequences: &[TokenSequence],
) -> Result<SequenceLogprobs, ModelError> {
    let plan = Plan::new(model, sequences)?;
    let mut states = Vec::with_capacity(plan.groups.len());
    for group in &plan.groups {
        let passes = group.passes(model)?;
        let mut x = passes.embed(model)?;
        for idx in 0..model.num_layers() {
            x = group.layer(model, idx, &passes, &x, use_)?;
        }
        states.push(group.predicting_states(model, &x)?);
    }
    Ok(SequenceLogprobs {
        logprobs: plan.logprobs(model, &states)?,
        spans: plan.spans,
    })
}

/// Fails unless every tensor of `adapter` has a gradient in `grads`: a missing gradient means
/// the graph was cut somewhere (a fused op without backward, a detached tensor), and training
/// would silently not move those weights.
pub fn check_all_gradients(adapter: &LoraAdapter, grads: &GradStore) -> Result<(), ModelError> {
    require_all(adapter, |var| grads.get(var.as_tensor()).is_some())
}

fn require_all(adapter: &LoraAdapter, has_grad: impl Fn(&Var) -> bool) -> Result<(), ModelError> {
    let missing: Vec<String> = adapter
        .named_vars()
        .into_iter()
        .filter(|(_, var)| !has_grad(var))
        .map(|(name, _)| name)
        .collect();
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(ModelError::MissingGradients {
            count: missing.len(),
            first: first.clone(),
        }),
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
    /// Sequences whose forward came from recorded rollout states instead of being recomputed.
    pub recorded_sequences: usize,
}

/// The batch as the training forward runs it: sequences grouped by shared prompt.
struct Plan {
    spans: Vec<Range<usize>>,
    targets: Vec<u32>,
    groups: Vec<Group>,
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
    /// Each member's completion (to find its states in a [`RecordedStates`]).
    completions: Vec<Vec<u32>>,
}

impl Group {
    /// `members` (sharing `prompt`) as one batch, their completion tokens appended to `targets`.
    fn new(prompt: &[u32], members: &[TokenSequence], targets: &mut Vec<u32>) -> Group {
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
                // Row 0 is the prompt's last state, which predicts every first token;
                // token j ≥ 1 is predicted by the state at column j − 1 of its row.
                rows.push(if j == 0 {
                    0
                } else {
                    (1 + row * width + j - 1) as u32
                });
                targets.push(id);
            }
        }
        Group {
            prompt: prompt.to_vec(),
            fed,
            k,
            width,
            rows,
            completions: members.iter().map(|s| s.completion.clone()).collect(),
        }
    }
}

/// Splits the completions of one prompt (in order) into consecutive runs, each batched
/// separately, to spend the fewest token passes: a run costs its prompt once plus its size
/// times its longest completion (the others are padded to it). Completions that stop at
/// different lengths (one at the 64-token limit, the rest after a dozen) would otherwise all
/// be padded to the longest: on the first two steps of `rft bench grpo --natural-length`
/// (806 and about 920 completion tokens) training went from 11.06 and 13.98 s to 9.09 and
/// 10.31 s.
fn split_by_width(prompt_len: usize, members: &[TokenSequence]) -> Vec<Range<usize>> {
    let n = members.len();
    // best[i]: (cost, start of the last run) of the first i members.
    let mut best: Vec<(usize, usize)> = vec![(0, 0); n + 1];
    for end in 1..=n {
        let mut widest = 0;
        best[end] = (usize::MAX, 0);
        for begin in (0..end).rev() {
            widest = widest.max(members[begin].completion.len().saturating_sub(1));
            let cost = best[begin].0 + prompt_len + (end - begin) * widest;
            if cost < best[end].0 {
                best[end] = (cost, begin);
            }
        }
    }
    let mut runs = Vec::new();
    let mut end = n;
    while end > 0 {
        let begin = best[end].1;
        runs.push(begin..end);
        end = begin;
    }
    runs.reverse();
    runs
}

/// The two passes of a group (the prompt, then the fed completions attending to it), with
/// their rotary tables and masks.
struct GroupPasses {
    prompt: Pass,
    fed: Option<Pass>,
}

struct Pass {
    ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

impl Pass {
    /// The pass over the states `x`.
    fn input<'a>(&'a self, x: &'a Tensor) -> PassInput<'a> {
        PassInput {
            x,
            cos: &self.cos,
            sin: &self.sin,
            mask: self.mask.as_ref(),
        }
    }
}

/// A group's hidden states: the prompt pass `(1, p, d)` and the fed pass `(k, width, d)`.
type States = (Tensor, Option<Tensor>);

/// Every layer's input per group, and the last layer's output per group.
type LayerStates = (Vec<Vec<States>>, Vec<States>);

impl Plan {
    /// Checks the sequences and groups consecutive ones that share a prompt.
    fn new(model: &CausalLm, sequences: &[TokenSequence]) -> Result<Plan, ModelError> {
        let vocab = model.config().vocab_size as u32;
        let mut spans = Vec::with_capacity(sequences.len());
        let mut total = 0;
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
            for segment in split_by_width(prompt.len(), members) {
                let members = &members[segment];
                if members.iter().all(|s| s.completion.is_empty()) {
                    continue;
                }
                groups.push(Group::new(prompt, members, &mut targets));
            }
        }
        Ok(Plan {
            spans,
            targets,
            groups,
        })
    }

    /// Log-probs of every target from each group's predicting states.
    fn logprobs(&self, model: &CausalLm, states: &[Tensor]) -> Result<Tensor, ModelError> {
        if self.targets.is_empty() {
            return Ok(Tensor::zeros(0, DType::F32, model.device())?);
        }
        let n = self.targets.len();
        let targets = Tensor::from_vec(self.targets.clone(), n, model.device())?;
        Ok(ops::token_logprobs(
            &Tensor::cat(states, 0)?,
            &model.lm_head_frozen(),
            &targets,
        )?)
    }
}

impl Group {
    fn passes(&self, model: &CausalLm) -> Result<GroupPasses, ModelError> {
        let device = model.device();
        let p = self.prompt.len();
        let pass = |ids: Vec<u32>, positions: Vec<u32>, b: usize, t: usize, seen: usize| {
            let positions = Tensor::from_vec(positions, (b, t), device)?;
            let (cos, sin) = model.rotary(&positions)?;
            Ok::<Pass, ModelError>(Pass {
                ids: Tensor::from_vec(ids, (b, t), device)?,
                cos,
                sin,
                mask: model.attention_mask(b, t, seen, None)?,
            })
        };
        let prompt = pass(self.prompt.clone(), (0..p as u32).collect(), 1, p, 0)?;
        let fed = if self.width == 0 {
            None
        } else {
            Some(pass(
                self.fed.clone(),
                (0..self.k)
                    .flat_map(|_| (p as u32)..(p + self.width) as u32)
                    .collect(),
                self.k,
                self.width,
                p,
            )?)
        };
        Ok(GroupPasses { prompt, fed })
    }

    /// One decoder layer over the group: the prompt pass, then the completions attending to
    /// its keys and values repeated `k` times.
    fn layer(
        &self,
        model: &CausalLm,
        idx: usize,
        passes: &GroupPasses,
        (x_prompt, x_fed): &States,
        use_: AdapterUse<'_>,
    ) -> Result<States, ModelError> {
        let prompt = &passes.prompt;
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
        let y_fed = match (&passes.fed, x_fed, slot) {
            (Some(fed), Some(x_fed), Some(prompt_cache)) => {
                let (keys, values) = prompt_cache.filled()?;
                let mut slot = Some(LayerCache::differentiable(
                    repeat_batch(&keys, self.k)?,
                    repeat_batch(&values, self.k)?,
                )?);
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
    }

    /// The gradients of one decoder layer's inputs over the group from those of its outputs
    /// ([`CausalLm::group_layer_backward`]), the adapter's added into `lora_grads`.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        model: &CausalLm,
        idx: usize,
        adapter: &LoraAdapter,
        passes: &GroupPasses,
        (x_prompt, x_fed): (&Tensor, Option<&Tensor>),
        (g_prompt, g_fed): (&Tensor, Option<&Tensor>),
        lora_grads: &mut HashMap<TensorId, Tensor>,
    ) -> Result<States, ModelError> {
        let fed = match (&passes.fed, x_fed) {
            (Some(fed), Some(x)) => Some(fed.input(x)),
            _ => None,
        };
        model.group_layer_backward(
            idx,
            adapter,
            passes.prompt.input(x_prompt),
            fed,
            g_prompt,
            g_fed,
            lora_grads,
        )
    }

    /// The final-normed states that predict each completion token: `(tokens, d)`.
    fn predicting_states(
        &self,
        model: &CausalLm,
        (x_prompt, x_fed): &States,
    ) -> Result<Tensor, ModelError> {
        let d = x_prompt.dim(2)?;
        let p = self.prompt.len();
        let last = model
            .final_norm(&x_prompt.narrow(1, p - 1, 1)?)?
            .reshape((1, d))?;
        let states = match x_fed {
            Some(fed) => Tensor::cat(
                &[
                    &last,
                    &model.final_norm(fed)?.reshape((self.k * self.width, d))?,
                ],
                0,
            )?,
            None => last,
        };
        let n = self.rows.len();
        Ok(states.index_select(&Tensor::from_vec(self.rows.clone(), n, model.device())?, 0)?)
    }
}

impl GroupPasses {
    fn embed(&self, model: &CausalLm) -> Result<States, ModelError> {
        Ok((
            model.embed(&self.prompt.ids)?,
            self.fed.as_ref().map(|f| model.embed(&f.ids)).transpose()?,
        ))
    }
}

/// Where `group`'s states lie in `recording`: its prompt's start and, for every member and
/// fed column, a row of the fed states (the zero filler after a shorter completion). `None`
/// when a member was not recorded there.
fn group_positions(
    group: &Group,
    recording: &RecordedStates,
) -> Result<Option<(usize, Vec<u32>)>, ModelError> {
    let filler = recording.filler()?;
    let mut prompt_start = None;
    let mut positions = Vec::with_capacity(group.k * group.width);
    for completion in &group.completions {
        if completion.is_empty() {
            positions.extend(std::iter::repeat_n(filler, group.width));
            continue;
        }
        let Some(found) = recording.find(&group.prompt, completion) else {
            return Ok(None);
        };
        prompt_start.get_or_insert(found.prompt_start);
        positions.extend((0..group.width).map(|j| {
            if j + 1 < completion.len() {
                found.fed[j]
            } else {
                filler
            }
        }));
    }
    Ok(prompt_start.map(|start| (start, positions)))
}

/// Each state as a fresh variable (the input of a recomputed layer, or the top of the stack).
fn as_vars(states: &[States]) -> candle_core::Result<Vec<(Var, Option<Var>)>> {
    states
        .iter()
        .map(|(p, f)| {
            Ok((
                Var::from_tensor(p)?,
                f.as_ref().map(Var::from_tensor).transpose()?,
            ))
        })
        .collect()
}

/// The gradient of each variable in `grads` (zeros when it had no influence on the loss).
fn grads_of(vars: &[(Var, Option<Var>)], grads: &GradStore) -> candle_core::Result<Vec<States>> {
    let grad = |v: &Var| match grads.get(v.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => v.as_tensor().zeros_like(),
    };
    vars.iter()
        .map(|(p, f)| Ok((grad(p)?, f.as_ref().map(grad).transpose()?)))
        .collect()
}

fn tensors(vars: &[(Var, Option<Var>)]) -> Vec<States> {
    vars.iter()
        .map(|(p, f)| {
            (
                p.as_tensor().clone(),
                f.as_ref().map(|f| f.as_tensor().clone()),
            )
        })
        .collect()
}

/// The gradient of `loss_fn(completion log-probs, each sequence's span in them)` with respect
/// to the adapter, with per-layer
/// activation checkpointing: the forward runs once without a graph, keeping only each layer's
/// input; backward then walks the layers from the top, re-running one layer at a time with its
/// input as a variable and pulling the incoming gradient through it. Peak memory is one layer's
/// graph plus one hidden state per layer and token, instead of every activation of every layer;
/// the price is one more forward pass. The gradients equal those of [`completion_logprobs`] +
/// `backward`.
///
/// On a multi-core CPU the prompt groups are split into shards ([`crate::parallel`]) that run
/// the forward, the log-probs and the walk down the layers side by side; only the caller's loss
/// (which may couple every token of the batch) runs once, over all of them.
pub fn checkpointed_backward(
    model: &CausalLm,
    adapter: &LoraAdapter,
    sequences: &[TokenSequence],
    loss_fn: impl FnOnce(&Tensor, &[Range<usize>]) -> candle_core::Result<Tensor>,
) -> Result<CheckpointedOutput, ModelError> {
    checkpointed_backward_with(model, adapter, sequences, &[], loss_fn)
}

/// [`checkpointed_backward`] that starts from the states rollouts recorded
/// ([`crate::sample::Sampler::run_recording`]) instead of running the forward without a graph,
/// for every shard whose prompt groups were each recorded whole by one of them.
///
/// The caller must only pass states sampled with the weights being trained (`model` plus
/// `adapter` as they are now); sequences are matched by their exact tokens.
pub fn checkpointed_backward_with(
    model: &CausalLm,
    adapter: &LoraAdapter,
    sequences: &[TokenSequence],
    recorded: &[RecordedStates],
    loss_fn: impl FnOnce(&Tensor, &[Range<usize>]) -> candle_core::Result<Tensor>,
) -> Result<CheckpointedOutput, ModelError> {
    let plan = Plan::new(model, sequences)?;
    // Shards are contiguous runs of sequences of about equal work; a prompt group cut between
    // two shards has its prompt run by both (a few percent more work, against a shard that
    // would otherwise wait for its neighbour).
    let costs: Vec<usize> = sequences
        .iter()
        .enumerate()
        .map(|(idx, seq)| {
            let starts_group = idx == 0 || sequences[idx - 1].prompt != seq.prompt;
            seq.completion.len().saturating_sub(1) + if starts_group { seq.prompt.len() } else { 0 }
        })
        .collect();
    let ranges = parallel::balanced_ranges(
        &costs,
        parallel::shard_count(model.device(), sequences.len()),
    );
    let plans = ranges
        .into_iter()
        .map(|range| Plan::new(model, &sequences[range]))
        .collect::<Result<Vec<_>, _>>()?;
    let passes = plans
        .iter()
        .map(|p| p.groups.iter().map(|g| g.passes(model)).collect())
        .collect::<Result<Vec<Vec<_>>, ModelError>>()?;
    let shards: Vec<Shard<'_>> = plans
        .iter()
        .zip(&passes)
        .filter(|(p, _)| !p.groups.is_empty())
        .map(|(p, passes)| Shard {
            groups: &p.groups,
            passes,
            targets: &p.targets,
        })
        .collect();

    // Each shard: the forward without a graph, then its log-probs as a function of its top
    // states.
    let forwards = parallel::run_shards(
        shards
            .iter()
            .map(|shard| {
                Box::new(move || shard.forward(model, adapter, recorded))
                    as parallel::Job<'_, Result<ShardForward, ModelError>>
            })
            .collect(),
    )?
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;

    // The caller's loss over every shard's log-probs; its gradient to each shard's top states.
    let logprobs = if forwards.is_empty() {
        Tensor::zeros(0, DType::F32, model.device())?
    } else {
        Tensor::cat(&forwards.iter().map(|f| &f.logprobs).collect::<Vec<_>>(), 0)?
    };
    let loss = loss_fn(&logprobs, &plan.spans)?;
    let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let logprob_values: Vec<f32> = logprobs.to_dtype(DType::F32)?.to_vec1()?;
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    if forwards.is_empty() {
        return Ok(CheckpointedOutput {
            logprobs: logprob_values,
            spans: plan.spans,
            loss: loss_value,
            grads,
            recorded_sequences: 0,
        });
    }
    let recorded_sequences = forwards.iter().map(|f| f.recorded_sequences).sum();
    let top_grads = loss.backward()?;
    let incoming = forwards
        .iter()
        .map(|f| grads_of(&f.tops, &top_grads))
        .collect::<candle_core::Result<Vec<_>>>()?;
    drop(top_grads);

    // Each shard walks down the layers; the adapter's gradient is the sum over shards.
    let shard_grads = parallel::run_shards(
        shards
            .iter()
            .zip(forwards)
            .zip(incoming)
            .map(|((shard, forward), incoming)| {
                Box::new(move || shard.backward(model, adapter, forward.layer_inputs, incoming))
                    as parallel::Job<'_, Result<HashMap<TensorId, Tensor>, ModelError>>
            })
            .collect(),
    )?;
    for shard in shard_grads {
        for (id, g) in shard? {
            let sum = match grads.remove(&id) {
                Some(acc) => (acc + g)?,
                None => g,
            };
            grads.insert(id, sum);
        }
    }
    require_all(adapter, |var| grads.contains_key(&var.as_tensor().id()))?;
    Ok(CheckpointedOutput {
        logprobs: logprob_values,
        spans: plan.spans,
        loss: loss_value,
        grads,
        recorded_sequences,
    })
}

/// The prompt groups one thread of [`checkpointed_backward`] handles.
struct Shard<'p> {
    groups: &'p [Group],
    passes: &'p [GroupPasses],
    /// The completion tokens these groups predict, in order.
    targets: &'p [u32],
}

/// What a shard's forward leaves for the backward.
struct ShardForward {
    /// Every layer's input, per group.
    layer_inputs: Vec<Vec<States>>,
    /// The last layer's outputs as variables, per group.
    tops: Vec<(Var, Option<Var>)>,
    /// The log-probs of the shard's targets, in the graph of `tops`.
    logprobs: Tensor,
    /// Sequences whose states came from a recording.
    recorded_sequences: usize,
}

impl Shard<'_> {
    fn run_layer(
        &self,
        model: &CausalLm,
        idx: usize,
        inputs: &[States],
        use_: AdapterUse<'_>,
    ) -> Result<Vec<States>, ModelError> {
        self.groups
            .iter()
            .zip(self.passes)
            .zip(inputs)
            .map(|((g, passes), x)| g.layer(model, idx, passes, x, use_))
            .collect()
    }

    /// The forward without a graph (or the recorded states), keeping every layer's input, and
    /// the log-probs on top.
    fn forward(
        &self,
        model: &CausalLm,
        adapter: &LoraAdapter,
        recorded: &[RecordedStates],
    ) -> Result<ShardForward, ModelError> {
        let recorded = if recorded.is_empty() {
            None
        } else {
            self.recorded_inputs(model, recorded)?
        };
        let recorded_sequences = match recorded {
            Some(_) => self.groups.iter().map(|g| g.k).sum(),
            None => 0,
        };
        let (layer_inputs, current) = match recorded {
            Some(inputs) => inputs,
            None => {
                let mut layer_inputs: Vec<Vec<States>> = Vec::with_capacity(model.num_layers());
                let mut current = self
                    .passes
                    .iter()
                    .map(|p| p.embed(model))
                    .collect::<Result<Vec<_>, _>>()?;
                for idx in 0..model.num_layers() {
                    let next = self.run_layer(model, idx, &current, AdapterUse::Frozen(adapter))?;
                    layer_inputs.push(std::mem::replace(&mut current, next));
                }
                (layer_inputs, current)
            }
        };
        let tops = as_vars(&current)?;
        let states = self
            .groups
            .iter()
            .zip(tensors(&tops))
            .map(|(g, x)| g.predicting_states(model, &x))
            .collect::<Result<Vec<_>, _>>()?;
        let n = self.targets.len();
        let targets = Tensor::from_vec(self.targets.to_vec(), n, model.device())?;
        let logprobs =
            ops::token_logprobs(&Tensor::cat(&states, 0)?, &model.lm_head_frozen(), &targets)?;
        Ok(ShardForward {
            layer_inputs,
            tops,
            logprobs,
            recorded_sequences,
        })
    }

    /// Every layer's input and the last layer's output, per group, from recorded states; `None`
    /// when a group of the shard was not recorded whole by one recording.
    fn recorded_inputs(
        &self,
        model: &CausalLm,
        recordings: &[RecordedStates],
    ) -> Result<Option<LayerStates>, ModelError> {
        let boundaries = model.num_layers() + 1;
        let mut lookups = Vec::with_capacity(self.groups.len());
        for group in self.groups {
            let found = recordings
                .iter()
                .filter(|r| r.boundaries() == boundaries)
                .find_map(|r| Some((r, group_positions(group, r).transpose()?)));
            match found {
                Some((recording, positions)) => lookups.push((recording, positions?)),
                None => return Ok(None),
            }
        }
        let hidden = model.config().hidden_size;
        let mut states = (0..boundaries)
            .map(|boundary| {
                self.groups
                    .iter()
                    .zip(&lookups)
                    .map(|(group, (recording, (start, positions)))| {
                        let prompt = recording
                            .prompt_states(boundary, *start, group.prompt.len())?
                            .unsqueeze(0)?;
                        let fed = if group.width == 0 {
                            None
                        } else {
                            let positions = Tensor::from_slice(
                                positions,
                                group.k * group.width,
                                model.device(),
                            )?;
                            Some(recording.fed_states(boundary, &positions)?.reshape((
                                group.k,
                                group.width,
                                hidden,
                            ))?)
                        };
                        Ok((prompt, fed))
                    })
                    .collect::<Result<Vec<States>, ModelError>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let top = states.pop().unwrap_or_default();
        Ok(Some((states, top)))
    }

    /// Down the layers: recompute each with a graph and pull the gradient through it.
    fn backward(
        &self,
        model: &CausalLm,
        adapter: &LoraAdapter,
        layer_inputs: Vec<Vec<States>>,
        mut incoming: Vec<States>,
    ) -> Result<HashMap<TensorId, Tensor>, ModelError> {
        let mut grads = HashMap::new();
        for (idx, inputs) in layer_inputs.into_iter().enumerate().rev() {
            incoming = self
                .groups
                .iter()
                .zip(self.passes)
                .zip(inputs.iter().zip(&incoming))
                .map(
                    |((group, passes), ((x_prompt, x_fed), (g_prompt, g_fed)))| {
                        group.layer_backward(
                            model,
                            idx,
                            adapter,
                            passes,
                            (x_prompt, x_fed.as_ref()),
                            (g_prompt, g_fed.as_ref()),
                            &mut grads,
                        )
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(lengths: &[usize]) -> Vec<TokenSequence> {
        lengths
            .iter()
            .map(|&n| TokenSequence {
                prompt: vec![1; 10],
                completion: vec![2; n],
            })
            .collect()
    }

    #[test]
    fn completions_of_one_length_stay_one_batch() {
        assert_eq!(split_by_width(10, &members(&[8, 8, 8, 8])), vec![0..4]);
        // A long prompt is not worth repeating for a little padding.
        assert_eq!(split_by_width(100, &members(&[9, 3, 9, 3])), vec![0..4]);
    }

    #[test]
    fn long_and_short_completions_are_batched_apart() {
        // One run: 10 + 5 × 40 = 210 passes; split: 10 + 40, 10 + 3 × 2, 10 + 40 = 116.
        assert_eq!(
            split_by_width(10, &members(&[41, 3, 3, 3, 41])),
            vec![0..1, 1..4, 4..5]
        );
        assert_eq!(split_by_width(10, &[]), Vec::<Range<usize>>::new());
    }
}
