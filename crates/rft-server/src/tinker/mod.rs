//! A Tinker-compatible training API under `/api/v1`, so the `tinker` Python SDK (and the
//! cookbook's loops on top of it) run against `rft serve` with `TINKER_BASE_URL` pointing here.
//! `docs/tinker.md` says what is served and what is not.
//!
//! The SDK's protocol: every mutating call answers `{request_id}` at once and the client
//! long-polls `POST /retrieve_future` for the result ([`futures`]); `forward_backward` bodies
//! and the results of `forward_backward` and `asample` are protobuf ([`proto`]); a training
//! model's requests carry consecutive `seq_id`s and run in that order on the model's own
//! thread ([`work`]), over `rft_train::primitives::TrainingClient`; `tinker://` checkpoint
//! paths map into the data folder ([`paths`]).
//!
//! Everything a client controls is bounded: sessions, training models (each holds a copy of
//! its base model, a LoRA and AdamW state), sampling sessions, futures, request bodies (the
//! zstd-decompressed size is capped while decompressing), datums and tokens per request,
//! sequence lengths, samples and sampled tokens. The limits are constants here, listed in
//! `docs/security.md`.

mod futures;
mod paths;
mod proto;
mod work;

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use prost::Message;
use rft_model::sample::SamplingParams;
use rft_train::loss::LossFn;
use rft_train::primitives::{AdamParams, Datum};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::error::{parse_body, ApiError, ApiJson};
use crate::SharedState;
use futures::{Futures, Outcome};
use paths::{CheckpointPath, Kind};
use work::{Job, ModelMeta, ModelOp, SampleJob};

/// Most sessions open at once.
pub(crate) const MAX_SESSIONS: usize = 64;
/// Most training models loaded at once (each holds its base model, LoRA and optimizer).
pub(crate) const MAX_MODELS: usize = 4;
/// Most sampling sessions at once.
pub(crate) const MAX_SAMPLERS: usize = 256;
/// A session without a heartbeat for this long is closed and its models unloaded.
pub(crate) const SESSION_IDLE: Duration = Duration::from_secs(10 * 60);
/// Largest `forward_backward` body after zstd decompression.
pub(crate) const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// Most datums in one `forward_backward` request.
pub(crate) const MAX_DATUMS: usize = 1024;
/// Most tokens over all datums of one `forward_backward` request.
pub(crate) const MAX_REQUEST_TOKENS: usize = 262_144;
/// Most samples one `asample` asks for.
pub(crate) const MAX_NUM_SAMPLES: usize = 128;
/// Most new tokens per sample.
pub(crate) const MAX_SAMPLE_TOKENS: usize = 4096;
/// `max_tokens` when the client sends none (within the context).
pub(crate) const DEFAULT_SAMPLE_TOKENS: usize = 1024;
/// Sampling requests waiting for the sampling thread before new ones get 429.
pub(crate) const MAX_QUEUED_SAMPLES: usize = 1024;
/// Largest LoRA rank.
pub(crate) const MAX_LORA_RANK: usize = 128;
/// The context length assumed for a base model not loaded yet.
const ASSUMED_CONTEXT: usize = 8192;
/// How long `retrieve_future` holds a request open before answering `try_again` (the SDK
/// waits 45 s).
const LONG_POLL: Duration = Duration::from_secs(20);

/// The Tinker API's state, shared by its handlers and threads.
#[derive(Debug, Clone)]
pub(crate) struct Tinker {
    shared: Arc<Shared>,
}

/// What handlers and worker threads share.
pub(crate) struct Shared {
    /// `<data>/tinker`.
    pub(crate) root: PathBuf,
    catalog: Arc<Catalog>,
    pub(crate) futures: Futures,
    registry: Mutex<Registry>,
    pub(crate) queued_samples: AtomicUsize,
    sampler_jobs: Mutex<Option<Sender<SampleJob>>>,
    /// Context lengths of the base models loaded so far, by name.
    contexts: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("root", &self.root).finish()
    }
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<String, Instant>,
    models: HashMap<String, ModelEntry>,
    samplers: HashMap<String, SamplerEntry>,
}

struct ModelEntry {
    session: String,
    meta: ModelMeta,
    jobs: Sender<Job>,
    /// `save_weights_and_get_sampling_client` snapshots, oldest first: folder and sampler.
    ephemeral: VecDeque<(PathBuf, String)>,
}

#[derive(Clone)]
struct SamplerEntry {
    session: Option<String>,
    base_model: String,
    adapter: Option<PathBuf>,
    model_path: Option<String>,
}

impl Shared {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The context length of a base model: what its configuration says once it has been
    /// loaded, [`ASSUMED_CONTEXT`] before (the worker checks again with the real one).
    pub(crate) fn context(&self, base_model: &str) -> usize {
        self.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(base_model)
            .copied()
            .unwrap_or(ASSUMED_CONTEXT)
    }

    /// Records a loaded base model's context length.
    pub(crate) fn set_context(&self, base_model: &str, context: usize) {
        self.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(base_model.to_owned(), context);
    }

    /// Where the tokenizer of a base model is exported for the SDK.
    pub(crate) fn tokenizer_dir(&self, base_model: &str) -> PathBuf {
        let safe: String = base_model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("tokenizers").join(safe)
    }

