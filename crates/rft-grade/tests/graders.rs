//! Graders end to end: spec JSON in, `RunGraderResponse` out, as `graders/run` would answer.

use rft_grade::judge::{JudgeClient, JudgeConfig};
use rft_grade::template::{MAX_GRADE_RENDER_BYTES, MAX_TEMPLATE_RENDER_BYTES};
use rft_grade::{compile, compile_with, validate, GradeError, GraderContext};
use rft_types::{Grader, RunGraderResponse, Sample};
use serde_json::{json, Value};

fn run(grader: Value, sample: &str, item: Value) -> RunGraderResponse {
    let grader = Grader::from_value(&grader).unwrap_or_else(|e| panic!("{e}"));
    compile(&grader)
        .unwrap_or_else(|e| panic!("{e}"))
        .grade(&Sample::from_text(sample), &item)
}

fn string_check(operation: &str, reference: &str) -> Value {
    json!({"type": "string_check", "name": "check", "input": "{{sample.output_text}}",
           "reference": reference, "operation": operation})
}

#[test]
fn string_check_eq_is_case_sensitive() {
    assert_eq!(
        run(string_check("eq", "Paris"), "Paris", json!({})).reward,
        1.0
    );
    assert_eq!(
        run(string_check("eq", "Paris"), "paris", json!({})).reward,
        0.0
    );
    assert_eq!(
        run(string_check("eq", "Paris"), "Paris ", json!({})).reward,
        0.0
    );
}

#[test]
fn string_check_ne_like_ilike() {
    assert_eq!(run(string_check("ne", "a"), "b", json!({})).reward, 1.0);
    assert_eq!(run(string_check("ne", "a"), "a", json!({})).reward, 0.0);
    assert_eq!(
        run(string_check("like", "Par"), "In Paris.", json!({})).reward,
        1.0
    );
    assert_eq!(
        run(string_check("like", "par"), "In Paris.", json!({})).reward,
        0.0
    );
    assert_eq!(
        run(string_check("ilike", "PAR"), "In Paris.", json!({})).reward,
        1.0
    );
    assert_eq!(
        run(string_check("ilike", "ΣΟΦΟΣ"), "ο σοφός σοφος", json!({})).reward,
        1.0
    );
    assert_eq!(
        run(string_check("like", ""), "anything", json!({})).reward,
        1.0
    );
}

#[test]
fn reference_is_templated_from_item() {
    let grader = string_check("eq", "{{ item.answer }}");
    assert_eq!(
        run(grader.clone(), "42", json!({"answer": "42"})).reward,
        1.0
    );
    // Numbers render as JSON text, so an integer answer matches its digits.
    assert_eq!(run(grader, "42", json!({"answer": 42})).reward, 1.0);
}

#[test]
fn missing_variable_sets_invalid_variable_error_and_zero() {
    let result = run(
        string_check("eq", "{{item.answer}}"),
        "42",
        json!({"other": 1}),
    );
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.invalid_variable_error);
    assert!(!result.metadata.errors.other_error);
    let result = run(string_check("ne", "{{unknown.answer}}"), "42", json!({}));
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.invalid_variable_error);
}

#[test]
fn output_json_is_available_when_sample_parses() {
    let grader = json!({"type": "string_check", "name": "c", "input": "{{sample.output_json.user.emails[1]}}",
                        "reference": "{{item.email}}", "operation": "eq"});
    let sample = r#"{"user": {"emails": ["a@x.org", "b@x.org"]}}"#;
    assert_eq!(
        run(grader.clone(), sample, json!({"email": "b@x.org"})).reward,
        1.0
    );
    let result = run(grader, "not json", json!({"email": "b@x.org"}));
    assert!(result.metadata.errors.invalid_variable_error);
}

#[test]
fn text_similarity_reports_metric_score() {
    let grader = json!({"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
                        "reference": "{{item.ref}}", "evaluation_metric": "rouge_1"});
    let result = run(grader, "the cat sat", json!({"ref": "the cat sat"}));
    assert_eq!(result.reward, 1.0);
    assert_eq!(result.metadata.kind, "text_similarity");
    assert_eq!(result.metadata.name, "sim");
}

