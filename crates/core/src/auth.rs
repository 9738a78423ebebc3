//! The submission AUTH order (DESIGN.md §5), as a pure function over looked-up facts.
//!
//! Steps, first failure wins:
//! 1. the username is a valid address;
//! 2. the key matches the format;
//! 3. the key exists;
//! 4. it is not revoked;
//! 5. it is not expired;
//! 6. its agent holds an active `send` grant;
//! 7. the inbox exists;
//! 8. the inbox is active;
//! 9. the inbox owner is the key owner, and a `send` grant covers the inbox.
//!
//! Steps 1–2 need no lookup ([`Credentials::parse`]); steps 3–9 run over
//! [`AuthFacts`] gathered by the store in one query ([`Credentials::evaluate`]).
//! Success yields [`SendAuthorized`], a proof value that only this module can
//! build: the submission path needs it to accept `MAIL FROM`.

use crate::UnixTime;
use crate::grant::{Grant, Scope, covering_grant};
use crate::ids::{Address, AgentId, GrantId, KeyId, OwnerId};
use crate::inbox::InboxStatus;
use crate::key::{AgentKey, KeyHash, KeyHasher};

/// Why an AUTH attempt failed. Every variant answers the same `535 5.7.8` on the
/// wire; the variant goes to the server log and audit only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Step 1: the username is not a valid address.
    #[error("INVALID_USERNAME")]
    InvalidUsername,
    /// Step 2: the password is not `ak_` + 43 base62.
    #[error("MALFORMED_KEY")]
    MalformedKey,
    /// Step 3: no key with this hash.
    #[error("KEY_NOT_FOUND")]
    KeyNotFound,
    /// Step 4: the key was revoked.
    #[error("KEY_REVOKED")]
    KeyRevoked,
    /// Step 5: the key expired.
    #[error("KEY_EXPIRED")]
    KeyExpired,
    /// Step 6: the agent holds no active `send` grant at all.
    #[error("NO_SEND_GRANT")]
    NoSendGrant,
    /// Step 7: no such inbox.
    #[error("INBOX_NOT_FOUND")]
    InboxNotFound,
    /// Step 8: the inbox is disabled or suspended.
    #[error("INBOX_INACTIVE")]
    InboxInactive,
    /// Step 9: the inbox belongs to another owner.
    #[error("OWNER_MISMATCH")]
    OwnerMismatch,
    /// Step 9: no active `send` grant of the agent covers this inbox.
    #[error("GRANT_DOES_NOT_COVER")]
    GrantDoesNotCover,
}

impl AuthFailure {
    /// Every failure in step order, for tests and reports.
    pub const ALL: [AuthFailure; 10] = [
        Self::InvalidUsername,
        Self::MalformedKey,
        Self::KeyNotFound,
        Self::KeyRevoked,
        Self::KeyExpired,
        Self::NoSendGrant,
        Self::InboxNotFound,
        Self::InboxInactive,
        Self::OwnerMismatch,
        Self::GrantDoesNotCover,
    ];

    /// Whether the key itself was refused (steps 2–5: malformed, unknown,
    /// revoked, expired), as opposed to a valid key asking for an inbox its
    /// grants do not cover, or an invalid username whose key was never looked
    /// at. Only refused keys count against a per-address failure budget: a
    /// misconfigured agent with a valid key must not throttle its own address.
    pub fn refuses_key(self) -> bool {
        matches!(self, Self::MalformedKey | Self::KeyNotFound | Self::KeyRevoked | Self::KeyExpired)
    }
}

/// Credentials that passed steps 1–2.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The inbox the client wants to send as.
    pub address: Address,
    /// The key's hash, the store's lookup value.
    pub key_hash: KeyHash,
}

/// The stored facts about a key, found by its hash.
#[derive(Debug, Clone)]
pub struct KeyFacts {
    /// The key's id.
    pub id: KeyId,
    /// The stored hash, re-compared in constant time.
    pub hash: KeyHash,
    /// The agent the key identifies.
    pub agent: AgentId,
    /// That agent's owner.
    pub owner: OwnerId,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Revocation time, if revoked.
    pub revoked_at: Option<UnixTime>,
}

/// Everything steps 3–9 need, gathered by the store.
#[derive(Debug, Clone, Default)]
pub struct AuthFacts {
    /// The key with the presented hash, if any.
    pub key: Option<KeyFacts>,
    /// The grants of that key's agent (any state; the rules filter).
    pub grants: Vec<Grant>,
    /// The inbox's owner and status, if the inbox exists.
    pub inbox: Option<(OwnerId, InboxStatus)>,
}

/// Proof that steps 1–9 passed: this agent may send as this inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAuthorized {
    inbox: Address,
    owner: OwnerId,
    agent: AgentId,
    key_id: KeyId,
    grant_id: GrantId,
}

impl SendAuthorized {
    /// The authorization a held message was submitted under, restored by the
    /// owner's approval ([`crate::send_limits::ReleaseApproved::recorded`], its
    /// only caller).
    pub(crate) fn held(inbox: Address, owner: OwnerId, agent: AgentId, key_id: KeyId, grant_id: GrantId) -> Self {
        Self { inbox, owner, agent, key_id, grant_id }
    }

    /// The inbox the session may send as.
    pub fn inbox(&self) -> &Address {
        &self.inbox
    }
    /// The inbox's (and key's) owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
    /// The authenticated agent.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }
    /// The key used.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// The grant that allowed it.
    pub fn grant_id(&self) -> &GrantId {
        &self.grant_id
    }
}

