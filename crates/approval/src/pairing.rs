//! Pairing: an agent asks for an agent key, its owner approves with the master key.
//!
//! ```text
//!            open (agent: device public key)
//!                 │
//!                 ▼
//!   ┌────────── Pending ──────────┐   10 min without approval
//!   │ approve (owner proof,       ├──────────────────────────► Expired
//!   │  pair code, 6 digits)       │
//!   ▼                             │
//! Approved ───────────────────────┴──────────────────────────► Expired
//!   │ collect (device signature)      10 min after approval without collection
//!   ▼
//! Consumed  (the agent key was handed out once)
//!
//! Pending ── deny (owner proof) ──► Denied  (never approved nor collected;
//!                                            the agent's poll answers DENIED)
//! ```
//!
//! Every transition consumes the state and returns the next one; errors leave the
//! stored state as it was. The server stores the state under the pair code's
//! [`CodeHash`] and passes what its lookup found (`Option<PairingState>`) to
//! [`view`], [`approve`] or [`collect`], so "no such request" is handled here too.
//!
//! # Who may tell what apart
//!
//! A pair code alone is not a credential, and callers who cannot prove a stake
//! in the request see one answer, [`PairingError::NotFound`], whether the code is
//! unknown, spent or approved by someone else:
//! - the **approving owner** ([`approve`], [`view`], with an [`OwnerGate`] proof: the master key's [`OwnerVerified`](crate::OwnerVerified) or a console passkey's [`PasskeyVerified`](crate::PasskeyVerified))
//!   sees `ALREADY_CONSUMED` for a request *they* approved (a second approve),
//!   `EXPIRED` after the 10 minutes, `NOT_FOUND` for one approved by another owner;
//! - the **agent** ([`collect`], with a signature by the request's device key)
//!   sees `PENDING` until approval, then its key once, then `ALREADY_CONSUMED`,
//!   or `EXPIRED`, or `DENIED` once an owner denied it; a poller without the
//!   device key sees only `NOT_FOUND`.
//! - a **denied** request is `NOT_FOUND` to every owner, its denier included:
//!   it can no longer be viewed, approved or denied again.
//!
//! The approved owner does not receive the agent key: [`collect`] yields a
//! [`PairingCollected`] proof, with which the broker mints the key and returns it
//! in the agent's poll response, so the key is never stored in clear.

use agentkeys_core::{AgentId, OwnerId, UnixTime};

use crate::codes::{CodeHash, ConfirmationCode, PAIRING_TTL, PairCode};
use crate::device_key::{agent_id_from_device_key, collect_message};
use crate::public_key::{PublicKey, Signature};
use crate::passkey::OwnerGate;

/// Why a pairing operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// No such request, as far as this caller may know (unknown, spent, another
    /// owner's, or a poll without the device key).
    #[error("pairing request not found")]
    NotFound,
    /// The caller's own request was already approved (owner) or collected (agent).
    #[error("this pairing request was already used")]
    AlreadyConsumed,
    /// More than [`PAIRING_TTL`] passed since it was opened (or approved).
    #[error("the pairing request expired; pair again")]
    Expired,
    /// Not approved yet; the agent keeps polling.
    #[error("waiting for the owner's approval")]
    Pending,
    /// The 6 digits the owner confirmed are not those of this request.
    #[error("the confirmation code does not match this pairing request")]
    ConfirmationMismatch,
    /// Its [`MAX_CONFIRMATION_TRIES`](crate::MAX_CONFIRMATION_TRIES) tries of
    /// the 6 digits are spent: it cannot be approved any more; pair again.
    #[error("too many tries of the 6 digits: this pairing request is locked; the agent must pair again")]
    ConfirmationLocked,
    /// The owner denied this request (the agent's answer; owners see
    /// [`PairingError::NotFound`]).
    #[error("the owner denied this pairing")]
    Denied,
}

impl PairingError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyConsumed => "ALREADY_CONSUMED",
            Self::Expired => "EXPIRED",
            Self::Pending => "PENDING",
            Self::ConfirmationMismatch => "CONFIRMATION_MISMATCH",
            Self::ConfirmationLocked => "CONFIRMATION_LOCKED",
            Self::Denied => "DENIED",
        }
    }
}

