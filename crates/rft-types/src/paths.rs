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

/// Fsyncs `temp`, renames it to `target` and fsyncs the folder: readers see the old file or
/// the whole new one, never a half-written one, even if the process is killed; and once this
/// returns, the new name survives a power loss too (a rename lives in the folder, not the file).
pub fn persist(temp: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::File::open(temp)?.sync_all()?;
    std::fs::rename(temp, target)?;
    sync_parent(target)
}

/// Fsyncs the folder that holds `path`, so that a rename or a new name in it is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

/// Fsyncs a folder (its list of names). A no-op where folders cannot be opened as files.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `target` atomically ([`temp_path`], then [`persist`]).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(target);
    std::fs::write(&temp, bytes)?;
    persist(&temp, target)
}

/// [`write_atomic`] for a file only its owner may read or write (mode 0600 on Unix), from the
/// moment its temporary file is created: uploaded datasets are the users' data.
pub fn write_atomic_private(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = temp_path(target);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(&temp)?;
        // `mode` applies only to a file this call creates; a stale temporary file of an
        // earlier process with the same id keeps its mode unless it is set here.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
    }
    #[cfg(not(unix))]
    {
        options.open(&temp)?.write_all(bytes)?;
    }
    persist(&temp, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_private_files_are_owner_only() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("rft-paths-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let target = dir.join("a.txt");
        write_atomic(&target, b"one")?;
        write_atomic(&target, b"two")?;
        assert_eq!(std::fs::read(&target)?, b"two");
        let private = dir.join("b.txt");
        // A stale temporary file with a wide mode is narrowed, not reused as is.
        std::fs::write(temp_path(&private), b"stale")?;
        write_atomic_private(&private, b"secret")?;
        assert_eq!(std::fs::read(&private)?, b"secret");
        assert!(!temp_path(&private).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::remove_dir_all(&dir)
    }
}

/// Replaces every absolute file path in a client-facing message by its last component, so no
/// error tells a client where the server keeps its data, models or home folder. API routes
/// (`/v1/...`) are not paths and stay.
pub fn redact_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find('/') {
        let starts_token = at == 0
            || rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_whitespace() || "'\"`([{=:,".contains(c));
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || "'\"`)]},;".contains(c))
            .map_or(rest.len(), |e| at + e);
        let token = &rest[at..end];
        out.push_str(&rest[..at]);
        // `scheme://…` is an address the client gave or may know (`tinker://run/weights/x`,
        // `https://judge.example/v1`), not a path on this machine: kept whole.
        let scheme_len = rest[..at]
            .chars()
            .rev()
            .skip(1)
            .take_while(|c| c.is_ascii_alphanumeric() || "+-.".contains(*c))
            .count();
        let is_url = token.starts_with("//")
            && rest[..at].ends_with(':')
            && scheme_len > 0
            && !rest[at - 1 - scheme_len..at - 1].eq_ignore_ascii_case("file")
            && rest[..at - 1 - scheme_len]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_ascii_alphanumeric());
        if is_url {
            out.push_str(token);
            rest = &rest[end..];
            continue;
        }
        let is_route = token == "/v1" || token.starts_with("/v1/");
        if starts_token && !is_route && token.len() > 1 {
            let trimmed = token.trim_end_matches(['.', ':']);
            let last = trimmed.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
            out.push_str(if last.is_empty() { "…" } else { last });
            out.push_str(&token[trimmed.len()..]);
        } else {
            out.push_str(token);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn addresses_with_a_scheme_are_kept_whole() {
        assert_eq!(
            redact_paths("no checkpoint at tinker://sess_1:train:0/weights/x"),
            "no checkpoint at tinker://sess_1:train:0/weights/x"
        );
        assert_eq!(
            redact_paths("the judge at https://a.b/v1 answered 500"),
            "the judge at https://a.b/v1 answered 500"
        );
        assert_eq!(
            redact_paths("cannot open /srv/data/x.db and https://a.b"),
            "cannot open x.db and https://a.b"
        );
        assert_eq!(redact_paths("see file:///etc/passwd"), "see file:passwd");
    }

    #[test]
    fn client_messages_lose_their_paths_but_keep_routes() {
        assert_eq!(
            redact_paths("cannot open /etc/shadow: permission denied"),
            "cannot open shadow: permission denied"
        );
        assert_eq!(
            redact_paths("database /root/.openrft/serve/openrft.db: locked"),
            "database openrft.db: locked"
        );
        assert_eq!(
            redact_paths("The model '/root/models/x/' cannot be loaded"),
            "The model 'x' cannot be loaded"
        );
        assert_eq!(
            redact_paths("see GET /v1/fine_tuning/jobs/{id}/checkpoints and a/b"),
            "see GET /v1/fine_tuning/jobs/{id}/checkpoints and a/b"
        );
        assert_eq!(redact_paths("ratio 1/2 of /"), "ratio 1/2 of /");
    }
}
