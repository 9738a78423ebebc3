//! Per-domain DKIM keys (DESIGN.md §6).
//!
//! - **Ed25519**: the 32-byte seed is `MasterSeed::derive("dkim/<domain>/v<n>")`, so
//!   nothing is stored and the same seed always gives the same key.
//! - **RSA-2048**: generated once with aws-lc-rs (PKCS#8 DER) and stored sealed
//!   with AES-256-GCM under `MasterSeed::derive("dkim-rsa-wrap/v1")`, with
//!   `<domain>/v<n>` as associated data, so a wrapped key cannot be moved to
//!   another domain or version. Stored form: `nonce (12) || ciphertext || tag (16)`.

use agentkeys_core::{Domain, MasterSeed, UnixTime};
use agentkeys_store::DomainKeyRecord;
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::DkimError;
use crate::sign::DkimSigner;

/// Default selector of the Ed25519 key.
pub const DEFAULT_ED25519_SELECTOR: &str = "ed1";
/// Default selector of the RSA key.
pub const DEFAULT_RSA_SELECTOR: &str = "rsa1";
/// Label of the key that wraps stored RSA keys.
pub const RSA_WRAP_LABEL: &str = "dkim-rsa-wrap/v1";
/// Length of the AES-GCM tag at the end of a wrapped key.
const TAG_LEN: usize = 16;

/// The DKIM selectors of a key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selectors {
    /// Selector of the Ed25519 key.
    pub ed25519: String,
    /// Selector of the RSA key.
    pub rsa: String,
}

impl Default for Selectors {
    fn default() -> Self {
        Self { ed25519: DEFAULT_ED25519_SELECTOR.to_owned(), rsa: DEFAULT_RSA_SELECTOR.to_owned() }
    }
}

/// The derivation label of a domain's Ed25519 key: `dkim/<domain>/v<version>`.
pub fn ed25519_label(domain: &Domain, version: u32) -> String {
    format!("dkim/{}/v{version}", domain.as_str())
}

fn wrap_aad(domain: &Domain, version: u32) -> String {
    format!("{}/v{version}", domain.as_str())
}

/// Seals an RSA private key (PKCS#8 DER) for storage.
pub fn wrap_rsa_key(seed: &MasterSeed, domain: &Domain, version: u32, pkcs8: &[u8]) -> Result<Vec<u8>, DkimError> {
    let kek = Zeroizing::new(seed.derive(RSA_WRAP_LABEL));
    let key = RandomizedNonceKey::new(&AES_256_GCM, kek.as_ref()).map_err(|_| DkimError::Crypto("wrap key"))?;
    let mut sealed = pkcs8.to_vec();
    let nonce = key
        .seal_in_place_append_tag(Aad::from(wrap_aad(domain, version).as_bytes()), &mut sealed)
        .map_err(|_| DkimError::Crypto("sealing the RSA key"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a key sealed by [`wrap_rsa_key`]. [`DkimError::Unwrap`] if it was sealed
/// under another seed, for another domain or version, or altered.
pub fn unwrap_rsa_key(
    seed: &MasterSeed,
    domain: &Domain,
    version: u32,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, DkimError> {
    let unwrap_err = || DkimError::Unwrap { domain: domain.to_string(), version };
    if wrapped.len() < NONCE_LEN + TAG_LEN {
        return Err(unwrap_err());
    }
    let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unwrap_err())?;
    let kek = Zeroizing::new(seed.derive(RSA_WRAP_LABEL));
    let key = RandomizedNonceKey::new(&AES_256_GCM, kek.as_ref()).map_err(|_| DkimError::Crypto("wrap key"))?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(wrap_aad(domain, version).as_bytes()), buf.as_mut_slice())
        .map_err(|_| unwrap_err())?
        .len();
    buf.truncate(plain_len);
    Ok(buf)
}

/// One version of a domain's two DKIM keys, ready to sign. `Debug` shows no key
/// material.
pub struct DomainKeys {
    domain: Domain,
    version: u32,
    selectors: Selectors,
    ed_seed: Zeroizing<[u8; 32]>,
    ed_public: [u8; 32],
    rsa_pkcs8: Zeroizing<Vec<u8>>,
    rsa_spki: Vec<u8>,
}

impl std::fmt::Debug for DomainKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainKeys")
            .field("domain", &self.domain)
            .field("version", &self.version)
            .field("selectors", &self.selectors)
            .finish_non_exhaustive()
    }
}

