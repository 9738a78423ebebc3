//! The metadata store on PostgreSQL ([`PgStore`]), for several `serve` nodes
//! sharing one database (feature `postgres`).
//!
//! It implements every trait [`SqliteStore`](crate::SqliteStore) does, with the
//! same documented contracts. What SQLite got from having one writer at a time,
//! this backend states and enforces for writers in many processes:
//!
//! - **One audit chain.** Every append is one statement
//!   (`agentkeys_audit_append`) that locks the one-row chain head
//!   (`audit_chain`, `FOR UPDATE`) inside its transaction, seals, inserts and
//!   moves it in the server, so appends from all nodes are serialized onto one
//!   chain without holding the head across a node's round trips; each returned
//!   hash is recomputed by [`agentkeys_audit`] before a receipt exists. An
//!   audited write does its row change and its record in one transaction ([`audit`]).
//! - **Index rows visible in `seq` order** ([`index`]): `seq` comes from a
//!   counter row held locked until the indexing transaction commits.
//! - **Single claim** of outbound rows: `FOR UPDATE SKIP LOCKED` plus leases
//!   ([`queue`]).
//! - **Compare-and-set** writes (owner nonces, idempotency keys, pairing,
//!   grant changes, enrollment redemption) are single conditional statements or
//!   rely on unique constraints, which PostgreSQL re-checks against concurrent
//!   transactions.
//! - **Cross-node events**: the index transaction notifies `agentkeys_mail` and
//!   [`PgEvents`] turns notifications into local events ([`events`]).
//! - **Shared failure counters** (`Throttles`): one row per key rewritten by
//!   one upsert under its row lock, so no node's failure is lost ([`throttles`]).
//!
//! Transactions run at PostgreSQL's default `READ COMMITTED`: every statement
//! sees what was committed before it started, and a statement that waited for a
//! row lock re-reads the row it waited for. Objects that existence checks rely
//! on are never deleted (owners, agents, keys, grants); a domain, which can be
//! removed, is locked (`FOR SHARE`) by the writes that need it. An inbox is
//! deleted only once it has expired, and by then every lookup already answers
//! it as absent; the deletion is one conditional `DELETE … RETURNING`, so two
//! sweeping nodes remove (and record) it once.
//!
//! Errors map like SQLite's: a unique violation is `Conflict`, everything the
//! database or the network does wrong is `Backend` (a full disk, a lost
//! connection, a pool timeout), never a panic.

pub(crate) mod audit;
mod console;
mod console_views;
mod domain_status;
pub mod events;
mod idempotency;
pub(crate) mod index;
mod mail_backends;
mod meta;
mod owner_mail;
mod policies;
mod guardrails;
pub(crate) mod queue;
mod testing;
mod throttles;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::UnixTime;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor as _, Postgres, Transaction};

pub use events::{MAIL_CHANNEL, PAIRING_CHANNEL, PgEvents};
pub use index::MAX_NOTIFY_PAYLOAD_BYTES;
pub use throttles::THROTTLE_PRUNE_INTERVAL;
#[doc(hidden)]
pub use testing::{TEST_DATABASE_ENV, TEST_DATABASE_URL, TempDatabase};

use crate::meta::{StoreError, StoreHealth};
use crate::sqlite::Clock;

/// Most connections one store (one node) keeps open to the database.
pub const MAX_CONNECTIONS: u32 = 16;

/// How long one of our sessions may sit idle inside an open transaction before
/// PostgreSQL ends it. A node that freezes (or whose host dies without closing
/// its sockets) between statements would otherwise hold the audit chain head and
/// the index `seq` counter locked, stalling every node, until TCP noticed.
/// Every transaction of ours runs its statements back to back, far below this.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// A pooled connection idle at least this long is pinged before it is handed
/// out; one used more recently is handed out as it is. This is HikariCP's
/// `aliveBypassWindowMs` (500 ms): under load every connection is reused within
/// milliseconds and pays no ping (sqlx already pings each one as it returns to
/// the pool), while after a quiet spell, the usual moment of a database restart
/// or failover, a dead connection is found and replaced before any statement
/// meets it. A connection that died within the window fails the statement it is
/// handed to, as one in flight at the moment of the restart does; transactions
/// retry their `BEGIN` on another connection ([`PgStore::begin`]).
pub const ALIVE_BYPASS_WINDOW: Duration = Duration::from_millis(500);

