//! Storage for AgentKeys Mail, as role traits so that each consumer names only
//! what it uses and a second backend implements storage, not rules:
//!
//! - metadata roles ([`roles`]): [`Recipients`] (the MX's RCPT lookup; the
//!   [`CachedRecipients`] decorator works over any backend), [`Directory`],
//!   [`KeysAndGrants`], [`AuthLookup`], [`OwnerApproval`], [`Pairing`],
//!   [`AuditLog`], [`Checkpoints`], [`Outbox`] and [`OutboundQueue`],
//!   [`MessageIndex`] (which messages an inbox holds, with a commit-ordered `seq`),
//!   [`SendIdempotency`], [`DomainStatusStore`], [`StoreHealth`], [`InboxExpiry`]
//!   (inboxes past their expiry, removed once each), [`Throttles`]
//!   (failure counters every node shares; [`LocalThrottles`] and
//!   [`CachedThrottles`] for one process and the hot path), [`Webhooks`]
//!   (subscriptions and the delivery outbox). [`MetadataStore`]
//!   is all of them together, for the composition root. Embedded default: SQLite
//!   in WAL mode ([`SqliteStore`]); for several nodes on one database, PostgreSQL
//!   (`PgStore`, feature `postgres`).
//! - [`BlobStore`]: raw messages under `<owner>/<inbox>/<ulid>.eml`. Embedded
//!   default: a directory tree with durable writes and group commit ([`FsBlobStore`]);
//!   with the `s3` feature, an S3 bucket (`s3::S3BlobStore`).
//! - [`Mailroom`]: the one way mail lands in an inbox (blob durable → index row
//!   committed in a group → event published to [`MailEvents`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use agentkeys_store::{FsBlobStore, SqliteStore};
//! let meta = SqliteStore::open(std::path::Path::new("./agentkeys-data/meta.sqlite")).await?;
//! let blobs = FsBlobStore::open(std::path::Path::new("./agentkeys-data/blobs"))?;
//! # Ok(()) }
//! ```

mod blob;
mod console;
mod console_views;
#[cfg(feature = "conformance")]
#[doc(hidden)]
pub mod conformance;
mod events;
mod domain_status;
pub mod enqueue;
mod fs;
mod header_summary;
mod idempotency;
mod index;
mod mailroom;
mod mail_backends;
pub mod message_facts;
pub mod search;
pub mod group_commit;
mod meta;
mod owner_mail;
mod pairing_wakeups;
mod policies;
mod guardrails;
#[cfg(feature = "postgres")]
pub mod postgres;
mod queue;
mod recipients;
#[cfg(feature = "s3")]
pub mod s3;
mod sqlite;
mod throttles;
mod webhooks;
mod write_tx;
#[cfg(test)]
mod fault_tests;

pub use blob::{BlobError, BlobKey};
pub use console::{ChallengeRecord, Console, PasskeyLinkRecord, PasskeyRecord, SessionRecord};
pub use owner_mail::{
    CodeCheck, EMAIL_CODE_RETENTION_SECS, EmailCodeIssue, EmailCodeLimits, EmailCodeRecord, EmailCodeState, EmailLinkView,
    LinkApproval, OwnerMail, SYSTEM_OWNER,
};
pub use console_views::{ConsoleViews, GrantDecision, GrantRequestRecord, GrantRequestStatus, KEY_USE_RESOLUTION_SECS};
pub use events::{EVENT_BUFFER, LocalEventHub, MailEvents, Missed, Subscription, TooManySubscribers};
pub use domain_status::{DOMAIN_STATUSES, DomainStatusRecord, DomainStatusStore};
pub use fs::FsBlobStore;
pub use header_summary::{
    HeaderFrom, HeaderSummary, MAX_SUMMARY_FROM_ADDRESS_CHARS, MAX_SUMMARY_FROM_NAME_CHARS, MAX_SUMMARY_HEADER_BYTES,
    MAX_SUMMARY_SUBJECT_CHARS,
};
pub use idempotency::{IDEMPOTENCY_KEY_TTL_SECS, IdempotencyClaim, IdempotencyScope, STALE_CLAIM_SECS, SendIdempotency};
pub use message_facts::MessageFacts;
pub use search::{FACTS_VERSION, MAX_QUERY_TERMS, MAX_THREAD_MESSAGES, SearchHit, SearchQuery, ThreadSummary};
pub use index::{IndexedMessage, ListOrder, MessageIndex, NewMessage, PageQuery, received_at};
pub use mailroom::{
    ACK_WINDOW_SECS, CLOCK_SKEW_SECS, INBOX_SWEEP_BATCH, INBOX_SWEEP_GRACE_SECS, acknowledgement_closed, INDEX_QUEUE, MAX_INDEX_BATCH, Mailroom, OP_DOMAIN_SET_RETENTION,
    OP_MESSAGE_EXPIRE, Reconciled, SWEEP_BATCH, expire_event, inbox_expire_event, never_acknowledged,
    BACKFILL_BATCH, Backfilled,
};
pub use meta::*;
pub use mail_backends::{
    ImportCursor, MAIL_BACKEND_KINDS, MAIL_BACKEND_STATUSES, MailBackendRecord, MailBackends, OP_BACKEND_AUTH_FAILED,
    OP_DOMAIN_SET_BACKEND,
};
pub use pairing_wakeups::PairingWakeups;
pub use policies::{CachedInboxPolicies, InboxPolicies, POLICY_CACHE_MAX, POLICY_CACHE_TTL};
pub use guardrails::{
    HeldDecided, HeldDecision, HeldRecord, HeldState, MAX_LISTED, OwnerNotice, SendAdmission, SendAttempt, SendGuardrails,
    SentDelivery, SentRecord,
};

