//! Read capabilities: short-lived bearer tokens for one inbox's blob prefix.
//!
//! Format: `akcap1.<base64url(JSON payload)>.<base64url(HMAC-SHA256)>`, no padding.
//! The MAC covers `akcap1.<payload>` (the format tag included, so a token of
//! another format can never verify as this one) under a key derived from the
//! master seed with label [`CAPABILITY_KEY_LABEL`]. The payload binds
//! `{owner, inbox, prefix "<owner>/<inbox>/", iat, exp, jti}`.
//!
//! Verification checks, in order: length, shape, MAC (constant time, before the
//! payload is parsed), payload, prefix consistency, expiry. The only way to a
//! [`ReadCapability`] is [`CapabilityKey::verify`], so holding one is proof that the
//! token was genuine and unexpired when checked.

use std::fmt;

use agentkeys_core::{Address, MasterSeed, OwnerId, UnixTime};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::error::CapabilityError;

/// Format tag, the first dot-separated part of every capability.
pub const CAPABILITY_FORMAT: &str = "akcap1";
/// HKDF label of the capability MAC key (DESIGN.md §6).
pub const CAPABILITY_KEY_LABEL: &str = "capability/v1";
/// Longest token accepted by [`CapabilityKey::verify`]; longer input is refused
/// before any decoding. Real tokens are about 300 characters.
pub const MAX_CAPABILITY_TOKEN_LEN: usize = 2_048;
/// Length of the MAC in bytes (full HMAC-SHA256 output, not truncated).
pub const CAPABILITY_MAC_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The blob prefix of one inbox: `<owner>/<inbox>/` (DESIGN.md §3).
pub fn blob_prefix(owner: &OwnerId, inbox: &Address) -> String {
    format!("{owner}/{inbox}/")
}

/// What the broker asks the authority to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityClaims {
    /// The inbox's owner.
    pub owner: OwnerId,
    /// The inbox the capability reads.
    pub inbox: Address,
    /// Issue time.
    pub issued_at: UnixTime,
    /// Expiry: the capability is refused at and after this second.
    pub expires_at: UnixTime,
    /// Unique id, recorded in the audit log.
    pub jti: String,
}

/// The signed payload. Field order is the serialization order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    owner: OwnerId,
    inbox: Address,
    prefix: String,
    iat: UnixTime,
    exp: UnixTime,
    jti: String,
}

/// A verified read capability. Only [`CapabilityKey::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCapability {
    owner: OwnerId,
    inbox: Address,
    prefix: String,
    issued_at: UnixTime,
    expires_at: UnixTime,
    jti: String,
}

impl ReadCapability {
    /// The inbox's owner.
    pub fn owner(&self) -> &OwnerId {
        &self.owner
    }
    /// The inbox it reads.
    pub fn inbox(&self) -> &Address {
        &self.inbox
    }
    /// The blob prefix it covers, `<owner>/<inbox>/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Issue time.
    pub fn issued_at(&self) -> UnixTime {
        self.issued_at
    }
    /// Expiry.
    pub fn expires_at(&self) -> UnixTime {
        self.expires_at
    }
    /// The token's unique id.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// Whether `blob_key` lies under this capability's prefix.
    ///
    /// The key must start with the prefix and every path component after it must be
    /// a plain name (non-empty, not starting with `.`, only `A-Z a-z 0-9 . _ @ -`),
    /// so `..`, `.`, empty components, backslashes and percent-escapes are refused
    /// even when the text starts with the prefix.
    pub fn allows(&self, blob_key: &str) -> bool {
        let Some(rest) = blob_key.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        let plain = |c: &str| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        };
        !rest.is_empty() && rest.split('/').all(plain)
    }
}

/// The capability MAC key. `Debug` is redacted; the bytes are wiped on drop.
#[derive(Clone)]
pub struct CapabilityKey([u8; 32]);

impl CapabilityKey {
    /// Derives the key from the master seed (label [`CAPABILITY_KEY_LABEL`]).
    pub fn derive(seed: &MasterSeed) -> Self {
        Self(seed.derive(CAPABILITY_KEY_LABEL))
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, signed_part: &[u8]) -> [u8; CAPABILITY_MAC_LEN] {
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(signed_part);
        mac.finalize().into_bytes().into()
    }

