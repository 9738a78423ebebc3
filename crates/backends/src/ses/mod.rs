//! The AWS SES + S3 backend (issue 14, the seed's production path).
//!
//! **Inbound.** An SES receipt rule's S3 action writes each received message,
//! raw, to `s3://<bucket>/<prefix><SES message id>`, with SES's own fields
//! prepended: `Return-Path`, `Received: … by inbound-smtp.<region>.amazonaws.com
//! with SMTP id <id> for <recipient>; <date>`, `X-SES-Spam-Verdict`,
//! `X-SES-Virus-Verdict`, `Received-SPF`, `Authentication-Results: amazonses.com;
//! spf=… dkim=… dmarc=…`, `X-SES-RECEIPT`, `X-SES-DKIM-SIGNATURE`. The
//! [`Receiver`] lists the prefix every `poll_seconds` and stores each new object
//! through [`SmtpServer::ingest`](agentkeys_smtp::SmtpServer::ingest), like the
//! MX and the IMAP backend.
//!
//! **Routing by the envelope.** The envelope recipient is read from the `for`
//! clause of SES's own `Received` field, which is the first `Received` field of
//! the object (SES prepends it; nothing the sender writes can come above it),
//! and only if its `by` host is `inbound-smtp.<region>.amazonaws.com`. The
//! `To:`/`Cc:` fields are never read. SES writes the `for` clause only when the
//! message had one recipient at that rule; an object without it (several
//! recipients in one SMTP transaction), with another domain's recipient, or
//! whose recipient is not an active inbox, is **kept in the bucket and
//! reported** (log, `agentkeys_backend_messages_total{kind="ses",result="unroutable"}`,
//! a `backend.unroutable` audit record naming the key, and the backend's
//! status detail in `agentkeys domain list`), once per server start, never
//! retried in a loop.
//!
//! **Notifications.** With a queue URL, the SQS queue subscribed to the S3
//! action's SNS topic replaces the listing: SES's notification
//! ([`read_notification`]) names every envelope recipient
//! (`receipt.recipients`), so an object for several recipients is stored once
//! in each of their inboxes on this domain (one id per object, each copy under
//! its own owner). The SQS message is deleted only once the copies are durable
//! or the object was kept and reported; a redelivery finds every copy in the
//! index and stores nothing.
//!
//! **Verdicts.** SES's `Authentication-Results: amazonses.com` (SPF, DKIM,
//! DMARC) and `X-SES-Spam-Verdict`/`X-SES-Virus-Verdict` are read only from
//! the block of fields SES prepended (see [`read_receipt`]); they become our
//! own `Authentication-Results: <hostname>;` field (each result marked
//! `(Amazon SES)`), which is what agents read. A virus verdict `FAIL` is not
//! delivered (kept in the bucket and reported).
//!
//! **Once.** The cursor (the store's import cursor under the name
//! `s3://bucket/prefix`) is a last-modified watermark. SES's keys are random,
//! not in arrival order, so each pass lists the prefix (bounded:
//! [`MAX_PAGES_PER_PASS`] pages, the next pass continuing) and looks at every
//! object modified since the watermark minus [`WATERMARK_GRACE`]. Each object
//! is stored under an id derived from its key and time ([`object_id`]); before
//! storing, the index is asked whether that id is already there, so neither a
//! second look nor a restart duplicates a message. The watermark moves when a
//! full lap of the listing is done. Objects are never deleted or changed (the
//! role needs only `s3:ListBucket` and `s3:GetObject`; expire them with a
//! bucket lifecycle rule).
//!
//! **Outbound.** [`SesSink`]: SES `SendRawEmail` with the queue's message as
//! it is: From pinned and DKIM-signed with our keys before it was queued (so
//! DMARC aligns with the domain's own published keys whatever SES's Easy DKIM
//! setting; SES may add its own signature too). Throttling, 5xx and
//! credential errors are deferred; `MessageRejected` and other 4xx refusals
//! bounce (a DSN into the sender's inbox).
//!
//! **Credentials.** `AssumeRoleWithWebIdentity` with our own OIDC token
//! (`sub = agentkeys:server:<hostname>`, `agentkeys_user_wallet` = the owner
//! for a send made on an owner's behalf, `agentkeys-server` for the listing),
//! cached per wallet and refreshed [`aws::REFRESH_BEFORE_EXPIRY`] before it
//! expires. Static keys only when the operator sets them explicitly.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::Domain;
use agentkeys_delivery::{Attempt, SendSink};
use agentkeys_smtp::{Fetched, IngestError};
use agentkeys_store::ImportCursor;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::{BackendContext, RECONNECT_BACKOFF, now};

pub mod aws;
pub mod sigv4;

use aws::{AwsError, CredentialCache, Endpoints};

