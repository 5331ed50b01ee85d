//! Sampling: sampling sessions over a base model or a checkpoint's adapter, `asample`, and the
//! one sampling thread that runs the requests.
//!
//! `asample` is checked by the sampling-request check every API shares
//! (`rft_model::request::check_sampling`: `num_samples × max_tokens` capped like chat's, one
//! seeding rule). The thread takes every waiting request of one sampler and runs them in
//! batches the engine host plans within its byte budget (`rft_model::host::plan_batches`,
//! shortest prompts first), so requests that are each within every limit cannot together
//! make one prefill that takes the process's memory. Base models and merged snapshots come
//! from the engine host, shared with every other user of the process.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::{Extension, Json};
use prost::Message;
use rft_model::host::{plan_batches, RequestShape};
use rft_model::request::{check_sampling, SamplingAsk};
use rft_model::sample::{FinishReason, SampleRequest, Sampler, SamplingParams};
use rft_model::train::TokenSequence;
use rft_train::primitives;

use crate::checkpoints::existing_checkpoint;
use crate::error::{TinkerError, TinkerJson};
use crate::futures::Outcome;
use crate::model_thread::{ModelMeta, MAX_EPHEMERAL_SNAPSHOTS};
use crate::paths::CheckpointPath;
use crate::sessions::SamplerEntry;
use crate::wire::{self, Stop};
use crate::{proto, Owner, Shared, DEFAULT_SAMPLE_TOKENS, MAX_QUEUED_SAMPLES, MAX_SAMPLERS};

fn too_many_samplers() -> TinkerError {
    TinkerError::Busy(format!(
        "{MAX_SAMPLERS} sampling sessions are open; close a session to free them"
    ))
}