impl Credentials {
    /// Steps 1–2: checks the formats and hashes the key. No lookup happens here.
    pub fn parse(username: &str, password: &str, hasher: &KeyHasher) -> Result<Self, AuthFailure> {
        let address: Address = username.parse().map_err(|_| AuthFailure::InvalidUsername)?;
        let key = AgentKey::parse(password).ok_or(AuthFailure::MalformedKey)?;
        Ok(Self { address, key_hash: hasher.hash(&key) })
    }

    /// Steps 3–9 over the facts the store found for these credentials.
    pub fn evaluate(&self, facts: &AuthFacts, now: UnixTime) -> Result<SendAuthorized, AuthFailure> {
        let key = facts
            .key
            .as_ref()
            .filter(|k| k.hash.ct_eq(&self.key_hash))
            .ok_or(AuthFailure::KeyNotFound)?;
        if key.revoked_at.is_some() {
            return Err(AuthFailure::KeyRevoked);
        }
        if now >= key.expires_at {
            return Err(AuthFailure::KeyExpired);
        }
        let holds_send_grant = facts
            .grants
            .iter()
            .any(|g| g.held_by(&key.agent, &key.owner) && g.is_active(now) && g.scopes.contains(Scope::Send));
        if !holds_send_grant {
            return Err(AuthFailure::NoSendGrant);
        }
        let (inbox_owner, status) = facts.inbox.as_ref().ok_or(AuthFailure::InboxNotFound)?;
        if *status != InboxStatus::Active {
            return Err(AuthFailure::InboxInactive);
        }
        if *inbox_owner != key.owner {
            return Err(AuthFailure::OwnerMismatch);
        }
        let grant = covering_grant(&facts.grants, &key.agent, &key.owner, Scope::Send, &self.address, inbox_owner, now)
            .map_err(|_| AuthFailure::GrantDoesNotCover)?;
        Ok(SendAuthorized {
            inbox: self.address.clone(),
            owner: key.owner.clone(),
            agent: key.agent.clone(),
            key_id: key.id.clone(),
            grant_id: grant.id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{InboxPattern, Scopes};
    use crate::seed::MasterSeed;

    const NOW: UnixTime = 1_000_000;

    #[test]
    fn only_the_key_steps_refuse_the_key() {
        let refusing: Vec<AuthFailure> = AuthFailure::ALL.into_iter().filter(|f| f.refuses_key()).collect();
        assert_eq!(
            refusing,
            [AuthFailure::MalformedKey, AuthFailure::KeyNotFound, AuthFailure::KeyRevoked, AuthFailure::KeyExpired]
        );
    }

    struct Fixture {
        hasher: KeyHasher,
        key: AgentKey,
        facts: AuthFacts,
    }

    fn owner(n: u8) -> OwnerId {
        format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
    }

    fn fixture() -> Fixture {
        let hasher = KeyHasher::new(&MasterSeed::from_bytes([9; 32]));
        let key = AgentKey::parse(&format!("ak_{}", "k".repeat(43))).unwrap();
        let agent: AgentId = format!("0x{}", "a".repeat(40)).parse().unwrap();
        let facts = AuthFacts {
            key: Some(KeyFacts {
                id: "key_0123456789abcdef".parse().unwrap(),
                hash: hasher.hash(&key),
                agent: agent.clone(),
                owner: owner(1),
                expires_at: NOW + 10,
                revoked_at: None,
            }),
            grants: vec![Grant {
                id: format!("gr_{}", "g".repeat(22)).parse().unwrap(),
                owner: owner(1),
                agent,
                pattern: "bot@agents.localhost".parse::<InboxPattern>().unwrap(),
                scopes: "send".parse::<Scopes>().unwrap(),
                created_at: NOW - 10,
                expires_at: NOW + 10,
                revoked_at: None,
            }],
            inbox: Some((owner(1), InboxStatus::Active)),
        };
        Fixture { hasher, key, facts }
    }

    fn run(f: &Fixture, user: &str, pass: &str) -> Result<SendAuthorized, AuthFailure> {
        Credentials::parse(user, pass, &f.hasher)?.evaluate(&f.facts, NOW)
    }

    #[test]
    fn every_step_in_order() {
        let f = fixture();
        let good = f.key.expose().to_owned();
        let ok = run(&f, "bot@agents.localhost", &good).unwrap();
        assert_eq!(ok.inbox().as_str(), "bot@agents.localhost");

        assert_eq!(run(&f, "not-an-address", "garbage"), Err(AuthFailure::InvalidUsername));
        assert_eq!(run(&f, "bot@agents.localhost", "garbage"), Err(AuthFailure::MalformedKey));
        let other = format!("ak_{}", "z".repeat(43));
        assert_eq!(run(&f, "bot@agents.localhost", &other), Err(AuthFailure::KeyNotFound));

        let mut g = fixture();
        g.facts.key.as_mut().unwrap().revoked_at = Some(NOW - 1);
        g.facts.key.as_mut().unwrap().expires_at = NOW - 1;
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::KeyRevoked));
        g.facts.key.as_mut().unwrap().revoked_at = None;
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::KeyExpired));

        let mut g = fixture();
        g.facts.grants[0].scopes = "read".parse().unwrap();
        g.facts.inbox = None;
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::NoSendGrant));
        let mut g = fixture();
        g.facts.grants[0].expires_at = NOW;
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::NoSendGrant));

        let mut g = fixture();
        g.facts.inbox = None;
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::InboxNotFound));
        g.facts.inbox = Some((owner(2), InboxStatus::Suspended));
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::InboxInactive));
        g.facts.inbox = Some((owner(2), InboxStatus::Active));
        assert_eq!(run(&g, "bot@agents.localhost", &good), Err(AuthFailure::OwnerMismatch));

        let f = fixture();
        assert_eq!(run(&f, "other@agents.localhost", &good), Err(AuthFailure::GrantDoesNotCover));
    }
}
