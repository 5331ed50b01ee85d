//! The work many processes share through the database: job events (idempotent by key,
//! numbered by one global sequence) and leases (claims with `SKIP LOCKED`, renewals that tell
//! the holder whether it still holds, releases, a sweeper's requeue). See the crate docs.

use std::time::Duration;

use serde_json::Value;

use crate::db::{Cell, Dialect, Tx};
use crate::{first_text, millis, now, status_of, Lease, Store, StoreError, StoredEvent};

/// Objects a claim looks at, oldest first, to find one it can read.
const CLAIM_CANDIDATES: usize = 8;

impl Store {
    /// Appends an event to job `job_id`'s log unless one with the same `key` is there already;
    /// `build` makes its body from the sequence number the database gives it. Returns the
    /// stored event (the earlier one, for a key already written) and whether it is new.
    pub fn append_event(
        &self,
        job_id: &str,
        key: &str,
        build: impl FnOnce(i64) -> Value + Send,
    ) -> Result<(StoredEvent, bool), StoreError> {
        // Without a lease nothing can refuse the write.
        self.append_event_under(None, job_id, key, build)?
            .ok_or_else(|| StoreError::Config("an event write without a lease was refused".into()))
    }

    /// [`Store::append_event`] only while `lease` is this worker's (its owner and epoch: a
    /// worker whose job was requeued or taken over writes nothing more); `None` otherwise.
    pub fn append_event_leased(
        &self,
        lease: &Lease,
        key: &str,
        build: impl FnOnce(i64) -> Value + Send,
    ) -> Result<Option<(StoredEvent, bool)>, StoreError> {
        self.append_event_under(Some(lease), &lease.id, key, build)
    }

