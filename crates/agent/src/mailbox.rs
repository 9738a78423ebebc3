//! The agent's mail operations, one function per MCP tool and CLI verb
//! (`agentkeys mcp` and `agentkeys mail …` both call these): list, show, fetch
//! an attachment, send, reply, forward, wait for a message, extract a code.
//! Requests and answers are plain serde types with JSON Schemas, so the MCP
//! tools publish exactly what these functions take.

use std::time::{Duration, Instant};

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::SendVia;
use crate::client::{ApiClient, ClientError, InboxEntry, ListQuery, MessageEntry, Order, SendReceipt, unix_now};

/// Default page size of `list_messages`.
pub const DEFAULT_LIST_LIMIT: u32 = 20;
/// Most messages `list_messages` (with filters) and `extract_otp` (newest
/// matching) look at before they stop: filtering happens here, on parsed
/// headers, so it costs one fetch per message.
pub const MAX_SCAN: usize = 200;
/// Default wait of `wait_for_message` / `extract_otp` with `wait`, in seconds.
pub const DEFAULT_WAIT_SECS: u64 = 60;
/// Longest wait a caller may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = 600;
/// Largest attachment returned inline (base64) by `get_attachment`, in bytes.
pub const MAX_INLINE_ATTACHMENT: usize = 10 * 1024 * 1024;
/// Largest total of attachments a caller may send, in bytes (decoded).
pub const MAX_SEND_ATTACHMENTS: usize = 20 * 1024 * 1024;

/// Why an operation failed: the server's refusal, or the caller's input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The request is invalid; the text names the field and the fix.
    #[error("{0}")]
    Invalid(String),
    /// Nothing matching arrived in time.
    #[error("no matching message arrived within {0} s")]
    TimedOut(u64),
    /// The message could not be parsed or composed.
    #[error("{0}")]
    Message(String),
    /// The message holds no code or link (the extractor does not guess).
    #[error("{0}")]
    NoCode(String),
}

/// `list_inboxes`: no parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInboxesParams {}

/// The inboxes this agent may use.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InboxList {
    /// The inboxes, by address.
    pub inboxes: Vec<InboxEntry>,
}

/// `list_messages`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMessagesParams {
    /// The inbox address, e.g. `bot@agents.example.com` (see `list_inboxes`).
    pub inbox: String,
    /// How many messages to return, newest first (1-100, default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// Only messages that arrived after this message id (a ULID from an earlier answer).
    #[serde(default)]
    pub after: Option<String>,
    /// Only messages older than this message id: pass `next_cursor` to get the next page.
    #[serde(default)]
    pub before: Option<String>,
    /// Only messages whose From address or name contains this text (case-insensitive).
    #[serde(default)]
    pub from: Option<String>,
    /// Only messages whose subject contains this text (case-insensitive).
    #[serde(default)]
    pub subject_contains: Option<String>,
    /// Only messages sent to the inbox's subaddress with this tag: `github`
    /// matches mail to `bot+github@domain` (give each service its own address).
    #[serde(default)]
    pub to_tag: Option<String>,
}

/// One message in a listing: the store's facts and the main headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageSummary {
    /// The message id (a ULID; time-ordered).
    pub message_id: String,
    /// When our server stored it (Unix seconds).
    pub received_at: i64,
    /// Size in bytes.
    pub size: u64,
    /// The From address.
    pub from: Option<String>,
    /// The From display name.
    pub from_name: Option<String>,
    /// The subject.
    pub subject: Option<String>,
    /// The address the mail was sent to, when it was a subaddress of the inbox
    /// (`bot+github@domain`; the server's `Delivered-To:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_to: Option<String>,
    /// The subaddress tag (`github` for `bot+github@domain`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_tag: Option<String>,
}

/// A page of `list_messages`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageList {
    /// The inbox.
    pub inbox: String,
    /// Matching messages, newest first.
    pub messages: Vec<MessageSummary>,
    /// Pass as `before` for the next (older) page; absent when there is none.
    pub next_cursor: Option<String>,
    /// How many messages were looked at (more than returned when filters are set).
    pub scanned: usize,
}

