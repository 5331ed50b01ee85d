//! The local backend: each blob a file under a root folder, written through a temporary
//! sibling, fsynced and renamed, so a reader sees the old blob or the whole new one, never half;
//! folders 0700 and files 0600 because blobs are users' data. Also the file helpers both
//! backends share for what they write on this machine (downloads, fetched folders).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{check_key, invalid_key, too_large, BlobError, Fetched, CHUNK_BYTES};

/// The marker of a temporary file's name (`NAME.tmp-PID-N`); such files are never blobs.
const TEMP_MARKER: &str = ".tmp-";
/// Folders of the local backend and of fetched folders: the owner's only.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Files of the local backend and files fetched from either backend.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

pub(super) struct LocalBackend {
    pub(super) root: PathBuf,
}

impl LocalBackend {
    /// Creates the root if needed and narrows it to its owner, as the store does its folders.
    pub(super) fn open(root: &Path) -> Result<LocalBackend, BlobError> {
        create_private_dir(root)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| io_error(root, e))?;
        }
        Ok(LocalBackend {
            root: root.to_path_buf(),
        })
    }

    /// The file of a checked key: plain joining is safe because the key has no `..`, no root
    /// and no backslash.
    pub(super) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub(super) fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let target = self.path(key);
        write_private_atomic(&target, |file| {
            file.write_all(bytes).map_err(|e| io_error(&target, e))
        })
    }

    /// Copies a file in, returning its length and (when `want_hash`, or whenever it is copied)
    /// its SHA-256; a no-op when `path` already is the key's file.
    pub(super) fn put_file(
        &self,
        key: &str,
        path: &Path,
        want_hash: bool,
    ) -> Result<(u64, String), BlobError> {
        let target = self.path(key);
        if same_file(path, &target) {
            // Publishing a folder that already is the store's: nothing to copy.
            if want_hash {
                return hash_file(path);
            }
            let size = std::fs::metadata(path)
                .map_err(|e| io_error(path, e))?
                .len();
            return Ok((size, String::new()));
        }
        let mut source = File::open(path).map_err(|e| io_error(path, e))?;
        let mut result = (0, String::new());
        write_private_atomic(&target, |file| {
            result = copy_hashed(&mut source, path, file, &target, u64::MAX)?;
            Ok(())
        })?;
        Ok(result)
    }

    pub(super) fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key);
        let Some(file) = open_blob(&path)? else {
            return Ok(None);
        };
        let size = file.metadata().map_err(|e| io_error(&path, e))?.len();
        if size > max_bytes {
            return Err(too_large(key, max_bytes));
        }
        let mut bytes = Vec::new();
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(&path, e))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_large(key, max_bytes));
        }
        Ok(Some(bytes))
    }

    pub(super) fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_parent(&path)?;
                self.prune_empty_parents(&path);
                Ok(())
            }
            Err(e) if is_missing(&e) || path.is_dir() => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// Removes the folder of a checked prefix, with whatever is in it.
    pub(super) fn delete_folder(&self, prefix: &str) -> Result<(), BlobError> {
        let folder = self.path(prefix);
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {
                sync_parent(&folder)?;
                self.prune_empty_parents(&folder);
                Ok(())
            }
            Err(e) if is_missing(&e) || folder.is_file() => Ok(()),
            Err(e) => Err(io_error(&folder, e)),
        }
    }

    pub(super) fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        let folder = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)
        };
        let mut found = Vec::new();
        walk_files(&folder, prefix, &mut found)?;
        found
            .into_iter()
            .map(|(key, path)| {
                let size = std::fs::symlink_metadata(&path)
                    .map_err(|e| io_error(&path, e))?
                    .len();
                Ok((key, size))
            })
            .collect()
    }

    /// Copies a blob into `out`, hashing it, stopping past `limit` bytes.
    pub(super) fn download(
        &self,
        key: &str,
        out: &mut File,
        out_path: &Path,
        limit: u64,
    ) -> Result<Fetched, BlobError> {
        let path = self.path(key);
        let Some(mut source) = open_blob(&path)? else {
            return Ok(Fetched::Missing);
        };
        let (size, sha256) = copy_hashed(&mut source, &path, out, out_path, limit)?;
        if size > limit {
            return Ok(Fetched::OverLimit);
        }
        Ok(Fetched::Blob { size, sha256 })
    }

    /// Removes the folders a deleted blob leaves empty, up to the root, as S3 has no folders.
    fn prune_empty_parents(&self, path: &Path) {
        let mut current = path.parent();
        while let Some(folder) = current {
            if folder == self.root || !folder.starts_with(&self.root) {
                break;
            }
            if std::fs::remove_dir(folder).is_err() {
                break;
            }
            current = folder.parent();
        }
    }
}

