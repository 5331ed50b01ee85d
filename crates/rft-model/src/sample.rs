//! Sampling completions: many prompts of different lengths at once, `n` samples per prompt
//! sharing that prompt's prefill, decoded as one KV-cached batch; per-token log-probs of every
//! sampled token; stop tokens, stop strings, structured outputs.
//!
//! - Prompts are left-padded into one prefill batch (`key_mask` hides the padding, every row
//!   keeps positions `0..len`); the cache rows are then repeated `n` times per prompt, so a
//!   prompt is encoded once however many samples it gets.
//! - Rows leave the batch as soon as they finish, so a long straggler does not pay for the
//!   rows that stopped early.
//! - Log-probs are the model's own (soft-max of the raw logits at temperature 1, before top-k,
//!   top-p or a structured-output mask), which is what an RL trainer needs for importance
//!   ratios and what the training path recomputes ([`crate::train`]); temperature, top-k, top-p
//!   and masks only shape the distribution tokens are drawn from.
//! - Each sample draws from its own generator seeded by `(seed, sample index)`, so the same
//!   seed gives the same completions whatever else shares the batch.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::constrain::Constraint;
use crate::lora::LoraAdapter;
use crate::model::{CausalLm, KvCache, Logits};
use crate::parallel;
use crate::recorded::{RecordPart, RecordedStates, Recorder};
use crate::tokenizer::{DecodeStream, Tokenizer};
use crate::ModelError;

mod choose;

/// Most bytes of keys and values a decode batch allocates up front (`KvCache::with_capacity`).
const PREALLOCATED_CACHE_BYTES: usize = 1 << 30;

/// Positions a decode batch's cache is allocated for before it decodes: the prompt and the
/// longest row's `max_tokens` (both from the client), within the model's context and within
/// [`PREALLOCATED_CACHE_BYTES`]; past that the cache grows as rows actually get longer.
fn preallocated_positions(
    prompt: usize,
    max_tokens: usize,
    bytes_per_position: usize,
    context: usize,
) -> usize {
    let affordable = PREALLOCATED_CACHE_BYTES / bytes_per_position.max(1);
    prompt
        .saturating_add(max_tokens)
        .min(context.max(prompt))
        .min(prompt.max(affordable))
}

pub use choose::set_device_choices;

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Most new tokens per sample.
    pub max_tokens: usize,
    /// Token ids that end a sample (kept in `ids`, like an end-of-turn token).
    pub stop_ids: Vec<u32>,
    /// Strings that end a sample (OpenAI's `stop`): the text is cut before the first one;
    /// `ids` keep the token that completed it. Needs a tokenizer.
    pub stop_strings: Vec<String>,
    /// Seed of the per-sample generators.
    pub seed: u64,
    /// Set from another thread to end this request's samples at the next decode step (a
    /// client that went away); they finish with [`FinishReason::Length`].
    pub cancel: Option<Cancel>,
}

/// A flag that stops a request's decoding when raised (the server raises it when the client
/// disconnects, so nobody keeps sampling for a reader that is gone).
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Raises the flag.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the flag was raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Two requests' params are equal whatever their flags: a flag says who listens, not how to
/// sample.
impl PartialEq for Cancel {
    fn eq(&self, _other: &Cancel) -> bool {
        true
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
            seed: 0,
            cancel: None,
        }
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string was sampled.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The sampled token ids (including a final stop token, if any).
    pub ids: Vec<u32>,
    /// log p(token) under the model for each sampled token.
    pub logprobs: Vec<f32>,
    /// Why sampling ended.
    pub finish_reason: FinishReason,
    /// The decoded text without special tokens, cut before a stop string; `None` when sampled
    /// without a tokenizer.
    pub text: Option<String>,
}

/// One prompt to sample from.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    /// The prompt's token ids (at least one).
    pub prompt: Vec<u32>,
    /// Samples of this prompt.
    pub n: usize,
    /// How to sample them.
    pub params: SamplingParams,
    /// A structured-output constraint; each sample gets its own copy of this state.
    pub constraint: Option<Constraint>,
}

