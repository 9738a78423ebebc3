//! Outbound connections kept open between messages, per destination host, and
//! the per-host concurrency limit.
//!
//! An attempt first takes a permit of its host's semaphore
//! ([`MAX_CONNECTIONS_PER_HOST`]), then an idle connection to that host if one
//! is pooled, else it opens one. A new connection is only opened while no idle
//! one exists and every existing one belongs to another permit holder, so a host
//! never has more than [`MAX_CONNECTIONS_PER_HOST`] connections from us, open
//! or idle. A connection carries at most [`MAX_MESSAGES_PER_CONNECTION`]
//! transactions and idles at most [`CONNECTION_IDLE`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::client::{Connection, TlsPolicy};

/// Concurrent connections (and attempts) to one destination host: an MX host
/// or the smarthost. Postfix's default destination concurrency is 20.
pub const MAX_CONNECTIONS_PER_HOST: usize = 20;
/// Transactions on one connection before it is closed and a new one opened.
pub const MAX_MESSAGES_PER_CONNECTION: u32 = 100;
/// How long an unused connection stays open (Postfix caches for 2 s by
/// default; the receiver's own idle timeout is minutes).
pub const CONNECTION_IDLE: Duration = Duration::from_secs(5);

/// Idle connections and per-host limits.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    idle: Mutex<HashMap<String, Vec<Connection>>>,
}

impl Pool {
    /// The semaphore limiting attempts to `host`.
    pub(crate) fn slot(&self, host: &str) -> Arc<Semaphore> {
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_HOST))),
        )
    }

    /// An idle connection to `host` that satisfies `tls`, most recently used first.
    pub(crate) fn take(&self, host: &str, tls: TlsPolicy) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(host)?;
        // Past their idle time they may be closed by the peer: drop them.
        list.retain(|c| c.idle_since.elapsed() < CONNECTION_IDLE);
        let pos = list.iter().rposition(|c| match tls {
            TlsPolicy::Opportunistic => true,
            TlsPolicy::Required => c.is_tls(),
            TlsPolicy::Validated => c.is_validated(),
        })?;
        Some(list.swap_remove(pos))
    }

    /// Hands a connection back after a transaction: pooled when it is still
    /// usable and has room for more, otherwise returned for closing.
    pub(crate) fn give_back(&self, host: &str, mut conn: Connection, reusable: bool) -> Option<Connection> {
        if !reusable {
            return None; // dropped: the session is broken
        }
        if conn.transactions >= MAX_MESSAGES_PER_CONNECTION {
            return Some(conn);
        }
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.entry(host.to_owned()).or_default().push(conn);
        None
    }

    /// Removes the connections idle for [`CONNECTION_IDLE`] or more (to be closed).
    pub(crate) fn expired(&self) -> Vec<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for list in idle.values_mut() {
            let (keep, old): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|c| c.idle_since.elapsed() < CONNECTION_IDLE);
            *list = keep;
            out.extend(old);
        }
        idle.retain(|_, list| !list.is_empty());
        out
    }

    /// Every idle connection (shutdown).
    pub(crate) fn drain(&self) -> Vec<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.drain().flat_map(|(_, list)| list).collect()
    }

    /// Idle connections to `host` (tests, metrics).
    pub(crate) fn idle_count(&self, host: &str) -> usize {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.get(host).map_or(0, Vec::len)
    }
}
