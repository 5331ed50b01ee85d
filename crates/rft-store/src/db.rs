//! The two databases behind [`crate::Store`]: SQLite in the data folder (the default, one
//! machine) and PostgreSQL (many API processes and workers). The store's logic is written once
//! against [`Tx`]; what differs between the two (placeholders, JSON functions, row locks, the
//! clock) is in [`Dialect`].
//!
//! PostgreSQL is reached with the `postgres` crate (sfackler's synchronous client over
//! `tokio-postgres`): the store is synchronous, and is called both from plain threads (the
//! scheduler, workers) and from inside the server's async handlers. The client drives its own
//! small runtime, which must not be started from inside another, so a call made on a runtime
//! thread runs on a scoped thread of its own (tens of microseconds, against a network round trip).
//! `sqlx` was the other candidate: async only, and its pool and macros would pull in far more
//! than the handful of statements this store needs.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{Value as SqlValue, ValueRef};

use crate::StoreError;

/// One value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

impl Cell {
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<Option<&str>> for Cell {
    fn from(s: Option<&str>) -> Cell {
        s.map_or(Cell::Null, Cell::from)
    }
}

impl From<i64> for Cell {
    fn from(i: i64) -> Cell {
        Cell::Int(i)
    }
}

/// Statements run inside one transaction (or, for reads, on one connection). SQL is written
/// with `?` placeholders; PostgreSQL's `$n` are numbered from them.
pub(crate) trait Tx {
    fn rows(&mut self, sql: &str, params: &[Cell]) -> Result<Vec<Vec<Cell>>, StoreError>;
    fn exec(&mut self, sql: &str, params: &[Cell]) -> Result<u64, StoreError>;
    fn dialect(&self) -> Dialect;
}

/// What differs in the SQL of the two databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The database's clock in milliseconds since the epoch: leases compare against one clock,
    /// the database's, however far apart the workers' clocks are.
    pub(crate) fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Locks the selected rows and skips those another transaction holds (PostgreSQL); SQLite
    /// writes one transaction at a time (`BEGIN IMMEDIATE`), so it needs nothing.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// `body[field]` is a string equal to the parameter: binds (field, field, value).
    pub(crate) fn body_equals(self) -> &'static str {
        match self {
            Dialect::Sqlite => " AND json_type(body, ?) = 'text' AND json_extract(body, ?) = ?",
            Dialect::Postgres => {
                " AND jsonb_typeof(body::jsonb -> ?::text) = 'string' AND body::jsonb ->> ?::text = ?::text"
            }
        }
    }

    /// `body[field]` is an object whose entry `key` is the string `value`: binds (field, key,
    /// value). The key is compared as a value (SQLite's `json_each.key`, PostgreSQL's `->`
    /// with a text operand), never spliced into a JSON path, so no key can escape it.
    pub(crate) fn body_entry_equals(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                " AND EXISTS (SELECT 1 FROM json_each(objects.body, ?)
                   WHERE json_each.key = ? AND json_each.type = 'text' AND json_each.value = ?)"
            }
            Dialect::Postgres => {
                " AND jsonb_typeof(body::jsonb -> ?::text) = 'object'
                  AND (body::jsonb -> ?::text) ->> ?::text IS NOT NULL
                  AND jsonb_typeof((body::jsonb -> ?::text) -> ?::text) = 'string'
                  AND (body::jsonb -> ?::text) ->> ?::text = ?::text"
            }
        }
    }

    /// `body[field]` is missing, null or `{}`: binds the field this many times.
    pub(crate) fn body_empty(self) -> (&'static str, usize) {
        match self {
            Dialect::Sqlite => (
                " AND (json_type(body, ?) IS NULL OR json_type(body, ?) = 'null'
                   OR (json_type(body, ?) = 'object' AND json_extract(body, ?) = '{}'))",
                4,
            ),
            Dialect::Postgres => (
                " AND (body::jsonb -> ?::text IS NULL OR jsonb_typeof(body::jsonb -> ?::text) = 'null'
                   OR body::jsonb -> ?::text = '{}'::jsonb)",
                3,
            ),
        }
    }

    /// How a JSON field is named to the functions above.
    pub(crate) fn field(self, field: &str) -> Cell {
        match self {
            Dialect::Sqlite => Cell::Text(format!("$.{field}")),
            Dialect::Postgres => Cell::Text(field.to_owned()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

pub(crate) struct Sqlite {
    pub(crate) path: PathBuf,
    pub(crate) conn: Mutex<rusqlite::Connection>,
}

impl Sqlite {
    pub(crate) fn conn(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

struct SqliteTx<'a> {
    conn: &'a rusqlite::Connection,
    db: &'a Sqlite,
}

fn sqlite_params(params: &[Cell]) -> Vec<SqlValue> {
    params
        .iter()
        .map(|c| match c {
            Cell::Null => SqlValue::Null,
            Cell::Int(i) => SqlValue::Integer(*i),
            Cell::Text(s) => SqlValue::Text(s.clone()),
        })
        .collect()
}

impl Tx for SqliteTx<'_> {
    fn rows(&mut self, sql: &str, params: &[Cell]) -> Result<Vec<Vec<Cell>>, StoreError> {
        let err = |e| self.db.error(e);
        let mut stmt = self.conn.prepare_cached(sql).map_err(err)?;
        let columns = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(sqlite_params(params)))
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut cells = Vec::with_capacity(columns);
            for i in 0..columns {
                cells.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(i) => Cell::Int(i),
                    ValueRef::Real(f) => Cell::Int(f as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Cell::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(cells);
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, params: &[Cell]) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.db.error(e))?;
        let n = stmt
            .execute(rusqlite::params_from_iter(sqlite_params(params)))
            .map_err(|e| self.db.error(e))?;
        Ok(n as u64)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// Idle connections kept for reuse; more are opened when all are busy.
const IDLE_CONNECTIONS: usize = 8;
/// A connection idle longer than this is checked before use (the server may have restarted).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long opening a connection may take before the database counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Postgres {
    config: postgres::Config,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
    /// Idle connections and when each was last used.
    idle: Mutex<Vec<(postgres::Client, std::time::Instant)>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.shown)
            .finish()
    }
}

impl Postgres {
    /// Parses a `postgres://` URL; connects lazily.
    pub(crate) fn new(url: &str) -> Result<Postgres, StoreError> {
        let shown = redact_url(url);
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StoreError::Config(format!(
                "--database {shown}: {e}; expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
            ))
        })?;
        if config.get_ssl_mode() == postgres::config::SslMode::Require {
            return Err(StoreError::Config(format!(
                "--database {shown}: sslmode=require is not supported by this build; reach PostgreSQL over a private network or a TLS proxy (sslmode=prefer and disable work)"
            )));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A connection the network dropped silently (a failover) is found dead in seconds,
        // not the kernel's quarter of an hour: a renewal stuck on it would stall its worker.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        #[cfg(target_os = "linux")]
        config.tcp_user_timeout(Duration::from_secs(20));
        config.application_name("openrft");
        Ok(Postgres {
            config,
            shown,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A connection, and whether it sat idle long enough to need checking first.
    fn checkout(&self) -> Result<(postgres::Client, bool), StoreError> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match reused {
            Some((client, since)) if !client.is_closed() => {
                Ok((client, since.elapsed() > IDLE_CHECK))
            }
            _ => self.connect().map(|c| (c, false)),
        }
    }

    /// A new connection (call it off the runtime, like everything that touches a client).
    fn connect(&self) -> Result<postgres::Client, StoreError> {
        self.config
            .connect(postgres::NoTls)
            .map_err(|e| self.error(&e))
    }

    fn checkin(&self, client: postgres::Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_CONNECTIONS {
            idle.push((client, std::time::Instant::now()));
        }
    }

    /// Drops every idle connection (after the server restarted, say: they are all dead).
    fn forget_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub(crate) fn error(&self, e: &postgres::Error) -> StoreError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            // Class 08 (connection exception), 57P0x (shutdown, cannot connect now) and 53
            // (insufficient resources: too many connections, disk full) mean the server cannot
            // take the request now: try again later.
            if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") {
                return StoreError::Unavailable(format!(
                    "PostgreSQL at {}: {}",
                    self.shown,
                    db.message()
                ));
            }
            return StoreError::Postgres(format!("{} ({code})", db.message()));
        }
        // No database error: the connection failed, closed or timed out (an outage), or this
        // side could not encode or decode a value (a bug, not worth retrying).
        let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
        let text = e.to_string();
        if e.is_closed() || io || text.contains("timed out") || text.contains("connect") {
            return StoreError::Unavailable(format!("PostgreSQL at {}: {e}", self.shown));
        }
        StoreError::Postgres(text)
    }

    /// Runs `f` in a transaction on a pooled connection.
    pub(crate) fn transaction<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.with_client(|client| {
            let mut tx = client.transaction().map_err(|e| self.error(&e))?;
            let out = f(&mut PgTx {
                client: &mut tx,
                db: self,
            })?;
            tx.commit().map_err(|e| self.error(&e))?;
            Ok(out)
        })
    }

    /// Runs `f` on a pooled connection, outside a transaction (single reads).
    pub(crate) fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        self.with_client(|client| f(&mut PgTx { client, db: self }))
    }

    /// Runs `f` on a pooled connection. A pooled connection the server closed since (it
    /// restarted) fails before `f` runs anything: the pool is emptied and `f` runs on a new
    /// connection, so the first request after an outage does not fail for it. Everything that
    /// touches a client, dropping one included (its `Drop` blocks on the client's runtime),
    /// happens inside one [`off_runtime`] call.
    fn with_client<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let (mut client, check) = self.checkout()?;
            // `is_valid` costs a round trip, only paid for a connection that sat idle a while.
            if check && client.is_valid(Duration::from_secs(2)).is_err() {
                self.forget_idle();
                client = self.connect()?;
            }
            let out = f(&mut client);
            if matches!(out, Err(StoreError::Unavailable(_))) {
                self.forget_idle();
            }
            self.checkin(client);
            out
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        off_runtime(move || drop(idle));
    }
}

