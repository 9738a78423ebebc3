//! The broker's error types, each with a stable code.
//!
//! The code (`GRANT_EXPIRED`, `NO_GRANT`, …) is what an API answers and what a
//! client matches on; the `Display` text starts with it and adds context meant for
//! operators. Reasons an agent must not learn (why its key was refused) are kept
//! out of `Display` and exposed only to the server log.

use std::error::Error as StdError;

/// A failure of a backend the broker depends on (metadata store, audit log).
///
/// Opaque on purpose: the broker only needs to know that the backend failed, the
/// source chain carries the detail for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(#[source] Box<dyn StdError + Send + Sync>);

impl BackendError {
    /// Wraps a backend's error.
    pub fn new(err: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self(err.into())
    }
}

/// Why a presented agent key was refused. Log-only: every variant answers the
/// same [`MintError::InvalidKey`] to the caller, so the steps cannot be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// Not `ak_` + 43 base62 characters.
    Malformed,
    /// No stored key has this hash.
    NotFound,
    /// The key was revoked.
    Revoked,
    /// The key expired.
    Expired,
}

impl KeyRejection {
    /// The reason as a stable code, for the server log and audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "MALFORMED_KEY",
            Self::NotFound => "KEY_NOT_FOUND",
            Self::Revoked => "KEY_REVOKED",
            Self::Expired => "KEY_EXPIRED",
        }
    }
}

/// Why a token was not minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The agent key is malformed, unknown, revoked or expired. The reason is in
    /// the payload for the log; `Display` and [`MintError::code`] do not show it.
    #[error("INVALID_KEY: the agent key was refused")]
    InvalidKey(KeyRejection),
    /// No grant of the agent covers this inbox with this scope (also the answer
    /// for an inbox that does not exist or belongs to another owner).
    #[error("NO_GRANT: no grant covers this inbox and scope")]
    NoGrant,
    /// The grants covering this inbox and scope have all expired.
    #[error("GRANT_EXPIRED: the grant covering this inbox and scope has expired")]
    GrantExpired,
    /// The requested TTL was zero or negative.
    #[error("INVALID_TTL: requested {requested} s; a TTL must be a positive number of seconds")]
    InvalidTtl {
        /// The refused request.
        requested: i64,
    },
    /// The metadata store failed; try again later.
    #[error("BACKEND_UNAVAILABLE: metadata store failed: {0}")]
    Store(#[source] BackendError),
    /// The audit append failed, so no token was issued (fail-closed).
    #[error("AUDIT_UNAVAILABLE: audit append failed, no token issued: {0}")]
    Audit(#[source] BackendError),
    /// The authority could not sign.
    #[error("SIGNING_FAILED: {0}")]
    Signing(#[source] AuthorityError),
}

impl MintError {
    /// The stable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidKey(_) => "INVALID_KEY",
            Self::NoGrant => "NO_GRANT",
            Self::GrantExpired => "GRANT_EXPIRED",
            Self::InvalidTtl { .. } => "INVALID_TTL",
            Self::Store(_) => "BACKEND_UNAVAILABLE",
            Self::Audit(_) => "AUDIT_UNAVAILABLE",
            Self::Signing(_) => "SIGNING_FAILED",
        }
    }
}

/// A failure of the token authority: configuration, key derivation or signing.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The configuration cannot work; the text says which setting and why.
    #[error("INVALID_AUTHORITY_CONFIG: {0}")]
    Config(String),
    /// No valid P-256 scalar came out of the derivation (probability about 2^-32
    /// per attempt, so this means a broken key source, not bad luck).
    #[error(
        "KEY_DERIVATION_FAILED: no valid P-256 key for label {label:?} after {attempts} attempts"
    )]
    KeyDerivation {
        /// The base derivation label.
        label: String,
        /// How many labels were tried.
        attempts: u32,
    },
    /// A key could not be encoded (PKCS#8).
    #[error("KEY_ENCODING_FAILED: {0}")]
    KeyEncoding(String),
    /// The signer refused.
    #[error("SIGNING_FAILED: {0}")]
    Signing(String),
}

impl AuthorityError {
    /// The stable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "INVALID_AUTHORITY_CONFIG",
            Self::KeyDerivation { .. } => "KEY_DERIVATION_FAILED",
            Self::KeyEncoding(_) => "KEY_ENCODING_FAILED",
            Self::Signing(_) => "SIGNING_FAILED",
        }
    }
}

/// Why a read capability was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// Not `akcap1.<payload>.<mac>`, too long, bad base64, or a payload that does
    /// not describe a valid capability.
    #[error("CAPABILITY_MALFORMED: not a read capability")]
    Malformed,
    /// The MAC does not match: forged, tampered with, or made under another key.
    #[error("CAPABILITY_INVALID: the capability's signature does not verify")]
    BadSignature,
    /// The capability is genuine but past its expiry.
    #[error("CAPABILITY_EXPIRED: the capability has expired")]
    Expired,
}

impl CapabilityError {
    /// The stable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "CAPABILITY_MALFORMED",
            Self::BadSignature => "CAPABILITY_INVALID",
            Self::Expired => "CAPABILITY_EXPIRED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_starts_with_the_code() {
        let errors = [
            MintError::InvalidKey(KeyRejection::Revoked),
            MintError::NoGrant,
            MintError::GrantExpired,
            MintError::InvalidTtl { requested: 0 },
            MintError::Store(BackendError::new("down")),
            MintError::Audit(BackendError::new("disk full")),
            MintError::Signing(AuthorityError::Signing("x".into())),
        ];
        for e in &errors {
            assert!(e.to_string().starts_with(e.code()), "{e}");
        }
        for e in [
            CapabilityError::Malformed,
            CapabilityError::BadSignature,
            CapabilityError::Expired,
        ] {
            assert!(e.to_string().starts_with(e.code()), "{e}");
        }
        let a = AuthorityError::KeyDerivation {
            label: "l".into(),
            attempts: 3,
        };
        assert!(a.to_string().starts_with(a.code()));
    }

    #[test]
    fn key_rejection_reason_stays_out_of_display() {
        for r in [
            KeyRejection::Malformed,
            KeyRejection::NotFound,
            KeyRejection::Revoked,
            KeyRejection::Expired,
        ] {
            let e = MintError::InvalidKey(r);
            assert_eq!(
                e.to_string(),
                MintError::InvalidKey(KeyRejection::NotFound).to_string()
            );
            assert!(!e.to_string().contains(r.as_str()));
        }
    }
}
