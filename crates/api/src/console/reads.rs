//! The console's pages that only read: they need the session, nothing more.
//! Every object is found through the signed-in owner; anything else is the
//! same 404 page as a missing one.

use agentkeys_approval::{MAX_CONFIRMATION_TRIES, PAIRING_TTL, PairingState};
use agentkeys_core::{Address, Grant};
use agentkeys_store::{BlobKey, BlobStore as _, InboxRecord, KeyRecord, ListOrder, PageQuery};
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use ulid::Ulid;

use super::pages::{Nav, gated_form, layout, sanitized, when};
use super::{ConsoleError, Session, mail_view, meta, unavailable};
use crate::ApiState;

/// Most messages an inbox page lists (newest first).
pub const INBOX_PAGE: u32 = 50;
/// Most audit records the audit page shows (newest first, after filtering).
pub const AUDIT_SHOWN: usize = 200;
/// Most audit records of the owner one audit page reads (newest first,
/// already filtered by the store).
pub const AUDIT_SCANNED: usize = 5_000;
/// Records per store call of the audit page.
pub const AUDIT_PAGE: u32 = agentkeys_store::MAX_AUDIT_SEARCH_PAGE;

fn query(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn param<'q>(q: &'q [(String, String)], name: &str) -> Option<&'q str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// The fixed texts `?done=` may select (nothing of the query is echoed).
fn flash(uri: &Uri) -> Option<&'static str> {
    match param(&query(uri), "done")? {
        "paired" => Some("Pairing approved: the agent can collect its key now."),
        "pairing-denied" => Some("Pairing denied: the agent was told, and the request can never be approved."),
        "grant-revoked" => Some("Grant revoked."),
        "grant-created" => Some("Grant created."),
        "grant-changed" => Some("Grant changed."),
        "key-revoked" => Some("Key revoked."),
        "agent-stopped" => Some("Agent stopped: every key and grant of it is revoked."),
        "grant-request-approved" => Some("Grant request approved: the grant exists now."),
        "grant-request-denied" => Some("Grant request denied: nothing was granted."),
        "inbox-created" => Some("Inbox created: it receives mail now; grant it to the agent to read or send."),
        "inbox-disabled" => Some("Inbox disabled: mail to it is refused (550 5.2.1) and it cannot send."),
        "inbox-enabled" => Some("Inbox enabled again."),
        _ => None,
    }
}