/// What sampling runs on: a model, optionally an adapter (applied unmerged, recording nothing),
/// optionally a tokenizer (for stop strings and `text`).
#[derive(Clone, Copy)]
pub struct Sampler<'a> {
    /// The base model.
    pub model: &'a CausalLm,
    /// A LoRA adapter over it.
    pub adapter: Option<&'a LoraAdapter>,
    /// The model's tokenizer.
    pub tokenizer: Option<&'a Tokenizer>,
}

/// One decode batch's completions per request, and its recorded states when asked for.
type Decoded = (Vec<Vec<Completion>>, Option<RecordPart>);

/// Samples `n` completions of `prompt` (no adapter, no tokenizer).
pub fn sample(
    model: &CausalLm,
    prompt: &[u32],
    n: usize,
    params: &SamplingParams,
) -> Result<Vec<Completion>, ModelError> {
    let sampler = Sampler {
        model,
        adapter: None,
        tokenizer: None,
    };
    let request = SampleRequest {
        prompt: prompt.to_vec(),
        n,
        params: params.clone(),
        constraint: None,
    };
    Ok(sampler.run(&[request])?.pop().unwrap_or_default())
}

/// The decode state of one sample.
struct Row<'t> {
    request: usize,
    /// Index of this sample within its request.
    sample: usize,
    /// Bytes of `text` already reported to a streaming caller.
    emitted: usize,
    /// Trailing bytes of `text` held back from a streaming caller: they could still become
    /// the start of a stop string (the longest stop string's length − 1).
    holdback: usize,
    rng: StdRng,
    completion: Completion,
    constraint: Option<Constraint>,
    stream: Option<DecodeStream<'t>>,
    text: String,
    position: u32,
    /// Reused buffer of the draw's exponentials.
    scratch: Vec<f32>,
}

/// What [`Sampler::run_streaming`] reports while it samples.
#[derive(Debug)]
pub enum SampleEvent<'a> {
    /// New text of one sample (never part of a stop string: text that could still turn out to
    /// start one is held back until it cannot).
    Text {
        /// Index of the request.
        request: usize,
        /// Index of the sample within the request.
        sample: usize,
        /// The new text.
        text: &'a str,
    },
    /// A sample is complete (its text was reported in full before this).
    Finished {
        /// Index of the request.
        request: usize,
        /// Index of the sample within the request.
        sample: usize,
        /// The completion, as [`Sampler::run`] returns it.
        completion: &'a Completion,
    },
}

