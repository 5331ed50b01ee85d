//! `/v1/evals`: evals, their runs and output items (spec §1.5, §5).
//!
//! An eval is a data-source schema plus testing criteria (graders with a pass threshold). A run
//! takes rows from a `jsonl` source (graded as they are) or a `completions` source (each row's
//! messages rendered from `input_messages` and sampled from any model this server serves, through
//! the chat inference queue), grades every sample with every criterion, and records one output
//! item per row. Runs execute on a thread of their own; cancel is checked between rows.
//!
//! The pass rule is `rft_eval`'s: a score passes when it is at least the criterion's
//! `pass_threshold` (given, or 1 for string_check/label_model and 0.5 otherwise). An item
//! passes when every criterion passes; an item whose grading raised an error flag counts as
//! `errored` and has status `fail`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use rft_grade::template::{Scope, Template};
use rft_model::constrain::ResponseFormat;
use rft_model::sample::SamplingParams;
use rft_types::{Grader, Sample};
use serde_json::{json, Value};

use crate::error::ApiJson;
use crate::graders::parse_grader;
use crate::inference::ChatCall;
use crate::{
    list_body, new_id, now, parse_limit, parse_metadata, parse_order, ApiError, AppState,
    SharedState,
};

/// Evals and runs show `{}` for absent metadata, as OpenAI's examples do.
fn metadata(value: Option<&Value>) -> Result<Value, ApiError> {
    Ok(match parse_metadata(value)? {
        Value::Null => json!({}),
        map => map,
    })
}

/// `POST /v1/evals` (201).
pub async fn create(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let config = &body["data_source_config"];
    let schema = match config["type"].as_str() {
        Some("custom") => {
            let item_schema = match &config["item_schema"] {
                v @ Value::Object(_) => v.clone(),
                _ => {
                    return Err(ApiError::bad_request(
                        "data_source_config.item_schema must be a JSON Schema object",
                    )
                    .with_param("data_source_config.item_schema"))
                }
            };
            let with_sample = config["include_sample_schema"].as_bool().unwrap_or(false);
            let mut properties = json!({"item": item_schema});
            let mut required = vec!["item"];
            if with_sample {
                properties["sample"] = sample_schema();
                required.push("sample");
            }
            json!({"type": "object", "properties": properties, "required": required})
        }
        Some(kind @ ("logs" | "stored_completions")) => {
            return Err(ApiError::bad_request(format!(
                "data_source_config.type '{kind}' reads OpenAI's stored logs, which a local server does not have; use 'custom'"
            ))
            .with_param("data_source_config.type"))
        }
        _ => {
            return Err(ApiError::bad_request(
                "data_source_config must be {type: 'custom', item_schema: {...}}",
            )
            .with_param("data_source_config"))
        }
    };
    let criteria = match &body["testing_criteria"] {
        Value::Array(list) if !list.is_empty() => list,
        _ => {
            return Err(ApiError::bad_request(
                "testing_criteria must be a non-empty array of graders",
            )
            .with_param("testing_criteria"))
        }
    };
    let mut testing_criteria = Vec::new();
    for (i, criterion) in criteria.iter().enumerate() {
        let param = format!("testing_criteria[{i}]");
        let grader = parse_grader(Some(criterion), &param)?;
        let threshold = match criterion.get("pass_threshold") {
            None | Some(Value::Null) => rft_eval::objects::pass_threshold(&grader),
            Some(v) => v.as_f64().ok_or_else(|| {
                ApiError::bad_request("pass_threshold must be a number")
                    .with_param(format!("{param}.pass_threshold"))
            })?,
        };
        let mut out = criterion.clone();
        out["id"] = json!(format!(
            "{}-{}",
            grader.name(),
            new_id("").get(..12).unwrap_or_default()
        ));
        out["pass_threshold"] = json!(threshold);
        testing_criteria.push(out);
    }
    let eval = json!({
        "id": new_id("eval_"),
        "object": "eval",
        "name": body["name"].as_str().unwrap_or_default(),
        "created_at": now(),
        "metadata": metadata(body.get("metadata"))?,
        "data_source_config": {"type": "custom", "schema": schema},
        "testing_criteria": testing_criteria,
    });
    state.store.insert("eval", None, &eval)?;
    Ok((StatusCode::CREATED, Json(eval)))
}

