//! Object ids: a prefix and random hex digits, the one rule every API's ids follow.

/// A fresh id: `prefix` + 24 hex digits, unpredictable (std's randomly keyed SipHash over the
/// clock and a counter) so ids cannot be guessed or collide across restarts.
pub fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    let word = |salt: u64| {
        let mut h = state.build_hasher();
        h.write_u128(nanos);
        h.write_u64(count);
        h.write_u64(salt);
        h.finish()
    };
    let (a, b) = (word(1), word(2));
    format!("{prefix}{a:016x}{:08x}", b >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_unique() {
        let a = new_id("req_");
        let b = new_id("req_");
        assert!(a.starts_with("req_") && a.len() == 4 + 24, "{a}");
        assert_ne!(a, b);
    }
}
