//! [`MetadataStore`] on SQLite: one database file in WAL mode, shared by the server
//! and the CLI.
//!
//! Durability and concurrency settings (DESIGN.md §8):
//! - `journal_mode=WAL`: readers never block the writer, so RCPT and AUTH lookups
//!   go on while the CLI writes;
//! - `synchronous=FULL`: a committed transaction survives power loss;
//! - `foreign_keys=ON`, `busy_timeout` of [`BUSY_TIMEOUT`]: a second process (the
//!   CLI next to a running server) waits for the write lock instead of failing.
//!
//! Writes that read before they write run in `BEGIN IMMEDIATE` transactions, so
//! the checks that produce precise `NotFound`/`Conflict`/`Invalid` errors see the
//! same state the write commits against.
//!
//! Audit appends read the chain head and insert the next record in such a
//! transaction too: the write lock is held from `BEGIN`, across connections and
//! processes, so two writers can never seal onto the same head. An audited write
//! does its row change and its audit insert in the same transaction and hands
//! out the receipt only after the commit.

use std::fmt::Display;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_audit::{
    AuditEvent, AuditReceipt, AuditRecord, ChainHead, Outcome, SealedRecord, canonical_json, hash_from_hex, hash_to_hex,
};
use agentkeys_core::{
    Address, AgentId, AuthFacts, Credentials, Domain, Grant, GrantId, InboxPattern, InboxStatus, KeyFacts, KeyHash, KeyId, OwnerId,
    UnixTime,
};
use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection};

use crate::meta::{
    AgentRecord, DomainKeyRecord, InboxExpiry, InboxRecord, KeyRecord, AuditLog, AuthLookup, Checkpoints, Directory, KeysAndGrants, OwnerApproval, Outbox, Deployment, Pairing, Recipients, StoreHealth, NewOutbound, OwnerRecord, QueueEntry, Recipient, StoreError,
};
use crate::group_commit::GroupCommit;
pub(crate) use crate::write_tx::WriteTx;
use crate::meta::{AuditFilter, CheckpointRecord, EnrollmentTicketRecord, MAX_AUDIT_SEARCH_PAGE, NonceUse, PairingRecord, PairingStatus};

/// Most connections the pool opens. SQLite has one writer at a time; WAL lets the
/// others read concurrently, and a handful of readers covers the SMTP lookups.
const MAX_CONNECTIONS: u32 = 8;

/// Connections kept outside the pool for one-statement queries on the hot paths
/// ([`SqliteStore::hot`]).
const HOT_CONNECTIONS: usize = 4;


/// Readiness (`/readyz`) wants at least this much space available on the
/// database's filesystem: less, and the next write that grows the file fails.
pub const READINESS_MIN_FREE_BYTES: u64 = 1024 * 1024;

/// How long a statement waits for a lock held by another connection or process
/// before failing with `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times opening runs the migrations when other processes (server and
/// CLI starting together) apply them at the same moment: an attempt fails only
/// when another process applied a migration in between, so with `M` migrations
/// no opener fails more than `M` times; one more attempt always finds them done.
fn migration_attempts() -> usize {
    MIGRATOR.iter().count() + 1
}

/// The schema, embedded from `crates/store/migrations/sqlite/` at compile time (each backend has its own directory).
static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Where the store reads the time it stamps on audit records.
pub(crate) type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The system clock, in Unix seconds.
pub(crate) fn system_clock() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The SQLite metadata store. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// The database file (`None` in memory), for [`SqliteStore::path`].
    file: Option<Arc<std::path::PathBuf>>,
    /// The directory of the database file (`None` in memory), for the free-space
    /// part of readiness ([`READINESS_MIN_FREE_BYTES`]).
    dir: Option<Arc<std::path::PathBuf>>,
    /// Ping-free connections for the hot paths; `None` for an in-memory database,
    /// which lives in its one pooled connection.
    hot: Option<Arc<HotConnections>>,
    /// One writer at a time in this process ([`WriteGate`]).
    pub(crate) gate: WriteGate,
    pub(crate) clock: Clock,
    /// The writer that batches stand-alone audit appends ([`crate::group_commit`]).
    group: GroupCommit,
    /// The writer that batches outbound queue inserts ([`crate::enqueue`]).
    enqueuer: crate::enqueue::Enqueuer,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file at `path` and brings its
    /// schema up to date. The parent directory must exist.
    ///
    /// The server and the CLI may open the same file at the same time.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, |options| options).await
    }

    /// [`SqliteStore::open`] with `extra` applied to the connect options of every
    /// connection (tests: `max_page_count` to make the database full).
    pub(crate) async fn open_with(
        path: &Path,
        extra: impl FnOnce(SqliteConnectOptions) -> SqliteConnectOptions,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let options = extra(options);
        // No ping before handing out a connection: a local database file has no
        // network to drop it, a broken connection still fails its query, and the
        // ping is a round trip through sqlx's worker thread on every RCPT and AUTH.
        let pool_options = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            // Never hand out a connection left inside a transaction (crate::write_tx).
            .before_acquire(|conn, _| Box::pin(async move { Ok(crate::write_tx::clean_on_acquire(conn)) }));
        // A first connection switches a new file to WAL, which needs the file to
        // itself: while another process does the same, SQLite answers SQLITE_BUSY
        // at once (its busy handler does not wait for that lock), so opening
        // waits and tries again, up to BUSY_TIMEOUT in all.
        let started = std::time::Instant::now();
        let pool = loop {
            match pool_options.clone().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("5") && started.elapsed() < BUSY_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(StoreError::Backend(format!("cannot open metadata database {}: {e}", path.display()))),
            }
        };
        let hot = Some(Arc::new(HotConnections::new(options)));
        let mut store = Self::from_parts(pool, hot);
        store.file = Some(Arc::new(path.to_path_buf()));
        store.dir = path.parent().map(|d| Arc::new(if d.as_os_str().is_empty() { Path::new(".") } else { d }.to_path_buf()));
        store.migrate().await?;
        Ok(store)
    }

    /// A private in-memory database with the full schema, for tests. Nothing
    /// survives the store (or its last clone) being dropped.
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(backend)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // One connection that never closes: the database lives as long as it does.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = Self::from_parts(pool, None);
        store.migrate().await?;
        Ok(store)
    }

    /// The same store stamping audit records with `clock` (Unix seconds) instead
    /// of the system clock, for deterministic tests.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        // A writer spawned before would stamp with the old clock.
        self.group = GroupCommit::default();
        self
    }

    fn from_parts(pool: SqlitePool, hot: Option<Arc<HotConnections>>) -> Self {
        Self {
            pool,
            file: None,
            dir: None,
            hot,
            gate: WriteGate::default(),
            clock: Arc::new(system_clock),
            group: GroupCommit::default(),
            enqueuer: crate::enqueue::Enqueuer::default(),
        }
    }

    /// The same store without its writer tasks' handles, for those tasks: a task
    /// holding a handle to its own channel would never see it close.
    pub(crate) fn detached(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            file: self.file.clone(),
            dir: self.dir.clone(),
            hot: self.hot.clone(),
            gate: self.gate.clone(),
            clock: self.clock.clone(),
            group: GroupCommit::default(),
            enqueuer: crate::enqueue::Enqueuer::default(),
        }
    }

    /// The database file this store opened; `None` for an in-memory database.
    /// Another [`SqliteStore::open`] of it is what a second process has.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref().map(std::path::PathBuf::as_path)
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        if let Some(hot) = &self.hot {
            hot.close().await;
        }
        self.pool.close().await;
    }

    /// [`SqliteStore::hot`] for one writing statement, with this process's write
    /// turn ([`WriteGate`]) held as long as the connection.
    pub(crate) async fn hot_write(&self) -> Result<HotConnection<'_>, StoreError> {
        let turn = self.gate.enter().await;
        let mut conn = self.hot().await?;
        conn.turn = Some(turn);
        Ok(conn)
    }

    /// A connection for ONE statement on a hot path (RCPT and AUTH lookups, index
    /// and queue inserts). sqlx's pool pings every connection returned to it, a
    /// second round trip through the connection's worker thread for each query;
    /// these connections are kept apart and never pinged. A statement is atomic
    /// on its own (autocommit), and a cancelled one leaves the connection usable
    /// (the worker finishes it before the next). Transactions use the pool.
    pub(crate) async fn hot(&self) -> Result<HotConnection<'_>, StoreError> {
        let conn = match &self.hot {
            Some(hot) => Hot::Kept(hot.get().await?),
            None => Hot::Pooled(self.pool.acquire().await.map_err(backend)?),
        };
        Ok(HotConnection { conn, turn: None })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                // Another process may have applied the same migration between our
                // read of the migration table and our write; the next attempt sees it.
                Err(err) if attempt < migration_attempts() => {
                    tracing::debug!(%err, attempt, "metadata migration failed, retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    return Err(StoreError::Backend(format!("cannot migrate the metadata schema: {err}")));
                }
            }
        }
    }

    /// Starts a write transaction holding the write lock from the start, so the
    /// existence checks inside it cannot go stale before the commit. Waits for
    /// this process's [`WriteGate`] first.
    pub(crate) async fn write_tx(&self) -> Result<WriteTx, StoreError> {
        WriteTx::begin(&self.pool, self.gate.enter().await).await
    }

    /// Revokes the row `statement` matches (`?1` = now, `?2` = id, `?3` = owner or
    /// NULL for the operator), keeping an earlier revocation time, with its audit
    /// record in the same transaction. `NotFound { what }` when nothing matches, so
    /// another owner's object answers exactly like a missing one.
    async fn revoke_audited(
        &self,
        statement: &'static str,
        id: &str,
        owner: Option<&OwnerId>,
        now: UnixTime,
        what: String,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        // SQLite counts matched rows, so a second revocation still affects one row.
        let done = sqlx::query(statement)
            .bind(now)
            .bind(id)
            .bind(owner.map(OwnerId::as_str))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        let ended = if statement == REVOKE_GRANT { self.end_grant_inboxes(&mut tx, id, now, event).await? } else { None };
        let receipt = commit_audited(tx, sealed).await?;
        let _ended = ended.map(SealedRecord::into_receipt);
        Ok(receipt)
    }

    /// Ends the inboxes an agent created under grant `grant` no later than
    /// `end` and, if any ended, appends their `inbox.end_with_grant` record
    /// (after `change`'s, with its actor) inside `tx`.
    async fn end_grant_inboxes(
        &self,
        tx: &mut SqliteConnection,
        grant: &str,
        end: UnixTime,
        change: &AuditEvent,
    ) -> Result<Option<SealedRecord>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            // An inbox created in the second the grant ends ends one second
            // after its creation (an expiry is always after the creation).
            "UPDATE inboxes SET expires_at = MAX(?2, created_at + 1)
              WHERE created_by_grant = ?1 AND (expires_at IS NULL OR expires_at > ?2)
              RETURNING address, owner",
        )
        .bind(grant)
        .bind(end)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let Some((_, owner)) = rows.first() else { return Ok(None) };
        let mut addresses: Vec<String> = rows.iter().map(|(a, _)| a.clone()).collect();
        addresses.sort();
        let event = crate::meta::inbox_end_with_grant_event(change, owner, grant, end, &addresses);
        Ok(Some(self.append_in(tx, &event).await?))
    }

    /// `Err` when the database's filesystem has less than
    /// [`READINESS_MIN_FREE_BYTES`] available: SQLite may still commit small
    /// transactions into WAL space it already has, but the next one that needs
    /// the file to grow fails with `SQLITE_FULL`.
    fn check_free_space(&self) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let stat = rustix::fs::statvfs(dir.as_path())
            .map_err(|e| StoreError::Backend(format!("cannot read the database filesystem's free space: {e}")))?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < READINESS_MIN_FREE_BYTES {
            return Err(StoreError::Backend(format!(
                "database or disk is full: {free} bytes free on the database's filesystem, below {READINESS_MIN_FREE_BYTES}"
            )));
        }
        Ok(())
    }

    /// Appends `event` to the audit log inside `tx` (which holds the write lock, so
    /// the head cannot move before the commit). The caller commits, then turns
    /// the sealed record into its receipt.
    pub(crate) async fn append_in(&self, tx: &mut SqliteConnection, event: &AuditEvent) -> Result<SealedRecord, StoreError> {
        let head = read_head(tx).await?;
        let sealed = seal_event(&head, (self.clock)(), event)?;
        insert_sealed(tx, &sealed).await?;
        Ok(sealed)
    }
}

