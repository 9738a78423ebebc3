//! One-time code and magic-link extraction, which never guesses silently.
//!
//! The extractor reads the subject, the text body and the HTML body (as text,
//! plus its links) of a [`ParsedMessage`] and returns every candidate it
//! believes in, best first. A code is a candidate only next to a keyword that
//! announces one (`code`, `verification`, `OTP`, `PIN`, `passcode`,
//! `Bestätigungscode`, `code de vérification`, `código`, `验证码`, `認証コード`,
//! …, before it on the same line, after it on the same line, or on a line above
//! a code that stands alone), and never when the nearest keyword says it is
//! something else (order, invoice, tracking, phone, price, zip, …) or when it
//! has the shape of a year, date, time, price, phone number or long id. A
//! magic link is an `http(s)` link whose target or anchor text says
//! verify/confirm/sign in/… and that carries a token; unsubscribe, privacy,
//! social and store links never are.
//!
//! When the message holds several distinct codes (or, without a code, several
//! distinct links), [`Otp::ambiguous`] is set, all of them are listed and the
//! top-level confidence is capped at [`AMBIGUOUS_CONFIDENCE_CAP`].
//!
//! ```
//! use agentkeys_agent::message::ParsedMessage;
//! use agentkeys_agent::otp::{extract, OtpKind};
//!
//! let raw = b"From: Acme <no-reply@acme.example>\r\nSubject: Your Acme code\r\n\r\n\
//! Your verification code is 482 913. It expires in 10 minutes.\r\n";
//! let m = ParsedMessage::parse("01JD0000000000000000000000", raw, "mx.agents.localhost").unwrap();
//! let otp = extract(&m).unwrap();
//! assert_eq!(otp.code.as_deref(), Some("482913"));
//! assert_eq!(otp.kind, OtpKind::NumericCode);
//! assert!(!otp.ambiguous);
//! ```

use serde::Serialize;

use crate::html::Link;
use crate::message::{Mailbox, ParsedMessage};

/// Characters of each source (subject, text, HTML text) scanned.
pub const MAX_SCAN_CHARS: usize = 100_000;
/// Links (HTML and text) looked at per message.
pub const MAX_LINKS_CHECKED: usize = 512;
/// Candidates kept per message (best first).
pub const MAX_CANDIDATES: usize = 16;
/// Shortest and longest numeric code (digits).
pub const NUMERIC_CODE_DIGITS: std::ops::RangeInclusive<usize> = 4..=8;
/// Shortest and longest alphanumeric code (letters and digits, separators not counted).
pub const ALNUM_CODE_CHARS: std::ops::RangeInclusive<usize> = 6..=12;
/// Shortest token a magic link must carry (letters and digits mixed).
pub const MIN_LINK_TOKEN: usize = 12;
/// Code findings kept per message before merging (bounds the work on hostile input).
pub const MAX_FINDINGS: usize = 256;
/// How far before a code (characters, same line) a keyword is looked for.
const CONTEXT_BEFORE: usize = 120;
/// How far after a code (characters, same line) a keyword is looked for.
const CONTEXT_AFTER: usize = 60;
/// The top-level confidence of an ambiguous result is at most this.
pub const AMBIGUOUS_CONFIDENCE_CAP: f64 = 0.5;

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtpKind {
    /// Digits only (`482913`; split forms such as `482 913` are joined).
    NumericCode,
    /// Upper-case letters and digits (`X7K-9QP`; hyphens kept as written).
    AlphanumericCode,
    /// A link to click.
    MagicLink,
}

/// Where in the message a candidate was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The `Subject:` header.
    Subject,
    /// A `text/plain` body part.
    Text,
    /// A `text/html` body part.
    Html,
}

/// One code or link the extractor believes in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    /// Code or link.
    pub kind: OtpKind,
    /// The code (for the code kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The link (for [`OtpKind::MagicLink`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// 0..1: how sure the extractor is (keyword distance, layout, agreement
    /// between subject, text and HTML).
    pub confidence: f64,
    /// Where it was seen.
    pub sources: Vec<Source>,
    /// The line (or anchor text) it was found in, shortened.
    pub context: String,
}

impl Candidate {
    /// The code or the link.
    pub fn value(&self) -> &str {
        self.code
            .as_deref()
            .or(self.link.as_deref())
            .unwrap_or_default()
    }
}

/// The extraction result for one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Otp {
    /// The best code, when any code was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The best link, when no code but a link was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The kind of the best candidate.
    pub kind: OtpKind,
    /// Our store's id of the message.
    pub message_id: String,
    /// The `From:` mailbox.
    pub from: Option<Mailbox>,
    /// The message's [`Authentication::authenticated`](crate::auth_results::Authentication):
    /// do not trust a code from a message where this is false.
    pub authenticated: bool,
    /// The best candidate's confidence (capped when ambiguous).
    pub confidence: f64,
    /// Several distinct codes (or, without codes, several distinct links):
    /// the top-level value is only the highest-scoring; look at `candidates`.
    pub ambiguous: bool,
    /// Why the top-level value was chosen, in words (and what to do when
    /// `ambiguous`).
    pub reason: String,
    /// Codes and links seen only in quoted history (a reply's `> ` lines, an
    /// `On … wrote:` or `-----Original Message-----` tail, a `<blockquote>`):
    /// never candidates, listed so a reader knows they were seen.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_in_quotes: Vec<String>,
    /// Every candidate, codes first, each kind best first.
    pub candidates: Vec<Candidate>,
}

/// What [`extract`] returns: `None` when the message holds no candidate
/// (serialized as JSON `null`).
pub type OtpResult = Option<Otp>;

