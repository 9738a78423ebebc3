//! Acceptance: the store calls behind [`Step::LookupRecipient`] and
//! [`Step::Deliver`], and the MX's authentication verdicts.
//!
//! Recipient routing and the one durable write are the sending doors' shared
//! sequence and live in `agentkeys-submission` (re-exported here): a message is
//! written with ONE `BlobStore::put_durable` call, then its remote recipients are
//! queued, and only after both does the session answer `250`. What only the MX
//! does — evaluating SPF, DKIM and DMARC and writing `Authentication-Results:` —
//! is here.
//!
//! [`Step::LookupRecipient`]: crate::Step::LookupRecipient
//! [`Step::Deliver`]: crate::Step::Deliver

use async_trait::async_trait;

pub use agentkeys_submission::{
    Delivery, DeliveryError, InboundEnvelope, OutboundSigner, RecipientRoute, blob_keys, http_submission,
    lookup_recipient, route_recipient, store_delivery, store_delivery_signed,
};

use crate::verdicts::stripped_with_header;

/// Evaluates SPF, DKIM and DMARC for a message that arrived on the MX
/// (`crate::MailAuthVerifier` over mail-auth in production). The SMTP crate's
/// session only describes the envelope; the shell calls this before storing.
///
/// A verdict never refuses mail: an unauthenticated message is stored with its
/// `fail`/`none` results and the agent decides what to trust. DNS trouble is a
/// `temperror` result, never an error, so a message is never lost or rejected
/// because a lookup failed.
#[async_trait]
pub trait InboundVerifier: Send + Sync + 'static {
    /// The complete `Authentication-Results:` header field (name, RFC 8601 value,
    /// CRLF) for `message` as it arrived with `envelope`, with `authserv_id` (our
    /// host name) as its authserv-id.
    async fn verify(&self, authserv_id: &str, envelope: &InboundEnvelope, message: &[u8]) -> String;
}

/// Adds the verdicts to an inbound delivery: every `Authentication-Results`
/// header field that claims `authserv_id` and arrived with the message is removed
/// (RFC 8601 §5: a forged "pass" from us must not survive), others are kept, and
/// the `verifier`'s header is prepended above our `Received:`. Deliveries without
/// an inbound envelope (submission) are returned unchanged.
pub async fn add_verdicts(verifier: &dyn InboundVerifier, authserv_id: &str, mut delivery: Delivery) -> Delivery {
    let Some(envelope) = &delivery.inbound else {
        return delivery;
    };
    let header = verifier.verify(authserv_id, envelope, &delivery.message).await;
    delivery.message = stripped_with_header(&header, &delivery.message, authserv_id).into();
    delivery
}

