//! Workspace conventions checked as ordinary tests (rust-analyzer's tidy): the dependency table,
//! error types and `unsafe` policy of docs/architecture.md, module docs, docs that stay inside
//! the repository and describe the code as it is, and no `#[ignore]`/`#[should_panic]`; in
//! `tidy/`, budgets that only shrink (untyped JSON, file length) and the architecture doc's
//! dependency table and command list checked against `ALLOWED` and the CLI.

use std::path::{Path, PathBuf};

// The budgets and the doc checks live in `tidy/`, so that this file stays under the line limit
// it sets.
#[path = "tidy/budgets.rs"]
mod budgets;
#[path = "tidy/doc_tables.rs"]
mod doc_tables;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The folders of `crates/` that hold a crate, sorted.
fn workspace_crates() -> Vec<String> {
    let mut crates: Vec<String> = std::fs::read_dir(workspace_root().join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Cargo.toml").exists())
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    crates.sort();
    crates
}

fn crate_dir(krate: &str) -> PathBuf {
    workspace_root().join("crates").join(krate)
}

/// The crate root: `src/lib.rs`, or `src/main.rs` for the binary.
fn crate_root(krate: &str) -> PathBuf {
    let lib = crate_dir(krate).join("src/lib.rs");
    if lib.exists() {
        lib
    } else {
        crate_dir(krate).join("src/main.rs")
    }
}

/// `package = "x"` in a dependency's inline table or table: the package it renames.
fn renamed_package(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("package")?;
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest.split('"').next()?.to_owned())
}

/// The packages a crate's builds use: `[dependencies]`, `[build-dependencies]`, their
/// `[target.'cfg(…)'.…]` forms and one-dependency tables (`[dependencies.name]`), by package
/// name, so a renamed dependency counts as what it renames. Dev-dependencies are free: tests
/// may use anything.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = read(&crate_dir(krate).join("Cargo.toml"));
    enum Section {
        Other,
        Table,
        One(String),
    }
    let mut section = Section::Other;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']');
            // `target.<triple or quoted cfg>.…`: what follows the target is what counts. The
            // quoted cfg may hold dots of its own.
            let header = match header.strip_prefix("target.") {
                Some(rest) if rest.starts_with(['\'', '"']) => {
                    let quote = &rest[..1];
                    rest[1..]
                        .split_once(quote)
                        .map_or("", |(_, after)| after.trim_start_matches('.'))
                }
                Some(rest) => rest.split_once('.').map_or("", |(_, after)| after),
                None => header,
            };
            section = match header.split_once('.') {
                None if header == "dependencies" || header == "build-dependencies" => {
                    Section::Table
                }
                Some(("dependencies" | "build-dependencies", name)) => {
                    deps.push(name.to_owned());
                    Section::One(name.to_owned())
                }
                _ => Section::Other,
            };
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match &section {
            Section::Other => {}
            Section::Table => {
                if let Some((key, value)) = line.split_once('=') {
                    let name = key.trim().split('.').next().unwrap().to_owned();
                    deps.push(renamed_package(value).unwrap_or(name));
                }
            }
            Section::One(name) => {
                if let Some(package) = renamed_package(line).filter(|_| line.starts_with("package"))
                {
                    let at = deps.iter().rposition(|d| d == name).unwrap();
                    deps[at] = package;
                }
            }
        }
    }
    deps.sort();
    deps.dedup();
    deps
}