/// Extracts the code or link of `message`; `None` when there is no candidate.
pub fn extract(message: &ParsedMessage) -> OtpResult {
    let candidates = candidates(message);
    let best = candidates.first()?.clone();
    let codes = candidates
        .iter()
        .filter(|c| c.kind != OtpKind::MagicLink)
        .count();
    let links = candidates.len() - codes;
    let ambiguous = if codes > 0 { codes > 1 } else { links > 1 };
    let confidence = if ambiguous {
        best.confidence.min(AMBIGUOUS_CONFIDENCE_CAP)
    } else {
        best.confidence
    };
    let what = if best.kind == OtpKind::MagicLink { "link" } else { "code" };
    let reason = if ambiguous {
        let same_kind: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| (c.kind == OtpKind::MagicLink) == (best.kind == OtpKind::MagicLink))
            .collect();
        format!(
            "{} distinct {what}s in one message; this one scored highest ({:.2}, next {:.2}) in {:?}; \
             compare `candidates` (an old and a new {what} in one thread look like this) before using it",
            same_kind.len(),
            best.confidence,
            same_kind.get(1).map_or(0.0, |c| c.confidence),
            best.context
        )
    } else {
        format!("the only {what} in the message (confidence {:.2}), seen in {:?}", best.confidence, best.context)
    };
    let own: std::collections::HashSet<&str> = candidates.iter().map(Candidate::value).collect();
    let ignored_in_quotes = if has_quotes(message) {
        candidates_in(message.subject.as_deref(), message.text.as_deref(), message.html_text.as_deref(), &message.links)
            .into_iter()
            .map(|c| c.value().to_owned())
            .filter(|v| !own.contains(v.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    Some(Otp {
        code: best.code.clone(),
        link: best.link.clone(),
        kind: best.kind,
        message_id: message.message_id.clone(),
        from: message.from.clone(),
        authenticated: message.authentication.authenticated,
        confidence,
        ambiguous,
        reason,
        ignored_in_quotes,
        candidates,
    })
}

/// Every candidate of `message`: codes first, then links, each best first.
/// Quoted history (see [`own_part`]) and links inside a `<blockquote>` are left
/// out: in a thread, the old code sits in the quote.
pub fn candidates(message: &ParsedMessage) -> Vec<Candidate> {
    let text = message.text.as_deref().map(own_part);
    let html = message.html_text.as_deref().map(own_part);
    let links: Vec<Link> = message.links.iter().filter(|l| !l.quoted).cloned().collect();
    candidates_in(message.subject.as_deref(), text.as_deref(), html.as_deref(), &links)
}

fn has_quotes(message: &ParsedMessage) -> bool {
    message.links.iter().any(|l| l.quoted)
        || [&message.text, &message.html_text]
            .into_iter()
            .flatten()
            .any(|t| own_part(t).len() != t.len())
}

/// Most lines of an `Outlook`-style header block (`From:` … `Sent:`) looked at.
const QUOTE_HEADER_LINES: usize = 5;

/// The message's own text: without quoted lines (`> …`) and without the
/// quoted history below an attribution (`On … wrote:`, `Am … schrieb …:`,
/// `Le … a écrit :`, `El … escribió:`, `…写道：`, `-----Original Message-----`,
/// an Outlook `From:`/`Sent:` block).
pub fn own_part(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if i > 0 && starts_history(t, &lines[..i], &lines[i + 1..]) {
            break;
        }
        if t.starts_with('>') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn starts_history(line: &str, before: &[&str], after: &[&str]) -> bool {
    let l = line.to_lowercase();
    let ends_colon = l.ends_with(':') || l.ends_with('：');
    let attribution = ends_colon
        && ((l.starts_with("on ") && l.contains("wrote"))
            || (l.starts_with("am ") && l.contains("schrieb"))
            || (l.starts_with("le ") && l.contains("a écrit"))
            || (l.starts_with("el ") && l.contains("escribió"))
            || (l.starts_with("il ") && l.contains("ha scritto"))
            || (l.starts_with("em ") && l.contains("escreveu"))
            || (l.starts_with("op ") && l.contains("schreef"))
            || l.contains("写道")
            || l.contains("寫道")
            || l.contains("のメッセージ")
            || l.contains("書きました"));
    let separator = {
        let core = l.trim_matches(|c: char| c == '-' || c == '_' || c.is_whitespace());
        l.starts_with("---")
            && ["original message", "ursprüngliche nachricht", "message d'origine", "mensaje original", "messaggio originale"]
                .contains(&core)
    };
    // A forwarded message is the content, not history: its header block stays.
    let forwarded = before.iter().rev().filter(|b| !b.trim().is_empty()).take(1).any(|b| {
        let b = b.to_lowercase();
        ["forwarded message", "weitergeleitete nachricht", "message transféré", "mensaje reenviado", "转发的邮件"]
            .iter()
            .any(|w| b.contains(w))
    });
    let header_block = !forwarded && ["from:", "von:", "de :", "de:", "发件人", "差出人"].iter().any(|p| l.starts_with(p))
        && after.iter().take(QUOTE_HEADER_LINES).any(|n| {
            let n = n.trim().to_lowercase();
            ["sent:", "date:", "gesendet:", "envoyé :", "envoyé:", "enviado:", "发送时间", "送信日時"].iter().any(|p| n.starts_with(p))
        });
    attribution || separator || header_block
}

/// [`candidates`] over the parts of a message.
pub fn candidates_in(
    subject: Option<&str>,
    text: Option<&str>,
    html_text: Option<&str>,
    html_links: &[Link],
) -> Vec<Candidate> {
    let subject = subject.map(|s| Scan::new(&s.replace(['\r', '\n'], " ")));
    let text = text.map(Scan::new);
    let html = html_text.map(Scan::new);
    let subject_strong = subject
        .as_ref()
        .is_some_and(|s| s.hits.iter().any(|h| h.class == Class::Strong));
    let doc_keyword = [&subject, &text, &html]
        .iter()
        .filter_map(|s| s.as_ref())
        .any(|s| {
            s.hits
                .iter()
                .any(|h| matches!(h.class, Class::Strong | Class::Weak))
        });

    let mut found: Vec<Found> = Vec::new();
    if doc_keyword {
        for (scan, source) in [
            (&subject, Source::Subject),
            (&text, Source::Text),
            (&html, Source::Html),
        ] {
            if let Some(scan) = scan {
                scan.codes(source, subject_strong, &mut found);
            }
        }
    }
    let mut codes = merge(found);

    let mut link_inputs: Vec<(String, String, Source)> = html_links
        .iter()
        .map(|l| (l.url.clone(), l.text.clone(), Source::Html))
        .collect();
    if let Some(t) = &text {
        link_inputs.extend(
            t.urls
                .iter()
                .map(|(u, ctx)| (u.clone(), ctx.clone(), Source::Text)),
        );
    }
    link_inputs.truncate(MAX_LINKS_CHECKED);
    let mut link_found = Vec::new();
    for (url, anchor, source) in link_inputs {
        if let Some(confidence) = link_score(&url, &anchor, doc_keyword) {
            link_found.push(Found {
                kind: OtpKind::MagicLink,
                value: url,
                confidence,
                source,
                context: shorten(&anchor),
            });
        }
    }
    let mut links = merge(link_found);
    codes.truncate(MAX_CANDIDATES);
    links.truncate(MAX_CANDIDATES.saturating_sub(codes.len()));
    codes.extend(links);
    codes
}

struct Found {
    kind: OtpKind,
    value: String,
    confidence: f64,
    source: Source,
    context: String,
}

/// Merges findings of one value from several sources: the best confidence plus
/// a bonus per agreeing source; best first.
fn merge(found: Vec<Found>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for f in found {
        // `7KQ2-X9MZ` and `7KQ2X9MZ` are one code written two ways.
        let same = |a: &str, b: &str| a.replace('-', "") == b.replace('-', "");
        let key = |c: &Candidate| c.kind == f.kind && same(c.value(), &f.value);
        match out.iter_mut().find(|c| key(c)) {
            Some(c) => {
                if f.confidence > c.confidence {
                    c.confidence = f.confidence;
                    c.context = f.context;
                }
                if !c.sources.contains(&f.source) {
                    c.sources.push(f.source);
                }
            }
            None => {
                let (code, link) = if f.kind == OtpKind::MagicLink {
                    (None, Some(f.value))
                } else {
                    (Some(f.value), None)
                };
                out.push(Candidate {
                    kind: f.kind,
                    code,
                    link,
                    confidence: f.confidence,
                    sources: vec![f.source],
                    context: f.context,
                });
            }
        }
    }
    for c in &mut out {
        c.sources.sort();
        let bonus = 0.05 * (c.sources.len().saturating_sub(1)) as f64;
        c.confidence = round2((c.confidence + bonus).min(0.99));
    }
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn shorten(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= 120 {
        s
    } else {
        s.chars().take(117).chain("...".chars()).collect()
    }
}

// ---------------------------------------------------------------------------
// Keywords

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Announces a code.
    Strong,
    /// Says this is a verification mail, not where the code is.
    Weak,
    /// Says the number next to it is something else.
    Negative,
    /// Marks a promotion line: no code on it is a one-time code.
    Promo,
}

/// `(keyword, class, may be the end of a compound, may continue (stem))`.
/// Lowercase; CJK keywords match anywhere.
const KEYWORDS: &[(&str, Class, bool, bool)] = {
    use Class::*;
    &[
        // Strong: English.
        ("code", Strong, true, false),
        ("otp", Strong, false, false),
        ("one-time", Strong, false, false),
        ("one time", Strong, false, false),
        ("onetime", Strong, false, false),
        ("2fa", Strong, false, false),
        ("mfa", Strong, false, false),
        ("pin", Strong, false, false),
        ("verif", Strong, false, true),
        ("authenticat", Strong, false, true),
        ("password", Strong, true, false),
        ("token", Strong, false, false),
        // German, French, Spanish, Italian, Portuguese, Dutch, Nordic, Polish, Russian.
        ("bestätig", Strong, false, true),
        ("authentifizier", Strong, false, true),
        ("einmal", Strong, false, true),
        ("passwort", Strong, true, false),
        ("kennwort", Strong, true, false),
        ("vérif", Strong, false, true),
        ("mot de passe", Strong, false, false),
        ("código", Strong, false, false),
        ("codigo", Strong, false, false),
        ("contraseña", Strong, false, false),
        ("clave", Strong, false, false),
        ("codice", Strong, false, false),
        ("senha", Strong, false, false),
        ("wachtwoord", Strong, true, false),
        ("kode", Strong, true, false),
        ("kod", Strong, false, false),
        ("код", Strong, false, false),
        ("подтвержд", Strong, false, true),
        // Chinese, Japanese, Korean.
        ("验证码", Strong, true, true),
        ("驗證碼", Strong, true, true),
        ("校验码", Strong, true, true),
        ("动态码", Strong, true, true),
        ("确认码", Strong, true, true),
        ("確認碼", Strong, true, true),
        ("安全码", Strong, true, true),
        ("认证码", Strong, true, true),
        ("验证", Strong, true, true),
        ("驗證", Strong, true, true),
        ("密码", Strong, true, true),
        ("口令", Strong, true, true),
        ("コード", Strong, true, true),
        ("認証", Strong, true, true),
        ("確認番号", Strong, true, true),
        ("暗証番号", Strong, true, true),
        ("ワンタイム", Strong, true, true),
        ("パスコード", Strong, true, true),
        ("인증", Strong, true, true),
        ("코드", Strong, true, true),
        // Weak: a verification mail, but not a code's label.
        ("confirm", Weak, false, true),
        ("activat", Weak, false, true),
        ("activ", Weak, false, true),
        ("sign in", Weak, false, false),
        ("sign-in", Weak, false, false),
        ("signin", Weak, false, false),
        ("log in", Weak, false, false),
        ("login", Weak, false, false),
        ("log-in", Weak, false, false),
        ("magic", Weak, false, true),
        ("anmeld", Weak, false, true),
        ("aktivier", Weak, false, true),
        ("connexion", Weak, false, false),
        ("connecter", Weak, false, false),
        ("iniciar sesión", Weak, false, false),
        ("确认", Weak, true, true),
        ("確認", Weak, true, true),
        ("登录", Weak, true, true),
        ("登入", Weak, true, true),
        ("激活", Weak, true, true),
        ("ログイン", Weak, true, true),
        ("有効化", Weak, true, true),
        ("로그인", Weak, true, true),
        ("확인", Weak, true, true),
        // Negative: English.
        ("order", Negative, false, true),
        ("invoice", Negative, false, true),
        ("receipt", Negative, false, true),
        ("track", Negative, false, true),
        ("shipment", Negative, false, true),
        ("shipping", Negative, false, false),
        ("parcel", Negative, false, true),
        ("package", Negative, false, true),
        ("reference", Negative, false, true),
        ("ref", Negative, false, false),
        ("account", Negative, false, true),
        ("acct", Negative, false, false),
        ("customer", Negative, false, true),
        ("member", Negative, false, true),
        ("ticket", Negative, false, true),
        ("booking", Negative, false, true),
        ("reservation", Negative, false, true),
        ("confirmation number", Negative, false, false),
        ("flight", Negative, false, true),
        ("seat", Negative, false, false),
        ("gate", Negative, false, false),
        ("room", Negative, false, false),
        ("phone", Negative, true, true),
        ("tel", Negative, false, false),
        ("call", Negative, false, true),
        ("fax", Negative, false, false),
        ("mobile", Negative, false, false),
        ("whatsapp", Negative, false, false),
        ("sms to", Negative, false, false),
        ("text to", Negative, false, false),
        ("zip", Negative, false, false),
        ("postal", Negative, false, false),
        ("postcode", Negative, false, false),
        ("address", Negative, false, false),
        ("street", Negative, false, false),
        ("suite", Negative, false, false),
        ("floor", Negative, false, false),
        ("amount", Negative, false, false),
        ("total", Negative, false, false),
        ("subtotal", Negative, false, false),
        ("price", Negative, false, false),
        ("cost", Negative, false, true),
        ("qty", Negative, false, false),
        ("quantity", Negative, false, false),
        ("item", Negative, false, true),
        ("sku", Negative, false, false),
        ("serial", Negative, false, false),
        ("model", Negative, false, false),
        ("version", Negative, false, false),
        ("transaction", Negative, false, true),
        ("case", Negative, false, false),
        ("claim", Negative, false, false),
        ("policy", Negative, false, false),
        ("iban", Negative, false, false),
        ("swift", Negative, false, false),
        ("routing", Negative, false, false),
        ("card", Negative, false, false),
        ("ending in", Negative, false, false),
        ("id", Negative, false, false),
        ("nr", Negative, false, false),
        ("no.", Negative, false, false),
        ("nº", Negative, false, false),
        ("n°", Negative, false, false),
        ("bill", Negative, false, true),
        ("payment", Negative, false, false),
        ("balance", Negative, false, false),
        ("qr", Negative, false, false),
        ("source", Negative, false, false),
        ("bar", Negative, false, false),
        ("barcode", Negative, false, false),
        ("country", Negative, false, false),
        ("area", Negative, false, false),
        ("dial", Negative, false, false),
        ("error", Negative, false, false),
        ("status", Negative, false, false),
        ("invit", Negative, false, true),
        ("referral", Negative, false, false),
        ("product", Negative, false, false),
        ("tax", Negative, false, false),
        ("sort", Negative, false, false),
        ("bank", Negative, false, false),
        ("flat", Negative, false, false),
        ("line", Negative, false, false),
        ("commit", Negative, false, false),
        ("issue", Negative, false, false),
        ("page", Negative, false, false),
        ("step", Negative, false, false),
        ("row", Negative, false, false),
        ("pr", Negative, false, false),
        ("pull request", Negative, false, false),
        ("review", Negative, false, true),
        ("build", Negative, false, false),
        ("release", Negative, false, false),
        // Negative: German, French, Spanish.
        ("bestell", Negative, true, true),
        ("rechnung", Negative, true, true),
        ("sendung", Negative, true, true),
        ("kunden", Negative, true, true),
        ("telefon", Negative, true, true),
        ("tel.", Negative, false, false),
        ("plz", Negative, false, false),
        ("betrag", Negative, true, false),
        ("summe", Negative, false, false),
        ("artikel", Negative, false, true),
        ("auftrag", Negative, false, true),
        ("vertrag", Negative, false, true),
        ("konto", Negative, false, true),
        ("paket", Negative, false, true),
        ("liefer", Negative, false, true),
        ("straße", Negative, true, false),
        ("strasse", Negative, true, false),
        ("commande", Negative, false, false),
        ("facture", Negative, false, false),
        ("colis", Negative, false, false),
        ("suivi", Negative, false, false),
        ("téléphone", Negative, false, false),
        ("montant", Negative, false, false),
        ("client", Negative, false, false),
        ("réservation", Negative, false, false),
        ("prix", Negative, false, false),
        ("rue", Negative, false, false),
        ("pedido", Negative, false, false),
        ("factura", Negative, false, false),
        ("envío", Negative, false, false),
        ("envio", Negative, false, false),
        ("seguimiento", Negative, false, false),
        ("teléfono", Negative, false, false),
        ("telefono", Negative, false, false),
        ("importe", Negative, false, false),
        ("cliente", Negative, false, false),
        ("reserva", Negative, false, false),
        ("precio", Negative, false, false),
        ("calle", Negative, false, false),
        ("заказ", Negative, false, true),
        ("телефон", Negative, false, true),
        // Negative: Chinese, Japanese, Korean.
        ("订单", Negative, true, true),
        ("訂單", Negative, true, true),
        ("单号", Negative, true, true),
        ("單號", Negative, true, true),
        ("运单", Negative, true, true),
        ("快递", Negative, true, true),
        ("物流", Negative, true, true),
        ("电话", Negative, true, true),
        ("電話", Negative, true, true),
        ("手机", Negative, true, true),
        ("金额", Negative, true, true),
        ("金額", Negative, true, true),
        ("发票", Negative, true, true),
        ("客服", Negative, true, true),
        ("地址", Negative, true, true),
        ("邮编", Negative, true, true),
        ("价格", Negative, true, true),
        ("注文", Negative, true, true),
        ("お問い合わせ", Negative, true, true),
        ("配送", Negative, true, true),
        ("追跡", Negative, true, true),
        ("請求", Negative, true, true),
        ("郵便", Negative, true, true),
        ("住所", Negative, true, true),
        ("予約", Negative, true, true),
        ("주문", Negative, true, true),
        ("전화", Negative, true, true),
        ("배송", Negative, true, true),
        // Promotions: nothing on such a line is a one-time code.
        ("%", Promo, true, true),
        ("off", Promo, false, false),
        ("discount", Promo, false, true),
        ("promo", Promo, false, true),
        ("coupon", Promo, false, true),
        ("voucher", Promo, false, true),
        ("sale", Promo, false, false),
        ("checkout", Promo, false, false),
        ("gift", Promo, false, true),
        ("rabatt", Promo, true, true),
        ("gutschein", Promo, true, true),
        ("réduction", Promo, false, false),
        ("remise", Promo, false, false),
        ("descuento", Promo, false, false),
        ("cupón", Promo, false, false),
        ("cupon", Promo, false, true),
        ("优惠", Promo, true, true),
        ("折扣", Promo, true, true),
        ("割引", Promo, true, true),
        ("クーポン", Promo, true, true),
    ]
};

/// Words a magic link's target or anchor text uses.
const LINK_WORDS: &[&str] = &[
    "verif",
    "confirm",
    "activat",
    "validat",
    "magic",
    "login",
    "log in",
    "log-in",
    "signin",
    "sign in",
    "sign-in",
    "sign_in",
    "auth",
    "token",
    "otp",
    "passwordless",
    "bestätig",
    "bestaetig",
    "anmelden",
    "aktivier",
    "vérifi",
    "connecter",
    "connexion",
    "activer",
    "iniciar sesión",
    "activar",
    "确认",
    "验证",
    "登录",
    "激活",
    "確認",
    "認証",
    "ログイン",
    "有効",
    "인증",
    "로그인",
];
/// Link targets that are never a magic link.
const BAD_URL: &[&str] = &[
    "unsubscribe",
    "optout",
    "opt-out",
    "opt_out",
    "privacy",
    "/terms",
    "/legal",
    "/help",
    "/support",
    "support.",
    "/faq",
    "/contact",
    "/about",
    "preferences",
    "/policies",
    "mailto:",
    "/blog",
    "facebook.com",
    "twitter.com",
    "//x.com",
    "linkedin.com",
    "instagram.com",
    "youtube.com",
    "tiktok.com",
    "apps.apple.com",
    "play.google.com",
    "webversion",
    "view-in-browser",
    "viewonline",
    "list-manage.com",
    "abmelden",
    "desinscri",
    "désinscri",
    "desabonn",
    "baja",
    "/track/open",
    ".png",
    ".jpg",
    ".gif",
];
/// Anchor texts that are never a magic link.
const BAD_TEXT: &[&str] = &[
    "unsubscribe",
    "abmelden",
    "désabonner",
    "désinscri",
    "desinscri",
    "darse de baja",
    "cancelar suscripción",
    "privacy",
    "datenschutz",
    "confidentialité",
    "privacidad",
    "terms",
    "view in browser",
    "im browser",
    "view online",
    "en ligne",
    "preferences",
    "einstellungen",
    "退订",
    "取消订阅",
    "配信停止",
    "隐私",
    "プライバシー",
    "help",
    "hilfe",
    "aide",
    "ayuda",
];

const CURRENCY_SYMBOLS: &[char] = &['$', '€', '£', '¥', '₹', '₩', '₽', '¢', '元', '円'];
const UNIT_WORDS: &[&str] = &[
    "usd", "eur", "gbp", "chf", "jpy", "cny", "rmb", "kr", "sek", "nok", "dkk", "pln", "inr", "am",
    "pm", "uhr", "h", "hrs", "min", "mins", "minutes", "minuten", "kg", "km", "mb", "gb", "px",
];

fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30ff}' | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}'
        | '\u{ac00}'..='\u{d7af}' | '\u{f900}'..='\u{faff}' | '\u{ff66}'..='\u{ff9f}')
}

