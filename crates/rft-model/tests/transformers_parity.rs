//! The decoder equals Hugging Face `transformers` on tiny random Llama, Qwen2 and Qwen3 models
//! (`scripts/transformers_reference.py` wrote the folders and their logits under
//! `tests/fixtures/tiny_<arch>/`): every logit of single sequences and of a left-padded batch
//! within 1e-4.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rft_model::lora::LoraAdapter;
use rft_model::{CausalLm, KvCache, Logits};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Expected {
    arch: String,
    vocab_size: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u8>>,
    position_ids: Vec<Vec<u32>>,
    /// (b, t, vocab), `None` at padding positions.
    logits: Vec<Vec<Option<Vec<f32>>>>,
    /// adapter/expected.json only: after PEFT's `merge_and_unload()`.
    #[serde(default)]
    merged_logits: Option<Vec<Vec<Option<Vec<f32>>>>>,
}

fn fixture_dir(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("tiny_{arch}"))
}

fn tensor2<T: candle_core::WithDType>(rows: &[Vec<T>]) -> Tensor {
    let (b, t) = (rows.len(), rows[0].len());
    assert!(rows.iter().all(|r| r.len() == t), "ragged rows");
    let flat: Vec<T> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap()
}

/// Logits `(b, t, vocab)` of one case: the whole sequence in one forward pass (`prefill` =
/// t), or the first `prefill` tokens and then one token at a time through the KV cache.
fn run(model: &CausalLm, case: &Case, prefill: usize) -> Vec<Vec<Vec<f32>>> {
    run_with(model, None, case, prefill)
}

fn run_with(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    case: &Case,
    prefill: usize,
) -> Vec<Vec<Vec<f32>>> {
    let ids = tensor2(&case.input_ids);
    let positions = tensor2(&case.position_ids);
    let padded = case.attention_mask.iter().flatten().any(|&m| m == 0);
    let key_mask = padded.then(|| {
        let rows: Vec<Vec<f32>> = case
            .attention_mask
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&m| if m == 1 { 0.0 } else { f32::NEG_INFINITY })
                    .collect()
            })
            .collect();
        tensor2(&rows)
    });
    let t = case.input_ids[0].len();
    let mut cache = KvCache::new();
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < t {
        let len = if start == 0 { prefill } else { 1 };
        let mask = key_mask
            .as_ref()
            .map(|m| m.narrow(1, 0, start + len).unwrap());
        let logits = model
            .forward_with(
                &ids.narrow(1, start, len).unwrap(),
                &positions.narrow(1, start, len).unwrap(),
                mask.as_ref(),
                &mut cache,
                Logits::All,
                adapter,
            )
            .unwrap();
        chunks.push(logits);
        start += len;
    }
    Tensor::cat(&chunks, 1).unwrap().to_vec3::<f32>().unwrap()
}

/// Largest |got - want| over the real positions; panics on a non-finite logit.
fn max_diff(arch: &str, what: &str, got: &[Vec<Vec<f32>>], want: &[Vec<Option<Vec<f32>>>]) -> f32 {
    let mut worst = 0f32;
    let mut compared = 0;
    for (b, row) in want.iter().enumerate() {
        for (t, want) in row.iter().enumerate() {
            let Some(want) = want else { continue };
            let got = &got[b][t];
            assert_eq!(got.len(), want.len(), "{arch}/{what}: vocab");
            for (g, w) in got.iter().zip(want) {
                let diff = (g - w).abs();
                assert!(
                    diff.is_finite(),
                    "{arch}/{what}: logit at ({b}, {t}) is {g}, expected {w}"
                );
                worst = worst.max(diff);
            }
            compared += 1;
        }
    }
    assert!(compared > 0, "{arch}/{what}: no real positions");
    worst
}

