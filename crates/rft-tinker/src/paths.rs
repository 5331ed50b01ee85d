//! `tinker://` paths and where they live in the data folder.
//!
//! A checkpoint path is `tinker://<model id>/<kind>/<name>`: the model id is the training run
//! (`<session id>:train:<n>`), the kind `weights` (state to resume: adapter and optimizer) or
//! `sampler_weights` (an adapter to sample from), the name one the client chose. It maps to
//! `<data>/tinker/runs/<session id>-train-<n>/<kind>/<name>/`. Every part is checked against a
//! strict alphabet before it touches the file system (no `..`, no separators, no absolute
//! paths), and no component under the data folder may be a symbolic link: a path a client
//! sends can only ever name a folder the server made.

use std::path::{Path, PathBuf};

use crate::Owner;

/// Longest checkpoint name.
pub(crate) const MAX_NAME_CHARS: usize = 128;

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Adapter and optimizer state (`save_state`).
    Weights,
    /// Adapter only (`save_weights_for_sampler`).
    SamplerWeights,
}

impl Kind {
    /// The path segment.
    pub(crate) fn segment(self) -> &'static str {
        match self {
            Kind::Weights => "weights",
            Kind::SamplerWeights => "sampler_weights",
        }
    }

    /// Tinker's `checkpoint_type`.
    pub(crate) fn checkpoint_type(self) -> &'static str {
        match self {
            Kind::Weights => "training",
            Kind::SamplerWeights => "sampler",
        }
    }

    fn parse(segment: &str) -> Option<Kind> {
        match segment {
            "weights" => Some(Kind::Weights),
            "sampler_weights" => Some(Kind::SamplerWeights),
            _ => None,
        }
    }
}

/// A parsed `tinker://` checkpoint path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckpointPath {
    /// The training run (model id).
    pub(crate) run: String,
    /// What it holds.
    pub(crate) kind: Kind,
    /// The checkpoint's name.
    pub(crate) name: String,
}

impl CheckpointPath {
    /// Parses `tinker://<model id>/<kind>/<name>`; anything else is refused with a message
    /// that does not echo a path back at length.
    pub(crate) fn parse(uri: &str) -> Result<CheckpointPath, String> {
        let refuse = || {
            "a checkpoint path is tinker://<model id>/weights/<name> or tinker://<model id>/sampler_weights/<name>, with names of letters, digits, '.', '-' and '_'".to_owned()
        };
        let rest = uri.strip_prefix("tinker://").ok_or_else(refuse)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [run, kind, name] = parts.as_slice() else {
            return Err(refuse());
        };
        let kind = Kind::parse(kind).ok_or_else(refuse)?;
        if !valid_model_id(run) || !valid_name(name) {
            return Err(refuse());
        }
        Ok(CheckpointPath {
            run: (*run).to_owned(),
            kind,
            name: (*name).to_owned(),
        })
    }

    /// The `tinker://` form.
    pub(crate) fn uri(&self) -> String {
        format!(
            "tinker://{}/{}/{}",
            self.run,
            self.kind.segment(),
            self.name
        )
    }

    /// Tinker's `checkpoint_id` (`weights/<name>`).
    pub(crate) fn checkpoint_id(&self) -> String {
        format!("{}/{}", self.kind.segment(), self.name)
    }

    /// The folder under `root` (the server's `tinker` folder), refusing symbolic links on the
    /// way. The folder may not exist yet.
    pub(crate) fn dir(&self, root: &Path) -> Result<PathBuf, String> {
        let dir = run_dir(root, &self.run)?
            .join(self.kind.segment())
            .join(&self.name);
        check_no_links(root, &dir)?;
        Ok(dir)
    }
}

