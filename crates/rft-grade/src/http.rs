//! What the judge, embeddings and rollout clients share about calling an HTTP endpoint that
//! may be rate-limited or flaky: one agent configuration, honouring `Retry-After`, jittered
//! exponential backoff, and short excerpts of error bodies.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ureq::config::ConfigBuilder;
use ureq::typestate::AgentScope;

/// The agent settings every client here starts from; callers add their own pool sizes.
pub fn agent_config(timeout: Duration) -> ConfigBuilder<AgentScope> {
    ureq::Agent::config_builder()
        // Statuses are classified by the caller (retry or not), so they must not become errors.
        .http_status_as_error(false)
        // A redirected POST is either refused or turned into a GET; the status in the error
        // details says more than either (usually a base URL missing its `/v1`).
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .user_agent(concat!("openrft/", env!("CARGO_PKG_VERSION")))
}

/// `retry-after-ms` (OpenAI's, precise) or `Retry-After` in seconds; an HTTP-date is ignored
/// and the computed backoff used instead.
pub fn retry_after(headers: &ureq::http::HeaderMap) -> Option<Duration> {
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
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
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
pub fn excerpt(text: &str, chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `"s"` unless `n` is 1, for "3 attempts" / "1 attempt".
pub fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