/// Audit operation of an SES object kept because it cannot be routed.
pub const OP_BACKEND_UNROUTABLE: &str = "backend.unroutable";
/// The key SES writes when a receipt rule's S3 action is created (not mail).
pub const SES_SETUP_NOTIFICATION: &str = "AMAZON_SES_SETUP_NOTIFICATION";
/// Objects modified this long before the watermark are looked at again (S3's
/// `LastModified` is when a write started; a slow write can appear after a
/// later one).
pub const WATERMARK_GRACE: Duration = Duration::from_secs(15 * 60);
/// Listing pages (1000 keys each) read in one pass; the next pass continues.
pub const MAX_PAGES_PER_PASS: usize = 10;
/// Bounds of `poll_seconds`.
pub const POLL_SECONDS: std::ops::RangeInclusive<u64> = 1..=3600;
/// The most of the header section read for SES's fields.
pub const MAX_HEADER_SECTION: usize = 256 * 1024;
/// Keys remembered as stored before the set is cleared (the index still
/// answers whether an object is stored).
pub const MAX_REMEMBERED_KEYS: usize = 100_000;
/// The wallet tag of the server's own (not an owner's) AWS session.
pub const SERVER_WALLET: &str = "agentkeys-server";
/// The longest SQS message body read as a notification (SQS's own limit).
pub const MAX_NOTIFICATION_BYTES: usize = 256 * 1024;
/// The most envelope recipients read from one notification (RFC 5321's
/// minimum recipient buffer; SES accepts fewer per message).
pub const MAX_NOTIFICATION_RECIPIENTS: usize = 100;

/// What an SES receipt notification says about one message its S3 action
/// stored: where, and for which envelope recipients (all of them, unlike the
/// object's `Received` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SesNotification {
    /// `receipt.recipients`: the envelope recipients the rule matched.
    pub recipients: Vec<String>,
    /// `receipt.action.bucketName`.
    pub bucket: String,
    /// `receipt.action.objectKey`.
    pub key: String,
    /// `mail.timestamp` in Unix milliseconds.
    pub timestamp_ms: i64,
    /// `mail.messageId` (SES's id; also the object's name).
    pub message_id: String,
}

/// Reads an SQS message body as SES's receipt notification of an S3 action
/// (sans-IO): an SNS envelope (`{"Type":"Notification","Message":"<json>"}`)
/// or, with SNS raw message delivery, the notification itself
/// (`{"notificationType":"Received","receipt":{"recipients":[…],"action":
/// {"type":"S3","bucketName":…,"objectKey":…}},"mail":{…}}`).
pub fn read_notification(body: &str) -> Result<SesNotification, String> {
    if body.len() > MAX_NOTIFICATION_BYTES {
        return Err(format!("a notification over {MAX_NOTIFICATION_BYTES} bytes"));
    }
    let outer: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let inner: serde_json::Value = match (outer.get("Type").and_then(|v| v.as_str()), outer.get("Message")) {
        (Some("Notification"), Some(serde_json::Value::String(message))) => {
            serde_json::from_str(message).map_err(|e| format!("the SNS message is not JSON: {e}"))?
        }
        (Some(other), _) => return Err(format!("an SNS {other:?} message, not a notification")),
        (None, _) => outer,
    };
    let text = |v: &serde_json::Value, path: &[&str]| -> Result<String, String> {
        let mut at = v;
        for p in path {
            at = at.get(p).ok_or_else(|| format!("no {}", path.join(".")))?;
        }
        at.as_str().map(str::to_owned).ok_or_else(|| format!("{} is not text", path.join(".")))
    };
    let kind = text(&inner, &["notificationType"])?;
    if kind != "Received" {
        return Err(format!("notificationType {kind:?}, not Received"));
    }
    let action = text(&inner, &["receipt", "action", "type"])?;
    if action != "S3" {
        return Err(format!("a receipt rule action of type {action:?}, not S3"));
    }
    let list = inner
        .get("receipt")
        .and_then(|r| r.get("recipients"))
        .and_then(|r| r.as_array())
        .ok_or("no receipt.recipients list")?;
    if list.is_empty() || list.len() > MAX_NOTIFICATION_RECIPIENTS {
        return Err(format!("{} recipients (1 to {MAX_NOTIFICATION_RECIPIENTS})", list.len()));
    }
    let mut recipients = Vec::with_capacity(list.len());
    for r in list {
        let r = r.as_str().ok_or("a recipient that is not text")?;
        let r = bare_address(r);
        if !r.contains('@') || r.len() > 320 {
            return Err(format!("recipient {r:?} is not an address"));
        }
        if !recipients.iter().any(|have: &String| have.eq_ignore_ascii_case(&r)) {
            recipients.push(r);
        }
    }
    let stamp = text(&inner, &["mail", "timestamp"]).or_else(|_| text(&inner, &["receipt", "timestamp"]))?;
    let timestamp: jiff::Timestamp = stamp.parse().map_err(|e| format!("timestamp {stamp:?}: {e}"))?;
    Ok(SesNotification {
        recipients,
        bucket: text(&inner, &["receipt", "action", "bucketName"])?,
        key: text(&inner, &["receipt", "action", "objectKey"])?,
        timestamp_ms: timestamp.as_millisecond(),
        message_id: text(&inner, &["mail", "messageId"]).unwrap_or_default(),
    })
}

