//! The web dashboard of `rft serve`: a page at `/` to watch jobs learn (live reward curves,
//! checkpoints, pause/resume/cancel), browse the samples of each step, compare validation
//! answers before and after training, read eval runs and the readiness report, upload files
//! and try graders. `docs/dashboard.md` describes it.
//!
//! The page is three files embedded in the binary (`index.html`, `app.js`, `app.css`): no build
//! step, nothing fetched from outside, charts drawn as SVG by the script. The shell carries no
//! data, so it is served without an API key (a browser cannot add one to a page load), under
//! the same `Host`/`Origin` checks as the API when the server runs without keys. Everything
//! the page shows comes from the JSON API, called by the script with the key the user pastes
//! (kept in the tab's `sessionStorage`), and from the data routes below, which sit behind the
//! API's auth like every `/v1` route. A strict Content-Security-Policy forbids inline script
//! and every outside origin; the script renders every string from the API as text.
//!
//! Data routes (JSON, OpenAI's error envelope on failure):
//! - `GET /dashboard/api/jobs/{job_id}/events?since=EVENT_ID`: the job's events after
//!   `EVENT_ID`, oldest first (at most [`MAX_EVENTS_PAGE`] a call): what a live page polls, so
//!   each poll carries only what is new (`/v1/.../events` lists newest first, for clients that
//!   page back through history);
//! - `GET /dashboard/api/jobs/{job_id}/samples`: the steps with recorded samples and which
//!   validation passes are recorded;
//! - `GET /dashboard/api/jobs/{job_id}/samples/{step}`: one step's groups
//!   (`rft_train::samples::StepSamples`);
//! - `GET /dashboard/api/jobs/{job_id}/validation`: the first and the latest validation answers;
//! - `POST /dashboard/api/readiness`: the readiness report of `rft doctor` for an uploaded file
//!   and a grader.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rft_eval::data::{read_data, DataFormat};
use rft_eval::policy::{Policy, SamplingOptions};
use rft_eval::report::{build_report, Report, ReportInput, ReportOptions};
use rft_eval::run::{run_eval, EvalConfig};
use rft_train::samples::{self, StepSamples, ValidationSamples};
use rft_types::api::event::JobEvent;
use rft_types::api::file::FileObject;
use rft_types::api::job::FineTuningJob;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{parse_body, ApiJson};
use crate::graders::parse_grader;
use crate::{ApiError, SharedState};

/// The page's shell.
const INDEX_HTML: &str = include_str!("index.html");
/// The page's script.
const APP_JS: &str = include_str!("app.js");
/// The page's styles.
const APP_CSS: &str = include_str!("app.css");

/// The page may run only its own script and style, load nothing from elsewhere, and not be
/// framed: a string from a dataset that slipped into the DOM as markup still could not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Events one `events?since=` call returns at most; `has_more` says when more follow.
pub(crate) const MAX_EVENTS_PAGE: usize = 10_000;

/// Rows a readiness report grades at most (each sampled `samples` times by the model).
pub(crate) const MAX_READINESS_ROWS: usize = 200;
/// Samples per row a readiness report takes at most.
pub(crate) const MAX_READINESS_SAMPLES: usize = 8;
/// Completion tokens per sample a readiness report allows at most.
pub(crate) const MAX_READINESS_TOKENS: usize = 1024;

/// One readiness report at a time: it loads a model and samples every row, work that belongs
/// to one request, not to a burst.
static READINESS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Whether a request is for the static shell, served without an API key (it holds no data).
pub(crate) fn is_static_asset(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(path, "/" | "/dashboard/app.js" | "/dashboard/app.css")
}

/// The dashboard's routes: the shell and its data.
pub(crate) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
        .route("/dashboard/api/jobs/{job_id}/events", get(events_since))
        .route("/dashboard/api/jobs/{job_id}/samples", get(sample_steps))
        .route(
            "/dashboard/api/jobs/{job_id}/samples/{step}",
            get(step_samples),
        )
        .route("/dashboard/api/jobs/{job_id}/validation", get(validation))
        .route("/dashboard/api/readiness", post(readiness))
}

/// A static file with the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary only; a short cache keeps an upgrade visible.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`.
async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/app.js`.
async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /dashboard/app.css`.
async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The job's folder, once the job is known to exist (an id that names no job never becomes a
/// path).
fn job_dir(state: &SharedState, id: &str) -> Result<std::path::PathBuf, ApiError> {
    state
        .store
        .get_object::<FineTuningJob>("job", id)?
        .ok_or_else(|| ApiError::not_found("fine-tuning job", id).with_param("job_id"))?;
    Ok(state.store.job_dir(id))
}

/// What `GET .../events?since=` answers.
#[derive(Debug, Serialize)]
struct EventsSince {
    /// The events after the cursor, oldest first.
    data: Vec<JobEvent>,
    /// Whether more events follow the last one returned.
    has_more: bool,
}

