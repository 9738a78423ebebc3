//! Messages held for the owner's review (issue 13 §3) in the console: the
//! list of those waiting, a read-only view of one (rendered like an inbox
//! message: HTML sanitized, remote content blocked), and approve / reject as
//! gated actions, through the same `review.approve` / `review.reject` code
//! and audit records as `agentkeys review` (the gate `passkey` or
//! `email_code` instead of `master_key`). Another owner's id, a decided
//! message's bytes, or a malformed id: the same 404 page as a missing one.

use agentkeys_store::{HeldRecord, HeldState, MAX_LISTED};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::actions::{evidence, verified};
use super::pages::{Nav, gated_form, layout, sanitized, when};
use super::{ConsoleError, Session, mail_view, meta, unavailable};
use crate::ApiState;
use crate::error::ApiError;

/// Most held messages the review page lists (newest first).
pub const REVIEW_SHOWN: u32 = 100;

const _: () = assert!(REVIEW_SHOWN <= MAX_LISTED, "the store lists at most MAX_LISTED");

/// The fixed texts `?done=` may select on the review page.
fn flash(uri: &Uri) -> Option<&'static str> {
    let done = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).find(|(k, _)| k == "done")?.1;
    match done.as_ref() {
        "approved" => Some("Message approved: it is signed and queued for delivery now."),
        "rejected" => Some("Message rejected: it will never be sent, and its text is removed."),
        _ => None,
    }
}

fn recipients(h: &HeldRecord) -> String {
    h.recipients.join(", ")
}

/// Agent ids to names, for the owner's agents.
async fn agent_names(state: &ApiState, session: &Session) -> Result<std::collections::HashMap<String, String>, ConsoleError> {
    Ok(meta(state)?
        .list_agents(Some(&session.owner))
        .await
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .map(|a| (a.id.to_string(), a.name.unwrap_or_else(|| "(no name)".to_owned())))
        .collect())
}

/// `GET /console/review`: the owner's held messages waiting for a decision.
pub(crate) async fn list(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let held = meta.held_messages(&session.owner, true, REVIEW_SHOWN).await.map_err(|e| unavailable(&e))?;
    let names = agent_names(&state, &session).await?;
    Ok(layout(
        "Held for review",
        Nav::Review,
        Some(&session.csrf),
        flash(&uri),
        html! {
            p { "Messages your agents sent that their send limits hold for you (" code { "agentkeys agent limits" } "). Nothing is sent until you approve it." }
            @if held.is_empty() { p { "Nothing waiting." } }
            @else {
                h2 { "Waiting, newest first" }
                ul.items {
                    @for h in &held {
                        li {
                            a href=(format!("/console/review/{}", h.id)) { (h.subject.as_deref().filter(|s| !s.is_empty()).unwrap_or("(no subject)")) }
                            div { "Agent " (names.get(h.agent.as_str()).map_or("(no name)", String::as_str)) " · from " code { (h.inbox.as_str()) } }
                            div { "To " (recipients(h)) }
                            div { "Held at " (when(h.held_at)) }
                        }
                    }
                }
            }
        },
    )
    .into_response())
}

/// `GET /console/review/{id}`: one held message, read-only, with the approve
/// and reject buttons while it waits.
pub(crate) async fn show(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let ulid = ulid::Ulid::from_string(&id).map_err(|_| ConsoleError::NotFound)?;
    let held = match meta.owner_held_message(&session.owner, &id).await {
        Ok(h) => h,
        Err(agentkeys_store::StoreError::NotFound { .. }) => return Err(ConsoleError::NotFound),
        Err(e) => return Err(unavailable(&e)),
    };
    let names = agent_names(&state, &session).await?;
    let waiting = held.state == HeldState::Held;
    // The bytes are kept only while it waits (a rejection removes them).
    let view = if waiting {
        let raw = crate::review::held_bytes(&state, ulid).await.map_err(|e| unavailable(&format!("{e:?}")))?;
        Some(mail_view::view(&raw).ok_or(ConsoleError::NotFound)?)
    } else {
        None
    };
    let csrf = session.csrf.as_str();
    let title = held.subject.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "(no subject)".to_owned());
    Ok(layout(
        &title,
        Nav::Review,
        Some(csrf),
        None,
        html! {
            dl.facts {
                dt { "Agent" } dd { (names.get(held.agent.as_str()).map_or("(no name)", String::as_str)) " " code { (held.agent.as_str()) } }
                dt { "From inbox" } dd { code { (held.inbox.as_str()) } }
                dt { "Envelope recipients" } dd { (recipients(&held)) }
                dt { "Held because" } dd { (held.reason.as_str()) }
                dt { "Held at" } dd { (when(held.held_at)) }
                dt { "Size" } dd { (held.size) " bytes" }
                dt { "State" } dd { span.state { (held.state.as_str()) } @if let Some(t) = held.decided_at { " · " (when(t)) } }
            }
            @if let Some(v) = &view {
                dl.facts {
                    dt { "From:" } dd { (v.from) }
                    dt { "To:" } dd { (v.to) }
                    dt { "Date:" } dd { (v.date) }
                }
                @if !v.attachments.is_empty() {
                    h2 { "Attachments" }
                    ul.items { @for (name, size) in &v.attachments { li { (name) " · " (size) " bytes" } } }
                }
                @if let Some(html) = &v.html {
                    h2 { "HTML part (sanitized; images and remote content blocked)" }
                    div.mail-html { (sanitized(html)) }
                }
                @if let Some(text) = &v.text {
                    h2 { "Text" }
                    pre.mail-text { (text) }
                }
                h2 { "Decide" }
                p { "Approving signs and sends it as shown; rejecting means it is never sent. Your passkey is asked for either." }
                (gated_form(&format!("/console/review/{}/approve", held.id), csrf, "Approve and send", false, html! {}))
                (gated_form(&format!("/console/review/{}/reject", held.id), csrf, "Reject", true, html! {}))
            }
            p { a href="/console/review" { "Back to the held messages" } }
        },
    )
    .into_response())
}

fn done(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// What the console says when a decision is refused.
fn refusal(e: ApiError) -> ConsoleError {
    match e {
        ApiError::OwnerObjectNotFound { .. } => ConsoleError::NotFound,
        ApiError::AlreadyDecided => ConsoleError::BadRequest("This message was decided already.".to_owned()),
        ApiError::InvalidRequest { detail, .. } => ConsoleError::BadRequest(detail),
        other => unavailable(&format!("{other:?}")),
    }
}

/// `POST /console/review/{id}/approve`: release it as held (gated).
pub(crate) async fn approve(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _fields) = verified(&state, &session, &uri, &body).await?;
    crate::review::approve_as(&state, &id, None, &proof, evidence(&proof)).await.map_err(refusal)?;
    Ok(done("/console/review?done=approved"))
}

/// `POST /console/review/{id}/reject`: never send it (gated).
pub(crate) async fn reject(
    State(state): State<ApiState>,
    session: Session,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let (proof, _fields) = verified(&state, &session, &uri, &body).await?;
    crate::review::reject_as(&state, &id, &proof, evidence(&proof)).await.map_err(refusal)?;
    Ok(done("/console/review?done=rejected"))
}
