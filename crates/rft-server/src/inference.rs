//! `POST /v1/chat/completions` over base models, fine-tuned models and checkpoints.
//!
//! One inference thread serves every chat request: its models come from the process's engine
//! host (`rft_model::host::EngineHost`: a base model is loaded once for chat, Tinker, evals and
//! jobs together, and every adapter over a base shares its weights). Requests wait in a bounded
//! queue (429 when full); each time the thread takes work it drains the queue and samples the
//! waiting requests for the same model in batches the host plans within its byte budget
//! (`rft_model::host::plan_batches`, shortest prompts first), so concurrent clients share the
//! decode steps and no burst of long prompts makes one prefill that takes the process's memory.
//!
//! `stream: true` answers in OpenAI's SSE chunk format as the engine decodes: the sampler
//! reports each sample's new text (holding back what could still become a stop string) and
//! each sample's end, and the handler forwards them as chunks. With `logprobs` the chunks are
//! built from the finished sample instead, one per token, so each carries its token's record.
//!
//! With `tools`, each answer's tool calls are parsed out in the chat template's syntax
//! (`rft_model::tool_calls`) into `message.tool_calls` with `finish_reason: "tool_calls"`;
//! streamed, such answers are sent when complete, the calls in OpenAI's delta shape.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rft_model::constrain::ResponseFormat;
use rft_model::engine::Engine;
use rft_model::host::{plan_batches, EngineHost, RequestShape};
use rft_model::lora::LoraAdapter;
use rft_model::request::{check_sampling, SamplingAsk, SamplingLimits};
use rft_model::sample::{Cancel, Completion, Sampler, SamplingParams};
use rft_model::tool_calls::{parse_tool_calls, ParsedOutput};
use rft_store::Store;
use rft_types::api::chat::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, ChatUsage, Choice, ChoiceLogprobs,
    ChunkChoice, Stop, TokenLogprob,
};
use rft_types::api::job::{FineTuningJob, JobStatus};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::error::{parse_body, ApiJson};
use crate::{new_id, now, ApiError, SharedState};

/// Completion tokens when the request sets no limit.
pub(crate) const DEFAULT_MAX_TOKENS: usize = 512;

/// What a model name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ModelRef {
    /// The base model spec (name or path).
    pub(crate) base: String,
    /// A PEFT adapter folder over it.
    pub(crate) adapter: Option<PathBuf>,
}

/// Resolves an API model name: `ft:…` names of succeeded jobs, `…:ckpt-step-N` checkpoint
/// names, or a base model of the catalog (nothing else: names are not paths). Both kinds of
/// `ft:` name end with their job's id (`ft:<base>:<suffix>:<job id>[:ckpt-step-N]`), so one
/// job is read, not every job.
pub(crate) fn resolve(
    store: &Store,
    blobs: &rft_store::blobs::Blobs,
    catalog: &Catalog,
    name: &str,
) -> Result<Option<ModelRef>, ApiError> {
    if !name.starts_with("ft:") {
        return Ok(catalog.resolve(name).map(|base| ModelRef {
            base,
            adapter: None,
        }));
    }
    let model_name = name.rsplit_once(":ckpt-step-").map_or(name, |(m, _)| m);
    let Some(job_id) = model_name
        .rsplit(':')
        .next()
        .filter(|id| id.starts_with("ftjob-"))
    else {
        return Ok(None);
    };
    let Some(job) = store.get_object::<FineTuningJob>("job", job_id)? else {
        return Ok(None);
    };
    // The job's base must still be served (a job created before the allow list existed may
    // name a path).
    let Some(base) = catalog.resolve(&job.model) else {
        return Ok(None);
    };
    let dir = store.job_dir(job_id);
    // The adapter may have been trained by a worker on another machine: fetched from the
    // blob store into this process's working copy on first use.
    let rel = if job.status == JobStatus::Succeeded && job.fine_tuned_model.as_deref() == Some(name)
    {
        "final".to_owned()
    } else {
        let step = crate::job_storage::checkpoints(store, blobs, job_id)
            .into_iter()
            .find(|ckpt| ckpt.fine_tuned_model_checkpoint == name)
            .map(|ckpt| ckpt.step_number);
        match step {
            Some(step) => format!("checkpoints/step-{step}"),
            None => return Ok(None),
        }
    };
    if !crate::job_storage::ensure_adapter(store, blobs, job_id, &rel) {
        return Ok(None);
    }
    Ok(Some(ModelRef {
        base,
        adapter: Some(dir.join(rel)),
    }))
}

