//! Inbound authentication verdicts: SPF, DKIM and DMARC for mail that arrived on
//! the MX, recorded in an `Authentication-Results:` header field (RFC 8601) on the
//! stored copy.
//!
//! - [`MailAuthVerifier`] is the production [`InboundVerifier`]: mail-auth 0.13
//!   over the server's shared DNS answers (`verdict_dns.rs`: a cache of positive,
//!   negative and failing answers with one query per name in flight, in front of
//!   `dns.nameservers` or the system's). One message's checks together get
//!   [`VERDICT_BUDGET`]; a check still waiting for DNS then is `temperror`, and a
//!   name known to be failing is `temperror` at once.
//! - [`strip_own_results`] removes every `Authentication-Results` field that
//!   claims our authserv-id (RFC 8601 §5), keeping the others, and
//!   [`stripped_with_header`] puts ours on top in the same pass. Both are pure.
//!
//! Verdicts never refuse mail: `dkim=fail` or `dmarc=fail` is recorded and the
//! message stored; the agent reading it decides whether to trust it.
//!
//! `ARC-Authentication-Results` fields are left alone: they belong to an ARC set
//! sealed by the host that added them (removing one breaks that chain), they are
//! not evaluated here, and a reader looking for our verdict reads the
//! `Authentication-Results` field with our authserv-id, which only we can have
//! written.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::common::verify::VerifySignature as _;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult, MessageAuthenticator,
    Parameters, SpfOutput, SpfResult,
};
use tokio::time::{Instant, timeout_at};

use crate::acceptance::InboundVerifier;
use crate::session::InboundEnvelope;
use crate::verdict_dns::{
    AnswerTable, HickoryUpstream, NEGATIVE_TTL_MAX, Rtype, NEGATIVE_TTL_MIN, POSITIVE_TTL_MAX, POSITIVE_TTL_MIN, RecordCache,
    SLOW_AFTER, TxtCache, TxtKind, UPSTREAM_ATTEMPTS, Upstream, VerdictDns, failing,
};

/// How long one message's SPF, DKIM and DMARC checks may wait for DNS, all
/// together (SPF may need up to ten lookups, DKIM one per signature, DMARC a few).
/// A check that has not finished by then is `temperror` and the message is stored
/// anyway; the queries go on and their answers serve the next messages. Well
/// under a second, so the `250` never waits a second for DNS.
pub const VERDICT_BUDGET: Duration = SLOW_AFTER;

/// The longest the resolver inside mail-auth waits for the front (loopback):
/// beyond the budget, so it never gives up or retries before the budget does.
const FRONT_TIMEOUT: Duration = Duration::from_secs(5);

/// SPF, DKIM and DMARC through mail-auth over the server's shared DNS answers.
pub struct MailAuthVerifier {
    auth: MessageAuthenticator,
    dns: VerdictDns,
    budget: Duration,
}

impl std::fmt::Debug for MailAuthVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailAuthVerifier").finish_non_exhaustive()
    }
}

impl MailAuthVerifier {
    /// A verifier asking the name servers of `config` (with `options`, except
    /// that the answers are cached by the verifier's table, not by hickory). Must
    /// be called inside a Tokio runtime: it starts the loopback front
    /// (`verdict_dns.rs`), which stops when the verifier is dropped.
    pub fn new(config: ResolverConfig, mut options: ResolverOpts) -> Result<Self, String> {
        options.cache_size = 0;
        options.attempts = 1;
        options.timeout = UPSTREAM_ATTEMPTS[UPSTREAM_ATTEMPTS.len() - 1];
        let upstream = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map_err(|e| e.to_string())?;
        Self::over(Arc::new(HickoryUpstream(upstream)))
    }

    /// A verifier over any upstream (tests give an in-memory one).
    pub(crate) fn over(upstream: Arc<dyn Upstream>) -> Result<Self, String> {
        let dns = VerdictDns::start(upstream).map_err(|e| format!("cannot start the loopback DNS front: {e}"))?;
        let mut options = ResolverOpts::default();
        options.timeout = FRONT_TIMEOUT;
        options.attempts = 1;
        options.edns0 = true;
        options.use_hosts_file = ResolveHosts::Never;
        // hickory keeps the negative answers the front gives (mail-auth's cache
        // hook only holds positive ones for A/AAAA/MX), for as long as the table.
        options.cache_size = 4096;
        options.positive_min_ttl = Some(POSITIVE_TTL_MIN);
        options.positive_max_ttl = Some(POSITIVE_TTL_MAX);
        options.negative_min_ttl = Some(NEGATIVE_TTL_MIN);
        options.negative_max_ttl = Some(NEGATIVE_TTL_MAX);
        let auth = MessageAuthenticator::new(dns.front_config(), options).map_err(|e| e.to_string())?;
        Ok(Self { auth, dns, budget: VERDICT_BUDGET })
    }

