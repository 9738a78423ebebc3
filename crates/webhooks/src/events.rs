//! The event types and their bodies: `{"type", "timestamp", "data"}` (the
//! Standard Webhooks payload shape). Bodies never carry message content:
//! `message.received` has the sender, subject, size and verdict, not the body.

use agentkeys_core::time::rfc3339;
use agentkeys_core::{Address, OwnerId, UnixTime};
use agentkeys_store::{ExpiringCredential, FedMessage, HeaderSummary, NewWebhookEvent, OutboundFact};
use serde_json::{Value, json};

/// A message arrived in an inbox (MX, or a local copy of a sent message, or a DSN).
pub const MESSAGE_RECEIVED: &str = "message.received";
/// An inbox queued a message for remote recipients.
pub const MESSAGE_SENT: &str = "message.sent";
/// A remote server accepted it for one recipient.
pub const MESSAGE_DELIVERED: &str = "message.delivered";
/// An attempt failed temporarily; it will be retried.
pub const MESSAGE_DEFERRED: &str = "message.deferred";
/// Delivery to one recipient failed for good (a DSN went to the sender).
pub const MESSAGE_BOUNCED: &str = "message.bounced";
/// A grant of the owner expires soon.
pub const GRANT_EXPIRING: &str = "grant.expiring";
/// An agent key of the owner expires soon.
pub const KEY_EXPIRING: &str = "key.expiring";

/// One of an agent's send limits refused a send (issue 13 §3; once per agent,
/// limit and hour). Fed by `agentkeys_submission::guardrails`.
pub const SEND_LIMITED: &str = "send.limited";
/// A message was held for the owner's review (issue 13 §3).
pub const MESSAGE_HELD: &str = "message.held";

/// Every event type a subscription may ask for.
pub const EVENT_TYPES: [&str; 9] = [
    MESSAGE_RECEIVED,
    MESSAGE_SENT,
    MESSAGE_DELIVERED,
    MESSAGE_DEFERRED,
    MESSAGE_BOUNCED,
    GRANT_EXPIRING,
    KEY_EXPIRING,
    SEND_LIMITED,
    MESSAGE_HELD,
];

/// Event types that concern one inbox (the others are owner-wide and go only
/// to subscriptions without an inbox filter).
pub fn is_inbox_event(event_type: &str) -> bool {
    event_type.starts_with("message.") || event_type.starts_with("send.")
}

fn envelope(event_type: &str, at: UnixTime, data: Value) -> String {
    json!({ "type": event_type, "timestamp": rfc3339(at), "data": data }).to_string()
}

/// What `message.received` tells about a message: the header summary the
/// index took when the message was stored (no blob read per event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    /// The `From:` address.
    pub from: Option<String>,
    /// The decoded subject (at most the index's
    /// [`MAX_SUMMARY_SUBJECT_CHARS`](agentkeys_store::MAX_SUMMARY_SUBJECT_CHARS)).
    pub subject: Option<String>,
    /// Our MX's verdict (DMARC pass or aligned DKIM pass).
    pub authenticated: Option<bool>,
}

impl From<&HeaderSummary> for HeaderFacts {
    fn from(summary: &HeaderSummary) -> Self {
        Self {
            from: summary.header_from.as_ref().map(|f| f.address.clone()),
            subject: summary.subject.clone(),
            authenticated: Some(summary.authenticated),
        }
    }
}

/// Longest text carried by a `message.received` of a subscription that asks
/// for the body, in bytes (cut at a character boundary, `text_truncated` then true).
pub const MAX_BODY_TEXT_BYTES: usize = 64 * 1024;

/// The text of a message for subscriptions that ask for it (`include_body`):
/// the plain-text part, else the HTML part as text; never attachments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyText {
    /// At most [`MAX_BODY_TEXT_BYTES`].
    pub text: String,
    /// Whether it was cut.
    pub truncated: bool,
}

impl BodyText {
    /// Parses the whole of `raw`; `None` when it has no text.
    pub fn read(message_id: &str, raw: &[u8], our_hostname: &str) -> Option<Self> {
        let parsed = agentkeys_agent::message::ParsedMessage::parse(message_id, raw, our_hostname).ok()?;
        let text = parsed.text.or(parsed.html_text)?;
        Some(Self::cut(text))
    }

    fn cut(mut text: String) -> Self {
        if text.len() <= MAX_BODY_TEXT_BYTES {
            return Self { text, truncated: false };
        }
        let mut end = MAX_BODY_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        Self { text, truncated: true }
    }
}

/// `message.received` for an index row; with `body` (read only when a
/// subscription asks for it), also the payload those subscriptions get.
pub fn message_received(m: &FedMessage, facts: &HeaderFacts, body: Option<&BodyText>) -> NewWebhookEvent {
    let mut data = json!({
        "inbox": m.inbox,
        "message_id": m.id,
        "size": m.size,
        "received_at": rfc3339(m.received_at),
    });
    if let Some(from) = &facts.from {
        data["from"] = json!(from);
    }
    if let Some(subject) = &facts.subject {
        data["subject"] = json!(subject);
    }
    if let Some(authenticated) = facts.authenticated {
        data["authenticated"] = json!(authenticated);
    }
    let payload_with_body = body.map(|b| {
        let mut with = data.clone();
        with["text"] = json!(b.text);
        with["text_truncated"] = json!(b.truncated);
        envelope(MESSAGE_RECEIVED, m.received_at, with)
    });
    NewWebhookEvent {
        owner: m.owner.clone(),
        inbox: Some(m.inbox.clone()),
        event_type: MESSAGE_RECEIVED.to_owned(),
        event_key: format!("{MESSAGE_RECEIVED}:{}:{}", m.inbox, m.id),
        payload: envelope(MESSAGE_RECEIVED, m.received_at, data),
        payload_with_body,
    }
}