/// One chat request for the inference thread.
pub(crate) struct ChatJob {
    model: ModelRef,
    /// A completions prompt given as text or token ids, used instead of `messages` (no chat
    /// template).
    raw_prompt: Option<RawPrompt>,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    n: usize,
    params: SamplingParams,
    response_format: Option<ResponseFormat>,
    reply: oneshot::Sender<Result<ChatResult, ApiError>>,
    /// For `stream: true`: each sample's text as it is decoded, and its end.
    stream: Option<tokio::sync::mpsc::UnboundedSender<StreamEvent>>,
    /// Whether the client set `max_tokens`: a prompt that leaves less room than that is an
    /// error; the default is cut to the room left.
    max_tokens_given: bool,
    /// Whether to parse tool calls out of the answers (tools offered, `tool_choice` not
    /// `"none"`).
    parse_tools: bool,
}

/// A `/v1/completions` prompt.
#[derive(Debug, Clone)]
pub(crate) enum RawPrompt {
    /// Text, tokenized as the model's tokenizer does (with its special tokens).
    Text(String),
    /// Token ids as given.
    Tokens(Vec<u32>),
}

/// A streamed piece of one choice.
#[derive(Debug)]
enum StreamEvent {
    Text { choice: usize, text: String },
    Finished { choice: usize, reason: &'static str },
}

/// What the inference thread answers.
pub(crate) struct ChatResult {
    pub(crate) prompt_tokens: usize,
    /// The prompt's token ids.
    pub(crate) prompt_ids: Vec<u32>,
    /// A completions prompt's text (decoded from its ids), for `echo`; empty for chat.
    pub(crate) prompt_text: String,
    completions: Vec<Completion>,
    /// Each completion's tokens as text pieces (for streaming and logprobs).
    pieces: Vec<Vec<TokenPiece>>,
    /// Each completion split into content and tool calls, when the job parses tool calls.
    parsed: Vec<Option<ParsedOutput>>,
}

struct TokenPiece {
    text: String,
    bytes: Vec<u8>,
}

/// The inference thread's handle.
#[derive(Debug)]
pub(crate) struct Inference {
    queue: SyncSender<ChatJob>,
    /// Places taken in the queue: jobs sent and not yet taken by the thread, and places
    /// reserved for a request's next prompts. Counted beside the channel (whose fill cannot be
    /// read) so that a request of several prompts is queued whole or refused whole.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    catalog: Arc<Catalog>,
    /// Where fine-tuned adapters are fetched from when a worker elsewhere trained them.
    blobs: rft_store::blobs::Blobs,
    /// Adapters loaded at run time by name (`/v1/load_lora_adapter`).
    pub(crate) adapters: crate::adapters::LoadedAdapters,
}

impl ChatResult {
    /// The samples.
    pub(crate) fn completions(&self) -> &[Completion] {
        &self.completions
    }

    /// Sample `index`'s tokens as their shares of its text.
    pub(crate) fn piece_texts(&self, index: usize) -> Vec<&str> {
        self.pieces
            .get(index)
            .map(|pieces| pieces.iter().map(|p| p.text.as_str()).collect())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for ChatJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatJob")
            .field("model", &self.model)
            .finish()
    }
}

/// A chat completion asked for by server code (eval runs), outside HTTP.
#[derive(Debug, Clone)]
pub(crate) struct ChatCall {
    /// The API model name.
    pub(crate) model: String,
    /// The chat messages.
    pub(crate) messages: Vec<Value>,
    /// Samples.
    pub(crate) n: usize,
    /// How to sample.
    pub(crate) params: SamplingParams,
    /// Structured output.
    pub(crate) response_format: Option<ResponseFormat>,
    /// Function tools offered (already checked); their calls are parsed out of the answers.
    pub(crate) tools: Option<Vec<Value>>,
}

/// What a [`ChatCall`] returns.
#[derive(Debug, Clone)]
pub(crate) struct ChatOutput {
    /// Prompt tokens.
    pub(crate) prompt_tokens: usize,
    /// The samples.
    pub(crate) completions: Vec<Completion>,
    /// Each sample split into content and tool calls, when tools were offered.
    pub(crate) parsed: Vec<Option<ParsedOutput>>,
}

impl Inference {
    /// Samples through the same queue and batches as `/v1/chat/completions`, waiting for a
    /// free place in the queue; for background work (eval runs), never on an async thread.
    pub(crate) fn complete_blocking(
        &self,
        store: &Store,
        call: ChatCall,
    ) -> Result<ChatOutput, ApiError> {
        let model = self
            .resolve(store, &call.model)?
            .ok_or_else(|| model_not_found(&call.model))?;
        let (reply, answer) = oneshot::channel();
        // Waits for room rather than refusing (a judge's call inside a job); its place counts
        // like any other while it is queued.
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.queue
            .send(ChatJob {
                model,
                raw_prompt: None,
                messages: call.messages,
                parse_tools: call.tools.is_some(),
                tools: call.tools,
                n: call.n,
                params: call.params,
                response_format: call.response_format,
                reply,
                stream: None,
                max_tokens_given: true,
            })
            .map_err(|_| {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                ApiError::internal("the inference thread is not running")
            })?;
        let result = answer
            .blocking_recv()
            .map_err(|_| ApiError::internal("the inference thread dropped the request"))??;
        Ok(ChatOutput {
            prompt_tokens: result.prompt_tokens,
            completions: result.completions,
            parsed: result.parsed,
        })
    }