#[test]
fn cosine_without_an_embedder_names_the_fix() {
    // Grading with cosine is covered by tests/cosine.rs, against a local embeddings server.
    let grader = Grader::from_value(
        &json!({"type": "text_similarity", "name": "sim", "input": "a",
        "reference": "b", "evaluation_metric": "cosine"}),
    )
    .unwrap();
    let context = GraderContext {
        embedder: None,
        ..GraderContext::shared()
    };
    let err = compile_with(&grader, &context).unwrap_err();
    assert!(matches!(err, GradeError::NoEmbedder { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("cosine") && message.contains("RFT_EMBEDDINGS_BASE_URL"),
        "{message}"
    );
}

#[test]
fn model_graders_validate() {
    // Grading with them is covered by tests/model_graders.rs, against a local judge.
    for spec in [
        json!({"type": "score_model", "name": "judge", "model": "m", "input": [{"role": "user", "content": "{{sample.output_text}}"}]}),
        json!({"type": "label_model", "name": "lab", "model": "m", "input": [{"role": "user", "content": "x"}],
               "labels": ["a", "b"], "passing_labels": ["a"]}),
    ] {
        validate(&Grader::from_value(&spec).unwrap()).unwrap();
    }
    let bad = json!({"type": "score_model", "name": "judge", "model": "m",
                     "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{answer}}"}]}]});
    let err = validate(&Grader::from_value(&bad).unwrap()).unwrap_err();
    assert!(err.to_string().contains("input[0].content"), "{err}");
}

fn multi(formula: &str) -> Value {
    json!({
        "type": "multi", "name": "combined", "calculate_output": formula,
        "graders": {
            "name": {"type": "string_check", "name": "name_grader", "input": "{{sample.output_json.name}}",
                     "reference": "{{item.name}}", "operation": "eq"},
            "email": {"type": "string_check", "name": "email_grader", "input": "{{sample.output_json.email}}",
                      "reference": "{{item.email}}", "operation": "eq"}
        }
    })
}

#[test]
fn multi_combines_children_by_map_key() {
    let item = json!({"name": "Ada", "email": "ada@x.org"});
    let result = run(
        multi("(name + email) / 2"),
        r#"{"name": "Ada", "email": "nope"}"#,
        item,
    );
    assert_eq!(result.reward, 0.5);
    assert_eq!(result.sub_rewards.get("name"), Some(&1.0));
    assert_eq!(result.sub_rewards.get("email"), Some(&0.0));
    assert_eq!(result.metadata.kind, "multi");
    assert!(!result.metadata.errors.formula_parse_error);
}

#[test]
fn multi_formula_errors_are_flags() {
    let item = json!({"name": "Ada", "email": "ada@x.org"});
    let sample = r#"{"name": "Ada", "email": "ada@x.org"}"#;
    let result = run(multi("(name + "), sample, item.clone());
    assert!(result.metadata.errors.formula_parse_error);
    assert_eq!(result.reward, 0.0);
    let result = run(multi("name + nobody"), sample, item.clone());
    assert!(result.metadata.errors.invalid_variable_error);
    assert_eq!(result.reward, 0.0);
    let result = run(multi("name / (email - 1)"), sample, item);
    assert!(result.metadata.errors.other_error);
    assert_eq!(result.reward, 0.0);
}

#[test]
fn multi_child_error_propagates() {
    let result = run(
        multi("name + email"),
        "not json",
        json!({"name": "Ada", "email": "e"}),
    );
    assert!(result.metadata.errors.invalid_variable_error);
    assert_eq!(result.reward, 0.0);
}

#[test]
fn validate_rejects_bad_formula_and_unknown_keys() {
    let grader = Grader::from_value(&multi("name + phone")).unwrap();
    let err = validate(&grader).unwrap_err().to_string();
    assert!(err.contains("unknown variable \"phone\""), "{err}");
    assert!(err.contains("name, email"), "{err}");
    let grader = Grader::from_value(&multi("name +")).unwrap();
    assert!(validate(&grader)
        .unwrap_err()
        .to_string()
        .starts_with("calculate_output: formula"));
}

#[test]
fn validate_rejects_unknown_template_namespace() {
    let grader = Grader::from_value(&string_check("eq", "{{ row.answer }}")).unwrap();
    let err = validate(&grader).unwrap_err().to_string();
    assert!(
        err.starts_with("reference: template {{row.answer}}"),
        "{err}"
    );
}

#[test]
fn validate_limits_python_source_size() {
    let source = format!(
        "def grade(sample, item):\n    return 1.0\n#{}",
        "x".repeat(256 * 1024)
    );
    let grader =
        Grader::from_value(&json!({"type": "python", "name": "py", "source": source})).unwrap();
    assert!(matches!(
        validate(&grader),
        Err(GradeError::SourceTooLarge { .. })
    ));
}

#[test]
fn response_serialises_with_every_spec_field() {
    let result = run(string_check("eq", "x"), "x", json!({}));
    let value = serde_json::to_value(&result).unwrap();
    for key in [
        "reward",
        "metadata",
        "sub_rewards",
        "model_grader_token_usage_per_model",
    ] {
        assert!(value.get(key).is_some(), "missing {key}");
    }
    for key in [
        "name",
        "type",
        "errors",
        "execution_time",
        "scores",
        "token_usage",
        "sampled_model_name",
    ] {
        assert!(
            value["metadata"].get(key).is_some(),
            "missing metadata.{key}"
        );
    }
}

