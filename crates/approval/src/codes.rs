//! Human-typable codes: enrollment codes, pair codes and confirmation codes.
//!
//! | code | format | entropy | lifetime | stored as |
//! |---|---|---|---|---|
//! | enrollment code | `enr_` + 26 Crockford base32 (lowercase) | 130 bits | [`ENROLLMENT_CODE_TTL`] (24 h), single use | [`CodeHash`] |
//! | pair code | `ABCD-EFGH`, 8 of `A-Z 2-9` without `I O 0 1` | 40 bits | [`PAIRING_TTL`] (10 min), single use | [`CodeHash`] |
//! | confirmation code | 6 decimal digits | 20 bits | that of its pair code | derived, not stored |
//!
//! Input is accepted in any case (and pair codes with or without the dash);
//! anything else is refused. A pair code alone grants nothing: approving needs the
//! owner's signature and collecting needs the agent's device key
//! (see [`pairing`](crate::pairing)).

use std::fmt;
use std::str::FromStr;

use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::public_key::PublicKey;

/// Lifetime of an enrollment code, in seconds (24 h).
pub const ENROLLMENT_CODE_TTL: i64 = 24 * 3_600;
/// Lifetime of a pairing request, in seconds (DESIGN.md §4).
pub const PAIRING_TTL: i64 = 600;
/// How many approvals (typed 6 digits) one pairing request takes: every
/// attempt spends one before the digits are compared, so a wrong guess counts
/// and at most this many comparisons are ever made; then the request is locked
/// ([`PairingError::ConfirmationLocked`](crate::PairingError::ConfirmationLocked))
/// and the agent pairs again.
pub const MAX_CONFIRMATION_TRIES: u32 = 5;
/// Prefix of an enrollment code.
pub const ENROLLMENT_CODE_PREFIX: &str = "enr_";
/// Characters after the prefix (26 × 5 = 130 bits).
pub const ENROLLMENT_CODE_BODY_LEN: usize = 26;
/// Crockford base32, lowercase: no `i l o u`.
pub const ENROLLMENT_CODE_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of a pair code, without the dash (8 × 5 = 40 bits).
pub const PAIR_CODE_LEN: usize = 8;
/// Upper-case letters and digits without the look-alikes `I O 0 1`.
pub const PAIR_CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Digits of a confirmation code.
pub const CONFIRMATION_CODE_DIGITS: usize = 6;

const ENROLLMENT_HASH_LABEL: &[u8] = b"agentkeys/enrollment-code/v1\n";
const PAIR_HASH_LABEL: &[u8] = b"agentkeys/pair-code/v1\n";
const CONFIRMATION_LABEL: &[u8] = b"agentkeys/pairing-confirmation/v1\n";

/// Why a typed code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not `enr_` + 26 Crockford base32 characters.
    #[error("invalid enrollment code: expected enr_ followed by 26 letters and digits")]
    EnrollmentCode,
    /// Not 8 pair-code characters (optionally `XXXX-XXXX`).
    #[error("invalid pair code: expected 8 characters like ABCD-EFGH (no I, O, 0 or 1)")]
    PairCode,
    /// Not 6 decimal digits.
    #[error("invalid confirmation code: expected 6 digits")]
    ConfirmationCode,
}

impl CodeError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::EnrollmentCode => "INVALID_ENROLLMENT_CODE",
            Self::PairCode => "INVALID_PAIR_CODE",
            Self::ConfirmationCode => "INVALID_CONFIRMATION_CODE",
        }
    }
}

/// The stored form of a code: SHA-256 over a per-kind label and the canonical
/// code text. Compared in constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeHash(pub [u8; 32]);

impl CodeHash {
    fn of(label: &[u8], code: &str) -> Self {
        let mut h = Sha256::new();
        h.update(label);
        h.update(code.as_bytes());
        Self(h.finalize().into())
    }

    /// Lowercase hex, the form kept in the metadata store.
    pub fn to_hex(&self) -> String {
        crate::hex(&self.0)
    }

    /// Parses the stored hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        crate::unhex::<32>(s).map(Self)
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeHash({}…)", &self.to_hex()[..8])
    }
}

fn draw(rng: &mut (impl rand::RngCore + rand::CryptoRng), alphabet: &[u8; 32], len: usize) -> String {
    (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char).collect()
}

