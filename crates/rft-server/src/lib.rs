//! `rft serve`: OpenAI's fine-tuning, graders, files, models and chat-completions API over
//! OpenRFT's engine, trainer and store, so code written for OpenAI's SDK runs by changing
//! `base_url`. Choices where the spec is silent are documented in `docs/api.md`.
//!
//! One process: the axum API on tokio; a job scheduler thread running training jobs one at a
//! time ([`jobs`]); an inference thread batching chat requests ([`inference`]); the Tinker
//! API (`rft_tinker`, mounted under `/api/v1`); one engine host lending every one of them its
//! models under one memory budget (`rft_model::host::EngineHost`); SQLite and a data folder
//! for everything durable ([`rft_store`]).
#![forbid(unsafe_code)]

mod adapters;
mod catalog;
mod completions;
mod dashboard;
mod error;
mod evals;
mod files;
mod graders;
mod inference;
mod job_storage;
mod jobs;
#[cfg(feature = "loadtest")]
pub mod loadtest;
mod models;
mod openapi;
mod scheduler;

pub use scheduler::{run_worker, run_worker_until, WorkerSettings};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rft_store::Store;
use serde_json::Value;

use error::ApiError;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The data folder (SQLite's database, files, jobs; with PostgreSQL and S3, the local
    /// working copy of what this process uses).
    pub data_dir: PathBuf,
    /// The database: `None` for SQLite in the data folder, or a `postgres://` URL
    /// (`--database`, `RFT_DATABASE_URL`).
    pub database: Option<String>,
    /// The blob store: `None` for the data folder, or `s3://bucket/prefix` (`--blobs`).
    pub blobs: Option<String>,
    /// Whether this process runs jobs (`rft serve`'s default); `false`: an API process only,
    /// with `rft worker` processes running the jobs.
    pub run_jobs: bool,
    /// How long a worker's claim on a job lasts without a heartbeat.
    pub lease: std::time::Duration,
    /// Whether this process serves the HTTP API (`false`: `rft worker`).
    pub serves_api: bool,
    /// Accepted bearer keys; empty means no auth (then only loopback binding is allowed).
    pub api_keys: Vec<String>,
    /// Largest file upload, bytes (OpenAI: 512 MB).
    pub max_upload_bytes: usize,
    /// Chat requests waiting for the inference thread before new ones get 429.
    pub inference_queue: usize,
    /// The model `rft serve` lists as its base model.
    pub default_model: String,
    /// The other base models clients may name (`--model`): a hub name, a path, or
    /// `NAME=PATH` to serve a path under a name. Nothing else on disk can be named; see
    /// [`catalog`].
    pub models: Vec<String>,
    /// Memory every model of the process together may take (base models, merged adapters:
    /// `rft_model::host::EngineHost`) before the least recently used one nobody uses is
    /// dropped; a load that cannot fit beside the models in use gets 503.
    pub max_loaded_model_bytes: u64,
    /// Bytes one sampling batch may take beyond the weights (attention scores and KV cache);
    /// waiting requests are split into runs that fit.
    pub max_batch_bytes: u64,
    /// The device every model runs on (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
    /// The folder `/v1/load_lora_adapter` may load adapters from (and nothing outside it);
    /// `None` turns those endpoints off.
    pub adapter_root: Option<PathBuf>,
    /// Adapters loaded by name at once; past it the least recently used is unloaded.
    pub max_lora_adapters: usize,
    /// The rollout fleet jobs sample on (vLLM or `rft serve --adapter-root` workers); `None`
    /// samples in this process. OpenAI's job body has no field for it: it is the server's.
    pub rollout: Option<RolloutSettings>,
    /// Most completion tokens one chat request may ask for (`n × max_tokens`).
    pub max_request_tokens: usize,
    /// Requests handled at once; more get 429 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// `graders/run` calls grading at once; more get 429.
    pub max_concurrent_grades: usize,
    /// Eval runs waiting for a runner; more get 429.
    pub eval_run_queue: usize,
    /// Threads running eval runs.
    pub eval_runners: usize,
    /// Host names accepted in `Host` besides loopback ones, when no API keys are set.
    pub allowed_hosts: Vec<String>,
}

