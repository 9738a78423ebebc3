//! [`HeaderSummary`]: the few header facts an event or a listing carries, so a
//! listener can tell whether a message matters without fetching it.
//!
//! Taken once, when a message is indexed, from the stored copy's header
//! section (mail-parser decodes RFC 2047 words and charsets). Every field is
//! bounded and cleaned: at most [`MAX_SUMMARY_HEADER_BYTES`] of the message are
//! read, text is cut to a named number of characters, and control and
//! bidirectional-formatting characters are removed (they could hide or reorder
//! what a model or a terminal shows, and PostgreSQL text cannot hold NUL).
//!
//! **Taking a summary never fails.** A message whose headers cannot be parsed,
//! or are absurd, gets empty fields; it is stored, indexed and acknowledged like
//! any other (a sender's malformed `Subject:` must not lose mail).
//!
//! `header_from` is the message's `From:` **header** (RFC 5322), the field the
//! `authenticated` verdict is about, never the SMTP envelope sender. It is only
//! as trustworthy as `authenticated` says.
//!
//! ```
//! use agentkeys_store::HeaderSummary;
//!
//! let raw = b"Authentication-Results: mx.agents.localhost; dmarc=pass header.from=example.com\r\n\
//! From: =?utf-8?q?Caf=C3=A9?= <no-reply@example.com>\r\nSubject: =?utf-8?b?Q29kZTogMTIzNDU2?=\r\n\r\nbody";
//! let s = HeaderSummary::of_message(raw, "mx.agents.localhost");
//! let from = s.header_from.unwrap();
//! assert_eq!((from.address.as_str(), from.name.as_deref()), ("no-reply@example.com", Some("Café")));
//! assert_eq!(s.subject.as_deref(), Some("Code: 123456"));
//! assert!(s.authenticated);
//! ```

use agentkeys_core::auth_results::Authentication;
use mail_parser::{HeaderName, MessageParser};

/// Most bytes of a message read for its summary (its header section, normally
/// far smaller; a longer header section is summarized from this prefix).
pub const MAX_SUMMARY_HEADER_BYTES: usize = 64 * 1024;
/// Longest subject kept, in characters (a longer one is cut, with `…`).
pub const MAX_SUMMARY_SUBJECT_CHARS: usize = 200;
/// Longest `From:` display name kept, in characters (cut like the subject).
pub const MAX_SUMMARY_FROM_NAME_CHARS: usize = 100;
/// Longest `From:` address kept, in characters (RFC 5321's path limit); a
/// longer one is not an address anyone can use, so none is kept.
pub const MAX_SUMMARY_FROM_ADDRESS_CHARS: usize = 254;

/// The `From:` header's first mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderFrom {
    /// The address (`local@domain`), as written in the header.
    pub address: String,
    /// The display name, decoded, if any.
    pub name: Option<String>,
}

/// What an event and a listing say about a message besides its id and size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderSummary {
    /// The `From:` header (not the envelope sender), if it has a usable mailbox.
    pub header_from: Option<HeaderFrom>,
    /// The decoded `Subject:`, if any.
    pub subject: Option<String>,
    /// Our MX's verdict on `header_from`: DMARC passed, or a DKIM signature
    /// aligned with its domain passed (the rule of
    /// [`Authentication`](agentkeys_core::auth_results::Authentication)). False
    /// for mail that did not come through our MX with verdicts.
    pub authenticated: bool,
}

impl HeaderSummary {
    /// The summary of a stored copy. `authserv_id` is our MX's hostname: only
    /// the topmost `Authentication-Results` field, and only when it carries this
    /// id, is believed. Never fails and never panics (see the module docs).
    pub fn of_message(raw: &[u8], authserv_id: &str) -> Self {
        let head = &raw[..raw.len().min(MAX_SUMMARY_HEADER_BYTES)];
        let Some(msg) = MessageParser::default().parse_headers(head) else {
            return Self::default();
        };
        let first = msg.from().and_then(|a| a.first());
        let header_from = first.and_then(|a| {
            let address = clean(a.address()?);
            let address = address.trim();
            if address.is_empty() || address.chars().count() > MAX_SUMMARY_FROM_ADDRESS_CHARS {
                return None;
            }
            let name = a.name().map(|n| bounded(n, MAX_SUMMARY_FROM_NAME_CHARS)).filter(|n| !n.is_empty());
            Some(HeaderFrom { address: address.to_owned(), name })
        });
        let subject = msg.subject().map(|s| bounded(s, MAX_SUMMARY_SUBJECT_CHARS)).filter(|s| !s.is_empty());

        // The agent's rule (`agentkeys_agent::message`): exactly one From:
        // field with exactly one mailbox, or nothing is aligned with it.
        let from_fields = msg.headers().iter().filter(|h| matches!(h.name, HeaderName::From)).count();
        let single = from_fields == 1 && msg.from().is_some_and(|a| a.iter().count() == 1);
        let from_domain = single
            .then(|| first.and_then(|a| a.address()))
            .flatten()
            .and_then(|a| a.trim().rsplit_once('@').map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase()))
            .filter(|d| !d.is_empty());
        let ar_values = msg
            .headers_raw()
            .filter(|(name, _)| name.eq_ignore_ascii_case("Authentication-Results"))
            .map(|(_, value)| value);
        let authenticated = Authentication::evaluate(ar_values, authserv_id, from_domain.as_deref()).authenticated;
        Self { header_from, subject, authenticated }
    }
}