/// `get_message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetMessageParams {
    /// The inbox address.
    pub inbox: String,
    /// The message id (from `list_messages` or `wait_for_message`).
    pub message_id: String,
}

/// `get_attachment`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetAttachmentParams {
    /// The inbox address.
    pub inbox: String,
    /// The message id.
    pub message_id: String,
    /// The attachment's index, as `get_message` lists it.
    pub index: u32,
}

/// An attachment's bytes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AttachmentContent {
    /// Its index in the message.
    pub index: u32,
    /// The file name, if the sender gave one.
    pub filename: Option<String>,
    /// The media type.
    pub content_type: String,
    /// Size in bytes.
    pub size: usize,
    /// The bytes, base64.
    pub content_base64: String,
}

/// An attachment to send.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    /// The file name shown to the recipient.
    pub filename: String,
    /// The media type, e.g. `application/pdf` (default `application/octet-stream`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The bytes, base64.
    pub content_base64: String,
}

/// `send_message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageParams {
    /// The inbox to send from (needs a `send` grant); it is also the From address.
    pub inbox: String,
    /// Recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind copy recipients (not shown in the message).
    #[serde(default)]
    pub bcc: Vec<String>,
    /// The subject.
    #[serde(default)]
    pub subject: String,
    /// The plain-text body.
    #[serde(default)]
    pub text: Option<String>,
    /// An HTML body (sent as an alternative to `text`).
    #[serde(default)]
    pub html: Option<String>,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
    /// Makes a retry safe: give a new unique value (e.g. a UUID) for each new
    /// message, and the same value when retrying the same send after a timeout
    /// or error. Within 24 h the same key and message send only once (the answer
    /// then says `replayed: true`); the same key with a different message is
    /// refused (IDEMPOTENCY_KEY_REUSED) and sends nothing.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `reply_to_message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyParams {
    /// The inbox that received the message (and sends the reply).
    pub inbox: String,
    /// The message to answer.
    pub message_id: String,
    /// The plain-text reply.
    #[serde(default)]
    pub text: Option<String>,
    /// An HTML reply.
    #[serde(default)]
    pub html: Option<String>,
    /// Also answer every To/Cc recipient of the original (not only its sender).
    #[serde(default)]
    pub reply_all: bool,
    /// Attachments.
    #[serde(default)]
    pub attachments: Vec<AttachmentInput>,
}

/// `forward_message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardParams {
    /// The inbox that received the message (and forwards it).
    pub inbox: String,
    /// The message to forward (attached whole as message/rfc822).
    pub message_id: String,
    /// Recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// Blind copy recipients.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// A note above the forwarded message.
    #[serde(default)]
    pub text: Option<String>,
}

/// `wait_for_message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// The inbox address.
    pub inbox: String,
    /// Only a message whose From address or name contains this text (case-insensitive).
    #[serde(default)]
    pub from: Option<String>,
    /// Only a message whose subject contains this text (case-insensitive).
    #[serde(default)]
    pub subject_contains: Option<String>,
    /// How long to wait, in seconds (default 60, at most 600).
    #[serde(default)]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_s: Option<u64>,
    /// Also accept messages that arrived since this Unix time (seconds), e.g. just
    /// before the sign-up form was submitted. Default: the moment of the call.
    #[serde(default)]
    pub since: Option<i64>,
}

/// `extract_otp`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractOtpParams {
    /// The inbox address.
    pub inbox: String,
    /// The message to read. Without it: with `wait`, the next matching message;
    /// otherwise the newest matching message already there.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Wait for the next matching message (see `wait_for_message`).
    #[serde(default)]
    pub wait: bool,
    /// Only a message whose From address or name contains this text (case-insensitive).
    #[serde(default)]
    pub from: Option<String>,
    /// Only a message whose subject contains this text (case-insensitive).
    #[serde(default)]
    pub subject_contains: Option<String>,
    /// With `wait`: how long to wait, in seconds (default 60, at most 600).
    #[serde(default)]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_s: Option<u64>,
    /// With `wait`: also accept messages that arrived since this Unix time (seconds).
    #[serde(default)]
    pub since: Option<i64>,
}

