//! Mail to the owner's own address (issue 12, "send to it, never read it"):
//! notices and the emailed approval codes of the console's fallback gate.
//!
//! Every mail goes out through our own outbound path: built here (plain text
//! and HTML, both from the same escaped paragraphs), DKIM-signed by the same
//! [`OutboundSigner`] as submissions, written durably as `queue/<ulid>.eml` and
//! queued, so the delivery runner sends and retries it like any other mail.
//! The sender is a system address of the server's domain ([`SYSTEM_LOCAL_PART`]);
//! its queue rows carry the owner [`SYSTEM_OWNER`](agentkeys_store::SYSTEM_OWNER),
//! so no owner's "sent" view lists them and a bounce writes no DSN.
//!
//! **No secret in a notice.** A notice names agents, ids, times and counts,
//! never a key, token, pair code or confirmation digits; the one mail that
//! carries a secret is the approval code the owner asked for
//! ([`Notice::email_code`]).
//!
//! Which notices an owner gets is theirs to set ([`NoticeKind`],
//! `agentkeys owner notifications`, the console's settings form); the
//! approval-code mail is always sent (the owner asked for it). Other parts of
//! the server send through [`Notifier::notify`] (bounce-rate and send-limit
//! notices use [`NoticeKind::Bounces`] and [`NoticeKind::SendLimit`]).

use std::sync::Arc;

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::{Address, OwnerId, UnixTime};
use agentkeys_store::{BlobKey, BlobStore, MetadataStore, NewOutbound, StoreError};
use agentkeys_submission::OutboundSigner;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::{ApiError, Problem};
use crate::extract::decode;
use crate::owner::{OwnerApproval, backend_error, store};

/// The local part of the address notices come from (`notifications@<domain>`).
pub const SYSTEM_LOCAL_PART: &str = "notifications";
/// The audit operation of a settings change.
pub const OP_OWNER_NOTIFICATIONS: &str = "owner.notifications";

/// The kinds of notice an owner can turn on or off (all on by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// A new pairing request addressed to the owner.
    Pairing,
    /// A grant or key of the owner's agents expiring within 3 days.
    Expiring,
    /// An agent's refused AUTHs crossing the threshold.
    RefusedAuth,
    /// The audit chain failing verification.
    Audit,
    /// An agent's bounce rate crossing its threshold.
    Bounces,
    /// An agent reaching its send limit.
    SendLimit,
}

impl NoticeKind {
    /// Every kind, in the order settings show them.
    pub const ALL: [Self; 6] = [Self::Pairing, Self::Expiring, Self::RefusedAuth, Self::Audit, Self::Bounces, Self::SendLimit];

    /// The settings name (`pairing`, `expiring`, `refused_auth`, `audit`, `bounces`, `send_limit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pairing => "pairing",
            Self::Expiring => "expiring",
            Self::RefusedAuth => "refused_auth",
            Self::Audit => "audit",
            Self::Bounces => "bounces",
            Self::SendLimit => "send_limit",
        }
    }

    /// What it tells, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Pairing => "a new pairing request addressed to you",
            Self::Expiring => "a grant or key expiring within 3 days",
            Self::RefusedAuth => "an agent's refused logins crossing the threshold",
            Self::Audit => "the audit chain failing verification",
            Self::Bounces => "an agent's bounces crossing the threshold",
            Self::SendLimit => "an agent reaching its send limit",
        }
    }

    /// The kind of a settings name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One mail to an owner: a subject, paragraphs and an optional link, rendered
/// to both parts. `kind` is `None` for mail sent whatever the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Which setting governs it.
    pub kind: Option<NoticeKind>,
    /// One line.
    pub subject: String,
    /// Plain paragraphs (escaped in the HTML part).
    pub paragraphs: Vec<String>,
    /// A button/link: (label, URL).
    pub link: Option<(String, String)>,
}

impl Notice {
    /// A notice of `kind`.
    pub fn new(kind: NoticeKind, subject: impl Into<String>, paragraphs: Vec<String>) -> Self {
        Self { kind: Some(kind), subject: subject.into(), paragraphs, link: None }
    }

    /// The same notice with a link.
    #[must_use]
    pub fn with_link(mut self, label: impl Into<String>, url: impl Into<String>) -> Self {
        self.link = Some((label.into(), url.into()));
        self
    }

