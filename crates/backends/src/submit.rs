//! The IMAP/SMTP backend's send sink: each queued attempt is one submission
//! (RFC 6409) to the provider's server: TLS (STARTTLS required, or implicit),
//! the certificate validated, AUTH with the stored credential, then MAIL, RCPT
//! and DATA. The reply decides the queue's state as for MX delivery: `2xx`
//! delivered, `5xx` bounced (a DSN into the sender's inbox), anything else
//! (`4xx`, connection, TLS, a refused login) deferred with the queue's backoff.

use std::time::Duration;

use agentkeys_delivery::{Attempt, SendSink};
use async_trait::async_trait;
use mail_send::smtp::message::Parameters;
use mail_send::{Credentials, SmtpClient};
use smtp_proto::EXT_START_TLS;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::oauth2::TokenError;
use crate::{BackendContext, ImapSettings, Login, PROVIDER_TIMEOUT, SmtpTls};

/// The longest one submission may take, all steps included.
pub const SUBMISSION_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// Sends through a provider's submission server with AUTH.
pub struct SubmissionSink {
    ctx: BackendContext,
    settings: ImapSettings,
    login: Login,
}

impl std::fmt::Debug for SubmissionSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmissionSink").field("host", &self.settings.smtp_host).finish_non_exhaustive()
    }
}

fn reply_text(r: &smtp_proto::Response<String>) -> String {
    let message = r.message().replace(['\r', '\n'], " ");
    match r.esc {
        [0, ..] => format!("{} {message}", r.code()),
        [a, b, c] => format!("{} {a}.{b}.{c} {message}", r.code()),
    }
}

/// A refused step: `5xx` is permanent, anything else temporary.
fn classify(err: mail_send::Error, step: &str) -> Attempt {
    match err {
        mail_send::Error::UnexpectedReply(r) if r.code() >= 500 => Attempt::Permanent(reply_text(&r)),
        mail_send::Error::UnexpectedReply(r) => Attempt::Temporary(reply_text(&r)),
        other => Attempt::Temporary(format!("451 4.4.2 submission server, {step}: {other}")),
    }
}

impl SubmissionSink {
    /// A sink over `settings`' submission server.
    pub fn new(ctx: BackendContext, settings: ImapSettings, login: Login) -> Self {
        Self { ctx, settings, login }
    }

    async fn submit(&self, from: &str, to: &str, body: &[u8]) -> Attempt {
        let (host, port) = (self.settings.smtp_host.as_str(), self.settings.smtp_port);
        let addr = match tokio::net::lookup_host((host, port)).await.map(|mut a| a.next()) {
            Ok(Some(addr)) => addr,
            Ok(None) => return Attempt::Temporary(format!("451 4.4.3 {host} has no address")),
            Err(err) => return Attempt::Temporary(format!("451 4.4.3 cannot resolve {host}: {err}")),
        };
        let client = match SmtpClient::connect(addr, PROVIDER_TIMEOUT).await {
            Ok(client) => client,
            Err(err) => return classify(err, "connect"),
        };
        let connector = tokio_rustls::TlsConnector::from(self.ctx.tls.clone());
        match self.settings.smtp_tls {
            SmtpTls::Implicit => {
                let mut client = match client.into_tls(&connector, host).await {
                    Ok(client) => client,
                    Err(err) => return classify(err, "TLS"),
                };
                match client.read().await {
                    Ok(greeting) if greeting.is_positive_completion() => {}
                    Ok(greeting) => return Attempt::Temporary(reply_text(&greeting)),
                    Err(err) => return classify(err, "greeting"),
                }
                self.transaction(&mut client, from, to, body).await
            }
            SmtpTls::Starttls => {
                let mut client = client;
                match client.read().await {
                    Ok(greeting) if greeting.is_positive_completion() => {}
                    Ok(greeting) => return Attempt::Temporary(reply_text(&greeting)),
                    Err(err) => return classify(err, "greeting"),
                }
                match client.ehlo(&self.ctx.hostname).await {
                    Ok(ehlo) if ehlo.has_capability(EXT_START_TLS) => {}
                    Ok(_) => {
                        return Attempt::Temporary(format!(
                            "451 4.7.5 {host} does not offer STARTTLS; the credential is never sent in clear"
                        ));
                    }
                    Err(err) => return classify(err, "EHLO"),
                }
                let mut client = match client.start_tls(&connector, host).await {
                    Ok(client) => client,
                    Err(err) => return classify(err, "STARTTLS"),
                };
                self.transaction(&mut client, from, to, body).await
            }
        }
    }

    /// EHLO, AUTH, MAIL, RCPT, DATA, QUIT on an encrypted session.
    async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
        from: &str,
        to: &str,
        body: &[u8],
    ) -> Attempt {
        let ehlo = match client.ehlo(&self.ctx.hostname).await {
            Ok(ehlo) => ehlo,
            Err(err) => return classify(err, "EHLO"),
        };
        // With XOAUTH2 the same access token as the IMAP login (AUTH XOAUTH2).
        let (secret, cached_token) = match &self.login {
            Login::Password(password) => (password.clone(), None),
            Login::OAuth2(source) => match source.token().await {
                Ok((token, fresh)) => (token, (!fresh).then_some(source)),
                Err(err @ TokenError::Refused(_)) => return Attempt::Temporary(format!("454 4.7.0 {err}")),
                Err(err @ TokenError::Failed(_)) => return Attempt::Temporary(format!("451 4.4.2 {err}")),
            },
        };
        let credentials = match &self.login {
            Login::Password(_) => Credentials::new(self.settings.username.as_str(), secret.expose()),
            Login::OAuth2(_) => Credentials::XOauth2 { username: self.settings.username.as_str(), secret: secret.expose() },
        };
        match client.authenticate(&credentials, &ehlo).await {
            Ok(_) => {}
            Err(mail_send::Error::AuthenticationFailed(r)) => {
                if let Some(source) = cached_token {
                    // Perhaps expired early: the next attempt asks for a new token.
                    source.forget().await;
                }
                tracing::warn!(host = %self.settings.smtp_host, user = %self.settings.username, reply = %reply_text(&r),
                    "submission backend: the provider refused the login");
                metrics::counter!("agentkeys_backend_auth_failures_total", "kind" => "smtp").increment(1);
                // Deferred, not bounced: the message goes once the password is fixed.
                return Attempt::Temporary(format!("454 4.7.0 the submission server refused our login: {}", reply_text(&r)));
            }
            Err(err) => return classify(err, "AUTH"),
        }
        let params = Parameters::default();
        if let Err(err) = client.mail_from(from, &params).await {
            return classify(err, "MAIL FROM");
        }
        if let Err(err) = client.rcpt_to(to, &params).await {
            return classify(err, "RCPT TO");
        }
        let attempt = match client.data(body).await {
            Ok(reply) => Attempt::Delivered(reply_text(&reply)),
            Err(err) => classify(err, "DATA"),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), client.cmd(b"QUIT\r\n")).await;
        attempt
    }
}

#[async_trait]
impl SendSink for SubmissionSink {
    async fn send(&self, from: &str, to: &str, body: &[u8]) -> Attempt {
        match tokio::time::timeout(SUBMISSION_DEADLINE, self.submit(from, to, body)).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Temporary(format!("451 4.4.2 the submission server did not finish within {SUBMISSION_DEADLINE:?}")),
        }
    }
}