impl ServerConfig {
    /// Defaults for a data folder.
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            database: None,
            blobs: None,
            run_jobs: true,
            lease: std::time::Duration::from_secs(30),
            serves_api: true,
            api_keys: Vec::new(),
            max_upload_bytes: 512 * 1024 * 1024,
            inference_queue: 256,
            default_model: rft_model::hub::SMOLLM2_135M_INSTRUCT.name.to_owned(),
            models: Vec::new(),
            max_loaded_model_bytes: 8 << 30,
            max_batch_bytes: rft_model::host::DEFAULT_BATCH_BYTES,
            device: "cpu".to_owned(),
            adapter_root: None,
            max_lora_adapters: 64,
            rollout: None,
            max_request_tokens: 65_536,
            max_concurrent_requests: 512,
            max_concurrent_grades: 2 * cores(),
            eval_run_queue: 64,
            eval_runners: 2,
            allowed_hosts: Vec::new(),
        }
    }
}

/// A rollout fleet: where completions are sampled, where adapters are published, and the
/// folder every replica reads them from (`docs/scale-out.md`).
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// Completions base URLs (replicas or a router).
    pub urls: Vec<String>,
    /// Every replica's admin base URL (adapters are loaded on each); `urls` when empty.
    pub admin_urls: Vec<String>,
    /// The shared folder adapters are written to; `None`: they go through the blob store
    /// (`--blobs s3://…`, which the replicas are started with too) as `blob:adapters/<name>`.
    pub adapter_dir: Option<PathBuf>,
    /// The replicas' API key.
    pub api_key: Option<String>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The configuration.
    pub(crate) config: ServerConfig,
    /// The database and data folder.
    pub(crate) store: Arc<Store>,
    /// Where files, checkpoints and adapters are kept.
    pub(crate) blobs: rft_store::blobs::Blobs,
    /// The training scheduler.
    pub(crate) scheduler: scheduler::Scheduler,
    /// The inference thread.
    pub(crate) inference: inference::Inference,
    /// The eval-run runners.
    pub(crate) eval_runs: evals::Runners,
    /// Compiled graders of `graders/run`, and the permits bounding how many grade at once.
    pub(crate) graders: graders::GraderPool,
    /// Permits for requests in flight.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// The Tinker-compatible training API (`/api/v1`).
    pub(crate) tinker: rft_tinker::Tinker,
    /// Where every model of the process comes from.
    pub(crate) host: Arc<rft_model::host::EngineHost>,
}

/// Shared state handle.
pub(crate) type SharedState = Arc<AppState>;

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) use rft_types::ids::new_id;