pub(crate) async fn overview(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let now = state.clock.now();
    let waiting = meta.pending_pairings_for(&session.owner, now - PAIRING_TTL + 1).await.map_err(|e| unavailable(&e))?;
    let csrf = session.csrf.as_str();
    let certificate = super::config(&state)?.certificate.clone();
    let asked = crate::grant_requests::pending_for(&state, &session.owner).await.map_err(|e| unavailable(&format!("{e:?}")))?;
    let names: std::collections::HashMap<String, String> = meta
        .list_agents(Some(&session.owner))
        .await
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .map(|a| (a.id.to_string(), a.name.unwrap_or_else(|| "(no name)".to_owned())))
        .collect();
    Ok(layout(
        "Pending approvals",
        Nav::Approvals,
        Some(csrf),
        flash(&uri),
        html! {
            section {
                h2 { "Pairing requests addressed to you" }
                @if waiting.is_empty() { p { "None waiting. An agent asks with " code { "agentkeys agent pair --owner <your id or email>" } "." } }
                @for (i, rec) in waiting.iter().enumerate() {
                    @let fingerprint = agentkeys_approval::PublicKey::from_bytes(&rec.device_key).map(|k| crate::pairing::device_fingerprint(&k)).unwrap_or_default();
                    article.request {
                        dl.facts {
                            dt { "Agent" } dd { (rec.name.as_deref().unwrap_or("(no name)")) }
                            dt { "Agent id" } dd { code { (rec.agent.as_str()) } }
                            dt { "Device fingerprint" } dd { code { (fingerprint) } }
                            dt { "Expires" } dd { (when(rec.opened_at + PAIRING_TTL)) }
                            @if let Some(fp) = &certificate {
                                dt { "Server certificate" } dd { code.fingerprint { "SHA-256 " (fp) } }
                            }
                        }
                        p { "Type the pair code and the 6 digits the agent shows (at most " (MAX_CONFIRMATION_TRIES) " tries). "
                            @if certificate.is_some() { "Check that the agent shows the same server certificate. " }
                            "Your passkey is asked for this approval." }
                        (gated_form("/console/pairings/approve", csrf, "Approve with my passkey", false, html! {
                            label for=(format!("pair-code-{i}")) { "Pair code" }
                            input id=(format!("pair-code-{i}")) type="text" name="pair_code" placeholder="ABCD-EFGH" autocomplete="off" required;
                            label for=(format!("digits-{i}")) { "The agent's 6 digits" }
                            input id=(format!("digits-{i}")) type="text" name="confirmation" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="off" required;
                        }))
                        p { "Not your agent? Deny it: the agent is told at once, and the request can never be approved." }
                        (gated_form(&format!("/console/pairings/{}/deny", agentkeys_audit::hash_to_hex(&rec.code_hash)), csrf, "Deny pairing", true, html! {}))
                    }
                }
            }
            section {
                h2 { "Grant requests from your agents" }
                @if asked.is_empty() { p { "None waiting. An agent asks with " code { "agentkeys mail grant-request" } "." } }
                @for r in &asked {
                    article.request {
                        dl.facts {
                            dt { "Agent" } dd { (names.get(r.agent.as_str()).map_or("(no name)", String::as_str)) " " code { (r.agent.as_str()) } }
                            dt { "Inboxes" } dd { code { (r.pattern.to_string()) } }
                            dt { "Scopes" } dd { (r.scopes.to_string()) }
                            dt { "For" } dd { (lifetime(r.ttl)) }
                            dt { "Reason" } dd { (r.reason.as_deref().unwrap_or("(none given)")) }
                            dt { "Asked" } dd { (when(r.created_at)) }
                        }
                        (gated_form(&format!("/console/grant-requests/{}/approve", r.id), csrf, "Approve grant with my passkey", false, html! {}))
                        (gated_form(&format!("/console/grant-requests/{}/deny", r.id), csrf, "Deny", true, html! {}))
                    }
                }
            }
            @if let Some(fp) = &certificate {
                section {
                    h2 { "This server's certificate" }
                    p { "An agent pairing over HTTPS pins and prints it; it must be " code.fingerprint { "SHA-256 " (fp) } "." }
                }
            }
            section {
                h2 { "Approve a pairing by its code" }
                p { "An agent that runs " code { "agentkeys agent pair" } " shows a pair code and 6 digits. Enter the pair code to see the request." }
                form method="get" action="/console/pairings" {
                    label for="code" { "Pair code" }
                    input #code type="text" name="code" placeholder="ABCD-EFGH" autocomplete="off" required;
                    button type="submit" { "Show the request" }
                }
            }
        },
    )
    .into_response())
}

pub(crate) async fn pairing(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let q = query(&uri);
    let code = crate::pairing::parse_code(param(&q, "code").unwrap_or("").trim()).map_err(|_| ConsoleError::NotFound)?;
    let found = crate::pairing::lookup(meta, &code).await.map_err(|e| unavailable(&format!("{e:?}")))?;
    let (rec, pairing) = found.ok_or(ConsoleError::NotFound)?;
    // Addressed to another owner: as if it did not exist.
    if !pairing.request().is_open_to(&session.owner) {
        return Err(ConsoleError::NotFound);
    }
    let now = state.clock.now();
    let request = match pairing.expire_if_due(now) {
        PairingState::Pending(request) => request,
        PairingState::Approved { owner, .. } | PairingState::Consumed { owner, .. } if owner == session.owner => {
            return Err(ConsoleError::BadRequest("You approved this pairing request already.".to_owned()));
        }
        PairingState::Expired { approved_by: None, .. } => {
            return Err(ConsoleError::BadRequest("This pairing request expired; pair again.".to_owned()));
        }
        _ => return Err(ConsoleError::NotFound),
    };
    let fingerprint = crate::pairing::device_fingerprint(request.device_key());
    let certificate = super::config(&state)?.certificate.clone();
    Ok(layout(
        "Approve a pairing",
        Nav::Approvals,
        Some(&session.csrf),
        None,
        html! {
            dl.facts {
                dt { "Agent" } dd { (rec.name.as_deref().unwrap_or("(no name)")) }
                dt { "Agent id" } dd { code { (request.agent_id().as_str()) } }
                dt { "Device fingerprint" } dd { code { (fingerprint) } }
                dt { "Pair code" } dd { code { (code.to_string()) } }
                dt { "Expires" } dd { (when(request.expires_at())) }
                @if let Some(fp) = &certificate {
                    dt { "Server certificate" } dd { code.fingerprint { "SHA-256 " (fp) } }
                }
            }
            p { "Type the 6 digits the agent shows (at most " (MAX_CONFIRMATION_TRIES) " tries). Your passkey is asked for this approval." }
            (gated_form("/console/pairings/approve", &session.csrf, "Approve with my passkey", false, html! {
                input type="hidden" name="pair_code" value=(code.to_string());
                label for="confirmation" { "The agent's 6 digits" }
                input #confirmation type="text" name="confirmation" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="off" required;
            }))
            p { "Not your agent? Deny it: the agent is told at once, and the request can never be approved." }
            (gated_form(&format!("/console/pairings/{}/deny", agentkeys_audit::hash_to_hex(&rec.code_hash)), &session.csrf, "Deny pairing", true, html! {}))
        },
    )
    .into_response())
}