/// A letter or digit of a word (CJK characters are not: they touch numbers
/// without spaces). `MASK` (hidden URLs, addresses) counts as one.
fn is_word(c: char) -> bool {
    c == MASK || (c.is_alphanumeric() && !is_cjk(c))
}

/// Stands in for characters of URLs and e-mail addresses, so nothing in them is
/// read as a code and nothing next to them starts one.
const MASK: char = '\u{1}';

// ---------------------------------------------------------------------------
// Scanning one source

#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    class: Class,
}

struct Scan {
    /// Normalized characters (URLs and addresses masked).
    chars: Vec<char>,
    /// `chars` lowercased, same length.
    lower: Vec<char>,
    /// Keyword hits, by start.
    hits: Vec<Hit>,
    /// URLs found in the text with their line (for text-part magic links).
    urls: Vec<(String, String)>,
    /// Start index of each line.
    line_starts: Vec<usize>,
    /// Lines holding a promotion keyword.
    promo_lines: Vec<bool>,
}

fn normalize(s: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len().min(MAX_SCAN_CHARS));
    for c in s.chars() {
        if out.len() >= MAX_SCAN_CHARS {
            break;
        }
        let c = match c {
            '\u{ff10}'..='\u{ff19}' | '\u{ff21}'..='\u{ff3a}' | '\u{ff41}'..='\u{ff5a}' => {
                char::from_u32(c as u32 - 0xfee0).unwrap_or(c)
            }
            '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}' => ' ',
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe63}' | '\u{ff0d}' => '-',
            '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}' | '\u{ad}' | '\r' => {
                continue;
            }
            MASK => ' ',
            c => c,
        };
        out.push(c);
    }
    out
}

