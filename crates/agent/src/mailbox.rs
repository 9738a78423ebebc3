//! The agent's mail operations, one function per MCP tool and CLI verb
//! (`agentkeys mcp` and `agentkeys mail …` both call these): list, show, fetch
//! an attachment, send, reply, forward, wait for a message, extract a code.
//! Requests and answers are plain serde types with JSON Schemas, so the MCP
//! tools publish exactly what these functions take.

use std::time::{Duration, Instant};

use agentkeys_core::policy::Unauthenticated;
use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::SendVia;
use crate::client::{ApiClient, ClientError, CreatedInbox, InboxEntry, ListQuery, MessageEntry, Order, SendReceipt};

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
    /// Nothing matching arrived in time. Passing `cursor` back as `since`
    /// continues the same wait without losing anything.
    #[error("timed out: no matching message arrived within {secs} s; call again with since = \"{cursor}\" (the cursor) to keep waiting without missing anything{}", notes(seen))]
    TimedOut {
        /// How long it waited.
        secs: u64,
        /// The window's cursor.
        cursor: String,
        /// What else it saw, one line each.
        seen: Vec<String>,
    },
    /// A message claimed to come from the sender asked for, but did not pass:
    /// a look-alike address or display name, or no authentication by our MX.
    /// (`wanted` is empty when one given message was refused.)
    #[error("refused sender: {}{}{}", reasons.join("; "), refused_tail(wanted, *secs, cursor), notes(seen))]
    Refused {
        /// The sender rule in words.
        wanted: String,
        /// Why each claimant was refused.
        reasons: Vec<String>,
        /// How long it waited.
        secs: u64,
        /// The window's cursor.
        cursor: String,
        /// What else it saw.
        seen: Vec<String>,
    },
    /// The hand-out record could not be used.
    #[error(transparent)]
    Record(#[from] crate::handout::HandoutError),
    /// The message could not be parsed or composed.
    #[error("{0}")]
    Message(String),
    /// The inbox's allow/block policy withholds this message from the agent
    /// (issue 13 §2): its sender is refused by the receive lists, or it is
    /// unauthenticated under `unauthenticated: hide`.
    #[error("message {0} is withheld by the inbox's allow/block policy (its owner sets it: agentkeys inbox policy)")]
    Withheld(String),
    /// The message holds no code or link (the extractor does not guess).
    #[error("{0}")]
    NoCode(String),
}

/// "; nothing from X passed within N s (cursor …)" for a wait; nothing for one
/// given message (`wanted` empty).
fn refused_tail(wanted: &str, secs: u64, cursor: &str) -> String {
    if wanted.is_empty() {
        return String::new();
    }
    let within = if secs > 0 { format!(" within {secs} s") } else { String::new() };
    format!("; nothing from {wanted} passed{within} (cursor \"{cursor}\")")
}

fn notes(seen: &[String]) -> String {
    if seen.is_empty() { String::new() } else { format!(". Also seen: {}", seen.join("; ")) }
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

/// A change an agent makes to its own inbox's allow/block lists: it may
/// only tighten them (the owner loosens).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TightenPolicyParams {
    /// The inbox.
    pub inbox: String,
    /// Senders (addresses or domains) to add to the receive block list.
    #[serde(default)]
    pub block_senders: Vec<String>,
    /// Recipients (addresses or domains) to add to the send block list.
    #[serde(default)]
    pub block_recipients: Vec<String>,
    /// The only senders to accept from now on (replaces the receive allow
    /// list; must be within the one there is, if any).
    #[serde(default)]
    pub allow_senders: Option<Vec<String>>,
    /// The only recipients to send to from now on (replaces the send allow
    /// list; must be within the one there is, if any).
    #[serde(default)]
    pub allow_recipients: Option<Vec<String>>,
    /// `label` or `hide` (never back towards `show`).
    #[serde(default)]
    pub unauthenticated: Option<String>,
}

/// `create_inbox`: every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInboxParams {
    /// The local part, e.g. `signup-github` (a-z 0-9 . _ -). It must fall under
    /// a pattern the owner granted with the `create` scope (`signup-*@domain`
    /// needs a name starting `signup-`). Default: a fresh random name under it.
    #[serde(default)]
    pub name: Option<String>,
    /// The domain. Default: the one the agent's create grant names.
    #[serde(default)]
    pub domain: Option<String>,
    /// How long the inbox lives, in seconds: it then stops receiving and is
    /// deleted with its mail. At most until the grant expires and 30 days.
    /// Default: as long as the grant allows.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub expires_in_s: Option<u64>,
}

/// `request_grant`: what the agent asks its owner for.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestGrantParams {
    /// The inbox or pattern, e.g. `bot@agents.example.com` or
    /// `signup-*@agents.example.com` (a pattern with the `create` scope lets
    /// the agent make inboxes under it).
    pub inbox: String,
    /// Any of `read`, `send`, `create`, `admin`.
    #[schemars(length(min = 1))]
    pub scopes: Vec<String>,
    /// How long the grant should last, in seconds. Default and maximum: 30 days.
    #[serde(default)]
    #[schemars(range(min = 1, max = 2_592_000))]
    pub ttl_s: Option<u64>,
    /// Why, in one sentence the owner reads (at most 200 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `list_grant_requests`: no parameters.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListGrantRequestsParams {}

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
    /// Whether our MX authenticated the From: header's domain when the mail
    /// arrived (DMARC pass, or aligned DKIM pass). `false`: anyone could have
    /// written this From:. Absent when the server gives no verdict (rows
    /// indexed before verdicts were kept, unless the inbox's policy is
    /// `unauthenticated: label`, which then parses the message) and under
    /// `unauthenticated: hide`, where every listed message is authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
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
    /// How many of them the inbox's allow/block policy withholds (senders
    /// its receive lists refuse; unauthenticated mail under `hide`); never
    /// described.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub withheld: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `list_threads`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListThreadsParams {
    /// The inbox address.
    pub inbox: String,
    /// How many threads to return, most recently active first (1-100, default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// The previous answer's `next_cursor`, for the next page.
    #[serde(default)]
    pub before: Option<String>,
}

