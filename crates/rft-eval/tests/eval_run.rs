//! End-to-end evals: a tiny random local model (resumable results, spec §5 objects, the
//! report), an OpenAI-compatible endpoint served by a fixture, the HTML report in headless
//! Chromium, and (RFT_SLOW_TESTS=1) the default model on the quickstart example.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::*;
use rft_eval::data::read_data;
use rft_eval::objects::{build_objects, pass_threshold, RunInfo};
use rft_eval::policy::{Policy, RemoteModel, SamplingOptions};
use rft_eval::report::{
    build_report, summary, write_report, Report, ReportInput, ReportOptions, Verdict,
};
use rft_eval::run::{run_eval, EvalConfig, RowResult};
use rft_grade::compile;
use rft_model::config::Architecture;
use rft_types::Grader;
use serde_json::{json, Value};

fn dataset(dir: &Path, n: usize) -> std::path::PathBuf {
    let lines: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "messages": [{"role": "user", "content": format!("Say {}", i % 3)}],
                "answer": format!("{}", i % 3),
            })
        })
        .collect();
    write_lines(dir, "data.jsonl", &lines)
}

fn report_for(
    data: &rft_eval::data::EvalData,
    results: &[RowResult],
    spec: &Grader,
    model: &str,
) -> Report {
    let grader = compile(spec).unwrap();
    build_report(&ReportInput {
        data,
        results,
        grader_spec: spec,
        grader: &grader,
        model,
        response_format: None,
        options: &ReportOptions {
            reference_field: Some("answer".into()),
            ..ReportOptions::default()
        },
    })
}

#[test]
fn tiny_model_eval_is_resumable_and_yields_spec_objects() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    rft_model::tiny::write_tiny_model(&model_dir, Architecture::Llama, 3).unwrap();
    let path = dataset(dir.path(), 6);
    let data = read_data(&path).unwrap();
    let spec = Grader::from_value(&json!({
        "type": "text_similarity", "name": "sim", "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"
    }))
    .unwrap();
    let grader = compile(&spec).unwrap();
    let policy = Policy::load_local(model_dir.to_str().unwrap()).unwrap();
    let output = dir.path().join("results.jsonl");
    let config = EvalConfig {
        sampling: SamplingOptions {
            samples: 3,
            max_tokens: 8,
            seed: 5,
            ..SamplingOptions::default()
        },
        output: Some(output.clone()),
    };
    let results = run_eval(&data, Some(&policy), &grader, &config, &mut |_, _| {}).unwrap();
    assert_eq!(results.len(), 6);
    assert!(results
        .iter()
        .all(|r| r.samples.len() == 3 && r.samples.iter().all(|s| s.grade.is_some())));
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().count(), 6);

    // A crash after 4 rows, mid-write of the 5th: the rerun keeps 4 rows and samples 2 again,
    // identical to the uninterrupted run (seeds derive from the row index).
    let kept: Vec<&str> = text.lines().take(4).collect();
    std::fs::write(
        &output,
        format!("{}\n{{\"datasource_item_id\": 4, \"ite", kept.join("\n")),
    )
    .unwrap();
    let mut progress = Vec::new();
    let resumed = run_eval(&data, Some(&policy), &grader, &config, &mut |done, _| {
        progress.push(done)
    })
    .unwrap();
    assert_eq!(progress.first(), Some(&4));
    assert_eq!(std::fs::read_to_string(&output).unwrap().lines().count(), 6);
    let texts = |rows: &[RowResult]| -> Vec<String> {
        rows.iter()
            .flat_map(|r| r.samples.iter().map(|s| s.sample.output_text.clone()))
            .collect()
    };
    assert_eq!(texts(&resumed), texts(&results));

    // A results file of another dataset is refused, naming the fix.
    let other = write_lines(
        dir.path(),
        "other.jsonl",
        &[json!({"messages": [{"role": "user", "content": "x"}], "answer": "zzz"})],
    );
    let other = read_data(&other).unwrap();
    let err = run_eval(&other, Some(&policy), &grader, &config, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("results.jsonl:1") && err.contains("--output"),
        "{err}"
    );

    let sampling = config.sampling.clone();
    let objects = build_objects(
        &data,
        &spec,
        &resumed,
        &RunInfo {
            name: "tiny",
            model: Some("tiny"),
            sampling: &sampling,
            pass_threshold: pass_threshold(&spec),
            created_at: 1_700_000_000,
            report_url: None,
        },
    );
    let eval = serde_json::to_value(&objects.eval).unwrap();
    assert_eq!(eval["object"], "eval");
    assert_eq!(eval["data_source_config"]["type"], "custom");
    assert_eq!(
        eval["data_source_config"]["schema"]["properties"]["item"]["properties"]["answer"]["type"],
        "string"
    );
    assert_eq!(eval["testing_criteria"][0]["type"], "text_similarity");
    assert_eq!(eval["testing_criteria"][0]["pass_threshold"], 0.5);
    let run = serde_json::to_value(&objects.run).unwrap();
    assert_eq!(run["object"], "eval.run");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["result_counts"]["total"], 18);
    let counts = &run["result_counts"];
    assert_eq!(
        counts["passed"].as_u64().unwrap()
            + counts["failed"].as_u64().unwrap()
            + counts["errored"].as_u64().unwrap(),
        18
    );
    let per = &run["per_testing_criteria_results"][0];
    assert_eq!(per["passed"], counts["passed"]);
    assert_eq!(per["testing_criteria"], eval["testing_criteria"][0]["id"]);
    assert_eq!(run["per_model_usage"][0]["invocation_count"], 18);
    let item = serde_json::to_value(&objects.output_items[0]).unwrap();
    assert_eq!(item["object"], "eval.run.output_item");
    assert_eq!(item["datasource_item_id"], 0);
    assert_eq!(item["results"][0]["name"], "sim");
    assert_eq!(item["results"][0]["type"], "text-similarity-grader");
    let score = item["results"][0]["score"].as_f64().unwrap();
    assert_eq!(item["results"][0]["passed"], score >= 0.5);
    assert_eq!(item["status"], if score >= 0.5 { "pass" } else { "fail" });
    assert_eq!(item["sample"]["input"][0]["content"], "Say 0");

    let report = report_for(&data, &resumed, &spec, "tiny");
    assert_eq!(report.rows, 6);
    assert_eq!(report.samples_per_row, 3);
    assert_eq!(report.checks.len(), 8);
    assert!(summary(&report).contains("RFT readiness"));
}