    /// The same verifier with another per-message budget than
    /// [`VERDICT_BUDGET`] (tests).
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// The shared answers (what was asked, cached, failing).
    pub fn answers(&self) -> &AnswerTable {
        self.dns.table()
    }

    /// Starts the lookups every check begins with, all at once: the SPF records of
    /// the HELO and MAIL FROM domains, each signature's DKIM key, and the DMARC
    /// tree walk of the From domain.
    fn prefetch(&self, envelope: &InboundEnvelope, parsed: &AuthenticatedMessage<'_>) {
        let txt = |name: &str| {
            if let Some(fqdn) = dns_name(name) {
                self.dns.prefetch(Rtype::Txt, &fqdn);
            }
        };
        txt(&envelope.helo);
        if let Some((_, domain)) = envelope.mail_from.rsplit_once('@') {
            txt(domain);
        }
        for header in &parsed.dkim_headers {
            txt(&header.header.domain_key());
        }
        if let Some(domain) = first_from(parsed).rsplit_once('@').and_then(|(_, d)| dns_name(d)) {
            for name in dmarc_tree_walk(&domain) {
                txt(&name);
            }
        }
    }

    async fn evaluate(&self, authserv_id: &str, envelope: &InboundEnvelope, parsed: &AuthenticatedMessage<'_>) -> String {
        let deadline = Instant::now() + self.budget;
        self.prefetch(envelope, parsed);
        let table = self.dns.table();
        let records = RecordCache(table);
        let dkim_txt = TxtCache { table, kind: TxtKind::DomainKey };
        let spf_txt = TxtCache { table, kind: TxtKind::Spf };
        let dmarc_txt = TxtCache { table, kind: TxtKind::Dmarc };
        // PTR (SPF's `ptr` and `%{p}`, rare) is not cached here: the front answers it.
        macro_rules! with_caches {
            ($params:expr, $txt:expr) => {
                Parameters::new($params)
                    .with_txt_cache($txt)
                    .with_mx_cache(&records)
                    .with_ipv4_cache(&records)
                    .with_ipv6_cache(&records)
            };
        }

        let spf_params = SpfParameters::verify(envelope.client_ip, &envelope.helo, authserv_id, &envelope.mail_from);
        // Mail fetched from an external mailbox (IMAP) reaches us without its
        // client's address (unspecified): SPF is `none`, not evaluated; DKIM, and
        // DMARC through DKIM alignment, are evaluated as for MX mail.
        let fetched = envelope.client_ip.is_unspecified();
        let spf_check = async {
            if fetched {
                Ok(SpfOutput::new(mail_from_domain(envelope).to_owned()).with_result(SpfResult::None))
            } else {
                timeout_at(deadline, self.auth.verify_spf(with_caches!(spf_params, &spf_txt))).await
            }
        };
        let (dkim, spf) = tokio::join!(
            timeout_at(deadline, self.auth.verify_dkim(with_caches!(parsed, &dkim_txt))),
            spf_check,
        );
        let verified;
        let dkim: Vec<DkimOutput<'_>> = match dkim {
            Ok(outputs) => {
                verified = outputs;
                verified.iter().map(body_hash_mismatch_is_fail).collect()
            }
            Err(_) => parsed
                .dkim_headers
                .iter()
                .map(|header| DkimOutput::temp_err(failing()).with_signature(&header.header))
                .collect(),
        };
        let spf = spf.unwrap_or_else(|_| {
            SpfOutput::new(mail_from_domain(envelope).to_owned()).with_result(SpfResult::TempError)
        });
        let dmarc_params = DmarcParameters::new(parsed, &dkim, mail_from_domain(envelope), &spf);
        let dmarc = timeout_at(deadline, self.auth.verify_dmarc(with_caches!(dmarc_params, &dmarc_txt)))
            .await
            .unwrap_or_else(|_| {
                let from = first_from(parsed);
                let from_domain = from.rsplit_once('@').map_or("", |(_, d)| d);
                DmarcOutput::new(from_domain.to_ascii_lowercase())
                    .with_dkim_result(DmarcResult::TempError(failing()))
                    .with_spf_result(DmarcResult::TempError(failing()))
            });
        results_header(authserv_id, envelope, first_from(parsed), &dkim, &spf, &dmarc)
    }
}

