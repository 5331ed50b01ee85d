//! Batched sampling: many prompts of different lengths decode together exactly as they would
//! alone; seeds reproduce; sampled log-probs equal the training path's; stop strings, EOS and
//! structured outputs on the default model.

use candle_core::{DType, Device};
use rft_model::constrain::ResponseFormat;
use rft_model::engine::Engine;
use rft_model::lora::{LoraAdapter, LoraConfig};
use rft_model::sample::{FinishReason, SampleRequest, Sampler, SamplingParams};
use rft_model::train::{completion_logprobs, TokenSequence};
use rft_model::{hub, Architecture, CausalLm, ModelConfig};

fn tiny() -> (CausalLm, LoraAdapter) {
    let config = ModelConfig::tiny(Architecture::Qwen2);
    let model = CausalLm::random(config.clone(), 21, DType::F32, &Device::Cpu).unwrap();
    let adapter = LoraAdapter::new(&config, LoraConfig::default(), 4, &Device::Cpu).unwrap();
    // Move B off zero so the adapter matters.
    for (name, var) in adapter.named_vars() {
        if name.contains("lora_B") {
            let t = (var.as_tensor().ones_like().unwrap() * 0.01).unwrap();
            var.set(&t).unwrap();
        }
    }
    (model, adapter)
}

fn request(prompt: Vec<u32>, n: usize, temperature: f64, seed: u64) -> SampleRequest {
    SampleRequest {
        prompt,
        n,
        params: SamplingParams {
            temperature,
            max_tokens: 12,
            stop_ids: vec![3],
            seed,
            ..SamplingParams::default()
        },
        constraint: None,
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 6, 7, 8, 9, 10, 11],
        vec![40],
        vec![12, 90, 33],
        vec![1, 2, 4, 8, 16, 32, 64, 96, 2, 4, 8],
    ]
}

#[test]
fn a_batch_decodes_exactly_as_each_prompt_alone() {
    let (model, adapter) = tiny();
    let sampler = Sampler {
        model: &model,
        adapter: Some(&adapter),
        tokenizer: None,
    };
    for temperature in [0.0, 1.0] {
        let requests: Vec<SampleRequest> = prompts()
            .into_iter()
            .enumerate()
            .map(|(i, p)| request(p, 3, temperature, 100 + i as u64))
            .collect();
        let together = sampler.run(&requests).unwrap();
        for (request, batched) in requests.iter().zip(&together) {
            let alone = sampler
                .run(std::slice::from_ref(request))
                .unwrap()
                .pop()
                .unwrap();
            assert_eq!(batched.len(), 3);
            for (a, b) in alone.iter().zip(batched) {
                assert_eq!(a.ids, b.ids, "temperature {temperature}");
                assert_eq!(a.finish_reason, b.finish_reason);
                for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                    assert!((x - y).abs() < 1e-4, "{x} vs {y}");
                }
            }
        }
        // The same seed gives the same samples; greedy samples of one prompt are all equal.
        assert_eq!(sampler.run(&requests).unwrap(), together);
        if temperature == 0.0 {
            assert!(together.iter().all(|c| c.iter().all(|s| s.ids == c[0].ids)));
        }
    }
}

#[test]
fn sampled_logprobs_equal_the_training_path() {
    let (model, adapter) = tiny();
    let sampler = Sampler {
        model: &model,
        adapter: Some(&adapter),
        tokenizer: None,
    };
    let requests: Vec<SampleRequest> = prompts()
        .into_iter()
        .map(|p| request(p, 4, 1.0, 7))
        .collect();
    let results = sampler.run(&requests).unwrap();
    let mut sequences = Vec::new();
    let mut recorded = Vec::new();
    for (request, completions) in requests.iter().zip(&results) {
        for c in completions {
            assert!(!c.ids.is_empty());
            assert!(c.ids.len() <= 12);
            assert_eq!(
                c.finish_reason == FinishReason::Stop,
                c.ids.last() == Some(&3)
            );
            sequences.push(TokenSequence {
                prompt: request.prompt.clone(),
                completion: c.ids.clone(),
            });
            recorded.extend(c.logprobs.iter().copied());
        }
    }
    let trained: Vec<f32> = completion_logprobs(&model, Some(&adapter), &sequences)
        .unwrap()
        .logprobs
        .to_vec1()
        .unwrap();
    assert_eq!(trained.len(), recorded.len());
    let worst = trained
        .iter()
        .zip(&recorded)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "max |sampled - training| = {worst}");
}

