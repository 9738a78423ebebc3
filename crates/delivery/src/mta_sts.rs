//! MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) without I/O: the policy file
//! (parse it strictly, write it), its `mx` patterns, the `_mta-sts` TXT record,
//! the policy id we publish, and the `_smtp._tls` reporting record ([`TlsRpt`]).
//!
//! The policy file (§3.2) is `name: value` lines ended by LF or CRLF: `version:
//! STSv1`, `mode: enforce|testing|none`, one `mx:` per allowed MX host pattern
//! (`mail.example.com`, or `*.example.com` for exactly one label in place of
//! the `*`), `max_age:` seconds (at most [`MAX_MAX_AGE`]). Field names and values
//! are case-sensitive. Unknown fields must have a well-formed name and value and
//! are then ignored; of a field other than `mx` that appears twice, the first
//! counts. Anything else (a blank line, a line without `:`, a bad value, a
//! missing field, more than [`MAX_POLICY_BYTES`]) makes the whole policy invalid.
//!
//! ```
//! use agentkeys_delivery::{StsMode, StsPolicy};
//!
//! let policy = StsPolicy::parse("version: STSv1\r\nmode: enforce\r\nmx: *.example.net\r\nmax_age: 86400\r\n").unwrap();
//! assert_eq!(policy.mode, StsMode::Enforce);
//! assert!(policy.allows_mx("mx1.example.net."));
//! assert!(!policy.allows_mx("a.b.example.net"), "the wildcard is one label");
//! assert_eq!(StsPolicy::parse(&policy.to_text()).unwrap(), policy);
//! ```

use std::fmt;
use std::str::FromStr;

/// Largest policy body we read (RFC 8461 §3.3 suggests a limit; 64 KiB is the
/// common choice). A larger body is a fetch failure.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Largest `max_age` a policy may carry (RFC 8461 §3.2: one year).
pub const MAX_MAX_AGE: u32 = 31_557_600;
/// The `max_age` we publish unless configured: one week (RFC 8461 §3.2 expects
/// "weeks or greater").
pub const DEFAULT_MAX_AGE: u32 = 604_800;
/// Longest policy `id` in the `_mta-sts` TXT record (RFC 8461 §3.1: 1–32
/// letters and digits).
pub const MAX_ID_LEN: usize = 32;
/// Longest name of an extension field (RFC 8461 §3.1/§3.2: 1 + 31 characters).
pub const MAX_EXT_NAME_LEN: usize = 32;
/// Longest host name (RFC 1035 §2.3.4, without the trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of a host name (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// The version both the TXT record and the policy file carry.
pub const STS_VERSION: &str = "STSv1";

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StsMode {
    /// Deliver only to matching MX hosts over validated TLS; defer otherwise.
    Enforce,
    /// Deliver as without a policy, and report what would have failed.
    Testing,
    /// No policy (a domain withdrawing an earlier one).
    None,
}

impl StsMode {
    /// The policy file's value (`enforce`, `testing`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

impl fmt::Display for StsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StsMode {
    type Err = StsError;

    /// Exactly `enforce`, `testing` or `none` (case-sensitive, RFC 8461 §3.2).
    fn from_str(s: &str) -> Result<Self, StsError> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "testing" => Ok(Self::Testing),
            "none" => Ok(Self::None),
            other => Err(StsError::Invalid {
                field: "mode",
                why: format!("{other:?} is not enforce, testing or none"),
            }),
        }
    }
}

/// Why a policy, a pattern or a TXT record is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// The policy body is larger than [`MAX_POLICY_BYTES`].
    #[error("the policy is over {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    /// A line of the policy file breaks the grammar (RFC 8461 §3.2).
    #[error("line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A required field is absent.
    #[error("the policy has no {0} field")]
    Missing(&'static str),
    /// A field has a value it may not have.
    #[error("{field}: {why}")]
    Invalid {
        /// The field (`version`, `mode`, `mx`, `max_age`, `id`, `rua`).
        field: &'static str,
        /// What is wrong with the value.
        why: String,
    },
    /// The `_mta-sts` (or `_smtp._tls`) TXT record breaks its grammar.
    #[error("TXT record {record:?}: {why}")]
    Record {
        /// The record as found.
        record: String,
        /// What is wrong with it.
        why: String,
    },
    /// More than one record of this version at the name (RFC 8461 §3.1: then
    /// there is no policy).
    #[error("{0} records of this version at one name (there must be one)")]
    Several(usize),
}