    /// Starts the inference thread with a queue of `capacity` requests, sampling from the
    /// host's models in batches of at most `batch_bytes` beyond the weights.
    pub(crate) fn start(
        host: Arc<EngineHost>,
        catalog: Arc<Catalog>,
        blobs: rft_store::blobs::Blobs,
        adapters: crate::adapters::LoadedAdapters,
        capacity: usize,
        batch_bytes: u64,
    ) -> Inference {
        let capacity = capacity.max(1);
        let (queue, rx) = sync_channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = Arc::clone(&queued);
        // The thread ends when the queue's sender (this handle) is dropped.
        let spawned = std::thread::Builder::new()
            .name("rft-inference".into())
            .spawn(move || Worker { host, batch_bytes }.run(rx, &taken));
        if let Err(e) = spawned {
            tracing::error!("cannot start the inference thread: {e}; chat completions will fail");
        }
        Inference {
            queue,
            queued,
            capacity,
            catalog,
            blobs,
            adapters,
        }
    }

    /// The base models clients may name.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// What a model name stands for: a loaded adapter's name, then [`resolve`]'s names.
    pub(crate) fn resolve(&self, store: &Store, name: &str) -> Result<Option<ModelRef>, ApiError> {
        // Base and fine-tuned models first: a loaded adapter never shadows them.
        if let Some(model) = resolve(store, &self.blobs, &self.catalog, name)? {
            return Ok(Some(model));
        }
        Ok(self.adapters.get(name))
    }

    /// Takes `places` places in the queue, all or none: 429 when they are not all free. A
    /// request refused this way has queued nothing, so it leaves nothing (cancelled or not) in
    /// the way of the next.
    pub(crate) fn reserve(&self, places: usize) -> Result<Reservation<'_>, ApiError> {
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + places <= self.capacity).then_some(queued + places)
            });
        match taken {
            Ok(_) => Ok(Reservation {
                inference: self,
                left: places,
            }),
            Err(_) => Err(ApiError::busy(
                "The inference queue is full; retry after a short wait.",
            )),
        }
    }
}

/// Places taken in the inference queue ([`Inference::reserve`]); those not used by
/// [`Reservation::send`] are given back when it drops.
pub(crate) struct Reservation<'a> {
    inference: &'a Inference,
    left: usize,
}

impl Reservation<'_> {
    /// Sends `job` into one of the reserved places.
    fn send(&mut self, job: ChatJob) -> Result<(), ApiError> {
        if self.left == 0 {
            return Err(ApiError::internal("a request queued more than it reserved"));
        }
        match self.inference.queue.try_send(job) {
            Ok(()) => {
                // The place is the job's now; the thread gives it back when it takes the job.
                self.left -= 1;
                Ok(())
            }
            // The count bounds the channel's fill, so a reserved place is free in it.
            Err(TrySendError::Full(_)) => Err(ApiError::busy(
                "The inference queue is full; retry after a short wait.",
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(ApiError::internal("the inference thread is not running"))
            }
        }
    }

    /// Queues a `/v1/completions` prompt (no chat template) into one of the reserved places.
    pub(crate) fn submit_raw(
        &mut self,
        model: ModelRef,
        prompt: RawPrompt,
        n: usize,
        params: SamplingParams,
        response_format: Option<ResponseFormat>,
    ) -> Result<oneshot::Receiver<Result<ChatResult, ApiError>>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.send(ChatJob {
            model,
            raw_prompt: Some(prompt),
            messages: Vec::new(),
            tools: None,
            n,
            params,
            response_format,
            reply,
            stream: None,
            max_tokens_given: true,
            parse_tools: false,
        })?;
        Ok(answer)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inference.queued.fetch_sub(self.left, Ordering::AcqRel);
    }
}

/// What one OpenAI-style sampling request (chat, completions, an eval run's row) may ask for,
/// with `max_total` new tokens over all its samples.
pub(crate) fn chat_limits(max_total: usize) -> SamplingLimits {
    SamplingLimits {
        max_n: 128,
        max_tokens: 1_000_000,
        max_total_tokens: max_total,
        max_temperature: 2.0,
        max_stops: 4,
        ..SamplingLimits::default()
    }
}