/// Registers the sampler of a snapshot just saved, pruning the model's oldest snapshots.
pub(crate) fn open_snapshot_sampler(
    shared: &Shared,
    model_id: &str,
    sampler_id: &str,
    meta: &ModelMeta,
    path: &CheckpointPath,
) {
    let Ok(dir) = path.dir(&shared.root) else {
        return;
    };
    let mut registry = shared.registry();
    let Some((session, owner)) = registry
        .models
        .get(model_id)
        .map(|m| (m.session.clone(), m.owner.clone()))
    else {
        // The model was closed while it saved: nobody can use the sampler.
        return;
    };
    if registry.samplers.len() >= MAX_SAMPLERS {
        return;
    }
    registry.samplers.insert(
        sampler_id.to_owned(),
        SamplerEntry {
            owner,
            session: Some(session),
            base_model: meta.base_model.clone(),
            adapter: Some(dir.clone()),
            model_path: Some(path.uri()),
        },
    );
    let mut dropped = Vec::new();
    if let Some(model) = registry.models.get_mut(model_id) {
        model.ephemeral.push_back((dir, sampler_id.to_owned()));
        while model.ephemeral.len() > MAX_EPHEMERAL_SNAPSHOTS {
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

/// Whether a new snapshot sampler may be opened.
pub(crate) fn check_sampler_room(shared: &Shared) -> Result<(), TinkerError> {
    if shared.registry().samplers.len() >= MAX_SAMPLERS {
        return Err(too_many_samplers());
    }
    Ok(())
}

/// What a sampler samples from: a base model or one of the caller's checkpoints over its base.
fn sampler_target(
    shared: &Shared,
    owner: &Owner,
    base_model: Option<&str>,
    model_path: Option<&str>,
) -> Result<SamplerEntry, TinkerError> {
    match (model_path, base_model) {
        (Some(uri), base) => {
            let (path, dir, meta) =
                existing_checkpoint(shared, owner, uri).map_err(|e| e.with_param("model_path"))?;
            if base.is_some_and(|b| b != meta.base_model) {
                return Err(TinkerError::bad_request(format!(
                    "the weights were trained from '{}'",
                    meta.base_model
                ))
                .with_param("base_model"));
            }
            Ok(SamplerEntry {
                owner: owner.clone(),
                session: None,
                base_model: meta.base_model,
                adapter: Some(dir),
                model_path: Some(path.uri()),
            })
        }
        (None, Some(base)) => {
            if shared.models.resolve(base).is_none() {
                return Err(TinkerError::bad_request(format!(
                    "The model '{base}' is not served here."
                ))
                .with_param("base_model"));
            }
            Ok(SamplerEntry {
                owner: owner.clone(),
                session: None,
                base_model: base.to_owned(),
                adapter: None,
                model_path: None,
            })
        }
        (None, None) => Err(TinkerError::bad_request("give base_model or model_path")),
    }
}

pub(crate) async fn create_sampling_session(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::CreateSampler>,
) -> Result<Json<wire::SamplerCreated>, TinkerError> {
    let mut entry = sampler_target(
        &shared,
        &owner,
        request.base_model.as_deref(),
        request.model_path.as_deref(),
    )?;
    let mut registry = shared.registry();
    registry.touch_session(&owner, &request.session_id)?;
    if registry.samplers.len() >= MAX_SAMPLERS {
        return Err(too_many_samplers());
    }
    entry.session = Some(request.session_id);
    let id = rft_types::ids::new_id("samp_");
    registry.samplers.insert(id.clone(), entry);
    Ok(Json(wire::SamplerCreated {
        kind: "create_sampling_session",
        sampling_session_id: id,
    }))
}

pub(crate) async fn get_sampler(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    UrlPath(sampler_id): UrlPath<String>,
) -> Result<Json<wire::SamplerInfo>, TinkerError> {
    let registry = shared.registry();
    let entry = registry.sampler(&owner, &sampler_id)?;
    Ok(Json(wire::SamplerInfo {
        base_model: entry.base_model.clone(),
        model_path: entry.model_path.clone(),
        sampler_id,
    }))
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
    /// How to sample.
    pub(crate) params: SamplingParams,
    /// Add the tokenizer's end-of-turn ids to `params.stop_ids` (the client sent no `stop`).
    pub(crate) stop_at_eos: bool,
    /// Return the prompt's log-probs.
    pub(crate) prompt_logprobs: bool,
}

pub(crate) async fn asample(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::AsampleRequest>,
) -> Result<Json<wire::SampleQueued>, TinkerError> {
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
            TinkerError::bad_request(format!("{name} is not supported by OpenRFT"))
                .with_param(name),
        );
    }
    let target = match &request.sampling_session_id {
        Some(id) => shared
            .registry()
            .sampler(&owner, id)
            .cloned()
            .map_err(|_| TinkerError::Gone {
                what: "sampling session",
            })?,
        None => sampler_target(
            &shared,
            &owner,
            request.base_model.as_deref(),
            request.model_path.as_deref(),
        )?,
    };
    let spec = shared
        .models
        .resolve(&target.base_model)
        .ok_or_else(|| TinkerError::bad_request("the sampler's base model is no longer served"))?;
    let prompt = request.prompt.tokens()?;
    if prompt.is_empty() {
        return Err(TinkerError::bad_request("the prompt is empty").with_param("prompt"));
    }
    let params = &request.sampling_params;
    let context = shared.context(&target.base_model);
    let room = context.saturating_sub(prompt.len());
    if params.max_tokens.is_some_and(|m| m > room) || room == 0 {
        return Err(TinkerError::bad_request(format!(
            "max_tokens must be at most {room}: prompt plus completion within the context of {context}"
        ))
        .with_param("sampling_params.max_tokens"));
    }
    let (stop_strings, stop_ids, stop_at_eos) = match params.stop.clone() {
        None => (Vec::new(), Vec::new(), true),
        Some(Stop::Text(s)) => (vec![s], Vec::new(), false),
        Some(Stop::Texts(list)) => (list, Vec::new(), false),
        Some(Stop::Tokens(ids)) => (Vec::new(), ids, false),
    };
    let ask = SamplingAsk {
        n: request.num_samples,
        max_tokens: params.max_tokens,
        max_tokens_param: "max_tokens",
        temperature: params.temperature,
        top_p: params.top_p,
        top_k: params.top_k,
        stop_strings,
        stop_ids,
        seed: params.seed,
    };
    let sampling =
        check_sampling(&ask, &shared.limits, DEFAULT_SAMPLE_TOKENS.min(room)).map_err(|fault| {
            if fault.param == "n" {
                TinkerError::bad_request(fault.message.replace("n must", "num_samples must"))
                    .with_param("num_samples")
            } else {
                fault.into()
            }
        })?;
    if shared.queued_samples.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_SAMPLES {
        shared.queued_samples.fetch_sub(1, Ordering::Relaxed);
        return Err(TinkerError::Busy(format!(
            "{MAX_QUEUED_SAMPLES} sampling requests are waiting; retry shortly"
        )));
    }
    let request_id = match shared.futures.create(&owner, None) {
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
        shared.futures.forget(&request_id);
        return Err(TinkerError::Internal(
            "the sampling thread has stopped".into(),
        ));
    }
    let sample_sequence_ids = (0..request.num_samples)
        .map(|i| format!("{request_id}:{i}"))
        .collect();
    Ok(Json(wire::SampleQueued {
        request_id,
        sample_sequence_ids,
    }))
}

/// Starts the sampling thread.
pub(crate) fn start_sampler(shared: Arc<Shared>, jobs: Receiver<SampleJob>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rft-tinker-sample".into())
        .spawn(move || run_sampler(&shared, &jobs))
        .map(|_| ())
}

fn run_sampler(shared: &Shared, jobs: &Receiver<SampleJob>) {
    let mut waiting: Vec<SampleJob> = Vec::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push(job),
                Err(_) => return,
            }
        }
        waiting.extend(jobs.try_iter());
        // The waiting requests of the first one's sampler, run in planned batches.
        let key = (waiting[0].spec.clone(), waiting[0].adapter.clone());
        let (group, rest): (Vec<SampleJob>, Vec<SampleJob>) = waiting
            .drain(..)
            .partition(|j| j.spec == key.0 && j.adapter == key.1);
        waiting = rest;
        shared
            .queued_samples
            .fetch_sub(group.len(), Ordering::Relaxed);
        let outcomes = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sample_group(shared, &key.0, key.1.as_deref(), &group)
        })) {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => group.iter().map(|_| e.clone()).collect(),
            Err(panic) => {
                let message = crate::panic_message(&*panic);
                shared.host.drop_unlent();
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
    spec: &str,
    adapter: Option<&Path>,
    group: &[SampleJob],
) -> Result<Vec<Outcome>, Outcome> {
    let failed = |e: rft_model::ModelError| match e {
        rft_model::ModelError::MemoryBudget { .. } => Outcome::user(e.to_string()),
        other => Outcome::server(other.to_string()),
    };
    let engine = shared.host.base(spec).map_err(failed)?;
    let context = engine.model.config().max_position_embeddings;
    shared.set_context(&group[0].base_model, context);
    let weights_error =
        |e: rft_model::ModelError| Outcome::user(format!("cannot load the sampler's weights: {e}"));
    let (merged, unmerged) = match adapter {
        // A bf16 base would round a merged adapter's update away: unmerged, its path is f32.
        Some(dir) if !engine.model.merges_exactly() => (
            None,
            Some(shared.host.adapter(&engine, dir).map_err(weights_error)?),
        ),
        // Folded into a copy of the weights once per snapshot, as the trainer's own `sample`
        // does: every decode step then costs one matmul per projection. When the copy does not
        // fit the memory budget, the adapter is applied unmerged over the shared base instead
        // (slower per step, a few MB).
        Some(dir) => match shared.host.merged(&engine, dir) {
            Ok(model) => (Some(model), None),
            Err(rft_model::ModelError::MemoryBudget { .. }) => (
                None,
                Some(shared.host.adapter(&engine, dir).map_err(weights_error)?),
            ),
            Err(other) => return Err(weights_error(other)),
        },
        None => (None, None),
    };
    let model = merged.as_deref().unwrap_or(&engine.model);
    let adapter = unmerged.as_deref();
    // Requests checked against the real context now that the model is loaded; those past it
    // fail alone.
    let vocab = model.config().vocab_size;
    let mut outcomes: Vec<Option<Outcome>> = group
        .iter()
        .map(|job| {
            if let Some(&id) = job.prompt.iter().find(|&&id| id as usize >= vocab) {
                Some(Outcome::user(format!(
                    "prompt token {id} is not in the model's vocabulary of {vocab}"
                )))
            } else if job.prompt.len() + job.params.max_tokens > context {
                Some(Outcome::user(format!(
                    "the prompt ({} tokens) plus max_tokens ({}) exceed the model's context of {context}",
                    job.prompt.len(),
                    job.params.max_tokens
                )))
            } else {
                None
            }
        })
        .collect();
    let runnable: Vec<usize> = (0..group.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    let shapes: Vec<RequestShape> = runnable
        .iter()
        .map(|&i| RequestShape {
            prompt: group[i].prompt.len(),
            n: group[i].n,
            max_tokens: group[i].params.max_tokens,
        })
        .collect();
    let sampler = Sampler {
        model,
        adapter,
        tokenizer: Some(&engine.tokenizer),
    };
    for batch in plan_batches(model.config(), &shapes, shared.batch_bytes) {
        let jobs: Vec<&SampleJob> = batch.iter().map(|&b| &group[runnable[b]]).collect();
        let requests: Vec<SampleRequest> = jobs
            .iter()
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
        // A batch that fails fails its own requests; the others keep their results.
        match sampler.run(&requests) {
            Ok(results) => {
                for ((&b, job), completions) in batch.iter().zip(&jobs).zip(results) {
                    outcomes[runnable[b]] =
                        Some(sample_response(model, adapter, job, &completions));
                }
            }
            Err(e) => {
                for &b in &batch {
                    outcomes[runnable[b]] = Some(Outcome::server(format!("sampling failed: {e}")));
                }
            }
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| Outcome::server("the request was not sampled")))
        .collect())
}

/// The `SampleResponse` of one request.
fn sample_response(
    model: &rft_model::CausalLm,
    adapter: Option<&rft_model::lora::LoraAdapter>,
    job: &SampleJob,
    completions: &[rft_model::sample::Completion],
) -> Outcome {
    let prompt_logprobs = if job.prompt_logprobs {
        let mut values = vec![f32::NAN];
        if job.prompt.len() > 1 {
            let sequence = TokenSequence {
                prompt: job.prompt[..1].to_vec(),
                completion: job.prompt[1..].to_vec(),
            };
            match primitives::sequence_logprobs(model, adapter, &[sequence]) {
                Ok(scored) => values.extend(scored.into_iter().flatten()),
                Err(e) => return Outcome::server(e.to_string()),
            }
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
    Outcome::Proto(response.encode_to_vec())
}
