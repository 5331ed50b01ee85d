//! `rft models list` and `rft models pull`.

use std::process::ExitCode;

use rft_model::hub::{self, KNOWN_MODELS};

pub(crate) fn list() -> anyhow::Result<ExitCode> {
    outln!("{:<24} {:<8} {:<22} where", "name", "status", "package");
    for model in KNOWN_MODELS {
        let status = if model.is_present() {
            "present"
        } else {
            "missing"
        };
        outln!(
            "{:<24} {:<8} {:<22} {}",
            model.name,
            status,
            format!("{}=={}", model.package, model.version),
            model.dir().display()
        );
    }
    outln!("\nAlso accepted wherever a model is named: a GGUF file, a Hugging Face model folder, or a hub id in the local Hugging Face cache.");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn pull(name: &str) -> anyhow::Result<ExitCode> {
    let Some(model) = KNOWN_MODELS.iter().find(|m| m.name == name) else {
        anyhow::bail!(
            "unknown model {name:?}; `rft models pull` knows {}",
            KNOWN_MODELS.map(|m| m.name).join(", ")
        );
    };
    let present = model.is_present();
    let dir = model.ensure()?;
    if present {
        eprintln!("{} is already here: {}", model.name, dir.display());
    } else {
        eprintln!(
            "{} fetched into {}",
            model.name,
            hub::models_dir().join(model.name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
