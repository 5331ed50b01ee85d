//! The `rft` binary as users run it: exit codes, stdout/stderr, per-line errors.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::rft;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const EXACT: &str = r#"{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                        "reference": "{{item.answer}}", "operation": "eq"}"#;

#[test]
fn grade_file_keeps_order_and_reports_bad_lines_without_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let grader = write(dir.path(), "grader.json", EXACT);
    let input = write(
        dir.path(),
        "requests.jsonl",
        concat!(
            r#"{"model_sample": "4", "item": {"answer": "4"}}"#,
            "\n",
            r#"{"model_sample": "5", "item": {"answer": "4"}}"#,
            "\n",
            "{not json\n",
            "\n",
            r#"{"model_sample": "4"}"#,
            "\n",
            r#"{"model_sample": "x", "item": {"answer": "x"}}"#,
            "\n",
        ),
    );
    let out = dir.path().join("out.jsonl");
    let output = rft(&[
        "grade",
        "--grader",
        grader.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("requests.jsonl:3:"), "{stderr}");
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["reward"], 1.0);
    assert_eq!(lines[1]["reward"], 0.0);
    assert_eq!(lines[2]["error"]["line"], 3);
    assert!(lines[3]["metadata"]["errors"]["invalid_variable_error"]
        .as_bool()
        .unwrap());
    assert_eq!(lines[4]["reward"], 1.0);
}

#[test]
fn grade_one_sample_pretty_prints_the_response() {
    let dir = tempfile::tempdir().unwrap();
    let grader = write(dir.path(), "grader.json", EXACT);
    let output = rft(&[
        "grade",
        "--grader",
        grader.to_str().unwrap(),
        "--sample",
        "Paris",
        "--item",
        r#"{"answer": "Paris"}"#,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["reward"], 1.0);
    assert_eq!(result["metadata"]["type"], "string_check");
    assert!(String::from_utf8_lossy(&output.stdout).contains("\n  \"metadata\""));
}

#[test]
fn validate_prints_normalised_grader_or_the_error_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &EXACT.replace("\"eq\"", "\"neq\""));
    let output = rft(&["grader", "validate", good.to_str().unwrap()]);
    assert!(output.status.success());
    let normalised: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(normalised["operation"], "ne");

    let bad = write(
        dir.path(),
        "bad.json",
        r#"{"type": "multi", "name": "m", "calculate_output": "name",
            "graders": {"name": {"type": "text_similarity", "name": "n", "input": "a",
                                 "reference": "b", "evaluation_metric": "blue"}}}"#,
    );
    let output = rft(&["grader", "validate", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("graders.name.evaluation_metric: unknown metric \"blue\"; expected one of"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.json"), "{stderr}");
}

#[test]
fn malformed_grader_json_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.json",
        "{\n  \"type\": \"string_check\",\n  oops\n}",
    );
    let output = rft(&["grade", "--grader", bad.to_str().unwrap(), "--sample", "x"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid JSON at line 3"), "{stderr}");
}

#[test]
fn check_device_on_the_cpu_holds_bf16_to_its_tolerance_and_bad_precisions_are_refused() {
    let out = rft(&["check-device", "--device", "cpu", "--skip-speed"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for arch in ["Llama", "Qwen2", "Qwen3"] {
        for precision in ["f32", "bf16"] {
            assert!(
                stdout.contains(&format!(
                    "{arch} (tiny random model), {precision} on the device"
                )),
                "{stdout}"
            );
        }
    }
    assert!(stdout.contains("all parity checks passed"), "{stdout}");

    let out = rft(&["--dtype", "f16", "check-device", "--device", "cpu"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--dtype") && stderr.contains("expected f32 or bf16"),
        "{stderr}"
    );
}

#[test]
fn bench_learn_replots_earlier_runs_and_refuses_a_file_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bench-learn.json",
        r#"{"task": "quick<start>", "steps": 8, "runs": [
            {"engine": "openrft", "seed": 7, "wall_seconds": 10.0, "validation": [
                {"step": 0, "mean": 0.1, "stderr": 0.02, "greedy": 0.2},
                {"step": 8, "mean": 0.9, "stderr": 0.03, "greedy": 1.0}]},
            {"engine": "trl", "seed": 7, "wall_seconds": 60.0, "validation": [
                {"step": 0, "mean": 0.15, "stderr": 0.02},
                {"step": 8, "mean": 0.8, "stderr": 0.04}]}]}"#,
    );
    let out = rft(&[
        "bench",
        "learn",
        "--replot",
        "--output",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("seed 7    0:0.10±0.02/g0.20 8:0.90±0.03/g1.00"),
        "{stdout}"
    );
    assert!(
        stdout.contains("seed 7    0:0.15±0.02 8:0.80±0.04"),
        "{stdout}"
    );
    let svg = std::fs::read_to_string(dir.path().join("bench-learn.svg")).unwrap();
    assert!(svg.contains("quick&lt;start&gt;: validation reward by step"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    // Something else under that name is refused, not drawn empty.
    write(dir.path(), "bench-learn.json", r#"{"runs": "no"}"#);
    let out = rft(&[
        "bench",
        "learn",
        "--replot",
        "--output",
        dir.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a bench-learn.json"), "{stderr}");
}

#[test]
fn a_reader_that_has_gone_ends_the_command_quietly() {
    // `rft example list | head -0`: the pipe's reader is closed before rft writes a byte.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(["example", "list"])
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_full_disk_under_stdout_is_an_error_that_says_so() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(["example", "list"])
        .env("RUST_BACKTRACE", "1")
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to standard output: No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
