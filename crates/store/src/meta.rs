//! The metadata store trait and its records.

use agentkeys_audit::{AuditEvent, AuditReceipt, AuditRecord, ChainHead};
use agentkeys_core::{
    Address, AgentId, AuthFacts, Credentials, Domain, Grant, GrantId, InboxStatus, KeyFacts, KeyHash, KeyId, OwnerId,
    UnixTime,
};
use async_trait::async_trait;
use serde::Serialize;

/// A metadata store failure. `NotFound`, `Conflict` and `Invalid` are the caller's
/// to fix and their text says how; `Backend` is ours (SMTP answers `454 4.7.0` or
/// `451 4.3.0`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `agent 0xab…`.
        what: String,
    },
    /// The object already exists.
    #[error("{what} already exists")]
    Conflict {
        /// What collided, e.g. `inbox bot@agents.localhost`.
        what: String,
    },
    /// The request breaks a rule; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("metadata store error: {0}")]
    Backend(String),
    /// A stored audit record cannot be decoded: the database was edited by hand
    /// or corrupted. `audit verify` reports it as the first broken record.
    #[error("audit record {seq} is unreadable: {reason}")]
    AuditUnreadable {
        /// The record's sequence number.
        seq: u64,
        /// Which field does not decode, and why.
        reason: String,
    },
}

/// A signed audit checkpoint as stored: the chain head (`seq`, `hash`) at `ts`,
/// for format v2 its place in the checkpoint chain (`counter`, `prev`), and the
/// authority's signature over the format's signing bytes. Whether it is genuine
/// is for the verifier to decide ([`agentkeys_audit::verify_checkpoints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Sequence number of the head record.
    pub seq: u64,
    /// Hash of the head record.
    pub hash: [u8; 32],
    /// When it was signed, Unix seconds.
    pub ts: UnixTime,
    /// The signature bytes (Ed25519: 64).
    pub signature: Vec<u8>,
    /// Format v2: the checkpoint's counter (from 1); `None` for format v1.
    pub counter: Option<u64>,
    /// Format v2: the hash of checkpoint `counter - 1` (zeros for 1).
    pub prev: Option<[u8; 32]>,
}

impl CheckpointRecord {
    /// A record of a signed chained (v2) checkpoint.
    pub fn chained(checkpoint: &agentkeys_audit::ChainedCheckpoint, signature: Vec<u8>) -> Self {
        Self {
            seq: checkpoint.head.seq,
            hash: checkpoint.head.hash,
            ts: checkpoint.ts,
            signature,
            counter: Some(checkpoint.counter),
            prev: Some(checkpoint.prev),
        }
    }

    /// What was signed, in its format: v2 when both `counter` and `prev` are
    /// there, v1 otherwise (so a v2 row stripped of them fails its signature).
    pub fn signed(&self) -> agentkeys_audit::SignedCheckpoint {
        use agentkeys_audit::{ChainHead, ChainedCheckpoint, Checkpoint, SignedCheckpoint};
        let head = ChainHead { seq: self.seq, hash: self.hash };
        let signature = self.signature.clone();
        match (self.counter, self.prev) {
            (Some(counter), Some(prev)) => {
                SignedCheckpoint::V2 { checkpoint: ChainedCheckpoint { counter, prev, head, ts: self.ts }, signature }
            }
            _ => SignedCheckpoint::V1 { checkpoint: Checkpoint { head, ts: self.ts }, signature },
        }
    }
}

/// An owner (the human).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerRecord {
    /// Wallet-style id.
    pub id: OwnerId,
    /// Notification address (we send to it, never read it).
    pub email: Option<String>,
    /// Creation time.
    pub created_at: UnixTime,
}

/// An agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRecord {
    /// Wallet-style id.
    pub id: AgentId,
    /// Its owner.
    pub owner: OwnerId,
    /// Display name.
    pub name: Option<String>,
    /// Creation time.
    pub created_at: UnixTime,
}

/// An inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboxRecord {
    /// The address, which is also the inbox id.
    pub address: Address,
    /// The owner whose prefix holds its mail.
    pub owner: OwnerId,
    /// The agent it was created for.
    pub agent: AgentId,
    /// Whether it takes mail.
    pub status: InboxStatus,
    /// Creation time.
    pub created_at: UnixTime,
    /// When it stops existing (`None`: never). From this second on it is absent
    /// to every lookup (RCPT, AUTH, mints) and the sweeper removes it with its
    /// mail ([`InboxExpiry`]). Set for inboxes agents create (`create` scope).
    pub expires_at: Option<UnixTime>,
}

