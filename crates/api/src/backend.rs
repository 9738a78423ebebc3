//! The broker's seams over the real metadata store: [`BrokerStore`] reads and the
//! [`MintAudit`] append. Lives here, not in the store (which must not depend on the
//! broker) nor in the broker (which must not depend on a storage engine).

use std::sync::Arc;

use agentkeys_audit::{Actor, AuditEvent, Outcome};
use agentkeys_broker::{BackendError, BrokerStore, MintAudit, MintEvent, MintReceipt, RefusalEvent, TokenKind};
use agentkeys_core::{Address, AgentId, Credentials, Grant, KeyFacts, KeyHash, OwnerId};
use agentkeys_store::MetadataStore;
use async_trait::async_trait;
use serde_json::{Map, Value, json};

/// Audit operation of a minted read capability.
pub const OP_CREDENTIAL_READ: &str = "credential.read";
/// Audit operation of a minted OIDC token.
pub const OP_CREDENTIAL_OIDC: &str = "credential.oidc";
/// Audit operation of a refused mint (outcome `denied`).
pub const OP_CREDENTIAL_REFUSED: &str = "credential.refused";

/// The audit operation name of a mint of `kind`.
pub fn mint_operation(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::ReadCapability => OP_CREDENTIAL_READ,
        TokenKind::Oidc => OP_CREDENTIAL_OIDC,
    }
}

/// [`BrokerStore`] and [`MintAudit`] over a [`MetadataStore`].
#[derive(Clone)]
pub struct StoreBackend {
    meta: Arc<dyn MetadataStore>,
    oidc_kid: String,
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBackend").field("oidc_kid", &self.oidc_kid).finish_non_exhaustive()
    }
}

impl StoreBackend {
    /// Wraps `meta`. `oidc_kid` is the `kid` the authority signs OIDC tokens with,
    /// recorded in each OIDC mint's audit detail.
    pub fn new(meta: Arc<dyn MetadataStore>, oidc_kid: impl Into<String>) -> Self {
        Self { meta, oidc_kid: oidc_kid.into() }
    }

    /// The audit event of a mint: actor `agent:<id>`, operation
    /// [`credential.read`](OP_CREDENTIAL_READ) or [`credential.oidc`](OP_CREDENTIAL_OIDC),
    /// subject the inbox, and ids, times and TTLs as detail. Never the token.
    pub fn audit_event(&self, event: &MintEvent) -> AuditEvent {
        let mut detail = Map::new();
        detail.insert("jti".into(), json!(event.jti));
        detail.insert("owner".into(), json!(event.owner.as_str()));
        detail.insert("key_id".into(), json!(event.key_id.as_str()));
        detail.insert("grant_id".into(), json!(event.grant_id.as_str()));
        detail.insert("issued_at".into(), json!(event.issued_at));
        detail.insert("expires_at".into(), json!(event.expires_at));
        detail.insert("ttl".into(), json!(event.ttl));
        detail.insert("clamped".into(), json!(event.clamped));
        if let Some(requested) = event.requested_ttl {
            detail.insert("requested_ttl".into(), json!(requested));
        }
        if event.kind == TokenKind::Oidc {
            detail.insert("kid".into(), json!(self.oidc_kid));
        }
        if let Some(aud) = &event.audience {
            detail.insert("audience".into(), json!(aud));
        }
        AuditEvent::ok(Actor::Agent(event.agent.clone()), mint_operation(event.kind), event.inbox.as_str())
            .with_detail(Value::Object(detail))
    }
}

impl StoreBackend {
    /// The audit event of a refused mint: outcome `denied`, actor the agent when
    /// the key identified one (else `system`: the server recording an anonymous
    /// attempt), subject the inbox asked for (else the key id, else empty), and
    /// the reason with what was known. Never the presented key or its hash.
    pub fn refusal_event(event: &RefusalEvent) -> AuditEvent {
        let mut detail = Map::new();
        detail.insert("reason".into(), json!(event.reason));
        if let Some(key_id) = &event.key_id {
            detail.insert("key_id".into(), json!(key_id.as_str()));
        }
        if let Some(owner) = &event.owner {
            detail.insert("owner".into(), json!(owner.as_str()));
        }
        if let Some(agent) = &event.agent {
            detail.insert("agent".into(), json!(agent.as_str()));
        }
        if let Some(scope) = event.scope {
            detail.insert("scope".into(), json!(scope.as_str()));
        }
        let actor = event.agent.clone().map_or(Actor::System, Actor::Agent);
        let subject = match (&event.inbox, &event.key_id) {
            (Some(inbox), _) => inbox.as_str().to_owned(),
            (None, Some(key_id)) => key_id.as_str().to_owned(),
            (None, None) => String::new(),
        };
        AuditEvent::ok(actor, OP_CREDENTIAL_REFUSED, subject).with_outcome(Outcome::Denied).with_detail(Value::Object(detail))
    }
}

#[async_trait]
impl BrokerStore for StoreBackend {
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, BackendError> {
        self.meta.key_facts_by_hash(hash).await.map_err(BackendError::new)
    }

    async fn grants_of_agent(&self, agent: &AgentId) -> Result<Vec<Grant>, BackendError> {
        self.meta.list_grants(Some(agent)).await.map_err(BackendError::new)
    }

    async fn inbox_owner(&self, inbox: &Address) -> Result<Option<OwnerId>, BackendError> {
        Ok(self.meta.recipient(inbox).await.map_err(BackendError::new)?.map(|r| r.owner))
    }

    async fn grants_and_inbox_owner(
        &self,
        agent: &AgentId,
        inbox: &Address,
    ) -> Result<(Vec<Grant>, Option<OwnerId>), BackendError> {
        self.meta.grants_and_inbox_owner(agent, inbox).await.map_err(BackendError::new)
    }

    async fn key_grants_and_inbox_owner(
        &self,
        hash: &KeyHash,
        inbox: &Address,
    ) -> Result<(Option<KeyFacts>, Vec<Grant>, Option<OwnerId>), BackendError> {
        // The SMTP AUTH read (key, its agent's grants, the inbox): one statement.
        let credentials = Credentials { address: inbox.clone(), key_hash: *hash };
        let facts = self.meta.auth_facts(&credentials).await.map_err(BackendError::new)?;
        Ok((facts.key, facts.grants, facts.inbox.map(|(owner, _)| owner)))
    }
}

#[async_trait]
impl MintAudit for StoreBackend {
    async fn record_mint(&self, event: MintEvent) -> Result<MintReceipt, BackendError> {
        let receipt = self.meta.audit_append(&self.audit_event(&event)).await.map_err(BackendError::new)?;
        Ok(MintReceipt::from(receipt))
    }

    async fn record_refusal(&self, event: RefusalEvent) -> Result<MintReceipt, BackendError> {
        let receipt = self.meta.audit_append(&Self::refusal_event(&event)).await.map_err(BackendError::new)?;
        Ok(MintReceipt::from(receipt))
    }
}
