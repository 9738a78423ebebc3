//! The message rules of every door: what a message may contain, and who it may
//! say it is from.
//!
//! - **NUL** ([`contains_nul`]): refused on every door, the MX included
//!   (`550 5.6.0`; HTTP 422 `MESSAGE_CONTAINS_NUL`). RFC 5321 §4.1.1.4 and RFC
//!   5322 §2.1 do not allow NUL in message content outside `BINARYMIME` (not
//!   offered), and receivers that drop NULs turn `<CRLF>NUL.<CRLF>` into an end
//!   of data: relaying one unchanged would make us a smuggling hop.
//! - **Sender pinning** ([`check_message`], sending doors only): exactly one
//!   `From:` field holding exactly one mailbox, the authenticated inbox; no
//!   `Sender:` field, or one holding exactly the inbox; and no address other than
//!   the inbox anywhere in those fields' text: display names, comments, encoded
//!   words included (`From: "ceo@bank.example" <bot@…>` is refused, because
//!   that is what a mail client shows). SMTP answers `550 5.7.1`, HTTP 403
//!   `FROM_NOT_AUTHORIZED`.

use agentkeys_core::Address;
use mail_parser::{HeaderName, HeaderValue, MessageParser};

/// Why a door refuses a message. Each door maps it to its own answer (the SMTP
/// reply table, the HTTP `ApiError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageRefusal {
    /// The message holds a NUL byte.
    #[error("the message contains a NUL byte (not allowed in mail; send binary content as a base64 attachment)")]
    Nul,
    /// `From:` is not exactly one mailbox that is the inbox, or its text names
    /// another address.
    #[error("the From: header must be exactly the inbox you send from (one address, no other address in its display name)")]
    From,
    /// A `Sender:` field that is not exactly the inbox, or names another address.
    #[error("the Sender: header must be absent or exactly the inbox you send from")]
    Sender,
}

/// Characters a mail client may show as an at sign: `@`, FULLWIDTH COMMERCIAL AT
/// and SMALL COMMERCIAL AT.
const AT_SIGNS: [char; 3] = ['@', '\u{FF20}', '\u{FE6B}'];

/// The NUL rule of every door: whether `bytes` holds a NUL byte. Streaming
/// receivers call it on each piece they consume.
pub fn contains_nul(bytes: &[u8]) -> bool {
    memchr::memchr(0, bytes).is_some()
}

/// The message rules of a sending door, in order: no NUL, then `From:`, then
/// `Sender:` (see the module docs). `message` is the message as the client sent
/// it (header section first).
pub fn check_message(message: &[u8], inbox: &Address) -> Result<(), MessageRefusal> {
    if contains_nul(message) {
        return Err(MessageRefusal::Nul);
    }
    let parsed = MessageParser::new()
        .header_address(HeaderName::From)
        .header_address(HeaderName::Sender)
        .default_header_ignore()
        .parse_headers(message)
        .ok_or(MessageRefusal::From)?;
    let fields = |name: HeaderName<'static>| {
        parsed.headers().iter().filter(move |h| h.name == name).map(|h| {
            // The field's text as written (after the colon, folding included).
            let raw = message.get(h.offset_start as usize..h.offset_end as usize).unwrap_or_default();
            (&h.value, String::from_utf8_lossy(raw))
        })
    };
    let mut from = fields(HeaderName::From);
    match (from.next(), from.next()) {
        (Some((value, raw)), None) if is_only(value, &raw, inbox) => {}
        _ => return Err(MessageRefusal::From),
    }
    let mut sender = fields(HeaderName::Sender);
    match (sender.next(), sender.next()) {
        (None, _) => Ok(()),
        (Some((value, raw)), None) if is_only(value, &raw, inbox) => Ok(()),
        _ => Err(MessageRefusal::Sender),
    }
}

/// Whether an address field holds exactly one mailbox, `inbox`, and names no
/// other address in its raw text or its decoded display name.
fn is_only(value: &HeaderValue<'_>, raw: &str, inbox: &Address) -> bool {
    let HeaderValue::Address(mail_parser::Address::List(list)) = value else {
        return false;
    };
    let [only] = list.as_slice() else {
        return false;
    };
    only.address.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(inbox.as_str()))
        && names_no_other_address(raw, inbox)
        && only.name.as_deref().is_none_or(|name| names_no_other_address(name, inbox))
}

