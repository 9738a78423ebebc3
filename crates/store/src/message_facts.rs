//! [`MessageFacts`]: what threads and search need from a message, taken once
//! when it is indexed (issue 13 §4).
//!
//! The server is a broker, not a proxy: the agent parses what it reads. But a
//! thread or a search answer is a question about many messages, which only the
//! index can answer without fetching each one, so these facts are extracted at
//! acceptance, next to the [`HeaderSummary`](crate::HeaderSummary), from the
//! decoded MIME (mail-parser):
//!
//! - **thread keys**: the `Message-ID`, `In-Reply-To` and `References` ids
//!   (bounded: [`MAX_THREAD_REFERENCES`], [`MAX_MESSAGE_ID_CHARS`]), and the
//!   subject with its reply and forward prefixes removed ([`base_subject`]);
//! - **search terms** ([`terms`]): the words of the subject, the `From:`
//!   mailbox, the `To:`/`Cc:` addresses and the decoded body text (at most
//!   [`MAX_SEARCH_BODY_BYTES`] of it, of the first [`MAX_FACTS_PARSE_BYTES`] of
//!   the message), lower-cased, each at most [`MAX_TERM_CHARS`], at most
//!   [`MAX_BODY_TERMS`] distinct ones; CJK runs become overlapping pairs of
//!   characters so that a word inside a run without spaces can be found;
//! - the `To:`/`Cc:` addresses and whether the message has an attachment.
//!
//! **Taking facts never fails**, like the summary: an unparseable message gets
//! empty facts and is stored and acknowledged like any other.

use mail_parser::MessageParser;

use crate::header_summary::HeaderSummary;

/// Most bytes of a message parsed for its facts. The text parts of a message
/// come first in practice; an attachment beyond this prefix is still noticed
/// by a scan of the rest for `Content-Disposition: attachment`.
pub const MAX_FACTS_PARSE_BYTES: usize = 512 * 1024;
/// Most bytes of decoded body text whose words are indexed.
pub const MAX_SEARCH_BODY_BYTES: usize = 64 * 1024;
/// Most distinct words indexed per message (body, subject and addresses together).
pub const MAX_BODY_TERMS: usize = 4096;
/// Longest indexed word, in characters; a longer one is cut to this (in the
/// index and in a query alike, so it is still found).
pub const MAX_TERM_CHARS: usize = 48;
/// Longest message id kept as a thread key, in characters; a longer one is ignored.
pub const MAX_MESSAGE_ID_CHARS: usize = 250;
/// Most `References` ids kept: the first (the thread's root) and the last
/// `MAX_THREAD_REFERENCES - 1` (the nearest ancestors).
pub const MAX_THREAD_REFERENCES: usize = 20;
/// Most `To:`/`Cc:` addresses kept for the `to` filter.
pub const MAX_RECIPIENTS: usize = 50;
/// Longest base subject used as a thread key, in characters.
pub const MAX_BASE_SUBJECT_CHARS: usize = 200;

/// Reply and forward prefixes removed from a subject before it is compared
/// (English, German, Nordic, Dutch, French, Spanish, Italian, Portuguese,
/// Polish, Finnish, Turkish, Chinese, Japanese, Korean clients), compared
/// case-insensitively, each followed by `:` or `：` (optionally `[n]` / `(n)`).
pub const SUBJECT_PREFIXES: &[&str] = &[
    "re", "fw", "fwd", "aw", "wg", "sv", "vs", "vb", "antw", "doorst", "tr", "réf", "ref", "rv", "r", "enc", "res",
    "odp", "pd", "vl", "ynt", "ilt", "回复", "回覆", "答复", "转发", "轉寄", "返信", "転送", "답장", "전달",
];