/// What an agent asked for: its device key (hence its agent id), under a pair code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRequest {
    code_hash: CodeHash,
    device_key: PublicKey,
    agent_id: AgentId,
    opened_at: UnixTime,
    addressed_to: Option<String>,
}

impl PairingRequest {
    /// Rebuilds a request from its stored fields (the agent id is re-derived).
    pub fn restore(code_hash: CodeHash, device_key: PublicKey, opened_at: UnixTime) -> Self {
        let agent_id = agent_id_from_device_key(&device_key.to_bytes());
        Self { code_hash, device_key, agent_id, opened_at, addressed_to: None }
    }

    /// The same request addressed to one owner (`agent pair --owner`): the
    /// owner id, or, when the agent named an address no owner has, that address
    /// (which no owner id equals, so nobody can approve it). Only that owner
    /// can view or approve it; every other owner gets [`PairingError::NotFound`].
    #[must_use]
    pub fn with_addressee(mut self, addressed_to: Option<String>) -> Self {
        self.addressed_to = addressed_to;
        self
    }

    /// Whom the agent addressed, if anyone.
    pub fn addressed_to(&self) -> Option<&str> {
        self.addressed_to.as_deref()
    }

    /// Whether `owner` may view and approve it: it names nobody, or them.
    pub fn is_open_to(&self, owner: &OwnerId) -> bool {
        self.addressed_to.as_deref().is_none_or(|a| a == owner.as_str())
    }

    /// The stored form of the pair code (the lookup key).
    pub fn code_hash(&self) -> &CodeHash {
        &self.code_hash
    }

    /// The agent's device public key.
    pub fn device_key(&self) -> &PublicKey {
        &self.device_key
    }

    /// The agent id derived from the device key.
    pub fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }

    /// When the agent opened it.
    pub fn opened_at(&self) -> UnixTime {
        self.opened_at
    }

    /// The first second at which an unapproved request is expired.
    pub fn expires_at(&self) -> UnixTime {
        self.opened_at + PAIRING_TTL
    }
}

/// Where a pairing request stands. Variants are plain data so the store can
/// persist and rebuild them; the gated transitions are [`approve`] and [`collect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairingState {
    /// Opened, waiting for an owner.
    Pending(PairingRequest),
    /// Approved by `owner`; the agent has not collected its key yet.
    Approved {
        /// The request.
        request: PairingRequest,
        /// The owner who approved, and will own the agent.
        owner: OwnerId,
        /// When; collection is possible until `approved_at + PAIRING_TTL`.
        approved_at: UnixTime,
    },
    /// The agent collected its key. Terminal.
    Consumed {
        /// The request.
        request: PairingRequest,
        /// The owner who approved.
        owner: OwnerId,
    },
    /// An owner denied it. Terminal.
    Denied {
        /// The request.
        request: PairingRequest,
        /// The owner who denied it.
        owner: OwnerId,
    },
    /// Nobody finished in time. Terminal.
    Expired {
        /// The request.
        request: PairingRequest,
        /// The owner who approved, if it expired waiting for collection.
        approved_by: Option<OwnerId>,
    },
}

/// What the owner sees before confirming: which agent, and the 6 digits that the
/// agent's screen must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingView {
    /// The agent id that will be created.
    pub agent_id: AgentId,
    /// Its device key.
    pub device_key: PublicKey,
    /// The confirmation code; the agent prints the same digits.
    pub confirmation_code: ConfirmationCode,
    /// When the request expires.
    pub expires_at: UnixTime,
}

/// Proof that an approved pairing was collected by the device holding its key:
/// the broker mints the agent key for [`agent_id`](Self::agent_id) under
/// [`owner`](Self::owner) with it, once.
#[derive(Debug)]
#[must_use = "mint and return the agent key with it"]
pub struct PairingCollected {
    agent_id: AgentId,
    owner: OwnerId,
    device_key: PublicKey,
}

impl PairingCollected {
    /// The paired agent.
    pub fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }

    /// The owner who approved: the agent's owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The agent's device key.
    pub fn device_key(&self) -> &PublicKey {
        &self.device_key
    }
}

impl PairingState {
    /// Opens a request for `device_key`. Returns the pair code and the
    /// confirmation code (both shown to the agent, neither stored) and the
    /// `Pending` state to store under `pair_code.hash()`.
    pub fn open(
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        device_key: PublicKey,
        now: UnixTime,
    ) -> (PairCode, ConfirmationCode, Self) {
        let code = PairCode::generate(rng);
        let confirmation = ConfirmationCode::derive(&code, &device_key);
        let request = PairingRequest::restore(code.hash(), device_key, now);
        (code, confirmation, Self::Pending(request))
    }

