//! `Authentication-Results` (RFC 8601): a small parser and the verdict the agent
//! acts on.
//!
//! Our MX evaluates SPF, DKIM and DMARC (mail-auth 0.13) and prepends one
//! `Authentication-Results: <our hostname>; …` header to the stored copy, after
//! removing any that arrived claiming our hostname, above everything that
//! arrived. So the topmost `Authentication-Results` header is the one that
//! counts, and only when its authserv-id is our hostname; every other header is
//! ignored. (A header of ours below someone else's can only be a forgery that
//! no MX of ours stripped, e.g. when verification was off.)
//!
//! `authenticated` is true when DMARC passed for the `From:` domain, or when a
//! DKIM signature passed whose signing domain is aligned with the `From:` domain
//! (equal, or one is a parent domain of the other: relaxed alignment without a
//! public-suffix list, so never a bare TLD). SPF alone never authenticates the
//! `From:` header.

use serde::Serialize;

/// Longest header value parsed (bytes); a longer one is ignored as a whole.
pub const MAX_AR_HEADER_LEN: usize = 16 * 1024;
/// Method results kept per header.
pub const MAX_RESULTS_PER_HEADER: usize = 64;
/// Properties kept per method result.
pub const MAX_PROPERTIES_PER_RESULT: usize = 16;

/// One `ptype.property=value` of a result, e.g. `header.d=example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Property {
    /// `smtp`, `header`, `body`, `policy` (lowercased).
    pub ptype: String,
    /// `mailfrom`, `d`, `s`, `from`, … (lowercased).
    pub property: String,
    /// The value, unquoted.
    pub value: String,
}

/// One `method=result …` of an `Authentication-Results` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MethodResult {
    /// `spf`, `dkim`, `dmarc`, `arc`, `iprev`, … (lowercased, version removed).
    pub method: String,
    /// `pass`, `fail`, `none`, … (lowercased).
    pub result: String,
    /// The `reason=` value, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The properties in order (at most [`MAX_PROPERTIES_PER_RESULT`]).
    pub properties: Vec<Property>,
}

impl MethodResult {
    /// The value of `ptype.property`, first occurrence.
    pub fn property(&self, ptype: &str, property: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|p| p.ptype == ptype && p.property == property)
            .map(|p| p.value.as_str())
    }
}

/// A parsed `Authentication-Results` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResultsHeader {
    /// The authserv-id (lowercased, no trailing dot).
    pub authserv_id: String,
    /// The results in order; empty for `; none`.
    pub results: Vec<MethodResult>,
}

/// Why a header value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArParseError {
    /// Longer than [`MAX_AR_HEADER_LEN`].
    #[error("Authentication-Results header longer than {MAX_AR_HEADER_LEN} bytes")]
    TooLong,
    /// No authserv-id before the first `;`.
    #[error("Authentication-Results header without an authserv-id")]
    NoAuthservId,
}