    fn append_event_under(
        &self,
        lease: Option<&Lease>,
        job_id: &str,
        key: &str,
        build: impl FnOnce(i64) -> Value + Send,
    ) -> Result<Option<(StoredEvent, bool)>, StoreError> {
        self.db.transaction(|tx| {
            if let Some(lease) = lease {
                if !owns(tx, lease)? {
                    return Ok(None);
                }
            }
            let existing = tx.rows(
                "SELECT seq, body FROM events WHERE job_id = ? AND key = ?",
                &[Cell::from(job_id), Cell::from(key)],
            )?;
            if let Some(row) = existing.into_iter().next() {
                return Ok(Some((self.event_row(row)?, false)));
            }
            // The body needs the sequence number the row gets: insert, then fill it in.
            let inserted = tx.rows(
                "INSERT INTO events (job_id, key, created_at, body) VALUES (?, ?, ?, '{}')
                 ON CONFLICT (job_id, key) DO NOTHING RETURNING seq",
                &[Cell::from(job_id), Cell::from(key), Cell::Int(now())],
            )?;
            let Some(seq) = inserted.first().and_then(|r| r.first()).and_then(Cell::int) else {
                // Written by another transaction between the two statements (PostgreSQL's
                // READ COMMITTED): that one stands.
                let row = tx
                    .rows(
                        "SELECT seq, body FROM events WHERE job_id = ? AND key = ?",
                        &[Cell::from(job_id), Cell::from(key)],
                    )?
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        StoreError::Postgres("an event vanished while written".into())
                    })?;
                return Ok(Some((self.event_row(row)?, false)));
            };
            let body = build(seq);
            tx.exec(
                "UPDATE events SET body = ? WHERE seq = ?",
                &[Cell::Text(body.to_string()), Cell::Int(seq)],
            )?;
            Ok(Some((StoredEvent { seq, body }, true)))
        })
    }

    fn event_row(&self, row: Vec<Cell>) -> Result<StoredEvent, StoreError> {
        let seq = row.first().and_then(Cell::int).unwrap_or_default();
        let body = row.get(1).and_then(Cell::text).unwrap_or("{}");
        Ok(StoredEvent {
            seq,
            body: self.parse(&format!("event {seq}"), body)?,
        })
    }

    /// Job `job_id`'s events, oldest first.
    pub fn events(&self, job_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.rows(
                "SELECT seq, body FROM events WHERE job_id = ? ORDER BY seq ASC",
                &[Cell::from(job_id)],
            )
        })?;
        rows.into_iter().map(|row| self.event_row(row)).collect()
    }

    /// How many events job `job_id` has.
    pub fn event_count(&self, job_id: &str) -> Result<usize, StoreError> {
        let rows = self.db.read(|tx| {
            tx.rows(
                "SELECT COUNT(*) FROM events WHERE job_id = ?",
                &[Cell::from(job_id)],
            )
        })?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(Cell::int)
            .unwrap_or(0) as usize)
    }

    // -----------------------------------------------------------------------------------------
    // Leases

    /// Claims the oldest object of `kind` in `status` that no live lease holds, for `owner`
    /// until `duration` from now (the database's clock), and applies `change` to it (a status
    /// change, typically) in the same transaction. `None` when there is nothing to claim.
    /// On PostgreSQL the candidate row is locked with `SKIP LOCKED`: workers claiming at once
    /// each get a different object, and none waits for another.
    pub fn claim<T>(
        &self,
        kind: &str,
        status: &str,
        owner: &str,
        duration: Duration,
        change: impl FnOnce(&mut T) + Send,
    ) -> Result<Option<(T, Lease)>, StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send,
    {
        let claimed = self.db.transaction(|tx| {
            let d = tx.dialect();
            // A few candidates: one whose body this build cannot read (written by a newer
            // version, or edited by hand) is passed over, not a stop for every worker.
            let select = format!(
                "SELECT o.id, o.body FROM objects o
                 WHERE o.kind = ? AND o.status = ?
                   AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = o.id AND l.owner <> ''
                                   AND l.expires_at > {now})
                 ORDER BY o.seq ASC LIMIT {CLAIM_CANDIDATES}{lock}",
                now = d.now_ms(),
                lock = d.skip_locked(),
            );
            let mut found = None;
            for row in tx.rows(&select, &[Cell::from(kind), Cell::from(status)])? {
                let id = row
                    .first()
                    .and_then(Cell::text)
                    .unwrap_or_default()
                    .to_owned();
                let body = row.get(1).and_then(Cell::text).unwrap_or_default();
                match self
                    .parse(&id, body)
                    .and_then(|v| self.parse_body::<T>(&id, v))
                {
                    Ok(object) => {
                        found = Some((id, object));
                        break;
                    }
                    Err(e) => tracing::warn!("cannot claim {id}, passed over: {e}"),
                }
            }
            let Some((id, mut object)) = found else {
                return Ok(None);
            };
            change(&mut object);
            let value = self.to_body(&object)?;
            tx.exec(
                "UPDATE objects SET body = ?, status = ?, updated_at = ? WHERE id = ?",
                &[
                    Cell::Text(value.to_string()),
                    status_of(&value),
                    Cell::Int(now()),
                    Cell::from(id.as_str()),
                ],
            )?;
            // Only over a lease nobody holds: a holder that renewed since the select (the row
            // lock covers the object, not its lease) keeps it, and this claim rolls back.
            let upsert = format!(
                "INSERT INTO leases (id, owner, epoch, expires_at) VALUES (?, ?, 1, {now} + ?)
                 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,
                     epoch = leases.epoch + 1, expires_at = excluded.expires_at
                 WHERE leases.owner = '' OR leases.expires_at <= {now}
                 RETURNING epoch",
                now = d.now_ms()
            );
            let epoch = tx
                .rows(
                    &upsert,
                    &[
                        Cell::from(id.as_str()),
                        Cell::from(owner),
                        Cell::Int(millis(duration)),
                    ],
                )?
                .first()
                .and_then(|r| r.first())
                .and_then(Cell::int)
                .ok_or(StoreError::Contended)?;
            Ok(Some((
                object,
                Lease {
                    id,
                    owner: owner.to_owned(),
                    epoch,
                },
            )))
        });
        match claimed {
            Err(StoreError::Contended) => Ok(None),
            other => other,
        }
    }

    /// Takes a lease on object `id` for `owner` (an object this process just created and will
    /// work on itself, such as an eval run), whoever held it before.
    pub fn take_lease(
        &self,
        id: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Lease, StoreError> {
        let epoch = self.db.transaction(|tx| {
            let upsert = format!(
                "INSERT INTO leases (id, owner, epoch, expires_at) VALUES (?, ?, 1, {now} + ?)
                 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,
                     epoch = leases.epoch + 1, expires_at = excluded.expires_at
                 RETURNING epoch",
                now = tx.dialect().now_ms()
            );
            Ok(tx
                .rows(
                    &upsert,
                    &[
                        Cell::from(id),
                        Cell::from(owner),
                        Cell::Int(millis(duration)),
                    ],
                )?
                .first()
                .and_then(|r| r.first())
                .and_then(Cell::int)
                .unwrap_or(1))
        })?;
        Ok(Lease {
            id: id.to_owned(),
            owner: owner.to_owned(),
            epoch,
        })
    }

    /// Extends `lease` to `duration` from now and returns the object's current body (so the
    /// holder sees a pause or cancel set meanwhile); `None` when the lease is no longer held
    /// (expired and claimed by another, or released): the holder must stop.
    pub fn renew(&self, lease: &Lease, duration: Duration) -> Result<Option<Value>, StoreError> {
        let rows = self.db.transaction(|tx| {
            let sql = format!(
                "UPDATE leases SET expires_at = {} + ? WHERE id = ? AND owner = ? AND epoch = ?",
                tx.dialect().now_ms()
            );
            let n = tx.exec(
                &sql,
                &[
                    Cell::Int(millis(duration)),
                    Cell::from(lease.id.as_str()),
                    Cell::from(lease.owner.as_str()),
                    Cell::Int(lease.epoch),
                ],
            )?;
            if n == 0 {
                return Ok(None);
            }
            tx.rows(
                "SELECT body FROM objects WHERE id = ?",
                &[Cell::from(lease.id.as_str())],
            )
            .map(Some)
        })?;
        match rows {
            None => Ok(None),
            Some(rows) => first_text(rows)
                .map(|b| self.parse(&lease.id, &b))
                .transpose(),
        }
    }

    /// Gives `lease` up (if still held): the object can be claimed at once. Its epoch stays, so
    /// the next claim's is higher.
    pub fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let n = self.db.transaction(|tx| {
            tx.exec(
                "UPDATE leases SET owner = '', expires_at = 0 WHERE id = ? AND owner = ? AND epoch = ?",
                &[
                    Cell::from(lease.id.as_str()),
                    Cell::from(lease.owner.as_str()),
                    Cell::Int(lease.epoch),
                ],
            )
        })?;
        Ok(n > 0)
    }

    /// Whether `lease` is still held (not expired, not taken over).
    pub fn holds(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.db.read(|tx| holds(tx, lease))
    }

    /// Objects of `kind` in status `from` whose lease expired (or that have none, or whose
    /// holder `is_gone` says has stopped) are moved to status `to` by `change`, and their
    /// leases ended: another worker claims them next. Returns their ids.
    pub fn requeue_expired<T>(
        &self,
        kind: &str,
        from: &str,
        is_gone: &(dyn Fn(&str) -> bool + Sync),
        change: impl Fn(&mut T) + Send + Sync,
    ) -> Result<Vec<String>, StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send,
    {
        self.db.transaction(|tx| {
            let d = tx.dialect();
            let select = format!(
                "SELECT o.id, o.body, COALESCE(l.owner, ''), COALESCE(l.expires_at, 0) <= {now}
                 FROM objects o LEFT JOIN leases l ON l.id = o.id
                 WHERE o.kind = ? AND o.status = ?
                 ORDER BY o.seq ASC{lock}",
                now = d.now_ms(),
                lock = match d {
                    Dialect::Sqlite => "",
                    Dialect::Postgres => " FOR UPDATE OF o SKIP LOCKED",
                },
            );
            let mut moved = Vec::new();
            for row in tx.rows(&select, &[Cell::from(kind), Cell::from(from)])? {
                let id = row
                    .first()
                    .and_then(Cell::text)
                    .unwrap_or_default()
                    .to_owned();
                let owner = row.get(2).and_then(Cell::text).unwrap_or_default();
                let expired = row.get(3).and_then(Cell::int).unwrap_or(1) != 0;
                let gone = !owner.is_empty() && is_gone(owner);
                if !(expired || owner.is_empty() || gone) {
                    continue;
                }
                // The lease first, and only as it was read: a holder that renewed since (the
                // select locked the object, not its lease) keeps its job.
                let ended = if gone {
                    tx.exec(
                        "UPDATE leases SET owner = '', expires_at = 0 WHERE id = ? AND owner = ?",
                        &[Cell::from(id.as_str()), Cell::from(owner)],
                    )?
                } else {
                    tx.exec(
                        &format!(
                            "UPDATE leases SET owner = '', expires_at = 0
                             WHERE id = ? AND (owner = '' OR expires_at <= {now})",
                            now = d.now_ms()
                        ),
                        &[Cell::from(id.as_str())],
                    )?
                };
                let has_lease = !tx
                    .rows(
                        "SELECT 1 FROM leases WHERE id = ?",
                        &[Cell::from(id.as_str())],
                    )?
                    .is_empty();
                if ended == 0 && has_lease {
                    continue;
                }
                let body = row.get(1).and_then(Cell::text).unwrap_or_default();
                let parsed = self
                    .parse(&id, body)
                    .and_then(|v| self.parse_body::<T>(&id, v));
                let mut object = match parsed {
                    Ok(object) => object,
                    Err(e) => {
                        tracing::warn!("cannot requeue {id}, passed over: {e}");
                        continue;
                    }
                };
                change(&mut object);
                let value = self.to_body(&object)?;
                tx.exec(
                    "UPDATE objects SET body = ?, status = ?, updated_at = ? WHERE id = ?",
                    &[
                        Cell::Text(value.to_string()),
                        status_of(&value),
                        Cell::Int(now()),
                        Cell::from(id.as_str()),
                    ],
                )?;
                moved.push(id);
            }
            Ok(moved)
        })
    }
}

/// Whether `lease` is still its holder's: the same owner and epoch, whether or not it expired
/// (a sweep that requeues clears the owner, a new claim raises the epoch). What fences writes.
pub(crate) fn owns(tx: &mut dyn Tx, lease: &Lease) -> Result<bool, StoreError> {
    Ok(!tx
        .rows(
            "SELECT 1 FROM leases WHERE id = ? AND owner = ? AND epoch = ?",
            &[
                Cell::from(lease.id.as_str()),
                Cell::from(lease.owner.as_str()),
                Cell::Int(lease.epoch),
            ],
        )?
        .is_empty())
}

/// Whether `lease` is held, read inside a transaction.
pub(crate) fn holds(tx: &mut dyn Tx, lease: &Lease) -> Result<bool, StoreError> {
    let sql = format!(
        "SELECT 1 FROM leases WHERE id = ? AND owner = ? AND epoch = ? AND expires_at > {}",
        tx.dialect().now_ms()
    );
    Ok(!tx
        .rows(
            &sql,
            &[
                Cell::from(lease.id.as_str()),
                Cell::from(lease.owner.as_str()),
                Cell::Int(lease.epoch),
            ],
        )?
        .is_empty())
}