fn key_state(k: &KeyRecord, now: i64) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

fn grant_state(g: &Grant, now: i64) -> &'static str {
    if g.revoked_at.is_some() {
        "revoked"
    } else if g.is_active(now) {
        "active"
    } else {
        "expired"
    }
}

pub(crate) async fn agents(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let now = state.clock.now();
    let agents = meta.list_agents(Some(&session.owner)).await.map_err(|e| unavailable(&e))?;
    let grants = meta.list_owner_grants(&session.owner).await.map_err(|e| unavailable(&e))?;
    let mut sections: Vec<Markup> = Vec::with_capacity(agents.len());
    for a in &agents {
        let keys = meta.list_keys(&a.id).await.map_err(|e| unavailable(&e))?;
        let used: std::collections::HashMap<String, agentkeys_core::UnixTime> = meta
            .key_last_uses(&session.owner, &a.id)
            .await
            .map_err(|e| unavailable(&e))?
            .into_iter()
            .map(|(id, at)| (id.to_string(), at))
            .collect();
        let mine: Vec<&Grant> = grants.iter().filter(|g| g.agent == a.id).collect();
        let csrf = session.csrf.as_str();
        sections.push(html! {
            section.agent {
                h2 { (a.name.as_deref().unwrap_or("(no name)")) }
                p { "Id " code { (a.id.as_str()) } " · since " (when(a.created_at)) }
                h3 { "Keys" }
                @if keys.is_empty() { p { "No keys." } }
                ul.items {
                    @for k in &keys {
                        li {
                            code { (k.id.as_str()) } " · " span.state { (key_state(k, now)) }
                            " · created " (when(k.created_at)) " · expires " (when(k.expires_at))
                            " · last used " (used.get(k.id.as_str()).map_or_else(|| "never".to_owned(), |t| when(*t)))
                            @if key_state(k, now) == "active" {
                                (gated_form(&format!("/console/keys/{}/revoke", k.id), csrf, "Revoke key", true, html! {}))
                            }
                        }
                    }
                }
                h3 { "Grants" }
                @if mine.is_empty() { p { "No grants." } }
                ul.items {
                    @for g in &mine {
                        li {
                            code { (g.id.as_str()) } " · " (g.pattern.to_string()) " · " (g.scopes.to_string()) " · "
                            span.state { (grant_state(g, now)) } " · expires " (when(g.expires_at))
                            @if grant_state(g, now) == "active" {
                                (gated_form(&format!("/console/grants/{}/change", g.id), csrf, "Change grant", false, html! {
                                    label for=(format!("scopes-{}", g.id)) { "Scopes (only narrower)" }
                                    select id=(format!("scopes-{}", g.id)) name="scopes" {
                                        option value="" { "unchanged" }
                                        option value="read" { "read" }
                                        option value="send" { "send" }
                                    }
                                    label for=(format!("days-{}", g.id)) { "Expires in days (1 to 30)" }
                                    input id=(format!("days-{}", g.id)) type="number" name="days" min="1" max="30";
                                }))
                                (gated_form(&format!("/console/grants/{}/revoke", g.id), csrf, "Revoke grant", true, html! {}))
                            }
                        }
                    }
                }
                h3 { "Grant an inbox" }
                (gated_form("/console/grants", csrf, "Create grant", false, html! {
                    input type="hidden" name="agent" value=(a.id.as_str());
                    label for=(format!("inbox-{}", a.id)) { "Inbox or pattern" }
                    input id=(format!("inbox-{}", a.id)) type="text" name="inbox" placeholder="bot@example.com" required;
                    label for=(format!("new-scopes-{}", a.id)) { "Scopes" }
                    select id=(format!("new-scopes-{}", a.id)) name="scopes" {
                        option value="read" { "read" }
                        option value="send" { "send" }
                        option value="read,send" { "read and send" }
                    }
                    label for=(format!("new-days-{}", a.id)) { "Days (1 to 30)" }
                    input id=(format!("new-days-{}", a.id)) type="number" name="days" min="1" max="30" value="30" required;
                }))
                (gated_form(&format!("/console/agents/{}/stop", a.id), csrf, "Stop this agent now", true, html! {}))
            }
        });
    }
    Ok(layout(
        "Agents",
        Nav::Agents,
        Some(&session.csrf),
        flash(&uri),
        html! {
            @if agents.is_empty() { p { "No agents yet: approve a pairing first." } }
            @for s in &sections { (s) }
        },
    )
    .into_response())
}