/// What each crate may depend on: the workspace crates below it, then every outside crate.
/// A new dependency is added here in the change that adds it, so the arrow is reviewed; the
/// invariants behind the table are spelled out in `OWNERS`.
const ALLOWED: &[(&str, &[&str], &[&str])] = &[
    (
        "rft-types",
        &[],
        &[
            "indexmap",
            "serde",
            "serde_json",
            "serde_path_to_error",
            "thiserror",
        ],
    ),
    (
        "rft-grade",
        &["rft-types"],
        &[
            "indexmap",
            "libc",
            "rayon",
            "serde",
            "serde_json",
            "thiserror",
            "tracing",
            "ureq",
        ],
    ),
    (
        "rft-model",
        &["rft-types"],
        &[
            "candle-core",
            "candle-nn",
            "llguidance",
            "minijinja",
            "minijinja-contrib",
            "rand",
            "rayon",
            "serde",
            "serde_json",
            "thiserror",
            "tokenizers",
            "toktrie",
            "tracing",
            "zip",
        ],
    ),
    (
        "rft-train",
        &["rft-grade", "rft-model", "rft-types"],
        &[
            "candle-core",
            "serde",
            "serde_json",
            "serde_path_to_error",
            "thiserror",
            "tracing",
            "ureq",
        ],
    ),
    (
        "rft-eval",
        // Not rft-train: evals read datasets through rft-types and sample through the engine.
        &["rft-grade", "rft-model", "rft-types"],
        &[
            "candle-core",
            "plotters",
            "serde",
            "serde_json",
            "thiserror",
            "tracing",
        ],
    ),
    (
        "rft-store",
        &["rft-types"],
        &[
            "futures-util",
            "object_store",
            "postgres",
            "reqwest",
            "rusqlite",
            "rustls",
            "serde",
            "serde_json",
            "sha2",
            "thiserror",
            "tokio",
            "tracing",
        ],
    ),
    (
        "rft-tinker",
        &["rft-model", "rft-train", "rft-types"],
        &[
            "axum",
            "prost",
            "ruzstd",
            "serde",
            "serde_json",
            "serde_path_to_error",
            "sha2",
            "thiserror",
            "tokio",
            "tracing",
        ],
    ),
    (
        "rft-server",
        &[
            "rft-eval",
            "rft-grade",
            "rft-model",
            "rft-store",
            "rft-tinker",
            "rft-train",
            "rft-types",
        ],
        &[
            "axum",
            "candle-core",
            "futures-util",
            "http-body",
            "indexmap",
            "serde",
            "serde_json",
            "serde_path_to_error",
            "thiserror",
            "tokio",
            "tracing",
            "ureq",
        ],
    ),
    (
        "rft-cli",
        &[
            "rft-eval",
            "rft-grade",
            "rft-model",
            "rft-server",
            "rft-store",
            "rft-train",
            "rft-types",
        ],
        &[
            "anyhow",
            "candle-core",
            "clap",
            "ctrlc",
            "indicatif",
            "rayon",
            "serde",
            "serde_json",
            "tracing",
            "tracing-subscriber",
            "ureq",
        ],
    ),
];

/// Outside crates that only some crates may use (a dependency matches the first prefix it
/// starts with), and why: the boundaries of docs/architecture.md.
const OWNERS: &[(&str, &[&str], &str)] = &[
    (
        "anyhow",
        &["rft-cli"],
        "libraries return their own error types; only the binary erases them",
    ),
    (
        "clap",
        &["rft-cli"],
        "the command line is the binary's concern",
    ),
    (
        "tracing-subscriber",
        &["rft-cli"],
        "libraries log; the binary decides where logs go",
    ),
    (
        "candle-core",
        &[
            "rft-model",
            "rft-train",
            "rft-eval",
            "rft-server",
            "rft-cli",
        ],
        "no tensors below the model engine: types, grading and storage never need them",
    ),
    (
        "candle-",
        &["rft-model"],
        "layers and models are the model engine's",
    ),
    (
        "tokenizers",
        &["rft-model"],
        "tokenization is the model engine's",
    ),
    (
        "minijinja",
        &["rft-model"],
        "chat templates are the model engine's",
    ),
    (
        "llguidance",
        &["rft-model"],
        "structured outputs are the model engine's",
    ),
    (
        "toktrie",
        &["rft-model"],
        "structured outputs are the model engine's",
    ),
    (
        "axum",
        &["rft-server", "rft-tinker"],
        "HTTP serving is the server's alone (and the Tinker API's, which it mounts)",
    ),
    (
        "tokio",
        &["rft-server", "rft-tinker", "rft-store"],
        "only the HTTP APIs are async, and the store's clients of PostgreSQL and S3 (behind a synchronous facade); grading and training use threads",
    ),
    (
        "futures",
        &["rft-server", "rft-store"],
        "only the server is async (and the S3 client's streams, inside the store)",
    ),
    (
        "http",
        &["rft-server"],
        "HTTP serving is the server's alone",
    ),
    (
        "hyper",
        &["rft-server"],
        "HTTP serving is the server's alone",
    ),
    (
        "tower",
        &["rft-server"],
        "HTTP serving is the server's alone",
    ),
    ("rusqlite", &["rft-store"], "storage is the store's alone"),
    ("postgres", &["rft-store"], "storage is the store's alone"),
    ("object_store", &["rft-store"], "storage is the store's alone"),
    ("sqlx", &[], "the store uses rusqlite and postgres"),
    (
        "ureq",
        &["rft-grade", "rft-train", "rft-server", "rft-cli"],
        "HTTP clients: the judge and embeddings clients, the remote rollout engine, and the load generators",
    ),
];

