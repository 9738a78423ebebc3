//! Owner requests signed with the master key: the canonical string, the
//! `Authorization` header, and server-side verification.
//!
//! # Canonical string, version 1
//!
//! Seven lines joined by `\n` (LF), no trailing newline, all ASCII:
//!
//! ```text
//! AGENTKEYS-OWNER-V1
//! {METHOD}
//! {path-with-query}
//! {body-sha256}
//! {ts}
//! {nonce}
//! {owner}
//! ```
//!
//! - `METHOD`: the HTTP method as sent, 1–16 uppercase letters `A-Z` (`GET`, `POST`, …);
//! - `path-with-query`: the request target exactly as sent on the request line
//!   (origin form: starts with `/`, query included, percent-encoding untouched),
//!   1–[`MAX_PATH_LEN`] visible ASCII characters (`!`..`~`);
//! - `body-sha256`: lowercase hex SHA-256 of the raw body bytes (for an empty body
//!   `e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`);
//! - `ts`: Unix seconds, decimal, no sign, no leading zeros;
//! - `nonce`: [`MIN_NONCE_LEN`]–[`MAX_NONCE_LEN`] characters from `A-Z a-z 0-9 - _`;
//! - `owner`: the owner id, `0x` + 40 lowercase hex.
//!
//! The signature is pure Ed25519 over those bytes.
//!
//! # Header
//!
//! Exactly one form is accepted, in exactly this order and spacing:
//!
//! ```text
//! Authorization: AgentKeys-Owner owner=0x…, ts=1767225600, nonce=…, sig=…
//! ```
//!
//! `sig` is the 64-byte signature in base64url without padding (86 characters).
//!
//! # Verification order
//!
//! [`verify_request`]: header syntax → timestamp within ±[`MAX_CLOCK_SKEW`] →
//! the owner has a registered key → signature (`verify_strict`) → nonce unused.
//! The nonce is recorded only once the signature is valid, so a forger cannot
//! burn nonces. Success is an [`OwnerVerified`] proof, which owner-gated handlers
//! take as an argument.

use std::fmt;
use std::str::FromStr;

use agentkeys_core::{NonceRecord, OwnerId, UnixTime};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

use crate::master_key::MasterKey;
use crate::public_key::{PublicKey, SIGNATURE_LEN, Signature};
use crate::replay::{Replay, ReplayGuard};

/// First line of the canonical string.
pub const CANONICAL_PREFIX: &str = "AGENTKEYS-OWNER-V1";
/// The authorization scheme of the header.
pub const AUTH_SCHEME: &str = "AgentKeys-Owner";
/// The header carrying the signature.
pub const AUTH_HEADER: &str = "Authorization";
/// Largest accepted difference between the signed timestamp and the server's clock,
/// in seconds, in both directions; the boundary itself is accepted.
pub const MAX_CLOCK_SKEW: i64 = 60;
/// Longest accepted header value, in bytes.
pub const MAX_HEADER_LEN: usize = 512;
/// Longest accepted method.
pub const MAX_METHOD_LEN: usize = 16;
/// Longest accepted request target (path and query).
pub const MAX_PATH_LEN: usize = 2048;
/// Shortest accepted nonce.
pub const MIN_NONCE_LEN: usize = 16;
/// Longest accepted nonce.
pub const MAX_NONCE_LEN: usize = 64;
/// Random bytes in a generated nonce (22 base64url characters).
pub const NONCE_RANDOM_BYTES: usize = 16;
/// Most digits of a timestamp (covers every date before the year 33658).
const MAX_TS_DIGITS: usize = 12;

/// Why an `Authorization` header is not a well-formed owner signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Longer than [`MAX_HEADER_LEN`] bytes.
    #[error("authorization header longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    /// Does not start with `AgentKeys-Owner ` (one space).
    #[error("authorization scheme must be `AgentKeys-Owner`")]
    Scheme,
    /// The parameter list is not `owner=…, ts=…, nonce=…, sig=…`.
    #[error("expected `AgentKeys-Owner owner=…, ts=…, nonce=…, sig=…`: {detail}")]
    Syntax {
        /// What is wrong.
        detail: &'static str,
    },
    /// One parameter's value is malformed.
    #[error("invalid `{name}` in authorization header: {detail}")]
    Param {
        /// `owner`, `ts`, `nonce` or `sig`.
        name: &'static str,
        /// What a valid value looks like.
        detail: &'static str,
    },
}