/// Parses a `limit` query value within `1..=max`.
pub(crate) fn parse_limit(
    raw: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
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

/// Declares every route once: the router registers them and `/openapi.json` describes them,
/// so the document cannot drift from what is served.
macro_rules! api_routes {
    ($( $method:ident $path:literal => $handler:path, $summary:literal; )*) => {
        /// `(method, path, handler, summary)` of every route.
        pub const ROUTES: &[(&str, &str, &str, &str)] = &[
            $( (stringify!($method), $path, stringify!($handler), $summary), )*
        ];

        fn add_routes(mut router: Router<SharedState>) -> Router<SharedState> {
            $( router = router.route(
                $path,
                body_limit($path, stringify!($method), axum::routing::$method($handler)),
            ); )*
            router
        }
    };
}

api_routes! {
    post "/v1/files" => files::upload, "Upload a file (multipart: file, purpose)";
    get "/v1/files" => files::list, "List files";
    get "/v1/files/{file_id}" => files::retrieve, "Retrieve a file";
    delete "/v1/files/{file_id}" => files::delete, "Delete a file";
    get "/v1/files/{file_id}/content" => files::content, "Download a file's content";
    post "/v1/fine_tuning/alpha/graders/run" => graders::run, "Grade a sample with a grader";
    post "/v1/fine_tuning/alpha/graders/validate" => graders::validate, "Validate a grader";
    post "/v1/fine_tuning/jobs" => jobs::create, "Create a reinforcement fine-tuning job";
    get "/v1/fine_tuning/jobs" => jobs::list, "List fine-tuning jobs";
    get "/v1/fine_tuning/jobs/{job_id}" => jobs::retrieve, "Retrieve a fine-tuning job";
    post "/v1/fine_tuning/jobs/{job_id}/cancel" => jobs::cancel, "Cancel a job";
    post "/v1/fine_tuning/jobs/{job_id}/pause" => jobs::pause, "Pause a job (checkpointed)";
    post "/v1/fine_tuning/jobs/{job_id}/resume" => jobs::resume, "Resume a paused job";
    get "/v1/fine_tuning/jobs/{job_id}/events" => jobs::events, "List a job's events, newest first";
    get "/v1/fine_tuning/jobs/{job_id}/checkpoints" => jobs::checkpoints, "List a job's checkpoints";
    post "/v1/evals" => evals::create, "Create an eval";
    get "/v1/evals" => evals::list, "List evals";
    get "/v1/evals/{eval_id}" => evals::retrieve, "Retrieve an eval";
    post "/v1/evals/{eval_id}" => evals::update, "Update an eval's name or metadata";
    delete "/v1/evals/{eval_id}" => evals::delete, "Delete an eval";
    post "/v1/evals/{eval_id}/runs" => evals::create_run, "Start an eval run";
    get "/v1/evals/{eval_id}/runs" => evals::list_runs, "List an eval's runs";
    get "/v1/evals/{eval_id}/runs/{run_id}" => evals::retrieve_run, "Retrieve a run";
    post "/v1/evals/{eval_id}/runs/{run_id}" => evals::cancel_run, "Cancel a run";
    delete "/v1/evals/{eval_id}/runs/{run_id}" => evals::delete_run, "Delete a run";
    get "/v1/evals/{eval_id}/runs/{run_id}/output_items" => evals::list_items, "List a run's output items";
    get "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}" => evals::retrieve_item, "Retrieve an output item";
    get "/v1/models" => models::list, "List models (base, fine-tuned, checkpoints)";
    get "/v1/models/{model}" => models::retrieve, "Retrieve a model";
    post "/v1/chat/completions" => inference::chat_completions, "Create a chat completion (stream: SSE)";
    post "/v1/completions" => completions::completions, "Create a completion from text or token-id prompts (vLLM's fields: top_k, return_token_ids)";
    post "/v1/load_lora_adapter" => adapters::load, "Load a LoRA adapter from under the adapter root by name (vLLM's run-time LoRA API)";
    post "/v1/unload_lora_adapter" => adapters::unload, "Unload a LoRA adapter by name";
    get "/openapi.json" => openapi, "This document";
}

/// The upload route counts the bytes it streams to disk itself (`files::upload`, against
/// `max_upload_bytes`); every other route keeps the router's JSON limit.
fn body_limit(
    path: &str,
    method: &str,
    route: axum::routing::MethodRouter<SharedState>,
) -> axum::routing::MethodRouter<SharedState> {
    if path == "/v1/files" && method == "post" {
        route.layer(DefaultBodyLimit::disable())
    } else {
        route
    }
}

/// `GET /openapi.json`: OpenAPI 3.1 over [`ROUTES`].
async fn openapi() -> axum::Json<openapi::Document> {
    axum::Json(openapi_document())
}

/// The OpenAPI document of every route: OpenAI's under `/v1` and Tinker's under `/api/v1`.
pub(crate) fn openapi_document() -> openapi::Document {
    let tinker: Vec<(&'static str, String, &'static str, &'static str)> = rft_tinker::ROUTES
        .iter()
        .map(|r| {
            (
                r.method,
                format!("/api/v1{}", r.path),
                "rft_tinker",
                r.summary,
            )
        })
        .collect();
    openapi::Document::of(ROUTES, &tinker)
}

/// Checks OpenAI's `metadata` (at most 16 string pairs, keys ≤ 64 and values ≤ 512
/// characters); absent or null is `Value::Null`.
pub(crate) fn parse_metadata(
    value: Option<&Value>,
) -> Result<Option<rft_types::api::common::Metadata>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            if map.len() > 16 {
                return Err(ApiError::bad_request("metadata can have at most 16 keys")
                    .with_param("metadata"));
            }
            map.iter()
                .map(|(k, v)| match v.as_str() {
                    Some(s) if k.chars().count() <= 64 && s.chars().count() <= 512 => {
                        Ok((k.clone(), s.to_owned()))
                    }
                    _ => Err(ApiError::bad_request(format!(
                        "metadata['{k}']: keys are strings of at most 64 characters and values strings of at most 512"
                    ))
                    .with_param("metadata")),
                })
                .collect::<Result<_, _>>()
                .map(Some)
        }
        Some(_) => Err(
            ApiError::bad_request("metadata must be an object of strings").with_param("metadata"),
        ),
    }
}

