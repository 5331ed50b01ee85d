//! OpenRFT's persistence: API objects in SQLite, file contents in a local folder.
//!
//! Layout of a data directory (`rft serve --data DIR`):
//! - `openrft.db`: SQLite in WAL mode; one `objects` row per API object (its JSON body and the
//!   columns lists filter on). Schema changes are numbered SQL files in `migrations/`, applied in
//!   order and recorded in `PRAGMA user_version`.
//! - `files/<file id>`: uploaded file contents, written to a temporary name, fsynced and renamed,
//!   so a crash never leaves a half-written file under a served id.
//! - `jobs/<job id>/`: a training job's folder, owned by the trainer (`rft-train`): its events,
//!   checkpoints and optimizer state are the durable record of the job's progress.
//!
//! Objects are written once per state change, not per token or step, so one connection behind
//! a mutex is plenty; WAL lets readers (other processes, backups) proceed during writes.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

/// The migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_objects.sql")];

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A stored body is not valid JSON (the database was edited by hand or is damaged).
    #[error("database {path}: object {id} has an unreadable body: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The object.
        id: String,
        /// What was wrong.
        message: String,
    },
    /// The database was written by a newer OpenRFT.
    #[error("database {path} has schema version {found}, newer than this build's {known}; upgrade OpenRFT or use another --data folder")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// This build's version.
        known: i64,
    },
}

/// Which objects a list returns, and in which order.
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    /// Only children of this parent (an eval's runs, a run's output items).
    pub parent: Option<&'a str>,
    /// Only objects with this status.
    pub status: Option<&'a str>,
    /// Newest first.
    pub descending: bool,
    /// Start after this object id (in the list's order).
    pub after: Option<&'a str>,
    /// At most this many.
    pub limit: usize,
}

/// One page of a list.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The objects' bodies.
    pub data: Vec<Value>,
    /// Whether more objects follow.
    pub has_more: bool,
}

