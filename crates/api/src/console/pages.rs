//! The console's HTML (maud: every interpolation is escaped). No inline script
//! or style: the page loads `/console/static/console.css` and, where a passkey
//! is asked, `/console/static/console.js`.

use agentkeys_core::time::rfc3339;
use agentkeys_core::UnixTime;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// A rendered page.
pub(crate) struct Page(Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = self.0.into_string().into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        response
    }
}

/// Which section the navigation marks as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Approvals,
    Agents,
    Inboxes,
    Audit,
    Review,
    Passkeys,
    Notifications,
    None,
}

/// The signed-in frame around a page: navigation, sign-out form, content.
pub(crate) fn layout(title: &str, nav: Nav, csrf: Option<&str>, flash: Option<&str>, content: Markup) -> Page {
    let link = |href: &str, label: &str, me: Nav| {
        html! {
            @if nav == me { a href=(href) aria-current="page" { (label) } } @else { a href=(href) { (label) } }
        }
    };
    Page(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · AgentKeys console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/console" { "AgentKeys" }
                    @if let Some(csrf) = csrf {
                        nav aria-label="Sections" {
                            (link("/console", "Approvals", Nav::Approvals))
                            (link("/console/agents", "Agents", Nav::Agents))
                            (link("/console/inboxes", "Inboxes", Nav::Inboxes))
                            (link("/console/review", "Review", Nav::Review))
                            (link("/console/audit", "Audit", Nav::Audit))
                            (link("/console/passkeys", "Passkeys", Nav::Passkeys))
                            (link("/console/notifications", "Notifications", Nav::Notifications))
                        }
                        form.signout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(flash) = flash { p.flash role="status" { (flash) } }
                    p.error role="alert" hidden id="gate-error" {}
                    (content)
                }
            }
        }
    })
}

/// A page with one message (errors).
pub(crate) fn message_page(title: &str, text: &str) -> Page {
    layout(title, Nav::None, None, None, html! { p { (text) } p { a href="/console" { "Back to the console" } } })
}

pub(crate) fn when(t: UnixTime) -> String {
    rfc3339(t).replace('T', " ").replace('Z', " UTC")
}

/// A form whose submission first asks the passkey (the script fills
/// `challenge` and `assertion`); `fields` are the action's own fields.
pub(crate) fn gated_form(action: &str, csrf: &str, label: &str, danger: bool, fields: Markup) -> Markup {
    html! {
        form.gated method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            (fields)
            input type="hidden" name="challenge" value="";
            input type="hidden" name="assertion" value="";
            @if danger { button.danger type="submit" { (label) } } @else { button type="submit" { (label) } }
        }
    }
}

pub(crate) fn login_page() -> Page {
    layout(
        "Sign in",
        Nav::None,
        None,
        None,
        html! {
            p { "Sign in with the passkey you registered (Touch ID, Windows Hello, a phone or a security key)." }
            form #login method="post" action="/console/login/finish" {
                label for="owner" { "Owner id or email" }
                input #owner type="text" name="owner" autocomplete="username" required;
                button type="submit" { "Sign in with a passkey" }
            }
            p.hint { "No passkey yet? Run " code { "agentkeys owner passkey add" } " and open the link it prints." }
        },
    )
}

pub(crate) fn register_page() -> Page {
    layout(
        "Register a passkey",
        Nav::None,
        None,
        None,
        html! {
            p { "This one-time link registers a passkey for your owner account. Nothing happens until you press the button." }
            form #register method="post" action="/console/passkey/finish" {
                label for="passkey-name" { "A name for this passkey" }
                input #passkey-name type="text" name="name" value="my passkey" maxlength="64" required;
                button type="submit" { "Register a passkey" }
            }
        },
    )
}

/// The script-free escape of a mail body that was already sanitized.
pub(crate) fn sanitized(html: &str) -> Markup {
    PreEscaped(html.to_owned())
}