/// Parses a list's `order` query value (`asc` / `desc`); `None` gives the list's default.
pub(crate) fn parse_order(raw: Option<&str>, default_descending: bool) -> Result<bool, ApiError> {
    match raw {
        None => Ok(default_descending),
        Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "order must be 'asc' or 'desc', not '{other}'"
        ))
        .with_param("order")),
    }
}

/// The whole API under `/v1`.
pub(crate) fn router(state: SharedState) -> Router {
    // Every body is held to the JSON limit by the bytes actually read; the upload route
    // streams to disk and counts its own bytes (`files::upload`).
    add_routes(Router::new())
        .merge(dashboard::routes())
        .nest_service("/api/v1", state.tinker.routes())
        .fallback(|| async { ApiError::new_not_found_route().into_response() })
        .layer(DefaultBodyLimit::max(error::MAX_JSON_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit))
        .layer(axum::middleware::from_fn(catch_panic))
        .with_state(state)
}

/// A handler that panics answers 500 in the envelope and the server goes on; the panic is
/// logged with its reference.
async fn catch_panic(request: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => ApiError::internal(format!("a handler panicked: {}", panic_message(&*panic)))
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

/// Admission: a burst beyond `max_concurrent_requests` gets 429 with `Retry-After` instead of
/// queueing without bound.
async fn admit(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    // Tinker's long-polls wait up to 20 s each: they are bounded by a pool of their own
    // (`rft_tinker::MAX_LONG_POLLS`, past which a poll answers at once), so a crowd of them
    // never takes the slots every other route needs.
    if request.uri().path() == "/api/v1/retrieve_future" {
        return next.run(request).await;
    }
    match state.in_flight.clone().try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            // A streamed body holds its permit until it ends.
            let (parts, body) = response.into_parts();
            let body = axum::body::Body::new(PermitBody {
                inner: body,
                _permit: permit,
            });
            Response::from_parts(parts, body)
        }
        Err(_) => {
            // The body is read and dropped before answering (bounded in bytes and time):
            // a client still sending it would otherwise see a reset connection instead of
            // the 429 that tells it to retry.
            discard_body(request.into_body()).await;
            ApiError::busy(format!(
                "The server is handling {} requests already; retry after a short wait.",
                state.config.max_concurrent_requests
            ))
            .into_response()
        }
    }
}

/// Reads and drops a request body, at most the JSON limit and for at most five seconds; a
/// chunk at a time, so a flood of rejected requests holds no memory.
async fn discard_body(body: axum::body::Body) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > error::MAX_JSON_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

