//! `/v1/evals`: evals, their runs and output items (spec §1.5, §5).
//!
//! An eval is a data-source schema plus testing criteria (graders with a pass threshold). A run
//! takes rows from a `jsonl` source (graded as they are) or a `completions` source (each row's
//! messages rendered from `input_messages` and sampled from any model this server serves, through
//! the chat inference queue), grades every sample with every criterion, and records one output
//! item per row. Runs execute on a thread of their own; cancel is checked between rows.
//!
//! The objects, the pass rule and the counts are `rft_eval::objects`' (what `rft eval` writes
//! too): a score passes when it is at least the criterion's `pass_threshold` (given, or 1 for
//! string_check/label_model and 0.5 otherwise); an item passes when every criterion passes; an
//! item whose grading raised an error flag counts as `errored` and has status `fail`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use rft_eval::objects::{
    data_source_config, testing_criterion, Criterion, GradedSample, ItemSampling, RunBuilder,
};
use rft_grade::template::{Scope, Template};
use rft_model::constrain::ResponseFormat;
use rft_model::request::{check_sampling, SamplingAsk};
use rft_model::sample::SamplingParams;
use rft_types::api::common::{Deleted, DeletedId, List, Metadata};
use rft_types::api::eval::{
    CreateEval, CreateRun, DataSourceConfigRequest, Eval, EvalRun, InputMessages, OutputItem,
    ResultCounts, RunDataSource, RunError, RunSamplingParams, RunSource, RunStatus, SourceRow,
    UpdateEval,
};
use rft_types::{Grader, Sample};
use serde_json::{Map, Value};

use crate::error::{parse_body, ApiJson};
use crate::graders::parse_grader;
use crate::inference::ChatCall;
use crate::{
    new_id, now, parse_limit, parse_metadata, parse_order, ApiError, AppState, SharedState,
};

/// Evals and runs show `{}` for absent metadata, as OpenAI's examples do.
fn metadata(value: Option<&Value>) -> Result<Metadata, ApiError> {
    Ok(parse_metadata(value)?.unwrap_or_default())
}

/// `POST /v1/evals` (201).
pub(crate) async fn create(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Eval>), ApiError> {
    let request: CreateEval = parse_body(body)?;
    let data_source_config = match request.data_source_config {
        DataSourceConfigRequest::Custom {
            item_schema,
            include_sample_schema,
        } => data_source_config(Value::Object(item_schema), include_sample_schema),
        DataSourceConfigRequest::Logs { .. } | DataSourceConfigRequest::StoredCompletions { .. } => {
            return Err(ApiError::bad_request(
                "data_source_config.type reads OpenAI's stored logs, which a local server does not have; use 'custom'",
            )
            .with_param("data_source_config.type"))
        }
    };
    if request.testing_criteria.is_empty() {
        return Err(
            ApiError::bad_request("testing_criteria must be a non-empty array of graders")
                .with_param("testing_criteria"),
        );
    }
    let mut testing_criteria = Vec::new();
    for (i, mut criterion) in request.testing_criteria.into_iter().enumerate() {
        let param = format!("testing_criteria[{i}]");
        let threshold = criterion.remove("pass_threshold");
        let grader = parse_grader(Some(&Value::Object(criterion.clone())), &param)?;
        let pass_threshold = match threshold {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                ApiError::bad_request("pass_threshold must be a number")
                    .with_param(format!("{param}.pass_threshold"))
            })?),
        };
        let unique = new_id("");
        testing_criteria.push(testing_criterion(
            &grader,
            criterion,
            pass_threshold,
            unique.get(..12).unwrap_or_default(),
        ));
    }
    let eval = Eval {
        id: new_id("eval_"),
        object: "eval".into(),
        name: request.name.unwrap_or_default(),
        created_at: now(),
        metadata: metadata(request.metadata.as_ref())?,
        data_source_config,
        testing_criteria,
    };
    state.store.insert_object("eval", None, &eval)?;
    Ok((StatusCode::CREATED, Json(eval)))
}

