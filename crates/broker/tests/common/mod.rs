//! In-memory fakes of the broker's seams: store, audit log, clock.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agentkeys_broker::{
    AuthorityConfig, BackendError, BrokerConfig, BrokerParts, BrokerStore, Clock, MintAudit, RefusalEvent,
    MintEvent, MintReceipt, SoftwareAuthority, TokenBroker,
};
use agentkeys_core::{
    Address, AgentId, AgentKey, Grant, InboxPattern, KeyFacts, KeyHash, KeyHasher, MasterSeed,
    OwnerId, Scopes, UnixTime,
};
use async_trait::async_trait;

pub const NOW: UnixTime = 1_700_000_000;
pub const OWNER: &str = "0x00000000000000000000000000000000000000aa";
pub const OTHER_OWNER: &str = "0x00000000000000000000000000000000000000bb";
pub const AGENT: &str = "0x00000000000000000000000000000000000000a1";
pub const INBOX: &str = "bot-1@agents.localhost";
pub const FOREIGN_INBOX: &str = "theirs@agents.localhost";
pub const ISSUER: &str = "https://mail.example.com";

#[derive(Default)]
pub struct FakeStore {
    pub keys: Mutex<Vec<KeyFacts>>,
    pub grants: Mutex<Vec<Grant>>,
    pub inboxes: Mutex<Vec<(Address, OwnerId)>>,
    pub fail: AtomicBool,
}

fn down() -> BackendError {
    BackendError::new("store is down")
}

#[async_trait]
impl BrokerStore for FakeStore {
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(down());
        }
        Ok(self
            .keys
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.hash == *hash)
            .cloned())
    }
    async fn grants_of_agent(&self, agent: &AgentId) -> Result<Vec<Grant>, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(down());
        }
        Ok(self
            .grants
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.agent == *agent)
            .cloned()
            .collect())
    }
    async fn inbox_owner(&self, inbox: &Address) -> Result<Option<OwnerId>, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(down());
        }
        Ok(self
            .inboxes
            .lock()
            .unwrap()
            .iter()
            .find(|(a, _)| a == inbox)
            .map(|(_, o)| o.clone()))
    }
}

#[derive(Default)]
pub struct FakeAudit {
    pub events: Mutex<Vec<MintEvent>>,
    pub refusals: Mutex<Vec<RefusalEvent>>,
    pub seq: AtomicU64,
    pub fail: AtomicBool,
}

impl FakeAudit {
    /// Seals a record for real (the only way to get a receipt) after the last one.
    fn seal(&self) -> MintReceipt {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let head = agentkeys_audit::ChainHead { seq, hash: [0; 32] };
        let event = agentkeys_audit::AuditEvent::ok(agentkeys_audit::Actor::System, "credential.read", "test");
        MintReceipt::from(agentkeys_audit::SealedRecord::seal(&head, 0, &event).unwrap().into_receipt())
    }
}

#[async_trait]
impl MintAudit for FakeAudit {
    async fn record_mint(&self, event: MintEvent) -> Result<MintReceipt, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::new("audit disk full"));
        }
        self.events.lock().unwrap().push(event);
        Ok(self.seal())
    }
    async fn record_refusal(&self, event: RefusalEvent) -> Result<MintReceipt, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::new("audit disk full"));
        }
        self.refusals.lock().unwrap().push(event);
        Ok(self.seal())
    }
}

pub struct FakeClock(pub AtomicI64);

impl Clock for FakeClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct World {
    pub broker: TokenBroker,
    pub store: Arc<FakeStore>,
    pub audit: Arc<FakeAudit>,
    pub clock: Arc<FakeClock>,
    pub authority: Arc<SoftwareAuthority>,
    pub key: AgentKey,
    pub hasher: KeyHasher,
}

pub fn seed() -> MasterSeed {
    MasterSeed::from_bytes([11; 32])
}

pub fn grant(pattern: &str, scopes: &str, expires_at: UnixTime) -> Grant {
    Grant {
        id: agentkeys_core::GrantId::generate(&mut rand::thread_rng()),
        owner: OWNER.parse().unwrap(),
        agent: AGENT.parse().unwrap(),
        pattern: pattern.parse::<InboxPattern>().unwrap(),
        scopes: scopes.parse::<Scopes>().unwrap(),
        created_at: NOW - 100,
        expires_at,
        revoked_at: None,
    }
}

/// One owner with one agent (one key, valid 30 days), its inbox, and another
/// owner's inbox. No grants: each test adds its own.
pub fn world() -> World {
    world_with(AuthorityConfig::default())
}

pub fn world_with(config: AuthorityConfig) -> World {
    world_at(NOW, config)
}

/// The same world with its clock (and the key's lifetime) starting at `now`.
pub fn world_at(now: UnixTime, config: AuthorityConfig) -> World {
    let seed = seed();
    let hasher = KeyHasher::new(&seed);
    let key = AgentKey::generate(&mut rand::thread_rng());
    let store = Arc::new(FakeStore::default());
    store.keys.lock().unwrap().push(KeyFacts {
        id: agentkeys_core::KeyId::generate(&mut rand::thread_rng()),
        hash: hasher.hash(&key),
        agent: AGENT.parse().unwrap(),
        owner: OWNER.parse().unwrap(),
        expires_at: now + 30 * 86_400,
        revoked_at: None,
    });
    store.inboxes.lock().unwrap().extend([
        (INBOX.parse().unwrap(), OWNER.parse().unwrap()),
        (FOREIGN_INBOX.parse().unwrap(), OTHER_OWNER.parse().unwrap()),
    ]);
    let audit = Arc::new(FakeAudit::default());
    let clock = Arc::new(FakeClock(AtomicI64::new(now)));
    let authority = Arc::new(SoftwareAuthority::new(&seed, config).unwrap());
    let broker = TokenBroker::new(BrokerParts {
        store: store.clone(),
        audit: audit.clone(),
        authority: authority.clone(),
        hasher: hasher.clone(),
        clock: clock.clone(),
        config: BrokerConfig::new(ISSUER.parse().unwrap()),
    });
    World {
        broker,
        store,
        audit,
        clock,
        authority,
        key,
        hasher,
    }
}

impl World {
    pub fn add_grant(&self, g: Grant) {
        self.store.grants.lock().unwrap().push(g);
    }
    pub fn set_now(&self, t: UnixTime) {
        self.clock.0.store(t, Ordering::SeqCst);
    }
    pub fn inbox(&self) -> Address {
        INBOX.parse().unwrap()
    }
}
