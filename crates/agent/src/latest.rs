//! `latest_text`: the new part of a reply, without the quoted history and the
//! signature (issue 13 §4), so a model reads what the sender wrote now.
//!
//! Pure and bounded (it only ever removes text). The rules, in order:
//!
//! 1. **Cut at the first quote header**: an attribution line ("On … wrote:",
//!    "Am … schrieb …:", "Le … a écrit :", "El … escribió:", "Il … ha
//!    scritto:", "Em … escreveu:", "Op … schreef …:", "Den … skrev …:",
//!    "2026年12月7日 … <…>:", "…のメール:"), possibly wrapped over up to
//!    [`MAX_ATTRIBUTION_LINES`] lines; an Outlook separator ("-----Original
//!    Message-----", "-----Ursprüngliche Nachricht-----", "-----Message
//!    d'origine-----", "-----Mensaje original-----", "-------- Forwarded
//!    Message --------", a line of underscores) or an Outlook header block (a
//!    `From:`/`Von:`/`De :`/`差出人:` line followed within three lines by
//!    `Sent:`/`Date:`/`Gesendet:`/`Envoyé :`/`Enviado`/`送信日時:`).
//! 2. **Drop `>`-quoted lines** left (inline replies keep their own lines).
//! 3. **Cut the signature**: from a `-- ` (or `--`) delimiter line, and a
//!    mobile footer ("Sent from my iPhone", "Von meinem iPhone gesendet",
//!    "Envoyé de mon iPhone", "Enviado desde mi iPhone", "iPhoneから送信", "Get
//!    Outlook for iOS", …) when only blank lines follow it.
//! 4. Trim blank lines at both ends and trailing spaces, make runs of blank
//!    lines one; line endings become `\n`.
//!
//! If the rules would leave nothing (a message that is all quote), the text
//! after step 1's cut is kept as it was rather than returning nothing.

/// Most lines an attribution ("On … wrote:") may be wrapped over.
pub const MAX_ATTRIBUTION_LINES: usize = 3;
/// Longest attribution, in characters: a longer line is prose, not a header.
pub const MAX_ATTRIBUTION_CHARS: usize = 400;
/// Most bytes of text looked at; the rest of a longer text is dropped first.
pub const MAX_LATEST_INPUT: usize = 1024 * 1024;

/// Attribution endings (lower-cased, after trimming): the line that ends the
/// attribution ends with one of these.
const ATTRIBUTION_ENDS: &[&str] = &[
    "wrote:",
    "schrieb:",
    "a écrit :",
    "a écrit:",
    "escribió:",
    "ha scritto:",
    "escreveu:",
    "schreef:",
    "skrev:",
    "kirjoitti:",
    "napisał:",
    "のメール:",
    "のメール：",
    "書きました:",
    "書きました：",
];
/// Attribution beginnings (lower-cased) that need an ending anywhere in the
/// joined lines (German, Dutch and Nordic put the verb before the name: "Am
/// 7.12.2026 um 10:00 schrieb Alice <a@x>:").
const ATTRIBUTION_STARTS: &[(&str, &str)] = &[
    ("am ", " schrieb "),
    ("op ", " schreef "),
    ("den ", " skrev "),
    ("le ", " a écrit"),
    ("el ", " escribió"),
    ("on ", " wrote"),
];
/// Outlook and Thunderbird separators (lower-cased, dashes and spaces trimmed).
const SEPARATORS: &[&str] = &[
    "original message",
    "ursprüngliche nachricht",
    "message d'origine",
    "mensaje original",
    "messaggio originale",
    "mensagem original",
    "oorspronkelijk bericht",
    "forwarded message",
    "weitergeleitete nachricht",
    "message transféré",
    "mensaje reenviado",
    "元のメッセージ",
    "転送メッセージ",
];
/// The first line of an Outlook header block.
const HEADER_FROM: &[&str] = &["from:", "von:", "de :", "de:", "da:", "van:", "från:", "fra:", "差出人:", "送信者:", "发件人:"];
/// A later line of an Outlook header block.
const HEADER_SENT: &[&str] = &[
    "sent:", "date:", "gesendet:", "datum:", "envoyé :", "envoyé:", "date :", "enviado:", "enviado el:", "fecha:",
    "inviato:", "data:", "verzonden:", "skickat:", "sendt:", "送信日時:", "日付:", "发送时间:",
];
/// Mobile and client footers (lower-cased prefixes).
const FOOTERS: &[&str] = &[
    "sent from my ",
    "sent from outlook",
    "sent from mail for windows",
    "sent from yahoo mail",
    "sent with proton mail",
    "get outlook for ",
    "von meinem iphone gesendet",
    "von meinem ipad gesendet",
    "von meinem smartphone gesendet",
    "gesendet von meinem",
    "envoyé de mon ",
    "envoyé depuis mon ",
    "enviado desde mi ",
    "enviado do meu ",
    "inviato da ",
    "verzonden vanaf mijn ",
    "skickat från min ",
    "iphoneから送信",
    "ipadから送信",
];

/// The new part of `text` (see the module docs).
///
/// ```
/// use agentkeys_agent::latest::latest_text;
/// let reply = "Sounds good, see you then.\n\nOn Mon, Dec 7, 2026 at 10:00 AM Alice <alice@example.com> wrote:\n> Lunch at noon?\n";
/// assert_eq!(latest_text(reply), "Sounds good, see you then.");
/// ```
pub fn latest_text(text: &str) -> String {
    let text = cut_at_char(text, MAX_LATEST_INPUT).replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.split('\n').collect();
    let cut = quote_header(&lines).unwrap_or(lines.len());
    let head = &lines[..cut];
    let unquoted: Vec<&str> = head.iter().copied().filter(|l| !l.trim_start().starts_with('>')).collect();
    let signed = cut_signature(&unquoted);
    let out = trim_blank(&signed);
    if out.is_empty() {
        return trim_blank(head).join("\n");
    }
    out.join("\n")
}

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