impl Scan {
    fn new(s: &str) -> Scan {
        let mut chars = normalize(s);
        let urls = mask_urls_and_addresses(&mut chars);
        let lower: Vec<char> = chars
            .iter()
            .map(|c| c.to_lowercase().next().unwrap_or(*c))
            .collect();
        let hits = find_keywords(&lower);
        let mut line_starts = vec![0];
        line_starts.extend(
            chars
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == '\n')
                .map(|(i, _)| i + 1),
        );
        let mut promo_lines = vec![false; line_starts.len()];
        for h in hits.iter().filter(|h| h.class == Class::Promo) {
            let line = line_starts
                .partition_point(|&s| s <= h.start)
                .saturating_sub(1);
            promo_lines[line] = true;
        }
        Scan {
            chars,
            lower,
            hits,
            urls,
            line_starts,
            promo_lines,
        }
    }

    /// Whether a sentence ends within `[from, to)`: `.`, `!` or `?` followed by
    /// a space and an upper-case letter or a digit (so `Acme Inc. is` does not
    /// end one), or a CJK full stop. A keyword in another sentence does not
    /// describe a number.
    fn sentence_break(&self, from: usize, to: usize) -> bool {
        let ch = &self.chars;
        (from..to).any(|i| match ch[i] {
            '。' | '！' | '？' => true,
            '.' | '!' | '?' => {
                i + 2 < ch.len()
                    && ch[i + 1].is_whitespace()
                    && (ch[i + 2].is_uppercase() || ch[i + 2].is_ascii_digit())
            }
            _ => false,
        })
    }

    /// The hits lying within `[from, to)` (hits are sorted and do not overlap).
    fn hits_in(&self, from: usize, to: usize) -> &[Hit] {
        let a = self.hits.partition_point(|h| h.start < from);
        let mut b = self.hits.partition_point(|h| h.start < to);
        while b > a && self.hits[b - 1].end > to {
            b -= 1;
        }
        &self.hits[a..b.max(a)]
    }

    fn line_of(&self, pos: usize) -> usize {
        self.line_starts
            .partition_point(|&s| s <= pos)
            .saturating_sub(1)
    }

    fn line_bounds(&self, line: usize) -> (usize, usize) {
        let start = self.line_starts[line];
        let end = self
            .line_starts
            .get(line + 1)
            .map_or(self.chars.len(), |n| n - 1);
        (start, end)
    }

    /// Whether the line holds nothing but `[s, e)` and punctuation.
    fn standalone(&self, s: usize, e: usize) -> bool {
        let (ls, le) = self.line_bounds(self.line_of(s));
        let filler = |c: &char| c.is_whitespace() || ":：.。!*\"'»«()[]「」【】>|".contains(*c);
        self.chars[ls..s].iter().all(filler) && self.chars[e..le].iter().all(filler)
    }

    fn text(&self, s: usize, e: usize) -> String {
        self.chars[s..e].iter().collect()
    }

    fn codes(&self, source: Source, subject_strong: bool, out: &mut Vec<Found>) {
        let mut i = 0;
        let n = self.chars.len();
        while i < n {
            let c = self.chars[i];
            let token_start = i == 0 || !is_word(self.chars[i - 1]);
            if token_start
                && c.is_ascii_alphanumeric()
                && let Some(end) = self.alnum_at(i, source, subject_strong, out)
            {
                i = end;
                continue;
            }
            if c.is_ascii_digit() && (i == 0 || !self.chars[i - 1].is_ascii_digit()) {
                let end = self.numeric_at(i, source, subject_strong, out);
                i = end.max(i + 1);
                continue;
            }
            i += 1;
        }
    }

    /// Reads the chain of digit groups starting at `s`; records a candidate if
    /// it is one. Returns where scanning continues.
    fn numeric_at(
        &self,
        s: usize,
        source: Source,
        subject_strong: bool,
        out: &mut Vec<Found>,
    ) -> usize {
        let ch = &self.chars;
        let n = ch.len();
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut seps: Vec<char> = Vec::new();
        let mut i = s;
        loop {
            let gs = i;
            while i < n && ch[i].is_ascii_digit() {
                i += 1;
            }
            groups.push((gs, i));
            if groups.len() > 12 {
                break;
            }
            // A separator: one '-', or 1..=3 spaces/tabs, then a digit.
            let mut j = i;
            let sep = if j < n && ch[j] == '-' {
                j += 1;
                '-'
            } else {
                while j < n && j - i < 3 && (ch[j] == ' ' || ch[j] == '\t') {
                    j += 1;
                }
                ' '
            };
            if j > i && j < n && ch[j].is_ascii_digit() {
                seps.push(sep);
                i = j;
            } else {
                break;
            }
        }
        let end = groups.last().map_or(s, |g| g.1);
        let lens: Vec<usize> = groups.iter().map(|(a, b)| b - a).collect();
        let total: usize = lens.iter().sum();

        if !self.clean_number_edges(s, end) {
            return end;
        }
        let equal = lens.iter().all(|l| *l == lens[0]);
        let value = || {
            groups
                .iter()
                .map(|&(a, b)| self.text(a, b))
                .collect::<String>()
        };
        if groups.len() == 1 {
            if NUMERIC_CODE_DIGITS.contains(&total) {
                let year = total == 4
                    && self
                        .text(s, end)
                        .parse::<u32>()
                        .is_ok_and(|y| (1900..=2099).contains(&y));
                self.judge(
                    s,
                    end,
                    value(),
                    OtpKind::NumericCode,
                    year,
                    source,
                    subject_strong,
                    out,
                );
            }
        } else if NUMERIC_CODE_DIGITS.contains(&total)
            && ((lens[0] == 1 && equal && groups.len() >= 4)
                || (equal && (2..=4).contains(&lens[0]) && groups.len() <= 3))
        {
            self.judge(
                s,
                end,
                value(),
                OtpKind::NumericCode,
                false,
                source,
                subject_strong,
                out,
            );
        } else if groups.len() == 2 && seps[0] == ' ' {
            // Two unrelated numbers side by side: judge each on its own.
            for &(a, b) in &groups {
                if NUMERIC_CODE_DIGITS.contains(&(b - a)) && self.clean_number_edges(a, b) {
                    let year = b - a == 4
                        && self
                            .text(a, b)
                            .parse::<u32>()
                            .is_ok_and(|y| (1900..=2099).contains(&y));
                    self.judge(
                        a,
                        b,
                        self.text(a, b),
                        OtpKind::NumericCode,
                        year,
                        source,
                        subject_strong,
                        out,
                    );
                }
            }
        }
        // Anything else (three or more unequal groups, long runs) has the shape of
        // a phone number, date or id.
        end
    }

    /// Rejects a digit run whose neighbours make it part of something else:
    /// a word, a decimal or grouped number, a date, a time, a price, a phone
    /// number, an identifier.
    fn clean_number_edges(&self, s: usize, e: usize) -> bool {
        let ch = &self.chars;
        let at = |i: usize| ch.get(i).copied();
        let before = |k: usize| if s >= k { at(s - k) } else { None };
        if let Some(p) = before(1) {
            if is_word(p) || p == '+' || p == '#' || p == '№' || CURRENCY_SYMBOLS.contains(&p) {
                return false;
            }
            if ".,/:".contains(p) && before(2).is_some_and(|c| c.is_ascii_digit()) {
                return false;
            }
            if p == '-' {
                match before(2) {
                    Some(c) if c.is_ascii_digit() => return false,
                    // `G-123456` is a code with a one-letter prefix; `INV-123` an id.
                    Some(c) if is_word(c) && before(3).is_some_and(is_word) => return false,
                    _ => {}
                }
            }
            if p == ' ' && before(2).is_some_and(|c| CURRENCY_SYMBOLS.contains(&c)) {
                return false;
            }
        }
        if let Some(nx) = at(e) {
            if is_word(nx) || nx == '%' || CURRENCY_SYMBOLS.contains(&nx) {
                return false;
            }
            if ".,:/".contains(nx) && at(e + 1).is_some_and(|c| c.is_ascii_digit()) {
                return false;
            }
            if nx == ' ' && at(e + 1).is_some_and(|c| CURRENCY_SYMBOLS.contains(&c)) {
                return false;
            }
        }
        let next_word = self.word_after(e);
        let prev_word = self.word_before(s);
        !(next_word
            .as_deref()
            .is_some_and(|w| UNIT_WORDS.contains(&w))
            || prev_word
                .as_deref()
                .is_some_and(|w| ["usd", "eur", "gbp", "chf", "rs", "inr", "us$"].contains(&w)))
    }

    /// The word right after `e` (one space allowed), lowercased.
    fn word_after(&self, e: usize) -> Option<String> {
        let mut i = e;
        if self.chars.get(i) == Some(&' ') {
            i += 1;
        }
        let s = i;
        while i < self.lower.len() && is_word(self.lower[i]) && i - s < 16 {
            i += 1;
        }
        (i > s).then(|| self.lower[s..i].iter().collect())
    }

    /// The word right before `s` (one space allowed), lowercased.
    fn word_before(&self, s: usize) -> Option<String> {
        let mut i = s;
        if i > 0 && self.chars[i - 1] == ' ' {
            i -= 1;
        }
        let e = i;
        while i > 0 && (is_word(self.lower[i - 1]) || self.lower[i - 1] == '$') && e - i < 16 {
            i -= 1;
        }
        (e > i).then(|| self.lower[i..e].iter().collect())
    }

    /// Reads an upper-case letters-and-digits token (hyphen-separated groups
    /// allowed) at `s`; when it has the shape of a code, judges it and returns
    /// its end. `None` when it is not code-shaped (the numeric scan may still
    /// find a code inside, e.g. `G-123456`).
    fn alnum_at(
        &self,
        s: usize,
        source: Source,
        subject_strong: bool,
        out: &mut Vec<Found>,
    ) -> Option<usize> {
        let ch = &self.chars;
        let n = ch.len();
        let mut end = s;
        while end < n
            && (ch[end].is_ascii_alphanumeric()
                || (ch[end] == '-'
                    && end > s
                    && end + 1 < n
                    && ch[end + 1].is_ascii_alphanumeric()))
        {
            end += 1;
        }
        if end < n && is_word(ch[end]) {
            // Runs into a non-ASCII letter: part of a word.
            return None;
        }
        let token = &ch[s..end];
        let digits = token.iter().filter(|c| c.is_ascii_digit()).count();
        let letters = token.iter().filter(|c| c.is_ascii_alphabetic()).count();
        let lower = token.iter().any(|c| c.is_ascii_lowercase());
        if digits == 0 || letters == 0 || lower || !ALNUM_CODE_CHARS.contains(&(digits + letters)) {
            return None;
        }
        // Random codes mix letters and digits (`X7K9QP`); one run of letters and
        // one of digits (`ID12345678`, `INV2024`, `2024AB`) is an identifier.
        let runs = token
            .iter()
            .filter(|c| **c != '-')
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0].is_ascii_digit() != w[1].is_ascii_digit())
            .count()
            + 1;
        if runs < 3 {
            return None;
        }
        let glued_before = s > 0 && ['#', '+', '/', '.', '$', '-'].contains(&ch[s - 1]);
        let glued_after = (end < n && ['/', '@'].contains(&ch[end]))
            || (end + 1 < n && ch[end] == '.' && is_word(ch[end + 1]));
        if !(glued_before || glued_after) {
            let value: String = token.iter().collect();
            self.judge(
                s,
                end,
                value,
                OtpKind::AlphanumericCode,
                false,
                source,
                subject_strong,
                out,
            );
        }
        Some(end)
    }

    /// Scores a code-shaped span by its keyword context and records it when a
    /// keyword announces it.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        s: usize,
        e: usize,
        value: String,
        kind: OtpKind,
        year_like: bool,
        source: Source,
        subject_strong: bool,
        out: &mut Vec<Found>,
    ) {
        if out.len() >= MAX_FINDINGS {
            return;
        }
        let line = self.line_of(s);
        let (ls, le) = self.line_bounds(line);
        if self.promo_lines.get(line).copied().unwrap_or(false) {
            return;
        }
        let decisive = |h: &&Hit| matches!(h.class, Class::Strong | Class::Negative);
        let nearest_before = self
            .hits_in(ls.max(s.saturating_sub(CONTEXT_BEFORE)), s)
            .iter()
            .filter(decisive)
            .max_by_key(|h| h.end)
            .filter(|h| !self.sentence_break(h.end, s));
        let nearest_after = self
            .hits_in(e, le.min(e + CONTEXT_AFTER))
            .iter()
            .filter(decisive)
            .min_by_key(|h| h.start)
            .filter(|h| !self.sentence_break(e, h.start));
        let standalone = self.standalone(s, e);

        let mut score: f64;
        match (nearest_before, nearest_after) {
            (Some(b), _) if b.class == Class::Negative => return,
            (Some(b), _) if s - b.end <= 80 => {
                score = 0.6;
                let gap: String = self.lower[b.end..s].iter().collect();
                if s - b.end <= 16 && is_filler(&gap) {
                    score += 0.2;
                }
            }
            (_, Some(a)) if a.class == Class::Strong => {
                if year_like {
                    return;
                }
                score = 0.6;
                if a.start - e <= 30 {
                    score += 0.1;
                }
            }
            (_, Some(_)) => return,
            _ => {
                if year_like || !standalone {
                    return;
                }
                match self.previous_lines_class(line) {
                    Some(Class::Strong) => score = 0.65,
                    Some(_) => return,
                    None if subject_strong && source != Source::Subject => score = 0.55,
                    None => return,
                }
            }
        }
        if year_like && score < 0.8 {
            return;
        }
        if standalone {
            score += 0.1;
        }
        if kind == OtpKind::NumericCode && value.len() == 6 {
            score += 0.05;
        }
        if kind == OtpKind::AlphanumericCode {
            score -= 0.05;
        }
        out.push(Found {
            kind,
            value,
            confidence: round2(score.min(0.99)),
            source,
            context: shorten(&self.text(ls.max(s.saturating_sub(80)), le.min(e + 60))),
        });
    }

    /// The class of the nearest Strong/Negative keyword on the two non-empty
    /// lines above `line`.
    fn previous_lines_class(&self, line: usize) -> Option<Class> {
        let mut seen = 0;
        let mut l = line;
        while l > 0 && seen < 2 && line - l < 8 {
            l -= 1;
            let (ls, le) = self.line_bounds(l);
            if self.chars[ls..le].iter().all(|c| c.is_whitespace()) {
                continue;
            }
            seen += 1;
            let last = self
                .hits_in(ls.max(le.saturating_sub(CONTEXT_BEFORE)), le)
                .iter()
                .filter(|h| matches!(h.class, Class::Strong | Class::Negative | Class::Promo))
                .max_by_key(|h| h.end);
            if let Some(h) = last {
                return Some(h.class);
            }
        }
        None
    }
}

