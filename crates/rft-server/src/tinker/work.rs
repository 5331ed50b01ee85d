//! Where Tinker requests run: one thread per training model (its `TrainingClient`, requests
//! applied in `seq_id` order) and one sampling thread (requests of one sampler batched into a
//! single `Sampler::run`). HTTP handlers only validate, enqueue and answer a request id; the
//! compute never runs on the async runtime, so a slow `forward_backward` blocks no other
//! request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use prost::Message;
use rft_model::engine::Engine;
use rft_model::lora::{LoraAdapter, LoraConfig, Projection};
use rft_model::sample::{FinishReason, SampleRequest, Sampler, SamplingParams};
use rft_model::train::TokenSequence;
use rft_model::CausalLm;
use rft_train::loss::LossFn;
use rft_train::primitives::{self, AdamParams, Datum, TrainingClient};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::futures::Outcome;
use super::paths::CheckpointPath;
use super::proto;
use super::Shared;

/// How long a model waits for a missing `seq_id` before running the next one it holds (a
/// client that crashed between reserving an id and sending it must not stall the model).
const SEQ_GAP_WAIT: Duration = Duration::from_secs(10);

/// Ephemeral sampler snapshots (`save_weights_and_get_sampling_client`) kept per model; older
/// ones are deleted with their sampling sessions.
pub(crate) const MAX_EPHEMERAL_SNAPSHOTS: usize = 8;

/// Base models the sampling thread keeps loaded, and merged adapters it keeps.
const SAMPLER_CACHE: usize = 2;

/// The LoRA a training model was created with (and what a checkpoint records of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ModelMeta {
    /// The base model's name in the server's catalog.
    pub(crate) base_model: String,
    /// LoRA rank.
    pub(crate) lora_rank: usize,
    /// Adapters on the MLP projections.
    pub(crate) train_mlp: bool,
    /// Adapters on the attention projections.
    pub(crate) train_attn: bool,
}

impl ModelMeta {
    /// The adapter's shape.
    pub(crate) fn lora(&self) -> LoraConfig {
        let mut targets = Vec::new();
        if self.train_attn {
            targets.extend([Projection::Q, Projection::K, Projection::V, Projection::O]);
        }
        if self.train_mlp {
            targets.extend([Projection::Gate, Projection::Up, Projection::Down]);
        }
        LoraConfig {
            rank: self.lora_rank,
            targets,
            ..LoraConfig::default()
        }
    }

    /// What `weights_info` and `get_info` report.
    pub(crate) fn info(&self) -> Value {
        json!({
            "base_model": self.base_model,
            "optimizer_config": {"type": "adamw"},
            "is_lora": true,
            "lora_rank": self.lora_rank,
            "train_unembed": false,
            "train_mlp": self.train_mlp,
            "train_attn": self.train_attn,
        })
    }
}

/// The file beside a checkpoint's adapter that says what it was trained from.
pub(crate) const META_FILE: &str = "tinker.json";

