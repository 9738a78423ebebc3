//! In-memory fakes of the store traits and a fixture of owners, inboxes and keys,
//! shared by the session and server tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use agentkeys_audit::{AuditEvent, AuditReceipt, AuditRecord, ChainHead};
use agentkeys_core::{
    Address, AgentId, AgentKey, AuthFacts, Credentials, Domain, Grant, GrantId, InboxPattern,
    InboxStatus, KeyFacts, KeyHash, KeyHasher, KeyId, MasterSeed, OwnerId, Scopes, UnixTime,
};
use agentkeys_store::{
    AgentRecord, BlobError, BlobKey, BlobStore, DomainKeyRecord, InboxRecord, KeyRecord, MetadataStore, NewOutbound,
    OwnerRecord, QueueEntry, Recipient, StoreError,
};
use async_trait::async_trait;
use bytes::Bytes;

use crate::session::{RecipientAnswer, RecipientQuery};

/// A fixed "now" for the sans-IO tests.
pub(crate) const T0: UnixTime = 1_700_000_000;
/// When the fixture's keys and grants expire (2100), so shell tests on the real
/// clock work too.
const FAR_FUTURE: UnixTime = 4_102_444_800;
pub(crate) const HOSTED: &str = "agents.localhost";
/// The inbox the fixture key may send as.
pub(crate) const BOT: &str = "bot@agents.localhost";

pub(crate) fn owner(n: u8) -> OwnerId {
    format!("0x{}", format!("{n:02x}").repeat(20))
        .parse()
        .unwrap()
}

pub(crate) fn agent(n: u8) -> AgentId {
    format!("0x{}", format!("{n:02x}").repeat(20))
        .parse()
        .unwrap()
}

pub(crate) fn hasher() -> KeyHasher {
    KeyHasher::new(&MasterSeed::from_bytes([9; 32]))
}

/// The valid agent key of the fixture.
pub(crate) fn good_key() -> String {
    format!("ak_{}", "k".repeat(43))
}

/// A well-formed key that exists but is revoked.
pub(crate) fn revoked_key() -> String {
    format!("ak_{}", "r".repeat(43))
}

/// A well-formed key nobody holds.
pub(crate) fn unknown_key() -> String {
    format!("ak_{}", "z".repeat(43))
}

/// Which backend call should fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Fault {
    #[default]
    None,
    Lookup,
    AuthFacts,
    Enqueue,
    Audit,
}

/// Metadata: hosted domain `agents.localhost`; inboxes `bot@` and `other@` (owner 1,
/// active), `off@` (disabled), `sus@` (suspended), `foreign@` (owner 2, active). The
/// good key belongs to agent 0xaa… of owner 1 with a `send` grant on `bot@`.
pub(crate) struct FakeMeta {
    pub(crate) recipients: HashMap<Address, Recipient>,
    keys: Vec<(String, KeyFacts)>,
    grants: Vec<Grant>,
    pub(crate) fault: Mutex<Fault>,
    pub(crate) queue: Mutex<Vec<NewOutbound>>,
    /// The audit chain: every appended event, sealed for real.
    pub(crate) audit: Mutex<Vec<agentkeys_audit::AuditRecord>>,
}

