//! Events and leases, the two things many workers share through the database, on both
//! databases: event keys make writes idempotent and sequence numbers only grow; a claim hands
//! each object to one worker, a lost lease can neither renew nor write, and the work of a
//! vanished worker goes back to the queue.

mod support;

use std::time::Duration;

use rft_store::{Lease, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Job {
    id: String,
    status: String,
}

fn queue(store: &Store, n: usize) -> Result<(), StoreError> {
    for i in 0..n {
        store.insert_object(
            "job",
            None,
            &Job {
                id: format!("ftjob-{i:03}"),
                status: "queued".into(),
            },
        )?;
    }
    Ok(())
}

fn claim(store: &Store, owner: &str, lease: Duration) -> Result<Option<(Job, Lease)>, StoreError> {
    store.claim::<Job>("job", "queued", owner, lease, |j| {
        j.status = "running".into()
    })
}

#[test]
fn events_are_idempotent_by_key_and_numbered_in_order() -> Result<(), StoreError> {
    support::on_each_backend(|store| {
        store.insert("job", None, &json!({"id": "ftjob-a", "status": "running"}))?;
        let (first, new) =
            store.append_event("ftjob-a", "step-1/metrics", |seq| json!({"n": seq}))?;
        assert!(new);
        assert_eq!(first.body, json!({"n": first.seq}));
        // The same key again (a step retrained after a takeover): the first one stands.
        let (again, new) =
            store.append_event("ftjob-a", "step-1/metrics", |_| json!({"n": "second"}))?;
        assert!(!new);
        assert_eq!(again, first);
        // The same key in another job is another event.
        store.append_event("ftjob-b", "step-1/metrics", |seq| json!({"n": seq}))?;
        let (later, _) =
            store.append_event("ftjob-a", "step-2/metrics", |seq| json!({"n": seq}))?;
        assert!(later.seq > first.seq);
        let seqs: Vec<i64> = store.events("ftjob-a")?.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [first.seq, later.seq]);
        assert_eq!(store.event_count("ftjob-a")?, 2);
        // Deleting the job deletes its events.
        store.delete("ftjob-a")?;
        assert_eq!(store.event_count("ftjob-a")?, 0);
        Ok(())
    })
}

