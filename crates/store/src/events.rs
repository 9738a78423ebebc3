//! New-mail events: who is told, in this process, that a message landed in an
//! inbox.
//!
//! [`MailEvents`] is the seam: [`LocalEventHub`] (one Tokio broadcast channel per
//! inbox that has a subscriber, removed with its last subscriber) is the
//! embedded implementation; a PostgreSQL `LISTEN/NOTIFY` one, for several
//! `serve` nodes, can replace it. [`Mailroom`](crate::Mailroom) publishes only
//! after the message is durable and indexed, from its single committer, so a
//! subscriber sees an inbox's events in `seq` order. Nothing polls.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentkeys_core::{Address, OwnerId};
use tokio::sync::broadcast;

use crate::index::IndexedMessage;

/// Events buffered per inbox for a subscriber that has not read them yet; one
/// that falls further behind gets [`Missed::Lagged`] and catches up from the index.
pub const EVENT_BUFFER: usize = 256;

/// Why a subscription yielded no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Missed {
    /// The subscriber fell behind and this many events were dropped for it.
    #[error("{0} events were dropped for a slow subscriber")]
    Lagged(u64),
    /// The hub is gone (the server is stopping).
    #[error("the event hub is closed")]
    Closed,
}

/// Too many subscribers for one inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the inbox already has {0} event subscribers")]
pub struct TooManySubscribers(pub usize);

/// Publishes and subscribes to new-mail events, per inbox.
pub trait MailEvents: Send + Sync + 'static {
    /// Tells the inbox's current subscribers. Never blocks; with no subscriber it
    /// does nothing.
    fn publish(&self, message: &IndexedMessage);
    /// Subscribes to one inbox, unless it already has `max_subscribers`.
    fn subscribe(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        max_subscribers: usize,
    ) -> Result<Subscription, TooManySubscribers>;
}

/// One subscriber's stream of an inbox's events. Dropping it unsubscribes.
pub struct Subscription {
    rx: Option<broadcast::Receiver<IndexedMessage>>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription over a broadcast receiver; `on_drop` runs after the
    /// receiver is dropped (an implementation's bookkeeping).
    pub fn new(rx: broadcast::Receiver<IndexedMessage>, on_drop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self { rx: Some(rx), on_drop: Some(Box::new(on_drop)) }
    }

    /// The next event. Cancel-safe.
    pub async fn recv(&mut self) -> Result<IndexedMessage, Missed> {
        let Some(rx) = self.rx.as_mut() else { return Err(Missed::Closed) };
        rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => Missed::Lagged(n),
            broadcast::error::RecvError::Closed => Missed::Closed,
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(on_drop) = self.on_drop.take() {
            on_drop();
        }
    }
}

type Channels = Mutex<HashMap<String, broadcast::Sender<IndexedMessage>>>;

/// The in-process [`MailEvents`]: one broadcast channel per subscribed inbox.
#[derive(Debug, Default, Clone)]
pub struct LocalEventHub {
    channels: Arc<Channels>,
}

fn lock(channels: &Channels) -> MutexGuard<'_, HashMap<String, broadcast::Sender<IndexedMessage>>> {
    channels.lock().unwrap_or_else(PoisonError::into_inner)
}

fn channel_key(owner: &OwnerId, inbox: &Address) -> String {
    format!("{owner}/{inbox}/")
}

impl LocalEventHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many inboxes have a channel (for tests: idle inboxes keep none).
    pub fn channels(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Current subscribers of one inbox.
    pub fn subscribers(&self, owner: &OwnerId, inbox: &Address) -> usize {
        lock(&self.channels).get(&channel_key(owner, inbox)).map_or(0, broadcast::Sender::receiver_count)
    }
}

impl MailEvents for LocalEventHub {
    fn publish(&self, message: &IndexedMessage) {
        let channels = lock(&self.channels);
        if let Some(tx) = channels.get(&channel_key(&message.owner, &message.inbox)) {
            // An error only means nobody is listening any more.
            let _ = tx.send(message.clone());
        }
    }

    fn subscribe(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        max_subscribers: usize,
    ) -> Result<Subscription, TooManySubscribers> {
        let key = channel_key(owner, inbox);
        let rx = {
            let mut channels = lock(&self.channels);
            let tx = channels.entry(key.clone()).or_insert_with(|| broadcast::channel(EVENT_BUFFER).0);
            if tx.receiver_count() >= max_subscribers {
                if tx.receiver_count() == 0 {
                    channels.remove(&key);
                }
                return Err(TooManySubscribers(max_subscribers));
            }
            tx.subscribe()
        };
        let channels = Arc::clone(&self.channels);
        Ok(Subscription::new(rx, move || {
            // Prune the inbox's channel with its last subscriber (checked under
            // the lock, so a subscriber arriving meanwhile keeps it).
            let mut channels = lock(&channels);
            if let Entry::Occupied(entry) = channels.entry(key)
                && entry.get().receiver_count() == 0
            {
                entry.remove();
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ulid::Ulid;

    fn message(inbox: &str, seq: i64) -> IndexedMessage {
        IndexedMessage {
            seq,
            owner: "0x00000000000000000000000000000000000000aa".parse().unwrap(),
            inbox: inbox.parse().unwrap(),
            id: Ulid::new(),
            received_at: 1,
            size: 10,
        }
    }

    #[tokio::test]
    async fn subscribers_get_their_inbox_only_and_idle_inboxes_are_pruned() {
        let hub = LocalEventHub::new();
        let a = message("a@x.test", 1);
        let b = message("b@x.test", 2);
        hub.publish(&a); // nobody listens: no channel is created
        assert_eq!(hub.channels(), 0);
        let mut sub = hub.subscribe(&a.owner, &a.inbox, 4).unwrap();
        hub.publish(&b);
        hub.publish(&a);
        assert_eq!(sub.recv().await.unwrap(), a);
        assert_eq!(hub.channels(), 1);
        drop(sub);
        assert_eq!(hub.channels(), 0);
    }

    #[tokio::test]
    async fn the_subscriber_limit_is_per_inbox() {
        let hub = LocalEventHub::new();
        let a = message("a@x.test", 1);
        let b = message("b@x.test", 1);
        let first = hub.subscribe(&a.owner, &a.inbox, 2).unwrap();
        let _second = hub.subscribe(&a.owner, &a.inbox, 2).unwrap();
        assert_eq!(hub.subscribe(&a.owner, &a.inbox, 2).unwrap_err(), TooManySubscribers(2));
        let _other = hub.subscribe(&b.owner, &b.inbox, 2).unwrap();
        drop(first);
        assert!(hub.subscribe(&a.owner, &a.inbox, 2).is_ok());
        assert_eq!(hub.subscribers(&a.owner, &a.inbox), 1, "the dropped one is gone");
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let hub = LocalEventHub::new();
        let a = message("a@x.test", 1);
        let mut sub = hub.subscribe(&a.owner, &a.inbox, 1).unwrap();
        for seq in 0..(EVENT_BUFFER as i64 + 5) {
            hub.publish(&message("a@x.test", seq));
        }
        assert_eq!(sub.recv().await, Err(Missed::Lagged(5)));
        assert_eq!(sub.recv().await.unwrap().seq, 5);
    }
}
