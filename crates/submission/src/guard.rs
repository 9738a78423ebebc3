//! Inbox allow/block lists at the doors (issue 13 §2; the rules are
//! `agentkeys_core::policy`, the stored lists `agentkeys_store::InboxPolicies`).
//!
//! - **Sending** ([`send_policy`]): each recipient of a submission is checked
//!   against the sending inbox's send lists when it is given (SMTP `RCPT TO`:
//!   `550 5.7.1`; HTTP send: `403 SEND_POLICY`), local and remote recipients
//!   alike.
//! - **Receiving** ([`apply_receive_policies`]): at the end of an MX
//!   transaction, when the `From:` header is known, each recipient inbox's
//!   receive lists decide whether it gets a copy. Blocked mail is refused, not
//!   stored: the agent never sees it and the sender's MTA returns it, so nobody
//!   loses mail silently. A transaction whose every recipient refuses answers
//!   `550 5.7.1`; one with some accepting recipients is stored for those only.
//!
//! The receive decision uses the header `From:` (what the agent reads and what
//! DMARC authenticates) for the allow list, and both `From:` and the envelope
//! sender for the block list: see `InboxPolicy::receive`.

use agentkeys_core::Address;
use agentkeys_core::policy::{ReceiveRefusal, SendRefusal};
use agentkeys_store::{InboxPolicies, StoreError};
use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::delivery::Delivery;

/// Whether `inbox` may send to `recipient` (an envelope address), by its send
/// lists. The outer error is a store failure (answer "try later").
pub async fn send_policy(
    policies: &dyn InboxPolicies,
    inbox: &Address,
    recipient: &str,
) -> Result<Result<(), SendRefusal>, StoreError> {
    let policy = policies.inbox_policy(inbox).await?;
    Ok(policy.send(recipient))
}

/// The `From:` address of a message: the one mailbox of its one `From:`
/// field, lowercased; `None` when there is no such field, several, or a field
/// with several mailboxes or a group.
pub fn header_from(message: &[u8]) -> Option<String> {
    let parsed = MessageParser::new()
        .header_address(HeaderName::From)
        .default_header_ignore()
        .parse_headers(message)?;
    let mut from = parsed.headers().iter().filter(|h| h.name == HeaderName::From);
    let (Some(field), None) = (from.next(), from.next()) else { return None };
    let HeaderValue::Address(mail_parser::Address::List(list)) = &field.value else { return None };
    let [only] = list.as_slice() else { return None };
    only.address.as_deref().map(|a| a.trim().to_lowercase()).filter(|a| a.contains('@'))
}

/// One recipient inbox that refused a message, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRefused {
    /// The inbox.
    pub inbox: Address,
    /// Which list refused, and the sender it matched.
    pub refusal: ReceiveRefusal,
}

/// Applies each recipient inbox's receive lists to an MX delivery: the
/// inboxes that refuse are removed from `delivery.local` and returned. A
/// delivery without an inbound envelope (submission) is left alone.
pub async fn apply_receive_policies(
    policies: &dyn InboxPolicies,
    delivery: &mut Delivery,
) -> Result<Vec<ReceiveRefused>, StoreError> {
    let Some(envelope) = &delivery.inbound else { return Ok(Vec::new()) };
    let from = header_from(&delivery.message);
    let mut kept = Vec::with_capacity(delivery.local.len());
    let mut refused = Vec::new();
    for recipient in std::mem::take(&mut delivery.local) {
        let policy = policies.inbox_policy(&recipient.inbox).await?;
        match policy.receive(from.as_deref(), &envelope.mail_from) {
            Ok(()) => kept.push(recipient),
            Err(refusal) => refused.push(ReceiveRefused { inbox: recipient.inbox, refusal }),
        }
    }
    delivery.local = kept;
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_from_is_the_one_mailbox_of_the_one_field() {
        let msg = |h: &str| format!("Received: x\r\n{h}\r\nSubject: s\r\n\r\nbody\r\n");
        assert_eq!(header_from(msg("From: GitHub <NoReply@GitHub.com>").as_bytes()).as_deref(), Some("noreply@github.com"));
        assert_eq!(header_from(msg("From: a@x.test, b@y.test").as_bytes()), None);
        assert_eq!(header_from(msg("From: a@x.test\r\nFrom: b@y.test").as_bytes()), None);
        assert_eq!(header_from(msg("To: a@x.test").as_bytes()), None);
        assert_eq!(header_from(msg("From: undisclosed").as_bytes()), None);
    }
}
