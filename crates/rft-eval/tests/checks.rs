//! Each readiness check on constructed data and graders whose right verdict is known.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use rft_eval::data::read_data;
use rft_eval::report::*;
use rft_eval::run::{run_eval, EvalConfig};
use rft_grade::{compile, compile_with};
use rft_types::{Grader, Sample};
use serde_json::{json, Value};

fn probe_rows(items: &[Value]) -> Vec<ProbeRow> {
    items
        .iter()
        .map(|item| ProbeRow {
            item: item.clone(),
            prompt: format!("Classify: {}", item["text"].as_str().unwrap_or("x")),
            full_prompt: format!("Classify: {}", item["text"].as_str().unwrap_or("x")),
        })
        .collect()
}

/// 95 rows labelled `yes`, 5 labelled `no`.
fn skewed_items() -> Vec<Value> {
    (0..100)
        .map(|i| json!({"text": format!("message {i}"), "label": if i % 20 == 0 { "no" } else { "yes" }}))
        .collect()
}

#[test]
fn grader_always_at_max_is_a_signal_blocker() {
    // An eval-run file graded by a grader that always returns 1, end to end through the report.
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<Value> = (0..10)
        .map(|i| json!({"item": {"n": i}, "sample": {"output_text": format!("answer {i}")}}))
        .collect();
    let path = write_lines(dir.path(), "given.jsonl", &lines);
    let data = read_data(&path).unwrap();
    let spec = Grader::from_value(&json!({
        "type": "string_check", "name": "always", "input": "same", "reference": "same", "operation": "eq"
    }))
    .unwrap();
    let grader = compile(&spec).unwrap();
    let results = run_eval(&data, None, &grader, &EvalConfig::default(), &mut |_, _| {}).unwrap();
    let report = build_report(&ReportInput {
        data: &data,
        results: &results,
        grader_spec: &spec,
        grader: &grader,
        model: "given",
        response_format: None,
        options: &ReportOptions::default(),
    });
    let signal = &report.checks[0];
    assert_eq!(signal.id, "signal");
    assert_eq!(signal.verdict, Verdict::Blocker, "{}", signal.reason);
    assert!(signal.reason.contains("maximum"), "{}", signal.reason);
    assert_eq!(report.verdict, Verdict::Blocker);
    assert_eq!(report.checks.len(), 8);
}

#[test]
fn signal_is_good_between_the_ends_and_blocked_at_the_minimum() {
    let mixed = vec![vec![0.0, 0.5, 1.0, 0.25]; 5];
    assert_eq!(check_signal(&mixed, (0.0, 1.0)).verdict, Verdict::Good);
    let zeros = vec![vec![0.0; 4]; 5];
    let check = check_signal(&zeros, (0.0, 1.0));
    assert_eq!(check.verdict, Verdict::Blocker);
    assert!(check.reason.contains("minimum"));
    let mostly = [vec![vec![0.0; 4]; 9], vec![vec![0.0, 1.0, 1.0, 1.0]]].concat();
    assert_eq!(check_signal(&mostly, (0.0, 1.0)).verdict, Verdict::Warning);
}