/// The owner's inbox with this address; another owner's is missing.
async fn own_inbox(state: &ApiState, session: &Session, address: &str) -> Result<InboxRecord, ConsoleError> {
    let meta = meta(state)?;
    let address: Address = address.parse().map_err(|_| ConsoleError::NotFound)?;
    let inboxes = meta.list_inboxes(Some(&session.owner)).await.map_err(|e| unavailable(&e))?;
    inboxes.into_iter().find(|i| i.address == address).ok_or(ConsoleError::NotFound)
}

/// `1 attempt`, `2 attempts`.
fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A lifetime in days and hours: `2 days`, `1 day 6 hours`, `5 hours`, `under an hour`.
fn lifetime(secs: i64) -> String {
    let (days, hours) = (secs / 86_400, secs % 86_400 / 3600);
    match (days, hours) {
        (0, 0) => "under an hour".to_owned(),
        (0, h) => count(usize::try_from(h).unwrap_or(0), "hour"),
        (d, 0) => count(usize::try_from(d).unwrap_or(0), "day"),
        (d, h) => format!("{} {}", count(usize::try_from(d).unwrap_or(0), "day"), count(usize::try_from(h).unwrap_or(0), "hour")),
    }
}

/// Most outbound rows the sent page shows (newest first).
pub const SENT_SHOWN: u32 = 200;

pub(crate) async fn inboxes(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let now = state.clock.now();
    let inboxes = meta.list_inboxes(Some(&session.owner)).await.map_err(|e| unavailable(&e))?;
    let agents = meta.list_agents(Some(&session.owner)).await.map_err(|e| unavailable(&e))?;
    let names: std::collections::HashMap<String, String> =
        agents.iter().map(|a| (a.id.to_string(), a.name.clone().unwrap_or_else(|| "(no name)".to_owned()))).collect();
    let csrf = session.csrf.as_str();
    Ok(layout(
        "Inboxes",
        Nav::Inboxes,
        Some(csrf),
        flash(&uri),
        html! {
            p { a href="/console/sent" { "What your agents sent: delivery state and bounces" } }
            @if inboxes.is_empty() { p { "No inboxes yet." } }
            ul.items {
                @for i in &inboxes {
                    @let expired = i.expires_at.is_some_and(|e| e <= now);
                    @let status = if expired { "expired".to_owned() } else { i.status.to_string() };
                    li {
                        a href=(format!("/console/inboxes/{}", i.address)) { (i.address.as_str()) }
                        " · " span.state { (status) }
                        " · agent " (names.get(i.agent.as_str()).map_or("(another)", String::as_str)) " " code { (i.agent.as_str()) }
                        @if let Some(e) = i.expires_at { " · expires " (when(e)) }
                        " · " a href=(format!("/console/sent?inbox={}", i.address)) { "sent" }
                        @if !expired {
                            @if i.status == agentkeys_core::InboxStatus::Active {
                                (gated_form(&format!("/console/inboxes/{}/disable", i.address), csrf, "Disable inbox", true, html! {}))
                            } @else {
                                (gated_form(&format!("/console/inboxes/{}/enable", i.address), csrf, "Enable inbox", false, html! {}))
                            }
                        }
                    }
                }
            }
            h2 { "Create an inbox for an agent" }
            @if agents.is_empty() { p { "No agents yet: approve a pairing first." } }
            @else {
                (gated_form("/console/inboxes", csrf, "Create inbox", false, html! {
                    label for="new-inbox-agent" { "Agent" }
                    select #new-inbox-agent name="agent" {
                        @for a in &agents { option value=(a.id.as_str()) { (a.name.as_deref().unwrap_or("(no name)")) " (" (a.id.as_str()) ")" } }
                    }
                    label for="new-inbox-address" { "Address (on a domain this server hosts)" }
                    input #new-inbox-address type="email" name="address" placeholder="signup@example.com" autocomplete="off" required;
                    label for="new-inbox-hours" { "Ends after hours (empty: no end; at most " (super::actions::MAX_INBOX_HOURS) ")" }
                    input #new-inbox-hours type="number" name="hours" min="1" max=(super::actions::MAX_INBOX_HOURS);
                }))
                p.hint { "The agent reads or sends from it once a grant covers it (Agents page)." }
            }
        },
    )
    .into_response())
}