/// The index of the first line of the quoted history, if any.
fn quote_header(lines: &[&str]) -> Option<usize> {
    (0..lines.len()).find(|&i| is_attribution(lines, i) || is_separator(lines[i]) || is_header_block(lines, i))
}

fn lower_trim(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Whether an attribution starts at line `i` (possibly wrapped).
fn is_attribution(lines: &[&str], i: usize) -> bool {
    let first = lower_trim(lines[i]);
    if first.is_empty() || first.starts_with('>') {
        return false;
    }
    let known_start = ATTRIBUTION_STARTS.iter().any(|(s, _)| first.starts_with(s)) || is_cjk_date_start(&first);
    let mut joined = String::new();
    for (k, line) in lines.iter().skip(i).take(MAX_ATTRIBUTION_LINES).enumerate() {
        // Only a line that starts like an attribution may continue on the next.
        if k > 0 && !known_start {
            return false;
        }
        let l = lower_trim(line);
        if l.is_empty() && !joined.is_empty() {
            break;
        }
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(&l);
        if joined.chars().count() > MAX_ATTRIBUTION_CHARS {
            return false;
        }
        let ends = ATTRIBUTION_ENDS.iter().any(|e| joined.ends_with(e));
        let colon = joined.ends_with(':') || joined.ends_with('：');
        // A date, an address or a time makes it a header, not prose.
        let datelike = joined.contains('@') || joined.contains('<') || joined.chars().any(|c| c.is_ascii_digit());
        if ends && datelike {
            // "On …" must start like one of the known forms, or end like one.
            return true;
        }
        if colon && datelike && ATTRIBUTION_STARTS.iter().any(|(s, verb)| first.starts_with(s) && joined.contains(verb)) {
            return true;
        }
        // Gmail in Japanese and Chinese: "2026年12月7日(月) 10:00 田中 <t@example.jp>:".
        if colon && is_cjk_date_start(&first) && (joined.contains('@') || joined.contains('<')) {
            return true;
        }
    }
    false
}

fn is_cjk_date_start(line: &str) -> bool {
    let digits: String = line.chars().take_while(char::is_ascii_digit).collect();
    digits.len() == 4 && matches!(line[digits.len()..].chars().next(), Some('年' | '/' | '-'))
}

/// An Outlook/Thunderbird separator line.
fn is_separator(line: &str) -> bool {
    let t = line.trim();
    if t.len() >= 10 && t.chars().all(|c| c == '_') {
        return true;
    }
    let core = t.trim_matches(|c: char| c == '-' || c == ' ' || c == '=').to_lowercase();
    (t.starts_with("--") || t.starts_with("==")) && SEPARATORS.iter().any(|s| core == *s)
}

/// An Outlook header block starting at line `i`.
fn is_header_block(lines: &[&str], i: usize) -> bool {
    let first = lower_trim(lines[i]).trim_start_matches('*').to_owned();
    if !HEADER_FROM.iter().any(|h| first.starts_with(h)) {
        return false;
    }
    lines.iter().skip(i + 1).take(3).any(|l| {
        let l = lower_trim(l).trim_start_matches('*').to_owned();
        HEADER_SENT.iter().any(|h| l.starts_with(h))
    })
}

/// The lines before the signature.
fn cut_signature<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    if let Some(i) = lines.iter().position(|l| *l == "-- " || *l == "--" || *l == "—") {
        return lines[..i].to_vec();
    }
    // A footer counts only if nothing but blank lines follows it.
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    if let Some(last) = last {
        let l = lower_trim(lines[last]);
        if FOOTERS.iter().any(|f| l.starts_with(f)) {
            return lines[..last].to_vec();
        }
    }
    lines.to_vec()
}

fn trim_blank<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    let Some((s, e)) = start.zip(end) else {
        return Vec::new();
    };
    // Runs of blank lines (left where quotes were) become one.
    let mut out: Vec<&str> = Vec::new();
    for l in lines[s..=e].iter().map(|l| l.trim_end()) {
        if l.is_empty() && out.last().is_some_and(|p| p.is_empty()) {
            continue;
        }
        out.push(l);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_that_mentions_writing_is_kept() {
        let t = "On reflection I wrote:\nnothing more";
        assert_eq!(latest_text(t), t, "no date, address or time: not an attribution");
        let t = "From: the team\nThanks!";
        assert_eq!(latest_text(t), t, "a From: line alone is not a header block");
    }

    #[test]
    fn all_quote_keeps_the_text() {
        assert_eq!(latest_text("> only a quote\n> here"), "> only a quote\n> here");
        assert_eq!(latest_text(""), "");
    }

    #[test]
    fn the_input_is_bounded() {
        let long = "a".repeat(MAX_LATEST_INPUT + 10);
        assert_eq!(latest_text(&long).len(), MAX_LATEST_INPUT);
    }

    proptest::proptest! {
        /// Any text: the answer never holds a line the input did not have
        /// (only removal), and never a `>`-quoted line unless all was quote.
        #[test]
        fn only_removes(lines in proptest::collection::vec("[ -~äé年>]{0,40}", 0..30)) {
            let text = lines.join("\n");
            let out = latest_text(&text);
            let input: Vec<&str> = text.split('\n').map(str::trim_end).collect();
            for l in out.split('\n').filter(|l| !l.is_empty()) {
                proptest::prop_assert!(input.contains(&l), "{l:?} not in the input");
            }
        }
    }
}