/// Whether the text between a keyword and a code only links them
/// (`: `, ` is `, ` ist `, `是`, …).
fn is_filler(gap: &str) -> bool {
    const WORDS: &[&str] = &[
        "is",
        "ist",
        "est",
        "es",
        "lautet",
        "är",
        "er",
        "è",
        "é",
        "é:",
        "here",
        "below",
        "will",
        "be",
        "your",
        "you",
        "to",
        "the",
        "lautet:",
        "de",
        "la",
        "le",
        "el",
        "votre",
        "tu",
        "su",
        "ihr",
        "dein",
        "번호",
        "를",
        "은",
        "는",
        "입니다",
    ];
    gap.split(|c: char| c.is_whitespace() || ":：=-–#*\"'()[]【】»«.,是为為は：\t".contains(c))
        .filter(|w| !w.is_empty())
        .all(|w| WORDS.contains(&w))
}

type CompiledKeyword = (Vec<char>, Class, bool, bool);

/// [`KEYWORDS`] as char vectors, indexed by their first char (built once).
fn keyword_index() -> &'static std::collections::HashMap<char, Vec<CompiledKeyword>> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<char, Vec<CompiledKeyword>>> =
        std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index: std::collections::HashMap<char, Vec<CompiledKeyword>> = Default::default();
        for (k, class, suffix, stem) in KEYWORDS {
            let chars: Vec<char> = k.chars().collect();
            if let Some(first) = chars.first() {
                index
                    .entry(*first)
                    .or_default()
                    .push((chars, *class, *suffix, *stem));
            }
        }
        index
    })
}