impl InboxRecord {
    /// Whether the inbox has expired at `now` ([`agentkeys_core::is_expired`]).
    pub fn is_expired(&self, now: UnixTime) -> bool {
        agentkeys_core::is_expired(self.expires_at, now)
    }
}

/// What the MX needs to accept a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The owner whose blob prefix receives the copy.
    pub owner: OwnerId,
    /// Whether the inbox takes mail.
    pub status: InboxStatus,
    /// When the inbox expires (`None`: never), so a cache never answers for it
    /// past that second ([`CachedRecipients`](crate::CachedRecipients)).
    pub expires_at: Option<UnixTime>,
}

/// An agent key as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// Key id.
    pub id: KeyId,
    /// The agent it identifies.
    pub agent: AgentId,
    /// HMAC of the secret.
    #[serde(skip)]
    pub hash: KeyHash,
    /// Creation time.
    pub created_at: UnixTime,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Revocation time.
    pub revoked_at: Option<UnixTime>,
}

/// One recipient of an outbound message, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueEntry {
    /// The message (ULID; its blob is `queue/<id>.eml`).
    pub message_id: String,
    /// The authenticated inbox that sent it.
    pub sender: Address,
    /// The envelope recipient.
    pub recipient: String,
    /// `queued`, `sending`, `delivered`, `deferred` or `bounced`.
    pub state: String,
    /// Size of the message in bytes.
    pub size: u64,
    /// When it was queued.
    pub queued_at: UnixTime,
    /// Next delivery attempt.
    pub next_attempt_at: UnixTime,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last remote reply, if any.
    pub last_response: Option<String>,
}

/// A message to put in the outbound queue (its blob is already durable).
#[derive(Debug, Clone)]
pub struct NewOutbound {
    /// The message ULID.
    pub message_id: String,
    /// The authenticated inbox.
    pub sender: Address,
    /// Its owner.
    pub owner: OwnerId,
    /// Remote envelope recipients.
    pub recipients: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// Queue time.
    pub queued_at: UnixTime,
}

/// One version of a hosted domain's DKIM keys, as stored. The Ed25519 key is
/// derived from the master seed and not stored; the RSA key is stored wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainKeyRecord {
    /// The hosted domain.
    pub domain: Domain,
    /// Key version (from 1); the newest signs.
    pub version: u32,
    /// DKIM selector of the Ed25519 key (`ed1`).
    pub selector_ed: String,
    /// DKIM selector of the RSA key (`rsa1`).
    pub selector_rsa: String,
    /// The RSA private key, PKCS#8 DER sealed under a seed-derived key. Opaque here.
    #[serde(skip)]
    pub rsa_key_wrapped: Vec<u8>,
    /// Creation time.
    pub created_at: UnixTime,
}

/// An owner's outstanding (or spent) enrollment code, as stored: its SHA-256,
/// never the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTicketRecord {
    /// The owner it enrolls.
    pub owner: OwnerId,
    /// SHA-256 of the normalized code.
    pub code_hash: [u8; 32],
    /// The first second at which the code no longer works.
    pub expires_at: UnixTime,
    /// When it was redeemed; a spent ticket redeems nothing.
    pub consumed_at: Option<UnixTime>,
}

/// Whether [`OwnerApproval::record_owner_nonce`] saw the nonce for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceUse {
    /// First use: recorded now; the record is what completes the owner's
    /// signature check (`SignatureVerified::finish`).
    Fresh(agentkeys_core::NonceRecord),
    /// Already recorded: a replayed request.
    Replayed,
}

impl NonceUse {
    /// Whether the nonce was seen for the first time.
    pub fn is_fresh(&self) -> bool {
        matches!(self, Self::Fresh(_))
    }
}

/// Where a stored pairing request stands. Expiry is not stored: it follows from
/// `opened_at` / `approved_at` and the pairing TTL, which the caller applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingStatus {
    /// Opened, waiting for an owner.
    Pending,
    /// Approved; the agent has not collected its key yet.
    Approved,
    /// The agent collected its key.
    Consumed,
    /// The owner denied it: it can never be approved or collected.
    Denied,
}

impl PairingStatus {
    /// The stored text: `pending`, `approved`, `consumed`, `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Consumed => "consumed",
            Self::Denied => "denied",
        }
    }
}