/// What threads and search know of a message (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageFacts {
    /// The `Message-ID`, without `<>`, if it has a usable one.
    pub message_id: Option<String>,
    /// `In-Reply-To` and `References` ids (bounded, without duplicates).
    pub links: Vec<String>,
    /// The subject without reply/forward prefixes, lower-cased (empty: none).
    pub base_subject: String,
    /// Whether the subject carried a reply or forward prefix.
    pub reply_subject: bool,
    /// `To:` and `Cc:` addresses, lower-cased, without duplicates.
    pub recipients: Vec<String>,
    /// Whether the message has an attachment part.
    pub has_attachment: bool,
    /// Indexed words of the subject.
    pub subject_terms: Vec<String>,
    /// Indexed words of the `From:` mailbox (address and name).
    pub sender_terms: Vec<String>,
    /// Indexed words of the `To:`/`Cc:` addresses.
    pub recipient_terms: Vec<String>,
    /// Indexed words of the decoded body text.
    pub body_terms: Vec<String>,
}

impl MessageFacts {
    /// The facts of a stored copy, `summary` being its [`HeaderSummary`].
    /// Never fails and never panics.
    pub fn of_message(raw: &[u8], summary: &HeaderSummary) -> Self {
        let head = &raw[..raw.len().min(MAX_FACTS_PARSE_BYTES)];
        let mut facts = Self::default();
        if let Some(subject) = &summary.subject {
            let (base, reply) = base_subject(subject);
            facts.base_subject = base;
            facts.reply_subject = reply;
            facts.subject_terms = terms(subject, MAX_BODY_TERMS);
        }
        if let Some(from) = &summary.header_from {
            let mut text = from.address.clone();
            if let Some(name) = &from.name {
                text.push(' ');
                text.push_str(name);
            }
            facts.sender_terms = terms(&text, MAX_BODY_TERMS);
            facts.sender_terms.extend(address_words(&from.address.to_lowercase()));
        }
        let Some(msg) = MessageParser::default().parse(head) else {
            facts.has_attachment = attachment_beyond(raw, head.len());
            return facts;
        };
        facts.message_id = msg.message_id().and_then(message_id_key);
        facts.links = links(&msg);

        let mut recipients: Vec<String> = Vec::new();
        for list in [msg.to(), msg.cc()].into_iter().flatten() {
            for a in list.iter() {
                if let Some(addr) = a.address() {
                    let addr = addr.trim().to_lowercase();
                    let usable = !addr.is_empty()
                        && addr.len() <= 254
                        && !addr.chars().any(|c| c.is_whitespace() || c.is_control());
                    if usable && !recipients.contains(&addr) && recipients.len() < MAX_RECIPIENTS {
                        recipients.push(addr);
                    }
                }
            }
        }
        facts.recipient_terms = terms(&recipients.join(" "), MAX_BODY_TERMS);
        for r in &recipients {
            for w in address_words(r) {
                if !facts.recipient_terms.contains(&w) {
                    facts.recipient_terms.push(w);
                }
            }
        }
        facts.recipients = recipients;

        facts.has_attachment = msg.attachment_count() > 0 || attachment_beyond(raw, head.len());

        let mut body = String::new();
        for i in 0..msg.text_body_count() {
            if body.len() >= MAX_SEARCH_BODY_BYTES {
                break;
            }
            if let Some(text) = msg.body_text(i) {
                body.push_str(&text);
                body.push('\n');
            }
        }
        facts.body_terms = terms(cut_at_char(&body, MAX_SEARCH_BODY_BYTES), MAX_BODY_TERMS);
        facts
    }

    /// The thread keys this message registers: its own id, its links and its
    /// base subject (stored with the row, looked up by later messages).
    pub fn thread_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        if let Some(id) = &self.message_id {
            keys.push(format!("m:{id}"));
        }
        for l in &self.links {
            let k = format!("m:{l}");
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        if !self.base_subject.is_empty() {
            keys.push(format!("s:{}", self.base_subject));
        }
        keys
    }

    /// The keys this message looks up to find its thread: its own id (a reply
    /// that arrived first, or a copy of it), and its links; only when it has no
    /// links, and its subject says it is a reply or a forward, its base subject.
    pub fn thread_lookup_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        if let Some(id) = &self.message_id {
            keys.push(format!("m:{id}"));
        }
        for l in &self.links {
            let k = format!("m:{l}");
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        if self.links.is_empty() && self.reply_subject && !self.base_subject.is_empty() {
            keys.push(format!("s:{}", self.base_subject));
        }
        keys
    }
}

