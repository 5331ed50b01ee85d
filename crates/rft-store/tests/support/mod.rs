//! Runs a store test on each database: SQLite in a temporary folder, then PostgreSQL in a
//! fresh database when `RFT_TEST_DATABASE_URL` names a server.
#![allow(dead_code)]

use std::cell::RefCell;

use rft_store::{Store, StoreError};

thread_local! {
    /// The PostgreSQL URL of the test running on this thread, for [`side_sql`].
    static CURRENT: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn io(source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: "tmp".into(),
        source,
    }
}

/// A store on SQLite in `dir`.
pub(crate) fn sqlite(dir: &std::path::Path) -> Result<Store, StoreError> {
    Store::open(dir)
}

/// A store on a fresh PostgreSQL database, or `None` without a server (a failure instead when
/// `RFT_REQUIRE_SERVICES` is set).
pub(crate) fn postgres(dir: &std::path::Path) -> Result<Option<(Store, String)>, StoreError> {
    let url = match rft_store::testing::postgres_url() {
        Ok(Some(url)) => url,
        Ok(None) => {
            eprintln!("RFT_TEST_DATABASE_URL is not set: skipping the PostgreSQL half");
            return Ok(None);
        }
        Err(message) => panic!("{message}"),
    };
    let url = rft_store::testing::fresh_database(&url)?;
    Ok(Some((Store::connect(Some(&url), dir)?, url)))
}

/// Runs `test` on SQLite, then on PostgreSQL.
pub(crate) fn on_each_backend(
    test: impl Fn(&Store) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().map_err(io)?;
    test(&sqlite(dir.path())?)?;
    let dir = tempfile::tempdir().map_err(io)?;
    if let Some((store, url)) = postgres(dir.path())? {
        CURRENT.with(|c| *c.borrow_mut() = Some(url));
        let result = test(&store);
        CURRENT.with(|c| *c.borrow_mut() = None);
        result?;
    }
    Ok(())
}

/// Runs SQL on the store's database from another connection: `sqlite` or `postgres`, whichever
/// the store runs on.
pub(crate) fn side_sql(store: &Store, sqlite: &str, postgres: &str) -> Result<(), StoreError> {
    if store.is_local() {
        let path = store.root().join("openrft.db");
        let conn = rusqlite::Connection::open(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        conn.execute_batch(sqlite)
            .map_err(|source| StoreError::Sqlite { path, source })
    } else {
        let url = CURRENT
            .with(|c| c.borrow().clone())
            .ok_or_else(|| StoreError::Config("no PostgreSQL test database".into()))?;
        let sql = postgres.to_owned();
        std::thread::spawn(move || -> Result<(), String> {
            let mut client =
                postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
            client.batch_execute(&sql).map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| StoreError::Postgres("side connection panicked".into()))?
        .map_err(StoreError::Postgres)
    }
}
