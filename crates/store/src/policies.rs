//! [`InboxPolicies`]: the stored allow/block lists of inboxes (issue 13 §2;
//! the rules are `agentkeys_core::policy`). SQLite here, PostgreSQL in
//! `postgres/policies.rs`.
//!
//! A policy is stored with the owner who set it and is read only while the
//! inbox belongs to that owner: every read joins `inboxes` on address and
//! owner, so another owner's inbox (or an address re-created by someone else)
//! answers like one without a policy, and an owner-scoped call on it answers
//! `NotFound`, exactly as for a missing inbox.

use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_core::policy::InboxPolicy;
use agentkeys_core::{Address, OwnerId, UnixTime};
use async_trait::async_trait;

use crate::meta::StoreError;
use crate::sqlite::{SqliteStore, backend, commit_audited, require_ok};

/// The stored policies of inboxes.
#[async_trait]
pub trait InboxPolicies: Send + Sync + 'static {
    /// The policy of `inbox` as its current owner set it; the open default
    /// when none is set or the inbox does not exist. The MX, the sending doors
    /// and the read path ask this.
    async fn inbox_policy(&self, inbox: &Address) -> Result<InboxPolicy, StoreError>;
    /// The policy of one of `owner`'s inboxes. `NotFound` when the inbox is
    /// missing or another owner's.
    async fn owner_inbox_policy(&self, owner: &OwnerId, inbox: &Address) -> Result<InboxPolicy, StoreError>;
    /// Replaces the policy of one of `owner`'s inboxes, with `event` in the
    /// same transaction. `NotFound` when the inbox is missing or another
    /// owner's (nothing written, nothing recorded); `Invalid` when the policy
    /// breaks its limits.
    async fn set_inbox_policy(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        policy: &InboxPolicy,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
}

pub(crate) fn encode(policy: &InboxPolicy) -> Result<String, StoreError> {
    policy.validate().map_err(StoreError::Invalid)?;
    serde_json::to_string(policy).map_err(|e| StoreError::Invalid(format!("cannot encode the policy: {e}")))
}

pub(crate) fn decode(inbox: &Address, text: Option<String>) -> Result<InboxPolicy, StoreError> {
    match text {
        None => Ok(InboxPolicy::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Backend(format!("stored policy of {inbox} is invalid: {e}"))),
    }
}

#[async_trait]
impl InboxPolicies for SqliteStore {
    async fn inbox_policy(&self, inbox: &Address) -> Result<InboxPolicy, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT p.policy FROM inbox_policies p JOIN inboxes i ON i.address = p.inbox AND i.owner = p.owner
              WHERE p.inbox = ?1",
        )
        .bind(inbox.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        decode(inbox, row.map(|(p,)| p))
    }

    async fn owner_inbox_policy(&self, owner: &OwnerId, inbox: &Address) -> Result<InboxPolicy, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT p.policy FROM inboxes i LEFT JOIN inbox_policies p ON p.inbox = i.address AND p.owner = i.owner
              WHERE i.address = ?1 AND i.owner = ?2",
        )
        .bind(inbox.as_str())
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        match row {
            None => Err(StoreError::NotFound { what: format!("inbox {inbox}") }),
            Some((text,)) => decode(inbox, text),
        }
    }

    async fn set_inbox_policy(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        policy: &InboxPolicy,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        require_ok(event)?;
        let text = encode(policy)?;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO inbox_policies (inbox, owner, policy, updated_at)
             SELECT address, owner, ?3, ?4 FROM inboxes WHERE address = ?1 AND owner = ?2
             ON CONFLICT (inbox) DO UPDATE SET owner = excluded.owner, policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(inbox.as_str())
        .bind(owner.as_str())
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound { what: format!("inbox {inbox}") });
        }
        let sealed = self.append_in(&mut tx, event).await?;
        commit_audited(tx, sealed).await
    }
}

// ---------------------------------------------------------------------------
// The MX's cache.

/// How long the MX answers an inbox's policy from memory: a policy set on any
/// node applies to mail within this time, as an inbox disabled anywhere stops
/// receiving within [`RECIPIENT_CACHE_TTL`](crate::RECIPIENT_CACHE_TTL) (the
/// same second). A policy set through the cache applies on its node at once.
pub const POLICY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most inboxes whose policy is kept; the cache starts over when full.
pub const POLICY_CACHE_MAX: usize = 10_000;

/// [`InboxPolicies`] with [`inbox_policy`](InboxPolicies::inbox_policy)
/// answers (the open default included) kept for [`POLICY_CACHE_TTL`]: under
/// load every message to an inbox asks for the same policy, which would
/// otherwise be a database round trip per message. Owner-scoped reads and
/// writes go to the store; a write also drops this node's entry.
pub struct CachedInboxPolicies {
    inner: std::sync::Arc<dyn InboxPolicies>,
    ttl: std::time::Duration,
    known: std::sync::Mutex<std::collections::HashMap<Address, (InboxPolicy, std::time::Instant)>>,
}

impl std::fmt::Debug for CachedInboxPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedInboxPolicies").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl CachedInboxPolicies {
    /// Caches `inner`'s answers for [`POLICY_CACHE_TTL`].
    pub fn new(inner: std::sync::Arc<dyn InboxPolicies>) -> Self {
        Self::with_ttl(inner, POLICY_CACHE_TTL)
    }

    /// Caches `inner`'s answers for `ttl` (tests).
    pub fn with_ttl(inner: std::sync::Arc<dyn InboxPolicies>, ttl: std::time::Duration) -> Self {
        Self { inner, ttl, known: std::sync::Mutex::default() }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Address, (InboxPolicy, std::time::Instant)>> {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl InboxPolicies for CachedInboxPolicies {
    async fn inbox_policy(&self, inbox: &Address) -> Result<InboxPolicy, StoreError> {
        if let Some((policy, at)) = self.known().get(inbox)
            && at.elapsed() < self.ttl
        {
            return Ok(policy.clone());
        }
        // Dated from before the question: a change committed meanwhile is not
        // hidden for longer than the TTL.
        let asked = std::time::Instant::now();
        let policy = self.inner.inbox_policy(inbox).await?;
        let mut known = self.known();
        if known.len() >= POLICY_CACHE_MAX {
            known.clear();
        }
        known.insert(inbox.clone(), (policy.clone(), asked));
        Ok(policy)
    }

    async fn owner_inbox_policy(&self, owner: &OwnerId, inbox: &Address) -> Result<InboxPolicy, StoreError> {
        self.inner.owner_inbox_policy(owner, inbox).await
    }

    async fn set_inbox_policy(
        &self,
        owner: &OwnerId,
        inbox: &Address,
        policy: &InboxPolicy,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        let receipt = self.inner.set_inbox_policy(owner, inbox, policy, now, event).await;
        self.known().remove(inbox);
        receipt
    }
}