/// The agent's mailbox operations over one [`ApiClient`].
#[derive(Debug, Clone)]
pub struct MailService {
    client: ApiClient,
}

/// Case-insensitive filters on From and Subject.
#[derive(Debug, Clone, Default)]
struct Filter {
    from: Option<String>,
    subject: Option<String>,
}

impl Filter {
    fn new(from: Option<&str>, subject: Option<&str>) -> Self {
        let norm = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_lowercase);
        Self { from: norm(from), subject: norm(subject) }
    }

    fn is_empty(&self) -> bool {
        self.from.is_none() && self.subject.is_none()
    }

    fn matches(&self, s: &MessageSummary) -> bool {
        let has = |field: Option<&String>, needle: &String| field.is_some_and(|f| f.to_lowercase().contains(needle.as_str()));
        self.from.as_ref().is_none_or(|n| has(s.from.as_ref(), n) || has(s.from_name.as_ref(), n))
            && self.subject.as_ref().is_none_or(|n| has(s.subject.as_ref(), n))
    }
}

/// The From address, From name and Subject of a raw message.
pub fn summarize(entry: &MessageEntry, raw: &[u8]) -> MessageSummary {
    let parsed = mail_parser::MessageParser::default().parse_headers(raw);
    let first = parsed.as_ref().and_then(|m| m.from()).and_then(|a| a.first());
    MessageSummary {
        message_id: entry.message_id.clone(),
        received_at: entry.received_at,
        size: entry.size,
        from: first.and_then(|a| a.address()).map(str::to_owned),
        from_name: first.and_then(|a| a.name()).map(str::to_owned),
        subject: parsed.as_ref().and_then(|m| m.subject()).map(str::to_owned),
        delivered_to: delivered_to(raw),
        to_tag: None,
    }
}

/// The server's `Delivered-To:` address: only when it is the message's first
/// field (the server writes it there for mail to a subaddress; every stored
/// message starts with a field the server wrote, so a sender's cannot be first).
pub fn delivered_to(raw: &[u8]) -> Option<String> {
    const NAME: &[u8] = b"delivered-to:";
    let head = raw.get(..NAME.len())?;
    if !head.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let rest = &raw[NAME.len()..];
    let end = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
    let value = std::str::from_utf8(&rest[..end]).ok()?.trim();
    (!value.is_empty()).then(|| value.to_ascii_lowercase())
}

/// The subaddress tag of `delivered_to` for `inbox`: what follows the inbox's
/// local part and one separator character, in the same domain.
pub fn to_tag(delivered_to: &str, inbox: &str) -> Option<String> {
    let (local, domain) = delivered_to.rsplit_once('@')?;
    let (base, inbox_domain) = inbox.rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case(inbox_domain) {
        return None;
    }
    let rest = local.to_ascii_lowercase().strip_prefix(&base.to_ascii_lowercase())?.to_owned();
    let mut chars = rest.chars();
    chars.next().filter(|c| !c.is_ascii_alphanumeric() && *c != '.')?;
    let tag = chars.as_str();
    (!tag.is_empty()).then(|| tag.to_owned())
}

fn wait_secs(asked: Option<u64>) -> Result<u64, MailError> {
    match asked {
        None => Ok(DEFAULT_WAIT_SECS),
        Some(0) => Err(MailError::Invalid("timeout_s must be at least 1".to_owned())),
        Some(s) if s > MAX_WAIT_SECS => Err(MailError::Invalid(format!("timeout_s {s} is over the limit of {MAX_WAIT_SECS} s"))),
        Some(s) => Ok(s),
    }
}

/// The ULID just below every message stored at or after `unix_secs`.
fn ulid_floor(unix_secs: i64) -> String {
    let ms = u64::try_from(unix_secs.max(0)).unwrap_or(0).saturating_mul(1000);
    ulid::Ulid::from_parts(ms, 0).to_string()
}

