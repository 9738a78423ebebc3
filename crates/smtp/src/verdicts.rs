//! Inbound authentication verdicts: SPF, DKIM and DMARC for mail that arrived on
//! the MX, recorded in an `Authentication-Results:` header field (RFC 8601) on the
//! stored copy.
//!
//! - [`MailAuthVerifier`] is the production [`InboundVerifier`]: mail-auth 0.13
//!   over a hickory resolver (the server's `dns.nameservers`, or the system's).
//!   Every lookup is bounded by [`VERDICT_DNS_TIMEOUT`] and the whole evaluation
//!   by [`VERDICT_TIMEOUT`]; a DNS failure or timeout is a `temperror` result.
//! - [`strip_own_results`] removes every `Authentication-Results` field that
//!   claims our authserv-id (RFC 8601 §5), keeping the others, and
//!   [`prepend_header`] puts ours on top. Both are pure.
//!
//! Verdicts never refuse mail: `dkim=fail` or `dmarc=fail` is recorded and the
//! message stored; the agent reading it decides whether to trust it.
//!
//! `ARC-Authentication-Results` fields are left alone: they belong to an ARC set
//! sealed by the host that added them (removing one breaks that chain), they are
//! not evaluated here, and a reader looking for our verdict reads the
//! `Authentication-Results` field with our authserv-id, which only we can have
//! written.

use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};

use crate::acceptance::InboundVerifier;
use crate::session::InboundEnvelope;

/// Longest wait for one DNS answer during verification (per attempt; see
/// [`VERDICT_DNS_ATTEMPTS`]).
pub const VERDICT_DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts per DNS query during verification.
pub const VERDICT_DNS_ATTEMPTS: usize = 2;
/// Longest time the whole evaluation of one message may take (SPF may need up to
/// ten lookups, DKIM one per signature, DMARC one or two). When it is over, every
/// result is `temperror` and the message is stored anyway.
pub const VERDICT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after an evaluation ran out of time the next ones get only
/// [`VERDICT_OUTAGE_TIMEOUT`]: a name server that stopped answering must not
/// hold every incoming message for [`VERDICT_TIMEOUT`] before its `250`.
pub const VERDICT_OUTAGE_WINDOW: Duration = Duration::from_secs(60);
/// The bound on one message's evaluation during an outage window. DNS still
/// gets its chance (cached answers are instant), and the first evaluation after
/// the window has the full [`VERDICT_TIMEOUT`] again.
pub const VERDICT_OUTAGE_TIMEOUT: Duration = Duration::from_millis(500);

/// SPF, DKIM and DMARC through mail-auth and hickory.
pub struct MailAuthVerifier {
    auth: MessageAuthenticator,
    deadline: Duration,
    /// When an evaluation last ran out of time ([`VERDICT_OUTAGE_WINDOW`]).
    timed_out_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for MailAuthVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailAuthVerifier").finish_non_exhaustive()
    }
}

impl MailAuthVerifier {
    /// A verifier asking the name servers of `config`. `options` are kept except
    /// the timeout and attempts, which become [`VERDICT_DNS_TIMEOUT`] and
    /// [`VERDICT_DNS_ATTEMPTS`].
    pub fn new(config: ResolverConfig, mut options: ResolverOpts) -> Result<Self, String> {
        options.timeout = VERDICT_DNS_TIMEOUT;
        options.attempts = VERDICT_DNS_ATTEMPTS;
        MessageAuthenticator::new(config, options)
            .map(|auth| Self { auth, deadline: VERDICT_TIMEOUT, timed_out_at: std::sync::Mutex::new(None) })
            .map_err(|e| e.to_string())
    }

