//! The four training primitives the RFT loop is written against (and that researchers can drive
//! themselves, as with Tinker): `sample`, `forward_backward`, `optim_step`, and saving/loading
//! state.
//!
//! A [`TrainingClient`] owns one LoRA adapter over a frozen base model and an AdamW state.
//! Gradients accumulate across `forward_backward` calls (micro-batches) until `optim_step`
//! applies and clears them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Tensor, TensorId};
use rft_model::engine::Engine;
use rft_model::host::EngineHost;
use rft_model::lora::LoraAdapter;
use rft_model::recorded::RecordedStates;
use rft_model::sample::{Completion, SampleRequest, Sampler};
use rft_model::train::{checkpointed_backward_with, completion_logprobs, TokenSequence};
use rft_model::{CausalLm, Precision};
use serde::{Deserialize, Serialize};

use crate::loss::{self, LossFn};
use crate::TrainError;

/// One sequence to learn from: the prompt, the completion, and per-completion-token values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Datum {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Completion token ids (the scored tokens).
    pub completion: Vec<u32>,
    /// Log-probs recorded when the completion was sampled (for importance ratios).
    pub sampling_logprobs: Vec<f32>,
    /// Per-token advantages (or weights for `cross_entropy`), already normalised.
    pub advantages: Vec<f32>,
}

/// A KL penalty for `forward_backward`: β, the reference policy's log-probs per datum, and each
/// completion token's weight (the loop's normalisation), packed like the batch.
#[derive(Debug, Clone, Copy)]
pub struct KlPenalty<'a> {
    /// β.
    pub beta: f64,
    /// Reference log-probs, one vector per datum.
    pub reference: &'a [Vec<f32>],
    /// Per-token weights over the whole batch.
    pub weights: &'a [f32],
}

/// What `forward_backward` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForwardBackwardOutput {
    /// The loss summed over the batch.
    pub loss: f64,
    /// Current-policy log-probs of every completion token, per datum.
    pub logprobs: Vec<Vec<f32>>,
    /// Fraction of clipped terms.
    pub clip_fraction: f64,
    /// Mean importance ratio.
    pub ratio_mean: f64,
    /// k3 estimate of KL(policy ‖ reference) per token, when a KL term was asked for.
    pub kl: Option<f64>,
    /// Datums whose forward came from the states their rollout recorded (see
    /// [`TrainingClient::sample`]) instead of being recomputed.
    #[serde(default)]
    pub recorded_sequences: usize,
}

/// AdamW settings for one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamParams {
    /// Learning rate.
    pub learning_rate: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    pub grad_clip_norm: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            learning_rate: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip_norm: 1.0,
        }
    }
}

/// What `optim_step` reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimStepOutput {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Optimizer steps taken so far.
    pub step: u64,
}

/// `{"step": n}`: `optimizer.json` of a saved state (optimizer steps taken), and the loop's
/// `progress.json` beside it (job steps finished).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct StepFile {
    /// The count.
    #[serde(default)]
    pub(crate) step: u64,
}

/// Default of [`TrainingClient::max_recorded_bytes`]: 1 GiB (a 64 × 64-token rollout of
/// SmolLM2-135M takes about 300 MB).
pub const DEFAULT_MAX_RECORDED_BYTES: usize = 1 << 30;

/// The weights a rollout samples from, and whether the adapter is merged into them (else the
/// sampler applies it unmerged).
///
/// In f32 the adapter is fixed for the whole rollout, so it is folded into a copy of the
/// weights once (about 3 GFLOP for rank 16 on SmolLM2-135M): every decode step then runs one
/// matmul per projection instead of one plus the adapter's two small ones and their adds.
/// Merged and unmerged log-probs agree to f32 rounding. The copy is also packed for the decode
/// kernel (`rft_model::packed`), once per rollout.
///
/// Weights sampled in bf16 (a bf16 model, or a `sampler` precision of bf16) keep the adapter
/// unmerged: `W + s·BA` rounded to bf16 loses every update smaller than half a bf16 step of
/// `W`, early in training nearly all of them, so a merged rollout would sample close to the
/// base model. Unmerged, the adapter's path runs in f32 on the bf16 base, as in the trainer.
fn rollout_weights(
    engine: &Engine,
    adapter: &LoraAdapter,
    sampler: Option<Precision>,
) -> Result<(CausalLm, bool), TrainError> {
    let model = &engine.model;
    let sampled_in = sampler.map_or(model.weight_dtype(), |p| p.weight_dtype());
    if sampled_in == DType::F32 {
        let base = if model.weight_dtype() == DType::F32 {
            model.clone()
        } else {
            model.with_precision(Precision::F32)?
        };
        return Ok((base.merged(adapter)?.packed_for_sampling()?, true));
    }
    let base = match sampler {
        Some(precision) => model.for_sampling_in(precision)?,
        None => model.packed_for_sampling()?,
    };
    Ok((base, false))
}