    /// Registers the sampler of a snapshot just saved, pruning the model's oldest snapshots.
    pub(crate) fn open_snapshot_sampler(
        &self,
        model_id: &str,
        sampler_id: &str,
        meta: &ModelMeta,
        path: &CheckpointPath,
    ) {
        let Ok(dir) = path.dir(&self.root) else {
            return;
        };
        let mut registry = self.registry();
        let session = registry.models.get(model_id).map(|m| m.session.clone());
        registry.samplers.insert(
            sampler_id.to_owned(),
            SamplerEntry {
                session,
                base_model: meta.base_model.clone(),
                adapter: Some(dir.clone()),
                model_path: Some(path.uri()),
            },
        );
        let mut dropped = Vec::new();
        if let Some(model) = registry.models.get_mut(model_id) {
            model.ephemeral.push_back((dir, sampler_id.to_owned()));
            while model.ephemeral.len() > work::MAX_EPHEMERAL_SNAPSHOTS {
                if let Some(old) = model.ephemeral.pop_front() {
                    dropped.push(old);
                }
            }
        }
        for (dir, sampler) in dropped {
            registry.samplers.remove(&sampler);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Tinker {
    /// The API over `<data_dir>/tinker`, with its sampling thread started.
    pub(crate) fn start(data_dir: &Path, catalog: Arc<Catalog>) -> Tinker {
        let shared = Arc::new(Shared {
            root: data_dir.join("tinker"),
            catalog,
            futures: Futures::default(),
            registry: Mutex::new(Registry::default()),
            queued_samples: AtomicUsize::new(0),
            sampler_jobs: Mutex::new(None),
            contexts: Mutex::new(HashMap::new()),
        });
        let (send, receive) = std::sync::mpsc::channel();
        match work::start_sampler(shared.clone(), receive) {
            Ok(()) => {
                *shared
                    .sampler_jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(send);
            }
            Err(e) => tracing::error!("cannot start the Tinker sampling thread: {e}"),
        }
        Tinker { shared }
    }
}

/// The routes, nested under `/api/v1` by the server's router.
pub(crate) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/client/config", post(client_config))
        .route("/client/dynamic_config", post(client_dynamic_config))
        .route("/get_server_capabilities", get(capabilities))
        .route("/create_session", post(create_session))
        .route("/session_heartbeat", post(session_heartbeat))
        .route("/sessions/{session_id}/finish", post(finish_session))
        .route("/telemetry", post(telemetry))
        .route("/create_model", post(create_model))
        .route("/get_info", post(get_info))
        .route("/forward_backward", post(forward_backward))
        .route("/forward", post(forward))
        .route("/optim_step", post(optim_step))
        .route("/save_weights", post(save_weights))
        .route("/save_weights_for_sampler", post(save_weights_for_sampler))
        .route("/load_weights", post(load_weights))
        .route("/weights_info", post(weights_info))
        .route("/create_sampling_session", post(create_sampling_session))
        .route("/samplers/{sampler_id}", get(get_sampler))
        .route("/asample", post(asample))
        .route("/retrieve_future", post(retrieve_future))
        .route("/checkpoints", get(list_all_checkpoints))
        .route(
            "/training_runs/{model_id}/checkpoints",
            get(list_checkpoints),
        )
        .route(
            "/training_runs/{model_id}/checkpoints/{kind}/{name}",
            delete(delete_checkpoint),
        )
}

fn tinker(state: &SharedState) -> &Arc<Shared> {
    &state.tinker.shared
}

/// A typed body, refused with the JSON path of the fault.
fn body<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    parse_body(value)
}

/// `{request_id}` for a queued request.
fn queued(request_id: &str, model_id: Option<&str>) -> Json<Value> {
    let mut answer = json!({"request_id": request_id});
    if let Some(id) = model_id {
        answer["model_id"] = Value::String(id.to_owned());
    }
    Json(answer)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Feature flags for this server: the plain `httpx` transport, zstd-compressed
/// `forward_backward` bodies, per-request future polling, client-side custom losses.
async fn client_config() -> Json<Value> {
    Json(json!({
        "pjwt_auth_enabled": false,
        "credential_default_source": "api_key",
        "parallel_fwdbwd_chunks": true,
        "proto_compress_fwdbwd": true,
        "fwdbwd_max_chunk_len": 256,
        "fwdbwd_max_chunk_bytes_count": 8_000_000,
        "use_pyqwest_transport": false,
        "sample_use_retrieve_futures": false,
        "custom_loss_server_side": false,
        "sample_join_sampling_session": false,
    }))
}

async fn client_dynamic_config() -> Json<Value> {
    Json(json!({"refresh_interval_sec": 300, "sample_cancel_enabled": false}))
}

async fn capabilities(State(state): State<SharedState>) -> Json<Value> {
    let shared = tinker(&state);
    // The sentence encoder behind the `cosine` metric is in the models folder too, but it is
    // not a language model.
    let models: Vec<Value> = shared
        .catalog
        .names()
        .into_iter()
        .filter(|name| name != rft_model::hub::ALL_MINILM_L6_V2.name)
        .map(|name| {
            let context = shared
                .contexts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .copied();
            json!({"model_name": name, "max_context_length": context, "trainable": true, "sampleable": true})
        })
        .collect();
    Json(json!({"supported_models": models}))
}

async fn create_session(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    let shared = tinker(&state);
    let mut registry = shared.registry();
    expire_sessions(&mut registry);
    if registry.sessions.len() >= MAX_SESSIONS {
        return Err(ApiError::busy(format!(
            "{MAX_SESSIONS} sessions are open; close one (ServiceClient.close) or wait for idle ones to expire"
        )));
    }
    let id = crate::new_id("sess_");
    registry.sessions.insert(id.clone(), Instant::now());
    Ok(Json(json!({"type": "create_session", "session_id": id})))
}

/// Closes sessions idle past [`SESSION_IDLE`], unloading their models.
fn expire_sessions(registry: &mut Registry) {
    let idle: Vec<String> = registry
        .sessions
        .iter()
        .filter(|(_, seen)| seen.elapsed() > SESSION_IDLE)
        .map(|(id, _)| id.clone())
        .collect();
    for id in idle {
        close_session(registry, &id);
    }
}

fn close_session(registry: &mut Registry, id: &str) {
    registry.sessions.remove(id);
    let models: Vec<String> = registry
        .models
        .iter()
        .filter(|(_, m)| m.session == id)
        .map(|(k, _)| k.clone())
        .collect();
    for model in models {
        // Dropping the sender ends the model's thread once its queue is done.
        registry.models.remove(&model);
    }
    registry
        .samplers
        .retain(|_, s| s.session.as_deref() != Some(id));
}

#[derive(Deserialize)]
struct SessionRef {
    session_id: String,
}

async fn session_heartbeat(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: SessionRef = body(value)?;
    let shared = tinker(&state);
    let mut registry = shared.registry();
    match registry.sessions.get_mut(&request.session_id) {
        Some(seen) => {
            *seen = Instant::now();
            Ok(Json(json!({"type": "session_heartbeat"})))
        }
        None => Err(gone("session")),
    }
}

/// 410: the SDK stops its heartbeat on it.
fn gone(what: &str) -> ApiError {
    ApiError {
        status: StatusCode::GONE,
        message: format!("This {what} has finished or expired."),
        param: None,
        code: Some("gone".into()),
    }
}

async fn finish_session(
    State(state): State<SharedState>,
    UrlPath(session_id): UrlPath<String>,
) -> Json<Value> {
    let shared = tinker(&state);
    close_session(&mut shared.registry(), &session_id);
    Json(json!({}))
}

async fn telemetry() -> Json<Value> {
    // Telemetry stays on the machine: accepted and dropped.
    Json(json!({"status": "accepted"}))
}

#[derive(Deserialize)]
struct LoraRequest {
    rank: usize,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default = "yes")]
    train_mlp: bool,
    #[serde(default = "yes")]
    train_attn: bool,
    #[serde(default)]
    #[allow(dead_code)]
    train_unembed: Option<bool>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct OptimizerConfig {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct CreateModel {
    session_id: String,
    model_seq_id: u32,
    base_model: String,
    #[serde(default)]
    lora_config: Option<LoraRequest>,
    #[serde(default)]
    optimizer_config: Option<OptimizerConfig>,
}

fn check_optimizer(config: Option<&OptimizerConfig>) -> Result<(), ApiError> {
    match config {
        None => Ok(()),
        Some(c) if c.kind == "adamw" => Ok(()),
        Some(c) => Err(ApiError::bad_request(format!(
            "optimizer '{}' is not supported: OpenRFT trains with AdamW",
            c.kind
        ))
        .with_param("optimizer_config")),
    }
}

async fn create_model(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: CreateModel = body(value)?;
    check_optimizer(request.optimizer_config.as_ref())?;
    let lora = request.lora_config.ok_or_else(|| {
        ApiError::bad_request("lora_config is required: OpenRFT trains LoRA adapters")
            .with_param("lora_config")
    })?;
    if !(1..=MAX_LORA_RANK).contains(&lora.rank) {
        return Err(ApiError::bad_request(format!(
            "lora_config.rank must be from 1 to {MAX_LORA_RANK}"
        ))
        .with_param("lora_config.rank"));
    }
    if !lora.train_mlp && !lora.train_attn {
        return Err(ApiError::bad_request(
            "train_mlp and train_attn are both false: the adapter would train nothing",
        )
        .with_param("lora_config"));
    }
    let meta = ModelMeta {
        base_model: request.base_model.clone(),
        lora_rank: lora.rank,
        train_mlp: lora.train_mlp,
        train_attn: lora.train_attn,
    };
    let seed = lora.seed.unwrap_or_else(random_seed);
    let shared = tinker(&state);
    let (model_id, request_id) = open_model(
        shared,
        &request.session_id,
        request.model_seq_id,
        meta,
        seed,
        None,
    )?;
    Ok(queued(&request_id, Some(&model_id)))
}

/// Registers a training model, starts its thread and queues its creation (and a first load,
/// for a model created from a checkpoint). Returns the model id and the creation's future.
fn open_model(
    shared: &Arc<Shared>,
    session_id: &str,
    model_seq_id: u32,
    meta: ModelMeta,
    seed: u64,
    load: Option<(CheckpointPath, bool)>,
) -> Result<(String, String), ApiError> {
    let spec = shared.catalog.resolve(&meta.base_model).ok_or_else(|| {
        ApiError::bad_request(format!(
            "The model '{}' is not served here; get_server_capabilities lists the models.",
            meta.base_model
        ))
        .with_param("base_model")
    })?;
    let model_id = format!("{session_id}:train:{model_seq_id}");
    let mut registry = shared.registry();
    expire_sessions(&mut registry);
    match registry.sessions.get_mut(session_id) {
        Some(seen) => *seen = Instant::now(),
        None => return Err(gone("session")),
    }
    if !paths::valid_model_id(&model_id) {
        return Err(ApiError::bad_request("not a session of this server").with_param("session_id"));
    }
    if registry.models.contains_key(&model_id) {
        return Err(
            ApiError::bad_request(format!("model {model_id} exists already"))
                .with_param("model_seq_id"),
        );
    }
    if registry.models.len() >= MAX_MODELS {
        return Err(ApiError::busy(format!(
            "{MAX_MODELS} training models are loaded (each holds a copy of its base model, a LoRA and AdamW state); close a session to free one"
        )));
    }
    let request_id = shared.futures.create()?;
    let (send, receive) = std::sync::mpsc::channel();
    work::start_model(shared.clone(), model_id.clone(), meta.clone(), receive)
        .map_err(|e| ApiError::internal(format!("cannot start a model thread: {e}")))?;
    let mut ops = vec![ModelOp::Create { spec, seed }];
    if let Some((path, optimizer)) = load {
        ops.push(ModelOp::Load { path, optimizer });
    }
    let count = ops.len();
    for (idx, op) in ops.into_iter().enumerate() {
        // The creation's own result is only reported when nothing follows it.
        let id = if idx + 1 == count {
            request_id.clone()
        } else {
            shared.futures.create()?
        };
        work::send(
            &send,
            Job {
                seq: None,
                request_id: id,
                op,
            },
        );
    }
    registry.models.insert(
        model_id.clone(),
        ModelEntry {
            session: session_id.to_owned(),
            meta,
            jobs: send,
            ephemeral: VecDeque::new(),
        },
    );
    Ok((model_id, request_id))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// Queues `op` on a model's thread.
fn submit(
    shared: &Shared,
    model_id: &str,
    seq: Option<i64>,
    op: ModelOp,
) -> Result<String, ApiError> {
    let registry = shared.registry();
    let model = registry
        .models
        .get(model_id)
        .ok_or_else(|| ApiError::not_found("model", model_id).with_param("model_id"))?;
    let request_id = shared.futures.create()?;
    if !work::send(
        &model.jobs,
        Job {
            seq,
            request_id: request_id.clone(),
            op,
        },
    ) {
        return Err(ApiError::internal("the model's thread has stopped"));
    }
    Ok(request_id)
}

#[derive(Deserialize)]
struct ModelRef {
    model_id: String,
}

async fn get_info(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: ModelRef = body(value)?;
    let shared = tinker(&state);
    let registry = shared.registry();
    let model = registry
        .models
        .get(&request.model_id)
        .ok_or_else(|| ApiError::not_found("model", &request.model_id).with_param("model_id"))?;
    let tokenizer = shared.tokenizer_dir(&model.meta.base_model);
    let tokenizer_id = tokenizer
        .join("tokenizer.json")
        .is_file()
        .then(|| tokenizer.display().to_string());
    Ok(Json(json!({
        "type": "get_info",
        "model_id": request.model_id,
        "model_data": {
            "arch": "llama",
            "model_name": model.meta.base_model,
            "tokenizer_id": tokenizer_id,
        },
        "optimizer_config": {"type": "adamw"},
        "is_lora": true,
        "lora_rank": model.meta.lora_rank,
        "model_name": model.meta.base_model,
    })))
}

/// The body of a `forward_backward`: zstd-decompressed when so encoded, never past
/// [`MAX_DECOMPRESSED_BYTES`] (the decoder is read through a cap, so a small bomb cannot
/// expand in memory).
fn decode_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<proto::ForwardBackwardRequest, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let raw: std::borrow::Cow<'_, [u8]> = match encoding.as_str() {
        "" | "identity" => body.as_ref().into(),
        "zstd" => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(body.as_ref()).map_err(|e| {
                ApiError::bad_request(format!("the zstd body cannot be decoded: {e}"))
            })?;
            let mut out = Vec::new();
            decoder
                .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    ApiError::bad_request(format!("the zstd body cannot be decoded: {e}"))
                })?;
            if out.len() > MAX_DECOMPRESSED_BYTES {
                return Err(too_large());
            }
            out.into()
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Content-Encoding '{other}' is not supported (send zstd or none)"
            )));
        }
    };
    if raw.len() > MAX_DECOMPRESSED_BYTES {
        return Err(too_large());
    }
    proto::ForwardBackwardRequest::decode(raw.as_ref())
        .map_err(|e| ApiError::bad_request(format!("the protobuf body cannot be decoded: {e}")))
}

fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "The request body is over {MAX_DECOMPRESSED_BYTES} bytes once decompressed; send fewer datums per request."
        ),
        param: None,
        code: Some("request_too_large".into()),
    }
}

async fn forward_backward(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = decode_body(&headers, &body)?;
    let forward_only = request.forward_only;
    submit_forward_backward(&state, request, forward_only)
}

/// `forward`: the same body, forward only (what older SDKs call).
async fn forward(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = decode_body(&headers, &body)?;
    submit_forward_backward(&state, request, true)
}

fn submit_forward_backward(
    state: &SharedState,
    request: proto::ForwardBackwardRequest,
    forward_only: bool,
) -> Result<Json<Value>, ApiError> {
    let shared = tinker(state);
    let context = {
        let registry = shared.registry();
        let model = registry.models.get(&request.model_id).ok_or_else(|| {
            ApiError::not_found("model", &request.model_id).with_param("model_id")
        })?;
        shared.context(&model.meta.base_model)
    };
    let loss = loss_fn(&request)?;
    let (batch, prefixes) = convert_data(&request.data, &loss, context)?;
    let op = ModelOp::ForwardBackward {
        batch,
        prefixes,
        loss,
        forward_only,
    };
    let request_id = submit(
        shared,
        &request.model_id,
        Some(i64::from(request.seq_id)),
        op,
    )?;
    Ok(queued(&request_id, Some(&request.model_id)))
}

