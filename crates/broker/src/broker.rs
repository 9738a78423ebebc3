//! The token broker: the only path from an agent key to a token.
//!
//! ```text
//! authenticate(agent key) ─► KeyVerified
//! authorize(&KeyVerified, inbox, scope) ─► Authorized<Scope>
//! mint_read(&Authorized<Read>, ttl) / mint_oidc(&Authorized<Read>, ttl)
//!     clamp TTL ─► authority signs ─► audit append ─► Minted
//! ```
//!
//! Each step returns a proof value the next step requires, and only this module
//! can build them (private fields), so a token cannot be minted without a
//! verified key and a covering, active grant. A [`Minted`] holds the
//! [`MintReceipt`] of its audit record: the token is handed out only after the
//! audit append succeeded (fail-closed).
//!
//! A `send` authorization does not mint a read capability:
//!
//! ```compile_fail
//! # use agentkeys_broker::{TokenBroker, scope};
//! # async fn f(broker: &TokenBroker, inbox: &agentkeys_core::Address) -> Result<(), agentkeys_broker::MintError> {
//! let verified = broker.authenticate("ak_…").await?;
//! let send = broker.authorize(&verified, inbox, scope::Send).await?;
//! broker.mint_read(&send, None).await?; // expected `Authorized<Read>`
//! # Ok(()) }
//! ```
//!
//! and a proof cannot be made outside this module:
//!
//! ```compile_fail
//! let verified = agentkeys_broker::KeyVerified {
//!     key_id: "key_0123456789abcdef".parse().unwrap(),
//!     agent: "0x00000000000000000000000000000000000000a1".parse().unwrap(),
//!     owner: "0x00000000000000000000000000000000000000aa".parse().unwrap(),
//!     key_expires_at: i64::MAX,
//! }; // private fields
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use agentkeys_core::{
    Address, AgentId, AgentKey, Grant, GrantId, GrantMiss, covering_grant, KeyFacts, KeyHash, KeyHasher, KeyId, OwnerId,
    Scope, UnixTime,
};
use async_trait::async_trait;
use serde::Serialize;

use crate::authority::TokenAuthority;
use crate::capability::CapabilityClaims;
use crate::error::{BackendError, KeyRejection, MintError};
use crate::oidc::{DEFAULT_AUDIENCE, IssuerUrl, OidcClaims};
use crate::ttl::{Clamped, TokenKind, clamp_with_ceiling};

/// The current time, injected so tests control it.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> UnixTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

/// What the broker reads from the metadata store.
#[async_trait]
pub trait BrokerStore: Send + Sync {
    /// The key whose stored hash is `hash`, if any (any state; the broker checks).
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyFacts>, BackendError>;
    /// Every grant of `agent`, in any state (the broker filters).
    async fn grants_of_agent(&self, agent: &AgentId) -> Result<Vec<Grant>, BackendError>;
    /// The owner of `inbox`, `None` if there is no such inbox.
    async fn inbox_owner(&self, inbox: &Address) -> Result<Option<OwnerId>, BackendError>;
    /// Both of the above for one authorization; stores that can read them in one
    /// go override it.
    async fn grants_and_inbox_owner(
        &self,
        agent: &AgentId,
        inbox: &Address,
    ) -> Result<(Vec<Grant>, Option<OwnerId>), BackendError> {
        let owner = self.inbox_owner(inbox).await?;
        Ok((self.grants_of_agent(agent).await?, owner))
    }
    /// The key whose stored hash is `hash`, the grants of its agent and the
    /// owner of `inbox`, for [`TokenBroker::authenticate_for`]; stores that can
    /// read them in one go (one round trip, one snapshot) override it.
    async fn key_grants_and_inbox_owner(
        &self,
        hash: &KeyHash,
        inbox: &Address,
    ) -> Result<(Option<KeyFacts>, Vec<Grant>, Option<OwnerId>), BackendError> {
        let Some(key) = self.key_by_hash(hash).await? else {
            // Both lookups always run (timing), as in `authorize`.
            let _ = self.inbox_owner(inbox).await?;
            return Ok((None, Vec::new(), None));
        };
        let (grants, owner) = self.grants_and_inbox_owner(&key.agent, inbox).await?;
        Ok((Some(key), grants, owner))
    }
}