    /// The same verifier with another bound on one message's evaluation than
    /// [`VERDICT_TIMEOUT`] (tests).
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The bound on the next evaluation: the configured one, or
    /// [`VERDICT_OUTAGE_TIMEOUT`] within [`VERDICT_OUTAGE_WINDOW`] of a timeout.
    pub fn current_deadline(&self) -> Duration {
        let timed_out_at = *self.timed_out_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match timed_out_at {
            Some(at) if at.elapsed() < VERDICT_OUTAGE_WINDOW => self.deadline.min(VERDICT_OUTAGE_TIMEOUT),
            _ => self.deadline,
        }
    }

    /// Records a timeout; `true` if it starts an outage window (none was open).
    fn timed_out(&self) -> bool {
        let mut at = self.timed_out_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let opens = at.is_none_or(|at| at.elapsed() >= VERDICT_OUTAGE_WINDOW);
        *at = Some(tokio::time::Instant::now());
        opens
    }

    async fn evaluate(&self, authserv_id: &str, envelope: &InboundEnvelope, parsed: &AuthenticatedMessage<'_>) -> String {
        let spf_params = SpfParameters::verify(envelope.client_ip, &envelope.helo, authserv_id, &envelope.mail_from);
        let (dkim, spf) = tokio::join!(self.auth.verify_dkim(parsed), self.auth.verify_spf(spf_params));
        let dkim: Vec<DkimOutput<'_>> = dkim.iter().map(body_hash_mismatch_is_fail).collect();
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(parsed, &dkim, mail_from_domain(envelope), &spf))
            .await;
        results_header(authserv_id, envelope, first_from(parsed), &dkim, &spf, &dmarc)
    }
}

#[async_trait]
impl InboundVerifier for MailAuthVerifier {
    async fn verify(&self, authserv_id: &str, envelope: &InboundEnvelope, message: &[u8]) -> String {
        let parsed = AuthenticatedMessage::parse(message).unwrap_or_default();
        let deadline = self.current_deadline();
        match tokio::time::timeout(deadline, self.evaluate(authserv_id, envelope, &parsed)).await {
            Ok(header) => header,
            Err(_) => {
                if self.timed_out() {
                    tracing::warn!(
                        timeout = ?deadline, window = ?VERDICT_OUTAGE_WINDOW, short = ?VERDICT_OUTAGE_TIMEOUT,
                        "authentication checks timed out; recording temperror, and bounding the next checks \
                         by the short timeout during the window"
                    );
                } else {
                    tracing::debug!(timeout = ?deadline, "authentication checks timed out; recording temperror");
                }
                temperror_header(authserv_id, envelope, first_from(&parsed))
            }
        }
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

/// Every result `temperror`: the checks ran out of time.
fn temperror_header(authserv_id: &str, envelope: &InboundEnvelope, header_from: &str) -> String {
    let dns = || mail_auth::Error::Dns(mail_auth::DnsError::Resolver("timed out".to_owned()));
    let dkim = [DkimOutput::temp_err(dns())];
    let spf = SpfOutput::new(mail_from_domain(envelope).to_owned()).with_result(SpfResult::TempError);
    let from_domain = header_from.rsplit_once('@').map_or("", |(_, d)| d);
    let dmarc = DmarcOutput::new(from_domain.to_ascii_lowercase())
        .with_dkim_result(DmarcResult::TempError(dns()))
        .with_spf_result(DmarcResult::TempError(dns()));
    results_header(authserv_id, envelope, header_from, &dkim, &spf, &dmarc)
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
    let ours = authserv_id.trim_end_matches('.').to_ascii_lowercase();
    retain_fields(message, |name, value| {
        !(is_results_field(name) && parse_authserv_id(value).is_some_and(|id| id == ours))
    })
}

/// The message with only the header fields for which `keep(name, value)` holds
/// (`name` as written before the colon, `value` after it, folding included);
/// lines without a colon are kept. The body is never touched.
pub fn retain_fields(message: &[u8], mut keep: impl FnMut(&[u8], &[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
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
    out
}

/// `header` (a complete field with its CRLF) followed by `message`.
pub fn prepend_header(header: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + message.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(message);
    out
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
