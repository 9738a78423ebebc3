//! Building outgoing MIME (mail-builder 2.0.1) for send, reply and forward.
//!
//! [`Compose`] is the message as the agent means it; [`reply`] and [`forward`]
//! derive one from a [`ParsedMessage`] with the threading headers and subject
//! rules mail clients expect; [`Compose::build`] turns it into bytes with a
//! fresh `Message-ID` at our domain and a `Date` (both from a [`Stamp`], so
//! tests are deterministic). The server pins `From:` to the authenticated
//! inbox and DKIM-signs; nothing here is trusted by it.
//!
//! ```
//! use agentkeys_agent::compose::{BccHeader, Compose, Stamp};
//! use agentkeys_agent::message::Mailbox;
//!
//! let mut c = Compose::new(Mailbox::new("bot@agents.localhost"));
//! c.to.push(Mailbox::new("ann@example.com"));
//! c.subject = "Hello".into();
//! c.text = Some("Hi Ann".into());
//! let stamp = Stamp::new("agents.localhost", 1_795_251_900, 42);
//! let built = c.build(&stamp, BccHeader::Omit).unwrap();
//! assert_eq!(built.message_id, stamp.message_id);
//! assert_eq!(built.envelope_recipients, vec!["ann@example.com"]);
//! ```

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as BuilderAddress;
use mail_builder::headers::message_id::MessageId;
use mail_builder::mime::{BodyPart, MimePart};

use crate::message::{Mailbox, ParsedMessage};

/// Most recipients (To + Cc + Bcc) of one message, as our submission server allows.
pub const MAX_RECIPIENTS: usize = 50;
/// Most message ids in a `References:` header we write: the first (the thread's
/// root) and the newest ones (RFC 5322 §3.6.4 allows trimming the middle).
pub const MAX_REFERENCES_OUT: usize = 20;
/// Longest subject we write (characters); longer ones are cut.
pub const MAX_SUBJECT_CHARS: usize = 998;
/// Attachment name used for the forwarded original.
pub const FORWARDED_FILENAME: &str = "forwarded.eml";

/// An attachment to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingAttachment {
    /// File name shown to the recipient.
    pub filename: String,
    /// `type/subtype`; `message/rfc822` is attached as a message (8bit), not base64.
    pub content_type: String,
    /// The content.
    pub bytes: Vec<u8>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    /// The sending inbox (the server refuses any other `From:`).
    pub from: Mailbox,
    /// `To:` recipients.
    pub to: Vec<Mailbox>,
    /// `Cc:` recipients.
    pub cc: Vec<Mailbox>,
    /// Blind copies: envelope recipients only, see [`BccHeader`].
    pub bcc: Vec<Mailbox>,
    /// The subject.
    pub subject: String,
    /// The plain-text body.
    pub text: Option<String>,
    /// The HTML body (sent as `multipart/alternative` with the text).
    pub html: Option<String>,
    /// Attachments.
    pub attachments: Vec<OutgoingAttachment>,
    /// `In-Reply-To:`, in angle brackets.
    pub in_reply_to: Option<String>,
    /// `References:`, in angle brackets, oldest first.
    pub references: Vec<String>,
}

/// Whether the built bytes carry a `Bcc:` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BccHeader {
    /// No `Bcc:` header: for SMTP submission, where the envelope carries them.
    Omit,
    /// A `Bcc:` header: for the HTTP send door with `message/rfc822`, which takes
    /// envelope recipients from To/Cc/Bcc and removes the header itself.
    Include,
}

/// The fresh identity of one outgoing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// `<ULID@domain>`.
    pub message_id: String,
    /// `Date:` in Unix seconds.
    pub date: i64,
}

impl Stamp {
    /// A stamp at `domain` for time `now` (Unix seconds) and 80 random bits.
    pub fn new(domain: &str, now: i64, random: u128) -> Self {
        let ms = u64::try_from(now).unwrap_or(0).saturating_mul(1000);
        let ulid = ulid::Ulid::from_parts(ms, random);
        Stamp {
            message_id: format!("<{ulid}@{}>", domain.trim().to_ascii_lowercase()),
            date: now,
        }
    }

