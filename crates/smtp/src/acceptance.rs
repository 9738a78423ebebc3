//! Durable acceptance: the store calls behind [`Step::LookupRecipient`] and
//! [`Step::Deliver`].
//!
//! A message is written with ONE `BlobStore::put_durable` call: one copy per hosted
//! recipient inbox at `<owner>/<inbox>/<ulid>.eml`, plus `queue/<ulid>.eml` when it
//! has remote recipients. Only after that call returns are the remote recipients
//! queued, and only after both does the session answer `250`.
//!
//! [`Step::LookupRecipient`]: crate::Step::LookupRecipient
//! [`Step::Deliver`]: crate::Step::Deliver

use agentkeys_store::{BlobError, BlobKey, BlobStore, MetadataStore, NewOutbound, StoreError};
use async_trait::async_trait;
use bytes::Bytes;

use agentkeys_core::{Address, InboxStatus, SendAuthorized, UnixTime};
use ulid::Ulid;

use crate::session::{Delivery, InboundEnvelope, LocalRecipient, Outbound, RecipientAnswer, RecipientQuery};
use crate::verdicts::{prepend_header, strip_own_results};

/// Why a message could not be stored. Never answered with `250`.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The blob store failed: `452 4.3.1` when full, `451 4.3.0` otherwise.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Queueing the remote recipients failed (`451 4.3.0`).
    #[error("queueing outbound message failed: {0}")]
    Queue(#[from] StoreError),
    /// The outbound copy could not be DKIM-signed (`451 4.3.0`).
    #[error("signing outbound message failed: {0}")]
    Sign(String),
}

/// Signs the outbound copy of a submitted message before it is queued (DKIM in
/// `agentkeys-delivery`). The SMTP crate knows only this trait.
#[async_trait]
pub trait OutboundSigner: Send + Sync + 'static {
    /// Returns the bytes to queue for a message from `sender_domain` (the
    /// authenticated inbox's domain, already checked against `From:`): normalized
    /// and signed. An error refuses the message with a temporary failure.
    async fn sign(&self, sender_domain: &str, message: &[u8]) -> Result<Vec<u8>, String>;
}

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
    let stripped = strip_own_results(&delivery.message, authserv_id);
    delivery.message = prepend_header(&header, &stripped).into();
    delivery
}

/// Answers a [`RecipientQuery`]: is the domain hosted, and if so, which inbox is it.
///
/// An inbox exists only in a hosted domain, so the common case (a known inbox) costs
/// one lookup; the domain is consulted only to tell an unknown inbox (`550 5.1.1`)
/// from a relay attempt (`550 5.7.1`).
pub async fn lookup_recipient(
    meta: &dyn MetadataStore,
    query: &RecipientQuery,
) -> Result<RecipientAnswer, StoreError> {
    if let Some(inbox) = &query.inbox
        && let Some(found) = meta.recipient(inbox).await?
    {
        return Ok(RecipientAnswer::Hosted(Some(found)));
    }
    if meta.is_hosted_domain(&query.domain).await? {
        Ok(RecipientAnswer::Hosted(None))
    } else {
        Ok(RecipientAnswer::NotHosted)
    }
}

/// Where a submitted message's recipient goes, by the store's answer. The one
/// rule of both submission doors (SMTP `RCPT TO` and HTTP send); the MX refuses
/// [`RecipientRoute::Remote`] as relaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientRoute {
    /// A hosted, active inbox: a local copy.
    Local(LocalRecipient),
    /// Not a hosted domain: queued for remote delivery.
    Remote(String),
    /// A hosted domain without such an inbox (`550 5.1.1`).
    Unknown,
    /// A disabled or suspended inbox (`550 5.2.1`).
    Inactive,
}

/// Routes one recipient ([`RecipientRoute`]).
pub fn route_recipient(query: RecipientQuery, answer: RecipientAnswer) -> RecipientRoute {
    match (answer, query.inbox) {
        (RecipientAnswer::NotHosted, _) => RecipientRoute::Remote(query.address),
        (RecipientAnswer::Hosted(None), _) | (RecipientAnswer::Hosted(Some(_)), None) => RecipientRoute::Unknown,
        (RecipientAnswer::Hosted(Some(recipient)), Some(inbox)) => {
            if recipient.status == InboxStatus::Active {
                RecipientRoute::Local(LocalRecipient { inbox, owner: recipient.owner })
            } else {
                RecipientRoute::Inactive
            }
        }
    }
}