/// The refusal of a key refused before anything about it is known.
fn anonymous(reason: KeyRejection) -> RefusalEvent {
    RefusalEvent { reason: reason.as_str(), key_id: None, agent: None, owner: None, inbox: None, scope: None }
}

/// What a mint tells the audit log. Carries no token, only its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MintEvent {
    /// The kind of token.
    pub kind: TokenKind,
    /// The agent it was minted for.
    pub agent: AgentId,
    /// The agent's (and inbox's) owner.
    pub owner: OwnerId,
    /// The agent key used.
    pub key_id: KeyId,
    /// The grant that allowed it.
    pub grant_id: GrantId,
    /// The inbox it concerns.
    pub inbox: Address,
    /// The token's unique id.
    pub jti: String,
    /// Issue time.
    pub issued_at: UnixTime,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Lifetime issued, in seconds.
    pub ttl: i64,
    /// Lifetime asked for, if any.
    pub requested_ttl: Option<i64>,
    /// Whether the lifetime was clamped.
    pub clamped: bool,
    /// The `aud` of an OIDC token.
    pub audience: Option<String>,
}

/// Proof that a mint (or a refusal) was recorded: made only from the
/// [`AuditReceipt`](agentkeys_audit::AuditReceipt) of the appended record, which
/// only sealing a record makes, so no audit seam can answer "recorded" without
/// an append (STYLE.md: proof values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct MintReceipt {
    seq: u64,
}

impl From<agentkeys_audit::AuditReceipt> for MintReceipt {
    fn from(receipt: agentkeys_audit::AuditReceipt) -> Self {
        Self { seq: receipt.seq() }
    }
}

impl MintReceipt {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// What a refused mint tells the audit log: why, and whatever the broker knew
/// about the caller by then. Never the presented key nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalEvent {
    /// The refusal's code: `MALFORMED_KEY`, `KEY_NOT_FOUND`, `KEY_REVOKED`,
    /// `KEY_EXPIRED`, `NO_GRANT` or `GRANT_EXPIRED`.
    pub reason: &'static str,
    /// The key's id, once the key was found.
    pub key_id: Option<KeyId>,
    /// The agent, once the key was found.
    pub agent: Option<AgentId>,
    /// The agent's owner, once the key was found.
    pub owner: Option<OwnerId>,
    /// The inbox asked for (grant refusals).
    pub inbox: Option<Address>,
    /// The scope asked for (grant refusals).
    pub scope: Option<Scope>,
}

/// The audit seam of the mint path: the broker returns a token only after
/// `record_mint` succeeded, and a refusal only after `record_refusal` did.
#[async_trait]
pub trait MintAudit: Send + Sync {
    /// Appends a record of `event` durably and returns its receipt.
    async fn record_mint(&self, event: MintEvent) -> Result<MintReceipt, BackendError>;
    /// Appends a record of a refused mint durably. If it fails, the broker answers
    /// [`MintError::Audit`] instead of the refusal (fail-closed: no unrecorded answer).
    async fn record_refusal(&self, event: RefusalEvent) -> Result<MintReceipt, BackendError>;
}

/// Proof that an agent key is genuine, unrevoked and unexpired. Only
/// [`TokenBroker::authenticate`] makes one. It is a point-in-time proof (not
/// `Clone`): check the key again for every request.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyVerified {
    key_id: KeyId,
    agent: AgentId,
    owner: OwnerId,
    key_expires_at: UnixTime,
}

impl KeyVerified {
    /// The key's id.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// The agent the key identifies.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }
    /// The agent's owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
    /// When the key expires.
    pub fn key_expires_at(&self) -> UnixTime {
        self.key_expires_at
    }
}

/// Scope markers for [`Authorized`]. `scope::Send` is a type, not the `Send` trait.
pub mod scope {
    /// The `read` scope.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Read;
    /// The `send` scope.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Send;
    /// The `admin` scope.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Admin;
    /// The `create` scope: a new inbox under the grant's pattern
    /// ([`TokenBroker::authorize_create`](super::TokenBroker::authorize_create)).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Create;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::scope::Read {}
    impl Sealed for super::scope::Send {}
    impl Sealed for super::scope::Admin {}
    impl Sealed for super::scope::Create {}
}