/// The stored settings of an SES backend (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesSettings {
    /// The bucket of the receipt rule's S3 action.
    pub bucket: String,
    /// Its object key prefix (`inbound/`; may be empty).
    pub prefix: String,
    /// The AWS region of SES, S3 and STS.
    pub region: String,
    /// One endpoint for STS, SES and S3 (an emulator); AWS's regional ones if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The role assumed with our OIDC token; absent only with static keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Seconds between two listings.
    pub poll_seconds: u64,
    /// The SQS queue the receipt rule's S3 action notifies (through an SNS
    /// topic subscribed to it); when set, the queue replaces the listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
}

impl SesSettings {
    /// Checks what the store cannot. `static_keys`: whether a static key is set.
    pub fn validate(&self, static_keys: bool) -> Result<(), String> {
        let b = &self.bucket;
        if b.len() < 3 || b.len() > 63 || !b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') {
            return Err(format!("bucket {b:?} is not an S3 bucket name (3-63 of a-z 0-9 . -)"));
        }
        if self.prefix.len() > 512 || self.prefix.starts_with('/') || self.prefix.chars().any(char::is_control) {
            return Err(format!("prefix {:?}: at most 512 printable characters, not starting with /", self.prefix));
        }
        if self.region.is_empty() || self.region.len() > 32 || !self.region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(format!("region {:?} is not an AWS region name", self.region));
        }
        Endpoints::new(&self.region, self.endpoint.as_deref())?;
        match (&self.role_arn, static_keys) {
            (Some(arn), false) => {
                if !(arn.starts_with("arn:aws") && arn.contains(":role/")) || arn.len() > 2048 {
                    return Err(format!("role ARN {arn:?} is not arn:aws:iam::<account>:role/<name>"));
                }
            }
            (Some(_), true) => return Err("give either --role-arn (preferred) or static keys, not both".to_owned()),
            (None, false) => {
                return Err("the ses backend needs --role-arn (AssumeRoleWithWebIdentity with our OIDC token), \
                            or static keys as an explicit fallback (--aws-keys-file)"
                    .to_owned());
            }
            (None, true) => {}
        }
        if let Some(queue) = &self.queue_url {
            aws::check_queue_url(queue)?;
        }
        if !POLL_SECONDS.contains(&self.poll_seconds) {
            return Err(format!("poll seconds must be {} to {}", POLL_SECONDS.start(), POLL_SECONDS.end()));
        }
        Ok(())
    }

    /// The import cursor's name: `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Static keys from their sealed text, `ACCESS_KEY_ID:SECRET_ACCESS_KEY`.
pub fn static_keys(text: &str) -> Result<sigv4::AwsCredentials, String> {
    let (id, secret) = text.trim().split_once(':').ok_or("static keys are ACCESS_KEY_ID:SECRET_ACCESS_KEY")?;
    if id.is_empty() || secret.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("static keys are ACCESS_KEY_ID:SECRET_ACCESS_KEY".to_owned());
    }
    Ok(sigv4::AwsCredentials {
        access_key_id: id.to_owned(),
        secret_access_key: zeroize::Zeroizing::new(secret.to_owned()),
        session_token: None,
    })
}

/// What SES recorded about one received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SesReceipt {
    /// The envelope recipient of SES's `Received … for <rcpt>;`, if any.
    pub recipient: Option<String>,
    /// The SES host that received it (`inbound-smtp.us-east-1.amazonaws.com`).
    pub received_by: Option<String>,
    /// The envelope sender (`Return-Path`), `""` if none.
    pub mail_from: String,
    /// SES's spam verdict (`PASS`, `FAIL`, `GRAY`, `PROCESSING_FAILED`), if present.
    pub spam: Option<String>,
    /// SES's virus verdict, if present.
    pub virus: Option<String>,
    /// The `resinfo` of our `Authentication-Results` (after `<host>;`).
    pub results: String,
}

fn fields(message: &[u8]) -> Vec<(String, String)> {
    let head = &message[..message.len().min(MAX_HEADER_SECTION)];
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        } else {
            break;
        }
    }
    out
}

/// The fields SES prepends: the block at the top of the object made only of
/// these names, each once, ended by the first other field, a second
/// `Received`, or SES's `X-SES-DKIM-SIGNATURE` (always its last).
fn ses_block(fields: &[(String, String)]) -> &[(String, String)] {
    const SES: [&str; 8] = [
        "return-path",
        "received",
        "x-ses-spam-verdict",
        "x-ses-virus-verdict",
        "received-spf",
        "authentication-results",
        "x-ses-receipt",
        "x-ses-dkim-signature",
    ];
    let mut seen = HashSet::new();
    for (i, (name, _)) in fields.iter().enumerate() {
        if !SES.contains(&name.as_str()) || !seen.insert(name.as_str()) {
            return &fields[..i];
        }
        if name == "x-ses-dkim-signature" {
            return &fields[..=i];
        }
    }
    fields
}

fn bare_address(value: &str) -> String {
    let value = value.trim();
    let inner = value.strip_prefix('<').and_then(|v| v.split_once('>')).map_or(value, |(inner, _)| inner);
    inner.chars().filter(|c| c.is_ascii_graphic() && *c != '<' && *c != '>').collect()
}

