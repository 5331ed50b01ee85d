//! The one check of a sampling request, shared by every API that samples (chat completions,
//! Tinker's `asample`, eval runs' `sampling_params`): the ranges of `n`, `max_tokens`, `temperature`, `top_p`,
//! `top_k` and the stops, the `n × max_tokens` cap, and the seeding rule. Each API parses its
//! own wire shape into a [`SamplingAsk`] and maps a [`SamplingFault`] to its own error, so a
//! limit is written once and every surface enforces it.

use crate::sample::SamplingParams;

/// What a server lets one request ask for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingLimits {
    /// Most samples per request.
    pub max_n: usize,
    /// Most new tokens per sample.
    pub max_tokens: usize,
    /// Most new tokens over all samples of a request (`n × max_tokens`).
    pub max_total_tokens: usize,
    /// Highest temperature.
    pub max_temperature: f64,
    /// Most stop strings and stop ids together.
    pub max_stops: usize,
    /// Longest stop string, bytes.
    pub max_stop_bytes: usize,
}

impl Default for SamplingLimits {
    fn default() -> SamplingLimits {
        SamplingLimits {
            max_n: 128,
            max_tokens: 1 << 20,
            max_total_tokens: 65_536,
            max_temperature: 2.0,
            max_stops: 64,
            max_stop_bytes: 256,
        }
    }
}

/// A sampling request as the client sent it, before checking.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingAsk {
    /// Samples.
    pub n: usize,
    /// New tokens per sample; `None` takes the API's default, cut to what the total allows.
    pub max_tokens: Option<usize>,
    /// The name the client used for `max_tokens` (`max_tokens`, `max_completion_tokens`,
    /// `sampling_params.max_tokens`), for the error's `param`.
    pub max_tokens_param: &'static str,
    /// Temperature (default 1).
    pub temperature: Option<f64>,
    /// Nucleus mass (default 1).
    pub top_p: Option<f64>,
    /// Top-k; 0 or negative disables it.
    pub top_k: Option<i64>,
    /// Stop strings.
    pub stop_strings: Vec<String>,
    /// Stop token ids.
    pub stop_ids: Vec<u32>,
    /// The client's seed.
    pub seed: Option<u64>,
}

/// What was wrong with a request: the parameter and a message saying what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SamplingFault {
    /// The request field at fault (the API's own name).
    pub param: &'static str,
    /// What is allowed.
    pub message: String,
}

fn fault(param: &'static str, message: String) -> SamplingFault {
    SamplingFault { param, message }
}

/// The seeding rule every API shares: the client's seed when it gave one, else a fresh
/// unpredictable one (so two unseeded requests differ).
pub fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    })
}

/// Checks `ask` against `limits` and builds the engine's parameters; an unset `max_tokens`
/// becomes `default_max_tokens` cut to the total cap.
pub fn check_sampling(
    ask: &SamplingAsk,
    limits: &SamplingLimits,
    default_max_tokens: usize,
) -> Result<SamplingParams, SamplingFault> {
    if !(1..=limits.max_n).contains(&ask.n) {
        return Err(fault("n", format!("n must be from 1 to {}", limits.max_n)));
    }
    let max_tokens = match ask.max_tokens {
        Some(m) => {
            if m == 0 || m > limits.max_tokens {
                return Err(fault(
                    ask.max_tokens_param,
                    format!(
                        "{} must be from 1 to {}",
                        ask.max_tokens_param, limits.max_tokens
                    ),
                ));
            }
            let asked = ask.n.saturating_mul(m);
            if asked > limits.max_total_tokens {
                return Err(fault(
                    ask.max_tokens_param,
                    format!(
                        "n × max_tokens is {} × {m} = {asked} tokens; this server samples at most {} per request. Lower n or max_tokens.",
                        ask.n, limits.max_total_tokens
                    ),
                ));
            }
            m
        }
        None => default_max_tokens
            .min(limits.max_total_tokens / ask.n)
            .clamp(1, limits.max_tokens),
    };
    let temperature = ask.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=limits.max_temperature).contains(&temperature)) {
        return Err(fault(
            "temperature",
            format!(
                "temperature must be a number from 0 to {}",
                limits.max_temperature
            ),
        ));
    }
    let top_p = ask.top_p.unwrap_or(1.0);
    if !(top_p.is_finite() && (0.0..=1.0).contains(&top_p)) {
        return Err(fault("top_p", "top_p must be a number from 0 to 1".into()));
    }
    if ask.stop_strings.len() + ask.stop_ids.len() > limits.max_stops
        || ask
            .stop_strings
            .iter()
            .any(|s| s.is_empty() || s.len() > limits.max_stop_bytes)
    {
        return Err(fault(
            "stop",
            format!(
                "at most {} stops, each string 1 to {} bytes",
                limits.max_stops, limits.max_stop_bytes
            ),
        ));
    }
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k: ask.top_k.and_then(|k| usize::try_from(k).ok()).unwrap_or(0),
        max_tokens,
        stop_ids: ask.stop_ids.clone(),
        stop_strings: ask.stop_strings.clone(),
        seed: seed_or_random(ask.seed),
        cancel: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(n: usize, max_tokens: Option<usize>) -> SamplingAsk {
        SamplingAsk {
            n,
            max_tokens,
            max_tokens_param: "max_tokens",
            ..SamplingAsk::default()
        }
    }

    #[test]
    fn the_total_is_capped_and_the_default_cut_to_it() {
        let limits = SamplingLimits::default();
        let refused = check_sampling(&ask(128, Some(4096)), &limits, 512).unwrap_err();
        assert_eq!(refused.param, "max_tokens");
        assert!(refused.message.contains("65536"), "{refused}");
        let params = check_sampling(&ask(128, None), &limits, 4096).unwrap();
        assert_eq!(params.max_tokens, 512);
        assert!(check_sampling(&ask(0, None), &limits, 16).is_err());
        assert!(check_sampling(&ask(129, None), &limits, 16).is_err());
    }

    #[test]
    fn ranges_and_stops_are_checked_and_seeds_kept() {
        let limits = SamplingLimits::default();
        let mut bad = ask(1, Some(8));
        bad.temperature = Some(f64::NAN);
        assert_eq!(
            check_sampling(&bad, &limits, 8).unwrap_err().param,
            "temperature"
        );
        let mut bad = ask(1, Some(8));
        bad.top_p = Some(1.5);
        assert_eq!(check_sampling(&bad, &limits, 8).unwrap_err().param, "top_p");
        let mut bad = ask(1, Some(8));
        bad.stop_strings = vec![String::new()];
        assert_eq!(check_sampling(&bad, &limits, 8).unwrap_err().param, "stop");
        let mut seeded = ask(1, Some(8));
        seeded.seed = Some(7);
        assert_eq!(check_sampling(&seeded, &limits, 8).unwrap().seed, 7);
        assert_ne!(seed_or_random(None), seed_or_random(None));
    }
}
