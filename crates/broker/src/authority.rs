//! The token authority: where signing keys live and what they sign.
//!
//! [`TokenAuthority`] hides the keys, so a hardware or TEE authority can replace
//! [`SoftwareAuthority`], which derives every key from the master seed with
//! HKDF-SHA256 and a path label (DESIGN.md §6):
//!
//! - `oidc/issuer/v{n}` → a P-256 key for ES256 OIDC tokens. A rotation is a new
//!   version: the current key signs, previous versions stay in the JWKS until every
//!   token they signed has expired ([`RetiredOidcKey`]).
//! - `capability/v1` → the HMAC key of read capabilities.
//! - `audit-checkpoint/v1` → the Ed25519 key that signs audit checkpoints
//!   ([`crate::checkpoint`]).
//!
//! If the 32 derived bytes are not a valid P-256 scalar (zero or ≥ the group
//! order, probability ≈ 2^-32), the label is re-derived deterministically with a
//! counter suffix (`oidc/issuer/v1#1`, `#2`, …), so a seed always yields the same key.
//!
//! JWTs are signed by `jsonwebtoken` with its aws-lc-rs backend from the key's
//! PKCS#8 DER encoding.

use std::fmt;

use agentkeys_core::{MasterSeed, UnixTime};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use agentkeys_audit::{ChainedCheckpoint, Checkpoint};

use crate::capability::{CapabilityClaims, CapabilityKey, ReadCapability};
use crate::checkpoint::{CHECKPOINT_SIGNATURE_LEN, CheckpointKey, CheckpointPublicKey};
use crate::error::{AuthorityError, CapabilityError};
use crate::oidc::{Jwk, Jwks, OidcClaims};
use crate::ttl::TokenKind;

/// Label prefix of the OIDC issuer keys; the version number follows.
pub const OIDC_KEY_LABEL_PREFIX: &str = "oidc/issuer/v";
/// How many labels the P-256 derivation tries before giving up.
pub const MAX_P256_DERIVATION_ATTEMPTS: u32 = 16;
/// Bytes of SHA-256 over the SEC1 public key that make up a `kid`.
pub const KID_HASH_BYTES: usize = 16;

/// The derivation label of OIDC key version `version`: `oidc/issuer/v{version}`.
pub fn oidc_key_label(version: u32) -> String {
    format!("{OIDC_KEY_LABEL_PREFIX}{version}")
}

/// Signs and verifies the broker's tokens. Implementations keep their keys to themselves.
pub trait TokenAuthority: Send + Sync {
    /// Signs `claims` as a compact ES256 JWT with the current key's `kid`.
    fn sign_oidc(&self, claims: &OidcClaims) -> Result<String, AuthorityError>;

    /// The public keys a verifier needs at `now`: the current key first, then the
    /// previous keys whose tokens may still be unexpired.
    fn jwks(&self, now: UnixTime) -> Jwks;

    /// Signs a read capability.
    fn sign_capability(&self, claims: &CapabilityClaims) -> Result<String, AuthorityError>;

    /// Verifies a read capability at `now`.
    fn verify_capability(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<ReadCapability, CapabilityError>;

    /// Longest lifetime this authority signs for `kind`, within the kind's bounds.
    fn max_token_ttl(&self, kind: TokenKind) -> i64;

    /// Signs an audit checkpoint (the chain head at a time).
    fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> [u8; CHECKPOINT_SIGNATURE_LEN];

    /// Signs a chained (format v2) audit checkpoint.
    fn sign_chained_checkpoint(&self, checkpoint: &ChainedCheckpoint) -> [u8; CHECKPOINT_SIGNATURE_LEN];

    /// The key checkpoint signatures verify with.
    fn checkpoint_public_key(&self) -> CheckpointPublicKey;
}

/// An OIDC key version taken out of service at `retired_at`. Its public key stays in
/// the JWKS until `retired_at` plus the authority's OIDC max TTL, when every token it
/// signed has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetiredOidcKey {
    /// The key version (`oidc/issuer/v{version}`).
    pub version: u32,
    /// When the next version took over.
    pub retired_at: UnixTime,
}

