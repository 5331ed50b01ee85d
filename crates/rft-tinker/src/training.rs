//! Training models: `create_model`, `get_info`, `forward_backward` / `forward` (protobuf
//! bodies, mapped onto the primitives' datums) and `optim_step`. Each model's requests run on
//! its own thread ([`crate::model_thread`]); the handlers validate, queue and answer a future.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use prost::Message;
use rft_train::loss::LossFn;
use rft_train::primitives::{AdamParams, Datum};

use crate::error::{TinkerError, TinkerJson};
use crate::model_thread::{self, Job, Life, ModelMeta, ModelOp, Prefix};
use crate::paths::{self, CheckpointPath};
use crate::sessions::ModelEntry;
use crate::wire::{self, LossName};
use crate::{
    proto, LocalClient, Owner, Shared, MAX_DATUMS, MAX_DECOMPRESSED_BYTES, MAX_LORA_RANK,
    MAX_MODELS, MAX_REQUEST_TOKENS,
};

pub(crate) async fn create_model(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::CreateModel>,
) -> Result<Json<wire::Queued>, TinkerError> {
    // `optimizer_config.type` is a closed enum of what is supported: another one was refused
    // while parsing.
    let lora = request.lora_config.ok_or_else(|| {
        TinkerError::bad_request("lora_config is required: OpenRFT trains LoRA adapters")
            .with_param("lora_config")
    })?;
    if !(1..=MAX_LORA_RANK).contains(&lora.rank) {
        return Err(TinkerError::bad_request(format!(
            "lora_config.rank must be from 1 to {MAX_LORA_RANK}"
        ))
        .with_param("lora_config.rank"));
    }
    if !lora.train_mlp && !lora.train_attn {
        return Err(TinkerError::bad_request(
            "train_mlp and train_attn are both false: the adapter would train nothing",
        )
        .with_param("lora_config"));
    }
    let meta = ModelMeta {
        base_model: request.base_model.clone(),
        lora_rank: lora.rank,
        train_mlp: lora.train_mlp,
        train_attn: lora.train_attn,
    };
    let seed = rft_model::request::seed_or_random(lora.seed);
    let (model_id, request_id) = open_model(
        &shared,
        &owner,
        &request.session_id,
        request.model_seq_id,
        meta,
        seed,
        None,
    )?;
    Ok(Json(wire::Queued {
        request_id,
        model_id: Some(model_id),
    }))
}

/// Registers a training model, starts its thread and queues its creation (and a first load,
/// for a model created from a checkpoint). Returns the model id and the creation's future.
pub(crate) fn open_model(
    shared: &Arc<Shared>,
    owner: &Owner,
    session_id: &str,
    model_seq_id: u32,
    meta: ModelMeta,
    seed: u64,
    load: Option<(CheckpointPath, bool)>,
) -> Result<(String, String), TinkerError> {
    let spec = shared.models.resolve(&meta.base_model).ok_or_else(|| {
        TinkerError::bad_request(format!(
            "The model '{}' is not served here; get_server_capabilities lists the models.",
            meta.base_model
        ))
        .with_param("base_model")
    })?;
    let model_id = format!("{session_id}:train:{model_seq_id}");
    let mut registry = shared.registry();
    registry.expire_sessions(shared);
    registry.touch_session(owner, session_id)?;
    if !paths::valid_model_id(&model_id) {
        return Err(
            TinkerError::bad_request("not a session of this server").with_param("session_id")
        );
    }
    if registry.models.contains_key(&model_id) {
        return Err(
            TinkerError::bad_request(format!("model {model_id} exists already"))
                .with_param("model_seq_id"),
        );
    }
    // Closed models still in the middle of a request hold their memory until it ends: they
    // count too.
    if registry.models.len() + shared.closing.load(Ordering::SeqCst) >= MAX_MODELS {
        return Err(TinkerError::Busy(format!(
            "{MAX_MODELS} training models are loaded (each holds a LoRA, AdamW state and training buffers); close a session to free one"
        )));
    }
    let mut ops = vec![ModelOp::Create { spec, seed }];
    if let Some((path, optimizer)) = load {
        ops.push(ModelOp::Load { path, optimizer });
    }
    // The futures first: the key's quota decides before anything is made. A failure after
    // them forgets them (the client hears of the failure, never of the futures).
    let mut ids = Vec::with_capacity(ops.len());
    for _ in &ops {
        match shared.futures.create(owner, Some(&model_id)) {
            Ok(id) => ids.push(id),
            Err(e) => {
                ids.iter().for_each(|id| shared.futures.forget(id));
                return Err(e);
            }
        }
    }
    let forget_all = || ids.iter().for_each(|id| shared.futures.forget(id));
    if let Err(e) = paths::claim_run(&shared.root, &model_id, owner) {
        forget_all();
        return Err(TinkerError::Internal(format!(
            "cannot record the run's owner: {e}"
        )));
    }
    let (send, receive) = std::sync::mpsc::channel();
    let life = Arc::new(Life::default());
    if let Err(e) = model_thread::start_model(
        shared.clone(),
        model_id.clone(),
        meta.clone(),
        receive,
        life.clone(),
    ) {
        forget_all();
        return Err(TinkerError::Internal(format!(
            "cannot start a model thread: {e}"
        )));
    }
    // The creation's own result is only reported when nothing follows it: the last future is
    // the one the client gets.
    let request_id = ids.last().cloned().unwrap_or_default();
    for (op, id) in ops.into_iter().zip(ids) {
        let _ = send.send(Job {
            seq: None,
            request_id: id,
            op,
        });
    }
    registry.models.insert(
        model_id.clone(),
        ModelEntry {
            owner: owner.clone(),
            session: session_id.to_owned(),
            meta,
            jobs: send,
            life,
            ephemeral: VecDeque::new(),
        },
    );
    Ok((model_id, request_id))
}

