//! Durable acceptance: the one way a received message is stored, whichever door
//! it came through.
//!
//! A message is written with ONE `BlobStore::put_durable` call: one copy per hosted
//! recipient inbox at `<owner>/<inbox>/<ulid>.eml`, plus `queue/<ulid>.eml` when it
//! has remote recipients. Only after that call returns are the remote recipients
//! queued, and only after both does a door answer `250` (SMTP) or `202` (HTTP).

use std::net::IpAddr;

use agentkeys_core::UnixTime;
use agentkeys_store::{BlobError, BlobKey, BlobStore, NewOutbound, Outbox, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use ulid::Ulid;

use crate::auth_audit::AuthRecorded;
use crate::recipient::LocalRecipient;

/// Remote recipients of a submitted message, under the sender's recorded
/// authorization ([`AuthRecorded`]).
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The proof that the sender may send as its inbox, with the receipt of its
    /// audited AUTH decision.
    pub sender: AuthRecorded,
    /// Envelope recipients outside the hosted domains.
    pub recipients: Vec<String>,
}

/// How a message reached the MX: what SPF and DMARC evaluate besides the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundEnvelope {
    /// The connecting client's address.
    pub client_ip: IpAddr,
    /// The `HELO`/`EHLO` name as sent (printable, comment characters replaced).
    pub helo: String,
    /// The `MAIL FROM` address; empty for the null sender `<>`.
    pub mail_from: String,
}

/// A message ready to be stored, with its routing taken from the envelope only.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Message id, also the blob name.
    pub id: Ulid,
    /// The raw message with our `Received:` line prepended.
    pub message: Bytes,
    /// When it was received.
    pub received_at: UnixTime,
    /// Hosted inboxes that get a copy.
    pub local: Vec<LocalRecipient>,
    /// Remote recipients (submission only).
    pub outbound: Option<Outbound>,
    /// The envelope of a message that arrived on the MX (`None` for submission),
    /// for the authentication verdicts.
    pub inbound: Option<Box<InboundEnvelope>>,
    /// Who submitted it (`None` on the MX): what the send limits and review
    /// ([`crate::guardrails`]) are decided for.
    pub submitted: Option<Box<AuthRecorded>>,
}

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
    /// Every recipient inbox's receive lists refused the message (MX only,
    /// `550 5.7.1`; [`crate::guard`]). Nothing was stored.
    #[error("refused by every recipient's receive policy")]
    RefusedByPolicy,
    /// A send limit of the agent refused the message (`452 4.7.0`, HTTP 429
    /// with `Retry-After`; [`crate::guardrails`]). Nothing was stored.
    #[error("{0}")]
    SendLimit(agentkeys_core::send_limits::LimitRefusal),
}

/// Signs the outbound copy of a submitted message before it is queued (DKIM in
/// `agentkeys-delivery`). The doors know only this trait.
#[async_trait]
pub trait OutboundSigner: Send + Sync + 'static {
    /// Returns the bytes to queue for a message from `sender_domain` (the
    /// authenticated inbox's domain, already checked against `From:`): normalized
    /// and signed. An error refuses the message with a temporary failure.
    async fn sign(&self, sender_domain: &str, message: &[u8]) -> Result<Vec<u8>, String>;
}