/// The data directory: the database and the blob folders.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the data directory `root` and brings its schema up to date.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in [root.to_path_buf(), root.join("files"), root.join("jobs")] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let db_path = root.join("openrft.db");
        let sql = |source| StoreError::Sqlite {
            path: db_path.clone(),
            source,
        };
        let conn = Connection::open(&db_path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        // FULL: every commit fsyncs the WAL, so a change the API acknowledged survives kill -9
        // and power loss; objects change a few times per job, so the cost is nothing.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                path: db_path,
                found: version,
                known,
            });
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(sql)?;
            tx.execute_batch(migration).map_err(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            db_path,
            conn: Mutex::new(conn),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an uploaded file's content lives.
    pub fn file_path(&self, file_id: &str) -> PathBuf {
        self.root.join("files").join(file_id)
    }

    /// A training job's folder.
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.root.join("jobs").join(job_id)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.db_path.clone(),
            source,
        }
    }

    /// Writes a file's content durably (temporary name, fsync, rename).
    pub fn write_blob(&self, file_id: &str, content: &[u8]) -> Result<(), StoreError> {
        let path = self.file_path(file_id);
        rft_types::paths::write_atomic(&path, content).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })
    }

    /// Removes a file's content (missing is fine).
    pub fn remove_blob(&self, file_id: &str) -> Result<(), StoreError> {
        let path = self.file_path(file_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Inserts a new object. `body` must have `id`; `status` and `created_at` are read from it
    /// when present.
    pub fn insert(&self, kind: &str, parent: Option<&str>, body: &Value) -> Result<(), StoreError> {
        let id = body["id"].as_str().unwrap_or_default();
        let created = body["created_at"].as_i64().unwrap_or_else(now);
        self.conn()
            .execute(
                "INSERT INTO objects (kind, id, parent, status, created_at, updated_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    kind,
                    id,
                    parent,
                    body["status"].as_str(),
                    created,
                    now(),
                    body.to_string()
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Replaces an object's body (and its status column). Returns false if it does not exist.
    pub fn update(&self, id: &str, body: &Value) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE objects SET body = ?2, status = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, body.to_string(), body["status"].as_str(), now()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Reads, changes and writes one object in a transaction, so concurrent updates (the API
    /// and the scheduler) never lose each other's changes. Returns the new body, or `None` if
    /// the object does not exist. `change` returning `Err` leaves the object unchanged.
    pub fn modify<E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Value) -> Result<(), E>,
    ) -> Result<Option<Result<Value, E>>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        let body: Option<String> = tx
            .query_row("SELECT body FROM objects WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        let Some(body) = body else {
            return Ok(None);
        };
        let mut value = self.parse(id, &body)?;
        if let Err(e) = change(&mut value) {
            return Ok(Some(Err(e)));
        }
        tx.execute(
            "UPDATE objects SET body = ?2, status = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, value.to_string(), value["status"].as_str(), now()],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(Some(Ok(value)))
    }

    /// Deletes an object (and its children). Returns false if it did not exist.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.execute("DELETE FROM objects WHERE parent = ?1", [id])
            .map_err(|e| self.sql(e))?;
        let n = conn
            .execute("DELETE FROM objects WHERE id = ?1", [id])
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    fn parse(&self, id: &str, body: &str) -> Result<Value, StoreError> {
        serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
            path: self.db_path.clone(),
            id: id.to_owned(),
            message: e.to_string(),
        })
    }

    /// One object of `kind` by id.
    pub fn get(&self, kind: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM objects WHERE kind = ?1 AND id = ?2",
                [kind, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        body.map(|b| self.parse(id, &b)).transpose()
    }

    /// Every object of `kind` with one of `statuses`, oldest first. The filter runs in SQLite
    /// (the `status` column is indexed): the scheduler polls this every second.
    pub fn with_status(&self, kind: &str, statuses: &[&str]) -> Result<Vec<Value>, StoreError> {
        let placeholders = vec!["?"; statuses.len()].join(", ");
        self.query(
            &format!(
                "SELECT id, body FROM objects WHERE kind = ? AND status IN ({placeholders})
                 ORDER BY seq ASC"
            ),
            std::iter::once(kind).chain(statuses.iter().copied()),
        )
    }

    /// Every object of `kind` (children of `parent` only, when given), in creation order.
    pub fn all(
        &self,
        kind: &str,
        parent: Option<&str>,
        descending: bool,
    ) -> Result<Vec<Value>, StoreError> {
        let order = if descending { "DESC" } else { "ASC" };
        match parent {
            Some(parent) => self.query(
                &format!(
                    "SELECT id, body FROM objects WHERE kind = ? AND parent = ? ORDER BY seq {order}"
                ),
                [kind, parent],
            ),
            None => self.query(
                &format!("SELECT id, body FROM objects WHERE kind = ? ORDER BY seq {order}"),
                [kind],
            ),
        }
    }

    fn query<'a>(
        &self,
        sql: &str,
        params: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Value>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(|e| self.sql(e))?;
            out.push(self.parse(&id, &body)?);
        }
        Ok(out)
    }

    /// A page of objects of `kind`, filtered by `keep` (metadata, purpose, …), in creation
    /// order, starting after the cursor.
    pub fn list(
        &self,
        kind: &str,
        query: &ListQuery<'_>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Page, StoreError> {
        let all = self.all(kind, query.parent, query.descending)?;
        let mut matching = all
            .into_iter()
            .filter(|b| query.status.is_none_or(|s| b["status"].as_str() == Some(s)) && keep(b));
        if let Some(after) = query.after {
            // Skip up to and including the cursor; an unknown cursor gives an empty page (the
            // client paginated past a deleted object), like a cursor past the end.
            for b in matching.by_ref() {
                if b["id"].as_str() == Some(after) {
                    break;
                }
            }
        }
        let mut data: Vec<Value> = matching.by_ref().take(query.limit).collect();
        let has_more = matching.next().is_some();
        data.shrink_to_fit();
        Ok(Page { data, has_more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_round_trip_paginate_and_survive_reopening() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|source| StoreError::Io {
            path: PathBuf::from("tmp"),
            source,
        })?;
        {
            let store = Store::open(dir.path())?;
            for i in 0..5 {
                store.insert(
                    "job",
                    None,
                    &json!({"id": format!("ftjob-{i}"), "status": if i % 2 == 0 {"queued"} else {"running"}}),
                )?;
            }
            store.insert("file", None, &json!({"id": "file-1"}))?;
        }
        let store = Store::open(dir.path())?;
        let page = store.list(
            "job",
            &ListQuery {
                descending: true,
                after: Some("ftjob-3"),
                limit: 2,
                ..ListQuery::default()
            },
            |_| true,
        )?;
        let ids: Vec<&str> = page.data.iter().filter_map(|b| b["id"].as_str()).collect();
        assert_eq!(ids, ["ftjob-2", "ftjob-1"]);
        assert!(page.has_more);
        let queued = store.with_status("job", &["queued"])?;
        assert_eq!(queued.len(), 3);
        let changed = store.modify::<()>("ftjob-0", |b| {
            b["status"] = json!("cancelled");
            Ok(())
        })?;
        assert!(matches!(changed, Some(Ok(_))));
        assert_eq!(store.with_status("job", &["queued"])?.len(), 2);
        assert!(store.get("job", "file-1")?.is_none());
        assert!(store.delete("file-1")?);
        assert!(!store.delete("file-1")?);
        Ok(())
    }
}
