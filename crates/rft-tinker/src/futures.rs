//! The futures table: every mutating Tinker call answers `{request_id}` at once and its result
//! is fetched with `POST /api/v1/retrieve_future`, which long-polls.
//!
//! Bounded per caller: each API key holds at most [`MAX_FUTURES_PER_OWNER`] futures that are
//! pending or finished and not yet fetched, so one client filling its quota leaves every other
//! key its own (429 for that key alone). A fetched result stops counting and is kept
//! [`FETCHED_GRACE`] (the SDK fetches again after a dropped connection), then freed, and at
//! most as many again per key; a result never fetched is freed [`FUTURE_TTL`] after it
//! finished. A future belongs to the key that
//! created it (another key gets 404), and to the training model it runs on, if any: closing
//! the model fails its pending futures at once ([`Futures::fail_model`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::TinkerError;
use crate::Owner;

/// Most unfetched futures per API key.
pub const MAX_FUTURES_PER_OWNER: usize = 1024;

/// Most entries held for all keys together (unfetched ones and fetched ones in their grace
/// period): the table's memory bound whatever the number of keys.
pub const MAX_FUTURES_TOTAL: usize = 65_536;

/// How long a finished, unfetched future's result is kept.
pub const FUTURE_TTL: Duration = Duration::from_secs(15 * 60);

/// How long a fetched result stays for a second fetch.
pub const FETCHED_GRACE: Duration = Duration::from_secs(60);

/// How a future ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A JSON result.
    Json(serde_json::Value),
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
    /// A typed JSON result.
    pub fn json(value: &impl serde::Serialize) -> Outcome {
        match serde_json::to_value(value) {
            Ok(value) => Outcome::Json(value),
            Err(e) => Outcome::server(format!("cannot encode the result: {e}")),
        }
    }

    /// A failure the request caused.
    pub fn user(error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            error: rft_types::paths::redact_paths(&error.into()),
            category: "user",
        }
    }

    /// A failure of the server.
    pub fn server(error: impl Into<String>) -> Outcome {
        let error = error.into();
        tracing::error!("tinker request failed: {error}");
        Outcome::Failed {
            error: rft_types::paths::redact_paths(&error),
            category: "server",
        }
    }
}

#[derive(Debug)]
struct Entry {
    owner: Owner,
    model: Option<String>,
    outcome: Option<Outcome>,
    finished: Option<Instant>,
    fetched: Option<Instant>,
}

impl Entry {
    fn counts(&self) -> bool {
        self.fetched.is_none()
    }

    fn expired(&self, now: Instant) -> bool {
        match (self.fetched, self.finished) {
            (Some(t), _) => now.duration_since(t) >= FETCHED_GRACE,
            (None, Some(t)) => now.duration_since(t) >= FUTURE_TTL,
            (None, None) => false,
        }
    }
}

/// What [`Futures::get`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Unknown, expired, or another key's.
    Unknown,
    /// Still running or queued.
    Pending,
    /// Finished.
    Done(Outcome),
}

/// Pending and finished futures by request id.
#[derive(Debug)]
pub struct Futures {
    entries: Mutex<HashMap<String, Entry>>,
    per_owner: usize,
}

impl Default for Futures {
    fn default() -> Futures {
        Futures::with_quota(MAX_FUTURES_PER_OWNER)
    }
}

impl Futures {
    /// A table allowing `per_owner` unfetched futures per key.
    pub fn with_quota(per_owner: usize) -> Futures {
        Futures {
            entries: Mutex::new(HashMap::new()),
            per_owner,
        }
    }

    /// Registers a new pending future of `owner`, on `model` if it runs on one; 429 when the
    /// key's quota is full.
    pub fn create(&self, owner: &Owner, model: Option<&str>) -> Result<String, TinkerError> {
        let mut entries = self.lock();
        let now = Instant::now();
        let held = |entries: &HashMap<String, Entry>| {
            entries
                .values()
                .filter(|e| e.owner == *owner && e.counts())
                .count()
        };
        // Expired entries go whenever the table has grown past a few quotas' worth, so
        // fetched results of a client within its quota are freed too.
        if entries.len() >= 4 * self.per_owner {
            entries.retain(|_, e| !e.expired(now));
        }
        if entries.len() >= MAX_FUTURES_TOTAL {
            return Err(TinkerError::Busy(format!(
                "{MAX_FUTURES_TOTAL} requests are held for all keys together; retry shortly"
            )));
        }
        // A key's fetched results in their grace period are bounded too (by a second quota),
        // so fetching fast cannot fill the table for everyone: past it, that key's fetched
        // results go at once.
        let owned = entries.values().filter(|e| e.owner == *owner).count();
        if owned >= 2 * self.per_owner {
            entries.retain(|_, e| e.owner != *owner || e.counts());
        }
        if held(&entries) >= self.per_owner {
            entries.retain(|_, e| !e.expired(now));
            if held(&entries) >= self.per_owner {
                return Err(TinkerError::Busy(format!(
                    "this API key has {} requests pending or unfetched; fetch results with retrieve_future or wait",
                    self.per_owner
                )));
            }
        }
        let id = rft_types::ids::new_id("req_");
        entries.insert(
            id.clone(),
            Entry {
                owner: owner.clone(),
                model: model.map(str::to_owned),
                outcome: None,
                finished: None,
                fetched: None,
            },
        );
        Ok(id)
    }

