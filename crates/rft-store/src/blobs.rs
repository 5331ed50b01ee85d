//! The blob store: uploaded files, checkpoints, adapters and sample records, kept either in a
//! local folder (the single-machine default) or in any S3-compatible object store, so that API
//! processes and workers on several machines share checkpoints and adapters.
//!
//! **Two backends, one behaviour.** [`Blobs::local`] keeps each blob as a plain file under a
//! root folder (folders 0700, files 0600, written to a temporary name, fsynced and renamed, so a
//! reader never sees half a file). [`Blobs::s3`] and [`Blobs::open`] with `s3://bucket/prefix`
//! keep them as objects under a prefix of a bucket, through the `object_store` crate (signing and
//! TLS on `ring`), with retries and exponential backoff. The same test suite runs on both.
//!
//! **Keys** are relative, `/`-separated paths of 1 to 1024 bytes: no empty, `.` or `..`
//! segment, no leading `/`, no backslash, NUL or other control character. Every key, and every
//! path named in a manifest, is checked before it touches a folder or a bucket, so nothing can
//! reach outside the root (local) or the prefix (S3), whatever a client or a stored manifest says.
//!
//! **Manifest last.** A folder (a checkpoint, an adapter) is published file by file, and only
//! then is `PREFIX/MANIFEST.json` written, listing every file's size and SHA-256. A re-publish
//! first deletes the old manifest. So a folder with a manifest is complete, and one without is
//! incomplete or absent: a worker killed half-way through an upload leaves no folder that a
//! reader could mistake for a checkpoint. [`Blobs::fetch_dir`] verifies every file against the
//! manifest before it replaces the local copy, so a corrupted object never replaces good data.
//!
//! **Why an own runtime and a channel.** `object_store` is async; the rest of the store is
//! synchronous and is called both from plain threads and from inside tokio handlers, where
//! `Runtime::block_on` panics. So the S3 backend owns a small tokio runtime (two workers) and
//! runs each request by spawning it there and waiting on a `std::sync::mpsc` channel, which
//! works from any thread. File reads and writes stay on the caller's thread: uploads hand the
//! runtime one part at a time and downloads pull a bounded batch of chunks at a time, so a file
//! is never held whole in memory.
//!
//! The backends live in `local` and `s3`; this module checks keys and manifests and holds the
//! folder-level logic (publish, verify, fetch) that both share.

mod local;
mod s3;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use local::{
    create_private_dir, create_private_file, hash_file, io_error, non_empty_parent, replace_dir,
    same_file, sync_parent, temp_sibling, walk_publishable, LocalBackend,
};
use s3::S3Backend;
pub use s3::S3Options;

/// The longest key, in bytes (S3's own limit is 1024 too).
const MAX_KEY_BYTES: usize = 1024;
/// How much of a file one read (or one trip to the S3 runtime) moves.
const CHUNK_BYTES: usize = 1 << 20;
/// The name of a published folder's manifest, under its prefix.
const MANIFEST_NAME: &str = "MANIFEST.json";
/// The largest manifest read: far more than any folder's list of files needs.
const MANIFEST_LIMIT: u64 = 64 << 20;

/// How keys look, for every error about one.
const KEY_RULES: &str = "keys are relative '/'-separated paths such as `checkpoints/job-1/step-10/adapter_model.safetensors`: 1 to 1024 bytes, no empty, '.' or '..' segment, no leading '/', backslash, NUL or control character";

/// Why a blob operation failed. Messages never carry credentials: S3 errors are redacted.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A key (or a path in a folder being published) that could escape the root or the prefix.
    #[error("invalid blob key {key:?}: {reason}; {KEY_RULES}")]
    InvalidKey { key: String, reason: &'static str },
    /// A blob larger than the caller can hold; found before reading it.
    #[error("blob {key:?} is larger than the limit of {limit} bytes")]
    TooLarge { key: String, limit: u64 },
    /// A published folder that does not match its manifest, or a manifest that cannot be read.
    #[error("blob {key:?} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// A local file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The object store failed after its retries; the message is redacted.
    #[error("blob store request for {key:?} failed: {message}")]
    Remote { key: String, message: String },
    /// A bad `--blobs` address or S3 setting.
    #[error("blob store configuration: {0}")]
    Config(String),
}