#[async_trait]
impl InboundVerifier for MailAuthVerifier {
    async fn verify(&self, authserv_id: &str, envelope: &InboundEnvelope, message: &[u8]) -> String {
        let parsed = AuthenticatedMessage::parse(message).unwrap_or_default();
        self.evaluate(authserv_id, envelope, &parsed).await
    }
}

/// `name` as the front keys it (lowercase, one trailing dot) when it can be a
/// host name at all (letters, digits, `-`, `_`, at least two labels, none
/// empty, at most 253 bytes): an address literal or junk in HELO or MAIL FROM
/// is never looked up, by mail-auth either.
fn dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    (labels_ok && name.contains('.') && name.len() <= 253).then(|| format!("{}.", name.to_ascii_lowercase()))
}

/// The names a DMARC tree walk (RFC 9989 §4.10) asks for `domain`, in mail-auth's
/// order: `_dmarc.` + the domain, then with the leftmost labels dropped (down to
/// seven labels at once for longer names), one by one down to the top-level
/// domain. Nothing for a single label.
pub(crate) fn dmarc_tree_walk(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').filter(|l| !l.is_empty()).collect();
    let total = labels.len();
    let mut names = Vec::new();
    if total < 2 {
        return names;
    }
    let mut count = total;
    loop {
        names.push(format!("_dmarc.{}.", labels[total - count..].join(".")));
        if count == 1 {
            return names;
        }
        count = if count >= 8 { 7 } else { count - 1 };
    }
}

/// mail-auth reports a body that no longer matches its signature's `bh=` as
/// `neutral`; RFC 6376 §6.1.3 calls it PERMFAIL ("body hash did not verify") and
/// RFC 8601 §2.7.1 `fail` (signed, and verification failed). An agent must see an
/// altered message as `fail`, so it is written as one, with the same reason.
fn body_hash_mismatch_is_fail<'a>(output: &'a DkimOutput<'_>) -> DkimOutput<'a> {
    match (output.result(), output.signature()) {
        (DkimResult::Neutral(err @ mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)), Some(signature)) => {
            DkimOutput::fail(err.clone()).with_signature(signature)
        }
        _ => output.clone(),
    }
}

/// The domain SPF checked: MAIL FROM's, or the HELO name's for the null sender.
fn mail_from_domain(envelope: &InboundEnvelope) -> &str {
    envelope.mail_from.rsplit_once('@').map_or(envelope.helo.as_str(), |(_, d)| d)
}

fn first_from<'a>(parsed: &'a AuthenticatedMessage<'_>) -> &'a str {
    parsed.from.first().map_or("", String::as_str)
}

