//! `rft serve`: OpenAI's fine-tuning, graders, files, models and chat-completions API over
//! OpenRFT's engine, trainer and store, so code written for OpenAI's SDK runs by changing
//! `base_url`. Choices where the spec is silent are documented in `docs/api.md`.
//!
//! One process: the axum API on tokio; a job scheduler thread running training jobs one at a
//! time ([`jobs`]); an inference thread batching chat requests over loaded models and adapters
//! ([`inference`]); SQLite and a data folder for everything durable ([`rft_store`]).

pub mod error;
pub mod files;
pub mod graders;
pub mod inference;
pub mod jobs;
pub mod models;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rft_store::Store;
use serde_json::{json, Value};

pub use error::ApiError;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data folder (database, files, jobs).
    pub data_dir: PathBuf,
    /// Accepted bearer keys; empty means no auth (then only loopback binding is allowed).
    pub api_keys: Vec<String>,
    /// Largest file upload, bytes (OpenAI: 512 MB).
    pub max_upload_bytes: usize,
    /// Largest JSON body, bytes.
    pub max_body_bytes: usize,
    /// Chat requests waiting for the inference thread before new ones get 429.
    pub inference_queue: usize,
    /// The model `rft serve` lists as its base model.
    pub default_model: String,
}

impl ServerConfig {
    /// Defaults for a data folder.
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            api_keys: Vec::new(),
            max_upload_bytes: 512 * 1024 * 1024,
            max_body_bytes: 32 * 1024 * 1024,
            inference_queue: 256,
            default_model: rft_model::hub::SMOLLM2_135M_INSTRUCT.name.to_owned(),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The configuration.
    pub config: ServerConfig,
    /// The database and data folder.
    pub store: Arc<Store>,
    /// The training scheduler.
    pub scheduler: jobs::Scheduler,
    /// The inference thread.
    pub inference: inference::Inference,
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fresh id: `prefix` + 24 hex digits, unpredictable (std's randomly keyed SipHash over the
/// clock and a counter) so ids cannot be guessed or collide across restarts.
pub fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    let word = |salt: u64| {
        let mut h = state.build_hasher();
        h.write_u128(nanos);
        h.write_u64(count);
        h.write_u64(salt);
        h.finish()
    };
    let (a, b) = (word(1), word(2));
    format!("{prefix}{a:016x}{:08x}", b >> 32)
}

/// A cursor list: `{object: "list", data, has_more, first_id, last_id}`.
pub fn list_body(page: rft_store::Page) -> Value {
    let first = page
        .data
        .first()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    let last = page
        .data
        .last()
        .and_then(|v| v["id"].as_str().map(str::to_owned));
    json!({"object": "list", "data": page.data, "has_more": page.has_more,
           "first_id": first, "last_id": last})
}

/// Parses a `limit` query value within `1..=max`.
pub fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match raw {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(
                ApiError::bad_request(format!("limit must be an integer from 1 to {max}"))
                    .with_param("limit"),
            ),
        },
    }
}

/// The whole API under `/v1`.
pub fn router(state: SharedState) -> Router {
    let uploads = Router::new()
        .route("/v1/files", post(files::upload).get(files::list))
        .layer(DefaultBodyLimit::max(state.config.max_upload_bytes));
    let api = Router::new()
        .route(
            "/v1/files/{file_id}",
            get(files::retrieve).delete(files::delete),
        )
        .route("/v1/files/{file_id}/content", get(files::content))
        .route("/v1/fine_tuning/alpha/graders/run", post(graders::run))
        .route(
            "/v1/fine_tuning/alpha/graders/validate",
            post(graders::validate),
        )
        .route("/v1/fine_tuning/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/fine_tuning/jobs/{job_id}", get(jobs::retrieve))
        .route("/v1/fine_tuning/jobs/{job_id}/cancel", post(jobs::cancel))
        .route("/v1/fine_tuning/jobs/{job_id}/pause", post(jobs::pause))
        .route("/v1/fine_tuning/jobs/{job_id}/resume", post(jobs::resume))
        .route("/v1/fine_tuning/jobs/{job_id}/events", get(jobs::events))
        .route(
            "/v1/fine_tuning/jobs/{job_id}/checkpoints",
            get(jobs::checkpoints),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{model}", get(models::retrieve))
        .route("/v1/chat/completions", post(inference::chat_completions))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes));
    Router::new()
        .merge(uploads)
        .merge(api)
        .fallback(|| async { ApiError::new_not_found_route().into_response() })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

impl ApiError {
    fn new_not_found_route() -> ApiError {
        ApiError {
            status: axum::http::StatusCode::NOT_FOUND,
            message: "Unknown route. OpenRFT serves OpenAI's API under /v1 (see docs/api.md)."
                .into(),
            param: None,
            code: Some("unknown_url".into()),
        }
    }
}

/// With API keys configured, every request needs `Authorization: Bearer <key>`.
async fn auth(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    if state.config.api_keys.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(key) if state.config.api_keys.iter().any(|k| k == key) => next.run(request).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send `Authorization: Bearer <key>` (keys are set with RFT_API_KEYS or --api-key).",
        )
        .into_response(),
    }
}

/// Opens the store, recovers interrupted jobs, starts the scheduler and inference threads,
/// and serves on `addr` until SIGTERM or Ctrl-C; then pauses the running job at a step
/// boundary (checkpointed, requeued for the next start) and returns.
pub async fn serve(config: ServerConfig, addr: SocketAddr) -> Result<(), ServeError> {
    if config.api_keys.is_empty() && !addr.ip().is_loopback() {
        return Err(ServeError::Insecure(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_on(config, listener, shutdown_signal()).await
}

/// [`serve`] on a bound listener, until `shutdown` completes (tests bind port 0 and pass their
/// own signal).
pub async fn serve_on(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let store = Arc::new(Store::open(&config.data_dir)?);
    let scheduler = jobs::Scheduler::start(store.clone())?;
    let inference = inference::Inference::start(store.clone(), config.inference_queue);
    let state = Arc::new(AppState {
        config,
        store,
        scheduler,
        inference,
    });
    let local = addr;
    if state.config.api_keys.is_empty() {
        tracing::warn!(
            "no API keys set (RFT_API_KEYS / --api-key): serving without auth, on loopback only"
        );
    }
    tracing::info!(
        "OpenRFT API on http://{local}/v1 (data in {})",
        state.config.data_dir.display()
    );
    eprintln!("listening on http://{local}/v1");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!("shutting down: pausing the running job at its next step boundary");
    let scheduler = &state.scheduler;
    tokio::task::block_in_place(|| scheduler.shutdown());
    Ok(())
}

/// Runs [`serve`] on a runtime of its own (for the `rft serve` command).
pub fn serve_blocking(config: ServerConfig, addr: SocketAddr) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rft-http")
        .build()
        .map_err(|e| ServeError::Thread("HTTP runtime", e))?;
    runtime.block_on(serve(config, addr))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] rft_store::StoreError),
    /// The address could not be bound or served.
    #[error("cannot serve on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// No API key and a non-loopback address.
    #[error("refusing to serve on {0} without authentication: set RFT_API_KEYS (or --api-key), or bind to 127.0.0.1")]
    Insecure(SocketAddr),
    /// A background thread could not start.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}
