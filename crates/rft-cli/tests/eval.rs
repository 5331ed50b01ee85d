//! `rft eval` and `rft doctor` as commands, on eval-run rows that carry their samples (no model
//! needed): the eval objects on stdout, the report files, and doctor's exit status on a blocker.

use std::path::Path;
use std::process::Command;

use rft_types::api::eval::{Eval, EvalRun, ItemStatus, OutputItem};
use serde_json::{json, Value};

fn write_rows(path: &Path, samples: &[(&str, &str)]) {
    let text: String = samples
        .iter()
        .map(|(answer, output)| {
            json!({"item": {"answer": answer}, "sample": {"output_text": output}}).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn rft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rft"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn eval_grades_given_samples_and_writes_the_run_object() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows.jsonl");
    write_rows(&rows, &[("4", "4"), ("5", "6"), ("7", "7"), ("8", "eight")]);
    let grader = tmp.path().join("grader.json");
    std::fs::write(
        &grader,
        json!({"type": "string_check", "name": "exact", "operation": "eq",
               "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"})
        .to_string(),
    )
    .unwrap();
    let results = tmp.path().join("results.jsonl");
    let out = rft(&[
        "eval",
        "--dataset",
        rows.to_str().unwrap(),
        "--grader",
        grader.to_str().unwrap(),
        "--output",
        results.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["object"], "eval.run");
    assert_eq!(run["result_counts"]["passed"], 2, "{run}");
    assert_eq!(run["result_counts"]["failed"], 2, "{run}");
    assert_eq!(
        std::fs::read_to_string(&results).unwrap().lines().count(),
        4
    );
}

#[test]
fn doctor_fails_with_status_2_on_a_blocker_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = tmp.path().join("rows.jsonl");
    let samples: Vec<(&str, &str)> = (0..12).map(|_| ("a", "anything")).collect();
    write_rows(&rows, &samples);
    // Always 1: the model is at the grader's maximum already, RFT cannot help.
    let grader = tmp.path().join("grader.json");
    std::fs::write(
        &grader,
        json!({"type": "string_check", "name": "always", "operation": "eq",
               "input": "a", "reference": "{{ item.answer }}"})
        .to_string(),
    )
    .unwrap();
    let report = tmp.path().join("report");
    let out = rft(&[
        "doctor",
        "--dataset",
        rows.to_str().unwrap(),
        "--grader",
        grader.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("blocker"), "{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["verdict"], "blocker");
    assert!(report.join("report.html").is_file());
    // The objects beside the report are the server's types (one eval path), field for field.
    let read = |name: &str| std::fs::read_to_string(report.join(name)).unwrap();
    let eval: Eval = serde_json::from_str(&read("eval.json")).unwrap();
    let run: EvalRun = serde_json::from_str(&read("run.json")).unwrap();
    let items: Vec<OutputItem> = read("output_items.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(run.eval_id, eval.id);
    assert_eq!(run.result_counts.total, 12);
    assert_eq!(run.result_counts.passed, 12);
    assert_eq!(items.len(), 12);
    assert!(items.iter().all(|i| i.status == ItemStatus::Pass
        && i.results[0].testing_criteria == eval.testing_criteria[0].id));
    let per = run.per_testing_criteria_results.unwrap();
    assert_eq!((per[0].passed, per[0].failed), (12, 0));
}