/// `<session id>:train:<n>` with a session id of letters, digits and `_` (what this server
/// hands out).
pub(crate) fn valid_model_id(id: &str) -> bool {
    let mut parts = id.split(':');
    let (Some(session), Some("train"), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    valid_session_id(session)
        && !n.is_empty()
        && n.len() <= 9
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// Letters, digits and `_`, at most 64.
pub(crate) fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A checkpoint name: letters, digits, `.`, `-`, `_`; not starting with `.`; at most
/// [`MAX_NAME_CHARS`].
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The folder of a training run.
pub(crate) fn run_dir(root: &Path, model_id: &str) -> Result<PathBuf, String> {
    if !valid_model_id(model_id) {
        return Err("not a model id of this server".into());
    }
    Ok(root.join("runs").join(model_id.replace(':', "-")))
}

/// The model id of a run folder's name (the inverse of [`run_dir`]).
pub(crate) fn model_id_of(folder: &str) -> Option<String> {
    let (session, n) = folder.rsplit_once("-train-")?;
    let id = format!("{session}:train:{n}");
    valid_model_id(&id).then_some(id)
}

/// The file in a run's folder that holds its owner's fingerprint.
const OWNER_FILE: &str = "owner";

/// Records `owner` as the owner of a new run (before anything is saved in it). A run folder
/// left from an earlier server life with another owner is not taken over: model ids are new
/// random session ids, so a clash means someone forged one.
pub(crate) fn claim_run(root: &Path, model_id: &str, owner: &Owner) -> Result<(), String> {
    let run = run_dir(root, model_id)?;
    check_no_links(root, &run)?;
    match run_owner(root, model_id) {
        Some(existing) if existing == *owner => return Ok(()),
        Some(_) => return Err("the run belongs to another key".into()),
        None => {}
    }
    std::fs::create_dir_all(&run).map_err(|e| e.to_string())?;
    rft_types::paths::write_atomic(&run.join(OWNER_FILE), owner.as_str().as_bytes())
        .map_err(|e| e.to_string())
}

/// Who owns a run: `None` for a run that does not exist. A run saved before owners were
/// recorded belongs to the machine's own users ([`Owner::local`]): a server without keys
/// keeps its old checkpoints, and no key reaches them.
pub(crate) fn run_owner(root: &Path, model_id: &str) -> Option<Owner> {
    let run = run_dir(root, model_id).ok()?;
    check_no_links(root, &run).ok()?;
    match std::fs::read_to_string(run.join(OWNER_FILE)) {
        Ok(text) => Some(Owner::from_stored(&text)),
        Err(_) if run.is_dir() => Some(Owner::local()),
        Err(_) => None,
    }
}

/// Refuses `path` when any existing component below `root` is a symbolic link (so a link
/// planted in the data folder cannot redirect a save or a load elsewhere).
pub(crate) fn check_no_links(root: &Path, path: &Path) -> Result<(), String> {
    let relative = path
        .strip_prefix(root)
        .map_err(|_| "the path is outside the data folder".to_owned())?;
    let mut at = root.to_path_buf();
    for component in relative.components() {
        match component {
            std::path::Component::Normal(part) => at.push(part),
            _ => return Err("the path is not a plain relative path".into()),
        }
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err("a checkpoint path may not go through a symbolic link".into());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "sess_0123456789abcdef01234567:train:0";

    #[test]
    fn paths_round_trip() {
        let uri = format!("tinker://{RUN}/weights/step-0001.a");
        let parsed = CheckpointPath::parse(&uri).unwrap();
        assert_eq!(parsed.kind, Kind::Weights);
        assert_eq!(parsed.uri(), uri);
        let root = Path::new("/data/tinker");
        let dir = parsed.dir(root).unwrap();
        assert_eq!(
            dir,
            root.join("runs/sess_0123456789abcdef01234567-train-0/weights/step-0001.a")
        );
        assert_eq!(
            model_id_of("sess_0123456789abcdef01234567-train-0").as_deref(),
            Some(RUN)
        );
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            format!("tinker://{RUN}/weights/.."),
            format!("tinker://{RUN}/weights/../../etc"),
            format!("tinker://{RUN}/weights/a/b"),
            format!("tinker://{RUN}/weights//etc/passwd"),
            format!("tinker://{RUN}/weights/"),
            format!("tinker://{RUN}/other/x"),
            format!("tinker://{RUN}/weights/.hidden"),
            format!("tinker://{RUN}/weights/a b"),
            format!("tinker://{RUN}/weights/{}", "x".repeat(MAX_NAME_CHARS + 1)),
            "tinker://../weights/x".to_owned(),
            "tinker:///etc/weights/x".to_owned(),
            "tinker://sess_a:train:0:x/weights/x".to_owned(),
            "tinker://sess-a:train:0/weights/x".to_owned(),
            "/etc/passwd".to_owned(),
            "file:///etc/passwd".to_owned(),
            format!("tinker://{RUN}/weights/x\0y"),
        ] {
            assert!(CheckpointPath::parse(&bad).is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let runs = root.path().join("runs");
        std::fs::create_dir_all(&runs).unwrap();
        std::os::unix::fs::symlink(
            outside.path(),
            runs.join("sess_0123456789abcdef01234567-train-0"),
        )
        .unwrap();
        let parsed = CheckpointPath::parse(&format!("tinker://{RUN}/weights/x")).unwrap();
        assert!(parsed.dir(root.path()).is_err());
        let other = CheckpointPath::parse("tinker://sess_1:train:0/sampler_weights/x").unwrap();
        assert!(other.dir(root.path()).is_ok());
    }

    #[test]
    fn a_run_records_its_owner_and_keeps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (alice, bob) = (Owner::of_key("alice"), Owner::of_key("bob"));
        assert_eq!(run_owner(tmp.path(), RUN), None);
        // A run from before owners were recorded is the local users'.
        let legacy = "sess_legacy:train:0";
        std::fs::create_dir_all(run_dir(tmp.path(), legacy).unwrap()).unwrap();
        assert_eq!(run_owner(tmp.path(), legacy), Some(Owner::local()));
        claim_run(tmp.path(), RUN, &alice).unwrap();
        assert_eq!(run_owner(tmp.path(), RUN), Some(alice.clone()));
        claim_run(tmp.path(), RUN, &alice).unwrap();
        assert!(claim_run(tmp.path(), RUN, &bob).is_err());
        // The key itself is never on disk.
        let stored = std::fs::read_to_string(run_dir(tmp.path(), RUN).unwrap().join(OWNER_FILE));
        assert!(!stored.unwrap().contains("alice"));
    }
}