fn existing_eval(state: &AppState, id: &str) -> Result<Eval, ApiError> {
    state
        .store
        .get_object("eval", id)?
        .ok_or_else(|| ApiError::not_found("eval", id).with_param("eval_id"))
}

fn existing_run(state: &AppState, eval_id: &str, run_id: &str) -> Result<EvalRun, ApiError> {
    existing_eval(state, eval_id)?;
    state
        .store
        .get_object::<EvalRun>("eval_run", run_id)?
        .filter(|r| r.eval_id == eval_id)
        .ok_or_else(|| ApiError::not_found("eval run", run_id).with_param("run_id"))
}

/// `GET /v1/evals`.
pub(crate) async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<Eval>>, ApiError> {
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 100)?;
    match query.get("order_by").map(String::as_str) {
        None | Some("created_at") | Some("updated_at") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "order_by must be 'created_at' or 'updated_at', not '{other}'"
            ))
            .with_param("order_by"))
        }
    }
    let (data, has_more) = state.store.list_objects(
        "eval",
        &rft_store::ListQuery {
            descending: parse_order(query.get("order").map(String::as_str), false)?,
            after: query.get("after").map(String::as_str),
            limit,
            ..Default::default()
        },
    )?;
    Ok(Json(List::with_cursor(data, has_more, |e: &Eval| &e.id)))
}

/// `GET /v1/evals/{eval_id}`.
pub(crate) async fn retrieve(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Eval>, ApiError> {
    existing_eval(&state, &id).map(Json)
}

/// `POST /v1/evals/{eval_id}`: updates `name` and `metadata`.
pub(crate) async fn update(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Eval>, ApiError> {
    existing_eval(&state, &id)?;
    let request: UpdateEval = parse_body(body)?;
    let meta = request
        .metadata
        .as_ref()
        .map(|m| metadata(Some(m)))
        .transpose()?;
    let updated = state.store.modify_object::<Eval, ()>(&id, |eval| {
        if let Some(name) = &request.name {
            eval.name.clone_from(name);
        }
        if let Some(meta) = meta {
            eval.metadata = meta;
        }
        Ok(())
    })?;
    match updated {
        Some(Ok(eval)) => Ok(Json(eval)),
        _ => Err(ApiError::not_found("eval", &id)),
    }
}

/// `DELETE /v1/evals/{eval_id}`: the eval, its runs and their output items.
pub(crate) async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    existing_eval(&state, &id)?;
    // Runs and their output items go with it, in one transaction.
    state.store.delete(&id)?;
    Ok(Json(Deleted {
        id: DeletedId::Eval(id),
        object: "eval.deleted".into(),
        deleted: true,
    }))
}

fn source_rows(state: &AppState, source: RunSource) -> Result<Vec<SourceRow>, ApiError> {
    match source {
        RunSource::FileContent { content } => Ok(content),
        RunSource::FileId { id } => {
            if state
                .store
                .get_object::<rft_types::api::file::FileObject>("file", &id)?
                .is_none()
            {
                return Err(ApiError::bad_request(format!("no file with id '{id}'"))
                    .with_param("data_source.source.id"));
            }
            crate::job_storage::ensure_file(&state.store, &state.blobs, &id).map_err(|e| {
                ApiError::bad_request(format!("file {id} is not readable: {e}"))
                    .with_param("data_source.source.id")
            })?;
            let text = std::fs::read_to_string(state.store.file_path(&id)).map_err(|e| {
                ApiError::bad_request(format!("file {id} is not readable text: {e}"))
                    .with_param("data_source.source.id")
            })?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str::<SourceRow>(line).map_err(|e| {
                        ApiError::bad_request(format!(
                            "file {id} line {}: each row must be an object with an `item` object (and optionally a `sample`): {e}",
                            i + 1
                        ))
                        .with_param("data_source.source.id")
                    })
                })
                .collect()
        }
    }
}

