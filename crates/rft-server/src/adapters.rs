//! vLLM's run-time LoRA endpoints, so a trainer publishes a policy version to an `rft serve`
//! rollout worker exactly as it does to a vLLM server: `POST /v1/load_lora_adapter
//! {"lora_name", "lora_path", "load_inplace"}` and `POST /v1/unload_lora_adapter {"lora_name"}`,
//! after which the name is a `model` for `/v1/completions` and `/v1/chat/completions`, listed by
//! `/v1/models` with its base as `parent`.
//!
//! A path is not a way in: adapters load only from under the folder the operator names at
//! start (`rft serve --adapter-root`); without one the endpoints answer 404 as vLLM does when
//! run-time updating is off. The path is resolved (symbolic links included) before it is
//! compared with the root, so `..` and links cannot leave it, and the adapter's two files must
//! be plain files, not links; a path that does not exist, is
//! outside the root or holds no PEFT adapter is 404, a name loaded twice without `load_inplace`
//! is 400 (vLLM's codes). Loaded names are bounded: past [`crate::ServerConfig::max_lora_adapters`]
//! the least recently used is unloaded; the weights themselves live in the engine host's
//! adapter cache, within its memory budget.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::catalog::Catalog;
use crate::error::ApiBody;
use crate::inference::ModelRef;
use crate::{ApiError, SharedState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rft_types::api::completions::{LoadLoraAdapter, UnloadLoraAdapter};

/// Longest adapter name.
const MAX_NAME_CHARS: usize = 128;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    base_name: String,
    model: ModelRef,
    used: u64,
}

/// The adapters loaded by name.
#[derive(Debug)]
pub(crate) struct LoadedAdapters {
    /// The adapter root, resolved at start; `None`: the endpoints are off.
    root: Option<PathBuf>,
    max: usize,
    entries: Mutex<(u64, Vec<Entry>)>,
}