/// One thread in `list_threads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ThreadSummary {
    /// The thread id: pass it to `get_thread`.
    pub thread_id: String,
    /// How many messages of the thread the inbox holds.
    pub message_count: u64,
    /// Its newest message.
    pub latest: MessageSummary,
}

/// The answer of `list_threads`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ThreadList {
    /// The inbox.
    pub inbox: String,
    /// Threads, most recently active first.
    pub threads: Vec<ThreadSummary>,
    /// Pass as `before` for the next page; absent on the last.
    pub next_cursor: Option<String>,
    /// Threads whose newest message the inbox's policy withholds (not shown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub withheld: usize,
}

/// `get_thread`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetThreadParams {
    /// The inbox address.
    pub inbox: String,
    /// The thread id (from `list_threads` or `search_messages`).
    pub thread_id: String,
}

/// The answer of `get_thread`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ThreadAnswer {
    /// The inbox.
    pub inbox: String,
    /// The thread id.
    pub thread_id: String,
    /// Its messages, oldest first: read one with `get_message` (its
    /// `latest_text` is the new part of a reply).
    pub messages: Vec<MessageSummary>,
    /// Messages of the thread the inbox's policy withholds (not shown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub withheld: usize,
    /// What this inbox sent into the thread (its replies, placed by their
    /// `In-Reply-To`/`References`), oldest first, with their delivery state:
    /// `list_sent` shows the same entries.
    #[serde(default)]
    pub sent: Vec<SentMessage>,
}

/// `search_messages`: every given field must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// The inbox address.
    pub inbox: String,
    /// From address (exactly, any case) or domain (with its subdomains), e.g. `github.com`.
    #[serde(default)]
    pub from: Option<String>,
    /// A To/Cc address or domain, the same rule.
    #[serde(default)]
    pub to: Option<String>,
    /// Words that must all be in the subject (whole words, any case).
    #[serde(default)]
    pub subject: Option<String>,
    /// Words that must each be in the subject or the body (whole words, any case).
    #[serde(default)]
    pub text: Option<String>,
    /// Received at or after this time (Unix seconds).
    #[serde(default)]
    pub since: Option<i64>,
    /// Received before this time (Unix seconds).
    #[serde(default)]
    pub until: Option<i64>,
    /// Only messages with (true) or without (false) attachments.
    #[serde(default)]
    pub has_attachment: Option<bool>,
    /// How many messages to return, newest first (1-100, default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// The previous answer's `next_cursor`, for the next page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// One message found by `search_messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SearchHit {
    /// The message.
    #[serde(flatten)]
    pub message: MessageSummary,
    /// Its thread: `get_thread` shows the conversation.
    pub thread_id: String,
}

/// The answer of `search_messages`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SearchAnswer {
    /// The inbox.
    pub inbox: String,
    /// Matching messages, newest first.
    pub messages: Vec<SearchHit>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
    /// Matches the inbox's policy withholds (not shown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub withheld: usize,
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

/// `list_sent`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSentParams {
    /// The inbox address.
    pub inbox: String,
    /// Only this message (the id its send answered with).
    #[serde(default)]
    pub message_id: Option<String>,
}

/// One remote recipient's delivery of a sent message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SentDelivery {
    /// The recipient.
    pub recipient: String,
    /// `queued`, `sending`, `delivered`, `deferred` or `bounced`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiving server's last response (or the reason it failed).
    pub last_response: Option<String>,
}

/// A message the inbox sent and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SentMessage {
    /// The id the send answered with.
    pub message_id: String,
    /// When it was accepted (Unix seconds).
    pub sent_at: i64,
    /// Every envelope recipient.
    pub recipients: Vec<String>,
    /// Its subject (absent for sends made before threads showed sent mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `held` (waiting for the owner's review), `rejected` (by the owner:
    /// never sent), `queued`, `sending`, `deferred` (retrying), `bounced`
    /// (failed for good; a DSN is in the inbox) or `delivered`.
    pub state: String,
    /// The last response behind `state`.
    pub last_response: Option<String>,
    /// Per remote recipient.
    pub deliveries: Vec<SentDelivery>,
}

/// `list_sent`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SentList {
    /// The inbox.
    pub inbox: String,
    /// Newest first.
    pub sent: Vec<SentMessage>,
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
    /// Only mail whose From address is in this domain or a subdomain
    /// (`example.com` matches `mail.example.com`; never a substring, never the display name).
    #[serde(default)]
    pub from_domain: Option<String>,
    /// Only mail from exactly this From address.
    #[serde(default)]
    pub from_address: Option<String>,
    /// Only a message whose subject contains this text (case-insensitive).
    #[serde(default)]
    pub subject_contains: Option<String>,
    /// How long to wait, in seconds (default 60, at most 600; over MCP at most 40 per call).
    #[serde(default)]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_s: Option<u64>,
    /// How far back to look, on the server's clock: `2m` (default), `90s`, an
    /// RFC 3339 time, or a message id / the `cursor` of a timed-out call (after it).
    #[serde(default)]
    pub since: Option<String>,
    /// Also return a message an earlier wait already handed out.
    #[serde(default)]
    pub include_seen: bool,
    /// Only a sender our MX authenticated (DMARC pass, or aligned DKIM pass). Default false here.
    #[serde(default)]
    pub require_authenticated: Option<bool>,
}

/// `wait_for_otp`: the common case in one call.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForOtpParams {
    /// The inbox address (the address given to the service).
    pub inbox: String,
    /// The service's domain: the From address must be in it or a subdomain
    /// (`example.com` matches `mail.example.com`, never `notexample.com`).
    #[serde(default)]
    pub from_domain: Option<String>,
    /// Instead of or with `from_domain`: exactly this From address.
    #[serde(default)]
    pub from_address: Option<String>,
    /// Only a message whose subject contains this text (case-insensitive).
    #[serde(default)]
    pub subject_contains: Option<String>,
    /// How far back to look, on the server's clock: `2m` (default), `90s`, an
    /// RFC 3339 time, or a message id / the `cursor` of a timed-out call.
    #[serde(default)]
    pub since: Option<String>,
    /// How long to wait, in seconds (default 60, at most 600; over MCP at most 40 per call).
    #[serde(default)]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_s: Option<u64>,
    /// Only a sender our MX authenticated (DMARC pass, or DKIM pass aligned
    /// with the From domain). Default true; false accepts unauthenticated mail
    /// and the answer then carries a warning.
    #[serde(default)]
    pub require_authenticated: Option<bool>,
    /// Also return a code an earlier wait already handed out.
    #[serde(default)]
    pub include_seen: bool,
}