/// A pairing request as stored: the pair code's SHA-256, never the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRecord {
    /// SHA-256 of the normalized pair code (the lookup key).
    pub code_hash: [u8; 32],
    /// The agent's Ed25519 device public key.
    pub device_key: [u8; 32],
    /// The agent id derived from the device key.
    pub agent: AgentId,
    /// The display name the agent asked for.
    pub name: Option<String>,
    /// When the agent opened it.
    pub opened_at: UnixTime,
    /// Where it stands.
    pub status: PairingStatus,
    /// The approving owner (approved or consumed), or the denying one (denied).
    pub owner: Option<OwnerId>,
    /// When it was approved.
    pub approved_at: Option<UnixTime>,
    /// The owner the agent addressed (`agent pair --owner`): an owner id, or
    /// an address no owner had when it was opened; `None`: any owner.
    pub addressed_to: Option<String>,
}

/// Most audit records [`AuditLog::audit_all`] fetches per page.
pub const AUDIT_PAGE: u32 = 1000;

/// Everything a metadata backend provides, for the composition root (`serve`, the
/// operator's CLI) that hands each consumer the roles it names. Consumers take the
/// narrowest role trait they use; nothing implements this by hand (blanket impl).
///
/// Every write is atomic: an error leaves nothing half-written.
///
/// **Audited writes are fail-closed.** The methods that change who may do what
/// (owners, agents, inboxes and their status, keys, grants) take the
/// [`AuditEvent`] that describes the change and write the row change and its
/// audit record in one transaction: either both are committed, or neither is. They
/// return the [`AuditReceipt`] of the record, which later steps require. The
/// event's outcome must be [`Outcome::Ok`](agentkeys_audit::Outcome::Ok) (the
/// change happened); a refused or failed operation is recorded with
/// [`AuditLog::audit_append`]. The caller chooses the event's subject
/// and detail: never secrets, key material or key hashes, and third-party
/// addresses only through [`agentkeys_audit::hash_address`].
pub trait MetadataStore:
    Recipients
    + Directory
    + KeysAndGrants
    + AuthLookup
    + OwnerApproval
    + Pairing
    + AuditLog
    + Checkpoints
    + Outbox
    + crate::OutboundQueue
    + crate::MessageIndex
    + crate::SendIdempotency
    + crate::DomainStatusStore
    + StoreHealth
    + Deployment
    + InboxExpiry
    + crate::Throttles
    + crate::Webhooks
    + crate::InboxPolicies
    + crate::SendGuardrails
    + crate::Console
    + crate::OwnerMail
    + crate::MailBackends
    + crate::ConsoleViews
{
}

impl<T> MetadataStore for T where
    T: ?Sized
        + InboxExpiry
        + Recipients
        + Directory
        + KeysAndGrants
        + AuthLookup
        + OwnerApproval
        + Pairing
        + AuditLog
        + Checkpoints
        + Outbox
        + crate::OutboundQueue
        + crate::MessageIndex
        + crate::SendIdempotency
        + crate::DomainStatusStore
        + StoreHealth
        + Deployment
        + crate::Throttles
        + crate::Webhooks
        + crate::InboxPolicies
        + crate::SendGuardrails
        + crate::Console
        + crate::OwnerMail
        + crate::MailBackends
        + crate::ConsoleViews
{
}

/// The MX's view of the directory: is a domain ours, and whose inbox is an address.
/// The hot RCPT path; [`CachedRecipients`](crate::CachedRecipients) wraps any implementation.
#[async_trait]
pub trait Recipients: Send + Sync + 'static {
    /// Whether mail for `domain` (already lowercase) is ours.
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError>;
    /// The MX's RCPT lookup: owner, status and expiry of an inbox, `None` if
    /// unknown or expired (at the store's clock): an expired inbox is absent.
    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError>;
}

/// Audit operation of a domain's assignment to an owner (or back to shared),
/// detail `{owner}` (`null`: shared).
pub const OP_DOMAIN_ASSIGN: &str = "domain.assign";
/// Audit operation of an expired inbox's removal (one record per inbox).
pub const OP_INBOX_EXPIRE: &str = "inbox.expire";
/// Audit operation recorded when revoking, shortening or narrowing a grant ends
/// inboxes an agent created under it (one record per grant change, subject the
/// grant, detail `{owner, grant, expires_at, count, inboxes}`), in the grant
/// change's transaction and with its actor.
pub const OP_INBOX_END_WITH_GRANT: &str = "inbox.end_with_grant";
/// Most addresses one `inbox.end_with_grant` record names (its `count` is exact).
pub const MAX_ENDED_INBOXES_NAMED: usize = 100;

