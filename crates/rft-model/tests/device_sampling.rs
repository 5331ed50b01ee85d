//! The GPU's way of choosing tokens (on the device, two numbers per row copied back), run on
//! the CPU: the same completions as the CPU's per-row loop where the draw is defined the same
//! way (greedy, the full distribution at any temperature), and log-probs that are the model's
//! own under top-k and top-p.
//!
//! One test in this binary: `set_device_choices` is process-wide.

use candle_core::{DType, Device};
use rft_model::sample::{set_device_choices, Completion, SampleRequest, Sampler, SamplingParams};
use rft_model::train::{completion_logprobs, TokenSequence};
use rft_model::{Architecture, CausalLm, ModelConfig};

fn requests(temperature: f64, top_k: usize, top_p: f64) -> Vec<SampleRequest> {
    [vec![5u32, 6, 7, 8, 9], vec![40], vec![12, 90, 33]]
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| SampleRequest {
            prompt,
            n: 4,
            params: SamplingParams {
                temperature,
                top_k,
                top_p,
                max_tokens: 10,
                stop_ids: vec![3],
                seed: 11 + i as u64,
                ..SamplingParams::default()
            },
            constraint: None,
        })
        .collect()
}

fn run(model: &CausalLm, requests: &[SampleRequest], on_device: bool) -> Vec<Vec<Completion>> {
    set_device_choices(on_device);
    let sampler = Sampler {
        model,
        adapter: None,
        tokenizer: None,
    };
    let out = sampler.run(requests).unwrap();
    set_device_choices(false);
    out
}

#[test]
fn device_choices_match_the_cpu_loop_and_report_the_models_log_probs() {
    let config = ModelConfig::tiny(Architecture::Qwen3);
    let model = CausalLm::random(config, 8, DType::F32, &Device::Cpu).unwrap();
    for temperature in [0.0, 1.0, 0.7] {
        let requests = requests(temperature, 0, 1.0);
        let cpu = run(&model, &requests, false);
        let device = run(&model, &requests, true);
        for (a, b) in cpu.iter().flatten().zip(device.iter().flatten()) {
            assert_eq!(a.ids, b.ids, "temperature {temperature}");
            assert_eq!(a.finish_reason, b.finish_reason);
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!(
                    (x - y).abs() < 1e-4,
                    "temperature {temperature}: {x} vs {y}"
                );
            }
        }
    }
    // Top-k and top-p draw in another order than the CPU: check what they drew against the
    // training path's log-probs of it, and that top-k 1 is greedy.
    for (top_k, top_p) in [(5, 1.0), (0, 0.8), (3, 0.5)] {
        let requests = requests(1.0, top_k, top_p);
        let device = run(&model, &requests, true);
        let sequences: Vec<TokenSequence> = requests
            .iter()
            .zip(&device)
            .flat_map(|(request, completions)| {
                completions.iter().map(|c| TokenSequence {
                    prompt: request.prompt.clone(),
                    completion: c.ids.clone(),
                })
            })
            .collect();
        let scored = completion_logprobs(&model, None, &sequences).unwrap();
        let expected: Vec<f32> = scored.logprobs.to_vec1().unwrap();
        let sampled: Vec<f32> = device
            .iter()
            .flatten()
            .flat_map(|c| c.logprobs.clone())
            .collect();
        assert_eq!(expected.len(), sampled.len());
        for (x, y) in expected.iter().zip(&sampled) {
            assert!(
                (x - y).abs() < 1e-4,
                "top-k {top_k} top-p {top_p}: {x} vs {y}"
            );
        }
    }
    let greedy = run(&model, &requests(0.0, 0, 1.0), false);
    let top1 = run(&model, &requests(1.3, 1, 1.0), true);
    for (a, b) in greedy.iter().flatten().zip(top1.iter().flatten()) {
        assert_eq!(a.ids, b.ids, "top-k 1 is greedy");
    }
}
