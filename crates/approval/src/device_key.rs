//! The agent's device key (Ed25519) and the agent id derived from it.
//!
//! `agentkeys agent pair` generates a device key; the agent id is a function of its
//! public half (`0x` + hex of the first 20 bytes of SHA-256(public key)), so nobody
//! can pair an agent id without holding its key.

use std::fmt;

use agentkeys_core::AgentId;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::codes::PairCode;
use crate::master_key::SECRET_SEED_LEN;
use crate::public_key::{PUBLIC_KEY_LEN, PublicKey, Signature};

/// Bytes of SHA-256(public key) that make up an agent id.
pub const AGENT_ID_BYTES: usize = 20;
/// First line of the message a device signs to collect its agent key.
pub const COLLECT_PREFIX: &str = "AGENTKEYS-PAIR-COLLECT-V1";

/// The agent id of a device public key: `0x` + lowercase hex of the first 20
/// bytes of SHA-256 over the 32 raw public-key bytes.
pub fn agent_id_from_device_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> AgentId {
    let digest = Sha256::digest(public_key);
    let id = format!("0x{}", crate::hex(&digest[..AGENT_ID_BYTES]));
    match id.parse() {
        Ok(id) => id,
        Err(_) => unreachable!("0x + 40 lowercase hex digits is a valid agent id"),
    }
}

/// The message a device signs to collect the agent key of an approved pairing:
/// `"AGENTKEYS-PAIR-COLLECT-V1\n{pair code}\n{agent id}"`.
pub fn collect_message(pair_code: &PairCode, agent_id: &AgentId) -> Vec<u8> {
    format!("{COLLECT_PREFIX}\n{pair_code}\n{agent_id}").into_bytes()
}

/// An agent's Ed25519 device key. `Debug` is redacted; the secret is zeroized on drop.
pub struct DeviceKey {
    signing: SigningKey,
}

impl DeviceKey {
    /// Draws a fresh key from a cryptographic random source.
    pub fn generate(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; SECRET_SEED_LEN]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// Rebuilds a key from its 32-byte secret seed.
    pub fn from_seed(seed: &[u8; SECRET_SEED_LEN]) -> Self {
        Self { signing: SigningKey::from_bytes(seed) }
    }

    /// The secret seed, for the agent to keep in its own 0600 state file.
    pub fn to_seed(&self) -> Zeroizing<[u8; SECRET_SEED_LEN]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public half, sent when opening a pairing request.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.signing.verifying_key())
    }

    /// The agent id this key stands for.
    pub fn agent_id(&self) -> AgentId {
        agent_id_from_device_key(&self.public_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }

    /// Signs the [`collect_message`] for `pair_code`, proving the poller holds this key.
    pub fn sign_collect(&self, pair_code: &PairCode) -> Signature {
        self.sign(&collect_message(pair_code, &self.agent_id()))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("agent_id", &self.agent_id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_vector() {
        // SHA-256 of 32 zero bytes is 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925.
        assert_eq!(agent_id_from_device_key(&[0; 32]).as_str(), "0x66687aadf862bd776c8fc18b8e9f8e2008971485");
        let key = DeviceKey::from_seed(&[0x11; 32]);
        assert_eq!(key.agent_id(), agent_id_from_device_key(&key.public_key().to_bytes()));
    }

    #[test]
    fn debug_is_redacted() {
        let key = DeviceKey::from_seed(&[0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>") && !shown.contains("4242"), "{shown}");
    }

    #[test]
    fn collect_signature_verifies_with_the_public_key() {
        let key = DeviceKey::from_seed(&[5; 32]);
        let code: PairCode = "ABCD-EFGH".parse().unwrap();
        let sig = key.sign_collect(&code);
        assert!(key.public_key().verify_strict(&collect_message(&code, &key.agent_id()), &sig));
        let other: PairCode = "ABCD-EFGJ".parse().unwrap();
        assert!(!key.public_key().verify_strict(&collect_message(&other, &key.agent_id()), &sig));
    }
}
