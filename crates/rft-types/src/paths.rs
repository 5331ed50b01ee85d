//! Where OpenRFT keeps its data on disk, and how it writes files that must never be seen half
//! written: one definition for every crate.

use std::path::{Path, PathBuf};

/// OpenRFT's data folder: `$RFT_HOME`, else `$XDG_CACHE_HOME/openrft`, else `~/.cache/openrft`.
/// Models live in `models/`, Python grader environments in `python/`.
pub fn rft_home() -> PathBuf {
    if let Some(home) = std::env::var_os("RFT_HOME") {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("openrft")
}

/// The temporary name a file is written under before [`persist`] moves it into place:
/// `NAME.tmp-PID` beside it.
pub fn temp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    target.with_file_name(name)
}

/// Fsyncs `temp` and renames it to `target`: readers see the old file or the whole new one,
/// never a half-written one, even if the process is killed.
pub fn persist(temp: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::File::open(temp)?.sync_all()?;
    std::fs::rename(temp, target)
}

/// Writes `bytes` to `target` atomically ([`temp_path`], then [`persist`]).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(target);
    std::fs::write(&temp, bytes)?;
    persist(&temp, target)
}
