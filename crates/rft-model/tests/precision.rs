//! bf16 against f32 on the CPU: logits, per-token log-probs and LoRA gradients.
//!
//! Three models from the same random f32 weights, for every architecture:
//! - `f32`: the reference;
//! - `bf16 (CPU)`: [`Precision::Bf16`] as the CPU runs it, bf16 weights and f32 activations;
//! - `bf16 (GPU path)`: bf16 weights and bf16 activations, what a GPU runs, here through the
//!   CPU's widening products ([`rft_model::ops::matmul`]).
//!
//! Two kinds of check. The plumbing is exact: the CPU's bf16 model equals an f32 model whose
//! weights were rounded to bf16, to f32 rounding. The precision is bounded: each bf16 model is
//! within a stated tolerance of f32 (the figures each run measures are printed).

use candle_core::{DType, Device, Tensor};
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_model::train::{checkpointed_backward, completion_logprobs, TokenSequence};
use rft_model::{Architecture, CausalLm, KvCache, Logits, ModelConfig, Precision};

fn sequences() -> Vec<TokenSequence> {
    vec![
        TokenSequence {
            prompt: vec![1, 5, 9, 33],
            completion: vec![7, 2, 96, 40, 11],
        },
        TokenSequence {
            prompt: vec![4, 50, 51],
            completion: vec![9, 10, 11, 12],
        },
        TokenSequence {
            prompt: vec![4, 50, 51],
            completion: vec![70, 3],
        },
    ]
}