/// `POST /v1/evals/{eval_id}/runs` (201): queued, then run by one of the runners.
pub(crate) async fn create_run(
    State(state): State<SharedState>,
    Path(eval_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<EvalRun>), ApiError> {
    let eval = existing_eval(&state, &eval_id)?;
    // The run echoes the data source exactly as the client sent it.
    let echo = body.get("data_source").cloned().unwrap_or(Value::Null);
    let request: CreateRun = parse_body(body)?;
    let (model, source, sampling) =
        match request.data_source {
            RunDataSource::Jsonl { source } => (String::new(), source, Sampling::default()),
            RunDataSource::Completions {
                model,
                source,
                input_messages: InputMessages::Template { template },
                sampling_params,
            } => {
                if model.is_empty() {
                    return Err(
                        ApiError::bad_request("a completions data source needs `model`")
                            .with_param("data_source.model"),
                    );
                }
                if state.inference.resolve(&state.store, &model)?.is_none() {
                    return Err(
                        crate::inference::model_not_found(&model).with_param("data_source.model")
                    );
                }
                if let Some(tools) = &sampling_params.tools {
                    rft_types::tools::check_tools(tools).map_err(|e| {
                        let field = format!("data_source.sampling_params.{}", e.field);
                        ApiError::bad_request(format!("{field}: {}", e.message)).with_param(field)
                    })?;
                }
                // The one sampling check chat and Tinker use too, refused here rather than failing
                // every row later.
                check_run_sampling(&sampling_params, state.config.max_request_tokens)?;
                (
                    model,
                    source,
                    Sampling {
                        template,
                        params: sampling_params,
                    },
                )
            }
            RunDataSource::Responses { .. } => return Err(ApiError::bad_request(
                "data_source.type 'responses' (the Responses API) is not served; use 'completions'",
            )
            .with_param("data_source.type")),
        };
    let rows = source_rows(&state, source)?;
    if model.is_empty()
        && rows
            .iter()
            .any(|r| r.sample.as_ref().is_none_or(Value::is_null))
    {
        return Err(ApiError::bad_request(
            "a jsonl data source is graded as it is: every row needs a `sample` (use 'completions' to sample a model)",
        )
        .with_param("data_source.source"));
    }
    let run = EvalRun {
        id: new_id("evalrun_"),
        object: "eval.run".into(),
        eval_id: eval_id.clone(),
        status: RunStatus::Queued,
        model,
        name: request.name.unwrap_or_default(),
        created_at: now(),
        report_url: None,
        result_counts: ResultCounts::default(),
        per_model_usage: None,
        per_testing_criteria_results: None,
        data_source: echo,
        metadata: metadata(request.metadata.as_ref())?,
        error: None,
    };
    // The lease first: a keeper looking between the insert and the lease would take the new
    // run for an abandoned one.
    state.eval_runs.hold(&state.store, &run.id)?;
    if let Err(e) = state.store.insert_object("eval_run", Some(&eval_id), &run) {
        state.eval_runs.let_go(&state.store, &run.id);
        return Err(e.into());
    }
    let submitted = state.eval_runs.submit(RunTask {
        eval,
        run: run.clone(),
        rows,
        sampling,
    });
    if let Err(e) = submitted {
        state.eval_runs.let_go(&state.store, &run.id);
        state.store.delete(&run.id)?;
        return Err(e);
    }
    Ok((StatusCode::CREATED, Json(run)))
}

/// A run waiting for a runner.
struct RunTask {
    eval: Eval,
    run: EvalRun,
    rows: Vec<SourceRow>,
    sampling: Sampling,
}

/// How a completions source samples: the messages to render per row and the sampling
/// parameters (nothing for `jsonl`, whose rows carry their samples).
#[derive(Default)]
struct Sampling {
    template: Vec<Value>,
    params: RunSamplingParams,
}

/// A fixed set of threads running eval runs from a bounded queue: a burst of runs waits its
/// turn or gets 429, instead of each run starting a thread of its own.
///
/// A run is this process's work from its creation to its end, held by a lease this process
/// renews. On a database shared by many API processes, a process that dies leaves its runs'
/// leases to expire; any other process's keeper then fails them (`runner_stopped`, their
/// finished output items kept), as a restarted single server fails the runs it left.
#[derive(Debug)]
pub(crate) struct Runners {
    queue: std::sync::mpsc::SyncSender<RunTask>,
    waiting: std::sync::Mutex<Option<std::sync::mpsc::Receiver<RunTask>>>,
    capacity: usize,
    /// This process's name in leases.
    owner: String,
    lease: std::time::Duration,
    /// The leases of this process's queued and running runs, by run id.
    held: std::sync::Mutex<HashMap<String, rft_store::Lease>>,
    /// Until when the keeper fails no run (after it saw the database away).
    quiet_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for RunTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTask")
            .field("run", &self.run.id)
            .finish()
    }
}

