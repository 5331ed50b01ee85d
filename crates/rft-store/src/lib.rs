//! OpenRFT's persistence: API objects, job events and leases in a database (SQLite in the data
//! folder by default, or PostgreSQL), artefacts in a blob store ([`blobs`]: the data folder by
//! default, or S3).
//!
//! Layout of a data directory (`rft serve --data DIR`):
//! - `openrft.db`: SQLite in WAL mode (unless `--database postgres://…`); one `objects` row per
//!   API object (its JSON body and the columns lists filter on), one `events` row per job event,
//!   one `leases` row per job a worker has claimed. Schema changes are numbered SQL files in
//!   `migrations/` (SQLite) and `migrations/postgres/`, applied in order at open.
//! - `files/<file id>`: uploaded file contents, written to a temporary name, fsynced and renamed,
//!   so a crash never leaves a half-written file under a served id.
//! - `jobs/<job id>/`: a training job's working folder, owned by the trainer (`rft-train`).
//!
//! Objects are written once per state change, not per token, so one SQLite connection behind a
//! mutex is plenty; WAL lets readers (other processes, backups) proceed during writes.
//! PostgreSQL gets a small pool of connections ([`db`]).
//!
//! Work is handed out with leases: [`Store::claim`] takes the oldest object of a kind and status
//! that nobody holds (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so workers never wait on each other),
//! [`Store::renew`] extends it and tells the holder whether it still holds it, and
//! [`Store::requeue_expired`] gives the work of a vanished holder back to the queue. A lease's
//! `epoch` counts its claims: a worker that lost its lease cannot renew or write under it again.
//!
//! The folder holds users' datasets and job outputs: the data folder, `files/` and `jobs/` are
//! mode 0700, the database (with its `-wal` and `-shm`) and blobs 0600, set on every open so an
//! existing folder is narrowed too. Opening also removes what a crash can leave in `files/`: a
//! blob written but never recorded, a temporary file never renamed.
#![forbid(unsafe_code)]

pub mod blobs;
mod db;
#[doc(hidden)]
pub mod testing;
mod work;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

pub use db::redact_url;
use db::{Cell, Db, Dialect};
use work::owns;

/// SQLite's migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_objects.sql"),
    include_str!("../migrations/0002_list_indexes.sql"),
    include_str!("../migrations/0003_events_leases.sql"),
];

/// PostgreSQL's migrations, in order; the `rft_schema` table counts those applied.
const PG_MIGRATIONS: &[&str] = &[include_str!("../migrations/postgres/0001_schema.sql")];

/// The mode of the data folder, `files/` and `jobs/`: the owner's only.
const DIR_MODE: u32 = 0o700;
/// The mode of the database files and blobs.
const FILE_MODE: u32 = 0o600;

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
    /// PostgreSQL refused a statement (a bug or a schema changed by hand, not an outage).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// The database cannot be reached now (PostgreSQL restarting, the network down): the
    /// request may be tried again. Never names a password.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database URL or the store's settings are wrong.
    #[error("{0}")]
    Config(String),
    /// Another process took the object in the same instant (a claim that lost a race; the
    /// caller sees nothing to claim).
    #[error("another process took the object at the same moment")]
    Contended,
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

impl StoreError {
    /// Whether trying again later may succeed (the database is restarting or unreachable).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

/// Which objects a list returns, and in which order. Every condition runs in the database,
/// which reads only the page asked for (plus one row, for `has_more`).
#[derive(Debug, Clone, Default)]
pub struct ListQuery<'a> {
    /// Only children of this parent (an eval's runs, a run's output items).
    pub parent: Option<&'a str>,
    /// Only objects with this status.
    pub status: Option<&'a str>,
    /// Newest first.
    pub descending: bool,
    /// Start after this object (in the list's order), whether or not it matches the other
    /// conditions. An id that is not an object of this kind (deleted, say) gives an empty page,
    /// like a cursor past the end.
    pub after: Option<&'a str>,
    /// At most this many.
    pub limit: usize,
    /// Conditions on the JSON body; all must hold.
    pub body: Vec<BodyFilter<'a>>,
}