#[test]
fn every_crate_depends_only_on_what_its_row_of_the_table_allows() {
    let listed: Vec<&str> = ALLOWED.iter().map(|(krate, _, _)| *krate).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        workspace_crates(),
        "every crate has exactly one row in ALLOWED"
    );
    for (krate, workspace, outside) in ALLOWED {
        for dep in *workspace {
            assert!(
                dep.starts_with("rft-") && listed.contains(dep),
                "{krate}: {dep} is not a workspace crate"
            );
        }
        for dep in *outside {
            assert!(
                !dep.starts_with("rft-"),
                "{krate}: list {dep} with the workspace crates"
            );
        }
        for dep in dependencies(krate) {
            assert!(
                workspace.contains(&dep.as_str()) || outside.contains(&dep.as_str()),
                "{krate} depends on {dep}, which its row of ALLOWED in {} does not list",
                file!()
            );
        }
    }
}

#[test]
fn workspace_crates_depend_only_on_crates_listed_before_them() {
    // The table is in dependency order, so an arrow pointing down the table is a cycle in the
    // making (the model engine must not learn about grading, the store about the server).
    for (at, (krate, workspace, _)) in ALLOWED.iter().enumerate() {
        let before: Vec<&str> = ALLOWED[..at].iter().map(|(k, _, _)| *k).collect();
        for dep in *workspace {
            assert!(
                before.contains(dep),
                "{krate} depends on {dep}, which comes after it"
            );
        }
    }
}

#[test]
fn notable_outside_crates_stay_with_their_owners() {
    for krate in workspace_crates() {
        for dep in dependencies(&krate) {
            let Some((prefix, owners, why)) =
                OWNERS.iter().find(|(prefix, _, _)| dep.starts_with(prefix))
            else {
                continue;
            };
            assert!(
                owners.contains(&krate.as_str()),
                "{krate} must not depend on {dep} ({prefix}*: {why})"
            );
        }
    }
}

/// The lines of a Rust file with `//` comments (and doc comments) cut off, numbered from 1.
/// Good enough for the token checks below: a `//` inside a string cuts the line short, which
/// can hide a token but never invent one.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(at, line)| (at + 1, line.split("//").next().unwrap_or("")))
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

fn crate_rust_files(krate: &str, folder: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let dir = crate_dir(krate).join(folder);
    if dir.exists() {
        rust_files(&dir, &mut files);
    }
    files
}

/// Where `unsafe` may appear: crate, and paths relative to the crate folder.
const UNSAFE_ALLOWED: &[(&str, &[&str])] = &[
    // The kernel sandbox of Python graders (fork/exec hooks and raw syscalls), and its tests,
    // which read back the limits it sets.
    ("rft-grade", &["src/python/", "tests/python_sandbox.rs"]),
    // The packed matmul kernels (AVX-512, AVX2/FMA).
    ("rft-model", &["src/packed.rs", "src/packed/"]),
];

