//! Per-agent send limits and hold for review at both doors (issue 13 §3; the
//! rules are `agentkeys_core::send_limits`, the counting
//! `agentkeys_store::SendGuardrails`).
//!
//! [`accept_submission`] is what a door calls instead of
//! [`crate::store_delivery_signed`] for a submitted message:
//!
//! 1. **Admission** under the agent's lock: refused (SMTP `452 4.7.0`, HTTP
//!    `429` with `Retry-After`, naming the limit), held, or sent. The refusal
//!    is audited (`send.limited`) and the owner told once per agent, limit and
//!    hour (a notice, and the `send.limited` webhook event).
//! 2. **Sent**: the one durable write and the queue rows, as before. A failure
//!    forgets the admission (it never counted).
//! 3. **Held**: the message as received (with our `Received:`, not signed)
//!    is written to `held/<id>.eml`, then the `held_messages` row with its
//!    `review.hold` record; the door answers `250 … held for review` / `202
//!    {"status":"held"}`. The owner is told (notice, `message.held` event).
//!
//! [`release_held`] is the only way a held message leaves: it takes the
//! [`ReleaseApproved`] proof, which only the store's recorded approval makes,
//! DKIM-signs and queues the message under the sender it was held with.

use agentkeys_audit::{Actor, AuditEvent, AuditReceipt, Outcome};
use agentkeys_core::send_limits::{LimitRefusal, ReleaseApproved};
use agentkeys_core::{SendAuthorized, UnixTime};
use agentkeys_store::{
    AuditLog, BlobKey, BlobStore, HeldRecord, HeldState, NewWebhookEvent, OwnerNotice, Outbox, SendAdmission, SendAttempt,
    SendGuardrails,
};
use bytes::Bytes;
use mail_parser::{HeaderName, MessageParser};
use serde_json::json;
use ulid::Ulid;

use crate::auth_audit::AuthRecorded;
use crate::delivery::{Delivery, DeliveryError, Outbound, OutboundSigner, store_delivery_signed};
use crate::recipient::LocalRecipient;

/// The audit operation of a send refused by a limit.
pub const OP_SEND_LIMITED: &str = "send.limited";
/// The audit operation of a message held for review.
pub const OP_REVIEW_HOLD: &str = "review.hold";
/// The webhook event (and notice kind) of a send refused by a limit.
pub const EVENT_SEND_LIMITED: &str = "send.limited";
/// The webhook event (and notice kind) of a message held for review.
pub const EVENT_MESSAGE_HELD: &str = "message.held";

/// What a door answers for an accepted submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and queued (`250` / `202`).
    Stored,
    /// Held for the owner's review (`250 … held for review` / `202 {"status":"held"}`).
    Held,
}

/// The stores [`accept_submission`] uses.
#[derive(Clone, Copy)]
pub struct SubmissionStores<'a> {
    /// Where messages are written.
    pub blobs: &'a dyn BlobStore,
    /// The outbound queue.
    pub outbox: &'a dyn Outbox,
    /// Limits, counting, held messages, notices.
    pub guardrails: &'a dyn SendGuardrails,
    /// For the refusals' records.
    pub audit: &'a dyn AuditLog,
}