fn find_keywords(lower: &[char]) -> Vec<Hit> {
    let mut hits = Vec::new();
    let n = lower.len();
    for i in 0..n {
        let Some(candidates) = keyword_index().get(&lower[i]) else {
            continue;
        };
        for (k, class, suffix_ok, stem) in candidates {
            if i + k.len() > n || lower[i..i + k.len()] != k[..] {
                continue;
            }
            let e = i + k.len();
            let cjk = is_cjk(k[0]);
            let left_ok = cjk || *suffix_ok || i == 0 || !is_word(lower[i - 1]) || !is_word(k[0]);
            let right_ok = cjk
                || *stem
                || e == n
                || !is_word(lower[e])
                || !is_word(k[k.len() - 1])
                || (lower[e] == 's' && (e + 1 == n || !is_word(lower[e + 1])));
            if left_ok && right_ok {
                // A stem's hit ends where its word ends (`verif` → `verification`),
                // so the gap to a code is measured from the whole word.
                let mut end = e;
                if *stem && !cjk {
                    while end < n && is_word(lower[end]) {
                        end += 1;
                    }
                }
                hits.push(Hit {
                    start: i,
                    end,
                    class: *class,
                });
            }
        }
    }
    // A code word right after a negative one ("zip code", "QR-Code", "promo
    // code", "Tracking-Code") is part of that negative name.
    let mut negative_ends: Vec<usize> = hits
        .iter()
        .filter(|p| matches!(p.class, Class::Negative | Class::Promo))
        .map(|p| p.end)
        .collect();
    negative_ends.sort_unstable();
    for h in hits.iter_mut().filter(|h| h.class == Class::Strong) {
        let from = negative_ends.partition_point(|&end| end < h.start.saturating_sub(1));
        if negative_ends.get(from).is_some_and(|&end| end <= h.start) {
            h.class = Class::Negative;
        }
    }
    // Overlapping hits (e.g. "confirmation number" and "confirm"): the longest wins.
    hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
    let mut kept: Vec<Hit> = Vec::new();
    for h in hits {
        if kept.last().is_some_and(|k| h.start < k.end) {
            continue;
        }
        kept.push(h);
    }
    kept
}

