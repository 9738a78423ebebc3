//! Third-party addresses in audit records: a keyed hash, so the log can show that
//! the same address came back without showing the address.

use agentkeys_core::MasterSeed;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HKDF label of the address-hashing key (DESIGN.md §6). A rotation is a new label.
pub const ADDRESS_KEY_LABEL: &str = "audit/address/v1";

/// The address-hashing key, derived from the master seed under [`ADDRESS_KEY_LABEL`].
pub fn address_key(seed: &MasterSeed) -> [u8; 32] {
    seed.derive(ADDRESS_KEY_LABEL)
}

/// `HMAC-SHA256(key, lowercase(trim(addr)))` as 64 lowercase hex digits.
///
/// The address is trimmed and lowercased first, so `Alice@Example.COM` and
/// `alice@example.com` hash alike. Without the key (derived from the master seed)
/// the hash cannot be tested against a list of guessed addresses.
pub fn hash_address(key: &[u8; 32], addr: &str) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(addr.trim().to_lowercase().as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_normalised_and_opaque() {
        let k1 = address_key(&MasterSeed::from_bytes([1; 32]));
        let k2 = address_key(&MasterSeed::from_bytes([2; 32]));
        let h = hash_address(&k1, "alice@example.com");
        assert_eq!(h.len(), 64);
        assert!(!h.contains("alice"));
        assert_eq!(hash_address(&k1, " Alice@Example.COM "), h);
        assert_ne!(hash_address(&k2, "alice@example.com"), h);
        assert_ne!(hash_address(&k1, "bob@example.com"), h);
        assert_ne!(k1, MasterSeed::from_bytes([1; 32]).derive("agent-key-hash/v1"));
    }
}
