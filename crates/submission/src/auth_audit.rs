//! The audit record of a submission AUTH decision (DESIGN.md §7: "submission
//! AUTH success and failure"). Both sending doors — SMTP submission and the HTTP
//! send endpoint — build their record here, so the two read the same in the log.
//!
//! The record never holds the key or the password. The username is recorded only
//! when it names one of our inboxes; anything else a client typed is a third
//! party's data and is left out (`subject` is then [`UNKNOWN_SUBJECT`]).

use std::net::IpAddr;

use agentkeys_audit::{Actor, AuditEvent, AuditReceipt, Outcome};
use agentkeys_core::{Address, AgentId, AuthFailure, SendAuthorized};
use serde_json::{Map, Value, json};

/// Operation name of a submission AUTH decision.
pub const OP_SUBMISSION_AUTH: &str = "submission.auth";

/// Subject of a refused AUTH whose username is not one of our inboxes.
pub const UNKNOWN_SUBJECT: &str = "-";

/// Which door the credentials came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// SMTP submission (`AUTH PLAIN` / `AUTH LOGIN`).
    Smtp,
    /// `POST /v1/inboxes/{address}/send`.
    Http,
}

impl Door {
    /// `smtp` or `http`, as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Http => "http",
        }
    }
}

/// What is known about a refused attempt, beyond the failing step.
#[derive(Debug, Clone, Default)]
pub struct RefusalFacts {
    /// The username, when it parsed as an address.
    pub username: Option<Address>,
    /// Whether that address is one of our inboxes (then it is recorded).
    pub hosted: bool,
    /// The agent whose key was presented, when the key was found (steps 4–9).
    pub agent: Option<AgentId>,
}

/// The record of an accepted AUTH: actor the agent, subject the inbox.
/// `peer` is the client's address when the door knows it.
pub fn granted_event(proof: &SendAuthorized, door: Door, peer: Option<IpAddr>) -> AuditEvent {
    let mut detail = Map::new();
    detail.insert("door".into(), json!(door.as_str()));
    if let Some(peer) = peer {
        detail.insert("peer".into(), json!(peer.to_string()));
    }
    detail.insert("key_id".into(), json!(proof.key_id().as_str()));
    detail.insert("grant_id".into(), json!(proof.grant_id().as_str()));
    AuditEvent::ok(Actor::Agent(proof.agent().clone()), OP_SUBMISSION_AUTH, proof.inbox().as_str())
        .with_detail(Value::Object(detail))
}

/// A send authorization whose `submission.auth` record is in the audit log:
/// the [`SendAuthorized`] proof together with the [`AuditReceipt`] of its
/// [`granted_event`]. The sending side effects take this, not the bare proof
/// (`http_submission`, [`Outbound`](crate::Outbound), the SMTP session's
/// submission transaction), so a door cannot send before its AUTH decision
/// is recorded (STYLE.md practice 3): the receipt exists only once the
/// record was appended.
///
/// ```compile_fail
/// // Built only by `AuthRecorded::new`, which needs a receipt: the fields are private.
/// fn forge(
///     proof: agentkeys_core::SendAuthorized,
///     receipt: agentkeys_audit::AuditReceipt,
/// ) -> agentkeys_submission::auth_audit::AuthRecorded {
///     agentkeys_submission::auth_audit::AuthRecorded { proof, receipt }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct AuthRecorded {
    proof: SendAuthorized,
    receipt: AuditReceipt,
}

impl AuthRecorded {
    /// `proof`, once `receipt` came back for the append of its
    /// [`granted_event`].
    pub fn new(proof: SendAuthorized, receipt: AuditReceipt) -> Self {
        Self { proof, receipt }
    }

    /// The authorization.
    pub fn proof(&self) -> &SendAuthorized {
        &self.proof
    }

    /// The receipt of the AUTH record.
    pub fn receipt(&self) -> &AuditReceipt {
        &self.receipt
    }
}

/// The record of a refused AUTH: the failing step's name as `reason`.
pub fn refused_event(failure: AuthFailure, facts: &RefusalFacts, door: Door, peer: Option<IpAddr>) -> AuditEvent {
    let mut detail = Map::new();
    detail.insert("door".into(), json!(door.as_str()));
    if let Some(peer) = peer {
        detail.insert("peer".into(), json!(peer.to_string()));
    }
    detail.insert("reason".into(), json!(failure.to_string()));
    let actor = facts.agent.clone().map_or(Actor::System, Actor::Agent);
    let subject = match (&facts.username, facts.hosted) {
        (Some(address), true) => address.as_str(),
        _ => UNKNOWN_SUBJECT,
    };
    let mut event = AuditEvent::ok(actor, OP_SUBMISSION_AUTH, subject).with_detail(Value::Object(detail));
    event.outcome = Outcome::Denied;
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, 1]))
    }

    #[test]
    fn a_username_that_is_not_ours_is_not_recorded() {
        let facts = RefusalFacts { username: Some("victim@elsewhere.example".parse().unwrap()), hosted: false, agent: None };
        let event = refused_event(AuthFailure::InboxNotFound, &facts, Door::Smtp, peer());
        assert_eq!(event.subject, UNKNOWN_SUBJECT);
        assert_eq!(event.outcome, Outcome::Denied);
        assert_eq!(event.actor, Actor::System);
        let text = serde_json::to_string(&event.detail).unwrap();
        assert!(!text.contains("victim"), "{text}");
        assert!(text.contains("INBOX_NOT_FOUND"), "{text}");
    }

    #[test]
    fn a_hosted_username_and_a_known_agent_are_recorded() {
        let agent: AgentId = "0x1111111111111111111111111111111111111111".parse().unwrap();
        let facts =
            RefusalFacts { username: Some("bot@agents.localhost".parse().unwrap()), hosted: true, agent: Some(agent.clone()) };
        let event = refused_event(AuthFailure::KeyRevoked, &facts, Door::Http, peer());
        assert_eq!(event.subject, "bot@agents.localhost");
        assert_eq!(event.actor, Actor::Agent(agent));
        assert_eq!(event.detail["door"], "http");
        assert_eq!(event.detail["reason"], "KEY_REVOKED");
    }
}