/// Finds URLs and e-mail addresses, replaces their characters by [`MASK`] and
/// returns the URLs with the text of their line.
fn mask_urls_and_addresses(chars: &mut [char]) -> Vec<(String, String)> {
    let n = chars.len();
    let mut urls = Vec::new();
    let lower: Vec<char> = chars.iter().map(|c| c.to_ascii_lowercase()).collect();
    let starts_with = |i: usize, p: &str| {
        p.chars()
            .enumerate()
            .all(|(k, pc)| lower.get(i + k) == Some(&pc))
    };
    let is_url_char = |c: char| !c.is_whitespace() && !"<>\"'`".contains(c) && !is_cjk(c);
    let mut spans = Vec::new();
    let mut i = 0;
    while i < n {
        if (i == 0 || !is_word(chars[i - 1]))
            && (starts_with(i, "http://") || starts_with(i, "https://") || starts_with(i, "www."))
        {
            let s = i;
            while i < n && is_url_char(chars[i]) {
                i += 1;
            }
            let mut e = i;
            while e > s && ".,;:!?)]}".contains(chars[e - 1]) {
                e -= 1;
            }
            spans.push((s, e, true));
            continue;
        }
        if chars[i] == '@' {
            let mut s = i;
            while s > 0 && is_url_char(chars[s - 1]) && chars[s - 1] != '@' {
                s -= 1;
            }
            let mut e = i + 1;
            while e < n && is_url_char(chars[e]) {
                e += 1;
            }
            if s < i && e > i + 1 {
                spans.push((s, e, false));
            }
            i = e.max(i + 1);
            continue;
        }
        i += 1;
    }
    for (s, e, is_url) in spans {
        if is_url && urls.len() < MAX_LINKS_CHECKED {
            let url: String = chars[s..e].iter().collect();
            let ls = chars[..s]
                .iter()
                .rposition(|c| *c == '\n')
                .map_or(0, |p| p + 1);
            // The line before too: "Confirm your address:\nhttps://…".
            let ls = if chars[ls..s].iter().all(|c| c.is_whitespace()) && ls > 0 {
                chars[..ls - 1]
                    .iter()
                    .rposition(|c| *c == '\n')
                    .map_or(0, |p| p + 1)
            } else {
                ls
            };
            let le = chars[e..]
                .iter()
                .position(|c| *c == '\n')
                .map_or(n, |p| e + p);
            let mut ctx: String = chars[ls..s].iter().collect();
            ctx.push(' ');
            ctx.extend(chars[e..le].iter());
            urls.push((url, ctx));
        }
        for c in &mut chars[s..e] {
            *c = MASK;
        }
    }
    urls
}

// ---------------------------------------------------------------------------
// Links

fn link_score(url: &str, anchor: &str, doc_keyword: bool) -> Option<f64> {
    let lower = url.to_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    if BAD_URL.iter().any(|b| lower.contains(b)) {
        return None;
    }
    let anchor_lower = anchor.to_lowercase();
    if BAD_TEXT.iter().any(|b| anchor_lower.contains(b)) {
        return None;
    }
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let url_pos = LINK_WORDS.iter().any(|w| path.contains(w));
    let text_pos = LINK_WORDS.iter().any(|w| anchor_lower.contains(w));
    if !url_pos && !text_pos {
        return None;
    }
    if !has_token(url) {
        return None;
    }
    let mut score: f64 = 0.5;
    if url_pos {
        score += 0.2;
    }
    if text_pos {
        score += 0.2;
    }
    if doc_keyword {
        score += 0.05;
    }
    Some(round2(score.min(0.99)))
}