    /// A stamp at `domain` for the current time, with OS randomness.
    pub fn now(domain: &str) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Stamp::new(domain, now, rand::random::<u128>())
    }
}

/// Built message bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The RFC 5322 message, CRLF line ends.
    pub bytes: Vec<u8>,
    /// Its `Message-ID`, in angle brackets.
    pub message_id: String,
    /// Every To, Cc and Bcc address, deduplicated (case-insensitive), in order.
    pub envelope_recipients: Vec<String>,
}

/// Why a message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// No To, Cc or Bcc recipient.
    #[error("no recipient: give at least one of to, cc, bcc")]
    NoRecipients,
    /// More than [`MAX_RECIPIENTS`].
    #[error("{0} recipients; at most {MAX_RECIPIENTS} per message")]
    TooManyRecipients(usize),
    /// An address that is not `local@domain` or carries characters that could
    /// break the header.
    #[error("invalid address {0:?}: expected local@domain")]
    InvalidAddress(String),
    /// A reply to a message without a `From:`/`Reply-To:` to answer.
    #[error("the original message has no From: or Reply-To: to reply to")]
    NoReplyAddress,
    /// A reply to a message that came from this inbox and went only to it (an
    /// agent's note to itself): there is nobody else to answer.
    #[error(
        "the original message is from this inbox ({0}) and went only to it, so a reply has nobody to go to; \
         send a new message with the recipient instead (`mail send --to ADDRESS`)"
    )]
    OnlyOurselves(String),
    /// mail-builder could not write the message.
    #[error("could not write the message: {0}")]
    Write(String),
}

impl Compose {
    /// An empty message from `from`.
    pub fn new(from: Mailbox) -> Self {
        Compose {
            from,
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: String::new(),
            text: None,
            html: None,
            attachments: Vec::new(),
            in_reply_to: None,
            references: Vec::new(),
        }
    }

    /// Every To, Cc and Bcc address, deduplicated case-insensitively, in order.
    pub fn recipients(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.to.iter().chain(&self.cc).chain(&self.bcc) {
            if !out.iter().any(|a| a.eq_ignore_ascii_case(&m.address)) {
                out.push(m.address.clone());
            }
        }
        out
    }

    /// Checks the addresses and recipient count.
    pub fn validate(&self) -> Result<(), ComposeError> {
        for m in std::iter::once(&self.from)
            .chain(&self.to)
            .chain(&self.cc)
            .chain(&self.bcc)
        {
            check_address(&m.address)?;
        }
        let n = self.recipients().len();
        if n == 0 {
            return Err(ComposeError::NoRecipients);
        }
        if n > MAX_RECIPIENTS {
            return Err(ComposeError::TooManyRecipients(n));
        }
        Ok(())
    }