#[test]
fn remote_endpoint_is_sampled_concurrently_and_graded() {
    // The fixture model answers the digit it is asked for, except for row 2's prompt.
    let server = ChatServer::start(|body| {
        let prompt = body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if prompt == "Say 2" {
            "no idea".into()
        } else {
            prompt.trim_start_matches("Say ").to_owned()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = read_data(&dataset(dir.path(), 6)).unwrap();
    let spec = exact_grader("answer");
    let grader = compile(&spec).unwrap();
    let policy = Policy::Remote(RemoteModel::new(
        &server.base_url(),
        Some("sk-test"),
        "fixture-model",
        4,
    ));
    let config = EvalConfig {
        sampling: SamplingOptions {
            samples: 2,
            response_format: Some(json!({"type": "json_object"})),
            ..SamplingOptions::default()
        },
        output: None,
    };
    let results = run_eval(&data, Some(&policy), &grader, &config, &mut |_, _| {}).unwrap();
    assert_eq!(server.calls.load(Ordering::SeqCst), 12);
    let request = server.requests.lock().unwrap()[0].clone();
    assert_eq!(request["model"], "fixture-model");
    assert_eq!(request["response_format"]["type"], "json_object");
    let rewards: Vec<Vec<f64>> = results.iter().map(RowResult::rewards).collect();
    assert_eq!(
        rewards,
        vec![
            vec![1.0, 1.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0],
            vec![1.0, 1.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0]
        ]
    );
    assert_eq!(results[0].samples[0].prompt_tokens, 7);

    let report = report_for(&data, &results, &spec, "fixture-model");
    assert!((report.mean_reward - 4.0 / 6.0).abs() < 1e-12);
    // Every row's two samples agree: no GRPO signal at all.
    let learnability = report
        .checks
        .iter()
        .find(|c| c.id == "learnability")
        .unwrap();
    assert_eq!(learnability.verdict, Verdict::Blocker);

    // A dead endpoint fails the eval with the fix in the message.
    drop(server);
    let dead = Policy::Remote(RemoteModel::new("http://127.0.0.1:9/v1", None, "m", 2));
    let err = run_eval(&data, Some(&dead), &grader, &config, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--base-url"), "{err}");
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|bin| {
        std::process::Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn html_report_renders_in_headless_chromium_with_plots_and_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = (0..20)
        .map(|i| json!({"item": {"label": if i % 10 == 0 { "no" } else { "yes" }}, "sample": {"output_text": if i % 3 == 0 { "no" } else { "yes" }}}))
        .collect();
    let data = read_data(&write_lines(dir.path(), "given.jsonl", &lines)).unwrap();
    let spec = exact_grader("label");
    let grader = compile(&spec).unwrap();
    let results = run_eval(&data, None, &grader, &EvalConfig::default(), &mut |_, _| {}).unwrap();
    let report = build_report(&ReportInput {
        data: &data,
        results: &results,
        grader_spec: &spec,
        grader: &grader,
        model: "given",
        response_format: None,
        options: &ReportOptions {
            reference_field: Some("label".into()),
            ..ReportOptions::default()
        },
    });
    let out = dir.path().join("report");
    write_report(&report, &out).unwrap();
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["checks"].as_array().unwrap().len(), 8);
    assert_eq!(json["checks"][2]["id"], "data_balance");
    assert_eq!(json["checks"][2]["verdict"], "warning");
    // Self-contained: nothing to fetch (an SVG's `xmlns` names a namespace, it loads nothing).
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for outside in [
        "src=",
        "<script",
        "<link",
        "url(",
        "@import",
        "href=\"http",
        "href='http",
    ] {
        assert!(
            !html.contains(outside),
            "report.html loads from outside: {outside}"
        );
    }

    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("RFT_REQUIRE_CHROMIUM").is_none(),
            "RFT_REQUIRE_CHROMIUM is set but chromium is not installed"
        );
        eprintln!(
            "skipping the Chromium render: `chromium` is not installed (apt-get install chromium)"
        );
        return;
    };
    let url = format!("file://{}", out.join("report.html").display());
    let output = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && dom.contains("<svg"),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        dom.matches("<svg").count() >= 4,
        "expected the plots in the DOM"
    );
    assert!(dom.contains("<rect"), "plots have bars");
    assert!(
        dom.contains("id=\"overall-verdict\">warning<"),
        "overall verdict shown"
    );
    for check in &report.checks {
        assert!(
            dom.contains(&format!("id=\"{}\"", check.id)),
            "section {}",
            check.id
        );
    }
    assert!(dom.contains("Label distribution of `label`"));
    assert!(dom.contains("data-verdict=\"warning\""));
}

#[test]
fn default_model_on_the_quickstart_example() {
    if std::env::var_os("RFT_SLOW_TESTS").is_none() {
        eprintln!(
            "skipping: set RFT_SLOW_TESTS=1 to evaluate the default model (downloads it once)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let mut data = read_data(&root.join("valid.jsonl")).unwrap();
    data.truncate(6);
    let spec =
        Grader::from_json_str(&std::fs::read_to_string(root.join("grader.json")).unwrap()).unwrap();
    let grader = compile(&spec).unwrap();
    let policy = Policy::load_local(rft_model::hub::SMOLLM2_135M_INSTRUCT.name).unwrap();
    let config = EvalConfig {
        sampling: SamplingOptions {
            samples: 4,
            max_tokens: 16,
            ..SamplingOptions::default()
        },
        output: None,
    };
    let results = run_eval(&data, Some(&policy), &grader, &config, &mut |_, _| {}).unwrap();
    let report = report_for(&data, &results, &spec, "smollm2-135m-instruct");
    assert_eq!(report.graded_samples, 24);
    // The reference answer is the exact match: the quickstart grader is aligned.
    let alignment = report
        .checks
        .iter()
        .find(|c| c.id == "judge_alignment")
        .unwrap();
    assert_eq!(alignment.verdict, Verdict::Good, "{}", alignment.reason);
    let multi = report
        .checks
        .iter()
        .find(|c| c.id == "multi_grader")
        .unwrap();
    assert!(multi.applicable);
    eprintln!("{}", summary(&report));
}
