//! A whole raw message through parsing and extraction: never panics.
#![no_main]

use agentkeys_agent::{message::ParsedMessage, otp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ParsedMessage::parse("01JDFUZZ00000000000000000", data, "mx.agents.localhost") {
        let _ = otp::extract(&m);
        for i in 0..m.attachments.len() {
            assert!(m.attachment(i).is_some());
        }
    }
});