/// Whether a sampler in `sampler` computes other values than the trainer's model: then its
/// hidden states must not stand in for the training forward.
fn samples_another_policy(engine: &Engine, sampler: Option<Precision>) -> bool {
    sampler.is_some_and(|p| p.weight_dtype() != engine.model.weight_dtype())
}

/// A frozen copy of a client's policy at one version ([`TrainingClient::snapshot`]).
#[derive(Debug)]
pub struct PolicySnapshot {
    /// The base model (weights shared with the client).
    pub engine: Engine,
    /// The adapter at `version`.
    pub adapter: LoraAdapter,
    /// The client's version when the snapshot was taken.
    pub version: u64,
    /// The precision rollouts are sampled in (`None`: the model's own).
    pub sampler_precision: Option<Precision>,
}

impl PolicySnapshot {
    /// Samples `requests` from this version (the adapter merged into a copy of the weights,
    /// as [`TrainingClient::sample`] does; no states are recorded).
    pub fn sample(&self, requests: &[SampleRequest]) -> Result<Vec<Vec<Completion>>, TrainError> {
        let (weights, merged) =
            rollout_weights(&self.engine, &self.adapter, self.sampler_precision)?;
        let sampler = Sampler {
            model: &weights,
            adapter: (!merged).then_some(&self.adapter),
            tokenizer: Some(&self.engine.tokenizer),
        };
        Ok(sampler.run(requests)?)
    }

    /// Writes the adapter in PEFT's layout (what a rollout fleet loads).
    pub fn save_for_sampler(&self, dir: &Path) -> Result<(), TrainError> {
        self.adapter.save_peft(dir, &self.engine.base)?;
        Ok(())
    }
}

/// A LoRA policy over a frozen base model, with its optimizer.
pub struct TrainingClient {
    engine: Engine,
    adapter: LoraAdapter,
    grads: HashMap<TensorId, Tensor>,
    moments: HashMap<TensorId, (Tensor, Tensor)>,
    step: u64,
    /// Bumped whenever the adapter changes: recorded rollout states are only valid for the
    /// version they were sampled with.
    version: u64,
    /// The hidden states of the rollouts sampled at `version` (see `rft_model::recorded`), for
    /// the `forward_backward` that follows them.
    recorded: Mutex<(u64, Vec<RecordedStates>)>,
    /// Most tokens one forward/backward pass holds (micro-batch size; a prompt shared by a
    /// group counts once). With per-layer checkpointing memory grows slowly with it.
    pub max_tokens_per_pass: usize,
    /// Most bytes of rollout states `sample` keeps for the next `forward_backward` (0 turns it
    /// off). Kept states spare that pass its forward; a rollout larger than this is not kept.
    pub max_recorded_bytes: usize,
    /// The precision rollouts are sampled in, when not the model's own
    /// ([`Precision::sampler_from_env`], `RFT_SAMPLER_DTYPE`): a bf16 sampler for an f32
    /// trainer on the CPU. Its rollouts keep no states (the trainer recomputes its forward),
    /// and their log-probs are the bf16 policy's, which the loss's ratio starts from.
    pub sampler_precision: Option<Precision>,
    /// The base model with its frozen weights packed for the training pass
    /// (`CausalLm::packed_for_training`), made at the first `forward_backward`: a client that
    /// only samples never pays for the copies.
    training_model: OnceLock<CausalLm>,
    /// Where the packed training copy comes from when the base is the engine host's: one copy
    /// per base for every client, held (the `Arc`) while this client lives.
    host: Option<Arc<EngineHost>>,
    training_lease: OnceLock<Arc<CausalLm>>,
}

