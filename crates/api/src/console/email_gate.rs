//! The email fallback gate (`email_code`): for an owner without a passkey at
//! hand, a gated console action can be approved with a single-use code mailed
//! to the owner's address, bound to that exact action like a passkey assertion.
//!
//! 1. `POST /console/email-code` (session + CSRF, the form's `path` and fields,
//!    as `/console/gate`): the server computes the action's canonical hash,
//!    stores a code for it (6 digits and a link token, both hashed; a random
//!    phrase) within the limits ([`EMAIL_CODES_PER_OWNER`],
//!    [`EMAIL_CODES_PER_ADDRESS`] per [`EMAIL_CODE_WINDOW_SECS`]), mails the
//!    digits, the phrase and the link to the owner, and answers the code's id
//!    and phrase, which the requesting screen shows.
//! 2. The owner either types the digits into the form, or opens the link
//!    (`GET /console/email-link/{id}#t=<token>`: a page with the phrase, what
//!    the action is, and one button; **opening it changes nothing**, so a mail
//!    scanner that follows links and runs scripts approves nothing) and presses
//!    the button (`POST /console/email-link/{id}`, the token from the fragment):
//!    only that POST approves the link, once.
//! 3. The form is posted with `email_code_id` (and the digits, or none after
//!    the link was approved): the handler recomputes the action's hash from the
//!    request and consumes the code for it, once across every node; the
//!    action's audit record says `gate: email_code`. A wrong code counts a try;
//!    after [`EMAIL_CODE_MAX_TRIES`] the code is locked. A code lives
//!    [`EMAIL_CODE_TTL_SECS`].

use std::net::SocketAddr;

use agentkeys_approval::{ActionHash, Gate, OwnerGate};
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::OwnerId;
use agentkeys_store::{CodeCheck, EmailCodeIssue, EmailCodeLimits, EmailCodeRecord, EmailCodeState, LinkApproval};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use maud::html;
use rand::{Rng as _, RngCore as _};
use serde_json::json;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::pages::{Nav, layout, when};
use super::{ConsoleError, FormFields, Session, action_hash, meta, token_hash, unavailable};
use crate::ApiState;
use crate::notify::Notice;

/// How long an emailed code (and its link) can be used.
pub const EMAIL_CODE_TTL_SECS: i64 = 10 * 60;
/// Wrong codes tried before a code locks.
pub const EMAIL_CODE_MAX_TRIES: u32 = 5;
/// The window of the issuing limits.
pub const EMAIL_CODE_WINDOW_SECS: i64 = 60 * 60;
/// Codes one owner may ask for per window.
pub const EMAIL_CODES_PER_OWNER: u32 = 10;
/// Codes one client address (IPv6 by /64) may ask for per window, whoever it signs in as.
pub const EMAIL_CODES_PER_ADDRESS: u32 = 20;

/// Words of the phrase (64, so three of them carry 18 bits: enough to tell
/// two requests apart at a glance, not a secret).
const WORDS: [&str; 64] = [
    "amber", "anchor", "apple", "arrow", "aspen", "badger", "basil", "beacon", "birch", "bison", "bramble", "breeze",
    "brook", "cactus", "canyon", "cedar", "cherry", "cinder", "clover", "comet", "coral", "crane", "dune", "ember",
    "falcon", "fern", "fjord", "flint", "garnet", "glacier", "granite", "harbor", "hazel", "heron", "indigo", "iris",
    "jasper", "juniper", "kestrel", "lagoon", "lantern", "lark", "lichen", "lotus", "maple", "marble", "meadow", "mint",
    "nectar", "oak", "orchid", "otter", "pebble", "pine", "quartz", "raven", "reef", "saffron", "spruce", "thistle",
    "tundra", "walnut", "willow", "zephyr",
];

/// Proof that the owner presented a mailed code (or its approved link) for
/// exactly this action: made only by [`check`], after the store consumed it.
#[derive(Debug)]
pub(crate) struct EmailCodeVerified {
    owner: OwnerId,
    code_id: String,
}

impl EmailCodeVerified {
    /// The code's id (for the audit record).
    pub(crate) fn code_id(&self) -> &str {
        &self.code_id
    }
}