/// The loss and its settings (`loss_fn_config`: `clip_low_threshold` / `clip_high_threshold`
/// for ppo, cispo and gspo, `beta` for dro).
fn loss_fn(request: &proto::ForwardBackwardRequest) -> Result<LossFn, ApiError> {
    let mut config: HashMap<String, f64> = request.loss_fn_config.clone();
    for (key, value) in &request.loss_fn_config_v2 {
        match &value.value {
            Some(proto::LossConfigKind::Number(v)) => {
                config.insert(key.clone(), *v);
            }
            Some(proto::LossConfigKind::Text(_)) | None => {
                return Err(ApiError::bad_request(format!(
                    "loss_fn_config['{key}'] must be a number"
                ))
                .with_param("loss_fn_config"));
            }
        }
    }
    let allowed: &[&str] = match request.loss_fn.as_str() {
        "ppo" | "cispo" | "gspo" => &["clip_low_threshold", "clip_high_threshold"],
        "dro" => &["beta"],
        _ => &[],
    };
    if let Some(key) = config.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "loss_fn_config['{key}'] is not a setting of {}",
            request.loss_fn
        ))
        .with_param("loss_fn_config"));
    }
    let value = |key: &str, default: f64| -> Result<f64, ApiError> {
        let v = config.get(key).copied().unwrap_or(default);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(
                ApiError::bad_request(format!("loss_fn_config['{key}'] must be finite"))
                    .with_param("loss_fn_config"),
            )
        }
    };
    let clip = || -> Result<(f64, f64), ApiError> {
        let (low, high) = (
            value("clip_low_threshold", 0.8)?,
            value("clip_high_threshold", 1.2)?,
        );
        if !(0.0..=1.0).contains(&low) || high < 1.0 {
            return Err(ApiError::bad_request(
                "clip thresholds need 0 <= clip_low_threshold <= 1 <= clip_high_threshold",
            )
            .with_param("loss_fn_config"));
        }
        Ok((1.0 - low, high - 1.0))
    };
    Ok(match request.loss_fn.as_str() {
        "cross_entropy" => LossFn::CrossEntropy,
        "importance_sampling" => LossFn::ImportanceSampling,
        "ppo" => {
            let (epsilon_low, epsilon_high) = clip()?;
            LossFn::Ppo {
                epsilon_low,
                epsilon_high,
            }
        }
        "cispo" => {
            let (epsilon_low, epsilon_high) = clip()?;
            LossFn::Cispo {
                epsilon_low,
                epsilon_high,
            }
        }
        "gspo" => {
            let (epsilon_low, epsilon_high) = clip()?;
            LossFn::Gspo {
                epsilon_low,
                epsilon_high,
            }
        }
        "dro" => LossFn::Dro {
            beta: value("beta", 0.1)?,
        },
        other => {
            return Err(ApiError::bad_request(format!(
                "loss_fn '{other}' is not supported; use cross_entropy, importance_sampling, ppo, cispo, dro or gspo (custom losses run client-side through cross_entropy)"
            ))
            .with_param("loss_fn"))
        }
    })
}

/// Tinker datums → the primitives' datums.
///
/// A Tinker datum is `model_input` tokens `x[0..N)` and per-position `target_tokens`
/// `y[0..N)`, scored `log p(y[t] | x[..=t])`; OpenRFT scores next tokens of one sequence, so
/// the scored targets must be `x` shifted by one (`y[t] = x[t+1]`), as every SDK and cookbook
/// loss builds them. The datum becomes prompt `x[..=s]` and completion `y[s..]`, `s` the first
/// position from which every target is the next input token (0 for a supervised datum; the
/// first sampled position for the cookbook's RL datums, whose prompt targets are padding);
/// positions before `s` must weigh 0. GSPO's sequence ratio spans only the positions of its
/// mask (`sequence_ratio_mask`, else the non-zero advantages), which must run to the end, so
/// its `s` is where the mask starts. Positions before `s` get their log-probs from a forward
/// pass without gradient (NaN where the target is not the next input token).
fn convert_data(
    data: &[proto::Datum],
    loss: &LossFn,
    context: usize,
) -> Result<(Vec<Datum>, Vec<Option<work::Prefix>>), ApiError> {
    if data.is_empty() {
        return Err(ApiError::bad_request(
            "forward_backward needs at least one datum",
        ));
    }
    if data.len() > MAX_DATUMS {
        return Err(ApiError::bad_request(format!(
            "{} datums in one request; the limit is {MAX_DATUMS}",
            data.len()
        )));
    }
    let mut total = 0usize;
    let mut batch = Vec::with_capacity(data.len());
    let mut prefixes = Vec::with_capacity(data.len());
    for (idx, datum) in data.iter().enumerate() {
        let fault = |message: String| ApiError::bad_request(format!("datum {idx}: {message}"));
        let tokens = proto::tokens_of(&datum.model_input).map_err(fault)?;
        let n = tokens.len();
        if n == 0 {
            return Err(fault("model_input is empty".into()));
        }
        if n + 1 > context {
            return Err(fault(format!(
                "{n} tokens; the model's context is {context}"
            )));
        }
        total += n;
        if total > MAX_REQUEST_TOKENS {
            return Err(ApiError::bad_request(format!(
                "over {MAX_REQUEST_TOKENS} tokens in one request; send fewer datums per request"
            )));
        }
        let input = |name: &str, required: bool| -> Result<Option<Vec<f64>>, ApiError> {
            match datum.loss_fn_inputs.get(name) {
                Some(tensor) => {
                    let values = proto::tensor_values(tensor, 0.0)
                        .map_err(|e| fault(format!("loss_fn_inputs['{name}']: {e}")))?;
                    if values.len() != n {
                        return Err(fault(format!(
                            "loss_fn_inputs['{name}'] has {} values for {n} tokens",
                            values.len()
                        )));
                    }
                    if values.iter().any(|v| !v.is_finite()) {
                        return Err(fault(format!("loss_fn_inputs['{name}'] is not finite")));
                    }
                    Ok(Some(values))
                }
                None if required => Err(fault(format!("loss_fn_inputs['{name}'] is required"))),
                None => Ok(None),
            }
        };
        let rl = !matches!(loss, LossFn::CrossEntropy);
        let allowed: &[&str] = if rl {
            &[
                "target_tokens",
                "logprobs",
                "advantages",
                "sequence_ratio_mask",
            ]
        } else {
            &["target_tokens", "weights"]
        };
        if let Some(key) = datum
            .loss_fn_inputs
            .keys()
            .find(|k| !allowed.contains(&k.as_str()))
        {
            return Err(fault(format!(
                "loss_fn_inputs['{key}'] is not an input of this loss (it takes {})",
                allowed.join(", ")
            )));
        }
        let targets = input("target_tokens", true)?.unwrap_or_default();
        let mut targets_u32 = Vec::with_capacity(n);
        for (t, &y) in targets.iter().enumerate() {
            if y < 0.0 || y > f64::from(u32::MAX) || y.fract() != 0.0 {
                return Err(fault(format!("target_tokens[{t}] is not a token id")));
            }
            targets_u32.push(y as u32);
        }
        // Positions whose target is not the next input token (the cookbook pads the prompt's
        // targets with 0) can only come before the scored part.
        let foreign: Vec<bool> = (0..n)
            .map(|t| t + 1 < n && tokens[t + 1] != targets_u32[t])
            .collect();
        let consistent_from = foreign.iter().rposition(|&f| f).map_or(0, |t| t + 1);
        let (old, adv) = if rl {
            (
                input("logprobs", true)?.unwrap_or_default(),
                input("advantages", true)?.unwrap_or_default(),
            )
        } else {
            (
                vec![0.0; n],
                input("weights", false)?.unwrap_or_else(|| vec![1.0; n]),
            )
        };
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        // GSPO scores from the first masked position on.
        let mut start = consistent_from;
        if matches!(loss, LossFn::Gspo { .. }) {
            let mask = match input("sequence_ratio_mask", false)? {
                Some(mask) => mask,
                None => adv.iter().map(|a| f64::from(u8::from(*a != 0.0))).collect(),
            };
            let first = mask.iter().position(|&m| m != 0.0).unwrap_or(0);
            if mask[first..].contains(&0.0) || first < consistent_from {
                return Err(fault(
                    "gspo's sequence_ratio_mask must cover one run of positions to the end, whose targets are the next input tokens".into(),
                ));
            }
            start = first;
        }
        if start >= n {
            return Err(fault(
                "the last target is not the next input token of any position".into(),
            ));
        }
        if let Some(t) = (0..start).find(|&t| adv[t] != 0.0) {
            return Err(fault(format!(
                "target_tokens[{t}] is not model_input[{}] but its weight or advantage is not 0: OpenRFT scores each next token, so the targets of weighted positions must be model_input shifted by one",
                t + 1
            )));
        }
        batch.push(Datum {
            prompt: tokens[..=start].to_vec(),
            completion: targets_u32[start..].to_vec(),
            sampling_logprobs: f32s(&old[start..]),
            advantages: f32s(&adv[start..]),
        });
        prefixes.push((start > 0).then(|| work::Prefix {
            datum: Datum {
                prompt: tokens[..1].to_vec(),
                completion: tokens[1..=start].to_vec(),
                sampling_logprobs: vec![0.0; start],
                advantages: vec![0.0; start],
            },
            foreign: foreign[..start].to_vec(),
        }));
    }
    Ok((batch, prefixes))
}