/// [`job_dir`] with the job's samples brought from the blob store first (a job trained by a
/// worker elsewhere).
async fn samples_dir(state: &SharedState, id: &str) -> Result<std::path::PathBuf, ApiError> {
    let dir = job_dir(state, id)?;
    let (store, blobs, id) = (state.store.clone(), state.blobs.clone(), id.to_owned());
    tokio::task::spawn_blocking(move || crate::job_storage::sync_samples(&store, &blobs, &id))
        .await
        .map_err(|e| ApiError::internal(format!("the samples fetch stopped: {e}")))?;
    Ok(dir)
}

/// `GET /dashboard/api/jobs/{job_id}/events?since=EVENT_ID`.
async fn events_since(
    State(state): State<SharedState>,
    Path(job_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EventsSince>, ApiError> {
    job_dir(&state, &job_id)?;
    let all = crate::job_storage::events(&state.store, &job_id)?;
    let start = match query.get("since") {
        None => 0,
        Some(since) => {
            all.iter().position(|e| e.id == *since).ok_or_else(|| {
                ApiError::bad_request(format!("job {job_id} has no event '{since}'"))
                    .with_param("since")
            })? + 1
        }
    };
    let rest = all.len() - start;
    Ok(Json(EventsSince {
        data: all.into_iter().skip(start).take(MAX_EVENTS_PAGE).collect(),
        has_more: rest > MAX_EVENTS_PAGE,
    }))
}

/// What `GET .../samples` answers.
#[derive(Debug, Serialize)]
struct SampleIndex {
    /// Steps with recorded samples, in order.
    steps: Vec<usize>,
    /// The step of the first recorded validation pass.
    validation_first: Option<usize>,
    /// The step of the latest.
    validation_latest: Option<usize>,
}

/// `GET /dashboard/api/jobs/{job_id}/samples`.
async fn sample_steps(
    State(state): State<SharedState>,
    Path(job_id): Path<String>,
) -> Result<Json<SampleIndex>, ApiError> {
    let dir = samples_dir(&state, &job_id).await?;
    let (validation_first, validation_latest) = samples::validation_steps(&dir);
    Ok(Json(SampleIndex {
        steps: samples::list_steps(&dir),
        validation_first,
        validation_latest,
    }))
}

/// `GET /dashboard/api/jobs/{job_id}/samples/{step}`.
async fn step_samples(
    State(state): State<SharedState>,
    Path((job_id, step)): Path<(String, String)>,
) -> Result<Json<StepSamples>, ApiError> {
    let dir = samples_dir(&state, &job_id).await?;
    let step: usize = step.parse().map_err(|_| {
        ApiError::bad_request(format!("step must be a step number, not '{step}'"))
            .with_param("step")
    })?;
    samples::read_step(&dir, step)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("samples of step", &step.to_string()).with_param("step"))
}

/// What `GET .../validation` answers.
#[derive(Debug, Serialize)]
struct Validation {
    /// The first validation pass (before training, when the job has a validation file).
    first: Option<ValidationSamples>,
    /// The latest.
    latest: Option<ValidationSamples>,
}

/// `GET /dashboard/api/jobs/{job_id}/validation`.
async fn validation(
    State(state): State<SharedState>,
    Path(job_id): Path<String>,
) -> Result<Json<Validation>, ApiError> {
    let dir = samples_dir(&state, &job_id).await?;
    let (first, latest) = samples::read_validation(&dir);
    Ok(Json(Validation { first, latest }))
}

/// The body of `POST /dashboard/api/readiness`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadinessRequest {
    /// An uploaded file: an RFT dataset (sampled from `model`) or eval-run rows
    /// (`{"item", "sample"}`, graded as given).
    file_id: String,
    /// The grader, as in a job.
    grader: Value,
    /// A base model this server serves; needed for an RFT dataset.
    #[serde(default)]
    model: Option<String>,
    /// Samples per row (default 4, at most [`MAX_READINESS_SAMPLES`]).
    #[serde(default)]
    samples: Option<usize>,
    /// Rows graded (default and most: [`MAX_READINESS_ROWS`]).
    #[serde(default)]
    limit: Option<usize>,
    /// Completion tokens per sample (default 256, at most [`MAX_READINESS_TOKENS`]).
    #[serde(default)]
    max_tokens: Option<usize>,
    /// The item field holding a reference answer, for the checks that use one.
    #[serde(default)]
    reference_field: Option<String>,
    /// The sampling seed.
    #[serde(default)]
    seed: Option<u64>,
}

/// The one readiness report's permit, or 429 while another is computed.
fn readiness_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    READINESS.try_acquire().map_err(|_| {
        ApiError::busy("A readiness report is being computed already; retry when it is done.")
    })
}

/// `value` within `1..=max`, or a 400 naming `param`.
fn bounded(
    value: Option<usize>,
    default: usize,
    max: usize,
    param: &str,
) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!(
            "{param} must be an integer from 1 to {max}"
        ))
        .with_param(param)),
    }
}