/// The owner's sent mail: outbound queue rows (to other servers) with their
/// delivery state, attempts and last reply; `?inbox=` narrows to one of the
/// owner's inboxes (another owner's is the 404 page).
pub(crate) async fn sent(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let q = query(&uri);
    let inbox = match param(&q, "inbox") {
        Some(address) => Some(own_inbox(&state, &session, address).await?),
        None => None,
    };
    let rows = meta
        .sent_by_owner(&session.owner, inbox.as_ref().map(|i| &i.address), SENT_SHOWN)
        .await
        .map_err(|e| unavailable(&e))?;
    let inboxes = meta.list_inboxes(Some(&session.owner)).await.map_err(|e| unavailable(&e))?;
    let names: std::collections::HashMap<String, String> = meta
        .list_agents(Some(&session.owner))
        .await
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .map(|a| (a.id.to_string(), a.name.unwrap_or_else(|| "(no name)".to_owned())))
        .collect();
    let agent_of = |sender: &agentkeys_core::Address| -> String {
        inboxes
            .iter()
            .find(|i| i.address == *sender)
            .and_then(|i| names.get(i.agent.as_str()).cloned())
            .unwrap_or_else(|| "(inbox removed)".to_owned())
    };
    let bounced = rows.iter().filter(|r| r.state == "bounced").count();
    let title = match &inbox {
        Some(i) => format!("Sent from {}", i.address),
        None => "Sent mail".to_owned(),
    };
    Ok(layout(
        &title,
        Nav::Inboxes,
        Some(&session.csrf),
        None,
        html! {
            p { (count(rows.len(), "recipient")) " (newest first, at most " (SENT_SHOWN) "), " (bounced) " bounced. Mail to inboxes on this server is delivered at once and not listed." }
            @if rows.is_empty() { p { "Nothing sent to other servers yet." } }
            ul.items.sent {
                @for r in &rows {
                    li {
                        div.head {
                            span class=(format!("state {}", r.state)) { (r.state) } " to " code { (r.recipient) }
                        }
                        div { "From " (r.sender.as_str()) " (agent " (agent_of(&r.sender)) ") · queued " (when(r.queued_at)) " · " (r.size) " bytes" }
                        div { (count(usize::try_from(r.attempts).unwrap_or(usize::MAX), "attempt"))
                            @if r.state == "queued" || r.state == "deferred" { " · next try " (when(r.next_attempt_at)) } }
                        @if let Some(reply) = &r.last_response { div.reason { "Last reply: " (reply) } }
                    }
                }
            }
        },
    )
    .into_response())
}

