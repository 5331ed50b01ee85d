//! Workspace conventions checked as ordinary tests (rust-analyzer's tidy): the dependency arrows
//! of docs/architecture.md, module docs, and no `#[ignore]`/`#[should_panic]`.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The names in a crate's `[dependencies]` table (dev-dependencies are free).
fn direct_dependencies(krate: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(
        workspace_root()
            .join("crates")
            .join(krate)
            .join("Cargo.toml"),
    )
    .unwrap();
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                deps.push(name.trim().split('.').next().unwrap().to_owned());
            }
        }
    }
    deps
}

#[test]
fn rft_types_depends_on_serde_only() {
    let allowed = [
        "indexmap",
        "serde",
        "serde_json",
        "serde_path_to_error",
        "thiserror",
    ];
    for dep in direct_dependencies("rft-types") {
        assert!(
            allowed.contains(&dep.as_str()),
            "rft-types must not depend on {dep}"
        );
    }
}

#[test]
fn grading_knows_no_tensors_or_http_server() {
    for krate in ["rft-grade", "rft-types"] {
        for dep in direct_dependencies(krate) {
            for banned in ["candle", "axum", "rusqlite", "sqlx", "tokenizers", "anyhow"] {
                assert!(!dep.starts_with(banned), "{krate} must not depend on {dep}");
            }
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates"), &mut files);
    assert!(files.len() > 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must open with a `//!` module doc",
            file.display()
        );
    }
}

#[test]
fn no_ignored_or_should_panic_tests() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates"), &mut files);
    let ignore = ["#[", "ignore]"].concat();
    let should_panic = ["#[", "should_panic"].concat();
    // This file names the attributes it bans.
    for file in files
        .into_iter()
        .filter(|f| !f.ends_with("rft-cli/tests/tidy.rs"))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(&ignore),
            "{}: tests may not be ignored",
            file.display()
        );
        assert!(
            !text.contains(&should_panic),
            "{}: use Result-returning checks, not should_panic",
            file.display()
        );
    }
}