    /// The approval-code mail: the digits, the phrase the requesting screen
    /// shows, what it approves, and the scanner-safe link.
    pub fn email_code(code: &str, phrase: &str, summary: &str, link: &str, minutes: i64) -> Self {
        Self {
            kind: None,
            subject: format!("Your AgentKeys approval code: {code}"),
            paragraphs: vec![
                format!("Someone signed in to your AgentKeys console asked to approve: {summary}."),
                format!("The screen that asked shows the phrase \"{phrase}\". Use this code only if it does."),
                format!("Approval code: {code}"),
                format!("Or open the link below and press its button. The code and the link work once, for {minutes} minutes."),
                "If you did not ask for this, ignore this mail: nothing happens without the code.".to_owned(),
            ],
            link: Some(("Review and approve".to_owned(), link.to_owned())),
        }
    }

    /// The plain-text part.
    pub fn text(&self) -> String {
        let mut out = self.paragraphs.join("\r\n\r\n");
        if let Some((label, url)) = &self.link {
            out.push_str(&format!("\r\n\r\n{label}: {url}"));
        }
        out.push_str("\r\n\r\n-- \r\nAgentKeys Mail. Change which notices you get with `agentkeys owner notifications` or in the console.\r\n");
        out
    }

    /// The HTML part (every value escaped by maud).
    pub fn html(&self) -> String {
        html! {
            (maud::DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { (self.subject) } }
                body {
                    @for p in &self.paragraphs { p { (p) } }
                    @if let Some((label, url)) = &self.link { p { a href=(url) { (label) } } }
                    hr;
                    p { small { "AgentKeys Mail. Change which notices you get with " code { "agentkeys owner notifications" } " or in the console." } }
                }
            }
        }
        .into_string()
    }
}

/// What [`Notifier::notify_capped`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capped {
    /// The notice was queued (within the cap).
    Sent,
    /// The cap was reached: the one summary of this hour was queued instead.
    Summary,
    /// The cap was reached and the summary already sent: nothing was queued.
    Quiet,
    /// The owner turned this kind off: nothing was queued, no slot spent.
    Off,
}

/// Why a mail could not be queued (nothing was queued).
#[derive(Debug)]
pub enum NotifyError {
    /// The owner is unknown or has no address.
    NoAddress,
    /// The mail could not be built.
    Build(String),
    /// DKIM signing failed.
    Sign(String),
    /// The store failed.
    Store(String),
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAddress => f.write_str("the owner has no notification address"),
            Self::Build(e) => write!(f, "building the mail failed: {e}"),
            Self::Sign(e) => write!(f, "signing the mail failed: {e}"),
            Self::Store(e) => write!(f, "storing the mail failed: {e}"),
        }
    }
}

impl std::error::Error for NotifyError {}

/// Sends mail to owners' addresses through the outbound queue.
pub struct Notifier {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    signer: Arc<dyn OutboundSigner>,
    from: Address,
    origin: Option<String>,
    queued: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("from", &self.from).finish_non_exhaustive()
    }
}

impl Notifier {
    /// Mail from `notifications@<domain>`, signed by `signer` (the domain
    /// must be hosted, so it has DKIM keys), queued in `meta` with its bytes
    /// in `blobs`; `origin` is the console's (for links), `queued` wakes the runner.
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        signer: Arc<dyn OutboundSigner>,
        domain: &agentkeys_core::Domain,
        origin: Option<String>,
        queued: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<Self, String> {
        let from = Address::new(SYSTEM_LOCAL_PART, domain).map_err(|e| e.to_string())?;
        Ok(Self { meta, blobs, signer, from, origin, queued })
    }

    /// The console's origin (`https://…`), for links; `None` without a console.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The address notices come from.
    pub fn from_address(&self) -> &Address {
        &self.from
    }

    /// Whether `owner` gets notices of `kind` (their settings).
    pub async fn wants(&self, owner: &OwnerId, kind: NoticeKind) -> Result<bool, StoreError> {
        let off = self.meta.notification_settings(owner).await?;
        Ok(!off.iter().any(|k| k == kind.as_str()))
    }

    /// Queues `notice` to `owner`'s address unless their settings turned its
    /// kind off: `Ok(Some(message id))` when queued, `Ok(None)` when off.
    pub async fn notify(&self, owner: &OwnerId, notice: &Notice, now: UnixTime) -> Result<Option<String>, NotifyError> {
        if let Some(kind) = notice.kind
            && !self.wants(owner, kind).await.map_err(|e| NotifyError::Store(e.to_string()))?
        {
            return Ok(None);
        }
        let owners = self.meta.list_owners().await.map_err(|e| NotifyError::Store(e.to_string()))?;
        let to = owners
            .into_iter()
            .find(|o| &o.id == owner)
            .and_then(|o| o.email)
            .ok_or(NotifyError::NoAddress)?;
        self.send(&to, notice, now).await.map(Some)
    }