/// SES's `Received` field: `(by host, for recipient)` when `by` is SES's
/// inbound host.
fn ses_received(value: &str) -> Option<(String, Option<String>)> {
    let lower = value.to_ascii_lowercase();
    let by = lower.find(" by ").map(|i| i + 4).or_else(|| lower.starts_with("by ").then_some(3))?;
    let host: String = lower[by..].chars().take_while(|c| !c.is_whitespace() && *c != ';').collect();
    let is_ses = host.starts_with("inbound-smtp.") && host.ends_with(".amazonaws.com");
    if !is_ses {
        return None;
    }
    let rest = &value[by + host.len()..];
    let rest_lower = rest.to_ascii_lowercase();
    let recipient = rest_lower.find(" for ").and_then(|i| {
        let after = &rest[i + 5..];
        let end = after.find(';').unwrap_or(after.len());
        let rcpt = bare_address(&after[..end]);
        (rcpt.contains('@') && !rcpt.contains(char::is_whitespace)).then_some(rcpt)
    });
    Some((host, recipient))
}

/// A result word of RFC 8601, lowercase; anything else is `none`.
fn result_word(word: &str) -> &'static str {
    const WORDS: [&str; 8] = ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"];
    let word = word.trim().to_ascii_lowercase();
    WORDS.iter().find(|w| **w == word).copied().unwrap_or("none")
}

