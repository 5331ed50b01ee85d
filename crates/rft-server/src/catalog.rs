//! Which base models clients may name.
//!
//! A model name reaches the engine as a spec that `rft-model` resolves to a file, so a name
//! taken as it came would let any client open any path the server user can read (and learn
//! from the error whether it exists). The server serves base models from an allow list
//! instead: the default model, the models given at start (`--model`), and the models fetched
//! into the models folder (`$RFT_HOME/models`), each by its name. Fine-tuned and checkpoint
//! names (`ft:…`) are resolved from the store (`inference::resolve`). Anything else is
//! `model_not_found`, whether or not such a path exists.

use std::path::{Path, PathBuf};

use crate::ServerConfig;

/// The base models a server serves.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    /// `(name clients use, spec the engine loads)`, in the order they were given.
    entries: Vec<(String, String)>,
    models_dir: PathBuf,
}

impl Catalog {
    /// The default model, `config.models`, and the models folder.
    pub(crate) fn new(config: &ServerConfig) -> Catalog {
        Catalog::with_models_dir(config, rft_model::hub::models_dir())
    }

    /// [`Catalog::new`] over another models folder (tests).
    pub(crate) fn with_models_dir(config: &ServerConfig, models_dir: PathBuf) -> Catalog {
        let mut entries: Vec<(String, String)> = Vec::new();
        let given = std::iter::once(config.default_model.as_str())
            .chain(config.models.iter().map(String::as_str));
        for entry in given {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            // `NAME=PATH` serves a path under a short name; a bare path or hub name is its
            // own name.
            let (name, spec) = match entry.split_once('=') {
                Some((name, spec)) if !name.is_empty() && !name.contains('/') => {
                    (name.trim(), spec.trim())
                }
                _ => (entry, entry),
            };
            if !entries.iter().any(|(n, _)| n == name) {
                entries.push((name.to_owned(), spec.to_owned()));
            }
        }
        Catalog {
            entries,
            models_dir,
        }
    }

    /// The spec the engine loads for `name`, or `None` when clients may not name it.
    pub(crate) fn resolve(&self, name: &str) -> Option<String> {
        if let Some((_, spec)) = self.entries.iter().find(|(n, _)| n == name) {
            return Some(spec.clone());
        }
        if !is_plain_name(name) {
            return None;
        }
        let dir = self.models_dir.join(name);
        // A known hub model resolves by its name (rft-model finds it in the models folder);
        // anything else by its folder, so no name is ever looked up relative to the
        // server's working directory.
        if rft_model::hub::KNOWN_MODELS.iter().any(|m| m.name == name) {
            return dir.is_dir().then(|| name.to_owned());
        }
        is_model_dir(&dir).then(|| dir.display().to_string())
    }

    /// The names `/v1/models` lists: the allow list, then the models folder's models.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.iter().map(|(n, _)| n.clone()).collect();
        let mut found: Vec<String> = std::fs::read_dir(&self.models_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| is_plain_name(name) && self.resolve(name).is_some())
            .filter(|name| !names.contains(name))
            .collect();
        found.sort();
        names.extend(found);
        names
    }
}

/// A folder name and nothing more: no separators, no `.`/`..`, no hidden names, no NUL.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A folder holding a model: `config.json` or a `.gguf` file.
fn is_model_dir(dir: &Path) -> bool {
    if dir.join("config.json").is_file() {
        return true;
    }
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "gguf"))
}

/// Tinker's models are the same allow list.
impl rft_tinker::ModelNames for Catalog {
    fn resolve(&self, name: &str) -> Option<String> {
        Catalog::resolve(self, name)
    }

    fn names(&self) -> Vec<String> {
        Catalog::names(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_names_and_the_models_folder_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path().join("models");
        std::fs::create_dir_all(models.join("tiny")).unwrap();
        std::fs::write(models.join("tiny/config.json"), "{}").unwrap();
        std::fs::create_dir_all(models.join("empty")).unwrap();
        let mut config = ServerConfig::new(tmp.path().join("data"));
        config.models = vec!["/srv/m.gguf".into(), "short=/srv/other".into()];
        let catalog = Catalog::with_models_dir(&config, models.clone());
        assert_eq!(
            catalog.resolve("/srv/m.gguf").as_deref(),
            Some("/srv/m.gguf")
        );
        assert_eq!(catalog.resolve("short").as_deref(), Some("/srv/other"));
        assert_eq!(
            catalog.resolve("tiny"),
            Some(models.join("tiny").display().to_string())
        );
        for hostile in [
            "/etc/shadow",
            "/root",
            "../models/tiny",
            "tiny/../tiny",
            "empty",
            ".",
            "..",
            "/srv/other",
            "Cargo.toml",
        ] {
            assert_eq!(catalog.resolve(hostile), None, "{hostile}");
        }
        let names = catalog.names();
        assert!(names.contains(&"tiny".to_owned()) && names.contains(&"short".to_owned()));
        assert!(!names.contains(&"empty".to_owned()));
    }
}
