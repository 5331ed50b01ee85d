//! The worked examples in `examples/`: every one `rft example list` names has a dataset that
//! parses, a grader that validates and tells a right answer from wrong ones (and from a
//! constant guess), a job whose grader is the grader file; and `rft example run` runs one end
//! to end on a tiny model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const EXAMPLES: [&str; 8] = [
    "vip_wiring",
    "api_snippets",
    "schedule_conflicts",
    "medical_coding",
    "legal_excerpts",
    "tax_reasoning",
    "content_moderation",
    "legal_review",
];

fn rft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(args)
        .env_remove("RFT_LOG")
        // The examples' Python graders use the standard library only: any interpreter will do.
        .env(
            "RFT_PYTHON",
            std::env::var_os("RFT_PYTHON").unwrap_or_else(|| "python3".into()),
        )
        .output()
        .expect("the rft binary runs")
}

fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The reply a perfect model gives to a row of the example.
fn right_answer(name: &str, row: &Value) -> String {
    match name {
        "vip_wiring" => row["wiring"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(port, signal)| format!("connect({port:?}, {:?})", signal.as_str().unwrap()))
            .collect::<Vec<_>>()
            .join("\n"),
        "api_snippets" => {
            let args: Vec<String> = row["arguments"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::Bool(true) => "True".to_owned(),
                        Value::Bool(false) => "False".to_owned(),
                        other => other.to_string(),
                    };
                    format!("{k}={value}")
                })
                .collect();
            format!(
                "client.{}({})",
                row["method"].as_str().unwrap(),
                args.join(", ")
            )
        }
        "medical_coding" => row["code"].as_str().unwrap().to_owned(),
        "content_moderation" => row["label"].as_str().unwrap().to_owned(),
        "tax_reasoning" => row["answer"].to_string(),
        _ => row["answer"].as_str().unwrap().to_owned(),
    }
}

/// The example's grader, or for one that calls a judge, its deterministic part (a test has no
/// judge to call).
fn offline_grader(name: &str) -> Value {
    let grader = read_json(&example_dir(name).join("grader.json"));
    if name == "legal_review" {
        return grader["graders"]["overlap"].clone();
    }
    grader
}