    /// Like [`Notifier::notify`], but at most `max` notices per owner and
    /// clock hour for the counter `window` (across nodes: each notice takes a
    /// once-only mark `{window}/{hour}/{slot}` in the store). Past the cap, the
    /// first request that hour gets `summary(max)` instead (one mail saying more
    /// came and where to see them), and every later one nothing. A kind the
    /// owner turned off spends no slot.
    pub async fn notify_capped(
        &self,
        owner: &OwnerId,
        notice: &Notice,
        window: &str,
        max: u32,
        summary: impl FnOnce(u32) -> Notice,
        now: UnixTime,
    ) -> Result<Capped, NotifyError> {
        let store = |e: StoreError| NotifyError::Store(e.to_string());
        if let Some(kind) = notice.kind
            && !self.wants(owner, kind).await.map_err(store)?
        {
            return Ok(Capped::Off);
        }
        let hour = now.div_euclid(3600);
        for slot in 0..max {
            if self.meta.mark_notice_sent(owner, &format!("{window}/{hour}/{slot}"), now).await.map_err(store)? {
                return self.notify(owner, notice, now).await.map(|_| Capped::Sent);
            }
        }
        if self.meta.mark_notice_sent(owner, &format!("{window}/{hour}/more"), now).await.map_err(store)? {
            return self.notify(owner, &summary(max), now).await.map(|_| Capped::Summary);
        }
        metrics::counter!("agentkeys_owner_notices_capped_total", "window" => window.to_owned()).increment(1);
        Ok(Capped::Quiet)
    }

    /// Queues `notice` to `to`; the message id.
    async fn send(&self, to: &str, notice: &Notice, now: UnixTime) -> Result<String, NotifyError> {
        let id = ulid::Ulid::new();
        let message = self.build(to, notice, id, now)?;
        let signed = self.signer.sign(self.from.domain(), &message).await.map_err(NotifyError::Sign)?;
        let size = signed.len() as u64;
        self.blobs
            .put_durable(vec![(BlobKey::queued(id), signed.into())])
            .await
            .map_err(|e| NotifyError::Store(e.to_string()))?;
        let system: OwnerId = agentkeys_store::SYSTEM_OWNER.parse().map_err(|e| NotifyError::Build(format!("{e}")))?;
        self.meta
            .enqueue_outbound(&NewOutbound {
                message_id: id.to_string(),
                sender: self.from.clone(),
                owner: system,
                recipients: vec![to.to_owned()],
                size,
                queued_at: now,
            })
            .await
            .map_err(|e| NotifyError::Store(e.to_string()))?;
        if let Some(queued) = &self.queued {
            queued.notify_one();
        }
        metrics::counter!("agentkeys_owner_notices_total", "kind" => notice.kind.map_or("email_code", NoticeKind::as_str)).increment(1);
        Ok(id.to_string())
    }

    fn build(&self, to: &str, notice: &Notice, id: ulid::Ulid, now: UnixTime) -> Result<Vec<u8>, NotifyError> {
        use mail_builder::MessageBuilder;
        use mail_builder::headers::address::Address as MbAddress;
        use mail_builder::headers::raw::Raw;
        if notice.subject.contains(['\r', '\n']) || to.contains(['\r', '\n', ',', '<', '>']) {
            return Err(NotifyError::Build("a header value spans lines".to_owned()));
        }
        let message_id = format!("{id}@{}", self.from.domain()).to_ascii_lowercase();
        MessageBuilder::new()
            .from(MbAddress::new_address(Some("AgentKeys"), self.from.as_str()))
            .to(to)
            .subject(notice.subject.as_str())
            .message_id(message_id.as_str())
            .date(now)
            .header("Auto-Submitted", Raw::new("auto-generated"))
            .text_body(notice.text())
            .html_body(notice.html())
            .write_to_vec()
            .map_err(|e| NotifyError::Build(e.to_string()))
    }
}

/// The owner's notification settings: each kind on or off.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationSettings {
    /// `pairing`, `expiring`, `refused_auth`, `audit`, `bounces`, `send_limit` → on (true) or off.
    pub notices: std::collections::BTreeMap<String, bool>,
    /// Where they are sent (the owner's address), if any.
    pub address: Option<String>,
}

/// Body of `PATCH /v1/owner/notifications`: the kinds to change; others keep their setting.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeNotifications {
    /// Kind → on (true) or off (false).
    pub notices: std::collections::BTreeMap<String, bool>,
}

