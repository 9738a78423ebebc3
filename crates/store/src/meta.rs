//! The metadata store trait and its records.

use agentkeys_core::{
    Address, AgentId, AuthFacts, Credentials, Domain, Grant, GrantId, InboxStatus, KeyHash, KeyId,
    OwnerId, UnixTime,
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
}

/// What the MX needs to accept a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The owner whose blob prefix receives the copy.
    pub owner: OwnerId,
    /// Whether the inbox takes mail.
    pub status: InboxStatus,
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

/// Owners, agents, domains, inboxes, keys, grants and the outbound queue.
///
/// Every write is atomic: an error leaves nothing half-written.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Adds a hosted domain; no-op if it exists.
    async fn ensure_domain(&self, domain: &Domain, now: UnixTime) -> Result<(), StoreError>;
    /// Lists hosted domains.
    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError>;
    /// Whether mail for `domain` (already lowercase) is ours.
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError>;

    /// Adds an owner. `Conflict` if it exists.
    async fn add_owner(&self, owner: &OwnerRecord) -> Result<(), StoreError>;
    /// Lists owners.
    async fn list_owners(&self) -> Result<Vec<OwnerRecord>, StoreError>;
    /// Adds an agent. `NotFound` if the owner is unknown, `Conflict` if the agent exists.
    async fn add_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    /// Finds an agent.
    async fn get_agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError>;
    /// Lists agents, optionally of one owner.
    async fn list_agents(&self, owner: Option<&OwnerId>) -> Result<Vec<AgentRecord>, StoreError>;

    /// Creates an inbox. `Invalid` if its domain is not hosted, `NotFound` if the agent
    /// is unknown, `Conflict` if the address is taken. The owner is the agent's owner.
    async fn create_inbox(&self, inbox: &InboxRecord) -> Result<(), StoreError>;
    /// Lists inboxes, optionally of one owner, by address.
    async fn list_inboxes(&self, owner: Option<&OwnerId>) -> Result<Vec<InboxRecord>, StoreError>;
    /// Sets an inbox's status. `NotFound` if it does not exist.
    async fn set_inbox_status(&self, address: &Address, status: InboxStatus) -> Result<(), StoreError>;
    /// The MX's RCPT lookup: owner and status of an inbox, `None` if unknown.
    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError>;

    /// Stores a new agent key. `NotFound` if the agent is unknown.
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Lists an agent's keys.
    async fn list_keys(&self, agent: &AgentId) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes a key. `NotFound` if unknown; revoking twice keeps the first time.
    async fn revoke_key(&self, id: &KeyId, now: UnixTime) -> Result<(), StoreError>;

    /// Stores a grant. `NotFound` if the agent is unknown, `Invalid` if the grant's
    /// owner is not the agent's owner.
    async fn add_grant(&self, grant: &Grant) -> Result<(), StoreError>;
    /// Lists grants, optionally of one agent.
    async fn list_grants(&self, agent: Option<&AgentId>) -> Result<Vec<Grant>, StoreError>;
    /// Revokes a grant. `NotFound` if unknown.
    async fn revoke_grant(&self, id: &GrantId, now: UnixTime) -> Result<(), StoreError>;

    /// Gathers the facts for steps 3–9 of the AUTH order in one read: the key with
    /// this hash, its agent's grants, and the inbox's owner and status.
    async fn auth_facts(&self, credentials: &Credentials) -> Result<AuthFacts, StoreError>;

    /// Queues an outbound message, one row per recipient, state `queued`.
    async fn enqueue_outbound(&self, message: &NewOutbound) -> Result<(), StoreError>;
    /// Lists the outbound queue, oldest first.
    async fn list_queue(&self) -> Result<Vec<QueueEntry>, StoreError>;
}
