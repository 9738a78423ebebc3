//! AUTH steps 1–2 (`Credentials::parse`) over arbitrary usernames and passwords.
//!
//! Properties: never panics; a parse succeeds only for a valid address and a
//! well-formed key; the same input parses the same way twice (no hidden state).
#![no_main]

use agentkeys_core::{Address, AgentKey, Credentials, KeyHasher, MasterSeed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (user, pass) = text.split_once('\0').unwrap_or((text, ""));
    let hasher = KeyHasher::new(&MasterSeed::from_bytes([5; 32]));
    let first = Credentials::parse(user, pass, &hasher);
    let second = Credentials::parse(user, pass, &hasher);
    assert_eq!(first.is_ok(), second.is_ok());
    if first.is_ok() {
        assert!(user.parse::<Address>().is_ok(), "{user:?} is not an address");
        assert!(AgentKey::parse(pass).is_some(), "{pass:?} is not a key");
    }
});