/// The audit event of inboxes ended with the grant that created them (see
/// [`OP_INBOX_END_WITH_GRANT`]): `actor` is the grant change's.
pub fn inbox_end_with_grant_event(
    grant_change: &AuditEvent,
    owner: &str,
    grant: &str,
    expires_at: UnixTime,
    addresses: &[String],
) -> AuditEvent {
    AuditEvent::ok(grant_change.actor.clone(), OP_INBOX_END_WITH_GRANT, grant).with_detail(serde_json::json!({
        "owner": owner,
        "grant": grant,
        "expires_at": expires_at,
        "count": addresses.len(),
        "inboxes": addresses.iter().take(MAX_ENDED_INBOXES_NAMED).collect::<Vec<_>>(),
    }))
}

/// Inboxes with an expiry, and their removal once it has passed: the sweeper's
/// role ([`Mailroom::sweep_expired_inboxes`](crate::Mailroom::sweep_expired_inboxes)).
#[async_trait]
pub trait InboxExpiry: Send + Sync + 'static {
    /// Up to `limit` inboxes whose expiry is at or before `now`, earliest expiry
    /// first (then by address).
    async fn expired_inboxes(&self, now: UnixTime, limit: u32) -> Result<Vec<InboxRecord>, StoreError>;
    /// Removes the inbox `address` if it has expired at `now`, together with its
    /// message index rows, and appends `event(messages)` (`messages`: how many
    /// index rows went), all in one transaction. `Some` with the receipt if this
    /// call removed it; `None` if there was nothing to remove (no such inbox, not
    /// expired, or another handle removed it first), and then nothing is
    /// recorded: across any number of handles, each expired inbox is removed and
    /// recorded once. Its blobs are the caller's to remove.
    async fn remove_expired_inbox(
        &self,
        address: &Address,
        now: UnixTime,
        event: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<Option<AuditReceipt>, StoreError>;
}

