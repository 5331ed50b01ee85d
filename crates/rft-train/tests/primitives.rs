//! The training primitives on their own: on-policy PPO is exactly REINFORCE; gradients
//! accumulate across micro-batches; optimizer state round-trips through save/load.

use candle_core::Device;
use rft_model::engine::Engine;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_model::sample::SamplingParams;
use rft_model::Architecture;
use rft_train::loss::LossFn;
use rft_train::primitives::{AdamParams, Datum, TrainingClient};

fn client(dir: &std::path::Path) -> TrainingClient {
    rft_model::tiny::write_tiny_model(dir, Architecture::Llama, 9).unwrap();
    let engine = Engine::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let lora = LoraConfig {
        rank: 4,
        ..LoraConfig::default()
    };
    let adapter = LoraAdapter::new(engine.model.config(), lora, 1, &Device::Cpu).unwrap();
    TrainingClient::new(engine, adapter)
}

/// Samples a small batch and turns it into datums with made-up advantages.
fn batch(client: &TrainingClient) -> Vec<Datum> {
    let engine = client.engine();
    let prompt = engine
        .chat_prompt(
            &[serde_json::json!({"role": "user", "content": "abc"})],
            None,
        )
        .unwrap();
    let params = SamplingParams {
        max_tokens: 8,
        seed: 4,
        ..SamplingParams::default()
    };
    let request = engine.request(prompt.clone(), 4, params, None).unwrap();
    let completions = client.sample(&[request]).unwrap().pop().unwrap();
    completions
        .into_iter()
        .enumerate()
        .map(|(i, c)| Datum {
            prompt: prompt.clone(),
            advantages: vec![i as f32 - 1.5; c.ids.len()],
            sampling_logprobs: c.logprobs.clone(),
            completion: c.ids,
        })
        .collect()
}

fn weights(client: &TrainingClient) -> Vec<Vec<f32>> {
    client
        .adapter()
        .vars()
        .iter()
        .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn on_policy_ppo_is_exactly_reinforce() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ppo = client(&tmp.path().join("a"));
    let mut reinforce = client(&tmp.path().join("b"));
    let data = batch(&ppo);
    let adam = AdamParams {
        learning_rate: 1e-2,
        grad_clip_norm: 0.0,
        ..AdamParams::default()
    };
    // Sampling log-probs are the current policy's: every ratio is 1, nothing is clipped.
    let out = ppo
        .forward_backward(
            &data,
            &LossFn::Ppo {
                epsilon_low: 0.2,
                epsilon_high: 0.28,
            },
            None,
        )
        .unwrap();
    assert!((out.ratio_mean - 1.0).abs() < 1e-4, "{}", out.ratio_mean);
    assert_eq!(out.clip_fraction, 0.0);
    let g_ppo = ppo.optim_step(&adam).unwrap().grad_norm;
    reinforce
        .forward_backward(&data, &LossFn::CrossEntropy, None)
        .unwrap();
    let g_ce = reinforce.optim_step(&adam).unwrap().grad_norm;
    assert!(
        (g_ppo - g_ce).abs() < 1e-4 * g_ce.max(1.0),
        "{g_ppo} vs {g_ce}"
    );
    let diff = max_diff(&weights(&ppo), &weights(&reinforce));
    assert!(diff < 1e-6, "weights differ by {diff}");
    assert!(g_ppo > 0.0);
}

#[test]
fn micro_batches_accumulate_to_the_full_batch_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let mut whole = client(&tmp.path().join("a"));
    let mut split = client(&tmp.path().join("b"));
    let data = batch(&whole);
    let adam = AdamParams::default();
    whole
        .forward_backward(&data, &LossFn::ImportanceSampling, None)
        .unwrap();
    let g_whole = whole.optim_step(&adam).unwrap().grad_norm;
    split.max_tokens_per_pass = 1; // one sequence per pass
    split
        .forward_backward(&data[..2], &LossFn::ImportanceSampling, None)
        .unwrap();
    split
        .forward_backward(&data[2..], &LossFn::ImportanceSampling, None)
        .unwrap();
    let g_split = split.optim_step(&adam).unwrap().grad_norm;
    assert!(
        (g_whole - g_split).abs() < 1e-5 * g_whole,
        "{g_whole} vs {g_split}"
    );
    assert!(max_diff(&weights(&whole), &weights(&split)) < 1e-6);
}

#[test]
fn state_round_trips_and_training_continues_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = client(&tmp.path().join("a"));
    let data = batch(&a);
    let adam = AdamParams::default();
    a.forward_backward(&data, &LossFn::CrossEntropy, None)
        .unwrap();
    a.optim_step(&adam).unwrap();
    let state = tmp.path().join("state");
    a.save_state(&state).unwrap();
    let mut b = client(&tmp.path().join("b"));
    b.load_state(&state).unwrap();
    assert_eq!(b.step(), 1);
    assert_eq!(weights(&a), weights(&b));
    for c in [&mut a, &mut b] {
        c.forward_backward(&data, &LossFn::CrossEntropy, None)
            .unwrap();
        c.optim_step(&adam).unwrap();
    }
    assert_eq!(weights(&a), weights(&b), "the moments did not round-trip");
    // The sampler-ready adapter is a PEFT folder.
    let served = tmp.path().join("served");
    a.save_weights_for_sampler(&served).unwrap();
    assert!(served.join("adapter_config.json").is_file());
}

