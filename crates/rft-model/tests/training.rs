//! The training path: gradients of completion log-probs with respect to LoRA weights, checked
//! against f64 finite differences for every architecture; training and inference paths agree;
//! merged adapters equal unmerged ones; PEFT files round-trip.

use candle_core::{DType, Device, Tensor, D};
use rft_model::lora::{LoraAdapter, LoraConfig, Projection};
use rft_model::train::{check_all_gradients, completion_logprobs, TokenSequence};
use rft_model::{Architecture, CausalLm, KvCache, Logits, ModelConfig};

fn sequences() -> Vec<TokenSequence> {
    vec![
        TokenSequence {
            prompt: vec![1, 5, 9, 33],
            completion: vec![7, 2, 96, 40, 11],
        },
        TokenSequence {
            prompt: vec![3],
            completion: vec![8, 8, 60],
        },
        TokenSequence {
            prompt: vec![12, 13],
            completion: vec![],
        },
        // Three samples of one prompt: the shared-prefix path (one of length 1, one empty).
        TokenSequence {
            prompt: vec![4, 50, 51],
            completion: vec![9, 10, 11, 12],
        },
        TokenSequence {
            prompt: vec![4, 50, 51],
            completion: vec![70],
        },
        TokenSequence {
            prompt: vec![4, 50, 51],
            completion: vec![],
        },
        TokenSequence {
            prompt: vec![4, 50, 51],
            completion: vec![71, 72],
        },
    ]
}

/// An adapter whose B is random too, so it changes the model and every weight matters.
fn random_adapter(config: &ModelConfig, dtype: DType, seed: u64) -> LoraAdapter {
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(config, lora, seed, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in adapter.named_vars() {
        if name.contains("lora_B") {
            let dims = var.as_tensor().dims().to_vec();
            let values: Vec<f32> = (0..var.as_tensor().elem_count())
                .map(|_| (rng.random::<f32>() - 0.5) * 0.6)
                .collect();
            let noise = Tensor::from_vec(values, dims, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            var.set(&noise).unwrap();
        }
    }
    adapter
}

fn weighted_loss(model: &CausalLm, adapter: &LoraAdapter, probe: &Tensor) -> Tensor {
    let out = completion_logprobs(model, Some(adapter), &sequences()).unwrap();
    (out.logprobs * probe).unwrap().sum_all().unwrap()
}

fn check_architecture(arch: Architecture) {
    let config = ModelConfig::tiny(arch);
    let model = CausalLm::random(config.clone(), 11, DType::F64, &Device::Cpu).unwrap();
    let adapter = random_adapter(&config, DType::F64, 3);
    let n_tokens: usize = sequences().iter().map(|s| s.completion.len()).sum();
    let probe = Tensor::from_vec(
        (0..n_tokens)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
            .collect::<Vec<_>>(),
        n_tokens,
        &Device::Cpu,
    )
    .unwrap();
    let loss = weighted_loss(&model, &adapter, &probe);
    let grads = loss.backward().unwrap();
    check_all_gradients(&adapter, &grads).unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in adapter.named_vars() {
        // A few entries of every tensor of the first and last layer.
        if !(name.contains("layers.0.") || name.contains("layers.1.")) {
            continue;
        }
        let grad: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // A copy: `Var::set` writes into the storage a detached view would share.
        let base = var.as_tensor().copy().unwrap();
        let values: Vec<f64> = base.flatten_all().unwrap().to_vec1().unwrap();
        for idx in [0, values.len() / 2, values.len() - 1] {
            let eval = |delta: f64| {
                let mut v = values.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                let out = weighted_loss(&model, &adapter, &probe)
                    .to_scalar::<f64>()
                    .unwrap();
                var.set(&base).unwrap();
                out
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            let err = (numeric - grad[idx]).abs() / numeric.abs().max(1e-2);
            assert!(
                err < 1e-6,
                "{arch:?} {name}[{idx}]: analytic {} numeric {numeric} (rel err {err:.2e})",
                grad[idx]
            );
            checked += 1;
        }
    }
    assert!(checked >= 2 * 14 * 3, "checked only {checked} entries");
}

#[test]
fn llama_lora_gradients_match_finite_differences() {
    check_architecture(Architecture::Llama);
}

#[test]
fn qwen2_lora_gradients_match_finite_differences() {
    check_architecture(Architecture::Qwen2);
}

#[test]
fn qwen3_lora_gradients_match_finite_differences() {
    check_architecture(Architecture::Qwen3);
}

#[test]
fn a_var_outside_the_graph_is_reported() {
    let config = ModelConfig::tiny(Architecture::Llama);
    let model = CausalLm::random(config.clone(), 1, DType::F32, &Device::Cpu).unwrap();
    let used = random_adapter(&config, DType::F32, 1);
    let unused = random_adapter(&config, DType::F32, 2);
    let loss = completion_logprobs(&model, Some(&used), &sequences())
        .unwrap()
        .logprobs
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    check_all_gradients(&used, &grads).unwrap();
    let err = check_all_gradients(&unused, &grads).unwrap_err();
    assert!(err.to_string().contains("got no gradient"), "{err}");
}

/// log-probs from the inference path (full logits, log-softmax) for one sequence.
fn inference_logprobs(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    seq: &TokenSequence,
) -> Vec<f32> {
    let ids: Vec<u32> = seq.prompt.iter().chain(&seq.completion).copied().collect();
    let n = ids.len();
    let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu).unwrap();
    let positions =
        Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), (1, n), &Device::Cpu).unwrap();
    let logits = model
        .forward_with(
            &input,
            &positions,
            None,
            &mut KvCache::new(),
            Logits::All,
            adapter,
        )
        .unwrap();
    let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    seq.completion
        .iter()
        .enumerate()
        .map(|(j, &t)| logp[seq.prompt.len() - 1 + j][t as usize])
        .collect()
}