/// The header field, in mail-auth's RFC 8601 syntax, in the order `dkim`, `spf`,
/// `dmarc`. mail-auth writes nothing for a message without DKIM signatures and a
/// DMARC result without a From domain; those become `dkim=none` / `dmarc=none`
/// (RFC 8601 §2.7.1, §2.7.7) in the same syntax.
fn results_header(
    authserv_id: &str,
    envelope: &InboundEnvelope,
    header_from: &str,
    dkim: &[DkimOutput<'_>],
    spf: &SpfOutput,
    dmarc: &DmarcOutput,
) -> String {
    let mut results = AuthenticationResults::new(authserv_id);
    if !dkim.is_empty() {
        results = results.with_dkim_results(dkim, header_from);
    }
    results = results.with_spf_mailfrom_result(spf, envelope.client_ip, &envelope.mail_from, &envelope.helo);
    let has_dmarc_domain = !dmarc.domain().is_empty();
    if has_dmarc_domain {
        results = results.with_dmarc_result(dmarc);
    }
    let value = results.to_string();
    let rest = value.strip_prefix(authserv_id).unwrap_or(&value);
    let dkim_none = if dkim.is_empty() { ";\r\n\tdkim=none" } else { "" };
    let dmarc_none = if has_dmarc_domain { "" } else { ";\r\n\tdmarc=none" };
    format!("Authentication-Results: {authserv_id}{dkim_none}{rest}{dmarc_none}\r\n")
}

/// `true` for a header field name equal to `Authentication-Results`, ignoring case
/// and whitespace before the colon (RFC 5322 §4.5.3 obsolete syntax).
fn is_results_field(name: &[u8]) -> bool {
    name.trim_ascii_end().eq_ignore_ascii_case(b"authentication-results")
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2): the first
/// token or quoted string after any comments and folding whitespace, lowercased,
/// without a trailing dot. `None` when there is none.
pub fn parse_authserv_id(value: &[u8]) -> Option<String> {
    let mut rest = value;
    loop {
        rest = rest.trim_ascii_start();
        match rest.first() {
            Some(b'(') => rest = skip_comment(rest)?,
            Some(_) => break,
            None => return None,
        }
    }
    let id: Vec<u8> = if rest.first() == Some(&b'"') {
        let mut out = Vec::new();
        let mut bytes = rest[1..].iter();
        loop {
            match bytes.next()? {
                b'"' => break,
                b'\\' => out.push(*bytes.next()?),
                &b => out.push(b),
            }
        }
        out
    } else {
        rest.iter()
            .take_while(|&&b| !b.is_ascii_whitespace() && !b";()\"".contains(&b))
            .copied()
            .collect()
    };
    let id = String::from_utf8_lossy(&id).to_ascii_lowercase();
    let id = id.trim_end_matches('.');
    (!id.is_empty()).then(|| id.to_owned())
}

/// The input after a (possibly nested) comment that starts it.
fn skip_comment(input: &[u8]) -> Option<&[u8]> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&input[i + 1..]);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The message without the `Authentication-Results` header fields whose
/// authserv-id is `authserv_id` (case-insensitive, trailing dot ignored); every
/// other byte, including other such fields and the body, is kept as it was.
/// Folded fields are removed whole; CRLF and bare-LF line ends are both understood.
pub fn strip_own_results(message: &[u8], authserv_id: &str) -> Vec<u8> {
    stripped_with_header("", message, authserv_id)
}

/// `header` (a complete field with its CRLF, or empty) followed by `message`
/// without our own `Authentication-Results` fields ([`strip_own_results`]), built
/// in one buffer: the stored copy of an MX message is written once.
pub fn stripped_with_header(header: &str, message: &[u8], authserv_id: &str) -> Vec<u8> {
    let ours = authserv_id.trim_end_matches('.').to_ascii_lowercase();
    let mut out = Vec::with_capacity(header.len() + message.len());
    out.extend_from_slice(header.as_bytes());
    retain_fields_into(&mut out, message, |name, value| {
        !(is_results_field(name) && parse_authserv_id(value).is_some_and(|id| id == ours))
    });
    out
}

/// The message with only the header fields for which `keep(name, value)` holds
/// (`name` as written before the colon, `value` after it, folding included);
/// lines without a colon are kept. The body is never touched.
pub fn retain_fields(message: &[u8], keep: impl FnMut(&[u8], &[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    retain_fields_into(&mut out, message, keep);
    out
}

/// [`retain_fields`], appending to `out`.
fn retain_fields_into(out: &mut Vec<u8>, message: &[u8], mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
    let mut pos = 0;
    // Walk the header section one field (first line plus continuation lines) at a time.
    while pos < message.len() {
        let line_end = |from: usize| memchr::memchr(b'\n', &message[from..]).map_or(message.len(), |i| from + i + 1);
        let first_end = line_end(pos);
        let first = &message[pos..first_end];
        if first == b"\r\n" || first == b"\n" {
            break; // end of the header section
        }
        let mut end = first_end;
        while end < message.len() && matches!(message[end], b' ' | b'\t') {
            end = line_end(end);
        }
        let field = &message[pos..end];
        let kept = match memchr::memchr(b':', first) {
            Some(colon) => keep(&field[..colon], &field[colon + 1..]),
            None => true,
        };
        if kept {
            out.extend_from_slice(field);
        }
        pos = end;
    }
    out.extend_from_slice(&message[pos..]);
}

/// The first `Authentication-Results` value with authserv-id `authserv_id` in
/// `message`'s header section, unfolded; for tests and diagnostics.
pub fn own_results(message: &[u8], authserv_id: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let ours = authserv_id.trim_end_matches('.').to_ascii_lowercase();
    parsed
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authentication-results"))
        .map(|(_, value)| value.replace("\r\n", "").replace('\n', ""))
        .find(|value| parse_authserv_id(value.as_bytes()).is_some_and(|id| id == ours))
}

#[cfg(test)]
#[path = "verdicts_tests.rs"]
mod tests;