/// A published folder's table of contents, written after every file it lists: its presence is
/// what makes the folder complete, and its hashes are what a fetch verifies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Every file, sorted by path.
    pub files: Vec<ManifestFile>,
    /// When the folder was published (Unix seconds), to tell re-publishes apart.
    pub created_at: i64,
}

/// One file of a published folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    /// The path under the folder, checked like a key before any use.
    pub path: String,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// The artefact store of one OpenRFT deployment. Cloning is cheap and clones share the
/// connection pool and runtime, so one `Blobs` can be handed to every thread and handler.
#[derive(Clone)]
pub struct Blobs {
    backend: Arc<Backend>,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Blobs").field(&self.describe()).finish()
    }
}

enum Backend {
    Local(LocalBackend),
    S3(S3Backend),
}

/// What a download into a file found.
enum Fetched {
    /// The blob, with its length and SHA-256.
    Blob { size: u64, sha256: String },
    /// No such blob.
    Missing,
    /// More bytes than the caller's limit; the file holds a truncated copy.
    OverLimit,
}

impl Blobs {
    /// A blob store in a local folder, created if needed. The folder is narrowed to its owner
    /// (0700) on every open, like the rest of the data folder: blobs are users' data.
    pub fn local(root: &Path) -> Result<Blobs, BlobError> {
        Ok(Blobs::from(Backend::Local(LocalBackend::open(root)?)))
    }