/// The 404 of a model name that is not served.
pub(crate) fn model_not_found(name: &str) -> ApiError {
    ApiError::not_found("model", name)
        .with_param("model")
        .with_code("model_not_found")
        .with_message(format!(
            "The model '{name}' does not exist or you do not have access to it. Base models are the ones GET /v1/models lists; fine-tuned models exist once their job succeeded, and checkpoints are listed by GET /v1/fine_tuning/jobs/{{id}}/checkpoints."
        ))
}

struct Worker {
    host: Arc<EngineHost>,
    batch_bytes: u64,
}

/// A chat request ready to sample: its job, prompt length and the engine's request.
struct Prepared {
    job: ChatJob,
    prompt_tokens: usize,
    request: rft_model::sample::SampleRequest,
}

impl Worker {
    /// Samples what comes on `rx`, giving each job's place back to `queued` as it takes it.
    fn run(self, rx: Receiver<ChatJob>, queued: &AtomicUsize) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            queued.fetch_sub(batch.len(), Ordering::AcqRel);
            let mut groups: Vec<(ModelRef, Vec<ChatJob>)> = Vec::new();
            for job in batch {
                match groups.iter_mut().find(|(m, _)| *m == job.model) {
                    Some((_, jobs)) => jobs.push(job),
                    None => groups.push((job.model.clone(), vec![job])),
                }
            }
            for (model, jobs) in groups {
                // A panic fails this group's requests (their reply channels are dropped, so
                // each handler answers 500) and the thread goes on serving.
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.serve_group(&model, jobs)
                }));
                if let Err(panic) = served {
                    tracing::error!(
                        "the inference thread recovered from a panic serving {}: {}",
                        model.base,
                        crate::panic_message(&*panic)
                    );
                    // What the panic interrupted may be half-built: start clean.
                    self.host.drop_unlent();
                }
            }
        }
    }

    /// The base engine and adapter of `model`, from the host.
    fn load(&self, model: &ModelRef) -> Result<(Arc<Engine>, Option<Arc<LoraAdapter>>), ApiError> {
        let engine = self.host.base(&model.base).map_err(|e| match e {
            rft_model::ModelError::MemoryBudget { .. } => ApiError::unavailable(e.to_string()),
            other => {
                // The operator allowed this model, but its files are the server's business:
                // the details go to the log.
                tracing::error!("cannot load the model {}: {other}", model.base);
                ApiError::internal(format!("The model cannot be loaded: {other}"))
            }
        })?;
        let adapter = match &model.adapter {
            Some(dir) => Some(self.host.adapter(&engine, dir).map_err(|e| {
                ApiError::internal(format!("cannot load the adapter {}: {e}", dir.display()))
            })?),
            None => None,
        };
        Ok((engine, adapter))
    }

    fn serve_group(&self, model: &ModelRef, jobs: Vec<ChatJob>) {
        let (engine, adapter) = match self.load(model) {
            Ok(loaded) => loaded,
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut prepared = Vec::new();
        for job in jobs {
            match prepare(&engine, &job) {
                Ok((prompt_tokens, request)) => prepared.push(Prepared {
                    job,
                    prompt_tokens,
                    request,
                }),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        let shapes: Vec<RequestShape> = prepared
            .iter()
            .map(|p| RequestShape {
                prompt: p.prompt_tokens,
                n: p.request.n,
                max_tokens: p.request.params.max_tokens,
            })
            .collect();
        let mut slots: Vec<Option<Prepared>> = prepared.into_iter().map(Some).collect();
        for batch in plan_batches(engine.model.config(), &shapes, self.batch_bytes) {
            let run: Vec<Prepared> = batch.iter().filter_map(|&i| slots[i].take()).collect();
            sample_batch(&engine, adapter.as_deref(), run);
        }
    }
}

/// Renders a request's prompt and fits it to the model: `(prompt tokens, engine request)`.
fn prepare(
    engine: &Engine,
    job: &ChatJob,
) -> Result<(usize, rft_model::sample::SampleRequest), ApiError> {
    let prompt = match &job.raw_prompt {
        None => engine
            .chat_prompt(&job.messages, job.tools.as_deref())
            .map_err(|e| {
                ApiError::bad_request(format!("cannot render the chat template: {e}"))
                    .with_param("messages")
            })?,
        Some(RawPrompt::Text(text)) => engine.tokenizer.encode(text, true).map_err(|e| {
            ApiError::bad_request(format!("cannot tokenize the prompt: {e}")).with_param("prompt")
        })?,
        Some(RawPrompt::Tokens(ids)) => {
            let vocab = engine.model.config().vocab_size;
            if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::bad_request(format!(
                    "prompt token {id} is not in the model's vocabulary of {vocab}"
                ))
                .with_param("prompt"));
            }
            ids.clone()
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty").with_param("prompt"));
    }
    let len = prompt.len();
    let params = fit_context(
        engine.model.config().max_position_embeddings,
        len,
        job.params.clone(),
        job.max_tokens_given,
    )?;
    engine
        .request(prompt, job.n, params, job.response_format.as_ref())
        .map(|r| (len, r))
        .map_err(|e| {
            ApiError::bad_request(format!("invalid response_format: {e}"))
                .with_param("response_format")
        })
}

/// Samples one planned batch and answers each of its requests.
fn sample_batch(engine: &Engine, adapter: Option<&LoraAdapter>, run: Vec<Prepared>) {
    if run.is_empty() {
        return;
    }
    let sampler = Sampler {
        model: &engine.model,
        adapter,
        tokenizer: Some(&engine.tokenizer),
    };
    let requests: Vec<rft_model::sample::SampleRequest> =
        run.iter().map(|p| p.request.clone()).collect();
    let streams: Vec<Option<tokio::sync::mpsc::UnboundedSender<StreamEvent>>> =
        run.iter().map(|p| p.job.stream.clone()).collect();
    let mut forward = |event: rft_model::sample::SampleEvent<'_>| {
        // A client that went away just stops receiving; sampling goes on for the others.
        match event {
            rft_model::sample::SampleEvent::Text {
                request,
                sample,
                text,
            } => {
                if let Some(Some(tx)) = streams.get(request) {
                    let _ = tx.send(StreamEvent::Text {
                        choice: sample,
                        text: text.to_owned(),
                    });
                }
            }
            rft_model::sample::SampleEvent::Finished {
                request,
                sample,
                completion,
            } => {
                if let Some(Some(tx)) = streams.get(request) {
                    let _ = tx.send(StreamEvent::Finished {
                        choice: sample,
                        reason: completion.finish_reason.as_str(),
                    });
                }
            }
        }
    };
    let outcome = sampler.run_streaming(&requests, &mut forward);
    drop(streams);
    let tool_format = engine.tool_call_format();
    match outcome {
        Ok(groups) => {
            for (prepared, completions) in run.into_iter().zip(groups) {
                let job = prepared.job;
                let pieces = completions
                    .iter()
                    .map(|c| token_pieces(engine, c))
                    .collect();
                let parsed = completions
                    .iter()
                    .map(|c| {
                        job.parse_tools.then(|| {
                            parse_tool_calls(c.text.as_deref().unwrap_or_default(), tool_format)
                        })
                    })
                    .collect();
                let prompt_text = if job.raw_prompt.is_some() {
                    engine
                        .tokenizer
                        .decode(&prepared.request.prompt, false)
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                let _ = job.reply.send(Ok(ChatResult {
                    prompt_tokens: prepared.prompt_tokens,
                    prompt_ids: prepared.request.prompt,
                    prompt_text,
                    completions,
                    pieces,
                    parsed,
                }));
            }
        }
        Err(e) => {
            let error = ApiError::internal(format!("sampling failed: {e}"));
            for prepared in run {
                let _ = prepared.job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Holds a request to the model's context: the prompt and `max_tokens` must fit, or the
/// request is refused; an unset `max_tokens` is cut to the room left.
fn fit_context(
    context: usize,
    prompt_tokens: usize,
    mut params: SamplingParams,
    max_tokens_given: bool,
) -> Result<SamplingParams, ApiError> {
    let room = context.saturating_sub(prompt_tokens);
    if room == 0 || (max_tokens_given && params.max_tokens > room) {
        return Err(ApiError::bad_request(format!(
            "This model's context is {context} tokens; the messages take {prompt_tokens} and max_tokens asks for {} more. Shorten the messages or lower max_tokens.",
            params.max_tokens
        ))
        .with_param("messages")
        .with_code("context_length_exceeded"));
    }
    params.max_tokens = params.max_tokens.min(room);
    Ok(params)
}

/// Splits a completion's text into per-token pieces: each token's share of the final text
/// (incremental decoding, so multi-byte characters split across tokens come out whole).
fn token_pieces(engine: &Engine, c: &Completion) -> Vec<TokenPiece> {
    let text = c.text.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(c.ids.len());
    let mut emitted = 0usize;
    for i in 0..c.ids.len() {
        let decoded = engine
            .tokenizer
            .decode(&c.ids[..=i], true)
            .unwrap_or_default();
        // The part of the final text this prefix covers (the final text may be cut at a stop).
        let mut upto = decoded
            .bytes()
            .zip(text.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while !text.is_char_boundary(upto) {
            upto -= 1;
        }
        let piece = if upto > emitted {
            let p = text[emitted..upto].to_owned();
            emitted = upto;
            p
        } else {
            String::new()
        };
        let bytes = engine
            .tokenizer
            .token_bytes(c.ids[i])
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        out.push(TokenPiece { text: piece, bytes });
    }
    if emitted < text.len() {
        if let Some(last) = out.last_mut() {
            last.text.push_str(&text[emitted..]);
        }
    }
    out
}

/// Each answer's tool calls: `None` for answers without any (or when the request offered no
/// tools); only the first call of each with `parallel_tool_calls: false`.
fn answer_calls(parsed: &[Option<ParsedOutput>], single_call: bool) -> Vec<Option<ParsedOutput>> {
    parsed
        .iter()
        .map(|p| {
            let mut p = p.clone().filter(|p| !p.tool_calls.is_empty())?;
            if single_call {
                p.tool_calls.truncate(1);
            }
            Some(p)
        })
        .collect()
}

/// Checks `tools` with the one checker every entry point shares
/// (`rft_types::tools::check_tools`: at most 128 function tools with OpenAI's name rule). An
/// empty list is no tools.
pub(crate) fn check_tools(tools: Option<Vec<Value>>) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    rft_types::tools::check_tools(&tools)
        .map_err(|e| ApiError::bad_request(e.to_string()).with_param(e.field))?;
    Ok(Some(tools))
}

/// What the client asked of tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolChoice {
    /// Never call tools: answers are text, even if they look like a call.
    None,
    /// `auto`, `required` or a named function: the model's calls are parsed; the model is
    /// prompted with the tools but not forced to call one.
    Parse,
}

/// Checks `tool_choice`: `"none"`, `"auto"`, `"required"` or `{"type": "function",
/// "function": {"name"}}` naming an offered tool; anything but `"none"` needs `tools`.
fn check_tool_choice(
    choice: Option<&Value>,
    tools: Option<&[Value]>,
) -> Result<ToolChoice, ApiError> {
    let bad =
        |message: &str| Err(ApiError::bad_request(message.to_owned()).with_param("tool_choice"));
    let choice = match choice {
        None | Some(Value::Null) => return Ok(ToolChoice::Parse),
        Some(choice) => choice,
    };
    if choice.as_str() == Some("none") {
        return Ok(ToolChoice::None);
    }
    let Some(tools) = tools else {
        return bad("tool_choice is only allowed when tools are given");
    };
    match choice {
        Value::String(s) if s == "auto" || s == "required" => Ok(ToolChoice::Parse),
        Value::Object(_) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice.pointer("/function/name").and_then(Value::as_str);
            let offered = tools
                .iter()
                .any(|t| t.pointer("/function/name").and_then(Value::as_str) == name);
            if name.is_some() && offered {
                Ok(ToolChoice::Parse)
            } else {
                bad("tool_choice.function.name must name one of the tools")
            }
        }
        _ => bad("tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}"),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_body(body)?;
    let name = request.model.as_str();
    if name.is_empty() {
        return Err(
            ApiError::bad_request("Missing required parameter: 'model'.").with_param("model"),
        );
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must be a non-empty array of {role, content} objects",
        )
        .with_param("messages"));
    }
    let messages = request.messages;
    let (max_tokens_param, given) = match (request.max_completion_tokens, request.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, Some(v)) => ("max_tokens", Some(v)),
        (None, None) => ("max_tokens", None),
    };
    let max_tokens_given = given.is_some();
    let stop: Vec<String> = match request.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    // The one check every sampling API shares (rft_model::request), with chat's limits.
    let ask = SamplingAsk {
        n: request.n.map_or(1, |n| n as usize),
        max_tokens: given.map(|v| usize::try_from(v).unwrap_or(usize::MAX)),
        max_tokens_param,
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: None,
        stop_strings: stop,
        stop_ids: Vec::new(),
        seed: request.seed.map(|s| s as u64),
    };
    let limits = chat_limits(state.config.max_request_tokens);
    let checked = check_sampling(&ask, &limits, DEFAULT_MAX_TOKENS)
        .map_err(|fault| ApiError::bad_request(fault.message).with_param(fault.param))?;
    let n = ask.n;
    let response_format = match request.response_format.as_ref().filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(ResponseFormat::from_value(v).map_err(|e| {
            ApiError::bad_request(format!("Invalid response_format: {e}"))
                .with_param("response_format")
        })?),
    };
    let logprobs = request.logprobs.unwrap_or(false);
    let stream = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let tools = check_tools(request.tools)?;
    let tool_choice = check_tool_choice(request.tool_choice.as_ref(), tools.as_deref())?;
    // One call per answer when the client asks for it: the first call is kept.
    let single_call = request.parallel_tool_calls == Some(false);
    let parse_tools = tools.is_some() && tool_choice != ToolChoice::None;
    let model = state
        .inference
        .resolve(&state.store, name)?
        .ok_or_else(|| model_not_found(name))?;
    let cancel = Cancel::default();
    let (reply, answer) = oneshot::channel();
    let mut job = ChatJob {
        model,
        raw_prompt: None,
        messages,
        tools,
        n,
        params: SamplingParams {
            cancel: Some(cancel.clone()),
            ..checked
        },
        response_format,
        reply,
        stream: None,
        max_tokens_given,
        parse_tools,
    };
    // Dropped with this handler's future (the client went away) or with the stream's body:
    // either way the engine stops decoding for this request at its next step.
    let on_disconnect = CancelOnDrop(cancel);
    // Streaming without logprobs goes out token by token as the engine decodes; with logprobs
    // the per-token records are built from the finished sample (below), and so are answers that
    // may call tools: whether a piece of text is part of a call is known once the sample ends.
    let live = stream && !logprobs && !parse_tools;
    let events_rx = if live {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        job.stream = Some(tx);
        Some(rx)
    } else {
        None
    };
    state.inference.reserve(1)?.send(job)?;
    if let Some(rx) = events_rx {
        return Ok(
            live_stream(name.to_owned(), n, include_usage, rx, answer, on_disconnect)
                .into_response(),
        );
    }
    let result = answer
        .await
        .map_err(|_| ApiError::internal("the inference thread dropped the request"))??;
    on_disconnect.disarm();
    let calls = answer_calls(&result.parsed, single_call);
    let finish_reason = |index: usize, c: &Completion| {
        let called = matches!(calls.get(index), Some(Some(_)));
        rft_model::tool_calls::finish_reason(c.finish_reason.as_str(), called).to_owned()
    };
    let id = new_id("chatcmpl-");
    let created = now();
    let completion_tokens: usize = result.completions.iter().map(|c| c.ids.len()).sum();
    let usage = ChatUsage::new(result.prompt_tokens, completion_tokens);
    let record = |piece: &TokenPiece, logprob: f32| TokenLogprob {
        token: piece.text.clone(),
        logprob,
        bytes: piece.bytes.clone(),
        top_logprobs: Vec::new(),
    };
    if !stream {
        let choices = result
            .completions
            .iter()
            .zip(&result.pieces)
            .enumerate()
            .map(|(index, (c, pieces))| Choice {
                index,
                message: match calls.get(index) {
                    Some(Some(parsed)) => AssistantMessage::with_tool_calls(
                        parsed.content.clone(),
                        parsed.tool_calls_json(),
                    ),
                    _ => AssistantMessage::new(c.text.clone().unwrap_or_default()),
                },
                logprobs: logprobs.then(|| ChoiceLogprobs {
                    content: pieces
                        .iter()
                        .zip(&c.logprobs)
                        .map(|(p, &lp)| record(p, lp))
                        .collect(),
                    refusal: None,
                }),
                finish_reason: finish_reason(index, c),
            })
            .collect();
        return Ok(Json(ChatCompletion {
            id,
            object: "chat.completion".into(),
            created,
            model: name.to_owned(),
            choices,
            usage,
            system_fingerprint: "openrft".into(),
            service_tier: "default".into(),
        })
        .into_response());
    }
    let chunks = ChunkMaker::new(id, created, name.to_owned());
    let mut events = Vec::new();
    for (index, (c, pieces)) in result.completions.iter().zip(&result.pieces).enumerate() {
        events.push(chunks.event(vec![ChunkChoice::role(index)], None));
        if let Some(Some(parsed)) = calls.get(index) {
            // The text beside the calls, then each call in OpenAI's delta shape: its id, type
            // and name with empty arguments, then the arguments.
            if !parsed.content.is_empty() {
                events.push(chunks.event(
                    vec![ChunkChoice::text(index, parsed.content.clone(), None)],
                    None,
                ));
            }
            for (call_index, call) in parsed.tool_calls.iter().enumerate() {
                let head = serde_json::json!({
                    "index": call_index, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                });
                let arguments = serde_json::json!({
                    "index": call_index, "function": {"arguments": call.arguments},
                });
                for delta in [head, arguments] {
                    events.push(
                        chunks.event(vec![ChunkChoice::tool_calls(index, vec![delta])], None),
                    );
                }
            }
            events.push(chunks.event(
                vec![ChunkChoice::finish(index, &finish_reason(index, c))],
                None,
            ));
            continue;
        }
        for (piece, &lp) in pieces.iter().zip(&c.logprobs) {
            if piece.text.is_empty() && !logprobs {
                continue;
            }
            let lp = logprobs.then(|| ChoiceLogprobs {
                content: vec![record(piece, lp)],
                refusal: None,
            });
            events.push(chunks.event(vec![ChunkChoice::text(index, piece.text.clone(), lp)], None));
        }
        events.push(chunks.event(
            vec![ChunkChoice::finish(index, c.finish_reason.as_str())],
            None,
        ));
    }
    if include_usage {
        events.push(chunks.event(Vec::new(), Some(usage)));
    }
    events.push(Event::default().data("[DONE]"));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>));
    Ok(Sse::new(stream).into_response())
}