    /// The same state, its request addressed as [`PairingRequest::with_addressee`] says.
    #[must_use]
    pub fn with_addressee(self, addressed_to: Option<String>) -> Self {
        match self {
            Self::Pending(request) => Self::Pending(request.with_addressee(addressed_to)),
            Self::Approved { request, owner, approved_at } => {
                Self::Approved { request: request.with_addressee(addressed_to), owner, approved_at }
            }
            Self::Consumed { request, owner } => Self::Consumed { request: request.with_addressee(addressed_to), owner },
            Self::Denied { request, owner } => Self::Denied { request: request.with_addressee(addressed_to), owner },
            Self::Expired { request, approved_by } => {
                Self::Expired { request: request.with_addressee(addressed_to), approved_by }
            }
        }
    }

    /// The underlying request.
    pub fn request(&self) -> &PairingRequest {
        match self {
            Self::Pending(request)
            | Self::Approved { request, .. }
            | Self::Consumed { request, .. }
            | Self::Denied { request, .. }
            | Self::Expired { request, .. } => request,
        }
    }

    /// Stable lowercase name of the state, for storage: `pending`, `approved`, `consumed`, `denied`, `expired`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Pending(_) => "pending",
            Self::Approved { .. } => "approved",
            Self::Consumed { .. } => "consumed",
            Self::Denied { .. } => "denied",
            Self::Expired { .. } => "expired",
        }
    }

    /// When a live state expires (`None` for terminal states).
    pub fn deadline(&self) -> Option<UnixTime> {
        match self {
            Self::Pending(request) => Some(request.expires_at()),
            Self::Approved { approved_at, .. } => Some(approved_at + PAIRING_TTL),
            Self::Consumed { .. } | Self::Denied { .. } | Self::Expired { .. } => None,
        }
    }

    /// Moves a live state whose deadline has passed (`now >= deadline`) to `Expired`.
    pub fn expire_if_due(self, now: UnixTime) -> Self {
        if self.deadline().is_none_or(|deadline| now < deadline) {
            return self;
        }
        match self {
            Self::Pending(request) => Self::Expired { request, approved_by: None },
            Self::Approved { request, owner, .. } => Self::Expired { request, approved_by: Some(owner) },
            terminal => terminal,
        }
    }

    /// The owner-facing answer for a state that is not `Pending`.
    fn owner_refusal(&self, me: &OwnerId) -> PairingError {
        match self {
            Self::Pending(_) | Self::Denied { .. } => PairingError::NotFound,
            Self::Approved { owner, .. } | Self::Consumed { owner, .. } if owner == me => {
                PairingError::AlreadyConsumed
            }
            Self::Approved { .. } | Self::Consumed { .. } => PairingError::NotFound,
            Self::Expired { approved_by: Some(owner), .. } if owner != me => PairingError::NotFound,
            Self::Expired { .. } => PairingError::Expired,
        }
    }

    /// What the owner confirms before approving (step 1 of `agentkeys approve`).
    pub fn view(
        &self,
        pair_code: &PairCode,
        owner: &impl OwnerGate,
        now: UnixTime,
    ) -> Result<PairingView, PairingError> {
        if !self.request().code_hash.ct_eq(&pair_code.hash()) || !self.request().is_open_to(owner.owner()) {
            return Err(PairingError::NotFound);
        }
        match self.clone().expire_if_due(now) {
            Self::Pending(request) => Ok(PairingView {
                confirmation_code: ConfirmationCode::derive(pair_code, &request.device_key),
                expires_at: request.expires_at(),
                agent_id: request.agent_id,
                device_key: request.device_key,
            }),
            other => Err(other.owner_refusal(owner.owner())),
        }
    }

    /// Approves a pending request for the verified owner, who confirmed
    /// `confirmation` (the digits shown on the agent's screen).
    pub fn approve(
        self,
        pair_code: &PairCode,
        confirmation: &ConfirmationCode,
        owner: &impl OwnerGate,
        now: UnixTime,
    ) -> Result<Self, PairingError> {
        if !self.request().code_hash.ct_eq(&pair_code.hash()) || !self.request().is_open_to(owner.owner()) {
            return Err(PairingError::NotFound);
        }
        match self.expire_if_due(now) {
            Self::Pending(request) => {
                if !ConfirmationCode::derive(pair_code, &request.device_key).ct_eq(confirmation) {
                    return Err(PairingError::ConfirmationMismatch);
                }
                Ok(Self::Approved { request, owner: owner.owner().clone(), approved_at: now })
            }
            other => Err(other.owner_refusal(owner.owner())),
        }
    }

    /// The agent's poll: with a valid device signature over
    /// [`collect_message`], an approved request is consumed and yields the proof
    /// the broker mints the agent key with.
    pub fn collect(
        self,
        pair_code: &PairCode,
        signature: &Signature,
        now: UnixTime,
    ) -> Result<(PairingCollected, Self), PairingError> {
        let request = self.request();
        if !request.code_hash.ct_eq(&pair_code.hash())
            || !request.device_key.verify_strict(&collect_message(pair_code, &request.agent_id), signature)
        {
            return Err(PairingError::NotFound);
        }
        match self.expire_if_due(now) {
            Self::Pending(_) => Err(PairingError::Pending),
            Self::Approved { request, owner, .. } => {
                let proof = PairingCollected {
                    agent_id: request.agent_id.clone(),
                    owner: owner.clone(),
                    device_key: request.device_key,
                };
                Ok((proof, Self::Consumed { request, owner }))
            }
            Self::Consumed { .. } => Err(PairingError::AlreadyConsumed),
            Self::Denied { .. } => Err(PairingError::Denied),
            Self::Expired { .. } => Err(PairingError::Expired),
        }
    }

    /// Denies a pending request for the verified owner: it becomes `Denied`,
    /// which no approval or collection ever leaves. The request is named by
    /// its code hash (the console lists requests addressed to the owner
    /// without their pair codes); an owner it is not open to, or one that is
    /// not pending, gets the answer [`view`](Self::view) would give.
    pub fn deny(self, code_hash: &CodeHash, owner: &impl OwnerGate, now: UnixTime) -> Result<Self, PairingError> {
        if !self.request().code_hash.ct_eq(code_hash) || !self.request().is_open_to(owner.owner()) {
            return Err(PairingError::NotFound);
        }
        match self.expire_if_due(now) {
            Self::Pending(request) => Ok(Self::Denied { request, owner: owner.owner().clone() }),
            other => Err(other.owner_refusal(owner.owner())),
        }
    }
}