/// Whether `c` is removed from summary text: control characters (C0, DEL, C1)
/// and the bidirectional formatting characters that can reorder what is shown.
fn removed(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn clean(s: &str) -> String {
    s.chars().filter(|&c| !removed(c)).collect()
}

/// `s` cleaned, trimmed and cut to `max` characters (the last one `…` when cut).
fn bounded(s: &str, max: usize) -> String {
    let cleaned = clean(s);
    let trimmed = cleaned.trim();
    if trimmed.chars().count() <= max {
        return trimmed.to_owned();
    }
    let mut out: String = trimmed.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: &str = "mx.agents.localhost";

    #[test]
    fn limits_are_what_the_docs_say() {
        let long = "x".repeat(1000);
        let raw = format!("From: \"{long}\" <a@example.com>\r\nSubject: {long}\r\n\r\n");
        let s = HeaderSummary::of_message(raw.as_bytes(), US);
        assert_eq!(s.subject.as_ref().unwrap().chars().count(), MAX_SUMMARY_SUBJECT_CHARS);
        assert!(s.subject.unwrap().ends_with('…'));
        assert_eq!(s.header_from.unwrap().name.unwrap().chars().count(), MAX_SUMMARY_FROM_NAME_CHARS);
        let local = "l".repeat(MAX_SUMMARY_FROM_ADDRESS_CHARS);
        let raw = format!("From: {local}@example.com\r\n\r\n");
        assert_eq!(HeaderSummary::of_message(raw.as_bytes(), US).header_from, None);
    }

    #[test]
    fn only_the_header_section_prefix_is_read() {
        let mut raw = b"X-Pad: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_SUMMARY_HEADER_BYTES));
        raw.extend_from_slice(b"\r\nSubject: beyond the limit\r\n\r\n");
        assert_eq!(HeaderSummary::of_message(&raw, US).subject, None);
    }

    #[test]
    fn control_and_bidi_characters_are_removed() {
        let raw = "Subject: =?utf-8?q?a=00b=1Bc=E2=80=AEd=C2=85e?=\r\nFrom: =?utf-8?q?N=07ame?= <x@example.com>\r\n\r\n";
        let s = HeaderSummary::of_message(raw.as_bytes(), US);
        assert_eq!(s.subject.as_deref(), Some("abcde"));
        assert_eq!(s.header_from.unwrap().name.as_deref(), Some("Name"));
    }

    #[test]
    fn the_verdict_is_ours_and_about_the_single_header_from() {
        let ar = format!("Authentication-Results: {US}; dmarc=pass header.from=example.com\r\n");
        let one = format!("{ar}From: a@example.com\r\n\r\n");
        assert!(HeaderSummary::of_message(one.as_bytes(), US).authenticated);
        // Someone else's authserv-id, another From domain, two From fields: no.
        assert!(!HeaderSummary::of_message(one.as_bytes(), "mx.other.test").authenticated);
        let other = format!("{ar}From: a@evil.test\r\n\r\n");
        assert!(!HeaderSummary::of_message(other.as_bytes(), US).authenticated);
        let two = format!("{ar}From: a@example.com\r\nFrom: b@evil.test\r\n\r\n");
        assert!(!HeaderSummary::of_message(two.as_bytes(), US).authenticated);
        // Below a foreign one, ours is not the topmost.
        let below = format!("Authentication-Results: x.test; dmarc=fail\r\n{one}");
        assert!(!HeaderSummary::of_message(below.as_bytes(), US).authenticated);
    }

    #[test]
    fn nothing_parseable_is_an_empty_summary() {
        for raw in [&b""[..], b"\r\n\r\n", b"\xff\xfe\x00", b"From:\r\nSubject:\r\n\r\n"] {
            assert_eq!(HeaderSummary::of_message(raw, US), HeaderSummary::default(), "{raw:?}");
        }
    }

    proptest::proptest! {
        /// Any bytes: a summary within the limits, without removed characters.
        #[test]
        fn any_bytes_give_a_bounded_clean_summary(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
                                                  subject in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            for input in [raw.clone(), [b"Subject: ".as_slice(), &subject, b"\r\nFrom: ", &raw, b"\r\n\r\n"].concat()] {
                let s = HeaderSummary::of_message(&input, US);
                let texts = [s.subject.as_deref(), s.header_from.as_ref().map(|f| f.address.as_str()),
                             s.header_from.as_ref().and_then(|f| f.name.as_deref())];
                for t in texts.into_iter().flatten() {
                    proptest::prop_assert!(!t.chars().any(removed), "{t:?}");
                }
                proptest::prop_assert!(s.subject.as_ref().is_none_or(|t| t.chars().count() <= MAX_SUMMARY_SUBJECT_CHARS));
                if let Some(f) = &s.header_from {
                    proptest::prop_assert!(f.address.chars().count() <= MAX_SUMMARY_FROM_ADDRESS_CHARS);
                    proptest::prop_assert!(f.name.as_ref().is_none_or(|n| n.chars().count() <= MAX_SUMMARY_FROM_NAME_CHARS));
                }
            }
        }
    }
}
