//! The OTP extractor on arbitrary text: never panics, candidates are bounded
//! and well-formed.
#![no_main]

use agentkeys_agent::otp::{self, ALNUM_CODE_CHARS, MAX_CANDIDATES, NUMERIC_CODE_DIGITS, OtpKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (subject, body) = text.split_once('\n').unwrap_or((text, ""));
    let html = agentkeys_agent::html::to_text(body);
    let cands = otp::candidates_in(Some(subject), Some(body), Some(&html.text), &html.links);
    assert!(cands.len() <= MAX_CANDIDATES);
    for c in &cands {
        assert!((0.0..=1.0).contains(&c.confidence));
        match c.kind {
            OtpKind::NumericCode => {
                let code = c.code.as_deref().unwrap();
                assert!(code.chars().all(|ch| ch.is_ascii_digit()));
                assert!(NUMERIC_CODE_DIGITS.contains(&code.len()));
            }
            OtpKind::AlphanumericCode => {
                let code = c.code.as_deref().unwrap();
                let n = code.chars().filter(char::is_ascii_alphanumeric).count();
                assert!(ALNUM_CODE_CHARS.contains(&n));
            }
            OtpKind::MagicLink => assert!(c.link.is_some()),
        }
    }
});