/// Queues `op` on one of the caller's models.
pub(crate) fn submit(
    shared: &Shared,
    owner: &Owner,
    model_id: &str,
    seq: Option<i64>,
    op: ModelOp,
) -> Result<wire::Queued, TinkerError> {
    let registry = shared.registry();
    let model = registry.model(owner, model_id)?;
    let request_id = shared.futures.create(owner, Some(model_id))?;
    let job = Job {
        seq,
        request_id: request_id.clone(),
        op,
    };
    if model.jobs.send(job).is_err() {
        shared.futures.forget(&request_id);
        return Err(TinkerError::Internal(
            "the model's thread has stopped".into(),
        ));
    }
    Ok(wire::Queued {
        request_id,
        model_id: Some(model_id.to_owned()),
    })
}

pub(crate) async fn get_info(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    local: Option<Extension<LocalClient>>,
    TinkerJson(request): TinkerJson<wire::ModelRef>,
) -> Result<Json<wire::ModelInfo>, TinkerError> {
    let registry = shared.registry();
    let model = registry.model(&owner, &request.model_id)?;
    let base = model.meta.base_model.clone();
    let tokenizer = shared.tokenizer_dir(&base);
    let exported = tokenizer.join("tokenizer.json").is_file();
    // A folder on this machine is of use, and of concern, only to a client on it.
    let local = local.is_some_and(|Extension(LocalClient(local))| local);
    let tokenizer_id = match (exported, local) {
        (true, true) => Some(tokenizer.display().to_string()),
        (true, false) => Some(base.clone()),
        (false, _) => None,
    };
    Ok(Json(wire::ModelInfo {
        kind: "get_info",
        model_id: request.model_id,
        model_data: wire::ModelData {
            arch: "llama",
            model_name: base.clone(),
            tokenizer_id,
        },
        optimizer_config: wire::OptimizerOut { kind: "adamw" },
        is_lora: true,
        lora_rank: model.meta.lora_rank,
        model_name: base,
    }))
}