/// How long a request waits for a free pooled connection before it fails with
/// `Backend` (the database is unreachable or every connection is busy).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Key of the session-level advisory lock held while the schema migrates, so
/// nodes starting together migrate one after the other (`0x616b6d6967`, "akmig").
const MIGRATION_LOCK: i64 = 0x0061_6b6d_6967;

/// The schema, embedded from `crates/store/migrations/postgres/` at compile time.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// The PostgreSQL metadata store. Cheap to clone: clones share the pool and the
/// audit writer.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    /// Where the connections go (for [`PgEvents`]' own listening connection).
    options: Arc<PgConnectOptions>,
    pub(crate) clock: Clock,
    /// The writer that batches stand-alone audit appends ([`audit`]).
    audit: audit::AuditWriter,
    /// When this handle last pruned expired throttle counters (Unix ms, 0: never).
    throttles_pruned: Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`) with a
    /// pool of up to [`MAX_CONNECTIONS`] and brings its schema up to date.
    ///
    /// Several nodes may connect at the same moment: the migration runs under a
    /// session advisory lock, so the first migrates and the others find the
    /// schema done.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("agentkeys");
        Self::connect_with(options, MAX_CONNECTIONS).await
    }

    /// [`PgStore::connect`] with explicit options and pool size.
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self, StoreError> {
        let options = options.options([(
            "idle_in_transaction_session_timeout",
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis().to_string(),
        )]);
        // sqlx's own test pings every connection on every checkout, a round
        // trip per checkout on top of the one it spends as the connection
        // returns; ours pings only a connection idle for ALIVE_BYPASS_WINDOW.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= ALIVE_BYPASS_WINDOW {
                        // An error closes this connection; sqlx takes another.
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to the PostgreSQL metadata database: {e}")))?;
        let store = Self {
            pool,
            options: Arc::new(options),
            clock: Arc::new(crate::sqlite::system_clock),
            audit: audit::AuditWriter::default(),
            throttles_pruned: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The same store stamping audit records with `clock` (Unix seconds) instead
    /// of the system clock, for deterministic tests.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        // A writer spawned before would stamp with the old clock.
        self.audit = audit::AuditWriter::default();
        self
    }

    /// Closes every pooled connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs the embedded migrations while one connection holds
    /// [`MIGRATION_LOCK`]. The lock is a session lock: if this process dies, the
    /// server drops it with the connection.
    async fn migrate(&self) -> Result<(), StoreError> {
        let failed = |e: &dyn std::fmt::Display| StoreError::Backend(format!("cannot migrate the metadata schema: {e}"));
        let mut conn = self.pool.acquire().await.map_err(|e| failed(&e))?;
        sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await.map_err(|e| failed(&e))?;
        // On another pooled connection (sqlx's `run` on a borrowed connection
        // makes this future unusable in `tokio::spawn`); the lock above is what
        // orders the nodes.
        let migrated = MIGRATOR.run(&self.pool).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
        migrated.map_err(|e| failed(&e))?;
        if let Err(e) = unlocked {
            // The lock must not outlive this attempt: close the session instead.
            conn.close_on_drop();
            return Err(failed(&e));
        }
        Ok(())
    }

    /// Starts a transaction. Dropped without commit, it is rolled back before
    /// its connection is reused (sqlx queues the `ROLLBACK`).
    ///
    /// A `BEGIN` that meets a lost connection (one the database ended while it
    /// sat in the pool, see [`ALIVE_BYPASS_WINDOW`]) is sent again on another:
    /// `BEGIN` changes nothing, so repeating it is safe, and the failed
    /// connection is closed, not pooled again. At most one attempt per pooled
    /// connection and one more, so a database that is really gone still fails
    /// fast. Nothing after `BEGIN` is ever repeated: a statement or `COMMIT`
    /// whose connection is lost may or may not have taken effect.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut attempts = self.pool.options().get_max_connections() + 1;
        loop {
            attempts -= 1;
            match self.pool.begin().await {
                Err(err) if attempts > 0 && connection_lost(&err) => {
                    tracing::info!(error = %err, "BEGIN met a lost database connection; starting it on another");
                }
                other => return other.map_err(backend),
            }
        }
    }

    /// Readiness: the database answers a query (`SELECT 1`).
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        self.pool.execute("SELECT 1").await.map_err(backend)?;
        Ok(())
    }

    /// Where this store connects: for a connection of its own ([`PgEvents`]),
    /// or another store on the same database ([`PgStore::connect_with`]).
    pub fn connect_options(&self) -> PgConnectOptions {
        (*self.options).clone()
    }
}

#[async_trait::async_trait]
impl crate::meta::Deployment for PgStore {
    async fn seed_fingerprint(&self, fingerprint: &[u8; 32]) -> Result<[u8; 32], StoreError> {
        // Whoever inserts first wins (the primary key); everyone then reads the
        // winner's value in a statement of its own (a fresh snapshot).
        sqlx::query("INSERT INTO deployment (name, value) VALUES ('seed_fingerprint', $1) ON CONFLICT (name) DO NOTHING")
            .bind(fingerprint.as_slice())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT value FROM deployment WHERE name = 'seed_fingerprint'")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        crate::meta::fingerprint_from(&stored)
    }
}

#[async_trait::async_trait]
impl StoreHealth for PgStore {
    /// Readiness of the metadata database: commits a transaction that is given a
    /// transaction id (so its commit is written and flushed like any change)
    /// without touching a table.
    async fn check_writable(&self) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_current_xact_id()::text").execute(&mut *tx).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Readiness of the audit log: the audit writer is running and commits a
    /// transaction on its path (locking the chain head) without a record.
    async fn check_audit_writable(&self) -> Result<(), StoreError> {
        self.audit.probe(self).await
    }
}

/// Whether `err` says the connection itself is gone: an I/O failure, or the
/// server ending the session (SQLSTATE class 57P0x: administrator command,
/// crash or start-up shutdown) or a connection exception (class 08).
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("57P0") || code.starts_with("08")),
        _ => false,
    }
}

/// Any database failure we do not map more precisely: the database's message
/// (with its SQLSTATE when it has one), or the I/O or pool failure.
pub(crate) fn backend(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => StoreError::Backend(format!("{} (SQLSTATE {code})", db.message())),
            None => StoreError::Backend(db.message().to_owned()),
        },
        _ => StoreError::Backend(err.to_string()),
    }
}

/// The SQLSTATE of a database error.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE `foreign_key_violation`.
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// Whether `err` is a unique violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    sqlstate(err).as_deref() == Some(UNIQUE_VIOLATION)
}

/// Whether `err` is a foreign-key violation.
pub(crate) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    sqlstate(err).as_deref() == Some(FOREIGN_KEY_VIOLATION)
}

/// The constraint an integrity error names.
pub(crate) fn constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

/// Maps the error of an `INSERT`: a unique violation is a conflict on `what`.
pub(crate) fn insert_error(err: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&err) {
        return StoreError::Conflict { what: what() };
    }
    backend(err)
}

/// `v` as a database BIGINT; `Invalid` naming `what` if it does not fit.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} does not fit the database")))
}

/// Lowercase hex of 32 bytes.
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    agentkeys_audit::hash_to_hex(bytes)
}