impl DomainKeys {
    /// Generates a new key version for `domain`: derives the Ed25519 key, generates
    /// an RSA-2048 key and returns the record to store (RSA key wrapped).
    pub fn generate_record(
        seed: &MasterSeed,
        domain: &Domain,
        version: u32,
        selectors: &Selectors,
        now: UnixTime,
    ) -> Result<DomainKeyRecord, DkimError> {
        if version == 0 {
            return Err(DkimError::Invalid("DKIM key versions start at 1".to_owned()));
        }
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| DkimError::Crypto("generating the RSA key"))?;
        let pkcs8 = rsa.as_der().map_err(|_| DkimError::Crypto("encoding the RSA key"))?;
        let rsa_key_wrapped = wrap_rsa_key(seed, domain, version, pkcs8.as_ref())?;
        Ok(DomainKeyRecord {
            domain: domain.clone(),
            version,
            selector_ed: selectors.ed25519.clone(),
            selector_rsa: selectors.rsa.clone(),
            rsa_key_wrapped,
            created_at: now,
        })
    }

    /// Opens a stored key version: derives the Ed25519 key and unwraps the RSA key.
    pub fn open(seed: &MasterSeed, record: &DomainKeyRecord) -> Result<Self, DkimError> {
        let domain = &record.domain;
        let version = record.version;
        let ed_seed = Zeroizing::new(seed.derive(&ed25519_label(domain, version)));
        let ed = Ed25519KeyPair::from_seed_unchecked(ed_seed.as_ref())
            .map_err(|_| DkimError::Crypto("deriving the Ed25519 key"))?;
        let ed_public: [u8; 32] = ed
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| DkimError::Crypto("Ed25519 public key length"))?;
        let rsa_pkcs8 = unwrap_rsa_key(seed, domain, version, &record.rsa_key_wrapped)?;
        let rsa = RsaKeyPair::from_pkcs8(&rsa_pkcs8).map_err(|_| DkimError::Unwrap { domain: domain.to_string(), version })?;
        let rsa_spki = rsa
            .public_key()
            .as_der()
            .map_err(|_| DkimError::Crypto("encoding the RSA public key"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            domain: domain.clone(),
            version,
            selectors: Selectors { ed25519: record.selector_ed.clone(), rsa: record.selector_rsa.clone() },
            ed_seed,
            ed_public,
            rsa_pkcs8,
            rsa_spki,
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The key version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The selectors (`s=`).
    pub fn selectors(&self) -> &Selectors {
        &self.selectors
    }

    /// The raw 32-byte Ed25519 public key (RFC 8463: `p=` is its base64).
    pub fn ed25519_public_key(&self) -> [u8; 32] {
        self.ed_public
    }

    /// The RSA public key as DER SubjectPublicKeyInfo (`p=` is its base64).
    pub fn rsa_public_key_spki(&self) -> &[u8] {
        &self.rsa_spki
    }

    /// The TXT value of the Ed25519 key: `v=DKIM1; k=ed25519; p=…`.
    pub fn ed25519_txt(&self) -> String {
        format!("v=DKIM1; k=ed25519; p={}", b64(&self.ed_public))
    }

    /// The TXT value of the RSA key: `v=DKIM1; k=rsa; p=…`.
    pub fn rsa_txt(&self) -> String {
        format!("v=DKIM1; k=rsa; p={}", b64(&self.rsa_spki))
    }

    /// A signer over both keys.
    pub fn signer(&self) -> Result<DkimSigner, DkimError> {
        DkimSigner::new(self.domain.as_str(), &self.selectors, self.ed_seed.as_ref(), &self.ed_public, &self.rsa_pkcs8)
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> MasterSeed {
        MasterSeed::from_bytes([b; 32])
    }

    fn domain(s: &str) -> Domain {
        s.parse().unwrap()
    }

    #[test]
    fn ed25519_key_is_derived_deterministically_per_domain_and_version() {
        let d = domain("example.test");
        let rec = DomainKeys::generate_record(&seed(1), &d, 1, &Selectors::default(), 0).unwrap();
        let a = DomainKeys::open(&seed(1), &rec).unwrap();
        let again = DomainKeys::generate_record(&seed(1), &d, 1, &Selectors::default(), 0).unwrap();
        let b = DomainKeys::open(&seed(1), &again).unwrap();
        assert_eq!(a.ed25519_public_key(), b.ed25519_public_key());
        // RSA is generated, not derived: two generations differ.
        assert_ne!(a.rsa_public_key_spki(), b.rsa_public_key_spki());
        let v2 = DomainKeys::generate_record(&seed(1), &d, 2, &Selectors::default(), 0).unwrap();
        assert_ne!(DomainKeys::open(&seed(1), &v2).unwrap().ed25519_public_key(), a.ed25519_public_key());
        let other = DomainKeys::generate_record(&seed(1), &domain("other.test"), 1, &Selectors::default(), 0).unwrap();
        assert_ne!(DomainKeys::open(&seed(1), &other).unwrap().ed25519_public_key(), a.ed25519_public_key());
        assert_eq!(ed25519_label(&d, 3), "dkim/example.test/v3");
    }

    #[test]
    fn rsa_key_round_trips_through_the_wrap() {
        let d = domain("example.test");
        let rec = DomainKeys::generate_record(&seed(1), &d, 1, &Selectors::default(), 0).unwrap();
        let keys = DomainKeys::open(&seed(1), &rec).unwrap();
        let again = DomainKeys::open(&seed(1), &rec).unwrap();
        assert_eq!(keys.rsa_public_key_spki(), again.rsa_public_key_spki());
        // 2048-bit SPKI is 294 bytes.
        assert_eq!(keys.rsa_public_key_spki().len(), 294);
        let plain = b"pkcs8 bytes".to_vec();
        let wrapped = wrap_rsa_key(&seed(1), &d, 1, &plain).unwrap();
        assert!(!wrapped.windows(plain.len()).any(|w| w == plain.as_slice()));
        assert_eq!(unwrap_rsa_key(&seed(1), &d, 1, &wrapped).unwrap().as_slice(), plain.as_slice());
    }

    #[test]
    fn tampered_or_misplaced_wrapped_keys_are_refused() {
        let d = domain("example.test");
        let wrapped = wrap_rsa_key(&seed(1), &d, 1, b"secret key").unwrap();
        let unwrap_fails = |s: &MasterSeed, d: &Domain, v: u32, w: &[u8]| {
            matches!(unwrap_rsa_key(s, d, v, w), Err(DkimError::Unwrap { .. }))
        };
        assert!(unwrap_fails(&seed(2), &d, 1, &wrapped), "other seed");
        assert!(unwrap_fails(&seed(1), &domain("other.test"), 1, &wrapped), "other domain");
        assert!(unwrap_fails(&seed(1), &d, 2, &wrapped), "other version");
        for i in [0, NONCE_LEN, wrapped.len() - 1] {
            let mut bad = wrapped.clone();
            bad[i] ^= 1;
            assert!(unwrap_fails(&seed(1), &d, 1, &bad), "flipped byte {i}");
        }
        assert!(unwrap_fails(&seed(1), &d, 1, &wrapped[..NONCE_LEN + TAG_LEN - 1]), "truncated");
        let mut rec = DomainKeys::generate_record(&seed(1), &d, 1, &Selectors::default(), 0).unwrap();
        rec.rsa_key_wrapped[20] ^= 0x80;
        assert!(matches!(DomainKeys::open(&seed(1), &rec), Err(DkimError::Unwrap { .. })));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let d = domain("example.test");
        let rec = DomainKeys::generate_record(&seed(1), &d, 1, &Selectors::default(), 0).unwrap();
        let keys = DomainKeys::open(&seed(1), &rec).unwrap();
        let text = format!("{keys:?} {:?}", keys.signer().unwrap());
        assert!(!text.contains("ed_seed") && !text.contains("pkcs8"), "{text}");
    }
}