    /// Builds the message with `stamp`'s Message-ID and Date.
    pub fn build(&self, stamp: &Stamp, bcc: BccHeader) -> Result<Built, ComposeError> {
        self.validate()?;
        let mut b = MessageBuilder::new()
            .from(address(&self.from))
            .message_id(strip_brackets(&stamp.message_id))
            .date(stamp.date)
            .subject(clean_header_text(&self.subject, MAX_SUBJECT_CHARS));
        if !self.to.is_empty() {
            b = b.to(address_list(&self.to));
        }
        if !self.cc.is_empty() {
            b = b.cc(address_list(&self.cc));
        }
        if bcc == BccHeader::Include && !self.bcc.is_empty() {
            b = b.bcc(address_list(&self.bcc));
        }
        if let Some(irt) = &self.in_reply_to {
            b = b.in_reply_to(strip_brackets(irt));
        }
        if !self.references.is_empty() {
            let refs: Vec<String> = self.references.iter().map(|r| strip_brackets(r)).collect();
            b = b.references(MessageId::from(refs));
        }
        let text = self.text.clone().unwrap_or_default();
        b = b.text_body(text);
        if let Some(html) = &self.html {
            b = b.html_body(html.clone());
        }
        for a in &self.attachments {
            let ct = a.content_type.trim().to_ascii_lowercase();
            let ct = if ct.contains('/') {
                ct
            } else {
                "application/octet-stream".to_owned()
            };
            let name = clean_header_text(&a.filename, 255);
            if ct == "message/rfc822" && is_8bit_safe(&a.bytes) {
                let part = MimePart::new(ct, BodyPart::Binary(crlf(&a.bytes).into()))
                    .attachment(name)
                    .transfer_encoding("8bit");
                b.attachments.get_or_insert_with(Vec::new).push(part);
            } else {
                // A message that cannot travel as 8bit (NUL, lines over 998
                // bytes) goes as an opaque base64 file instead.
                let ct = if ct == "message/rfc822" {
                    "application/octet-stream".to_owned()
                } else {
                    ct
                };
                b = b.attachment(ct, name, a.bytes.clone());
            }
        }
        let bytes = b
            .write_to_vec()
            .map_err(|e| ComposeError::Write(e.to_string()))?;
        Ok(Built {
            bytes,
            message_id: stamp.message_id.clone(),
            envelope_recipients: self.recipients(),
        })
    }
}

/// Builds a reply to `original` from `me`.
///
/// - To: the original's `Reply-To:` if present, else its `From:`; when that is
///   ourselves (a reply to our own message), its `To:`.
/// - `reply_all`: Cc gets the original's To and Cc, minus ourselves and anyone
///   already in To, deduplicated case-insensitively.
/// - Subject: `Re: ` once (an existing `Re:`, `RE:`, `AW:`, `SV:`, `Antw:`,
///   `VS:` or `Re[2]:` prefix is replaced, never stacked).
/// - `In-Reply-To:` the original's Message-ID; `References:` the original's
///   References (or its In-Reply-To when it has none) plus its Message-ID,
///   trimmed to [`MAX_REFERENCES_OUT`] (the first and the newest).
///
/// The original is not quoted into the body.
pub fn reply(
    original: &ParsedMessage,
    me: &Mailbox,
    text: Option<String>,
    html: Option<String>,
    reply_all: bool,
) -> Result<Compose, ComposeError> {
    let is_me = |m: &Mailbox| m.address.eq_ignore_ascii_case(&me.address);
    let mut to: Vec<Mailbox> = if !original.reply_to.is_empty() {
        original.reply_to.clone()
    } else {
        original.from.iter().cloned().collect()
    };
    if to.iter().all(is_me) && !to.is_empty() {
        to = original.to.clone();
    }
    let had_candidates = !to.is_empty();
    let mut to = dedup(to.into_iter().filter(|m| !is_me(m)), &[]);
    if to.is_empty() {
        return Err(if had_candidates || original.from.iter().any(is_me) {
            ComposeError::OnlyOurselves(me.address.clone())
        } else {
            ComposeError::NoReplyAddress
        });
    }
    let mut cc = Vec::new();
    if reply_all {
        let others = original
            .to
            .iter()
            .chain(&original.cc)
            .filter(|m| !is_me(m))
            .cloned();
        cc = dedup(others, &to);
    }
    to.truncate(MAX_RECIPIENTS);

    let mut references = original.references.clone();
    if references.is_empty()
        && let Some(irt) = &original.in_reply_to
    {
        references.push(irt.clone());
    }
    if let Some(id) = &original.rfc5322_message_id
        && !references.contains(id)
    {
        references.push(id.clone());
    }
    Ok(Compose {
        from: me.clone(),
        to,
        cc,
        bcc: Vec::new(),
        subject: reply_subject(original.subject.as_deref().unwrap_or_default()),
        text,
        html,
        attachments: Vec::new(),
        in_reply_to: original.rfc5322_message_id.clone(),
        references: trim_references(references),
    })
}

