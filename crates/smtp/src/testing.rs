//! In-memory fakes of the store traits and a fixture of owners, inboxes and keys,
//! shared by the session and server tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use agentkeys_audit::{AuditEvent, AuditReceipt, AuditRecord, ChainHead};
use agentkeys_core::{
    Address, AgentId, AgentKey, AuthFacts, Credentials, Grant, GrantId, InboxPattern,
    InboxStatus, KeyFacts, KeyHash, KeyHasher, MasterSeed, OwnerId, Scopes, UnixTime,
};
use agentkeys_store::roles::{AuditLog, AuthLookup, Outbox, Recipients};
use agentkeys_store::{BlobError, BlobKey, BlobStore, NewOutbound, Recipient, StoreError};
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
                    expires_at: None,
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
impl Recipients for FakeMeta {
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError> {
        if self.fault() == Fault::Lookup {
            return Err(StoreError::Backend("lookup failed (injected)".into()));
        }
        Ok(domain == HOSTED)
    }
    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError> {
        if self.fault() == Fault::Lookup {
            return Err(StoreError::Backend("lookup failed (injected)".into()));
        }
        Ok(self.recipients.get(address).cloned())
    }
}

#[async_trait]
impl AuthLookup for FakeMeta {
    async fn auth_facts(&self, credentials: &Credentials) -> Result<AuthFacts, StoreError> {
        self.facts(credentials)
    }
    async fn key_facts_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, StoreError> {
        Ok(self.keys.iter().find(|(_, facts)| &facts.hash == hash).map(|(_, facts)| facts.clone()))
    }
    async fn grants_and_inbox_owner(
        &self,
        agent: &AgentId,
        inbox: &Address,
    ) -> Result<(Vec<Grant>, Option<OwnerId>), StoreError> {
        let grants = self.grants.iter().filter(|g| &g.agent == agent).cloned().collect();
        Ok((grants, self.recipients.get(inbox).map(|r| r.owner.clone())))
    }
}

#[async_trait]
impl AuditLog for FakeMeta {
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
    async fn audit_list(&self, after_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let chain = self.audit.lock().unwrap();
        Ok(chain.iter().filter(|r| r.seq > after_seq).take(limit as usize).cloned().collect())
    }
    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let chain = self.audit.lock().unwrap();
        Ok(chain.last().map_or(ChainHead::GENESIS, |r| ChainHead { seq: r.seq, hash: r.hash }))
    }
    async fn audit_list_for_owner(&self, _: &OwnerId, _: u64, _: u32) -> Result<Vec<AuditRecord>, StoreError> {
        unsupported()
    }
    async fn audit_search_for_owner(
        &self,
        _: &OwnerId,
        _: &agentkeys_store::AuditFilter,
        _: Option<u64>,
        _: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        unsupported()
    }
}

#[async_trait]
impl Outbox for FakeMeta {
    async fn enqueue_outbound(&self, message: &NewOutbound) -> Result<(), StoreError> {
        if self.fault() == Fault::Enqueue {
            return Err(StoreError::Backend("enqueue failed (injected)".into()));
        }
        self.queue.lock().unwrap().push(message.clone());
        Ok(())
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