pub(crate) async fn inbox(
    State(state): State<ApiState>,
    session: Session,
    Path(address): Path<String>,
) -> Result<Response, ConsoleError> {
    let inbox = own_inbox(&state, &session, &address).await?;
    let mail = state.mail.as_ref().ok_or(ConsoleError::Unavailable)?;
    let page = PageQuery { after: None, before: None, order: ListOrder::default(), limit: INBOX_PAGE };
    let rows = mail.index().list_messages(&session.owner, &inbox.address, &page).await.map_err(|e| unavailable(&e))?;
    let mut listed = Vec::with_capacity(rows.len());
    for row in &rows {
        let raw = mail.get(&row.key()).await.map_err(|e| unavailable(&e))?;
        let shown = raw.as_deref().and_then(mail_view::view).unwrap_or_default();
        listed.push((row, shown));
    }
    Ok(layout(
        inbox.address.as_str(),
        Nav::Inboxes,
        Some(&session.csrf),
        None,
        html! {
            @if listed.is_empty() { p { "No messages." } }
            ul.items {
                @for (row, v) in &listed {
                    li {
                        a href=(format!("/console/inboxes/{}/messages/{}", inbox.address, row.id)) {
                            @if v.subject.is_empty() { "(no subject)" } @else { (v.subject) }
                        }
                        " · from " (v.from) " · " (when(row.received_at)) " · " (row.size) " bytes"
                    }
                }
            }
        },
    )
    .into_response())
}

pub(crate) async fn message(
    State(state): State<ApiState>,
    session: Session,
    Path((address, id)): Path<(String, String)>,
) -> Result<Response, ConsoleError> {
    let inbox = own_inbox(&state, &session, &address).await?;
    let id = Ulid::from_string(&id).map_err(|_| ConsoleError::NotFound)?;
    let mail = state.mail.as_ref().ok_or(ConsoleError::Unavailable)?;
    let raw = mail
        .get(&BlobKey::message(&session.owner, &inbox.address, id))
        .await
        .map_err(|e| unavailable(&e))?
        .ok_or(ConsoleError::NotFound)?;
    let v = mail_view::view(&raw).ok_or(ConsoleError::NotFound)?;
    Ok(layout(
        if v.subject.is_empty() { "(no subject)" } else { &v.subject },
        Nav::Inboxes,
        Some(&session.csrf),
        None,
        html! {
            dl.facts {
                dt { "From" } dd { (v.from) }
                dt { "To" } dd { (v.to) }
                dt { "Date" } dd { (v.date) }
                dt { "Verdicts" } dd { (v.verdicts.as_deref().unwrap_or("none")) }
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
            p { a href=(format!("/console/inboxes/{}", inbox.address)) { "Back to " (inbox.address.as_str()) } }
        },
    )
    .into_response())
}

/// Records the chain check reads per store call.
pub const VERIFY_PAGE: u32 = 1000;

/// What the audit page says about the whole chain (the same walk as
/// `agentkeys audit verify`; the checkpoint's signature is the CLI's to check).
enum ChainCheck {
    Intact { records: u64, head: u64, checkpoint: Option<(u64, agentkeys_core::UnixTime, bool)> },
    Broken { seq: u64, reason: String },
}

async fn check_chain(meta: &dyn agentkeys_store::MetadataStore) -> Result<ChainCheck, ConsoleError> {
    let checkpoint = meta.last_checkpoint().await.map_err(|e| unavailable(&e))?;
    let mut verifier = agentkeys_audit::Verifier::new();
    let (mut records, mut at_checkpoint) = (0u64, None);
    loop {
        let after = verifier.head().seq;
        let page = match meta.audit_list(after, VERIFY_PAGE).await {
            Ok(page) => page,
            Err(e @ agentkeys_store::StoreError::AuditUnreadable { .. }) => {
                return Ok(ChainCheck::Broken { seq: after + 1, reason: e.to_string() });
            }
            Err(e) => return Err(unavailable(&e)),
        };
        if page.is_empty() {
            break;
        }
        for r in &page {
            if let Err(broken) = verifier.push(r) {
                return Ok(ChainCheck::Broken { seq: broken.seq, reason: broken.reason.to_string() });
            }
            records += 1;
            if checkpoint.as_ref().is_some_and(|c| c.seq == r.seq) {
                at_checkpoint = Some(r.hash);
            }
        }
    }
    Ok(ChainCheck::Intact {
        records,
        head: verifier.head().seq,
        checkpoint: checkpoint.map(|c| (c.seq, c.ts, at_checkpoint == Some(c.hash))),
    })
}

/// A time of the audit filter, in UTC: `2026-12-07T16:05` (what a
/// `datetime-local` field sends), with seconds, or a date alone (midnight).
pub(crate) fn parse_time(field: &str, text: &str) -> Result<agentkeys_core::UnixTime, ConsoleError> {
    let bad = || ConsoleError::BadRequest(format!("{field}: a UTC time like 2026-12-07T16:05 or a date like 2026-12-07"));
    let civil = text
        .trim()
        .parse::<jiff::civil::DateTime>()
        .or_else(|_| text.trim().parse::<jiff::civil::Date>().map(|d| d.to_datetime(jiff::civil::Time::midnight())))
        .map_err(|_| bad())?;
    Ok(civil.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?.timestamp().as_second())
}

/// One line of the audit page: a record, or the credential reads of one agent
/// in one hour folded into a count.
struct AuditLine<'r> {
    record: &'r agentkeys_audit::AuditRecord,
    reads: usize,
}