/// [`PairingState::view`] on a store lookup (`None`: [`PairingError::NotFound`]).
pub fn view(
    found: Option<&PairingState>,
    pair_code: &PairCode,
    owner: &impl OwnerGate,
    now: UnixTime,
) -> Result<PairingView, PairingError> {
    found.ok_or(PairingError::NotFound)?.view(pair_code, owner, now)
}

/// [`PairingState::approve`] on a store lookup (`None`: [`PairingError::NotFound`]).
/// Store the returned state in place of the old one (compare-and-swap on the status).
pub fn approve(
    found: Option<PairingState>,
    pair_code: &PairCode,
    confirmation: &ConfirmationCode,
    owner: &impl OwnerGate,
    now: UnixTime,
) -> Result<PairingState, PairingError> {
    found.ok_or(PairingError::NotFound)?.approve(pair_code, confirmation, owner, now)
}

/// [`PairingState::deny`] on a store lookup (`None`: [`PairingError::NotFound`]).
/// Store the returned `Denied` state in place of the old one (compare-and-swap on the status).
pub fn deny(
    found: Option<PairingState>,
    code_hash: &CodeHash,
    owner: &impl OwnerGate,
    now: UnixTime,
) -> Result<PairingState, PairingError> {
    found.ok_or(PairingError::NotFound)?.deny(code_hash, owner, now)
}

/// [`PairingState::collect`] on a store lookup (`None`: [`PairingError::NotFound`]).
/// Store the returned `Consumed` state before handing out the key.
pub fn collect(
    found: Option<PairingState>,
    pair_code: &PairCode,
    signature: &Signature,
    now: UnixTime,
) -> Result<(PairingCollected, PairingState), PairingError> {
    found.ok_or(PairingError::NotFound)?.collect(pair_code, signature, now)
}