#[test]
fn learnability_counts_rows_without_reward_spread() {
    let flat = vec![vec![1.0, 1.0, 1.0], vec![0.0, 0.0, 0.0]];
    assert_eq!(check_learnability(&flat).verdict, Verdict::Blocker);
    let some = [vec![vec![0.0; 4]; 9], vec![vec![0.0, 1.0, 0.0, 0.0]]].concat();
    let check = check_learnability(&some);
    assert_eq!(check.verdict, Verdict::Warning);
    assert!((check.details["useful_batch_fraction"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    let spread = vec![vec![0.0, 1.0]; 4];
    assert_eq!(check_learnability(&spread).verdict, Verdict::Good);
    let single = vec![vec![0.5]; 4];
    assert!(!check_learnability(&single).applicable);
    // Enough spread, but half the rows already at the top on every sample: a job would run
    // out of signal as it improves the rest.
    let saturating = [vec![vec![1.0; 4]; 5], vec![vec![0.0, 1.0, 0.0, 1.0]; 5]].concat();
    let check = check_learnability(&saturating);
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(check.reason.contains("collapse"), "{}", check.reason);
    assert_eq!(check.details["fraction_saturated"].as_f64(), Some(0.5));
}

#[test]
fn a_95_5_two_label_set_is_a_skew_warning() {
    let check = check_balance(&skewed_items());
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(
        check.reason.contains("label") && check.reason.contains("95%"),
        "{}",
        check.reason
    );
    assert!(check.reason.contains("balance"), "{}", check.reason);
    let balanced: Vec<Value> = (0..100)
        .map(|i| json!({"label": if i % 2 == 0 { "no" } else { "yes" }}))
        .collect();
    assert_eq!(check_balance(&balanced).verdict, Verdict::Good);
    let free_text: Vec<Value> = (0..100)
        .map(|i| json!({"answer": format!("{i}")}))
        .collect();
    assert!(!check_balance(&free_text).applicable);
}

#[test]
fn a_constant_majority_label_is_a_lucky_guess() {
    let items = skewed_items();
    let rows = probe_rows(&items);
    let grader = compile(&exact_grader("label")).unwrap();
    // A model that is right 60% of the time; always answering "yes" is right 95% of the time.
    let check = check_lucky_guesses(&grader, &rows, 0.6, (0.0, 1.0), Some("label"), 1);
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(check.reason.contains("\"yes\""), "{}", check.reason);
    // Open-ended answers: no trivial strategy scores.
    let open: Vec<Value> = (0..20)
        .map(|i| json!({"text": format!("t{i}"), "label": format!("answer number {i}")}))
        .collect();
    let check = check_lucky_guesses(
        &grader,
        &probe_rows(&open),
        0.6,
        (0.0, 1.0),
        Some("label"),
        1,
    );
    assert_eq!(check.verdict, Verdict::Good, "{}", check.reason);
}

#[test]
fn one_item_of_a_list_answer_is_a_lucky_guess_when_items_earn_credit() {
    // The answer is a pair of ids and the grader pays half for each id named: always naming
    // "M1", which is in most pairs, earns a good share of the reward without reading anything.
    let items: Vec<Value> = (0..20)
        .map(|i| {
            let other = 2 + i % 4;
            json!({"answer": format!("M1, M{other}")})
        })
        .collect();
    let grader = Grader::from_value(&json!({
        "type": "python",
        "name": "per_id",
        "source": "def grade(sample, item):\n    given = {p.strip() for p in sample['output_text'].split(',') if p.strip()}\n    wanted = {p.strip() for p in item['answer'].split(',')}\n    return 0.5 * len(given & wanted) if given <= wanted else 0.0\n"
    }))
    .unwrap();
    let grader = compile_with(&grader, &python_context()).unwrap();
    let check = check_lucky_guesses(
        &grader,
        &probe_rows(&items),
        0.3,
        (0.0, 1.0),
        Some("answer"),
        1,
    );
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(check.reason.contains("\"M1\""), "{}", check.reason);
    assert!(
        check.reason.contains("item of a `answer` list"),
        "{}",
        check.reason
    );
    // Single-valued answers have no parts to guess.
    let labels: Vec<Value> = (0..20)
        .map(|i| json!({"answer": format!("label {}", i % 5)}))
        .collect();
    let check = check_lucky_guesses(
        &grader,
        &probe_rows(&labels),
        0.9,
        (0.0, 1.0),
        Some("answer"),
        1,
    );
    let names: Vec<&str> = check.details["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"constant_part"), "{names:?}");
}

#[test]
fn a_length_rewarding_judge_fails_the_hacking_probes() {
    // The judge scores answers by length: 1000 characters or more get the maximum.
    let server = ChatServer::start(|body| {
        let answer = judged_answer(body);
        judge_reply((answer.chars().count() as f64 / 1000.0).min(1.0))
    });
    let grader = compile_with(&judge_grader(), &server.judge_context()).unwrap();
    let items: Vec<Value> = (0..4)
        .map(|i| json!({"question": format!("q{i}")}))
        .collect();
    let check = check_hacking(&grader, &probe_rows(&items), (0.0, 1.0), None, &[]);
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(check.reason.contains("8000-character"), "{}", check.reason);

    // An exact-match grader resists the same probes.
    let exact = compile(&exact_grader("question")).unwrap();
    let check = check_hacking(
        &exact,
        &probe_rows(&items),
        (0.0, 1.0),
        Some("question"),
        &["label".into()],
    );
    assert_eq!(check.verdict, Verdict::Good, "{}", check.reason);
    assert!(check.details["probes"].as_array().unwrap().len() >= 3);
}

#[test]
fn quoting_the_reference_from_the_prompt_is_caught_by_a_contains_grader() {
    let spec = Grader::from_value(&json!({
        "type": "string_check", "name": "contains", "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}", "operation": "like"
    }))
    .unwrap();
    let grader = compile(&spec).unwrap();
    let rows: Vec<ProbeRow> = (0..5)
        .map(|i| ProbeRow {
            item: json!({"answer": format!("Rome{i}")}),
            prompt: "Which city?".into(),
            full_prompt: format!("Order {i} shipped to Rome{i}.\nWhich city?"),
        })
        .collect();
    let check = check_hacking(&grader, &rows, (0.0, 1.0), Some("answer"), &[]);
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(check.reason.contains("answer"), "{}", check.reason);
}

#[test]
fn a_non_deterministic_judge_is_a_stability_warning() {
    // Each call draws a new score: the same sample gets different grades.
    let counter = AtomicU64::new(1);
    let server = ChatServer::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let x = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f64 / (1u64 << 24) as f64;
        judge_reply(x)
    });
    let grader = compile_with(&judge_grader(), &server.judge_context()).unwrap();
    let samples: Vec<(Sample, Value)> = (0..8)
        .map(|i| {
            (
                Sample::from_text(&format!("answer {i}")),
                json!({"question": "q"}),
            )
        })
        .collect();
    let check = check_judge_stability(&grader, &samples, 3, (0.0, 1.0));
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert_eq!(server.calls.load(Ordering::SeqCst), 24);

    // A deterministic judge (score from the answer alone) is stable.
    let steady = ChatServer::start(|body| judge_reply(judged_answer(body).len() as f64 / 10.0));
    let grader = compile_with(&judge_grader(), &steady.judge_context()).unwrap();
    let check = check_judge_stability(&grader, &samples, 3, (0.0, 1.0));
    assert_eq!(check.verdict, Verdict::Good, "{}", check.reason);
    assert!(
        !check_judge_stability(
            &compile(&exact_grader("q")).unwrap(),
            &samples,
            3,
            (0.0, 1.0)
        )
        .applicable
    );
}

#[test]
fn judge_alignment_needs_right_high_and_wrong_low() {
    let items: Vec<Value> = (0..6).map(|i| json!({"answer": format!("{i}")})).collect();
    let exact = compile(&exact_grader("answer")).unwrap();
    let check = check_judge_alignment(&exact, &items, Some("answer"), (0.0, 1.0));
    assert_eq!(check.verdict, Verdict::Good, "{}", check.reason);
    // A grader that ignores the answer cannot tell right from wrong.
    let blind = Grader::from_value(&json!({
        "type": "string_check", "name": "blind", "input": "a", "reference": "a", "operation": "eq"
    }))
    .unwrap();
    let check = check_judge_alignment(
        &compile(&blind).unwrap(),
        &items,
        Some("answer"),
        (0.0, 1.0),
    );
    assert_eq!(check.verdict, Verdict::Blocker, "{}", check.reason);
    assert!(!check_judge_alignment(&exact, &items, None, (0.0, 1.0)).applicable);
}

#[test]
fn a_constant_child_of_a_multi_grader_is_flagged() {
    let spec = Grader::from_value(&json!({
        "type": "multi", "name": "m",
        "graders": {
            "exact": {"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}", "operation": "eq"},
            "always": {"type": "string_check", "name": "always", "input": "x", "reference": "x", "operation": "eq"}
        },
        "calculate_output": "0.5 * exact + 0.5 * always"
    }))
    .unwrap();
    let grader = compile(&spec).unwrap();
    let grades: Vec<_> = ["1", "2", "1", "3"]
        .iter()
        .map(|a| grader.grade(&Sample::from_text(a), &json!({"answer": "1"})))
        .collect();
    let refs: Vec<_> = grades.iter().collect();
    let check = check_multi_grader(&spec, &refs);
    assert_eq!(check.verdict, Verdict::Warning, "{}", check.reason);
    assert!(check.reason.contains("`always`"), "{}", check.reason);
    let children = check.details["children"].as_array().unwrap();
    assert!((children[0]["correlation_with_total"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert!(!check_multi_grader(&exact_grader("answer"), &refs).applicable);
}