impl Runners {
    /// Runners whose queue holds `capacity` runs; `owner` names this process in leases of
    /// `lease`.
    pub(crate) fn new(capacity: usize, owner: String, lease: std::time::Duration) -> Runners {
        let (queue, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        Runners {
            queue,
            waiting: std::sync::Mutex::new(Some(rx)),
            capacity: capacity.max(1),
            owner,
            lease,
            held: std::sync::Mutex::new(HashMap::new()),
            quiet_until: std::sync::Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, rft_store::Lease>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lease of run `id`, which this process runs.
    fn hold(&self, store: &rft_store::Store, id: &str) -> Result<(), ApiError> {
        let lease = store.take_lease(id, &self.owner, self.lease)?;
        self.held().insert(id.to_owned(), lease);
        Ok(())
    }

    /// Gives up the lease of run `id` (it ended).
    fn let_go(&self, store: &rft_store::Store, id: &str) {
        if let Some(lease) = self.held().remove(id) {
            if let Err(e) = store.release(&lease) {
                tracing::warn!(run = %id, "cannot release the run's lease: {e}");
            }
        }
    }

    /// Renews this process's leases, and fails the runs of processes that stopped. Runs on a
    /// thread of its own every third of a lease.
    fn keep(&self, store: &rft_store::Store) {
        let held: Vec<rft_store::Lease> = self.held().values().cloned().collect();
        let mut outage = false;
        for lease in held {
            match store.renew(&lease, self.lease) {
                Ok(Some(_)) => {}
                // Failed by another process's keeper after an outage: the run sees it.
                Ok(None) => {
                    self.held().remove(&lease.id);
                }
                Err(e) => {
                    outage |= e.is_unavailable();
                    tracing::warn!(run = %lease.id, "cannot renew the run's lease: {e}");
                }
            }
        }
        // After an outage, fail nobody's runs for a lease: the other processes were cut off
        // too, and renew theirs as soon as they can.
        let mut quiet = self.quiet_until.lock().unwrap_or_else(|e| e.into_inner());
        if outage {
            *quiet = Some(std::time::Instant::now() + self.lease);
        }
        if quiet.is_some_and(|t| std::time::Instant::now() < t) {
            return;
        }
        drop(quiet);
        let gone = crate::scheduler::abandoned_by(store);
        for status in ["queued", "in_progress"] {
            let failed = store.requeue_expired::<EvalRun>("eval_run", status, &gone, |r| {
                r.status = RunStatus::Failed;
                r.error = Some(RunError {
                    code: "runner_stopped".into(),
                    message: "The process running this run stopped before it finished; its finished output items are kept. Start a new run.".into(),
                });
            });
            match failed {
                Ok(ids) => {
                    for id in ids {
                        tracing::warn!(run = %id, "its process stopped: the run is failed");
                    }
                }
                Err(e) => tracing::warn!("cannot look for abandoned eval runs: {e}"),
            }
        }
    }

    /// Starts `threads` runners. They hold the state weakly, so they end with the server.
    pub(crate) fn start(&self, state: &Arc<AppState>, threads: usize) {
        let Some(rx) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let weak = Arc::downgrade(state);
        let every = self.lease / 3;
        let keeper = std::thread::Builder::new()
            .name("rft-eval-leases".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(state) = weak.upgrade() else {
                    return;
                };
                state.eval_runs.keep(&state.store);
            });
        if let Err(e) = keeper {
            tracing::error!("cannot start the eval runs' lease keeper: {e}");
        }
        for i in 0..threads.max(1) {
            let (rx, state) = (rx.clone(), Arc::downgrade(state));
            let spawned = std::thread::Builder::new()
                .name(format!("rft-eval-run-{i}"))
                .spawn(move || loop {
                    let task = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let (Ok(task), Some(state)) = (task, state.upgrade()) else {
                        return;
                    };
                    run_task(&state, task);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start an eval runner: {e}");
            }
        }
    }

    fn submit(&self, task: RunTask) -> Result<(), ApiError> {
        use std::sync::mpsc::TrySendError;
        match self.queue.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ApiError::busy(format!(
                "{} eval runs are waiting already; retry after a short wait.",
                self.capacity
            ))),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::internal("the eval runners are not running"))
            }
        }
    }
}