/// A message submitted over HTTP, as the same [`Delivery`] an SMTP submission
/// builds: a `Received:` line (`with HTTP`, RFC 5321 §4.4) prepended, local copies
/// for hosted recipients, the remote ones queued under `sender`. The caller has
/// already checked `From:` with [`from_header_is`].
pub fn http_submission(
    sender: SendAuthorized,
    message: &[u8],
    local: Vec<LocalRecipient>,
    remote: Vec<String>,
    id: Ulid,
    received_at: UnixTime,
    hostname: &str,
) -> Delivery {
    let trace = format!(
        "Received: from agent {} (HTTP API)\r\n\tby {hostname} with HTTP id {id};\r\n\t{}\r\n",
        sender.agent(),
        agentkeys_core::time::rfc5322(received_at)
    );
    let mut bytes = Vec::with_capacity(trace.len() + message.len());
    bytes.extend_from_slice(trace.as_bytes());
    bytes.extend_from_slice(message);
    Delivery {
        id,
        message: bytes.into(),
        received_at,
        local,
        outbound: (!remote.is_empty()).then_some(Outbound { sender, recipients: remote }),
        inbound: None,
    }
}

/// The `From:` pinning rule of both submission doors (SMTP and HTTP): whether the
/// header section holds exactly one `From:` field with exactly one address, equal
/// to `inbox` ignoring case. Anything else is refused (`550 5.7.1`, HTTP 403).
pub fn from_header_is(message: &[u8], inbox: &Address) -> bool {
    use mail_parser::{HeaderName, HeaderValue, MessageParser};
    let parser = MessageParser::new()
        .header_address(HeaderName::From)
        .default_header_ignore();
    let Some(parsed) = parser.parse_headers(message) else {
        return false;
    };
    let mut from = parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From);
    let (Some(header), None) = (from.next(), from.next()) else {
        return false;
    };
    match &header.value {
        HeaderValue::Address(mail_parser::Address::List(list)) => match list.as_slice() {
            [only] => only
                .address
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(inbox.as_str())),
            _ => false,
        },
        _ => false,
    }
}


/// The blob keys a delivery is written under, in order: local copies, then the
/// outbound queue copy.
pub fn blob_keys(delivery: &Delivery) -> Vec<BlobKey> {
    let mut keys: Vec<BlobKey> = delivery
        .local
        .iter()
        .map(|r| BlobKey::message(&r.owner, &r.inbox, delivery.id))
        .collect();
    if delivery.outbound.is_some() {
        keys.push(BlobKey::queued(delivery.id));
    }
    keys
}

/// Stores a delivery durably (one `put_durable` call), then queues its remote
/// recipients. `Ok` means the message may be acknowledged with `250`.
pub async fn store_delivery(
    blobs: &dyn BlobStore,
    meta: &dyn MetadataStore,
    delivery: &Delivery,
) -> Result<(), DeliveryError> {
    store_delivery_signed(blobs, meta, None, delivery).await
}

/// [`store_delivery`], with the outbound copy (`queue/<ulid>.eml`) replaced by
/// what `signer` returns: normalized and DKIM-signed. Hosted copies stay as
/// received (plus `Received:`). Signing happens before anything is written, so a
/// signing failure leaves nothing behind. Without a signer the queue copy is the
/// message as received.
pub async fn store_delivery_signed(
    blobs: &dyn BlobStore,
    meta: &dyn MetadataStore,
    signer: Option<&dyn OutboundSigner>,
    delivery: &Delivery,
) -> Result<(), DeliveryError> {
    let queued: Bytes = match (&delivery.outbound, signer) {
        (Some(outbound), Some(signer)) => signer
            .sign(outbound.sender.inbox().domain(), &delivery.message)
            .await
            .map_err(DeliveryError::Sign)?
            .into(),
        _ => delivery.message.clone(),
    };
    let items = blob_keys(delivery)
        .into_iter()
        .map(|key| {
            let bytes = if key.as_str().starts_with("queue/") { queued.clone() } else { delivery.message.clone() };
            (key, bytes)
        })
        .collect();
    blobs.put_durable(items).await?;
    if let Some(outbound) = &delivery.outbound {
        meta.enqueue_outbound(&NewOutbound {
            message_id: delivery.id.to_string(),
            sender: outbound.sender.inbox().clone(),
            owner: outbound.sender.owner().clone(),
            recipients: outbound.recipients.clone(),
            size: queued.len() as u64,
            queued_at: delivery.received_at,
        })
        .await?;
    }
    Ok(())
}