/// The `In-Reply-To` and `References` ids of a message as thread links
/// (bounded, without duplicates): the ones it replies to, the root, then the
/// nearest ancestors.
fn links(msg: &mail_parser::Message<'_>) -> Vec<String> {
    let mut links: Vec<String> = Vec::new();
    let mut push = |id: &str| {
        if let Some(k) = message_id_key(id)
            && !links.contains(&k)
        {
            links.push(k);
        }
    };
    if let Some(list) = msg.in_reply_to().as_text_list() {
        list.iter().take(MAX_THREAD_REFERENCES).for_each(|id| push(id));
    }
    if let Some(list) = msg.references().as_text_list() {
        // The root, then the nearest ancestors.
        list.iter().take(1).for_each(|id| push(id));
        list.iter().skip(1).rev().take(MAX_THREAD_REFERENCES - 1).for_each(|id| push(id));
    }
    links.truncate(MAX_THREAD_REFERENCES * 2);
    links
}

/// The thread keys of a message an inbox sends: its own `Message-ID` and its
/// `In-Reply-To`/`References` ids, spelled as [`MessageFacts::thread_keys`]
/// spells them (`m:<id>`), never its subject (a sent message is placed by its
/// headers only). Reads the header block only; a message without usable ids
/// has none.
pub fn sent_thread_keys(raw: &[u8]) -> Vec<String> {
    let head = &raw[..raw.len().min(MAX_FACTS_PARSE_BYTES)];
    let Some(msg) = MessageParser::default().parse_headers(head) else {
        return Vec::new();
    };
    let facts = MessageFacts {
        message_id: msg.message_id().and_then(message_id_key),
        links: links(&msg),
        ..MessageFacts::default()
    };
    facts.thread_keys()
}

/// Most domain suffixes of one address indexed as words ([`address_words`]).
pub const MAX_DOMAIN_SUFFIXES: usize = 8;

/// FNV-1a, 64 bits (a word naming a value; a collision only adds candidates,
/// which the exact check on the row removes).
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The word that names a whole address (lower-cased) in the index.
pub fn address_word(address: &str) -> String {
    format!("a{:016x}", fnv64(address.as_bytes()))
}

/// The word that names a domain (lower-cased) in the index.
pub fn domain_word(domain: &str) -> String {
    format!("d{:016x}", fnv64(domain.as_bytes()))
}

/// The words an address (lower-cased) is found by as a whole: its own, and
/// one per domain suffix (`mail.github.com`, `github.com`, `com`; at most
/// [`MAX_DOMAIN_SUFFIXES`]), so an address or domain filter reads one short
/// list of the full-text index instead of intersecting common words.
pub fn address_words(address: &str) -> Vec<String> {
    let mut out = vec![address_word(address)];
    if let Some((_, domain)) = address.rsplit_once('@') {
        let mut d = domain;
        for _ in 0..MAX_DOMAIN_SUFFIXES {
            if d.is_empty() {
                break;
            }
            out.push(domain_word(d));
            match d.split_once('.') {
                Some((_, rest)) => d = rest,
                None => break,
            }
        }
    }
    out
}

/// A message id as a thread key: trimmed, without `<>`, at most
/// [`MAX_MESSAGE_ID_CHARS`], no spaces or control characters; `None` otherwise.
fn message_id_key(id: &str) -> Option<String> {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>').trim();
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_MESSAGE_ID_CHARS
        && !id.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| id.to_owned())
}

