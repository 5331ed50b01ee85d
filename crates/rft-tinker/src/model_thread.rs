//! Where a training model's requests run: one thread per model (its `TrainingClient`, requests
//! applied in `seq_id` order). HTTP handlers only validate, enqueue and answer a request id; the
//! compute never runs on the async runtime, so a slow `forward_backward` blocks no other
//! request. The thread borrows its base model from the engine host for its whole life, and once
//! its model is closed fails whatever is still queued instead of running it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rft_model::engine::Engine;
use rft_model::lora::{LoraAdapter, LoraConfig, Projection};
use rft_train::loss::LossFn;
use rft_train::primitives::{AdamParams, Datum, TrainingClient};
use serde::{Deserialize, Serialize};

use crate::futures::Outcome;
use crate::paths::CheckpointPath;
use crate::{proto, wire, Shared};

/// How long a model waits for a missing `seq_id` before running the next one it holds (a
/// client that crashed between reserving an id and sending it must not stall the model).
const SEQ_GAP_WAIT: Duration = Duration::from_secs(10);

/// Ephemeral sampler snapshots (`save_weights_and_get_sampling_client`) kept per model; older
/// ones are deleted with their sampling sessions.
pub(crate) const MAX_EPHEMERAL_SNAPSHOTS: usize = 8;

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

    /// What `weights_info` reports.
    pub(crate) fn info(&self) -> wire::WeightsInfo {
        wire::WeightsInfo {
            base_model: self.base_model.clone(),
            optimizer_config: wire::OptimizerOut { kind: "adamw" },
            is_lora: true,
            lora_rank: self.lora_rank,
            train_unembed: false,
            train_mlp: self.train_mlp,
            train_attn: self.train_attn,
        }
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

/// Where a model is in its life, shared by its thread and the registry.
///
/// A closed model whose thread is in the middle of a request still holds its training state
/// until that request ends, so it keeps counting against `MAX_MODELS` (`Shared::closing`)
/// until then; one closed while idle frees it at once. `busy` is raised before `closed` is
/// read, and `closed` before `busy` is read, so either the thread sees the close and runs
/// nothing more, or the close sees the thread busy and counts it.
#[derive(Debug, Default)]
pub(crate) struct Life {
    closed: AtomicBool,
    busy: AtomicBool,
    counted: AtomicBool,
    /// The request the thread is running, which a close lets finish with its own result.
    running: std::sync::Mutex<Option<String>>,
}

impl Life {
    /// Closes the model, counting it in `closing` while it is mid-request; returns the
    /// request it is running.
    pub(crate) fn close(&self, closing: &std::sync::atomic::AtomicUsize) -> Option<String> {
        self.closed.store(true, Ordering::SeqCst);
        if self.busy.load(Ordering::SeqCst) {
            // Counted before it is marked, so the thread's release never runs first.
            closing.fetch_add(1, Ordering::SeqCst);
            self.counted.store(true, Ordering::SeqCst);
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn set_running(&self, id: Option<&str>) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = id.map(str::to_owned);
    }
}

/// Starts a model's thread; it ends when the sender is dropped (the model was closed), after
/// failing what is still queued.
pub(crate) fn start_model(
    shared: Arc<Shared>,
    model_id: String,
    meta: ModelMeta,
    jobs: Receiver<Job>,
    life: Arc<Life>,
) -> std::io::Result<()> {
    let guard = LiveModel {
        shared: shared.clone(),
        life: life.clone(),
    };
    std::thread::Builder::new()
        .name("rft-tinker-model".into())
        .spawn(move || {
            let _guard = guard;
            run_model(&shared, &model_id, &meta, &jobs, &life);
        })
        .map(|_| ())
}

/// Releases a closed model's place among the closing models, if the close counted it, when its
/// thread ends (or fails to start).
struct LiveModel {
    shared: Arc<Shared>,
    life: Arc<Life>,
}

impl Drop for LiveModel {
    fn drop(&mut self) {
        if self.life.counted.swap(false, Ordering::SeqCst) {
            self.shared.closing.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn run_model(shared: &Shared, model_id: &str, meta: &ModelMeta, jobs: &Receiver<Job>, life: &Life) {
    let mut client: Option<Loaded> = None;
    let mut held: BTreeMap<i64, Job> = BTreeMap::new();
    // The SDK numbers a training client's requests from 1; its chunked `forward_backward`
    // sends the first chunk last, so later ones wait for it.
    let mut next_seq: Option<i64> = Some(1);
    loop {
        if life.is_closed() {
            // Closed: nothing queued runs; the training state goes with this thread.
            drop(client.take());
            let mut pending: BTreeSet<String> = held.into_values().map(|j| j.request_id).collect();
            pending.extend(jobs.try_iter().map(|j| j.request_id));
            for id in pending {
                shared.futures.complete(
                    &id,
                    Outcome::user("the session was closed before this request ran"),
                );
            }
            // Anything sent between the close and the sender's drop fails too.
            while let Ok(job) = jobs.recv() {
                shared.futures.complete(
                    &job.request_id,
                    Outcome::user("the session was closed before this request ran"),
                );
            }
            return;
        }
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
                Err(RecvTimeoutError::Disconnected) => {
                    if life.is_closed() {
                        continue;
                    }
                    return;
                }
            }
        };
        let Some(job) = job else { continue };
        life.set_running(Some(&job.request_id));
        life.busy.store(true, Ordering::SeqCst);
        if life.is_closed() {
            life.busy.store(false, Ordering::SeqCst);
            life.set_running(None);
            shared.futures.complete(
                &job.request_id,
                Outcome::user("the session was closed before this request ran"),
            );
            continue;
        }
        if let Some(seq) = job.seq {
            // Never backwards: a second client of the same model numbering from 1 again runs
            // in arrival order rather than overtaking what is held.
            let after = seq.saturating_add(1);
            next_seq = Some(next_seq.map_or(after, |n| n.max(after)));
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
        life.busy.store(false, Ordering::SeqCst);
        shared.futures.complete(&job.request_id, outcome);
        life.set_running(None);
    }
}

fn apply(
    shared: &Shared,
    model_id: &str,
    meta: &ModelMeta,
    client: &mut Option<Loaded>,
    op: ModelOp,
) -> Outcome {
    if let ModelOp::Create { spec, seed } = &op {
        return match create(shared, meta, spec, *seed) {
            Ok(created) => {
                *client = Some(created);
                Outcome::json(&wire::ModelCreated {
                    model_id: model_id.to_owned(),
                    kind: "create_model",
                })
            }
            Err(CreateError::Budget(e)) => Outcome::user(e),
            Err(CreateError::Other(e)) => {
                Outcome::server(format!("cannot load the base model: {e}"))
            }
        };
    }
    let Some(Loaded { client, .. }) = client.as_mut() else {
        return Outcome::user("the model failed to load; create it again");
    };
    match op {
        ModelOp::Create { .. } => Outcome::user("the model exists already"),
        ModelOp::ForwardBackward {
            batch,
            prefixes,
            loss,
            forward_only,
        } => {
            let vocab = client.engine().model.config().vocab_size;
            let outside = batch.iter().enumerate().find_map(|(i, d)| {
                d.prompt
                    .iter()
                    .chain(&d.completion)
                    .find(|&&id| id as usize >= vocab)
                    .map(|&id| (i, id))
            });
            if let Some((i, id)) = outside {
                return Outcome::user(format!(
                    "datum {i}: token {id} is not in the model's vocabulary of {vocab}"
                ));
            }
            match forward_backward(client, &batch, &prefixes, &loss, forward_only) {
                Ok(bytes) => Outcome::Proto(bytes),
                Err(e) => Outcome::user(e.to_string()),
            }
        }
        ModelOp::OptimStep(params) => match client.optim_step(&params) {
            Ok(out) => Outcome::json(&wire::OptimStepResult {
                metrics: [
                    ("grad_norm:mean", out.grad_norm),
                    ("step:max", out.step as f64),
                ]
                .into_iter()
                .collect(),
            }),
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
                if let Some(id) = &sampler {
                    crate::sampling::open_snapshot_sampler(shared, model_id, id, meta, &path);
                }
                Outcome::json(&wire::Saved {
                    path: path.uri(),
                    kind: if with_optimizer {
                        "save_weights"
                    } else {
                        "save_weights_for_sampler"
                    },
                    sampling_session_id: sampler,
                })
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
                Ok(()) => Outcome::json(&wire::Loaded {
                    path: path.uri(),
                    model_id: model_id.to_owned(),
                    kind: "load_weights",
                }),
                Err(e) => Outcome::user(format!("cannot load {}: {e}", path.uri())),
            }
        }
    }
}

enum CreateError {
    /// No room beside the models in use: the client may retry later.
    Budget(String),
    Other(String),
}

fn create(shared: &Shared, meta: &ModelMeta, spec: &str, seed: u64) -> Result<Loaded, CreateError> {
    let base = shared.host.base(spec).map_err(|e| match e {
        rft_model::ModelError::MemoryBudget { .. } => CreateError::Budget(e.to_string()),
        other => CreateError::Other(other.to_string()),
    })?;
    shared.set_context(
        &meta.base_model,
        base.model.config().max_position_embeddings,
    );
    export_tokenizer(&base, &shared.tokenizer_dir(&meta.base_model));
    let adapter = LoraAdapter::new(base.model.config(), meta.lora(), seed, shared.host.device())
        .map_err(|e| CreateError::Other(e.to_string()))?;
    // The client's engine shares the host's weights; the lease returned beside it is held as
    // long as the client, so the host counts the base as in use and never drops it to make
    // room while a training model still shares its weights.
    Ok(Loaded {
        client: TrainingClient::on_host(base.share(), adapter, shared.host.clone()),
        _lease: base,
    })
}

/// A training client and the host's lease on its base model.
pub(crate) struct Loaded {
    client: TrainingClient,
    _lease: Arc<Engine>,
}

/// `tokenizer_config.json` as `transformers` reads it.
#[derive(Serialize)]
struct TokenizerConfig {
    tokenizer_class: &'static str,
    model_max_length: usize,
    clean_up_tokenization_spaces: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bos_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eos_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pad_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template: Option<String>,
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
        let eos = engine.tokenizer.eos_token().map(str::to_owned);
        let config = TokenizerConfig {
            tokenizer_class: "PreTrainedTokenizerFast",
            model_max_length: engine.model.config().max_position_embeddings,
            clean_up_tokenization_spaces: false,
            bos_token: engine.tokenizer.bos_token().map(str::to_owned),
            pad_token: eos.clone(),
            eos_token: eos,
            chat_template: engine.tokenizer.chat_template_source().map(str::to_owned),
        };
        let config = serde_json::to_string(&config).map_err(|e| e.to_string())?;
        write_atomic(&dir.join("tokenizer_config.json"), config.as_bytes())
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
    let temp = parent.join(format!(".tmp-{}", rft_types::ids::new_id("")));
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