fn sample_schema() -> Value {
    json!({"type": "object", "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    }, "required": ["output_text"]})
}

fn existing_eval(state: &AppState, id: &str) -> Result<Value, ApiError> {
    state
        .store
        .get("eval", id)?
        .ok_or_else(|| ApiError::not_found("eval", id).with_param("eval_id"))
}

fn existing_run(state: &AppState, eval_id: &str, run_id: &str) -> Result<Value, ApiError> {
    existing_eval(state, eval_id)?;
    state
        .store
        .get("eval_run", run_id)?
        .filter(|r| r["eval_id"] == eval_id)
        .ok_or_else(|| ApiError::not_found("eval run", run_id).with_param("run_id"))
}

/// `GET /v1/evals`.
pub async fn list(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
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
    let page = state.store.list(
        "eval",
        &rft_store::ListQuery {
            descending: parse_order(query.get("order").map(String::as_str), false)?,
            after: query.get("after").map(String::as_str),
            limit,
            ..Default::default()
        },
    )?;
    Ok(Json(list_body(page)))
}

/// `GET /v1/evals/{eval_id}`.
pub async fn retrieve(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    existing_eval(&state, &id).map(Json)
}

/// `POST /v1/evals/{eval_id}`: updates `name` and `metadata`.
pub async fn update(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    existing_eval(&state, &id)?;
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("name must be a string").with_param("name")),
    };
    let meta = match body.get("metadata") {
        None => None,
        some => Some(metadata(some)?),
    };
    let updated = state.store.modify::<()>(&id, |eval| {
        if let Some(name) = &name {
            eval["name"] = json!(name);
        }
        if let Some(meta) = &meta {
            eval["metadata"] = meta.clone();
        }
        Ok(())
    })?;
    match updated {
        Some(Ok(eval)) => Ok(Json(eval)),
        _ => Err(ApiError::not_found("eval", &id)),
    }
}

/// `DELETE /v1/evals/{eval_id}`: the eval, its runs and their output items.
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    existing_eval(&state, &id)?;
    // Runs and their output items go with it, in one transaction.
    state.store.delete(&id)?;
    Ok(Json(
        json!({"object": "eval.deleted", "deleted": true, "eval_id": id}),
    ))
}

/// One row of a run's data source.
struct SourceRow {
    item: Value,
    sample: Option<Value>,
}

fn source_rows(state: &AppState, source: &Value) -> Result<Vec<SourceRow>, ApiError> {
    let to_row = |value: &Value, at: String| -> Result<SourceRow, ApiError> {
        let item = match value.get("item") {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{at}: each row must be an object with an `item` object (and optionally a `sample`)"
                ))
                .with_param("data_source.source"))
            }
        };
        Ok(SourceRow {
            item,
            sample: value.get("sample").filter(|s| !s.is_null()).cloned(),
        })
    };
    match source["type"].as_str() {
        Some("file_content") => match &source["content"] {
            Value::Array(rows) => rows
                .iter()
                .enumerate()
                .map(|(i, r)| to_row(r, format!("data_source.source.content[{i}]")))
                .collect(),
            _ => Err(ApiError::bad_request("data_source.source.content must be an array")
                .with_param("data_source.source.content")),
        },
        Some("file_id") => {
            let id = source["id"].as_str().unwrap_or_default();
            if state.store.get("file", id)?.is_none() {
                return Err(ApiError::bad_request(format!("no file with id '{id}'"))
                    .with_param("data_source.source.id"));
            }
            let text = std::fs::read_to_string(state.store.file_path(id)).map_err(|e| {
                ApiError::bad_request(format!("file {id} is not readable text: {e}"))
                    .with_param("data_source.source.id")
            })?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    let value: Value = serde_json::from_str(line).map_err(|e| {
                        ApiError::bad_request(format!("file {id} line {}: {e}", i + 1))
                            .with_param("data_source.source.id")
                    })?;
                    to_row(&value, format!("file {id} line {}", i + 1))
                })
                .collect()
        }
        _ => Err(ApiError::bad_request(
            "data_source.source must be {type: 'file_content', content: [...]} or {type: 'file_id', id}",
        )
        .with_param("data_source.source")),
    }
}

