//! Greedy decoding of the default model equals an independent numpy implementation over the
//! same dequantised GGUF weights (`scripts/model_reference.py`), token for token.

use std::path::Path;

use candle_core::Device;
use rft_model::{hub, CausalLm};
use serde_json::Value;

#[test]
fn default_model_greedy_matches_numpy_reference() {
    let slow = std::env::var("RFT_SLOW_TESTS").as_deref() == Ok("1");
    if !slow && !hub::SMOLLM2_135M_INSTRUCT.is_present() {
        eprintln!("skipping: the default model is not fetched (RFT_SLOW_TESTS=1 fetches it)");
        return;
    }
    let dir = hub::SMOLLM2_135M_INSTRUCT
        .ensure()
        .expect("fetch the default model");
    let model =
        CausalLm::load(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), &Device::Cpu).expect("load");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/greedy_smollm2.jsonl");
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let mut n_prompts = 0;
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        let prompt: Vec<u32> = row["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let expected: Vec<u32> = row["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert!(
            expected.len() >= 32,
            "the fixture must hold at least 32 tokens per prompt"
        );
        let got = model.generate_greedy(&prompt, expected.len(), &[]).unwrap();
        assert_eq!(got, expected, "prompt {:?}", row["prompt"]);
        n_prompts += 1;
    }
    assert!(n_prompts >= 5);
}