/// Reads a checkpoint's [`ModelMeta`].
pub(crate) fn read_meta(dir: &Path) -> Option<ModelMeta> {
    let text = std::fs::read_to_string(dir.join(META_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// One request for a training model.
pub(crate) enum ModelOp {
    /// Load the base model and make the adapter (the model's first request).
    Create {
        /// The engine spec of the base model.
        spec: String,
        /// Seed of the LoRA initialisation.
        seed: u64,
    },
    /// `forward_backward` or `forward`.
    ForwardBackward {
        /// The datums, in the primitives' shape.
        batch: Vec<Datum>,
        /// Per datum: the positions before its scored part, whose log-probs are computed
        /// without gradient so the output covers every position.
        prefixes: Vec<Option<Prefix>>,
        /// The loss.
        loss: LossFn,
        /// No backward.
        forward_only: bool,
    },
    /// `optim_step`.
    OptimStep(AdamParams),
    /// `save_weights` / `save_weights_for_sampler`.
    Save {
        /// Where.
        path: CheckpointPath,
        /// With the optimizer state (`save_weights`).
        with_optimizer: bool,
        /// Refuse an existing checkpoint of that name.
        overwrite: bool,
        /// Open a sampling session on the snapshot (`save_weights_and_get_sampling_client`).
        sampler: Option<String>,
    },
    /// `load_weights`.
    Load {
        /// From where.
        path: CheckpointPath,
        /// With the optimizer state.
        optimizer: bool,
    },
}

/// The positions of a datum before its scored part: the next-token sequence to score them
/// with, and which of them asked for another target (reported as NaN).
#[derive(Debug, Clone)]
pub(crate) struct Prefix {
    /// Prompt `[x[0]]`, completion `x[1..=s]`.
    pub(crate) datum: Datum,
    /// Per position: the target was not the next input token.
    pub(crate) foreign: Vec<bool>,
}

/// A queued request.
pub(crate) struct Job {
    /// Order within the model (`None`: in arrival order).
    pub(crate) seq: Option<i64>,
    /// The future it completes.
    pub(crate) request_id: String,
    /// What to do.
    pub(crate) op: ModelOp,
}

/// Starts a model's thread; it ends when the sender is dropped (the model was unloaded).
pub(crate) fn start_model(
    shared: Arc<Shared>,
    model_id: String,
    meta: ModelMeta,
    jobs: Receiver<Job>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rft-tinker-model".into())
        .spawn(move || run_model(&shared, &model_id, &meta, &jobs))
        .map(|_| ())
}

fn run_model(shared: &Shared, model_id: &str, meta: &ModelMeta, jobs: &Receiver<Job>) {
    let mut client: Option<TrainingClient> = None;
    let mut held: BTreeMap<i64, Job> = BTreeMap::new();
    // The SDK numbers a training client's requests from 1; its chunked `forward_backward`
    // sends the first chunk last, so later ones wait for it.
    let mut next_seq: Option<i64> = Some(1);
    loop {
        // The next job: one without a seq_id, the expected seq_id, or, after a gap that
        // lasted too long, the smallest one held.
        let job = if let Some(seq) = next_seq.filter(|s| held.contains_key(s)) {
            held.remove(&seq)
        } else {
            let received = if held.is_empty() {
                jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                jobs.recv_timeout(SEQ_GAP_WAIT)
            };
            match received {
                Ok(job) => match job.seq {
                    Some(seq) if next_seq.is_some_and(|n| seq > n) => {
                        held.insert(seq, job);
                        continue;
                    }
                    _ => Some(job),
                },
                Err(RecvTimeoutError::Timeout) => held.pop_first().map(|(_, job)| job),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        let Some(job) = job else { continue };
        if let Some(seq) = job.seq {
            // Never backwards: a second client of the same model numbering from 1 again runs
            // in arrival order rather than overtaking what is held.
            next_seq = Some(next_seq.map_or(seq + 1, |n| n.max(seq + 1)));
        }
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply(shared, model_id, meta, &mut client, job.op)
        })) {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::server(format!(
                "the request panicked: {}",
                crate::panic_message(&*panic)
            )),
        };
        shared.futures.complete(&job.request_id, outcome);
    }
}

fn apply(
    shared: &Shared,
    model_id: &str,
    meta: &ModelMeta,
    client: &mut Option<TrainingClient>,
    op: ModelOp,
) -> Outcome {
    if let ModelOp::Create { spec, seed } = &op {
        return match create(shared, meta, spec, *seed) {
            Ok(created) => {
                *client = Some(created);
                Outcome::Json(json!({"model_id": model_id, "type": "create_model"}))
            }
            Err(e) => Outcome::server(format!("cannot load the base model: {e}")),
        };
    }
    let Some(client) = client.as_mut() else {
        return Outcome::user("the model failed to load; create it again");
    };
    match op {
        ModelOp::Create { .. } => Outcome::user("the model exists already"),
        ModelOp::ForwardBackward {
            batch,
            prefixes,
            loss,
            forward_only,
        } => match forward_backward(client, &batch, &prefixes, &loss, forward_only) {
            Ok(bytes) => Outcome::Proto(bytes),
            Err(e) => Outcome::user(e.to_string()),
        },
        ModelOp::OptimStep(params) => match client.optim_step(&params) {
            Ok(out) => Outcome::Json(json!({
                "metrics": {
                    "grad_norm:mean": out.grad_norm,
                    "step:max": out.step as f64,
                }
            })),
            Err(e) => Outcome::user(e.to_string()),
        },
        ModelOp::Save {
            path,
            with_optimizer,
            overwrite,
            sampler,
        } => match save(
            shared,
            model_id,
            meta,
            client,
            &path,
            with_optimizer,
            overwrite,
        ) {
            Ok(()) => {
                let mut answer = json!({
                    "path": path.uri(),
                    "type": if with_optimizer { "save_weights" } else { "save_weights_for_sampler" },
                });
                if let Some(id) = sampler {
                    shared.open_snapshot_sampler(model_id, &id, meta, &path);
                    answer["sampling_session_id"] = Value::String(id);
                }
                Outcome::Json(answer)
            }
            Err(e) => e,
        },
        ModelOp::Load { path, optimizer } => {
            let dir = match path.dir(&shared.root) {
                Ok(dir) if dir.join("adapter_config.json").is_file() => dir,
                _ => return Outcome::user(format!("no checkpoint at {}", path.uri())),
            };
            if read_meta(&dir).is_some_and(|m| m.base_model != meta.base_model) {
                return Outcome::user("the checkpoint was trained from another base model");
            }
            // `load_weights` refused optimizer state from sampler weights before queueing this.
            let loaded = if optimizer {
                client.load_state(&dir)
            } else {
                client.load_weights(&dir)
            };
            match loaded {
                Ok(()) => Outcome::Json(json!({
                    "path": path.uri(),
                    "model_id": model_id,
                    "type": "load_weights",
                })),
                Err(e) => Outcome::user(format!("cannot load {}: {e}", path.uri())),
            }
        }
    }
}

fn create(
    shared: &Shared,
    meta: &ModelMeta,
    spec: &str,
    seed: u64,
) -> Result<TrainingClient, String> {
    let engine = Engine::load_base(spec, &Device::Cpu).map_err(|e| e.to_string())?;
    shared.set_context(
        &meta.base_model,
        engine.model.config().max_position_embeddings,
    );
    export_tokenizer(&engine, &shared.tokenizer_dir(&meta.base_model));
    let adapter = LoraAdapter::new(engine.model.config(), meta.lora(), seed, &Device::Cpu)
        .map_err(|e| e.to_string())?;
    Ok(TrainingClient::new(engine, adapter))
}

/// Writes the base model's tokenizer as a Hugging Face folder (`tokenizer.json`,
/// `tokenizer_config.json`) once, so the SDK's `get_tokenizer()` loads it by the path
/// `get_info` returns, offline.
pub(crate) fn export_tokenizer(engine: &Engine, dir: &Path) {
    if dir.join("tokenizer_config.json").is_file() {
        return;
    }
    let written = (|| -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let json = engine
            .tokenizer
            .hf()
            .to_string(false)
            .map_err(|e| e.to_string())?;
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": engine.model.config().max_position_embeddings,
            "clean_up_tokenization_spaces": false,
        });
        if let Some(bos) = engine.tokenizer.bos_token() {
            config["bos_token"] = Value::String(bos.to_owned());
        }
        if let Some(eos) = engine.tokenizer.eos_token() {
            config["eos_token"] = Value::String(eos.to_owned());
            config["pad_token"] = Value::String(eos.to_owned());
        }
        if let Some(template) = engine.tokenizer.chat_template_source() {
            config["chat_template"] = Value::String(template.to_owned());
        }
        write_atomic(
            &dir.join("tokenizer_config.json"),
            config.to_string().as_bytes(),
        )
    })();
    if let Err(e) = written {
        tracing::warn!("cannot export the tokenizer for the Tinker SDK: {e}");
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    rft_types::paths::write_atomic(path, bytes).map_err(|e| e.to_string())
}