    /// The store a `--blobs` address names: `s3://bucket[/prefix]` (configured from the usual
    /// `AWS_*` variables, so credentials never appear on a command line), `file:///abs/path`, or
    /// the empty string for `local_root`, the single-machine default.
    pub fn open(spec: &str, local_root: &Path) -> Result<Blobs, BlobError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Blobs::local(local_root);
        }
        if let Some(path) = spec.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(BlobError::Config(
                    "a file:// blob store needs an absolute path: file:///abs/path".to_owned(),
                ));
            }
            return Blobs::local(Path::new(path));
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let backend = S3Backend::new(bucket, prefix, S3Options::from_env(), true)?;
            return Ok(Blobs::from(Backend::S3(backend)));
        }
        // The address itself is not repeated: a mistyped one may hold a password.
        let scheme = spec.split_once("://").map_or("", |(scheme, _)| scheme);
        Err(BlobError::Config(format!(
            "unsupported blob store address (scheme {scheme:?}); use s3://BUCKET[/PREFIX] \
             (credentials and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
             AWS_ENDPOINT_URL, AWS_REGION…), file:///ABSOLUTE/PATH, or nothing for the data folder"
        )))
    }

    /// A store in an S3-compatible bucket under `prefix` (may be empty), with explicit settings
    /// and nothing read from the environment, so tests and embedders need not touch the
    /// process-wide environment. No request is made until the first operation.
    pub fn s3(bucket: &str, prefix: &str, options: S3Options) -> Result<Blobs, BlobError> {
        let backend = S3Backend::new(bucket, prefix, options, false)?;
        Ok(Blobs::from(Backend::S3(backend)))
    }

    /// Bounds how long a failing S3 store is retried (backoff from 100 ms to 5 s; by default 5
    /// retries within 60 s): a worker should give up on a dead store in a predictable time,
    /// and tests in seconds. A no-op for the local backend. The client is rebuilt, so call it
    /// before the first request.
    pub fn with_retry(self, max_retries: usize, timeout: Duration) -> Blobs {
        match &*self.backend {
            Backend::S3(s3) => match s3.with_retry(max_retries, timeout) {
                Ok(rebuilt) => Blobs::from(Backend::S3(rebuilt)),
                Err(error) => {
                    tracing::warn!(%error, "keeping the blob store's retry settings");
                    self
                }
            },
            Backend::Local(_) => self,
        }
    }

    /// Where the blobs live, for logs and `doctor`: `s3://bucket/prefix` or the folder; never a
    /// credential or an endpoint.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local(local) => local.root.display().to_string(),
            Backend::S3(s3) => s3.describe(),
        }
    }

    /// The folder of the local backend, for callers that can use a file in place (an adapter
    /// loaded straight from the store) instead of fetching a copy.
    pub fn local_root(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Local(local) => Some(&local.root),
            Backend::S3(_) => None,
        }
    }

    /// Stores `bytes` under `key`, replacing any blob there; readers see the old or the new one.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(local) => local.put(key, bytes),
            Backend::S3(s3) => s3.put(key, bytes),
        }
    }

    /// Stores the file at `path` under `key`, streamed (multipart in 8 MiB parts on S3 above
    /// 8 MiB), so checkpoints of any size fit in bounded memory. Returns its length.
    pub fn put_file(&self, key: &str, path: &Path) -> Result<u64, BlobError> {
        check_key(key)?;
        self.put_file_hashed(key, path, false).map(|(size, _)| size)
    }

    /// [`Blobs::put_file`], also returning the SHA-256 of what was stored when `want_hash`
    /// (computed while streaming; only the local in-place no-op needs an extra read).
    fn put_file_hashed(
        &self,
        key: &str,
        path: &Path,
        want_hash: bool,
    ) -> Result<(u64, String), BlobError> {
        match &*self.backend {
            Backend::Local(local) => local.put_file(key, path, want_hash),
            Backend::S3(s3) => s3.put_file(key, path),
        }
    }

    /// The blob under `key`, or `None` if there is none. Refuses (before reading it) a blob
    /// larger than `max_bytes`, so a request cannot make the server allocate without bound.
    pub fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(local) => local.get(key, max_bytes),
            Backend::S3(s3) => s3.get(key, max_bytes),
        }
    }

    /// Copies the blob under `key` to `dest` (streamed, through a temporary file beside it, mode
    /// 0600), so a reader of `dest` never sees a partial download. `false` if there is no blob.
    pub fn get_file(&self, key: &str, dest: &Path) -> Result<bool, BlobError> {
        check_key(key)?;
        if let Backend::Local(local) = &*self.backend {
            let source = local.path(key);
            if same_file(&source, dest) {
                return Ok(source.is_file());
            }
        }
        if let Some(parent) = non_empty_parent(dest) {
            create_private_dir(parent)?;
        }
        let temp = temp_sibling(dest);
        let fetched = (|| {
            let mut file = create_private_file(&temp)?;
            let fetched = self.download(key, &mut file, &temp, u64::MAX)?;
            file.sync_all().map_err(|e| io_error(&temp, e))?;
            Ok(fetched)
        })();
        match fetched {
            Ok(Fetched::Blob { .. }) => {
                std::fs::rename(&temp, dest).map_err(|e| io_error(dest, e))?;
                sync_parent(dest)?;
                Ok(true)
            }
            Ok(Fetched::Missing | Fetched::OverLimit) => {
                let _ = std::fs::remove_file(&temp);
                Ok(false)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Whether a blob is stored under `key`.
    pub fn exists(&self, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(local) => Ok(local.path(key).is_file()),
            Backend::S3(s3) => s3.exists(key),
        }
    }

    /// Removes the blob under `key`; a missing one is not an error, so retries are harmless.
    pub fn delete(&self, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(local) => local.delete(key),
            Backend::S3(s3) => s3.delete(key),
        }
    }

    /// Removes every blob under `prefix/` (a job's outputs, an old checkpoint) and says how many.
    /// An empty prefix is refused: it would empty the whole store.
    pub fn delete_prefix(&self, prefix: &str) -> Result<usize, BlobError> {
        check_key(prefix)?;
        let listed = self.list(prefix)?;
        match &*self.backend {
            Backend::Local(local) => local.delete_folder(prefix)?,
            Backend::S3(s3) => s3.delete_all(prefix, &listed)?,
        }
        Ok(listed.len())
    }

    /// Every blob under `prefix/`, recursively, as (key, size) sorted by key; the keys are
    /// whole keys, ready for [`Blobs::get`]. An empty prefix lists the whole store.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        if !prefix.is_empty() {
            check_key(prefix)?;
        }
        let mut listed = match &*self.backend {
            Backend::Local(local) => local.list(prefix)?,
            Backend::S3(s3) => s3.list(prefix)?,
        };
        listed.sort();
        Ok(listed)
    }

    /// Publishes the folder `dir` under `prefix/` (every regular file, recursively; symbolic
    /// links and temporary `*.tmp-*` files are skipped), then `prefix/MANIFEST.json` last, so the
    /// folder is seen as complete only once all of it is there. Any older manifest is deleted
    /// first: a re-publish interrupted half-way reads as incomplete, not as the old folder.
    pub fn publish_dir(&self, prefix: &str, dir: &Path) -> Result<Manifest, BlobError> {
        check_key(prefix)?;
        let mut found = Vec::new();
        walk_publishable(dir, "", &mut found)?;
        found.retain(|(relative, _)| relative != MANIFEST_NAME);
        found.sort();
        let manifest_key = format!("{prefix}/{MANIFEST_NAME}");
        self.delete(&manifest_key)?;
        let mut files = Vec::with_capacity(found.len());
        for (relative, path) in found {
            let key = format!("{prefix}/{relative}");
            check_key(&key)?;
            let (size, sha256) = self.put_file_hashed(&key, &path, true)?;
            files.push(ManifestFile {
                path: relative,
                size,
                sha256,
            });
        }
        let manifest = Manifest {
            files,
            created_at: unix_now(),
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| BlobError::Corrupt {
            key: manifest_key.clone(),
            message: e.to_string(),
        })?;
        self.put(&manifest_key, &body)?;
        Ok(manifest)
    }

    /// The manifest of the folder under `prefix/`: `None` while it is incomplete (being
    /// published, or interrupted) or absent. A manifest that does not parse, or that names a
    /// path that could escape the folder, is `Corrupt`: it is never trusted to write files.
    pub fn manifest(&self, prefix: &str) -> Result<Option<Manifest>, BlobError> {
        check_key(prefix)?;
        let key = format!("{prefix}/{MANIFEST_NAME}");
        let Some(bytes) = self.get(&key, MANIFEST_LIMIT)? else {
            return Ok(None);
        };
        let corrupt = |message: String| BlobError::Corrupt {
            key: key.clone(),
            message,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("the manifest does not parse: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for file in &manifest.files {
            if let Err(BlobError::InvalidKey { reason, .. }) = check_key(&file.path) {
                return Err(corrupt(format!(
                    "the manifest names the path {:?}: {reason}",
                    shown(&file.path)
                )));
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(corrupt(format!(
                    "the manifest's sha256 of {:?} is not 64 lowercase hex digits",
                    file.path
                )));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(corrupt(format!("the manifest names {:?} twice", file.path)));
            }
        }
        Ok(Some(manifest))
    }

    /// Makes `dir` a verified copy of the folder published under `prefix/`: every file is
    /// downloaded into a temporary sibling folder and checked against the manifest's size and
    /// SHA-256, and only then does it replace `dir`. `None` (and `dir` untouched) while the
    /// folder has no manifest; on `Corrupt` or any other error `dir` is untouched too.
    pub fn fetch_dir(&self, prefix: &str, dir: &Path) -> Result<Option<Manifest>, BlobError> {
        let Some(manifest) = self.manifest(prefix)? else {
            return Ok(None);
        };
        if let Backend::Local(local) = &*self.backend {
            let folder = local.path(prefix);
            if same_file(&folder, dir) {
                // The folder already is the store's: check it, copy nothing.
                for file in &manifest.files {
                    let key = format!("{prefix}/{}", file.path);
                    let path = folder.join(&file.path);
                    let (size, sha256) = match hash_file(&path) {
                        Ok(found) => found,
                        Err(_) => return Err(missing_listed(&key)),
                    };
                    check_against(&key, file, size, &sha256)?;
                }
                return Ok(Some(manifest));
            }
        }
        let parent = non_empty_parent(dir).unwrap_or(Path::new("."));
        create_private_dir(parent)?;
        let temp = temp_sibling(dir);
        let filled = self.fill_dir(prefix, &manifest, &temp);
        if let Err(e) = filled {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(e);
        }
        replace_dir(&temp, dir)?;
        Ok(Some(manifest))
    }

    /// Downloads and verifies every file of `manifest` into the new folder `temp`.
    fn fill_dir(&self, prefix: &str, manifest: &Manifest, temp: &Path) -> Result<(), BlobError> {
        create_private_dir(temp)?;
        for file in &manifest.files {
            let key = format!("{prefix}/{}", file.path);
            check_key(&key).map_err(|_| BlobError::Corrupt {
                key: key.clone(),
                message: "the manifest names a path that is not a valid key".to_owned(),
            })?;
            let dest = temp.join(&file.path);
            if let Some(parent) = non_empty_parent(&dest) {
                create_private_dir(parent)?;
            }
            let mut out = create_private_file(&dest)?;
            match self.download(&key, &mut out, &dest, file.size)? {
                Fetched::Blob { size, sha256 } => check_against(&key, file, size, &sha256)?,
                Fetched::Missing => return Err(missing_listed(&key)),
                Fetched::OverLimit => {
                    return Err(BlobError::Corrupt {
                        key,
                        message: format!("larger than the manifest's {} bytes", file.size),
                    })
                }
            }
            out.sync_all().map_err(|e| io_error(&dest, e))?;
        }
        Ok(())
    }

    /// Streams the blob under `key` into `out`, hashing it, stopping past `limit` bytes.
    fn download(
        &self,
        key: &str,
        out: &mut File,
        out_path: &Path,
        limit: u64,
    ) -> Result<Fetched, BlobError> {
        match &*self.backend {
            Backend::Local(local) => local.download(key, out, out_path, limit),
            Backend::S3(s3) => s3.download(key, out, out_path, limit),
        }
    }
}

