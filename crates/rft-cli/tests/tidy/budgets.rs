//! Budgets that only shrink: untyped JSON (`json!`, `Json<Value>`, `value["key"]`) in each
//! crate's non-test code, and the length of every Rust file. Each table lists the files that
//! had some when it was written, with their figures then; a file not listed gets none. Both
//! tests print their figures past the harness's capture, so CI's log shows them.

use std::path::{Path, PathBuf};

use super::{
    code_lines, crate_dir, crate_rust_files, read, rust_files, workspace_crates, workspace_root,
};

/// Writes `text` to the process's stderr directly, past the test harness's capture of
/// `println!`/`eprintln!`, so CI's log shows it for a passing test too.
fn report(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `path` relative to the workspace root, with `/` separators: how the tables below name files.
fn workspace_relative(path: &Path) -> String {
    let root = workspace_root().canonicalize().unwrap();
    let path = path.canonicalize().unwrap();
    path.strip_prefix(&root)
        .unwrap()
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Files that may still build or read JSON untyped in non-test code, each with its budget:
/// (path from the workspace root, `json!(`, `Json<Value>`, `["key"]`). Non-test code is every
/// `.rs` file under a crate's `src/` (binaries included) without its comments and its
/// `#[cfg(test)]` items; tests build JSON as they like. Typed structs (`rft_types::api`, a
/// module's own `Serialize`/`Deserialize` types) say what a body holds and give errors a JSON
/// path; `json!` and string-key indexing do neither.
///
/// The list only shrinks: lower a budget when a file needs less, remove a row when a file needs
/// none, and never add a row or raise a budget (type the data instead).
const UNTYPED_JSON_BUDGETS: &[(&str, usize, usize, usize)] = &[
    ("crates/rft-cli/src/commands/bench.rs", 4, 0, 0),
    ("crates/rft-cli/src/commands/bench_decode.rs", 1, 0, 8),
    ("crates/rft-cli/src/commands/bench_grpo.rs", 2, 0, 10),
    ("crates/rft-cli/src/commands/bench_serve.rs", 4, 0, 8),
    ("crates/rft-cli/src/commands/example.rs", 1, 0, 34),
    ("crates/rft-cli/src/commands/generate.rs", 2, 0, 0),
    ("crates/rft-cli/src/commands/grade.rs", 3, 0, 0),
    ("crates/rft-cli/src/commands/train.rs", 0, 0, 18),
    ("crates/rft-eval/src/objects.rs", 10, 0, 0),
    ("crates/rft-eval/src/policy.rs", 2, 0, 2),
    ("crates/rft-eval/src/report/checks.rs", 16, 0, 0),
    ("crates/rft-eval/src/report/html.rs", 0, 0, 14),
    ("crates/rft-grade/src/embed.rs", 1, 0, 0),
    ("crates/rft-grade/src/judge/mod.rs", 0, 0, 5),
    ("crates/rft-grade/src/judge/model.rs", 10, 0, 0),
    ("crates/rft-grade/src/python/mod.rs", 2, 0, 2),
    ("crates/rft-model/src/config.rs", 1, 0, 0),
    ("crates/rft-model/src/constrain.rs", 1, 0, 0),
    ("crates/rft-model/src/export.rs", 4, 0, 2),
    ("crates/rft-model/src/tiny.rs", 6, 0, 0),
    ("crates/rft-model/src/tokenizer/template.rs", 7, 0, 1),
    ("crates/rft-model/src/tool_calls.rs", 1, 0, 0),
    ("crates/rft-model/src/weights.rs", 0, 0, 1),
    ("crates/rft-server/src/dashboard/mod.rs", 0, 1, 0),
    ("crates/rft-server/src/evals.rs", 0, 3, 0),
    ("crates/rft-server/src/graders.rs", 0, 2, 0),
    ("crates/rft-server/src/inference.rs", 2, 1, 0),
    ("crates/rft-server/src/jobs.rs", 0, 1, 0),
    ("crates/rft-server/src/loadtest.rs", 4, 0, 0),
    ("crates/rft-store/src/lib.rs", 0, 0, 2),
];

/// The three kinds of untyped JSON counted on a line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct UntypedJson {
    /// `json!(`, also as `serde_json::json!(`.
    json_macro: usize,
    /// `Json<Value>` or `Json<serde_json::Value>`, also inside `ApiJson<Value>`: a body no type
    /// describes.
    json_value: usize,
    /// Indexing by a string literal, `value["key"]`: a `[` right after an expression (a name,
    /// `)`, `]` or `?`), a string literal, `]`. Array literals (`&["a"]`, `vec!["a"]`) do not
    /// count.
    key_index: usize,
}

impl UntypedJson {
    fn add(&mut self, other: UntypedJson) {
        self.json_macro += other.json_macro;
        self.json_value += other.json_value;
        self.key_index += other.key_index;
    }

    fn any(self) -> bool {
        self != UntypedJson::default()
    }
}

fn string_key_indexes(line: &str) -> usize {
    line.match_indices("[\"")
        .filter(|(at, _)| {
            let indexes_a_value = line[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | ')' | ']' | '?'));
            if !indexes_a_value {
                return false;
            }
            // The literal runs to its first unescaped quote; an index closes right after it.
            let literal = &line[at + 2..];
            let mut escaped = false;
            let end = literal.char_indices().find_map(|(i, c)| {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => return Some(i),
                    _ => {}
                }
                None
            });
            end.is_some_and(|end| literal[end + 1..].starts_with(']'))
        })
        .count()
}

