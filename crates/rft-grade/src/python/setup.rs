//! `rft setup python`: builds the grader environment an `image_tag` names.
//!
//! OpenAI's image `2025-05-08` ships the packages below (spec §2.7); OpenRFT builds a virtual
//! environment with the same pinned versions under `$RFT_HOME/python/<tag>/venv`, plus an
//! `nltk_data` folder with WordNet 3.0 copied from Debian's `wordnet-base` when it is installed.
//! Building is idempotent: a finished environment records its requirements, and a second run
//! with the same requirements does nothing (and needs no network).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{PythonConfig, DEFAULT_IMAGE_TAG};

/// The image tags OpenRFT knows how to build, with their pinned requirements.
pub const IMAGES: [(&str, &str); 1] = [(
    DEFAULT_IMAGE_TAG,
    "numpy==2.2.4
scipy==1.15.2
sympy==1.13.3
pandas==2.2.3
rapidfuzz==3.10.1
scikit-learn==1.6.1
rouge-score==0.1.2
deepdiff==8.4.2
jsonschema==4.23.0
pydantic==2.10.6
pyyaml==6.0.2
nltk==3.9.1
sqlparse==0.5.3
",
)];

/// Why an environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The tag is not one OpenRFT knows.
    #[error("unknown image tag {tag:?}; known tags: {known}")]
    UnknownTag {
        /// The requested tag.
        tag: String,
        /// The tags that can be built.
        known: String,
    },
    /// A step failed.
    #[error("{step} failed: {message}")]
    Step {
        /// What was being done.
        step: String,
        /// What went wrong.
        message: String,
    },
}

/// What `setup` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupOutcome {
    /// The environment already existed with the same requirements.
    AlreadyBuilt(PathBuf),
    /// The environment was built now.
    Built(PathBuf),
}

/// Builds (or confirms) the environment for `tag` with `base_python` (e.g. `python3`).
/// pip's progress goes to this process's stderr.
pub fn setup(
    config: &PythonConfig,
    tag: &str,
    base_python: &Path,
) -> Result<SetupOutcome, SetupError> {
    let Some((_, requirements)) = IMAGES.iter().find(|(t, _)| *t == tag) else {
        return Err(SetupError::UnknownTag {
            tag: tag.to_owned(),
            known: IMAGES.map(|(t, _)| t).join(", "),
        });
    };
    let dir = config.environment_dir(tag);
    let venv = dir.join("venv");
    let marker = dir.join("requirements.done");
    let interpreter = venv.join("bin/python");
    let wordnet = venv.join("nltk_data/corpora/wordnet");
    let step = |step: &str| {
        let step = step.to_owned();
        move |e: io::Error| SetupError::Step {
            step: step.clone(),
            message: e.to_string(),
        }
    };
    if interpreter.exists()
        && std::fs::read_to_string(&marker).ok().as_deref() == Some(*requirements)
    {
        // An environment built before the host had WordNet gets it now: otherwise installing
        // wordnet-base afterwards would never reach the graders.
        if !wordnet.join("data.noun").exists() {
            install_wordnet(&wordnet).map_err(step("copying WordNet"))?;
        }
        return Ok(SetupOutcome::AlreadyBuilt(interpreter));
    }
    // A half-built environment from an interrupted run is rebuilt from scratch.
    if venv.exists() {
        std::fs::remove_dir_all(&venv).map_err(step("removing the unfinished environment"))?;
    }
    std::fs::create_dir_all(&dir).map_err(step("creating the environment folder"))?;
    run(
        Command::new(base_python).args(["-m", "venv"]).arg(&venv),
        &format!("`{} -m venv`", base_python.display()),
    )?;
    let requirements_path = dir.join("requirements.txt");
    std::fs::write(&requirements_path, requirements).map_err(step("writing requirements.txt"))?;
    run(
        Command::new(&interpreter)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements_path),
        "`pip install` of the grader packages",
    )?;
    install_wordnet(&wordnet).map_err(step("copying WordNet"))?;
    std::fs::write(&marker, requirements).map_err(step("recording the finished environment"))?;
    Ok(SetupOutcome::Built(interpreter))
}

fn run(command: &mut Command, what: &str) -> Result<(), SetupError> {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| SetupError::Step {
            step: what.to_owned(),
            message: e.to_string(),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(SetupError::Step {
            step: what.to_owned(),
            message: format!("exited with {status}"),
        })
    }
}

/// The 45 lexicographer files of WordNet 3.0, which nltk needs as `lexnames`.
const LEXNAMES: &str = "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl";

/// Copies Debian's WordNet where nltk looks for it; skipped (with a log line) when the host has
/// no WordNet, since only graders that use nltk's wordnet need it.
fn install_wordnet(target: &Path) -> io::Result<()> {
    let source = std::env::var_os("RFT_WORDNET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/wordnet"));
    install_wordnet_from(&source, target)
}

fn install_wordnet_from(source: &Path, target: &Path) -> io::Result<()> {
    if !source.join("data.noun").exists() {
        tracing::warn!(
            "WordNet not found in {}; nltk's wordnet corpus will be missing in Python graders (apt-get install wordnet-base)",
            source.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(target)?;
    for pos in ["noun", "verb", "adj", "adv"] {
        for name in [
            format!("data.{pos}"),
            format!("index.{pos}"),
            format!("{pos}.exc"),
        ] {
            std::fs::copy(source.join(&name), target.join(&name))?;
        }
    }
    if source.join("index.sense").exists() {
        std::fs::copy(source.join("index.sense"), target.join("index.sense"))?;
    }
    let lexnames: String = LEXNAMES
        .split(' ')
        .enumerate()
        .map(|(idx, name)| {
            let pos = match name.split('.').next() {
                Some("noun") => 1,
                Some("verb") => 2,
                Some("adj") => 3,
                _ => 4,
            };
            format!("{idx:02}\t{name}\t{pos}\n")
        })
        .collect();
    std::fs::write(target.join("lexnames"), lexnames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordnet_is_copied_with_its_lexnames_and_skipped_without_a_source() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("wordnet");
        std::fs::create_dir_all(&source).unwrap();
        for pos in ["noun", "verb", "adj", "adv"] {
            for name in [
                format!("data.{pos}"),
                format!("index.{pos}"),
                format!("{pos}.exc"),
            ] {
                std::fs::write(source.join(&name), name.as_bytes()).unwrap();
            }
        }
        let target = dir.path().join("venv/nltk_data/corpora/wordnet");
        install_wordnet_from(&source, &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("data.noun")).unwrap(),
            "data.noun"
        );
        let lexnames = std::fs::read_to_string(target.join("lexnames")).unwrap();
        assert_eq!(lexnames.lines().count(), 45);
        assert!(lexnames.starts_with("00\tadj.all\t3\n"), "{lexnames}");
        // No WordNet on the host: nothing is created, and that is not an error.
        let empty = dir.path().join("none");
        let target = dir.path().join("other/wordnet");
        install_wordnet_from(&empty, &target).unwrap();
        assert!(!target.exists());
    }
}