/// Runs one eval run; an error or a panic fails the run, and the runner goes on.
fn run_task(state: &Arc<AppState>, task: RunTask) {
    let id = task.run.id.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute(state, &task.eval, &task.run, task.rows, task.sampling)
    }));
    state.eval_runs.let_go(&state.store, &id);
    let error = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(panic) => ApiError::internal(format!(
            "the eval run panicked: {}",
            crate::panic_message(&*panic)
        ))
        .with_code("run_failed"),
    };
    let code = error.code.clone().unwrap_or_else(|| "run_failed".into());
    let message = error.public_message();
    let _ = state.store.modify_object::<EvalRun, ()>(&id, |r| {
        r.status = RunStatus::Failed;
        r.error = Some(RunError { code, message });
        Ok(())
    });
}

/// A jsonl row's `sample`: a Sample object (`output_text`, `output_json`, …), a chat
/// completion-like object (`choices[0].message.content`), or a bare string. The sample is the
/// client's own JSON, read as it comes.
fn given_sample(given: &Value) -> Sample {
    if let Some(text) = given.as_str() {
        return Sample::from_text(text);
    }
    if given.get("output_text").is_none() {
        let content = given
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str);
        if let Some(text) = content {
            return Sample::from_text(text);
        }
    }
    serde_json::from_value(given.clone()).unwrap_or_else(|_| Sample::from_text(""))
}

/// Renders the `content` templates of the client's messages over a row's item.
fn render_messages(template: &[Value], item: &Value) -> Result<Vec<Value>, ApiError> {
    let empty = Value::Object(Map::new());
    template
        .iter()
        .map(|message| {
            let mut message = message.clone();
            if let Some(map) = message.as_object_mut() {
                if let Some(Value::String(text)) = map.get("content") {
                    let rendered = Template::parse(text)
                        .render(Scope::new(item, &empty))
                        .map_err(|e| {
                            ApiError::bad_request(e.to_string())
                                .with_param("data_source.input_messages")
                        })?;
                    map.insert("content".into(), Value::String(rendered));
                }
                if map.get("type").and_then(Value::as_str) == Some("message") {
                    map.remove("type");
                }
            }
            Ok(message)
        })
        .collect()
}

/// A criterion ready to grade: the grader compiled, and what its results need.
struct Compiled {
    criterion: Criterion,
    compiled: Arc<rft_grade::CompiledGrader>,
}