/// A body that releases its admission permit when dropped.
struct PermitBody {
    inner: axum::body::Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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

/// With API keys configured, every request needs `Authorization: Bearer <key>`. Without
/// keys the server trusts the machine's own users only, so it also refuses what a web page
/// could send through a browser: a `Host` that is not a loopback name (DNS rebinding) and a
/// cross-site `Origin` or `Sec-Fetch-Site` (docs/security.md).
async fn auth(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    // Whether the client is on this machine: only such a client is told paths on it.
    let local = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .is_some_and(|info| info.0.ip().is_loopback());
    request
        .extensions_mut()
        .insert(rft_tinker::LocalClient(local));
    if state.config.api_keys.is_empty() {
        if let Err(refused) = check_local_request(&state.config, request.headers()).and_then(|()| {
            check_simple_request(request.method(), request.uri().path(), request.headers())
        }) {
            return refused.into_response();
        }
        request.extensions_mut().insert(rft_tinker::Owner::local());
        return next.run(request).await;
    }
    // The dashboard's shell holds no data and a browser cannot add a key to a page load; its
    // script calls the API with the key the user gives it.
    if dashboard::is_static_asset(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    // Tinker's SDK sends its key as `X-API-Key` (docs/tinker.md); the same keys are accepted.
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| {
            request
                .headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
        })
        .map(str::trim);
    match given {
        Some(key) if key_matches(&state.config.api_keys, key) => {
            // What a Tinker session, model or checkpoint belongs to.
            let owner = rft_tinker::Owner::of_key(key);
            request.extensions_mut().insert(owner);
            next.run(request).await
        }
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send `Authorization: Bearer <key>` (keys are set with RFT_API_KEYS or --api-key).",
        )
        .into_response(),
    }
}

/// Whether `given` is one of `keys`, in time that depends on neither where the first
/// difference is nor which key matched (every key is compared in full).
pub(crate) fn key_matches(keys: &[String], given: &str) -> bool {
    let given = given.as_bytes();
    let mut matched = 0u8;
    for key in keys {
        let key = key.as_bytes();
        let mut diff = u8::from(key.len() != given.len());
        for i in 0..key.len().max(given.len()) {
            diff |= key.get(i).copied().unwrap_or(0) ^ given.get(i).copied().unwrap_or(0xff);
        }
        matched |= u8::from(diff == 0);
    }
    // black_box keeps the compiler from turning the loops back into an early exit.
    std::hint::black_box(matched) == 1
}

/// The `Host` and `Origin` checks of a server without keys.
fn check_local_request(
    config: &ServerConfig,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(host) = header("host") {
        if !is_local_host(host, &config.allowed_hosts) {
            return Err(ApiError::forbidden(format!(
                "Host '{host}' is refused: without API keys the server answers loopback names only (localhost, 127.0.0.1, [::1]). Set RFT_API_KEYS to serve other names."
            )));
        }
    }
    if header("sec-fetch-site") == Some("cross-site") {
        return Err(ApiError::forbidden(
            "Cross-site requests are refused: without API keys only programs on this machine may call the server.",
        ));
    }
    if let Some(origin) = header("origin") {
        let host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !host.is_some_and(|h| is_local_host(h, &config.allowed_hosts)) {
            return Err(ApiError::forbidden(format!(
                "Origin '{origin}' is refused: without API keys only pages served from this machine may call the server."
            )));
        }
    }
    Ok(())
}