fn decode_attachments(list: &[AttachmentInput]) -> Result<Vec<(String, String, Vec<u8>)>, MailError> {
    let mut total = 0usize;
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(a.content_base64.trim())
            .map_err(|e| MailError::Invalid(format!("attachments[{i}].content_base64 is not base64: {e}")))?;
        total += bytes.len();
        if total > MAX_SEND_ATTACHMENTS {
            return Err(MailError::Invalid(format!("attachments total over {MAX_SEND_ATTACHMENTS} bytes")));
        }
        if a.filename.trim().is_empty() {
            return Err(MailError::Invalid(format!("attachments[{i}].filename is empty")));
        }
        let ct = a.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
        out.push((a.filename.clone(), ct, bytes));
    }
    Ok(out)
}

fn check_recipients(lists: &[&[String]]) -> Result<Vec<String>, MailError> {
    let mut all = Vec::new();
    for list in lists {
        for r in *list {
            let r = r.trim();
            let ok = r.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') || d == "localhost")
                && !r.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',');
            if !ok {
                return Err(MailError::Invalid(format!("{r:?} is not an email address (give bare addresses like a@example.com)")));
            }
            if !all.iter().any(|a: &String| a.eq_ignore_ascii_case(r)) {
                all.push(r.to_owned());
            }
        }
    }
    if all.is_empty() {
        return Err(MailError::Invalid("no recipients: give at least one address in to, cc or bcc".to_owned()));
    }
    Ok(all)
}

impl MailService {
    /// Operations over `client`.
    pub fn new(client: ApiClient) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// `list_inboxes`.
    pub async fn list_inboxes(&self) -> Result<InboxList, MailError> {
        Ok(InboxList { inboxes: self.client.list_inboxes().await? })
    }

    async fn summary(&self, inbox: &str, entry: &MessageEntry) -> Result<MessageSummary, MailError> {
        let raw = self.client.fetch_message(inbox, &entry.message_id).await?;
        let mut summary = summarize(entry, &raw);
        summary.to_tag = summary.delivered_to.as_deref().and_then(|d| to_tag(d, inbox));
        Ok(summary)
    }

