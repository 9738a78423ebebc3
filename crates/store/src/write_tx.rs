//! The one way this crate opens a write transaction on SQLite, and the rule that
//! keeps a failed one from poisoning the connection pool.
//!
//! SQLite rolls a transaction back **by itself** on some errors (`SQLITE_FULL`,
//! `SQLITE_IOERR`, `SQLITE_BUSY`, `SQLITE_NOMEM`, `RAISE(ROLLBACK)`). sqlx counts
//! transaction depth on its own and only lowers the count when *its* `ROLLBACK`
//! succeeds; after such an automatic rollback that `ROLLBACK` fails ("no
//! transaction is active"), the count stays at 1, and every later `BEGIN
//! IMMEDIATE` on that pooled connection fails with "attempted to call begin_with
//! at non-zero transaction depth" — until a restart. That is how one full disk
//! broke audited operations for good.
//!
//! [`WriteTx`] owns its pooled connection and, whenever the transaction does not
//! commit (an error in the body, a failed `COMMIT`, a dropped future), *settles*
//! it before the connection can be used again:
//!
//! 1. `ROLLBACK` through sqlx's transaction manager; success leaves the count at 0.
//! 2. Otherwise, if SQLite already rolled back, a raw `BEGIN` succeeds; rolling
//!    that back through the manager brings sqlx's count back to 0 as well.
//! 3. Otherwise the connection is detached from the pool and closed (closing
//!    discards whatever SQLite still holds), so it is never handed out again.
//!
//! The pool of a file database also refuses, in `before_acquire`, any idle
//! connection whose depth is not 0 ([`clean_on_acquire`]), so a connection that
//! escaped every rule above is closed instead of reused.
//!
//! After the cause goes away (space freed), the very next transaction runs on a
//! clean connection: nothing needs a restart.

use std::future::Future;
use std::pin::Pin;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteTransactionManager};
use sqlx::{Connection as _, Sqlite, TransactionManager as _};
use tokio::sync::OwnedMutexGuard;

use crate::meta::StoreError;
use crate::sqlite::backend;

/// How a write transaction starts: with the database write lock held, so the
/// checks inside it cannot go stale before the commit.
const BEGIN: &str = "BEGIN IMMEDIATE";

/// A write transaction with this process's write turn
/// ([`WriteGate`](crate::sqlite::WriteGate)). Dereferences to its connection
/// (`&mut *tx`). Dropped uncommitted, it is settled (module docs) before its
/// connection or the write turn is released.
pub(crate) struct WriteTx {
    /// `None` once committed or handed to the settling task.
    conn: Option<PoolConnection<Sqlite>>,
    turn: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Takes a connection from `pool` and begins, holding `turn` until the end.
    pub(crate) async fn begin(pool: &SqlitePool, turn: OwnedMutexGuard<()>) -> Result<Self, StoreError> {
        let conn = pool.acquire().await.map_err(backend)?;
        let mut tx = Self { conn: Some(conn), turn: Some(turn) };
        let conn = tx.conn_mut();
        if let Err(e) = SqliteTransactionManager::begin(conn, Some(BEGIN.into())).await {
            // A failed BEGIN may still have left a transaction open: settle in Drop.
            return Err(backend(e));
        }
        Ok(tx)
    }

    fn conn_mut(&mut self) -> &mut SqliteConnection {
        match self.conn.as_mut() {
            Some(conn) => conn,
            // `conn` is only taken by `commit(self)` and `drop`.
            None => unreachable!("a WriteTx is used after its end"),
        }
    }

    /// Commits, then ends the write turn. On failure the transaction is settled
    /// (rolled back or its connection discarded) before this returns.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let result = SqliteTransactionManager::commit(self.conn_mut()).await;
        if result.is_err()
            && let Some(conn) = self.conn.take()
        {
            settle(conn).await;
        }
        // Drop: nothing left to settle if committed; the turn ends.
        result
    }

    /// Rolls back explicitly (settling as for a failure).
    #[cfg(test)]
    pub(crate) async fn rollback(mut self) {
        if let Some(conn) = self.conn.take() {
            settle(conn).await;
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !conn.is_in_transaction() {
            return;
        }
        // Settle before anyone else writes: the write turn goes with the task.
        let turn = self.turn.take();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    settle(conn).await;
                    drop(turn);
                });
            }
            // No runtime to settle in: queue sqlx's own rollback; if it fails, the
            // pool's `before_acquire` closes the connection ([`clean_on_acquire`]).
            Err(_) => SqliteTransactionManager::start_rollback(&mut conn),
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self.conn.as_ref() {
            Some(conn) => conn,
            None => unreachable!("a WriteTx is used after its end"),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn_mut()
    }
}

/// Brings a connection whose transaction did not commit back to depth 0, or
/// takes it out of the pool and closes it (module docs). `true` if it went back
/// to the pool clean.
pub(crate) fn settle(conn: PoolConnection<Sqlite>) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    Box::pin(settle_inner(conn))
}

async fn settle_inner(mut conn: PoolConnection<Sqlite>) -> bool {
    if !conn.is_in_transaction() {
        return true;
    }
    let rollback = SqliteTransactionManager::rollback(&mut conn).await;
    if rollback.is_ok() && !conn.is_in_transaction() {
        return true;
    }
    // SQLite may have rolled back by itself (SQLITE_FULL, IOERR, BUSY, NOMEM):
    // then nothing is open, a plain BEGIN works, and the manager's ROLLBACK of it
    // brings sqlx's count down.
    let raw: &mut SqliteConnection = &mut conn;
    let resynced = sqlx::query("BEGIN").persistent(false).execute(raw).await.is_ok()
        && SqliteTransactionManager::rollback(&mut conn).await.is_ok()
        && !conn.is_in_transaction();
    if resynced {
        tracing::debug!("SQLite had rolled the failed transaction back; connection resynchronised");
        return true;
    }
    tracing::warn!(
        rollback_error = rollback.err().map(|e| e.to_string()),
        "a failed write transaction could not be rolled back; its connection is closed"
    );
    let raw = conn.detach();
    let _ = raw.close_hard().await;
    false
}

/// The pool's `before_acquire` check: an idle connection still inside a
/// transaction (by sqlx's count) is closed, never handed out.
pub(crate) fn clean_on_acquire(conn: &mut SqliteConnection) -> bool {
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("a pooled connection was left inside a transaction; closed");
    }
    clean
}
