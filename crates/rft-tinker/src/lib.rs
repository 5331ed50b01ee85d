//! A Tinker-compatible training API under `/api/v1`, so the `tinker` Python SDK (and the
//! cookbook's loops on top of it) run against `rft serve` with `TINKER_BASE_URL` pointing there.
//! `docs/tinker.md` says what is served and what is not. `rft-server` mounts [`Tinker::routes`]
//! behind its own auth, admission and panic catching; this crate is the API alone.
//!
//! The SDK's protocol: every mutating call answers `{request_id}` at once and the client
//! long-polls `POST /retrieve_future` for the result ([`futures`]); `forward_backward` bodies
//! and the results of `forward_backward` and `asample` are protobuf ([`proto`]); a training
//! model's requests carry consecutive `seq_id`s and run in that order on the model's own
//! thread ([`model_thread`]), over `rft_train::primitives::TrainingClient`; sampling requests
//! run on one sampling thread ([`sampling`]); `tinker://` checkpoint paths map into the data
//! folder ([`paths`]).
//!
//! Where the code is, by concern: [`wire`] the JSON shapes, [`error`] the refusals,
//! [`sessions`] sessions and the registry of models and samplers, [`training`] training models
//! and `forward_backward`, [`checkpoints`] saving, loading and listing them, [`sampling`]
//! samplers and `asample`.
//!
//! Models come from the process's [`EngineHost`]: a training model borrows its base model's
//! weights (one copy for every client of the same base, and for chat and jobs beside them), and
//! a sampler's merged snapshot is counted in the same memory budget.
//!
//! Everything belongs to the API key that made it ([`Owner`]): sessions, models, samplers,
//! futures and checkpoints; another key gets 404 for them and never sees them listed.
//! Everything a client controls is bounded: sessions, live training models, sampling sessions,
//! futures per key, long-polls, request bodies (the zstd-decompressed size is capped while
//! decompressing), datums and tokens per request, tensor shapes (checked against the datum
//! before anything is allocated), samples and sampled tokens, and the batches the sampling
//! thread runs. The limits are constants here, listed in `docs/security.md`.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod error;
pub mod futures;
mod model_thread;
mod paths;
pub mod proto;
pub mod sampling;
pub mod sessions;
pub mod training;
pub mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use rft_model::host::EngineHost;
use rft_model::request::SamplingLimits;

pub use error::TinkerError;
use futures::{Futures, Lookup, Outcome};
use sessions::Registry;

/// Most sessions open at once.
pub const MAX_SESSIONS: usize = 64;
/// Most training models at once: the open ones, and closed ones still finishing a request
/// (each holds a LoRA, AdamW state and its training buffers; the base weights are the host's).
pub const MAX_MODELS: usize = 4;
/// Most sampling sessions at once.
pub const MAX_SAMPLERS: usize = 256;
/// A session without a heartbeat for this long is closed and its models unloaded.
pub const SESSION_IDLE: Duration = Duration::from_secs(10 * 60);
/// Largest `forward_backward` body after zstd decompression.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// Most datums in one `forward_backward` request.
pub const MAX_DATUMS: usize = 1024;
/// Most tokens over all datums of one `forward_backward` request.
pub const MAX_REQUEST_TOKENS: usize = 262_144;
/// Most samples one `asample` asks for.
pub const MAX_NUM_SAMPLES: usize = 128;
/// Most new tokens per sample.
pub const MAX_SAMPLE_TOKENS: usize = 4096;
/// Most new tokens over all samples of one `asample` (`num_samples × max_tokens`), as chat.
pub const MAX_SAMPLED_TOKENS: usize = 65_536;
/// `max_tokens` when the client sends none (within the context and the total).
pub const DEFAULT_SAMPLE_TOKENS: usize = 1024;
/// Sampling requests waiting for the sampling thread before new ones get 429.
pub const MAX_QUEUED_SAMPLES: usize = 1024;
/// Largest LoRA rank.
pub const MAX_LORA_RANK: usize = 128;
/// `retrieve_future` calls waiting at once; past it a poll answers at once (429 with
/// `Retry-After` while its future runs), so long-polls never hold the server's request slots.
pub const MAX_LONG_POLLS: usize = 256;
/// Largest `retrieve_future` body (it names one request id).
pub const MAX_POLL_BODY: usize = 4096;
/// The context length assumed for a base model not loaded yet.
const ASSUMED_CONTEXT: usize = 8192;
/// How long `retrieve_future` holds a request open before answering `try_again` (the SDK
/// waits 45 s).
const LONG_POLL: Duration = Duration::from_secs(20);

