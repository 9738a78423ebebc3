//! Enrollment: the operator issues a single-use code, the owner redeems it once to
//! register their master public key.
//!
//! The server keeps an [`EnrollmentTicket`] (the code's hash, the owner, the
//! deadline) and deletes it when redeemed. Redemption compares the code first, so
//! whoever does not hold the right code only ever sees
//! [`EnrollmentError::InvalidCode`], whether the owner is unknown, the code wrong,
//! already used or expired; [`EnrollmentError::Expired`] is told only to the
//! holder of the right code.

use agentkeys_core::{OwnerId, UnixTime};

use crate::codes::{CodeHash, ENROLLMENT_CODE_TTL, EnrollmentCode};

/// Why an enrollment code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentError {
    /// Unknown owner, wrong code or already used: indistinguishable on purpose.
    #[error("invalid enrollment code")]
    InvalidCode,
    /// The right code, but more than [`ENROLLMENT_CODE_TTL`] after it was issued.
    #[error("the enrollment code has expired; ask the operator for a new one")]
    Expired,
}

impl EnrollmentError {
    /// Stable machine-readable code: `INVALID_ENROLLMENT_CODE` or `EXPIRED`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCode => "INVALID_ENROLLMENT_CODE",
            Self::Expired => "EXPIRED",
        }
    }
}

/// The server-side record of an issued enrollment code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTicket {
    owner: OwnerId,
    code_hash: CodeHash,
    expires_at: UnixTime,
}

/// Proof that an enrollment code was redeemed for `owner`: what registering the
/// owner's master public key requires.
#[derive(Debug)]
#[must_use = "register the owner's public key with it"]
pub struct EnrollmentRedeemed {
    owner: OwnerId,
}

impl EnrollmentRedeemed {
    /// The owner whose key may now be registered.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
}

impl EnrollmentTicket {
    /// Issues a code for `owner`, valid [`ENROLLMENT_CODE_TTL`] from `now`. Show the
    /// code once; store the ticket.
    pub fn issue(
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        owner: OwnerId,
        now: UnixTime,
    ) -> (EnrollmentCode, Self) {
        let code = EnrollmentCode::generate(rng);
        let ticket = Self { owner, code_hash: code.hash(), expires_at: now + ENROLLMENT_CODE_TTL };
        (code, ticket)
    }

    /// Rebuilds a ticket from its stored fields.
    pub fn restore(owner: OwnerId, code_hash: CodeHash, expires_at: UnixTime) -> Self {
        Self { owner, code_hash, expires_at }
    }

    /// The owner it enrolls.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }

    /// The stored form of the code.
    pub fn code_hash(&self) -> &CodeHash {
        &self.code_hash
    }

    /// The first second at which the code no longer works.
    pub fn expires_at(&self) -> UnixTime {
        self.expires_at
    }

    /// Spends the ticket. The caller deletes it from the store on success (single use).
    pub fn redeem(self, code: &EnrollmentCode, now: UnixTime) -> Result<EnrollmentRedeemed, EnrollmentError> {
        if !self.code_hash.ct_eq(&code.hash()) {
            return Err(EnrollmentError::InvalidCode);
        }
        if now >= self.expires_at {
            return Err(EnrollmentError::Expired);
        }
        Ok(EnrollmentRedeemed { owner: self.owner })
    }
}

/// [`EnrollmentTicket::redeem`] on a store lookup: no ticket is
/// [`EnrollmentError::InvalidCode`], like a wrong or used code.
pub fn redeem(
    found: Option<EnrollmentTicket>,
    code: &EnrollmentCode,
    now: UnixTime,
) -> Result<EnrollmentRedeemed, EnrollmentError> {
    found.ok_or(EnrollmentError::InvalidCode)?.redeem(code, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn owner() -> OwnerId {
        "0x00000000000000000000000000000000000000aa".parse().unwrap()
    }

    #[test]
    fn redeem_within_ttl_only() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (code, ticket) = EnrollmentTicket::issue(&mut rng, owner(), 1_000);
        assert_eq!(ticket.expires_at(), 1_000 + ENROLLMENT_CODE_TTL);
        let typed: EnrollmentCode = code.expose().to_ascii_uppercase().parse().unwrap();
        let proof = redeem(Some(ticket.clone()), &typed, 1_000 + ENROLLMENT_CODE_TTL - 1).unwrap();
        assert_eq!(proof.owner(), &owner());
        let err = ticket.clone().redeem(&code, 1_000 + ENROLLMENT_CODE_TTL).unwrap_err();
        assert_eq!((err.clone(), err.code()), (EnrollmentError::Expired, "EXPIRED"));
    }

    #[test]
    fn wrong_unknown_and_used_codes_look_the_same() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (code, ticket) = EnrollmentTicket::issue(&mut rng, owner(), 1_000);
        let other = EnrollmentCode::generate(&mut rng);
        // A wrong code, even after expiry, says nothing about the ticket.
        let wrong = ticket.clone().redeem(&other, 1_000).unwrap_err();
        let wrong_late = ticket.clone().redeem(&other, 1_000 + ENROLLMENT_CODE_TTL).unwrap_err();
        // Used: the store deleted the ticket, so the lookup finds nothing.
        let used = redeem(None, &code, 1_001).unwrap_err();
        assert_eq!(wrong, EnrollmentError::InvalidCode);
        assert_eq!(wrong_late, wrong);
        assert_eq!(used, wrong);
        assert_eq!(used.code(), "INVALID_ENROLLMENT_CODE");
        let restored = EnrollmentTicket::restore(owner(), *ticket.code_hash(), ticket.expires_at());
        assert_eq!(restored, ticket);
    }
}
