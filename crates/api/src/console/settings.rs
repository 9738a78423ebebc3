//! `GET/POST /console/notifications`: which notices the owner gets at their
//! address. Changing them is gated like any action (a passkey or a mailed
//! code): turning the audit notice off is what someone holding a stolen
//! session would do first.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::actions::{evidence, verified};
use super::pages::{Nav, gated_form, layout};
use super::{ConsoleError, Session, meta, unavailable};
use crate::ApiState;
use crate::notify::NoticeKind;

pub(crate) async fn page(State(state): State<ApiState>, session: Session, uri: Uri) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let off = meta.notification_settings(&session.owner).await.map_err(|e| unavailable(&e))?;
    let owners = meta.list_owners().await.map_err(|e| unavailable(&e))?;
    let address = owners.into_iter().find(|o| o.id == session.owner).and_then(|o| o.email);
    let saved = uri.query().is_some_and(|q| q.split('&').any(|p| p == "done=saved"));
    let csrf = session.csrf.as_str();
    Ok(layout(
        "Notifications",
        Nav::Notifications,
        Some(csrf),
        saved.then_some("Notification settings saved."),
        html! {
            @if let Some(a) = &address {
                p { "Notices are mailed to " strong { (a) } ". We send to this address and never read it." }
            } @else {
                p { "No email address is on file for you: no notice can be sent. The operator sets it with " code { "agentkeys owner add --email" } "." }
            }
            (gated_form("/console/notifications", csrf, "Save with my passkey", false, html! {
                fieldset {
                    legend { "Mail me when there is" }
                    @for kind in NoticeKind::ALL {
                        @let id = format!("notice-{}", kind.as_str());
                        div.check {
                            @if off.iter().any(|k| k == kind.as_str()) {
                                input id=(id) type="checkbox" name=(kind.as_str()) value="on";
                            } @else {
                                input id=(id) type="checkbox" name=(kind.as_str()) value="on" checked;
                            }
                            label for=(id) { (kind.describe()) }
                        }
                    }
                }
            }))
            p.hint { "The same settings from the command line: " code { "agentkeys owner notifications --pairing on|off …" } }
        },
    )
    .into_response())
}

pub(crate) async fn save(State(state): State<ApiState>, session: Session, uri: Uri, body: Bytes) -> Result<Response, ConsoleError> {
    let (proof, fields) = verified(&state, &session, &uri, &body).await?;
    let changes: std::collections::BTreeMap<String, bool> = NoticeKind::ALL.iter().map(|k| (k.as_str().to_owned(), fields.get(k.as_str()) == Some("on"))).collect();
    let owner = agentkeys_approval::OwnerGate::owner(&proof).clone();
    crate::notify::change_settings(&state, &owner, &changes, evidence(&proof)).await.map_err(|e| match e {
        crate::error::ApiError::InvalidRequest { detail, .. } => ConsoleError::BadRequest(detail),
        crate::error::ApiError::OwnerObjectNotFound { .. } => ConsoleError::NotFound,
        other => unavailable(&format!("{other:?}")),
    })?;
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/console/notifications?done=saved")]).into_response())
}