/// `POST /dashboard/api/readiness`: what `rft doctor` reports (the eight checks), for an
/// uploaded file and a grader.
async fn readiness(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Report>, ApiError> {
    let request: ReadinessRequest = parse_body(body)?;
    let grader_spec = parse_grader(Some(&request.grader), "grader")?;
    let samples = bounded(request.samples, 4, MAX_READINESS_SAMPLES, "samples")?;
    let limit = bounded(
        request.limit,
        MAX_READINESS_ROWS,
        MAX_READINESS_ROWS,
        "limit",
    )?;
    let max_tokens = bounded(request.max_tokens, 256, MAX_READINESS_TOKENS, "max_tokens")?;
    let file = state
        .store
        .get_object::<FileObject>("file", &request.file_id)?
        .ok_or_else(|| ApiError::not_found("file", &request.file_id).with_param("file_id"))?;
    let model = match &request.model {
        None => None,
        Some(name) => Some(
            state
                .inference
                .catalog()
                .resolve(name)
                .ok_or_else(|| crate::inference::model_not_found(name).with_param("model"))?,
        ),
    };
    let grader = state.graders.compile(&grader_spec)?;
    // The permit lives in the work, not in this handler: a client that disconnects drops the
    // handler, but the report runs on until it notices the cancel flag, and only then may
    // another start.
    let permit = readiness_permit()?;
    let cancel = rft_model::sample::Cancel::default();
    let on_disconnect = crate::inference::CancelOnDrop(cancel.clone());
    let host = state.host.clone();
    let path = state.store.file_path(&file.id);
    let filename = file.filename.clone();
    let model_name = request.model.clone();
    let report = tokio::task::spawn_blocking(move || -> Result<Report, ApiError> {
        let _permit = permit;
        let mut data = read_data(&path).map_err(|e| {
            ApiError::bad_request(format!(
                "file {} ({filename}) cannot be read as an RFT dataset or eval rows: {}",
                file.id,
                crate::error::redact_paths(
                    &e.to_string()
                        .replace(&path.display().to_string(), &filename)
                )
            ))
            .with_param("file_id")
        })?;
        data.truncate(limit);
        let policy = match (data.format, &model) {
            (DataFormat::EvalRun, _) => None,
            (DataFormat::Rft, None) => {
                return Err(ApiError::bad_request(
                    "this file holds prompts, not samples: name the model to sample them from",
                )
                .with_param("model"))
            }
            (DataFormat::Rft, Some(spec)) => {
                let engine = host.base(spec).map_err(|e| match e {
                    rft_model::ModelError::MemoryBudget { .. } => {
                        ApiError::unavailable(e.to_string())
                    }
                    other => ApiError::internal(format!("cannot load the model: {other}")),
                })?;
                // The policy shares the host's weights; `engine` keeps them lent meanwhile.
                Some((Policy::Local(Box::new(engine.share())), engine))
            }
        };
        let policy = policy.as_ref().map(|(policy, _lease)| policy);
        let sampling = SamplingOptions {
            samples,
            max_tokens,
            seed: request.seed.unwrap_or(0),
            cancel: Some(cancel.clone()),
            ..SamplingOptions::default()
        };
        let config = EvalConfig {
            sampling,
            output: None,
        };
        let results =
            run_eval(&data, policy, &grader, &config, &mut |_, _| {}).map_err(|e| match e {
                rft_eval::EvalError::Cancelled => ApiError::bad_request("the client went away"),
                other => ApiError::internal(format!("the readiness eval failed: {other}")),
            })?;
        let mut report = build_report(&ReportInput {
            data: &data,
            results: &results,
            grader_spec: &grader_spec,
            grader: &grader,
            model: model_name.as_deref().unwrap_or("given"),
            response_format: None,
            options: &ReportOptions {
                reference_field: request.reference_field.clone(),
                seed: request.seed.unwrap_or(0),
                ..ReportOptions::default()
            },
        });
        // The report names its dataset by path; the client knows it by its upload's name.
        report.dataset = filename;
        Ok(report)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the readiness task stopped: {e}")))??;
    on_disconnect.disarm();
    Ok(Json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_readiness_report_at_a_time() {
        let first = readiness_permit().unwrap();
        let second = readiness_permit().unwrap_err();
        assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
        drop(first);
        assert!(readiness_permit().is_ok());
    }

    #[test]
    fn only_the_shell_is_public() {
        for path in ["/", "/dashboard/app.js", "/dashboard/app.css"] {
            assert!(is_static_asset(&Method::GET, path), "{path}");
            assert!(!is_static_asset(&Method::POST, path), "{path}");
        }
        for path in [
            "/dashboard/api/readiness",
            "/dashboard/api/jobs/x/samples",
            "/dashboard/app.js/",
            "/v1/models",
            "//",
        ] {
            assert!(!is_static_asset(&Method::GET, path), "{path}");
        }
    }
}
