//! The IMAP receive source: one task per domain logs in to the provider over
//! TLS (certificate validated), selects the mailbox, copies every message it
//! has not copied yet into our store through [`SmtpServer::ingest`], then
//! waits with IDLE (RFC 2177) and copies again when the server says something
//! changed. A dropped connection is reconnected with [`RECONNECT_BACKOFF`]; a
//! refused login is reported (the domain's backend status `auth_failed`, one
//! `backend.auth_failed` audit record per failure streak) and retried only
//! after [`AUTH_FAILED_BACKOFF`].
//!
//! **Once, across restarts.** The store keeps the mailbox's cursor
//! ([`ImportCursor`]): its UIDVALIDITY and the highest UID copied. Before a
//! message is stored, its UID and the message id it will be stored under are
//! written as the cursor's `pending` entry; after the store acknowledges it (its
//! index row committed), the cursor moves past it. A restart that finds a
//! pending entry asks the index whether that id was committed: if so the
//! message counts as copied, otherwise it is copied again under a new id (the
//! blob of the unacknowledged attempt is removed by reconcile, as for any
//! unacknowledged write). So a crash at any point neither loses nor duplicates
//! a message. A changed UIDVALIDITY invalidates every UID: the whole mailbox is
//! copied again (and logged), the only safe reading of RFC 3501 §2.3.1.1.
//!
//! Messages are read with `BODY.PEEK[]` (the provider's `\Seen` flags are left
//! alone) and never deleted at the provider.
//!
//! [`SmtpServer::ingest`]: agentkeys_smtp::SmtpServer::ingest
//! [`RECONNECT_BACKOFF`]: crate::RECONNECT_BACKOFF
//! [`AUTH_FAILED_BACKOFF`]: crate::AUTH_FAILED_BACKOFF

use std::future::Future;
use std::time::Duration;

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::Domain;
use agentkeys_smtp::{Fetched, IngestError};
use agentkeys_store::{ImportCursor, OP_BACKEND_AUTH_FAILED};
use futures_util::StreamExt as _;
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::oauth2::{TokenError, XOAuth2, xoauth2_response};
use crate::{
    AUTH_FAILED_BACKOFF, BackendContext, IDLE_RENEW, Login, ImapSettings, PROVIDER_TIMEOUT, RECONNECT_BACKOFF, now,
};

type Stream = tokio_rustls::client::TlsStream<TcpStream>;
type Session = async_imap::Session<Stream>;

/// Why a session with the provider ended.
#[derive(Debug)]
enum Stop {
    /// The server is shutting down.
    Shutdown,
    /// The provider refused the login (its reply, no secret).
    AuthFailed(String),
    /// Anything else: reconnect after the backoff.
    Failed(String),
}

/// Runs `step` under [`PROVIDER_TIMEOUT`]; an elapsed timeout is a [`Stop::Failed`].
async fn timed<T>(what: &str, step: impl Future<Output = Result<T, async_imap::error::Error>>) -> Result<T, Stop> {
    match tokio::time::timeout(PROVIDER_TIMEOUT, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Stop::Failed(format!("{what}: {err}"))),
        Err(_) => Err(Stop::Failed(format!("{what}: no answer within {PROVIDER_TIMEOUT:?}"))),
    }
}

fn store_failed(err: impl std::fmt::Display) -> Stop {
    Stop::Failed(format!("the store failed: {err}"))
}

/// The envelope sender the provider recorded (`Return-Path:` in the header
/// section), `""` when there is none.
pub fn return_path(message: &[u8]) -> String {
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_at_checked(12) else { continue };
        if name.eq_ignore_ascii_case(b"return-path:") {
            let value = String::from_utf8_lossy(value);
            let value = value.trim();
            let inner = value.strip_prefix('<').and_then(|v| v.split_once('>')).map_or(value, |(inner, _)| inner);
            return inner.chars().filter(|c| c.is_ascii_graphic() && *c != '<' && *c != '>').collect();
        }
    }
    String::new()
}

/// The task that follows one domain's mailbox.
pub struct Follower {
    ctx: BackendContext,
    domain: Domain,
    settings: ImapSettings,
    login: Login,
    /// The status last reported (a status is written when it changes).
    reported: Option<&'static str>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("domain", &self.domain).field("host", &self.settings.imap_host).finish_non_exhaustive()
    }
}

impl Follower {
    /// A follower of `settings`' mailbox for `domain`.
    pub fn new(ctx: BackendContext, domain: Domain, settings: ImapSettings, login: Login) -> Self {
        Self { ctx, domain, settings, login, reported: None }
    }