/// Whether every at sign in `text` belongs to the address `inbox`, written
/// plainly: the run of characters around it, up to whitespace, a control or
/// `<>()[]{},;:"'`, is the inbox (case ignored, trailing dots ignored).
fn names_no_other_address(text: &str, inbox: &Address) -> bool {
    let stop = |c: char| c.is_whitespace() || c.is_control() || "<>()[]{},;:\"'`".contains(c);
    text.match_indices(AT_SIGNS).all(|(at, sign)| {
        let start = text[..at].rfind(stop).map_or(0, |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
        let after = at + sign.len();
        let end = text[after..].find(stop).map_or(text.len(), |i| after + i);
        text[start..end].trim_end_matches('.').eq_ignore_ascii_case(inbox.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox() -> Address {
        "bot@agents.localhost".parse().unwrap()
    }

    fn check(headers: &str) -> Result<(), MessageRefusal> {
        check_message(format!("{headers}\r\n\r\nbody\r\n").as_bytes(), &inbox())
    }

    #[test]
    fn from_must_be_exactly_the_inbox() {
        for ok in [
            "From: bot@agents.localhost",
            "From: Bot <BOT@AGENTS.LOCALHOST>",
            "from:   <bot@agents.localhost> (comment)",
            "From: \"Bot (bot@agents.localhost)\" <bot@agents.localhost>",
            "From: =?utf-8?q?R=C3=A9servations?= <bot@agents.localhost>",
            "From: Mail from bot@agents.localhost. <bot@agents.localhost>",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "From: other@agents.localhost",
            "From: bot@agents.localhost, other@agents.localhost",
            "From: bot@agents.localhost\r\nFrom: other@agents.localhost",
            "From: friends: bot@agents.localhost;",
            "Subject: no from",
            "From: \"bot@agents.localhost\" <evil@remote.test>",
            // The display name shows another address.
            "From: \"ceo@bank.example\" <bot@agents.localhost>",
            "From: ceo@bank.example <bot@agents.localhost>",
            "From: \"ceo @ bank.example\" <bot@agents.localhost>",
            "From: \"ceo\u{FF20}bank.example\" <bot@agents.localhost>",
            "From: \"ceobot@agents.localhost\" <bot@agents.localhost>",
            "From: \"bot@agents.localhost.bank.example\" <bot@agents.localhost>",
            "From: =?utf-8?q?ceo=40bank.example?= <bot@agents.localhost>",
            "From: =?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <bot@agents.localhost>",
            "From: bot@agents.localhost (ceo@bank.example)",
            "From: \"ceo\\@bank.example\" <bot@agents.localhost>",
            "From: \"ceo@bank.example\"\r\n <bot@agents.localhost>",
            // A second From: however its name is written.
            "From: bot@agents.localhost\r\nFrom : ceo@bank.example",
            "From: bot@agents.localhost\r\nFROM: ceo@bank.example",
            "From: bot@agents.localhost\r\n \r\nFrom: ceo@bank.example",
            "From: bot@agents.localhost\r\n\rFrom: ceo@bank.example",
            "From: bot@agents.localhost\r\nnot a field\r\nFrom: ceo@bank.example",
            " From: ceo@bank.example\r\nFrom: bot@agents.localhost",
        ] {
            assert_eq!(check(bad), Err(MessageRefusal::From), "{bad}");
        }
        assert_eq!(check_message(b"", &inbox()), Err(MessageRefusal::From));
    }

    #[test]
    fn only_the_inbox_may_carry_an_at_sign() {
        let ok = |t: &str| names_no_other_address(t, &inbox());
        assert!(ok("Bot") && ok("") && ok("<bot@agents.localhost>") && ok("bot@AGENTS.localhost..."));
        assert!(ok("Bot (bot@agents.localhost)"));
        for bad in ["@", "a@", "@agents.localhost", "x bot@agents.localhost\u{FE6B}", "\u{e9}bot@agents.localhost"] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn sender_must_be_absent_or_the_inbox() {
        for ok in [
            "From: bot@agents.localhost\r\nSender: bot@agents.localhost",
            "From: bot@agents.localhost\r\nsender: Bot <Bot@Agents.Localhost>",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "From: bot@agents.localhost\r\nSender: ceo@bank.example",
            "From: bot@agents.localhost\r\nSender: \"ceo@bank.example\" <bot@agents.localhost>",
            "From: bot@agents.localhost\r\nSender: bot@agents.localhost\r\nSender: bot@agents.localhost",
            "From: bot@agents.localhost\r\nSender: bot@agents.localhost, ceo@bank.example",
            "From: bot@agents.localhost\r\nSender:",
            "Sender: ceo@bank.example\r\nFrom: bot@agents.localhost",
        ] {
            assert_eq!(check(bad), Err(MessageRefusal::Sender), "{bad}");
        }
    }

    #[test]
    fn nul_is_refused_first() {
        assert_eq!(check("From: bot@agents.localhost\r\nX: a\0b"), Err(MessageRefusal::Nul));
        assert_eq!(check_message(b"From: ceo@bank.example\r\n\r\n\r\n\0.\r\n", &inbox()), Err(MessageRefusal::Nul));
        assert!(contains_nul(b"\0") && !contains_nul(b"abc\r\n.\r\n"));
    }
}