/// Who made a Tinker object: a SHA-256 fingerprint of the API key that called (the key itself
/// is never stored), or the machine's own users on a server without keys. The server's auth
/// puts one in every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    /// The owner of calls made with `key`.
    pub fn of_key(key: &str) -> Owner {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("openrft-tinker-owner\0{key}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Owner(hex)
    }

    /// The owner of every call on a server without keys.
    pub fn local() -> Owner {
        Owner("local".into())
    }

    /// The fingerprint as stored beside a run's checkpoints.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_stored(text: &str) -> Owner {
        Owner(text.trim().to_owned())
    }
}

/// Where a call came from, as the server's auth saw it: whether a tokenizer path on this
/// machine means anything to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClient(pub bool);

/// The base models clients may name (the server's allow list): names are never paths.
pub trait ModelNames: Send + Sync + std::fmt::Debug {
    /// The spec the engine host loads for `name`, or `None` when clients may not name it.
    fn resolve(&self, name: &str) -> Option<String>;
    /// Every name, for `get_server_capabilities`.
    fn names(&self) -> Vec<String>;
}

/// How the API runs.
#[derive(Debug, Clone)]
pub struct TinkerConfig {
    /// `<data>/tinker`: checkpoints, exported tokenizers.
    pub root: PathBuf,
    /// The base models clients may name.
    pub models: Arc<dyn ModelNames>,
    /// Where models come from.
    pub host: Arc<EngineHost>,
    /// Bytes one sampling batch may take beyond the weights
    /// (`rft_model::host::plan_batches`).
    pub batch_bytes: u64,
}

/// What handlers and worker threads share.
pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    pub(crate) models: Arc<dyn ModelNames>,
    pub(crate) host: Arc<EngineHost>,
    pub(crate) batch_bytes: u64,
    pub(crate) futures: Futures,
    registry: Mutex<Registry>,
    pub(crate) queued_samples: AtomicUsize,
    /// Closed models whose thread is still finishing a request (they count against
    /// [`MAX_MODELS`] beside the open ones).
    pub(crate) closing: AtomicUsize,
    sampler_jobs: Mutex<Option<Sender<sampling::SampleJob>>>,
    long_polls: Arc<tokio::sync::Semaphore>,
    /// Context lengths of the base models loaded so far, by name.
    contexts: Mutex<HashMap<String, usize>>,
    pub(crate) limits: SamplingLimits,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("root", &self.root).finish()
    }
}

impl Shared {
    pub(crate) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The context length of a base model: what its configuration says once it has been
    /// loaded, [`ASSUMED_CONTEXT`] before (the worker checks again with the real one).
    pub(crate) fn context(&self, base_model: &str) -> usize {
        self.known_context(base_model).unwrap_or(ASSUMED_CONTEXT)
    }