fn is_ldh(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// A host name as RFC 5321 §4.1.2 `Domain` has it: dot-separated labels of
/// letters, digits and inner hyphens. Returns it lowercase, without a trailing dot.
fn host_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return Err(format!("{text:?} is not a host name (1-{MAX_HOST_LEN} characters)"));
    }
    for label in name.split('.') {
        let bytes = label.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= MAX_LABEL_LEN
            && bytes.iter().all(|&b| is_ldh(b))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        if !well_formed {
            return Err(format!("{text:?} is not a host name (label {label:?})"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// One `mx` pattern of a policy: a host name, or `*.` and a domain, which
/// stands for any one label in front of that domain (RFC 8461 §3.2, §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxPattern {
    wildcard: bool,
    /// Lowercase, no trailing dot; for a wildcard, the part after `*.`.
    domain: String,
}

impl MxPattern {
    /// Whether `host` (an MX host name; case and a trailing dot do not matter)
    /// matches: equal to the name, or, for `*.example.com`, exactly one label
    /// followed by `.example.com` (`example.com` and `a.b.example.com` do not).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.domain);
        }
        match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(&self.domain),
            None => false,
        }
    }
}

impl FromStr for MxPattern {
    type Err = StsError;

    fn from_str(s: &str) -> Result<Self, StsError> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let domain = host_name(rest).map_err(|why| StsError::Invalid { field: "mx", why })?;
        Ok(Self { wildcard, domain })
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.domain)
        } else {
            f.write_str(&self.domain)
        }
    }
}

/// A policy: what a domain's `/.well-known/mta-sts.txt` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsPolicy {
    /// What senders must do.
    pub mode: StsMode,
    /// The MX host patterns mail may go to (in the file's order).
    pub mx: Vec<MxPattern>,
    /// How long senders may cache the policy, in seconds.
    pub max_age: u32,
}

/// Extension names (RFC 8461 §3.1 `sts-ext-name`, §3.2 `sts-policy-ext-name`):
/// a letter or digit, then up to 31 letters, digits, `_`, `-` or `.`.
fn is_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_EXT_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"_-.".contains(&c))
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

impl StsPolicy {
    /// A policy to publish; `mx` may be empty only with mode `none`.
    pub fn new(mode: StsMode, mx: Vec<MxPattern>, max_age: u32) -> Result<Self, StsError> {
        if max_age > MAX_MAX_AGE {
            return Err(StsError::Invalid {
                field: "max_age",
                why: format!("{max_age} is over {MAX_MAX_AGE} seconds"),
            });
        }
        if mx.is_empty() && mode != StsMode::None {
            return Err(StsError::Missing("mx"));
        }
        Ok(Self { mode, mx, max_age })
    }

