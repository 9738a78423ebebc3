//! The store's conformance suite (`agentkeys_store::conformance`) against
//! PostgreSQL (`AGENTKEYS_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`): every store a database of
//! its own (`conf_<ulid>`, dropped when the check ends), the second handle a
//! second `PgStore` on it (its own pool and audit writer: what another node has).
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::sync::Mutex;

use agentkeys_store::PgStore;
use agentkeys_store::conformance::Backend;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

/// Connections per store: enough for the concurrent tasks of a check.
const POOL: u32 = 8;

/// PostgreSQL databases, one per store, dropped with the backend.
struct PgBackend {
    admin: PgConnectOptions,
    databases: Mutex<Vec<String>>,
}

impl PgBackend {
    async fn admin_execute(&self, sql: &str) {
        let mut conn = self.admin.connect().await.expect("the test PostgreSQL server");
        conn.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }
}

impl Backend for PgBackend {
    type Store = PgStore;

    async fn start() -> Self {
        let url = std::env::var("AGENTKEYS_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        Self { admin: PgConnectOptions::from_str(&url).unwrap(), databases: Mutex::new(Vec::new()) }
    }

    async fn fresh(&self) -> PgStore {
        let name = format!("conf_{}", ulid::Ulid::new().to_string().to_lowercase());
        self.admin_execute(&format!("CREATE DATABASE \"{name}\"")).await;
        self.databases.lock().unwrap().push(name.clone());
        PgStore::connect_with(self.admin.clone().database(&name), POOL).await.unwrap()
    }

    async fn second_handle(&self, store: &PgStore) -> PgStore {
        PgStore::connect_with(store.connect_options(), POOL).await.unwrap()
    }

    async fn forget_facts(&self, store: &PgStore, ids: &[ulid::Ulid]) {
        store.forget_facts(ids).await.unwrap();
    }

    async fn finish(&self) {
        let names = std::mem::take(&mut *self.databases.lock().unwrap());
        for name in names {
            self.admin_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
        }
    }
}

agentkeys_store::conformance_tests!(PgBackend);
agentkeys_store::webhook_conformance_tests!(PgBackend);
agentkeys_store::owner_mail_conformance_tests!(PgBackend);
agentkeys_store::mail_backend_conformance_tests!(PgBackend);
agentkeys_store::guardrail_conformance_tests!(PgBackend);
agentkeys_store::search_conformance_tests!(PgBackend);
agentkeys_store::console_views_conformance_tests!(PgBackend);
