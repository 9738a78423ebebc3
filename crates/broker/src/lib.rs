//! The broker's cryptographic core (DESIGN.md §4–6).
//!
//! - [`authority`]: the [`TokenAuthority`] trait and [`SoftwareAuthority`], which
//!   derives every key from the master seed (HKDF-SHA256 by path label:
//!   `oidc/issuer/v{n}` → P-256, `capability/v1` → HMAC key).
//! - [`ttl`]: token kinds, their lifetime bounds, and the clamp
//!   `min(requested, grant remaining, authority max)`.
//! - [`capability`]: read capabilities `akcap1.<payload>.<mac>` for one inbox's
//!   blob prefix.
//! - [`oidc`]: OIDC claims (with AWS session tags), the discovery document, the JWKS.
//! - [`broker`]: [`TokenBroker`], the proof-typed mint path
//!   `authenticate → authorize → mint → audit`.
//!
//! ```
//! use agentkeys_broker::{
//!     AuthorityConfig, CapabilityClaims, SoftwareAuthority, TokenAuthority, TokenKind, clamp,
//! };
//! use agentkeys_core::MasterSeed;
//!
//! let seed = MasterSeed::from_bytes([7; 32]);
//! let authority = SoftwareAuthority::new(&seed, AuthorityConfig::default())?;
//!
//! // Asking for an hour of read access under a grant with 20 minutes left.
//! let now = 1_700_000_000;
//! let ttl = clamp(Some(3_600), now + 1_200, now, TokenKind::ReadCapability)?;
//! assert_eq!((ttl.ttl, ttl.clamped), (1_200, true));
//!
//! let token = authority.sign_capability(&CapabilityClaims {
//!     owner: "0x00000000000000000000000000000000000000aa".parse()?,
//!     inbox: "bot-1@agents.example.com".parse()?,
//!     issued_at: now,
//!     expires_at: ttl.expires_at,
//!     jti: "example".into(),
//! })?;
//! let capability = authority.verify_capability(&token, now + 60)?;
//! assert!(capability.allows("0x00000000000000000000000000000000000000aa/bot-1@agents.example.com/01J0000000000000000000000.eml"));
//! assert!(!capability.allows("0x00000000000000000000000000000000000000aa/bot-1@agents.example.com/../other.eml"));
//!
//! // The JWKS publishes the ES256 public key that verifies OIDC tokens.
//! let jwks = authority.jwks(now);
//! assert_eq!(jwks.keys[0].kid, authority.current_kid());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod authority;
pub mod broker;
pub mod capability;
pub mod checkpoint;
pub mod error;
pub mod oidc;
pub mod ttl;

pub use authority::{
    AuthorityConfig, RetiredOidcKey, SoftwareAuthority, TokenAuthority, oidc_key_label,
};
pub use broker::{
    Authorized, BrokerConfig, BrokerParts, BrokerStore, Clock, KeyVerified, MintAudit, MintEvent, RefusalEvent,
    MintReceipt, Minted, ScopeMarker, SystemClock, TokenBroker, scope,
};
pub use checkpoint::{CHECKPOINT_KEY_LABEL, CHECKPOINT_SIGNATURE_LEN, CheckpointKey, CheckpointPublicKey};
pub use capability::{CapabilityClaims, CapabilityKey, ReadCapability, blob_prefix};
pub use error::{AuthorityError, BackendError, CapabilityError, KeyRejection, MintError};
pub use oidc::{
    AwsSessionTags, DEFAULT_AUDIENCE, IssuerUrl, IssuerUrlError, Jwk, Jwks, OidcClaims,
    OidcClaimsBuilder, discovery_document, wallet_tag,
};
pub use ttl::{Clamped, TokenKind, clamp, clamp_with_ceiling};

/// Bytes of randomness in a token id (`jti`).
pub const JTI_BYTES: usize = 16;

/// A fresh token id: [`JTI_BYTES`] random bytes, base64url (22 characters).
pub fn random_jti() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; JTI_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
