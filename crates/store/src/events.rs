//! New-mail events: who is told, in this process, that a message landed in an
//! inbox.
//!
//! [`MailEvents`] is the seam: [`LocalEventHub`] (one Tokio broadcast channel per
//! inbox that has a subscriber, removed with its last subscriber) is the
//! embedded implementation. For several `serve` nodes on one PostgreSQL
//! database, `PgEvents` (feature `postgres`) feeds a `LocalEventHub` from the
//! database's `LISTEN/NOTIFY`, so mail accepted on one node wakes waiters on
//! every node. [`Mailroom`](crate::Mailroom) publishes only after the message is
//! durable and indexed, from its single committer, so a subscriber sees an
//! inbox's events in `seq` order. Nothing polls.
//!
//! When a hub cannot know what it missed (its feed from another node was cut),
//! [`LocalEventHub::announce_gap`] tells every subscriber
//! [`Missed::Lagged`]`(0)`: re-read from the index, as after an overflow.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use agentkeys_core::{Address, OwnerId};
use tokio::sync::{broadcast, watch};

use crate::index::IndexedMessage;

/// Events buffered per inbox for a subscriber that has not read them yet; one
/// that falls further behind gets [`Missed::Lagged`] and catches up from the index.
pub const EVENT_BUFFER: usize = 256;

/// Why a subscription yielded no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Missed {
    /// Events may have been lost for this subscriber: it fell behind and this
    /// many were dropped, or (`0`: how many is unknown) the hub's feed was cut
    /// ([`LocalEventHub::announce_gap`]). Either way, catch up from the index.
    #[error("events were dropped for this subscriber ({0}; 0 = unknown)")]
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
    /// Gap announcements of the hub ([`LocalEventHub::announce_gap`]), if it has any.
    gaps: Option<watch::Receiver<u64>>,
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
        Self { rx: Some(rx), gaps: None, on_drop: Some(Box::new(on_drop)) }
    }

    /// Also yield [`Missed::Lagged`]`(0)` whenever `gaps` changes.
    fn with_gaps(mut self, gaps: watch::Receiver<u64>) -> Self {
        self.gaps = Some(gaps);
        self
    }

    /// The next event; [`Missed::Lagged`] when events may have been lost (a gap
    /// announced since the last call comes first). Cancel-safe.
    pub async fn recv(&mut self) -> Result<IndexedMessage, Missed> {
        let Some(rx) = self.rx.as_mut() else { return Err(Missed::Closed) };
        let received = loop {
            let Some(gaps) = self.gaps.as_mut() else { break rx.recv().await };
            tokio::select! {
                biased;
                changed = gaps.changed() => match changed {
                    Ok(()) => {
                        gaps.borrow_and_update();
                        return Err(Missed::Lagged(0));
                    }
                    // The hub's gap sender is gone: no more announcements.
                    Err(_) => self.gaps = None,
                },
                received = rx.recv() => break received,
            }
        };
        received.map_err(|e| match e {
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
#[derive(Debug, Clone)]
pub struct LocalEventHub {
    channels: Arc<Channels>,
    /// Bumped by [`LocalEventHub::announce_gap`]; every subscription watches it.
    gaps: Arc<watch::Sender<u64>>,
}

impl Default for LocalEventHub {
    fn default() -> Self {
        Self { channels: Arc::default(), gaps: Arc::new(watch::channel(0).0) }
    }
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

    /// Tells every current subscriber that events may have been lost (their
    /// next [`Subscription::recv`] is [`Missed::Lagged`]`(0)`), so each catches
    /// up from the index. For a feed that was cut and restored, such as
    /// `PgEvents`' database listener after a reconnect.
    pub fn announce_gap(&self) {
        self.gaps.send_modify(|n| *n = n.wrapping_add(1));
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
        let gaps = self.gaps.subscribe();
        Ok(Subscription::new(rx, move || {
            // Prune the inbox's channel with its last subscriber (checked under
            // the lock, so a subscriber arriving meanwhile keeps it).
            let mut channels = lock(&channels);
            if let Entry::Occupied(entry) = channels.entry(key)
                && entry.get().receiver_count() == 0
            {
                entry.remove();
            }
        })
        .with_gaps(gaps))
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
            summary: Default::default(),
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
    async fn an_announced_gap_reaches_every_subscriber_once_before_later_events() {
        let hub = LocalEventHub::new();
        let a = message("a@x.test", 1);
        let b = message("b@x.test", 1);
        let mut sub_a = hub.subscribe(&a.owner, &a.inbox, 4).unwrap();
        let mut sub_b = hub.subscribe(&b.owner, &b.inbox, 4).unwrap();
        hub.announce_gap();
        hub.publish(&a);
        assert_eq!(sub_a.recv().await, Err(Missed::Lagged(0)), "the gap comes first");
        assert_eq!(sub_a.recv().await.unwrap(), a, "then the events, and the gap only once");
        assert_eq!(sub_b.recv().await, Err(Missed::Lagged(0)));
        // A subscriber arriving after the announcement is not told about it.
        let mut late = hub.subscribe(&a.owner, &a.inbox, 4).unwrap();
        let next = message("a@x.test", 2);
        hub.publish(&next);
        assert_eq!(late.recv().await.unwrap(), next);
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
