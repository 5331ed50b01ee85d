//! The futures table: every mutating Tinker call answers `{request_id}` at once and its result
//! is fetched with `POST /api/v1/retrieve_future`, which long-polls.
//!
//! Bounded: at most [`MAX_FUTURES`] entries; a finished one is kept [`FUTURE_TTL`] after it
//! finished (the SDK may fetch a result again after a dropped connection) and then dropped,
//! so a client that never fetches cannot grow memory without bound. Past the cap, new calls
//! get 429.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::ApiError;

/// Most futures held at once, pending and finished.
pub(crate) const MAX_FUTURES: usize = 4096;

/// How long a finished future's result is kept.
pub(crate) const FUTURE_TTL: Duration = Duration::from_secs(15 * 60);

/// How a future ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// A JSON result.
    Json(Value),
    /// A protobuf result (`ForwardBackwardOutput`, `SampleResponse`).
    Proto(Vec<u8>),
    /// A failure: Tinker's `{error, category}` (`user` or `server`).
    Failed {
        /// What went wrong.
        error: String,
        /// Whose fault.
        category: &'static str,
    },
}

impl Outcome {
    /// A failure the request caused.
    pub(crate) fn user(error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: crate::error::redact_paths(&error.into()),
            category: "user",
        }
    }

    /// A failure of the server.
    pub(crate) fn server(error: impl Into<String>) -> Outcome {
        let error = error.into();
        tracing::error!("tinker request failed: {error}");
        Outcome::Failed {
            error: crate::error::redact_paths(&error),
            category: "server",
        }
    }
}

#[derive(Debug)]
struct Entry {
    outcome: Option<Outcome>,
    finished: Option<Instant>,
}

/// Pending and finished futures by request id.
#[derive(Debug, Default)]
pub(crate) struct Futures {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Futures {
    /// Registers a new pending future; 429 when the table is full of live entries.
    pub(crate) fn create(&self) -> Result<String, ApiError> {
        self.create_with(MAX_FUTURES, FUTURE_TTL)
    }

    fn create_with(&self, max: usize, ttl: Duration) -> Result<String, ApiError> {
        let mut entries = self.lock();
        if entries.len() >= max {
            let now = Instant::now();
            entries.retain(|_, e| e.finished.is_none_or(|t| now.duration_since(t) < ttl));
        }
        if entries.len() >= max {
            return Err(ApiError::busy(format!(
                "{max} requests are pending or unfetched; fetch results with retrieve_future or wait"
            )));
        }
        let id = crate::new_id("req_");
        entries.insert(
            id.clone(),
            Entry {
                outcome: None,
                finished: None,
            },
        );
        Ok(id)
    }

    /// Records a result.
    pub(crate) fn complete(&self, id: &str, outcome: Outcome) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.outcome = Some(outcome);
            entry.finished = Some(Instant::now());
        }
    }

    /// `None`: unknown (or expired); `Some(None)`: pending; `Some(Some(_))`: finished.
    pub(crate) fn get(&self, id: &str) -> Option<Option<Outcome>> {
        let mut entries = self.lock();
        let entry = entries.get(id)?;
        if entry.finished.is_some_and(|t| t.elapsed() >= FUTURE_TTL) {
            entries.remove(id);
            return None;
        }
        Some(entry.outcome.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_bounded_and_finished_entries_expire() {
        let futures = Futures::default();
        let a = futures.create_with(2, Duration::ZERO).unwrap();
        let b = futures.create_with(2, Duration::ZERO).unwrap();
        // Two pending: full.
        assert!(futures.create_with(2, Duration::ZERO).is_err());
        assert!(matches!(futures.get(&a), Some(None)));
        futures.complete(&a, Outcome::Json(Value::Null));
        // A finished entry past its time to live makes room.
        let c = futures.create_with(2, Duration::ZERO).unwrap();
        assert!(futures.get(&a).is_none());
        assert!(matches!(futures.get(&b), Some(None)));
        assert!(matches!(futures.get(&c), Some(None)));
        assert!(futures.get("req_unknown").is_none());
    }
}
