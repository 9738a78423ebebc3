//! A stored message as the console shows it: headers, text, the HTML part
//! sanitized, the attachment list and the verdicts, read-only.
//!
//! HTML mail goes through `ammonia` with a stricter policy than its default:
//! no images at all (remote content would tell the sender the mail was read),
//! links only to `http`, `https` and `mailto` (so `javascript:` and `data:`
//! links disappear) with `rel="noopener noreferrer nofollow"`, no forms,
//! inputs, scripts, styles, frames or event attributes. The page's CSP
//! (`default-src 'none'`, scripts only our own file) would block what slipped
//! through anyway.

use std::collections::HashSet;

use mail_parser::{MessageParser, MimeHeaders as _};

/// Most bytes of a text or HTML part shown; the rest is cut with a note.
pub const MAX_SHOWN_BODY_BYTES: usize = 256 * 1024;

/// What the message page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailView {
    /// `From:` as written.
    pub from: String,
    /// `To:` as written.
    pub to: String,
    /// `Subject:`.
    pub subject: String,
    /// `Date:` as written.
    pub date: String,
    /// The first text part.
    pub text: Option<String>,
    /// The first HTML part, sanitized.
    pub html: Option<String>,
    /// Attachments: file name (or content type) and size in bytes.
    pub attachments: Vec<(String, usize)>,
    /// The topmost `Authentication-Results` field (ours: the MX prepends it).
    pub verdicts: Option<String>,
}

/// Sanitizes an HTML mail body for display (module docs for the policy).
pub fn sanitize_html(html: &str) -> String {
    let schemes: HashSet<&str> = ["http", "https", "mailto"].into_iter().collect();
    ammonia::Builder::default()
        .rm_tags(["img"])
        .url_schemes(schemes)
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(html)
        .to_string()
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_SHOWN_BODY_BYTES {
        let mut end = MAX_SHOWN_BODY_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("\n[… cut: the message is longer than the console shows]");
    }
    s
}

/// Parses a stored message for display; `None` if it is not a message at all.
pub fn view(raw: &[u8]) -> Option<MailView> {
    let message = MessageParser::default().parse(raw)?;
    let header_text = |name: &str| {
        message.header_raw(name).map(|v| v.trim().replace(['\r', '\n'], " ")).unwrap_or_default()
    };
    let attachments = message
        .attachments()
        .map(|a| {
            let name = a
                .attachment_name()
                .map(str::to_owned)
                .or_else(|| a.content_type().map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))))
                .unwrap_or_else(|| "attachment".to_owned());
            (name, a.contents().len())
        })
        .collect();
    Some(MailView {
        from: header_text("From"),
        to: header_text("To"),
        subject: message.subject().unwrap_or("").to_owned(),
        date: header_text("Date"),
        text: message.body_text(0).map(|t| cut(t.into_owned())),
        html: if has_real_html(&message) { message.body_html(0).map(|h| sanitize_html(&cut(h.into_owned()))) } else { None },
        attachments,
        verdicts: message.header_raw("Authentication-Results").map(|v| v.trim().replace(['\r', '\n'], " ")),
    })
}

/// Whether the message has an HTML part of its own (mail-parser converts a
/// text-only message to HTML on request; that copy is not shown).
fn has_real_html(message: &mail_parser::Message<'_>) -> bool {
    message.html_body.iter().any(|&i| {
        message.parts.get(i as usize).is_some_and(|p| matches!(p.body, mail_parser::PartType::Html(_)))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const HOSTILE: &str = r#"<p onclick="steal()">Hi <b>there</b></p>
<script>alert(1)</script><img src="https://tracker.example/p.gif" alt="pixel">
<form action="https://evil.example/"><input name="pw"><button>Go</button></form>
<a href="javascript:alert(2)">click</a> <a href="https://ok.example/x">ok</a>
<iframe src="https://evil.example/"></iframe><style>body{display:none}</style>
<div style="background:url(https://tracker.example/bg)">styled</div>"#;

    #[test]
    fn hostile_html_is_rendered_inert() {
        let clean = sanitize_html(HOSTILE);
        for gone in ["<script", "alert(1)", "<img", "tracker.example", "<form", "<input", "<button", "javascript:", "onclick", "<iframe", "<style", "style="] {
            assert!(!clean.contains(gone), "{gone:?} survived: {clean}");
        }
        assert!(clean.contains("<b>there</b>"), "{clean}");
        assert!(clean.contains(r#"href="https://ok.example/x""#), "{clean}");
        assert!(clean.contains("noopener noreferrer nofollow"), "{clean}");
    }

    #[test]
    fn a_message_shows_headers_text_html_and_attachments() {
        let raw = concat!(
            "Authentication-Results: mx.test; dkim=pass\r\n",
            "From: Service <noreply@service.example>\r\n",
            "To: bot@agents.localhost\r\n",
            "Subject: Your code\r\n",
            "Date: Mon, 7 Dec 2026 06:00:00 +0000\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
            "--b\r\nContent-Type: text/html\r\n\r\n<p>Code <b>123456</b></p><img src=\"https://t.example/p\">\r\n",
            "--b\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Disposition: attachment; filename=invoice.pdf\r\n\r\nPDFDATA\r\n",
            "--b--\r\n"
        );
        let v = view(raw.as_bytes()).unwrap();
        assert_eq!(v.subject, "Your code");
        assert_eq!(v.from, "Service <noreply@service.example>");
        assert_eq!(v.verdicts.as_deref(), Some("mx.test; dkim=pass"));
        let html = v.html.unwrap();
        assert!(html.contains("<b>123456</b>") && !html.contains("<img"), "{html}");
        assert_eq!(v.attachments, vec![("invoice.pdf".to_owned(), 7)]);
    }

    proptest! {
        /// Whatever the input, nothing that runs or loads survives: no script,
        /// image, form, frame, event attribute or `javascript:` URL.
        #[test]
        fn nothing_active_survives(parts in prop::collection::vec(prop::sample::select(vec![
            "<script>x()</script>", "<img src=http://t/p>", "<IMG SRC=\"https://t/p\">", "<form><input></form>",
            "<a href=\"javascript:x()\">a</a>", "<a href=\" JaVaScRiPt:x()\">b</a>", "<svg onload=x()>", "<iframe src=//t>",
            "<p onmouseover=x()>p</p>", "text", "<b>bold</b>", "<a href=\"https://ok/\">ok</a>", "<<script>", "</p>", "&lt;",
            "<object data=x>", "<embed src=x>", "<meta http-equiv=refresh content=0;url=http://t>", "<link rel=stylesheet href=//t>",
        ]), 0..12)) {
            let clean = sanitize_html(&parts.concat()).to_ascii_lowercase();
            // Text is serialized escaped (`&lt;`), so every raw `<` opens a real
            // tag: check the tags (after an unclosed `<iframe>` the rest of the
            // input is escaped text, inert however it reads).
            for tag in clean.split('<').skip(1).map(|t| t.split('>').next().unwrap_or("")) {
                let name = tag.trim_start_matches('/').split(|c: char| c.is_whitespace()).next().unwrap_or("");
                for gone in ["script", "img", "form", "input", "iframe", "svg", "object", "embed", "meta", "link", "style"] {
                    prop_assert!(name != gone, "<{}> survived in {}", gone, clean);
                }
                for gone in ["onload", "onmouseover", "javascript:", "style="] {
                    prop_assert!(!tag.contains(gone), "{} survived in <{}> of {}", gone, tag, clean);
                }
            }
        }
    }
}