#[test]
fn max_tokens_zero_and_n_zero_return_empty() {
    let (model, _) = tiny();
    let sampler = Sampler {
        model: &model,
        adapter: None,
        tokenizer: None,
    };
    let mut zero_tokens = request(vec![1, 2], 2, 1.0, 0);
    zero_tokens.params.max_tokens = 0;
    let out = sampler
        .run(&[zero_tokens, request(vec![4], 0, 1.0, 0)])
        .unwrap();
    assert_eq!(out[0].len(), 2);
    assert!(out[0][0].ids.is_empty());
    assert!(out[1].is_empty());
    let err = sampler.run(&[request(vec![], 1, 1.0, 0)]).unwrap_err();
    assert!(err.to_string().contains("empty prompt"), "{err}");
}

fn default_engine() -> Option<Engine> {
    let slow = std::env::var("RFT_SLOW_TESTS").as_deref() == Ok("1");
    if !slow && !hub::SMOLLM2_135M_INSTRUCT.is_present() {
        eprintln!("skipping: the default model is not fetched (RFT_SLOW_TESTS=1 fetches it)");
        return None;
    }
    Some(Engine::load(hub::SMOLLM2_135M_INSTRUCT.name, &Device::Cpu).unwrap())
}

#[test]
fn default_model_stop_strings_structured_outputs_and_logprob_parity() {
    let Some(engine) = default_engine() else {
        return;
    };
    let messages = [
        serde_json::json!({"role": "user", "content": "Count from 1 to 20, one number per line."}),
    ];
    let prompt = engine.chat_prompt(&messages, None).unwrap();
    // Stop strings cut the text before the stop.
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 64,
        stop_strings: vec!["5".into()],
        ..SamplingParams::default()
    };
    let request = engine.request(prompt.clone(), 1, params, None).unwrap();
    let out = engine.sampler().run(&[request]).unwrap().pop().unwrap();
    let text = out[0].text.clone().unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Stop, "{text:?}");
    assert!(!text.contains('5') && text.contains('4'), "{text:?}");

    // Structured outputs always parse and follow the schema.
    let format = ResponseFormat::from_value(&serde_json::json!({
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": true, "schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "population": {"type": "integer"},
                "capital": {"type": "boolean"}
            },
            "required": ["city", "population", "capital"],
            "additionalProperties": false
        }}
    }))
    .unwrap();
    let messages = [serde_json::json!({"role": "user", "content": "Name a big city as JSON."})];
    let prompt = engine.chat_prompt(&messages, None).unwrap();
    let params = SamplingParams {
        temperature: 1.0,
        max_tokens: 96,
        seed: 5,
        ..SamplingParams::default()
    };
    let request = engine
        .request(prompt.clone(), 4, params, Some(&format))
        .unwrap();
    let out = engine.sampler().run(&[request]).unwrap().pop().unwrap();
    let mut sequences = Vec::new();
    let mut recorded = Vec::new();
    for c in &out {
        let text = c.text.clone().unwrap();
        assert_eq!(c.finish_reason, FinishReason::Stop, "{text:?}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value["city"].is_string(), "{text}");
        assert!(
            value["population"].is_i64() || value["population"].is_u64(),
            "{text}"
        );
        assert!(value["capital"].is_boolean(), "{text}");
        assert_eq!(value.as_object().unwrap().len(), 3);
        sequences.push(TokenSequence {
            prompt: prompt.clone(),
            completion: c.ids.clone(),
        });
        recorded.extend(c.logprobs.iter().copied());
    }
    // The sampling path and the training path agree on the real model.
    let trained: Vec<f32> = completion_logprobs(&engine.model, None, &sequences)
        .unwrap()
        .logprobs
        .to_vec1()
        .unwrap();
    let worst = trained
        .iter()
        .zip(&recorded)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "max |sampled - training| = {worst}");
}

#[test]
fn a_tiny_model_folder_runs_the_whole_engine() {
    let dir = tempfile::tempdir().unwrap();
    rft_model::tiny::write_tiny_model(dir.path(), Architecture::Llama, 3).unwrap();
    let engine = Engine::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let messages = [serde_json::json!({"role": "user", "content": "Hi there"})];
    let prompt = engine.chat_prompt(&messages, None).unwrap();
    assert_eq!(
        engine.tokenizer.decode(&prompt, false).unwrap(),
        "<|im_start|>user: Hi there<|im_end|><|im_start|>assistant: "
    );
    let params = SamplingParams {
        max_tokens: 10,
        seed: 1,
        ..SamplingParams::default()
    };
    let request = engine.request(prompt, 3, params, None).unwrap();
    let out = engine.sampler().run(&[request]).unwrap().pop().unwrap();
    assert_eq!(out.len(), 3);
    for c in out {
        let text = c.text.unwrap();
        let expected = engine.tokenizer.decode(&c.ids, true).unwrap();
        assert_eq!(text, expected);
    }
}

