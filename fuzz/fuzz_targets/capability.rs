//! Read-capability verification over arbitrary tokens.
//!
//! Properties: never panics; an arbitrary string never verifies (that would be a
//! MAC forgery); a genuine token with one byte changed never verifies.
#![no_main]

use agentkeys_broker::{CapabilityClaims, CapabilityKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = CapabilityKey::from_bytes([9; 32]);
    let now = 1_700_000_000;
    if let Ok(token) = std::str::from_utf8(data) {
        assert!(key.verify(token, now).is_err(), "an arbitrary token verified: {token:?}");
    }
    // A genuine token, then the same token with one byte flipped where the input says.
    let claims = CapabilityClaims {
        owner: "0x1111111111111111111111111111111111111111".parse().unwrap(),
        inbox: "bot@agents.localhost".parse().unwrap(),
        issued_at: now,
        expires_at: now + 300,
        jti: "jti".into(),
    };
    let token = key.sign(&claims);
    let verified = key.verify(&token, now).expect("a genuine token verifies");
    assert_eq!(verified.inbox().as_str(), "bot@agents.localhost");
    if let Some((&at, rest)) = data.split_first() {
        let mut bytes = token.into_bytes();
        let i = usize::from(at) % bytes.len();
        let flip = rest.first().copied().unwrap_or(1) | 1;
        bytes[i] ^= flip;
        if let Ok(changed) = String::from_utf8(bytes) {
            assert!(key.verify(&changed, now).is_err(), "a changed token verified");
        }
    }
});