    /// `list_messages`: newest first; with filters, pages are scanned until
    /// `limit` matches or [`MAX_SCAN`] messages were looked at.
    pub async fn list_messages(&self, p: &ListMessagesParams) -> Result<MessageList, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let limit = p.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=crate::client::MAX_PAGE).contains(&limit) {
            return Err(MailError::Invalid(format!("limit {limit} is outside 1-{}", crate::client::MAX_PAGE)));
        }
        let filter = Filter::new(p.from.as_deref(), p.subject_contains.as_deref());
        let tag = p.to_tag.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase);
        let unfiltered = filter.is_empty() && tag.is_none();
        let mut out = Vec::new();
        let mut before = p.before.clone();
        let mut scanned = 0usize;
        let mut next_cursor;
        loop {
            let page_size = if unfiltered { limit } else { crate::client::MAX_PAGE.min(u32::try_from(MAX_SCAN - scanned).unwrap_or(1)).max(1) };
            let page = self
                .client
                .list_messages(&inbox, &ListQuery { order: Order::Desc, after: p.after.clone(), before: before.clone(), limit: page_size })
                .await?;
            next_cursor = page.next_cursor.clone();
            let mut stopped_early = None;
            for entry in &page.messages {
                scanned += 1;
                let summary = self.summary(&inbox, entry).await?;
                if filter.matches(&summary) && tag.as_ref().is_none_or(|t| summary.to_tag.as_ref() == Some(t)) {
                    out.push(summary);
                }
                if out.len() >= limit as usize || scanned >= MAX_SCAN {
                    stopped_early = Some(entry.message_id.clone());
                    break;
                }
            }
            if let Some(last) = stopped_early {
                // More may follow the last message looked at.
                let was_last_of_page = page.messages.last().map(|m| &m.message_id) == Some(&last);
                if !was_last_of_page || next_cursor.is_some() {
                    next_cursor = Some(last);
                }
                break;
            }
            if unfiltered || next_cursor.is_none() || page.messages.is_empty() {
                break;
            }
            before = next_cursor.clone();
        }
        Ok(MessageList { inbox, messages: out, next_cursor, scanned })
    }

    /// Fetches and parses one message.
    pub async fn fetch_parsed(&self, inbox: &str, message_id: &str) -> Result<crate::message::ParsedMessage, MailError> {
        let raw = self.client.fetch_message(inbox, message_id).await?;
        parse(message_id, &raw, &self.client.config().hostname)
    }

    /// `get_message`: the parsed message (headers, text, HTML as text,
    /// attachment metadata, authentication verdicts).
    pub async fn get_message(&self, p: &GetMessageParams) -> Result<crate::message::ParsedMessage, MailError> {
        self.fetch_parsed(&p.inbox, &p.message_id).await
    }

    /// `get_attachment`: one attachment's bytes (base64), at most [`MAX_INLINE_ATTACHMENT`].
    pub async fn get_attachment(&self, p: &GetAttachmentParams) -> Result<AttachmentContent, MailError> {
        let parsed = self.fetch_parsed(&p.inbox, &p.message_id).await?;
        let (filename, content_type, bytes) = attachment(&parsed, p.index)?;
        if bytes.len() > MAX_INLINE_ATTACHMENT {
            return Err(MailError::Invalid(format!(
                "attachment {} is {} bytes, over the {MAX_INLINE_ATTACHMENT}-byte limit for inline content",
                p.index,
                bytes.len()
            )));
        }
        Ok(AttachmentContent {
            index: p.index,
            filename,
            content_type,
            size: bytes.len(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
        })
    }

    /// `send_message`.
    pub async fn send_message(&self, p: &SendMessageParams) -> Result<SendReceipt, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let recipients = check_recipients(&[&p.to, &p.cc, &p.bcc])?;
        if p.text.is_none() && p.html.is_none() {
            return Err(MailError::Invalid("give a body: text or html".to_owned()));
        }
        let attachments = decode_attachments(&p.attachments)?;
        if let Some(key) = &p.idempotency_key {
            // The server builds the message from the request, so a retry sends
            // the same request bytes (a message built here would differ in its
            // Date, Message-ID and MIME boundaries).
            let request = serde_json::json!({
                "to": p.to, "cc": p.cc, "bcc": p.bcc,
                "subject": (!p.subject.is_empty()).then_some(&p.subject),
                "text": p.text, "html": p.html,
                "attachments": p.attachments.iter().zip(&attachments).map(|(a, (_, content_type, _))| serde_json::json!({
                    "filename": a.filename, "content_type": content_type, "content_base64": a.content_base64.trim(),
                })).collect::<Vec<_>>(),
            });
            return Ok(self.client.send_json_idempotent(&inbox, &request, key, recipients.len()).await?);
        }
        let built = compose_new(&inbox, p, attachments, self.client.config().send_via)?;
        Ok(self.client.send(&inbox, &recipients, built.bytes, Some(built.message_id)).await?)
    }

    /// `reply_to_message`: threading headers (`In-Reply-To`, `References`), `Re:`
    /// subject, to the original's Reply-To or From (and with `reply_all` its
    /// other recipients, without this inbox).
    pub async fn reply_to_message(&self, p: &ReplyParams) -> Result<SendReceipt, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        if p.text.is_none() && p.html.is_none() {
            return Err(MailError::Invalid("give a body: text or html".to_owned()));
        }
        let original = self.fetch_parsed(&inbox, &p.message_id).await?;
        let attachments = decode_attachments(&p.attachments)?;
        let built = compose_reply(&inbox, &original, p, attachments, self.client.config().send_via)?;
        Ok(self.client.send(&inbox, &built.envelope_recipients, built.bytes, Some(built.message_id)).await?)
    }

    /// `forward_message`: the original attached whole (message/rfc822), `Fwd:` subject.
    pub async fn forward_message(&self, p: &ForwardParams) -> Result<SendReceipt, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let recipients = check_recipients(&[&p.to, &p.cc, &p.bcc])?;
        let original = self.fetch_parsed(&inbox, &p.message_id).await?;
        let built = compose_forward(&inbox, &original, p, self.client.config().send_via)?;
        Ok(self.client.send(&inbox, &recipients, built.bytes, Some(built.message_id)).await?)
    }

    /// `wait_for_message`: the first message matching the filters that arrives
    /// (or arrived since `since`), from the inbox's event stream; no polling.
    pub async fn wait_for_message(&self, p: &WaitParams) -> Result<MessageSummary, MailError> {
        let secs = wait_secs(p.timeout_s)?;
        let filter = Filter::new(p.from.as_deref(), p.subject_contains.as_deref());
        self.wait_matching(&p.inbox, &filter, p.since, secs).await
    }

    async fn wait_matching(&self, inbox: &str, filter: &Filter, since: Option<i64>, secs: u64) -> Result<MessageSummary, MailError> {
        let inbox = crate::client::check_inbox(inbox)?;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = since.unwrap_or_else(unix_now);
        let work = async {
            let mut events = self.client.events(&inbox, Some(ulid_floor(start))).await?;
            loop {
                let entry = events.next().await?;
                let summary = self.summary(&inbox, &entry).await?;
                if filter.matches(&summary) {
                    return Ok::<_, MailError>(summary);
                }
            }
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(MailError::TimedOut(secs)),
        }
    }

    /// `extract_otp`: the one-time code or magic link of a message (given, the
    /// next to arrive with `wait`, or the newest matching one).
    pub async fn extract_otp(&self, p: &ExtractOtpParams) -> Result<crate::otp::Otp, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let filter = Filter::new(p.from.as_deref(), p.subject_contains.as_deref());
        let message_id = match (&p.message_id, p.wait) {
            (Some(id), false) => id.clone(),
            (Some(_), true) => {
                return Err(MailError::Invalid("give either message_id or wait, not both".to_owned()));
            }
            (None, true) => {
                let secs = wait_secs(p.timeout_s)?;
                self.wait_matching(&inbox, &filter, p.since, secs).await?.message_id
            }
            (None, false) => {
                let list = self
                    .list_messages(&ListMessagesParams {
                        inbox: inbox.clone(),
                        limit: Some(1),
                        from: p.from.clone(),
                        subject_contains: p.subject_contains.clone(),
                        ..ListMessagesParams::default()
                    })
                    .await?;
                match list.messages.into_iter().next() {
                    Some(m) => m.message_id,
                    None => {
                        return Err(MailError::Invalid(format!(
                            "no matching message in {inbox} (looked at {}); use wait to wait for one",
                            list.scanned
                        )));
                    }
                }
            }
        };
        let parsed = self.fetch_parsed(&inbox, &message_id).await?;
        crate::otp::extract(&parsed).ok_or_else(|| {
            MailError::NoCode(format!(
                "message {message_id} (from {}, subject {:?}) holds no code or link",
                parsed.from.as_ref().map_or("-", |m| m.address.as_str()),
                parsed.subject.as_deref().unwrap_or("")
            ))
        })
    }
}