impl Sampler<'_> {
    /// Samples every request; returns each request's completions in order.
    ///
    /// On a multi-core CPU the samples are split into one shard per core, decoded side by side
    /// (see [`crate::parallel`]); a request split across two shards is prefilled by both. Each
    /// sample draws from its own generator, so the split does not change what is drawn.
    pub fn run(&self, requests: &[SampleRequest]) -> Result<Vec<Vec<Completion>>, ModelError> {
        Ok(self.run_parts(requests, false)?.0)
    }

    /// [`Sampler::run`] that also keeps the hidden states the decode computed at every layer
    /// boundary ([`RecordedStates`]), for a training pass over these samples with the same
    /// weights. `None` when no sample got past its first token.
    pub fn run_recording(
        &self,
        requests: &[SampleRequest],
    ) -> Result<(Vec<Vec<Completion>>, Option<RecordedStates>), ModelError> {
        let (results, parts) = self.run_parts(requests, true)?;
        Ok((results, RecordedStates::merge(parts)?))
    }

    fn run_parts(
        &self,
        requests: &[SampleRequest],
        record: bool,
    ) -> Result<(Vec<Vec<Completion>>, Vec<RecordPart>), ModelError> {
        self.validate(requests)?;
        let live = |r: &SampleRequest| r.params.max_tokens > 0;
        let rows: Vec<(usize, usize)> = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| live(r))
            .flat_map(|(idx, r)| (0..r.n).map(move |sample| (idx, sample)))
            .collect();
        let shards = parallel::shard_count(self.model.device(), rows.len());
        if shards <= 1 {
            let (results, part) =
                self.decode(requests, &vec![0; requests.len()], &mut |_| {}, record)?;
            return Ok((results, part.into_iter().collect()));
        }
        // Contiguous runs of rows, each cut into sub-requests: (request, first sample, count).
        let pieces: Vec<Vec<(usize, usize, usize)>> = rows
            .chunks(rows.len().div_ceil(shards))
            .map(|chunk| {
                let mut subs: Vec<(usize, usize, usize)> = Vec::new();
                for &(request, sample) in chunk {
                    match subs.last_mut() {
                        Some(last) if last.0 == request => last.2 += 1,
                        _ => subs.push((request, sample, 1)),
                    }
                }
                subs
            })
            .collect();
        let sub_requests: Vec<Vec<SampleRequest>> = pieces
            .iter()
            .map(|subs| {
                subs.iter()
                    .map(|&(request, _, n)| SampleRequest {
                        n,
                        ..requests[request].clone()
                    })
                    .collect()
            })
            .collect();
        let jobs: Vec<parallel::Job<'_, Result<Decoded, ModelError>>> = pieces
            .iter()
            .zip(&sub_requests)
            .map(|(subs, sub_requests)| {
                let firsts: Vec<usize> = subs.iter().map(|s| s.1).collect();
                Box::new(move || self.decode(sub_requests, &firsts, &mut |_| {}, record)) as _
            })
            .collect();
        let mut results: Vec<Vec<Completion>> = requests
            .iter()
            .map(|r| {
                if live(r) {
                    Vec::with_capacity(r.n)
                } else {
                    vec![Completion::default(); r.n]
                }
            })
            .collect();
        let mut parts = Vec::new();
        for (subs, shard) in pieces.iter().zip(parallel::run_shards(jobs)?) {
            let (completions, part) = shard?;
            for (&(request, _, _), completions) in subs.iter().zip(completions) {
                results[request].extend(completions);
            }
            parts.extend(part);
        }
        Ok((results, parts))
    }

    /// [`Sampler::run`], reporting each sample's text as it is decoded and each sample as it
    /// finishes (chat streaming). Text needs the tokenizer. Runs as one batch on the calling
    /// thread.
    pub fn run_streaming(
        &self,
        requests: &[SampleRequest],
        on_event: &mut dyn FnMut(SampleEvent<'_>),
    ) -> Result<Vec<Vec<Completion>>, ModelError> {
        self.validate(requests)?;
        Ok(self
            .decode(requests, &vec![0; requests.len()], on_event, false)?
            .0)
    }

    fn validate(&self, requests: &[SampleRequest]) -> Result<(), ModelError> {
        for (idx, request) in requests.iter().enumerate() {
            if request.prompt.is_empty() {
                return Err(ModelError::Format(format!(
                    "request {idx}: cannot sample from an empty prompt"
                )));
            }
            if !request.params.stop_strings.is_empty() && self.tokenizer.is_none() {
                return Err(ModelError::Format(
                    "stop strings need the model's tokenizer".into(),
                ));
            }
            let vocab = self.model.config().vocab_size as u32;
            if let Some(bad) = request.prompt.iter().find(|&&id| id >= vocab) {
                return Err(ModelError::Format(format!(
                    "request {idx}: token id {bad} is outside the model's vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// Decodes `requests` as one batch; `first_sample[i]` is the index (within its original
    /// request) of request `i`'s first sample, which seeds the samples' generators.
    /// With `record`, also returns the states the batch computed.
    fn decode(
        &self,
        requests: &[SampleRequest],
        first_sample: &[usize],
        on_event: &mut dyn FnMut(SampleEvent<'_>),
        record: bool,
    ) -> Result<Decoded, ModelError> {
        let device = self.model.device();
        let live: Vec<usize> = (0..requests.len())
            .filter(|&r| requests[r].n > 0 && requests[r].params.max_tokens > 0)
            .collect();
        let mut results: Vec<Vec<Completion>> = requests
            .iter()
            .map(|r| {
                if r.params.max_tokens == 0 {
                    vec![Completion::default(); r.n]
                } else {
                    Vec::new()
                }
            })
            .collect();
        if live.is_empty() {
            return Ok((results, None));
        }
        let mut recorder = record.then(Recorder::default);
        let mut states = Vec::new();

        // Prefill every prompt once, left-padded.
        let width = live
            .iter()
            .map(|&r| requests[r].prompt.len())
            .max()
            .unwrap_or(1);
        let b = live.len();
        let mut ids = vec![0u32; b * width];
        let mut positions = vec![0u32; b * width];
        let mut mask = vec![0f32; b * width];
        for (row, &r) in live.iter().enumerate() {
            let prompt = &requests[r].prompt;
            let pad = width - prompt.len();
            for col in 0..width {
                let at = row * width + col;
                if col < pad {
                    mask[at] = f32::NEG_INFINITY;
                } else {
                    ids[at] = prompt[col - pad];
                    positions[at] = (col - pad) as u32;
                }
            }
        }
        let padded = live.iter().any(|&r| requests[r].prompt.len() != width);
        let mut key_mask = Tensor::from_vec(mask, (b, width), device)?;
        // Room for the longest row from the start, so a decode never reallocates its cache,
        // within a bound: a long `max_tokens` that few rows reach grows as it goes instead.
        let longest = live
            .iter()
            .map(|&r| requests[r].params.max_tokens)
            .max()
            .unwrap_or(0);
        let config = self.model.config();
        let samples: usize = live.iter().map(|&r| requests[r].n).sum();
        let bytes_per_position = 2
            * config.num_layers
            * samples.max(b)
            * config.num_kv_heads
            * config.head_dim
            * self.model.activation_dtype().size_in_bytes();
        let mut cache = KvCache::with_capacity(preallocated_positions(
            width,
            longest,
            bytes_per_position,
            config.max_position_embeddings,
        ));
        let logits = self.model.forward_recording(
            &Tensor::from_vec(ids, (b, width), device)?,
            &Tensor::from_vec(positions, (b, width), device)?,
            padded.then_some(&key_mask),
            &mut cache,
            Logits::Last,
            self.adapter,
            recorder.is_some().then_some(&mut states),
        )?;
        if let Some(recorder) = &mut recorder {
            let pads: Vec<usize> = live
                .iter()
                .map(|&r| width - requests[r].prompt.len())
                .collect();
            recorder.prefill(std::mem::take(&mut states), &pads)?;
        }

        // One row per sample: repeat each prompt's cache row `n` times.
        let mut rows: Vec<Row<'_>> = Vec::new();
        let mut source = Vec::new();
        for (prefill_row, &r) in live.iter().enumerate() {
            let request = &requests[r];
            for idx in 0..request.n {
                source.push(prefill_row as u32);
                rows.push(Row {
                    request: r,
                    sample: first_sample[r] + idx,
                    emitted: 0,
                    holdback: request
                        .params
                        .stop_strings
                        .iter()
                        .map(|s| s.len().saturating_sub(1))
                        .max()
                        .unwrap_or(0),
                    rng: StdRng::seed_from_u64(
                        request.params.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            ^ (first_sample[r] + idx) as u64,
                    ),
                    completion: Completion::default(),
                    constraint: request.constraint.clone(),
                    stream: self.tokenizer.map(|t| t.decode_stream(true)),
                    text: String::new(),
                    position: request.prompt.len() as u32,
                    scratch: Vec::new(),
                });
            }
        }
        let source = Tensor::from_vec(source, rows.len(), device)?;
        cache = cache.select_rows(&source)?;
        key_mask = key_mask.index_select(&source, 0)?;
        let mut logits = logits.squeeze(1)?.index_select(&source, 0)?;
        // `active[i]` is the row of `rows` that batch row `i` decodes.
        let mut active: Vec<usize> = (0..rows.len()).collect();
        let mut finished: Vec<Option<Completion>> = vec![None; rows.len()];

        loop {
            // On a GPU the choices are made there and only they come back; a structured
            // output's mask is built on the CPU, so a batch with one takes the CPU's path.
            let on_device =
                choose::chooses_on(device) && active.iter().all(|&r| rows[r].constraint.is_none());
            let device_choices = if on_device {
                let choices: Vec<choose::RowChoice> = active
                    .iter()
                    .map(|&r| {
                        let row = &mut rows[r];
                        let params = &requests[row.request].params;
                        let greedy = params.temperature <= 0.0;
                        choose::RowChoice {
                            temperature: params.temperature as f32,
                            top_k: params.top_k,
                            top_p: params.top_p as f32,
                            uniform: if greedy { 0.0 } else { row.rng.random() },
                        }
                    })
                    .collect();
                Some(choose::choose(&logits, &choices)?)
            } else {
                None
            };
            let logits_rows = match device_choices {
                Some(_) => vec![Vec::new(); active.len()],
                None => logits.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            };
            let mut next = Vec::with_capacity(active.len());
            let mut keep = Vec::with_capacity(active.len());
            for (batch_row, (&row_idx, mut logits_row)) in
                active.iter().zip(logits_rows).enumerate()
            {
                let row = &mut rows[row_idx];
                let params = &requests[row.request].params;
                let cancelled = params.cancel.as_ref().is_some_and(Cancel::is_cancelled);
                let done = cancelled
                    || match &device_choices {
                        Some((ids, logprobs)) => {
                            self.accept(row, params, ids[batch_row], logprobs[batch_row])?
                        }
                        None => self.step(row, params, &mut logits_row)?,
                    };
                if done {
                    let completion = finish(row)?;
                    if let Some(text) = &completion.text {
                        if text.len() > row.emitted {
                            on_event(SampleEvent::Text {
                                request: row.request,
                                sample: row.sample,
                                text: &text[row.emitted..],
                            });
                        }
                    }
                    on_event(SampleEvent::Finished {
                        request: row.request,
                        sample: row.sample,
                        completion: &completion,
                    });
                    finished[row_idx] = Some(completion);
                } else {
                    let mut safe = row.text.len().saturating_sub(row.holdback);
                    while !row.text.is_char_boundary(safe) {
                        safe -= 1;
                    }
                    if safe > row.emitted {
                        on_event(SampleEvent::Text {
                            request: row.request,
                            sample: row.sample,
                            text: &row.text[row.emitted..safe],
                        });
                        row.emitted = safe;
                    }
                    keep.push(batch_row as u32);
                    next.push((row_idx, *row.completion.ids.last().unwrap_or(&0)));
                }
            }
            if next.is_empty() {
                break;
            }
            if keep.len() != active.len() {
                let keep = Tensor::from_vec(keep, next.len(), device)?;
                cache = cache.select_rows(&keep)?;
                key_mask = key_mask.index_select(&keep, 0)?;
            }
            active = next.iter().map(|&(row, _)| row).collect();
            let n = active.len();
            let ids: Vec<u32> = next.iter().map(|&(_, id)| id).collect();
            let positions: Vec<u32> = active.iter().map(|&r| rows[r].position).collect();
            key_mask = Tensor::cat(&[&key_mask, &Tensor::zeros((n, 1), DType::F32, device)?], 1)?;
            logits = self
                .model
                .forward_recording(
                    &Tensor::from_vec(ids, (n, 1), device)?,
                    &Tensor::from_vec(positions, (n, 1), device)?,
                    padded.then_some(&key_mask),
                    &mut cache,
                    Logits::Last,
                    self.adapter,
                    recorder.is_some().then_some(&mut states),
                )?
                .squeeze(1)?;
            if let Some(recorder) = &mut recorder {
                recorder.step(std::mem::take(&mut states), &active, rows.len())?;
            }
            for &r in &active {
                rows[r].position += 1;
            }
        }
        let mut recorded_rows = Vec::with_capacity(rows.len());
        for (row, completion) in rows.iter().zip(finished) {
            let completion = completion.unwrap_or_default();
            if recorder.is_some() {
                let prefill_row = live.iter().position(|&r| r == row.request).unwrap_or(0);
                recorded_rows.push((
                    requests[row.request].prompt.clone(),
                    completion.ids.clone(),
                    prefill_row,
                ));
            }
            results[row.request].push(completion);
        }
        let part = recorder.map(|r| r.finish(recorded_rows)).transpose()?;
        Ok((results, part))
    }

    /// Draws one token for `row`; returns whether the row is finished.
    fn step(
        &self,
        row: &mut Row<'_>,
        params: &SamplingParams,
        logits: &mut [f32],
    ) -> Result<bool, ModelError> {
        let vocab = logits.len();
        let plain = row.constraint.is_none()
            && params.temperature == 1.0
            && params.top_k == 0
            && params.top_p >= 1.0;
        if plain {
            // The RL rollout's case: one exp pass serves both the draw and the log-prob's
            // normaliser (the same weights `draw` would compute, so the same token).
            let (token, log_norm) = draw_plain(logits, &mut row.scratch, &mut row.rng);
            return self.accept(row, params, token, logits[token as usize] - log_norm);
        }
        let log_norm = log_sum_exp(logits);
        let token = match &mut row.constraint {
            Some(constraint) => {
                // Masking leaves allowed logits untouched, so the sampled (allowed) token's
                // logit below is still the model's own.
                constraint.allowed()?.apply(logits);
                if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
                    return Err(ModelError::Format(
                        "the response format allows no token here".into(),
                    ));
                }
                let token = pick(logits, params, &mut row.rng);
                constraint.commit(token)?;
                token
            }
            None => pick(logits, params, &mut row.rng),
        };
        debug_assert!((token as usize) < vocab);
        self.accept(row, params, token, logits[token as usize] - log_norm)
    }

    /// Appends the drawn `token` to `row`; returns whether the row is finished.
    fn accept(
        &self,
        row: &mut Row<'_>,
        params: &SamplingParams,
        token: u32,
        logprob: f32,
    ) -> Result<bool, ModelError> {
        let completion = &mut row.completion;
        completion.ids.push(token);
        completion.logprobs.push(logprob);
        if params.stop_ids.contains(&token) {
            completion.finish_reason = FinishReason::Stop;
            return Ok(true);
        }
        if let Some(stream) = &mut row.stream {
            if let Some(piece) = stream.step(token)? {
                row.text.push_str(&piece);
                // Only the tail can hold a stop string that this token completed.
                if let Some(cut) = find_stop(&row.text, piece.len(), &params.stop_strings) {
                    row.text.truncate(cut);
                    completion.finish_reason = FinishReason::Stop;
                    completion.text = Some(std::mem::take(&mut row.text));
                    row.stream = None;
                    return Ok(true);
                }
            }
        }
        if completion.ids.len() >= params.max_tokens {
            completion.finish_reason = FinishReason::Length;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Default for Completion {
    fn default() -> Self {
        Completion {
            ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
            text: None,
        }
    }
}

/// Takes a finished row's completion, flushing its text.
fn finish(row: &mut Row<'_>) -> Result<Completion, ModelError> {
    let mut completion = std::mem::take(&mut row.completion);
    if completion.text.is_none() {
        if let Some(mut stream) = row.stream.take() {
            if let Some(rest) = stream.finish()? {
                row.text.push_str(&rest);
            }
            completion.text = Some(std::mem::take(&mut row.text));
        }
    }
    Ok(completion)
}

/// The byte offset of the earliest stop string that ends within the last `new_len` bytes (or
/// overlaps them) of `text`.
fn find_stop(text: &str, new_len: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|stop| {
            let from = text.len().saturating_sub(new_len + stop.len() - 1);
            let from = (0..=from)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text[from..].find(stop.as_str()).map(|at| from + at)
        })
        .min()
}

/// In f64: an f32 running sum over a 50k–150k vocabulary loses about 1e-4 of the log-prob.
/// A draw at temperature 1 from the full distribution, and `log Σ exp(logits)`, from one pass
/// of exponentials kept in `weights`. The token is the one [`draw`] picks for the same
/// generator state.
fn draw_plain(logits: &[f32], weights: &mut Vec<f32>, rng: &mut StdRng) -> (u32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    weights.clear();
    weights.extend(logits.iter().map(|&l| (l - max).exp()));
    let precise: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let log_norm = (f64::from(max) + precise.ln()) as f32;
    (pick_weighted(weights, rng), log_norm)
}

/// Draws an index with probability proportional to `weights` (non-negative).
fn pick_weighted(weights: &[f32], rng: &mut StdRng) -> u32 {
    let total: f32 = weights.iter().sum();
    let mut u = rng.random::<f32>() * total;
    let mut last = 0;
    for (idx, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            if u < w {
                return idx as u32;
            }
            u -= w;
            last = idx;
        }
    }
    last as u32
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (f64::from(max) + sum.ln()) as f32
}

/// Draws one token from one row of logits (already masked, if constrained).
fn pick(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> u32 {
    if params.temperature <= 0.0 {
        argmax(logits)
    } else {
        draw(logits, params, rng)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (idx, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = idx;
        }
    }
    best as u32
}

fn draw(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> u32 {
    let inv_t = 1.0 / params.temperature as f32;
    if params.top_k == 0 && params.top_p >= 1.0 {
        // The common RL case: the full distribution. One pass, no sort.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
        return pick_weighted(&weights, rng);
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, l)| **l > f32::NEG_INFINITY)
        .map(|(idx, &l)| (idx as u32, l * inv_t))
        .collect();
    if candidates.is_empty() {
        return argmax(logits);
    }
    // Most likely first; ties broken by id so the order never depends on the sort.
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < candidates.len() {
        candidates.select_nth_unstable_by(params.top_k - 1, order);
        candidates.truncate(params.top_k);
    }
    candidates.sort_unstable_by(order);
    let max = candidates[0].1;
    let mut probs: Vec<f32> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (idx, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= params.top_p as f32 {
                keep = idx + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f32 = rng.random();
    for (idx, p) in probs.iter().enumerate() {
        if u < *p {
            return candidates[idx].0;
        }
        u -= p;
    }
    candidates[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_client_asks_for_never_sizes_the_cache_past_its_bounds() {
        // 64 KiB per position: 1 GiB holds 16,384.
        let per_position = 64 << 10;
        assert_eq!(preallocated_positions(100, 50, per_position, 8192), 150);
        // An enormous max_tokens stops at the context, then at the byte bound.
        assert_eq!(
            preallocated_positions(100, usize::MAX, per_position, 8192),
            8192
        );
        assert_eq!(
            preallocated_positions(100, 1 << 40, per_position, usize::MAX),
            16_384
        );
        // Many rows: the bound shrinks with them, never below the prompt itself.
        assert_eq!(preallocated_positions(3000, 4096, 1 << 30, 8192), 3000);
        assert_eq!(preallocated_positions(100, 4096, 0, 8192), 4196);
    }

    #[test]
    fn greedy_picks_the_argmax() {
        let mut rng = StdRng::seed_from_u64(0);
        let params = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        assert_eq!(pick(&[0.0, 2.0, 1.0], &params, &mut rng), 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((2.0 - log_sum_exp(&[0.0, 2.0, 1.0]) - expected).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut rng = StdRng::seed_from_u64(7);
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..SamplingParams::default()
        };
        for _ in 0..20 {
            assert_eq!(draw(&[0.1, 0.3, 0.2], &params, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        for top_k in [0, 2] {
            let mut rng = StdRng::seed_from_u64(1);
            let params = SamplingParams {
                top_k,
                ..SamplingParams::default()
            };
            let logits = [0f32, (3f32).ln()]; // p = 0.25, 0.75
            let n_ones = (0..4000)
                .filter(|_| draw(&logits, &params, &mut rng) == 1)
                .count();
            assert!((2800..3200).contains(&n_ones), "{n_ones}");
        }
    }

    #[test]
    fn the_fused_draw_picks_what_draw_picks() {
        let logits: Vec<f32> = (0..500)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
            .collect();
        let params = SamplingParams::default();
        let (mut a, mut b) = (StdRng::seed_from_u64(5), StdRng::seed_from_u64(5));
        let mut scratch = Vec::new();
        for _ in 0..300 {
            let (token, log_norm) = draw_plain(&logits, &mut scratch, &mut a);
            assert_eq!(token, draw(&logits, &params, &mut b));
            assert!((log_norm - log_sum_exp(&logits)).abs() < 1e-5);
        }
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let mut rng = StdRng::seed_from_u64(2);
        let params = SamplingParams::default();
        let logits = [5.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        for _ in 0..500 {
            let t = draw(&logits, &params, &mut rng);
            assert!(t == 0 || t == 2);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let mut rng = StdRng::seed_from_u64(3);
        let params = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::default()
        };
        let logits = [(0.6f32).ln(), (0.3f32).ln(), (0.1f32).ln()];
        for _ in 0..200 {
            assert_eq!(draw(&logits, &params, &mut rng), 0);
        }
    }

    #[test]
    fn stop_strings_are_found_across_pieces() {
        let stops = vec!["\n\n".to_owned(), "END".to_owned()];
        assert_eq!(find_stop("abc\n", 1, &stops), None);
        assert_eq!(find_stop("abc\n\n", 1, &stops), Some(3));
        assert_eq!(find_stop("xxEN", 2, &stops), None);
        assert_eq!(find_stop("xxEND and more", 10, &stops), Some(2));
        assert_eq!(find_stop("é\n\n", 2, &stops), Some(2));
    }
}