/// Parses one header value (everything after `Authentication-Results:`).
///
/// Comments (nested, with quoted pairs), quoted strings, folding and any
/// whitespace around `=`, `.`, `/` and `;` are handled. A result that does not
/// parse (no `=`) is skipped rather than failing the header.
pub fn parse(value: &str) -> Result<AuthResultsHeader, ArParseError> {
    if value.len() > MAX_AR_HEADER_LEN {
        return Err(ArParseError::TooLong);
    }
    let tokens = tokenize(value);
    let mut segments = tokens.split(|t| *t == Token::Semi);
    let first = segments.next().unwrap_or_default();
    // `authserv-id [version]`: no `=` belongs there (`mx.example=x` is no id).
    let authserv_id = match first.first() {
        Some(Token::Word(w) | Token::Quoted(w)) if !first.contains(&Token::Eq) => {
            normalize_domain(w)
        }
        _ => return Err(ArParseError::NoAuthservId),
    };
    if authserv_id.is_empty() {
        return Err(ArParseError::NoAuthservId);
    }
    let mut results = Vec::new();
    for segment in segments {
        if results.len() >= MAX_RESULTS_PER_HEADER {
            break;
        }
        if let Some(r) = parse_resinfo(segment) {
            results.push(r);
        }
    }
    Ok(AuthResultsHeader {
        authserv_id,
        results,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Eq,
    Semi,
}

/// Splits a header value into words, quoted strings, `=` and `;`, dropping
/// comments and whitespace (folding included).
fn tokenize(value: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = value.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if !word.is_empty() {
            tokens.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                flush(&mut word, &mut tokens);
                let mut depth = 1usize;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '"' => {
                flush(&mut word, &mut tokens);
                let mut q = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                q.push(n);
                            }
                        }
                        '"' => break,
                        '\r' | '\n' => {}
                        _ => q.push(c),
                    }
                }
                tokens.push(Token::Quoted(q));
            }
            '=' => {
                flush(&mut word, &mut tokens);
                tokens.push(Token::Eq);
            }
            ';' => {
                flush(&mut word, &mut tokens);
                tokens.push(Token::Semi);
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

/// `method[/version] = result [reason=value] [ptype.property=value]*`.
fn parse_resinfo(tokens: &[Token]) -> Option<MethodResult> {
    let mut pairs = key_values(tokens).into_iter();
    let (method, result) = pairs.next()?;
    let method = method
        .split('/')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if method.is_empty() || result.is_empty() {
        return None;
    }
    let mut out = MethodResult {
        method,
        result: result.to_ascii_lowercase(),
        reason: None,
        properties: Vec::new(),
    };
    for (key, value) in pairs {
        let key = key.to_ascii_lowercase();
        if key == "reason" {
            out.reason.get_or_insert(value);
            continue;
        }
        let Some((ptype, property)) = key.split_once('.') else {
            continue;
        };
        if out.properties.len() < MAX_PROPERTIES_PER_RESULT && !ptype.is_empty() {
            out.properties.push(Property {
                ptype: ptype.to_owned(),
                property: property.to_owned(),
                value,
            });
        }
    }
    Some(out)
}

/// Groups tokens into `key = value` pairs: the key is every word before `=`
/// joined without spaces (so `header . d` is `header.d`), the value the one
/// token after it.
fn key_values(tokens: &[Token]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut key = String::new();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Word(w) | Token::Quoted(w) => key.push_str(w),
            Token::Eq => {
                let value = match tokens.get(i + 1) {
                    Some(Token::Word(v) | Token::Quoted(v)) => {
                        i += 1;
                        v.clone()
                    }
                    _ => String::new(),
                };
                pairs.push((std::mem::take(&mut key), value));
            }
            Token::Semi => {}
        }
        i += 1;
    }
    pairs
}

fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The DKIM part of our verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DkimVerdict {
    /// `pass`, `fail`, `neutral`, …
    pub result: String,
    /// The signing domain (`header.d`, or the domain of `header.i`).
    pub domain: Option<String>,
    /// The selector (`header.s`).
    pub selector: Option<String>,
}

/// The authentication verdicts of our MX for one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authentication {
    /// True when DMARC passed, or a DKIM signature aligned with the `From:`
    /// domain passed. The one flag an agent should check before trusting a code.
    pub authenticated: bool,
    /// Which result made `authenticated` true, e.g. `dmarc=pass header.from=example.com`;
    /// or why it is false.
    pub basis: String,
    /// Whether a header of our MX (authserv-id = our hostname) was present.
    pub verdicts_present: bool,
    /// The SPF result (`pass`, `fail`, `softfail`, …), if evaluated.
    pub spf: Option<String>,
    /// The DKIM results, one per signature.
    pub dkim: Vec<DkimVerdict>,
    /// The DMARC result, if evaluated.
    pub dmarc: Option<String>,
    /// Every result of our header, as parsed.
    pub results: Vec<MethodResult>,
}

impl Authentication {
    /// Evaluates the raw `Authentication-Results` header values of a message,
    /// topmost first, against our hostname and the `From:` domain: only the
    /// topmost value is read, and only if its authserv-id is `our_hostname`.
    pub fn evaluate<'a>(
        header_values: impl IntoIterator<Item = &'a str>,
        our_hostname: &str,
        from_domain: Option<&str>,
    ) -> Authentication {
        let ours = normalize_domain(our_hostname);
        let header = header_values
            .into_iter()
            .next()
            .and_then(|v| parse(v).ok())
            .filter(|h| !ours.is_empty() && h.authserv_id == ours);
        let Some(header) = header else {
            return Authentication {
                authenticated: false,
                basis: format!("the topmost Authentication-Results is not from {ours}"),
                verdicts_present: false,
                spf: None,
                dkim: Vec::new(),
                dmarc: None,
                results: Vec::new(),
            };
        };
        let from_domain = from_domain.map(normalize_domain).filter(|d| !d.is_empty());
        let first = |m: &str| header.results.iter().find(|r| r.method == m);
        let spf = first("spf").map(|r| r.result.clone());
        let dmarc_result = first("dmarc");
        let dmarc = dmarc_result.map(|r| r.result.clone());
        let dkim: Vec<DkimVerdict> = header
            .results
            .iter()
            .filter(|r| r.method == "dkim")
            .map(|r| DkimVerdict {
                result: r.result.clone(),
                domain: r
                    .property("header", "d")
                    .map(normalize_domain)
                    .or_else(|| r.property("header", "i").and_then(domain_of_identity)),
                selector: r.property("header", "s").map(str::to_owned),
            })
            .collect();

        let (authenticated, basis) = match &from_domain {
            None => (false, "the message has no single From: domain".to_owned()),
            Some(from) => verdict(from, dmarc_result, &dkim),
        };
        Authentication {
            authenticated,
            basis,
            verdicts_present: true,
            spf,
            dkim,
            dmarc,
            results: header.results,
        }
    }
}

