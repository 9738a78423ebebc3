//! What an audit record says: who did what to which subject, and how it ended.

use std::fmt;
use std::str::FromStr;

use agentkeys_core::{AgentId, OwnerId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::canonical::canonical_json;
use crate::error::AuditError;

/// Longest operation name, in bytes.
pub const MAX_OPERATION_LEN: usize = 64;
/// Longest subject, in bytes (an address is at most 64 + 1 + 253).
pub const MAX_SUBJECT_LEN: usize = 512;
/// Longest `detail`, in bytes of its canonical JSON. Details are small facts
/// (ids, scopes, hashed addresses), never message content.
pub const MAX_DETAIL_LEN: usize = 8 * 1024;

/// Operation names used by the admin commands and the store. Names are
/// `<subject kind>.<verb>`, lowercase; other components add their own the same way.
pub mod ops {
    /// An owner was added.
    pub const OWNER_CREATE: &str = "owner.create";
    /// An agent was added under an owner.
    pub const AGENT_CREATE: &str = "agent.create";
    /// An inbox was created.
    pub const INBOX_CREATE: &str = "inbox.create";
    /// An inbox's status changed.
    pub const INBOX_SET_STATUS: &str = "inbox.set_status";
    /// An agent key was issued.
    pub const KEY_CREATE: &str = "key.create";
    /// An agent key was revoked.
    pub const KEY_REVOKE: &str = "key.revoke";
    /// A grant was stored.
    pub const GRANT_CREATE: &str = "grant.create";
    /// A grant was revoked.
    pub const GRANT_REVOKE: &str = "grant.revoke";
    /// A grant's scopes were narrowed or its expiry moved (owner-signed).
    pub const GRANT_CHANGE: &str = "grant.change";
    /// A hosted domain was added (with its first DKIM keys).
    pub const DOMAIN_CREATE: &str = "domain.create";
    /// A hosted domain was removed (with its DKIM keys).
    pub const DOMAIN_REMOVE: &str = "domain.remove";
    /// A DKIM key version was stored for a hosted domain.
    pub const DKIM_KEY_CREATE: &str = "dkim_key.create";
    /// An enrollment code was issued for an owner (the code itself is never logged).
    pub const OWNER_ENROLLMENT_ISSUE: &str = "owner.enrollment_issue";
    /// An owner redeemed an enrollment code and registered a master public key.
    pub const OWNER_ENROLL: &str = "owner.enroll";
    /// An agent opened a pairing request (its device key; never the codes).
    pub const PAIRING_OPEN: &str = "pairing.open";
    /// An owner approved a pairing request; the agent was created under them.
    pub const PAIRING_APPROVE: &str = "pairing.approve";
    /// An owner denied a pairing request outright; it can never be approved.
    pub const PAIRING_DENY: &str = "pairing.deny";
    /// A paired agent collected its agent key (minted then, stored hashed).
    pub const PAIRING_COLLECT: &str = "pairing.collect";
    /// An owner asked for a one-time passkey registration link (master key).
    pub const OWNER_PASSKEY_LINK: &str = "owner.passkey_link";
    /// An owner registered a passkey with such a link.
    pub const OWNER_PASSKEY_ADD: &str = "owner.passkey_add";
    /// An owner signed in to the console with a passkey.
    pub const CONSOLE_SIGN_IN: &str = "console.sign_in";
    /// An owner stopped an agent: every key and grant of it revoked at once.
    pub const AGENT_STOP: &str = "agent.stop";
}

/// Who caused an audited operation.
///
/// Text form (also the canonical encoding): `operator`, `owner:<owner id>`,
/// `agent:<agent id>`, `system`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// Whoever runs the admin CLI on the server's machine (has the data directory).
    Operator,
    /// An owner, acting through their master key.
    Owner(OwnerId),
    /// An agent, acting through its agent key.
    Agent(AgentId),
    /// The server itself (timers, queue runner, expiry).
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator => f.write_str("operator"),
            Self::Owner(id) => write!(f, "owner:{id}"),
            Self::Agent(id) => write!(f, "agent:{id}"),
            Self::System => f.write_str("system"),
        }
    }
}