#[test]
fn training_path_equals_inference_path_and_merging_changes_nothing() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let config = ModelConfig::tiny(arch);
        let model = CausalLm::random(config.clone(), 5, DType::F32, &Device::Cpu).unwrap();
        let adapter = random_adapter(&config, DType::F32, 9);
        let merged = model.merged(&adapter).unwrap();
        let out = completion_logprobs(&model, Some(&adapter), &sequences()).unwrap();
        let packed: Vec<f32> = out.logprobs.to_vec1().unwrap();
        for (seq, span) in sequences().iter().zip(&out.spans) {
            let unmerged = inference_logprobs(&model, Some(&adapter), seq);
            let merged = inference_logprobs(&merged, None, seq);
            for ((a, b), c) in packed[span.clone()].iter().zip(&unmerged).zip(&merged) {
                assert!((a - b).abs() < 1e-5, "{arch:?}: training {a} inference {b}");
                assert!((b - c).abs() < 1e-4, "{arch:?}: unmerged {b} merged {c}");
            }
        }
        // A fresh adapter (B = 0) is the base model.
        let fresh = LoraAdapter::new(&config, LoraConfig::default(), 0, &Device::Cpu).unwrap();
        let seq = &sequences()[0];
        let base = inference_logprobs(&model, None, seq);
        let with_fresh = inference_logprobs(&model, Some(&fresh), seq);
        assert_eq!(base, with_fresh);
    }
}

