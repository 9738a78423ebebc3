//! A parsed view of a raw message (mail-parser 0.11): the headers an agent
//! reads, the text, the HTML as readable text with its links, attachment
//! metadata, and the authentication verdicts of our MX.
//!
//! ```
//! use agentkeys_agent::message::ParsedMessage;
//!
//! let raw = b"From: Shop <no-reply@shop.example>\r\nTo: bot@agents.localhost\r\n\
//! Subject: Hello\r\nMessage-ID: <abc@shop.example>\r\n\r\nHi there\r\n";
//! let m = ParsedMessage::parse("01JD0000000000000000000000", raw, "mx.agents.localhost").unwrap();
//! assert_eq!(m.from.as_ref().unwrap().address, "no-reply@shop.example");
//! assert_eq!(m.rfc5322_message_id.as_deref(), Some("<abc@shop.example>"));
//! assert_eq!(m.text.as_deref(), Some("Hi there\r\n"));
//! assert!(!m.authentication.authenticated);
//! ```

use std::sync::Arc;

use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

use crate::auth_results::Authentication;
pub use crate::html::Link;

/// Largest raw message parsed. Our MX accepts 10 MiB by default; this leaves room
/// for a configured larger limit and refuses anything absurd.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Most message ids kept from a `References:` header (the newest ones).
pub const MAX_REFERENCES: usize = 64;

/// A display name and an address, as in `"Ann" <ann@example.com>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Mailbox {
    /// The display name, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// The address (`local@domain`).
    pub address: String,
}

impl Mailbox {
    /// A mailbox without a display name.
    pub fn new(address: impl Into<String>) -> Self {
        Mailbox {
            name: None,
            address: address.into(),
        }
    }

    /// The domain part of the address, lowercased (`None` without an `@`).
    pub fn domain(&self) -> Option<String> {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
    }
}

impl std::str::FromStr for Mailbox {
    type Err = std::convert::Infallible;

    /// `Ann <ann@example.com>`, `"Ann B." <ann@example.com>` or `ann@example.com`.
    /// Nothing is validated here; [`crate::compose::Compose::validate`] checks
    /// addresses before anything is sent.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(open) = s.rfind('<')
            && s.ends_with('>')
        {
            let name = s[..open].trim().trim_matches('"').trim();
            let address = s[open + 1..s.len() - 1].trim();
            return Ok(Mailbox {
                name: (!name.is_empty()).then(|| name.to_owned()),
                address: address.to_owned(),
            });
        }
        Ok(Mailbox::new(s))
    }
}

/// What an attachment is, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachmentInfo {
    /// Position among the message's attachments, for [`ParsedMessage::attachment`].
    pub index: usize,
    /// The file name (`Content-Disposition: filename` or `Content-Type: name`).
    pub filename: Option<String>,
    /// `type/subtype`, lowercased (`application/octet-stream` when absent).
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
    /// The attachment's text, for text attachments (`text/*`, JSON, XML)
    /// of at most [`MAX_ATTACHMENT_TEXT_BYTES`], decoded by their charset;
    /// absent for anything else. Read as data, never executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Largest text attachment whose text `get_message` returns.
pub const MAX_ATTACHMENT_TEXT_BYTES: usize = 256 * 1024;

/// An attachment with its decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its metadata.
    pub info: AttachmentInfo,
    /// The decoded content (for a `message/rfc822` part, the raw message).
    pub bytes: Vec<u8>,
}

/// Why raw bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Bigger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {size} bytes is larger than the {max} bytes parsed")]
    TooLarge {
        /// The size given.
        size: usize,
        /// [`MAX_MESSAGE_BYTES`].
        max: usize,
    },
    /// Empty, or no header could be read.
    #[error("not an RFC 5322 message (no headers)")]
    NotAMessage,
}