pub(super) fn io_error(path: &Path, source: std::io::Error) -> BlobError {
    BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Not found, or a file where a folder was expected: either way, no such blob.
fn is_missing(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Opens a blob's file; `None` when there is no blob (no file, or a folder).
fn open_blob(path: &Path) -> Result<Option<File>, BlobError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    }
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Whether two paths name the same existing file or folder (after symlinks and `..`).
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

pub(super) fn non_empty_parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// A fresh name beside `target` (`NAME.tmp-PID-N`), unique within and across processes.
pub(super) fn temp_sibling(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{TEMP_MARKER}{}-{n}", std::process::id()));
    target.with_file_name(name)
}

pub(super) fn create_private_dir(dir: &Path) -> Result<(), BlobError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir).map_err(|e| io_error(dir, e))
}

/// Creates a new file only its owner can read (0600 from the first byte).
pub(super) fn create_private_file(path: &Path) -> Result<File, BlobError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(path).map_err(|e| io_error(path, e))
}

/// Writes `target` through a temporary sibling: fill, fsync, rename, fsync the folder.
fn write_private_atomic(
    target: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), BlobError>,
) -> Result<(), BlobError> {
    if let Some(parent) = non_empty_parent(target) {
        create_private_dir(parent)?;
    }
    let temp = temp_sibling(target);
    let written = (|| {
        let mut file = create_private_file(&temp)?;
        fill(&mut file)?;
        file.sync_all().map_err(|e| io_error(&temp, e))?;
        std::fs::rename(&temp, target).map_err(|e| io_error(target, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    sync_parent(target)
}

pub(super) fn sync_parent(path: &Path) -> Result<(), BlobError> {
    let parent = non_empty_parent(path).unwrap_or(Path::new("."));
    rft_types::paths::sync_dir(parent).map_err(|e| io_error(parent, e))
}

/// Puts the verified folder `fresh` where `dir` is: the old one is moved aside first and
/// removed after, and put back if the rename fails, so `dir` is never lost half-way.
pub(super) fn replace_dir(fresh: &Path, dir: &Path) -> Result<(), BlobError> {
    let old = temp_sibling(dir);
    let had_old = match std::fs::symlink_metadata(dir) {
        Ok(_) => {
            std::fs::rename(dir, &old).map_err(|e| io_error(dir, e))?;
            true
        }
        Err(e) if is_missing(&e) => false,
        Err(e) => return Err(io_error(dir, e)),
    };
    if let Err(e) = std::fs::rename(fresh, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(fresh);
        return Err(io_error(dir, e));
    }
    sync_parent(dir)?;
    if had_old {
        let removed = match std::fs::symlink_metadata(&old) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&old),
            Ok(_) => std::fs::remove_file(&old),
            Err(e) => Err(e),
        };
        if let Err(error) = removed {
            tracing::warn!(%error, path = %old.display(), "could not remove a replaced folder");
        }
    }
    Ok(())
}

/// Copies `source` into `out` while hashing, reading at most `limit + 1` bytes.
fn copy_hashed(
    source: &mut impl Read,
    source_path: &Path,
    out: &mut File,
    out_path: &Path,
    limit: u64,
) -> Result<(u64, String), BlobError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut size = 0u64;
    let mut source = source.take(limit.saturating_add(1));
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(source_path, e)),
        };
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .map_err(|e| io_error(out_path, e))?;
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

pub(super) fn hash_file(path: &Path) -> Result<(u64, String), BlobError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(path, e)),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn is_temp_name(name: &str) -> bool {
    name.contains(TEMP_MARKER)
}

/// Every blob file under `folder` as (key, path), `prefix` being the folder's key ("" for the
/// root). Temporary files of writers in flight are not blobs; links are not followed.
fn walk_files(
    folder: &Path,
    prefix: &str,
    found: &mut Vec<(String, PathBuf)>,
) -> Result<(), BlobError> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(io_error(folder, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(folder, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if is_temp_name(&name) {
            continue;
        }
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
        if kind.is_dir() {
            walk_files(&path, &key, found)?;
        } else if kind.is_file() {
            found.push((key, path));
        }
    }
    Ok(())
}

/// Every regular file under `dir` to publish, as (relative path, path). Symbolic links are
/// skipped (a link could publish a file from outside the folder); a name that cannot be a key
/// is refused rather than silently left out of a checkpoint.
pub(super) fn walk_publishable(
    dir: &Path,
    relative: &str,
    found: &mut Vec<(String, PathBuf)>,
) -> Result<(), BlobError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(invalid_key(
                &name.to_string_lossy(),
                "a file name in the folder is not UTF-8",
            ));
        };
        if is_temp_name(name) {
            continue;
        }
        let key = if relative.is_empty() {
            name.to_owned()
        } else {
            format!("{relative}/{name}")
        };
        check_key(&key)?;
        let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
        if kind.is_symlink() {
            tracing::warn!(path = %path.display(), "not publishing a symbolic link");
        } else if kind.is_dir() {
            walk_publishable(&path, &key, found)?;
        } else if kind.is_file() {
            found.push((key, path));
        }
    }
    Ok(())
}
