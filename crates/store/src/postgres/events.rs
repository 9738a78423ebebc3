//! New-mail events across nodes: [`PgEvents`].
//!
//! Every indexing transaction of [`PgStore`] notifies [`MAIL_CHANNEL`] with one
//! payload per new row (`index.rs`); PostgreSQL delivers them when, and only
//! when, the transaction commits, in commit order, which is `seq` order within
//! an owner (an owner's indexers take turns, `index.rs`). Each
//! node runs one listener task on a connection of its own (`LISTEN
//! agentkeys_mail`) that republishes every notification, its own node's
//! included, into the node's [`LocalEventHub`]. So an agent waiting on node B
//! is woken by mail accepted on node A, and a subscriber still sees an inbox's
//! events in `seq` order: all of them come through the one ordered stream.
//! (Publishing this node's rows directly as well would let a row of this node
//! overtake an earlier one of another node, and the subscriber, which skips
//! what is not newer than the last `seq` it saw, would lose the earlier one.)
//!
//! **Loss.** Notifications sent while the listener is not connected are gone.
//! Whenever the listener (re)connects, after its `LISTEN` is in place, the hub
//! announces a gap ([`LocalEventHub::announce_gap`]): every subscriber gets
//! [`Missed::Lagged`](crate::Missed::Lagged)`(0)` and re-reads the index from the
//! last `seq` it saw, which covers everything committed before the `LISTEN`.
//! Reconnection is retried with a backoff from [`RECONNECT_MIN`] to
//! [`RECONNECT_MAX`].
//!
//! **Pairing approvals.** The same listener also hears [`PAIRING_CHANNEL`]:
//! `approve_pairing` notifies it with the pair code's hash when the approval
//! commits, and the listener wakes this node's collects waiting on that code
//! ([`PairingWakeups`]), so an agent long-polling node B is answered as soon
//! as its owner approves on node A. After every (re)connect every waiting
//! collect is woken once, to re-read what it may have missed.

use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::{Address, OwnerId};
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;
use ulid::Ulid;

use super::PgStore;
use crate::events::{LocalEventHub, MailEvents, Subscription, TooManySubscribers};
use crate::index::{IndexedMessage, received_at, summary_from_columns};
use crate::pairing_wakeups::PairingWakeups;

/// The notification channel of new index rows.
pub const MAIL_CHANNEL: &str = "agentkeys_mail";

/// The notification channel of pairing approvals (payload: the pair code's
/// SHA-256, lowercase hex).
pub const PAIRING_CHANNEL: &str = "agentkeys_pairing";

/// `application_name` of the listener's connection (to find it in
/// `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "agentkeys-events";

/// First wait before reconnecting a lost listener.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// [`MailEvents`] for a node sharing a PostgreSQL database with others: a
/// [`LocalEventHub`] fed by the database's notifications (module docs). Cheap to
/// clone; the listener task ends when the last clone is dropped.
#[derive(Clone)]
pub struct PgEvents {
    hub: LocalEventHub,
    pairings: PairingWakeups,
    listening: watch::Receiver<bool>,
    /// Dropped with the last clone: the listener task sees its channel close.
    _stop: Arc<watch::Sender<()>>,
}

impl std::fmt::Debug for PgEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEvents").field("listening", &*self.listening.borrow()).finish_non_exhaustive()
    }
}

/// A notification's payload (written by `agentkeys_index_messages`, migration 0006).
#[derive(Deserialize)]
struct Payload {
    seq: i64,
    owner: String,
    inbox: String,
    id: String,
    size: u64,
    #[serde(default)]
    from_address: Option<String>,
    #[serde(default)]
    from_name: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    authenticated: bool,
}

impl Payload {
    fn message(self) -> Option<IndexedMessage> {
        let id = Ulid::from_string(&self.id).ok()?;
        Some(IndexedMessage {
            seq: self.seq,
            owner: self.owner.parse::<OwnerId>().ok()?,
            inbox: self.inbox.parse::<Address>().ok()?,
            id,
            received_at: received_at(id),
            size: self.size,
            summary: summary_from_columns(self.from_address, self.from_name, self.subject, self.authenticated),
        })
    }
}

impl PgEvents {
    /// Starts the listener for `store`'s database, publishing into `hub`. Must be
    /// called inside a Tokio runtime. Returns at once; [`PgEvents::listening`]
    /// waits for the first `LISTEN`.
    pub fn start(store: &PgStore, hub: LocalEventHub) -> Self {
        Self::start_with(store, hub, PairingWakeups::default())
    }