#[test]
fn mismatched_datums_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = client(&tmp.path().join("a"));
    let mut data = batch(&c);
    data[0].advantages.pop();
    let err = c
        .forward_backward(&data, &LossFn::CrossEntropy, None)
        .unwrap_err();
    assert!(err.to_string().contains("datum 0"), "{err}");
}

#[test]
fn rollout_states_are_reused_only_until_the_weights_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mut trained = client(&tmp.path().join("a"));
    let mut recomputed = client(&tmp.path().join("b"));
    recomputed.max_recorded_bytes = 0;
    let data = batch(&trained);
    assert!(trained.recorded_bytes() > 0);
    assert_eq!(batch(&recomputed), data, "same seed, same samples");
    assert_eq!(recomputed.recorded_bytes(), 0);
    let loss = LossFn::ImportanceSampling;
    let reused = trained.forward_backward(&data, &loss, None).unwrap();
    let fresh = recomputed.forward_backward(&data, &loss, None).unwrap();
    assert_eq!(reused.recorded_sequences, data.len());
    assert_eq!(fresh.recorded_sequences, 0);
    assert!((reused.loss - fresh.loss).abs() < 1e-4 * fresh.loss.abs().max(1.0));
    let adam = AdamParams::default();
    let g_reused = trained.optim_step(&adam).unwrap().grad_norm;
    let g_fresh = recomputed.optim_step(&adam).unwrap().grad_norm;
    assert!(
        (g_reused - g_fresh).abs() < 1e-4 * g_fresh,
        "{g_reused} vs {g_fresh}"
    );
    // The step changed the adapter: the states describe the old weights and are gone.
    assert_eq!(trained.recorded_bytes(), 0);
    let again = trained.forward_backward(&data, &loss, None).unwrap();
    assert_eq!(again.recorded_sequences, 0);
}

/// A client over a bf16 copy of the tiny model (or the f32 one) whose adapter's update is far
/// below bf16's resolution of the weights: B = 1e-4 everywhere.
fn client_with_small_update(dir: &std::path::Path, bf16: bool) -> TrainingClient {
    let mut client = client(dir);
    let mut engine = client.engine().share();
    if bf16 {
        engine.model = engine
            .model
            .with_precision(rft_model::Precision::Bf16)
            .unwrap();
    }
    let adapter = client.adapter().deep_clone().unwrap();
    for (name, var) in adapter.named_vars() {
        if name.contains("lora_B") {
            let small = (var.as_tensor().ones_like().unwrap() * 1e-4).unwrap();
            var.set(&small).unwrap();
        }
    }
    let max_recorded_bytes = client.max_recorded_bytes;
    client = TrainingClient::new(engine, adapter);
    client.max_recorded_bytes = max_recorded_bytes;
    client
}

#[test]
fn a_bf16_model_samples_its_adapter_as_trained_and_reuses_the_states() {
    let tmp = tempfile::tempdir().unwrap();
    let mut trained = client_with_small_update(&tmp.path().join("a"), true);
    let data = batch(&trained);
    // What the trainer scores for the same tokens through the unmerged adapter (bf16 base, f32
    // LoRA): the sampler's log-probs must be these, not those of the adapter rounded into
    // bf16 weights (which would be the base model's).
    let scored = trained.policy_logprobs(&data).unwrap();
    let sampled: Vec<Vec<f32>> = data.iter().map(|d| d.sampling_logprobs.clone()).collect();
    assert!(
        max_diff(&scored, &sampled) < 1e-4,
        "{}",
        max_diff(&scored, &sampled)
    );
    let base = rft_train::primitives::sequence_logprobs(
        &trained.engine().model,
        None,
        &data
            .iter()
            .map(|d| rft_model::train::TokenSequence {
                prompt: d.prompt.clone(),
                completion: d.completion.clone(),
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        max_diff(&base, &sampled) > 1e-4,
        "the adapter must change the log-probs for this test to mean anything"
    );
    // Its states are the trainer's: reused, and the gradient equals a recomputed one's.
    let mut recomputed = client_with_small_update(&tmp.path().join("b"), true);
    recomputed.max_recorded_bytes = 0;
    assert_eq!(batch(&recomputed), data);
    let loss = LossFn::ImportanceSampling;
    let reused = trained.forward_backward(&data, &loss, None).unwrap();
    let fresh = recomputed.forward_backward(&data, &loss, None).unwrap();
    assert_eq!(reused.recorded_sequences, data.len());
    assert!((reused.loss - fresh.loss).abs() < 1e-4 * fresh.loss.abs().max(1.0));
}

#[test]
fn a_bf16_sampler_for_an_f32_trainer_keeps_its_adapter_and_no_states() {
    let tmp = tempfile::tempdir().unwrap();
    let mut client = client_with_small_update(&tmp.path().join("a"), false);
    client.sampler_precision = Some(rft_model::Precision::Bf16);
    let data = batch(&client);
    assert_eq!(
        client.recorded_bytes(),
        0,
        "a bf16 rollout's states are not the trainer's"
    );
    let out = client
        .forward_backward(&data, &LossFn::ImportanceSampling, None)
        .unwrap();
    assert_eq!(out.recorded_sequences, 0);
    // The sampler's log-probs are the bf16 base's with the f32 adapter: near the trainer's,
    // and not the base model's.
    let scored = client.policy_logprobs(&data).unwrap();
    let sampled: Vec<Vec<f32>> = data.iter().map(|d| d.sampling_logprobs.clone()).collect();
    assert!(
        max_diff(&scored, &sampled) < 0.05,
        "{}",
        max_diff(&scored, &sampled)
    );
}
