//! Test support: a fresh database per test, dropped afterwards, so test
//! binaries (and tests inside them) can run in parallel on one server.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

use crate::meta::StoreError;

/// The environment variable naming the server tests use (a URL to an existing
/// database the user may create databases from).
pub const TEST_DATABASE_ENV: &str = "AGENTKEYS_TEST_DATABASE_URL";

/// The server tests use when [`TEST_DATABASE_ENV`] is not set.
pub const TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database named `ak_test_<ulid>` created for one test and dropped (with
/// `FORCE`, closing connections still open to it) when this value is dropped or
/// [`TempDatabase::drop_database`] is awaited.
#[derive(Debug)]
pub struct TempDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
    dropped: bool,
}

impl TempDatabase {
    /// Creates a new empty database on the test server ([`TEST_DATABASE_ENV`],
    /// else [`TEST_DATABASE_URL`]).
    pub async fn create() -> Result<Self, StoreError> {
        let admin_url = std::env::var(TEST_DATABASE_ENV).unwrap_or_else(|_| TEST_DATABASE_URL.to_owned());
        let admin = PgConnectOptions::from_str(&admin_url)
            .map_err(|e| StoreError::Backend(format!("{TEST_DATABASE_ENV}={admin_url:?} is not a PostgreSQL URL: {e}")))?;
        let name = format!("ak_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut conn = admin.connect().await.map_err(|e| {
            StoreError::Backend(format!("cannot reach the test PostgreSQL at {admin_url} (set {TEST_DATABASE_ENV}): {e}"))
        })?;
        conn.execute(&*format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| StoreError::Backend(format!("cannot create test database {name}: {e}")))?;
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Ok(Self { admin, name, url, dropped: false })
    }

    /// The URL of the new database, for [`PgStore::connect`](super::PgStore::connect).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now (closing its connections).
    pub async fn drop_database(mut self) -> Result<(), StoreError> {
        self.dropped = true;
        drop_now(&self.admin, &self.name).await
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await, and may run inside a runtime: a thread of its own
        // with a runtime of its own, joined so the database is gone afterwards.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(drop_now(&admin, &name)).map_err(|e| e.to_string())
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("cannot drop test database {}: {err}", self.name),
            Err(_) => eprintln!("cannot drop test database {}: the dropping thread panicked", self.name),
        }
    }
}

async fn drop_now(admin: &PgConnectOptions, name: &str) -> Result<(), StoreError> {
    let mut conn = admin.connect().await.map_err(|e| StoreError::Backend(e.to_string()))?;
    conn.execute(&*format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| StoreError::Backend(format!("cannot drop test database {name}: {e}")))?;
    let _ = conn.close().await;
    Ok(())
}

/// `url` with its database path replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_path_is_replaced_and_the_rest_kept() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u:p@h/db?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
    }
}