// ---- The library half of the crate (message, otp, compose) -----------------

fn parse(message_id: &str, raw: &[u8], hostname: &str) -> Result<crate::message::ParsedMessage, MailError> {
    crate::message::ParsedMessage::parse(message_id, raw, hostname)
        .map_err(|e| MailError::Message(format!("message {message_id} cannot be parsed: {e}")))
}

fn attachment(
    parsed: &crate::message::ParsedMessage,
    index: u32,
) -> Result<(Option<String>, String, Vec<u8>), MailError> {
    let a = usize::try_from(index)
        .ok()
        .and_then(|i| parsed.attachment(i))
        .ok_or_else(|| MailError::Invalid(format!("the message has no attachment {index} (see get_message)")))?;
    Ok((a.info.filename, a.info.content_type, a.bytes))
}

fn stamp(inbox: &str) -> crate::compose::Stamp {
    crate::compose::Stamp::now(inbox.rsplit_once('@').map_or(inbox, |(_, d)| d))
}

fn mailboxes(list: &[String]) -> Vec<crate::message::Mailbox> {
    list.iter().map(|a| crate::message::Mailbox::new(a.trim())).collect()
}

fn outgoing(attachments: Vec<(String, String, Vec<u8>)>) -> Vec<crate::compose::OutgoingAttachment> {
    attachments
        .into_iter()
        .map(|(filename, content_type, bytes)| crate::compose::OutgoingAttachment { filename, content_type, bytes })
        .collect()
}