#[test]
fn concurrent_writers_get_unique_increasing_event_numbers() -> Result<(), StoreError> {
    support::on_each_backend(|store| {
        std::thread::scope(|scope| -> Result<(), StoreError> {
            let writers: Vec<_> = (0..4usize)
                .map(|w| {
                    scope.spawn(move || -> Result<(), StoreError> {
                        for i in 0..20 {
                            // Writers 0 and 1 race on the same keys: one write each survives.
                            let key = format!("k-{}-{i}", w.saturating_sub(1));
                            store.append_event("ftjob-x", &key, |seq| json!({"seq": seq}))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for writer in writers {
                writer
                    .join()
                    .map_err(|_| StoreError::Config("writer panicked".into()))??;
            }
            Ok(())
        })?;
        let events = store.events("ftjob-x")?;
        assert_eq!(events.len(), 60, "3 distinct key sets of 20");
        for pair in events.windows(2) {
            assert!(pair[0].seq < pair[1].seq);
        }
        for event in &events {
            assert_eq!(
                event.body["seq"],
                json!(event.seq),
                "each body has its own number"
            );
        }
        Ok(())
    })
}

#[test]
fn each_object_is_claimed_once_however_many_claim_at_once() -> Result<(), StoreError> {
    support::on_each_backend(|store| {
        queue(store, 24)?;
        let claimed = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| -> Result<(), StoreError> {
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let claimed = &claimed;
                    scope.spawn(move || -> Result<(), StoreError> {
                        while let Some((job, lease)) =
                            claim(store, &format!("worker-{w}"), Duration::from_secs(30))?
                        {
                            assert_eq!(job.status, "running");
                            assert_eq!(lease.id, job.id);
                            claimed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(job.id);
                        }
                        Ok(())
                    })
                })
                .collect();
            for worker in workers {
                worker
                    .join()
                    .map_err(|_| StoreError::Config("worker panicked".into()))??;
            }
            Ok(())
        })?;
        let mut claimed = claimed.into_inner().unwrap_or_else(|e| e.into_inner());
        claimed.sort();
        let expected: Vec<String> = (0..24).map(|i| format!("ftjob-{i:03}")).collect();
        assert_eq!(claimed, expected, "every job claimed exactly once");
        assert!(claim(store, "late", Duration::from_secs(30))?.is_none());
        Ok(())
    })
}

#[test]
fn a_lost_lease_cannot_renew_or_write_and_expired_work_is_requeued() -> Result<(), StoreError> {
    support::on_each_backend(|store| {
        queue(store, 1)?;
        let (_, first) = claim(store, "worker-a", Duration::from_millis(300))?
            .ok_or_else(|| StoreError::Config("nothing claimed".into()))?;
        assert!(store.holds(&first)?);
        // A live lease is renewed, and the holder reads the object's current state.
        let body = store
            .renew(&first, Duration::from_millis(300))?
            .ok_or_else(|| StoreError::Config("renew failed".into()))?;
        assert_eq!(body["status"], "running");
        // A running object under a live lease is not requeued.
        let gone = |_: &str| false;
        assert!(store
            .requeue_expired::<Job>("job", "running", &gone, |j| j.status = "queued".into())?
            .is_empty());
        std::thread::sleep(Duration::from_millis(450));
        assert!(!store.holds(&first)?, "expired");
        let moved = store
            .requeue_expired::<Job>("job", "running", &gone, |j| j.status = "queued".into())?;
        assert_eq!(moved, ["ftjob-000"]);
        let (job, second) = claim(store, "worker-b", Duration::from_secs(30))?
            .ok_or_else(|| StoreError::Config("not requeued".into()))?;
        assert_eq!(job.id, "ftjob-000");
        assert!(second.epoch > first.epoch);
        // The first holder comes back: it can neither renew nor write under its old lease.
        assert!(store.renew(&first, Duration::from_secs(30))?.is_none());
        let write = store.modify_object_leased::<Job, ()>(&first, |j| {
            j.status = "succeeded".into();
            Ok(())
        })?;
        assert!(write.is_none());
        // Nor write events: the new holder's steps are the job's.
        assert!(store
            .append_event_leased(&first, "step-1/metrics", |seq| json!({"seq": seq}))?
            .is_none());
        assert!(store
            .append_event_leased(&second, "step-1/metrics", |seq| json!({"seq": seq}))?
            .is_some());
        assert_eq!(store.event_count("ftjob-000")?, 1);
        assert!(!store.release(&first)?);
        assert_eq!(
            store
                .get_object::<Job>("job", "ftjob-000")?
                .map(|j| j.status),
            Some("running".into())
        );
        // The new holder can, and releasing makes the object claimable again at once.
        let write = store.modify_object_leased::<Job, ()>(&second, |j| {
            j.status = "queued".into();
            Ok(())
        })?;
        assert!(matches!(write, Some(Ok(_))));
        assert!(store.release(&second)?);
        let (_, third) = claim(store, "worker-c", Duration::from_secs(30))?
            .ok_or_else(|| StoreError::Config("not claimable after release".into()))?;
        assert!(third.epoch > second.epoch);
        // A holder its host says has stopped loses the work without waiting for the expiry.
        let stopped = |owner: &str| owner == "worker-c";
        let moved = store
            .requeue_expired::<Job>("job", "running", &stopped, |j| j.status = "queued".into())?;
        assert_eq!(moved, ["ftjob-000"]);
        Ok(())
    })
}

#[test]
fn a_queued_object_under_a_live_lease_waits_for_its_holder() -> Result<(), StoreError> {
    // Paused and resumed while its worker still finishes the step: the job is queued again,
    // but nobody else may start it until that worker lets go.
    support::on_each_backend(|store| {
        queue(store, 1)?;
        let (_, lease) = claim(store, "worker-a", Duration::from_secs(30))?
            .ok_or_else(|| StoreError::Config("nothing claimed".into()))?;
        store.modify_object::<Job, ()>("ftjob-000", |j| {
            j.status = "queued".into();
            Ok(())
        })?;
        assert!(claim(store, "worker-b", Duration::from_secs(30))?.is_none());
        store.release(&lease)?;
        assert!(claim(store, "worker-b", Duration::from_secs(30))?.is_some());
        Ok(())
    })
}

#[test]
fn an_unreachable_database_is_unavailable_and_never_shows_the_password() {
    let dir = tempfile::tempdir().map_err(|e| e.to_string());
    let Ok(dir) = dir else { return };
    // A closed loopback port: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    let url = format!("postgres://rft:hunter2secret@127.0.0.1:{port}/rft");
    let error = Store::connect(Some(&url), dir.path()).err();
    let Some(error) = error else {
        panic!("connected to a closed port");
    };
    assert!(error.is_unavailable(), "{error}");
    let text = error.to_string();
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    // A URL that is not one says which forms are.
    let error = Store::connect(Some("mysql://x@y/z"), dir.path()).err();
    assert!(matches!(error, Some(StoreError::Config(ref m)) if m.contains("postgres://")));
}