/// Every envelope recipient of a delivery, lowercased, without repeats: the
/// hosted ones as addressed (their subaddress included), then the remote ones.
pub fn envelope_recipients(delivery: &Delivery) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let local = delivery.local.iter().map(|r| r.delivered_to.clone().unwrap_or_else(|| r.inbox.to_string()));
    let remote = delivery.outbound.iter().flat_map(|o| o.recipients.iter().cloned());
    for r in local.chain(remote) {
        let r = r.to_lowercase();
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

fn subject(message: &[u8]) -> Option<String> {
    let parsed = MessageParser::new().parse_headers(message)?;
    parsed.header(HeaderName::Subject).and_then(|v| v.as_text()).map(|s| s.chars().take(200).collect())
}

fn webhook(owner: &agentkeys_core::OwnerId, sender: &SendAuthorized, kind: &str, key: &str, at: UnixTime, data: serde_json::Value) -> NewWebhookEvent {
    let payload =
        json!({ "type": kind, "timestamp": agentkeys_core::time::rfc3339(at), "data": data }).to_string();
    NewWebhookEvent {
        owner: owner.clone(),
        inbox: Some(sender.inbox().clone()),
        event_type: kind.to_owned(),
        event_key: key.to_owned(),
        payload,
        payload_with_body: None,
    }
}

/// Tells the owner (a notice and a webhook event, once per key). A failure
/// is logged: the decision it reports stands either way.
async fn notify(stores: SubmissionStores<'_>, sender: &SendAuthorized, kind: &str, key: String, at: UnixTime, data: serde_json::Value) {
    let notice = OwnerNotice {
        key: key.clone(),
        owner: sender.owner().clone(),
        agent: sender.agent().clone(),
        kind: kind.to_owned(),
        detail: data.to_string(),
        at,
    };
    let event = webhook(sender.owner(), sender, kind, &key, at, data);
    if let Err(e) = stores.guardrails.record_owner_notice(&notice, &[event], at.saturating_mul(1000)).await {
        tracing::error!(error = %e, kind, "recording the owner's notice failed");
    }
}

/// Admits, then stores or holds, a submitted message (see the module docs).
/// `delivery.submitted` names the sender; a delivery without one (the MX) is
/// stored as before.
pub async fn accept_submission(
    stores: SubmissionStores<'_>,
    signer: Option<&dyn OutboundSigner>,
    delivery: &Delivery,
    now: UnixTime,
) -> Result<Accepted, DeliveryError> {
    let Some(sender) = delivery.submitted.as_deref().map(AuthRecorded::proof) else {
        store_delivery_signed(stores.blobs, stores.outbox, signer, delivery).await?;
        return Ok(Accepted::Stored);
    };
    let id = delivery.id.to_string();
    let recipients = envelope_recipients(delivery);
    // Its subject and thread keys, so the inbox's thread views show it.
    let subject = subject(&delivery.message);
    let thread_keys = agentkeys_store::message_facts::sent_thread_keys(&delivery.message);
    let attempt =
        SendAttempt { sender, message_id: &id, recipients: &recipients, subject: subject.as_deref(), thread_keys: &thread_keys, now };
    match stores.guardrails.admit_send(&attempt).await? {
        SendAdmission::Refused(refusal) => {
            refused(stores, sender, &id, refusal, now).await;
            Err(DeliveryError::SendLimit(refusal))
        }
        SendAdmission::Send => match store_delivery_signed(stores.blobs, stores.outbox, signer, delivery).await {
            Ok(()) => Ok(Accepted::Stored),
            Err(e) => {
                forget(stores, &id).await;
                Err(e)
            }
        },
        SendAdmission::Hold(reason) => {
            let key = BlobKey::held(delivery.id);
            let held = HeldRecord {
                id: id.clone(),
                owner: sender.owner().clone(),
                agent: sender.agent().clone(),
                inbox: sender.inbox().clone(),
                key_id: sender.key_id().clone(),
                grant_id: sender.grant_id().clone(),
                recipients: recipients.clone(),
                reason,
                size: delivery.message.len() as u64,
                subject: subject.clone(),
                held_at: now,
                state: HeldState::Held,
                decided_at: None,
                released_as: None,
            };
            let event = AuditEvent::ok(Actor::Agent(sender.agent().clone()), OP_REVIEW_HOLD, &id).with_detail(json!({
                "inbox": sender.inbox(),
                "owner": sender.owner(),
                "reason": reason.as_str(),
                "recipients": recipients.len(),
                "size": held.size,
            }));
            let stored = async {
                stores.blobs.put_durable(vec![(key.clone(), delivery.message.clone())]).await?;
                stores.guardrails.hold_message(&held, &event).await.map_err(DeliveryError::Queue)
            };
            if let Err(e) = stored.await {
                let _ = stores.blobs.remove(&key).await;
                forget(stores, &id).await;
                return Err(e);
            }
            let data = json!({
                "id": id, "agent": sender.agent(), "inbox": sender.inbox(), "reason": reason.as_str(),
                "recipients": recipients.len(), "subject": held.subject,
            });
            notify(stores, sender, EVENT_MESSAGE_HELD, format!("{EVENT_MESSAGE_HELD}:{id}"), now, data).await;
            Ok(Accepted::Held)
        }
    }
}

async fn forget(stores: SubmissionStores<'_>, id: &str) {
    if let Err(e) = stores.guardrails.cancel_send(id).await {
        tracing::error!(error = %e, %id, "forgetting a send that was not stored failed; it counts against the agent's limits");
    }
}

/// A refusal: audited (`send.limited`, outcome `denied`) and told to the owner
/// once per agent, limit and clock hour.
async fn refused(stores: SubmissionStores<'_>, sender: &SendAuthorized, id: &str, refusal: LimitRefusal, now: UnixTime) {
    let limit = refusal.limit.as_str();
    tracing::info!(agent = %sender.agent(), inbox = %sender.inbox(), limit, retry_after = refusal.retry_after_secs, "send refused by a limit");
    metrics::counter!("agentkeys_send_limit_refusals_total", "limit" => limit).increment(1);
    let detail = json!({
        "inbox": sender.inbox(), "owner": sender.owner(), "limit": limit, "max": refusal.max,
        "retry_after_secs": refusal.retry_after_secs, "message_id": id,
    });
    let mut event = AuditEvent::ok(Actor::Agent(sender.agent().clone()), OP_SEND_LIMITED, sender.inbox().as_str())
        .with_detail(detail.clone());
    event.outcome = Outcome::Denied;
    if let Err(e) = stores.audit.audit_append(&event).await {
        tracing::error!(error = %e, "recording a send refused by a limit failed");
    }
    let key = format!("{EVENT_SEND_LIMITED}:{}:{limit}:{}", sender.agent(), now.div_euclid(3_600));
    let data = json!({
        "agent": sender.agent(), "inbox": sender.inbox(), "limit": limit, "max": refusal.max,
        "retry_after_secs": refusal.retry_after_secs,
    });
    notify(stores, sender, EVENT_SEND_LIMITED, key, now, data).await;
}

/// Releases an approved held message: `message` (the held bytes, or the
/// owner's replacement, already checked) is stored for `local` recipients and
/// DKIM-signed and queued for `remote` ones as message `id`, under the sender
/// it was held with. The held blob is removed afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn release_held(
    approved: ReleaseApproved,
    approval_receipt: AuditReceipt,
    stores: SubmissionStores<'_>,
    signer: Option<&dyn OutboundSigner>,
    message: Bytes,
    local: Vec<LocalRecipient>,
    remote: Vec<String>,
    id: Ulid,
    now: UnixTime,
) -> Result<Delivery, DeliveryError> {
    // The owner's recorded approval is what authorizes this send now.
    let sender = AuthRecorded::new(approved.sender().clone(), approval_receipt);
    let delivery = Delivery {
        id,
        message,
        received_at: now,
        local,
        outbound: (!remote.is_empty()).then(|| Outbound { sender: sender.clone(), recipients: remote }),
        inbound: None,
        submitted: Some(Box::new(sender)),
    };
    store_delivery_signed(stores.blobs, stores.outbox, signer, &delivery).await?;
    if let Ok(held) = approved.held_id().parse::<Ulid>() {
        remove_held(stores.blobs, held).await;
    }
    Ok(delivery)
}

/// Removes a decided message's held copy (best effort: a leftover is only
/// bytes nobody reads).
pub async fn remove_held(blobs: &dyn BlobStore, id: Ulid) {
    if let Err(e) = blobs.remove(&BlobKey::held(id)).await {
        tracing::warn!(error = %e, %id, "removing a decided held message failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_recipients_are_lowercased_once_each() {
        let owner: agentkeys_core::OwnerId = format!("0x0a{:038x}", 1).parse().unwrap();
        let local = |a: &str, to: Option<&str>| LocalRecipient {
            inbox: a.parse().unwrap(),
            owner: owner.clone(),
            delivered_to: to.map(str::to_owned),
        };
        let delivery = Delivery {
            id: Ulid::nil(),
            message: Bytes::from_static(b"Subject: hi\r\n\r\n"),
            received_at: 0,
            local: vec![local("bot@a.test", None), local("x@a.test", Some("x+tag@a.test"))],
            outbound: None,
            inbound: None,
            submitted: None,
        };
        assert_eq!(envelope_recipients(&delivery), ["bot@a.test", "x+tag@a.test"]);
        assert_eq!(subject(&delivery.message).as_deref(), Some("hi"));
    }
}
