//! HTML to readable text, keeping what the agent needs: the words, the table
//! cells apart, and the links with their anchor text.
//!
//! Why not mail-parser's `html_to_text`: it drops every attribute (so link
//! targets are lost) and emits nothing for `<td>`/`<div>`/`<tr>`, so table cells
//! run together and a heading sticks to the next word. Verification mails put
//! their codes in tables and their magic links behind buttons, so this small,
//! bounded converter keeps both. It is a tokenizer, not a DOM: malformed markup
//! degrades to slightly odd text, never to an error or a panic.

use serde::Serialize;

/// HTML bytes looked at; the rest of a larger body is ignored.
pub const MAX_HTML_INPUT: usize = 2 * 1024 * 1024;
/// Links kept per HTML body.
pub const MAX_LINKS: usize = 256;
/// Longest link target kept (longer ones are dropped, not truncated).
pub const MAX_URL_LEN: usize = 4096;
/// Longest anchor text kept per link (longer text is truncated).
pub const MAX_ANCHOR_TEXT: usize = 256;

/// A hyperlink found in an HTML body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The `href` target, entities decoded, surrounding whitespace removed.
    pub url: String,
    /// The anchor's visible text (whitespace collapsed), possibly empty.
    pub text: String,
    /// Inside a `<blockquote>`: quoted history of a thread, not this message's own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quoted: bool,
}

/// The result of [`to_text`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlText {
    /// Readable text: blocks on their own lines, table cells separated by a tab.
    pub text: String,
    /// The `<a href>` links in document order (at most [`MAX_LINKS`]).
    pub links: Vec<Link>,
}

/// Elements whose content is never shown.
const HIDDEN: &[&str] = &[
    "head", "style", "script", "template", "title", "noscript", "svg",
];
/// Elements that start and end a line.
const BLOCK: &[&str] = &[
    "p",
    "div",
    "br",
    "tr",
    "li",
    "ul",
    "ol",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "blockquote",
    "section",
    "article",
    "header",
    "footer",
    "center",
    "pre",
    "dt",
    "dd",
    "dl",
    "address",
    "body",
    "html",
    "main",
    "nav",
    "form",
    "fieldset",
    "figure",
    "figcaption",
    "caption",
];
/// Elements that end a table cell.
const CELL: &[&str] = &["td", "th"];

struct Out {
    text: String,
    pending_space: bool,
    /// Open `<blockquote>` elements: their lines are written with a `> ` mark,
    /// as a plain-text reply quotes, so the OTP extractor can skip them.
    quote_depth: usize,
}

impl Out {
    fn push_char(&mut self, c: char) {
        if c.is_whitespace() {
            self.pending_space = true;
            return;
        }
        if self.quote_depth > 0 && (self.text.is_empty() || self.text.ends_with('\n')) {
            self.text.push_str("> ");
            self.pending_space = false;
        }
        if self.pending_space {
            if !self.text.is_empty() && !self.text.ends_with(['\n', '\t', ' ']) {
                self.text.push(' ');
            }
            self.pending_space = false;
        }
        self.text.push(c);
    }

    fn newline(&mut self) {
        self.pending_space = false;
        while self.text.ends_with([' ', '\t']) {
            self.text.pop();
        }
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    fn cell_end(&mut self) {
        self.pending_space = false;
        while self.text.ends_with(' ') {
            self.text.pop();
        }
        if !self.text.is_empty() && !self.text.ends_with(['\n', '\t']) {
            self.text.push('\t');
        }
    }
}

/// Converts an HTML body to readable text plus its links.
pub fn to_text(html: &str) -> HtmlText {
    let html = truncate(html, MAX_HTML_INPUT);
    let mut out = Out {
        text: String::with_capacity(html.len() / 2),
        pending_space: false,
        quote_depth: 0,
    };
    let mut links = Vec::new();
    // The link being read: (href, text).
    let mut open_link: Option<(String, String)> = None;
    let mut hidden: Option<String> = None;
    let mut rest = html;

    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if hidden.is_none() {
                emit_text(rest, &mut out, &mut open_link);
            }
            break;
        };
        if hidden.is_none() {
            emit_text(&rest[..lt], &mut out, &mut open_link);
        }
        rest = &rest[lt..];

        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        let Some((tag, after)) = read_tag(rest) else {
            // A lone '<' that starts no tag is text.
            if hidden.is_none() {
                emit_text("<", &mut out, &mut open_link);
            }
            rest = &rest[1..];
            continue;
        };
        rest = after;