fn forward_backward(
    client: &mut TrainingClient,
    batch: &[Datum],
    prefixes: &[Option<Prefix>],
    loss: &LossFn,
    forward_only: bool,
) -> Result<Vec<u8>, rft_train::TrainError> {
    let out = if forward_only {
        client.forward(batch, loss)?
    } else {
        client.forward_backward(batch, loss, None)?
    };
    let owned: Vec<Datum> = prefixes.iter().flatten().map(|p| p.datum.clone()).collect();
    let prefix_values = if owned.is_empty() {
        Vec::new()
    } else {
        client.policy_logprobs(&owned)?
    };
    let mut prefix_values = prefix_values.into_iter();
    let mut data = Vec::new();
    let mut offsets = vec![0i64];
    for (idx, logprobs) in out.logprobs.iter().enumerate() {
        if let Some(Some(prefix)) = prefixes.get(idx) {
            let values = prefix_values.next().unwrap_or_default();
            for (v, foreign) in values.iter().zip(&prefix.foreign) {
                let v = if *foreign { f32::NAN } else { *v };
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        data.extend(proto::f32_bytes(logprobs));
        offsets.push(data.len() as i64);
    }
    let record = proto::ArrayRecord {
        type_tag: "ArrayRecord".into(),
        fields: [(
            "logprobs".to_owned(),
            proto::BatchedTensor {
                data,
                offsets: proto::i64_bytes(&offsets),
                dtype: proto::DType::Float32 as i32,
                trailing_shape: Vec::new(),
            },
        )]
        .into_iter()
        .collect(),
        num_datums: out.logprobs.len() as i64,
    };
    let output = proto::ForwardBackwardOutput {
        loss_fn_output_type: "ArrayRecord".into(),
        loss_fn_outputs: vec![record],
        metrics: [("loss:sum".to_owned(), out.loss)].into_iter().collect(),
    };
    Ok(output.encode_to_vec())
}

fn save(
    shared: &Shared,
    model_id: &str,
    meta: &ModelMeta,
    client: &TrainingClient,
    path: &CheckpointPath,
    with_optimizer: bool,
    overwrite: bool,
) -> Result<(), Outcome> {
    let dir = path.dir(&shared.root).map_err(Outcome::user)?;
    if dir.exists() && !overwrite {
        return Err(Outcome::user(format!(
            "a checkpoint named {} exists; pass overwrite or choose another name",
            path.uri()
        )));
    }
    let parent = dir.parent().unwrap_or(&shared.root);
    std::fs::create_dir_all(parent).map_err(|e| Outcome::server(e.to_string()))?;
    // Written to a temporary folder and renamed, so a crash never leaves half a checkpoint
    // under the name.
    let temp = parent.join(format!(".tmp-{}", crate::new_id("")));
    std::fs::create_dir_all(&temp).map_err(|e| Outcome::server(e.to_string()))?;
    let written = if with_optimizer {
        client.save_state(&temp)
    } else {
        client.save_weights_for_sampler(&temp)
    }
    .map_err(|e| e.to_string())
    .and_then(|()| {
        let meta = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
        write_atomic(&temp.join(META_FILE), &meta)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(Outcome::server(format!("cannot save {}: {e}", path.uri())));
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::rename(&temp, &dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&temp);
        Outcome::server(format!("cannot save {}: {e}", path.uri()))
    })?;
    tracing::debug!("tinker model {model_id} saved {}", path.uri());
    Ok(())
}

/// One `asample` request.
pub(crate) struct SampleJob {
    /// The future it completes.
    pub(crate) request_id: String,
    /// The base model's engine spec.
    pub(crate) spec: String,
    /// The base model's name.
    pub(crate) base_model: String,
    /// The adapter folder, if not the base model.
    pub(crate) adapter: Option<PathBuf>,
    /// Prompt tokens.
    pub(crate) prompt: Vec<u32>,
    /// Samples.
    pub(crate) n: usize,
    /// How to sample (stop ids already include end-of-turn when the client sent no `stop`).
    pub(crate) params: SamplingParams,
    /// Add the tokenizer's end-of-turn ids to `params.stop_ids`.
    pub(crate) stop_at_eos: bool,
    /// Return the prompt's log-probs.
    pub(crate) prompt_logprobs: bool,
}

/// Starts the sampling thread.
pub(crate) fn start_sampler(shared: Arc<Shared>, jobs: Receiver<SampleJob>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rft-tinker-sample".into())
        .spawn(move || run_sampler(&shared, &jobs))
        .map(|_| ())
}

#[derive(Default)]
struct SamplerCache {
    bases: Vec<(String, Engine)>,
    merged: Vec<(PathBuf, CausalLm)>,
}

fn run_sampler(shared: &Shared, jobs: &Receiver<SampleJob>) {
    let mut cache = SamplerCache::default();
    let mut waiting: Vec<SampleJob> = Vec::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push(job),
                Err(_) => return,
            }
        }
        waiting.extend(jobs.try_iter());
        // Every waiting request of the first one's sampler runs as one batch.
        let key = (waiting[0].spec.clone(), waiting[0].adapter.clone());
        let (group, rest): (Vec<SampleJob>, Vec<SampleJob>) = waiting
            .drain(..)
            .partition(|j| j.spec == key.0 && j.adapter == key.1);
        waiting = rest;
        shared
            .queued_samples
            .fetch_sub(group.len(), std::sync::atomic::Ordering::Relaxed);
        let outcomes = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sample_group(shared, &mut cache, &key.0, key.1.as_deref(), &group)
        })) {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => group.iter().map(|_| Outcome::server(e.clone())).collect(),
            Err(panic) => {
                let message = crate::panic_message(&*panic);
                group
                    .iter()
                    .map(|_| Outcome::server(format!("sampling panicked: {message}")))
                    .collect()
            }
        };
        for (job, outcome) in group.iter().zip(outcomes) {
            shared.futures.complete(&job.request_id, outcome);
        }
    }
}