/// Runs `f` where the `postgres` client may block: on this thread, or, on a thread that drives
/// async tasks (where blocking on another runtime panics), on a scoped thread of its own.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

struct PgTx<'a, C: postgres::GenericClient> {
    client: &'a mut C,
    db: &'a Postgres,
}

/// `?` placeholders numbered as PostgreSQL's `$1`, `$2`, ….
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_params(params: &[Cell]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|c| -> Box<dyn postgres::types::ToSql + Sync> {
            match c {
                Cell::Null => Box::new(Option::<String>::None),
                Cell::Int(i) => Box::new(*i),
                Cell::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

impl<C: postgres::GenericClient> Tx for PgTx<'_, C> {
    fn rows(&mut self, sql: &str, params: &[Cell]) -> Result<Vec<Vec<Cell>>, StoreError> {
        use postgres::types::Type;
        let owned = pg_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            owned.iter().map(|p| p.as_ref()).collect();
        let rows = self
            .client
            .query(numbered(sql).as_str(), &refs)
            .map_err(|e| self.db.error(&e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut cells = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                let ty = column.type_();
                let cell = if *ty == Type::INT8 {
                    row.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::Int))
                } else if *ty == Type::INT4 {
                    row.try_get::<_, Option<i32>>(i)
                        .map(|v| v.map(|v| Cell::Int(v.into())))
                } else if *ty == Type::INT2 {
                    row.try_get::<_, Option<i16>>(i)
                        .map(|v| v.map(|v| Cell::Int(v.into())))
                } else if *ty == Type::BOOL {
                    row.try_get::<_, Option<bool>>(i)
                        .map(|v| v.map(|v| Cell::Int(v.into())))
                } else {
                    row.try_get::<_, Option<String>>(i)
                        .map(|v| v.map(Cell::Text))
                };
                cells.push(cell.map_err(|e| self.db.error(&e))?.unwrap_or(Cell::Null));
            }
            out.push(cells);
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, params: &[Cell]) -> Result<u64, StoreError> {
        let owned = pg_params(params);
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            owned.iter().map(|p| p.as_ref()).collect();
        self.client
            .execute(numbered(sql).as_str(), &refs)
            .map_err(|e| self.db.error(&e))
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// A database URL as messages may show it: the password replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // Query parameters may carry a password too (`?password=`); a password may hold `/` or `#`,
    // so the userinfo is everything before the last `@` ahead of the query.
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (userinfo, hostpath) = match before_query.rsplit_once('@') {
        Some((userinfo, hostpath)) => (Some(userinfo), hostpath),
        None => (None, before_query),
    };
    let mut out = format!("{scheme}://");
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@")),
            None => out.push_str(&format!("{userinfo}@")),
        }
    }
    out.push_str(hostpath);
    if let Some(query) = query {
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&query.join("&"));
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// The database behind a store.
pub(crate) enum Db {
    Sqlite(Sqlite),
    Postgres(Postgres),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Sqlite(s) => write!(f, "Sqlite({})", s.path.display()),
            Db::Postgres(p) => p.fmt(f),
        }
    }
}