    /// Signs `claims` into a compact capability token.
    pub fn sign(&self, claims: &CapabilityClaims) -> String {
        let payload = Payload {
            owner: claims.owner.clone(),
            inbox: claims.inbox.clone(),
            prefix: blob_prefix(&claims.owner, &claims.inbox),
            iat: claims.issued_at,
            exp: claims.expires_at,
            jti: claims.jti.clone(),
        };
        let json = match serde_json::to_vec(&payload) {
            Ok(json) => json,
            // Strings and integers only: serialization cannot fail.
            Err(_) => unreachable!("capability payload serializes"),
        };
        let signed_part = format!("{CAPABILITY_FORMAT}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = self.mac(signed_part.as_bytes());
        format!("{signed_part}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Verifies `token` at `now`: genuine, well-formed and unexpired.
    pub fn verify(&self, token: &str, now: UnixTime) -> Result<ReadCapability, CapabilityError> {
        if token.len() > MAX_CAPABILITY_TOKEN_LEN {
            return Err(CapabilityError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(format), Some(payload_b64), Some(mac_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CapabilityError::Malformed);
        };
        if format != CAPABILITY_FORMAT {
            return Err(CapabilityError::Malformed);
        }
        let presented = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| CapabilityError::Malformed)?;
        if presented.len() != CAPABILITY_MAC_LEN {
            return Err(CapabilityError::Malformed);
        }
        let signed_part = &token[..format.len() + 1 + payload_b64.len()];
        let expected = self.mac(signed_part.as_bytes());
        if !bool::from(expected.as_slice().ct_eq(presented.as_slice())) {
            return Err(CapabilityError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| CapabilityError::Malformed)?;
        let p: Payload = serde_json::from_slice(&json).map_err(|_| CapabilityError::Malformed)?;
        if p.prefix != blob_prefix(&p.owner, &p.inbox) || p.exp <= p.iat {
            return Err(CapabilityError::Malformed);
        }
        if now >= p.exp {
            return Err(CapabilityError::Expired);
        }
        Ok(ReadCapability {
            owner: p.owner,
            inbox: p.inbox,
            prefix: p.prefix,
            issued_at: p.iat,
            expires_at: p.exp,
            jti: p.jti,
        })
    }
}

impl Drop for CapabilityKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for CapabilityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CapabilityKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_700_000_000;
    const OWNER: &str = "0x00000000000000000000000000000000000000aa";

    fn key() -> CapabilityKey {
        CapabilityKey::derive(&MasterSeed::from_bytes([3; 32]))
    }

    fn claims() -> CapabilityClaims {
        CapabilityClaims {
            owner: OWNER.parse().unwrap(),
            inbox: "bot-1@agents.localhost".parse().unwrap(),
            issued_at: NOW,
            expires_at: NOW + 300,
            jti: "jti-1".into(),
        }
    }

    /// Re-signs an arbitrary payload with the real key, to test payload checks
    /// that sit behind the MAC.
    fn forge_with_key(key: &CapabilityKey, payload: &serde_json::Value) -> String {
        let signed = format!(
            "{CAPABILITY_FORMAT}.{}",
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(key.mac(signed.as_bytes()))
        )
    }

    #[test]
    fn round_trip() {
        let token = key().sign(&claims());
        assert!(token.starts_with("akcap1.") && token.split('.').count() == 3);
        assert!(token.len() < MAX_CAPABILITY_TOKEN_LEN);
        let cap = key().verify(&token, NOW).unwrap();
        assert_eq!(cap.owner().as_str(), OWNER);
        assert_eq!(cap.inbox().as_str(), "bot-1@agents.localhost");
        assert_eq!(cap.prefix(), format!("{OWNER}/bot-1@agents.localhost/"));
        assert_eq!(
            (cap.issued_at(), cap.expires_at(), cap.jti()),
            (NOW, NOW + 300, "jti-1")
        );
        // The payload is plain JSON with exactly the bound fields.
        let payload: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let mut fields: Vec<_> = payload.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(fields, ["exp", "iat", "inbox", "jti", "owner", "prefix"]);
    }

    #[test]
    fn expiry_boundary() {
        let token = key().sign(&claims());
        assert!(key().verify(&token, NOW + 299).is_ok());
        assert_eq!(
            key().verify(&token, NOW + 300),
            Err(CapabilityError::Expired)
        );
        assert_eq!(
            key().verify(&token, NOW + 10_000),
            Err(CapabilityError::Expired)
        );
    }

    #[test]
    fn other_key_or_seed_does_not_verify() {
        let token = key().sign(&claims());
        let other = CapabilityKey::derive(&MasterSeed::from_bytes([4; 32]));
        assert_eq!(
            other.verify(&token, NOW),
            Err(CapabilityError::BadSignature)
        );
        // The label separates it from other seed-derived keys.
        let seed = MasterSeed::from_bytes([3; 32]);
        let wrong_label = CapabilityKey::from_bytes(seed.derive("capability/v2"));
        assert_eq!(
            wrong_label.verify(&token, NOW),
            Err(CapabilityError::BadSignature)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let k = key();
        let token = k.sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();

        // Another payload (another owner's inbox) with the original MAC.
        let mut other = claims();
        other.owner = "0x00000000000000000000000000000000000000bb"
            .parse()
            .unwrap();
        let other_token = k.sign(&other);
        let other_payload = other_token.split('.').nth(1).unwrap();
        let spliced = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
        assert_eq!(k.verify(&spliced, NOW), Err(CapabilityError::BadSignature));

        // Every single-character change of the payload or MAC.
        let flip = |c: char| if c == 'A' { 'B' } else { 'A' };
        for i in parts[0].len() + 1..token.len() {
            if token.as_bytes()[i] == b'.' {
                continue;
            }
            let mut t: Vec<char> = token.chars().collect();
            t[i] = flip(t[i]);
            let t: String = t.into_iter().collect();
            assert!(k.verify(&t, NOW).is_err(), "change at {i} accepted");
        }

        // A longer expiry, re-encoded without re-signing.
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["exp"] = serde_json::json!(NOW + 1_000_000);
        let extended = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        assert_eq!(k.verify(&extended, NOW), Err(CapabilityError::BadSignature));

        // Truncated MAC.
        let short_mac = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        assert_eq!(k.verify(&short_mac, NOW), Err(CapabilityError::Malformed));
    }

    #[test]
    fn malformed_tokens() {
        let k = key();
        let token = k.sign(&claims());
        let (body, mac) = token.rsplit_once('.').unwrap();
        let too_long = format!("{token}{}", "A".repeat(MAX_CAPABILITY_TOKEN_LEN));
        let padded_mac = format!("{token}=");
        let cases = [
            String::new(),
            "akcap1".into(),
            "akcap1..".into(),
            format!("{token}.extra"),
            token.replacen("akcap1", "akcap2", 1),
            token.replacen("akcap1", "AKCAP1", 1),
            format!("{body}.{mac}!"),
            padded_mac,
            too_long,
        ];
        for t in &cases {
            assert_eq!(k.verify(t, NOW), Err(CapabilityError::Malformed), "{t:?}");
        }
    }

    #[test]
    fn payload_checks_behind_the_mac() {
        let k = key();
        let good = serde_json::json!({
            "owner": OWNER, "inbox": "bot-1@agents.localhost",
            "prefix": format!("{OWNER}/bot-1@agents.localhost/"),
            "iat": NOW, "exp": NOW + 60, "jti": "j",
        });
        assert!(k.verify(&forge_with_key(&k, &good), NOW).is_ok());
        let mut wrong_prefix = good.clone();
        wrong_prefix["prefix"] = serde_json::json!(format!("{OWNER}/"));
        let mut extra_field = good.clone();
        extra_field["admin"] = serde_json::json!(true);
        let mut bad_owner = good.clone();
        bad_owner["owner"] = serde_json::json!("0x12");
        let mut inverted = good.clone();
        inverted["exp"] = serde_json::json!(NOW - 1);
        for p in [wrong_prefix, extra_field, bad_owner, inverted] {
            assert_eq!(
                k.verify(&forge_with_key(&k, &p), NOW),
                Err(CapabilityError::Malformed),
                "{p}"
            );
        }
        // Not JSON at all.
        let signed = format!("{CAPABILITY_FORMAT}.{}", URL_SAFE_NO_PAD.encode("not json"));
        let t = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(k.mac(signed.as_bytes()))
        );
        assert_eq!(k.verify(&t, NOW), Err(CapabilityError::Malformed));
    }

    #[test]
    fn allows_only_plain_keys_under_the_prefix() {
        let cap = key().verify(&key().sign(&claims()), NOW).unwrap();
        let p = cap.prefix().to_owned();
        assert!(cap.allows(&format!("{p}01HZX3K9Q8W7E6R5T4Y3U2I1O0.eml")));
        assert!(cap.allows(&format!("{p}sub/01H.eml")));
        let other_owner = "0x00000000000000000000000000000000000000bb/bot-1@agents.localhost/x.eml";
        let refused = [
            p.clone(),
            p.trim_end_matches('/').to_owned(),
            format!("{OWNER}/bot-1@agents.localhost.evil/x.eml"),
            format!("{OWNER}/bot-10@agents.localhost/x.eml"),
            format!("{OWNER}/other@agents.localhost/x.eml"),
            other_owner.to_owned(),
            format!("{p}../other@agents.localhost/x.eml"),
            format!("{p}a/../../x.eml"),
            format!("{p}./x.eml"),
            format!("{p}.hidden"),
            format!("{p}a//b"),
            format!("{p}x/"),
            format!("{p}%2e%2e/x"),
            format!("{p}..%2fx"),
            format!("{p}a\\..\\b"),
            format!("{p}a b"),
            format!("/{p}x.eml"),
            format!("{}x.eml", p.to_uppercase()),
        ];
        for k in &refused {
            assert!(!cap.allows(k), "{k:?} allowed");
        }
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key()), "CapabilityKey(<redacted>)");
    }
}