/// The readiness probe's write inside `tx`: a new value in the database header's
/// `user_version` (the schema does not use it: sqlx tracks migrations in a
/// table), so the commit writes a page and syncs like any other, and no table
/// grows.
pub(crate) async fn probe_write(tx: &mut SqliteConnection) -> Result<(), StoreError> {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000;
    sqlx::query(&format!("PRAGMA user_version = {n}")).persistent(false).execute(&mut *tx).await.map_err(backend)?;
    Ok(())
}

/// The chain head as `tx` sees it.
pub(crate) async fn read_head(tx: &mut SqliteConnection) -> Result<ChainHead, StoreError> {
    let head = sqlx::query_as(AUDIT_HEAD).fetch_optional(&mut *tx).await.map_err(backend)?;
    head_from_row(head)
}

/// Seals `event` onto `head` at `ts`; an event that breaks a limit is `Invalid`.
pub(crate) fn seal_event(head: &ChainHead, ts: UnixTime, event: &AuditEvent) -> Result<SealedRecord, StoreError> {
    SealedRecord::seal(head, ts, event).map_err(|e| StoreError::Invalid(format!("cannot audit {}: {e}", event.operation)))
}

/// Inserts sealed records (in chain order) inside `tx` with one statement per
/// [`INSERT_ROWS_PER_STATEMENT`] records.
pub(crate) async fn insert_sealed_many(tx: &mut SqliteConnection, records: &[&SealedRecord]) -> Result<(), StoreError> {
    for chunk in records.chunks(INSERT_ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO audit_log (seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "(?, ?, ?, ?, ?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?, ?, ?, ?, ?)" });
        }
        let mut query = sqlx::query(&sql);
        for sealed in chunk {
            let r = sealed.record();
            let seq = i64::try_from(r.seq)
                .map_err(|_| StoreError::Backend(format!("audit seq {} does not fit the database", r.seq)))?;
            let detail = canonical_json(&r.detail)
                .map_err(|e| StoreError::Invalid(format!("cannot audit {}: {e}", r.operation)))?;
            query = query
                .bind(seq)
                .bind(r.ts)
                .bind(r.actor.to_string())
                .bind(r.operation.clone())
                .bind(r.subject.clone())
                .bind(r.outcome.as_str())
                .bind(detail)
                .bind(hash_to_hex(&r.prev_hash))
                .bind(hash_to_hex(&r.hash));
        }
        // Batch sizes vary: do not fill the statement cache with one entry per size.
        query.persistent(chunk.len() == 1).execute(&mut *tx).await.map_err(|e| {
            let first = chunk.first().map_or(0, |r| r.record().seq);
            StoreError::Backend(format!("cannot write audit records from {first}: {e}"))
        })?;
    }
    Ok(())
}

/// Records per multi-row audit INSERT (9 parameters each, well under SQLite's
/// 32,766-parameter limit).
const INSERT_ROWS_PER_STATEMENT: usize = 64;

/// Inserts a sealed record inside `tx`.
pub(crate) async fn insert_sealed(tx: &mut SqliteConnection, sealed: &SealedRecord) -> Result<(), StoreError> {
    let r = sealed.record();
    let seq =
        i64::try_from(r.seq).map_err(|_| StoreError::Backend(format!("audit seq {} does not fit the database", r.seq)))?;
    let detail =
        canonical_json(&r.detail).map_err(|e| StoreError::Invalid(format!("cannot audit {}: {e}", r.operation)))?;
    sqlx::query(
        "INSERT INTO audit_log (seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(seq)
    .bind(r.ts)
    .bind(r.actor.to_string())
    .bind(&r.operation)
    .bind(&r.subject)
    .bind(r.outcome.as_str())
    .bind(detail)
    .bind(hash_to_hex(&r.prev_hash))
    .bind(hash_to_hex(&r.hash))
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::Backend(format!("cannot write audit record {}: {e}", r.seq)))?;
    Ok(())
}