/// Builds the SSE events of one streamed answer (same id, time and model in every chunk).
#[derive(Clone)]
struct ChunkMaker {
    id: String,
    created: i64,
    model: String,
}

impl ChunkMaker {
    fn new(id: String, created: i64, model: String) -> ChunkMaker {
        ChunkMaker { id, created, model }
    }

    fn event(&self, choices: Vec<ChunkChoice>, usage: Option<ChatUsage>) -> Event {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: "openrft".into(),
            choices,
            usage,
        };
        Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
    }
}

/// The SSE answer of a streamed chat: a role chunk per choice, then each piece of text as the
/// engine decodes it, each choice's finish chunk as it ends, the usage chunk (with
/// `stream_options.include_usage`) and `[DONE]`. An error after the stream began is sent as an
/// `{"error": ...}` event, as OpenAI does.
fn live_stream(
    model: String,
    n: usize,
    include_usage: bool,
    rx: tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    answer: oneshot::Receiver<Result<ChatResult, ApiError>>,
    on_disconnect: CancelOnDrop,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let chunks = ChunkMaker::new(new_id("chatcmpl-"), now(), model);
    let roles: Vec<Event> = (0..n)
        .map(|index| chunks.event(vec![ChunkChoice::role(index)], None))
        .collect();
    enum Phase {
        Events,
        Tail,
        Done,
    }
    let state = (
        Phase::Events,
        rx,
        Some(answer),
        std::collections::VecDeque::from(roles),
        on_disconnect,
    );
    let body = futures_util::stream::unfold(state, move |mut state| {
        let chunks = chunks.clone();
        async move {
            loop {
                if let Some(event) = state.3.pop_front() {
                    return Some((Ok(event), state));
                }
                match state.0 {
                    Phase::Events => match state.1.recv().await {
                        Some(StreamEvent::Text { choice, text }) => state.3.push_back(
                            chunks.event(vec![ChunkChoice::text(choice, text, None)], None),
                        ),
                        Some(StreamEvent::Finished { choice, reason }) => state.3.push_back(
                            chunks.event(vec![ChunkChoice::finish(choice, reason)], None),
                        ),
                        None => state.0 = Phase::Tail,
                    },
                    Phase::Tail => {
                        state.0 = Phase::Done;
                        let result = match state.2.take() {
                            Some(answer) => answer.await.unwrap_or_else(|_| {
                                Err(ApiError::internal(
                                    "the inference thread dropped the request",
                                ))
                            }),
                            None => Err(ApiError::internal("no result")),
                        };
                        match result {
                            Ok(result) => {
                                if include_usage {
                                    let completion: usize =
                                        result.completions.iter().map(|c| c.ids.len()).sum();
                                    state.3.push_back(chunks.event(
                                        Vec::new(),
                                        Some(ChatUsage::new(result.prompt_tokens, completion)),
                                    ));
                                }
                            }
                            Err(e) => state.3.push_back(e.sse_event()),
                        }
                        state.3.push_back(Event::default().data("[DONE]"));
                    }
                    Phase::Done => {
                        state.4.disarm_ref();
                        return None;
                    }
                }
            }
        }
    });
    Sse::new(body)
}