/// A single-use enrollment code, shown once by `agentkeys owner add`.
/// `Debug` is redacted; the text is reachable only through [`expose`](Self::expose).
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentCode(String);

impl EnrollmentCode {
    /// A fresh code.
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        Self(format!(
            "{ENROLLMENT_CODE_PREFIX}{}",
            draw(rng, ENROLLMENT_CODE_ALPHABET, ENROLLMENT_CODE_BODY_LEN)
        ))
    }

    /// The code text, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The stored form.
    pub fn hash(&self) -> CodeHash {
        CodeHash::of(ENROLLMENT_HASH_LABEL, &self.0)
    }
}

impl FromStr for EnrollmentCode {
    type Err = CodeError;
    /// Accepts any case; the canonical form is lowercase.
    fn from_str(s: &str) -> Result<Self, CodeError> {
        let lower = s.to_ascii_lowercase();
        match lower.strip_prefix(ENROLLMENT_CODE_PREFIX) {
            Some(body)
                if body.len() == ENROLLMENT_CODE_BODY_LEN
                    && body.bytes().all(|b| ENROLLMENT_CODE_ALPHABET.contains(&b)) =>
            {
                Ok(Self(lower))
            }
            _ => Err(CodeError::EnrollmentCode),
        }
    }
}

impl fmt::Debug for EnrollmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrollmentCode(<redacted>)")
    }
}

/// A pair code, `ABCD-EFGH`: what the agent prints and the owner types into
/// `agentkeys approve`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairCode(String);

impl PairCode {
    /// A fresh code.
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        let raw = draw(rng, PAIR_CODE_ALPHABET, PAIR_CODE_LEN);
        Self(format!("{}-{}", &raw[..4], &raw[4..]))
    }

    /// The canonical text, `ABCD-EFGH`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stored form.
    pub fn hash(&self) -> CodeHash {
        CodeHash::of(PAIR_HASH_LABEL, &self.0)
    }
}

impl FromStr for PairCode {
    type Err = CodeError;
    /// Accepts any case, with or without the dash in the middle.
    fn from_str(s: &str) -> Result<Self, CodeError> {
        let upper = s.to_ascii_uppercase();
        let raw = match upper.split_once('-') {
            Some((a, b)) if a.len() == 4 && b.len() == 4 => format!("{a}{b}"),
            Some(_) => return Err(CodeError::PairCode),
            None => upper,
        };
        if raw.len() != PAIR_CODE_LEN || !raw.bytes().all(|b| PAIR_CODE_ALPHABET.contains(&b)) {
            return Err(CodeError::PairCode);
        }
        Ok(Self(format!("{}-{}", &raw[..4], &raw[4..])))
    }
}

impl fmt::Display for PairCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 6-digit code the agent prints next to its pair code and the owner sees
/// before approving.
///
/// It is derived, not drawn: the first 8 bytes of
/// `SHA-256("agentkeys/pairing-confirmation/v1\n" ‖ pair code ‖ "\n" ‖ device public key)`
/// as a big-endian integer, modulo 10⁶, zero-padded. The agent computes it from its
/// own key; the server computes it from the key in the pairing request. If the two
/// match, the owner is approving the device in front of them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfirmationCode(u32);