#[test]
fn peft_files_round_trip() {
    let config = ModelConfig::tiny(Architecture::Qwen2);
    let adapter = random_adapter(&config, DType::F32, 4);
    let dir = tempfile::tempdir().unwrap();
    adapter.save_peft(dir.path(), "tiny-qwen2").unwrap();
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["r"], 2);
    assert_eq!(peft["lora_alpha"], 4.0);
    assert_eq!(peft["task_type"], "CAUSAL_LM");
    let names: Vec<String> =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(names
        .iter()
        .any(|n| n == "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(names.len(), 2 * 7 * config.num_layers);
    let loaded = LoraAdapter::load_peft(dir.path(), &config, &Device::Cpu).unwrap();
    assert_eq!(loaded.config().rank, 2);
    assert_eq!(loaded.config().targets, Projection::ALL.to_vec());
    for ((n1, v1), (n2, v2)) in adapter.named_vars().iter().zip(loaded.named_vars()) {
        assert_eq!(*n1, n2);
        let a: Vec<f32> = v1.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = v2.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }
    // An adapter for another shape is refused with the reason.
    let other = ModelConfig {
        hidden_size: 64,
        ..config.clone()
    };
    let err = LoraAdapter::load_peft(dir.path(), &other, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("another model"), "{err}");
}

#[test]
fn checkpointed_backward_equals_plain_backward() {
    use rft_model::train::checkpointed_backward;
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let config = ModelConfig::tiny(arch);
        let model = CausalLm::random(config.clone(), 13, DType::F64, &Device::Cpu).unwrap();
        let adapter = random_adapter(&config, DType::F64, 6);
        let n_tokens: usize = sequences().iter().map(|s| s.completion.len()).sum();
        let probe = Tensor::from_vec(
            (0..n_tokens)
                .map(|i| ((i * 5 % 9) as f64 - 4.0) / 3.0)
                .collect::<Vec<_>>(),
            n_tokens,
            &Device::Cpu,
        )
        .unwrap();
        let plain = weighted_loss(&model, &adapter, &probe);
        let plain_grads = plain.backward().unwrap();
        let expected: Vec<f32> = completion_logprobs(&model, Some(&adapter), &sequences())
            .unwrap()
            .logprobs
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        // One shard, and one per prompt group (`rft_model::parallel` splits by the size of
        // the rayon pool it runs in).
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool
                .install(|| {
                    checkpointed_backward(&model, &adapter, &sequences(), |lp, _| {
                        (lp * &probe)?.sum_all()
                    })
                })
                .unwrap();
            assert!((out.loss - plain.to_scalar::<f64>().unwrap()).abs() < 1e-10);
            assert_eq!(out.logprobs.len(), expected.len());
            for (name, var) in adapter.named_vars() {
                let a: Vec<f64> = plain_grads
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let b: Vec<f64> = out.grads[&var.as_tensor().id()]
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f64, f64::max);
                assert!(diff < 1e-10, "{arch:?} {name}, {threads} threads: {diff:e}");
            }
        }
    }
}