async fn settings_of(meta: &dyn MetadataStore, owner: &OwnerId) -> Result<NotificationSettings, StoreError> {
    let off = meta.notification_settings(owner).await?;
    let address = meta.list_owners().await?.into_iter().find(|o| &o.id == owner).and_then(|o| o.email);
    Ok(NotificationSettings {
        notices: NoticeKind::ALL.iter().map(|k| (k.as_str().to_owned(), !off.iter().any(|o| o == k.as_str()))).collect(),
        address,
    })
}

/// Sets `owner`'s kinds from `changes` (unknown names refused), audited with `gate`.
pub(crate) async fn change_settings(
    state: &ApiState,
    owner: &OwnerId,
    changes: &std::collections::BTreeMap<String, bool>,
    approval: serde_json::Value,
) -> Result<NotificationSettings, ApiError> {
    let meta = store(state)?;
    if let Some(bad) = changes.keys().find(|k| NoticeKind::parse(k).is_none()) {
        let names: Vec<&str> = NoticeKind::ALL.iter().map(|k| k.as_str()).collect();
        return Err(ApiError::InvalidRequest {
            field: Some("notices".to_owned()),
            detail: format!("notices: {bad:?} is not a kind of notice (one of {})", names.join(", ")),
        });
    }
    let mut off: Vec<String> = meta.notification_settings(owner).await.map_err(|e| backend_error(&e))?;
    for (name, on) in changes {
        off.retain(|k| k != name);
        if !on {
            off.push(name.clone());
        }
    }
    off.sort();
    let event = AuditEvent::ok(Actor::Owner(owner.clone()), OP_OWNER_NOTIFICATIONS, owner.as_str())
        .with_detail(json!({ "owner": owner, "off": off, "approval": approval }));
    meta.set_notification_settings(owner, &off, state.clock.now(), &event).await.map_err(|e| match e {
        StoreError::NotFound { .. } => ApiError::OwnerObjectNotFound { what: "owner" },
        other => backend_error(&other),
    })?;
    settings_of(meta.as_ref(), owner).await.map_err(|e| backend_error(&e))
}

/// The signing owner's notification settings.
#[utoipa::path(
    get,
    path = "/v1/owner/notifications",
    tag = "owner",
    security(("owner_signature" = [])),
    responses(
        (status = 200, description = "Each kind of notice, on or off", body = NotificationSettings),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_settings(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    let meta = store(&state)?;
    let settings = settings_of(meta.as_ref(), approval.owner()).await.map_err(|e| backend_error(&e))?;
    Ok(Json(settings).into_response())
}

/// Turns kinds of notice on or off for the signing owner (audited `owner.notifications`).
#[utoipa::path(
    patch,
    path = "/v1/owner/notifications",
    tag = "owner",
    security(("owner_signature" = [])),
    request_body = ChangeNotifications,
    responses(
        (status = 200, description = "The settings now", body = NotificationSettings),
        (status = 400, description = "INVALID_REQUEST: an unknown kind of notice", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Owner signature refused", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "NOT_FOUND: the owner is not registered here", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: the body is over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: send application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BACKEND_UNAVAILABLE: the store could not be reached; nothing was changed, retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_settings(State(state): State<ApiState>, approval: OwnerApproval) -> Result<Response, ApiError> {
    store(&state)?;
    if !approval.json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body: ChangeNotifications = decode(&approval.body)?;
    let owner = approval.owner().clone();
    let settings = change_settings(&state, &owner, &body.notices, approval.evidence()).await?;
    Ok(Json(settings).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kinds_round_trip_their_names() {
        for k in NoticeKind::ALL {
            assert_eq!(NoticeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(NoticeKind::parse("Pairing"), None);
    }

    proptest! {
        /// Whatever the paragraphs say, the HTML part escapes it: no markup of theirs survives.
        #[test]
        fn the_html_part_escapes_everything(p in ".{0,80}", url in "[a-z:/.\"<>]{0,30}") {
            // A tag no template writes, so its survival can only be the paragraph's
            // (a bare `<` also starts the template's own tags).
            let marked = format!("<zq{p}<script>");
            let notice = Notice::new(NoticeKind::Pairing, "s", vec![marked.clone()]).with_link("open", url);
            let html = notice.html();
            prop_assert!(!html.contains("<script"));
            prop_assert!(!html.contains("<zq"));
            prop_assert!(notice.text().contains(&marked));
        }
    }
}
