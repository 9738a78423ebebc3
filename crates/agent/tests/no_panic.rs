//! Property tests on generated and mutated input (the ordinary-toolchain
//! stand-in for `crates/agent/fuzz`): the Authentication-Results parser, the
//! HTML converter, the OTP extractor and whole-message parsing never panic, and
//! what they return respects their limits and shapes. Deterministic (fixed
//! seeds), bounded in iterations.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use agentkeys_agent::auth_results::{
    self, Authentication, MAX_PROPERTIES_PER_RESULT, MAX_RESULTS_PER_HEADER,
};
use agentkeys_agent::html::{self, MAX_LINKS, MAX_URL_LEN};
use agentkeys_agent::message::ParsedMessage;
use agentkeys_agent::otp::{self, ALNUM_CODE_CHARS, MAX_CANDIDATES, NUMERIC_CODE_DIGITS, OtpKind};

/// xorshift64*: small, deterministic, good enough to generate test input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces that exercise the parsers' corners.
const PIECES: &[&str] = &[
    "mx.agents.localhost",
    ";",
    "=",
    "(",
    ")",
    "\\",
    "\"",
    ".",
    "/",
    "@",
    " ",
    "\t",
    "\r\n\t",
    "\r\n",
    "dkim",
    "spf",
    "dmarc",
    "pass",
    "fail",
    "header.d",
    "header.i",
    "smtp.mailfrom",
    "reason",
    "example.com",
    "none",
    "(comment (nested))",
    "é",
    "验证码",
    "コード",
    "code",
    "Code:",
    "verification",
    "123456",
    "4 8 2 9 1 3",
    "482-913",
    "+1 415 555 0100",
    "2026-11-21",
    "10:30",
    "$19.99",
    "#1234",
    "<a href=\"https://x.example/verify?t=Ab12Cd34Ef56Gh78\">Verify</a>",
    "<td>1</td>",
    "<table>",
    "</td>",
    "<!--",
    "-->",
    "<style>",
    "</style>",
    "<",
    ">",
    "&amp;",
    "&#x",
    "&#12345678;",
    "https://",
    "www.",
    "\u{200b}",
    "\u{ff11}",
    "\u{a0}",
    "X7K9QP",
    "7KQ2-X9MZ",
    "order",
    "unsubscribe",
    "\n",
    "\n\n",
    "\u{1}",
    "\u{0}",
    "\u{fffd}",
];

fn generated(rng: &mut Rng, max_pieces: usize) -> String {
    let n = rng.below(max_pieces) + 1;
    (0..n).map(|_| *rng.pick(PIECES)).collect()
}

fn check_candidates(subject: &str, text: &str, html_body: &str) {
    let h = html::to_text(html_body);
    assert!(h.links.len() <= MAX_LINKS);
    assert!(
        h.links
            .iter()
            .all(|l| !l.url.is_empty() && l.url.len() <= MAX_URL_LEN)
    );
    let cands = otp::candidates_in(Some(subject), Some(text), Some(&h.text), &h.links);
    assert!(cands.len() <= MAX_CANDIDATES);
    for c in &cands {
        assert!((0.0..=1.0).contains(&c.confidence), "{c:?}");
        match c.kind {
            OtpKind::NumericCode => {
                let code = c.code.as_deref().unwrap();
                assert!(code.chars().all(|ch| ch.is_ascii_digit()), "{c:?}");
                assert!(NUMERIC_CODE_DIGITS.contains(&code.len()), "{c:?}");
            }
            OtpKind::AlphanumericCode => {
                let code = c.code.as_deref().unwrap();
                assert!(
                    code.chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '-'),
                    "{c:?}"
                );
                let n = code.chars().filter(char::is_ascii_alphanumeric).count();
                assert!(ALNUM_CODE_CHARS.contains(&n), "{c:?}");
            }
            OtpKind::MagicLink => {
                let l = c.link.as_deref().unwrap().to_ascii_lowercase();
                assert!(
                    l.starts_with("http://") || l.starts_with("https://") || l.starts_with("www."),
                    "{c:?}"
                );
                assert!(!l.contains("unsubscribe"), "{c:?}");
            }
        }
    }
}

#[test]
fn auth_results_parser_properties() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..3000 {
        let v = generated(&mut rng, 40);
        if let Ok(h) = auth_results::parse(&v) {
            assert!(!h.authserv_id.is_empty(), "{v:?}");
            assert!(h.results.len() <= MAX_RESULTS_PER_HEADER);
            for r in &h.results {
                assert!(r.properties.len() <= MAX_PROPERTIES_PER_RESULT);
                assert_eq!(r.method, r.method.to_ascii_lowercase());
                assert!(!r.method.is_empty() && !r.result.is_empty(), "{v:?}");
            }
        }
        let a = Authentication::evaluate([v.as_str()], "mx.agents.localhost", Some("example.com"));
        if a.authenticated {
            assert!(a.verdicts_present, "{v:?}");
        }
        // Another host's header never authenticates, whatever it says.
        let other = v.replace("mx.agents.localhost", "mx.other.example");
        let a =
            Authentication::evaluate([other.as_str()], "mx.agents.localhost", Some("example.com"));
        assert!(!a.authenticated, "{other:?}");
    }
}

#[test]
fn extractor_properties_on_generated_text() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..1500 {
        let subject = generated(&mut rng, 8);
        let text = generated(&mut rng, 60);
        let html_body = generated(&mut rng, 60);
        check_candidates(&subject, &text, &html_body);
    }
}

#[test]
fn extractor_properties_on_random_unicode() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..1000 {
        let len = rng.below(400);
        let s: String = (0..len)
            .map(|_| match rng.below(4) {
                0 => char::from(b' ' + rng.below(95) as u8),
                1 => char::from(b'0' + rng.below(10) as u8),
                2 => [' ', '\n', '\t', '-', ':', '<', '>', '&', ';'][rng.below(9)],
                _ => char::from_u32(rng.below(0x3_0000) as u32).unwrap_or('?'),
            })
            .collect();
        check_candidates(&s, &s, &s);
    }
}

#[test]
fn message_parsing_survives_mutated_corpus_mails() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/otp");
    let mut mails: Vec<Vec<u8>> = Vec::new();
    for sub in ["positive", "negative"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "eml") {
                mails.push(std::fs::read(p).unwrap());
            }
        }
    }
    assert!(!mails.is_empty());
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..400 {
        let mut m = rng.pick(&mails).clone();
        for _ in 0..rng.below(8) + 1 {
            if m.is_empty() {
                break;
            }
            let at = rng.below(m.len());
            match rng.below(4) {
                0 => m[at] = rng.next() as u8,
                1 => {
                    let piece = rng.pick(PIECES).as_bytes().to_vec();
                    m.splice(at..at, piece);
                }
                2 => m.truncate(at),
                _ => {
                    let end = (at + rng.below(64)).min(m.len());
                    m.drain(at..end);
                }
            }
        }
        if let Ok(p) = ParsedMessage::parse("01JDMUTANT0000000000000000", &m, "mx.agents.localhost")
        {
            if let Some(o) = otp::extract(&p) {
                assert!((0.0..=1.0).contains(&o.confidence));
                assert!(!o.ambiguous || o.confidence <= otp::AMBIGUOUS_CONFIDENCE_CAP);
            }
            for i in 0..p.attachments.len() {
                assert!(p.attachment(i).is_some());
            }
        }
    }
}