/// Runs every case of `tiny_<arch>/expected.json`, in one pass and through the KV cache;
/// returns the largest difference seen.
fn check(arch: &str) -> f32 {
    let dir = fixture_dir(arch);
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let expected: Expected = serde_json::from_str(&text).unwrap();
    assert_eq!(expected.arch, arch);
    let model = CausalLm::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, expected.vocab_size);
    assert!(
        expected
            .cases
            .iter()
            .any(|c| c.attention_mask.iter().flatten().any(|&m| m == 0)),
        "{arch}: the fixture must hold a left-padded batch"
    );
    let mut worst = 0f32;
    for case in &expected.cases {
        let t = case.input_ids[0].len();
        // One pass; then a prefill of the first few tokens (for the padded batch: padding only
        // in its first row) and single-token steps through the cache.
        for (prefill, how) in [(t, "one pass"), ((t / 3).max(1), "cached steps")] {
            let got = run(&model, case, prefill);
            let diff = max_diff(arch, &case.name, &got, &case.logits);
            eprintln!("{arch}/{} ({how}): max |diff| {diff:.3e}", case.name);
            assert!(
                diff < TOLERANCE,
                "{arch}/{} ({how}): max |logit - transformers| = {diff:.3e} (tolerance {TOLERANCE:e})",
                case.name
            );
            worst = worst.max(diff);
        }
    }
    worst
}

#[test]
fn tiny_llama_matches_transformers() {
    let worst = check("llama");
    eprintln!("llama: worst max |diff| {worst:.3e}");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    let worst = check("qwen2");
    eprintln!("qwen2: worst max |diff| {worst:.3e}");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    let worst = check("qwen3");
    eprintln!("qwen3: worst max |diff| {worst:.3e}");
}

/// PEFT's adapter files load, and base + adapter (unmerged, and merged into the weights) gives
/// PEFT's logits.
fn check_adapter(arch: &str) {
    let dir = fixture_dir(arch);
    let model = CausalLm::load(&dir, &Device::Cpu).unwrap();
    let adapter =
        LoraAdapter::load_peft(&dir.join("adapter"), model.config(), &Device::Cpu).unwrap();
    assert_eq!(adapter.config().rank, 4);
    let merged = model.merged(&adapter).unwrap();
    let text = std::fs::read_to_string(dir.join("adapter/expected.json")).unwrap();
    let expected: Expected = serde_json::from_str(&text).unwrap();
    for case in &expected.cases {
        let t = case.input_ids[0].len();
        let unmerged = run_with(&model, Some(&adapter), case, t);
        let diff = max_diff(arch, &case.name, &unmerged, &case.logits);
        assert!(
            diff < TOLERANCE,
            "{arch}/{} with adapter: {diff:.3e}",
            case.name
        );
        let cached = run_with(&model, Some(&adapter), case, (t / 3).max(1));
        let diff = max_diff(arch, &case.name, &cached, &case.logits);
        assert!(
            diff < TOLERANCE,
            "{arch}/{} with adapter, cached: {diff:.3e}",
            case.name
        );
        let want = case.merged_logits.as_ref().expect("merged_logits");
        let diff = max_diff(arch, &case.name, &run(&merged, case, t), want);
        assert!(diff < TOLERANCE, "{arch}/{} merged: {diff:.3e}", case.name);
    }
    // What OpenRFT writes, PEFT's layout, loads back to the same adapter.
    let out = tempfile::tempdir().unwrap();
    adapter.save_peft(out.path(), "tiny").unwrap();
    let again = LoraAdapter::load_peft(out.path(), model.config(), &Device::Cpu).unwrap();
    let case = &expected.cases[0];
    let t = case.input_ids[0].len();
    assert_eq!(
        run_with(&model, Some(&again), case, t),
        run_with(&model, Some(&adapter), case, t)
    );
}

#[test]
fn tiny_llama_peft_adapter_matches_peft() {
    check_adapter("llama");
}

#[test]
fn tiny_qwen2_peft_adapter_matches_peft() {
    check_adapter("qwen2");
}