/// `extract_otp`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractOtpParams {
    /// The inbox address.
    pub inbox: String,
    /// The message to read. Without it: with `wait`, as `wait_for_otp`;
    /// otherwise the newest matching message not handed out yet, without waiting.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Wait for a matching message (as `wait_for_otp`).
    #[serde(default)]
    pub wait: bool,
    /// The From address must be in this domain or a subdomain.
    #[serde(default)]
    pub from_domain: Option<String>,
    /// The From address must be exactly this.
    #[serde(default)]
    pub from_address: Option<String>,
    /// Only a message whose subject contains this text (case-insensitive).
    #[serde(default)]
    pub subject_contains: Option<String>,
    /// With `wait`: how long to wait, in seconds (default 60, at most 600).
    #[serde(default)]
    #[schemars(range(min = 1, max = 600))]
    pub timeout_s: Option<u64>,
    /// How far back to look: `2m` (default), `90s`, an RFC 3339 time, a message id.
    #[serde(default)]
    pub since: Option<String>,
    /// Only a sender our MX authenticated (default true).
    #[serde(default)]
    pub require_authenticated: Option<bool>,
    /// Also return a code an earlier wait already handed out.
    #[serde(default)]
    pub include_seen: bool,
}

/// `mark_messages`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkParams {
    /// The inbox address.
    pub inbox: String,
    /// The message ids.
    pub message_ids: Vec<String>,
    /// true: handed out (waits skip them); false: not yet (waits may return them again).
    pub read: bool,
}

/// What `mark_messages` changed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MarkAnswer {
    /// The inbox.
    pub inbox: String,
    /// How many ids changed state.
    pub changed: usize,
    /// `read` or `unread`.
    pub now: String,
}

/// Another message a wait looked at, and why it was not the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeenMessage {
    /// Its id.
    pub message_id: String,
    /// Its From address.
    pub from: Option<String>,
    /// Its subject.
    pub subject: Option<String>,
    /// Why it was not returned (or, for an older match, that a newer one won).
    pub why_not: String,
}

impl SeenMessage {
    fn line(&self) -> String {
        format!("{} from {}: {}", self.message_id, self.from.as_deref().unwrap_or("-"), self.why_not)
    }
}

/// What `wait_for_message` returns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WaitAnswer {
    /// The message.
    #[serde(flatten)]
    pub message: MessageSummary,
    /// Whether our MX authenticated the sender.
    pub authenticated: bool,
    /// Other messages in the window and why they were not returned.
    pub other_messages: Vec<SeenMessage>,
    /// Pass as `since` to continue from the same window later.
    pub cursor: String,
}

/// What `wait_for_otp` (and `extract_otp`) return.
#[derive(Debug, Clone, Serialize)]
pub struct OtpAnswer {
    /// The code or link, the message, the sender, `authenticated`, `ambiguous`,
    /// `reason` and every candidate.
    #[serde(flatten)]
    pub otp: crate::otp::Otp,
    /// Present when the sender was NOT authenticated (only with
    /// `require_authenticated: false`): do not trust the code blindly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Other messages in the window and why they were not returned.
    pub other_messages: Vec<SeenMessage>,
    /// Pass as `since` to continue from the same window later.
    pub cursor: String,
}

/// The agent's mailbox operations over one [`ApiClient`].
#[derive(Debug, Clone)]
pub struct MailService {
    client: ApiClient,
    handouts: crate::handout::Handouts,
}

/// Other messages reported per answer.
pub const MAX_OTHERS_REPORTED: usize = 10;
/// Older unseen messages still looked at, after the answer was found, to report them.
pub const MAX_OTHERS_EVALUATED: usize = 5;

/// One wait, validated.
#[derive(Debug, Clone)]
struct WaitSpec {
    inbox: String,
    rule: crate::wait::SenderRule,
    subject: Option<String>,
    since: crate::wait::Since,
    secs: u64,
    include_seen: bool,
    require_authenticated: bool,
    want_code: bool,
    /// The inbox's allow/block lists, read from the server when the wait starts.
    policy: agentkeys_core::policy::InboxPolicy,
}