/// Why an owner request was refused (or could not be signed).
///
/// Suggested HTTP mapping: [`ApprovalError::ReplayGuardUnavailable`] → 503,
/// [`ApprovalError::InvalidRequest`] → 400, everything else → 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// The header is missing pieces or malformed.
    #[error(transparent)]
    MalformedHeader(#[from] HeaderError),
    /// The signed timestamp is more than [`MAX_CLOCK_SKEW`] seconds from the server's clock.
    #[error(
        "timestamp {ts} is more than {MAX_CLOCK_SKEW} s away from the server clock ({now}); check the clock"
    )]
    StaleTimestamp {
        /// The signed timestamp.
        ts: UnixTime,
        /// The server's clock.
        now: UnixTime,
    },
    /// No master key is registered for this owner.
    #[error("no registered master key for this owner")]
    UnknownOwner,
    /// The signature does not verify over this request.
    #[error("signature does not match the request")]
    BadSignature,
    /// The nonce was already used.
    #[error("nonce already used (replayed request)")]
    Replayed,
    /// The replay guard could not decide; the request is refused (fail closed).
    #[error("cannot check the nonce: {reason}")]
    ReplayGuardUnavailable {
        /// What went wrong.
        reason: String,
    },
    /// The method, path or timestamp cannot be put in the canonical string.
    #[error("cannot sign this request: {detail}")]
    InvalidRequest {
        /// What is wrong.
        detail: &'static str,
    },
}

impl ApprovalError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedHeader(_) => "BAD_AUTH_HEADER",
            Self::StaleTimestamp { .. } => "STALE_TIMESTAMP",
            Self::UnknownOwner => "UNKNOWN_OWNER",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::Replayed => "REPLAYED_NONCE",
            Self::ReplayGuardUnavailable { .. } => "REPLAY_GUARD_UNAVAILABLE",
            Self::InvalidRequest { .. } => "INVALID_REQUEST",
        }
    }
}

/// A request nonce: [`MIN_NONCE_LEN`]–[`MAX_NONCE_LEN`] characters of `A-Z a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nonce(String);

