//! Checkpoints: `save_weights`, `save_weights_for_sampler`, `load_weights`, `weights_info`,
//! and listing and deleting them. A run's folder records the fingerprint of the key that
//! created it ([`crate::paths::claim_run`]); every path a client names is resolved for its key
//! only, so another key's checkpoints are 404 and never listed, across restarts too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::{Extension, Json};

use crate::error::{TinkerError, TinkerJson};
use crate::model_thread::{self, ModelMeta, ModelOp};
use crate::paths::{self, CheckpointPath, Kind};
use crate::sampling::check_sampler_room;
use crate::training::{open_model, submit};
use crate::{wire, Owner, Shared};

/// A checkpoint path for a name the client gave (or one made up).
fn checkpoint(
    model_id: &str,
    kind: Kind,
    name: Option<&str>,
) -> Result<CheckpointPath, TinkerError> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => rft_types::ids::new_id("ckpt-"),
    };
    if !paths::valid_name(&name) {
        return Err(TinkerError::bad_request(format!(
            "a checkpoint name is 1 to {} letters, digits, '.', '-' or '_', not starting with '.'",
            paths::MAX_NAME_CHARS
        ))
        .with_param("path"));
    }
    if !paths::valid_model_id(model_id) {
        return Err(TinkerError::not_found("model", model_id).with_param("model_id"));
    }
    Ok(CheckpointPath {
        run: model_id.to_owned(),
        kind,
        name,
    })
}

/// The caller's checkpoint a client named, which must exist and carry OpenRFT's metadata.
pub(crate) fn existing_checkpoint(
    shared: &Shared,
    owner: &Owner,
    uri: &str,
) -> Result<(CheckpointPath, PathBuf, ModelMeta), TinkerError> {
    let path =
        CheckpointPath::parse(uri).map_err(|e| TinkerError::bad_request(e).with_param("path"))?;
    let dir = path
        .dir(&shared.root)
        .map_err(|e| TinkerError::bad_request(e).with_param("path"))?;
    let missing = || TinkerError::not_found("checkpoint", uri).with_param("path");
    if paths::run_owner(&shared.root, &path.run).as_ref() != Some(owner) {
        return Err(missing());
    }
    let meta = model_thread::read_meta(&dir)
        .filter(|_| dir.join("adapter_config.json").is_file())
        .ok_or_else(missing)?;
    Ok((path, dir, meta))
}

pub(crate) async fn save_weights(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::SaveWeights>,
) -> Result<Json<wire::Queued>, TinkerError> {
    let path = checkpoint(&request.model_id, Kind::Weights, request.path.as_deref())?;
    let op = ModelOp::Save {
        path,
        with_optimizer: true,
        overwrite: request.overwrite,
        sampler: None,
    };
    submit(&shared, &owner, &request.model_id, request.seq_id, op).map(Json)
}

pub(crate) async fn save_weights_for_sampler(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::SaveWeights>,
) -> Result<Json<wire::Queued>, TinkerError> {
    // Without a name: a snapshot for `save_weights_and_get_sampling_client`, opened as a
    // sampling session when saved.
    let (path, sampler) = match request.path.as_deref() {
        Some(name) => (
            checkpoint(&request.model_id, Kind::SamplerWeights, Some(name))?,
            None,
        ),
        None => {
            check_sampler_room(&shared)?;
            (
                checkpoint(
                    &request.model_id,
                    Kind::SamplerWeights,
                    Some(&rft_types::ids::new_id("snapshot-")),
                )?,
                Some(rft_types::ids::new_id("samp_")),
            )
        }
    };
    let op = ModelOp::Save {
        path,
        with_optimizer: false,
        overwrite: request.overwrite,
        sampler,
    };
    submit(&shared, &owner, &request.model_id, request.seq_id, op).map(Json)
}

pub(crate) async fn load_weights(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::LoadWeights>,
) -> Result<Json<wire::Queued>, TinkerError> {
    let (path, _, meta) = existing_checkpoint(&shared, &owner, &request.path)?;
    if request.optimizer && path.kind != Kind::Weights {
        return Err(TinkerError::bad_request(
            "sampler weights hold no optimizer state: load them with optimizer=false",
        )
        .with_param("optimizer"));
    }
    match (request.model_id, request.session_id, request.model_seq_id) {
        (Some(model_id), None, _) => {
            let op = ModelOp::Load {
                path,
                optimizer: request.optimizer,
            };
            submit(&shared, &owner, &model_id, request.seq_id, op).map(Json)
        }
        (None, Some(session_id), Some(model_seq_id)) => {
            if request
                .base_model
                .as_deref()
                .is_some_and(|b| b != meta.base_model)
            {
                return Err(TinkerError::bad_request(format!(
                    "the checkpoint was trained from '{}'",
                    meta.base_model
                ))
                .with_param("base_model"));
            }
            let (model_id, request_id) = open_model(
                &shared,
                &owner,
                &session_id,
                model_seq_id,
                meta,
                0,
                Some((path, request.optimizer)),
            )?;
            Ok(Json(wire::Queued {
                request_id,
                model_id: Some(model_id),
            }))
        }
        _ => Err(TinkerError::bad_request(
            "load_weights takes model_id (an existing model) or session_id with model_seq_id (a new one)",
        )),
    }
}