/// Without keys, a request that changes something must be one a browser cannot send from
/// another page without a CORS preflight (which this server never grants): its body, if it has
/// one, is JSON or protobuf (the upload's multipart form excepted). What a page can send
/// without a preflight (no body, the upload's form) is taken only from programs (no `Origin`)
/// or from this server's own pages (an `Origin` equal to the `Host`): a page on another local
/// port is not this server's, even though it is loopback.
fn check_simple_request(
    method: &axum::http::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    use axum::http::Method;
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return Ok(());
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let preflighted = matches!(
        content_type.as_str(),
        "application/json" | "application/x-protobuf" | "application/protobuf"
    ) || content_type.ends_with("+json");
    if preflighted {
        return Ok(());
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let same_origin = match header("origin") {
        None => true,
        Some(origin) => {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            origin_host.is_some_and(|o| header("host").is_some_and(|h| o.eq_ignore_ascii_case(h)))
        }
    };
    let upload = path == "/v1/files" && content_type == "multipart/form-data";
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    let refuse = |message: String| ApiError {
        status: axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        message,
        param: None,
        code: Some("unsupported_media_type".into()),
    };
    // A body is JSON or protobuf (or the upload's form), whoever sends it.
    if has_body && !upload {
        return Err(refuse(format!(
            "A {method} body with Content-Type '{content_type}' is refused: send JSON (`Content-Type: application/json`) or protobuf."
        )));
    }
    if same_origin {
        return Ok(());
    }
    Err(refuse(format!(
        "A {method} with Content-Type '{content_type}' from another page is refused: without API keys, send JSON (`Content-Type: application/json`) or protobuf, which browsers cannot send across origins without permission."
    )))
}

/// `localhost`, `127.x.y.z`, `[::1]` (with or without a port), or a name the operator allowed.
fn is_local_host(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
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
    let (store, blobs) = open_storage(&config)?;
    // Eval runs run in the process that created them: on SQLite (one machine) the runs a
    // stopped process left are this server's. On PostgreSQL other API processes' runs may be
    // going on.
    if store.is_local() {
        evals::fail_interrupted_runs(&store)?;
    }
    let catalog = Arc::new(catalog::Catalog::new(&config));
    let device = rft_model::device::parse_device(&config.device).map_err(ServeError::Device)?;
    let host = Arc::new(rft_model::host::EngineHost::new(
        device,
        config.max_loaded_model_bytes,
    ));
    let scheduler = scheduler::Scheduler::start(
        store.clone(),
        blobs.clone(),
        catalog.clone(),
        host.clone(),
        config.rollout.clone(),
        WorkerSettings::new(config.lease),
        config.run_jobs,
    )?;
    let tinker = rft_tinker::Tinker::start(rft_tinker::TinkerConfig {
        root: config.data_dir.join("tinker"),
        models: catalog.clone(),
        host: host.clone(),
        batch_bytes: config.max_batch_bytes,
    });
    let adapters =
        adapters::LoadedAdapters::new(config.adapter_root.as_deref(), config.max_lora_adapters)
            .map_err(ServeError::AdapterRoot)?;
    let inference = inference::Inference::start(
        host.clone(),
        catalog,
        blobs.clone(),
        adapters,
        config.inference_queue,
        config.max_batch_bytes,
    );
    let eval_runs = evals::Runners::new(
        config.eval_run_queue,
        WorkerSettings::new(config.lease).id,
        config.lease,
    );
    let graders = graders::GraderPool::new(config.max_concurrent_grades);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        config.max_concurrent_requests.max(1),
    ));
    let state = Arc::new(AppState {
        config,
        store,
        blobs,
        scheduler,
        inference,
        eval_runs,
        graders,
        in_flight,
        tinker,
        host,
    });
    state.eval_runs.start(&state, state.config.eval_runners);
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
    // The peer address tells the auth whether a client is on this machine.
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!("shutting down: pausing the running job at its next step boundary");
    let scheduler = &state.scheduler;
    tokio::task::block_in_place(|| scheduler.shutdown());
    Ok(())
}

