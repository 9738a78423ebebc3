//! The store's conformance suite (`agentkeys_store::conformance`) against
//! SQLite: file-backed stores in temporary directories, the second handle a
//! second `SqliteStore::open` of the same file (its own pool, writer tasks,
//! caches and write gate: what a second process has).
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use agentkeys_store::SqliteStore;
use agentkeys_store::conformance::Backend;

/// SQLite files, one temporary directory per store, removed with the backend.
struct SqliteBackend {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

impl Backend for SqliteBackend {
    type Store = SqliteStore;

    async fn start() -> Self {
        Self { dirs: Mutex::new(Vec::new()) }
    }

    async fn fresh(&self) -> SqliteStore {
        let dir = tempfile::Builder::new().prefix("conf-sqlite-").tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        self.dirs.lock().unwrap().push(dir);
        SqliteStore::open(&path).await.unwrap()
    }

    async fn second_handle(&self, store: &SqliteStore) -> SqliteStore {
        let path = store.path().expect("a file-backed store").to_path_buf();
        SqliteStore::open(&path).await.unwrap()
    }

    async fn forget_facts(&self, store: &SqliteStore, ids: &[ulid::Ulid]) {
        store.forget_facts(ids).await.unwrap();
    }
}

agentkeys_store::conformance_tests!(SqliteBackend);
agentkeys_store::webhook_conformance_tests!(SqliteBackend);
agentkeys_store::owner_mail_conformance_tests!(SqliteBackend);
agentkeys_store::mail_backend_conformance_tests!(SqliteBackend);
agentkeys_store::guardrail_conformance_tests!(SqliteBackend);
agentkeys_store::search_conformance_tests!(SqliteBackend);
agentkeys_store::console_views_conformance_tests!(SqliteBackend);