/// This file and its modules name the tokens they look for; they are left out of the scans.
fn is_this_file(path: &Path) -> bool {
    path.ends_with("rft-cli/tests/tidy.rs")
        || path.to_string_lossy().contains("rft-cli/tests/tidy/")
}

fn uses_unsafe(line: &str) -> bool {
    let word = "unsafe";
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].trim_start();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"')
            && ["{", "fn ", "impl", "extern", "trait", "("]
                .iter()
                .any(|next| after.starts_with(next))
    })
}

#[test]
fn unsafe_code_appears_only_where_the_table_allows_it() {
    for krate in workspace_crates() {
        let allowed: &[&str] = UNSAFE_ALLOWED
            .iter()
            .find(|(k, _)| *k == krate)
            .map_or(&[], |(_, paths)| paths);
        let dir = crate_dir(&krate);
        let mut files = crate_rust_files(&krate, "src");
        files.extend(crate_rust_files(&krate, "tests"));
        for file in files.into_iter().filter(|f| !is_this_file(f)) {
            let relative = file
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if allowed.iter().any(|prefix| relative.starts_with(prefix)) {
                continue;
            }
            for (line_no, line) in code_lines(&read(&file)) {
                assert!(
                    !uses_unsafe(line),
                    "{}:{line_no}: unsafe code outside UNSAFE_ALLOWED: {line}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn crate_roots_forbid_unsafe_code_or_allow_it_module_by_module() {
    for krate in workspace_crates() {
        let root = crate_root(&krate);
        let text = read(&root);
        let Some((_, allowed)) = UNSAFE_ALLOWED.iter().find(|(k, _)| *k == krate) else {
            assert!(
                text.contains("#![forbid(unsafe_code)]"),
                "{}: a crate without unsafe code says `#![forbid(unsafe_code)]`",
                root.display()
            );
            continue;
        };
        assert!(
            text.contains("#![deny(unsafe_code)]"),
            "{}: a crate with unsafe modules says `#![deny(unsafe_code)]` and allows it per module",
            root.display()
        );
        // Every `#[allow(unsafe_code)]` sits on a `mod` declaration of an allowed module.
        for file in crate_rust_files(&krate, "src") {
            let text = read(&file);
            let lines: Vec<&str> = text.lines().map(str::trim).collect();
            for (at, line) in lines.iter().enumerate() {
                if !line.contains("allow(unsafe_code)") {
                    continue;
                }
                let declaration = lines[at + 1..]
                    .iter()
                    .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("#["))
                    .copied()
                    .unwrap_or("");
                let module = declaration
                    .split("mod ")
                    .nth(1)
                    .and_then(|rest| rest.strip_suffix(';'))
                    .unwrap_or_else(|| {
                        panic!(
                            "{}:{}: allow(unsafe_code) only on a `mod name;` line",
                            file.display(),
                            at + 1
                        )
                    });
                let parent = file
                    .parent()
                    .unwrap()
                    .strip_prefix(crate_dir(&krate))
                    .unwrap();
                let as_file = format!("{}/{module}.rs", parent.display());
                let as_dir = format!("{}/{module}/", parent.display());
                assert!(
                    allowed.contains(&as_file.as_str()) || allowed.contains(&as_dir.as_str()),
                    "{}:{}: module {module} is not in UNSAFE_ALLOWED",
                    file.display(),
                    at + 1
                );
            }
        }
    }
}

#[test]
fn unsafe_blocks_need_a_safety_comment() {
    // Clippy's undocumented_unsafe_blocks asks for a `// SAFETY:` comment on each unsafe block;
    // CI runs clippy with -D warnings, so the lint and the workspace lints must stay on.
    let manifest = read(&workspace_root().join("Cargo.toml"));
    let clippy = manifest
        .split("[workspace.lints.clippy]")
        .nth(1)
        .expect("[workspace.lints.clippy]");
    let clippy = clippy.split("\n[").next().unwrap();
    assert!(
        clippy.contains("undocumented_unsafe_blocks = \"deny\""),
        "[workspace.lints.clippy] sets undocumented_unsafe_blocks = \"deny\""
    );
    for krate in workspace_crates() {
        let manifest = read(&crate_dir(&krate).join("Cargo.toml"));
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{krate}/Cargo.toml inherits the workspace lints ([lints] workspace = true)"
        );
    }
}

/// The error types each library crate names at its root (docs/architecture.md, "Errors").
const ERROR_TYPES: &[(&str, &[&str])] = &[
    ("rft-types", &["SpecError", "RowError"]),
    ("rft-grade", &["GradeError"]),
    ("rft-model", &["ModelError"]),
    ("rft-train", &["TrainError"]),
    ("rft-eval", &["EvalError"]),
    ("rft-store", &["StoreError"]),
    ("rft-tinker", &["TinkerError"]),
    ("rft-server", &["ServeError"]),
];

#[test]
fn library_crates_name_their_error_types_at_the_root_and_derive_them() {
    let libraries: Vec<String> = workspace_crates()
        .into_iter()
        .filter(|k| crate_dir(k).join("src/lib.rs").exists())
        .collect();
    let mut listed: Vec<String> = ERROR_TYPES.iter().map(|(k, _)| k.to_string()).collect();
    listed.sort();
    assert_eq!(
        listed, libraries,
        "every library crate has a row in ERROR_TYPES"
    );
    for (krate, names) in ERROR_TYPES {
        let root = read(&crate_root(krate));
        let files = crate_rust_files(krate, "src");
        for name in *names {
            // A `pub use` may span lines: look at whole statements, without their comments.
            let public_at_root = root.split(';').any(|statement| {
                let code: Vec<&str> = statement
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with("#"))
                    .collect();
                let code = code.join(" ");
                let is_name =
                    |word: &str| word.trim_matches(|c: char| !c.is_alphanumeric()) == *name;
                code.starts_with("pub use") && code.split([',', ' ', '{', '}', ':']).any(is_name)
            }) || root.lines().any(|line| {
                let line = line.trim();
                line.starts_with(&format!("pub enum {name} "))
                    || line.starts_with(&format!("pub struct {name} "))
            });
            assert!(
                public_at_root,
                "{krate}: {name} is public at the crate root"
            );
            let derived = files.iter().any(|file| {
                let text = read(file);
                let lines: Vec<&str> = text.lines().map(str::trim).collect();
                lines.iter().enumerate().any(|(at, line)| {
                    (line.starts_with(&format!("pub enum {name} "))
                        || line.starts_with(&format!("pub struct {name} ")))
                        && lines[..at]
                            .iter()
                            .rev()
                            .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
                            .any(|l| l.starts_with("#[derive(") && l.contains("thiserror::Error"))
                })
            });
            assert!(derived, "{krate}: {name} derives thiserror::Error");
        }
        for file in &files {
            for (line_no, line) in code_lines(&read(file)) {
                assert!(
                    !line.contains("Box<dyn std::error::Error") && !line.contains("Box<dyn Error"),
                    "{}:{line_no}: library errors are typed, not boxed",
                    file.display()
                );
            }
        }
    }
}

/// The places a crate's source mentions `prefix`, with what follows it.
fn mentions(krate: &str, prefix: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for file in crate_rust_files(krate, "src") {
        for (line_no, line) in code_lines(&read(&file)) {
            for (at, _) in line.match_indices(prefix) {
                found.push((
                    format!("{}:{line_no}", file.display()),
                    line[at + prefix.len()..].to_owned(),
                ));
            }
        }
    }
    found
}

#[test]
fn evals_and_the_server_name_a_device_but_hold_no_tensors() {
    // They depend on candle-core for one type: the `Device` a model is loaded on.
    for krate in ["rft-eval", "rft-server"] {
        for (at, rest) in mentions(krate, "candle_core::") {
            assert!(
                rest.starts_with("Device"),
                "{at}: {krate} uses candle_core::{rest}; tensor code belongs in rft-model"
            );
        }
    }
}

#[test]
fn the_store_knows_nothing_of_what_the_objects_mean() {
    // rft-types gives the store its atomic-write helpers, nothing else.
    for (at, rest) in mentions("rft-store", "rft_types::") {
        assert!(
            rest.starts_with("paths"),
            "{at}: rft-store uses rft_types::{rest}; it stores JSON bodies it does not interpret"
        );
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates"), &mut files);
    assert!(files.len() > 10);
    for file in files {
        let text = read(&file);
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
    for file in files.into_iter().filter(|f| !is_this_file(f)) {
        let text = read(&file);
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

/// The repository's own text: docs, manifests, sources, scripts and CI, without test fixtures
/// (generated data) and anything git ignores.
fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            // `runs/`: where jobs and benches write by default (ignored; a model's output may
            // say anything).
            let skipped = name.starts_with('.') && name != ".ci"
                || ["target", "fixtures", "nltk_data", "__pycache__", "runs"]
                    .contains(&name.as_ref());
            if !skipped {
                text_files(&path, out);
            }
        } else if ["rs", "md", "toml", "py", "sh", "txt", "sql", "json"]
            .iter()
            .any(|ext| name.ends_with(&format!(".{ext}")))
            || name == "run"
        {
            out.push(path);
        }
    }
}

#[test]
fn docs_and_code_stay_inside_the_repository_and_describe_the_code_as_it_is() {
    let root = workspace_root();
    let mut files = Vec::new();
    text_files(&root, &mut files);
    assert!(files.iter().any(|f| f.ends_with("docs/architecture.md")));
    // Built from pieces so that this file does not match itself.
    let outside = ["shared", "/"].concat();
    let stale = [["not built", " yet"].concat(), ["empty", " shell"].concat()];
    for file in files.into_iter().filter(|f| !is_this_file(f)) {
        let text = read(&file);
        for (line_no, line) in text.lines().enumerate() {
            let at = format!("{}:{}", file.display(), line_no + 1);
            // A path into the folder beside the repository (`../shared/…`, `shared/spec/…`):
            // readers of the repository do not have it.
            let points_outside = line.match_indices(&outside).any(|(i, _)| {
                !line[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
            });
            assert!(
                !points_outside,
                "{at}: points outside the repository: {line}"
            );
            // "issue 4", "issue 4's remainder": planning words that age; say what the code does.
            let lower = line.to_lowercase();
            let names_an_issue = lower.match_indices("issue").any(|(i, _)| {
                let inside_a_word = lower[..i]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_alphabetic);
                let rest = lower[i + "issue".len()..].trim_start_matches('s');
                !inside_a_word
                    && rest.starts_with(' ')
                    && rest.trim_start().starts_with(|c: char| c.is_ascii_digit())
            });
            assert!(!names_an_issue, "{at}: names a planning issue: {line}");
            for words in &stale {
                assert!(!lower.contains(words.as_str()), "{at}: out of date: {line}");
            }
        }
    }
}

#[test]
fn the_binary_prints_through_its_error_returning_macros() {
    // `println!` panics when stdout has gone (`rft … | head`) or is full; the binary's
    // `outln!`/`out!` return the error to `main` instead.
    let mut files = Vec::new();
    rust_files(&workspace_root().join("crates/rft-cli/src"), &mut files);
    assert!(files.iter().any(|f| f.ends_with("commands/train.rs")));
    let printing = [["print", "ln!("].concat(), ["print", "!("].concat()];
    for file in files {
        for (line_no, line) in read(&file).lines().enumerate() {
            let panicking = printing.iter().any(|p| {
                line.match_indices(p.as_str()).any(|(i, _)| {
                    !line[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            });
            assert!(
                !panicking,
                "{}:{}: print with outln!/out!, not println!/print!: {line}",
                file.display(),
                line_no + 1
            );
        }
    }
}