/// Builds `c`: the `Bcc:` header is left out for SMTP (the envelope carries
/// them) and kept for the HTTP door (which takes the envelope from the headers
/// and removes it).
fn build(c: &crate::compose::Compose, inbox: &str, via: SendVia) -> Result<crate::compose::Built, MailError> {
    let bcc = match via {
        SendVia::Smtp => crate::compose::BccHeader::Omit,
        SendVia::Http => crate::compose::BccHeader::Include,
    };
    c.build(&stamp(inbox), bcc).map_err(|e| MailError::Invalid(format!("cannot build the message: {e}")))
}

fn compose_new(
    inbox: &str,
    p: &SendMessageParams,
    attachments: Vec<(String, String, Vec<u8>)>,
    via: SendVia,
) -> Result<crate::compose::Built, MailError> {
    let mut c = crate::compose::Compose::new(crate::message::Mailbox::new(inbox));
    c.to = mailboxes(&p.to);
    c.cc = mailboxes(&p.cc);
    c.bcc = mailboxes(&p.bcc);
    c.subject = p.subject.clone();
    c.text = p.text.clone();
    c.html = p.html.clone();
    c.attachments = outgoing(attachments);
    build(&c, inbox, via)
}

fn compose_reply(
    inbox: &str,
    original: &crate::message::ParsedMessage,
    p: &ReplyParams,
    attachments: Vec<(String, String, Vec<u8>)>,
    via: SendVia,
) -> Result<crate::compose::Built, MailError> {
    let me = crate::message::Mailbox::new(inbox);
    let mut c = crate::compose::reply(original, &me, p.text.clone(), p.html.clone(), p.reply_all)
        .map_err(|e| MailError::Invalid(format!("cannot reply: {e}")))?;
    c.attachments = outgoing(attachments);
    build(&c, inbox, via)
}