fn verdict(from: &str, dmarc: Option<&MethodResult>, dkim: &[DkimVerdict]) -> (bool, String) {
    if let Some(d) = dmarc
        && d.result == "pass"
    {
        match d.property("header", "from").map(normalize_domain) {
            Some(hf) if hf != from => {}
            _ => return (true, format!("dmarc=pass header.from={from}")),
        }
    }
    for v in dkim {
        if v.result == "pass"
            && let Some(d) = &v.domain
            && aligned(d, from)
        {
            return (
                true,
                format!("dkim=pass header.d={d} aligned with From: {from}"),
            );
        }
    }
    let mut why = format!("no dmarc=pass and no aligned dkim=pass for From: {from}");
    if let Some(d) = dmarc {
        why.push_str(&format!(" (dmarc={})", d.result));
    }
    (false, why)
}

/// The domain of a DKIM `i=` identity (`user@example.com`, `@example.com`).
fn domain_of_identity(i: &str) -> Option<String> {
    i.rsplit_once('@')
        .map(|(_, d)| normalize_domain(d))
        .filter(|d| !d.is_empty())
}

/// Relaxed alignment without a public-suffix list: equal, or one is a
/// subdomain of the other and the shorter has at least two labels.
pub fn aligned(a: &str, b: &str) -> bool {
    let (a, b) = (normalize_domain(a), normalize_domain(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let (short, long) = if a.len() < b.len() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    short.contains('.') && long.ends_with(&format!(".{short}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL_AUTH: &str = "mx.agents.localhost;\r\n\tdkim=pass header.d=example.com header.s=sel header.b=abcd;\r\n\tspf=pass (mx.agents.localhost: domain of a@example.com designates 127.0.0.1 as permitted sender) smtp.mailfrom=a@example.com;\r\n\tdmarc=pass header.from=example.com policy.dmarc=reject";

    #[test]
    fn parses_mail_auth_output() {
        let h = parse(MAIL_AUTH).unwrap();
        assert_eq!(h.authserv_id, "mx.agents.localhost");
        assert_eq!(h.results.len(), 3);
        assert_eq!(h.results[0].method, "dkim");
        assert_eq!(h.results[0].property("header", "d"), Some("example.com"));
        assert_eq!(h.results[0].property("header", "s"), Some("sel"));
        assert_eq!(h.results[1].result, "pass");
        assert_eq!(
            h.results[1].property("smtp", "mailfrom"),
            Some("a@example.com")
        );
        assert_eq!(h.results[2].property("policy", "dmarc"), Some("reject"));
    }

    #[test]
    fn comments_quotes_versions_and_spacing() {
        let v = "  \"MX.Example.\" 1 (version); dkim/1 (sig one) = fail (bad (nested) \\) sig) \
                 reason=\"body hash; did not verify\" header . d = a.example header.i=\"@a.example\" ;\
                 dkim=pass header.i=\"user\\\"x@b.example\"; dmarc=none; garbage ;";
        let h = parse(v).unwrap();
        assert_eq!(h.authserv_id, "mx.example");
        assert_eq!(h.results.len(), 3);
        let d0 = &h.results[0];
        assert_eq!((d0.method.as_str(), d0.result.as_str()), ("dkim", "fail"));
        assert_eq!(d0.reason.as_deref(), Some("body hash; did not verify"));
        assert_eq!(d0.property("header", "d"), Some("a.example"));
        assert_eq!(
            h.results[1].property("header", "i"),
            Some("user\"x@b.example")
        );
        assert_eq!(h.results[2].result, "none");
    }

    #[test]
    fn none_and_errors() {
        assert!(parse("mx.example; none").unwrap().results.is_empty());
        assert_eq!(parse("mx.example").unwrap().results, vec![]);
        assert_eq!(parse("; dkim=pass"), Err(ArParseError::NoAuthservId));
        assert_eq!(parse(""), Err(ArParseError::NoAuthservId));
        assert_eq!(
            parse(&"a".repeat(MAX_AR_HEADER_LEN + 1)),
            Err(ArParseError::TooLong)
        );
    }

    #[test]
    fn result_and_property_limits() {
        let many = format!(
            "mx.example{}",
            "; dkim=pass".repeat(MAX_RESULTS_PER_HEADER + 5)
        );
        assert_eq!(parse(&many).unwrap().results.len(), MAX_RESULTS_PER_HEADER);
        let props = format!(
            "mx.example; dkim=pass{}",
            " header.x=1".repeat(MAX_PROPERTIES_PER_RESULT + 5)
        );
        assert_eq!(
            parse(&props).unwrap().results[0].properties.len(),
            MAX_PROPERTIES_PER_RESULT
        );
    }

    #[test]
    fn only_our_authserv_id_counts() {
        let forged = "evil.example; dmarc=pass header.from=example.com";
        let a = Authentication::evaluate([forged], "mx.agents.localhost", Some("example.com"));
        assert!(!a.authenticated && !a.verdicts_present);
        let a = Authentication::evaluate(
            [MAIL_AUTH, forged],
            "MX.agents.localhost.",
            Some("example.com"),
        );
        assert!(a.authenticated && a.verdicts_present);
        assert_eq!(a.basis, "dmarc=pass header.from=example.com");
        assert_eq!(a.spf.as_deref(), Some("pass"));
    }

    #[test]
    fn topmost_of_ours_wins() {
        let fail = "mx.agents.localhost; dkim=fail header.d=example.com; dmarc=fail header.from=example.com";
        let a = Authentication::evaluate(
            [fail, MAIL_AUTH],
            "mx.agents.localhost",
            Some("example.com"),
        );
        assert!(!a.authenticated);
        assert_eq!(a.dmarc.as_deref(), Some("fail"));
    }

    #[test]
    fn dkim_alignment() {
        let h =
            |d: &str| format!("mx.x; dkim=pass header.d={d}; dmarc=none header.from=example.com");
        let eval = |d: &str, from: &str| {
            Authentication::evaluate([h(d).as_str()], "mx.x", Some(from)).authenticated
        };
        assert!(eval("example.com", "example.com"));
        assert!(eval("mail.example.com", "example.com"));
        assert!(eval("example.com", "news.example.com"));
        assert!(!eval("other.com", "example.com"));
        assert!(!eval("com", "example.com"));
        assert!(!eval("badexample.com", "example.com"));
        assert!(!eval("a.example.com", "b.example.com"));
        let by_i = "mx.x; dkim=pass header.i=@Example.COM header.s=s";
        assert!(Authentication::evaluate([by_i], "mx.x", Some("example.com")).authenticated);
        let failed = "mx.x; dkim=fail header.d=example.com; spf=pass smtp.mailfrom=a@example.com";
        assert!(!Authentication::evaluate([failed], "mx.x", Some("example.com")).authenticated);
    }

    #[test]
    fn dmarc_pass_for_another_domain_does_not_count() {
        let v = "mx.x; dmarc=pass header.from=other.example";
        let a = Authentication::evaluate([v], "mx.x", Some("example.com"));
        assert!(!a.authenticated);
        let a = Authentication::evaluate([v], "mx.x", None);
        assert!(!a.authenticated);
    }

    #[test]
    fn ours_below_another_header_is_a_forgery() {
        // Our MX puts its header above everything; one of "ours" below a
        // foreign one was not written by it.
        let a = Authentication::evaluate(
            ["relay.example; none", MAIL_AUTH],
            "mx.agents.localhost",
            Some("example.com"),
        );
        assert!(!a.verdicts_present && !a.authenticated);
        let a = Authentication::evaluate([], "mx.agents.localhost", Some("example.com"));
        assert!(!a.verdicts_present);
    }

    #[test]
    fn an_id_glued_to_a_result_is_no_id() {
        assert_eq!(
            parse("mx.agents.localhost=x; dmarc=pass"),
            Err(ArParseError::NoAuthservId)
        );
        assert_eq!(
            parse("(c) mx.x 1 (v); dkim=pass").unwrap().authserv_id,
            "mx.x"
        );
    }
}