/// A message submitted over HTTP, as the same [`Delivery`] an SMTP submission
/// builds: a `Received:` line (`with HTTP`, RFC 5321 §4.4) prepended, local copies
/// for hosted recipients, the remote ones queued under `sender` (an AUTH whose
/// record is in the audit log). The caller has already applied
/// [`crate::check_message`].
pub fn http_submission(
    sender: AuthRecorded,
    message: &[u8],
    local: Vec<LocalRecipient>,
    remote: Vec<String>,
    id: Ulid,
    received_at: UnixTime,
    hostname: &str,
) -> Delivery {
    let trace = format!(
        "Received: from agent {} (HTTP API)\r\n\tby {hostname} with HTTP id {id};\r\n\t{}\r\n",
        sender.proof().agent(),
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
        outbound: (!remote.is_empty()).then(|| Outbound { sender: sender.clone(), recipients: remote }),
        inbound: None,
        submitted: Some(Box::new(sender)),
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

/// The bytes of `recipient`'s copy: the message, with `Delivered-To: <address>`
/// (the envelope address as given) as its first field when the address carried
/// a subaddress tag. Every stored message starts with a field we wrote
/// (`Received:`, `Authentication-Results:` or this), so a `Delivered-To:` first
/// is ours, never the sender's.
pub fn local_copy(message: &Bytes, recipient: &LocalRecipient) -> Bytes {
    match &recipient.delivered_to {
        None => message.clone(),
        Some(address) => {
            let field = format!("Delivered-To: {address}\r\n");
            let mut bytes = Vec::with_capacity(field.len() + message.len());
            bytes.extend_from_slice(field.as_bytes());
            bytes.extend_from_slice(message);
            bytes.into()
        }
    }
}

/// Stores a delivery durably (one `put_durable` call), then queues its remote
/// recipients. `Ok` means the message may be acknowledged.
pub async fn store_delivery(
    blobs: &dyn BlobStore,
    outbox: &dyn Outbox,
    delivery: &Delivery,
) -> Result<(), DeliveryError> {
    store_delivery_signed(blobs, outbox, None, delivery).await
}

/// [`store_delivery`], with the outbound copy (`queue/<ulid>.eml`) replaced by
/// what `signer` returns: normalized and DKIM-signed. Hosted copies stay as
/// received (plus `Received:`). Signing happens before anything is written, so a
/// signing failure leaves nothing behind. Without a signer the queue copy is the
/// message as received.
pub async fn store_delivery_signed(
    blobs: &dyn BlobStore,
    outbox: &dyn Outbox,
    signer: Option<&dyn OutboundSigner>,
    delivery: &Delivery,
) -> Result<(), DeliveryError> {
    let queued: Bytes = match (&delivery.outbound, signer) {
        (Some(outbound), Some(signer)) => signer
            .sign(outbound.sender.proof().inbox().domain(), &delivery.message)
            .await
            .map_err(DeliveryError::Sign)?
            .into(),
        _ => delivery.message.clone(),
    };
    let mut items: Vec<(BlobKey, Bytes)> = delivery
        .local
        .iter()
        .map(|r| (BlobKey::message(&r.owner, &r.inbox, delivery.id), local_copy(&delivery.message, r)))
        .collect();
    if delivery.outbound.is_some() {
        items.push((BlobKey::queued(delivery.id), queued.clone()));
    }
    blobs.put_durable(items).await?;
    if let Some(outbound) = &delivery.outbound {
        // Stuck past the acknowledgement window: a retry may have taken its
        // idempotency claim over and sent the message already (as the index
        // committer refuses it for the local copies).
        if agentkeys_store::acknowledgement_closed(delivery.id) {
            return Err(DeliveryError::Queue(StoreError::Backend(format!(
                "message {} was received more than {} s ago; not queued",
                delivery.id,
                agentkeys_store::ACK_WINDOW_SECS
            ))));
        }
        outbox.enqueue_outbound(&NewOutbound {
            message_id: delivery.id.to_string(),
            sender: outbound.sender.proof().inbox().clone(),
            owner: outbound.sender.proof().owner().clone(),
            recipients: outbound.recipients.clone(),
            size: queued.len() as u64,
            queued_at: delivery.received_at,
        })
        .await?;
    }
    Ok(())
}

/// Queues the remote recipients of `delivery`, stored earlier by a send that
/// died after its index commit and before queueing them
/// ([`IdempotencyClaim::Stored`](agentkeys_store::IdempotencyClaim::Stored)
/// with `queued` false), from the queue copy it wrote with the inbox copies.
/// The queue takes a message once: `Conflict` (queued meanwhile by another
/// retry, or by the stuck send itself) is success. Nothing to do without
/// remote recipients.
pub async fn queue_stored(
    blobs: &dyn BlobStore,
    outbox: &dyn Outbox,
    delivery: &Delivery,
) -> Result<(), DeliveryError> {
    let Some(outbound) = &delivery.outbound else { return Ok(()) };
    let Some(queued) = blobs.get(&BlobKey::queued(delivery.id)).await? else {
        return Err(DeliveryError::Queue(StoreError::Backend(format!(
            "message {} was stored without its queue copy",
            delivery.id
        ))));
    };
    let queued = NewOutbound {
        message_id: delivery.id.to_string(),
        sender: outbound.sender.proof().inbox().clone(),
        owner: outbound.sender.proof().owner().clone(),
        recipients: outbound.recipients.clone(),
        size: queued.len() as u64,
        queued_at: delivery.received_at,
    };
    match outbox.enqueue_outbound(&queued).await {
        Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(DeliveryError::Queue(e)),
    }
}