impl TrainingClient {
    /// A client training `adapter` over `engine`'s base model.
    pub fn new(engine: Engine, adapter: LoraAdapter) -> TrainingClient {
        TrainingClient {
            engine,
            adapter,
            grads: HashMap::new(),
            moments: HashMap::new(),
            step: 0,
            version: 0,
            recorded: Mutex::new((0, Vec::new())),
            max_tokens_per_pass: 4096,
            max_recorded_bytes: DEFAULT_MAX_RECORDED_BYTES,
            sampler_precision: Precision::sampler_from_env().unwrap_or_else(|e| {
                tracing::warn!("{e}; sampling in the model's precision");
                None
            }),
            training_model: OnceLock::new(),
            host: None,
            training_lease: OnceLock::new(),
        }
    }

    /// A client over a base model lent by `host` (`engine` is `host.base(..)?.share()`): its
    /// packed training copy is the host's too, made once per base for every client.
    pub fn on_host(engine: Engine, adapter: LoraAdapter, host: Arc<EngineHost>) -> TrainingClient {
        TrainingClient {
            host: Some(host),
            ..TrainingClient::new(engine, adapter)
        }
    }

    /// The model the training pass runs ([`TrainingClient::training_model`] field).
    fn training_model(&self) -> Result<&CausalLm, TrainError> {
        if let Some(model) = self.training_model.get() {
            return Ok(model);
        }
        let packed = match &self.host {
            Some(host) => {
                let lease = host.training_model(&self.engine)?;
                let model = (*lease).clone();
                let _ = self.training_lease.set(lease);
                model
            }
            None => self.engine.model.packed_for_training()?,
        };
        Ok(self.training_model.get_or_init(|| packed))
    }

    /// The base model, tokenizer and chat template.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The policy's version: bumped whenever the adapter changes (an optimizer step, a load),
    /// so a rollout engine publishes each version once under its own name.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The policy as it is now, to sample from while this client trains on (asynchronous
    /// off-policy rollouts): the base weights shared, the adapter copied.
    pub fn snapshot(&self) -> Result<PolicySnapshot, TrainError> {
        Ok(PolicySnapshot {
            engine: self.engine.share(),
            adapter: self.adapter.deep_clone()?,
            version: self.version,
            sampler_precision: self.sampler_precision,
        })
    }

    /// The trained adapter.
    pub fn adapter(&self) -> &LoraAdapter {
        &self.adapter
    }

    /// Optimizer steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Samples with the current policy.
    ///
    /// Within [`TrainingClient::max_recorded_bytes`], the hidden states the rollout computed are
    /// kept until the adapter next changes, and `forward_backward` on exactly these samples
    /// starts from them instead of recomputing the forward (an on-policy step trains on what it
    /// just sampled, with the same weights).
    pub fn sample(&self, requests: &[SampleRequest]) -> Result<Vec<Vec<Completion>>, TrainError> {
        let (weights, merged) =
            rollout_weights(&self.engine, &self.adapter, self.sampler_precision)?;
        let sampler = Sampler {
            model: &weights,
            adapter: (!merged).then_some(&self.adapter),
            tokenizer: Some(&self.engine.tokenizer),
        };
        if samples_another_policy(&self.engine, self.sampler_precision) {
            return Ok(sampler.run(requests)?);
        }
        let mut recorded = self
            .recorded
            .lock()
            .map_err(|_| TrainError::Invalid("a sampling thread panicked".into()))?;
        if recorded.0 != self.version {
            *recorded = (self.version, Vec::new());
        }
        let held: usize = recorded.1.iter().map(RecordedStates::bytes).sum();
        let needed = RecordedStates::estimate_bytes(&weights, requests);
        if held + needed > self.max_recorded_bytes {
            return Ok(sampler.run(requests)?);
        }
        let (completions, states) = sampler.run_recording(requests)?;
        recorded.1.extend(states);
        Ok(completions)
    }

    /// Bytes of rollout states held for the next `forward_backward`.
    pub fn recorded_bytes(&self) -> usize {
        self.recorded
            .lock()
            .map(|r| r.1.iter().map(RecordedStates::bytes).sum())
            .unwrap_or(0)
    }

    /// Log-probs of the base model without the adapter (the reference policy), no graph.
    pub fn reference_logprobs(&self, batch: &[Datum]) -> Result<Vec<Vec<f32>>, TrainError> {
        self.score(None, batch)
    }