impl OwnerGate for EmailCodeVerified {
    fn owner(&self) -> &OwnerId {
        &self.owner
    }

    fn gate(&self) -> Gate {
        Gate::EmailCode
    }
}

/// What a code's digits are stored as: HMAC-SHA256 under the server's code
/// key (seed-derived) of the code's id and digits, so the stored value says
/// nothing about the digits to anyone without the seed.
fn code_hash(key: &[u8; 32], id: &str, digits: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"agentkeys-email-code-v2\n");
    mac.update(id.as_bytes());
    mac.update(b"\n");
    mac.update(digits.trim().as_bytes());
    mac.finalize().into_bytes().into()
}

/// The hash a link's token is stored as.
fn link_hash(token: &str) -> [u8; 32] {
    token_hash(&format!("email-link\n{token}"))
}

fn random_text(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn phrase() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..3).map(|_| WORDS[rng.gen_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
}

/// What a gated action does, in words, from its path and the fields that are
/// not secret (never the pairing's 6 digits or its pair code).
pub(crate) fn describe(path: &str, fields: &FormFields) -> String {
    let parts: Vec<&str> = path.trim_start_matches("/console/").split('/').collect();
    let mut text = match parts.as_slice() {
        ["pairings", "approve"] => "approve a pairing request".to_owned(),
        ["grants"] => "create a grant".to_owned(),
        ["grants", id, "change"] => format!("change grant {id}"),
        ["grants", id, "revoke"] => format!("revoke grant {id}"),
        ["keys", id, "revoke"] => format!("revoke key {id}"),
        ["agents", id, "stop"] => format!("stop agent {id} (revoke all its keys and grants)"),
        ["notifications"] => "change your notification settings".to_owned(),
        _ => format!("the action {path}"),
    };
    let shown: Vec<String> = ["agent", "inbox", "scopes", "days", "name", "address"]
        .iter()
        .filter_map(|k| fields.get(k).filter(|v| !v.is_empty()).map(|v| format!("{k} {v}")))
        .collect();
    if !shown.is_empty() {
        text.push_str(&format!(" ({})", shown.join(", ")));
    }
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// `POST /console/email-code`: mails a code for the action the form describes.
pub(crate) async fn request(
    State(state): State<ApiState>,
    session: Session,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let notifier = state.notifier.as_ref().ok_or(ConsoleError::Forbidden(
        "This server cannot send mail, so there is no email fallback here. Use your passkey.",
    ))?;
    let console = super::config(&state)?;
    let origin = console.origin().to_owned();
    let mut fields = FormFields::parse(&body);
    session.check_csrf(fields.get("csrf"))?;
    fields.single_valued()?;
    let path = fields.get("path").unwrap_or("").to_owned();
    if !super::actions::is_gated(&path) {
        return Err(ConsoleError::BadRequest("path: not a gated console action".to_owned()));
    }
    fields.0.retain(|(k, _)| k != "path");
    let action = action_hash(&session.owner, &path, &fields);
    let owners = meta.list_owners().await.map_err(|e| unavailable(&e))?;
    if !owners.iter().any(|o| o.id == session.owner && o.email.is_some()) {
        return Err(ConsoleError::Forbidden(
            "No email address is on file for you, so no code can be mailed. Ask the operator to set one, or use your passkey.",
        ));
    }
    let now = state.clock.now();
    let id = random_text(16);
    let digits = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
    let token = random_text(32);
    let summary = describe(&path, &fields);
    let record = EmailCodeRecord {
        id: id.clone(),
        owner: session.owner.clone(),
        bound_to: action.0,
        code_hash: code_hash(console.code_key(), &id, &digits),
        link_hash: link_hash(&token),
        phrase: phrase(),
        summary: summary.clone(),
        requested_from: connect.map(|Extension(ConnectInfo(a))| agentkeys_core::peer::address_key(a.ip()).to_string()),
        created_at: now,
        expires_at: now + EMAIL_CODE_TTL_SECS,
    };
    let limits = EmailCodeLimits {
        since: now - EMAIL_CODE_WINDOW_SECS,
        per_owner: EMAIL_CODES_PER_OWNER,
        per_address: EMAIL_CODES_PER_ADDRESS,
    };
    match meta.issue_email_code(&record, limits).await.map_err(|e| unavailable(&e))? {
        EmailCodeIssue::Issued => {}
        EmailCodeIssue::OwnerLimited | EmailCodeIssue::AddressLimited => {
            return Err(ConsoleError::Forbidden("Too many codes were asked for in the last hour. Wait, or use your passkey."));
        }
    }
    let event = AuditEvent::ok(Actor::Owner(session.owner.clone()), OP_EMAIL_CODE, session.owner.as_str()).with_detail(json!({
        "owner": session.owner, "code": id, "action": path, "expires_at": record.expires_at,
    }));
    meta.audit_append(&event).await.map_err(|e| unavailable(&e))?;
    let link = format!("{origin}/console/email-link/{id}#t={token}");
    let notice = Notice::email_code(&digits, &record.phrase, &summary, &link, EMAIL_CODE_TTL_SECS / 60);
    notifier.notify(&session.owner, &notice, now).await.map_err(|e| unavailable(&e))?;
    Ok(Json(json!({
        "id": id,
        "phrase": record.phrase,
        "expires_at": agentkeys_core::time::rfc3339(record.expires_at),
        "tries": EMAIL_CODE_MAX_TRIES,
    }))
    .into_response())
}

/// The audit operation of a mailed code.
pub const OP_EMAIL_CODE: &str = "owner.email_code";

/// Consumes the code `id` for `action` (the digits, or its approved link):
/// the proof, or why not.
pub(crate) async fn check(
    state: &ApiState,
    session: &Session,
    action: &ActionHash,
    id: &str,
    digits: Option<&str>,
) -> Result<EmailCodeVerified, ConsoleError> {
    let meta = meta(state)?;
    let key = super::config(state)?.code_key();
    let presented = digits.map(str::trim).filter(|d| !d.is_empty()).map(|d| code_hash(key, id, d));
    let now = state.clock.now();
    let outcome = meta
        .consume_email_code(&session.owner, id, &action.0, presented.as_ref(), EMAIL_CODE_MAX_TRIES, now)
        .await
        .map_err(|e| unavailable(&e))?;
    match outcome {
        CodeCheck::Consumed => Ok(EmailCodeVerified { owner: session.owner.clone(), code_id: id.to_owned() }),
        CodeCheck::Wrong { tries_left: 0 } => {
            Err(ConsoleError::Forbidden("Wrong code. That was the last try: this code is locked. Ask for a new one."))
        }
        CodeCheck::Wrong { .. } => Err(ConsoleError::Forbidden(
            "Wrong code. Nothing was done. Check the digits in the mail and try again (a code locks after 5 wrong tries).",
        )),
        CodeCheck::NotApproved => Err(ConsoleError::Forbidden(
            "The link in the mail was not approved yet: open it and press its button, or type the code.",
        )),
        CodeCheck::Refused(EmailCodeState::Locked) => {
            Err(ConsoleError::Forbidden("Too many wrong codes: this code is locked. Ask for a new one."))
        }
        CodeCheck::Refused(EmailCodeState::Expired) => Err(ConsoleError::Forbidden("This code expired. Ask for a new one.")),
        CodeCheck::Refused(_) => Err(ConsoleError::Forbidden("This code was used already. Ask for a new one.")),
        CodeCheck::NotFound => Err(ConsoleError::Forbidden(
            "This code is not for this action. Nothing was done. Ask for a code from the form you submit.",
        )),
    }
}

fn state_text(state: EmailCodeState) -> &'static str {
    match state {
        EmailCodeState::Waiting => "waiting for your approval",
        EmailCodeState::LinkApproved => "approved with this link: go back to the screen that asked and press its button",
        EmailCodeState::Used => "used: the action was done",
        EmailCodeState::Expired => "expired",
        EmailCodeState::Locked => "locked after too many wrong codes",
    }
}

/// `GET /console/email-link/{id}`: what the link approves, the phrase, one
/// button. Changes nothing (mail scanners open links).
pub(crate) async fn link_page(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let now = state.clock.now();
    let view = meta.email_code_view(&id, EMAIL_CODE_MAX_TRIES, now).await.map_err(|e| unavailable(&e))?;
    let view = view.ok_or(ConsoleError::NotFound)?;
    let waiting = view.state == EmailCodeState::Waiting;
    Ok(layout(
        "Approve an action",
        Nav::None,
        None,
        None,
        html! {
            p { "Check that the screen where you asked for this shows the same phrase:" }
            p.phrase { strong #email-phrase { (view.phrase) } }
            dl.facts {
                dt { "Action" } dd { (view.summary) }
                dt { "Owner" } dd { code { (view.owner.as_str()) } }
                dt { "Valid until" } dd { (when(view.expires_at)) }
                dt { "State" } dd #email-state { (state_text(view.state)) }
            }
            @if waiting {
                p { "Opening this page did nothing. Press the button only if you asked for this and the phrase matches." }
                form #email-link method="post" action=(format!("/console/email-link/{}", view.id)) {
                    input #email-link-token type="hidden" name="token" value="";
                    button type="submit" { "Approve this action" }
                }
            }
        },
    )
    .into_response())
}

/// `POST /console/email-link/{id}`: the button. Approves the link once; the
/// requesting screen then does the action.
pub(crate) async fn link_approve(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let meta = meta(&state)?;
    let fields = FormFields::parse(&body);
    let token = fields.get("token").unwrap_or("");
    let now = state.clock.now();
    let outcome = meta
        .approve_email_link(&id, &link_hash(token), EMAIL_CODE_MAX_TRIES, now)
        .await
        .map_err(|e| unavailable(&e))?;
    match outcome {
        LinkApproval::Approved(view) => {
            let event = AuditEvent::ok(Actor::Owner(view.owner.clone()), OP_EMAIL_LINK, view.owner.as_str())
                .with_detail(json!({ "owner": view.owner, "code": view.id }));
            meta.audit_append(&event).await.map_err(|e| unavailable(&e))?;
            Ok(layout(
                "Approved",
                Nav::None,
                None,
                None,
                html! {
                    p role="status" #email-approved { "Approved. Go back to the screen that shows \"" (view.phrase) "\" and press its button to finish." }
                    p { "This link cannot be used again." }
                },
            )
            .into_response())
        }
        LinkApproval::Refused(state) => Err(ConsoleError::BadRequest(format!("This link cannot approve anything now: it is {}.", state_text(state)))),
        LinkApproval::NotFound => Err(ConsoleError::NotFound),
    }
}

/// The audit operation of a link's button.
pub const OP_EMAIL_LINK: &str = "owner.email_link";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn descriptions_name_the_action_and_never_the_pairing_secrets() {
        let f = FormFields(vec![("pair_code".into(), "ABCD-EFGH".into()), ("confirmation".into(), "123456".into())]);
        let d = describe("/console/pairings/approve", &f);
        assert_eq!(d, "approve a pairing request");
        let g = FormFields(vec![("agent".into(), "0xab".into()), ("scopes".into(), "read".into())]);
        assert_eq!(describe("/console/grants", &g), "create a grant (agent 0xab, scopes read)");
        assert_eq!(describe("/console/keys/key_1/revoke", &FormFields::default()), "revoke key key_1");
    }

    proptest! {
        /// A code's hash depends on its id, digits and the server's key, so
        /// one code's digits never open another, and without the key the
        /// stored value cannot be matched to digits.
        #[test]
        fn code_hashes_are_per_code(a in "[A-Za-z0-9]{8}", b in "[A-Za-z0-9]{8}", d in "[0-9]{6}", e in "[0-9]{6}", k in any::<[u8; 32]>()) {
            let key = [7u8; 32];
            prop_assert_eq!(code_hash(&key, &a, &d) == code_hash(&key, &b, &e), a == b && d == e);
            prop_assert_eq!(code_hash(&key, &a, &d) == code_hash(&k, &a, &d), k == key);
            prop_assert_ne!(link_hash(&a), token_hash(&a));
        }

        /// Phrases are three words of the list.
        #[test]
        fn phrases_are_three_known_words(_n in 0u8..20) {
            let p = phrase();
            let words: Vec<&str> = p.split(' ').collect();
            prop_assert_eq!(words.len(), 3);
            prop_assert!(words.iter().all(|w| WORDS.contains(w)));
        }
    }
}