impl LoadedAdapters {
    /// The registry over `root` (resolved now: it must exist), holding at most `max` names.
    pub(crate) fn new(root: Option<&Path>, max: usize) -> std::io::Result<LoadedAdapters> {
        let root = root.map(std::fs::canonicalize).transpose()?;
        Ok(LoadedAdapters {
            root,
            max: max.max(1),
            entries: Mutex::new((0, Vec::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Entry>)> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The adapter root (resolved), when the endpoints are on.
    pub(crate) fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The model a loaded name stands for, marked used.
    pub(crate) fn get(&self, name: &str) -> Option<ModelRef> {
        let mut guard = self.lock();
        let (clock, entries) = &mut *guard;
        *clock += 1;
        let entry = entries.iter_mut().find(|e| e.name == name)?;
        entry.used = *clock;
        Some(entry.model.clone())
    }

    /// `(name, base model name)` of every loaded adapter, oldest first.
    pub(crate) fn list(&self) -> Vec<(String, String)> {
        self.lock()
            .1
            .iter()
            .map(|e| (e.name.clone(), e.base_name.clone()))
            .collect()
    }

    /// The PEFT folder `given` names under the root; 404 for anything else.
    fn resolve_path(&self, given: &str) -> Result<PathBuf, ApiError> {
        let Some(root) = &self.root else {
            return Err(endpoints_off());
        };
        let missing = || {
            ApiError::not_found("LoRA adapter", given)
                .with_param("lora_path")
                .with_message(format!(
                    "No LoRA adapter at '{given}' under this server's adapter root (rft serve --adapter-root): the path must name a PEFT folder (adapter_config.json and adapter_model.safetensors) inside it."
                ))
        };
        if given.is_empty() || given.contains('\0') {
            return Err(missing());
        }
        let path = Path::new(given);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            root.join(path)
        };
        // Resolved first (`..` and symbolic links included), then compared.
        let resolved = std::fs::canonicalize(&joined).map_err(|_| missing())?;
        if !resolved.starts_with(root) || resolved == *root {
            return Err(missing());
        }
        // The files themselves, not links to files elsewhere.
        let peft = ["adapter_config.json", "adapter_model.safetensors"]
            .iter()
            .all(|file| {
                std::fs::symlink_metadata(resolved.join(file))
                    .is_ok_and(|m| m.file_type().is_file())
            });
        if !peft {
            return Err(missing());
        }
        Ok(resolved)
    }

    fn insert(&self, entry: Entry, inplace: bool) -> Result<(), ApiError> {
        let mut guard = self.lock();
        let (clock, entries) = &mut *guard;
        *clock += 1;
        if let Some(at) = entries.iter().position(|e| e.name == entry.name) {
            if !inplace {
                return Err(ApiError::bad_request(format!(
                    "The lora adapter '{}' has already been loaded. If you want to load the adapter in place, set 'load_inplace' to True.",
                    entry.name
                ))
                .with_param("lora_name"));
            }
            entries.remove(at);
        }
        if entries.len() >= self.max {
            if let Some((at, _)) = entries.iter().enumerate().min_by_key(|(_, e)| e.used) {
                let gone = entries.remove(at);
                tracing::info!("unloaded the LoRA adapter {} to make room", gone.name);
            }
        }
        entries.push(Entry {
            used: *clock,
            ..entry
        });
        Ok(())
    }

    fn remove(&self, name: &str) -> bool {
        let mut guard = self.lock();
        let before = guard.1.len();
        guard.1.retain(|e| e.name != name);
        guard.1.len() != before
    }
}

fn endpoints_off() -> ApiError {
    ApiError::not_found("route", "load_lora_adapter").with_message(
        "Run-time LoRA loading is off: start rft serve with --adapter-root DIR to load adapters from DIR.",
    )
}

/// A name clients can use as `model`: 1 to 128 letters, digits, `.`, `_`, `-`, `:`, `/`, and
/// not a base model's name or an `ft:` name.
fn check_name(name: &str, catalog: &Catalog) -> Result<(), ApiError> {
    let fine = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
        && !name.starts_with("ft:")
        && catalog.resolve(name).is_none()
        && !rft_model::hub::KNOWN_MODELS.iter().any(|m| m.name == name);
    if fine {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "lora_name must be 1 to {MAX_NAME_CHARS} letters, digits, '.', '_', '-', ':' or '/', not start with 'ft:', and not name a base model"
        ))
        .with_param("lora_name"))
    }
}

/// `POST /v1/load_lora_adapter`.
pub(crate) async fn load(
    State(state): State<SharedState>,
    ApiBody(request): ApiBody<LoadLoraAdapter>,
) -> Result<Response, ApiError> {
    let adapters = &state.inference.adapters;
    // `blob:adapters/<name>`: a version the trainer published through the blob store this
    // server shares (`--blobs`), fetched into the adapter root, then loaded from there.
    let mut lora_path = request.lora_path.clone();
    if lora_path.starts_with(crate::job_storage::BLOB_PATH_SCHEME) {
        let root = adapters.root().ok_or_else(endpoints_off)?.to_owned();
        let blobs = state.blobs.clone();
        let given = lora_path.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            crate::job_storage::fetch_blob_adapter(&blobs, &root, &given)
        })
        .await
        .map_err(|e| ApiError::internal(format!("the adapter fetch stopped: {e}")))?;
        match fetched {
            Some(Ok(local)) => lora_path = local.to_string_lossy().into_owned(),
            Some(Err(message)) => {
                return Err(ApiError::not_found("LoRA adapter", &request.lora_path)
                    .with_param("lora_path")
                    .with_message(crate::error::redact_paths(&message)))
            }
            None => {}
        }
    }
    let dir = adapters.resolve_path(&lora_path)?;
    let catalog = state.inference.catalog();
    check_name(&request.lora_name, catalog)?;
    // The adapter goes over the base it names when this server serves that base, else over
    // the default model (a vLLM server has one base and applies every adapter to it).
    let named = rft_model::engine::adapter_base(&dir).ok();
    let (base_name, base) = named
        .as_deref()
        .and_then(|name| catalog.resolve(name).map(|spec| (name.to_owned(), spec)))
        .or_else(|| {
            let default = state.config.default_model.clone();
            catalog.resolve(&default).map(|spec| (default, spec))
        })
        .ok_or_else(|| {
            ApiError::bad_request("the adapter's base model is not served here")
                .with_param("lora_path")
        })?;
    let model = ModelRef {
        base,
        adapter: Some(dir),
    };
    // Loaded now, so a broken or mismatched adapter is refused here, not at its first use.
    let host = state.host.clone();
    let check = model.clone();
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        let engine = host.base(&check.base).map_err(|e| match e {
            rft_model::ModelError::MemoryBudget { .. } => ApiError::unavailable(e.to_string()),
            other => ApiError::internal(format!("cannot load the base model: {other}")),
        })?;
        if let Some(dir) = &check.adapter {
            host.adapter(&engine, dir).map_err(|e| {
                ApiError::bad_request(format!(
                    "cannot load the LoRA adapter over {}: {e}",
                    check.base
                ))
                .with_param("lora_path")
            })?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ApiError::internal(format!("the adapter check stopped: {e}")))??;
    adapters.insert(
        Entry {
            name: request.lora_name.clone(),
            base_name,
            model,
            used: 0,
        },
        request.load_inplace,
    )?;
    Ok((
        StatusCode::OK,
        format!(
            "Success: LoRA adapter '{}' added successfully.",
            request.lora_name
        ),
    )
        .into_response())
}

