//! `POST /v1/completions`, the legacy completions API as vLLM serves it: what a trainer samples
//! rollouts through, so `rft serve` can stand in for a vLLM server in a rollout fleet.
//!
//! Prompts are text or token ids, one or a batch (choices are prompt-major: prompt `p`'s sample
//! `j` is choice `p × n + j`); `n`, `max_tokens` (default 16, as OpenAI's), `temperature`,
//! `top_p`, vLLM's `top_k`, `seed`, `stop`; `logprobs` (0 to 20) returns each sampled token's
//! log-prob under the model (`top_logprobs` alternatives are not computed: null per position),
//! `return_token_ids` each choice's `token_ids` and `prompt_token_ids` (vLLM's fields); `echo`
//! puts the prompt's text first (not with `logprobs`); `response_format` constrains the samples
//! as in chat. Sampling ends at the model's end of turn
//! or a stop. Every prompt goes through chat's queue and batches, and the request through the
//! sampling check every API shares; prompts × `n` × `max_tokens` is within the server's
//! per-request token cap.

use crate::error::ApiBody;
use crate::inference::{chat_limits, model_not_found, CancelOnDrop, RawPrompt};
use crate::{new_id, now, ApiError, SharedState};
use axum::extract::State;
use axum::Json;
use rft_model::request::{check_sampling, SamplingAsk};
use rft_model::sample::Cancel;
use rft_types::api::chat::{ChatUsage, Stop};
use rft_types::api::completions::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, PromptInput,
};