/// A condition on an object's JSON body, checked by the database's JSON functions. `field` is a
/// top-level key named in code; keys and values that come from API callers are bound as SQL
/// parameters and compared as strings, never parsed as paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFilter<'a> {
    /// `body[field]` is the string `value` (a file's `purpose`).
    Equals {
        /// The top-level key.
        field: &'static str,
        /// The string it must hold.
        value: &'a str,
    },
    /// `body[field]` is an object whose entry `key` is the string `value` (`metadata[k]=v`).
    EntryEquals {
        /// The top-level key of the object.
        field: &'static str,
        /// The entry's key: any string.
        key: &'a str,
        /// The string the entry must hold.
        value: &'a str,
    },
    /// `body[field]` is missing, `null` or `{}` (`metadata=null`).
    Empty {
        /// The top-level key.
        field: &'static str,
    },
}

/// One page of a list.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The objects' bodies.
    pub data: Vec<Value>,
    /// Whether more objects follow.
    pub has_more: bool,
}

/// A claim on an object: who holds it, and which claim it is. Renewing, releasing and writing
/// under a lease all check both, so a holder that lost it (expired and claimed by another) can
/// do none of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The object held.
    pub id: String,
    /// The holder (a worker's id).
    pub owner: String,
    /// The object's claim count when this lease was taken.
    pub epoch: i64,
}

/// One stored job event: its global sequence number (ids are built from it) and body.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Increases with every event written, whichever process wrote it.
    pub seq: i64,
    /// The event's JSON.
    pub body: Value,
}

/// The database and the data directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db: Db,
    /// Where the database is, for messages (a PostgreSQL URL without its password).
    shown: String,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The `status` column of a stored body (lists and claims filter on it).
