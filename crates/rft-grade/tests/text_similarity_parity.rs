//! Each `text_similarity` metric against its Python reference, to 1e-9, on the committed corpus.
//!
//! The fixtures come from `scripts/text_similarity_reference.py fixtures` (see docs/graders.md);
//! regenerate them with `scripts/gen_fixtures.sh` after changing the corpus.

use std::path::Path;

use rft_grade::metrics;

const TOLERANCE: f64 = 1e-9;

struct Row {
    line: usize,
    input: String,
    reference: String,
    expected: serde_json::Map<String, serde_json::Value>,
}

fn corpus() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text_similarity.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows: Vec<Row> = text
        .lines()
        .enumerate()
        .map(|(idx, line)| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let obj = value.as_object().unwrap().clone();
            Row {
                line: idx + 1,
                input: obj["input"].as_str().unwrap().to_owned(),
                reference: obj["reference"].as_str().unwrap().to_owned(),
                expected: obj,
            }
        })
        .collect();
    assert!(
        rows.len() >= 500,
        "the parity corpus must hold at least 500 pairs"
    );
    rows
}

fn check(metric: &str, score: impl Fn(&str, &str) -> f64) {
    let rows = corpus();
    let mut failures = Vec::new();
    for row in &rows {
        let expected = row.expected[metric].as_f64().unwrap();
        let got = score(&row.input, &row.reference);
        let close = (got - expected).abs() <= TOLERANCE;
        if !close {
            failures.push(format!(
                "line {}: {metric}({:?}, {:?}) = {got}, python says {expected}",
                row.line,
                truncate(&row.input),
                truncate(&row.reference)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} pairs differ:\n{}",
        failures.len(),
        rows.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_owned()
    }
}

#[test]
fn fuzzy_match_equals_rapidfuzz_wratio() {
    check("fuzzy_match", metrics::fuzzy_match);
}

#[test]
fn bleu_equals_sacrebleu_sentence_bleu() {
    check("bleu", metrics::bleu);
}

#[test]
fn gleu_equals_nltk_sentence_gleu() {
    check("gleu", metrics::gleu);
}

#[test]
fn meteor_equals_nltk_meteor_score() {
    let wordnet = metrics::WordNet::shared().expect("WordNet 3.0 is installed (wordnet-base)");
    check("meteor", |i, r| metrics::meteor(i, r, wordnet));
}

#[test]
fn rouge_n_equals_rouge_score() {
    for n in 1..=5 {
        check(&format!("rouge_{n}"), |i, r| metrics::rouge_n(i, r, n));
    }
}

#[test]
fn rouge_l_equals_rouge_score() {
    check("rouge_l", metrics::rouge_l);
}