/// Hosted domains and their DKIM keys, owners, agents and inboxes: the operator's and
/// owner's administration. Every change is audited in the same transaction.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Adds a hosted domain; no-op if it exists.
    async fn ensure_domain(&self, domain: &Domain, now: UnixTime) -> Result<(), StoreError>;
    /// Lists hosted domains.
    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError>;
    /// Adds a hosted domain together with its first DKIM key version, audited.
    /// `Conflict` if the domain is already hosted; `Invalid` if `keys` is for
    /// another domain.
    async fn add_domain(
        &self,
        keys: &DomainKeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Removes a hosted domain and its DKIM keys, audited. `NotFound` if it is not
    /// hosted, `Invalid` (naming them) while inboxes of the domain exist.
    async fn remove_domain(&self, domain: &Domain, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Stores a DKIM key version of a hosted domain unless that version exists.
    /// Returns the stored version (this one, or the one another writer stored
    /// first) and, if this call stored it, the receipt of `event`. `NotFound` if the
    /// domain is not hosted.
    async fn add_domain_keys(
        &self,
        keys: &DomainKeyRecord,
        event: &AuditEvent,
    ) -> Result<(DomainKeyRecord, Option<AuditReceipt>), StoreError>;
    /// The owner a hosted domain is assigned to; `None` for a shared domain or
    /// one that is not hosted ([`agentkeys_core::may_create_on_domain`]).
    async fn domain_owner(&self, domain: &Domain) -> Result<Option<OwnerId>, StoreError>;
    /// Assigns a hosted domain to `owner` (`None`: shared again), audited.
    /// `NotFound` if the domain is not hosted or the owner is unknown.
    async fn assign_domain(
        &self,
        domain: &Domain,
        owner: Option<&OwnerId>,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// A domain's DKIM key versions, oldest first (empty if none yet).
    async fn domain_keys(&self, domain: &Domain) -> Result<Vec<DomainKeyRecord>, StoreError>;
    /// Adds an owner, audited. `Conflict` if it exists.
    async fn add_owner(&self, owner: &OwnerRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Lists owners.
    async fn list_owners(&self) -> Result<Vec<OwnerRecord>, StoreError>;
    /// Adds an agent, audited. `NotFound` if the owner is unknown, `Conflict` if the
    /// agent exists.
    async fn add_agent(&self, agent: &AgentRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Finds an agent.
    async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError>;
    /// Lists agents, optionally of one owner.
    async fn list_agents(&self, owner: Option<&OwnerId>) -> Result<Vec<AgentRecord>, StoreError>;
    /// Creates an inbox, audited. `Invalid` if its domain is not hosted, `NotFound` if
    /// the agent is unknown, `Conflict` if the address is taken (also by an expired
    /// inbox the sweeper has not removed yet). The owner is the agent's owner; the
    /// expiry, if any, must be after the creation time (`Invalid`).
    async fn create_inbox(&self, inbox: &InboxRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// [`create_inbox`](Self::create_inbox) for an inbox an agent creates under
    /// `grant` (`create` scope), remembering the grant: revoking it later ends
    /// the inbox at once, shortening it ends the inbox no later than the grant,
    /// and narrowing away `create` ends it at once (each audited
    /// [`OP_INBOX_END_WITH_GRANT`] in the grant change's transaction). The
    /// grant is not checked here (the broker did); the inbox needs an expiry
    /// (`Invalid`).
    async fn create_granted_inbox(
        &self,
        inbox: &InboxRecord,
        grant: &GrantId,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Lists inboxes, optionally of one owner, by address (expired ones the
    /// sweeper has not removed yet included, with their expiry).
    async fn list_inboxes(&self, owner: Option<&OwnerId>) -> Result<Vec<InboxRecord>, StoreError>;
    /// Sets an inbox's status, audited. `NotFound` if it does not exist.
    async fn set_inbox_status(
        &self,
        address: &Address,
        status: InboxStatus,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
}

/// Agent keys and grants, created, listed and revoked by the operator or an owner.
/// Every change is audited in the same transaction.
#[async_trait]
pub trait KeysAndGrants: Send + Sync + 'static {
    /// Stores a new agent key, audited. `NotFound` if the agent is unknown.
    async fn create_key(&self, key: &KeyRecord, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Lists an agent's keys.
    async fn list_keys(&self, agent: &AgentId) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes a key, audited. `NotFound` if unknown; revoking twice keeps the first
    /// time (and records the second attempt too).
    async fn revoke_key(&self, id: &KeyId, now: UnixTime, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Stores a grant, audited. `NotFound` if the agent is unknown, or if the
    /// pattern is an exact address that is not an inbox of the grant's owner
    /// (another owner's inbox answers like a missing one); `Invalid` if the
    /// grant's owner is not the agent's owner. Prefix and domain patterns are
    /// stored as given and only ever cover the owner's inboxes (`Grant::covers`).
    async fn add_grant(&self, grant: &Grant, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Lists grants, optionally of one agent.
    async fn list_grants(&self, agent: Option<&AgentId>) -> Result<Vec<Grant>, StoreError>;
    /// Revokes a grant, audited. `NotFound` if unknown; revoking twice keeps the
    /// first time. Inboxes created under the grant end at once
    /// ([`Directory::create_granted_inbox`]).
    async fn revoke_grant(&self, id: &GrantId, now: UnixTime, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
}

/// The reads behind every authorization decision (SMTP AUTH, HTTP send, the token
/// broker): each a single consistent read.
#[async_trait]
pub trait AuthLookup: Send + Sync + 'static {
    /// Gathers the facts for steps 3–9 of the AUTH order in one read: the key with
    /// this hash, its agent's grants, and the inbox's owner and status (no inbox if
    /// it has expired at the store's clock, like [`Recipients::recipient`]).
    async fn auth_facts(&self, credentials: &Credentials) -> Result<AuthFacts, StoreError>;
    /// The key whose stored hash is `hash` (any state) with its agent's owner, `None`
    /// if there is none: the token broker's agent-key lookup (unique index on the hash).
    async fn key_facts_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, StoreError>;
    /// `agent`'s grants (any state) and the owner of `inbox` (`None` if no such
    /// inbox or it has expired), read together: the broker's authorization step
    /// in one lookup.
    async fn grants_and_inbox_owner(
        &self,
        agent: &AgentId,
        inbox: &Address,
    ) -> Result<(Vec<Grant>, Option<OwnerId>), StoreError>;
}

/// What an owner's master key proves: enrollment, the registered public key, single-use
/// request nonces, and the owner's own grants and keys, changed only by compare-and-set.
#[async_trait]
pub trait OwnerApproval: Send + Sync + 'static {
    /// Adds an owner together with their first enrollment ticket, with one audit
    /// record (`event`, typically `owner.create`), in one transaction. `Conflict`
    /// if the owner exists; `Invalid` if the ticket is for another owner.
    async fn add_owner_with_enrollment(
        &self,
        owner: &OwnerRecord,
        ticket: &EnrollmentTicketRecord,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Issues (or replaces) `ticket.owner`'s enrollment ticket, audited. A new
    /// ticket makes any earlier code of the owner useless. `NotFound` if the owner
    /// is unknown.
    async fn issue_enrollment(
        &self,
        ticket: &EnrollmentTicketRecord,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// The owner's ticket if it is not spent (expired or not), `None` otherwise.
    async fn enrollment_ticket(&self, owner: &OwnerId) -> Result<Option<EnrollmentTicketRecord>, StoreError>;
    /// Redeems the owner's ticket and registers (or replaces) their master public
    /// key, audited, in one transaction: the ticket must still be unspent, carry
    /// `code_hash` and not be expired at `now`. Anything else (unknown owner, other
    /// code, spent, expired, a concurrent redemption that won) is the same
    /// `NotFound`, and nothing changes.
    async fn redeem_enrollment(
        &self,
        owner: &OwnerId,
        code_hash: &[u8; 32],
        public_key: &[u8; 32],
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// The owner's registered master public key (Ed25519), `None` if not enrolled.
    async fn owner_public_key(&self, owner: &OwnerId) -> Result<Option<[u8; 32]>, StoreError>;
    /// Records the nonce of a verified owner request whose signed time is `ts`;
    /// [`NonceUse::Replayed`] if `(owner, nonce)` is already recorded. First deletes
    /// every nonce with a timestamp before `forget_before` (the caller's clock-skew
    /// window). Atomic across processes sharing the database.
    async fn record_owner_nonce(
        &self,
        owner: &OwnerId,
        nonce: &str,
        ts: UnixTime,
        forget_before: UnixTime,
    ) -> Result<NonceUse, StoreError>;
    /// The grants of one owner, oldest first.
    async fn list_owner_grants(&self, owner: &OwnerId) -> Result<Vec<Grant>, StoreError>;
    /// Revokes a grant of `owner`, audited. A grant of another owner is `NotFound`
    /// exactly like a missing id. Inboxes created under the grant end at once
    /// ([`Directory::create_granted_inbox`]).
    async fn revoke_owner_grant(
        &self,
        owner: &OwnerId,
        id: &GrantId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Replaces `before` (a grant of `owner`, as the caller read it) with `after`
    /// (the same grant, narrower scopes and/or a new expiry), audited, only if the
    /// stored grant is still `before` and unrevoked (compare-and-set): otherwise
    /// `Conflict` (changed meanwhile) or `NotFound` (no such grant of `owner`).
    /// `after` must keep the id, owner, agent and pattern and not widen the scopes
    /// (`Invalid`). Inboxes created under the grant end no later than `after`'s
    /// expiry, or at once if `after` lacks the `create` scope
    /// ([`Directory::create_granted_inbox`]).
    async fn change_owner_grant(
        &self,
        owner: &OwnerId,
        before: &Grant,
        after: &Grant,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Revokes a key of one of `owner`'s agents, audited. A key of another owner's
    /// agent is `NotFound` exactly like a missing id.
    async fn revoke_owner_key(
        &self,
        owner: &OwnerId,
        id: &KeyId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
}

/// Agent pairing requests: opened by the agent, approved by the owner, collected once.
#[async_trait]
pub trait Pairing: Send + Sync + 'static {
    /// Stores a new pending pairing request (`request.status` is ignored). First
    /// deletes requests opened before `forget_before`. `Conflict` if the code hash
    /// is taken. Audited with `event` in the same transaction (the request is
    /// recorded; nothing changes who may do what until approval).
    async fn open_pairing(
        &self,
        request: &PairingRecord,
        forget_before: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// The pairing request stored under `code_hash`, `None` if there is none.
    async fn pairing(&self, code_hash: &[u8; 32]) -> Result<Option<PairingRecord>, StoreError>;
    /// Approves a pending request for `agent.owner` at `approved_at` and creates
    /// the agent `agent` under that owner (kept if the owner already has it),
    /// audited, in one transaction. Compare-and-set on the status: if the request
    /// is not pending any more (a concurrent approval won), `NotFound` and nothing
    /// changes. `Conflict` if the agent id belongs to another owner.
    async fn approve_pairing(
        &self,
        code_hash: &[u8; 32],
        agent: &AgentRecord,
        approved_at: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Marks an approved request consumed at `now` and stores the agent key minted
    /// for it (hashed), audited, in one transaction. Compare-and-set: if the request
    /// is not approved (a concurrent collection won), `NotFound` and nothing changes.
    async fn collect_pairing(
        &self,
        code_hash: &[u8; 32],
        key: &KeyRecord,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
    /// Denies a pending request: `owner` refused it at `now` (terminal; it can
    /// never be approved or collected), audited in the same transaction, and
    /// waiting collects are woken (on every node). Compare-and-set on the
    /// status: if the request is not pending any more (approved meanwhile),
    /// `NotFound` and nothing changes.
    async fn deny_pairing(
        &self,
        code_hash: &[u8; 32],
        owner: &OwnerId,
        now: UnixTime,
        event: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError>;
}

/// [`Pairing::deny_pairing`]'s compare-and-set, the same text on SQLite and
/// PostgreSQL: `$1` the denying owner, `$2` when, `$3` the code hash (hex).
pub(crate) const DENY_PAIRING_SQL: &str = "UPDATE pairing_requests SET status = 'denied', owner = $1, consumed_at = $2
  WHERE code_hash = $3 AND status = 'pending'";

/// The tamper-evident audit log: one hash chain, appended by every process that shares
/// the store.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends a record with no row change of its own: a refused or failed
    /// operation, or one whose effect lives elsewhere (a minted capability). Any
    /// outcome. Safe under concurrent writers, in this process and others.
    async fn audit_append(&self, event: &AuditEvent) -> Result<AuditReceipt, StoreError>;
    /// Up to `limit` records with `seq > after_seq`, in seq order. A record that
    /// cannot be decoded is [`StoreError::AuditUnreadable`].
    async fn audit_list(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// The last record's seq and hash; [`ChainHead::GENESIS`] when the log is empty.
    async fn audit_head(&self) -> Result<ChainHead, StoreError>;
    /// Every record, in seq order (pages of [`AUDIT_PAGE`] through
    /// [`audit_list`](Self::audit_list)). For long logs prefer paging and a
    /// [`Verifier`](agentkeys_audit::Verifier).
    async fn audit_all(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out: Vec<AuditRecord> = Vec::new();
        loop {
            let after = out.last().map_or(0, |r| r.seq);
            let page = self.audit_list(after, AUDIT_PAGE).await?;
            let done = page.len() < AUDIT_PAGE as usize;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }
    /// Up to `limit` audit records with `seq > after_seq` that concern `owner`, in
    /// seq order. A record concerns the owner when its actor is `owner:<id>`, its
    /// subject is the owner or one of the owner's agents, inboxes, keys or grants,
    /// or its detail's `owner` is the owner or its detail's `agent` is one of the
    /// owner's agents.
    async fn audit_list_for_owner(
        &self,
        owner: &OwnerId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// The owner's records (as [`audit_list_for_owner`](Self::audit_list_for_owner)
    /// decides) that pass `filter`, newest first: those with `seq < before_seq`
    /// (`None`: from the newest), at most `limit`, itself at most
    /// [`MAX_AUDIT_SEARCH_PAGE`]. The filter is applied by the database, so a
    /// page is full unless the owner's matching records are exhausted.
    async fn audit_search_for_owner(
        &self,
        owner: &OwnerId,
        filter: &AuditFilter,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
}

/// Most records one [`AuditLog::audit_search_for_owner`] call returns.
pub const MAX_AUDIT_SEARCH_PAGE: u32 = 500;

/// Which of an owner's audit records a search keeps (every field `None`: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Records about this agent id: its subject, its detail's `agent`, or the
    /// agent as the actor.
    pub agent: Option<String>,
    /// Exactly this operation (`grant.revoke`).
    pub operation: Option<String>,
    /// At or after this time.
    pub from: Option<UnixTime>,
    /// Before this time.
    pub to: Option<UnixTime>,
}

/// The records that concern an owner, as a condition over `audit_log`, the
/// same text on SQLite and PostgreSQL but for how each reads the detail's
/// `owner` and `agent` strings (`json_extract` on SQLite, columns copied at
/// insert on PostgreSQL). `$2` is `owner:<id>`, `$3` the owner id.
pub(crate) fn audit_owner_scope(detail_owner: &str, detail_agent: &str) -> String {
    format!(
        "(actor = $2
          OR subject = $3
          OR {detail_owner} = $3
          OR {detail_agent} IN (SELECT id FROM agents WHERE owner = $3)
          OR subject IN (SELECT id FROM agents WHERE owner = $3)
          OR subject IN (SELECT address FROM inboxes WHERE owner = $3)
          OR subject IN (SELECT k.id FROM agent_keys k JOIN agents a ON a.id = k.agent WHERE a.owner = $3)
          OR subject IN (SELECT id FROM grants WHERE owner = $3))"
    )
}

/// [`AuditLog::audit_search_for_owner`]'s query over `columns`: `$1` the
/// exclusive upper seq, `$2`/`$3` as [`audit_owner_scope`], `$4` the operation,
/// `$5`/`$6` the time window, `$7` the agent id and `$8` `agent:<id>`, `$9`
/// the limit; a `NULL` filter parameter keeps every record.
pub(crate) fn audit_search_sql(columns: &str, detail_owner: &str, detail_agent: &str) -> String {
    let scope = audit_owner_scope(detail_owner, detail_agent);
    format!(
        "SELECT {columns} FROM audit_log
          WHERE seq < $1
            AND {scope}
            AND ($4 IS NULL OR operation = $4)
            AND ($5 IS NULL OR ts >= $5)
            AND ($6 IS NULL OR ts < $6)
            AND ($7 IS NULL OR subject = $7 OR {detail_agent} = $7 OR actor = $8)
          ORDER BY seq DESC
          LIMIT $9"
    )
}

/// Signed checkpoints of the audit chain. No defaults: a store that forgot its
/// checkpoints must not pass for one that has none.
#[async_trait]
pub trait Checkpoints: Send + Sync + 'static {
    /// Stores a signed checkpoint. A chained (v2) one must extend the stored
    /// chain: counter 1 with zero `prev` when there is none (then it is also
    /// kept as the chain's start), else the last counter + 1 linked to its hash
    /// and past its seq. `false` if another process stored that checkpoint (or
    /// one for that head) first; `Invalid` when the recorded start exists but its
    /// checkpoints are gone (the chain is not restarted over a deletion). No
    /// default: a store that forgot checkpoints must not pass for one that has none.
    async fn add_checkpoint(&self, checkpoint: &CheckpointRecord) -> Result<bool, StoreError>;
    /// Every stored checkpoint, by seq. A value that does not decode is
    /// [`StoreError::AuditUnreadable`] with the checkpoint's seq.
    /// No default: an empty answer would let `audit verify` pass on a backend
    /// that never stored its checkpoints.
    async fn list_checkpoints(&self) -> Result<Vec<CheckpointRecord>, StoreError>;
    /// The checkpoint with the highest seq, if any.
    async fn last_checkpoint(&self) -> Result<Option<CheckpointRecord>, StoreError> {
        Ok(self.list_checkpoints().await?.pop())
    }
    /// The recorded start of the checkpoint chain (a copy of checkpoint 1), if
    /// the chain has started. No default, for the same reason.
    async fn checkpoint_start(&self) -> Result<Option<CheckpointRecord>, StoreError>;
}

/// Where senders (SMTP submission, HTTP send) queue outbound mail.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Queues an outbound message, one row per recipient, state `queued`.
    /// `Conflict` if the message is already queued; `Invalid` with no recipients.
    async fn enqueue_outbound(&self, message: &NewOutbound) -> Result<(), StoreError>;
}

/// Whether the store can take writes now, for readiness (`/readyz`): a node whose
/// database cannot commit must leave the load balancer's rotation.
#[async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    /// Commits a write transaction on the path every change takes.
    async fn check_writable(&self) -> Result<(), StoreError>;
    /// The audit writer is running and commits on its path (without a record).
    async fn check_audit_writable(&self) -> Result<(), StoreError>;
}

/// What every process sharing the store must agree on.
#[async_trait]
pub trait Deployment: Send + Sync + 'static {
    /// Records `fingerprint` (a one-way derivation of the master seed) as the
    /// deployment's unless one is recorded, and returns the recorded one. A
    /// caller whose fingerprint differs holds another seed and must not serve:
    /// its key hashes and token signatures would not match the others'.
    async fn seed_fingerprint(&self, fingerprint: &[u8; 32]) -> Result<[u8; 32], StoreError>;
}

/// Decodes a stored seed fingerprint.
pub(crate) fn fingerprint_from(stored: &[u8]) -> Result<[u8; 32], StoreError> {
    stored
        .try_into()
        .map_err(|_| StoreError::Backend(format!("stored seed fingerprint has {} bytes, not 32", stored.len())))
}