/// Folds credential reads (`credential.read`, `credential.oidc`; newest
/// first) into one line per agent, operation and hour.
fn collapse<'r>(records: &[&'r agentkeys_audit::AuditRecord]) -> Vec<AuditLine<'r>> {
    let mut lines: Vec<AuditLine<'r>> = Vec::new();
    let mut folded: std::collections::HashMap<(String, i64), usize> = std::collections::HashMap::new();
    for r in records {
        if r.operation == crate::backend::OP_CREDENTIAL_READ || r.operation == crate::backend::OP_CREDENTIAL_OIDC {
            let key = (format!("{} {}", r.actor, r.operation), r.ts.div_euclid(3600));
            if let Some(&i) = folded.get(&key) {
                lines[i].reads += 1;
                continue;
            }
            folded.insert(key, lines.len());
            lines.push(AuditLine { record: r, reads: 1 });
        } else {
            lines.push(AuditLine { record: r, reads: 0 });
        }
    }
    lines
}

pub(crate) async fn audit(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let q = query(&uri);
    let agent = param(&q, "agent");
    let operation = param(&q, "operation");
    let from = param(&q, "from").map(|t| parse_time("from", t)).transpose()?;
    let to = param(&q, "to").map(|t| parse_time("to", t)).transpose()?;
    // Filtered by the store, newest first, a bounded page at a time, until
    // the page's lines are there (credential reads fold into one line per
    // agent and hour, so a line may take many records) or AUDIT_SCANNED
    // records were read.
    let filter = agentkeys_store::AuditFilter {
        agent: agent.map(str::to_owned),
        operation: operation.map(str::to_owned),
        from,
        to,
    };
    let mut newest_first: Vec<agentkeys_audit::AuditRecord> = Vec::new();
    loop {
        let before = newest_first.last().map(|r| r.seq);
        let page = meta
            .audit_search_for_owner(&session.owner, &filter, before, AUDIT_PAGE)
            .await
            .map_err(|e| unavailable(&e))?;
        let full = page.len() == AUDIT_PAGE as usize;
        newest_first.extend(page);
        let refs: Vec<&agentkeys_audit::AuditRecord> = newest_first.iter().collect();
        if !full || newest_first.len() >= AUDIT_SCANNED || collapse(&refs).len() > AUDIT_SHOWN {
            break;
        }
    }
    let records = newest_first;
    let names: std::collections::HashMap<String, String> = meta
        .list_agents(Some(&session.owner))
        .await
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .map(|a| (a.id.to_string(), a.name.unwrap_or_else(|| "(no name)".to_owned())))
        .collect();
    let who = |actor: &agentkeys_audit::Actor| -> String {
        match actor {
            agentkeys_audit::Actor::Owner(o) if *o == session.owner => "you".to_owned(),
            agentkeys_audit::Actor::Agent(a) => match names.get(a.as_str()) {
                Some(name) => format!("agent {name}"),
                None => format!("agent {a}"),
            },
            other => other.to_string(),
        }
    };
    let newest: Vec<&agentkeys_audit::AuditRecord> = records.iter().collect();
    let lines = collapse(&newest);
    let shown: Vec<&AuditLine<'_>> = lines.iter().take(AUDIT_SHOWN).collect();
    let chain = check_chain(meta.as_ref()).await?;
    Ok(layout(
        "Audit",
        Nav::Audit,
        Some(&session.csrf),
        None,
        html! {
            @match &chain {
                ChainCheck::Intact { records, head, checkpoint } => {
                    p.flash role="status" {
                        "Chain intact: " (records) " records verified, head #" (head) "."
                        @match checkpoint {
                            Some((seq, ts, true)) => { " Last checkpoint #" (seq) " (" (when(*ts)) ") matches the chain." }
                            Some((seq, _, false)) => { strong { " Last checkpoint #" (seq) " does NOT match the chain." } }
                            None => { " No checkpoint yet." }
                        }
                    }
                }
                ChainCheck::Broken { seq, reason } => {
                    p.error role="alert" { "The audit chain is broken at record #" (seq) ": " (reason) ". Run agentkeys audit verify on the server." }
                }
            }
            form.filters method="get" action="/console/audit" {
                label for="agent" { "Agent id" }
                input #agent type="text" name="agent" value=(agent.unwrap_or(""));
                label for="operation" { "Operation" }
                input #operation type="text" name="operation" value=(operation.unwrap_or("")) placeholder="grant.revoke";
                label for="from" { "From (UTC)" }
                input #from type="datetime-local" name="from" value=(param(&q, "from").unwrap_or(""));
                label for="to" { "To (UTC, not included)" }
                input #to type="datetime-local" name="to" value=(param(&q, "to").unwrap_or(""));
                button type="submit" { "Filter" }
            }
            p { (records.len()) " records (the newest that match; credential reads counted per agent and hour); " (shown.len()) " lines shown." }
            ol.audit {
                @for line in &shown {
                    @let r = line.record;
                    li {
                        div.head {
                            span.op { (r.operation) @if line.reads > 1 { " × " (line.reads) " in this hour" } }
                            " " span.state { (r.outcome.as_str()) }
                        }
                        div { (who(&r.actor)) " · " (when(r.ts)) " · #" (r.seq) }
                        div { "Subject " code { (names.get(r.subject.as_str()).map_or(r.subject.as_str(), |n| n.as_str())) } }
                        @if let Some(gate) = r.detail.pointer("/approval/gate").or_else(|| r.detail.get("gate")).and_then(|g| g.as_str()) {
                            div { "Gate " strong { (gate) } }
                        }
                        @if let Some(reason) = r.detail.get("reason").and_then(|g| g.as_str()) {
                            div.reason { "Reason: " (reason) }
                        }
                    }
                }
            }
        },
    )
    .into_response())
}