/// Settings of a [`SoftwareAuthority`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// Version of the current OIDC signing key, ≥ 1.
    pub oidc_version: u32,
    /// Earlier versions still published in the JWKS (see [`RetiredOidcKey`]).
    pub previous_oidc_versions: Vec<RetiredOidcKey>,
    /// Longest read capability, within 60–1800 s.
    pub read_capability_max_ttl: i64,
    /// Longest OIDC token, within 60–3600 s.
    pub oidc_max_ttl: i64,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            oidc_version: 1,
            previous_oidc_versions: Vec::new(),
            read_capability_max_ttl: TokenKind::ReadCapability.max_ttl(),
            oidc_max_ttl: TokenKind::Oidc.max_ttl(),
        }
    }
}

impl AuthorityConfig {
    /// Every problem with the settings, at once.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.oidc_version == 0 {
            problems.push("oidc_version must be at least 1".to_owned());
        }
        for (i, p) in self.previous_oidc_versions.iter().enumerate() {
            if p.version == 0 {
                problems.push(format!(
                    "previous_oidc_versions[{i}]: version must be at least 1"
                ));
            }
            if p.version == self.oidc_version {
                problems.push(format!(
                    "previous_oidc_versions[{i}]: version {} is the current version",
                    p.version
                ));
            }
            if self.previous_oidc_versions[..i]
                .iter()
                .any(|q| q.version == p.version)
            {
                problems.push(format!(
                    "previous_oidc_versions[{i}]: version {} listed twice",
                    p.version
                ));
            }
        }
        for (name, value, kind) in [
            (
                "read_capability_max_ttl",
                self.read_capability_max_ttl,
                TokenKind::ReadCapability,
            ),
            ("oidc_max_ttl", self.oidc_max_ttl, TokenKind::Oidc),
        ] {
            if !(kind.min_ttl()..=kind.max_ttl()).contains(&value) {
                problems.push(format!(
                    "{name} = {value} s is outside {}..={} s",
                    kind.min_ttl(),
                    kind.max_ttl()
                ));
            }
        }
        problems
    }
}

/// One derived OIDC key version.
struct OidcKey {
    version: u32,
    kid: String,
    jwk: Jwk,
    /// PKCS#8 DER of the private key; `jsonwebtoken` parses it per signature.
    encoding_key: EncodingKey,
}

/// The software authority: every key derived from the master seed in memory.
pub struct SoftwareAuthority {
    current: OidcKey,
    previous: Vec<(RetiredOidcKey, OidcKey)>,
    capability: CapabilityKey,
    checkpoint: CheckpointKey,
    read_capability_max_ttl: i64,
    oidc_max_ttl: i64,
}

impl SoftwareAuthority {
    /// Derives the keys of `config` from `seed`.
    ///
    /// Errors: [`AuthorityError::Config`] listing every problem with `config`, or a
    /// derivation/encoding failure.
    pub fn new(seed: &MasterSeed, config: AuthorityConfig) -> Result<Self, AuthorityError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(AuthorityError::Config(problems.join("; ")));
        }
        let source = |label: &str| seed.derive(label);
        let current = OidcKey::derive(config.oidc_version, source)?;
        let previous = config
            .previous_oidc_versions
            .iter()
            .map(|r| Ok((*r, OidcKey::derive(r.version, source)?)))
            .collect::<Result<Vec<_>, AuthorityError>>()?;
        Ok(Self {
            current,
            previous,
            capability: CapabilityKey::derive(seed),
            checkpoint: CheckpointKey::derive(seed),
            read_capability_max_ttl: config.read_capability_max_ttl,
            oidc_max_ttl: config.oidc_max_ttl,
        })
    }

    /// The `kid` of the current OIDC key.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// The version of the current OIDC key.
    pub fn current_version(&self) -> u32 {
        self.current.version
    }
}