#[derive(Deserialize)]
struct OptimStep {
    model_id: String,
    #[serde(default)]
    seq_id: Option<i64>,
    #[serde(default, alias = "optim_params")]
    adam_params: Option<Value>,
    #[serde(default)]
    optimizer_params: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdamRequest {
    #[serde(default = "default_lr")]
    learning_rate: f64,
    #[serde(default = "default_beta1")]
    beta1: f64,
    #[serde(default = "default_beta2")]
    beta2: f64,
    #[serde(default = "default_eps")]
    eps: f64,
    #[serde(default)]
    weight_decay: f64,
    #[serde(default)]
    grad_clip_norm: f64,
}

fn default_lr() -> f64 {
    1e-4
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-12
}

async fn optim_step(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: OptimStep = body(value)?;
    if request.optimizer_params.is_some() {
        return Err(
            ApiError::bad_request("only AdamW steps are supported (adam_params)")
                .with_param("optimizer_params"),
        );
    }
    let adam: AdamRequest = match request.adam_params {
        Some(v) => parse_body(v).map_err(|e| e.with_param("adam_params"))?,
        None => parse_body(json!({}))?,
    };
    let ok = adam.learning_rate.is_finite()
        && adam.learning_rate >= 0.0
        && (0.0..1.0).contains(&adam.beta1)
        && (0.0..1.0).contains(&adam.beta2)
        && adam.eps.is_finite()
        && adam.eps >= 0.0
        && adam.weight_decay.is_finite()
        && adam.weight_decay >= 0.0
        && adam.grad_clip_norm.is_finite()
        && adam.grad_clip_norm >= 0.0;
    if !ok {
        return Err(ApiError::bad_request(
            "adam_params need learning_rate, eps, weight_decay, grad_clip_norm >= 0 and finite, and beta1, beta2 in [0, 1)",
        )
        .with_param("adam_params"));
    }
    let params = AdamParams {
        learning_rate: adam.learning_rate,
        beta1: adam.beta1,
        beta2: adam.beta2,
        eps: adam.eps,
        weight_decay: adam.weight_decay,
        grad_clip_norm: adam.grad_clip_norm,
    };
    let shared = tinker(&state);
    let request_id = submit(
        shared,
        &request.model_id,
        request.seq_id,
        ModelOp::OptimStep(params),
    )?;
    Ok(queued(&request_id, Some(&request.model_id)))
}

#[derive(Deserialize)]
struct SaveWeights {
    model_id: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    seq_id: Option<i64>,
    #[serde(default)]
    overwrite: bool,
}

/// A checkpoint path for a name the client gave (or one made up).
fn checkpoint(model_id: &str, kind: Kind, name: Option<&str>) -> Result<CheckpointPath, ApiError> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => crate::new_id("ckpt-"),
    };
    if !paths::valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "a checkpoint name is 1 to {} letters, digits, '.', '-' or '_', not starting with '.'",
            paths::MAX_NAME_CHARS
        ))
        .with_param("path"));
    }
    if !paths::valid_model_id(model_id) {
        return Err(ApiError::not_found("model", model_id).with_param("model_id"));
    }
    Ok(CheckpointPath {
        run: model_id.to_owned(),
        kind,
        name,
    })
}

async fn save_weights(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: SaveWeights = body(value)?;
    let path = checkpoint(&request.model_id, Kind::Weights, request.path.as_deref())?;
    let op = ModelOp::Save {
        path,
        with_optimizer: true,
        overwrite: request.overwrite,
        sampler: None,
    };
    let request_id = submit(tinker(&state), &request.model_id, request.seq_id, op)?;
    Ok(queued(&request_id, Some(&request.model_id)))
}

async fn save_weights_for_sampler(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: SaveWeights = body(value)?;
    let shared = tinker(&state);
    // Without a name: a snapshot for `save_weights_and_get_sampling_client`, opened as a
    // sampling session when saved.
    let (path, sampler) = match request.path.as_deref() {
        Some(name) => (
            checkpoint(&request.model_id, Kind::SamplerWeights, Some(name))?,
            None,
        ),
        None => {
            if shared.registry().samplers.len() >= MAX_SAMPLERS {
                return Err(too_many_samplers());
            }
            (
                checkpoint(
                    &request.model_id,
                    Kind::SamplerWeights,
                    Some(&crate::new_id("snapshot-")),
                )?,
                Some(crate::new_id("samp_")),
            )
        }
    };
    let op = ModelOp::Save {
        path,
        with_optimizer: false,
        overwrite: request.overwrite,
        sampler,
    };
    let request_id = submit(shared, &request.model_id, request.seq_id, op)?;
    Ok(queued(&request_id, Some(&request.model_id)))
}

fn too_many_samplers() -> ApiError {
    ApiError::busy(format!(
        "{MAX_SAMPLERS} sampling sessions are open; close a session to free them"
    ))
}

#[derive(Deserialize)]
struct LoadWeights {
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default)]
    seq_id: Option<i64>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    model_seq_id: Option<u32>,
    #[serde(default)]
    base_model: Option<String>,
    path: String,
    optimizer: bool,
    #[serde(default)]
    optimizer_config: Option<OptimizerConfig>,
}

/// The checkpoint a client named, which must exist and carry OpenRFT's metadata.
fn existing_checkpoint(
    shared: &Shared,
    uri: &str,
) -> Result<(CheckpointPath, PathBuf, ModelMeta), ApiError> {
    let path =
        CheckpointPath::parse(uri).map_err(|e| ApiError::bad_request(e).with_param("path"))?;
    let dir = path
        .dir(&shared.root)
        .map_err(|e| ApiError::bad_request(e).with_param("path"))?;
    let meta = work::read_meta(&dir)
        .filter(|_| dir.join("adapter_config.json").is_file())
        .ok_or_else(|| ApiError::not_found("checkpoint", uri).with_param("path"))?;
    Ok((path, dir, meta))
}