#[test]
fn a_merged_export_loads_back_with_the_adapters_outputs() {
    use rft_model::Logits;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    rft_model::tiny::write_tiny_model(&base, Architecture::Qwen2, 8).unwrap();
    let engine = Engine::load(base.to_str().unwrap(), &Device::Cpu).unwrap();
    let (_, adapter) = tiny();
    let adapter_dir = dir.path().join("adapter");
    adapter
        .save_peft(&adapter_dir, base.to_str().unwrap())
        .unwrap();
    let adapted = Engine::load(adapter_dir.to_str().unwrap(), &Device::Cpu).unwrap();
    assert!(adapted.adapter.is_some());
    let out = dir.path().join("merged");
    rft_model::export::export_merged(&adapted, &out).unwrap();
    let merged = Engine::load(out.to_str().unwrap(), &Device::Cpu).unwrap();
    let ids = candle_core::Tensor::new(&[[5u32, 9, 30, 2]], &Device::Cpu).unwrap();
    let pos = candle_core::Tensor::new(&[[0u32, 1, 2, 3]], &Device::Cpu).unwrap();
    let logits = |e: &Engine| -> Vec<f32> {
        e.model
            .forward_with(
                &ids,
                &pos,
                None,
                &mut rft_model::KvCache::new(),
                Logits::All,
                e.adapter.as_ref(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b, c) = (logits(&adapted), logits(&merged), logits(&engine));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "{diff}");
    assert!(
        a.iter().zip(&c).any(|(x, y)| (x - y).abs() > 1e-3),
        "the adapter changed nothing"
    );
    // The chat template and tokenizer came along.
    let messages = [serde_json::json!({"role": "user", "content": "Hi"})];
    assert_eq!(
        merged.chat_prompt(&messages, None).unwrap(),
        engine.chat_prompt(&messages, None).unwrap()
    );
}

#[test]
fn streamed_text_adds_up_to_the_final_text_and_never_leaks_a_stop_string() {
    let dir = tempfile::tempdir().unwrap();
    rft_model::tiny::write_tiny_model(dir.path(), Architecture::Qwen2, 11).unwrap();
    let engine = Engine::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let messages = [serde_json::json!({"role": "user", "content": "Write"})];
    let prompt = engine.chat_prompt(&messages, None).unwrap();
    let stops = vec!["e".to_owned(), "th".to_owned(), "xyz".to_owned()];
    let requests: Vec<SampleRequest> = (0..2)
        .map(|i| {
            let params = SamplingParams {
                max_tokens: 40,
                seed: 7 + i,
                stop_strings: stops.clone(),
                ..SamplingParams::default()
            };
            engine.request(prompt.clone(), 8, params, None).unwrap()
        })
        .collect();
    let mut streamed = vec![vec![String::new(); 8]; 2];
    let mut finished = vec![vec![0; 8]; 2];
    let out = engine
        .sampler()
        .run_streaming(&requests, &mut |event| match event {
            rft_model::sample::SampleEvent::Text {
                request,
                sample,
                text,
            } => {
                assert_eq!(finished[request][sample], 0, "text after the end");
                streamed[request][sample].push_str(text);
            }
            rft_model::sample::SampleEvent::Finished {
                request, sample, ..
            } => finished[request][sample] += 1,
        })
        .unwrap();
    // `run` decodes in shards, one per core: the same draws, log-probs equal to f32 rounding.
    let plain = engine.sampler().run(&requests).unwrap();
    for (a, b) in out.iter().flatten().zip(plain.iter().flatten()) {
        assert_eq!(
            (&a.ids, &a.text, a.finish_reason),
            (&b.ids, &b.text, b.finish_reason),
            "streaming changes nothing in the result"
        );
        for (p, q) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }
    let mut stopped = 0;
    for (r, group) in out.iter().enumerate() {
        for (s, c) in group.iter().enumerate() {
            assert_eq!(finished[r][s], 1);
            let text = c.text.as_deref().unwrap();
            assert_eq!(streamed[r][s], text);
            assert!(stops.iter().all(|stop| !text.contains(stop.as_str())));
            stopped += usize::from(c.finish_reason == FinishReason::Stop);
        }
    }
    assert!(
        stopped > 0,
        "no sample hit a stop string: the test checks nothing"
    );
}

#[test]
fn a_cloned_kv_cache_is_independent_of_its_original() {
    // The cache writes new keys and values in place: a clone must not share its buffers.
    let (model, _) = tiny();
    let step = |cache: &mut rft_model::KvCache, token: u32, position: u32| {
        model
            .forward(
                &candle_core::Tensor::new(&[[token]], &Device::Cpu).unwrap(),
                &candle_core::Tensor::new(&[[position]], &Device::Cpu).unwrap(),
                None,
                cache,
                rft_model::Logits::Last,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let mut original = rft_model::KvCache::new();
    for (i, token) in [5u32, 9, 13].into_iter().enumerate() {
        step(&mut original, token, i as u32);
    }
    let mut copy = original.try_clone().unwrap();
    // Interleaved, so a shared buffer would hand one run the other's key at position 3.
    let copy_3 = step(&mut copy, 20, 3);
    let original_3 = step(&mut original, 30, 3);
    let copy_4 = step(&mut copy, 21, 4);
    let original_4 = step(&mut original, 31, 4);
    let (from_copy, from_original) = ([copy_3, copy_4], [original_3, original_4]);
    // Replaying each history from scratch gives the same logits: neither run saw the other's.
    for (history, got) in [
        ([5u32, 9, 13, 20, 21], &from_copy),
        ([5, 9, 13, 30, 31], &from_original),
    ] {
        let mut fresh = rft_model::KvCache::new();
        let mut last = Vec::new();
        let mut all = Vec::new();
        for (i, &token) in history.iter().enumerate() {
            last = step(&mut fresh, token, i as u32);
            all.push(last.clone());
        }
        assert_eq!(&all[3], &got[0]);
        assert_eq!(&last, &got[1]);
    }
}

#[test]
fn shards_draw_exactly_what_one_batch_draws() {
    // Sampling splits the rows over the cores (`rft_model::parallel`); inside a 4-thread pool
    // it makes 4 shards whatever the machine, cutting requests across shards.
    let (model, adapter) = tiny();
    let sampler = Sampler {
        model: &model,
        adapter: Some(&adapter),
        tokenizer: None,
    };
    let mut requests: Vec<SampleRequest> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| request(p, 2 + i, 1.0, 40 + i as u64))
        .collect();
    requests[1].params.max_tokens = 0;
    let one_batch = sampler.run_streaming(&requests, &mut |_| {}).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let sharded = pool.install(|| {
        assert_eq!(rft_model::parallel::shard_count(&Device::Cpu, 11), 4);
        sampler.run(&requests).unwrap()
    });
    assert_eq!(sharded.len(), one_batch.len());
    for (request, (a, b)) in requests.iter().zip(sharded.iter().zip(&one_batch)) {
        assert_eq!(a.len(), request.n);
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.ids, y.ids);
            assert_eq!(x.finish_reason, y.finish_reason);
            for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
                assert!((p - q).abs() < 1e-4, "{p} vs {q}");
            }
        }
    }
}

