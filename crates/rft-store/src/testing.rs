//! Support for tests that run against real services: the database URL CI gives, and a fresh
//! database per test, so tests running at once never see each other's rows.

use crate::{redact_url, StoreError};

/// The PostgreSQL URL tests use (`RFT_TEST_DATABASE_URL`). Without it, `Err` when
/// `RFT_REQUIRE_SERVICES` is set (CI: the tests must fail, not skip), else `Ok(None)`.
pub fn postgres_url() -> Result<Option<String>, String> {
    match std::env::var("RFT_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(Some(url)),
        _ if std::env::var_os("RFT_REQUIRE_SERVICES").is_some() => Err(
            "RFT_REQUIRE_SERVICES is set but RFT_TEST_DATABASE_URL is not: start PostgreSQL with scripts/services.sh".into(),
        ),
        _ => Ok(None),
    }
}

/// Creates an empty database next to the one `url` names and returns its URL.
pub fn fresh_database(url: &str) -> Result<String, StoreError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "rft_t{}_{}_{}",
        std::process::id(),
        nanos,
        COUNT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = url.to_owned();
    let create = format!("CREATE DATABASE {name}");
    let shown = redact_url(url);
    std::thread::spawn(move || -> Result<(), String> {
        let mut client =
            postgres::Client::connect(&admin, postgres::NoTls).map_err(|e| e.to_string())?;
        client.batch_execute(&create).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| StoreError::Unavailable("creating a test database panicked".into()))?
    .map_err(|e| StoreError::Unavailable(format!("{shown}: {e}")))?;
    Ok(replace_database(url, &name))
}

/// `url` with its database name (the path) replaced.
fn replace_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, query) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path.split_once('?').map(|(_, q)| q)),
        None => (rest, None),
    };
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}