/// A rank-4 adapter whose B is random too, so every LoRA weight has a gradient worth comparing.
fn adapter(config: &ModelConfig) -> LoraAdapter {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(config, lora, 5, &Device::Cpu).unwrap();
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    for (name, var) in adapter.named_vars() {
        if name.contains("lora_B") {
            let dims = var.as_tensor().dims().to_vec();
            let values: Vec<f32> = (0..var.as_tensor().elem_count())
                .map(|_| (rng.random::<f32>() - 0.5) * 0.6)
                .collect();
            var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    adapter
}

fn logits(model: &CausalLm) -> Vec<f32> {
    let ids = Tensor::new(&[[1u32, 5, 9, 33, 7, 2, 96, 40]], &Device::Cpu).unwrap();
    let positions = Tensor::new(&[[0u32, 1, 2, 3, 4, 5, 6, 7]], &Device::Cpu).unwrap();
    model
        .forward(&ids, &positions, None, &mut KvCache::new(), Logits::All)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn logprobs(model: &CausalLm, adapter: &LoraAdapter) -> Vec<f32> {
    completion_logprobs(model, Some(adapter), &sequences())
        .unwrap()
        .logprobs
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Every LoRA gradient of `Σ wᵢ · log pᵢ` (fixed weights `wᵢ`), through the trainer's
/// checkpointed backward, flattened in the adapter's order.
fn lora_gradient(model: &CausalLm, adapter: &LoraAdapter) -> Vec<f32> {
    let out = checkpointed_backward(model, adapter, &sequences(), |logprobs, _| {
        let n = logprobs.dim(0)?;
        let weights: Vec<f32> = (0..n).map(|i| 1.0 + (i as f32 * 0.7).cos()).collect();
        (logprobs.to_dtype(DType::F32)? * Tensor::from_vec(weights, n, logprobs.device())?)?
            .sum_all()
    })
    .unwrap();
    adapter
        .named_vars()
        .into_iter()
        .flat_map(|(name, var)| {
            out.grads
                .get(&var.as_tensor().id())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// `‖a − b‖ / ‖b‖`.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f32 = b.iter().map(|y| y * y).sum();
    (diff / norm.max(f32::MIN_POSITIVE)).sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The tolerances bf16 is held to against f32 (the tiny models' logits are O(1); a token's
/// log-prob is a difference of such logits).
const MAX_LOGIT_DIFF: f32 = 0.05;
const MAX_LOGPROB_DIFF: f32 = 0.05;
const MAX_GRADIENT_RELATIVE_ERROR: f32 = 0.05;
const MIN_GRADIENT_COSINE: f32 = 0.998;

#[test]
fn bf16_matches_f32_within_tolerance_for_every_architecture() {
    for arch in [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
    ] {
        let config = ModelConfig::tiny(arch);
        let f32_model = CausalLm::random(config.clone(), 3, DType::F32, &Device::Cpu).unwrap();
        let cpu_bf16 = f32_model.with_precision(Precision::Bf16).unwrap();
        assert_eq!(cpu_bf16.weight_dtype(), DType::BF16);
        assert_eq!(cpu_bf16.activation_dtype(), DType::F32);
        let gpu_path = f32_model.with_dtypes(DType::BF16, DType::BF16).unwrap();
        // The f32 model with its weights rounded to bf16: what the CPU's bf16 model computes.
        let rounded = cpu_bf16.with_dtypes(DType::F32, DType::F32).unwrap();
        let adapter = adapter(&config);

        let reference = logits(&f32_model);
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let exact = max_abs_diff(&logits(&cpu_bf16), &logits(&rounded));
        assert!(
            exact < 1e-4,
            "{arch:?}: bf16 weights ≠ rounded f32: {exact}"
        );

        let reference_lp = logprobs(&f32_model, &adapter);
        let reference_grad = lora_gradient(&f32_model, &adapter);
        for (name, model) in [
            ("bf16 (CPU)", cpu_bf16.clone()),
            (
                "bf16 (CPU, packed)",
                cpu_bf16.packed_for_sampling().unwrap(),
            ),
            ("bf16 (GPU path)", gpu_path.clone()),
        ] {
            let logit_diff = max_abs_diff(&logits(&model), &reference);
            let logprob_diff = max_abs_diff(&logprobs(&model, &adapter), &reference_lp);
            eprintln!(
                "{arch:?} {name}: max |Δ logit| {logit_diff:.5} (logits up to {scale:.2}), max |Δ log-prob| {logprob_diff:.5}"
            );
            assert!(
                logit_diff < MAX_LOGIT_DIFF,
                "{arch:?} {name}: logits {logit_diff}"
            );
            assert!(
                logprob_diff < MAX_LOGPROB_DIFF,
                "{arch:?} {name}: log-probs {logprob_diff}"
            );
        }
        for (name, model) in [
            ("bf16 (CPU)", cpu_bf16.clone()),
            (
                "bf16 (CPU, packed)",
                cpu_bf16.packed_for_training().unwrap(),
            ),
            ("bf16 (GPU path)", gpu_path),
        ] {
            let grad = lora_gradient(&model, &adapter);
            let (rel, cos) = (
                relative_error(&grad, &reference_grad),
                cosine(&grad, &reference_grad),
            );
            eprintln!("{arch:?} {name}: LoRA gradient relative error {rel:.5}, cosine {cos:.6}");
            assert!(rel < MAX_GRADIENT_RELATIVE_ERROR, "{arch:?} {name}: {rel}");
            assert!(cos > MIN_GRADIENT_COSINE, "{arch:?} {name}: cosine {cos}");
        }
        // The exact plumbing holds for the gradient too.
        let exact = relative_error(
            &lora_gradient(&cpu_bf16, &adapter),
            &lora_gradient(&rounded, &adapter),
        );
        assert!(
            exact < 1e-4,
            "{arch:?}: bf16 gradient ≠ rounded f32's: {exact}"
        );
    }
}

#[test]
fn bf16_halves_the_frozen_weights_and_keeps_lora_in_f32() {
    let config = ModelConfig::tiny(Architecture::Qwen2);
    let model = CausalLm::random(config.clone(), 3, DType::F32, &Device::Cpu)
        .unwrap()
        .with_precision(Precision::Bf16)
        .unwrap();
    for (name, tensor) in model.named_weights() {
        let expected = if name.ends_with("norm.weight") || name.ends_with(".bias") {
            DType::F32
        } else {
            DType::BF16
        };
        assert_eq!(tensor.dtype(), expected, "{name}");
    }
    let adapter = adapter(&config);
    let grads = checkpointed_backward(&model, &adapter, &sequences(), |lp, _| lp.sum_all())
        .unwrap()
        .grads;
    for (name, var) in adapter.named_vars() {
        assert_eq!(var.as_tensor().dtype(), DType::F32, "{name}");
        assert_eq!(
            grads.get(&var.as_tensor().id()).map(|g| g.dtype()),
            Some(DType::F32),
            "{name}"
        );
    }
    // A merged adapter keeps the weights' type.
    let merged = model.merged(&adapter).unwrap();
    assert_eq!(merged.weight_dtype(), DType::BF16);
    assert!(max_abs_diff(&logits(&merged), &logits(&model)) > 0.0);
}
