//! Sampling completions: `n` samples of one prompt share its prefill, decode as one batch with a
//! KV cache, and return the log-probability of every sampled token.
//!
//! Log-probs are those of the model itself (soft-max of the raw logits, temperature 1), which is
//! what an RL trainer needs for importance ratios; temperature, top-k and top-p only shape the
//! distribution tokens are drawn from. Each sample draws from its own generator seeded by
//! `(seed, sample index)`, so the same seed gives the same completions, batch or not.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{CausalLm, KvCache, Logits};
use crate::ModelError;

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Most new tokens per sample.
    pub max_tokens: usize,
    /// Token ids that end a sample (kept in the output, like OpenAI's `finish_reason: stop`).
    pub stop_ids: Vec<u32>,
    /// Seed of the per-sample generators.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            stop_ids: Vec::new(),
            seed: 0,
        }
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was sampled.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The sampled token ids (including a final stop token, if any).
    pub ids: Vec<u32>,
    /// log p(token) under the model for each sampled token.
    pub logprobs: Vec<f32>,
    /// Why sampling ended.
    pub finish_reason: FinishReason,
}

/// Samples `n` completions of `prompt`.
pub fn sample(
    model: &CausalLm,
    prompt: &[u32],
    n: usize,
    params: &SamplingParams,
) -> Result<Vec<Completion>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Format(
            "cannot sample from an empty prompt".into(),
        ));
    }
    let device = model.device();
    let mut cache = KvCache::new();
    let ids = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), device)?;
    let positions: Vec<u32> = (0..prompt.len() as u32).collect();
    let positions = Tensor::from_vec(positions, (1, prompt.len()), device)?;
    let logits = model.forward(&ids, &positions, None, &mut cache, Logits::Last)?;
    let mut cache = cache.repeat_rows(n)?;
    let mut logits = logits
        .squeeze(1)?
        .broadcast_as((n, model.config().vocab_size))?
        .contiguous()?;
    let mut rngs: Vec<StdRng> = (0..n)
        .map(|idx| {
            StdRng::seed_from_u64(params.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ idx as u64)
        })
        .collect();
    let mut completions: Vec<Completion> = (0..n)
        .map(|_| Completion {
            ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; n];
    let mut position = prompt.len() as u32;
    for _ in 0..params.max_tokens {
        let logits_rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(n);
        for (row, logits_row) in logits_rows.iter().enumerate() {
            if done[row] {
                // Finished rows keep the batch rectangular; what they feed is never read.
                next.push(params.stop_ids.first().copied().unwrap_or(0));
                continue;
            }
            let (token, logprob) = pick(logits_row, params, &mut rngs[row]);
            let completion = &mut completions[row];
            completion.ids.push(token);
            completion.logprobs.push(logprob);
            if params.stop_ids.contains(&token) {
                completion.finish_reason = FinishReason::Stop;
                done[row] = true;
            }
            next.push(token);
        }
        if done.iter().all(|d| *d) || completions.iter().all(|c| c.ids.len() >= params.max_tokens) {
            break;
        }
        let ids = Tensor::from_vec(next, (n, 1), device)?;
        let positions = Tensor::from_vec(vec![position; n], (n, 1), device)?;
        logits = model
            .forward(&ids, &positions, None, &mut cache, Logits::Last)?
            .squeeze(1)?;
        position += 1;
    }
    Ok(completions)
}

/// Draws one token from one row of logits; returns it with its log-prob under the model.
fn pick(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> (u32, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_norm = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let token = if params.temperature <= 0.0 {
        argmax(logits)
    } else {
        draw(logits, params, rng)
    };
    (token, logits[token as usize] - log_norm)
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (idx, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = idx;
        }
    }
    best as u32
}

fn draw(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> u32 {
    let inv_t = 1.0 / params.temperature as f32;
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(idx, &l)| (idx as u32, l * inv_t))
        .collect();
    // Most likely first; ties broken by id so the order never depends on the sort.
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 {
        candidates.truncate(params.top_k);
    }
    let max = candidates[0].1;
    let mut probs: Vec<f32> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (idx, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= params.top_p as f32 {
                keep = idx + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f32 = rng.random();
    for (idx, p) in probs.iter().enumerate() {
        if u < *p {
            return candidates[idx].0;
        }
        u -= p;
    }
    candidates[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_argmax_with_its_logprob() {
        let mut rng = StdRng::seed_from_u64(0);
        let params = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let (token, logprob) = pick(&[0.0, 2.0, 1.0], &params, &mut rng);
        assert_eq!(token, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((logprob - expected).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut rng = StdRng::seed_from_u64(7);
        let params = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            ..SamplingParams::default()
        };
        for _ in 0..20 {
            assert_eq!(draw(&[0.1, 0.3, 0.2], &params, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let mut rng = StdRng::seed_from_u64(1);
        let params = SamplingParams::default();
        let logits = [0f32, (3f32).ln()]; // p = 0.25, 0.75
        let n_ones = (0..4000)
            .filter(|_| draw(&logits, &params, &mut rng) == 1)
            .count();
        assert!((2800..3200).contains(&n_ones), "{n_ones}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let mut rng = StdRng::seed_from_u64(3);
        let params = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::default()
        };
        let logits = [(0.6f32).ln(), (0.3f32).ln(), (0.1f32).ln()];
        for _ in 0..200 {
            assert_eq!(draw(&logits, &params, &mut rng), 0);
        }
    }
}