#[test]
fn packed_weights_sample_what_dense_weights_sample() {
    let (model, adapter) = tiny();
    let merged = model.merged(&adapter).unwrap();
    let packed = merged.packed_for_sampling().unwrap();
    assert_eq!(
        format!("{packed:?}").contains("PackedWeight("),
        rft_model::packed::available(),
        "the decode kernel is used wherever the CPU has AVX2 and FMA"
    );
    let requests: Vec<SampleRequest> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| request(p, 3, 1.0, 60 + i as u64))
        .collect();
    let run = |m: &CausalLm| {
        Sampler {
            model: m,
            adapter: None,
            tokenizer: None,
        }
        .run_streaming(&requests, &mut |_| {})
        .unwrap()
    };
    let (dense, fast) = (run(&merged), run(&packed));
    for (a, b) in dense.iter().flatten().zip(fast.iter().flatten()) {
        assert_eq!(a.ids, b.ids);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
    // A pass with a trainable adapter may use the packed weights too: the same values.
    let seq = [TokenSequence {
        prompt: vec![5, 6, 7],
        completion: vec![8, 9],
    }];
    let lp = |m: &CausalLm| -> Vec<f32> {
        completion_logprobs(m, Some(&adapter), &seq)
            .unwrap()
            .logprobs
            .to_vec1()
            .unwrap()
    };
    for (x, y) in lp(&merged).iter().zip(&lp(&packed)) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn a_cancelled_request_stops_decoding_and_the_others_go_on() {
    let (model, adapter) = tiny();
    let sampler = Sampler {
        model: &model,
        adapter: Some(&adapter),
        tokenizer: None,
    };
    let mut long = request(vec![5, 6, 7], 2, 1.0, 9);
    long.params.max_tokens = 64;
    long.params.stop_ids.clear();
    let mut gone = long.clone();
    let cancel = rft_model::sample::Cancel::default();
    gone.params.cancel = Some(cancel.clone());
    // The client left before the first decode step: the flag is up when sampling starts.
    cancel.cancel();
    let out = sampler.run(&[long, gone]).unwrap();
    assert!(
        out[0].iter().all(|c| c.ids.len() == 64),
        "the other request was cut short"
    );
    assert!(
        out[1].iter().all(|c| c.ids.is_empty()),
        "a cancelled request kept decoding: {:?}",
        out[1].iter().map(|c| c.ids.len()).collect::<Vec<_>>()
    );
}