fn untyped_json(line: &str) -> UntypedJson {
    UntypedJson {
        json_macro: line.matches("json!(").count(),
        json_value: line.matches("Json<Value>").count()
            + line.matches("Json<serde_json::Value>").count(),
        key_index: string_key_indexes(line),
    }
}

fn is_cfg_test(line: &str) -> bool {
    let line = line.trim();
    line == "#[cfg(test)]" || line.starts_with("#[cfg(all(test,")
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A source file's code without comments and without what `#[cfg(test)]` compiles only for
/// tests: the items it marks (a `mod tests { … }`, a helper function, a `use`), and the files
/// of modules declared `#[cfg(test)] mod name;`, returned as the second value. A multi-line
/// item (one whose first line does not end with `;`, or with `}` closing all it opened) ends
/// where rustfmt closes it: a line at the item's own indentation that starts with `}`, `]` or
/// `)` and opens nothing.
fn non_test_code<'a>(path: &Path, text: &'a str) -> (Vec<&'a str>, Vec<PathBuf>) {
    let lines: Vec<(usize, &str)> = code_lines(text).collect();
    let mut code = Vec::new();
    let mut test_files = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at].1;
        at += 1;
        if !is_cfg_test(line) {
            code.push(line);
            continue;
        }
        let indent = indentation(line);
        while at < lines.len() && {
            let next = lines[at].1.trim();
            next.is_empty() || next.starts_with("#[")
        } {
            at += 1;
        }
        let Some((_, item)) = lines.get(at) else {
            break;
        };
        at += 1;
        let item = item.trim();
        if let Some(module) = item
            .strip_suffix(';')
            .and_then(|declaration| declaration.split("mod ").nth(1))
        {
            // `src/a.rs` declares its modules in `src/a/`; lib.rs, main.rs and mod.rs in their
            // own folder.
            let stem = path.file_stem().unwrap().to_string_lossy();
            let parent = path.parent().unwrap();
            let dir = if ["lib", "main", "mod"].contains(&stem.as_ref()) {
                parent.to_path_buf()
            } else {
                parent.join(stem.as_ref())
            };
            test_files.push(dir.join(format!("{}.rs", module.trim())));
            test_files.push(dir.join(module.trim()));
            continue;
        }
        let opened = item.matches(['{', '(', '[']).count();
        let closed = item.matches(['}', ')', ']']).count();
        if item.ends_with(';') || item.ends_with('}') && opened == closed {
            continue;
        }
        while at < lines.len() {
            let line = lines[at].1.trim_end();
            at += 1;
            if indentation(line) == indent
                && line.trim_start().starts_with(['}', ']', ')'])
                && !line.ends_with(['{', '(', '['])
            {
                break;
            }
        }
    }
    (code, test_files)
}

#[test]
fn cfg_test_items_are_left_out_of_the_untyped_json_scan() {
    let text = "fn a() {}\n#[cfg(test)]\nfn helper(\n    x: u8,\n) -> u8 {\n    x\n}\nfn b() {}\n\
                #[cfg(test)]\nuse x::y;\n#[cfg(test)]\nmod probe;\n#[cfg(test)]\n#[allow(x)]\n\
                mod tests {\n    fn c() {\n    }\n}\nfn d() {} // e\n#[cfg(test)]\nfn f<T>()\nwhere\n    T: X,\n{\n}\n";
    let (code, files) = non_test_code(Path::new("src/lib.rs"), text);
    let code: Vec<&str> = code.iter().map(|line| line.trim()).collect();
    assert_eq!(code, ["fn a() {}", "fn b() {}", "fn d() {}"]);
    assert_eq!(
        files,
        [PathBuf::from("src/probe.rs"), PathBuf::from("src/probe")]
    );
    let (_, files) = non_test_code(Path::new("src/judge.rs"), "#[cfg(test)]\nmod tests;\n");
    assert_eq!(files[0], PathBuf::from("src/judge/tests.rs"));
}