fn property_value(v: &str) -> Option<String> {
    let v: String = v.chars().take_while(|c| !c.is_whitespace() && *c != ';' && *c != '(').collect();
    (!v.is_empty() && v.len() <= 255 && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')).then_some(v)
}

/// Our `resinfo` from SES's `Authentication-Results: amazonses.com; …`: the
/// spf, dkim and dmarc results with their identity properties, each marked
/// `(Amazon SES)`; a method SES did not report is `none`.
fn results_from(ses_results: Option<&str>, spam: Option<&str>, virus: Option<&str>) -> String {
    let mut found: Vec<(&'static str, &'static str, Vec<String>)> = Vec::new();
    if let Some(value) = ses_results {
        let mut parts = value.split(';');
        let authserv = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if authserv == "amazonses.com" {
            for part in parts {
                let part = part.trim();
                let Some((method, rest)) = part.split_once('=') else { continue };
                let method = match method.trim().to_ascii_lowercase().as_str() {
                    "spf" => "spf",
                    "dkim" => "dkim",
                    "dmarc" => "dmarc",
                    _ => continue,
                };
                if found.iter().any(|(m, ..)| *m == method) {
                    continue;
                }
                let word = result_word(rest.split(|c: char| c.is_whitespace() || c == '(').next().unwrap_or(""));
                let mut props = Vec::new();
                for prop in ["smtp.mailfrom", "smtp.helo", "header.i", "header.d", "header.from", "header.s"] {
                    if let Some(i) = rest.find(&format!("{prop}="))
                        && let Some(v) = property_value(&rest[i + prop.len() + 1..])
                    {
                        props.push(format!("{prop}={v}"));
                    }
                }
                found.push((method, word, props));
            }
        }
    }
    // Each result on a line of its own; the scan verdicts (no RFC 8601
    // method exists for them) ride in the first result's comment.
    let verdict = |v: Option<&str>| v.map_or("none".to_owned(), |v| v.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(32).collect());
    let scans = format!("Amazon SES, spam verdict {}, virus verdict {}", verdict(spam), verdict(virus));
    let mut lines = Vec::with_capacity(3);
    for method in ["spf", "dkim", "dmarc"] {
        let found = found.iter().find(|(m, ..)| *m == method);
        let word = found.map_or("none", |(_, w, _)| *w);
        let comment = if method == "spf" { scans.as_str() } else { "Amazon SES" };
        let mut line = format!("{method}={word} ({comment})");
        for prop in found.map(|(_, _, p)| p.as_slice()).unwrap_or_default() {
            line.push(' ');
            line.push_str(prop);
        }
        lines.push(line);
    }
    format!("\r\n\t{}", lines.join(";\r\n\t"))
}

/// What SES recorded in the fields it prepended to `message` (sans-IO).
pub fn read_receipt(message: &[u8]) -> SesReceipt {
    let all = fields(message);
    let block = ses_block(&all);
    let first = |name: &str| block.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    // The object's first `Received` field is SES's (it prepends it above
    // everything the sender wrote), even below a header a receipt rule's
    // add-header action put on top.
    let first_received = all.iter().find(|(n, _)| n == "received").map(|(_, v)| v.as_str());
    let (received_by, recipient) = match first_received.and_then(ses_received) {
        Some((by, rcpt)) => (Some(by), rcpt),
        None => (None, None),
    };
    let spam = first("x-ses-spam-verdict").map(str::trim).map(str::to_owned);
    let virus = first("x-ses-virus-verdict").map(str::trim).map(str::to_owned);
    // Verdicts only from the block SES wrote (with its `Received` in it).
    let (ses_results, spam, virus) = if received_by.is_some() && first("received").is_some() {
        (first("authentication-results"), spam, virus)
    } else {
        (None, None, None)
    };
    SesReceipt {
        recipient: received_by.as_ref().and(recipient),
        mail_from: first("return-path").map(bare_address).unwrap_or_default(),
        results: results_from(ses_results, spam.as_deref(), virus.as_deref()),
        spam,
        virus,
        received_by,
    }
}

/// The id an object is stored under: its last-modified time in the ULID's
/// time part, 80 bits of SHA-256 of `bucket/key` in the rest; the same object
/// always gets the same id, so the index tells whether it is stored.
pub fn object_id(bucket: &str, key: &str, last_modified_ms: u64) -> Ulid {
    let digest = Sha256::digest(format!("{bucket}/{key}").as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    Ulid::from_parts(last_modified_ms, u128::from_be_bytes(random))
}

fn ms(t: &jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

/// The task that follows one domain's bucket.
pub struct Receiver {
    ctx: BackendContext,
    domain: Domain,
    settings: SesSettings,
    endpoints: Endpoints,
    credentials: Arc<CredentialCache>,
    /// Keys stored (or refused) by this process.
    done: HashSet<String>,
    /// Keys reported unroutable by this process.
    reported: HashSet<String>,
    /// Where the unfinished lap continues, and the newest time it saw.
    lap: Option<(String, i64)>,
    /// Whether `running` (with no detail) is the status last written.
    running: bool,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("domain", &self.domain).field("location", &self.settings.location()).finish_non_exhaustive()
    }
}

enum Outcome {
    Stored,
    Skipped,
}

impl Receiver {
    /// A receiver of `settings`' bucket for `domain`.
    pub fn new(ctx: BackendContext, domain: Domain, settings: SesSettings, endpoints: Endpoints, credentials: Arc<CredentialCache>) -> Self {
        Self {
            ctx,
            domain,
            settings,
            endpoints,
            credentials,
            done: HashSet::new(),
            reported: HashSet::new(),
            lap: None,
            running: false,
        }
    }

    /// Lists (or, with a queue, follows the queue) and stores until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some(queue) = self.settings.queue_url.clone() {
            return self.run_queue(queue, shutdown).await;
        }
        let mut failures = 0usize;
        tracing::info!(domain = %self.domain, location = %self.settings.location(), "SES backend: following the bucket");
        loop {
            let wait = match self.pass(&shutdown).await {
                Ok(()) => {
                    failures = 0;
                    Duration::from_secs(self.settings.poll_seconds)
                }
                Err(why) => {
                    failures += 1;
                    let wait = self.ctx.scaled(RECONNECT_BACKOFF[(failures - 1).min(RECONNECT_BACKOFF.len() - 1)]);
                    let wait = wait.max(Duration::from_secs(self.settings.poll_seconds));
                    tracing::warn!(domain = %self.domain, %why, ?wait, "SES backend: the listing pass failed");
                    metrics::counter!("agentkeys_backend_reconnects_total", "kind" => "ses").increment(1);
                    self.status("failing", Some(&why)).await;
                    self.running = false;
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn status(&self, status: &str, detail: Option<&str>) {
        if let Err(err) = self.ctx.store.set_mail_backend_status(&self.domain, status, detail, now()).await {
            tracing::warn!(domain = %self.domain, %err, "cannot record the mail backend's status");
        }
    }

    async fn pass(&mut self, shutdown: &CancellationToken) -> Result<(), String> {
        let location = self.settings.location();
        let stored = self.ctx.store.import_cursor(&self.domain, &location).await.map_err(|e| format!("the store: {e}"))?;
        let watermark = stored.map_or(0, |c| c.last_uid);
        let since = watermark - i64::try_from(WATERMARK_GRACE.as_millis()).unwrap_or(i64::MAX);
        let credentials = self.credentials.get(SERVER_WALLET).await.map_err(|e| self.aws_failed(&e))?;
        let (mut token, mut newest) = match self.lap.take() {
            Some((token, newest)) => (Some(token), newest),
            None => (None, watermark),
        };
        let mut objects = Vec::new();
        let mut complete = false;
        for _ in 0..MAX_PAGES_PER_PASS {
            let page = aws::list_page(&self.ctx.tls, &self.endpoints, &credentials, &self.settings.bucket, &self.settings.prefix, token.as_deref())
                .await
                .map_err(|e| self.aws_failed(&e))?;
            for object in page.objects {
                newest = newest.max(ms(&object.last_modified));
                if ms(&object.last_modified) >= since
                    && !object.key.ends_with('/')
                    && !object.key.ends_with(SES_SETUP_NOTIFICATION)
                    && !self.done.contains(&object.key)
                    && !self.reported.contains(&object.key)
                {
                    objects.push(object);
                }
            }
            match page.next {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => {
                    complete = true;
                    break;
                }
            }
        }
        objects.sort_by(|a, b| (a.last_modified, &a.key).cmp(&(b.last_modified, &b.key)));
        for object in objects {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.take(&credentials, &object).await? {
                Outcome::Stored => {
                    metrics::counter!("agentkeys_backend_messages_total", "kind" => "ses", "result" => "stored").increment(1);
                }
                Outcome::Skipped => {}
            }
        }
        if complete {
            let cursor = ImportCursor { uid_validity: 0, last_uid: newest.max(watermark), pending: None };
            self.ctx.store.save_import_cursor(&self.domain, &location, &cursor).await.map_err(|e| format!("the store: {e}"))?;
            // The index answers for what this set forgets.
            if self.done.len() > MAX_REMEMBERED_KEYS {
                self.done.clear();
            }
        } else if let Some(token) = token {
            self.lap = Some((token, newest));
        }
        self.mark_running().await;
        Ok(())
    }

    /// Writes the `running` status unless it is the one last written.
    async fn mark_running(&mut self) {
        if self.reported.is_empty() && !self.running {
            self.status("running", None).await;
            self.running = true;
        } else if !self.reported.is_empty() && !self.running {
            // Back from a failure with kept objects: say so again.
            let detail = format!("{} object(s) kept in s3://{}/ and not delivered", self.reported.len(), self.settings.bucket);
            self.status("running", Some(&detail)).await;
            self.running = true;
        }
    }

    /// Follows the SQS queue the receipt rule's S3 action notifies, until
    /// `shutdown`: long polls, stores each notified object once for each of
    /// its envelope recipients on this domain, and deletes the SQS message
    /// only after that is durable (or the object is reported as kept).
    async fn run_queue(mut self, queue: String, shutdown: CancellationToken) {
        let mut failures = 0usize;
        tracing::info!(domain = %self.domain, %queue, location = %self.settings.location(), "SES backend: following the SQS queue");
        loop {
            match self.queue_pass(&queue, &shutdown).await {
                Ok(()) => failures = 0,
                Err(why) => {
                    failures += 1;
                    let wait = self.ctx.scaled(RECONNECT_BACKOFF[(failures - 1).min(RECONNECT_BACKOFF.len() - 1)]);
                    tracing::warn!(domain = %self.domain, %why, ?wait, "SES backend: the queue pass failed");
                    metrics::counter!("agentkeys_backend_reconnects_total", "kind" => "ses").increment(1);
                    self.status("failing", Some(&why)).await;
                    self.running = false;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn queue_pass(&mut self, queue: &str, shutdown: &CancellationToken) -> Result<(), String> {
        let credentials = self.credentials.get(SERVER_WALLET).await.map_err(|e| self.aws_failed(&e))?;
        let region = self.endpoints.region.clone();
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = aws::sqs_receive(&self.ctx.tls, &region, &credentials, queue, aws::SQS_WAIT_SECONDS) => r,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(err) => {
                if let AwsError::Refused { code, .. } = &err
                    && matches!(code.as_str(), "ExpiredToken" | "InvalidClientTokenId" | "UnrecognizedClientException")
                {
                    self.credentials.forget(SERVER_WALLET).await;
                }
                return Err(err.to_string());
            }
        };
        self.mark_running().await;
        for message in messages {
            // Not deleted unless settled: SQS delivers it again after the
            // queue's visibility timeout.
            if self.take_notification(&credentials, &message).await? {
                aws::sqs_delete(&self.ctx.tls, &region, &credentials, queue, &message.receipt_handle)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Stores the object one notification names for each of its envelope
    /// recipients on this domain that does not have it yet. `Ok(true)`: settled
    /// (stored, already stored, or kept and reported), the SQS message may go.
    async fn take_notification(&mut self, credentials: &sigv4::AwsCredentials, message: &aws::QueueMessage) -> Result<bool, String> {
        let notification = match read_notification(&message.body) {
            Ok(n) => n,
            Err(why) => {
                let why = format!("an SQS message that is not SES's notification of an S3 action: {why}");
                self.unroutable(&format!("sqs:{}", message.message_id), &why, None).await;
                return Ok(true);
            }
        };
        let key = notification.key.clone();
        if key.ends_with(SES_SETUP_NOTIFICATION) {
            return Ok(true);
        }
        if notification.bucket != self.settings.bucket {
            self.unroutable(&key, "the notification names another bucket than this backend's", None).await;
            return Ok(true);
        }
        let domain = self.domain.as_str().to_owned();
        let (ours, others): (Vec<String>, Vec<String>) = notification.recipients.iter().cloned().partition(|r| {
            r.rsplit_once('@').is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(&domain))
        });
        if ours.is_empty() {
            self.unroutable(&key, "no envelope recipient is on this backend's domain", Some(others.join(", ").as_str())).await;
            return Ok(true);
        }
        if !others.is_empty() {
            tracing::info!(domain = %self.domain, %key, others = others.len(),
                "SES backend: recipients on other domains are not delivered by this domain's backend");
        }
        let id = object_id(&self.settings.bucket, &key, u64::try_from(notification.timestamp_ms).unwrap_or(0));
        let mut missing = Vec::with_capacity(ours.len());
        for recipient in ours {
            if !self.already_stored(&recipient, id).await? {
                missing.push(recipient);
            }
        }
        if missing.is_empty() {
            // A redelivery (or another node's copy): every recipient has it.
            return Ok(true);
        }
        let Some(raw) = aws::get_object(&self.ctx.tls, &self.endpoints, credentials, &self.settings.bucket, &key)
            .await
            .map_err(|e| e.to_string())?
        else {
            self.unroutable(&key, "the object the notification names is not in the bucket", None).await;
            return Ok(true);
        };
        let receipt = read_receipt(&raw);
        if receipt.virus.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("FAIL")) {
            self.unroutable(&key, "SES's virus verdict is FAIL; not delivered", Some(missing.join(", ").as_str())).await;
            return Ok(true);
        }
        let fetched = Fetched {
            id,
            source: receipt.received_by.clone().unwrap_or_else(|| "amazonses.com".to_owned()),
            via: "SES/S3",
            mail_from: receipt.mail_from.clone(),
            recipients: missing.clone(),
            message: raw,
            received_at: now(),
            results: Some(receipt.results.clone()),
        };
        match self.ctx.smtp.ingest(fetched).await {
            Ok(ingested) => {
                tracing::info!(domain = %self.domain, %key, %id, copies = ingested.stored.len(), "SES backend: stored (notified)");
                metrics::counter!("agentkeys_backend_messages_total", "kind" => "ses", "result" => "stored")
                    .increment(ingested.stored.len() as u64);
                if !ingested.unroutable.is_empty() {
                    let list = ingested.unroutable.join(", ");
                    self.unroutable(&key, "envelope recipients that are not an active inbox", Some(list.as_str())).await;
                }
                Ok(true)
            }
            Err(IngestError::Unroutable(list)) => {
                self.unroutable(&key, "no envelope recipient is an active inbox", Some(list.join(", ").as_str())).await;
                Ok(true)
            }
            Err(err @ (IngestError::Refused | IngestError::TooLarge(..))) => {
                tracing::info!(domain = %self.domain, %key, %err, "SES backend: object not stored (left in the bucket)");
                metrics::counter!("agentkeys_backend_messages_total", "kind" => "ses", "result" => "refused").increment(1);
                Ok(true)
            }
            Err(IngestError::Store(err)) => Err(format!("the store: {err}")),
        }
    }

    fn aws_failed(&self, err: &AwsError) -> String {
        err.to_string()
    }

    /// Stores one object, or reports why not.
    async fn take(&mut self, credentials: &sigv4::AwsCredentials, object: &aws::Listed) -> Result<Outcome, String> {
        let key = object.key.clone();
        let Some(message) = aws::get_object(&self.ctx.tls, &self.endpoints, credentials, &self.settings.bucket, &key)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(Outcome::Skipped);
        };
        let receipt = read_receipt(&message);
        let Some(recipient) = receipt.recipient.clone() else {
            let why = if receipt.received_by.is_none() {
                "its first Received field is not SES's (inbound-smtp.<region>.amazonaws.com): not an SES receipt"
            } else {
                "SES recorded no single envelope recipient (a message to several recipients; the S3 object does not say which)"
            };
            self.unroutable(&key, why, None).await;
            return Ok(Outcome::Skipped);
        };
        let on_domain = recipient
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(self.domain.as_str()));
        if !on_domain {
            self.unroutable(&key, "the envelope recipient is not on this backend's domain", Some(&recipient)).await;
            return Ok(Outcome::Skipped);
        }
        if receipt.virus.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("FAIL")) {
            self.unroutable(&key, "SES's virus verdict is FAIL; not delivered", Some(&recipient)).await;
            return Ok(Outcome::Skipped);
        }
        let millis = u64::try_from(ms(&object.last_modified)).unwrap_or(0);
        let id = object_id(&self.settings.bucket, &key, millis);
        if self.already_stored(&recipient, id).await? {
            self.done.insert(key);
            return Ok(Outcome::Skipped);
        }
        let fetched = Fetched {
            id,
            source: receipt.received_by.clone().unwrap_or_else(|| "amazonses.com".to_owned()),
            via: "SES/S3",
            mail_from: receipt.mail_from.clone(),
            recipients: vec![recipient.clone()],
            message,
            received_at: now(),
            results: Some(receipt.results.clone()),
        };
        match self.ctx.smtp.ingest(fetched).await {
            Ok(_) => {
                tracing::info!(domain = %self.domain, %key, %id, "SES backend: stored");
                self.done.insert(key);
                Ok(Outcome::Stored)
            }
            Err(IngestError::Unroutable(_)) => {
                self.unroutable(&key, "the envelope recipient is not an active inbox", Some(&recipient)).await;
                Ok(Outcome::Skipped)
            }
            Err(err @ (IngestError::Refused | IngestError::TooLarge(..))) => {
                tracing::info!(domain = %self.domain, %key, %err, "SES backend: object not stored (left in the bucket)");
                metrics::counter!("agentkeys_backend_messages_total", "kind" => "ses", "result" => "refused").increment(1);
                self.done.insert(key);
                Ok(Outcome::Skipped)
            }
            Err(IngestError::Store(err)) => Err(format!("the store: {err}")),
        }
    }

    /// Whether `recipient`'s inbox (a subaddress resolved as `ingest` resolves
    /// it) already holds `id`.
    async fn already_stored(&self, recipient: &str, id: Ulid) -> Result<bool, String> {
        let Some(address) = self.ctx.smtp.subaddressing().resolve(recipient).map(|r| r.inbox) else { return Ok(false) };
        let Some(found) = self.ctx.store.recipient(&address).await.map_err(|e| format!("the store: {e}"))? else {
            return Ok(false);
        };
        Ok(self.ctx.store.indexed_message(&found.owner, &address, id).await.map_err(|e| format!("the store: {e}"))?.is_some())
    }

    /// Reports a kept object once per server start: log, counter, audit
    /// record, status detail. The object stays in the bucket.
    async fn unroutable(&mut self, key: &str, why: &str, recipient: Option<&str>) {
        if !self.reported.insert(key.to_owned()) {
            return;
        }
        tracing::warn!(domain = %self.domain, bucket = %self.settings.bucket, %key, %why,
            "SES backend: object kept in the bucket, not delivered");
        metrics::counter!("agentkeys_backend_messages_total", "kind" => "ses", "result" => "unroutable").increment(1);
        let event = AuditEvent::ok(Actor::System, OP_BACKEND_UNROUTABLE, self.domain.as_str()).with_detail(json!({
            "kind": "ses",
            "bucket": self.settings.bucket,
            "key": key,
            "recipient": recipient,
            "why": why,
        }));
        if let Err(err) = self.ctx.store.audit_append(&event).await {
            tracing::error!(domain = %self.domain, %err, "cannot audit the kept object");
        }
        let detail = format!(
            "{} object(s) kept in s3://{}/ and not delivered; latest {key}: {why}",
            self.reported.len(),
            self.settings.bucket
        );
        self.status("running", Some(&detail)).await;
        self.running = true;
    }
}

/// SES's error codes that bounce a message (a permanent refusal of this
/// message); anything else is deferred.
pub const BOUNCE_CODES: [&str; 4] = ["MessageRejected", "MailFromDomainNotVerified", "InvalidParameterValue", "ValidationError"];

/// How one `SendRawEmail` ended, as the queue's [`Attempt`].
pub fn classify(result: Result<String, AwsError>) -> Attempt {
    match result {
        Ok(id) => Attempt::Delivered(format!("250 2.0.0 accepted by Amazon SES as {id}")),
        Err(AwsError::Refused { code, message, status, .. }) if BOUNCE_CODES.contains(&code.as_str()) => {
            Attempt::Permanent(format!("554 5.7.1 Amazon SES refused the message ({status} {code}): {message}"))
        }
        Err(AwsError::Refused { code, message, status, .. }) => {
            Attempt::Temporary(format!("451 4.4.2 Amazon SES answered {status} {code}: {message}"))
        }
        Err(err) => Attempt::Temporary(format!("451 4.4.2 {err}")),
    }
}

/// Sends through SES `SendRawEmail` on behalf of the sender's owner.
pub struct SesSink {
    ctx: BackendContext,
    endpoints: Endpoints,
    credentials: Arc<CredentialCache>,
}

impl std::fmt::Debug for SesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SesSink").field("region", &self.endpoints.region).finish_non_exhaustive()
    }
}

impl SesSink {
    /// A sink through `endpoints`' SES.
    pub fn new(ctx: BackendContext, endpoints: Endpoints, credentials: Arc<CredentialCache>) -> Self {
        Self { ctx, endpoints, credentials }
    }

    /// The session wallet of a send from `from`: its owner's id.
    async fn wallet(&self, from: &str) -> String {
        let Ok(address) = from.parse::<agentkeys_core::Address>() else { return SERVER_WALLET.to_owned() };
        match self.ctx.store.recipient(&address).await {
            Ok(Some(r)) => {
                let s = r.owner.as_str();
                s.strip_prefix("0x").unwrap_or(s).to_ascii_lowercase()
            }
            _ => SERVER_WALLET.to_owned(),
        }
    }
}

#[async_trait]
impl SendSink for SesSink {
    async fn send(&self, from: &str, to: &str, body: &[u8]) -> Attempt {
        let wallet = self.wallet(from).await;
        let credentials = match self.credentials.get(&wallet).await {
            Ok(c) => c,
            Err(err) => return Attempt::Temporary(format!("451 4.7.0 no AWS credentials: {err}")),
        };
        let result = aws::send_raw_email(&self.ctx.tls, &self.endpoints, &credentials, from, to, body).await;
        if let Err(AwsError::Refused { code, .. }) = &result
            && matches!(code.as_str(), "ExpiredToken" | "InvalidClientTokenId" | "UnrecognizedClientException")
        {
            self.credentials.forget(&wallet).await;
        }
        if let Err(AwsError::Refused { code, .. }) = &result
            && code == "Throttling"
        {
            metrics::counter!("agentkeys_backend_throttled_total", "kind" => "ses").increment(1);
        }
        classify(result)
    }
}

#[cfg(test)]
mod tests;
