//! What the judge and embeddings clients share about calling an HTTP endpoint that may be
//! rate-limited or flaky: honouring `Retry-After`, jittered exponential backoff, and short
//! excerpts of error bodies.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `retry-after-ms` (OpenAI's, precise) or `Retry-After` in seconds; an HTTP-date is ignored
/// and the computed backoff used instead.
pub(crate) fn retry_after(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    let seconds = |name: &str, scale: f64| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Duration::from_secs_f64(v * scale))
    };
    seconds("retry-after-ms", 0.001).or_else(|| seconds("retry-after", 1.0))
}

/// `initial · 2^(attempt-1)`, capped at `max`, times a random factor in [0.5, 1) so that
/// many graders failing together do not retry in lockstep.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let doubled = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(jitter())
}

/// A uniform number in [0.5, 1): a fresh randomly keyed hash of a counter, so no RNG
/// dependency is needed for jitter.
fn jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    0.5 + (bits >> 11) as f64 / (1u64 << 53) as f64 * 0.5
}

/// The first `chars` characters of a trimmed body, with an ellipsis when cut.
pub(crate) fn excerpt(text: &str, chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `"s"` unless `n` is 1, for "3 attempts" / "1 attempt".
pub(crate) fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