/// The body of a `forward_backward`: protobuf (a browser cannot send that across origins
/// without a preflight), zstd-decompressed when so encoded, never past
/// [`MAX_DECOMPRESSED_BYTES`] (the decoder is read through a cap, so a small bomb cannot
/// expand in memory).
pub(crate) fn decode_body(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<proto::ForwardBackwardRequest, TinkerError> {
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let content_type = header_text(header::CONTENT_TYPE);
    if !matches!(
        content_type.as_str(),
        "application/x-protobuf" | "application/protobuf" | "application/octet-stream"
    ) {
        return Err(TinkerError::UnsupportedMediaType(format!(
            "forward_backward takes a protobuf body (Content-Type: application/x-protobuf), not '{content_type}'"
        )));
    }
    let raw: std::borrow::Cow<'_, [u8]> = match header_text(header::CONTENT_ENCODING).as_str() {
        "" | "identity" => body.as_ref().into(),
        "zstd" => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(body.as_ref()).map_err(|e| {
                TinkerError::bad_request(format!("the zstd body cannot be decoded: {e}"))
            })?;
            let mut out = Vec::new();
            decoder
                .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    TinkerError::bad_request(format!("the zstd body cannot be decoded: {e}"))
                })?;
            if out.len() > MAX_DECOMPRESSED_BYTES {
                return Err(too_large());
            }
            out.into()
        }
        other => {
            return Err(TinkerError::bad_request(format!(
                "Content-Encoding '{other}' is not supported (send zstd or none)"
            )));
        }
    };
    if raw.len() > MAX_DECOMPRESSED_BYTES {
        return Err(too_large());
    }
    proto::ForwardBackwardRequest::decode(raw.as_ref())
        .map_err(|e| TinkerError::bad_request(format!("the protobuf body cannot be decoded: {e}")))
}

fn too_large() -> TinkerError {
    TinkerError::TooLarge(format!(
        "The request body is over {MAX_DECOMPRESSED_BYTES} bytes once decompressed; send fewer datums per request."
    ))
}