#[test]
fn recorded_rollout_states_give_the_recomputed_gradient() {
    use rft_model::sample::{SampleRequest, Sampler, SamplingParams};
    use rft_model::train::{checkpointed_backward, checkpointed_backward_with};
    let config = ModelConfig::tiny(Architecture::Qwen3);
    let model = CausalLm::random(config.clone(), 17, DType::F32, &Device::Cpu).unwrap();
    let adapter = random_adapter(&config, DType::F32, 3);
    let merged = model.merged(&adapter).unwrap();
    let sampler = Sampler {
        model: &merged,
        adapter: None,
        tokenizer: None,
    };
    let requests: Vec<SampleRequest> = [vec![1, 5, 9, 33], vec![3], vec![40, 41, 42]]
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| SampleRequest {
            prompt,
            n: 3,
            params: SamplingParams {
                max_tokens: 9,
                // A common stop token, so completions end at different lengths.
                stop_ids: vec![2, 3, 4, 5, 6],
                seed: 11 + i as u64,
                ..SamplingParams::default()
            },
            constraint: None,
        })
        .collect();
    // Recorded in 4 shards, trained in 3: the states are found by their tokens, not by layout.
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (samples, recorded) = pool(4).install(|| sampler.run_recording(&requests).unwrap());
    let recorded = [recorded.unwrap()];
    let mut sequences = Vec::new();
    for (request, completions) in requests.iter().zip(&samples) {
        for c in completions {
            sequences.push(TokenSequence {
                prompt: request.prompt.clone(),
                completion: c.ids.clone(),
            });
        }
    }
    let lengths: Vec<usize> = sequences.iter().map(|s| s.completion.len()).collect();
    assert!(
        lengths.iter().any(|&l| l != lengths[0]),
        "every completion has the same length: the padding is not exercised"
    );
    let n_tokens: usize = lengths.iter().sum();
    let probe = Tensor::from_vec(
        (0..n_tokens)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect::<Vec<_>>(),
        n_tokens,
        &Device::Cpu,
    )
    .unwrap();
    let loss = |lp: &Tensor, _: &[std::ops::Range<usize>]| (lp * &probe)?.sum_all();
    let computed = pool(3)
        .install(|| checkpointed_backward(&model, &adapter, &sequences, loss))
        .unwrap();
    let reused = pool(3)
        .install(|| checkpointed_backward_with(&model, &adapter, &sequences, &recorded, loss))
        .unwrap();
    assert_eq!(computed.recorded_sequences, 0);
    assert_eq!(reused.recorded_sequences, sequences.len());
    assert!((computed.loss - reused.loss).abs() < 1e-3 * computed.loss.abs().max(1.0));
    for (a, b) in computed.logprobs.iter().zip(&reused.logprobs) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    for (name, var) in adapter.named_vars() {
        let a = &computed.grads[&var.as_tensor().id()];
        let b = &reused.grads[&var.as_tensor().id()];
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-3 * scale.max(1e-3),
            "{name}: {diff:e} of {scale:e}"
        );
    }

    // A sequence that was not sampled is computed, not looked up.
    let mut changed = sequences.clone();
    changed[0].completion[0] = (changed[0].completion[0] + 1) % config.vocab_size as u32;
    let fallback = pool(1)
        .install(|| checkpointed_backward_with(&model, &adapter, &changed, &recorded, loss))
        .unwrap();
    assert_eq!(fallback.recorded_sequences, 0);
}

/// The training pass on weights packed for it (`packed_for_training`: the AVX-512 kernel where
/// the CPU has it) gives the dense weights' log-probs and gradients, to f32 rounding.
#[test]
fn packed_training_weights_give_the_dense_gradient() {
    use rft_model::train::checkpointed_backward;
    let config = ModelConfig::tiny(Architecture::Qwen2);
    let model = CausalLm::random(config.clone(), 17, DType::F32, &Device::Cpu).unwrap();
    let packed = model.packed_for_training().unwrap();
    let uses_kernel =
        rft_model::packed::Kernel::detect() == Some(rft_model::packed::Kernel::Avx512);
    assert_eq!(format!("{packed:?}").contains("PackedWeight("), uses_kernel);
    let adapter = random_adapter(&config, DType::F32, 8);
    let n_tokens: usize = sequences().iter().map(|s| s.completion.len()).sum();
    let probe = Tensor::from_vec(
        (0..n_tokens)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
            .collect::<Vec<_>>(),
        n_tokens,
        &Device::Cpu,
    )
    .unwrap();
    let run = |m: &CausalLm| {
        checkpointed_backward(m, &adapter, &sequences(), |lp, _| (lp * &probe)?.sum_all()).unwrap()
    };
    let (dense, fast) = (run(&model), run(&packed));
    for (x, y) in dense.logprobs.iter().zip(&fast.logprobs) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    for (name, var) in adapter.named_vars() {
        let id = var.as_tensor().id();
        let a: Vec<f32> = dense.grads[&id].flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = fast.grads[&id].flatten_all().unwrap().to_vec1().unwrap();
        let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4 * scale, "{name}: {diff:e} of {scale:e}");
    }
}