    /// Log-probs of every completion token under the current policy (the adapter), no
    /// gradient kept.
    pub fn policy_logprobs(&self, batch: &[Datum]) -> Result<Vec<Vec<f32>>, TrainError> {
        self.score(Some(&self.adapter), batch)
    }

    fn score(
        &self,
        adapter: Option<&LoraAdapter>,
        batch: &[Datum],
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        // The adapter is folded into a copy of the weights once (where that is exact): an
        // unmerged adapter's variables would make the forward record a whole autograd graph
        // (every layer's activations for every token of the pass), which nothing here
        // differentiates; a bf16 model scores through the adapter's values instead.
        let model = &self.engine.model;
        let merged = match adapter {
            Some(adapter) if model.merges_exactly() => Some(model.merged(adapter)?),
            _ => None,
        };
        let (model, adapter) = match &merged {
            Some(merged) => (merged, None),
            None => (model, adapter),
        };
        let mut out = Vec::with_capacity(batch.len());
        for chunk in self.micro_batches(batch) {
            out.extend(sequence_logprobs(model, adapter, &to_sequences(chunk))?);
        }
        Ok(out)
    }

    /// `forward_backward` without the backward: the same loss and log-probs under the current
    /// policy, no gradient accumulated (Tinker's `forward`).
    pub fn forward(
        &self,
        batch: &[Datum],
        loss_fn: &LossFn,
    ) -> Result<ForwardBackwardOutput, TrainError> {
        check_lengths(batch)?;
        let logprobs = self.policy_logprobs(batch)?;
        let mut output = ForwardBackwardOutput {
            ratio_mean: 1.0,
            ..ForwardBackwardOutput::default()
        };
        let device = self.engine.model.device().clone();
        let flat = |f: &dyn Fn(usize) -> Vec<f32>| -> Vec<f32> {
            (0..batch.len()).flat_map(f).collect::<Vec<f32>>()
        };
        let lp = flat(&|i| logprobs[i].clone());
        let old = flat(&|i| batch[i].sampling_logprobs.clone());
        let advantages = flat(&|i| batch[i].advantages.clone());
        let n = lp.len();
        let mut spans = Vec::with_capacity(batch.len());
        let mut start = 0;
        for datum in batch {
            spans.push(start..start + datum.completion.len());
            start += datum.completion.len();
        }
        if n > 0 {
            let lp = Tensor::from_vec(lp, n, &device)?;
            let old = Tensor::from_vec(old, n, &device)?;
            let advantages = Tensor::from_vec(advantages, n, &device)?;
            let out = loss::compute(loss_fn, &lp, &old, &advantages, &spans)?;
            output.loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            output.clip_fraction = out.clip_fraction;
            output.ratio_mean = out.ratio_mean;
        }
        output.logprobs = logprobs;
        Ok(output)
    }