impl OidcKey {
    fn derive(version: u32, source: impl Fn(&str) -> [u8; 32]) -> Result<Self, AuthorityError> {
        let secret = derive_p256(&oidc_key_label(version), source)?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| AuthorityError::KeyEncoding(e.to_string()))?;
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(AuthorityError::KeyEncoding(
                "public key is the identity point".into(),
            ));
        };
        let kid = kid_for_sec1(point.as_bytes());
        let jwk = Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: URL_SAFE_NO_PAD.encode(y),
            kid: kid.clone(),
            alg: "ES256".into(),
            use_: "sig".into(),
        };
        Ok(Self {
            version,
            kid,
            jwk,
            encoding_key: EncodingKey::from_ec_der(der.as_bytes()),
        })
    }
}

/// `kid` of a public key: base64url of the first [`KID_HASH_BYTES`] bytes of
/// SHA-256 over its uncompressed SEC1 encoding. Stable per key version.
pub fn kid_for_sec1(sec1_public_key: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(sec1_public_key)[..KID_HASH_BYTES])
}

/// Derives a P-256 secret key for `label` from `source` (the seed's HKDF), trying
/// `label`, then `label#1`, `label#2`, … until the bytes are a valid scalar.
fn derive_p256(
    label: &str,
    source: impl Fn(&str) -> [u8; 32],
) -> Result<SecretKey, AuthorityError> {
    for attempt in 0..MAX_P256_DERIVATION_ATTEMPTS {
        let attempt_label = if attempt == 0 {
            label.to_owned()
        } else {
            format!("{label}#{attempt}")
        };
        let mut bytes = source(&attempt_label);
        let mut field_bytes = p256::FieldBytes::from(bytes);
        let key = SecretKey::from_bytes(&field_bytes);
        bytes.zeroize();
        field_bytes.zeroize();
        if let Ok(key) = key {
            return Ok(key);
        }
    }
    Err(AuthorityError::KeyDerivation {
        label: label.to_owned(),
        attempts: MAX_P256_DERIVATION_ATTEMPTS,
    })
}

impl TokenAuthority for SoftwareAuthority {
    fn sign_oidc(&self, claims: &OidcClaims) -> Result<String, AuthorityError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.current.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.current.encoding_key)
            .map_err(|e| AuthorityError::Signing(e.to_string()))
    }

    fn jwks(&self, now: UnixTime) -> Jwks {
        let live = |r: &RetiredOidcKey| now < r.retired_at.saturating_add(self.oidc_max_ttl);
        let mut keys = vec![self.current.jwk.clone()];
        keys.extend(
            self.previous
                .iter()
                .filter(|(r, _)| live(r))
                .map(|(_, k)| k.jwk.clone()),
        );
        Jwks { keys }
    }

    fn sign_capability(&self, claims: &CapabilityClaims) -> Result<String, AuthorityError> {
        Ok(self.capability.sign(claims))
    }

    fn verify_capability(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<ReadCapability, CapabilityError> {
        self.capability.verify(token, now)
    }

    fn max_token_ttl(&self, kind: TokenKind) -> i64 {
        match kind {
            TokenKind::ReadCapability => self.read_capability_max_ttl,
            TokenKind::Oidc => self.oidc_max_ttl,
        }
    }

    fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> [u8; CHECKPOINT_SIGNATURE_LEN] {
        self.checkpoint.sign(checkpoint)
    }

    fn sign_chained_checkpoint(&self, checkpoint: &ChainedCheckpoint) -> [u8; CHECKPOINT_SIGNATURE_LEN] {
        self.checkpoint.sign_chained(checkpoint)
    }

    fn checkpoint_public_key(&self) -> CheckpointPublicKey {
        self.checkpoint.public()
    }
}