/// The eval's criteria, compiled from the server's shared cache: a run reuses the Python
/// workers of a grader that graders/run (or an earlier run) already started.
fn compile_criteria(state: &AppState, eval: &Eval) -> Result<Vec<Compiled>, ApiError> {
    eval.testing_criteria
        .iter()
        .map(|c| {
            let grader = Grader::from_value(&Value::Object(c.grader.clone()))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let compiled = state.graders.compile(&grader).map_err(|e| {
                ApiError::bad_request(format!(
                    "a testing criterion cannot run here: {}",
                    e.message
                ))
                .with_code("unsupported_grader")
            })?;
            Ok(Compiled {
                criterion: Criterion::new(c, &grader),
                compiled,
            })
        })
        .collect()
}

/// How a completions source samples, resolved: defaults applied, the response format parsed.
struct Resolved {
    template: Vec<Value>,
    tools: Option<Vec<Value>>,
    response_format: Option<ResponseFormat>,
    item: ItemSampling,
    seed: u64,
}

impl Resolved {
    fn new(sampling: Sampling) -> Result<Resolved, ApiError> {
        let Sampling { template, params } = sampling;
        let response_format = params
            .response_format
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| {
                ResponseFormat::from_value(v).map_err(|e| {
                    ApiError::bad_request(format!("sampling_params.response_format: {e}"))
                })
            })
            .transpose()?;
        Ok(Resolved {
            template,
            tools: params.tools.filter(|t| !t.is_empty()),
            response_format,
            item: ItemSampling {
                temperature: params.temperature.unwrap_or(1.0),
                top_p: params.top_p.unwrap_or(1.0),
                max_completion_tokens: params
                    .max_completion_tokens
                    .unwrap_or(crate::inference::DEFAULT_MAX_TOKENS as u64),
            },
            seed: params.seed.unwrap_or(42),
        })
    }

    /// A row's engine parameters, through the check every sampling API shares.
    fn params(&self, seed: u64, max_total: usize) -> Result<SamplingParams, ApiError> {
        let item = &self.item;
        check_run(
            Some(item.temperature),
            Some(item.top_p),
            Some(item.max_completion_tokens),
            Some(seed),
            max_total,
        )
    }
}

/// Eval-run sampling through the check every sampling API shares, with chat's limits; a fault
/// names its field under `data_source.sampling_params`.
fn check_run(
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_completion_tokens: Option<u64>,
    seed: Option<u64>,
    max_total: usize,
) -> Result<SamplingParams, ApiError> {
    let ask = SamplingAsk {
        n: 1,
        max_tokens: max_completion_tokens.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
        max_tokens_param: "max_completion_tokens",
        temperature,
        top_p,
        seed,
        ..SamplingAsk::default()
    };
    check_sampling(
        &ask,
        &crate::inference::chat_limits(max_total),
        crate::inference::DEFAULT_MAX_TOKENS,
    )
    .map_err(|fault| {
        let param = format!("data_source.sampling_params.{}", fault.param);
        ApiError::bad_request(format!("{param}: {}", fault.message)).with_param(param)
    })
}

/// Checks a completions run's `sampling_params` when the run is created.
fn check_run_sampling(params: &RunSamplingParams, max_total: usize) -> Result<(), ApiError> {
    check_run(
        params.temperature,
        params.top_p,
        params.max_completion_tokens,
        params.seed,
        max_total,
    )
    .map(|_| ())
}

/// A row's sample: the given one, or one sampled from the run's model.
struct RowSample {
    sample: Sample,
    input: Vec<Value>,
    finish_reason: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    sampled: bool,
}