pub(crate) async fn passkeys(State(state): State<ApiState>, session: Session) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let passkeys = meta.list_passkeys(&session.owner).await.map_err(|e| unavailable(&e))?;
    Ok(layout(
        "Passkeys",
        Nav::Passkeys,
        Some(&session.csrf),
        None,
        html! {
            ul.items {
                @for p in &passkeys {
                    li { (p.name) " · registered " (when(p.created_at)) " · last used "
                        (p.last_used_at.map_or_else(|| "never".to_owned(), when)) }
                }
            }
            p.hint { "Add another with " code { "agentkeys owner passkey add" } "." }
        },
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::parse_time;
    use proptest::prelude::*;

    #[test]
    fn lifetimes_and_counts_read_as_words() {
        use super::{count, lifetime};
        assert_eq!(lifetime(2 * 86_400), "2 days");
        assert_eq!(lifetime(86_400 + 6 * 3600 + 59), "1 day 6 hours");
        assert_eq!(lifetime(3600), "1 hour");
        assert_eq!(lifetime(59), "under an hour");
        assert_eq!((count(1, "attempt"), count(0, "attempt")), ("1 attempt".to_owned(), "0 attempts".to_owned()));
    }

    #[test]
    fn audit_times_are_utc_minutes_seconds_or_dates() {
        assert_eq!(parse_time("from", "2026-12-07T16:05").unwrap(), 1_796_659_500);
        assert_eq!(parse_time("from", "2026-12-07T16:05:09").unwrap(), 1_796_659_509);
        assert_eq!(parse_time("from", "2026-12-07").unwrap(), 1_796_601_600);
        for bad in ["yesterday", "2026-13-01", "16:05", "2026-12-07T25:00", "1796659500"] {
            assert!(parse_time("to", bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Every second from 1970 to 2100 printed as the console prints it
        /// (minus the zone) parses back to itself.
        #[test]
        fn printed_times_parse_back(t in 0i64..4_102_444_800) {
            let printed = agentkeys_core::time::rfc3339(t);
            prop_assert_eq!(parse_time("from", printed.trim_end_matches('Z')).unwrap(), t);
        }
    }
}