    /// Records a result; a future that already ended (failed when its model closed) keeps its
    /// first outcome.
    pub fn complete(&self, id: &str, outcome: Outcome) {
        if let Some(entry) = self.lock().get_mut(id) {
            if entry.outcome.is_none() {
                entry.outcome = Some(outcome);
                entry.finished = Some(Instant::now());
            }
        }
    }

    /// Drops a future the client will never hear of (its call failed after the future was
    /// made), so it does not hold a place in the key's quota.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Fails every pending future of a model that was closed, but `running`, the request its
    /// thread is in the middle of (which ends with its own result).
    pub fn fail_model(&self, model_id: &str, why: &str, running: Option<&str>) {
        let now = Instant::now();
        for (id, entry) in self.lock().iter_mut() {
            if entry.outcome.is_none()
                && entry.model.as_deref() == Some(model_id)
                && Some(id.as_str()) != running
            {
                entry.outcome = Some(Outcome::user(why));
                entry.finished = Some(now);
            }
        }
    }

    /// Looks a future up for `owner`; a finished one is marked fetched (it stops counting
    /// against the quota and is freed after [`FETCHED_GRACE`]).
    pub fn get(&self, owner: &Owner, id: &str) -> Lookup {
        let mut entries = self.lock();
        let now = Instant::now();
        let Some(entry) = entries.get_mut(id).filter(|e| e.owner == *owner) else {
            return Lookup::Unknown;
        };
        if entry.expired(now) {
            entries.remove(id);
            return Lookup::Unknown;
        }
        match &entry.outcome {
            None => Lookup::Pending,
            Some(outcome) => {
                let outcome = outcome.clone();
                entry.fetched.get_or_insert(now);
                Lookup::Done(outcome)
            }
        }
    }

    /// Entries held (pending, unfetched or in their grace period).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn each_key_has_its_own_quota_and_fetching_frees_it() {
        let futures = Futures::with_quota(2);
        let (alice, bob) = (Owner::of_key("alice"), Owner::of_key("bob"));
        let a = futures.create(&alice, None).unwrap();
        let b = futures.create(&alice, Some("m")).unwrap();
        // Alice is full; Bob is not.
        assert!(futures.create(&alice, None).is_err());
        let c = futures.create(&bob, None).unwrap();
        // Another key's future is unknown to Bob.
        assert_eq!(futures.get(&bob, &a), Lookup::Unknown);
        assert_eq!(futures.get(&alice, &a), Lookup::Pending);
        futures.complete(&a, Outcome::Json(Value::Null));
        assert_eq!(
            futures.get(&alice, &a),
            Lookup::Done(Outcome::Json(Value::Null))
        );
        // Fetched: it no longer counts, and can be fetched again for a while.
        futures.create(&alice, None).unwrap();
        assert_eq!(
            futures.get(&alice, &a),
            Lookup::Done(Outcome::Json(Value::Null))
        );
        // Closing model "m" fails its pending future; a later result does not replace it.
        futures.fail_model("m", "the session was closed", None);
        futures.complete(&b, Outcome::Json(Value::Bool(true)));
        assert!(matches!(
            futures.get(&alice, &b),
            Lookup::Done(Outcome::Failed {
                category: "user",
                ..
            })
        ));
        assert_eq!(futures.get(&bob, &c), Lookup::Pending);
        assert_eq!(futures.get(&bob, "req_unknown"), Lookup::Unknown);
    }

    #[test]
    fn fetching_fast_cannot_fill_the_table() {
        let futures = Futures::with_quota(4);
        let alice = Owner::of_key("alice");
        for _ in 0..100 {
            let id = futures.create(&alice, None).unwrap();
            futures.complete(&id, Outcome::Json(Value::Null));
            assert!(matches!(futures.get(&alice, &id), Lookup::Done(_)));
        }
        // Alice's fetched results in their grace period stay within twice her quota.
        assert!(futures.len() <= 8, "{}", futures.len());
    }
}
