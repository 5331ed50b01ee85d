//! Where OpenRFT keeps its data on disk: one definition for every crate.

use std::path::PathBuf;

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