impl ConfirmationCode {
    /// The code binding `pair_code` to `device_key`.
    pub fn derive(pair_code: &PairCode, device_key: &PublicKey) -> Self {
        let mut h = Sha256::new();
        h.update(CONFIRMATION_LABEL);
        h.update(pair_code.as_str().as_bytes());
        h.update(b"\n");
        h.update(device_key.to_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self((u64::from_be_bytes(first) % 1_000_000) as u32)
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl FromStr for ConfirmationCode {
    type Err = CodeError;
    /// Exactly 6 ASCII digits.
    fn from_str(s: &str) -> Result<Self, CodeError> {
        if s.len() != CONFIRMATION_CODE_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::ConfirmationCode);
        }
        s.parse().map(Self).map_err(|_| CodeError::ConfirmationCode)
    }
}

impl fmt::Display for ConfirmationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

impl fmt::Debug for ConfirmationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfirmationCode({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn enrollment_code_format() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let code = EnrollmentCode::generate(&mut rng);
        let text = code.expose();
        assert_eq!(text.len(), 4 + 26);
        assert!(text.starts_with("enr_"));
        assert!(text[4..].bytes().all(|b| ENROLLMENT_CODE_ALPHABET.contains(&b)));
        assert_eq!(text.parse::<EnrollmentCode>().unwrap(), code);
        assert_eq!(
            text.to_ascii_uppercase().replace("ENR_", "enr_").parse::<EnrollmentCode>().unwrap(),
            code
        );
        assert_eq!(format!("{code:?}"), "EnrollmentCode(<redacted>)");
        for bad in [
            "",
            "enr_",
            "enr_0123456789abcdefghjkmnpqr",
            "enr_0123456789abcdefghjkmnpqri",
            "xyz_0123456789abcdefghjkmnpq",
            "enr_0123456789abcdefghjkmnpqrst",
        ] {
            assert_eq!(bad.parse::<EnrollmentCode>(), Err(CodeError::EnrollmentCode), "{bad}");
        }
        assert!(code.hash().ct_eq(&text.parse::<EnrollmentCode>().unwrap().hash()));
        assert!(!code.hash().ct_eq(&EnrollmentCode::generate(&mut rng).hash()));
    }

    #[test]
    fn alphabets_have_no_look_alikes_and_no_repeats() {
        for (alphabet, banned) in
            [(ENROLLMENT_CODE_ALPHABET, &b"ilou"[..]), (PAIR_CODE_ALPHABET, &b"IO01"[..])]
        {
            let mut sorted = alphabet.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 32);
            assert!(!alphabet.iter().any(|b| banned.contains(b)));
        }
    }

    #[test]
    fn pair_code_format() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let code = PairCode::generate(&mut rng);
        let text = code.as_str();
        assert_eq!(text.len(), 9);
        assert_eq!(&text[4..5], "-");
        assert_eq!(text.parse::<PairCode>().unwrap(), code);
        assert_eq!(text.to_ascii_lowercase().parse::<PairCode>().unwrap(), code);
        assert_eq!(text.replace('-', "").parse::<PairCode>().unwrap(), code);
        assert_eq!("abcd-efgh".parse::<PairCode>().unwrap().as_str(), "ABCD-EFGH");
        for bad in
            ["", "ABCD-EFG", "ABCDE-FGH", "ABCD-EFGI", "ABCD-EFG0", "ABCD EFGH", "ABCD--EFGH", "ABCDEFGHJ"]
        {
            assert_eq!(bad.parse::<PairCode>(), Err(CodeError::PairCode), "{bad}");
        }
        assert!(code.hash().ct_eq(&CodeHash::from_hex(&code.hash().to_hex()).unwrap()));
        assert_ne!(
            code.hash(),
            CodeHash::of(ENROLLMENT_HASH_LABEL, code.as_str()),
            "the kinds are domain-separated"
        );
    }

    #[test]
    fn confirmation_code_format_and_binding() {
        let pair: PairCode = "ABCD-EFGH".parse().unwrap();
        let k1 = crate::DeviceKey::from_seed(&[1; 32]).public_key();
        let k2 = crate::DeviceKey::from_seed(&[2; 32]).public_key();
        let c1 = ConfirmationCode::derive(&pair, &k1);
        assert_eq!(c1.to_string().len(), 6);
        assert_eq!(c1.to_string().parse::<ConfirmationCode>().unwrap(), c1);
        assert!(c1.ct_eq(&ConfirmationCode::derive(&pair, &k1)));
        assert_ne!(c1, ConfirmationCode::derive(&pair, &k2));
        assert_ne!(c1, ConfirmationCode::derive(&"ABCD-EFGJ".parse().unwrap(), &k1));
        assert_eq!("000042".parse::<ConfirmationCode>().unwrap().to_string(), "000042");
        for bad in ["", "12345", "1234567", "12345a", "+12345", " 12345"] {
            assert_eq!(bad.parse::<ConfirmationCode>(), Err(CodeError::ConfirmationCode), "{bad}");
        }
    }

    #[test]
    fn ttls_are_the_documented_values() {
        assert_eq!(ENROLLMENT_CODE_TTL, 86_400);
        assert_eq!(PAIRING_TTL, 600);
        assert_eq!(MAX_CONFIRMATION_TRIES, 5);
    }
}