impl Nonce {
    /// A fresh nonce: [`NONCE_RANDOM_BYTES`] random bytes in base64url (22 characters).
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        let mut bytes = [0u8; NONCE_RANDOM_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Nonce {
    type Err = HeaderError;
    fn from_str(s: &str) -> Result<Self, HeaderError> {
        let ok = (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(HeaderError::Param {
                name: "nonce",
                detail: "expected 16-64 characters from A-Z a-z 0-9 - _",
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase hex of SHA-256(`body`).
pub fn body_hash_hex(body: &[u8]) -> String {
    crate::hex(&Sha256::digest(body))
}

/// The canonical string (see the module documentation) for one request.
pub fn canonical_string(
    method: &str,
    path: &str,
    body: &[u8],
    ts: UnixTime,
    nonce: &Nonce,
    owner: &OwnerId,
) -> Result<String, ApprovalError> {
    let invalid = |detail| ApprovalError::InvalidRequest { detail };
    if method.is_empty() || method.len() > MAX_METHOD_LEN || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid("the method must be 1-16 uppercase letters"));
    }
    if !path.starts_with('/') || path.len() > MAX_PATH_LEN || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("the path must start with / and be at most 2048 visible ASCII characters"));
    }
    if ts < 0 {
        return Err(invalid("the timestamp must not be negative"));
    }
    Ok(format!("{CANONICAL_PREFIX}\n{method}\n{path}\n{}\n{ts}\n{nonce}\n{owner}", body_hash_hex(body)))
}

/// A signed owner request: the content of the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerSignature {
    owner: OwnerId,
    ts: UnixTime,
    nonce: Nonce,
    signature: Signature,
}

/// Signs one request with the master key (client side).
///
/// `path` is the request target with its query, exactly as it will be sent.
pub fn sign_request(
    key: &MasterKey,
    owner: &OwnerId,
    method: &str,
    path: &str,
    body: &[u8],
    ts: UnixTime,
    nonce: &Nonce,
) -> Result<OwnerSignature, ApprovalError> {
    let canonical = canonical_string(method, path, body, ts, nonce, owner)?;
    Ok(OwnerSignature {
        owner: owner.clone(),
        ts,
        nonce: nonce.clone(),
        signature: key.sign(canonical.as_bytes()),
    })
}

fn parse_ts(value: &str) -> Result<UnixTime, HeaderError> {
    let err = HeaderError::Param {
        name: "ts",
        detail: "expected Unix seconds, decimal digits without leading zeros",
    };
    let canonical = !value.is_empty()
        && value.len() <= MAX_TS_DIGITS
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if !canonical {
        return Err(err);
    }
    value.parse().map_err(|_| err)
}

impl OwnerSignature {
    /// Parses a header value strictly: `AgentKeys-Owner owner=…, ts=…, nonce=…, sig=…`,
    /// parameters in this order, separated by `, `, no quotes, nothing else.
    pub fn parse(header: &str) -> Result<Self, HeaderError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(HeaderError::TooLong);
        }
        let params = header
            .strip_prefix(AUTH_SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(HeaderError::Scheme)?;
        let parts: Vec<&str> = params.split(", ").collect();
        if parts.len() != 4 {
            return Err(HeaderError::Syntax {
                detail: "expected exactly four parameters separated by \", \"",
            });
        }
        let mut values = ["", "", "", ""];
        for ((part, name), value) in parts.iter().zip(["owner", "ts", "nonce", "sig"]).zip(values.iter_mut())
        {
            match part.split_once('=') {
                Some((n, v)) if n == name => *value = v,
                _ => {
                    return Err(HeaderError::Syntax {
                        detail: "parameters must be owner, ts, nonce, sig, in this order, as name=value",
                    });
                }
            }
        }
        let [owner, ts, nonce, sig] = values;
        let owner: OwnerId = owner.parse().map_err(|_| HeaderError::Param {
            name: "owner",
            detail: "expected 0x followed by 40 hex digits",
        })?;
        let ts = parse_ts(ts)?;
        let nonce: Nonce = nonce.parse()?;
        let sig_err =
            HeaderError::Param { name: "sig", detail: "expected 64 bytes in base64url without padding" };
        let bytes = URL_SAFE_NO_PAD.decode(sig).map_err(|_| sig_err.clone())?;
        let bytes: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| sig_err)?;
        Ok(Self { owner, ts, nonce, signature: Signature::from_bytes(&bytes) })
    }

    /// The header value: `AgentKeys-Owner owner=…, ts=…, nonce=…, sig=…`.
    pub fn header_value(&self) -> String {
        format!(
            "{AUTH_SCHEME} owner={}, ts={}, nonce={}, sig={}",
            self.owner,
            self.ts,
            self.nonce,
            URL_SAFE_NO_PAD.encode(self.signature.to_bytes())
        )
    }

    /// The owner claiming to have signed.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The signed timestamp.
    pub fn timestamp(&self) -> UnixTime {
        self.ts
    }

    /// The signed nonce.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// The Ed25519 signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Verifies an already parsed header against the request (steps 2–5 of
    /// [`verify_request`]).
    ///
    /// Servers whose key lookup is asynchronous parse first, look up
    /// [`owner`](Self::owner)'s key, then pass it here:
    /// `sig.verify(method, path, body, now, |_| key, &guard)`.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: UnixTime,
        lookup_public_key: impl FnOnce(&OwnerId) -> Option<PublicKey>,
        replay_guard: &(impl ReplayGuard + ?Sized),
    ) -> Result<OwnerVerified, ApprovalError> {
        let checked = self.verify_signature(method, path, body, now, lookup_public_key)?;
        let replay = replay_guard.check_and_record(&checked.owner, &checked.nonce, checked.ts, now);
        checked.finish(replay)
    }

    /// Steps 2–4 of [`verify_request`] (timestamp, key, signature), for replay
    /// guards that cannot implement the synchronous [`ReplayGuard`] (an async
    /// database): record the nonce of the returned [`SignatureVerified`] in the
    /// shared store, then hand the outcome to [`SignatureVerified::finish`].
    pub fn verify_signature(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: UnixTime,
        lookup_public_key: impl FnOnce(&OwnerId) -> Option<PublicKey>,
    ) -> Result<SignatureVerified, ApprovalError> {
        let fresh = now.checked_sub(self.ts).is_some_and(|d| (-MAX_CLOCK_SKEW..=MAX_CLOCK_SKEW).contains(&d));
        if !fresh {
            return Err(ApprovalError::StaleTimestamp { ts: self.ts, now });
        }
        let key = lookup_public_key(&self.owner).ok_or(ApprovalError::UnknownOwner)?;
        let canonical = canonical_string(method, path, body, self.ts, &self.nonce, &self.owner)?;
        if !key.verify_strict(canonical.as_bytes(), &self.signature) {
            return Err(ApprovalError::BadSignature);
        }
        Ok(SignatureVerified { owner: self.owner.clone(), ts: self.ts, nonce: self.nonce.clone() })
    }
}