/// Opens the database and the blob store a configuration names (migrating the database).
pub(crate) fn open_storage(
    config: &ServerConfig,
) -> Result<(Arc<Store>, rft_store::blobs::Blobs), ServeError> {
    // A process started with (or before) its database waits for it a while rather than exit:
    // an orchestrator starts them in any order.
    let start = std::time::Instant::now();
    let store = loop {
        let opened = if config.run_jobs && !config.serves_api {
            Store::connect_shared(config.database.as_deref(), &config.data_dir)
        } else {
            Store::connect(config.database.as_deref(), &config.data_dir)
        };
        match opened {
            Err(e) if e.is_unavailable() && start.elapsed() < DATABASE_PATIENCE => {
                tracing::warn!("{e}; trying again in 2 s");
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            other => break Arc::new(other?),
        }
    };
    let blobs = match config.blobs.as_deref().filter(|b| !b.trim().is_empty()) {
        None => rft_store::blobs::Blobs::local(&config.data_dir),
        Some(spec) => rft_store::blobs::Blobs::open(spec, &config.data_dir),
    }
    .map_err(ServeError::Blobs)?;
    if !store.is_local() && blobs.local_root().is_some() {
        tracing::warn!(
            "the database is shared but the blob store is this process's data folder ({}): every API process and worker must use this same folder (or pass --blobs s3://…)",
            config.data_dir.display()
        );
    }
    tracing::info!(
        "database {}, artefacts in {}",
        store.describe(),
        blobs.describe()
    );
    Ok((store, blobs))
}

/// How long a starting process waits for its database.
const DATABASE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A server running on a thread of its own (benchmarks, tests); stopped when dropped.
#[derive(Debug)]
pub struct BackgroundServer {
    /// `http://127.0.0.1:PORT/v1`.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// Starts a server on a free loopback port.
    pub fn start(config: ServerConfig) -> Result<BackgroundServer, ServeError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rft-serve".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => return tracing::error!("cannot start the HTTP runtime: {e}"),
                };
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return tracing::error!("cannot listen: {e}"),
                    };
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    if let Err(e) = serve_on(config, listener, shutdown).await {
                        tracing::error!("server: {e}");
                    }
                });
            })
            .map_err(|e| ServeError::Thread("server", e))?;
        Ok(BackgroundServer {
            base: format!("http://{local}/v1"),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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

pub(crate) async fn shutdown_signal() {
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
    /// The blob store could not be opened.
    #[error("--blobs: {0}")]
    Blobs(rft_store::blobs::BlobError),
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
    /// The device named in the configuration cannot be used.
    #[error(transparent)]
    Device(rft_model::ModelError),
    /// The adapter root cannot be opened.
    #[error("the adapter root (--adapter-root) cannot be opened: {0}")]
    AdapterRoot(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = vec!["alpha".to_owned(), "beta-key".to_owned()];
        assert!(key_matches(&keys, "alpha"));
        assert!(key_matches(&keys, "beta-key"));
        for wrong in ["", "alph", "alphaa", "Alpha", "beta-kex", "beta"] {
            assert!(!key_matches(&keys, wrong), "{wrong}");
        }
        assert!(!key_matches(&[], "alpha"));
    }

    #[test]
    fn loopback_hosts_only() {
        for ok in [
            "localhost",
            "localhost:8000",
            "127.0.0.1:9",
            "127.1.2.3",
            "[::1]:80",
            "a.localhost",
        ] {
            assert!(is_local_host(ok, &[]), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "10.0.0.1",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_local_host(bad, &[]), "{bad}");
        }
        assert!(is_local_host("box.lan:8000", &["box.lan".to_owned()]));
    }

    #[test]
    fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    let v: Vec<u8> = Vec::new();
                    // An out-of-bounds index: the kind of bug a hostile input finds.
                    v[std::hint::black_box(3)].to_string()
                }),
            )
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(catch_panic));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut boom = agent.get(format!("http://{addr}/boom")).call().unwrap();
        assert_eq!(boom.status().as_u16(), 500);
        let body = boom.body_mut().read_to_string().unwrap();
        assert!(
            body.contains("server_error") && body.contains("reference"),
            "{body}"
        );
        assert!(
            !body.contains("index out of bounds"),
            "internals leaked: {body}"
        );
        let mut ok = agent.get(format!("http://{addr}/ok")).call().unwrap();
        assert_eq!(ok.body_mut().read_to_string().unwrap(), "fine");
    }
}