        if let Some(hidden_name) = &hidden {
            if tag.closing && tag.name == *hidden_name {
                hidden = None;
            }
            continue;
        }
        let name = tag.name.as_str();
        if !tag.closing && !tag.self_closing && HIDDEN.contains(&name) {
            hidden = Some(tag.name.clone());
            continue;
        }
        if name == "img" {
            if let (Some((_, text)), Some(alt)) = (&mut open_link, &tag.href)
                && text.len() < MAX_ANCHOR_TEXT * 4
            {
                text.push(' ');
                text.push_str(alt);
            }
            continue;
        }
        if name == "a" {
            if let Some((url, text)) = open_link.take() {
                push_link(&mut links, url, text, out.quote_depth > 0);
            }
            if !tag.closing
                && let Some(href) = tag.href
            {
                open_link = Some((href, String::new()));
            }
            continue;
        }
        if CELL.contains(&name) {
            if tag.closing {
                out.cell_end();
            }
            continue;
        }
        if BLOCK.contains(&name) {
            out.newline();
        }
        if name == "blockquote" && !tag.self_closing {
            out.quote_depth = if tag.closing { out.quote_depth.saturating_sub(1) } else { out.quote_depth + 1 };
        }
    }
    if let Some((url, text)) = open_link.take() {
        push_link(&mut links, url, text, out.quote_depth > 0);
    }
    let text = out.text.trim().to_owned();
    HtmlText { text, links }
}

fn push_link(links: &mut Vec<Link>, url: String, text: String, quoted: bool) {
    let url = url.trim().to_owned();
    if url.is_empty() || url.len() > MAX_URL_LEN || links.len() >= MAX_LINKS {
        return;
    }
    let text = collapse_ws(&text);
    let text = truncate(&text, MAX_ANCHOR_TEXT).to_owned();
    links.push(Link { url, text, quoted });
}

fn emit_text(raw: &str, out: &mut Out, open_link: &mut Option<(String, String)>) {
    let decoded = decode_entities(raw);
    for c in decoded.chars() {
        out.push_char(c);
    }
    if let Some((_, text)) = open_link
        && text.len() < MAX_ANCHOR_TEXT * 4
    {
        text.push_str(&decoded);
    }
}

struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    /// `<a href>`, or `<img alt>`.
    href: Option<String>,
}

/// Reads one tag at the start of `s` (which starts with `<`). `None` when the
/// `<` does not start a tag (e.g. `a < b`).
fn read_tag(s: &str) -> Option<(Tag, &str)> {
    let body = &s[1..];
    let (closing, body) = match body.strip_prefix('/') {
        Some(b) => (true, b),
        None => (false, body),
    };
    let name_len = body
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(body.len());
    if name_len == 0 || !body.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let name = body[..name_len].to_ascii_lowercase();
    // Find the end of the tag, skipping quoted attribute values.
    let bytes = body.as_bytes();
    let mut i = name_len;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'>' => break,
            None => {}
        }
        i += 1;
    }
    let attrs = &body[name_len..i.min(body.len())];
    let rest = if i < bytes.len() { &body[i + 1..] } else { "" };
    let self_closing = attrs.trim_end().ends_with('/');
    let href = match name.as_str() {
        "a" if !closing => attribute(attrs, "href"),
        // An image's alt text names an image button ("Verify email").
        "img" => attribute(attrs, "alt"),
        _ => None,
    };
    Some((
        Tag {
            name,
            closing,
            self_closing,
            href,
        },
        rest,
    ))
}

/// The decoded value of attribute `want` in an attribute list.
fn attribute(attrs: &str, want: &str) -> Option<String> {
    let mut rest = attrs;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        if rest.is_empty() {
            return None;
        }
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/' || c == '>')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start();
        let mut value = None;
        if let Some(after_eq) = rest.strip_prefix('=') {
            let after_eq = after_eq.trim_start();
            let (v, after) = match after_eq.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let inner = &after_eq[1..];
                    match inner.find(q) {
                        Some(end) => (&inner[..end], &inner[end + 1..]),
                        None => (inner, ""),
                    }
                }
                _ => {
                    let end = after_eq.find(char::is_whitespace).unwrap_or(after_eq.len());
                    (&after_eq[..end], &after_eq[end..])
                }
            };
            value = Some(v);
            rest = after;
        }
        if name.eq_ignore_ascii_case(want) {
            return value.map(decode_entities);
        }
        if name.is_empty() {
            // Not an attribute character: skip one char to make progress.
            let mut chars = rest.chars();
            chars.next();
            rest = chars.as_str();
        }
    }
}