/// A fresh request with a valid signature whose nonce is not yet checked: the
/// intermediate step of [`OwnerSignature::verify_signature`]. Not a proof of
/// anything until [`finish`](Self::finish) turns it into an [`OwnerVerified`].
#[derive(Debug)]
#[must_use = "record the nonce, then call finish"]
pub struct SignatureVerified {
    owner: OwnerId,
    ts: UnixTime,
    nonce: Nonce,
}

impl SignatureVerified {
    /// The owner whose key signed.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The signed timestamp: keep the nonce at least until `ts + MAX_CLOCK_SKEW`.
    pub fn timestamp(&self) -> UnixTime {
        self.ts
    }

    /// The nonce to record as used.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// Completes verification with the replay store's answer for
    /// `(owner, nonce)`: its [`NonceRecord`] of this request's nonce (which only
    /// a nonce store makes, when it records the first use), or why not:
    /// [`Replay::Seen`] is [`ApprovalError::Replayed`], [`Replay::Unavailable`]
    /// fails closed, and so does a record of another request's nonce.
    pub fn finish(self, replay: Result<NonceRecord, Replay>) -> Result<OwnerVerified, ApprovalError> {
        let record = replay.map_err(|e| match e {
            Replay::Seen => ApprovalError::Replayed,
            Replay::Unavailable { reason } => ApprovalError::ReplayGuardUnavailable { reason },
        })?;
        if !record.is_for(&self.owner, self.nonce.as_str()) {
            return Err(ApprovalError::ReplayGuardUnavailable {
                reason: "the nonce record is for another request".to_owned(),
            });
        }
        Ok(OwnerVerified { owner: self.owner, ts: self.ts, nonce: self.nonce })
    }
}

impl fmt::Display for OwnerSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header_value())
    }
}

impl FromStr for OwnerSignature {
    type Err = HeaderError;
    fn from_str(s: &str) -> Result<Self, HeaderError> {
        Self::parse(s)
    }
}

/// Proof that a request was signed by `owner`'s registered master key, fresh and
/// not replayed. Only [`verify_request`] / [`OwnerSignature::verify`] make one, so a
/// handler that takes it cannot be reached without the check.
#[derive(Debug)]
#[must_use = "the proof is what owner-gated operations require"]
pub struct OwnerVerified {
    owner: OwnerId,
    ts: UnixTime,
    nonce: Nonce,
}

impl OwnerVerified {
    /// The owner whose key signed. Handlers act on this owner's agents and inboxes
    /// only, and answer "not found" for anything else.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The signed timestamp.
    pub fn timestamp(&self) -> UnixTime {
        self.ts
    }

    /// The nonce that is now spent.
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }
}

/// Server side: verifies the `Authorization` header of one request.
///
/// Checks, in order: header syntax → timestamp within ±[`MAX_CLOCK_SKEW`] of `now`
/// → `lookup_public_key` knows the owner → signature over the canonical string of
/// `method`, `path` (with query, as received), `body` → the replay guard accepts
/// (and records) the nonce.
pub fn verify_request(
    header: &str,
    method: &str,
    path: &str,
    body: &[u8],
    now: UnixTime,
    lookup_public_key: impl FnOnce(&OwnerId) -> Option<PublicKey>,
    replay_guard: &(impl ReplayGuard + ?Sized),
) -> Result<OwnerVerified, ApprovalError> {
    OwnerSignature::parse(header)?.verify(method, path, body, now, lookup_public_key, replay_guard)
}