/// Raises a request's cancel flag when dropped, unless disarmed first (the answer was
/// delivered).
pub(crate) struct CancelOnDrop(pub(crate) Cancel);

impl CancelOnDrop {
    pub(crate) fn disarm(mut self) {
        self.disarm_ref();
    }

    fn disarm_ref(&mut self) {
        self.0 = Cancel::default();
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl ApiError {
    /// Replaces the message.
    pub(crate) fn with_message(mut self, message: impl Into<String>) -> ApiError {
        self.message = message.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rft_model::tool_calls::{parse_tool_calls, ToolCallFormat};

    #[test]
    fn parallel_tool_calls_false_keeps_the_first_call() {
        let two = parse_tool_calls(
            "<tool_call>{\"name\": \"a\"}</tool_call><tool_call>{\"name\": \"b\"}</tool_call>",
            ToolCallFormat::Hermes,
        );
        let text = parse_tool_calls("hello", ToolCallFormat::Hermes);
        let parsed = [Some(two), Some(text), None];
        let all = answer_calls(&parsed, false);
        assert_eq!(all[0].as_ref().map(|p| p.tool_calls.len()), Some(2));
        assert!(all[1].is_none() && all[2].is_none());
        let first = answer_calls(&parsed, true);
        let kept = first[0]
            .as_ref()
            .map(|p| p.tool_calls.clone())
            .unwrap_or_default();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "a");
    }
}