/// Decodes `&name;`, `&#NN;` and `&#xHH;` references; unknown ones stay as written.
pub(crate) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map_or(rest.len(), |e| e + 1);
        let name = &rest[1..end];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => num.parse::<u32>().ok(),
            };
            code.map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
        } else {
            named_entity(name)
        };
        match decoded {
            Some(c) if !name.is_empty() => {
                out.push(c);
                let consumed = if rest[end..].starts_with(';') {
                    end + 1
                } else {
                    end
                };
                rest = &rest[consumed..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ensp" | "emsp" | "thinsp" => ' ',
        "zwnj" => '\u{200c}',
        "zwj" => '\u{200d}',
        "shy" => '\u{ad}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "minus" => '−',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "sect" => '§',
        "deg" => '°',
        "times" => '×',
        "agrave" => 'à',
        "aacute" => 'á',
        "acirc" => 'â',
        "auml" => 'ä',
        "Auml" => 'Ä',
        "ccedil" => 'ç',
        "egrave" => 'è',
        "eacute" => 'é',
        "Eacute" => 'É',
        "ecirc" => 'ê',
        "euml" => 'ë',
        "iacute" => 'í',
        "icirc" => 'î',
        "ntilde" => 'ñ',
        "oacute" => 'ó',
        "ocirc" => 'ô',
        "ouml" => 'ö',
        "Ouml" => 'Ö',
        "uacute" => 'ú',
        "ugrave" => 'ù',
        "ucirc" => 'û',
        "uuml" => 'ü',
        "Uuml" => 'Ü',
        "szlig" => 'ß',
        "iexcl" => '¡',
        "iquest" => '¿',
        _ => return None,
    })
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cells_and_hidden_parts() {
        let html = "<html><head><title>T</title><style>p{color:red}</style></head><body>\
            <h1>Your code</h1><table><tr><td> 1 </td><td>2</td><td>3</td></tr></table>\
            <p>Hello&nbsp;<b>world</b> &amp; co</p><script>var x = '123456';</script>\
            <!-- 999999 --><div>end</div></body></html>";
        let t = to_text(html);
        assert_eq!(t.text, "Your code\n1\t2\t3\nHello world & co\nend");
    }

    #[test]
    fn blockquotes_are_marked_as_quoted_history() {
        let t = to_text(
            "<p>New code 111111</p><blockquote><p>Old code 222222</p><a href=\"https://x.example/old\">old</a>\
             <blockquote>older</blockquote></blockquote><p>after <a href=\"https://x.example/new\">new</a></p>",
        );
        assert_eq!(t.text, "New code 111111\n> Old code 222222\n> old\n> older\nafter new");
        assert_eq!(t.links.iter().map(|l| (l.url.as_str(), l.quoted)).collect::<Vec<_>>(), vec![
            ("https://x.example/old", true),
            ("https://x.example/new", false)
        ]);
    }

    #[test]
    fn links_keep_href_and_text() {
        let html = r#"<p>Click <a class="btn" href="https://x.example/verify?t=a&amp;b=1">Verify <b>now</b></a>
            or <A HREF='https://x.example/unsubscribe'>unsubscribe</A> <a name=x>no href</a></p>"#;
        let t = to_text(html);
        assert_eq!(
            t.links,
            vec![
                Link {
                    url: "https://x.example/verify?t=a&b=1".into(),
                    text: "Verify now".into(),
                    quoted: false
                },
                Link {
                    url: "https://x.example/unsubscribe".into(),
                    text: "unsubscribe".into(),
                    quoted: false
                },
            ]
        );
        assert_eq!(t.text, "Click Verify now or unsubscribe no href");
    }

    #[test]
    fn image_buttons_are_named_by_their_alt_text() {
        let t = to_text(
            r#"<a href="https://x.example/v/Ab12Cd34Ef56"><img src="b.png" alt="Verify &amp; continue"></a>"#,
        );
        assert_eq!(t.links[0].text, "Verify & continue");
        assert_eq!(t.text, "");
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a &lt;b&gt; &#65;&#x42; &unknown; & &"),
            "a <b> AB &unknown; & &"
        );
        assert_eq!(decode_entities("&#xD800;"), "\u{fffd}");
    }

    #[test]
    fn malformed_markup_degrades() {
        assert_eq!(to_text("a < b and <b>c").text, "a < b and c");
        assert_eq!(to_text("<a href=\"x").text, "");
        assert_eq!(to_text("<!-- never closed 123").text, "");
        assert_eq!(to_text("<style>never closed").text, "");
    }

    #[test]
    fn link_limit_is_enforced() {
        let html = "<a href=\"https://e.example/\">x</a>".repeat(MAX_LINKS + 10);
        assert_eq!(to_text(&html).links.len(), MAX_LINKS);
        let long = format!(
            "<a href=\"https://e.example/{}\">x</a>",
            "a".repeat(MAX_URL_LEN)
        );
        assert!(to_text(&long).links.is_empty());
    }

    #[test]
    fn anchor_text_limit_is_enforced() {
        let html = format!(
            "<a href=\"https://e.example/\">{}</a>",
            "word ".repeat(MAX_ANCHOR_TEXT)
        );
        let t = to_text(&html);
        assert_eq!(t.links[0].text.len(), MAX_ANCHOR_TEXT);
    }

    #[test]
    fn input_limit_is_enforced() {
        let mut html = "x".repeat(MAX_HTML_INPUT);
        html.push_str("<p>tail</p>");
        assert!(!to_text(&html).text.contains("tail"));
        assert_eq!(truncate("é", 1), "");
    }
}