/// Builds a forward of `original` (attached whole as `message/rfc822`, named
/// [`FORWARDED_FILENAME`]) with a `Fwd: ` subject (not stacked on an existing
/// `Fwd:`/`Fw:`/`WG:`/`TR:`). No threading headers: a forward starts a thread.
pub fn forward(
    original: &ParsedMessage,
    me: &Mailbox,
    to: Vec<Mailbox>,
    text: Option<String>,
    html: Option<String>,
) -> Compose {
    Compose {
        from: me.clone(),
        to,
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: forward_subject(original.subject.as_deref().unwrap_or_default()),
        text,
        html,
        attachments: vec![OutgoingAttachment {
            filename: FORWARDED_FILENAME.to_owned(),
            content_type: "message/rfc822".to_owned(),
            bytes: original.raw().to_vec(),
        }],
        in_reply_to: None,
        references: Vec::new(),
    }
}

const REPLY_PREFIXES: &[&str] = &["re", "aw", "sv", "antw", "vs", "ref", "odp"];
const FORWARD_PREFIXES: &[&str] = &["fwd", "fw", "wg", "tr", "enc", "rv"];

/// Strips one leading `prefix:` / `prefix[n]:` (case-insensitive) if it is one
/// of `prefixes`; returns the rest.
fn strip_prefix<'a>(subject: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    let s = subject.trim_start();
    let colon = s.find(':')?;
    let head = s[..colon].trim_end();
    let head = match head.find('[') {
        Some(open) if head.ends_with(']') => &head[..open],
        _ => head,
    };
    prefixes
        .iter()
        .any(|p| head.eq_ignore_ascii_case(p))
        .then(|| s[colon + 1..].trim_start())
}

/// `Re: ` + the subject without its reply prefixes.
pub fn reply_subject(subject: &str) -> String {
    let mut s = subject.trim();
    while let Some(rest) = strip_prefix(s, REPLY_PREFIXES) {
        s = rest;
    }
    format!("Re: {s}")
}

/// `Fwd: ` + the subject, unless it already is a forward.
pub fn forward_subject(subject: &str) -> String {
    let s = subject.trim();
    if strip_prefix(s, FORWARD_PREFIXES).is_some() {
        s.to_owned()
    } else {
        format!("Fwd: {s}")
    }
}

fn trim_references(refs: Vec<String>) -> Vec<String> {
    if refs.len() <= MAX_REFERENCES_OUT {
        return refs;
    }
    let mut out = Vec::with_capacity(MAX_REFERENCES_OUT);
    out.push(refs[0].clone());
    out.extend(
        refs[refs.len() - (MAX_REFERENCES_OUT - 1)..]
            .iter()
            .cloned(),
    );
    out
}

fn dedup(items: impl Iterator<Item = Mailbox>, exclude: &[Mailbox]) -> Vec<Mailbox> {
    let mut out: Vec<Mailbox> = Vec::new();
    for m in items {
        let seen = |x: &Mailbox| x.address.eq_ignore_ascii_case(&m.address);
        if !out.iter().any(seen) && !exclude.iter().any(seen) {
            out.push(m);
        }
    }
    out
}

fn check_address(a: &str) -> Result<(), ComposeError> {
    let bad = || ComposeError::InvalidAddress(a.to_owned());
    let (local, domain) = a.rsplit_once('@').ok_or_else(bad)?;
    let forbidden = |c: char| c.is_control() || c.is_whitespace() || "<>()[],;:\"\\".contains(c);
    if local.is_empty()
        || domain.is_empty()
        || local.len() > 64
        || a.len() > 254
        || local.contains('@')
        || a.chars().any(forbidden)
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(())
}

fn address(m: &Mailbox) -> BuilderAddress<'static> {
    let name = m
        .name
        .as_deref()
        .map(|n| clean_header_text(n, 200))
        .filter(|n| !n.is_empty());
    BuilderAddress::new_address(name, m.address.clone())
}