    /// Parses a policy file strictly (see the module docs).
    pub fn parse(text: &str) -> Result<Self, StsError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(StsError::TooLarge);
        }
        // Lines end with LF or CRLF (`sts-policy-term`); one terminator after the
        // last field is allowed, nothing else.
        let body = text.strip_suffix('\n').unwrap_or(text);
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for (n, raw) in body.split('\n').enumerate() {
            let line_no = n + 1;
            let bad = |why: String| StsError::Line { line: line_no, why };
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() {
                return Err(bad("empty line".to_owned()));
            }
            if let Some(c) = line.chars().find(|&c| !(c.is_ascii_graphic() || is_wsp(c))) {
                return Err(bad(format!("character {c:?} is not allowed")));
            }
            let Some((name, rest)) = line.split_once(':') else {
                return Err(bad(format!("{line:?} is not `name: value`")));
            };
            if !is_ext_name(name) {
                return Err(bad(format!("{name:?} is not a field name")));
            }
            let value = rest.trim_start_matches(is_wsp).trim_end_matches(is_wsp);
            if value.is_empty() {
                return Err(bad(format!("{name} has no value")));
            }
            match name {
                "version" if version.is_none() => {
                    if value != STS_VERSION {
                        return Err(StsError::Invalid { field: "version", why: format!("{value:?} is not {STS_VERSION}") });
                    }
                    version = Some(());
                }
                "mode" if mode.is_none() => mode = Some(value.parse::<StsMode>()?),
                "max_age" if max_age.is_none() => {
                    let digits = value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit());
                    let seconds = digits.then(|| value.parse::<u64>().ok()).flatten();
                    match seconds.and_then(|s| u32::try_from(s).ok()).filter(|&s| s <= MAX_MAX_AGE) {
                        Some(s) => max_age = Some(s),
                        None => {
                            return Err(StsError::Invalid {
                                field: "max_age",
                                why: format!("{value:?} is not a whole number of seconds up to {MAX_MAX_AGE}"),
                            });
                        }
                    }
                }
                "mx" => mx.push(value.parse::<MxPattern>()?),
                // A repeated field (the first counts) or an extension: ignored.
                _ => {}
            }
        }
        version.ok_or(StsError::Missing("version"))?;
        let mode = mode.ok_or(StsError::Missing("mode"))?;
        let max_age = max_age.ok_or(StsError::Missing("max_age"))?;
        Self::new(mode, mx, max_age)
    }

    /// The policy file, CRLF-terminated lines in the RFC's order: version,
    /// mode, each mx, max_age.
    pub fn to_text(&self) -> String {
        let mut out = format!("version: {STS_VERSION}\r\nmode: {}\r\n", self.mode);
        for mx in &self.mx {
            out.push_str(&format!("mx: {mx}\r\n"));
        }
        out.push_str(&format!("max_age: {}\r\n", self.max_age));
        out
    }

    /// The id we publish in `_mta-sts.<domain>` for this policy: the first 128
    /// bits of SHA-256 over [`StsPolicy::to_text`], in hex (32 letters and
    /// digits), so it changes whenever the policy does and senders refetch it.
    pub fn id(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.to_text().as_bytes());
        digest.as_ref()[..MAX_ID_LEN / 2].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether an MX host may receive mail under this policy (one pattern matches).
    pub fn allows_mx(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }

    /// The patterns, comma-separated (for messages).
    pub fn mx_list(&self) -> String {
        self.mx.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// The `_mta-sts.<domain>` TXT record for a policy id: `v=STSv1; id=<id>`.
pub fn sts_record(id: &str) -> String {
    format!("v={STS_VERSION}; id={id}")
}

/// Splits a `v=<version>; a=b; c=d` record after its version into its fields,
/// or `None` when it does not start with `v=<version>` followed by `;` (or the
/// end). Grammar of RFC 8461 §3.1 and RFC 8460 §3: `*WSP ";" *WSP` between
/// fields, an optional one at the end, each field `name=value`.
/// A record's `name=value` fields, in order.
type Fields<'a> = Vec<(&'a str, &'a str)>;

fn record_fields<'a>(record: &'a str, version: &str) -> Option<Result<Fields<'a>, String>> {
    let rest = record.strip_prefix("v=")?.strip_prefix(version)?;
    let rest = rest.trim_start_matches(is_wsp);
    if rest.is_empty() {
        return Some(Ok(Vec::new()));
    }
    let rest = rest.strip_prefix(';')?;
    let mut fields = Vec::new();
    let parts: Vec<&str> = rest.split(';').collect();
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        let part = part.trim_start_matches(is_wsp).trim_end_matches(is_wsp);
        if part.is_empty() {
            if i == last {
                break; // the optional final delimiter
            }
            return Some(Err("empty field".to_owned()));
        }
        match part.split_once('=') {
            Some((name, value)) if is_ext_name(name) => fields.push((name, value)),
            _ => return Some(Err(format!("{part:?} is not name=value"))),
        }
    }
    Some(Ok(fields))
}

/// Finds the one record of `version` among a name's TXT records: `Ok(None)`
/// when there is none, an error when there are several.
fn one_record<'a>(records: &'a [String], version: &str) -> Result<Option<(&'a String, Fields<'a>)>, StsError> {
    let mut found = Vec::new();
    for record in records {
        if let Some(fields) = record_fields(record, version) {
            found.push((record, fields));
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => {
            let (record, fields) = found.remove(0);
            let fields = fields.map_err(|why| StsError::Record { record: record.clone(), why })?;
            Ok(Some((record, fields)))
        }
        n => Err(StsError::Several(n)),
    }
}

/// The policy id of a domain's `_mta-sts` TXT records (RFC 8461 §3.1):
/// `Ok(None)` when no record starts with `v=STSv1`; the `id` of the one that
/// does; an error when several do or the one is malformed (then the domain has
/// no usable policy). Extension fields must be well-formed and are ignored.
pub fn parse_sts_record(records: &[String]) -> Result<Option<String>, StsError> {
    let Some((record, fields)) = one_record(records, STS_VERSION)? else {
        return Ok(None);
    };
    let bad = |why: String| StsError::Record { record: record.clone(), why };
    let mut id = None;
    for (name, value) in fields {
        if name == "id" {
            let ok = !value.is_empty() && value.len() <= MAX_ID_LEN && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(bad(format!("id {value:?} is not 1-{MAX_ID_LEN} letters and digits")));
            }
            id.get_or_insert(value);
        } else if value.is_empty() || !value.bytes().all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e)) {
            return Err(bad(format!("the value of {name} is not allowed")));
        }
    }
    match id {
        Some(id) => Ok(Some(id.to_owned())),
        None => Err(bad("no id".to_owned())),
    }
}