    /// [`PgEvents::start`], also waking `pairings`' collects when an approval
    /// of their code commits on any node.
    pub fn start_with(store: &PgStore, hub: LocalEventHub, pairings: PairingWakeups) -> Self {
        let options = store.connect_options().application_name(LISTENER_APPLICATION_NAME);
        // One connection of its own, opened (and reopened) on demand.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        let (stop, stopped) = watch::channel(());
        let (state, listening) = watch::channel(false);
        tokio::spawn(listen(pool, hub.clone(), pairings.clone(), state, stopped));
        Self { hub, pairings, listening, _stop: Arc::new(stop) }
    }

    /// The pairing wake-ups this node's collects wait on.
    pub fn pairings(&self) -> &PairingWakeups {
        &self.pairings
    }

    /// The local hub this node's subscribers use.
    pub fn hub(&self) -> &LocalEventHub {
        &self.hub
    }

    /// Whether the listener's `LISTEN` is in place now.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Waits until the listener's `LISTEN` is in place (at once if it is).
    pub async fn listening(&self) {
        let mut state = self.listening.clone();
        // Err only if the task ended, which it does only when we are dropped.
        let _ = state.wait_for(|listening| *listening).await;
    }
}

impl MailEvents for PgEvents {
    /// Does nothing: rows committed by [`PgStore`] are announced by the database
    /// and delivered by the listener, in commit order (module docs).
    fn publish(&self, _message: &IndexedMessage) {}

    fn subscribe(&self, owner: &OwnerId, inbox: &Address, max_subscribers: usize) -> Result<Subscription, TooManySubscribers> {
        self.hub.subscribe(owner, inbox, max_subscribers)
    }
}

/// The listener task: connect and `LISTEN`, announce a gap, republish until the
/// connection fails; again, with a growing pause, until `stop` closes.
async fn listen(
    pool: PgPool,
    hub: LocalEventHub,
    pairings: PairingWakeups,
    state: watch::Sender<bool>,
    mut stop: watch::Receiver<()>,
) {
    let mut pause = RECONNECT_MIN;
    loop {
        let connected = tokio::select! {
            _ = stop.changed() => return,
            connected = connect(&pool) => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(%err, retry_in = ?pause, "cannot listen for new-mail notifications");
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        pause = RECONNECT_MIN;
        // Whatever was committed while nobody listened is in the index. Told
        // before `listening` turns true, so a subscriber that waited for it and
        // subscribed afterwards has nothing to catch up on.
        hub.announce_gap();
        pairings.wake_all();
        state.send_replace(true);
        loop {
            let received = tokio::select! {
                _ = stop.changed() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) if notification.channel() == PAIRING_CHANNEL => {
                    wake_pairing(&pairings, notification.payload());
                }
                Ok(Some(notification)) => deliver(&hub, notification.payload()),
                Ok(None) => {
                    tracing::warn!("the new-mail listener lost its connection; reconnecting");
                    break;
                }
                Err(err) => {
                    tracing::warn!(%err, "the new-mail listener failed; reconnecting");
                    break;
                }
            }
        }
        state.send_replace(false);
        drop(listener);
    }
}

/// A listener with its `LISTEN` in place. Reconnection is ours (the loop
/// above), so that every reconnection announces a gap.
async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen_all([MAIL_CHANNEL, PAIRING_CHANNEL]).await?;
    Ok(listener)
}

/// Publishes one notification's row into `hub`; a payload that does not parse
/// is logged and skipped (nothing this crate sends).
fn deliver(hub: &LocalEventHub, payload: &str) {
    match serde_json::from_str::<Payload>(payload).ok().and_then(Payload::message) {
        Some(message) => hub.publish(&message),
        None => tracing::warn!(payload, "ignoring a malformed new-mail notification"),
    }
}

/// Wakes the collects waiting on the code whose hash `payload` is; a payload
/// that does not parse is logged and skipped.
fn wake_pairing(pairings: &PairingWakeups, payload: &str) {
    match agentkeys_audit::hash_from_hex(payload) {
        Some(hash) => pairings.wake(&hash),
        None => tracing::warn!(payload, "ignoring a malformed pairing notification"),
    }
}