    /// Computes the loss and its gradient, adding the gradient to what earlier calls
    /// accumulated. With `kl = Some((β, reference logprobs))`, adds `β·Σ k3` to the loss (k3 =
    /// `exp(ref − lp) − (ref − lp) − 1`), each token weighted by `kl_weights` when given.
    pub fn forward_backward(
        &mut self,
        batch: &[Datum],
        loss_fn: &LossFn,
        kl: Option<KlPenalty<'_>>,
    ) -> Result<ForwardBackwardOutput, TrainError> {
        check_lengths(batch)?;
        let mut output = ForwardBackwardOutput::default();
        let training_model = self.training_model()?.clone();
        let (mut clip_sum, mut ratio_sum, mut kl_sum, mut terms, mut tokens) =
            (0.0, 0.0, 0.0, 0usize, 0usize);
        let mut offset = 0;
        let recorded = self
            .recorded
            .lock()
            .map_err(|_| TrainError::Invalid("a sampling thread panicked".into()))?;
        let current: &[RecordedStates] = if recorded.0 == self.version {
            &recorded.1
        } else {
            &[]
        };
        for chunk in self.micro_batches(batch) {
            let sequences = to_sequences(chunk);
            let n_tokens: usize = chunk.iter().map(|d| d.completion.len()).sum();
            let flat = |f: &dyn Fn(&Datum) -> &[f32]| -> Vec<f32> {
                chunk.iter().flat_map(|d| f(d).iter().copied()).collect()
            };
            let old = flat(&|d| &d.sampling_logprobs);
            let advantages = flat(&|d| &d.advantages);
            let mut stats = (0.0, 1.0, 0.0);
            let kl_inputs = kl.map(|penalty| {
                let reference: Vec<f32> = penalty.reference[offset..offset + chunk.len()]
                    .iter()
                    .flatten()
                    .copied()
                    .collect();
                let weights = penalty.weights[tokens..tokens + n_tokens].to_vec();
                (penalty.beta, reference, weights)
            });
            // The loss is built on the packed log-probs inside the checkpointed backward,
            // which re-runs one layer at a time (see `rft_model::train`).
            let out = checkpointed_backward_with(
                &training_model,
                &self.adapter,
                &sequences,
                current,
                |lp, spans| {
                    let device = lp.device();
                    let dtype = lp.dtype();
                    let n = lp.dim(0)?;
                    let old = Tensor::from_vec(old, n, device)?.to_dtype(dtype)?;
                    let advantages = Tensor::from_vec(advantages, n, device)?.to_dtype(dtype)?;
                    let policy = loss::compute(loss_fn, lp, &old, &advantages, spans)?;
                    stats.0 = policy.clip_fraction;
                    stats.1 = policy.ratio_mean;
                    let mut total = policy.loss;
                    if let Some((beta, reference, weights)) = kl_inputs {
                        let reference = Tensor::from_vec(reference, n, device)?.to_dtype(dtype)?;
                        let weights = Tensor::from_vec(weights, n, device)?.to_dtype(dtype)?;
                        let diff = (reference - lp)?;
                        let k3 = ((diff.exp()? - &diff)? - 1.0)?;
                        stats.2 = k3.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                        total = (total + ((k3 * weights)?.sum_all()? * beta)?)?;
                    }
                    Ok(total)
                },
            )?;
            for (id, g) in out.grads {
                match self.grads.entry(id) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        let sum = (e.get() + &g)?;
                        e.insert(sum);
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(g);
                    }
                }
            }
            output.loss += out.loss;
            output.recorded_sequences += out.recorded_sequences;
            clip_sum += stats.0 * n_tokens as f64;
            ratio_sum += stats.1 * n_tokens as f64;
            kl_sum += stats.2;
            terms += n_tokens;
            output
                .logprobs
                .extend(out.spans.iter().map(|s| out.logprobs[s.clone()].to_vec()));
            offset += chunk.len();
            tokens += n_tokens;
        }
        output.clip_fraction = clip_sum / terms.max(1) as f64;
        output.ratio_mean = if terms == 0 {
            1.0
        } else {
            ratio_sum / terms as f64
        };
        output.kl = kl.map(|_| kl_sum / tokens.max(1) as f64);
        Ok(output)
    }

    /// Applies the accumulated gradients with AdamW and clears them.
    pub fn optim_step(&mut self, params: &AdamParams) -> Result<OptimStepOutput, TrainError> {
        let vars = self.adapter.vars();
        let mut norm_sq = 0.0;
        for var in &vars {
            if let Some(g) = self.grads.get(&var.as_tensor().id()) {
                norm_sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let grad_norm = norm_sq.sqrt();
        if !grad_norm.is_finite() {
            self.grads.clear();
            return Err(TrainError::Invalid(
                "the gradient is not finite (NaN or infinity); the step was skipped".into(),
            ));
        }
        let clip = if params.grad_clip_norm > 0.0 && grad_norm > params.grad_clip_norm {
            params.grad_clip_norm / grad_norm
        } else {
            1.0
        };
        self.step += 1;
        self.adapter_changed();
        let t = self.step as i32;
        let bias1 = 1.0 - params.beta1.powi(t);
        let bias2 = 1.0 - params.beta2.powi(t);
        for var in &vars {
            let id = var.as_tensor().id();
            let Some(g) = self.grads.remove(&id) else {
                continue;
            };
            let g = (g * clip)?;
            let theta = var.as_tensor().detach();
            let (m, v) = match self.moments.remove(&id) {
                Some(mv) => mv,
                None => (theta.zeros_like()?, theta.zeros_like()?),
            };
            let m = ((m * params.beta1)? + (&g * (1.0 - params.beta1))?)?;
            let v = ((v * params.beta2)? + (g.sqr()? * (1.0 - params.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + params.eps)?)?;
            let decayed = (&theta * (1.0 - params.learning_rate * params.weight_decay))?;
            var.set(&(decayed - (update * params.learning_rate)?)?)?;
            self.moments.insert(id, (m, v));
        }
        self.grads.clear();
        Ok(OptimStepOutput {
            grad_norm,
            step: self.step,
        })
    }

    /// An AdamW step with a zero gradient: the moments decay and the parameters move on their
    /// momentum, as PyTorch's AdamW does with zeroed (not absent) gradients. The RFT loop takes
    /// it on a step whose groups all scored flat, so that dropping those groups from the compute
    /// changes nothing in the update (`rft_train::advantage::build_batch`). Gradients
    /// accumulated so far are discarded; parameters that never had a gradient stay put.
    pub fn optim_step_on_momentum(
        &mut self,
        params: &AdamParams,
    ) -> Result<OptimStepOutput, TrainError> {
        self.grads.clear();
        for var in self.adapter.vars() {
            let id = var.as_tensor().id();
            if self.moments.contains_key(&id) {
                self.grads.insert(id, var.as_tensor().zeros_like()?);
            }
        }
        self.optim_step(params)
    }

    /// Writes the adapter (PEFT layout, servable) to `dir`.
    pub fn save_weights_for_sampler(&self, dir: &Path) -> Result<(), TrainError> {
        self.adapter.save_peft(dir, &self.engine.base)?;
        Ok(())
    }

    /// Writes everything needed to resume: the adapter, the AdamW moments and the step.
    pub fn save_state(&self, dir: &Path) -> Result<(), TrainError> {
        self.save_weights_for_sampler(dir)?;
        let mut tensors = HashMap::new();
        for (name, var) in self.adapter.named_vars() {
            if let Some((m, v)) = self.moments.get(&var.as_tensor().id()) {
                tensors.insert(format!("{name}.exp_avg"), m.clone());
                tensors.insert(format!("{name}.exp_avg_sq"), v.clone());
            }
        }
        let target = dir.join("optimizer.safetensors");
        let temp = rft_types::paths::temp_path(&target);
        candle_core::safetensors::save(&tensors, &temp)?;
        rft_types::paths::persist(&temp, &target).map_err(|source| TrainError::Io {
            path: target.clone(),
            source,
        })?;
        crate::write_json_atomic(&dir.join("optimizer.json"), &StepFile { step: self.step })?;
        Ok(())
    }

    /// Restores what [`TrainingClient::save_state`] wrote.
    pub fn load_state(&mut self, dir: &Path) -> Result<(), TrainError> {
        let device = self.engine.model.device().clone();
        self.adapter = LoraAdapter::load_peft(dir, self.engine.model.config(), &device)?;
        self.adapter_changed();
        let path = dir.join("optimizer.safetensors");
        let mut tensors =
            candle_core::safetensors::load(&path, &device).map_err(|e| TrainError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        self.moments.clear();
        for (name, var) in self.adapter.named_vars() {
            let m = tensors.remove(&format!("{name}.exp_avg"));
            let v = tensors.remove(&format!("{name}.exp_avg_sq"));
            if let (Some(m), Some(v)) = (m, v) {
                self.moments.insert(var.as_tensor().id(), (m, v));
            }
        }
        let meta: StepFile = crate::read_json(&dir.join("optimizer.json"))?;
        self.step = meta.step;
        self.grads.clear();
        Ok(())
    }

    /// Restores the adapter [`TrainingClient::save_state`] or
    /// [`TrainingClient::save_weights_for_sampler`] wrote, without its optimizer state: the
    /// AdamW moments and the step count start over (Tinker's `load_state`).
    pub fn load_weights(&mut self, dir: &Path) -> Result<(), TrainError> {
        let device = self.engine.model.device().clone();
        self.adapter = LoraAdapter::load_peft(dir, self.engine.model.config(), &device)?;
        self.adapter_changed();
        self.moments.clear();
        self.grads.clear();
        self.step = 0;
        Ok(())
    }

    /// Recorded rollout states describe the old weights: drop them.
    fn adapter_changed(&mut self) {
        self.version += 1;
        if let Ok(mut recorded) = self.recorded.lock() {
            *recorded = (self.version, Vec::new());
        }
    }

    fn micro_batches<'b>(&self, batch: &'b [Datum]) -> Vec<&'b [Datum]> {
        // Samples of one prompt share its forward pass (`checkpointed_backward`): the prompt
        // counts once per run of equal prompts, and again where a pass starts inside a run.
        let cost = |idx: usize, start: usize| {
            let datum = &batch[idx];
            let shared = idx > start && batch[idx - 1].prompt == datum.prompt;
            datum.completion.len() + if shared { 0 } else { datum.prompt.len() }
        };
        // Fewest passes within the limit, filled greedily...
        let mut greedy = Vec::new();
        let mut start = 0;
        let mut tokens = 0;
        for idx in 0..batch.len() {
            let len = cost(idx, start);
            if idx > start && tokens + len > self.max_tokens_per_pass {
                greedy.push(start..idx);
                start = idx;
                tokens = cost(idx, start);
                continue;
            }
            tokens += len;
        }
        if start < batch.len() {
            greedy.push(start..batch.len());
        }
        // ...then evened out, so the last pass is not a sliver that cannot use every core.
        let costs: Vec<usize> = (0..batch.len()).map(|idx| cost(idx, 0)).collect();
        let even = rft_model::parallel::balanced_ranges(&costs, greedy.len());
        let fits = |r: &std::ops::Range<usize>| {
            r.clone().map(|idx| cost(idx, r.start)).sum::<usize>() <= self.max_tokens_per_pass
        };
        let ranges = if even.len() == greedy.len() && even.iter().all(fits) {
            even
        } else {
            greedy
        };
        ranges.into_iter().map(|r| &batch[r]).collect()
    }
}

/// Log-probs of every completion token of `sequences` under `model` (plus `adapter`, folded
/// into a copy of the weights so that no autograd graph is recorded), one vector per sequence
/// (a sampler's prompt log-probs, a forward-only pass).
pub fn sequence_logprobs(
    model: &rft_model::CausalLm,
    adapter: Option<&LoraAdapter>,
    sequences: &[TokenSequence],
) -> Result<Vec<Vec<f32>>, TrainError> {
    let lp = match adapter {
        // bf16 weights would round a merged adapter's update away: its values unmerged.
        Some(adapter) if !model.merges_exactly() => {
            rft_model::train::frozen_completion_logprobs(model, adapter, sequences)?
        }
        Some(adapter) => completion_logprobs(&model.merged(adapter)?, None, sequences)?,
        None => completion_logprobs(model, None, sequences)?,
    };
    let values: Vec<f32> = lp.logprobs.detach().to_dtype(DType::F32)?.to_vec1()?;
    Ok(lp
        .spans
        .iter()
        .map(|s| values[s.clone()].to_vec())
        .collect())
}

/// Every datum has one sampling log-prob and one advantage per completion token.
fn check_lengths(batch: &[Datum]) -> Result<(), TrainError> {
    for (idx, datum) in batch.iter().enumerate() {
        let n = datum.completion.len();
        if datum.sampling_logprobs.len() != n || datum.advantages.len() != n {
            return Err(TrainError::Invalid(format!(
                "datum {idx}: {n} completion tokens but {} sampling log-probs and {} advantages",
                datum.sampling_logprobs.len(),
                datum.advantages.len()
            )));
        }
        if datum.prompt.is_empty() {
            return Err(TrainError::Invalid(format!(
                "datum {idx}: the prompt needs at least one token"
            )));
        }
    }
    Ok(())
}

fn to_sequences(batch: &[Datum]) -> Vec<TokenSequence> {
    batch
        .iter()
        .map(|d| TokenSequence {
            prompt: d.prompt.clone(),
            completion: d.completion.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! `forward` (no gradient), `load_weights` (no optimizer state) and `sequence_logprobs`
    //! against what `forward_backward` computes.

    use super::*;
    use candle_core::Device;
    use rft_model::lora::LoraConfig;
    use rft_model::Architecture;

    fn client(dir: &Path) -> TrainingClient {
        rft_model::tiny::write_tiny_model(dir, Architecture::Llama, 2).unwrap();
        let engine = Engine::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
        let lora = LoraConfig {
            rank: 2,
            ..LoraConfig::default()
        };
        let adapter = LoraAdapter::new(engine.model.config(), lora, 5, &Device::Cpu).unwrap();
        TrainingClient::new(engine, adapter)
    }

    fn batch() -> Vec<Datum> {
        vec![
            Datum {
                prompt: vec![1, 2],
                completion: vec![3, 4, 5],
                sampling_logprobs: vec![-1.0, -2.0, -1.5],
                advantages: vec![0.5, 0.5, 0.5],
            },
            Datum {
                prompt: vec![1],
                completion: vec![6, 7],
                sampling_logprobs: vec![-0.5, -3.0],
                advantages: vec![-1.0, -1.0],
            },
        ]
    }

    #[test]
    fn forward_matches_forward_backward_and_keeps_no_gradient() {
        let dir = tempfile::tempdir().unwrap();
        let mut client = client(dir.path());
        // Move B off zero so the adapter matters.
        let loss = LossFn::CrossEntropy;
        client.forward_backward(&batch(), &loss, None).unwrap();
        client
            .optim_step(&AdamParams {
                learning_rate: 0.05,
                ..AdamParams::default()
            })
            .unwrap();
        for loss in [
            LossFn::CrossEntropy,
            LossFn::Ppo {
                epsilon_low: 0.2,
                epsilon_high: 0.2,
            },
            LossFn::Dro { beta: 0.3 },
        ] {
            let forward = client.forward(&batch(), &loss).unwrap();
            assert!(client.grads.is_empty(), "forward accumulated a gradient");
            let full = client.forward_backward(&batch(), &loss, None).unwrap();
            assert!((forward.loss - full.loss).abs() < 1e-4, "{loss:?}");
            for (a, b) in forward
                .logprobs
                .iter()
                .flatten()
                .zip(full.logprobs.iter().flatten())
            {
                assert!((a - b).abs() < 1e-4);
            }
            client.grads.clear();
        }
        let scored = sequence_logprobs(
            &client.engine.model,
            Some(&client.adapter),
            &to_sequences(&batch()),
        )
        .unwrap();
        let policy = client.policy_logprobs(&batch()).unwrap();
        assert_eq!(scored, policy);
    }

    #[test]
    fn a_momentum_step_moves_on_the_last_update_and_needs_a_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut client = client(dir.path());
        let loss = LossFn::CrossEntropy;
        let params = AdamParams {
            learning_rate: 0.05,
            ..AdamParams::default()
        };
        let weights = |client: &TrainingClient| -> Vec<f32> {
            client
                .adapter
                .vars()
                .iter()
                .flat_map(|v| {
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect()
        };
        // Without a history there is no momentum: nothing moves.
        let fresh = weights(&client);
        client.optim_step_on_momentum(&params).unwrap();
        assert_eq!(weights(&client), fresh);
        client.forward_backward(&batch(), &loss, None).unwrap();
        client.optim_step(&params).unwrap();
        let after_step = weights(&client);
        let out = client.optim_step_on_momentum(&params).unwrap();
        assert_eq!(out.grad_norm, 0.0);
        let after_coast = weights(&client);
        // AdamW with a zero gradient: every weight the step moved moves again the same way.
        let mut moved = 0;
        for ((f, s), c) in fresh.iter().zip(&after_step).zip(&after_coast) {
            let (step, coast) = (s - f, c - s);
            if step.abs() > 1e-4 {
                moved += 1;
                assert!(step.signum() == coast.signum(), "{step} then {coast}");
            }
        }
        assert!(moved > 0);
        assert_eq!(client.step(), 3);
    }

    #[test]
    fn load_weights_restores_the_adapter_and_resets_the_optimizer() {
        let dir = tempfile::tempdir().unwrap();
        let mut client = client(&dir.path().join("model"));
        let loss = LossFn::CrossEntropy;
        client.forward_backward(&batch(), &loss, None).unwrap();
        client.optim_step(&AdamParams::default()).unwrap();
        let saved = dir.path().join("state");
        std::fs::create_dir_all(&saved).unwrap();
        client.save_state(&saved).unwrap();
        let at_save = client.forward(&batch(), &loss).unwrap().loss;
        client.forward_backward(&batch(), &loss, None).unwrap();
        client
            .optim_step(&AdamParams {
                learning_rate: 0.1,
                ..AdamParams::default()
            })
            .unwrap();
        assert!((client.forward(&batch(), &loss).unwrap().loss - at_save).abs() > 1e-3);
        client.load_weights(&saved).unwrap();
        assert!((client.forward(&batch(), &loss).unwrap().loss - at_save).abs() < 1e-5);
        assert_eq!(client.step(), 0);
        assert!(client.moments.is_empty());
        client.load_state(&saved).unwrap();
        assert_eq!(client.step(), 1);
        assert!(!client.moments.is_empty());
    }
}