/// `POST /v1/evals/{eval_id}/runs` (201): queued, then run on a thread of its own.
pub async fn create_run(
    State(state): State<SharedState>,
    Path(eval_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let eval = existing_eval(&state, &eval_id)?;
    let source = &body["data_source"];
    let kind = source["type"].as_str().unwrap_or_default();
    let model =
        match kind {
            "jsonl" => String::new(),
            "completions" => source["model"]
                .as_str()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request("a completions data source needs `model`")
                        .with_param("data_source.model")
                })?
                .to_owned(),
            "responses" => return Err(ApiError::bad_request(
                "data_source.type 'responses' (the Responses API) is not served; use 'completions'",
            )
            .with_param("data_source.type")),
            _ => {
                return Err(ApiError::bad_request(
                    "data_source.type must be 'jsonl' or 'completions'",
                )
                .with_param("data_source.type"))
            }
        };
    if kind == "completions"
        && crate::inference::resolve(&state.store, state.inference.catalog(), &model)?.is_none()
    {
        return Err(crate::inference::model_not_found(&model).with_param("data_source.model"));
    }
    let rows = source_rows(&state, &source["source"])?;
    if kind == "jsonl" && rows.iter().any(|r| r.sample.is_none()) {
        return Err(ApiError::bad_request(
            "a jsonl data source is graded as it is: every row needs a `sample` (use 'completions' to sample a model)",
        )
        .with_param("data_source.source"));
    }
    if kind == "completions" {
        let template = &source["input_messages"];
        if template["type"] != "template" || !template["template"].is_array() {
            return Err(ApiError::bad_request(
                "input_messages must be {type: 'template', template: [messages]}",
            )
            .with_param("data_source.input_messages"));
        }
    }
    let run = json!({
        "id": new_id("evalrun_"),
        "object": "eval.run",
        "eval_id": eval_id,
        "status": "queued",
        "model": model,
        "name": body["name"].as_str().unwrap_or_default(),
        "created_at": now(),
        "report_url": null,
        "result_counts": {"total": 0, "errored": 0, "failed": 0, "passed": 0},
        "per_model_usage": null,
        "per_testing_criteria_results": null,
        "data_source": source,
        "metadata": metadata(body.get("metadata"))?,
        "error": null,
    });
    state.store.insert("eval_run", Some(&eval_id), &run)?;
    let run_id = run["id"].as_str().unwrap_or_default().to_owned();
    if let Err(e) = state.eval_runs.submit(RunTask {
        eval,
        run: run.clone(),
        rows,
    }) {
        state.store.delete(&run_id)?;
        return Err(e);
    }
    Ok((StatusCode::CREATED, Json(run)))
}

/// A run waiting for a runner.
struct RunTask {
    eval: Value,
    run: Value,
    rows: Vec<SourceRow>,
}

/// A fixed set of threads running eval runs from a bounded queue: a burst of runs waits its
/// turn or gets 429, instead of each run starting a thread of its own.
#[derive(Debug)]
pub struct Runners {
    queue: std::sync::mpsc::SyncSender<RunTask>,
    waiting: std::sync::Mutex<Option<std::sync::mpsc::Receiver<RunTask>>>,
    capacity: usize,
}

impl std::fmt::Debug for RunTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTask")
            .field("run", &self.run["id"])
            .finish()
    }
}

impl Runners {
    /// Runners whose queue holds `capacity` runs.
    pub fn new(capacity: usize) -> Runners {
        let (queue, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        Runners {
            queue,
            waiting: std::sync::Mutex::new(Some(rx)),
            capacity: capacity.max(1),
        }
    }

    /// Starts `threads` runners. They hold the state weakly, so they end with the server.
    pub fn start(&self, state: &Arc<AppState>, threads: usize) {
        let Some(rx) = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let rx = Arc::new(std::sync::Mutex::new(rx));
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
    let id = task.run["id"].as_str().unwrap_or_default().to_owned();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute(state, &task.eval, &task.run, task.rows)
    }));
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
    let _ = state.store.modify::<()>(&id, |r| {
        r["status"] = json!("failed");
        r["error"] = json!({"code": code, "message": message});
        Ok(())
    });
}