/// Every role trait, for code that holds a whole backend (the composition root,
/// tests) and calls across roles: `use agentkeys_store::roles::*;`. Library code
/// names the roles it uses instead.
pub mod roles {
    pub use crate::console::Console;
    pub use crate::owner_mail::OwnerMail;
    pub use crate::console_views::ConsoleViews;
    pub use crate::domain_status::DomainStatusStore;
    pub use crate::idempotency::SendIdempotency;
    pub use crate::index::MessageIndex;
    pub use crate::mail_backends::MailBackends;
    pub use crate::policies::InboxPolicies;
    pub use crate::guardrails::SendGuardrails;
    pub use crate::meta::{
        AuditLog, AuthLookup, Checkpoints, Deployment, Directory, InboxExpiry, KeysAndGrants, MetadataStore, Outbox,
        OwnerApproval, Pairing, Recipients, StoreHealth,
    };
    pub use crate::queue::OutboundQueue;
    pub use crate::throttles::Throttles;
    pub use crate::webhooks::Webhooks;
}
pub use queue::{AttemptOutcome, AttemptRecord, AttemptToRecord, Claim, OutboundQueue, QueueDetail, QueueStateCount};
pub use recipients::{CachedRecipients, RECIPIENT_CACHE_MAX, RECIPIENT_CACHE_TTL};
#[cfg(feature = "s3")]
pub use s3::{S3BlobStore, S3Config, S3ConfigError, S3Error, S3Limits};
pub use sqlite::{READINESS_MIN_FREE_BYTES, SqliteStore};
pub use throttles::{
    Admission, CachedThrottles, FailureTally, FailureWindow, LOCAL_SWEEP_INTERVAL, LocalThrottles, MAX_CACHED_FULL_KEYS,
    MAX_LOCAL_THROTTLE_KEYS, MAX_THROTTLE_KEY_BYTES, ThrottleKey, Throttles, UnixMillis, tally, unix_millis,
};
#[cfg(feature = "postgres")]
pub use postgres::{PgEvents, PgStore};
pub use webhooks::{
    AgentSubscriber, DeliveryAttempt, DeliveryClaim, DeliveryRecord, DeliveryState, ExpiringCredential, FedMessage, MESSAGE_FEED, MessageFeed,
    NewWebhookEvent, OutboundFact, WebhookRecord, Webhooks,
};

use async_trait::async_trait;
use bytes::Bytes;

/// Durable storage of raw messages.
///
/// `put_durable` returns only once every item is on stable storage (file data and
/// the directory entry fsynced) and visible under its key; on error no item is
/// visible, partially written or otherwise.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes all items durably. Concurrent callers may share fsyncs (group commit).
    async fn put_durable(&self, items: Vec<(BlobKey, Bytes)>) -> Result<(), BlobError>;
    /// Reads one blob; `None` if it does not exist.
    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BlobError>;
    /// Lists the keys under a prefix (`<owner>/<inbox>/`), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<BlobKey>, BlobError>;
    /// Removes one blob durably; `Ok(false)` if it did not exist. Backends that
    /// cannot remove keep the blob and answer `Ok(false)` (the default).
    async fn remove(&self, key: &BlobKey) -> Result<bool, BlobError> {
        let _ = key;
        Ok(false)
    }
    /// Proves the store can take a new blob now, for readiness (`/readyz`): writes
    /// [`READINESS_PROBE_BYTES`] durably where blobs are written, then removes
    /// them. Backends that cannot probe answer `Ok(())` (the default).
    async fn check_writable(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

/// How much a readiness probe writes to the blob store: a store with less room
/// than this left would refuse most messages, so it is not ready.
pub const READINESS_PROBE_BYTES: usize = 64 * 1024;
