//! Real model shapes with random weights, for machines that can download nothing (a GPU machine
//! measuring throughput): the shapes' parameter counts are the published models', and a model
//! written at a shape (here a scaled-down one, with the padded vocabulary) loads, samples and
//! decodes what it samples.

use candle_core::Device;
use rft_model::config::SHAPES;
use rft_model::engine::Engine;
use rft_model::sample::SamplingParams;
use rft_model::{Architecture, ModelConfig};

#[test]
fn each_shape_has_its_models_published_parameter_count() {
    let expected = [
        ("smollm2-135m", 134_515_008u64),
        ("qwen2.5-0.5b", 494_032_768),
        ("qwen3-0.6b", 596_049_920),
        ("qwen3-1.7b", 1_720_574_976),
    ];
    assert_eq!(SHAPES.len(), expected.len());
    for (name, count) in expected {
        let config = ModelConfig::shape(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(config.parameter_count(), count, "{name}");
    }
    assert!(ModelConfig::shape("gpt-5").is_none());
}

#[test]
fn a_random_model_at_a_shape_loads_samples_and_decodes_its_padded_vocabulary() {
    for architecture in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        // A real shape's structure, scaled down: a vocabulary past the tiny tokenizer's 97.
        let config = ModelConfig {
            vocab_size: 400,
            ..ModelConfig::tiny(architecture)
        };
        rft_model::tiny::write_random_model(tmp.path(), &config, 11).unwrap();
        let engine = Engine::load_base(&tmp.path().to_string_lossy(), &Device::Cpu).unwrap();
        assert_eq!(engine.model.config().vocab_size, 400);
        // Every weight was written: the count is the shape's.
        let weights =
            candle_core::safetensors::load(tmp.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let written: u64 = weights.values().map(|t| t.elem_count() as u64).sum();
        assert_eq!(written, config.parameter_count(), "{architecture:?}");
        let prompt = engine.tokenizer.encode("Say x", false).unwrap();
        assert!(
            prompt.iter().all(|&id| id < 97),
            "text encodes to the real tokens"
        );
        let params = SamplingParams {
            max_tokens: 32,
            temperature: 1.0,
            seed: 3,
            ..SamplingParams::default()
        };
        let request = engine.request(prompt, 4, params, None).unwrap();
        let out = engine.sampler().run(&[request]).unwrap().pop().unwrap();
        let mut padded = 0;
        for completion in &out {
            assert!(completion.ids.iter().all(|&id| (id as usize) < 400));
            padded += completion.ids.iter().filter(|&&id| id >= 97).count();
            let text = engine.tokenizer.decode(&completion.ids, true).unwrap();
            assert_eq!(completion.text.clone().unwrap(), text);
        }
        assert!(padded > 0, "random weights sample the padded ids too");
    }
}