/// A parsed message: what `get_message` returns (serialized as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct ParsedMessage {
    /// Our store's id (a ULID), as passed to [`ParsedMessage::parse`].
    pub message_id: String,
    /// The `Message-ID:` header, in angle brackets.
    pub rfc5322_message_id: Option<String>,
    /// The first `From:` mailbox.
    pub from: Option<Mailbox>,
    /// `To:` mailboxes.
    pub to: Vec<Mailbox>,
    /// `Cc:` mailboxes.
    pub cc: Vec<Mailbox>,
    /// `Reply-To:` mailboxes.
    pub reply_to: Vec<Mailbox>,
    /// The decoded subject.
    pub subject: Option<String>,
    /// The `Date:` header as RFC 3339.
    pub date: Option<String>,
    /// The `Date:` header as Unix seconds.
    pub date_unix: Option<i64>,
    /// `In-Reply-To:`, in angle brackets.
    pub in_reply_to: Option<String>,
    /// `References:`, in angle brackets, oldest first (at most [`MAX_REFERENCES`]).
    pub references: Vec<String>,
    /// The `text/plain` body parts, joined by a blank line.
    pub text: Option<String>,
    /// The `text/html` body parts converted to readable text.
    pub html_text: Option<String>,
    /// The links of the HTML body parts.
    pub links: Vec<Link>,
    /// The `text/html` body parts as Markdown, links kept as `[text](url)`
    /// (htmd; scripts, styles and images left out). Absent when the HTML is
    /// larger than [`crate::html::MAX_HTML_INPUT`] or nested deeper than
    /// [`MAX_MARKDOWN_DEPTH`].
    pub html_markdown: Option<String>,
    /// The new part of a reply: the text (or, without one, the HTML's text)
    /// with quoted history and signature removed ([`crate::latest`]).
    pub latest_text: Option<String>,
    /// Attachment metadata (bytes via [`ParsedMessage::attachment`]).
    pub attachments: Vec<AttachmentInfo>,
    /// The verdicts of our MX.
    pub authentication: Authentication,
    #[serde(skip)]
    raw: RawBytes,
}

/// The raw message; `Debug` shows its length instead of dumping every byte.
#[derive(Clone)]
struct RawBytes(Arc<[u8]>);