fn status_of(body: &Value) -> Cell {
    Cell::from(body.get("status").and_then(Value::as_str))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) the data directory `root` with SQLite inside it, brings its
    /// schema up to date, narrows its permissions and removes the blobs no file object refers to.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::connect(None, root)
    }

    /// Opens the store on `database` (a `postgres://` or `postgresql://` URL; `None`, empty or
    /// `sqlite` for SQLite in `root`), with `root` as the local data folder. Migrations run
    /// here, on both databases; on PostgreSQL under an advisory lock, so processes starting
    /// together migrate once.
    pub fn connect(database: Option<&str>, root: &Path) -> Result<Store, StoreError> {
        Store::connect_with(database, root, true)
    }

    /// [`Store::connect`] for a process that shares its data folder with another one which
    /// takes uploads (an `rft worker` beside `rft serve` on one machine): it leaves `files/`
    /// alone, since what looks like a crash's leftover may be an upload in flight there.
    pub fn connect_shared(database: Option<&str>, root: &Path) -> Result<Store, StoreError> {
        Store::connect_with(database, root, false)
    }

    fn connect_with(
        database: Option<&str>,
        root: &Path,
        collect_orphans: bool,
    ) -> Result<Store, StoreError> {
        for dir in [root.to_path_buf(), root.join("files"), root.join("jobs")] {
            private_dir(&dir)?;
        }
        let store = match database.map(str::trim).filter(|d| !d.is_empty() && *d != "sqlite") {
            None => {
                let db = open_sqlite(&root.join("openrft.db"))?;
                let shown = db.path.display().to_string();
                Store {
                    root: root.to_path_buf(),
                    db: Db::Sqlite(db),
                    shown,
                }
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let db = db::Postgres::new(url)?;
                let shown = db.shown.clone();
                let store = Store {
                    root: root.to_path_buf(),
                    db: Db::Postgres(db),
                    shown,
                };
                store.migrate_postgres()?;
                store
            }
            Some(other) => {
                return Err(StoreError::Config(format!(
                    "--database {}: not a database URL; use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or leave it out for SQLite in the data folder",
                    redact_url(other)
                )))
            }
        };
        if store.is_local() && collect_orphans {
            store.collect_orphan_blobs()?;
        }
        Ok(store)
    }

    fn migrate_postgres(&self) -> Result<(), StoreError> {
        self.db.transaction(|tx| {
            // One migrating process at a time; the others wait here, then find nothing to do.
            tx.rows("SELECT pg_advisory_xact_lock(7265727466)::text", &[])?;
            tx.exec(
                "CREATE TABLE IF NOT EXISTS rft_schema (version BIGINT NOT NULL)",
                &[],
            )?;
            let version = tx
                .rows("SELECT COALESCE(MAX(version), 0) FROM rft_schema", &[])?
                .first()
                .and_then(|r| r.first().and_then(Cell::int))
                .unwrap_or(0);
            let known = PG_MIGRATIONS.len() as i64;
            if version > known {
                return Err(StoreError::TooNew {
                    path: PathBuf::from(&self.shown),
                    found: version,
                    known,
                });
            }
            for (i, migration) in PG_MIGRATIONS.iter().enumerate().skip(version as usize) {
                // Comments first: they may hold a ';'. The files have no strings with one.
                let code: String = migration
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                for statement in code.split(';').filter(|s| !s.trim().is_empty()) {
                    tx.exec(statement, &[])?;
                }
                tx.exec(
                    "INSERT INTO rft_schema (version) VALUES (?)",
                    &[Cell::Int(i as i64 + 1)],
                )?;
            }
            Ok(())
        })
    }

    /// Whether this store's database is SQLite in its data folder (one machine); PostgreSQL is
    /// shared by processes on many.
    pub fn is_local(&self) -> bool {
        matches!(self.db, Db::Sqlite(_))
    }

    /// Where the database is, for logs: SQLite's file, or PostgreSQL's URL without a password.
    pub fn describe(&self) -> &str {
        &self.shown
    }

    /// Removes what a crash leaves in `files/`: a blob written but never recorded (a kill
    /// between [`Store::write_blob`] and [`Store::insert`], or between deleting a file object
    /// and its blob) and temporary files never renamed. Runs at open, before the server
    /// accepts uploads: the store assumes no other process writes to its folder.
    fn collect_orphan_blobs(&self) -> Result<(), StoreError> {
        let ids: HashSet<String> = self
            .db
            .read(|tx| tx.rows("SELECT id FROM objects WHERE kind = 'file'", &[]))?
            .into_iter()
            .filter_map(|r| {
                r.into_iter()
                    .next()
                    .and_then(|c| c.text().map(str::to_owned))
            })
            .collect();
        let dir = self.root.join("files");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let (mut orphans, mut temporaries) = (0usize, 0usize);
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            // Folders are not ours to make or remove here.
            if kind.is_dir() {
                continue;
            }
            let name = entry.file_name();
            match name.to_str() {
                // Blobs of older versions were written with the umask's mode. (A link is left
                // alone: narrowing it would change its target.)
                Some(id) if ids.contains(id) => {
                    if kind.is_file() {
                        private_file(&path, false)?;
                    }
                }
                _ => {
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(StoreError::Io { path, source: e })
                        }
                        _ => {}
                    }
                    if name.to_string_lossy().contains(".tmp-") {
                        temporaries += 1;
                    } else {
                        orphans += 1;
                    }
                }
            }
        }
        if orphans + temporaries > 0 {
            tracing::info!(
                "{}: removed {orphans} blob(s) no file refers to and {temporaries} unfinished temporary file(s)",
                dir.display()
            );
        }
        Ok(())
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

    /// Writes a file's content durably (temporary name, fsync, rename, fsync of the folder),
    /// readable by the owner only. Insert its object next: until then, a restart removes it.
    pub fn write_blob(&self, file_id: &str, content: &[u8]) -> Result<(), StoreError> {
        let path = self.file_path(file_id);
        rft_types::paths::write_atomic_private(&path, content).map_err(|source| StoreError::Io {
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
        let params = [
            Cell::from(kind),
            Cell::from(body["id"].as_str().unwrap_or_default()),
            Cell::from(parent),
            status_of(body),
            Cell::Int(body["created_at"].as_i64().unwrap_or_else(now)),
            Cell::Int(now()),
            Cell::Text(body.to_string()),
        ];
        self.db.transaction(|tx| {
            tx.exec(
                "INSERT INTO objects (kind, id, parent, status, created_at, updated_at, body)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                &params,
            )
        })?;
        Ok(())
    }

    /// Replaces an object's body (and its status column). Returns false if it does not exist.
    pub fn update(&self, id: &str, body: &Value) -> Result<bool, StoreError> {
        let params = [
            Cell::Text(body.to_string()),
            status_of(body),
            Cell::Int(now()),
            Cell::from(id),
        ];
        let n = self.db.transaction(|tx| {
            tx.exec(
                "UPDATE objects SET body = ?, status = ?, updated_at = ? WHERE id = ?",
                &params,
            )
        })?;
        Ok(n > 0)
    }

    /// Reads, changes and writes one object in a transaction (the row locked on PostgreSQL), so
    /// concurrent updates (the API and the scheduler, or two processes) never lose each other's
    /// changes. Returns the new body, or `None` if the object does not exist. `change`
    /// returning `Err` leaves the object unchanged.
    pub fn modify<E: Send>(
        &self,
        id: &str,
        change: impl FnOnce(&mut Value) -> Result<(), E> + Send,
    ) -> Result<Option<Result<Value, E>>, StoreError> {
        self.modify_under(None, id, change)
    }

    /// [`Store::modify`] only while `lease` is held: `None` when the object is gone or the
    /// lease was lost (expired and taken by another, or released).
    pub fn modify_leased<E: Send>(
        &self,
        lease: &Lease,
        change: impl FnOnce(&mut Value) -> Result<(), E> + Send,
    ) -> Result<Option<Result<Value, E>>, StoreError> {
        self.modify_under(Some(lease), &lease.id, change)
    }

    fn modify_under<E: Send>(
        &self,
        lease: Option<&Lease>,
        id: &str,
        change: impl FnOnce(&mut Value) -> Result<(), E> + Send,
    ) -> Result<Option<Result<Value, E>>, StoreError> {
        self.db.transaction(|tx| {
            let select = format!(
                "SELECT body FROM objects WHERE id = ?{}",
                tx.dialect().for_update()
            );
            let Some(body) = first_text(tx.rows(&select, &[Cell::from(id)])?) else {
                return Ok(None);
            };
            if let Some(lease) = lease {
                if !owns(tx, lease)? {
                    return Ok(None);
                }
            }
            let mut value = self.parse(id, &body)?;
            if let Err(e) = change(&mut value) {
                return Ok(Some(Err(e)));
            }
            tx.exec(
                "UPDATE objects SET body = ?, status = ?, updated_at = ? WHERE id = ?",
                &[
                    Cell::Text(value.to_string()),
                    status_of(&value),
                    Cell::Int(now()),
                    Cell::from(id),
                ],
            )?;
            Ok(Some(Ok(value)))
        })
    }

    /// Deletes an object and all its descendants (an eval's runs and their output items), its
    /// events and its lease in one transaction: a crash or an error leaves all of them or none.
    /// Returns false if the object did not exist.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.db.transaction(|tx| {
            let existed = !tx
                .rows("SELECT 1 FROM objects WHERE id = ?", &[Cell::from(id)])?
                .is_empty();
            // UNION (not UNION ALL) visits each id once, so even a cycle of parents ends.
            tx.exec(
                "WITH RECURSIVE doomed(id) AS (
                     SELECT CAST(? AS TEXT)
                     UNION
                     SELECT o.id FROM objects o JOIN doomed d ON o.parent = d.id
                 )
                 DELETE FROM objects WHERE id IN (SELECT id FROM doomed)",
                &[Cell::from(id)],
            )?;
            tx.exec("DELETE FROM events WHERE job_id = ?", &[Cell::from(id)])?;
            tx.exec("DELETE FROM leases WHERE id = ?", &[Cell::from(id)])?;
            Ok(existed)
        })
    }

    fn parse(&self, id: &str, body: &str) -> Result<Value, StoreError> {
        serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(&self.shown),
            id: id.to_owned(),
            message: e.to_string(),
        })
    }

    /// One object of `kind` by id.
    pub fn get(&self, kind: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let rows = self.db.read(|tx| {
            tx.rows(
                "SELECT body FROM objects WHERE kind = ? AND id = ?",
                &[Cell::from(kind), Cell::from(id)],
            )
        })?;
        first_text(rows).map(|b| self.parse(id, &b)).transpose()
    }

    /// Every object of `kind` with one of `statuses`, oldest first. The filter runs in the
    /// database (the `status` column is indexed): schedulers poll this.
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
        let params = params.into_iter().map(Cell::from).collect();
        self.query_values(sql, params)
    }

    /// [`Store::insert`] of a typed object (serialized through serde).
    pub fn insert_object<T: serde::Serialize>(
        &self,
        kind: &str,
        parent: Option<&str>,
        object: &T,
    ) -> Result<(), StoreError> {
        let body = self.to_body(object)?;
        self.insert(kind, parent, &body)
    }

    /// [`Store::get`] of a typed object.
    pub fn get_object<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get(kind, id)?
            .map(|body| self.parse_body(id, body))
            .transpose()
    }

    /// [`Store::modify`] of a typed object: read, change and write in one transaction.
    pub fn modify_object<T, E>(
        &self,
        id: &str,
        change: impl FnOnce(&mut T) -> Result<(), E> + Send,
    ) -> Result<Option<Result<T, E>>, StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send,
        E: Send,
    {
        self.modify_object_under(None, id, change)
    }

    /// [`Store::modify_leased`] of a typed object.
    pub fn modify_object_leased<T, E>(
        &self,
        lease: &Lease,
        change: impl FnOnce(&mut T) -> Result<(), E> + Send,
    ) -> Result<Option<Result<T, E>>, StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send,
        E: Send,
    {
        self.modify_object_under(Some(lease), &lease.id, change)
    }

    fn modify_object_under<T, E>(
        &self,
        lease: Option<&Lease>,
        id: &str,
        change: impl FnOnce(&mut T) -> Result<(), E> + Send,
    ) -> Result<Option<Result<T, E>>, StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send,
        E: Send,
    {
        let mut failure = None;
        let mut typed_error = None;
        // The changed object itself is returned: no second parse of what was just written.
        let mut changed_object = None;
        let changed = self.modify_under(lease, id, |body| {
            let mut object: T = match serde_json::from_value(body.take()) {
                Ok(object) => object,
                Err(e) => {
                    typed_error = Some(e.to_string());
                    return Err(None);
                }
            };
            let outcome = change(&mut object);
            match serde_json::to_value(&object) {
                Ok(value) => {
                    *body = value;
                    changed_object = Some(object);
                }
                Err(e) => {
                    typed_error = Some(e.to_string());
                    return Err(None);
                }
            }
            outcome.map_err(|e| {
                failure = Some(e);
                Some(())
            })
        })?;
        if let Some(message) = typed_error {
            return Err(StoreError::Corrupt {
                path: PathBuf::from(&self.shown),
                id: id.to_owned(),
                message,
            });
        }
        Ok(match changed {
            None => None,
            Some(Ok(_)) => changed_object.map(Ok),
            Some(Err(_)) => failure.map(Err),
        })
    }

    /// [`Store::with_status`] of typed objects.
    pub fn with_status_objects<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        statuses: &[&str],
    ) -> Result<Vec<T>, StoreError> {
        self.with_status(kind, statuses)?
            .into_iter()
            .map(|body| self.parse_body("?", body))
            .collect()
    }

    /// [`Store::all`] of typed objects.
    pub fn all_objects<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        parent: Option<&str>,
        descending: bool,
    ) -> Result<Vec<T>, StoreError> {
        self.all(kind, parent, descending)?
            .into_iter()
            .map(|body| self.parse_body("?", body))
            .collect()
    }

    /// [`Store::list`] of typed objects: the page and whether more follow.
    pub fn list_objects<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        query: &ListQuery<'_>,
    ) -> Result<(Vec<T>, bool), StoreError> {
        let page = self.list(kind, query)?;
        let data = page
            .data
            .into_iter()
            .map(|body| self.parse_body("?", body))
            .collect::<Result<Vec<T>, StoreError>>()?;
        Ok((data, page.has_more))
    }

    fn to_body<T: serde::Serialize>(&self, object: &T) -> Result<Value, StoreError> {
        serde_json::to_value(object).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(&self.shown),
            id: "(new object)".into(),
            message: e.to_string(),
        })
    }

    fn parse_body<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        body: Value,
    ) -> Result<T, StoreError> {
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or(id)
            .to_owned();
        serde_json::from_value(body).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(&self.shown),
            id,
            message: e.to_string(),
        })
    }

    /// A page of objects of `kind` in creation order, starting after the cursor: filtering,
    /// ordering and the limit all run in the database, so a page costs the same however many
    /// objects there are.
    pub fn list(&self, kind: &str, query: &ListQuery<'_>) -> Result<Page, StoreError> {
        let dialect = self.dialect();
        let mut sql = String::from("SELECT id, body FROM objects WHERE kind = ?");
        let mut params = vec![Cell::from(kind)];
        if let Some(parent) = query.parent {
            sql.push_str(" AND parent = ?");
            params.push(Cell::from(parent));
        }
        if let Some(status) = query.status {
            sql.push_str(" AND status = ?");
            params.push(Cell::from(status));
        }
        if let Some(after) = query.after {
            // NULL for an unknown cursor, and `seq > NULL` holds for no row: an empty page.
            sql.push_str(if query.descending {
                " AND seq < (SELECT seq FROM objects WHERE id = ? AND kind = ?)"
            } else {
                " AND seq > (SELECT seq FROM objects WHERE id = ? AND kind = ?)"
            });
            params.extend([Cell::from(after), Cell::from(kind)]);
        }
        for filter in &query.body {
            match *filter {
                BodyFilter::Equals { field, value } => {
                    sql.push_str(dialect.body_equals());
                    params.extend([
                        dialect.field(field),
                        dialect.field(field),
                        Cell::from(value),
                    ]);
                }
                BodyFilter::EntryEquals { field, key, value } => {
                    sql.push_str(dialect.body_entry_equals());
                    match dialect {
                        Dialect::Sqlite => params.extend([
                            dialect.field(field),
                            Cell::from(key),
                            Cell::from(value),
                        ]),
                        Dialect::Postgres => params.extend([
                            dialect.field(field),
                            dialect.field(field),
                            Cell::from(key),
                            dialect.field(field),
                            Cell::from(key),
                            dialect.field(field),
                            Cell::from(key),
                            Cell::from(value),
                        ]),
                    }
                }
                BodyFilter::Empty { field } => {
                    let (clause, times) = dialect.body_empty();
                    sql.push_str(clause);
                    params.extend(std::iter::repeat_n(dialect.field(field), times));
                }
            }
        }
        sql.push_str(if query.descending {
            " ORDER BY seq DESC LIMIT ?"
        } else {
            " ORDER BY seq ASC LIMIT ?"
        });
        // One more than asked tells whether more follow. SQLite reads a negative LIMIT as
        // none, so usize::MAX must not wrap.
        let fetch = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
        params.push(Cell::Int(fetch));
        let mut data = self.query_values(&sql, params)?;
        let has_more = data.len() > query.limit;
        data.truncate(query.limit);
        Ok(Page { data, has_more })
    }

    fn dialect(&self) -> Dialect {
        match self.db {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    fn query_values(&self, sql: &str, params: Vec<Cell>) -> Result<Vec<Value>, StoreError> {
        let rows = self.db.read(|tx| tx.rows(sql, &params))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.first().and_then(Cell::text).unwrap_or_default();
            let body = row.get(1).and_then(Cell::text).unwrap_or_default();
            out.push(self.parse(id, body)?);
        }
        Ok(out)
    }
}