/// Whether the URL's path or query carries a token: a run of at least
/// [`MIN_LINK_TOKEN`] URL-safe characters mixing letters and digits.
fn has_token(url: &str) -> bool {
    let after_host = url.split_once("://").map_or(url, |(_, r)| r);
    let after_host = after_host.split_once('/').map_or("", |(_, p)| p);
    after_host
        .split(|c: char| !(c.is_ascii_alphanumeric() || "-_.~%".contains(c)))
        .any(|run| {
            run.len() >= MIN_LINK_TOKEN
                && run.chars().any(|c| c.is_ascii_digit())
                && run.chars().any(|c| c.is_ascii_alphabetic())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(text: &str) -> Vec<String> {
        candidates_in(None, Some(text), None, &[])
            .into_iter()
            .filter(|c| c.kind != OtpKind::MagicLink)
            .map(|c| c.value().to_owned())
            .collect()
    }

    #[test]
    fn quoted_history_is_not_the_message() {
        let reply = "New code: 111111\n\nOn Mon, 7 Dec 2026, Example <a@example.com> wrote:\n> Your code is 222222\n";
        assert_eq!(own_part(reply), "New code: 111111\n\n");
        assert_eq!(own_part("Hi\n> code 1\nstill mine\n"), "Hi\nstill mine\n");
        let outlook = "Code 111111\n\nFrom: Example <a@example.com>\nSent: Monday\nSubject: x\n\nCode 222222\n";
        assert_eq!(own_part(outlook), "Code 111111\n\n");
        // A forwarded message is content, not history.
        let fwd = "FYI\n---------- Forwarded message ---------\nFrom: Example <a@example.com>\nDate: Mon\n\nYour code is 333333\n";
        assert_eq!(own_part(fwd), fwd);
        assert_eq!(codes(&own_part(reply)), vec!["111111"]);
    }

    #[test]
    fn code_after_keyword() {
        assert_eq!(codes("Your verification code is 482913."), ["482913"]);
        assert_eq!(codes("Ihr Bestätigungscode lautet: 4829"), ["4829"]);
        assert_eq!(codes("您的验证码是123456，5分钟内有效。"), ["123456"]);
        assert_eq!(codes("認証コード：８４７２１９"), ["847219"]);
        assert_eq!(codes("Code: X7K9QP"), ["X7K9QP"]);
    }

    #[test]
    fn code_before_keyword() {
        assert_eq!(codes("482913 is your Acme verification code"), ["482913"]);
    }

    #[test]
    fn split_forms() {
        assert_eq!(codes("Your code: 482 913"), ["482913"]);
        assert_eq!(codes("Your code: 482-913"), ["482913"]);
        assert_eq!(codes("Your code: 4 8 2 9 1 3"), ["482913"]);
        assert_eq!(codes("Your code:\n4\t8\t2\t9\t1\t3"), ["482913"]);
    }

    #[test]
    fn standalone_below_keyword() {
        assert_eq!(
            codes("Use this verification code:\n\n   482913\n\nThanks"),
            ["482913"]
        );
        assert!(codes("Your order:\n\n482913\n").is_empty());
    }

    #[test]
    fn rejects_things_that_are_not_codes() {
        for t in [
            "Your code expires on 2026-11-21 at 10:30.",
            "Verification: call +49 30 1234567 for help",
            "Code: order #123456",
            "Your order number 123456 has shipped. Verify the address.",
            "Promo code SAVE20 gives 20% off",
            "Use code 123456 at checkout",
            "Verification fee: $1234.00",
            "Verification © 2026 Acme",
            "The verification code field: 1234567890123",
            "Zip code 94103, verification pending",
            "Code 12.345,67 EUR",
            "Code version 1.2.3456",
            "Verify: 555-123-4567",
            "Your code was sent to +1 415 555 0100",
            "verification ID12345678",
            "QR code 123456",
            "code 10:45 am",
        ] {
            assert!(codes(t).is_empty(), "{t:?} gave {:?}", codes(t));
        }
    }

    #[test]
    fn keywords_in_another_sentence_do_not_count() {
        assert!(codes("Verify your email. Acme Inc, 1600 Amphitheatre Pkwy, CA 94043").is_empty());
        assert!(codes("Code review for PR 4821").is_empty());
        assert_eq!(
            codes("Your verification code for Acme Inc. is 482913"),
            ["482913"]
        );
        assert_eq!(codes("Order 55231 shipped. Your code: 482913"), ["482913"]);
        assert_eq!(codes("您的订单已发货。验证码：482913"), ["482913"]);
    }

    #[test]
    fn no_keyword_no_code() {
        assert!(codes("Hello\n\n482913\n\nbye").is_empty());
    }

    #[test]
    fn several_codes_are_ambiguous() {
        let c = codes("Your code is 482913. Your backup code is 771204.");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn links() {
        let l = |url: &str, text: &str| {
            candidates_in(
                Some("Confirm your email"),
                None,
                None,
                &[Link {
                    url: url.into(),
                    text: text.into(),
                    quoted: false,
                }],
            )
        };
        assert_eq!(
            l(
                "https://app.example/verify?token=ab12cd34ef56gh78",
                "Verify email"
            )
            .len(),
            1
        );
        assert_eq!(
            l(
                "https://app.example/x/ab12cd34ef56gh78",
                "Confirm my account"
            )
            .len(),
            1
        );
        assert!(
            l(
                "https://app.example/unsubscribe?u=ab12cd34ef56gh78",
                "Verify"
            )
            .is_empty()
        );
        assert!(
            l("https://app.example/verify", "Verify email").is_empty(),
            "no token"
        );
        assert!(l("https://app.example/blog/ab12cd34ef56gh78", "Read more").is_empty());
        assert!(l("mailto:x@y.example", "Verify").is_empty());
    }

    #[test]
    fn text_links() {
        let c = candidates_in(
            Some("Sign in to Acme"),
            Some(
                "Click to sign in:\nhttps://acme.example/magic/Zx81kLq0Pw92mNb7\n\nUnsubscribe: https://acme.example/unsubscribe/Zx81kLq0Pw92mNb7",
            ),
            None,
            &[],
        );
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            c[0].link.as_deref(),
            Some("https://acme.example/magic/Zx81kLq0Pw92mNb7")
        );
    }

    #[test]
    fn hostile_input_is_bounded() {
        // One long line and many short ones, full of keywords and codes.
        let one_line = "code 482913 order 1234 ".repeat(MAX_SCAN_CHARS / 20);
        let c = candidates_in(None, Some(&one_line), Some(&one_line), &[]);
        assert_eq!(c.len(), 1, "one distinct value");
        let many = (0..20_000)
            .map(|i| format!("code {:06}\n", 100_000 + i))
            .collect::<String>();
        let c = candidates_in(Some("code"), Some(&many), None, &[]);
        assert_eq!(c.len(), MAX_CANDIDATES);
        let mut found = Vec::new();
        Scan::new(&many).codes(Source::Text, true, &mut found);
        assert_eq!(found.len(), MAX_FINDINGS);
    }

    #[test]
    fn code_length_limits() {
        let digits = |n: usize| "123456789".chars().cycle().take(n).collect::<String>();
        for n in 1..=12 {
            let found = codes(&format!("Your code: {}", digits(n)));
            assert_eq!(
                !found.is_empty(),
                NUMERIC_CODE_DIGITS.contains(&n),
                "{n} digits: {found:?}"
            );
        }
        let alnum = |n: usize| "K7Q9X2".chars().cycle().take(n).collect::<String>();
        for n in 3..=14 {
            let found = codes(&format!("Your code: {}", alnum(n)));
            assert_eq!(
                !found.is_empty(),
                ALNUM_CODE_CHARS.contains(&n),
                "{n} chars: {found:?}"
            );
        }
    }

    #[test]
    fn links_checked_limit() {
        let mut links: Vec<Link> = (0..MAX_LINKS_CHECKED)
            .map(|i| Link {
                url: format!("https://e.example/about/{i}"),
                text: "x".into(),
                quoted: false,
            })
            .collect();
        let good = Link {
            url: "https://e.example/verify/Ab12Cd34Ef56Gh78".into(),
            text: "Verify".into(),
            quoted: false,
        };
        links.push(good.clone());
        assert!(candidates_in(Some("Verify"), None, None, &links).is_empty());
        links.insert(0, good);
        assert_eq!(candidates_in(Some("Verify"), None, None, &links).len(), 1);
    }

    #[test]
    fn scan_limits_hold() {
        let long = format!("code: {}123456", "x ".repeat(MAX_SCAN_CHARS));
        assert!(codes(&long).is_empty());
        assert_eq!(
            normalize(&"a".repeat(MAX_SCAN_CHARS + 10)).len(),
            MAX_SCAN_CHARS
        );
    }
}