/// Runs `f` on a thread with the default 2 MiB stack of spawned threads: HTTP handlers and
/// rayon workers get no more, so a recursion that a deep formula could drive would abort the
/// whole test process here.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deeply_nested_formulas_are_refused_not_a_crash() {
    // 3,000 parentheses (6 KB): over the length limit. 2,000 (4 KB): within it, over the depth
    // limit. Either used to overflow the stack in the recursive parser.
    for (depth, expected) in [
        (
            3000,
            "calculate_output: the formula is 6004 bytes long; the limit is 4096",
        ),
        (
            2000,
            "calculate_output: the formula nests parentheses 2000 deep; the limit is 64",
        ),
    ] {
        let formula = format!("{}name{}", "(".repeat(depth), ")".repeat(depth));
        let (validated, graded) = on_small_stack(move || {
            let grader = Grader::from_value(&multi(&formula)).unwrap();
            let validated = validate(&grader).map_err(|e| e.to_string());
            let graded = compile(&grader).unwrap().grade(
                &Sample::from_text(r#"{"name": "Ada", "email": "e"}"#),
                &json!({"name": "Ada", "email": "e"}),
            );
            (validated, graded)
        });
        assert_eq!(validated, Err(expected.to_owned()));
        assert!(graded.metadata.errors.formula_parse_error);
        assert_eq!(graded.reward, 0.0);
    }
    // Long runs of unary minus and long sums stay valid and cheap.
    let signs = format!("{}name", "-".repeat(4000));
    let sum = format!("name{}", " + email".repeat(500));
    let results = on_small_stack(move || {
        [signs, sum].map(|formula| {
            let grader = Grader::from_value(&multi(&formula)).unwrap();
            validate(&grader).unwrap();
            compile(&grader)
                .unwrap()
                .grade(
                    &Sample::from_text(r#"{"name": "Ada", "email": "e"}"#),
                    &json!({"name": "Ada", "email": "e"}),
                )
                .reward
        })
    });
    assert_eq!(results, [1.0, 501.0]);
}

#[test]
fn a_template_over_the_render_cap_is_an_error_flag_not_an_abort() {
    // 2,048 copies of a 1 MiB field would ask for 2 GiB.
    let item = json!({"x": "a".repeat(1 << 20)});
    let result = run(
        string_check("eq", &"{{ item.x }}".repeat(2048)),
        "a",
        item.clone(),
    );
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.other_error);
    assert!(!result.metadata.errors.invalid_variable_error);
    // Up to the cap renders as usual.
    let copies = MAX_TEMPLATE_RENDER_BYTES >> 20;
    let result = run(
        string_check("like", &"{{ item.x }}".repeat(copies)),
        "",
        item,
    );
    assert!(!result.metadata.errors.any(), "{result:?}");
    assert_eq!(result.reward, 0.0);
}

#[test]
fn the_templates_of_one_grade_share_a_cap() {
    // Each child renders 3 MiB (under the per-template cap); six of them are 18 MiB.
    let per_child = 3;
    let children = MAX_GRADE_RENDER_BYTES / (per_child << 20) + 1;
    let mut graders = serde_json::Map::new();
    for i in 0..children {
        graders.insert(
            format!("c{i}"),
            json!({"type": "string_check", "name": format!("c{i}"), "input": "{{sample.output_text}}",
                   "reference": "{{item.x}}".repeat(per_child), "operation": "ne"}),
        );
    }
    let keys: Vec<String> = graders.keys().cloned().collect();
    let spec = json!({"type": "multi", "name": "many", "calculate_output": keys.join(" + "),
                      "graders": graders});
    let item = json!({"x": "a".repeat(1 << 20)});
    let result = run(spec, "b", item);
    assert_eq!(result.reward, 0.0);
    assert!(result.metadata.errors.other_error, "{result:?}");
    // The children before the cap was reached graded normally.
    assert_eq!(result.sub_rewards.get("c0"), Some(&1.0));

    // A model grader's messages spend from the same budget; the judge is never called (it
    // would fail with model_grader_server_error: nothing listens on port 9).
    let context = GraderContext {
        judge: JudgeClient::new(JudgeConfig {
            base_url: "http://127.0.0.1:9/v1".into(),
            max_retries: 0,
            ..JudgeConfig::default()
        }),
        ..GraderContext::shared()
    };
    let messages: Vec<Value> = (0..children)
        .map(|_| json!({"role": "user", "content": "{{item.x}}".repeat(per_child)}))
        .collect();
    let judge = json!({"type": "score_model", "name": "judge", "model": "m", "input": messages});
    let grader = compile_with(&Grader::from_value(&judge).unwrap(), &context).unwrap();
    let result = grader.grade(&Sample::from_text("b"), &json!({"x": "a".repeat(1 << 20)}));
    assert!(result.metadata.errors.other_error, "{result:?}");
    assert!(!result.metadata.errors.model_grader_server_error);
    assert_eq!(result.reward, 0.0);
}