fn first_text(rows: Vec<Vec<Cell>>) -> Option<String> {
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .and_then(|c| match c {
            Cell::Text(s) => Some(s),
            _ => None,
        })
}

/// Opens SQLite at `db_path` (owner-only), in WAL mode with every commit fsynced, and applies
/// the migrations it lacks.
fn open_sqlite(db_path: &Path) -> Result<db::Sqlite, StoreError> {
    // Created owner-only before SQLite opens it, so it is never readable by others, even for a
    // moment; SQLite gives the -wal and -shm files the database's mode.
    private_file(db_path, true)?;
    let sql = |source| StoreError::Sqlite {
        path: db_path.to_owned(),
        source,
    };
    let conn = rusqlite::Connection::open(db_path).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    // FULL: every commit fsyncs the WAL, so a change the API acknowledged survives kill -9
    // and power loss; objects change a few times per job, so the cost is nothing.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            path: db_path.to_owned(),
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
    // Files an older version, or a copy, left readable by others.
    for suffix in ["-wal", "-shm"] {
        let mut name = db_path.to_owned().into_os_string();
        name.push(suffix);
        private_file(Path::new(&name), false)?;
    }
    Ok(db::Sqlite {
        path: db_path.to_owned(),
        conn: Mutex::new(conn),
    })
}

/// Creates `dir` if needed and makes it the owner's only, even if it existed.
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(DIR_MODE);
        builder.create(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)?;
    }
    #[cfg(not(unix))]
    {
        let _ = DIR_MODE;
        builder.create(dir).map_err(io)?;
    }
    Ok(())
}

/// Makes `path` the owner's only; creates it empty first when `create` is set, else skips a
/// missing one.
fn private_file(path: &Path, create: bool) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    if create {
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(FILE_MODE);
        }
        options.open(path).map_err(io)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(io)?,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = FILE_MODE;
    }
    Ok(())
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