/// Whether `raw` beyond `from` has a part declared as an attachment
/// (`Content-Disposition: attachment`, any case), without parsing it.
fn attachment_beyond(raw: &[u8], from: usize) -> bool {
    const NEEDLE: &[u8] = b"content-disposition:";
    let rest = &raw[from.min(raw.len())..];
    let mut i = 0;
    while i + NEEDLE.len() <= rest.len() {
        let line_end = rest[i..].iter().position(|&b| b == b'\n').map_or(rest.len(), |n| i + n);
        let line = &rest[i..line_end];
        if line.len() >= NEEDLE.len() && line[..NEEDLE.len()].eq_ignore_ascii_case(NEEDLE) {
            let value = &line[NEEDLE.len()..];
            let value = value.trim_ascii_start();
            if value.len() >= 10 && value[..10].eq_ignore_ascii_case(b"attachment") {
                return true;
            }
        }
        i = line_end + 1;
    }
    false
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The subject without reply and forward prefixes ([`SUBJECT_PREFIXES`],
/// repeated, with `[n]`/`(n)` counters, and list tags like `[list]` before
/// them), whitespace collapsed, lower-cased, cut to [`MAX_BASE_SUBJECT_CHARS`];
/// and whether any prefix was removed.
///
/// ```
/// use agentkeys_store::message_facts::base_subject;
/// assert_eq!(base_subject("Re: AW: Fwd:  Quarterly   report"), ("quarterly report".to_owned(), true));
/// assert_eq!(base_subject("SV: Möte"), ("möte".to_owned(), true));
/// assert_eq!(base_subject("Report: Q3"), ("report: q3".to_owned(), false));
/// ```
pub fn base_subject(subject: &str) -> (String, bool) {
    let mut s = subject.trim();
    let mut removed = false;
    loop {
        let before = s;
        // A list tag before a prefix: "[team] Re: x".
        if let Some(rest) = s.strip_prefix('[')
            && let Some(end) = rest.find(']')
        {
            let after = rest[end + 1..].trim_start();
            if strip_one_prefix(after).is_some() {
                s = after;
            }
        }
        if let Some(rest) = strip_one_prefix(s) {
            s = rest.trim_start();
            removed = true;
        }
        if s == before {
            break;
        }
    }
    let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    (collapsed.chars().take(MAX_BASE_SUBJECT_CHARS).collect(), removed)
}

/// `s` after one reply/forward prefix and its colon, if it starts with one.
fn strip_one_prefix(s: &str) -> Option<&str> {
    let lower = s.to_lowercase();
    for p in SUBJECT_PREFIXES {
        if lower.starts_with(p) && s.is_char_boundary(p.len()) && lower.len() == s.len() {
            let mut rest = &s[p.len()..];
            // A counter: "Re[2]:", "Re(3):".
            for (open, close) in [('[', ']'), ('(', ')')] {
                if let Some(inner) = rest.strip_prefix(open)
                    && let Some(end) = inner.find(close)
                    && inner[..end].chars().all(|c| c.is_ascii_digit())
                {
                    rest = &inner[end + 1..];
                }
            }
            let rest = rest.trim_start_matches(' ');
            if let Some(after) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：')) {
                return Some(after);
            }
        }
    }
    None
}

/// Whether `c` is written without spaces between words (Han, kana, Hangul),
/// so its runs are indexed as overlapping pairs.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF | 0x20000..=0x2FFFF)
}

