//! `rft setup python`: the grader environment of an image tag.

use std::path::Path;
use std::process::ExitCode;

use rft_grade::python::{setup, PythonConfig, SetupOutcome};

pub(crate) fn python(tag: &str, base_python: &Path) -> anyhow::Result<ExitCode> {
    let config = PythonConfig::from_env();
    eprintln!(
        "setting up the Python grader environment {tag:?} in {}",
        config.environment_dir(tag).display()
    );
    match setup(&config, tag, base_python)? {
        SetupOutcome::AlreadyBuilt(python) => {
            eprintln!("already set up: {}", python.display());
        }
        SetupOutcome::Built(python) => eprintln!("ready: {}", python.display()),
    }
    Ok(ExitCode::SUCCESS)
}
