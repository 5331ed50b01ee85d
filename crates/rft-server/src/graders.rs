//! `POST /v1/fine_tuning/alpha/graders/run` and `/validate` (spec §1.4, §7), on `rft-grade`.
//!
//! An invalid grader is a 400 whose `param` is the JSON path of the fault
//! (`grader.graders.style.evaluation_metric`). A sample that fails to grade is not an HTTP
//! error: it is a 200 with reward 0 and the error flag set, as OpenAI's graders report it.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::Json;
use rft_grade::CompiledGrader;
use rft_types::api::grader::{RunGraderRequest, ValidateGraderRequest, ValidateGraderResponse};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::Value;

use crate::error::{parse_body, ApiJson};
use crate::{ApiError, SharedState};

/// Compiled graders kept for reuse: compiling a Python grader starts its worker pool, so a
/// client repeating one grader reuses the pool instead of starting one per request.
const CACHED_GRADERS: usize = 16;

/// The graders `graders/run` compiled, and the permits bounding how many requests grade at
/// once (each holds a blocking thread, and may hold Python workers or judge calls).
#[derive(Debug)]
pub(crate) struct GraderPool {
    compiled: Mutex<Vec<(String, Arc<CompiledGrader>)>>,
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    /// Requests waiting for a permit; beyond [`GraderPool::max_waiting`] they get 429.
    waiting: std::sync::atomic::AtomicUsize,
}

impl GraderPool {
    /// A pool grading at most `concurrent` requests at once.
    pub(crate) fn new(concurrent: usize) -> GraderPool {
        GraderPool {
            compiled: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
            limit: concurrent.max(1),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Requests that may wait for a permit: a short queue absorbs a burst, a flood gets 429.
    fn max_waiting(&self) -> usize {
        self.limit * 32
    }

    /// A permit to grade, waiting in a bounded line for it.
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        use std::sync::atomic::Ordering;
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Counted out on drop, so a client that leaves while waiting frees its place.
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let place = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting() {
            return Err(ApiError::busy(format!(
                "{} graders/run requests are grading and {} waiting already; retry after a short wait.",
                self.limit,
                self.max_waiting()
            )));
        }
        let permit = self.permits.clone().acquire_owned().await;
        drop(place);
        permit.map_err(|_| ApiError::internal("the grader pool is closed"))
    }

    /// The compiled form of `grader`, from the cache or compiled now (least recently used
    /// dropped beyond [`CACHED_GRADERS`]).
    pub(crate) fn compile(&self, grader: &Grader) -> Result<Arc<CompiledGrader>, ApiError> {
        let key = serde_json::to_string(grader).map_err(|e| ApiError::internal(e.to_string()))?;
        {
            let mut cache = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = cache.iter().position(|(k, _)| *k == key) {
                let entry = cache.remove(pos);
                let compiled = entry.1.clone();
                cache.push(entry);
                return Ok(compiled);
            }
        }
        let compiled = Arc::new(rft_grade::compile(grader).map_err(|e| {
            ApiError::bad_request(format!("This grader cannot run here: {e}"))
                .with_param("grader")
                .with_code("unsupported_grader")
        })?);
        let mut cache = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_GRADERS {
            cache.remove(0);
        }
        cache.push((key, compiled.clone()));
        Ok(compiled)
    }
}

/// Parses and checks `body.grader`, as `validate` does.
pub(crate) fn parse_grader(value: Option<&Value>, param: &str) -> Result<Grader, ApiError> {
    let value = value.ok_or_else(|| {
        ApiError::bad_request(format!("Missing required parameter: '{param}'.")).with_param(param)
    })?;
    let grader = Grader::from_value(value).map_err(|e| {
        let at = if e.path.is_empty() {
            param.to_owned()
        } else {
            format!("{param}.{}", e.path)
        };
        ApiError::bad_request(format!("Invalid grader at '{at}': {}", e.message)).with_param(at)
    })?;
    rft_grade::validate(&grader).map_err(|e| {
        ApiError::bad_request(format!("Invalid grader: {e}"))
            .with_param(param)
            .with_code("invalid_grader")
    })?;
    Ok(grader)
}

/// `POST /v1/fine_tuning/alpha/graders/validate`: `{"grader": <the grader>}` or a 400.
pub(crate) async fn validate(
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<ValidateGraderResponse>, ApiError> {
    let request: ValidateGraderRequest = parse_body(body)?;
    parse_grader(Some(&request.grader), "grader")?;
    Ok(Json(ValidateGraderResponse {
        grader: request.grader,
    }))
}

/// `POST /v1/fine_tuning/alpha/graders/run`: grades `model_sample` against `item`.
pub(crate) async fn run(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<RunGraderResponse>, ApiError> {
    let request: RunGraderRequest = parse_body(body)?;
    let grader = parse_grader(Some(&request.grader), "grader")?;
    let sample = request.model_sample;
    let item = Value::Object(request.item.unwrap_or_default());
    let permit = state.graders.permit().await?;
    // Compiling can start Python workers and grading can call a judge: off the async threads.
    let pool_state = state.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<RunGraderResponse, ApiError> {
        let _permit = permit;
        let compiled = pool_state.graders.compile(&grader)?;
        Ok(compiled.grade(&Sample::from_text(&sample), &item))
    })
    .await
    .map_err(|e| ApiError::internal(format!("grading task failed: {e}")))??;
    Ok(Json(result))
}