    fn known_context(&self, base_model: &str) -> Option<usize> {
        self.contexts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(base_model)
            .copied()
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
}

/// The Tinker API's state, shared by its handlers and threads.
#[derive(Debug, Clone)]
pub struct Tinker {
    shared: Arc<Shared>,
}

impl Tinker {
    /// The API over `config.root`, with its sampling thread started.
    pub fn start(config: TinkerConfig) -> Tinker {
        let shared = Arc::new(Shared {
            root: config.root,
            models: config.models,
            host: config.host,
            batch_bytes: config.batch_bytes,
            futures: Futures::default(),
            registry: Mutex::new(Registry::default()),
            queued_samples: AtomicUsize::new(0),
            closing: AtomicUsize::new(0),
            sampler_jobs: Mutex::new(None),
            long_polls: Arc::new(tokio::sync::Semaphore::new(MAX_LONG_POLLS)),
            contexts: Mutex::new(HashMap::new()),
            limits: SamplingLimits {
                max_n: MAX_NUM_SAMPLES,
                max_tokens: MAX_SAMPLE_TOKENS,
                max_total_tokens: MAX_SAMPLED_TOKENS,
                max_temperature: f64::MAX,
                ..SamplingLimits::default()
            },
        });
        let (send, receive) = std::sync::mpsc::channel();
        match sampling::start_sampler(shared.clone(), receive) {
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

    /// The routes, to be nested under `/api/v1`. Every request needs an [`Owner`] extension
    /// (the server's auth adds it) and may carry a [`LocalClient`].
    pub fn routes(&self) -> Router {
        let mut router = Router::new();
        for route in ROUTES {
            let mut method = (route.handler)();
            if route.path == "/retrieve_future" {
                // Long-polls skip the server's request slots: their bodies are held to a few
                // KiB so that a crowd of them cannot buffer large bodies either.
                method = method.layer(axum::extract::DefaultBodyLimit::max(MAX_POLL_BODY));
            }
            router = router.route(route.path, method);
        }
        router.with_state(self.shared.clone())
    }
}

/// One route of the API: what `/openapi.json` lists and what [`Tinker::routes`] serves.
#[derive(Debug)]
pub struct Route {
    /// `get`, `post` or `delete`.
    pub method: &'static str,
    /// The path under `/api/v1`.
    pub path: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    handler: fn() -> axum::routing::MethodRouter<Arc<Shared>>,
}

macro_rules! routes {
    ($( $method:ident $path:literal => $handler:path, $summary:literal; )*) => {
        /// Every route of the API, under `/api/v1`.
        pub const ROUTES: &[Route] = &[
            $( Route {
                method: stringify!($method),
                path: $path,
                summary: $summary,
                handler: || $method($handler),
            }, )*
        ];
    };
}

routes! {
    get "/healthz" => sessions::healthz, "Health check";
    post "/client/config" => sessions::client_config, "The SDK's feature flags";
    post "/client/dynamic_config" => sessions::client_dynamic_config, "The SDK's refreshed settings";
    get "/get_server_capabilities" => sessions::capabilities, "The base models served";
    post "/create_session" => sessions::create_session, "Open a session";
    post "/session_heartbeat" => sessions::session_heartbeat, "Keep a session open";
    post "/sessions/{session_id}/finish" => sessions::finish_session, "Close a session, its models and samplers";
    post "/telemetry" => sessions::telemetry, "Accepted and dropped";
    post "/create_model" => training::create_model, "Create a LoRA training model (future)";
    post "/get_info" => training::get_info, "A training model's base, rank and tokenizer";
    post "/forward_backward" => training::forward_backward, "Loss, log-probs and gradients of datums (protobuf; future)";
    post "/forward" => training::forward, "Loss and log-probs of datums, no gradient (protobuf; future)";
    post "/optim_step" => training::optim_step, "An AdamW step (future)";
    post "/save_weights" => checkpoints::save_weights, "Save adapter and optimizer state (future)";
    post "/save_weights_for_sampler" => checkpoints::save_weights_for_sampler, "Save the adapter for sampling (future)";
    post "/load_weights" => checkpoints::load_weights, "Load a checkpoint into a model (future)";
    post "/weights_info" => checkpoints::weights_info, "What a checkpoint was trained from";
    post "/create_sampling_session" => sampling::create_sampling_session, "Open a sampler over a base model or checkpoint";
    get "/samplers/{sampler_id}" => sampling::get_sampler, "A sampler's base model and checkpoint";
    post "/asample" => sampling::asample, "Sample completions of a token prompt (future; protobuf result)";
    post "/retrieve_future" => retrieve_future, "Long-poll a future's result";
    get "/checkpoints" => checkpoints::list_all_checkpoints, "Every checkpoint of this key, newest first";
    get "/training_runs/{model_id}/checkpoints" => checkpoints::list_checkpoints, "A run's checkpoints";
    delete "/training_runs/{model_id}/checkpoints/{kind}/{name}" => checkpoints::delete_checkpoint, "Delete a checkpoint";
}

async fn retrieve_future(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    error::TinkerJson(request): error::TinkerJson<wire::RetrieveFuture>,
) -> Result<Response, TinkerError> {
    // A poll waits only while it holds one of the long-poll permits; past them it answers at
    // once.
    let permit = shared.long_polls.clone().try_acquire_owned().ok();
    let deadline = Instant::now()
        + if permit.is_some() {
            LONG_POLL
        } else {
            Duration::ZERO
        };
    loop {
        match shared.futures.get(&owner, &request.request_id) {
            Lookup::Unknown => {
                return Err(
                    TinkerError::not_found("request", &request.request_id).with_param("request_id")
                )
            }
            Lookup::Done(outcome) => return Ok(outcome_response(outcome)),
            Lookup::Pending if permit.is_none() => {
                return Err(TinkerError::Busy(format!(
                    "{MAX_LONG_POLLS} requests are waiting on results already; poll again shortly"
                )))
            }
            Lookup::Pending if Instant::now() >= deadline => {
                return Ok(Json(wire::TryAgain {
                    kind: "try_again",
                    request_id: request.request_id,
                    queue_state: "active",
                })
                .into_response());
            }
            Lookup::Pending => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn outcome_response(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Json(value) => Json(value).into_response(),
        Outcome::Proto(bytes) => {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], bytes).into_response()
        }
        Outcome::Failed { error, category } => Json(wire::FailedFuture {
            error: &error,
            category,
        })
        .into_response(),
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