impl From<Backend> for Blobs {
    fn from(backend: Backend) -> Blobs {
        Blobs {
            backend: Arc::new(backend),
        }
    }
}

/// Checks a key against the rules in the module docs.
fn check_key(key: &str) -> Result<(), BlobError> {
    let reason = if key.is_empty() {
        "it is empty"
    } else if key.len() > MAX_KEY_BYTES {
        "it is longer than 1024 bytes"
    } else if key.starts_with('/') {
        "it is absolute (starts with '/')"
    } else if key.contains('\0') {
        "it contains a NUL byte"
    } else if key.chars().any(char::is_control) {
        "it contains a control character"
    } else if key.contains('\\') {
        "it contains a backslash"
    } else if key.split('/').any(str::is_empty) {
        "it has an empty segment ('//' or a trailing '/')"
    } else if key.split('/').any(|s| s == "." || s == "..") {
        "it has a '.' or '..' segment"
    } else {
        return Ok(());
    };
    Err(invalid_key(key, reason))
}

fn invalid_key(key: &str, reason: &'static str) -> BlobError {
    BlobError::InvalidKey {
        key: shown(key),
        reason,
    }
}

/// A key short enough for a message: a 2000-byte hostile key is cut.
fn shown(key: &str) -> String {
    const SHOWN: usize = 128;
    if key.len() <= SHOWN {
        return key.to_owned();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

fn too_large(key: &str, limit: u64) -> BlobError {
    BlobError::TooLarge {
        key: shown(key),
        limit,
    }
}

fn missing_listed(key: &str) -> BlobError {
    BlobError::Corrupt {
        key: key.to_owned(),
        message: "listed in the manifest but missing".to_owned(),
    }
}

fn check_against(key: &str, file: &ManifestFile, size: u64, sha256: &str) -> Result<(), BlobError> {
    if size != file.size {
        return Err(BlobError::Corrupt {
            key: key.to_owned(),
            message: format!("{size} bytes, the manifest says {}", file.size),
        });
    }
    if sha256 != file.sha256 {
        return Err(BlobError::Corrupt {
            key: key.to_owned(),
            message: format!("sha256 {sha256}, the manifest says {}", file.sha256),
        });
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