/// Grades (sample, row) pairs with `rft grade --input`; the rewards, in order.
fn grade(name: &str, grader: &Value, pairs: &[(String, &Value)]) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let grader_path = dir.path().join("grader.json");
    std::fs::write(&grader_path, grader.to_string()).unwrap();
    let input: String = pairs
        .iter()
        .map(|(sample, row)| {
            let mut item = row.as_object().unwrap().clone();
            item.remove("messages");
            json!({"model_sample": sample, "item": item}).to_string() + "\n"
        })
        .collect();
    let input_path = dir.path().join("requests.jsonl");
    std::fs::write(&input_path, input).unwrap();
    let out = rft(&[
        "grade",
        "--grader",
        grader_path.to_str().unwrap(),
        "--input",
        input_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rewards: Vec<f64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["reward"]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: no reward in {l}"))
        })
        .collect();
    assert_eq!(rewards.len(), pairs.len(), "{name}");
    rewards
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn list_names_every_example_with_its_family_and_grader() {
    let out = rft(&["example", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in EXAMPLES {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        let grader = read_json(&example_dir(name).join("grader.json"));
        assert!(
            line.contains(grader["type"].as_str().unwrap()),
            "{name}: {line}"
        );
        assert!(
            [
                "instructions to code",
                "facts to clean format",
                "complex rules"
            ]
            .iter()
            .any(|f| line.contains(f)),
            "{name}: {line}"
        );
    }
    // Nothing listed that has no folder.
    let listed = text
        .lines()
        .skip(1)
        .filter(|l| {
            l.contains(" complex rules ")
                || l.contains(" facts to clean format ")
                || l.contains(" instructions to code ")
        })
        .count();
    assert_eq!(listed, EXAMPLES.len(), "{text}");
}

#[test]
fn every_example_has_its_files_a_valid_dataset_grader_and_job() {
    for name in EXAMPLES {
        let dir = example_dir(name);
        for file in ["README.md", "make_dataset.py", "doctor.txt"] {
            assert!(dir.join(file).is_file(), "{name}/{file} is missing");
        }
        let train = read_rows(&dir.join("train.jsonl"));
        let valid = read_rows(&dir.join("valid.jsonl"));
        assert!(train.len() >= 32, "{name}: {} training rows", train.len());
        assert!(valid.len() >= 16, "{name}: {} validation rows", valid.len());
        let prompt = |row: &Value| row["messages"].to_string();
        for row in train.iter().chain(&valid) {
            let messages = row["messages"].as_array().unwrap();
            assert_eq!(messages.last().unwrap()["role"], "user", "{name}");
        }
        // Validation prompts are not training prompts.
        let seen: std::collections::HashSet<String> = train.iter().map(prompt).collect();
        assert!(
            valid.iter().all(|r| !seen.contains(&prompt(r))),
            "{name}: a validation prompt is in train"
        );
        let out = rft(&[
            "grader",
            "validate",
            dir.join("grader.json").to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A Python grader's readable source is the one in grader.json.
        if let Ok(source) = std::fs::read_to_string(dir.join("grader.py")) {
            assert_eq!(
                read_json(&dir.join("grader.json"))["source"],
                source.as_str(),
                "{name}: grader.py differs from grader.json's source (run make_dataset.py)"
            );
        }
        let job = read_json(&dir.join("job.json"));
        assert_eq!(job["training_file"], "train.jsonl", "{name}");
        assert_eq!(job["validation_file"], "valid.jsonl", "{name}");
        assert_eq!(job["method"]["type"], "reinforcement", "{name}");
        assert_eq!(
            job["method"]["reinforcement"]["grader"],
            read_json(&dir.join("grader.json")),
            "{name}: job.json's grader is not grader.json"
        );
    }
}

#[test]
fn make_dataset_scripts_write_the_committed_files() {
    // Each `make_dataset.py` (they share `examples/_common.py`), run on a copy of its folder
    // without the two JSONL files, from another directory, writes the same bytes as committed.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let python = std::env::var_os("RFT_PYTHON").unwrap_or_else(|| "python3".into());
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(examples.join("_common.py"), copy.path().join("_common.py")).unwrap();
    let mut scripts = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("make_dataset.py").is_file() {
            continue;
        }
        scripts += 1;
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let target = copy.path().join(&name);
        std::fs::create_dir(&target).unwrap();
        let mut files = Vec::new();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            if !file.is_file() {
                continue;
            }
            let file_name = file.file_name().unwrap().to_owned();
            if !["train.jsonl", "valid.jsonl"].contains(&file_name.to_string_lossy().as_ref()) {
                std::fs::copy(&file, target.join(&file_name)).unwrap();
            }
            files.push(file_name);
        }
        let out = Command::new(&python)
            .arg(target.join("make_dataset.py"))
            .current_dir(std::env::temp_dir())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{name}/make_dataset.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for file_name in files {
            let written = std::fs::read(target.join(&file_name))
                .unwrap_or_else(|e| panic!("{name}/{}: {e}", file_name.to_string_lossy()));
            assert!(
                written == std::fs::read(dir.join(&file_name)).unwrap(),
                "{name}/{}: make_dataset.py writes other bytes than the committed file",
                file_name.to_string_lossy()
            );
        }
    }
    assert_eq!(
        scripts,
        EXAMPLES.len() + 1,
        "the examples and the quickstart"
    );
}

#[test]
fn graders_score_right_answers_high_and_wrong_ones_low() {
    for name in EXAMPLES {
        let valid = read_rows(&example_dir(name).join("valid.jsonl"));
        let grader = offline_grader(name);
        let right: Vec<(String, &Value)> =
            valid.iter().map(|r| (right_answer(name, r), r)).collect();
        let rewards = grade(name, &grader, &right);
        assert!(
            rewards.iter().all(|r| *r > 0.99),
            "{name}: a right answer scored {rewards:?}"
        );
        // Another row's right answer, prose, and nothing: all low.
        let mut wrong: Vec<(String, &Value)> = Vec::new();
        for (i, row) in valid.iter().enumerate() {
            let other = &valid[(i + 1) % valid.len()];
            let answer = right_answer(name, other);
            if answer != right_answer(name, row) {
                wrong.push((answer, row));
            }
            wrong.push(("I am not sure, please check the document.".into(), row));
            wrong.push((String::new(), row));
        }
        let rewards = grade(name, &grader, &wrong);
        assert!(
            mean(&rewards) < 0.35,
            "{name}: wrong answers averaged {}",
            mean(&rewards)
        );
        // The right answer buried in a sentence earns clearly less than the answer alone.
        let verbose: Vec<(String, &Value)> = valid
            .iter()
            .map(|r| {
                (
                    format!(
                        "Sure! Here it is: {}. Hope this helps.",
                        right_answer(name, r)
                    ),
                    r,
                )
            })
            .collect();
        let rewards = grade(name, &grader, &verbose);
        assert!(
            mean(&rewards) < 0.9,
            "{name}: verbose right answers averaged {}",
            mean(&rewards)
        );
    }
}

#[test]
fn no_constant_answer_scores_well() {
    // The seed's "limit lucky guesses": the most common right answer, given to every row.
    for name in EXAMPLES {
        let valid = read_rows(&example_dir(name).join("valid.jsonl"));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for row in &valid {
            *counts.entry(right_answer(name, row)).or_default() += 1;
        }
        let (common, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
        let pairs: Vec<(String, &Value)> = valid.iter().map(|r| (common.clone(), r)).collect();
        let rewards = grade(name, &offline_grader(name), &pairs);
        assert!(
            mean(&rewards) < 0.5,
            "{name}: the constant answer {common:?} averages {}",
            mean(&rewards)
        );
    }
}

#[test]
fn one_item_of_a_list_answer_does_not_pay() {
    // A one-id guess: the model that names the most common meeting id to every calendar
    // (what the 135M model settled on under an earlier schedule_conflicts grader).
    let name = "schedule_conflicts";
    let valid = read_rows(&example_dir(name).join("valid.jsonl"));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for row in &valid {
        for id in row["clash"].as_array().unwrap() {
            *counts.entry(id.as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    let (common, _) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let pairs: Vec<(String, &Value)> = valid.iter().map(|r| (common.clone(), r)).collect();
    let rewards = grade(name, &offline_grader(name), &pairs);
    assert!(
        mean(&rewards) < 0.15,
        "{name}: always {common:?} averages {}",
        mean(&rewards)
    );
    // Nor does a constant pair of ids: one right and one wrong id earn nothing.
    let pairs: Vec<(String, &Value)> = valid.iter().map(|r| ("M1, M2".to_owned(), r)).collect();
    let rewards = grade(name, &offline_grader(name), &pairs);
    assert!(
        mean(&rewards) < 0.2,
        "{name}: always \"M1, M2\" averages {}",
        mean(&rewards)
    );
}

#[test]
fn run_unknown_example_names_the_examples() {
    let out = rft(&["example", "run", "no_such_example"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("vip_wiring") && err.contains("legal_review"),
        "{err}"
    );
}

#[test]
fn run_one_example_end_to_end_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    rft_model::tiny::write_tiny_model(&model, rft_model::Architecture::Llama, 2).unwrap();
    let out_dir = dir.path().join("run");
    let out = rft(&[
        "example",
        "run",
        "medical_coding",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "1",
        "--seed",
        "3",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("| medical_coding | facts to clean format |"),
        "{stdout}"
    );
    assert!(stdout.contains("RFT readiness"), "{stdout}");
    let result = read_json(&out_dir.join("result.json"));
    assert_eq!(result["steps"], 1);
    assert_eq!(result["seed"], 3);
    for key in ["before", "after"] {
        let v = result[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    assert!(out_dir.join("doctor/report.json").is_file());
    // Only one step's worth of training rows was used.
    assert_eq!(read_rows(&out_dir.join("data/train.jsonl")).len(), 4);
}