impl std::fmt::Debug for RawBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl ParsedMessage {
    /// Parses `raw`, stored under `message_id`. Verdicts come only from the
    /// topmost `Authentication-Results` header, and only when its authserv-id
    /// is `our_hostname` (the MX's host name, as it writes it).
    pub fn parse(message_id: &str, raw: &[u8], our_hostname: &str) -> Result<Self, ParseError> {
        if raw.len() > MAX_MESSAGE_BYTES {
            return Err(ParseError::TooLarge {
                size: raw.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let msg = MessageParser::default()
            .parse(raw)
            .ok_or(ParseError::NotAMessage)?;
        if msg.headers().is_empty() {
            return Err(ParseError::NotAMessage);
        }

        let from = msg.from().and_then(|a| a.iter().find_map(mailbox));
        // Exactly one From: header with exactly one mailbox, or nothing can be
        // aligned with it (a second From: is a classic way to show one domain
        // while DMARC judged another).
        let from_headers = msg
            .headers()
            .iter()
            .filter(|h| matches!(h.name, mail_parser::HeaderName::From))
            .count();
        let single_from =
            from_headers == 1 && msg.from().map(|a| a.iter().count() == 1).unwrap_or(false);
        let list = |a: Option<&mail_parser::Address<'_>>| -> Vec<Mailbox> {
            a.map(|a| a.iter().filter_map(mailbox).collect())
                .unwrap_or_default()
        };

        let mut text_parts = Vec::new();
        for id in &msg.text_body {
            if let Some(part) = msg.parts.get(*id as usize)
                && let PartType::Text(t) = &part.body
            {
                text_parts.push(t.as_ref());
            }
        }
        let mut html_texts = Vec::new();
        let mut markdowns = Vec::new();
        let mut links = Vec::new();
        for id in &msg.html_body {
            if let Some(part) = msg.parts.get(*id as usize)
                && let PartType::Html(h) = &part.body
            {
                let converted = crate::html::to_text(h);
                html_texts.push(converted.text);
                if let Some(md) = html_to_markdown(h) {
                    markdowns.push(md);
                }
                links.extend(converted.links);
            }
        }
        links.truncate(crate::html::MAX_LINKS);

        let attachments = msg
            .attachments()
            .enumerate()
            .map(|(index, part)| attachment_info(index, part))
            .collect();

        let ar_values: Vec<&str> = msg
            .headers_raw()
            .filter(|(name, _)| name.eq_ignore_ascii_case("Authentication-Results"))
            .map(|(_, value)| value)
            .collect();
        let from_domain = if single_from {
            from.as_ref().and_then(Mailbox::domain)
        } else {
            None
        };
        let authentication =
            Authentication::evaluate(ar_values, our_hostname, from_domain.as_deref());

        let mut references = ids(msg.references());
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
        }

        let text = (!text_parts.is_empty()).then(|| text_parts.join("\n\n"));
        let html_text = (!html_texts.is_empty()).then(|| html_texts.join("\n\n"));
        let latest_text = text.as_deref().or(html_text.as_deref()).map(crate::latest::latest_text);
        Ok(ParsedMessage {
            message_id: message_id.to_owned(),
            rfc5322_message_id: msg.message_id().map(bracket),
            to: list(msg.to()),
            cc: list(msg.cc()),
            reply_to: list(msg.reply_to()),
            from,
            subject: msg.subject().map(str::to_owned),
            date: msg.date().map(|d| d.to_rfc3339()),
            date_unix: msg.date().map(|d| d.to_timestamp()),
            in_reply_to: ids(msg.in_reply_to()).into_iter().next(),
            references,
            text,
            html_text,
            links,
            html_markdown: (!markdowns.is_empty()).then(|| markdowns.join("\n\n")),
            latest_text,
            attachments,
            authentication,
            raw: RawBytes(Arc::from(raw)),
        })
    }

    /// The raw bytes this view was parsed from.
    pub fn raw(&self) -> &[u8] {
        &self.raw.0
    }

    /// The attachment at `index` with its decoded bytes (re-parses the raw
    /// message; `None` for an index out of range).
    pub fn attachment(&self, index: usize) -> Option<Attachment> {
        let msg = MessageParser::default().parse(&self.raw.0[..])?;
        let part = msg.attachments().nth(index)?;
        Some(Attachment {
            info: attachment_info(index, part),
            bytes: part.contents().to_vec(),
        })
    }

    /// The sender's address as shown: `From:` (the first mailbox), if any.
    pub fn from_address(&self) -> Option<&str> {
        self.from.as_ref().map(|m| m.address.as_str())
    }
}

fn mailbox(a: &mail_parser::Addr<'_>) -> Option<Mailbox> {
    let address = a.address.as_deref()?.trim();
    if address.is_empty() {
        return None;
    }
    let name = a
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    Some(Mailbox {
        name,
        address: address.to_owned(),
    })
}

fn attachment_info(index: usize, part: &mail_parser::MessagePart<'_>) -> AttachmentInfo {
    let content_type = match (part.content_type(), &part.body) {
        (Some(ct), _) => match &ct.c_subtype {
            Some(sub) => format!("{}/{}", ct.c_type, sub),
            None => ct.c_type.to_string(),
        },
        (None, PartType::Message(_)) => "message/rfc822".to_owned(),
        (None, PartType::Text(_)) => "text/plain".to_owned(),
        (None, _) => "application/octet-stream".to_owned(),
    }
    .to_ascii_lowercase();
    let texty = content_type.starts_with("text/")
        || matches!(content_type.as_str(), "application/json" | "application/xml" | "message/delivery-status");
    let text = (texty && part.len() <= MAX_ATTACHMENT_TEXT_BYTES)
        .then(|| match &part.body {
            PartType::Text(t) | PartType::Html(t) => Some(t.to_string()),
            PartType::Binary(b) | PartType::InlineBinary(b) => std::str::from_utf8(b).ok().map(str::to_owned),
            _ => None,
        })
        .flatten();
    AttachmentInfo {
        index,
        filename: part.attachment_name().map(str::to_owned),
        content_type,
        size: part.len(),
        text,
    }
}

/// Deepest HTML element nesting converted to Markdown (the converter walks the
/// tree recursively; deeper documents keep only `html_text`).
pub const MAX_MARKDOWN_DEPTH: usize = 256;

/// The HTML as Markdown with its links (htmd), or `None` when it is too large
/// or too deep (see [`ParsedMessage::html_markdown`]).
pub fn html_to_markdown(html: &str) -> Option<String> {
    if html.len() > crate::html::MAX_HTML_INPUT || nesting_estimate(html) > MAX_MARKDOWN_DEPTH {
        return None;
    }
    let converter = htmd::HtmlToMarkdown::builder()
        .skip_tags(vec!["script", "style", "head", "title", "img", "svg", "template", "noscript"])
        .build();
    let md = converter.convert(html).ok()?;
    let md = md.trim();
    (!md.is_empty()).then(|| md.to_owned())
}

/// An upper estimate of the element nesting of `html`: opening tags not closed
/// yet, counted by a scan (void elements and `/>` not counted).
fn nesting_estimate(html: &str) -> usize {
    const VOID: &[&str] = &["br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "track", "wbr"];
    let bytes = html.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'<') {
        let start = i + off + 1;
        let end = bytes[start..].iter().position(|&b| b == b'>').map_or(bytes.len(), |e| start + e);
        let tag = &html[start..end];
        if let Some(close) = tag.strip_prefix('/') {
            let _ = close;
            depth = depth.saturating_sub(1);
        } else if tag.starts_with(|c: char| c.is_ascii_alphabetic()) && !tag.ends_with('/') {
            let name: String = tag.chars().take_while(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase();
            if !VOID.contains(&name.as_str()) {
                depth += 1;
                max = max.max(depth);
            }
        }
        if end >= bytes.len() {
            break;
        }
        i = end + 1;
    }
    max
}

fn bracket(id: &str) -> String {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{id}>")
}

fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![bracket(t)],
        HeaderValue::TextList(l) => l.iter().map(|t| bracket(t)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "mx.agents.localhost";

    fn parse(raw: &str) -> ParsedMessage {
        ParsedMessage::parse("01JD0000000000000000000000", raw.as_bytes(), HOST).unwrap()
    }

    #[test]
    fn headers_and_bodies() {
        let m = parse(concat!(
            "Authentication-Results: mx.agents.localhost; dkim=pass header.d=shop.example header.s=s1;\r\n",
            "\tspf=pass smtp.mailfrom=a@shop.example; dmarc=pass header.from=shop.example\r\n",
            "From: \"Shop Team\" <team@Shop.example>\r\n",
            "To: bot@agents.localhost, Other <o@x.example>\r\n",
            "Cc: c@x.example\r\n",
            "Reply-To: help@shop.example\r\n",
            "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n",
            "Date: Sat, 21 Nov 2026 09:05:00 +0000\r\n",
            "Message-ID: <m1@shop.example>\r\n",
            "In-Reply-To: <p2@agents.localhost>\r\n",
            "References: <p1@agents.localhost> <p2@agents.localhost>\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=b1\r\n\r\n",
            "--b1\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n",
            "--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain body\r\n",
            "--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html <a href=\"https://shop.example/x\">body</a></p>\r\n",
            "--b2--\r\n",
            "--b1\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n",
            "--b1--\r\n",
        ));
        assert_eq!(
            m.from,
            Some(Mailbox {
                name: Some("Shop Team".into()),
                address: "team@Shop.example".into()
            })
        );
        assert_eq!(m.to.len(), 2);
        assert_eq!(m.to[1].name.as_deref(), Some("Other"));
        assert_eq!(m.cc, vec![Mailbox::new("c@x.example")]);
        assert_eq!(m.reply_to, vec![Mailbox::new("help@shop.example")]);
        assert_eq!(m.subject.as_deref(), Some("Grüße"));
        assert_eq!(m.date.as_deref(), Some("2026-11-21T09:05:00Z"));
        assert_eq!(m.date_unix, Some(1_795_251_900));
        assert_eq!(m.rfc5322_message_id.as_deref(), Some("<m1@shop.example>"));
        assert_eq!(m.in_reply_to.as_deref(), Some("<p2@agents.localhost>"));
        assert_eq!(
            m.references,
            vec!["<p1@agents.localhost>", "<p2@agents.localhost>"]
        );
        assert_eq!(m.text.as_deref().map(str::trim), Some("plain body"));
        assert_eq!(m.html_text.as_deref(), Some("html body"));
        assert_eq!(
            m.links,
            vec![Link {
                url: "https://shop.example/x".into(),
                text: "body".into(),
                quoted: false
            }]
        );
        assert_eq!(
            m.attachments,
            vec![AttachmentInfo {
                index: 0,
                filename: Some("r.pdf".into()),
                content_type: "application/pdf".into(),
                size: 9,
                text: None,
            }]
        );
        let a = m.attachment(0).unwrap();
        assert_eq!(a.bytes, b"%PDF-1.4\n");
        assert!(m.attachment(1).is_none());
        assert!(m.authentication.authenticated, "{:?}", m.authentication);
        assert_eq!(
            m.authentication.dkim[0].domain.as_deref(),
            Some("shop.example")
        );
    }

    #[test]
    fn mailbox_from_str() {
        let m: Mailbox = "\"Ann B.\" <ann@example.com>".parse().unwrap();
        assert_eq!(
            m,
            Mailbox {
                name: Some("Ann B.".into()),
                address: "ann@example.com".into()
            }
        );
        assert_eq!(
            "ann@example.com".parse::<Mailbox>().unwrap(),
            Mailbox::new("ann@example.com")
        );
        assert_eq!(
            "<ann@example.com>".parse::<Mailbox>().unwrap(),
            Mailbox::new("ann@example.com")
        );
        assert_eq!(
            Mailbox::new("a@Example.COM").domain().as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn forged_verdicts_of_another_host_are_ignored() {
        let m = parse(
            "Authentication-Results: mx.evil.example; dmarc=pass header.from=bank.example\r\n\
             From: a@bank.example\r\nSubject: x\r\n\r\nbody\r\n",
        );
        assert!(!m.authentication.authenticated);
        assert!(!m.authentication.verdicts_present);
    }

    #[test]
    fn several_from_mailboxes_never_authenticate() {
        let m = parse(
            "Authentication-Results: mx.agents.localhost; dkim=pass header.d=a.example\r\n\
             From: x@a.example, y@b.example\r\nSubject: x\r\n\r\nbody\r\n",
        );
        assert!(!m.authentication.authenticated);
    }

    #[test]
    fn two_from_headers_never_authenticate() {
        let m = parse(
            "Authentication-Results: mx.agents.localhost; dmarc=pass header.from=a.example\r\n\
             From: x@a.example\r\nFrom: y@a.example\r\nSubject: x\r\n\r\nbody\r\n",
        );
        assert!(!m.authentication.authenticated);
        let m = parse(
            "Authentication-Results: mx.agents.localhost; dmarc=pass header.from=a.example\r\n\
             From: x@a.example\r\nSubject: x\r\n\r\nbody\r\n",
        );
        assert!(m.authentication.authenticated);
    }

    #[test]
    fn html_only_message_has_no_text() {
        let m = parse("From: a@b.example\r\nContent-Type: text/html\r\n\r\n<p>Hi</p><p>there</p>");
        assert_eq!(m.text, None);
        assert_eq!(m.html_text.as_deref(), Some("Hi\nthere"));
    }

    #[test]
    fn limits() {
        assert_eq!(
            ParsedMessage::parse("x", &vec![b'a'; MAX_MESSAGE_BYTES + 1], HOST).unwrap_err(),
            ParseError::TooLarge {
                size: MAX_MESSAGE_BYTES + 1,
                max: MAX_MESSAGE_BYTES
            }
        );
        assert_eq!(
            ParsedMessage::parse("x", b"", HOST).unwrap_err(),
            ParseError::NotAMessage
        );
        let refs: String = (0..MAX_REFERENCES + 10)
            .map(|i| format!("<r{i}@x> "))
            .collect();
        let m = parse(&format!("From: a@b.example\r\nReferences: {refs}\r\n\r\nx"));
        assert_eq!(m.references.len(), MAX_REFERENCES);
        assert_eq!(
            m.references.last().map(String::as_str),
            Some(&*format!("<r{}@x>", MAX_REFERENCES + 9))
        );
    }

    #[test]
    fn html_becomes_markdown_with_links_and_replies_get_their_latest_text() {
        let raw = "From: a@example.com\r\nSubject: Re: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
<html><head><style>p{}</style></head><body><h1>Confirm</h1><p>Click <a href=\"https://example.com/c?t=1\">here</a>.</p>\
<script>alert(1)</script></body></html>\r\n";
        let m = ParsedMessage::parse("01J00000000000000000000000", raw.as_bytes(), "mx.test").unwrap();
        let md = m.html_markdown.unwrap();
        assert!(md.contains("# Confirm"), "{md}");
        assert!(md.contains("[here](https://example.com/c?t=1)"), "{md}");
        assert!(!md.contains("alert") && !md.contains("p{}"), "{md}");
        assert!(m.latest_text.unwrap().contains("Confirm"));
    }

    #[test]
    fn deep_html_keeps_only_its_text() {
        let deep = format!("{}x{}", "<div>".repeat(MAX_MARKDOWN_DEPTH + 1), "</div>".repeat(MAX_MARKDOWN_DEPTH + 1));
        assert_eq!(html_to_markdown(&deep), None);
        let ok = format!("{}x{}", "<div>".repeat(MAX_MARKDOWN_DEPTH), "</div>".repeat(MAX_MARKDOWN_DEPTH));
        assert_eq!(html_to_markdown(&ok).as_deref(), Some("x"));
    }

    #[test]
    fn text_attachments_carry_their_text_within_the_limit() {
        let big = "y".repeat(MAX_ATTACHMENT_TEXT_BYTES + 1);
        let raw = format!("From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n\
--b\r\nContent-Type: text/csv; charset=utf-8\r\nContent-Disposition: attachment; filename=a.csv\r\n\r\nname,code\r\nx,1\r\n\
--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=big.txt\r\n\r\n{big}\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=x.bin\r\n\r\nabc\r\n--b--\r\n");
        let m = ParsedMessage::parse("01J00000000000000000000000", raw.as_bytes(), "mx.test").unwrap();
        assert_eq!(m.attachments[0].text.as_deref().map(str::trim_end), Some("name,code\r\nx,1"));
        assert_eq!(m.attachments[1].text, None, "over the limit");
        assert_eq!(m.attachments[2].text, None, "not text");
    }
}