fn sample_row(
    state: &AppState,
    run: &EvalRun,
    sampling: &Resolved,
    row: &SourceRow,
    item: &Value,
    seed: u64,
) -> Result<RowSample, ApiError> {
    if let Some(given) = row.sample.as_ref().filter(|s| !s.is_null()) {
        return Ok(RowSample {
            sample: given_sample(given),
            input: Vec::new(),
            finish_reason: "stop".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            sampled: false,
        });
    }
    let messages = render_messages(&sampling.template, item)?;
    let out = state.inference.complete_blocking(
        &state.store,
        ChatCall {
            model: run.model.clone(),
            messages: messages.clone(),
            n: 1,
            params: sampling.params(seed, state.config.max_request_tokens)?,
            response_format: sampling.response_format.clone(),
            tools: sampling.tools.clone(),
        },
    )?;
    let parsed = out.parsed.into_iter().next().flatten();
    let completion = out.completions.into_iter().next();
    let text = completion
        .as_ref()
        .and_then(|c| c.text.clone())
        .unwrap_or_default();
    let sample = match parsed {
        Some(parsed) => Sample::from_message(&parsed.content, parsed.tool_calls_json()),
        None => Sample::from_text(&text),
    };
    Ok(RowSample {
        sample,
        input: messages,
        completion_tokens: completion.as_ref().map_or(0, |c| c.ids.len() as u64),
        finish_reason: completion
            .map(|c| c.finish_reason.as_str().to_owned())
            .unwrap_or_else(|| "stop".into()),
        prompt_tokens: out.prompt_tokens as u64,
        sampled: true,
    })
}

/// Runs a queued run: each row sampled (or taken as given), graded by every criterion and
/// recorded as an output item, the run's counts updated after each; cancel is checked
/// between rows.
fn execute(
    state: &Arc<AppState>,
    eval: &Eval,
    run: &EvalRun,
    rows: Vec<SourceRow>,
    sampling: Sampling,
) -> Result<(), ApiError> {
    let moved = state.store.modify_object::<EvalRun, ()>(&run.id, |r| {
        if r.status != RunStatus::Queued {
            return Err(());
        }
        r.status = RunStatus::InProgress;
        Ok(())
    })?;
    if !matches!(moved, Some(Ok(_))) {
        return Ok(());
    }
    let criteria = compile_criteria(state, eval)?;
    let sampling = Resolved::new(sampling)?;
    let mut builder = RunBuilder::new(
        run,
        criteria.iter().map(|c| c.criterion.clone()).collect(),
        sampling.item,
    );
    for (index, row) in rows.iter().enumerate() {
        let status = state
            .store
            .get_object::<EvalRun>("eval_run", &run.id)?
            .map(|r| r.status);
        if status != Some(RunStatus::InProgress) {
            return Ok(()); // canceled (or deleted) meanwhile
        }
        let item = Value::Object(row.item.clone());
        let seed = sampling.seed ^ index as u64;
        let got = sample_row(state, run, &sampling, row, &item, seed)?;
        let grades = criteria
            .iter()
            .map(|c| c.compiled.grade(&got.sample, &item))
            .collect();
        let output = builder.output_item(
            new_id("outputitem_"),
            now(),
            GradedSample {
                datasource_item_id: index,
                item,
                input: got.input,
                sample: &got.sample,
                finish_reason: got.finish_reason,
                prompt_tokens: got.prompt_tokens,
                completion_tokens: got.completion_tokens,
                sampled: got.sampled,
                error: None,
                seed,
                grades,
            },
        );
        state
            .store
            .insert_object("output_item", Some(&run.id), &output)?;
        state.store.modify_object::<EvalRun, ()>(&run.id, |r| {
            builder.write_counts(r);
            Ok(())
        })?;
    }
    state.store.modify_object::<EvalRun, ()>(&run.id, |r| {
        if r.status == RunStatus::InProgress {
            r.status = RunStatus::Completed;
        }
        builder.write_counts(r);
        Ok(())
    })?;
    Ok(())
}