#[test]
fn untyped_json_is_counted_by_kind() {
    let line = r#"let v = json!({"a": 1}); f(v["a"]["b"], x.get()?["c"], &["d"], vec!["e"]);"#;
    let counted = untyped_json(line);
    assert_eq!(
        counted,
        UntypedJson {
            json_macro: 1,
            json_value: 0,
            key_index: 3
        }
    );
    assert_eq!(untyped_json(r#"row["say \"hi\"]"]"#).key_index, 1);
    assert_eq!(untyped_json(r#"row["a", "b"]"#).key_index, 0);
    assert_eq!(
        untyped_json("fn f(ApiJson(b): ApiJson<Value>, Json(c): Json<serde_json::Value>)")
            .json_value,
        2
    );
}

#[test]
fn untyped_json_stays_within_its_budgets() {
    let mut files_seen = Vec::new();
    let mut failures = Vec::new();
    let mut log =
        String::from("untyped JSON in non-test code (json!( / Json<Value> / [\"key\"]):\n");
    for krate in workspace_crates() {
        let mut files = crate_rust_files(&krate, "src");
        files.sort();
        // Counted first, kept once every file has named its `#[cfg(test)] mod name;` files.
        let mut counts = Vec::new();
        let mut test_files = Vec::new();
        for file in files {
            let text = read(&file);
            let (code, tests) = non_test_code(&file, &text);
            let mut counted = UntypedJson::default();
            for line in code {
                counted.add(untyped_json(line));
            }
            counts.push((file, counted));
            test_files.extend(tests);
        }
        let mut total = UntypedJson::default();
        let mut per_file = Vec::new();
        for (file, counted) in counts {
            if test_files.iter().any(|t| file.starts_with(t)) {
                continue;
            }
            total.add(counted);
            if counted.any() {
                per_file.push((workspace_relative(&file), counted));
            }
        }
        log.push_str(&format!(
            "  {krate}: {} / {} / {}\n",
            total.json_macro, total.json_value, total.key_index
        ));
        for (path, counted) in per_file {
            log.push_str(&format!(
                "    {path}: {} / {} / {}\n",
                counted.json_macro, counted.json_value, counted.key_index
            ));
            let budget = UNTYPED_JSON_BUDGETS
                .iter()
                .find(|(listed, ..)| *listed == path)
                .map(|&(_, json_macro, json_value, key_index)| UntypedJson {
                    json_macro,
                    json_value,
                    key_index,
                });
            files_seen.push(path.clone());
            let Some(budget) = budget else {
                failures.push(format!(
                    "{path}: {} × json!(, {} × Json<Value>, {} × [\"key\"] in non-test code, and \
                     it is not in UNTYPED_JSON_BUDGETS: use typed structs (rft_types::api, or the \
                     module's own serde types)",
                    counted.json_macro, counted.json_value, counted.key_index
                ));
                continue;
            };
            for (kind, count, allowed) in [
                ("json!(", counted.json_macro, budget.json_macro),
                ("Json<Value>", counted.json_value, budget.json_value),
                ("[\"key\"]", counted.key_index, budget.key_index),
            ] {
                if count > allowed {
                    failures.push(format!(
                        "{path}: {count} × {kind}, over its budget of {allowed}: type the data \
                         instead of raising the budget"
                    ));
                } else if count < allowed {
                    log.push_str(&format!(
                        "    (its {kind} budget can come down to {count})\n"
                    ));
                }
            }
        }
    }
    for (path, ..) in UNTYPED_JSON_BUDGETS {
        if !files_seen.iter().any(|seen| seen == path) {
            failures.push(format!(
                "{path} is in UNTYPED_JSON_BUDGETS but has no untyped JSON (or no longer \
                 exists): remove its row"
            ));
        }
    }
    report(&log);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The most lines a `.rs` file in a crate (sources, tests, anything) may have.
const MAX_LINES: usize = 1_200;

/// Files over `MAX_LINES`, each with its budget (today's size) and why. The list only shrinks:
/// a row goes when its file is split, and no row is added.
const LONG_FILES: &[(&str, usize, &str)] = &[(
    "crates/rft-grade/src/python/sandbox.rs",
    1_551,
    "the kernel sandbox (its code is under the limit, 1,176 lines) and its unit tests beside \
         it; moving the tests to `sandbox/tests.rs` removes it",
)];

#[test]
fn rust_files_stay_under_the_line_limit() {
    let mut failures = Vec::new();
    let mut long = Vec::new();
    for krate in workspace_crates() {
        let mut files = Vec::new();
        rust_files(&crate_dir(&krate), &mut files);
        for file in files {
            let lines = read(&file).lines().count();
            let path = workspace_relative(&file);
            let listed = LONG_FILES.iter().find(|(listed, ..)| *listed == path);
            match (lines > MAX_LINES, listed) {
                (false, None) => {}
                (false, Some(_)) => failures.push(format!(
                    "{path}: {lines} lines, within {MAX_LINES}: remove its row from LONG_FILES"
                )),
                (true, None) => failures.push(format!(
                    "{path}: {lines} lines, over {MAX_LINES}: split it by what its parts do"
                )),
                (true, Some((_, budget, _))) if lines > *budget => failures.push(format!(
                    "{path}: {lines} lines, over its LONG_FILES budget of {budget}: split it \
                     rather than raise the budget"
                )),
                (true, Some(_)) => long.push(format!("  {path}: {lines} lines\n")),
            }
        }
    }
    for (path, ..) in LONG_FILES {
        if !workspace_root().join(path).exists() {
            failures.push(format!(
                "{path} is in LONG_FILES but no longer exists: remove its row"
            ));
        }
    }
    report(&format!(
        "files over {MAX_LINES} lines (LONG_FILES):\n{}",
        long.concat()
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