/// Commits `tx` and only then hands out the receipt of `sealed`.
pub(crate) async fn commit_audited(tx: WriteTx, sealed: SealedRecord) -> Result<AuditReceipt, StoreError> {
    tx.commit().await.map_err(backend)?;
    Ok(sealed.into_receipt())
}

/// An audited write describes a change that happened, so its outcome is `ok`.
pub(crate) fn require_ok(event: &AuditEvent) -> Result<(), StoreError> {
    if event.outcome == Outcome::Ok {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "audit event {} for a change must have outcome ok, not {}; record refusals with audit_append",
        event.operation, event.outcome
    )))
}

fn audit_unreadable(seq: u64, reason: String) -> StoreError {
    StoreError::AuditUnreadable { seq, reason }
}

/// The last record's seq and hash (the primary key index makes this one lookup).
/// The owner of `agent`, read inside a write transaction; `None` if the agent
/// does not exist.
/// Inserts `grant` in `tx` after the checks every grant passes (its owner owns
/// the agent; an exact address is one of the owner's inboxes, else `NotFound`
/// like a missing one): [`KeysAndGrants::add_grant`] and an approved grant
/// request share it.
pub(crate) async fn insert_grant_in(tx: &mut SqliteConnection, grant: &Grant) -> Result<(), StoreError> {
    let Some(agent_owner) = agent_owner_in(tx, &grant.agent).await? else {
        return Err(StoreError::NotFound { what: format!("agent {}", grant.agent) });
    };
    if agent_owner != grant.owner.as_str() {
        return Err(StoreError::Invalid(format!(
            "grant owner {} is not the owner of agent {} ({agent_owner}): only an agent's owner can grant it access",
            grant.owner, grant.agent
        )));
    }
    // A grant is scoped to its owner's inboxes (`Grant::covers`). An exact
    // address must be one of them: another owner's inbox answers exactly like
    // a missing one, so the refusal tells nothing about who has it.
    if let InboxPattern::Exact(address) = &grant.pattern {
        let inbox_owner: Option<(String,)> = sqlx::query_as("SELECT owner FROM inboxes WHERE address = ?1")
            .bind(address.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if inbox_owner.is_none_or(|(o,)| o != grant.owner.as_str()) {
            return Err(StoreError::NotFound { what: format!("inbox {address}") });
        }
    }
    sqlx::query(
        "INSERT INTO grants (id, owner, agent, pattern, scopes, created_at, expires_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(grant.id.as_str())
    .bind(grant.owner.as_str())
    .bind(grant.agent.as_str())
    .bind(grant.pattern.to_string())
    .bind(grant.scopes.to_string())
    .bind(grant.created_at)
    .bind(grant.expires_at)
    .bind(grant.revoked_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| insert_error(e, || format!("grant {}", grant.id)))?;
    Ok(())
}

async fn agent_owner_in(tx: &mut SqliteConnection, agent: &AgentId) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT owner FROM agents WHERE id = ?1")
        .bind(agent.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(row.map(|(owner,)| owner))
}

/// Revokes a grant by id; `?3`, when not NULL, must be the grant's owner.
const REVOKE_GRANT: &str =
    "UPDATE grants SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2 AND (?3 IS NULL OR owner = ?3)";
/// Revokes an agent key by id; `?3`, when not NULL, must own the key's agent.
const REVOKE_KEY: &str = "UPDATE agent_keys SET revoked_at = COALESCE(revoked_at, ?1)
  WHERE id = ?2 AND (?3 IS NULL OR agent IN (SELECT id FROM agents WHERE owner = ?3))";

const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";

pub(crate) fn head_from_row(row: Option<(i64, String)>) -> Result<ChainHead, StoreError> {
    let Some((seq, hash)) = row else {
        return Ok(ChainHead::GENESIS);
    };
    let seq = u64::try_from(seq).map_err(|_| audit_unreadable(0, format!("seq {seq} is negative")))?;
    let hash = hash_from_hex(&hash).ok_or_else(|| audit_unreadable(seq, "hash is not 64 hex digits".to_owned()))?;
    Ok(ChainHead { seq, hash })
}

pub(crate) type AuditRow = (i64, i64, String, String, String, String, String, String, String);

pub(crate) fn audit_from_row(
    (seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash): AuditRow,
) -> Result<AuditRecord, StoreError> {
    let seq = u64::try_from(seq).map_err(|_| audit_unreadable(0, format!("seq {seq} is negative")))?;
    let bad = |reason: String| audit_unreadable(seq, reason);
    Ok(AuditRecord {
        seq,
        ts,
        actor: actor.parse().map_err(|e| bad(format!("actor: {e}")))?,
        outcome: outcome.parse().map_err(|e| bad(format!("outcome: {e}")))?,
        detail: serde_json::from_str(&detail).map_err(|e| bad(format!("detail is not JSON: {e}")))?,
        prev_hash: hash_from_hex(&prev_hash).ok_or_else(|| bad("prev_hash is not 64 hex digits".to_owned()))?,
        hash: hash_from_hex(&hash).ok_or_else(|| bad("hash is not 64 hex digits".to_owned()))?,
        operation,
        subject,
    })
}

/// A checkpoint row: seq, head hash, ts, signature, counter, prev hash.
pub(crate) type CheckpointRow = (i64, String, i64, String, Option<i64>, Option<String>);

/// The columns of a [`CheckpointRow`], in order.
pub(crate) const CHECKPOINT_COLUMNS: &str = "seq, head_hash, ts, signature, counter, prev_hash";

pub(crate) fn checkpoint_from_row((seq, hash, ts, signature, counter, prev): CheckpointRow) -> Result<CheckpointRecord, StoreError> {
    let seq = u64::try_from(seq).map_err(|_| audit_unreadable(0, format!("checkpoint seq {seq} is negative")))?;
    let bad = |what: &str| audit_unreadable(seq, format!("checkpoint: {what}"));
    let hash = hash_from_hex(&hash).ok_or_else(|| bad("head_hash is not 64 hex digits"))?;
    let signature = (0..signature.len() / 2)
        .map(|i| signature.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .filter(|_| signature.len() % 2 == 0 && signature.is_ascii())
        .ok_or_else(|| bad("signature is not hex"))?;
    let counter = counter.map(|c| u64::try_from(c).map_err(|_| bad("counter is negative"))).transpose()?;
    let prev = prev.map(|p| hash_from_hex(&p).ok_or_else(|| bad("prev_hash is not 64 hex digits"))).transpose()?;
    Ok(CheckpointRecord { seq, hash, ts, signature, counter, prev })
}

/// Any database failure we do not map more precisely.
pub(crate) fn backend(err: sqlx::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Inserts an agent key row inside `tx`; a unique-constraint failure is a
/// conflict on `what`.
async fn insert_key(
    tx: &mut SqliteConnection,
    key: &KeyRecord,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_keys (id, agent, hash, created_at, expires_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(key.id.as_str())
    .bind(key.agent.as_str())
    .bind(key.hash.to_hex())
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(key.revoked_at)
    .execute(&mut *tx)
    .await
    .map_err(|e| insert_error(e, what))?;
    Ok(())
}

/// Maps the error of an `INSERT`: a unique violation is a conflict on `what`.
pub(crate) fn insert_error(err: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => StoreError::Conflict { what: what() },
        _ => backend(err),
    }
}

/// Parses a stored value; a value that does not parse means the database was
/// edited by hand or corrupted.
pub(crate) fn stored<T>(what: &str, value: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: Display,
{
    value.parse().map_err(|e| StoreError::Backend(format!("stored {what} {value:?} is invalid: {e}")))
}

pub(crate) fn stored_key_hash(key: &str, hex: &str) -> Result<KeyHash, StoreError> {
    KeyHash::from_hex(hex).ok_or_else(|| StoreError::Backend(format!("stored hash of key {key} is not 64 hex digits")))
}

fn stored_u64(what: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Backend(format!("stored {what} {value} is negative")))
}

fn stored_u32(what: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Backend(format!("stored {what} {value} is out of range")))
}

pub(crate) fn domain_not_hosted(domain: &str) -> StoreError {
    StoreError::Invalid(format!("domain {domain} is not hosted here; add it with `agentkeys domain add {domain}`"))
}

pub(crate) type DomainKeyRow = (String, i64, String, String, Vec<u8>, i64);

pub(crate) fn domain_keys_from_row(
    (domain, version, selector_ed, selector_rsa, rsa_key_wrapped, created_at): DomainKeyRow,
) -> Result<DomainKeyRecord, StoreError> {
    Ok(DomainKeyRecord {
        domain: stored("domain", &domain)?,
        version: stored_u32("DKIM key version", version)?,
        selector_ed,
        selector_rsa,
        rsa_key_wrapped,
        created_at,
    })
}

pub(crate) const DOMAIN_KEYS_COLUMNS: &str = "domain, version, selector_ed, selector_rsa, rsa_key_wrapped, created_at";

/// Stores `ticket` as its owner's only enrollment ticket inside `tx`.
async fn upsert_ticket(tx: &mut SqliteConnection, ticket: &EnrollmentTicketRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO enrollment_tickets (owner, code_hash, expires_at, consumed_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (owner) DO UPDATE SET code_hash = excluded.code_hash, expires_at = excluded.expires_at,
                                           consumed_at = excluded.consumed_at",
    )
    .bind(ticket.owner.as_str())
    .bind(hash_to_hex(&ticket.code_hash))
    .bind(ticket.expires_at)
    .bind(ticket.consumed_at)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Inserts one DKIM key version inside `tx`; `false` if that version exists.
async fn insert_domain_keys(tx: &mut SqliteConnection, keys: &DomainKeyRecord) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO domain_keys (domain, version, selector_ed, selector_rsa, rsa_key_wrapped, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (domain, version) DO NOTHING",
    )
    .bind(keys.domain.as_str())
    .bind(i64::from(keys.version))
    .bind(&keys.selector_ed)
    .bind(&keys.selector_rsa)
    .bind(&keys.rsa_key_wrapped)
    .bind(keys.created_at)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) type OwnerRow = (String, Option<String>, i64);
pub(crate) type AgentRow = (String, String, Option<String>, i64);
pub(crate) type InboxRow = (String, String, String, String, i64, Option<i64>);
pub(crate) type KeyRow = (String, String, String, i64, i64, Option<i64>);
pub(crate) type GrantRow = (String, String, String, String, String, i64, i64, Option<i64>);
pub(crate) type PairingRow = (String, String, String, Option<String>, i64, String, Option<String>, Option<i64>, Option<String>);

pub(crate) fn pairing_from_row(
    (code_hash, device_key, agent, name, opened_at, status, owner, approved_at, addressed_to): PairingRow,
) -> Result<PairingRecord, StoreError> {
    let bytes = |what: &str, hex: &str| {
        hash_from_hex(hex).ok_or_else(|| StoreError::Backend(format!("stored pairing {what} is not 64 hex digits")))
    };
    let status = match status.as_str() {
        "pending" => PairingStatus::Pending,
        "approved" => PairingStatus::Approved,
        "consumed" => PairingStatus::Consumed,
        "denied" => PairingStatus::Denied,
        other => return Err(StoreError::Backend(format!("stored pairing status {other:?} is invalid"))),
    };
    Ok(PairingRecord {
        code_hash: bytes("code hash", &code_hash)?,
        device_key: bytes("device key", &device_key)?,
        agent: stored("agent id", &agent)?,
        name,
        opened_at,
        status,
        owner: owner.map(|o| stored("owner id", &o)).transpose()?,
        approved_at,
        addressed_to,
    })
}
pub(crate) type QueueRow = (String, String, String, String, i64, i64, i64, i64, Option<String>);

pub(crate) fn owner_from_row((id, email, created_at): OwnerRow) -> Result<OwnerRecord, StoreError> {
    Ok(OwnerRecord { id: stored("owner id", &id)?, email, created_at })
}

pub(crate) fn agent_from_row((id, owner, name, created_at): AgentRow) -> Result<AgentRecord, StoreError> {
    Ok(AgentRecord { id: stored("agent id", &id)?, owner: stored("owner id", &owner)?, name, created_at })
}

pub(crate) fn inbox_from_row(
    (address, owner, agent, status, created_at, expires_at): InboxRow,
) -> Result<InboxRecord, StoreError> {
    Ok(InboxRecord {
        address: stored("inbox address", &address)?,
        owner: stored("owner id", &owner)?,
        agent: stored("agent id", &agent)?,
        status: stored("inbox status", &status)?,
        created_at,
        expires_at,
    })
}

/// The columns of an [`InboxRow`], in its order.
pub(crate) const INBOX_COLUMNS: &str = "address, owner, agent, status, created_at, expires_at";

/// `Invalid` unless an inbox's expiry (if any) is after its creation.
pub(crate) fn check_inbox_expiry(inbox: &InboxRecord) -> Result<(), StoreError> {
    match inbox.expires_at {
        Some(t) if t <= inbox.created_at => Err(StoreError::Invalid(format!(
            "inbox {} would expire at {t}, not after its creation at {}",
            inbox.address, inbox.created_at
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn key_from_row((id, agent, hash, created_at, expires_at, revoked_at): KeyRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        hash: stored_key_hash(&id, &hash)?,
        id: stored("key id", &id)?,
        agent: stored("agent id", &agent)?,
        created_at,
        expires_at,
        revoked_at,
    })
}

pub(crate) fn grant_from_row(
    (id, owner, agent, pattern, scopes, created_at, expires_at, revoked_at): GrantRow,
) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: stored("grant id", &id)?,
        owner: stored("owner id", &owner)?,
        agent: stored("agent id", &agent)?,
        pattern: stored("grant pattern", &pattern)?,
        scopes: stored("grant scopes", &scopes)?,
        created_at,
        expires_at,
        revoked_at,
    })
}

pub(crate) fn queue_entry_from_row(
    (message_id, recipient, sender, state, size, queued_at, next_attempt_at, attempts, last_response): QueueRow,
) -> Result<QueueEntry, StoreError> {
    Ok(QueueEntry {
        sender: stored("sender address", &sender)?,
        size: stored_u64("message size", size)?,
        attempts: stored_u32("attempt count", attempts)?,
        message_id,
        recipient,
        state,
        queued_at,
        next_attempt_at,
        last_response,
    })
}

/// One row of the [`AUTH_FACTS`] query: `kind` says which of the three parts it is.
pub(crate) type AuthRow = (String, String, String, String, String, Option<String>, i64, Option<i64>, Option<i64>);

/// Everything `auth_facts` needs in one statement, hence one consistent snapshot:
/// the key found by its hash (unique index) with its agent's owner, that agent's
/// grants (index on `grants.agent`) and the inbox (primary key) unless it has
/// expired at `?3`.
const AUTH_FACTS: &str = "\
SELECT 'key', k.id, k.hash, k.agent, a.owner, NULL, k.created_at, k.expires_at, k.revoked_at
  FROM agent_keys k JOIN agents a ON a.id = k.agent
 WHERE k.hash = ?1
UNION ALL
SELECT 'grant', g.id, g.pattern, g.agent, g.owner, g.scopes, g.created_at, g.expires_at, g.revoked_at
  FROM agent_keys k JOIN grants g ON g.agent = k.agent
 WHERE k.hash = ?1
UNION ALL
SELECT 'inbox', i.address, i.status, i.agent, i.owner, NULL, i.created_at, NULL, NULL
  FROM inboxes i
 WHERE i.address = ?2 AND (i.expires_at IS NULL OR i.expires_at > ?3)";

/// Folds the rows of an [`AUTH_FACTS`]-shaped query (any backend) into the facts.
pub(crate) fn auth_facts_from_rows(rows: Vec<AuthRow>) -> Result<AuthFacts, StoreError> {
    let mut facts = AuthFacts::default();
    for (kind, id, text, agent, owner, scopes, created_at, expires_at, revoked_at) in rows {
        match kind.as_str() {
            "key" => {
                let expires_at =
                    expires_at.ok_or_else(|| StoreError::Backend(format!("key {id} has no expiry")))?;
                facts.key = Some(KeyFacts {
                    hash: stored_key_hash(&id, &text)?,
                    id: stored("key id", &id)?,
                    agent: stored("agent id", &agent)?,
                    owner: stored("owner id", &owner)?,
                    expires_at,
                    revoked_at,
                });
            }
            "grant" => {
                let scopes = scopes.unwrap_or_default();
                let expires_at =
                    expires_at.ok_or_else(|| StoreError::Backend(format!("grant {id} has no expiry")))?;
                facts
                    .grants
                    .push(grant_from_row((id, owner, agent, text, scopes, created_at, expires_at, revoked_at))?);
            }
            _ => {
                facts.inbox = Some((stored("owner id", &owner)?, stored("inbox status", &text)?));
            }
        }
    }
    Ok(facts)
}

#[async_trait]
impl Deployment for SqliteStore {
    async fn seed_fingerprint(&self, fingerprint: &[u8; 32]) -> Result<[u8; 32], StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO deployment (name, value) VALUES ('seed_fingerprint', ?1) ON CONFLICT (name) DO NOTHING")
            .bind(fingerprint.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT value FROM deployment WHERE name = 'seed_fingerprint'")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        crate::meta::fingerprint_from(&stored)
    }
}

#[async_trait]
impl StoreHealth for SqliteStore {
    /// Readiness of the metadata database: commits a write transaction (the same
    /// path as every change) that writes one page (`probe_write`).
    async fn check_writable(&self) -> Result<(), StoreError> {
        self.check_free_space()?;
        let mut tx = self.write_tx().await?;
        probe_write(&mut tx).await?;
        tx.commit().await.map_err(backend)
    }

    /// Readiness of the audit log: the audit writer ([`crate::group_commit`]) is
    /// running and commits a transaction on its path (without a record).
    async fn check_audit_writable(&self) -> Result<(), StoreError> {
        self.check_free_space()?;
        self.group.probe(&self.pool, &self.gate, &self.clock).await
    }
}

#[async_trait]
impl Recipients for SqliteStore {
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError> {
        let (hosted,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?1)")
            .bind(domain)
            .fetch_one(&mut *self.hot().await?)
            .await
            .map_err(backend)?;
        Ok(hosted)
    }

    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError> {
        let row: Option<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT owner, status, expires_at FROM inboxes
              WHERE address = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        )
        .bind(address.as_str())
        .bind((self.clock)())
        .fetch_optional(&mut *self.hot().await?)
        .await
        .map_err(backend)?;
        row.map(|(owner, status, expires_at)| {
            Ok(Recipient { owner: stored("owner id", &owner)?, status: stored("inbox status", &status)?, expires_at })
        })
        .transpose()
    }
}

impl SqliteStore {
    /// [`Directory::create_inbox`], remembering the creating grant if any.
    async fn insert_inbox(
        &self,
        inbox: &InboxRecord,
        grant: Option<&GrantId>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        check_inbox_expiry(inbox)?;
        let mut tx = self.write_tx().await?;
        let domain = inbox.address.domain();
        let (hosted,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?1)")
            .bind(domain)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if !hosted {
            return Err(domain_not_hosted(domain));
        }
        let Some(agent_owner) = agent_owner_in(&mut tx, &inbox.agent).await? else {
            return Err(StoreError::NotFound { what: format!("agent {}", inbox.agent) });
        };
        if agent_owner != inbox.owner.as_str() {
            return Err(StoreError::Invalid(format!(
                "inbox {} must belong to {agent_owner}, the owner of agent {}, not to {}",
                inbox.address, inbox.agent, inbox.owner
            )));
        }
        let taken: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM inboxes WHERE address = ?1")
            .bind(inbox.address.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if taken.is_some() {
            return Err(StoreError::Conflict { what: format!("inbox {}", inbox.address) });
        }
        sqlx::query(
            "INSERT INTO inboxes (address, owner, agent, status, created_at, expires_at, created_by_grant)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(inbox.address.as_str())
        .bind(inbox.owner.as_str())
        .bind(inbox.agent.as_str())
        .bind(inbox.status.as_str())
        .bind(inbox.created_at)
        .bind(inbox.expires_at)
        .bind(grant.map(GrantId::as_str))
        .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("inbox {}", inbox.address)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

#[async_trait]
impl Directory for SqliteStore {
    async fn ensure_domain(&self, domain: &Domain, now: UnixTime) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO domains (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING")
            .bind(domain.as_str())
            .bind(now)
            .execute(&mut *self.hot_write().await?)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM domains ORDER BY name").fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(|(name,)| stored("domain", name)).collect()
    }

    async fn add_domain(
        &self,
        keys: &DomainKeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO domains (name, created_at) VALUES (?1, ?2)")
            .bind(keys.domain.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("domain {}", keys.domain)))?;
        insert_domain_keys(&mut tx, keys).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn domain_owner(&self, domain: &Domain) -> Result<Option<OwnerId>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT owner FROM domains WHERE name = ?1")
            .bind(domain.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.and_then(|(o,)| o).map(|o| stored("domain owner", &o)).transpose()
    }

    async fn assign_domain(
        &self,
        domain: &Domain,
        owner: Option<&OwnerId>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        if let Some(o) = owner {
            let known: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = ?1")
                .bind(o.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if known.is_none() {
                return Err(StoreError::NotFound { what: format!("owner {o}") });
            }
        }
        let done = sqlx::query("UPDATE domains SET owner = ?1 WHERE name = ?2")
            .bind(owner.map(OwnerId::as_str))
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn remove_domain(&self, domain: &Domain, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let inboxes: Vec<(String,)> =
            sqlx::query_as("SELECT address FROM inboxes WHERE address LIKE '%@' || ?1 ORDER BY address")
                .bind(domain.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
        // LIKE is case-insensitive and treats `_` as a wildcard: compare exactly.
        let inboxes: Vec<String> = inboxes
            .into_iter()
            .map(|(a,)| a)
            .filter(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == domain.as_str()))
            .collect();
        if !inboxes.is_empty() {
            const SHOWN: usize = 5;
            let mut names = inboxes.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if inboxes.len() > SHOWN {
                names.push_str(&format!(" and {} more", inboxes.len() - SHOWN));
            }
            return Err(StoreError::Invalid(format!(
                "domain {domain} still has {} inbox(es): {names}; inboxes are not deleted (only expired ones, by the sweeper), so a domain with inboxes cannot be removed",
                inboxes.len()
            )));
        }
        sqlx::query("DELETE FROM domain_keys WHERE domain = ?1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let done = sqlx::query("DELETE FROM domains WHERE name = ?1")
            .bind(domain.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("domain {domain}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn add_domain_keys(
        &self,
        keys: &DomainKeyRecord,
        event: &AuditEvent,
    ) -> Result<(DomainKeyRecord, Option<AuditReceipt>), StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let (hosted,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM domains WHERE name = ?1)")
            .bind(keys.domain.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if !hosted {
            return Err(StoreError::NotFound { what: format!("domain {}", keys.domain) });
        }
        if insert_domain_keys(&mut tx, keys).await? {
            let sealed = self.append_in(&mut tx, event).await?;
            return Ok((keys.clone(), Some(commit_audited(tx, sealed).await?)));
        }
        let row: DomainKeyRow = sqlx::query_as(&format!(
            "SELECT {DOMAIN_KEYS_COLUMNS} FROM domain_keys WHERE domain = ?1 AND version = ?2"
        ))
        .bind(keys.domain.as_str())
        .bind(i64::from(keys.version))
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok((domain_keys_from_row(row)?, None))
    }

    async fn domain_keys(&self, domain: &Domain) -> Result<Vec<DomainKeyRecord>, StoreError> {
        let rows: Vec<DomainKeyRow> =
            sqlx::query_as(&format!("SELECT {DOMAIN_KEYS_COLUMNS} FROM domain_keys WHERE domain = ?1 ORDER BY version"))
                .bind(domain.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter().map(domain_keys_from_row).collect()
    }

    async fn add_owner(&self, owner: &OwnerRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO owners (id, email, created_at) VALUES (?1, ?2, ?3)")
            .bind(owner.id.as_str())
            .bind(owner.email.as_deref())
            .bind(owner.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("owner {}", owner.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        let rows: Vec<OwnerRow> = sqlx::query_as("SELECT id, email, created_at FROM owners ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(owner_from_row).collect()
    }

    async fn add_agent(&self, agent: &AgentRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let owner_exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = ?1")
            .bind(agent.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if owner_exists.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", agent.owner) });
        }
        sqlx::query("INSERT INTO agents (id, owner, name, created_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(agent.id.as_str())
            .bind(agent.owner.as_str())
            .bind(agent.name.as_deref())
            .bind(agent.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("agent {}", agent.id)))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let row: Option<AgentRow> = sqlx::query_as("SELECT id, owner, name, created_at FROM agents WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(agent_from_row).transpose()
    }

    async fn list_agents(&self, owner: Option<&OwnerId>) -> Result<Vec<AgentRecord>, StoreError> {
        let rows: Vec<AgentRow> = sqlx::query_as(
            "SELECT id, owner, name, created_at FROM agents
              WHERE ?1 IS NULL OR owner = ?1
              ORDER BY created_at, id",
        )
        .bind(owner.map(OwnerId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(agent_from_row).collect()
    }

    async fn create_inbox(&self, inbox: &InboxRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        self.insert_inbox(inbox, None, event).await
    }

    async fn create_granted_inbox(
        &self,
        inbox: &InboxRecord,
        grant: &GrantId,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        if inbox.expires_at.is_none() {
            return Err(StoreError::Invalid(format!("inbox {} created under grant {grant} needs an expiry", inbox.address)));
        }
        self.insert_inbox(inbox, Some(grant), event).await
    }
    async fn list_inboxes(&self, owner: Option<&OwnerId>) -> Result<Vec<InboxRecord>, StoreError> {
        let rows: Vec<InboxRow> = sqlx::query_as(&format!(
            "SELECT {INBOX_COLUMNS} FROM inboxes
              WHERE ?1 IS NULL OR owner = ?1
              ORDER BY address"
        ))
        .bind(owner.map(OwnerId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(inbox_from_row).collect()
    }

    async fn set_inbox_status(
        &self,
        address: &Address,
        status: InboxStatus,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE inboxes SET status = ?1 WHERE address = ?2")
            .bind(status.as_str())
            .bind(address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("inbox {address}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

#[async_trait]
impl InboxExpiry for SqliteStore {
    async fn expired_inboxes(&self, now: UnixTime, limit: u32) -> Result<Vec<InboxRecord>, StoreError> {
        let rows: Vec<InboxRow> = sqlx::query_as(&format!(
            "SELECT {INBOX_COLUMNS} FROM inboxes
              WHERE expires_at IS NOT NULL AND expires_at <= ?1
              ORDER BY expires_at, address
              LIMIT ?2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(inbox_from_row).collect()
    }

    async fn remove_expired_inbox(
        &self,
        address: &Address,
        now: UnixTime,
        event: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<Option<AuditReceipt>, StoreError> {
        let mut tx = self.write_tx().await?;
        // Under the write lock: whoever deletes the row first records it; a
        // second sweeper finds nothing to delete.
        let owner: Option<(String,)> = sqlx::query_as(
            "DELETE FROM inboxes WHERE address = ?1 AND expires_at IS NOT NULL AND expires_at <= ?2 RETURNING owner",
        )
        .bind(address.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some((owner,)) = owner else {
            return Ok(None);
        };
        let messages = sqlx::query("DELETE FROM messages WHERE owner = ?1 AND inbox = ?2")
            .bind(&owner)
            .bind(address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let event = event(messages);
        require_ok(&event)?;
        let sealed = self.append_in(&mut tx, &event).await?;
        commit_audited(tx, sealed).await.map(Some)
    }
}

#[async_trait]
impl KeysAndGrants for SqliteStore {
    async fn create_key(&self, key: &KeyRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let agent_exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM agents WHERE id = ?1")
            .bind(key.agent.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if agent_exists.is_none() {
            return Err(StoreError::NotFound { what: format!("agent {}", key.agent) });
        }
        let id_taken: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM agent_keys WHERE id = ?1")
            .bind(key.id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if id_taken.is_some() {
            return Err(StoreError::Conflict { what: format!("key {}", key.id) });
        }
        // The id is free, so a collision is on the hash: the same secret twice.
        insert_key(&mut tx, key, || "an agent key with the same secret".to_owned()).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_keys(&self, agent: &AgentId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT id, agent, hash, created_at, expires_at, revoked_at FROM agent_keys
              WHERE agent = ?1
              ORDER BY created_at, id",
        )
        .bind(agent.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: &KeyId, now: UnixTime, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_KEY, id.as_str(), None, now, format!("key {id}"), event).await
    }

    async fn add_grant(&self, grant: &Grant, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        insert_grant_in(&mut tx, grant).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn list_grants(&self, agent: Option<&AgentId>) -> Result<Vec<Grant>, StoreError> {
        let rows: Vec<GrantRow> = sqlx::query_as(
            "SELECT id, owner, agent, pattern, scopes, created_at, expires_at, revoked_at FROM grants
              WHERE ?1 IS NULL OR agent = ?1
              ORDER BY created_at, id",
        )
        .bind(agent.map(AgentId::as_str))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(grant_from_row).collect()
    }

    async fn revoke_grant(&self, id: &GrantId, now: UnixTime, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_GRANT, id.as_str(), None, now, format!("grant {id}"), event).await
    }
}

#[async_trait]
impl AuthLookup for SqliteStore {
    async fn auth_facts(&self, credentials: &Credentials) -> Result<AuthFacts, StoreError> {
        let rows: Vec<AuthRow> = sqlx::query_as(AUTH_FACTS)
            .bind(credentials.key_hash.to_hex())
            .bind(credentials.address.as_str())
            .bind((self.clock)())
            .fetch_all(&mut *self.hot().await?)
            .await
            .map_err(backend)?;
        auth_facts_from_rows(rows)
    }

    async fn key_facts_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, StoreError> {
        let row: Option<(String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT k.id, k.hash, k.agent, a.owner, k.expires_at, k.revoked_at
               FROM agent_keys k JOIN agents a ON a.id = k.agent
              WHERE k.hash = ?1",
        )
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(id, hash, agent, owner, expires_at, revoked_at)| {
            Ok(KeyFacts {
                hash: stored_key_hash(&id, &hash)?,
                id: stored("key id", &id)?,
                agent: stored("agent id", &agent)?,
                owner: stored("owner id", &owner)?,
                expires_at,
                revoked_at,
            })
        })
        .transpose()
    }

    async fn grants_and_inbox_owner(
        &self,
        agent: &AgentId,
        inbox: &Address,
    ) -> Result<(Vec<Grant>, Option<OwnerId>), StoreError> {
        // One statement (one round trip, one snapshot): the grants, then the inbox.
        let rows: Vec<GrantRow> = sqlx::query_as(
            "SELECT id, owner, agent, pattern, scopes, created_at, expires_at, revoked_at FROM grants WHERE agent = ?1
             UNION ALL
             SELECT '', owner, '', '', '', 0, 0, NULL FROM inboxes
              WHERE address = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .bind(agent.as_str())
        .bind(inbox.as_str())
        .bind((self.clock)())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut grants = Vec::with_capacity(rows.len());
        let mut owner = None;
        for row in rows {
            if row.0.is_empty() {
                owner = Some(stored("owner id", &row.1)?);
            } else {
                grants.push(grant_from_row(row)?);
            }
        }
        Ok((grants, owner))
    }
}

#[async_trait]
impl OwnerApproval for SqliteStore {
    async fn add_owner_with_enrollment(
        &self,
        owner: &OwnerRecord,
        ticket: &EnrollmentTicketRecord,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        if ticket.owner != owner.id {
            return Err(StoreError::Invalid(format!(
                "enrollment ticket for {} cannot come with owner {}",
                ticket.owner, owner.id
            )));
        }
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO owners (id, email, created_at) VALUES (?1, ?2, ?3)")
            .bind(owner.id.as_str())
            .bind(owner.email.as_deref())
            .bind(owner.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("owner {}", owner.id)))?;
        upsert_ticket(&mut tx, ticket).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn issue_enrollment(
        &self,
        ticket: &EnrollmentTicketRecord,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let owner_exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM owners WHERE id = ?1")
            .bind(ticket.owner.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if owner_exists.is_none() {
            return Err(StoreError::NotFound { what: format!("owner {}", ticket.owner) });
        }
        upsert_ticket(&mut tx, ticket).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn enrollment_ticket(&self, owner: &OwnerId) -> Result<Option<EnrollmentTicketRecord>, StoreError> {
        let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT code_hash, expires_at, consumed_at FROM enrollment_tickets WHERE owner = ?1 AND consumed_at IS NULL",
        )
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(hash, expires_at, consumed_at)| {
            let code_hash = hash_from_hex(&hash).ok_or_else(|| {
                StoreError::Backend(format!("stored enrollment code hash of owner {owner} is not 64 hex digits"))
            })?;
            Ok(EnrollmentTicketRecord { owner: owner.clone(), code_hash, expires_at, consumed_at })
        })
        .transpose()
    }

    async fn redeem_enrollment(
        &self,
        owner: &OwnerId,
        code_hash: &[u8; 32],
        public_key: &[u8; 32],
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        // Spend the ticket only if it is still the one the caller checked: a
        // concurrent redemption or a re-issue in between makes this match nothing.
        let spent = sqlx::query(
            "UPDATE enrollment_tickets SET consumed_at = ?1
              WHERE owner = ?2 AND code_hash = ?3 AND consumed_at IS NULL AND expires_at > ?1",
        )
        .bind(now)
        .bind(owner.as_str())
        .bind(hash_to_hex(code_hash))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if spent.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "enrollment code".to_owned() });
        }
        sqlx::query(
            "INSERT INTO owner_keys (owner, public_key, enrolled_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner) DO UPDATE SET public_key = excluded.public_key, enrolled_at = excluded.enrolled_at",
        )
        .bind(owner.as_str())
        .bind(hash_to_hex(public_key))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn owner_public_key(&self, owner: &OwnerId) -> Result<Option<[u8; 32]>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT public_key FROM owner_keys WHERE owner = ?1")
            .bind(owner.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|(hex,)| {
            hash_from_hex(&hex)
                .ok_or_else(|| StoreError::Backend(format!("stored public key of owner {owner} is not 64 hex digits")))
        })
        .transpose()
    }

    async fn record_owner_nonce(
        &self,
        owner: &OwnerId,
        nonce: &str,
        ts: UnixTime,
        forget_before: UnixTime,
    ) -> Result<NonceUse, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM owner_nonces WHERE ts < ?1")
            .bind(forget_before)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let done = sqlx::query(
            "INSERT INTO owner_nonces (owner, nonce, ts) VALUES (?1, ?2, ?3) ON CONFLICT (owner, nonce) DO NOTHING",
        )
        .bind(owner.as_str())
        .bind(nonce)
        .bind(ts)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(if done.rows_affected() == 1 { NonceUse::Fresh(agentkeys_core::NonceRecord::first_use(owner, nonce)) } else { NonceUse::Replayed })
    }

    async fn list_owner_grants(&self, owner: &OwnerId) -> Result<Vec<Grant>, StoreError> {
        let rows: Vec<GrantRow> = sqlx::query_as(
            "SELECT id, owner, agent, pattern, scopes, created_at, expires_at, revoked_at FROM grants
              WHERE owner = ?1
              ORDER BY created_at, id",
        )
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(grant_from_row).collect()
    }

    async fn revoke_owner_grant(
        &self,
        owner: &OwnerId,
        id: &GrantId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_GRANT, id.as_str(), Some(owner), now, format!("grant {id}"), event).await
    }

    async fn change_owner_grant(
        &self,
        owner: &OwnerId,
        before: &Grant,
        after: &Grant,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let same = after.id == before.id
            && after.owner == before.owner
            && after.agent == before.agent
            && after.pattern == before.pattern
            && &before.owner == owner;
        if !same || !after.scopes.is_subset_of(before.scopes) {
            return Err(StoreError::Invalid(format!(
                "a change of grant {} may only narrow its scopes and move its expiry",
                before.id
            )));
        }
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE grants SET scopes = ?1, expires_at = ?2
              WHERE id = ?3 AND owner = ?4 AND revoked_at IS NULL AND scopes = ?5 AND expires_at = ?6",
        )
        .bind(after.scopes.to_string())
        .bind(after.expires_at)
        .bind(before.id.as_str())
        .bind(owner.as_str())
        .bind(before.scopes.to_string())
        .bind(before.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM grants WHERE id = ?1 AND owner = ?2")
                .bind(before.id.as_str())
                .bind(owner.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            return Err(match exists {
                Some(_) => StoreError::Conflict { what: format!("a change of grant {} made meanwhile", before.id) },
                None => StoreError::NotFound { what: format!("grant {}", before.id) },
            });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        let end = if after.scopes.contains(agentkeys_core::Scope::Create) { after.expires_at } else { (self.clock)() };
        let ended = self.end_grant_inboxes(&mut tx, before.id.as_str(), end, event).await?;
        let receipt = commit_audited(tx, sealed).await?;
        let _ended = ended.map(SealedRecord::into_receipt);
        Ok(receipt)
    }

    async fn revoke_owner_key(
        &self,
        owner: &OwnerId,
        id: &KeyId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        self.revoke_audited(REVOKE_KEY, id.as_str(), Some(owner), now, format!("key {id}"), event).await
    }
}

#[async_trait]
impl Pairing for SqliteStore {
    async fn open_pairing(
        &self,
        request: &PairingRecord,
        forget_before: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM pairing_requests WHERE opened_at < ?1")
            .bind(forget_before)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query(
            "INSERT INTO pairing_requests (code_hash, device_key, agent, name, opened_at, status, addressed_to)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
        )
        .bind(hash_to_hex(&request.code_hash))
        .bind(hash_to_hex(&request.device_key))
        .bind(request.agent.as_str())
        .bind(request.name.as_deref())
        .bind(request.opened_at)
        .bind(request.addressed_to.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| insert_error(e, || "a pairing request with this code".to_owned()))?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn pairing(&self, code_hash: &[u8; 32]) -> Result<Option<PairingRecord>, StoreError> {
        let row: Option<PairingRow> = sqlx::query_as(
            "SELECT code_hash, device_key, agent, name, opened_at, status, owner, approved_at, addressed_to
               FROM pairing_requests WHERE code_hash = ?1",
        )
        .bind(hash_to_hex(code_hash))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(pairing_from_row).transpose()
    }

    async fn approve_pairing(
        &self,
        code_hash: &[u8; 32],
        agent: &AgentRecord,
        approved_at: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let won = sqlx::query(
            "UPDATE pairing_requests SET status = 'approved', owner = ?1, approved_at = ?2
              WHERE code_hash = ?3 AND status = 'pending' AND agent = ?4",
        )
        .bind(agent.owner.as_str())
        .bind(approved_at)
        .bind(hash_to_hex(code_hash))
        .bind(agent.id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if won.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "pending pairing request".to_owned() });
        }
        match agent_owner_in(&mut tx, &agent.id).await? {
            Some(owner) if owner == agent.owner.as_str() => {}
            Some(_) => return Err(StoreError::Conflict { what: format!("agent {}", agent.id) }),
            None => {
                sqlx::query("INSERT INTO agents (id, owner, name, created_at) VALUES (?1, ?2, ?3, ?4)")
                    .bind(agent.id.as_str())
                    .bind(agent.owner.as_str())
                    .bind(agent.name.as_deref())
                    .bind(agent.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match insert_error(e, || format!("agent {}", agent.id)) {
                        // A foreign-key failure: the owner is unknown.
                        StoreError::Backend(m) if m.contains("FOREIGN KEY") => {
                            StoreError::NotFound { what: format!("owner {}", agent.owner) }
                        }
                        other => other,
                    })?;
            }
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn collect_pairing(
        &self,
        code_hash: &[u8; 32],
        key: &KeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let won = sqlx::query(
            "UPDATE pairing_requests SET status = 'consumed', consumed_at = ?1
              WHERE code_hash = ?2 AND status = 'approved' AND agent = ?3",
        )
        .bind(now)
        .bind(hash_to_hex(code_hash))
        .bind(key.agent.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if won.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "approved pairing request".to_owned() });
        }
        insert_key(&mut tx, key, || format!("key {}", key.id)).await?;
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }

    async fn deny_pairing(
        &self,
        code_hash: &[u8; 32],
        owner: &OwnerId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let mut tx = self.write_tx().await?;
        let won = sqlx::query(crate::meta::DENY_PAIRING_SQL)
            .bind(owner.as_str())
            .bind(now)
            .bind(hash_to_hex(code_hash))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if won.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: "pending pairing request".to_owned() });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn audit_append(&self, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        // Batched with every other append waiting at this moment: one commit for all.
        self.group.append(&self.pool, &self.gate, &self.clock, event).await
    }

    async fn audit_list(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        // Past i64::MAX there is nothing: seq is a SQLite INTEGER.
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash
               FROM audit_log
              WHERE seq > ?1
              ORDER BY seq
              LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let head = sqlx::query_as(AUDIT_HEAD).fetch_optional(&self.pool).await.map_err(backend)?;
        head_from_row(head)
    }

    async fn audit_list_for_owner(
        &self,
        owner: &OwnerId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        let scope = crate::meta::audit_owner_scope(SQLITE_DETAIL_OWNER, SQLITE_DETAIL_AGENT);
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {SQLITE_AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 AND {scope} ORDER BY seq LIMIT $4"
        ))
        .bind(after)
        .bind(format!("owner:{owner}"))
        .bind(owner.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }

    async fn audit_search_for_owner(
        &self,
        owner: &OwnerId,
        filter: &AuditFilter,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let before = before_seq.map_or(i64::MAX, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let sql = crate::meta::audit_search_sql(SQLITE_AUDIT_COLUMNS, SQLITE_DETAIL_OWNER, SQLITE_DETAIL_AGENT);
        let rows: Vec<AuditRow> = sqlx::query_as(&sql)
            .bind(before)
            .bind(format!("owner:{owner}"))
            .bind(owner.as_str())
            .bind(filter.operation.as_deref())
            .bind(filter.from)
            .bind(filter.to)
            .bind(filter.agent.as_deref())
            .bind(filter.agent.as_deref().map(|a| format!("agent:{a}")))
            .bind(i64::from(limit.min(MAX_AUDIT_SEARCH_PAGE)))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter().map(audit_from_row).collect()
    }
}

/// The audit columns as [`AuditRow`] reads them.
const SQLITE_AUDIT_COLUMNS: &str = "seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash";
/// The detail's `owner` and `agent` strings, read from the JSON on SQLite.
const SQLITE_DETAIL_OWNER: &str = "json_extract(detail, '$.owner')";
const SQLITE_DETAIL_AGENT: &str = "json_extract(detail, '$.agent')";

#[async_trait]
impl Checkpoints for SqliteStore {
    async fn add_checkpoint(&self, checkpoint: &CheckpointRecord) -> Result<bool, StoreError> {
        let to_i64 = |v: u64, what: &str| {
            i64::try_from(v).map_err(|_| StoreError::Invalid(format!("checkpoint {what} {v} does not fit the database")))
        };
        let seq = to_i64(checkpoint.seq, "seq")?;
        let counter = checkpoint.counter.map(|c| to_i64(c, "counter")).transpose()?;
        let signature: String = checkpoint.signature.iter().map(|b| format!("{b:02x}")).collect();
        let prev = checkpoint.prev.as_ref().map(hash_to_hex);
        let mut tx = self.write_tx().await?;
        if let Some(counter) = checkpoint.counter {
            // The chain only grows by its next link; anything else lost a race
            // with another process (or the chain was tampered with: verify says).
            let last: Option<CheckpointRow> = sqlx::query_as(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE counter IS NOT NULL ORDER BY counter DESC LIMIT 1"
            ))
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let last = last.map(checkpoint_from_row).transpose()?;
            let max_seq: Option<i64> =
                sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints").fetch_one(&mut *tx).await.map_err(backend)?;
            let highest = max_seq.map(|m| u64::try_from(m).unwrap_or(u64::MAX));
            let agentkeys_audit::SignedCheckpoint::V2 { checkpoint: next, .. } = checkpoint.signed() else {
                return Ok(false);
            };
            if !next.extends(last.map(|l| l.signed()).as_ref(), highest) {
                return Ok(false);
            }
            if counter == 1 {
                let started: Option<(i64,)> = sqlx::query_as("SELECT ts FROM audit_checkpoint_start WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                if let Some((ts,)) = started {
                    return Err(StoreError::Invalid(format!(
                        "the audit checkpoint chain started at Unix time {ts} but its checkpoints are gone; \
                         run `agentkeys audit verify` and investigate before signing anything"
                    )));
                }
                sqlx::query(
                    "INSERT INTO audit_checkpoint_start (id, seq, head_hash, ts, signature, counter, prev_hash)
                     VALUES (1, ?1, ?2, ?3, ?4, 1, ?5)",
                )
                .bind(seq)
                .bind(hash_to_hex(&checkpoint.hash))
                .bind(checkpoint.ts)
                .bind(&signature)
                .bind(&prev)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
        }
        let done = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, head_hash, ts, signature, counter, prev_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING",
        )
        .bind(seq)
        .bind(hash_to_hex(&checkpoint.hash))
        .bind(checkpoint.ts)
        .bind(&signature)
        .bind(counter)
        .bind(&prev)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn list_checkpoints(&self) -> Result<Vec<CheckpointRecord>, StoreError> {
        let rows: Vec<CheckpointRow> =
            sqlx::query_as(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.into_iter().map(checkpoint_from_row).collect()
    }

    async fn last_checkpoint(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        let row: Option<CheckpointRow> =
            sqlx::query_as(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"))
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(checkpoint_from_row).transpose()
    }

    async fn checkpoint_start(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        let row: Option<CheckpointRow> =
            sqlx::query_as(&format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoint_start WHERE id = 1"))
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(checkpoint_from_row).transpose()
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn enqueue_outbound(&self, message: &NewOutbound) -> Result<(), StoreError> {
        let message = crate::enqueue::Queued::check(message)?;
        self.enqueuer.enqueue(self, message).await
    }
}

/// The connections behind [`SqliteStore::hot`], opened on first use.
struct HotConnections {
    options: SqliteConnectOptions,
    slots: Vec<tokio::sync::Mutex<Option<SqliteConnection>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl HotConnections {
    fn new(options: SqliteConnectOptions) -> Self {
        Self {
            options,
            slots: (0..HOT_CONNECTIONS).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The next slot in turn, its connection opened if it was not yet.
    async fn get(&self) -> Result<tokio::sync::MappedMutexGuard<'_, SqliteConnection>, StoreError> {
        use sqlx::ConnectOptions;
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if slot.is_none() {
            *slot = Some(self.options.connect().await.map_err(backend)?);
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| StoreError::Backend("a hot database connection was not opened".to_owned()))
    }

    async fn close(&self) {
        use sqlx::Connection;
        for slot in &self.slots {
            if let Some(conn) = slot.lock().await.take() {
                let _ = conn.close().await;
            }
        }
    }
}

/// A connection from [`SqliteStore::hot`] (or [`SqliteStore::hot_write`], with
/// the write turn). Dereferences to the connection.
pub(crate) struct HotConnection<'a> {
    conn: Hot<'a>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

enum Hot<'a> {
    Kept(tokio::sync::MappedMutexGuard<'a, SqliteConnection>),
    Pooled(sqlx::pool::PoolConnection<Sqlite>),
}

impl std::ops::Deref for HotConnection<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match &self.conn {
            Hot::Kept(conn) => conn,
            Hot::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for HotConnection<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match &mut self.conn {
            Hot::Kept(conn) => conn,
            Hot::Pooled(conn) => conn,
        }
    }
}

/// Writers of this process take turns here before they write, so they queue in
/// order instead of meeting at SQLite's write lock: a connection that finds the
/// lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 … 100 ms) and wakes
/// on its own schedule, which under concurrent writers (queue inserts next to
/// the queue runner's claims and records) turned into tail latencies of a tenth
/// of a second. Other processes (the CLI) still meet at the lock, with
/// [`BUSY_TIMEOUT`]. A writer never waits for the gate while holding it: every
/// write is one statement or one transaction, and nothing writes inside another.
#[derive(Clone, Default)]
pub(crate) struct WriteGate(Arc<tokio::sync::Mutex<()>>);

impl WriteGate {
    /// Waits for this process's turn to write; the turn ends when the guard drops.
    pub(crate) async fn enter(&self) -> tokio::sync::OwnedMutexGuard<()> {
        Arc::clone(&self.0).lock_owned().await
    }
}