/// Most prompts in one request (half the default inference queue, so one request leaves room
/// for others).
pub(crate) const MAX_PROMPTS: usize = 128;
/// Most prompt tokens (or text bytes) copied into the choices of one request with `echo` or
/// `return_token_ids` (prompts × n × prompt length).
const MAX_ECHOED: usize = 4 << 20;
/// `max_tokens` when the request sets none (OpenAI's legacy default).
const DEFAULT_MAX_TOKENS: usize = 16;
/// The most `logprobs` a request may ask for (vLLM's default `--max-logprobs`).
const MAX_LOGPROBS: u32 = 20;

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<SharedState>,
    ApiBody(request): ApiBody<CompletionRequest>,
) -> Result<Json<Completion>, ApiError> {
    if request.stream == Some(true) {
        return Err(ApiError::bad_request(
            "stream is not served on /v1/completions; use /v1/chat/completions to stream",
        )
        .with_param("stream"));
    }
    let prompts: Vec<RawPrompt> = match request.prompt.clone() {
        PromptInput::Text(text) => vec![RawPrompt::Text(text)],
        PromptInput::Tokens(ids) => vec![RawPrompt::Tokens(ids)],
        PromptInput::Texts(texts) => texts.into_iter().map(RawPrompt::Text).collect(),
        PromptInput::TokenBatch(batch) => batch.into_iter().map(RawPrompt::Tokens).collect(),
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(
            ApiError::bad_request(format!("prompt must hold 1 to {MAX_PROMPTS} prompts"))
                .with_param("prompt"),
        );
    }
    let logprobs = request.logprobs.unwrap_or(0);
    if logprobs > MAX_LOGPROBS {
        return Err(
            ApiError::bad_request(format!("logprobs must be from 0 to {MAX_LOGPROBS}"))
                .with_param("logprobs"),
        );
    }
    let echo = request.echo == Some(true);
    if echo && logprobs > 0 {
        return Err(ApiError::bad_request(
            "echo with logprobs would need the prompt's log-probs, which this server does not return; ask for one of them",
        )
        .with_param("echo"));
    }
    let n = request.n.map_or(1, |n| n as usize);
    if request.echo == Some(true) || request.return_token_ids == Some(true) {
        let echoed: usize = prompts
            .iter()
            .map(|p| match p {
                RawPrompt::Text(text) => text.len(),
                RawPrompt::Tokens(ids) => ids.len(),
            })
            .sum::<usize>()
            .saturating_mul(n);
        if echoed > MAX_ECHOED {
            return Err(ApiError::bad_request(format!(
                "echo and return_token_ids copy each prompt into its {n} choices: {echoed} tokens here, at most {MAX_ECHOED}; send fewer or shorter prompts, or lower n"
            ))
            .with_param("prompt"));
        }
    }
    let max_tokens = request.max_tokens.map_or(DEFAULT_MAX_TOKENS, |m| {
        usize::try_from(m).unwrap_or(usize::MAX)
    });
    let stop = match request.stop.clone() {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    let ask = SamplingAsk {
        n,
        max_tokens: Some(max_tokens),
        max_tokens_param: "max_tokens",
        temperature: request.temperature,
        top_p: request.top_p,
        top_k: request.top_k,
        stop_strings: stop,
        stop_ids: Vec::new(),
        seed: request.seed.map(|s| s as u64),
    };
    // Chat's limits; the token cap covers every prompt of the request.
    let limits = chat_limits(state.config.max_request_tokens / prompts.len());
    let params = check_sampling(&ask, &limits, DEFAULT_MAX_TOKENS).map_err(|fault| {
        if fault.message.contains("this server samples at most") {
            ApiError::bad_request(format!(
                "prompts × n × max_tokens is {} × {n} × {max_tokens}; this server samples at most {} tokens per request. Send fewer prompts, or lower n or max_tokens.",
                prompts.len(),
                state.config.max_request_tokens
            ))
            .with_param("max_tokens")
        } else {
            ApiError::bad_request(fault.message).with_param(fault.param)
        }
    })?;
    let response_format = match request.response_format.as_ref().filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(
            rft_model::constrain::ResponseFormat::from_value(v).map_err(|e| {
                ApiError::bad_request(format!("Invalid response_format: {e}"))
                    .with_param("response_format")
            })?,
        ),
    };
    let name = request.model.as_str();
    let model = state
        .inference
        .resolve(&state.store, name)?
        .ok_or_else(|| model_not_found(name))?;
    // Every prompt is queued before any is awaited, so they share batches; all of them stop
    // decoding when the client goes away (the guards drop with this handler).
    let mut waiting = Vec::with_capacity(prompts.len());
    let mut guards = Vec::with_capacity(prompts.len());
    // All of the request's places at once: queued whole, or refused (429) with nothing queued.
    let mut places = state.inference.reserve(prompts.len())?;
    for prompt in prompts.iter().cloned() {
        let cancel = Cancel::default();
        let answer = places.submit_raw(
            model.clone(),
            prompt,
            n,
            rft_model::sample::SamplingParams {
                cancel: Some(cancel.clone()),
                ..params.clone()
            },
            response_format.clone(),
        )?;
        guards.push(CancelOnDrop(cancel));
        waiting.push(answer);
    }
    let mut results = Vec::with_capacity(waiting.len());
    for answer in waiting {
        results.push(
            answer
                .await
                .map_err(|_| ApiError::internal("the inference thread dropped the request"))??,
        );
    }
    guards.into_iter().for_each(CancelOnDrop::disarm);
    let return_ids = request.return_token_ids == Some(true);
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (p, (result, prompt)) in results.iter().zip(&prompts).enumerate() {
        prompt_tokens += result.prompt_tokens;
        let prompt_text = match (echo, prompt) {
            (false, _) => String::new(),
            (true, RawPrompt::Text(text)) => text.clone(),
            (true, RawPrompt::Tokens(_)) => result.prompt_text.clone(),
        };
        for (j, c) in result.completions().iter().enumerate() {
            completion_tokens += c.ids.len();
            let text = c.text.clone().unwrap_or_default();
            let logprobs = (logprobs > 0).then(|| {
                let tokens: Vec<String> = result
                    .piece_texts(j)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                // In characters, as OpenAI and vLLM count them.
                let mut offset = prompt_text.chars().count();
                let text_offset = tokens
                    .iter()
                    .map(|t| {
                        let at = offset;
                        offset += t.chars().count();
                        at
                    })
                    .collect();
                CompletionLogprobs {
                    top_logprobs: vec![None; tokens.len()],
                    tokens,
                    token_logprobs: c.logprobs.clone(),
                    text_offset,
                }
            });
            choices.push(CompletionChoice {
                index: p * n + j,
                text: format!("{prompt_text}{text}"),
                logprobs,
                finish_reason: c.finish_reason.as_str().to_owned(),
                token_ids: return_ids.then(|| c.ids.clone()),
                prompt_token_ids: return_ids.then(|| result.prompt_ids.clone()),
            });
        }
    }
    Ok(Json(Completion {
        id: new_id("cmpl-"),
        object: "text_completion".into(),
        created: now(),
        model: request.model,
        choices,
        usage: ChatUsage::new(prompt_tokens, completion_tokens),
    }))
}