impl Db {
    /// Runs `f` in one transaction; an error rolls everything back. SQLite's is `IMMEDIATE`
    /// (the write lock first), so two read-then-write transactions never deadlock.
    pub(crate) fn transaction<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let mut conn = db.conn();
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| db.error(e))?;
                let out = f(&mut SqliteTx { conn: &tx, db })?;
                tx.commit().map_err(|e| db.error(e))?;
                Ok(out)
            }
            Db::Postgres(db) => db.transaction(f),
        }
    }

    /// Runs reads on one connection.
    pub(crate) fn read<T: Send>(
        &self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        match self {
            Db::Sqlite(db) => {
                let conn = db.conn();
                f(&mut SqliteTx { conn: &conn, db })
            }
            Db::Postgres(db) => db.read(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered("SELECT ? FROM t WHERE a = ? AND b = ?"),
            "SELECT $1 FROM t WHERE a = $2 AND b = $3"
        );
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("postgres://rft:s3cret@db.internal:5432/rft"),
            "postgres://rft:***@db.internal:5432/rft"
        );
        assert_eq!(
            redact_url("postgres://rft@127.0.0.1:5432/rft?password=s3cret&sslmode=disable"),
            "postgres://rft@127.0.0.1:5432/rft?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgresql://a:b@h/db"),
            "postgresql://a:***@h/db"
        );
        assert!(!redact_url("postgres://u:p%40ss@h/d").contains("p%40ss"));
        // A password holding '/' or '#' or '@' is still hidden.
        for url in [
            "postgres://u:pa/ss@h/db",
            "postgres://u:pa#ss@h:5/db",
            "postgres://u:a@b@h/db",
        ] {
            let shown = redact_url(url);
            assert!(shown.starts_with("postgres://u:***@h"), "{url} -> {shown}");
        }
    }
}
