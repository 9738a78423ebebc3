//! Subscription secrets: generated here, shown to the owner once as
//! `whsec_<base64>`, stored sealed (XChaCha20-Poly1305 under a key derived
//! from the master seed, the subscription id as associated data, so a sealed
//! secret moved to another row does not open), and opened only to sign.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use zeroize::{Zeroize as _, Zeroizing};

/// Bytes of a subscription secret (Standard Webhooks allows 24 to 64).
pub const SECRET_BYTES: usize = 32;
/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// The seed derivation label of the sealing key (a rotation is a new label).
pub const SEALING_KEY_LABEL: &str = "webhook-secret-seal/v1";
/// XChaCha20-Poly1305 nonce length.
const NONCE_BYTES: usize = 24;

/// A subscription's signing secret. `Debug` never shows it; dropped, it is wiped.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// A fresh random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(Zeroizing::new(bytes))
    }

    /// A secret of given bytes (test vectors).
    #[cfg(test)]
    pub(crate) fn from_bytes_for_tests(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key bytes (the HMAC key).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `whsec_<base64>`: what the owner is shown once and gives the receiver.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(self.as_bytes())))
    }
}

/// A sealed secret did not open: wrong key (another seed), another row, or damage.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret cannot be opened (sealed under another master seed, or damaged)")]
pub struct SealError;

/// Seals and opens secrets under one seed-derived key.
#[derive(Clone)]
pub struct SecretSealer {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSealer(<redacted>)")
    }
}

impl SecretSealer {
    /// A sealer over `key` (derive it with [`SEALING_KEY_LABEL`] from the master seed).
    pub fn new(mut key: [u8; 32]) -> Self {
        let sealer = Self { key: Zeroizing::new(key) };
        key.zeroize();
        sealer
    }

    /// `nonce || ciphertext` of `secret`, bound to `subscription`.
    pub fn seal(&self, subscription: &str, secret: &WebhookSecret) -> Result<Vec<u8>, SealError> {
        let cipher = XChaCha20Poly1305::new_from_slice(self.key.as_ref()).map_err(|_| SealError)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret.as_bytes(), aad: subscription.as_bytes() })
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made for `subscription`.
    pub fn open(&self, subscription: &str, sealed: &[u8]) -> Result<WebhookSecret, SealError> {
        if sealed.len() < NONCE_BYTES {
            return Err(SealError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let cipher = XChaCha20Poly1305::new_from_slice(self.key.as_ref()).map_err(|_| SealError)?;
        let plain = cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: subscription.as_bytes() })
            .map_err(|_| SealError)?;
        Ok(WebhookSecret(Zeroizing::new(plain)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_subscription_and_key() {
        let sealer = SecretSealer::new([7; 32]);
        let secret = WebhookSecret::generate();
        let sealed = sealer.seal("wh_a", &secret).unwrap();
        assert_eq!(sealer.open("wh_a", &sealed).unwrap().as_bytes(), secret.as_bytes());
        assert!(sealer.open("wh_b", &sealed).is_err());
        assert!(SecretSealer::new([8; 32]).open("wh_a", &sealed).is_err());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(sealer.open("wh_a", &damaged).is_err());
        assert!(sealer.open("wh_a", &sealed[..10]).is_err());
    }

    #[test]
    fn secrets_are_whsec_base64_of_32_random_bytes_and_never_debug_printed() {
        let a = WebhookSecret::generate();
        let text = a.to_text();
        assert!(text.starts_with(SECRET_PREFIX));
        assert_eq!(STANDARD.decode(&text[SECRET_PREFIX.len()..]).unwrap(), a.as_bytes());
        assert_eq!(a.as_bytes().len(), SECRET_BYTES);
        assert_ne!(a.as_bytes(), WebhookSecret::generate().as_bytes());
        assert_eq!(format!("{a:?}"), "WebhookSecret(<redacted>)");
    }
}