impl FakeMeta {
    pub(crate) fn new() -> Self {
        let hasher = hasher();
        let mut recipients = HashMap::new();
        for (local, own, status) in [
            ("bot", 1, InboxStatus::Active),
            ("other", 1, InboxStatus::Active),
            ("off", 1, InboxStatus::Disabled),
            ("sus", 1, InboxStatus::Suspended),
            ("foreign", 2, InboxStatus::Active),
        ] {
            recipients.insert(
                format!("{local}@{HOSTED}").parse().unwrap(),
                Recipient {
                    owner: owner(own),
                    status,
                },
            );
        }
        let key_facts = |text: &str, id: &str, revoked: Option<UnixTime>| KeyFacts {
            id: id.parse().unwrap(),
            hash: hasher.hash(&AgentKey::parse(text).unwrap()),
            agent: agent(0xaa),
            owner: owner(1),
            expires_at: FAR_FUTURE,
            revoked_at: revoked,
        };
        let keys = vec![
            (
                good_key(),
                key_facts(&good_key(), "key_0123456789abcdef", None),
            ),
            (
                revoked_key(),
                key_facts(&revoked_key(), "key_fedcba9876543210", Some(T0 - 10)),
            ),
        ];
        let grants = vec![Grant {
            id: format!("gr_{}", "g".repeat(22)).parse::<GrantId>().unwrap(),
            owner: owner(1),
            agent: agent(0xaa),
            pattern: BOT.parse::<InboxPattern>().unwrap(),
            scopes: "send".parse::<Scopes>().unwrap(),
            created_at: T0 - 100,
            expires_at: FAR_FUTURE,
            revoked_at: None,
        }];
        Self {
            recipients,
            keys,
            grants,
            fault: Mutex::new(Fault::None),
            queue: Mutex::new(Vec::new()),
            audit: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    pub(crate) fn answer_recipient(
        &self,
        q: &RecipientQuery,
    ) -> Result<RecipientAnswer, StoreError> {
        if self.fault() == Fault::Lookup {
            return Err(StoreError::Backend("lookup failed (injected)".into()));
        }
        if q.domain != HOSTED {
            return Ok(RecipientAnswer::NotHosted);
        }
        Ok(RecipientAnswer::Hosted(
            q.inbox
                .as_ref()
                .and_then(|a| self.recipients.get(a).cloned()),
        ))
    }

    pub(crate) fn facts(&self, c: &Credentials) -> Result<AuthFacts, StoreError> {
        if self.fault() == Fault::AuthFacts {
            return Err(StoreError::Backend("auth facts failed (injected)".into()));
        }
        let key = self
            .keys
            .iter()
            .find(|(_, k)| k.hash.ct_eq(&c.key_hash))
            .map(|(_, k)| k.clone());
        let grants = match &key {
            Some(k) => self
                .grants
                .iter()
                .filter(|g| g.agent == k.agent)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let inbox = self
            .recipients
            .get(&c.address)
            .map(|r| (r.owner.clone(), r.status));
        Ok(AuthFacts { key, grants, inbox })
    }
}

fn unsupported<T>() -> Result<T, StoreError> {
    Err(StoreError::Invalid("not supported by the fake".into()))
}

#[async_trait]
impl MetadataStore for FakeMeta {
    async fn ensure_domain(&self, _: &Domain, _: UnixTime) -> Result<(), StoreError> {
        unsupported()
    }
    async fn list_domains(&self) -> Result<Vec<Domain>, StoreError> {
        Ok(vec![HOSTED.parse().unwrap()])
    }
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError> {
        if self.fault() == Fault::Lookup {
            return Err(StoreError::Backend("lookup failed (injected)".into()));
        }
        Ok(domain == HOSTED)
    }
    async fn add_domain(
        &self,
        _: &DomainKeyRecord,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn remove_domain(&self, _: &Domain, _: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn add_domain_keys(
        &self,
        _: &DomainKeyRecord,
        _: &AuditEvent,
    ) -> Result<(DomainKeyRecord, Option<AuditReceipt>), StoreError> {
        unsupported()
    }
    async fn domain_keys(&self, _: &Domain) -> Result<Vec<DomainKeyRecord>, StoreError> {
        unsupported()
    }
    async fn add_owner(&self, _: &OwnerRecord, _: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn list_owners(&self) -> Result<Vec<OwnerRecord>, StoreError> {
        unsupported()
    }
    async fn add_agent(&self, _: &AgentRecord, _: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn get_agent(&self, _: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        unsupported()
    }
    async fn list_agents(&self, _: Option<&OwnerId>) -> Result<Vec<AgentRecord>, StoreError> {
        unsupported()
    }
    async fn create_inbox(
        &self,
        _: &InboxRecord,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn list_inboxes(&self, _: Option<&OwnerId>) -> Result<Vec<InboxRecord>, StoreError> {
        unsupported()
    }
    async fn set_inbox_status(
        &self,
        _: &Address,
        _: InboxStatus,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError> {
        if self.fault() == Fault::Lookup {
            return Err(StoreError::Backend("lookup failed (injected)".into()));
        }
        Ok(self.recipients.get(address).cloned())
    }
    async fn create_key(&self, _: &KeyRecord, _: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn list_keys(&self, _: &AgentId) -> Result<Vec<KeyRecord>, StoreError> {
        unsupported()
    }
    async fn revoke_key(
        &self,
        _: &KeyId,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn key_facts_by_hash(&self, _: &KeyHash) -> Result<Option<KeyFacts>, StoreError> {
        unsupported()
    }
    async fn add_grant(&self, _: &Grant, _: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn list_grants(&self, _: Option<&AgentId>) -> Result<Vec<Grant>, StoreError> {
        unsupported()
    }
    async fn revoke_grant(
        &self,
        _: &GrantId,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn auth_facts(&self, credentials: &Credentials) -> Result<AuthFacts, StoreError> {
        self.facts(credentials)
    }
    async fn enqueue_outbound(&self, message: &NewOutbound) -> Result<(), StoreError> {
        if self.fault() == Fault::Enqueue {
            return Err(StoreError::Backend("enqueue failed (injected)".into()));
        }
        self.queue.lock().unwrap().push(message.clone());
        Ok(())
    }
    async fn list_queue(&self) -> Result<Vec<QueueEntry>, StoreError> {
        unsupported()
    }
    async fn audit_append(&self, event: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        if self.fault() == Fault::Audit {
            return Err(StoreError::Backend("audit append failed (injected)".into()));
        }
        let mut chain = self.audit.lock().unwrap();
        let head = chain.last().map_or(ChainHead::GENESIS, |r| ChainHead { seq: r.seq, hash: r.hash });
        let sealed = agentkeys_audit::SealedRecord::seal(&head, T0, event)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        chain.push(sealed.record().clone());
        Ok(sealed.into_receipt())
    }
    async fn audit_list(&self, _: u64, _: u32) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        Ok(ChainHead::GENESIS)
    }
    async fn add_owner_with_enrollment(
        &self,
        _: &OwnerRecord,
        _: &agentkeys_store::EnrollmentTicketRecord,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn issue_enrollment(
        &self,
        _: &agentkeys_store::EnrollmentTicketRecord,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn enrollment_ticket(
        &self,
        _: &OwnerId,
    ) -> Result<Option<agentkeys_store::EnrollmentTicketRecord>, StoreError> {
        unsupported()
    }
    async fn redeem_enrollment(
        &self,
        _: &OwnerId,
        _: &[u8; 32],
        _: &[u8; 32],
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn owner_public_key(&self, _: &OwnerId) -> Result<Option<[u8; 32]>, StoreError> {
        unsupported()
    }
    async fn record_owner_nonce(
        &self,
        _: &OwnerId,
        _: &str,
        _: UnixTime,
        _: UnixTime,
    ) -> Result<agentkeys_store::NonceUse, StoreError> {
        unsupported()
    }
    async fn list_owner_grants(&self, _: &OwnerId) -> Result<Vec<Grant>, StoreError> {
        unsupported()
    }
    async fn add_checkpoint(&self, _: &agentkeys_store::CheckpointRecord) -> Result<bool, StoreError> {
        unsupported()
    }
    async fn list_checkpoints(&self) -> Result<Vec<agentkeys_store::CheckpointRecord>, StoreError> {
        unsupported()
    }
    async fn checkpoint_start(&self) -> Result<Option<agentkeys_store::CheckpointRecord>, StoreError> {
        unsupported()
    }
    async fn change_owner_grant(&self, _: &OwnerId, _: &Grant, _: &Grant, _: &AuditEvent) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn revoke_owner_grant(
        &self,
        _: &OwnerId,
        _: &GrantId,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn revoke_owner_key(
        &self,
        _: &OwnerId,
        _: &KeyId,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn audit_list_for_owner(
        &self,
        _: &OwnerId,
        _: u64,
        _: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        unsupported()
    }
    async fn open_pairing(
        &self,
        _: &agentkeys_store::PairingRecord,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn pairing(&self, _: &[u8; 32]) -> Result<Option<agentkeys_store::PairingRecord>, StoreError> {
        unsupported()
    }
    async fn approve_pairing(
        &self,
        _: &[u8; 32],
        _: &AgentRecord,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
    async fn collect_pairing(
        &self,
        _: &[u8; 32],
        _: &KeyRecord,
        _: UnixTime,
        _: &AuditEvent,
    ) -> Result<AuditReceipt, StoreError> {
        unsupported()
    }
}

/// How the fake blob store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BlobFault {
    #[default]
    None,
    Full,
    Io,
}

impl BlobFault {
    pub(crate) fn error(self) -> Option<BlobError> {
        match self {
            Self::None => None,
            Self::Full => Some(BlobError::StorageFull(std::io::Error::other(
                "no space left on device (injected)",
            ))),
            Self::Io => Some(BlobError::Io {
                path: "fake".into(),
                err: std::io::Error::other("I/O error (injected)"),
            }),
        }
    }
}

/// Blobs in a map; records every `put_durable` call's keys.
#[derive(Default)]
pub(crate) struct FakeBlobs {
    pub(crate) blobs: Mutex<BTreeMap<String, Bytes>>,
    pub(crate) puts: Mutex<Vec<Vec<String>>>,
    pub(crate) fault: Mutex<BlobFault>,
}

#[async_trait]
impl BlobStore for FakeBlobs {
    async fn put_durable(&self, items: Vec<(BlobKey, Bytes)>) -> Result<(), BlobError> {
        self.puts
            .lock()
            .unwrap()
            .push(items.iter().map(|(k, _)| k.to_string()).collect());
        if let Some(err) = self.fault.lock().unwrap().error() {
            return Err(err);
        }
        let mut blobs = self.blobs.lock().unwrap();
        for (k, v) in items {
            blobs.insert(k.to_string(), v);
        }
        Ok(())
    }
    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BlobError> {
        Ok(self.blobs.lock().unwrap().get(key.as_str()).cloned())
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobKey>, BlobError> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .filter_map(|k| BlobKey::parse(k))
            .collect())
    }
}

/// `AUTH PLAIN` initial response for `user` / `pass`.
pub(crate) fn plain(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// Base64 of a string (AUTH LOGIN).
pub(crate) fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