/// The TLS-RPT record version (RFC 8460 §3).
pub const TLSRPT_VERSION: &str = "TLSRPTv1";

/// Where TLS reports go (RFC 8460 §3 `rua`): one or more `mailto:` or `https:`
/// URIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRpt {
    rua: Vec<String>,
}

impl TlsRpt {
    /// Parses an `rua` value: URIs separated by commas (whitespace around them
    /// allowed), each `mailto:<address>` or `https://<host>…`, without spaces,
    /// `;` or `,` inside.
    pub fn parse_rua(value: &str) -> Result<Self, StsError> {
        let bad = |why: String| StsError::Invalid { field: "rua", why };
        let mut rua = Vec::new();
        for uri in value.split(',') {
            let uri = uri.trim_matches(is_wsp);
            if uri.is_empty() || !uri.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return Err(bad(format!("{uri:?} is not a URI")));
            }
            let scheme_ok = match uri.split_once(':') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mailto") => {
                    rest.split_once('@').is_some_and(|(l, d)| !l.is_empty() && host_name(d.split('?').next().unwrap_or("")).is_ok())
                }
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest
                    .strip_prefix("//")
                    .and_then(|r| r.split(['/', ':', '?']).next())
                    .is_some_and(|host| host_name(host).is_ok()),
                _ => false,
            };
            if !scheme_ok {
                return Err(bad(format!("{uri:?} is not mailto:<address> or https://<host>/…")));
            }
            rua.push(uri.to_owned());
        }
        Ok(Self { rua })
    }

    /// The URIs, as given.
    pub fn rua(&self) -> &[String] {
        &self.rua
    }

    /// The `_smtp._tls.<domain>` TXT record: `v=TLSRPTv1; rua=<uris>`.
    pub fn record(&self) -> String {
        format!("v={TLSRPT_VERSION}; rua={}", self.rua.join(","))
    }

    /// The TLS-RPT policy among a name's TXT records: `Ok(None)` when no record
    /// starts with `v=TLSRPTv1`, an error when several do, or when the one has
    /// no valid `rua`.
    pub fn from_records(records: &[String]) -> Result<Option<Self>, StsError> {
        let Some((record, fields)) = one_record(records, TLSRPT_VERSION)? else {
            return Ok(None);
        };
        match fields.iter().find(|(name, _)| *name == "rua") {
            Some((_, value)) => Self::parse_rua(value).map(Some).map_err(|e| StsError::Record {
                record: record.clone(),
                why: e.to_string(),
            }),
            None => Err(StsError::Record { record: record.clone(), why: "no rua".to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8461 §3.2's example, CRLF and LF.
    const RFC_EXAMPLE: &str = "version: STSv1\r\nmode: testing\r\nmx: mx1.example.com\r\nmx: mx2.example.com\r\nmx: mx.backup-example.com\r\nmax_age: 1296000\r\n";

    #[test]
    fn the_rfc_example_parses_in_crlf_and_lf() {
        for text in [RFC_EXAMPLE.to_owned(), RFC_EXAMPLE.replace("\r\n", "\n"), RFC_EXAMPLE.trim_end().to_owned()] {
            let p = StsPolicy::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(p.mode, StsMode::Testing);
            assert_eq!(p.max_age, 1_296_000);
            assert_eq!(p.mx_list(), "mx1.example.com, mx2.example.com, mx.backup-example.com");
            assert_eq!(p.to_text(), RFC_EXAMPLE, "written back in CRLF, same order");
        }
    }

    /// Each (policy, what the error says) must be refused as a whole.
    #[test]
    fn invalid_policies_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("", "line 1: empty line"),
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"),
            ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "is not STSv1"),
            ("version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "is not STSv1"),
            ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "is not enforce, testing or none"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
            ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "up to 31557600"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "whole number"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "whole number"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1 day\n", "whole number"),
            ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n", "not a host name"),
            ("version: STSv1\nmode: enforce\nmx: *example.com\nmax_age: 1\n", "not a host name"),
            ("version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "not a host name"),
            ("version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 1\n", "not a host name"),
            ("version: STSv1\n\nmode: enforce\nmx: a.example\nmax_age: 1\n", "line 2: empty line"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n\n", "line 5: empty line"),
            ("version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n", "line 2"),
            ("version : STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "not a field name"),
            ("version: STSv1\nmode:\nmx: a.example\nmax_age: 1\n", "mode has no value"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n_x: y\n", "not a field name"),
            ("version: STSv1\rmode: enforce\nmx: a.example\nmax_age: 1\n", "'\\r' is not allowed"),
            ("version: STSv1\nmode: enforce\nmx: ex\u{e4}mple.com\nmax_age: 1\n", "is not allowed"),
        ];
        for (text, expect) in cases {
            let err = StsPolicy::parse(text).expect_err(text).to_string();
            let err = err.replace("the policy has ", "");
            assert!(err.contains(expect), "{text:?}: {err:?} does not say {expect:?}");
        }
        let huge = format!("version: STSv1\nmode: none\nmax_age: 1\nx: {}\n", "a".repeat(MAX_POLICY_BYTES));
        assert_eq!(StsPolicy::parse(&huge), Err(StsError::TooLarge));
    }

    #[test]
    fn first_occurrence_counts_extensions_are_ignored_and_none_needs_no_mx() {
        let p = StsPolicy::parse(
            "version: STSv1\nmode: testing\nmode: enforce\nmax_age: 5\nmax_age: 9\nmx: A.Example.\next-1.x: any value here\n",
        )
        .unwrap();
        assert_eq!((p.mode, p.max_age), (StsMode::Testing, 5));
        assert_eq!(p.mx_list(), "a.example", "lowercase, trailing dot dropped");
        let none = StsPolicy::parse("version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!((none.mode, none.mx.len(), none.max_age), (StsMode::None, 0, 0));
        let padded = StsPolicy::parse("version:STSv1 \t\nmode:\tenforce\nmx:  a.example\nmax_age: 0031557600\n").unwrap();
        assert_eq!(padded.max_age, MAX_MAX_AGE);
    }

    /// RFC 8461 §4.1: `*.example.com` stands for one label, no more, no less.
    #[test]
    fn wildcards_match_exactly_one_leftmost_label() {
        let cases: &[(&str, &str, bool)] = &[
            ("mail.example.com", "mail.example.com", true),
            ("mail.example.com", "MAIL.Example.COM.", true),
            ("mail.example.com", "mail2.example.com", false),
            ("mail.example.com", "example.com", false),
            ("*.example.com", "mx1.example.com", true),
            ("*.example.com", "MX1.EXAMPLE.COM.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", ".example.com", false),
            ("*.example.com", "mx1.example.com.evil.test", false),
            ("*.example.com", "mx1.notexample.com", false),
        ];
        for (pattern, host, expect) in cases {
            let p: MxPattern = pattern.parse().unwrap();
            assert_eq!(p.matches(host), *expect, "{pattern} vs {host}");
            assert_eq!(p.to_string(), *pattern);
        }
    }

    /// RFC 8461 §3.1: the record and its selection among a name's TXT records.
    #[test]
    fn sts_txt_records() {
        let one = |r: &str| parse_sts_record(&[r.to_owned()]);
        assert_eq!(one("v=STSv1; id=20160831085700Z;"), Ok(Some("20160831085700Z".to_owned())), "the RFC's example");
        assert_eq!(one("v=STSv1;id=abc"), Ok(Some("abc".to_owned())));
        assert_eq!(one("v=STSv1 ; id=abc ; ext_1=x:y"), Ok(Some("abc".to_owned())));
        assert_eq!(one("v=STSv1; id=first; id=second"), Ok(Some("first".to_owned())));
        assert_eq!(one(&sts_record(&"a".repeat(32))), Ok(Some("a".repeat(32))));
        for bad in ["v=STSv1", "v=STSv1;", "v=STSv1; id=", "v=STSv1; id=a-b", "v=STSv1; id=a;;", "v=STSv1; ext=a b; id=x",
            "v=STSv1; id=x; ext=a=b", "v=STSv1; id x"]
        {
            assert!(matches!(one(bad), Err(StsError::Record { .. })), "{bad}: {:?}", one(bad));
        }
        assert!(matches!(one(&sts_record(&"a".repeat(33))), Err(StsError::Record { .. })));
        for other in ["v=spf1 -all", "v=STSv10; id=x", "V=STSv1; id=x", "id=x; v=STSv1"] {
            assert_eq!(one(other), Ok(None), "{other} is not an MTA-STS record");
        }
        let two = ["v=STSv1; id=a".to_owned(), "v=STSv1; id=b".to_owned()];
        assert_eq!(parse_sts_record(&two), Err(StsError::Several(2)));
        let mixed = ["google-site-verification=x".to_owned(), "v=STSv1; id=a".to_owned()];
        assert_eq!(parse_sts_record(&mixed), Ok(Some("a".to_owned())));
    }

    #[test]
    fn the_published_id_follows_the_policy_text() {
        let mx = vec!["mx.example.com".parse().unwrap()];
        let p = StsPolicy::new(StsMode::Enforce, mx.clone(), DEFAULT_MAX_AGE).unwrap();
        let id = p.id();
        assert_eq!(id.len(), MAX_ID_LEN);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(parse_sts_record(&[sts_record(&id)]), Ok(Some(id.clone())), "our record parses");
        assert_eq!(StsPolicy::new(StsMode::Enforce, mx.clone(), DEFAULT_MAX_AGE).unwrap().id(), id, "stable");
        let changed = [
            StsPolicy::new(StsMode::Testing, mx.clone(), DEFAULT_MAX_AGE).unwrap(),
            StsPolicy::new(StsMode::Enforce, mx.clone(), DEFAULT_MAX_AGE + 1).unwrap(),
            StsPolicy::new(StsMode::Enforce, vec!["*.example.com".parse().unwrap()], DEFAULT_MAX_AGE).unwrap(),
        ];
        for other in changed {
            assert_ne!(other.id(), id, "{other:?}");
        }
        assert!(StsPolicy::new(StsMode::Enforce, Vec::new(), 1).is_err());
        assert!(StsPolicy::new(StsMode::Enforce, mx, MAX_MAX_AGE + 1).is_err());
    }

    /// RFC 8460 §3: `v=TLSRPTv1; rua=mailto:…` and its examples.
    #[test]
    fn tls_rpt_records() {
        let rua = TlsRpt::parse_rua("mailto:tlsrpt@example.com").unwrap();
        assert_eq!(rua.record(), "v=TLSRPTv1; rua=mailto:tlsrpt@example.com");
        let two = TlsRpt::parse_rua("mailto:a@example.com , https://reports.example.com/v1/tlsrpt").unwrap();
        assert_eq!(two.rua(), ["mailto:a@example.com", "https://reports.example.com/v1/tlsrpt"]);
        for bad in ["", "tlsrpt@example.com", "mailto:", "mailto:x@", "http://example.com/r", "https://", "mailto:a@b.c;x", "mailto:a b@c.d"] {
            assert!(TlsRpt::parse_rua(bad).is_err(), "{bad}");
        }
        let found = |r: &[&str]| TlsRpt::from_records(&r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(found(&["v=TLSRPTv1;rua=mailto:reports@example.com"]), Ok(Some(TlsRpt::parse_rua("mailto:reports@example.com").unwrap())));
        assert_eq!(found(&["v=spf1 -all"]), Ok(None));
        assert!(matches!(found(&["v=TLSRPTv1; ruf=mailto:x@example.com"]), Err(StsError::Record { .. })));
        assert_eq!(found(&["v=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1; rua=mailto:b@example.com"]), Err(StsError::Several(2)));
    }

    #[test]
    fn limits_are_the_rfcs() {
        assert_eq!(MAX_MAX_AGE, 31_557_600, "RFC 8461 §3.2");
        assert_eq!(MAX_ID_LEN, 32, "RFC 8461 §3.1");
        assert_eq!(DEFAULT_MAX_AGE, 7 * 86_400);
        assert_eq!(MAX_POLICY_BYTES, 65_536);
        let long = format!("{}.example", "a".repeat(MAX_LABEL_LEN));
        assert!(long.parse::<MxPattern>().is_ok());
        assert!(format!("{}.example", "a".repeat(MAX_LABEL_LEN + 1)).parse::<MxPattern>().is_err());
        assert!(format!("{}a", "a.".repeat(MAX_HOST_LEN / 2 + 1)).parse::<MxPattern>().is_err());
        assert!(is_ext_name(&"a".repeat(MAX_EXT_NAME_LEN)) && !is_ext_name(&"a".repeat(MAX_EXT_NAME_LEN + 1)));
    }
}