async fn load_weights(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: LoadWeights = body(value)?;
    check_optimizer(request.optimizer_config.as_ref())?;
    let shared = tinker(&state);
    let (path, _, meta) = existing_checkpoint(shared, &request.path)?;
    if request.optimizer && path.kind != Kind::Weights {
        return Err(ApiError::bad_request(
            "sampler weights hold no optimizer state: load them with optimizer=false",
        )
        .with_param("optimizer"));
    }
    match (request.model_id, request.session_id, request.model_seq_id) {
        (Some(model_id), None, _) => {
            let op = ModelOp::Load {
                path,
                optimizer: request.optimizer,
            };
            let request_id = submit(shared, &model_id, request.seq_id, op)?;
            Ok(queued(&request_id, Some(&model_id)))
        }
        (None, Some(session_id), Some(model_seq_id)) => {
            if request
                .base_model
                .as_deref()
                .is_some_and(|b| b != meta.base_model)
            {
                return Err(ApiError::bad_request(format!(
                    "the checkpoint was trained from '{}'",
                    meta.base_model
                ))
                .with_param("base_model"));
            }
            let (model_id, request_id) = open_model(
                shared,
                &session_id,
                model_seq_id,
                meta,
                0,
                Some((path, request.optimizer)),
            )?;
            Ok(queued(&request_id, Some(&model_id)))
        }
        _ => Err(ApiError::bad_request(
            "load_weights takes model_id (an existing model) or session_id with model_seq_id (a new one)",
        )),
    }
}

#[derive(Deserialize)]
struct WeightsInfo {
    tinker_path: String,
}

async fn weights_info(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: WeightsInfo = body(value)?;
    let (_, _, meta) = existing_checkpoint(tinker(&state), &request.tinker_path)
        .map_err(|e| e.with_param("tinker_path"))?;
    Ok(Json(meta.info()))
}

#[derive(Deserialize)]
struct CreateSampler {
    session_id: String,
    #[serde(default)]
    base_model: Option<String>,
    #[serde(default)]
    model_path: Option<String>,
}

/// What a sampler samples from: a base model or a checkpoint's adapter over its base.
fn sampler_target(
    shared: &Shared,
    base_model: Option<&str>,
    model_path: Option<&str>,
) -> Result<SamplerEntry, ApiError> {
    match (model_path, base_model) {
        (Some(uri), base) => {
            let (path, dir, meta) =
                existing_checkpoint(shared, uri).map_err(|e| e.with_param("model_path"))?;
            if base.is_some_and(|b| b != meta.base_model) {
                return Err(ApiError::bad_request(format!(
                    "the weights were trained from '{}'",
                    meta.base_model
                ))
                .with_param("base_model"));
            }
            Ok(SamplerEntry {
                session: None,
                base_model: meta.base_model,
                adapter: Some(dir),
                model_path: Some(path.uri()),
            })
        }
        (None, Some(base)) => {
            if shared.catalog.resolve(base).is_none() {
                return Err(ApiError::bad_request(format!(
                    "The model '{base}' is not served here."
                ))
                .with_param("base_model"));
            }
            Ok(SamplerEntry {
                session: None,
                base_model: base.to_owned(),
                adapter: None,
                model_path: None,
            })
        }
        (None, None) => Err(ApiError::bad_request("give base_model or model_path")),
    }
}

async fn create_sampling_session(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: CreateSampler = body(value)?;
    let shared = tinker(&state);
    let mut entry = sampler_target(
        shared,
        request.base_model.as_deref(),
        request.model_path.as_deref(),
    )?;
    let mut registry = shared.registry();
    if !registry.sessions.contains_key(&request.session_id) {
        return Err(gone("session"));
    }
    if registry.samplers.len() >= MAX_SAMPLERS {
        return Err(too_many_samplers());
    }
    entry.session = Some(request.session_id);
    let id = crate::new_id("samp_");
    registry.samplers.insert(id.clone(), entry);
    Ok(Json(
        json!({"type": "create_sampling_session", "sampling_session_id": id}),
    ))
}

async fn get_sampler(
    State(state): State<SharedState>,
    UrlPath(sampler_id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let shared = tinker(&state);
    let registry = shared.registry();
    let entry = registry
        .samplers
        .get(&sampler_id)
        .ok_or_else(|| ApiError::not_found("sampler", &sampler_id))?;
    Ok(Json(json!({
        "sampler_id": sampler_id,
        "base_model": entry.base_model,
        "model_path": entry.model_path,
    })))
}

#[derive(Deserialize)]
struct ModelInput {
    chunks: Vec<Value>,
}

#[derive(Deserialize)]
struct SamplingParamsRequest {
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default = "one")]
    temperature: f64,
    #[serde(default = "minus_one")]
    top_k: i64,
    #[serde(default = "one")]
    top_p: f64,
}

fn one() -> f64 {
    1.0
}
fn minus_one() -> i64 {
    -1
}

#[derive(Deserialize)]
struct AsampleRequest {
    #[serde(default = "one_sample")]
    num_samples: usize,
    prompt: ModelInput,
    sampling_params: SamplingParamsRequest,
    #[serde(default)]
    base_model: Option<String>,
    #[serde(default)]
    model_path: Option<String>,
    #[serde(default)]
    sampling_session_id: Option<String>,
    #[serde(default)]
    prompt_logprobs: Option<bool>,
    #[serde(default)]
    topk_prompt_logprobs: usize,
    #[serde(default)]
    topk_sample_logprobs: usize,
    #[serde(default)]
    target_prompt_logprobs: Option<Value>,
    #[serde(default)]
    prompt_alt_tokens_k: usize,
    #[serde(default)]
    prompt_logprobs_last_n: Option<usize>,
}

fn one_sample() -> usize {
    1
}

/// Text chunks' tokens (`{"type": "encoded_text", "tokens": [...]}`).
fn prompt_tokens(input: &ModelInput) -> Result<Vec<u32>, ApiError> {
    let mut tokens = Vec::new();
    for chunk in &input.chunks {
        let kind = chunk
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("encoded_text");
        if kind != "encoded_text" {
            return Err(ApiError::bad_request(format!(
                "'{kind}' chunks are not supported: OpenRFT serves text models"
            ))
            .with_param("prompt"));
        }
        let list = chunk
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ApiError::bad_request("a prompt chunk has no tokens").with_param("prompt")
            })?;
        for token in list {
            let id = token
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("prompt tokens are token ids").with_param("prompt")
                })?;
            tokens.push(id);
        }
    }
    Ok(tokens)
}