fn compose_forward(
    inbox: &str,
    original: &crate::message::ParsedMessage,
    p: &ForwardParams,
    via: SendVia,
) -> Result<crate::compose::Built, MailError> {
    let me = crate::message::Mailbox::new(inbox);
    let mut c = crate::compose::forward(original, &me, mailboxes(&p.to), p.text.clone(), None);
    c.cc = mailboxes(&p.cc);
    c.bcc = mailboxes(&p.bcc);
    build(&c, inbox, via)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(from: Option<&str>, name: Option<&str>, subject: Option<&str>) -> MessageSummary {
        MessageSummary {
            message_id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(),
            received_at: 0,
            size: 0,
            from: from.map(str::to_owned),
            from_name: name.map(str::to_owned),
            subject: subject.map(str::to_owned),
            delivered_to: None,
            to_tag: None,
        }
    }

    #[test]
    fn filters_are_case_insensitive_substrings() {
        let s = summary(Some("noreply@Example.com"), Some("Example Team"), Some("Your Verification Code"));
        assert!(Filter::new(None, None).matches(&s));
        assert!(Filter::new(Some("example.COM"), None).matches(&s));
        assert!(Filter::new(Some("team"), Some("verification")).matches(&s));
        assert!(!Filter::new(Some("other.com"), None).matches(&s));
        assert!(!Filter::new(None, Some("invoice")).matches(&s));
        assert!(!Filter::new(Some("x"), None).matches(&summary(None, None, None)));
        assert!(Filter::new(Some("  "), None).is_empty());
    }

    #[test]
    fn wait_bounds() {
        assert_eq!(wait_secs(None), Ok(DEFAULT_WAIT_SECS));
        assert_eq!(wait_secs(Some(MAX_WAIT_SECS)), Ok(MAX_WAIT_SECS));
        assert!(wait_secs(Some(MAX_WAIT_SECS + 1)).is_err());
        assert!(wait_secs(Some(0)).is_err());
    }

    #[test]
    fn ulid_floor_is_below_every_later_message() {
        let floor: ulid::Ulid = ulid_floor(1_700_000_000).parse().unwrap();
        let same_ms = ulid::Ulid::from_parts(1_700_000_000_000, 1);
        let earlier = ulid::Ulid::from_parts(1_699_999_999_999, u128::MAX >> 48);
        assert!(floor < same_ms);
        assert!(earlier < floor);
        assert_eq!(ulid_floor(-5), ulid::Ulid::from_parts(0, 0).to_string());
    }

    #[test]
    fn recipients_are_checked_and_deduplicated() {
        let to = vec!["a@example.com".to_owned(), "A@Example.com".to_owned()];
        let cc = vec!["b@agents.localhost".to_owned()];
        assert_eq!(check_recipients(&[&to, &cc]).unwrap(), vec!["a@example.com", "b@agents.localhost"]);
        assert!(check_recipients(&[&[]]).is_err());
        for bad in ["nope", "a b@example.com", "<a@example.com>", "a@example.com,b@example.com"] {
            assert!(check_recipients(&[&[bad.to_owned()]]).is_err(), "{bad}");
        }
    }

    #[test]
    fn attachments_decode_and_are_bounded() {
        let ok = AttachmentInput { filename: "a.txt".into(), content_type: None, content_base64: "aGk=".into() };
        let got = decode_attachments(std::slice::from_ref(&ok)).unwrap();
        assert_eq!(got[0], ("a.txt".to_owned(), "application/octet-stream".to_owned(), b"hi".to_vec()));
        let bad = AttachmentInput { content_base64: "!!".into(), ..ok.clone() };
        assert!(decode_attachments(&[bad]).unwrap_err().to_string().contains("attachments[0]"));
    }

    #[test]
    fn summaries_read_headers() {
        let raw = b"From: \"Acme\" <no-reply@acme.example>\r\nSubject: Your code\r\n\r\nbody";
        let e = MessageEntry { message_id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(), received_at: 5, size: 9 };
        let s = summarize(&e, raw);
        assert_eq!(s.from.as_deref(), Some("no-reply@acme.example"));
        assert_eq!(s.from_name.as_deref(), Some("Acme"));
        assert_eq!(s.subject.as_deref(), Some("Your code"));
        assert_eq!(s.delivered_to, None);
    }

    #[test]
    fn the_tag_comes_from_a_first_delivered_to_only() {
        let e = MessageEntry { message_id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(), received_at: 5, size: 9 };
        let ours = b"Delivered-To: hello+github@agents.localhost\r\nReceived: x\r\nFrom: a@b.c\r\n\r\nbody";
        let s = summarize(&e, ours);
        assert_eq!(s.delivered_to.as_deref(), Some("hello+github@agents.localhost"));
        assert_eq!(to_tag("hello+github@agents.localhost", "hello@agents.localhost").as_deref(), Some("github"));
        assert_eq!(to_tag("hello-a.b@agents.localhost", "hello@agents.localhost").as_deref(), Some("a.b"));
        // A sender's own Delivered-To below our fields is not read.
        let forged = b"Received: x\r\nDelivered-To: hello+bank@agents.localhost\r\n\r\nbody";
        assert_eq!(summarize(&e, forged).delivered_to, None);
        for (to, inbox) in [
            ("hello@agents.localhost", "hello@agents.localhost"),
            ("hello+x@other.test", "hello@agents.localhost"),
            ("helloo+x@agents.localhost", "hello@agents.localhost"),
            ("hello+@agents.localhost", "hello@agents.localhost"),
        ] {
            assert_eq!(to_tag(to, inbox), None, "{to}");
        }
    }
}