/// `POST /v1/unload_lora_adapter`.
pub(crate) async fn unload(
    State(state): State<SharedState>,
    ApiBody(request): ApiBody<UnloadLoraAdapter>,
) -> Result<Response, ApiError> {
    let adapters = &state.inference.adapters;
    if adapters.root.is_none() {
        return Err(endpoints_off());
    }
    if !adapters.remove(&request.lora_name) {
        return Err(ApiError::not_found("LoRA adapter", &request.lora_name)
            .with_param("lora_name")
            .with_message(format!(
                "The lora adapter '{}' cannot be found.",
                request.lora_name
            )));
    }
    Ok((
        StatusCode::OK,
        format!(
            "Success: LoRA adapter '{}' removed successfully.",
            request.lora_name
        ),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peft(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), "{}").unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), "").unwrap();
    }

    #[test]
    fn paths_resolve_only_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        peft(&root.join("job-v1"));
        peft(&tmp.path().join("outside"));
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("link")).unwrap();
        let adapters = LoadedAdapters::new(Some(&root), 4).unwrap();
        assert!(adapters.resolve_path("job-v1").is_ok());
        let absolute = root.join("job-v1");
        assert!(adapters.resolve_path(absolute.to_str().unwrap()).is_ok());
        for bad in [
            "../outside",
            "job-v1/../../outside",
            "link",
            "",
            ".",
            "missing",
            tmp.path().join("outside").to_str().unwrap(),
        ] {
            let error = adapters.resolve_path(bad).unwrap_err();
            assert_eq!(error.status, StatusCode::NOT_FOUND, "{bad}");
        }
        let off = LoadedAdapters::new(None, 4).unwrap();
        assert_eq!(
            off.resolve_path("job-v1").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn names_are_unique_unless_in_place_and_bounded_least_recently_used_first() {
        let adapters = LoadedAdapters::new(None, 2).unwrap();
        let entry = |name: &str| Entry {
            name: name.into(),
            base_name: "base".into(),
            model: ModelRef {
                base: "base".into(),
                adapter: Some(PathBuf::from(name)),
            },
            used: 0,
        };
        adapters.insert(entry("a"), false).unwrap();
        let twice = adapters.insert(entry("a"), false).unwrap_err();
        assert_eq!(twice.status, StatusCode::BAD_REQUEST);
        adapters.insert(entry("a"), true).unwrap();
        adapters.insert(entry("b"), false).unwrap();
        // "a" used last: "b" is the one to go.
        assert!(adapters.get("a").is_some());
        adapters.insert(entry("c"), false).unwrap();
        let names: Vec<String> = adapters.list().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["a".to_owned(), "c".to_owned()]);
        assert!(adapters.remove("a"));
        assert!(!adapters.remove("a"));
    }
}