/// The distinct words of `text` as indexed and queried, in first-seen order,
/// at most `max`: runs of letters and digits, lower-cased, each cut to
/// [`MAX_TERM_CHARS`]; a CJK run becomes its overlapping character pairs
/// (one character alone stays itself). Both backends index exactly these
/// words, so a search answers the same on each.
///
/// ```
/// use agentkeys_store::message_facts::terms;
/// assert_eq!(terms("Your code: 123456 (Alice@Example.com)", 10), ["your", "code", "123456", "alice", "example", "com"]);
/// assert_eq!(terms("請求書を送付", 10), ["請求", "求書", "書を", "を送", "送付"]);
/// ```
pub fn terms(text: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |w: String, out: &mut Vec<String>| {
        if out.len() < max && seen.insert(w.clone()) {
            out.push(w);
        }
    };
    let mut word = String::new();
    let mut cjk: Vec<char> = Vec::new();
    let flush_word = |word: &mut String, out: &mut Vec<String>, push: &mut dyn FnMut(String, &mut Vec<String>)| {
        if !word.is_empty() {
            let w: String = word.chars().take(MAX_TERM_CHARS).collect();
            push(w, out);
            word.clear();
        }
    };
    let flush_cjk = |cjk: &mut Vec<char>, out: &mut Vec<String>, push: &mut dyn FnMut(String, &mut Vec<String>)| {
        match cjk.len() {
            0 => {}
            1 => push(cjk[0].to_string(), out),
            _ => {
                for pair in cjk.windows(2) {
                    push(pair.iter().collect(), out);
                }
            }
        }
        cjk.clear();
    };
    for c in text.chars() {
        if out.len() >= max {
            break;
        }
        if is_cjk(c) {
            flush_word(&mut word, &mut out, &mut push);
            cjk.push(c);
        } else if c.is_alphanumeric() {
            flush_cjk(&mut cjk, &mut out, &mut push);
            word.extend(c.to_lowercase());
        } else {
            flush_word(&mut word, &mut out, &mut push);
            flush_cjk(&mut cjk, &mut out, &mut push);
        }
    }
    flush_word(&mut word, &mut out, &mut push);
    flush_cjk(&mut cjk, &mut out, &mut push);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(raw: &str) -> MessageFacts {
        let summary = HeaderSummary::of_message(raw.as_bytes(), "mx.test");
        MessageFacts::of_message(raw.as_bytes(), &summary)
    }

    #[test]
    fn thread_keys_come_from_the_id_headers() {
        let f = facts(
            "Message-ID: <c@x>\r\nIn-Reply-To: <b@x>\r\nReferences: <a@x> <b@x>\r\nSubject: Re: Plan\r\n\r\nok\r\n",
        );
        assert_eq!(f.message_id.as_deref(), Some("c@x"));
        assert_eq!(f.links, ["b@x", "a@x"]);
        assert_eq!(f.thread_lookup_keys(), ["m:c@x", "m:b@x", "m:a@x"], "links exist: no subject fallback");
        assert_eq!(f.thread_keys(), ["m:c@x", "m:b@x", "m:a@x", "s:plan"]);
        let g = facts("Message-ID: <d@x>\r\nSubject: AW: Plan\r\n\r\nok\r\n");
        assert_eq!(g.thread_lookup_keys(), ["m:d@x", "s:plan"], "no links and a reply prefix: subject fallback");
        let h = facts("Message-ID: <e@x>\r\nSubject: Plan\r\n\r\nok\r\n");
        assert_eq!(h.thread_lookup_keys(), ["m:e@x"], "not a reply: no subject lookup");
    }

    #[test]
    fn sent_messages_are_keyed_by_their_ids_never_their_subject() {
        let raw = "Message-ID: <c@x>\r\nIn-Reply-To: <b@x>\r\nReferences: <a@x> <b@x>\r\nSubject: Re: Plan\r\n\r\nok\r\n";
        assert_eq!(sent_thread_keys(raw.as_bytes()), ["m:c@x", "m:b@x", "m:a@x"]);
        let first = "Message-ID: <d@x>\r\nSubject: Re: Plan\r\n\r\nok\r\n";
        assert_eq!(sent_thread_keys(first.as_bytes()), ["m:d@x"], "a reply prefix alone places nothing");
        assert!(sent_thread_keys(b"Subject: Re: Plan\r\n\r\nok\r\n").is_empty());
    }

    #[test]
    fn references_are_bounded_keeping_root_and_nearest() {
        let refs: Vec<String> = (0..100).map(|i| format!("<r{i}@x>")).collect();
        let raw = format!("References: {}\r\nSubject: x\r\n\r\n", refs.join(" "));
        let f = facts(&raw);
        assert_eq!(f.links.len(), MAX_THREAD_REFERENCES);
        assert_eq!(f.links[0], "r0@x");
        assert_eq!(f.links[1], "r99@x");
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "a".repeat(MAX_MESSAGE_ID_CHARS));
        assert_eq!(facts(&long).message_id, None);
    }

    #[test]
    fn subject_prefixes_in_many_languages() {
        for (s, base) in [
            ("Re: Re: Hello", "hello"),
            ("RE: hello", "hello"),
            ("Fwd: Hello", "hello"),
            ("FW: Hello", "hello"),
            ("AW: WG: Angebot", "angebot"),
            ("SV: Hej", "hej"),
            ("VS: Terve", "terve"),
            ("TR: Bonjour", "bonjour"),
            ("RV: Hola", "hola"),
            ("Re[2]: Hi", "hi"),
            ("[list] Re: Hi", "hi"),
            ("返信： 会議", "会議"),
            ("Odp: Cześć", "cześć"),
        ] {
            assert_eq!(base_subject(s), (base.to_owned(), true), "{s}");
        }
        assert_eq!(base_subject("Reminder: pay"), ("reminder: pay".to_owned(), false));
        assert_eq!(base_subject("Rex: hello"), ("rex: hello".to_owned(), false));
        assert_eq!(base_subject("[list] Hi"), ("[list] hi".to_owned(), false));
    }

    #[test]
    fn body_recipients_and_attachments() {
        let raw = "From: Alice <alice@example.com>\r\nTo: Bob <BOB@Example.org>, carol@example.net\r\nCc: dave@example.com\r\n\
Subject: Invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nPlease pay the caf=C3=A9 bill.\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nJVBERi0=\r\n--b--\r\n";
        let f = facts(raw);
        assert_eq!(f.recipients, ["bob@example.org", "carol@example.net", "dave@example.com"]);
        assert!(f.has_attachment);
        assert!(f.body_terms.contains(&"café".to_owned()), "{:?}", f.body_terms);
        assert_eq!(f.sender_terms[..3], ["alice", "example", "com"]);
        assert_eq!(f.sender_terms[3..], address_words("alice@example.com"));
        assert_eq!(address_words("a@mail.x.com"), [address_word("a@mail.x.com"), domain_word("mail.x.com"), domain_word("x.com"), domain_word("com")]);
        assert!(!facts("Subject: x\r\n\r\nplain\r\n").has_attachment);
    }

    #[test]
    fn an_attachment_past_the_parsed_prefix_is_noticed() {
        let mut raw = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n".to_owned();
        raw.push_str(&"x".repeat(MAX_FACTS_PARSE_BYTES));
        raw.push_str("\r\n--b\r\nContent-Type: application/zip\r\nContent-Disposition: Attachment; filename=z\r\n\r\nUEs=\r\n--b--\r\n");
        assert!(facts(&raw).has_attachment);
    }

    #[test]
    fn body_words_are_bounded() {
        let body: String = (0..20_000).map(|i| format!("w{i} ")).collect();
        let f = facts(&format!("Subject: x\r\n\r\n{body}\r\n"));
        assert_eq!(f.body_terms.len(), MAX_BODY_TERMS);
        let long = format!("Subject: x\r\n\r\n{}\r\n", "a".repeat(1000));
        assert_eq!(facts(&long).body_terms, ["a".repeat(MAX_TERM_CHARS)]);
        // Only MAX_SEARCH_BODY_BYTES of text are read.
        let late = format!("Subject: x\r\n\r\n{} needle\r\n", "b ".repeat(MAX_SEARCH_BODY_BYTES));
        assert!(!facts(&late).body_terms.contains(&"needle".to_owned()));
    }

    proptest::proptest! {
        /// Any bytes: bounded facts, terms of letters and digits only.
        #[test]
        fn any_bytes_give_bounded_facts(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let summary = HeaderSummary::of_message(&raw, "mx.test");
            let f = MessageFacts::of_message(&raw, &summary);
            proptest::prop_assert!(f.links.len() <= MAX_THREAD_REFERENCES * 2);
            proptest::prop_assert!(f.recipients.len() <= MAX_RECIPIENTS);
            for t in f.body_terms.iter().chain(&f.subject_terms).chain(&f.sender_terms).chain(&f.recipient_terms) {
                proptest::prop_assert!(!t.is_empty() && t.chars().count() <= MAX_TERM_CHARS);
                proptest::prop_assert!(t.chars().all(char::is_alphanumeric), "{t:?}");
            }
        }

        /// A query's words are found in the text they came from.
        #[test]
        fn terms_of_a_substring_word_are_terms_of_the_text(words in proptest::collection::vec("[a-zA-Z0-9éü]{1,12}", 1..20), pick in 0usize..20) {
            let text = words.join(" ");
            let all = terms(&text, usize::MAX);
            let w = &words[pick % words.len()];
            for t in terms(w, usize::MAX) {
                proptest::prop_assert!(all.contains(&t));
            }
        }
    }
}