/// A scope marker type: [`scope::Read`], [`scope::Send`], [`scope::Admin`] or [`scope::Create`].
pub trait ScopeMarker: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The scope it stands for.
    const SCOPE: Scope;
}

impl ScopeMarker for scope::Read {
    const SCOPE: Scope = Scope::Read;
}
impl ScopeMarker for scope::Send {
    const SCOPE: Scope = Scope::Send;
}
impl ScopeMarker for scope::Admin {
    const SCOPE: Scope = Scope::Admin;
}
impl ScopeMarker for scope::Create {
    const SCOPE: Scope = Scope::Create;
}

/// Proof that a verified agent holds an active grant with scope `S` covering
/// one inbox of its own owner. Only [`TokenBroker::authorize`] makes one. A
/// point-in-time proof (not `Clone`): authorize again for every request, so a
/// revoked grant stops the next mint.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorized<S: ScopeMarker> {
    key_id: KeyId,
    agent: AgentId,
    owner: OwnerId,
    inbox: Address,
    grant_id: GrantId,
    grant_expires_at: UnixTime,
    expires_at: UnixTime,
    scope: PhantomData<S>,
}

impl<S: ScopeMarker> Authorized<S> {
    /// The authorized inbox.
    pub fn inbox(&self) -> &Address {
        &self.inbox
    }
    /// The inbox's (and the agent's) owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
    /// The agent.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }
    /// The key used.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// The grant that allowed it.
    pub fn grant_id(&self) -> &GrantId {
        &self.grant_id
    }
    /// When that grant expires (what bounds an inbox created under it).
    pub fn grant_expires_at(&self) -> UnixTime {
        self.grant_expires_at
    }
    /// End of the authorization: the earlier of the grant's and the key's expiry.
    /// No token minted from it outlives this.
    pub fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
    /// The scope.
    pub fn scope(&self) -> Scope {
        S::SCOPE
    }
}

/// A minted token: the response `{token, expires_at, ttl, clamped}` plus its audit receipt.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Minted {
    /// The token (a read capability or a JWT). A bearer secret: `Debug` hides it.
    pub token: String,
    /// Expiry.
    pub expires_at: UnixTime,
    /// Lifetime issued, in seconds.
    pub ttl: i64,
    /// Whether the lifetime differs from the one asked for.
    pub clamped: bool,
    /// The kind of token.
    #[serde(skip)]
    pub kind: TokenKind,
    /// The token's unique id (in the audit record).
    #[serde(skip)]
    pub jti: String,
    #[serde(skip)]
    receipt: MintReceipt,
}

impl Minted {
    /// The receipt of the audit record of this mint.
    pub fn receipt(&self) -> MintReceipt {
        self.receipt
    }
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("ttl", &self.ttl)
            .field("clamped", &self.clamped)
            .field("kind", &self.kind)
            .field("jti", &self.jti)
            .field("receipt", &self.receipt)
            .finish()
    }
}

/// Settings of the broker's OIDC tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// The issuer, the server's configured public URL.
    pub issuer: IssuerUrl,
    /// The `aud` of every OIDC token (default [`DEFAULT_AUDIENCE`]).
    pub audience: String,
}