fn address_list(ms: &[Mailbox]) -> BuilderAddress<'static> {
    BuilderAddress::new_list(ms.iter().map(address).collect())
}

/// Header text without line breaks or other controls, at most `max` characters.
fn clean_header_text(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

fn strip_brackets(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

/// True when `raw` can be sent as an 8bit body: no NUL, no line over 998 bytes.
fn is_8bit_safe(raw: &[u8]) -> bool {
    !raw.contains(&0) && raw.split(|&b| b == b'\n').all(|l| l.len() <= 999)
}

/// `raw` with every line ending as CRLF, ending in one.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert_eq!(reply_subject("Hello"), "Re: Hello");
        assert_eq!(reply_subject("Re: Hello"), "Re: Hello");
        assert_eq!(reply_subject("RE: re: AW: Hallo"), "Re: Hallo");
        assert_eq!(reply_subject("SV: Hej"), "Re: Hej");
        assert_eq!(reply_subject("Re[3]: x"), "Re: x");
        assert_eq!(reply_subject("Fwd: x"), "Re: Fwd: x");
        assert_eq!(reply_subject("Ticket: open"), "Re: Ticket: open");
        assert_eq!(reply_subject(""), "Re: ");
        assert_eq!(forward_subject("Hello"), "Fwd: Hello");
        assert_eq!(forward_subject("FW: Hello"), "FW: Hello");
        assert_eq!(forward_subject("WG: Hallo"), "WG: Hallo");
        assert_eq!(forward_subject("Re: Hello"), "Fwd: Re: Hello");
    }

    #[test]
    fn references_are_trimmed_keeping_root_and_newest() {
        let refs: Vec<String> = (0..30).map(|i| format!("<r{i}@x>")).collect();
        let t = trim_references(refs);
        assert_eq!(t.len(), MAX_REFERENCES_OUT);
        assert_eq!(t[0], "<r0@x>");
        assert_eq!(t[1], "<r11@x>");
        assert_eq!(t.last().unwrap(), "<r29@x>");
    }

    #[test]
    fn addresses_are_checked() {
        for bad in [
            "",
            "a",
            "@x.example",
            "a@",
            "a b@x.example",
            "a@x.example\r\nBcc: e@v",
            "<a@x>",
            "a@.x",
            "a,b@x",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
        assert!(check_address("a.b+c@x.example").is_ok());
        let mut c = Compose::new(Mailbox::new("bot@agents.localhost"));
        assert_eq!(c.validate(), Err(ComposeError::NoRecipients));
        c.to = (0..=MAX_RECIPIENTS)
            .map(|i| Mailbox::new(format!("r{i}@x.example")))
            .collect();
        assert_eq!(
            c.validate(),
            Err(ComposeError::TooManyRecipients(MAX_RECIPIENTS + 1))
        );
        c.to.truncate(MAX_RECIPIENTS);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn header_text_cannot_inject() {
        assert_eq!(clean_header_text("a\r\nBcc: x@y", 100), "a  Bcc: x@y");
        assert_eq!(
            clean_header_text(&"x".repeat(2000), MAX_SUBJECT_CHARS).len(),
            MAX_SUBJECT_CHARS
        );
    }

    #[test]
    fn crlf_normalizes() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert!(is_8bit_safe(b"short\nlines"));
        assert!(!is_8bit_safe(&[b'a'; 1200]));
        assert!(!is_8bit_safe(b"nul\0"));
    }

    #[test]
    fn stamp_is_deterministic_and_at_our_domain() {
        let a = Stamp::new("Agents.Localhost", 1_795_251_900, 7);
        assert_eq!(a, Stamp::new("agents.localhost", 1_795_251_900, 7));
        assert!(a.message_id.starts_with('<') && a.message_id.ends_with("@agents.localhost>"));
        assert_ne!(Stamp::now("x").message_id, Stamp::now("x").message_id);
    }
}