async fn asample(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let request: AsampleRequest = body(value)?;
    let unsupported = [
        (request.topk_prompt_logprobs > 0, "topk_prompt_logprobs"),
        (request.topk_sample_logprobs > 0, "topk_sample_logprobs"),
        (
            request.target_prompt_logprobs.is_some(),
            "target_prompt_logprobs",
        ),
        (request.prompt_alt_tokens_k > 0, "prompt_alt_tokens_k"),
        (
            request.prompt_logprobs_last_n.is_some(),
            "prompt_logprobs_last_n",
        ),
    ];
    if let Some((_, name)) = unsupported.iter().find(|(asked, _)| *asked) {
        return Err(
            ApiError::bad_request(format!("{name} is not supported by OpenRFT")).with_param(*name),
        );
    }
    if !(1..=MAX_NUM_SAMPLES).contains(&request.num_samples) {
        return Err(ApiError::bad_request(format!(
            "num_samples must be from 1 to {MAX_NUM_SAMPLES}"
        ))
        .with_param("num_samples"));
    }
    let shared = tinker(&state);
    let target = match &request.sampling_session_id {
        Some(id) => shared
            .registry()
            .samplers
            .get(id)
            .cloned()
            .ok_or_else(|| gone("sampling session"))?,
        None => sampler_target(
            shared,
            request.base_model.as_deref(),
            request.model_path.as_deref(),
        )?,
    };
    let spec = shared
        .catalog
        .resolve(&target.base_model)
        .ok_or_else(|| ApiError::bad_request("the sampler's base model is no longer served"))?;
    let prompt = prompt_tokens(&request.prompt)?;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty").with_param("prompt"));
    }
    let params = &request.sampling_params;
    let context = shared.context(&target.base_model);
    let room = context.saturating_sub(prompt.len());
    let max_tokens = params
        .max_tokens
        .unwrap_or_else(|| DEFAULT_SAMPLE_TOKENS.min(room));
    if max_tokens == 0 || max_tokens > MAX_SAMPLE_TOKENS || max_tokens > room {
        return Err(ApiError::bad_request(format!(
            "max_tokens must be from 1 to {} (at most {MAX_SAMPLE_TOKENS}, and prompt plus completion within the context of {context})",
            MAX_SAMPLE_TOKENS.min(room)
        ))
        .with_param("sampling_params.max_tokens"));
    }
    let sane = params.temperature.is_finite()
        && params.temperature >= 0.0
        && params.top_p > 0.0
        && params.top_p <= 1.0;
    if !sane {
        return Err(
            ApiError::bad_request("temperature must be >= 0 and top_p in (0, 1]")
                .with_param("sampling_params"),
        );
    }
    let (stop_ids, stop_strings, stop_at_eos) = match &params.stop {
        None | Some(Value::Null) => (Vec::new(), Vec::new(), true),
        Some(Value::String(s)) => (Vec::new(), vec![s.clone()], false),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => (
            Vec::new(),
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            false,
        ),
        Some(Value::Array(items)) => {
            let ids: Option<Vec<u32>> = items
                .iter()
                .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect();
            (
                ids.ok_or_else(|| {
                    ApiError::bad_request(
                        "stop is a string, a list of strings or a list of token ids",
                    )
                    .with_param("sampling_params.stop")
                })?,
                Vec::new(),
                false,
            )
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "stop is a string, a list of strings or a list of token ids",
            )
            .with_param("sampling_params.stop"));
        }
    };
    if stop_ids.len() + stop_strings.len() > 64
        || stop_strings.iter().any(|s| s.is_empty() || s.len() > 256)
    {
        return Err(
            ApiError::bad_request("at most 64 stops, each string 1 to 256 bytes")
                .with_param("sampling_params.stop"),
        );
    }
    let sampling = SamplingParams {
        temperature: params.temperature,
        top_p: params.top_p,
        top_k: usize::try_from(params.top_k).unwrap_or(0),
        max_tokens,
        stop_ids,
        stop_strings,
        seed: params.seed.unwrap_or_else(random_seed),
        cancel: None,
    };
    if shared.queued_samples.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_SAMPLES {
        shared.queued_samples.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::busy(format!(
            "{MAX_QUEUED_SAMPLES} sampling requests are waiting; retry shortly"
        )));
    }
    let request_id = match shared.futures.create() {
        Ok(id) => id,
        Err(e) => {
            shared.queued_samples.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    let job = SampleJob {
        request_id: request_id.clone(),
        spec,
        base_model: target.base_model.clone(),
        adapter: target.adapter.clone(),
        prompt,
        n: request.num_samples,
        params: sampling,
        stop_at_eos,
        prompt_logprobs: request.prompt_logprobs.unwrap_or(false),
    };
    let sent = shared
        .sampler_jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|jobs| jobs.send(job).is_ok());
    if !sent {
        shared.queued_samples.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::internal("the sampling thread has stopped"));
    }
    let ids: Vec<String> = (0..request.num_samples)
        .map(|i| format!("{request_id}:{i}"))
        .collect();
    Ok(Json(
        json!({"request_id": request_id, "sample_sequence_ids": ids}),
    ))
}

#[derive(Deserialize)]
struct RetrieveFuture {
    request_id: String,
}

async fn retrieve_future(
    State(state): State<SharedState>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: RetrieveFuture = body(value)?;
    let shared = tinker(&state).clone();
    let deadline = Instant::now() + LONG_POLL;
    loop {
        match shared.futures.get(&request.request_id) {
            None => return Err(ApiError::not_found("request", &request.request_id)),
            Some(Some(outcome)) => return Ok(outcome_response(outcome)),
            Some(None) if Instant::now() >= deadline => {
                return Ok(Json(json!({
                    "type": "try_again",
                    "request_id": request.request_id,
                    "queue_state": "active",
                }))
                .into_response());
            }
            Some(None) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn outcome_response(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Json(value) => Json(value).into_response(),
        Outcome::Proto(bytes) => {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], bytes).into_response()
        }
        Outcome::Failed { error, category } => {
            Json(json!({"error": error, "category": category})).into_response()
        }
    }
}

/// One checkpoint as Tinker lists it.
fn checkpoint_entry(path: &CheckpointPath, dir: &Path) -> Value {
    let modified = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let size: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    json!({
        "checkpoint_id": path.checkpoint_id(),
        "checkpoint_type": path.kind.checkpoint_type(),
        "time": modified,
        "tinker_path": path.uri(),
        "size_bytes": size,
        "public": false,
    })
}

/// A run's checkpoints, oldest first.
fn run_checkpoints(root: &Path, model_id: &str) -> Vec<Value> {
    let Ok(run) = paths::run_dir(root, model_id) else {
        return Vec::new();
    };
    if paths::check_no_links(root, &run).is_err() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for kind in [Kind::Weights, Kind::SamplerWeights] {
        let Ok(entries) = std::fs::read_dir(run.join(kind.segment())) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !paths::valid_name(&name) || name.starts_with("snapshot-") {
                continue;
            }
            let path = CheckpointPath {
                run: model_id.to_owned(),
                kind,
                name,
            };
            found.push(checkpoint_entry(&path, &entry.path()));
        }
    }
    found.sort_by_key(|c| c["time"].as_u64().unwrap_or(0));
    found
}

async fn list_checkpoints(
    State(state): State<SharedState>,
    UrlPath(model_id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !paths::valid_model_id(&model_id) {
        return Err(ApiError::not_found("training run", &model_id));
    }
    let root = tinker(&state).root.clone();
    let checkpoints = tokio::task::spawn_blocking(move || run_checkpoints(&root, &model_id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({"checkpoints": checkpoints})))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    offset: Option<usize>,
}

async fn list_all_checkpoints(
    State(state): State<SharedState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let offset = page.offset.unwrap_or(0);
    let root = tinker(&state).root.clone();
    let all = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let runs = root.join("runs");
        if paths::check_no_links(&root, &runs).is_err() {
            return all;
        }
        for entry in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
            if let Some(id) = entry.file_name().to_str().and_then(paths::model_id_of) {
                all.extend(run_checkpoints(&root, &id));
            }
        }
        all.sort_by_key(|c| std::cmp::Reverse(c["time"].as_u64().unwrap_or(0)));
        all
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let total = all.len();
    let checkpoints: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    Ok(Json(json!({
        "checkpoints": checkpoints,
        "cursor": {"offset": offset, "limit": limit, "total_count": total},
    })))
}