/// A jsonl row's `sample`: a Sample object (`output_text`, `output_json`, …), a chat
/// completion-like object (`choices[0].message.content`), or a bare string.
fn given_sample(given: &Value) -> Sample {
    if let Some(text) = given.as_str() {
        return Sample::from_text(text);
    }
    if given.get("output_text").is_none() {
        if let Some(text) = given["choices"][0]["message"]["content"].as_str() {
            return Sample::from_text(text);
        }
    }
    serde_json::from_value(given.clone()).unwrap_or_else(|_| Sample::from_text(""))
}

fn render_messages(template: &[Value], item: &Value) -> Result<Vec<Value>, ApiError> {
    let empty = json!({});
    template
        .iter()
        .map(|message| {
            let mut message = message.clone();
            if let Some(text) = message["content"].as_str() {
                let rendered = Template::parse(text)
                    .render(Scope::new(item, &empty))
                    .map_err(|e| {
                        ApiError::bad_request(e.to_string())
                            .with_param("data_source.input_messages")
                    })?;
                message["content"] = json!(rendered);
            }
            if message["type"] == "message" {
                if let Some(map) = message.as_object_mut() {
                    map.remove("type");
                }
            }
            Ok(message)
        })
        .collect()
}

fn execute(
    state: &Arc<AppState>,
    eval: &Value,
    run: &Value,
    rows: Vec<SourceRow>,
) -> Result<(), ApiError> {
    let run_id = run["id"].as_str().unwrap_or_default().to_owned();
    let eval_id = eval["id"].as_str().unwrap_or_default().to_owned();
    let moved = state.store.modify(&run_id, |r| {
        if r["status"] != "queued" {
            return Err(());
        }
        r["status"] = json!("in_progress");
        Ok(())
    })?;
    if !matches!(moved, Some(Ok(_))) {
        return Ok(());
    }
    let mut criteria = Vec::new();
    for c in eval["testing_criteria"].as_array().into_iter().flatten() {
        let grader = Grader::from_value(c).map_err(|e| ApiError::internal(e.to_string()))?;
        // From the server's shared cache: a run reuses the Python workers of a grader that
        // graders/run (or an earlier run) already started.
        let compiled = state.graders.compile(&grader).map_err(|e| {
            ApiError::bad_request(format!(
                "a testing criterion cannot run here: {}",
                e.message
            ))
            .with_code("unsupported_grader")
        })?;
        let threshold = c["pass_threshold"]
            .as_f64()
            .unwrap_or_else(|| rft_eval::objects::pass_threshold(&grader));
        let id = c["id"].as_str().unwrap_or_default().to_owned();
        criteria.push((id, grader, compiled, threshold));
    }
    let source = &run["data_source"];
    let params = &source["sampling_params"];
    let model = run["model"].as_str().unwrap_or_default().to_owned();
    let template: Vec<Value> = source["input_messages"]["template"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let response_format =
        match &params["response_format"] {
            Value::Null => None,
            v => Some(ResponseFormat::from_value(v).map_err(|e| {
                ApiError::bad_request(format!("sampling_params.response_format: {e}"))
            })?),
        };
    let temperature = params["temperature"].as_f64().unwrap_or(1.0);
    let top_p = params["top_p"].as_f64().unwrap_or(1.0);
    let max_tokens = params["max_completion_tokens"]
        .as_u64()
        .unwrap_or(crate::inference::DEFAULT_MAX_TOKENS as u64);
    let seed = params["seed"].as_u64().unwrap_or(42);
    let mut counts = (0u64, 0u64, 0u64, 0u64); // total, errored, failed, passed
    let mut per_criterion: Vec<(u64, u64)> = vec![(0, 0); criteria.len()];
    let mut usage = (0u64, 0u64, 0u64); // calls, prompt, completion
    for (index, row) in rows.iter().enumerate() {
        let status = state
            .store
            .get("eval_run", &run_id)?
            .and_then(|r| r["status"].as_str().map(str::to_owned));
        if status.as_deref() != Some("in_progress") {
            return Ok(()); // canceled (or deleted) meanwhile
        }
        let (sample, input, finish, row_usage) = match &row.sample {
            Some(given) => (given_sample(given), Vec::new(), "stop".to_owned(), (0, 0)),
            None => {
                let messages = render_messages(&template, &row.item)?;
                let out = state.inference.complete_blocking(
                    &state.store,
                    ChatCall {
                        model: model.clone(),
                        messages: messages.clone(),
                        n: 1,
                        params: SamplingParams {
                            temperature,
                            top_p,
                            max_tokens: max_tokens as usize,
                            seed: seed ^ index as u64,
                            ..SamplingParams::default()
                        },
                        response_format: response_format.clone(),
                    },
                )?;
                let completion = out.completions.into_iter().next();
                let text = completion
                    .as_ref()
                    .and_then(|c| c.text.clone())
                    .unwrap_or_default();
                let tokens = completion.as_ref().map_or(0, |c| c.ids.len() as u64);
                usage.0 += 1;
                usage.1 += out.prompt_tokens as u64;
                usage.2 += tokens;
                (
                    Sample::from_text(&text),
                    messages,
                    completion
                        .map(|c| c.finish_reason.as_str().to_owned())
                        .unwrap_or_else(|| "stop".into()),
                    (out.prompt_tokens as u64, tokens),
                )
            }
        };
        let mut results = Vec::new();
        let mut all_pass = true;
        let mut errored = false;
        for (i, (id, grader, compiled, threshold)) in criteria.iter().enumerate() {
            let graded = compiled.grade(&sample, &row.item);
            let error = rft_eval::run::has_error(&graded);
            let passed = !error && graded.reward >= *threshold;
            errored |= error;
            all_pass &= passed;
            if passed {
                per_criterion[i].0 += 1;
            } else {
                per_criterion[i].1 += 1;
            }
            results.push(json!({
                "name": grader.name(),
                "type": rft_eval::objects::result_type(grader),
                "score": graded.reward,
                "passed": passed,
                "sample": null,
                "testing_criteria": id,
                "metadata": graded.metadata,
                "sub_rewards": graded.sub_rewards,
            }));
        }
        counts.0 += 1;
        if errored {
            counts.1 += 1;
        } else if all_pass {
            counts.3 += 1;
        } else {
            counts.2 += 1;
        }
        let item = json!({
            "id": new_id("outputitem_"),
            "object": "eval.run.output_item",
            "run_id": run_id,
            "eval_id": eval_id,
            "created_at": now(),
            "status": if all_pass && !errored { "pass" } else { "fail" },
            "datasource_item_id": index,
            "datasource_item": row.item,
            "results": results,
            "sample": {
                "input": input,
                "output": [{"role": "assistant", "content": sample.output_text}],
                "finish_reason": finish,
                "model": model,
                "usage": {"total_tokens": row_usage.0 + row_usage.1, "completion_tokens": row_usage.1,
                          "prompt_tokens": row_usage.0, "cached_tokens": 0},
                "error": null,
                "temperature": temperature,
                "max_completion_tokens": max_tokens,
                "top_p": top_p,
                "seed": seed ^ index as u64,
            },
        });
        state.store.insert("output_item", Some(&run_id), &item)?;
        let snapshot = (counts, per_criterion.clone(), usage);
        state.store.modify::<()>(&run_id, |r| {
            write_progress(r, &criteria_ids(&criteria), snapshot, &model);
            Ok(())
        })?;
    }
    state.store.modify::<()>(&run_id, |r| {
        if r["status"] == "in_progress" {
            r["status"] = json!("completed");
        }
        write_progress(
            r,
            &criteria_ids(&criteria),
            (counts, per_criterion, usage),
            &model,
        );
        Ok(())
    })?;
    Ok(())
}

type Progress = ((u64, u64, u64, u64), Vec<(u64, u64)>, (u64, u64, u64));

fn criteria_ids(criteria: &[(String, Grader, Arc<rft_grade::CompiledGrader>, f64)]) -> Vec<String> {
    criteria.iter().map(|c| c.0.clone()).collect()
}

fn write_progress(run: &mut Value, ids: &[String], progress: Progress, model: &str) {
    let (counts, per_criterion, usage) = progress;
    run["result_counts"] = json!({"total": counts.0, "errored": counts.1, "failed": counts.2,
                                  "passed": counts.3});
    run["per_testing_criteria_results"] = json!(ids
        .iter()
        .zip(per_criterion)
        .map(
            |(id, (passed, failed))| json!({"testing_criteria": id, "passed": passed,
                                             "failed": failed})
        )
        .collect::<Vec<_>>());
    run["per_model_usage"] = if usage.0 > 0 {
        json!([{"model_name": model, "invocation_count": usage.0, "prompt_tokens": usage.1,
                "completion_tokens": usage.2, "total_tokens": usage.1 + usage.2,
                "cached_tokens": 0}])
    } else {
        json!([])
    };
}

/// Runs a previous process left unfinished are marked `failed` (their finished output items
/// stay): a run is cheap to start again, and a clear state beats one stuck `in_progress`.
pub fn fail_interrupted_runs(store: &rft_store::Store) -> Result<(), rft_store::StoreError> {
    for run in store.with_status("eval_run", &["queued", "in_progress"])? {
        let id = run["id"].as_str().unwrap_or_default();
        store.modify::<()>(id, |r| {
            r["status"] = json!("failed");
            r["error"] = json!({"code": "server_restarted",
                "message": "The server stopped before this run finished; its finished output items are kept. Start a new run."});
            Ok(())
        })?;
    }
    Ok(())
}

/// `GET /v1/evals/{eval_id}/runs`.
pub async fn list_runs(
    State(state): State<SharedState>,
    Path(eval_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    existing_eval(&state, &eval_id)?;
    let limit = parse_limit(query.get("limit").map(String::as_str), 20, 100)?;
    let status = query.get("status").map(String::as_str);
    let page = state.store.list(
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
    Ok(Json(list_body(page)))
}

/// `GET /v1/evals/{eval_id}/runs/{run_id}`.
pub async fn retrieve_run(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    existing_run(&state, &eval_id, &run_id).map(Json)
}

/// `POST /v1/evals/{eval_id}/runs/{run_id}`: cancels the run (spec: no `/cancel` suffix).
pub async fn cancel_run(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
    _body: Bytes,
) -> Result<Json<Value>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    let changed = state.store.modify(&run_id, |r| {
        let status = r["status"].as_str().unwrap_or_default().to_owned();
        if status != "queued" && status != "in_progress" {
            return Err(status);
        }
        r["status"] = json!("canceled");
        Ok(())
    })?;
    match changed {
        Some(Ok(run)) => Ok(Json(run)),
        Some(Err(status)) => Err(ApiError::bad_request(format!(
            "Cannot cancel run {run_id}: its status is '{status}'"
        ))
        .with_code("invalid_run_status")),
        None => Err(ApiError::not_found("eval run", &run_id)),
    }
}

/// `DELETE /v1/evals/{eval_id}/runs/{run_id}`.
pub async fn delete_run(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    state.store.delete(&run_id)?;
    Ok(Json(
        json!({"object": "eval.run.deleted", "deleted": true, "run_id": run_id}),
    ))
}

/// `GET /v1/evals/{eval_id}/runs/{run_id}/output_items`.
pub async fn list_items(
    State(state): State<SharedState>,
    Path((eval_id, run_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
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
    let page = state.store.list(
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
    Ok(Json(list_body(page)))
}

/// `GET /v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}`.
pub async fn retrieve_item(
    State(state): State<SharedState>,
    Path((eval_id, run_id, item_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    existing_run(&state, &eval_id, &run_id)?;
    state
        .store
        .get("output_item", &item_id)?
        .filter(|i| i["run_id"] == run_id.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::not_found("output item", &item_id))
}