pub(crate) async fn weights_info(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    TinkerJson(request): TinkerJson<wire::WeightsInfoRequest>,
) -> Result<Json<wire::WeightsInfo>, TinkerError> {
    let (_, _, meta) = existing_checkpoint(&shared, &owner, &request.tinker_path)
        .map_err(|e| e.with_param("tinker_path"))?;
    Ok(Json(meta.info()))
}

/// One checkpoint as Tinker lists it.
fn checkpoint_entry(path: &CheckpointPath, dir: &Path) -> wire::CheckpointEntry {
    let modified = std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let size: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    wire::CheckpointEntry {
        checkpoint_id: path.checkpoint_id(),
        checkpoint_type: path.kind.checkpoint_type(),
        time: modified,
        tinker_path: path.uri(),
        size_bytes: size,
        public: false,
    }
}

/// A run's checkpoints, oldest first; none for a run of another key.
fn run_checkpoints(root: &Path, owner: &Owner, model_id: &str) -> Vec<wire::CheckpointEntry> {
    let Ok(run) = paths::run_dir(root, model_id) else {
        return Vec::new();
    };
    if paths::check_no_links(root, &run).is_err()
        || paths::run_owner(root, model_id).as_ref() != Some(owner)
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    for kind in [Kind::Weights, Kind::SamplerWeights] {
        let Ok(entries) = std::fs::read_dir(run.join(kind.segment())) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !paths::valid_name(&name) || name.starts_with("snapshot-") {
                continue;
            }
            let path = CheckpointPath {
                run: model_id.to_owned(),
                kind,
                name,
            };
            found.push(checkpoint_entry(&path, &entry.path()));
        }
    }
    found.sort_by_key(|c| c.time);
    found
}

pub(crate) async fn list_checkpoints(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    UrlPath(model_id): UrlPath<String>,
) -> Result<Json<wire::CheckpointList>, TinkerError> {
    if !paths::valid_model_id(&model_id) {
        return Err(TinkerError::not_found("training run", &model_id));
    }
    let root = shared.root.clone();
    let checkpoints =
        tokio::task::spawn_blocking(move || run_checkpoints(&root, &owner, &model_id))
            .await
            .map_err(|e| TinkerError::Internal(e.to_string()))?;
    Ok(Json(wire::CheckpointList { checkpoints }))
}

pub(crate) async fn list_all_checkpoints(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    Query(page): Query<wire::Page>,
) -> Result<Json<wire::CheckpointPage>, TinkerError> {
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let offset = page.offset.unwrap_or(0);
    let root = shared.root.clone();
    let all = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let runs = root.join("runs");
        if paths::check_no_links(&root, &runs).is_err() {
            return all;
        }
        for entry in std::fs::read_dir(&runs).into_iter().flatten().flatten() {
            if let Some(id) = entry.file_name().to_str().and_then(paths::model_id_of) {
                all.extend(run_checkpoints(&root, &owner, &id));
            }
        }
        all.sort_by_key(|c| std::cmp::Reverse(c.time));
        all
    })
    .await
    .map_err(|e| TinkerError::Internal(e.to_string()))?;
    let total_count = all.len();
    let checkpoints = all.into_iter().skip(offset).take(limit).collect();
    Ok(Json(wire::CheckpointPage {
        checkpoints,
        cursor: wire::Cursor {
            offset,
            limit,
            total_count,
        },
    }))
}

pub(crate) async fn delete_checkpoint(
    State(shared): State<Arc<Shared>>,
    Extension(owner): Extension<Owner>,
    UrlPath((model_id, kind, name)): UrlPath<(String, String, String)>,
) -> Result<Json<wire::Empty>, TinkerError> {
    let uri = format!("tinker://{model_id}/{kind}/{name}");
    let (_, dir, _) = existing_checkpoint(&shared, &owner, &uri)?;
    std::fs::remove_dir_all(&dir)
        .map_err(|e| TinkerError::Internal(format!("cannot delete the checkpoint: {e}")))?;
    Ok(Json(wire::Empty {}))
}