async fn delete_checkpoint(
    State(state): State<SharedState>,
    UrlPath((model_id, kind, name)): UrlPath<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let uri = format!("tinker://{model_id}/{kind}/{name}");
    let shared = tinker(&state);
    let (_, dir, _) = existing_checkpoint(shared, &uri)?;
    std::fs::remove_dir_all(&dir)
        .map_err(|e| ApiError::internal(format!("cannot delete the checkpoint: {e}")))?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(tokens: &[u32], inputs: &[(&str, proto::Tensor)]) -> proto::Datum {
        proto::Datum {
            model_input: vec![proto::Chunk {
                chunk: Some(proto::ChunkKind::EncodedText(proto::EncodedTextChunk {
                    tokens: proto::i32_bytes(tokens),
                })),
            }],
            loss_fn_inputs: inputs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn ints(values: &[i64]) -> proto::Tensor {
        proto::Tensor {
            encoding: Some(proto::Encoding::Dense(proto::i64_bytes(values))),
            dtype: proto::DType::Int64 as i32,
            shape: vec![values.len() as i64],
        }
    }

    fn floats(values: &[f32]) -> proto::Tensor {
        proto::Tensor {
            encoding: Some(proto::Encoding::Dense(proto::f32_bytes(values))),
            dtype: proto::DType::Float32 as i32,
            shape: vec![values.len() as i64],
        }
    }

    #[test]
    fn datums_map_to_next_token_sequences() {
        let d = datum(
            &[5, 6, 7],
            &[
                ("target_tokens", ints(&[6, 7, 8])),
                ("weights", floats(&[0.0, 1.0, 1.0])),
            ],
        );
        let (batch, prefixes) = convert_data(&[d], &LossFn::CrossEntropy, 100).unwrap();
        assert_eq!(batch[0].prompt, vec![5]);
        assert_eq!(batch[0].completion, vec![6, 7, 8]);
        assert_eq!(batch[0].advantages, vec![0.0, 1.0, 1.0]);
        assert!(prefixes[0].is_none());
    }

    #[test]
    fn gspo_scores_from_its_mask() {
        let d = datum(
            &[5, 6, 7, 8],
            &[
                ("target_tokens", ints(&[6, 7, 8, 9])),
                ("logprobs", floats(&[0.0, 0.0, -1.0, -2.0])),
                ("advantages", floats(&[0.0, 0.0, 1.0, 1.0])),
            ],
        );
        let gspo = LossFn::Gspo {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
        };
        let (batch, prefixes) = convert_data(&[d], &gspo, 100).unwrap();
        assert_eq!(batch[0].prompt, vec![5, 6, 7]);
        assert_eq!(batch[0].completion, vec![8, 9]);
        assert_eq!(batch[0].sampling_logprobs, vec![-1.0, -2.0]);
        let prefix = prefixes[0].as_ref().unwrap();
        assert_eq!(prefix.datum.completion, vec![6, 7]);
    }

    #[test]
    fn malformed_datums_are_refused() {
        let ce = LossFn::CrossEntropy;
        // Targets that are not the input shifted by one, at a weighted position.
        let d = datum(&[5, 6, 7], &[("target_tokens", ints(&[6, 9, 8]))]);
        assert!(convert_data(&[d], &ce, 100).is_err());
        // ...but padding at positions that weigh nothing is fine (the cookbook's RL datums).
        let d = datum(
            &[5, 6, 7],
            &[
                ("target_tokens", ints(&[0, 0, 8])),
                ("weights", floats(&[0.0, 0.0, 1.0])),
            ],
        );
        let (batch, prefixes) = convert_data(&[d], &ce, 100).unwrap();
        assert_eq!(batch[0].prompt, vec![5, 6, 7]);
        assert_eq!(batch[0].completion, vec![8]);
        assert_eq!(prefixes[0].as_ref().unwrap().foreign, vec![true, true]);
        // Lengths that disagree.
        let d = datum(&[5, 6, 7], &[("target_tokens", ints(&[6, 7]))]);
        assert!(convert_data(&[d], &ce, 100).is_err());
        // An input the loss does not take.
        let d = datum(
            &[5, 6],
            &[
                ("target_tokens", ints(&[6, 7])),
                ("advantages", floats(&[1.0, 1.0])),
            ],
        );
        assert!(convert_data(&[d], &ce, 100).is_err());
        // RL losses need their inputs.
        let d = datum(&[5, 6], &[("target_tokens", ints(&[6, 7]))]);
        assert!(convert_data(&[d], &LossFn::ImportanceSampling, 100).is_err());
        // Negative and non-finite values.
        let d = datum(&[5, 6], &[("target_tokens", ints(&[6, -1]))]);
        assert!(convert_data(&[d], &ce, 100).is_err());
        let d = datum(
            &[5, 6],
            &[
                ("target_tokens", ints(&[6, 7])),
                ("weights", floats(&[1.0, f32::NAN])),
            ],
        );
        assert!(convert_data(&[d], &ce, 100).is_err());
        // Longer than the context.
        let d = datum(&[5; 10], &[("target_tokens", ints(&[5; 10]))]);
        assert!(convert_data(&[d], &ce, 10).is_err());
        // No datums, and too many.
        assert!(convert_data(&[], &ce, 100).is_err());
        let d = datum(&[5, 5], &[("target_tokens", ints(&[5, 5]))]);
        let many = vec![d; MAX_DATUMS + 1];
        assert!(convert_data(&many, &ce, 100).is_err());
    }

    #[test]
    fn zstd_bodies_are_capped_while_decompressing() {
        // 80 MiB of zeros compresses to a few KiB: refused once the cap is passed.
        let bomb = ruzstd::encoding::compress_to_vec(
            &vec![0u8; MAX_DECOMPRESSED_BYTES + (16 << 20)][..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "zstd".parse().unwrap());
        let err = decode_body(&headers, &Bytes::from(bomb)).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        // A good body round-trips through zstd.
        let request = proto::ForwardBackwardRequest {
            model_id: "m".into(),
            seq_id: 1,
            loss_fn: "cross_entropy".into(),
            ..Default::default()
        };
        let packed = ruzstd::encoding::compress_to_vec(
            &request.encode_to_vec()[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(
            decode_body(&headers, &Bytes::from(packed)).unwrap(),
            request
        );
        // Garbage is a 400, not a panic.
        assert_eq!(
            decode_body(&headers, &Bytes::from_static(b"not zstd"))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        headers.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(decode_body(&headers, &Bytes::new()).is_err());
    }

    #[test]
    fn loss_settings_are_checked() {
        let mut request = proto::ForwardBackwardRequest {
            loss_fn: "ppo".into(),
            ..Default::default()
        };
        request
            .loss_fn_config
            .insert("clip_low_threshold".into(), 0.9);
        request
            .loss_fn_config
            .insert("clip_high_threshold".into(), 1.1);
        match loss_fn(&request).unwrap() {
            LossFn::Ppo {
                epsilon_low,
                epsilon_high,
            } => {
                assert!((epsilon_low - 0.1).abs() < 1e-12);
                assert!((epsilon_high - 0.1).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        request.loss_fn_config.insert("beta".into(), 1.0);
        assert!(loss_fn(&request).is_err());
        request.loss_fn = "stable_reinforce".into();
        assert!(loss_fn(&request).is_err());
    }
}
