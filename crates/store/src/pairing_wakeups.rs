//! Wake-ups of pairing collects waiting for their owner's approval: a
//! [`Notify`] per pair-code hash, for as long as someone waits on it.
//!
//! An approval in this process wakes the waiters of its code directly. With
//! PostgreSQL, `PgStore::approve_pairing` also notifies the database channel
//! `agentkeys_pairing` in its transaction, and every node's `PgEvents` listener
//! wakes its own waiters of that code when the approval commits, so an agent
//! long-polling node B hears of an approval made on node A at once. A waiter
//! that is woken re-reads the request; a wake-up for nothing costs one read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Notify;

/// The waiters of pairing approvals, keyed by code hash. Cheap to clone;
/// clones share the waiters.
#[derive(Debug, Default, Clone)]
pub struct PairingWakeups {
    map: Arc<Mutex<HashMap<[u8; 32], Weak<Notify>>>>,
}

impl PairingWakeups {
    /// The wake-up of `code_hash`'s approval. Register interest
    /// (`notified()`, `enable()`) before reading the request, so an approval
    /// between the read and the wait is not missed.
    pub fn subscribe(&self, code_hash: &[u8; 32]) -> Arc<Notify> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = map.get(code_hash).and_then(Weak::upgrade) {
            return existing;
        }
        // Entries live as long as someone waits on them.
        map.retain(|_, w| w.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        map.insert(*code_hash, Arc::downgrade(&notify));
        notify
    }

    /// Wakes every waiter of `code_hash`.
    pub fn wake(&self, code_hash: &[u8; 32]) {
        let notify = self.map.lock().unwrap_or_else(PoisonError::into_inner).get(code_hash).and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter (after approvals may have been missed: a listener
    /// that reconnected), so each re-reads its request.
    pub fn wake_all(&self) {
        let waiting: Vec<Arc<Notify>> =
            self.map.lock().unwrap_or_else(PoisonError::into_inner).values().filter_map(Weak::upgrade).collect();
        for notify in waiting {
            notify.notify_waiters();
        }
    }

    /// Codes someone waits on now (tests, metrics).
    pub fn waiting(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_waiters_of_its_code_only_and_wake_all_reaches_all() {
        let wakeups = PairingWakeups::default();
        {
            let (a, b) = (wakeups.subscribe(&[1; 32]), wakeups.subscribe(&[2; 32]));
            assert!(Arc::ptr_eq(&a, &wakeups.subscribe(&[1; 32])), "one Notify per code");
            assert_eq!(wakeups.waiting(), 2);
            let (wait_a, wait_b) = (a.notified(), b.notified());
            tokio::pin!(wait_a, wait_b);
            wait_a.as_mut().enable();
            wait_b.as_mut().enable();
            wakeups.wake(&[1; 32]);
            wait_a.await;
            assert!(futures_poll_once(wait_b.as_mut()).is_none(), "another code's waiter sleeps on");
            wakeups.wake_all();
            wait_b.await;
        }
        assert_eq!(wakeups.waiting(), 0, "entries go with their waiters");
    }

    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        match f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