impl BrokerConfig {
    /// `issuer` with the default audience.
    pub fn new(issuer: IssuerUrl) -> Self {
        Self {
            issuer,
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

/// What a [`TokenBroker`] is built from.
pub struct BrokerParts {
    /// The metadata the broker reads.
    pub store: Arc<dyn BrokerStore>,
    /// The audit seam.
    pub audit: Arc<dyn MintAudit>,
    /// The signer.
    pub authority: Arc<dyn TokenAuthority>,
    /// The agent-key hasher (same seed as the store's stored hashes).
    pub hasher: KeyHasher,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// OIDC settings.
    pub config: BrokerConfig,
}

/// Mints read capabilities and OIDC tokens for agents, under their grants.
pub struct TokenBroker {
    store: Arc<dyn BrokerStore>,
    audit: Arc<dyn MintAudit>,
    authority: Arc<dyn TokenAuthority>,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    config: BrokerConfig,
}

impl fmt::Debug for TokenBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TokenBroker {
    /// Builds a broker.
    pub fn new(parts: BrokerParts) -> Self {
        let BrokerParts {
            store,
            audit,
            authority,
            hasher,
            clock,
            config,
        } = parts;
        Self {
            store,
            audit,
            authority,
            hasher,
            clock,
            config,
        }
    }

    /// The agent-key hasher: whoever issues agent keys (pairing) stores their
    /// hashes under the same key the broker looks them up by.
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The authority, for serving the JWKS and verifying capabilities.
    pub fn authority(&self) -> &Arc<dyn TokenAuthority> {
        &self.authority
    }

    /// The OIDC settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Records `refusal` and answers `error`, or [`MintError::Audit`] if the
    /// record could not be written: a refusal is answered only once it is audited.
    async fn refuse<T>(&self, refusal: RefusalEvent, error: MintError) -> Result<T, MintError> {
        match self.audit.record_refusal(refusal).await {
            Ok(_receipt) => Err(error),
            Err(e) => Err(MintError::Audit(e)),
        }
    }

    /// Step 1: checks a presented agent key (format, existence, constant-time
    /// match, revocation, expiry). Every failure is [`MintError::InvalidKey`], after
    /// its audit record (`KEY_…` reason, the key id and agent when known).
    pub async fn authenticate(&self, presented: &str) -> Result<KeyVerified, MintError> {
        let Some(key) = AgentKey::parse(presented) else {
            return self.refuse(anonymous(KeyRejection::Malformed), MintError::InvalidKey(KeyRejection::Malformed)).await;
        };
        let hash = self.hasher.hash(&key);
        let found = self.store.key_by_hash(&hash).await.map_err(MintError::Store)?;
        self.verify_key(&hash, found).await
    }

    /// Steps 1 and 2 with one read of the store ([`BrokerStore::key_grants_and_inbox_owner`]):
    /// [`authenticate`](Self::authenticate) then [`authorize`](Self::authorize),
    /// the same checks, refusals and audit records, in that order.
    pub async fn authenticate_for<S: ScopeMarker>(
        &self,
        presented: &str,
        inbox: &Address,
        scope: S,
    ) -> Result<Authorized<S>, MintError> {
        let Some(key) = AgentKey::parse(presented) else {
            return self.refuse(anonymous(KeyRejection::Malformed), MintError::InvalidKey(KeyRejection::Malformed)).await;
        };
        let hash = self.hasher.hash(&key);
        let (found, grants, inbox_owner) =
            self.store.key_grants_and_inbox_owner(&hash, inbox).await.map_err(MintError::Store)?;
        let verified = self.verify_key(&hash, found).await?;
        self.authorize_from(&verified, inbox, scope, grants, inbox_owner).await
    }

    /// Checks the key found for `hash` (constant-time match, revocation,
    /// expiry); every failure audited as in [`authenticate`](Self::authenticate).
    async fn verify_key(&self, hash: &KeyHash, found: Option<KeyFacts>) -> Result<KeyVerified, MintError> {
        let found = found.filter(|k| k.hash.ct_eq(hash));
        let Some(facts) = found else {
            let reason = KeyRejection::NotFound;
            return self.refuse(anonymous(reason), MintError::InvalidKey(reason)).await;
        };
        let rejection = if facts.revoked_at.is_some() {
            Some(KeyRejection::Revoked)
        } else if self.clock.now() >= facts.expires_at {
            Some(KeyRejection::Expired)
        } else {
            None
        };
        if let Some(reason) = rejection {
            let refusal = RefusalEvent {
                reason: reason.as_str(),
                key_id: Some(facts.id),
                agent: Some(facts.agent),
                owner: Some(facts.owner),
                inbox: None,
                scope: None,
            };
            return self.refuse(refusal, MintError::InvalidKey(reason)).await;
        }
        Ok(KeyVerified {
            key_id: facts.id,
            agent: facts.agent,
            owner: facts.owner,
            key_expires_at: facts.expires_at,
        })
    }

    /// Step 2: finds an active grant of the verified agent, from its own owner,
    /// with scope `S`, covering `inbox`.
    ///
    /// Errors: [`MintError::GrantExpired`] when covering grants exist but all have
    /// expired; [`MintError::NoGrant`] when none exists, and also when the inbox
    /// does not exist or belongs to another owner (the two cannot be told apart).
    pub async fn authorize<S: ScopeMarker>(
        &self,
        verified: &KeyVerified,
        inbox: &Address,
        scope: S,
    ) -> Result<Authorized<S>, MintError> {
        // Both lookups always run, so timing does not tell a foreign inbox from an own one.
        let (grants, inbox_owner) = self
            .store
            .grants_and_inbox_owner(&verified.agent, inbox)
            .await
            .map_err(MintError::Store)?;
        self.authorize_from(verified, inbox, scope, grants, inbox_owner).await
    }

    /// [`authorize`](Self::authorize) on what the store returned: the verified
    /// agent's `grants` and the `inbox_owner`.
    async fn authorize_from<S: ScopeMarker>(
        &self,
        verified: &KeyVerified,
        inbox: &Address,
        _scope: S,
        grants: Vec<Grant>,
        inbox_owner: Option<OwnerId>,
    ) -> Result<Authorized<S>, MintError> {
        let now = self.clock.now();
        let refusal = |reason: &'static str| RefusalEvent {
            reason,
            key_id: Some(verified.key_id.clone()),
            agent: Some(verified.agent.clone()),
            owner: Some(verified.owner.clone()),
            inbox: Some(inbox.clone()),
            scope: Some(S::SCOPE),
        };
        if now >= verified.key_expires_at {
            let reason = KeyRejection::Expired;
            return self.refuse(refusal(reason.as_str()), MintError::InvalidKey(reason)).await;
        }
        let covering = match &inbox_owner {
            // Another owner's inbox is never covered (`Grant::covers`): NO_GRANT.
            Some(inbox_owner) => covering_grant(&grants, &verified.agent, &verified.owner, S::SCOPE, inbox, inbox_owner, now),
            // No such inbox: the same answer as no grant.
            None => Err(GrantMiss::NoGrant),
        };
        let grant = match covering {
            Ok(grant) => grant,
            Err(GrantMiss::NoGrant) => return self.refuse(refusal("NO_GRANT"), MintError::NoGrant).await,
            Err(GrantMiss::Expired) => return self.refuse(refusal("GRANT_EXPIRED"), MintError::GrantExpired).await,
        };
        Ok(Authorized {
            key_id: verified.key_id.clone(),
            agent: verified.agent.clone(),
            owner: verified.owner.clone(),
            inbox: inbox.clone(),
            grant_id: grant.id.clone(),
            grant_expires_at: grant.expires_at,
            expires_at: grant.expires_at.min(verified.key_expires_at),
            scope: PhantomData,
        })
    }

    /// Authorizes the verified agent to create the inbox `address`, which does
    /// not exist yet and would belong to the agent's own owner: an active grant
    /// of the agent, from that owner, with the `create` scope, must cover the
    /// address (the same rule as every other door, [`covering_grant`] with the
    /// agent's owner as the inbox's). The owner's grant stays the limit: the
    /// proof carries [`Authorized::grant_expires_at`], which bounds the inbox's
    /// life. Whether the address is free is the store's to say.
    ///
    /// Errors, each recorded like a mint refusal first: [`MintError::GrantExpired`]
    /// when covering `create` grants exist but all have expired,
    /// [`MintError::NoGrant`] when none does.
    pub async fn authorize_create(
        &self,
        verified: &KeyVerified,
        address: &Address,
    ) -> Result<Authorized<scope::Create>, MintError> {
        let grants = self.store.grants_of_agent(&verified.agent).await.map_err(MintError::Store)?;
        let now = self.clock.now();
        let refusal = |reason: &'static str| RefusalEvent {
            reason,
            key_id: Some(verified.key_id.clone()),
            agent: Some(verified.agent.clone()),
            owner: Some(verified.owner.clone()),
            inbox: Some(address.clone()),
            scope: Some(Scope::Create),
        };
        if now >= verified.key_expires_at {
            let reason = KeyRejection::Expired;
            return self.refuse(refusal(reason.as_str()), MintError::InvalidKey(reason)).await;
        }
        let covering =
            covering_grant(&grants, &verified.agent, &verified.owner, Scope::Create, address, &verified.owner, now);
        let grant = match covering {
            Ok(grant) => grant,
            Err(GrantMiss::NoGrant) => return self.refuse(refusal("NO_GRANT"), MintError::NoGrant).await,
            Err(GrantMiss::Expired) => return self.refuse(refusal("GRANT_EXPIRED"), MintError::GrantExpired).await,
        };
        Ok(Authorized {
            key_id: verified.key_id.clone(),
            agent: verified.agent.clone(),
            owner: verified.owner.clone(),
            inbox: address.clone(),
            grant_id: grant.id.clone(),
            grant_expires_at: grant.expires_at,
            expires_at: grant.expires_at.min(verified.key_expires_at),
            scope: PhantomData,
        })
    }

    fn clamp(
        &self,
        auth_expires_at: UnixTime,
        requested: Option<i64>,
        kind: TokenKind,
    ) -> Result<(UnixTime, Clamped), MintError> {
        let now = self.clock.now();
        let clamped = clamp_with_ceiling(
            requested,
            auth_expires_at,
            now,
            kind,
            self.authority.max_token_ttl(kind),
        )?;
        Ok((now, clamped))
    }

    /// Step 3: mints a read capability for the authorized inbox's blob prefix.
    pub async fn mint_read(
        &self,
        auth: &Authorized<scope::Read>,
        requested_ttl: Option<i64>,
    ) -> Result<Minted, MintError> {
        let kind = TokenKind::ReadCapability;
        let (now, clamped) = self.clamp(auth.expires_at, requested_ttl, kind)?;
        let jti = crate::random_jti();
        let token = self
            .authority
            .sign_capability(&CapabilityClaims {
                owner: auth.owner.clone(),
                inbox: auth.inbox.clone(),
                issued_at: now,
                expires_at: clamped.expires_at,
                jti: jti.clone(),
            })
            .map_err(MintError::Signing)?;
        let signed = Signed {
            kind,
            now,
            clamped,
            requested_ttl,
            jti,
            token,
            audience: None,
        };
        self.record(auth, signed).await
    }

    /// Step 3: mints an ES256 OIDC token for the authorized agent, for cloud
    /// federation (`sub = agentkeys:agent:<agent>`, wallet = the owner).
    ///
    /// It takes a `read` authorization like [`mint_read`](Self::mint_read): the
    /// grant covering the inbox bounds the token's lifetime.
    pub async fn mint_oidc(
        &self,
        auth: &Authorized<scope::Read>,
        requested_ttl: Option<i64>,
    ) -> Result<Minted, MintError> {
        let kind = TokenKind::Oidc;
        let (now, clamped) = self.clamp(auth.expires_at, requested_ttl, kind)?;
        let claims = OidcClaims::builder(
            &self.config.issuer,
            &auth.agent,
            &auth.owner,
            now,
            clamped.expires_at,
        )
        .audience(self.config.audience.clone())
        .build();
        let token = self
            .authority
            .sign_oidc(&claims)
            .map_err(MintError::Signing)?;
        let signed = Signed {
            kind,
            now,
            clamped,
            requested_ttl,
            jti: claims.jti,
            token,
            audience: Some(claims.aud),
        };
        self.record(auth, signed).await
    }

    /// The audit append, then the token. Nothing is returned if the append fails.
    async fn record<S: ScopeMarker>(
        &self,
        auth: &Authorized<S>,
        signed: Signed,
    ) -> Result<Minted, MintError> {
        let Signed {
            kind,
            now,
            clamped,
            requested_ttl,
            jti,
            token,
            audience,
        } = signed;
        let event = MintEvent {
            kind,
            agent: auth.agent.clone(),
            owner: auth.owner.clone(),
            key_id: auth.key_id.clone(),
            grant_id: auth.grant_id.clone(),
            inbox: auth.inbox.clone(),
            jti: jti.clone(),
            issued_at: now,
            expires_at: clamped.expires_at,
            ttl: clamped.ttl,
            requested_ttl,
            clamped: clamped.clamped,
            audience,
        };
        let receipt = self
            .audit
            .record_mint(event)
            .await
            .map_err(MintError::Audit)?;
        Ok(Minted {
            token,
            expires_at: clamped.expires_at,
            ttl: clamped.ttl,
            clamped: clamped.clamped,
            kind,
            jti,
            receipt,
        })
    }
}

/// A signed token waiting for its audit record.
struct Signed {
    kind: TokenKind,
    now: UnixTime,
    clamped: Clamped,
    requested_ttl: Option<i64>,
    jti: String,
    token: String,
    audience: Option<String>,
}