/// The message a wait hands out.
struct Found {
    entry: MessageEntry,
    parsed: crate::message::ParsedMessage,
    otp: Option<crate::otp::Otp>,
    others: Vec<SeenMessage>,
    cursor: String,
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
        authenticated: entry.authenticated,
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
        Self { client, handouts: crate::handout::Handouts::in_memory() }
    }

    /// The same operations with the hand-out record `handouts` (a file shared
    /// by every process of this agent).
    pub fn with_handouts(mut self, handouts: crate::handout::Handouts) -> Self {
        self.handouts = handouts;
        self
    }

    /// The client.
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// `list_inboxes`.
    pub async fn list_inboxes(&self) -> Result<InboxList, MailError> {
        Ok(InboxList { inboxes: self.client.list_inboxes().await? })
    }

    /// The inbox's allow/block lists as they are now.
    pub async fn inbox_policy(&self, inbox: &str) -> Result<agentkeys_core::policy::InboxPolicy, MailError> {
        Ok(self.client.inbox_policy(inbox).await?)
    }

    /// Tightens the inbox's lists: block patterns are added to the lists
    /// there are, allow lists replaced (the server refuses anything that
    /// would let more through, and any agent without `admin` on the inbox).
    pub async fn tighten_policy(&self, p: &TightenPolicyParams) -> Result<agentkeys_core::policy::InboxPolicy, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let current = self.client.inbox_policy(&inbox).await?;
        let mut change = serde_json::Map::new();
        let added = |list: &[agentkeys_core::policy::AddressPattern], more: &[String]| -> serde_json::Value {
            let mut all: Vec<String> = list.iter().map(ToString::to_string).collect();
            all.extend(more.iter().map(|m| m.trim().to_owned()));
            all.into()
        };
        if !p.block_senders.is_empty() {
            change.insert("receive_block".into(), added(&current.receive_block, &p.block_senders));
        }
        if !p.block_recipients.is_empty() {
            change.insert("send_block".into(), added(&current.send_block, &p.block_recipients));
        }
        for (field, list) in [("receive_allow", &p.allow_senders), ("send_allow", &p.allow_recipients)] {
            if let Some(list) = list {
                if list.is_empty() {
                    return Err(MailError::Invalid(format!("{field}: an empty allow list would allow everyone; only the owner opens a list")));
                }
                change.insert(field.into(), list.iter().map(|m| m.trim().to_owned()).collect::<Vec<_>>().into());
            }
        }
        if let Some(u) = &p.unauthenticated {
            change.insert("unauthenticated".into(), u.trim().into());
        }
        if change.is_empty() {
            return Err(MailError::Invalid("nothing to change: name senders or recipients to block or allow, or an unauthenticated mode".to_owned()));
        }
        Ok(self.client.change_policy(&inbox, &serde_json::Value::Object(change)).await?)
    }

    /// `request_grant`: asks the owner for a grant; the answer is the pending
    /// request (`id`, `status`, `decide_by`).
    pub async fn request_grant(&self, p: &RequestGrantParams) -> Result<serde_json::Value, MailError> {
        let inbox = p.inbox.trim();
        if inbox.is_empty() {
            return Err(MailError::Invalid("inbox: name the inbox or pattern to ask for, e.g. bot@agents.example.com".to_owned()));
        }
        if p.scopes.is_empty() {
            return Err(MailError::Invalid("scopes: name at least one of read, send, create, admin".to_owned()));
        }
        let ttl = match p.ttl_s {
            Some(0) => return Err(MailError::Invalid("ttl_s must be at least 1 second".to_owned())),
            Some(secs) => Some(i64::try_from(secs).map_err(|_| MailError::Invalid(format!("ttl_s {secs} is too large: at most 30 days (2592000)")))?),
            None => None,
        };
        Ok(self.client.request_grant(inbox, &p.scopes, ttl, p.reason.as_deref()).await?)
    }

    /// `list_grant_requests`: this agent's grant requests and their status.
    pub async fn grant_requests(&self) -> Result<serde_json::Value, MailError> {
        Ok(self.client.grant_requests().await?)
    }

    /// `create_inbox`: a new inbox for this agent under its `create` grant.
    pub async fn create_inbox(&self, p: &CreateInboxParams) -> Result<CreatedInbox, MailError> {
        let trimmed = |v: &Option<String>| v.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
        let expires_in = match p.expires_in_s {
            Some(0) => return Err(MailError::Invalid("expires_in_s must be at least 1 second".to_owned())),
            Some(secs) => Some(i64::try_from(secs).map_err(|_| {
                MailError::Invalid(format!("expires_in_s {secs} is too large: at most 30 days (2592000)"))
            })?),
            None => None,
        };
        let (name, domain) = (trimmed(&p.name), trimmed(&p.domain));
        Ok(self.client.create_inbox(name.as_deref(), domain.as_deref(), expires_in).await?)
    }

    /// The summary of a listed message; with `with_auth`, whether our MX
    /// authenticated it even when the index recorded no verdict (then a full
    /// parse; an unparsable message counts as not).
    async fn summary(&self, inbox: &str, entry: &MessageEntry, with_auth: bool) -> Result<MessageSummary, MailError> {
        let raw = self.client.fetch_entry(inbox, entry).await?;
        let mut summary = summarize(entry, &raw);
        summary.to_tag = summary.delivered_to.as_deref().and_then(|d| to_tag(d, inbox));
        if with_auth && summary.authenticated.is_none() {
            let parsed = parse(&entry.message_id, &raw, &self.client.config().hostname);
            summary.authenticated = Some(parsed.is_ok_and(|m| m.authentication.authenticated));
        }
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
        let policy = self.client.inbox_policy(&inbox).await?;
        let mut withheld = 0usize;
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
            // The server withholds what the policy refuses (older servers listed
            // it, and the check below still catches it).
            withheld += page.withheld_ids.len();
            let mut stopped_early = None;
            for entry in &page.messages {
                scanned += 1;
                let mut summary = self.summary(&inbox, entry, policy.unauthenticated != Unauthenticated::Show).await?;
                let hidden = policy.unauthenticated == Unauthenticated::Hide && summary.authenticated == Some(false);
                if policy.unauthenticated == Unauthenticated::Hide {
                    summary.authenticated = None;
                }
                if !policy.allows_sender(summary.from.as_deref()) || hidden {
                    withheld += 1;
                } else if filter.matches(&summary) && tag.as_ref().is_none_or(|t| summary.to_tag.as_ref() == Some(t)) {
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
        Ok(MessageList { inbox, messages: out, next_cursor, scanned, withheld })
    }

    /// The summary of an entry of a thread or search answer, from the
    /// index's header summary (no fetch, unless the policy needs a verdict the
    /// index lacks); `None` when the inbox's policy withholds it.
    async fn visible_summary(
        &self,
        inbox: &str,
        entry: &MessageEntry,
        policy: &agentkeys_core::policy::InboxPolicy,
    ) -> Result<Option<MessageSummary>, MailError> {
        let mut summary = if entry.authenticated.is_none() && policy.unauthenticated != Unauthenticated::Show {
            self.summary(inbox, entry, true).await?
        } else {
            MessageSummary {
                message_id: entry.message_id.clone(),
                received_at: entry.received_at,
                size: entry.size,
                from: entry.header_from.as_ref().map(|f| f.address.clone()),
                from_name: entry.header_from.as_ref().and_then(|f| f.name.clone()),
                subject: entry.subject.clone(),
                delivered_to: None,
                to_tag: None,
                authenticated: entry.authenticated,
            }
        };
        let hidden = policy.unauthenticated == Unauthenticated::Hide && summary.authenticated != Some(true);
        if policy.unauthenticated == Unauthenticated::Hide {
            summary.authenticated = None;
        }
        Ok((policy.allows_sender(summary.from.as_deref()) && !hidden).then_some(summary))
    }

    /// `list_threads`: the inbox's threads, most recently active first.
    pub async fn list_threads(&self, p: &ListThreadsParams) -> Result<ThreadList, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let limit = p.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=crate::client::MAX_PAGE).contains(&limit) {
            return Err(MailError::Invalid(format!("limit {limit} is outside 1-{}", crate::client::MAX_PAGE)));
        }
        let policy = self.client.inbox_policy(&inbox).await?;
        let page = self.client.list_threads(&inbox, p.before.as_deref(), limit).await?;
        let (mut threads, mut withheld) = (Vec::new(), page.withheld_ids.len());
        for t in &page.threads {
            match self.visible_summary(&inbox, &t.latest, &policy).await? {
                Some(latest) => threads.push(ThreadSummary { thread_id: t.thread_id.clone(), message_count: t.message_count, latest }),
                None => withheld += 1,
            }
        }
        Ok(ThreadList { inbox, threads, next_cursor: page.next_cursor, withheld })
    }

    /// `get_thread`: one thread's messages, oldest first.
    pub async fn get_thread(&self, p: &GetThreadParams) -> Result<ThreadAnswer, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let policy = self.client.inbox_policy(&inbox).await?;
        let page = self.client.get_thread(&inbox, p.thread_id.trim()).await?;
        let (mut messages, mut withheld) = (Vec::new(), page.withheld_ids.len());
        for entry in &page.messages {
            match self.visible_summary(&inbox, entry, &policy).await? {
                Some(m) => messages.push(m),
                None => withheld += 1,
            }
        }
        Ok(ThreadAnswer { inbox, thread_id: page.thread_id, messages, withheld, sent: page.sent })
    }

    /// `search_messages`: the server's index answers (from, to, subject,
    /// text of the decoded body, dates, attachments), newest first.
    pub async fn search_messages(&self, p: &SearchParams) -> Result<SearchAnswer, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let limit = p.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if !(1..=crate::client::MAX_PAGE).contains(&limit) {
            return Err(MailError::Invalid(format!("limit {limit} is outside 1-{}", crate::client::MAX_PAGE)));
        }
        let mut params: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        for (k, v) in [("from", &p.from), ("to", &p.to), ("subject", &p.subject), ("text", &p.text), ("cursor", &p.cursor)] {
            if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                params.push((k, v.to_owned()));
            }
        }
        for (k, v) in [("since", p.since), ("until", p.until)] {
            if let Some(v) = v {
                params.push((k, v.to_string()));
            }
        }
        if let Some(a) = p.has_attachment {
            params.push(("has_attachment", a.to_string()));
        }
        let policy = self.client.inbox_policy(&inbox).await?;
        let page = self.client.search(&inbox, &params).await?;
        let (mut messages, mut withheld) = (Vec::new(), page.withheld_ids.len());
        for hit in &page.messages {
            match self.visible_summary(&inbox, &hit.message, &policy).await? {
                Some(message) => messages.push(SearchHit { message, thread_id: hit.thread_id.clone() }),
                None => withheld += 1,
            }
        }
        Ok(SearchAnswer { inbox, messages, next_cursor: page.next_cursor, withheld })
    }

    /// Fetches and parses one message the inbox's policy lets the agent see
    /// ([`MailError::Withheld`] otherwise): `get_message`, attachments,
    /// replies and forwards all come through here.
    pub async fn fetch_parsed(&self, inbox: &str, message_id: &str) -> Result<crate::message::ParsedMessage, MailError> {
        let policy = self.client.inbox_policy(inbox).await?;
        let raw = match self.client.fetch_message(inbox, message_id).await {
            Err(ClientError::Withheld { .. }) => return Err(MailError::Withheld(message_id.to_owned())),
            other => other?,
        };
        let parsed = parse(message_id, &raw, &self.client.config().hostname)?;
        if !policy.shows(parsed.from_address(), parsed.authentication.authenticated) {
            return Err(MailError::Withheld(message_id.to_owned()));
        }
        Ok(parsed)
    }

    /// Fetches (by its `raw_url` when listed with one) and parses a listed message.
    async fn fetch_parsed_entry(&self, inbox: &str, entry: &MessageEntry) -> Result<crate::message::ParsedMessage, MailError> {
        let raw = self.client.fetch_entry(inbox, entry).await?;
        parse(&entry.message_id, &raw, &self.client.config().hostname)
    }

    /// `get_message`: the parsed message (headers, text, HTML as text,
    /// attachment metadata, authentication verdicts).
    pub async fn get_message(&self, p: &GetMessageParams) -> Result<crate::message::ParsedMessage, MailError> {
        self.fetch_parsed(&p.inbox, &p.message_id).await
    }

    /// `list_sent`: what the inbox sent, newest first, with each message's
    /// delivery state (held for review, queued, deferred, bounced, delivered)
    /// and the last response.
    pub async fn list_sent(&self, p: &ListSentParams) -> Result<SentList, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        let sent = match &p.message_id {
            Some(id) => vec![self.sent_message(&inbox, id).await?],
            None => {
                let v = self.client.sent(&inbox, None).await?;
                serde_json::from_value(v["sent"].clone())
                    .map_err(|e| ClientError::Protocol(format!("the sent list does not parse: {e}")))?
            }
        };
        Ok(SentList { inbox, sent })
    }

    /// One message the inbox sent, with its delivery state; `NotFound` when
    /// the inbox sent no message with this id.
    pub async fn sent_message(&self, inbox: &str, message_id: &str) -> Result<SentMessage, MailError> {
        let v = self.client.sent(inbox, Some(message_id)).await?;
        Ok(serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("the sent message does not parse: {e}")))?)
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

    /// `wait_for_message`: the newest message in the look-back window that
    /// matches and was not handed out before; if none is there yet, the first
    /// that arrives (pushed by the server, no polling), up to `timeout_s`.
    pub async fn wait_for_message(&self, p: &WaitParams) -> Result<WaitAnswer, MailError> {
        let spec = self.spec(
            &p.inbox,
            p.from_domain.as_deref(),
            p.from_address.as_deref(),
            p.subject_contains.as_deref(),
            p.since.as_deref(),
            Some(wait_secs(p.timeout_s)?),
            p.include_seen,
            p.require_authenticated.unwrap_or(false),
            false,
        )
        .await?;
        let found = self.wait_core(&spec).await?;
        Ok(WaitAnswer {
            message: summarize(&found.entry, found.parsed.raw()),
            authenticated: found.parsed.authentication.authenticated,
            other_messages: found.others,
            cursor: found.cursor,
        })
    }

    /// `wait_for_otp`: the code or link of the newest matching message not
    /// handed out before (waiting for one if none is there yet).
    pub async fn wait_for_otp(&self, p: &WaitForOtpParams) -> Result<OtpAnswer, MailError> {
        let spec = self.spec(
            &p.inbox,
            p.from_domain.as_deref(),
            p.from_address.as_deref(),
            p.subject_contains.as_deref(),
            p.since.as_deref(),
            Some(wait_secs(p.timeout_s)?),
            p.include_seen,
            p.require_authenticated.unwrap_or(true),
            true,
        )
        .await?;
        let found = self.wait_core(&spec).await?;
        Ok(otp_answer(found))
    }

    #[allow(clippy::too_many_arguments)]
    async fn spec(
        &self,
        inbox: &str,
        from_domain: Option<&str>,
        from_address: Option<&str>,
        subject: Option<&str>,
        since: Option<&str>,
        secs: Option<u64>,
        include_seen: bool,
        require_authenticated: bool,
        want_code: bool,
    ) -> Result<WaitSpec, MailError> {
        let inbox = crate::client::check_inbox(inbox)?;
        let rule = crate::wait::SenderRule::new(from_domain, from_address).map_err(MailError::Invalid)?;
        let since = match since.map(str::trim).filter(|s| !s.is_empty()) {
            None => crate::wait::Since::default(),
            Some(s) => crate::wait::Since::parse(s).map_err(MailError::Invalid)?,
        };
        let subject = subject.map(str::trim).filter(|s| !s.is_empty()).map(str::to_lowercase);
        let policy = self.client.inbox_policy(&inbox).await?;
        Ok(WaitSpec { inbox, rule, subject, since, secs: secs.unwrap_or(0), include_seen, require_authenticated, want_code, policy })
    }

    /// Why the inbox's policy withholds a message from the agent (issue 13
    /// §2), if it does: a sender refused by its receive lists (with a receive
    /// allow list, only the senders on it pass: no code is ever read from
    /// anyone else), or unauthenticated mail under `unauthenticated: hide`.
    /// Withheld mail is counted in answers, never described (its sender and
    /// subject are what an injection would use).
    fn withheld(spec: &WaitSpec, parsed: &crate::message::ParsedMessage) -> Option<&'static str> {
        if spec.policy.shows(parsed.from_address(), parsed.authentication.authenticated) {
            None
        } else if !spec.policy.allows_sender(parsed.from_address()) {
            Some("its sender is refused by the inbox's receive lists")
        } else {
            Some("it is not authenticated and the inbox's policy hides such mail")
        }
    }

    /// Judges one parsed message against a wait: `Ok(otp)` when it may be handed
    /// out, otherwise why not.
    fn judge(spec: &WaitSpec, parsed: &crate::message::ParsedMessage) -> Result<Option<crate::otp::Otp>, (String, bool)> {
        if let Some(why) = Self::withheld(spec, parsed) {
            return Err((format!("withheld by the inbox's policy: {why}"), false));
        }
        if let Err(r) = spec.rule.check(parsed.from.as_ref()) {
            return Err((r.describe(), r.is_spoof_like()));
        }
        if let Some(want) = &spec.subject
            && !parsed.subject.as_deref().unwrap_or("").to_lowercase().contains(want.as_str())
        {
            return Err((format!("subject does not contain {want:?}"), false));
        }
        if spec.require_authenticated && !parsed.authentication.authenticated {
            let r = crate::wait::Refusal::Unauthenticated {
                from: parsed.from_address().unwrap_or("-").to_owned(),
                basis: parsed.authentication.basis.clone(),
            };
            // Only a claim to be the service counts as a spoof; with no sender
            // rule, it is just unauthenticated mail.
            return Err((r.describe(), !spec.rule.is_any()));
        }
        if spec.want_code {
            return match crate::otp::extract(parsed) {
                Some(otp) => Ok(Some(otp)),
                None => Err(("holds no code or link".to_owned(), false)),
            };
        }
        Ok(None)
    }

    /// Fetches, parses and judges one message. `None` for a message that is
    /// gone (expired between listing and fetch) or cannot be parsed: one bad
    /// message must not stop every wait on the inbox.
    #[allow(clippy::type_complexity)]
    async fn evaluate(
        &self,
        spec: &WaitSpec,
        entry: &MessageEntry,
    ) -> Result<Option<(crate::message::ParsedMessage, Result<Option<crate::otp::Otp>, (String, bool)>)>, MailError> {
        match self.fetch_parsed_entry(&spec.inbox, entry).await {
            Ok(parsed) => {
                let verdict = Self::judge(spec, &parsed);
                Ok(Some((parsed, verdict)))
            }
            Err(e @ (MailError::Message(_) | MailError::Client(ClientError::NotFound { .. } | ClientError::Withheld { .. }))) => {
                tracing::info!(message_id = %entry.message_id, error = %e, "a wait skipped a message it cannot read");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The wait itself: the look-back window on the server's clock, newest
    /// unseen match first, then the event stream from where the listing ended.
    async fn wait_core(&self, spec: &WaitSpec) -> Result<Found, MailError> {
        let deadline = Instant::now() + Duration::from_secs(spec.secs);
        let handed = self.handouts.snapshot(&spec.inbox)?;
        let mut others: Vec<SeenMessage> = Vec::new();
        let mut spoofs: Vec<String> = Vec::new();
        let mut looked = std::collections::HashSet::new();
        let withheld = std::sync::atomic::AtomicUsize::new(0);
        let note = |others: &mut Vec<SeenMessage>, spoofs: &mut Vec<String>, parsed: &crate::message::ParsedMessage, why: String, spoof: bool| {
            if spoof {
                spoofs.push(why.clone());
            }
            if others.len() < MAX_OTHERS_REPORTED {
                others.push(SeenMessage {
                    message_id: parsed.message_id.clone(),
                    from: parsed.from_address().map(str::to_owned),
                    subject: parsed.subject.clone(),
                    why_not: why,
                });
            }
        };

        // 1. What is already there, newest first, within the window.
        let mut in_window: Vec<MessageEntry> = Vec::new();
        let mut before = None;
        let mut window = None;
        loop {
            let page = self
                .client
                .list_messages(&spec.inbox, &ListQuery { order: Order::Desc, after: None, before: before.clone(), limit: crate::client::MAX_PAGE })
                .await?;
            let w = match window {
                Some(w) => w,
                None => {
                    let now_ms = page.server_time_ms.unwrap_or_else(now_ms);
                    let w = spec.since.window(now_ms).map_err(MailError::Invalid)?;
                    window = Some(w);
                    w
                }
            };
            let mut past = false;
            let withheld_in_window = page
                .withheld_ids
                .iter()
                .filter(|id| ulid::Ulid::from_string(id).is_ok_and(|id| w.contains(id)))
                .count();
            withheld.fetch_add(withheld_in_window, std::sync::atomic::Ordering::Relaxed);
            for e in page.messages {
                match ulid::Ulid::from_string(&e.message_id) {
                    Ok(id) if w.contains(id) => in_window.push(e),
                    Ok(_) => past = true,
                    Err(_) => {}
                }
            }
            if past || page.next_cursor.is_none() || in_window.len() >= MAX_SCAN {
                break;
            }
            before = page.next_cursor;
        }
        let window = window.ok_or_else(|| MailError::Invalid("the server answered no page".to_owned()))?;
        let cursor = window.cursor();
        let resume_after = in_window.first().map_or_else(|| cursor.clone(), |e| e.message_id.clone());
        let skipped = in_window.iter().filter(|e| id_in(&handed, &e.message_id) && !spec.include_seen).count();

        let mut chosen: Option<(MessageEntry, crate::message::ParsedMessage, Option<crate::otp::Otp>)> = None;
        let mut extra = 0usize;
        let ids: Vec<ulid::Ulid> = in_window.iter().filter_map(|e| ulid::Ulid::from_string(&e.message_id).ok()).collect();
        let order = crate::wait::evaluation_order(&ids, window, &handed, spec.include_seen);
        for id in order {
            let Some(entry) = in_window.iter().find(|e| ulid::Ulid::from_string(&e.message_id).ok() == Some(id)) else { continue };
            if chosen.is_some() && extra >= MAX_OTHERS_EVALUATED {
                break;
            }
            looked.insert(entry.message_id.clone());
            let Some((parsed, verdict)) = self.evaluate(spec, entry).await? else { continue };
            if Self::withheld(spec, &parsed).is_some() {
                withheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            match verdict {
                Ok(otp) if chosen.is_none() => {
                    if self.claim(spec, &entry.message_id)? {
                        chosen = Some((entry.clone(), parsed, otp));
                    } else {
                        note(&mut others, &mut spoofs, &parsed, "handed out to another waiter just now".to_owned(), false);
                    }
                }
                Ok(_) => {
                    extra += 1;
                    note(&mut others, &mut spoofs, &parsed, "also matches, but a newer match was returned (still unseen: call again to get it)".to_owned(), false);
                }
                Err((why, spoof)) => {
                    if chosen.is_some() {
                        extra += 1;
                    }
                    note(&mut others, &mut spoofs, &parsed, why, spoof);
                }
            }
        }
        let withheld_line = |others: &mut Vec<SeenMessage>| {
            let n = withheld.load(std::sync::atomic::Ordering::Relaxed);
            if n > 0 && others.len() < MAX_OTHERS_REPORTED {
                others.push(SeenMessage {
                    message_id: String::new(),
                    from: None,
                    subject: None,
                    why_not: format!("{n} message(s) withheld by the inbox's allow/block policy (its owner sets it)"),
                });
            }
        };
        let finish = |entry, parsed, otp, mut others: Vec<SeenMessage>| {
            withheld_line(&mut others);
            if skipped > 0 && others.len() < MAX_OTHERS_REPORTED {
                others.push(SeenMessage {
                    message_id: String::new(),
                    from: None,
                    subject: None,
                    why_not: format!("{skipped} message(s) in the window were handed out before (include_seen to see them again)"),
                });
            }
            Found { entry, parsed, otp, others, cursor: cursor.clone() }
        };
        if let Some((entry, parsed, otp)) = chosen {
            return Ok(finish(entry, parsed, otp, others));
        }

        // 2. Nothing there yet: follow the inbox from where the listing ended.
        let work = async {
            let mut events = self.client.events(&spec.inbox, Some(resume_after)).await?;
            loop {
                let entry = events.next().await?;
                let Ok(id) = ulid::Ulid::from_string(&entry.message_id) else { continue };
                if !window.contains(id) || !looked.insert(entry.message_id.clone()) {
                    continue;
                }
                let Some((parsed, verdict)) = self.evaluate(spec, &entry).await? else { continue };
                if Self::withheld(spec, &parsed).is_some() {
                    withheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                match verdict {
                    Ok(otp) => {
                        if self.claim(spec, &entry.message_id)? {
                            return Ok::<_, MailError>((entry, parsed, otp));
                        }
                        note(&mut others, &mut spoofs, &parsed, "handed out before (or to another waiter)".to_owned(), false);
                    }
                    Err((why, spoof)) => note(&mut others, &mut spoofs, &parsed, why, spoof),
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline.into(), work).await;
        match outcome {
            Ok(Ok((entry, parsed, otp))) => Ok(finish(entry, parsed, otp, others)),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                withheld_line(&mut others);
                let seen = others.iter().map(SeenMessage::line).collect();
                if spoofs.is_empty() {
                    Err(MailError::TimedOut { secs: spec.secs, cursor, seen })
                } else {
                    Err(MailError::Refused { wanted: spec.rule.describe(), reasons: spoofs, secs: spec.secs, cursor, seen })
                }
            }
        }
    }

    /// Records `id` as handed out (with `include_seen`, an id handed out before passes too).
    fn claim(&self, spec: &WaitSpec, id: &str) -> Result<bool, MailError> {
        let Ok(ulid) = ulid::Ulid::from_string(id) else { return Ok(false) };
        let fresh = self.handouts.claim(&spec.inbox, ulid, now_ms())?;
        Ok(fresh || spec.include_seen)
    }

    /// `mark_messages`: read (handed out) or unread.
    pub fn mark_messages(&self, p: &MarkParams) -> Result<MarkAnswer, MailError> {
        let inbox = crate::client::check_inbox(&p.inbox)?;
        if p.message_ids.is_empty() {
            return Err(MailError::Invalid("message_ids is empty: give at least one message id".to_owned()));
        }
        let ids = p
            .message_ids
            .iter()
            .map(|m| ulid::Ulid::from_string(m.trim()).map_err(|_| MailError::Invalid(format!("{m:?} is not a message id (a 26-character ULID)"))))
            .collect::<Result<Vec<_>, _>>()?;
        let changed = self.handouts.mark(&inbox, &ids, p.read, now_ms())?;
        Ok(MarkAnswer { inbox, changed, now: if p.read { "read" } else { "unread" }.to_owned() })
    }

    /// `extract_otp`: the code or link of a given message, or as `wait_for_otp`
    /// (with `wait`; without it, only what is already there).
    pub async fn extract_otp(&self, p: &ExtractOtpParams) -> Result<OtpAnswer, MailError> {
        let require = p.require_authenticated.unwrap_or(true);
        if let Some(id) = &p.message_id {
            if p.wait {
                return Err(MailError::Invalid("give either message_id or wait, not both".to_owned()));
            }
            let inbox = crate::client::check_inbox(&p.inbox)?;
            let spec = self.spec(&inbox, p.from_domain.as_deref(), p.from_address.as_deref(), p.subject_contains.as_deref(), None, None, true, require, true).await?;
            let parsed = self.fetch_parsed(&inbox, id).await?;
            return match Self::judge(&spec, &parsed) {
                Ok(otp) => {
                    let otp = otp.ok_or_else(|| MailError::NoCode(format!("message {id} holds no code or link")))?;
                    if let Ok(u) = ulid::Ulid::from_string(id) {
                        self.handouts.claim(&inbox, u, now_ms())?;
                    }
                    Ok(otp_answer(Found { entry: MessageEntry::bare(id.clone(), 0, 0), parsed, otp: Some(otp), others: Vec::new(), cursor: id.clone() }))
                }
                Err((why, true)) => Err(MailError::Refused { wanted: String::new(), reasons: vec![why], secs: 0, cursor: id.clone(), seen: Vec::new() }),
                Err((why, false)) if why.contains("no code") => Err(MailError::NoCode(format!(
                    "message {id} (from {}, subject {:?}) holds no code or link",
                    parsed.from_address().unwrap_or("-"),
                    parsed.subject.as_deref().unwrap_or("")
                ))),
                Err((why, false)) => Err(MailError::Invalid(format!("message {id} does not match: {why}"))),
            };
        }
        let spec = self.spec(
            &p.inbox,
            p.from_domain.as_deref(),
            p.from_address.as_deref(),
            p.subject_contains.as_deref(),
            p.since.as_deref(),
            Some(if p.wait { wait_secs(p.timeout_s)? } else { 0 }),
            p.include_seen,
            require,
            true,
        )
        .await?;
        let found = self.wait_core(&spec).await?;
        Ok(otp_answer(found))
    }
}

fn id_in(set: &std::collections::BTreeSet<ulid::Ulid>, id: &str) -> bool {
    ulid::Ulid::from_string(id).is_ok_and(|u| set.contains(&u))
}

/// Now on this machine's clock, in Unix milliseconds (used only when the server
/// does not say its own time, and to prune the hand-out record).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn otp_answer(found: Found) -> OtpAnswer {
    let authenticated = found.parsed.authentication.authenticated;
    let otp = found.otp.unwrap_or_else(|| crate::otp::Otp {
        code: None,
        link: None,
        kind: crate::otp::OtpKind::NumericCode,
        message_id: found.parsed.message_id.clone(),
        from: found.parsed.from.clone(),
        authenticated,
        confidence: 0.0,
        ambiguous: false,
        reason: "no code".to_owned(),
        ignored_in_quotes: Vec::new(),
        candidates: Vec::new(),
    });
    let warning = (!authenticated).then(|| {
        format!(
            "NOT AUTHENTICATED: our MX could not verify that {} sent this ({}); anyone can write that From address. Use the code only if you accept that risk.",
            found.parsed.from_address().unwrap_or("the sender"),
            found.parsed.authentication.basis
        )
    });
    OtpAnswer { otp, warning, other_messages: found.others, cursor: found.cursor }
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
            authenticated: None,
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
        let e = MessageEntry::bare("01HZZZZZZZZZZZZZZZZZZZZZZZ", 5, 9);
        let s = summarize(&e, raw);
        assert_eq!(s.from.as_deref(), Some("no-reply@acme.example"));
        assert_eq!(s.from_name.as_deref(), Some("Acme"));
        assert_eq!(s.subject.as_deref(), Some("Your code"));
        assert_eq!(s.delivered_to, None);
    }

    #[test]
    fn the_tag_comes_from_a_first_delivered_to_only() {
        let e = MessageEntry::bare("01HZZZZZZZZZZZZZZZZZZZZZZZ", 5, 9);
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