impl fmt::Debug for SoftwareAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareAuthority")
            .field("oidc_version", &self.current.version)
            .field("kid", &self.current.kid)
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|(r, k)| (r.version, &k.kid))
                    .collect::<Vec<_>>(),
            )
            .field("read_capability_max_ttl", &self.read_capability_max_ttl)
            .field("oidc_max_ttl", &self.oidc_max_ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::IssuerUrl;
    use agentkeys_core::{AgentId, OwnerId};
    use jsonwebtoken::{DecodingKey, Validation};

    const NOW: UnixTime = 1_700_000_000;

    fn seed() -> MasterSeed {
        MasterSeed::from_bytes([42; 32])
    }

    fn claims(now: UnixTime) -> OidcClaims {
        let issuer: IssuerUrl = "https://mail.example.com".parse().unwrap();
        let owner: OwnerId = "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap();
        let agent: AgentId = "0x00000000000000000000000000000000000000a1"
            .parse()
            .unwrap();
        OidcClaims::builder(&issuer, &agent, &owner, now, now + 300).build()
    }

    fn decode(token: &str, jwk: &Jwk) -> OidcClaims {
        let key = DecodingKey::from_ec_components(&jwk.x, &jwk.y).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["sts.amazonaws.com"]);
        v.set_issuer(&["https://mail.example.com"]);
        v.validate_exp = false;
        jsonwebtoken::decode::<OidcClaims>(token, &key, &v)
            .unwrap()
            .claims
    }

    #[test]
    fn keys_are_deterministic_per_seed_and_version() {
        let a = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
        let b = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
        assert_eq!(a.jwks(NOW), b.jwks(NOW));
        assert_eq!(a.current_kid().len(), 22);
        let v2 = SoftwareAuthority::new(
            &seed(),
            AuthorityConfig {
                oidc_version: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_ne!(v2.current_kid(), a.current_kid());
        let other = SoftwareAuthority::new(
            &MasterSeed::from_bytes([43; 32]),
            AuthorityConfig::default(),
        )
        .unwrap();
        assert_ne!(other.current_kid(), a.current_kid());
    }

    #[test]
    fn jwk_shape() {
        let a = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
        let jwks = a.jwks(NOW);
        assert_eq!(jwks.keys.len(), 1);
        let k = &jwks.keys[0];
        assert_eq!(
            (
                k.kty.as_str(),
                k.crv.as_str(),
                k.alg.as_str(),
                k.use_.as_str()
            ),
            ("EC", "P-256", "ES256", "sig")
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(&k.x).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&k.y).unwrap().len(), 32);
        let json = jwks.to_json();
        let mut fields: Vec<_> = json["keys"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        fields.sort();
        assert_eq!(fields, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        // The kid is the hash of the published point.
        let mut sec1 = vec![4u8];
        sec1.extend(URL_SAFE_NO_PAD.decode(&k.x).unwrap());
        sec1.extend(URL_SAFE_NO_PAD.decode(&k.y).unwrap());
        assert_eq!(kid_for_sec1(&sec1), k.kid);
    }

    #[test]
    fn signed_jwt_verifies_against_the_jwks() {
        let a = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
        let c = claims(NOW);
        let token = a.sign_oidc(&c).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(a.current_kid()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let jwks = a.jwks(NOW);
        assert_eq!(decode(&token, jwks.find(a.current_kid()).unwrap()), c);
        // A raw ES256 signature is 64 bytes (r || s), not DER.
        let sig = URL_SAFE_NO_PAD
            .decode(token.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64);
    }

    #[test]
    fn rotation_keeps_the_previous_key_until_its_tokens_expire() {
        let v1 = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
        let old_token = v1.sign_oidc(&claims(NOW)).unwrap();
        let retired_at = NOW + 10;
        let config = AuthorityConfig {
            oidc_version: 2,
            previous_oidc_versions: vec![RetiredOidcKey {
                version: 1,
                retired_at,
            }],
            oidc_max_ttl: 900,
            ..Default::default()
        };
        let v2 = SoftwareAuthority::new(&seed(), config).unwrap();
        let jwks = v2.jwks(retired_at);
        assert_eq!(jwks.keys.len(), 2);
        assert_eq!(jwks.keys[0].kid, v2.current_kid());
        // The old token still verifies through the JWKS of the new authority.
        let old_kid = jsonwebtoken::decode_header(&old_token)
            .unwrap()
            .kid
            .unwrap();
        assert_eq!(old_kid, v1.current_kid());
        decode(&old_token, jwks.find(&old_kid).unwrap());
        // New tokens carry the new kid.
        let new_kid = jsonwebtoken::decode_header(v2.sign_oidc(&claims(NOW)).unwrap())
            .unwrap()
            .kid
            .unwrap();
        assert_eq!(new_kid, v2.current_kid());
        // Published until retired_at + max TTL, then dropped.
        assert_eq!(v2.jwks(retired_at + 899).keys.len(), 2);
        assert_eq!(v2.jwks(retired_at + 900).keys.len(), 1);
    }

    #[test]
    fn capability_round_trip_through_the_trait() {
        let a: Box<dyn TokenAuthority> =
            Box::new(SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap());
        let claims = CapabilityClaims {
            owner: "0x00000000000000000000000000000000000000aa"
                .parse()
                .unwrap(),
            inbox: "bot@agents.localhost".parse().unwrap(),
            issued_at: NOW,
            expires_at: NOW + 60,
            jti: "j".into(),
        };
        let token = a.sign_capability(&claims).unwrap();
        assert_eq!(a.verify_capability(&token, NOW).unwrap().jti(), "j");
        // Same seed as CapabilityKey::derive: the label is capability/v1.
        assert!(CapabilityKey::derive(&seed()).verify(&token, NOW).is_ok());
    }

    #[test]
    fn config_problems_are_reported_together() {
        let config = AuthorityConfig {
            oidc_version: 0,
            previous_oidc_versions: vec![
                RetiredOidcKey {
                    version: 0,
                    retired_at: 0,
                },
                RetiredOidcKey {
                    version: 3,
                    retired_at: 0,
                },
                RetiredOidcKey {
                    version: 3,
                    retired_at: 0,
                },
            ],
            read_capability_max_ttl: 1_801,
            oidc_max_ttl: 59,
        };
        let Err(AuthorityError::Config(msg)) = SoftwareAuthority::new(&seed(), config) else {
            panic!("config accepted");
        };
        for needle in [
            "oidc_version must be at least 1",
            "previous_oidc_versions[0]: version must be at least 1",
            "previous_oidc_versions[0]: version 0 is the current version",
            "previous_oidc_versions[2]: version 3 listed twice",
            "read_capability_max_ttl = 1801 s is outside 60..=1800 s",
            "oidc_max_ttl = 59 s is outside 60..=3600 s",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg}");
        }
        let a = SoftwareAuthority::new(
            &seed(),
            AuthorityConfig {
                read_capability_max_ttl: 600,
                oidc_max_ttl: 60,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(a.max_token_ttl(TokenKind::ReadCapability), 600);
        assert_eq!(a.max_token_ttl(TokenKind::Oidc), 60);
    }

    #[test]
    fn invalid_scalars_are_rederived_with_a_counter() {
        // 0 and 0xff…ff (≥ the group order) are not valid scalars.
        let seen = std::cell::RefCell::new(Vec::new());
        let source = |label: &str| {
            seen.borrow_mut().push(label.to_owned());
            match label {
                "oidc/issuer/v1" => [0xff; 32],
                "oidc/issuer/v1#1" => [0; 32],
                _ => seed().derive(label),
            }
        };
        let key = derive_p256("oidc/issuer/v1", source).unwrap();
        assert_eq!(
            *seen.borrow(),
            ["oidc/issuer/v1", "oidc/issuer/v1#1", "oidc/issuer/v1#2"]
        );
        assert_eq!(key.to_bytes(), seed().derive("oidc/issuer/v1#2").into());
        // A valid first attempt uses the plain label.
        let direct = derive_p256("oidc/issuer/v1", |l| seed().derive(l)).unwrap();
        assert_eq!(direct.to_bytes(), seed().derive("oidc/issuer/v1").into());
        // A source that never yields a scalar gives up with an error.
        let err = derive_p256("x", |_| [0; 32]).unwrap_err();
        assert!(matches!(
            err,
            AuthorityError::KeyDerivation {
                attempts: MAX_P256_DERIVATION_ATTEMPTS,
                ..
            }
        ));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let a = SoftwareAuthority::new(&seed(), AuthorityConfig::default()).unwrap();
        let d = format!("{a:?}");
        assert!(d.contains(a.current_kid()) && !d.contains("encoding_key"));
    }
}
