//! Sessions, and the registry of what they hold: training models and sampling sessions, each
//! bound to the session and the API key ([`Owner`]) that made it.
//!
//! Closing a session (`finish`, or [`SESSION_IDLE`] without a heartbeat) closes its models:
//! their queued work is cancelled and its futures fail at once, the model's thread ends after
//! the request it is running, and the model counts against [`MAX_MODELS`] until then, so
//! finishing a session with work queued cannot be used to load more models than the cap.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::{Extension, Json};

use crate::error::{TinkerError, TinkerJson};
use crate::model_thread::{Job, Life, ModelMeta};
use crate::wire;
use crate::{Owner, Shared, MAX_SESSIONS, SESSION_IDLE};

/// An open session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) owner: Owner,
    pub(crate) seen: Instant,
}

/// A training model.
pub(crate) struct ModelEntry {
    pub(crate) owner: Owner,
    pub(crate) session: String,
    pub(crate) meta: ModelMeta,
    pub(crate) jobs: Sender<Job>,
    /// Closed and busy flags shared with the model's thread.
    pub(crate) life: Arc<Life>,
    /// `save_weights_and_get_sampling_client` snapshots, oldest first: folder and sampler.
    pub(crate) ephemeral: VecDeque<(PathBuf, String)>,
}

/// A sampling session.
#[derive(Debug, Clone)]
pub(crate) struct SamplerEntry {
    pub(crate) owner: Owner,
    pub(crate) session: Option<String>,
    pub(crate) base_model: String,
    pub(crate) adapter: Option<PathBuf>,
    pub(crate) model_path: Option<String>,
}

/// Sessions, models and samplers by id.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) models: HashMap<String, ModelEntry>,
    pub(crate) samplers: HashMap<String, SamplerEntry>,
}

impl Registry {
    /// The caller's session, marked seen; 410 when it is gone (or another key's: a session id
    /// is not a way into someone else's work).
    pub(crate) fn touch_session(&mut self, owner: &Owner, id: &str) -> Result<(), TinkerError> {
        match self.sessions.get_mut(id).filter(|s| s.owner == *owner) {
            Some(session) => {
                session.seen = Instant::now();
                Ok(())
            }
            None => Err(TinkerError::Gone { what: "session" }),
        }
    }

    /// The caller's model; 404 for an unknown model or another key's.
    pub(crate) fn model(&self, owner: &Owner, id: &str) -> Result<&ModelEntry, TinkerError> {
        self.models
            .get(id)
            .filter(|m| m.owner == *owner)
            .ok_or_else(|| TinkerError::not_found("model", id).with_param("model_id"))
    }

    /// The caller's sampler; 404 for an unknown sampler or another key's.
    pub(crate) fn sampler(&self, owner: &Owner, id: &str) -> Result<&SamplerEntry, TinkerError> {
        self.samplers
            .get(id)
            .filter(|s| s.owner == *owner)
            .ok_or_else(|| TinkerError::not_found("sampler", id))
    }

    /// Closes sessions idle past [`SESSION_IDLE`], with their models.
    pub(crate) fn expire_sessions(&mut self, shared: &Shared) {
        let idle: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.seen.elapsed() > SESSION_IDLE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.close_session(shared, &id);
        }
    }

    /// Closes a session: its models stop (queued work fails now) and its samplers go.
    pub(crate) fn close_session(&mut self, shared: &Shared, id: &str) {
        self.sessions.remove(id);
        let models: Vec<String> = self
            .models
            .iter()
            .filter(|(_, m)| m.session == id)
            .map(|(k, _)| k.clone())
            .collect();
        for model_id in models {
            if let Some(model) = self.models.remove(&model_id) {
                let running = model.life.close(&shared.closing);
                // Dropping the sender lets the thread end once it has failed what is queued.
                drop(model.jobs);
                shared.futures.fail_model(
                    &model_id,
                    "the session was closed before this request ran",
                    running.as_deref(),
                );
            }
        }
        self.samplers
            .retain(|_, s| s.session.as_deref() != Some(id));
    }
}

pub(crate) async fn healthz() -> Json<wire::Status> {
    Json(wire::Status { status: "ok" })
}

/// Feature flags for this server: the plain `httpx` transport, zstd-compressed
/// `forward_backward` bodies, per-request future polling, client-side custom losses.
pub(crate) async fn client_config() -> Json<wire::ClientConfig> {
    Json(wire::ClientConfig {
        pjwt_auth_enabled: false,
        credential_default_source: "api_key",
        parallel_fwdbwd_chunks: true,
        proto_compress_fwdbwd: true,
        fwdbwd_max_chunk_len: 256,
        fwdbwd_max_chunk_bytes_count: 8_000_000,
        use_pyqwest_transport: false,
        sample_use_retrieve_futures: false,
        custom_loss_server_side: false,
        sample_join_sampling_session: false,
    })
}

pub(crate) async fn client_dynamic_config() -> Json<wire::DynamicConfig> {
    Json(wire::DynamicConfig {
        refresh_interval_sec: 300,
        sample_cancel_enabled: false,
    })
}

pub(crate) async fn capabilities(State(shared): State<Arc<Shared>>) -> Json<wire::Capabilities> {
    // The sentence encoder behind the `cosine` metric is in the models folder too, but it is
    // not a language model.
    let supported_models = shared
        .models
        .names()
        .into_iter()
        .filter(|name| name != rft_model::hub::ALL_MINILM_L6_V2.name)
        .map(|name| wire::SupportedModel {
            max_context_length: shared.known_context(&name),
            model_name: name,
            trainable: true,
            sampleable: true,
        })
        .collect();
    Json(wire::Capabilities { supported_models })
}

pub(crate) async fn create_session(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
) -> Result<Json<wire::SessionCreated>, TinkerError> {
    let mut registry = shared.registry();
    registry.expire_sessions(&shared);
    if registry.sessions.len() >= MAX_SESSIONS {
        return Err(TinkerError::Busy(format!(
            "{MAX_SESSIONS} sessions are open; close one (ServiceClient.close) or wait for idle ones to expire"
        )));
    }
    let id = rft_types::ids::new_id("sess_");
    registry.sessions.insert(
        id.clone(),
        Session {
            owner,
            seen: Instant::now(),
        },
    );
    Ok(Json(wire::SessionCreated {
        kind: "create_session",
        session_id: id,
    }))
}

pub(crate) async fn session_heartbeat(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::SessionRef>,
) -> Result<Json<wire::Typed>, TinkerError> {
    shared
        .registry()
        .touch_session(&owner, &request.session_id)?;
    Ok(Json(wire::Typed {
        kind: "session_heartbeat",
    }))
}

pub(crate) async fn finish_session(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    UrlPath(session_id): UrlPath<String>,
) -> Result<Json<wire::Empty>, TinkerError> {
    let mut registry = shared.registry();
    match registry.sessions.get(&session_id) {
        Some(session) if session.owner == owner => {
            registry.close_session(&shared, &session_id);
            Ok(Json(wire::Empty {}))
        }
        Some(_) => Err(TinkerError::not_found("session", &session_id)),
        // Finishing twice is not an error.
        None => Ok(Json(wire::Empty {})),
    }
}

pub(crate) async fn telemetry() -> Json<wire::Status> {
    // Telemetry stays on the machine: accepted and dropped.
    Json(wire::Status { status: "accepted" })
}