pub(crate) async fn forward_backward(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<wire::Queued>, TinkerError> {
    let request = decode_body(&headers, &body)?;
    let forward_only = request.forward_only;
    submit_forward_backward(&shared, &owner, request, forward_only)
}

/// `forward`: the same body, forward only (what older SDKs call).
pub(crate) async fn forward(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<wire::Queued>, TinkerError> {
    let request = decode_body(&headers, &body)?;
    submit_forward_backward(&shared, &owner, request, true)
}

fn submit_forward_backward(
    shared: &Shared,
    owner: &Owner,
    request: proto::ForwardBackwardRequest,
    forward_only: bool,
) -> Result<Json<wire::Queued>, TinkerError> {
    let context = {
        let registry = shared.registry();
        let model = registry.model(owner, &request.model_id)?;
        shared.context(&model.meta.base_model)
    };
    let loss = loss_fn(&request)?;
    let (batch, prefixes) = convert_data(&request.data, &loss, context)?;
    let op = ModelOp::ForwardBackward {
        batch,
        prefixes,
        loss,
        forward_only,
    };
    submit(
        shared,
        owner,
        &request.model_id,
        Some(i64::from(request.seq_id)),
        op,
    )
    .map(Json)
}

/// The loss and its settings (`loss_fn_config`: `clip_low_threshold` / `clip_high_threshold`
/// for ppo, cispo and gspo, `beta` for dro).
pub(crate) fn loss_fn(request: &proto::ForwardBackwardRequest) -> Result<LossFn, TinkerError> {
    let name = LossName::parse(&request.loss_fn).ok_or_else(|| {
        TinkerError::bad_request(format!(
            "loss_fn '{}' is not supported; use cross_entropy, importance_sampling, ppo, cispo, dro or gspo (custom losses run client-side through cross_entropy)",
            request.loss_fn
        ))
        .with_param("loss_fn")
    })?;
    let mut config: HashMap<String, f64> = request.loss_fn_config.clone();
    for (key, value) in &request.loss_fn_config_v2 {
        match &value.value {
            Some(proto::LossConfigKind::Number(v)) => {
                config.insert(key.clone(), *v);
            }
            Some(proto::LossConfigKind::Text(_)) | None => {
                return Err(TinkerError::bad_request(format!(
                    "loss_fn_config['{key}'] must be a number"
                ))
                .with_param("loss_fn_config"));
            }
        }
    }
    if let Some(key) = config
        .keys()
        .find(|k| !name.settings().contains(&k.as_str()))
    {
        return Err(TinkerError::bad_request(format!(
            "loss_fn_config['{key}'] is not a setting of {}",
            request.loss_fn
        ))
        .with_param("loss_fn_config"));
    }
    let value = |key: &str, default: f64| -> Result<f64, TinkerError> {
        let v = config.get(key).copied().unwrap_or(default);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(
                TinkerError::bad_request(format!("loss_fn_config['{key}'] must be finite"))
                    .with_param("loss_fn_config"),
            )
        }
    };
    let clip = || -> Result<(f64, f64), TinkerError> {
        let (low, high) = (
            value("clip_low_threshold", 0.8)?,
            value("clip_high_threshold", 1.2)?,
        );
        if !(0.0..=1.0).contains(&low) || high < 1.0 {
            return Err(TinkerError::bad_request(
                "clip thresholds need 0 <= clip_low_threshold <= 1 <= clip_high_threshold",
            )
            .with_param("loss_fn_config"));
        }
        Ok((1.0 - low, high - 1.0))
    };
    Ok(match name {
        LossName::CrossEntropy => LossFn::CrossEntropy,
        LossName::ImportanceSampling => LossFn::ImportanceSampling,
        LossName::Ppo => {
            let (epsilon_low, epsilon_high) = clip()?;
            LossFn::Ppo {
                epsilon_low,
                epsilon_high,
            }
        }
        LossName::Cispo => {
            let (epsilon_low, epsilon_high) = clip()?;
            LossFn::Cispo {
                epsilon_low,
                epsilon_high,
            }
        }
        LossName::Gspo => {
            let (epsilon_low, epsilon_high) = clip()?;
            LossFn::Gspo {
                epsilon_low,
                epsilon_high,
            }
        }
        LossName::Dro => LossFn::Dro {
            beta: value("beta", 0.1)?,
        },
    })
}

/// Tinker datums → the primitives' datums.
///
/// A Tinker datum is `model_input` tokens `x[0..N)` and per-position `target_tokens`
/// `y[0..N)`, scored `log p(y[t] | x[..=t])`; OpenRFT scores next tokens of one sequence, so
/// the scored targets must be `x` shifted by one (`y[t] = x[t+1]`), as every SDK and cookbook
/// loss builds them. The datum becomes prompt `x[..=s]` and completion `y[s..]`, `s` the first
/// position from which every target is the next input token (0 for a supervised datum; the
/// first sampled position for the cookbook's RL datums, whose prompt targets are padding);
/// positions before `s` must weigh 0. GSPO's sequence ratio spans only the positions of its
/// mask (`sequence_ratio_mask`, else the non-zero advantages), which must run to the end, so
/// its `s` is where the mask starts. Positions before `s` get their log-probs from a forward
/// pass without gradient (NaN where the target is not the next input token).
pub(crate) fn convert_data(
    data: &[proto::Datum],
    loss: &LossFn,
    context: usize,
) -> Result<(Vec<Datum>, Vec<Option<Prefix>>), TinkerError> {
    if data.is_empty() {
        return Err(TinkerError::bad_request(
            "forward_backward needs at least one datum",
        ));
    }
    if data.len() > MAX_DATUMS {
        return Err(TinkerError::bad_request(format!(
            "{} datums in one request; the limit is {MAX_DATUMS}",
            data.len()
        )));
    }
    let name = match loss {
        LossFn::CrossEntropy => LossName::CrossEntropy,
        LossFn::Gspo { .. } => LossName::Gspo,
        _ => LossName::ImportanceSampling,
    };
    let mut total = 0usize;
    let mut batch = Vec::with_capacity(data.len());
    let mut prefixes = Vec::with_capacity(data.len());
    for (idx, datum) in data.iter().enumerate() {
        let fault = |message: String| TinkerError::bad_request(format!("datum {idx}: {message}"));
        let tokens = proto::tokens_of(&datum.model_input).map_err(fault)?;
        let n = tokens.len();
        if n == 0 {
            return Err(fault("model_input is empty".into()));
        }
        if n + 1 > context {
            return Err(fault(format!(
                "{n} tokens; the model's context is {context}"
            )));
        }
        total += n;
        if total > MAX_REQUEST_TOKENS {
            return Err(TinkerError::bad_request(format!(
                "over {MAX_REQUEST_TOKENS} tokens in one request; send fewer datums per request"
            )));
        }
        let input = |key: &str, required: bool| -> Result<Option<Vec<f64>>, TinkerError> {
            match datum.loss_fn_inputs.get(key) {
                Some(tensor) => {
                    let values = proto::tensor_values(tensor, 0.0, n)
                        .map_err(|e| fault(format!("loss_fn_inputs['{key}']: {e}")))?;
                    if values.iter().any(|v| !v.is_finite()) {
                        return Err(fault(format!("loss_fn_inputs['{key}'] is not finite")));
                    }
                    Ok(Some(values))
                }
                None if required => Err(fault(format!("loss_fn_inputs['{key}'] is required"))),
                None => Ok(None),
            }
        };
        let rl = name != LossName::CrossEntropy;
        let allowed = name.inputs();
        if let Some(key) = datum
            .loss_fn_inputs
            .keys()
            .find(|k| !allowed.contains(&k.as_str()))
        {
            return Err(fault(format!(
                "loss_fn_inputs['{key}'] is not an input of this loss (it takes {})",
                allowed.join(", ")
            )));
        }
        let targets = input("target_tokens", true)?.unwrap_or_default();
        let mut targets_u32 = Vec::with_capacity(n);
        for (t, &y) in targets.iter().enumerate() {
            if y < 0.0 || y > f64::from(u32::MAX) || y.fract() != 0.0 {
                return Err(fault(format!("target_tokens[{t}] is not a token id")));
            }
            targets_u32.push(y as u32);
        }
        // Positions whose target is not the next input token (the cookbook pads the prompt's
        // targets with 0) can only come before the scored part.
        let foreign: Vec<bool> = (0..n)
            .map(|t| t + 1 < n && tokens[t + 1] != targets_u32[t])
            .collect();
        let consistent_from = foreign.iter().rposition(|&f| f).map_or(0, |t| t + 1);
        let (old, adv) = if rl {
            (
                input("logprobs", true)?.unwrap_or_default(),
                input("advantages", true)?.unwrap_or_default(),
            )
        } else {
            (
                vec![0.0; n],
                input("weights", false)?.unwrap_or_else(|| vec![1.0; n]),
            )
        };
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        // GSPO scores from the first masked position on.
        let mut start = consistent_from;
        if name == LossName::Gspo {
            let mask = match input("sequence_ratio_mask", false)? {
                Some(mask) => mask,
                None => adv.iter().map(|a| f64::from(u8::from(*a != 0.0))).collect(),
            };
            let first = mask.iter().position(|&m| m != 0.0).unwrap_or(0);
            if mask[first..].contains(&0.0) || first < consistent_from {
                return Err(fault(
                    "gspo's sequence_ratio_mask must cover one run of positions to the end, whose targets are the next input tokens".into(),
                ));
            }
            start = first;
        }
        if start >= n {
            return Err(fault(
                "the last target is not the next input token of any position".into(),
            ));
        }
        if let Some(t) = (0..start).find(|&t| adv[t] != 0.0) {
            return Err(fault(format!(
                "target_tokens[{t}] is not model_input[{}] but its weight or advantage is not 0: OpenRFT scores each next token, so the targets of weighted positions must be model_input shifted by one",
                t + 1
            )));
        }
        batch.push(Datum {
            prompt: tokens[..=start].to_vec(),
            completion: targets_u32[start..].to_vec(),
            sampling_logprobs: f32s(&old[start..]),
            advantages: f32s(&adv[start..]),
        });
        prefixes.push((start > 0).then(|| Prefix {
            datum: Datum {
                prompt: tokens[..1].to_vec(),
                completion: tokens[1..=start].to_vec(),
                sampling_logprobs: vec![0.0; start],
                advantages: vec![0.0; start],
            },
            foreign: foreign[..start].to_vec(),
        }));
    }
    Ok((batch, prefixes))
}

pub(crate) async fn optim_step(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::OptimStep>,
) -> Result<Json<wire::Queued>, TinkerError> {
    if request.optimizer_params.is_some() {
        return Err(
            TinkerError::bad_request("only AdamW steps are supported (adam_params)")
                .with_param("optimizer_params"),
        );
    }
    let adam = request.adam_params.unwrap_or_default();
    let ok = adam.learning_rate.is_finite()
        && adam.learning_rate >= 0.0
        && (0.0..1.0).contains(&adam.beta1)
        && (0.0..1.0).contains(&adam.beta2)
        && adam.eps.is_finite()
        && adam.eps >= 0.0
        && adam.weight_decay.is_finite()
        && adam.weight_decay >= 0.0
        && adam.grad_clip_norm.is_finite()
        && adam.grad_clip_norm >= 0.0;
    if !ok {
        return Err(TinkerError::bad_request(
            "adam_params need learning_rate, eps, weight_decay, grad_clip_norm >= 0 and finite, and beta1, beta2 in [0, 1)",
        )
        .with_param("adam_params"));
    }
    let params = AdamParams {
        learning_rate: adam.learning_rate,
        beta1: adam.beta1,
        beta2: adam.beta2,
        eps: adam.eps,
        weight_decay: adam.weight_decay,
        grad_clip_norm: adam.grad_clip_norm,
    };
    submit(
        &shared,
        &owner,
        &request.model_id,
        request.seq_id,
        ModelOp::OptimStep(params),
    )
    .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(tokens: &[u32], inputs: &[(&str, proto::Tensor)]) -> proto::Datum {
        proto::Datum {
            model_input: vec![proto::Chunk {
                chunk: Some(proto::ChunkKind::EncodedText(proto::EncodedTextChunk {
                    tokens: proto::i32_bytes(tokens),
                })),
            }],
            loss_fn_inputs: inputs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    fn ints(values: &[i64]) -> proto::Tensor {
        proto::Tensor {
            encoding: Some(proto::Encoding::Dense(proto::i64_bytes(values))),
            dtype: proto::DType::Int64 as i32,
            shape: vec![values.len() as i64],
        }
    }

    fn floats(values: &[f32]) -> proto::Tensor {
        proto::Tensor {
            encoding: Some(proto::Encoding::Dense(proto::f32_bytes(values))),
            dtype: proto::DType::Float32 as i32,
            shape: vec![values.len() as i64],
        }
    }

    #[test]
    fn datums_map_to_next_token_sequences() {
        let d = datum(
            &[5, 6, 7],
            &[
                ("target_tokens", ints(&[6, 7, 8])),
                ("weights", floats(&[0.0, 1.0, 1.0])),
            ],
        );
        let (batch, prefixes) = convert_data(&[d], &LossFn::CrossEntropy, 100).unwrap();
        assert_eq!(batch[0].prompt, vec![5]);
        assert_eq!(batch[0].completion, vec![6, 7, 8]);
        assert_eq!(batch[0].advantages, vec![0.0, 1.0, 1.0]);
        assert!(prefixes[0].is_none());
    }

    #[test]
    fn gspo_scores_from_its_mask() {
        let d = datum(
            &[5, 6, 7, 8],
            &[
                ("target_tokens", ints(&[6, 7, 8, 9])),
                ("logprobs", floats(&[0.0, 0.0, -1.0, -2.0])),
                ("advantages", floats(&[0.0, 0.0, 1.0, 1.0])),
            ],
        );
        let gspo = LossFn::Gspo {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
        };
        let (batch, prefixes) = convert_data(&[d], &gspo, 100).unwrap();
        assert_eq!(batch[0].prompt, vec![5, 6, 7]);
        assert_eq!(batch[0].completion, vec![8, 9]);
        assert_eq!(batch[0].sampling_logprobs, vec![-1.0, -2.0]);
        let prefix = prefixes[0].as_ref().unwrap();
        assert_eq!(prefix.datum.completion, vec![6, 7]);
    }

    #[test]
    fn malformed_datums_are_refused() {
        let ce = LossFn::CrossEntropy;
        // Targets that are not the input shifted by one, at a weighted position.
        let d = datum(&[5, 6, 7], &[("target_tokens", ints(&[6, 9, 8]))]);
        assert!(convert_data(&[d], &ce, 100).is_err());
        // ...but padding at positions that weigh nothing is fine (the cookbook's RL datums).
        let d = datum(
            &[5, 6, 7],
            &[
                ("target_tokens", ints(&[0, 0, 8])),
                ("weights", floats(&[0.0, 0.0, 1.0])),
            ],
        );
        let (batch, prefixes) = convert_data(&[d], &ce, 100).unwrap();
        assert_eq!(batch[0].prompt, vec![5, 6, 7]);
        assert_eq!(batch[0].completion, vec![8]);
        assert_eq!(prefixes[0].as_ref().unwrap().foreign, vec![true, true]);
        // Lengths that disagree.
        let d = datum(&[5, 6, 7], &[("target_tokens", ints(&[6, 7]))]);
        assert!(convert_data(&[d], &ce, 100).is_err());
        // An input the loss does not take.
        let d = datum(
            &[5, 6],
            &[
                ("target_tokens", ints(&[6, 7])),
                ("advantages", floats(&[1.0, 1.0])),
            ],
        );
        assert!(convert_data(&[d], &ce, 100).is_err());
        // RL losses need their inputs.
        let d = datum(&[5, 6], &[("target_tokens", ints(&[6, 7]))]);
        assert!(convert_data(&[d], &LossFn::ImportanceSampling, 100).is_err());
        // Negative and non-finite values.
        let d = datum(&[5, 6], &[("target_tokens", ints(&[6, -1]))]);
        assert!(convert_data(&[d], &ce, 100).is_err());
        let d = datum(
            &[5, 6],
            &[
                ("target_tokens", ints(&[6, 7])),
                ("weights", floats(&[1.0, f32::NAN])),
            ],
        );
        assert!(convert_data(&[d], &ce, 100).is_err());
        // Longer than the context.
        let d = datum(&[5; 10], &[("target_tokens", ints(&[5; 10]))]);
        assert!(convert_data(&[d], &ce, 10).is_err());
        // No datums, and too many.
        assert!(convert_data(&[], &ce, 100).is_err());
        let d = datum(&[5, 5], &[("target_tokens", ints(&[5, 5]))]);
        let many = vec![d; MAX_DATUMS + 1];
        assert!(convert_data(&many, &ce, 100).is_err());
    }

    #[test]
    fn a_sparse_weight_tensor_far_larger_than_its_datum_is_refused() {
        // `weights` as CSR of shape [1, 2^33] with no values: refused, nothing allocated.
        let sparse = proto::Tensor {
            encoding: Some(proto::Encoding::SparseCsr(proto::SparseCsr {
                values: Vec::new(),
                crow_indices: proto::i64_bytes(&[0, 0]),
                col_indices: Vec::new(),
            })),
            dtype: proto::DType::Float32 as i32,
            shape: vec![1, 8_589_934_592],
        };
        let d = datum(
            &[5, 6],
            &[("target_tokens", ints(&[6, 7])), ("weights", sparse)],
        );
        let error = convert_data(&[d], &LossFn::CrossEntropy, 100).unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
    }

    fn protobuf_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-protobuf".parse().unwrap(),
        );
        headers
    }

    #[test]
    fn zstd_bodies_are_capped_while_decompressing() {
        // 80 MiB of zeros compresses to a few KiB: refused once the cap is passed.
        let bomb = ruzstd::encoding::compress_to_vec(
            &vec![0u8; MAX_DECOMPRESSED_BYTES + (16 << 20)][..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let mut headers = protobuf_headers();
        headers.insert(header::CONTENT_ENCODING, "zstd".parse().unwrap());
        let err = decode_body(&headers, &Bytes::from(bomb)).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        // A good body round-trips through zstd.
        let request = proto::ForwardBackwardRequest {
            model_id: "m".into(),
            seq_id: 1,
            loss_fn: "cross_entropy".into(),
            ..Default::default()
        };
        let packed = ruzstd::encoding::compress_to_vec(
            &request.encode_to_vec()[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(
            decode_body(&headers, &Bytes::from(packed)).unwrap(),
            request
        );
        // Garbage is a 400, not a panic.
        assert_eq!(
            decode_body(&headers, &Bytes::from_static(b"not zstd"))
                .unwrap_err()
                .status(),
            axum::http::StatusCode::BAD_REQUEST
        );
        headers.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(decode_body(&headers, &Bytes::new()).is_err());
        // A body a web page could send without a preflight is refused.
        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            decode_body(&plain, &Bytes::new()).unwrap_err().status(),
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn loss_settings_are_checked() {
        let mut request = proto::ForwardBackwardRequest {
            loss_fn: "ppo".into(),
            ..Default::default()
        };
        request
            .loss_fn_config
            .insert("clip_low_threshold".into(), 0.9);
        request
            .loss_fn_config
            .insert("clip_high_threshold".into(), 1.1);
        match loss_fn(&request).unwrap() {
            LossFn::Ppo {
                epsilon_low,
                epsilon_high,
            } => {
                assert!((epsilon_low - 0.1).abs() < 1e-12);
                assert!((epsilon_high - 0.1).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        request.loss_fn_config.insert("beta".into(), 1.0);
        assert!(loss_fn(&request).is_err());
        request.loss_fn = "stable_reinforce".into();
        assert!(loss_fn(&request).is_err());
    }
}