fn sample_group(
    shared: &Shared,
    cache: &mut SamplerCache,
    spec: &str,
    adapter: Option<&Path>,
    group: &[SampleJob],
) -> Result<Vec<Outcome>, String> {
    if let Some(at) = cache.bases.iter().position(|(s, _)| s == spec) {
        let entry = cache.bases.remove(at);
        cache.bases.push(entry);
    } else {
        let engine = Engine::load_base(spec, &Device::Cpu).map_err(|e| e.to_string())?;
        if cache.bases.len() >= SAMPLER_CACHE {
            cache.bases.remove(0);
        }
        cache.bases.push((spec.to_owned(), engine));
    }
    let Some((_, engine)) = cache.bases.last() else {
        return Err("no base model".into());
    };
    let context = engine.model.config().max_position_embeddings;
    shared.set_context(&group[0].base_model, context);
    if let Some(dir) = adapter {
        if let Some(at) = cache.merged.iter().position(|(d, _)| d == dir) {
            let entry = cache.merged.remove(at);
            cache.merged.push(entry);
        } else {
            let lora = LoraAdapter::load_peft(dir, engine.model.config(), &Device::Cpu)
                .map_err(|e| format!("cannot load the sampler's weights: {e}"))?;
            // Folded into a copy of the weights once per snapshot, as the trainer's own
            // `sample` does: every decode step then costs one matmul per projection.
            let merged = engine
                .model
                .merged(&lora)
                .and_then(|m| m.packed_for_sampling())
                .map_err(|e| e.to_string())?;
            if cache.merged.len() >= SAMPLER_CACHE {
                cache.merged.remove(0);
            }
            cache.merged.push((dir.to_owned(), merged));
        }
    }
    let model = match adapter {
        Some(_) => cache.merged.last().map(|(_, m)| m).unwrap_or(&engine.model),
        None => &engine.model,
    };
    // Requests checked against the real context now that the model is loaded; those past it
    // fail alone.
    let fits = |job: &SampleJob| job.prompt.len() + job.params.max_tokens <= context;
    let requests: Vec<SampleRequest> = group
        .iter()
        .filter(|job| fits(job))
        .map(|job| {
            let mut params = job.params.clone();
            if job.stop_at_eos {
                params.stop_ids.extend(engine.tokenizer.eos_token_ids());
            }
            SampleRequest {
                prompt: job.prompt.clone(),
                n: job.n,
                params,
                constraint: None,
            }
        })
        .collect();
    let sampler = Sampler {
        model,
        adapter: None,
        tokenizer: Some(&engine.tokenizer),
    };
    let mut results = sampler
        .run(&requests)
        .map_err(|e| e.to_string())?
        .into_iter();
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        if !fits(job) {
            outcomes.push(Outcome::user(format!(
                "the prompt ({} tokens) plus max_tokens ({}) exceed the model's context of {context}",
                job.prompt.len(),
                job.params.max_tokens
            )));
            continue;
        }
        let completions = results.next().unwrap_or_default();
        let prompt_logprobs = if job.prompt_logprobs {
            let mut values = vec![f32::NAN];
            if job.prompt.len() > 1 {
                let sequence = TokenSequence {
                    prompt: job.prompt[..1].to_vec(),
                    completion: job.prompt[1..].to_vec(),
                };
                let scored = primitives::sequence_logprobs(model, None, &[sequence])
                    .map_err(|e| e.to_string())?;
                values.extend(scored.into_iter().flatten());
            }
            Some(proto::f32_bytes(&values))
        } else {
            None
        };
        let response = proto::SampleResponse {
            sequences: completions
                .iter()
                .map(|c| proto::SampledSequence {
                    stop_reason: match c.finish_reason {
                        FinishReason::Stop => proto::StopReason::Stop as i32,
                        FinishReason::Length => proto::StopReason::Length as i32,
                    },
                    tokens: proto::i32_bytes(&c.ids),
                    logprobs: Some(proto::f32_bytes(&c.logprobs)),
                })
                .collect(),
            prompt_logprobs,
            prompt_cache_hit_tokens: 0,
        };
        outcomes.push(Outcome::Proto(response.encode_to_vec()));
    }
    Ok(outcomes)
}

/// Sends a job to a model's thread; `false` when the thread is gone.
pub(crate) fn send(jobs: &Sender<Job>, job: Job) -> bool {
    jobs.send(job).is_ok()
}