/// Runs a previous process left unfinished are marked `failed` (their finished output items
/// stay): a run is cheap to start again, and a clear state beats one stuck `in_progress`.
pub(crate) fn fail_interrupted_runs(store: &rft_store::Store) -> Result<(), rft_store::StoreError> {
    for run in store.with_status_objects::<EvalRun>("eval_run", &["queued", "in_progress"])? {
        store.modify_object::<EvalRun, ()>(&run.id, |r| {
            r.status = RunStatus::Failed;
            r.error = Some(RunError {
                code: "server_restarted".into(),
                message: "The server stopped before this run finished; its finished output items are kept. Start a new run.".into(),
            });
            Ok(())
        })?;
    }
    Ok(())
}

/// `GET /v1/evals/{eval_id}/runs`.
pub(crate) async fn list_runs(
    State(state): State<SharedState>,
    Path(eval_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<EvalRun>>, ApiError> {
    existing_eval(&state, &eval_id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 100)?;
    let status = query.get("status").map(String::as_str);
    let (data, has_more) = state.store.list_objects(
        "eval_run",
        &rft_store::ListQuery {
            parent: Some(&eval_id),
            status,
            descending: parse_order(query.get("order").map(String::as_str), false)?,
            after: query.get("after").map(String::as_str),
            limit,
            ..Default::default()
        },
    )?;
    Ok(Json(List::with_cursor(data, has_more, |r: &EvalRun| &r.id)))
}

/// `GET /v1/evals/{eval_id}/runs/{run_id}`.
pub(crate) async fn retrieve_run(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Result<Json<EvalRun>, ApiError> {
    existing_run(&state, &eval_id, &run_id).map(Json)
}

/// `POST /v1/evals/{eval_id}/runs/{run_id}`: cancels the run (spec: no `/cancel` suffix).
pub(crate) async fn cancel_run(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
    _body: Bytes,
) -> Result<Json<EvalRun>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    let changed = state
        .store
        .modify_object::<EvalRun, RunStatus>(&run_id, |r| {
            if !matches!(r.status, RunStatus::Queued | RunStatus::InProgress) {
                return Err(r.status);
            }
            r.status = RunStatus::Canceled;
            Ok(())
        })?;
    match changed {
        Some(Ok(run)) => Ok(Json(run)),
        Some(Err(status)) => Err(ApiError::bad_request(format!(
            "Cannot cancel run {run_id}: its status is '{}'",
            serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ))
        .with_code("invalid_run_status")),
        None => Err(ApiError::not_found("eval run", &run_id)),
    }
}

/// `DELETE /v1/evals/{eval_id}/runs/{run_id}`.
pub(crate) async fn delete_run(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    state.store.delete(&run_id)?;
    Ok(Json(Deleted {
        id: DeletedId::Run(run_id),
        object: "eval.run.deleted".into(),
        deleted: true,
    }))
}

/// `GET /v1/evals/{eval_id}/runs/{run_id}/output_items`.
pub(crate) async fn list_items(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<List<OutputItem>>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 100)?;
    let status = match query.get("status").map(String::as_str) {
        None => None,
        Some(s @ ("pass" | "fail")) => Some(s),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status must be 'pass' or 'fail', not '{other}'"
            ))
            .with_param("status"))
        }
    };
    let (data, has_more) = state.store.list_objects(
        "output_item",
        &rft_store::ListQuery {
            parent: Some(&run_id),
            status,
            descending: parse_order(query.get("order").map(String::as_str), false)?,
            after: query.get("after").map(String::as_str),
            limit,
            ..Default::default()
        },
    )?;
    Ok(Json(List::with_cursor(data, has_more, |i: &OutputItem| {
        &i.id
    })))
}

/// `GET /v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}`.
pub(crate) async fn retrieve_item(
    State(state): State<SharedState>,
    Path((eval_id, run_id, item_id)): Path<(String, String, String)>,
) -> Result<Json<OutputItem>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    state
        .store
        .get_object::<OutputItem>("output_item", &item_id)?
        .filter(|i| i.run_id == run_id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("output item", &item_id))
}