/// `message.sent` for one queued message (all its recipients).
pub fn message_sent(owner: &OwnerId, sender: &Address, message_id: &str, recipients: &[String], size: u64, at: UnixTime) -> NewWebhookEvent {
    let data = json!({ "inbox": sender, "message_id": message_id, "recipients": recipients, "size": size, "queued_at": rfc3339(at) });
    NewWebhookEvent {
        owner: owner.clone(),
        inbox: Some(sender.clone()),
        event_type: MESSAGE_SENT.to_owned(),
        event_key: format!("{MESSAGE_SENT}:{message_id}"),
        payload: envelope(MESSAGE_SENT, at, data),
        payload_with_body: None,
    }
}

/// `message.delivered|deferred|bounced` for one recorded attempt; `None` for
/// an outcome we do not know.
pub fn message_attempt(fact: &OutboundFact) -> Option<NewWebhookEvent> {
    let event_type = match fact.outcome.as_deref()? {
        "delivered" => MESSAGE_DELIVERED,
        "deferred" => MESSAGE_DEFERRED,
        "bounced" => MESSAGE_BOUNCED,
        _ => return None,
    };
    let attempt = fact.attempt?;
    let data = json!({
        "inbox": fact.sender,
        "message_id": fact.message_id,
        "recipient": fact.recipient,
        "attempt": attempt,
        "response": fact.response,
        "at": rfc3339(fact.at),
    });
    Some(NewWebhookEvent {
        owner: fact.owner.clone(),
        inbox: Some(fact.sender.clone()),
        event_type: event_type.to_owned(),
        event_key: format!("{event_type}:{}:{}:{attempt}", fact.message_id, fact.recipient),
        payload: envelope(event_type, fact.at, data),
        payload_with_body: None,
    })
}

/// `grant.expiring` / `key.expiring`, once per credential and expiry.
pub fn expiring(c: &ExpiringCredential, now: UnixTime) -> NewWebhookEvent {
    let (event_type, data) = if c.kind == "grant" {
        (GRANT_EXPIRING, json!({ "grant_id": c.id, "agent": c.agent, "inbox": c.pattern, "expires_at": rfc3339(c.expires_at) }))
    } else {
        (KEY_EXPIRING, json!({ "key_id": c.id, "agent": c.agent, "expires_at": rfc3339(c.expires_at) }))
    };
    NewWebhookEvent {
        owner: c.owner.clone(),
        inbox: None,
        event_type: event_type.to_owned(),
        event_key: format!("{event_type}:{}:{}", c.id, c.expires_at),
        payload: envelope(event_type, now, data),
        payload_with_body: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_header_block_gives_sender_and_subject_and_never_the_body() {
        let raw = b"From: Alice <alice@example.com>\r\nSubject: =?utf-8?q?h=C3=A9llo?=\r\n\r\nsecret body 123456\r\n";
        let summary = HeaderSummary::of_message(raw, "mx.test");
        let facts = HeaderFacts::from(&summary);
        assert_eq!(facts.from.as_deref(), Some("alice@example.com"));
        assert_eq!(facts.subject.as_deref(), Some("héllo"));
        assert_eq!(facts.authenticated, Some(false));
        let m = FedMessage {
            seq: 1,
            owner: "0x1000000000000000000000000000000000000001".parse().unwrap(),
            inbox: "bot@agents.localhost".parse().unwrap(),
            id: "01J".to_owned(),
            size: raw.len() as u64,
            received_at: 1_700_000_000,
            summary,
        };
        let event = message_received(&m, &facts, None);
        assert!(!event.payload.contains("secret body"));
        assert_eq!(event.payload_with_body, None);
        let body = BodyText::read("01J", raw, "mx.test").unwrap();
        assert_eq!(body, BodyText { text: "secret body 123456\r\n".to_owned(), truncated: false });
        let with = message_received(&m, &facts, Some(&body));
        assert!(!with.payload.contains("secret body"), "only subscriptions asking for it get the body");
        let v: Value = serde_json::from_str(with.payload_with_body.as_deref().unwrap()).unwrap();
        assert_eq!((v["data"]["text"].as_str(), v["data"]["text_truncated"].as_bool()), (Some(body.text.as_str()), Some(false)));
        let v: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(v["type"], "message.received");
        assert_eq!(v["data"]["from"], "alice@example.com");
        assert_eq!(v["data"]["size"], raw.len());
    }
}

#[cfg(test)]
mod body_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_long_text_is_cut_at_the_limit_on_a_character_boundary() {
        let exact = BodyText::cut("a".repeat(MAX_BODY_TEXT_BYTES));
        assert_eq!((exact.text.len(), exact.truncated), (MAX_BODY_TEXT_BYTES, false));
        // 'é' is two bytes: the limit falls inside one, the cut goes before it.
        let long = BodyText::cut(format!("{}é{}", "a".repeat(MAX_BODY_TEXT_BYTES - 1), "b".repeat(10)));
        assert_eq!((long.text.len(), long.truncated), (MAX_BODY_TEXT_BYTES - 1, true));
    }
}