    /// Follows the mailbox until `shutdown`: sessions, each ended by a failure
    /// and followed by its backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures = 0usize;
        loop {
            let wait = match self.session(&shutdown, &mut failures).await {
                Stop::Shutdown => return,
                Stop::AuthFailed(reply) => {
                    self.auth_failed(&reply).await;
                    self.ctx.scaled(AUTH_FAILED_BACKOFF)
                }
                Stop::Failed(why) => {
                    failures += 1;
                    let wait = self.ctx.scaled(RECONNECT_BACKOFF[(failures - 1).min(RECONNECT_BACKOFF.len() - 1)]);
                    tracing::warn!(domain = %self.domain, host = %self.settings.imap_host, %why, ?wait, "IMAP backend: session ended; reconnecting");
                    metrics::counter!("agentkeys_backend_reconnects_total", "kind" => "imap").increment(1);
                    self.report("failing", Some(&why)).await;
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn report(&mut self, status: &'static str, detail: Option<&str>) {
        if self.reported == Some(status) && status == "running" {
            return;
        }
        if let Err(err) = self.ctx.store.set_mail_backend_status(&self.domain, status, detail, now()).await {
            tracing::warn!(domain = %self.domain, %err, "cannot record the mail backend's status");
        }
        self.reported = Some(status);
    }

    /// A refused login: the status says so (with what to do), and the first
    /// refusal of a streak is audited, so the owner and operator see it once,
    /// not once per retry.
    async fn auth_failed(&mut self, reply: &str) {
        let first = self.reported != Some("auth_failed");
        let detail = format!(
            "{} refused the login of {}: {reply}; set the {} again with `agentkeys domain set-backend {}`",
            self.settings.imap_host,
            self.settings.username,
            if matches!(self.login, Login::OAuth2(_)) { "OAuth2 refresh token" } else { "password" },
            self.domain
        );
        tracing::warn!(domain = %self.domain, host = %self.settings.imap_host, user = %self.settings.username, %reply,
            retry_in = ?self.ctx.scaled(AUTH_FAILED_BACKOFF), "IMAP backend: the provider refused the login");
        metrics::counter!("agentkeys_backend_auth_failures_total", "kind" => "imap").increment(1);
        self.report("auth_failed", Some(&detail)).await;
        if first {
            let event = AuditEvent::ok(Actor::System, OP_BACKEND_AUTH_FAILED, self.domain.as_str()).with_detail(json!({
                "kind": "imap",
                "server": format!("{}:{}", self.settings.imap_host, self.settings.imap_port),
                "user": self.settings.username,
                "reply": reply,
            }));
            if let Err(err) = self.ctx.store.audit_append(&event).await {
                tracing::error!(domain = %self.domain, %err, "cannot audit the refused login");
            }
        }
    }

    /// One session: connect, log in, select, resume the cursor, then copy and
    /// IDLE until something fails or the server shuts down.
    async fn session(&mut self, shutdown: &CancellationToken, failures: &mut usize) -> Stop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return Stop::Shutdown,
            connected = self.connect() => connected,
        };
        let mut session = match connected {
            Ok(session) => session,
            Err(stop) => return stop,
        };
        let mailbox = match timed("SELECT", session.select(&self.settings.mailbox)).await {
            Ok(mailbox) => mailbox,
            Err(stop) => return stop,
        };
        let mut cursor = match self.resume(mailbox.uid_validity.unwrap_or(0)).await {
            Ok(cursor) => cursor,
            Err(stop) => return stop,
        };
        *failures = 0;
        self.report("running", None).await;
        tracing::info!(domain = %self.domain, host = %self.settings.imap_host, mailbox = %self.settings.mailbox,
            last_uid = cursor.last_uid, "IMAP backend: following the mailbox");
        loop {
            if let Err(stop) = self.copy_new(&mut session, &mut cursor, shutdown).await {
                return stop;
            }
            // EXISTS that arrived during the copy went to the unsolicited
            // channel, not to the IDLE below: look again before idling.
            let mut changed = false;
            while session.unsolicited_responses.try_recv().is_ok() {
                changed = true;
            }
            if changed {
                continue;
            }
            let mut idle = session.idle();
            if let Err(stop) = timed("IDLE", idle.init()).await {
                return stop;
            }
            let (wait, interrupt) = idle.wait_with_timeout(IDLE_RENEW);
            let woke = tokio::select! {
                woke = wait => Some(woke),
                () = shutdown.cancelled() => None,
            };
            drop(interrupt);
            match woke {
                None => {
                    if let Ok(Ok(mut session)) = tokio::time::timeout(Duration::from_secs(2), idle.done()).await {
                        let _ = tokio::time::timeout(Duration::from_secs(2), session.logout()).await;
                    }
                    return Stop::Shutdown;
                }
                Some(Err(err)) => return Stop::Failed(format!("IDLE: {err}")),
                Some(Ok(_)) => {}
            }
            session = match timed("DONE", idle.done()).await {
                Ok(session) => session,
                Err(stop) => return stop,
            };
        }
    }

    async fn connect(&self) -> Result<Session, Stop> {
        let (host, port) = (self.settings.imap_host.as_str(), self.settings.imap_port);
        let tcp = match tokio::time::timeout(PROVIDER_TIMEOUT, TcpStream::connect((host, port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => return Err(Stop::Failed(format!("cannot connect to {host}:{port}: {err}"))),
            Err(_) => return Err(Stop::Failed(format!("cannot connect to {host}:{port}: timed out"))),
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| Stop::Failed(format!("{host} is not a TLS name: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.ctx.tls.clone());
        let tls = match tokio::time::timeout(PROVIDER_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => return Err(Stop::Failed(format!("TLS with {host}:{port} failed: {err}"))),
            Err(_) => return Err(Stop::Failed(format!("TLS with {host}:{port} timed out"))),
        };
        let mut client = async_imap::Client::new(tls);
        match tokio::time::timeout(PROVIDER_TIMEOUT, client.read_response()).await {
            Ok(Ok(Some(_))) => {}
            _ => return Err(Stop::Failed(format!("{host}:{port} sent no IMAP greeting"))),
        }
        let source = match &self.login {
            Login::Password(password) => {
                return match tokio::time::timeout(PROVIDER_TIMEOUT, client.login(&self.settings.username, password.expose())).await {
                    Ok(Ok(session)) => Ok(session),
                    Ok(Err((async_imap::error::Error::No(reply), _))) => Err(Stop::AuthFailed(reply)),
                    Ok(Err((err, _))) => Err(Stop::Failed(format!("LOGIN: {err}"))),
                    Err(_) => Err(Stop::Failed("LOGIN: no answer".to_owned())),
                };
            }
            Login::OAuth2(source) => source,
        };
        let (token, fresh) = match source.token().await {
            Ok(token) => token,
            Err(TokenError::Refused(why)) => return Err(Stop::AuthFailed(format!("the token endpoint refused the refresh token ({why})"))),
            Err(TokenError::Failed(why)) => return Err(Stop::Failed(format!("the token endpoint failed: {why}"))),
        };
        let auth = XOAuth2 { response: Some(xoauth2_response(&self.settings.username, &token)) };
        match tokio::time::timeout(PROVIDER_TIMEOUT, client.authenticate("XOAUTH2", auth)).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err((async_imap::error::Error::No(reply), _))) if !fresh => {
                // A cached token the provider no longer takes (expired or
                // revoked early): the next connection, after the first
                // reconnect wait, asks for a new one.
                source.forget().await;
                Err(Stop::Failed(format!("AUTHENTICATE XOAUTH2 refused a cached token ({reply}); refreshing it")))
            }
            Ok(Err((async_imap::error::Error::No(reply), _))) => Err(Stop::AuthFailed(reply)),
            Ok(Err((err, _))) => Err(Stop::Failed(format!("AUTHENTICATE XOAUTH2: {err}"))),
            Err(_) => Err(Stop::Failed("AUTHENTICATE XOAUTH2: no answer".to_owned())),
        }
    }

    /// The stored cursor for this UIDVALIDITY, its pending entry resolved by
    /// the index (stored: counted; not stored: copied again).
    async fn resume(&self, uid_validity: u32) -> Result<ImportCursor, Stop> {
        let validity = i64::from(uid_validity);
        let stored = self.ctx.store.import_cursor(&self.domain, &self.settings.mailbox).await.map_err(store_failed)?;
        let mut cursor = match stored {
            Some(cursor) if cursor.uid_validity == validity => cursor,
            Some(cursor) => {
                tracing::warn!(domain = %self.domain, old = cursor.uid_validity, new = validity,
                    "IMAP backend: the mailbox's UIDVALIDITY changed; every message in it is copied again");
                ImportCursor { uid_validity: validity, ..ImportCursor::default() }
            }
            None => ImportCursor { uid_validity: validity, ..ImportCursor::default() },
        };
        if let Some((uid, id)) = cursor.pending.take()
            && self.was_stored(&id).await?
        {
            cursor.last_uid = cursor.last_uid.max(uid);
        }
        self.save(&cursor).await?;
        Ok(cursor)
    }

    async fn was_stored(&self, id: &str) -> Result<bool, Stop> {
        let Ok(id) = id.parse::<Ulid>() else { return Ok(false) };
        let inbox = &self.settings.deliver_to;
        let Some(recipient) = self.ctx.store.recipient(inbox).await.map_err(store_failed)? else { return Ok(false) };
        Ok(self.ctx.store.indexed_message(&recipient.owner, inbox, id).await.map_err(store_failed)?.is_some())
    }

    async fn save(&self, cursor: &ImportCursor) -> Result<(), Stop> {
        self.ctx.store.save_import_cursor(&self.domain, &self.settings.mailbox, cursor).await.map_err(store_failed)
    }

    /// Copies every message above the cursor, in UID order, one at a time.
    async fn copy_new(&mut self, session: &mut Session, cursor: &mut ImportCursor, shutdown: &CancellationToken) -> Result<(), Stop> {
        let from = cursor.last_uid + 1;
        let found = timed("UID SEARCH", session.uid_search(format!("UID {from}:*"))).await?;
        // `n:*` always includes the highest UID, even below n.
        let mut uids: Vec<u32> = found.into_iter().filter(|uid| i64::from(*uid) > cursor.last_uid).collect();
        uids.sort_unstable();
        for uid in uids {
            if shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            let body = self.fetch(session, uid).await?;
            if let Some(body) = body {
                let id = Ulid::new();
                cursor.pending = Some((i64::from(uid), id.to_string()));
                self.save(cursor).await?;
                let fetched = Fetched {
                    id,
                    source: self.settings.imap_host.clone(),
                    via: "IMAP",
                    mail_from: return_path(&body),
                    recipients: vec![self.settings.deliver_to.to_string()],
                    message: body.into(),
                    received_at: now(),
                    results: None,
                };
                match self.ctx.smtp.ingest(fetched).await {
                    Ok(_) => metrics::counter!("agentkeys_backend_messages_total", "kind" => "imap", "result" => "stored").increment(1),
                    Err(IngestError::Unroutable(_)) => {
                        cursor.pending = None;
                        self.save(cursor).await?;
                        return Err(Stop::Failed(format!(
                            "the inbox {} does not exist or is not active; the provider keeps the messages until it does",
                            self.settings.deliver_to
                        )));
                    }
                    Err(err @ (IngestError::Refused | IngestError::TooLarge(..))) => {
                        // Left at the provider (never deleted there); not copied.
                        tracing::info!(domain = %self.domain, uid, %err, "IMAP backend: message not copied");
                        metrics::counter!("agentkeys_backend_messages_total", "kind" => "imap", "result" => "refused").increment(1);
                    }
                    Err(IngestError::Store(err)) => return Err(store_failed(err)),
                }
            }
            cursor.last_uid = i64::from(uid);
            cursor.pending = None;
            self.save(cursor).await?;
        }
        Ok(())
    }

    /// The raw message of `uid`; `None` if it was expunged meanwhile.
    async fn fetch(&self, session: &mut Session, uid: u32) -> Result<Option<Vec<u8>>, Stop> {
        let mut body = None;
        let mut fetches = timed("UID FETCH", session.uid_fetch(uid.to_string(), "BODY.PEEK[]")).await?;
        loop {
            let next = match tokio::time::timeout(PROVIDER_TIMEOUT, fetches.next()).await {
                Ok(next) => next,
                Err(_) => return Err(Stop::Failed("UID FETCH: no answer".to_owned())),
            };
            match next {
                None => break,
                Some(Err(err)) => return Err(Stop::Failed(format!("UID FETCH: {err}"))),
                Some(Ok(fetch)) => {
                    if fetch.uid == Some(uid)
                        && let Some(bytes) = fetch.body()
                    {
                        body = Some(bytes.to_vec());
                    }
                }
            }
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_return_path_is_read_from_the_header_section_only() {
        assert_eq!(return_path(b"Return-Path: <bounce@example.com>\r\nFrom: a@b\r\n\r\nbody"), "bounce@example.com");
        assert_eq!(return_path(b"X: y\r\nreturn-path:   <>\r\n\r\n"), "");
        assert_eq!(return_path(b"From: a@b\r\n\r\nReturn-Path: <late@example.com>\r\n"), "", "not from the body");
        assert_eq!(return_path(b"RETURN-PATH: plain@example.com\n\n"), "plain@example.com");
        assert_eq!(return_path(b""), "");
    }

    proptest! {
        /// Whatever the bytes, the envelope sender is printable and never has angle brackets.
        #[test]
        fn the_return_path_is_always_printable(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut message = b"Return-Path: ".to_vec();
            message.extend_from_slice(&bytes);
            let found = return_path(&message);
            prop_assert!(found.chars().all(|c| c.is_ascii_graphic() && c != '<' && c != '>'));
        }
    }
}