impl FromStr for Actor {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || AuditError::InvalidActor(s.to_owned());
        match s {
            "operator" => Ok(Self::Operator),
            "system" => Ok(Self::System),
            _ => match s.split_once(':') {
                Some(("owner", id)) => id.parse().map(Self::Owner).map_err(|_| invalid()),
                Some(("agent", id)) => id.parse().map(Self::Agent).map_err(|_| invalid()),
                _ => Err(invalid()),
            },
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It happened.
    Ok,
    /// A policy refused it (authentication, grants, approval); nothing happened.
    Denied,
    /// It was allowed but did not complete (a backend error); nothing happened.
    Failed,
}

impl Outcome {
    /// `ok`, `denied` or `failed`: the stored and canonical form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(Self::Ok),
            "denied" => Ok(Self::Denied),
            "failed" => Ok(Self::Failed),
            _ => Err(AuditError::InvalidOutcome(s.to_owned())),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An operation to record, before it has a place in the chain.
///
/// `detail` holds small facts about the operation. It must never hold secrets,
/// key material or key hashes, and third-party addresses go in it only through
/// [`hash_address`](crate::hash_address). Its numbers must be integers (see
/// [`canonical_json`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Who did it.
    pub actor: Actor,
    /// What was done, e.g. `key.create` (see [`ops`]).
    pub operation: String,
    /// What it was done to: an inbox address, a grant id, a key id, an owner or agent id.
    pub subject: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Further facts, as a JSON value (usually an object).
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event with outcome [`Outcome::Ok`] and an empty object as detail.
    pub fn ok(actor: Actor, operation: &str, subject: impl Into<String>) -> Self {
        Self {
            actor,
            operation: operation.to_owned(),
            subject: subject.into(),
            outcome: Outcome::Ok,
            detail: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// The same event with `detail` replaced.
    #[must_use]
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The same event with `outcome` replaced.
    #[must_use]
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Checks the limits an appended event must meet: an operation name of
    /// 1–[`MAX_OPERATION_LEN`] bytes from `a-z 0-9 . _ -`, a subject of at most
    /// [`MAX_SUBJECT_LEN`] bytes without control characters, and a detail whose
    /// canonical JSON is at most [`MAX_DETAIL_LEN`] bytes with integer numbers only.
    pub fn validate(&self) -> Result<(), AuditError> {
        let op_ok = !self.operation.is_empty()
            && self.operation.len() <= MAX_OPERATION_LEN
            && self
                .operation
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        if !op_ok {
            return Err(AuditError::InvalidOperation(self.operation.clone()));
        }
        if self.subject.len() > MAX_SUBJECT_LEN || self.subject.chars().any(char::is_control) {
            return Err(AuditError::InvalidSubject { len: self.subject.len() });
        }
        let detail = canonical_json(&self.detail)?;
        if detail.len() > MAX_DETAIL_LEN {
            return Err(AuditError::DetailTooLong { len: detail.len() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWNER: &str = "0x00000000000000000000000000000000000000aa";

    #[test]
    fn actor_text_round_trips() {
        for text in ["operator", "system", &format!("owner:{OWNER}"), &format!("agent:{OWNER}")] {
            let actor: Actor = text.parse().unwrap();
            assert_eq!(actor.to_string(), text);
        }
        for bad in ["", "root", "owner:", "owner:0x12", "agent", "Operator", "user:0xaa"] {
            assert!(bad.parse::<Actor>().is_err(), "{bad:?} accepted");
        }
        // Ids are canonicalised to lowercase, so the text form is unique.
        let upper: Actor = format!("owner:{}", OWNER.to_uppercase().replace("0X", "0x")).parse().unwrap();
        assert_eq!(upper.to_string(), format!("owner:{OWNER}"));
    }

    #[test]
    fn outcome_text_round_trips() {
        for o in [Outcome::Ok, Outcome::Denied, Outcome::Failed] {
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), o);
        }
        assert!("OK".parse::<Outcome>().is_err());
    }

    #[test]
    fn operation_limit() {
        let at_limit = AuditEvent::ok(Actor::System, &"a".repeat(MAX_OPERATION_LEN), "s");
        assert!(at_limit.validate().is_ok());
        let over = AuditEvent::ok(Actor::System, &"a".repeat(MAX_OPERATION_LEN + 1), "s");
        assert!(matches!(over.validate(), Err(AuditError::InvalidOperation(_))));
        for bad in ["", "Key.Create", "key create", "key/create"] {
            assert!(AuditEvent::ok(Actor::System, bad, "s").validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subject_limit() {
        assert!(AuditEvent::ok(Actor::System, "x.y", "s".repeat(MAX_SUBJECT_LEN)).validate().is_ok());
        let over = AuditEvent::ok(Actor::System, "x.y", "s".repeat(MAX_SUBJECT_LEN + 1));
        assert!(matches!(over.validate(), Err(AuditError::InvalidSubject { .. })));
        let control = AuditEvent::ok(Actor::System, "x.y", "a\nb");
        assert!(matches!(control.validate(), Err(AuditError::InvalidSubject { .. })));
    }

    #[test]
    fn detail_limit() {
        // {"k":"…"} is 8 bytes of framing around the string.
        let fits =
            AuditEvent::ok(Actor::System, "x.y", "s").with_detail(json!({ "k": "v".repeat(MAX_DETAIL_LEN - 8) }));
        assert!(fits.validate().is_ok());
        let over =
            AuditEvent::ok(Actor::System, "x.y", "s").with_detail(json!({ "k": "v".repeat(MAX_DETAIL_LEN - 7) }));
        assert!(matches!(over.validate(), Err(AuditError::DetailTooLong { len }) if len == MAX_DETAIL_LEN + 1));
        let float = AuditEvent::ok(Actor::System, "x.y", "s").with_detail(json!({ "ratio": 0.5 }));
        assert!(matches!(float.validate(), Err(AuditError::NonIntegerNumber)));
    }
}
