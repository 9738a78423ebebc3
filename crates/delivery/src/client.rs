//! One outbound SMTP connection, reusable for several transactions: greeting,
//! EHLO, STARTTLS when offered (or required), then MAIL/RCPT/DATA as often as
//! the pool asks, pipelined (RFC 2920) when the server offers it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mail_send::SmtpClient;
use smtp_proto::{EXT_8BIT_MIME, EXT_PIPELINING, EXT_START_TLS, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::runner::Attempt;
use crate::tls::TlsClients;

/// Whether a connection must be encrypted before any mail is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS when the server offers it, plaintext otherwise (RFC 7435);
    /// the certificate is not checked.
    Opportunistic,
    /// STARTTLS or nothing: a server that does not offer it, or a failed
    /// handshake, is a temporary failure, never a plaintext send
    /// (`[delivery] require_tls`). The certificate is not checked.
    Required,
    /// STARTTLS with a certificate valid for the host name and chained to a
    /// trust anchor (RFC 8461 §4.2, MTA-STS `enforce`); anything else is a
    /// temporary failure.
    Validated,
}

/// The TLS requirement a connection failed to meet (MTA-STS reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server does not offer STARTTLS.
    NoStartTls,
    /// The certificate is not valid for the host or not trusted.
    Certificate,
    /// The handshake failed otherwise.
    Handshake,
}

impl TlsFailure {
    /// The metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NoStartTls => "starttls",
            Self::Certificate => "certificate",
            Self::Handshake => "tls",
        }
    }
}

/// Why a connection could not be opened: the attempt's result, and whether a
/// TLS requirement was what failed.
#[derive(Debug)]
pub(crate) struct OpenError {
    pub(crate) attempt: Attempt,
    pub(crate) tls: Option<TlsFailure>,
}

impl From<Attempt> for OpenError {
    fn from(attempt: Attempt) -> Self {
        Self { attempt, tls: None }
    }
}

enum Stream {
    Plain(SmtpClient<TcpStream>),
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
}

/// An open, greeted connection (after EHLO, and STARTTLS if done).
pub(crate) struct Connection {
    stream: Stream,
    /// Upgraded with the validating client: the certificate was checked for the host.
    validated: bool,
    /// What [`Connection::sts_problem`] found, once checked.
    sts_checked: Option<Option<(TlsFailure, String)>>,
    pipelining: bool,
    eight_bit: bool,
    /// The peer's address (the pool key's second half).
    pub(crate) addr: SocketAddr,
    /// Transactions started on this connection.
    pub(crate) transactions: u32,
    /// When it was last returned to the pool.
    pub(crate) idle_since: Instant,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("tls", &matches!(self.stream, Stream::Tls(_)))
            .field("validated", &self.validated)
            .field("pipelining", &self.pipelining)
            .field("transactions", &self.transactions)
            .finish_non_exhaustive()
    }
}

/// How a transaction ended, and what the connection is good for afterwards.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The delivery result.
    pub(crate) attempt: Attempt,
    /// The connection can carry another transaction.
    pub(crate) reusable: bool,
    /// The connection failed before the server answered anything of this
    /// transaction: nothing was accepted, so a fresh connection may try again
    /// at once (a pooled connection the server had closed).
    pub(crate) untouched: bool,
}

pub(crate) fn reply_text(r: &Response<String>) -> String {
    let message = r.message().replace(['\r', '\n'], " ");
    match r.esc {
        [0, ..] => format!("{} {message}", r.code()),
        [a, b, c] => format!("{} {a}.{b}.{c} {message}", r.code()),
    }
}

/// The outcome a refusing reply stands for: `5xx` permanent, anything else temporary.
pub(crate) fn refused(r: &Response<String>) -> Attempt {
    if (500..600).contains(&r.code()) {
        Attempt::Permanent(reply_text(r))
    } else {
        Attempt::Temporary(reply_text(r))
    }
}

pub(crate) fn classify(err: mail_send::Error) -> Attempt {
    match err {
        mail_send::Error::UnexpectedReply(r) => refused(&r),
        other => Attempt::Temporary(format!("451 4.4.2 {other}")),
    }
}

/// The message as it goes on the wire after DATA: dot-stuffed (a line starting
/// with `.` gets another one, RFC 5321 §4.5.2) and terminated by `.` on its own
/// line. `body` is CRLF-normalized (the queued copy is), so every line ends with
/// CRLF; nothing is added to the message itself.
pub(crate) fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

async fn timed<F: Future<Output = mail_send::Result<T>>, T>(
    timeout: Duration,
    f: F,
) -> mail_send::Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| mail_send::Error::Timeout)?
}

impl Connection {
    /// Connects, reads the greeting, says EHLO and upgrades with STARTTLS when
    /// offered (or fails when `tls` asks for it and it is not offered, or the
    /// certificate is not valid under [`TlsPolicy::Validated`]). `because`
    /// names what requires TLS in failure replies (`delivery.require_tls`, an
    /// MTA-STS policy).
    pub(crate) async fn open(
        addr: SocketAddr,
        host: &str,
        helo: &str,
        tls: TlsPolicy,
        clients: Option<&TlsClients>,
        because: &str,
        timeout: Duration,
    ) -> Result<Self, OpenError> {
        let mut client = SmtpClient::connect(addr, timeout).await.map_err(classify)?;
        let greeting = timed(timeout, client.read()).await.map_err(classify)?;
        if !greeting.is_positive_completion() {
            return Err(refused(&greeting).into());
        }
        let ehlo = client.ehlo(helo).await.map_err(classify)?;
        if !ehlo.has_capability(EXT_START_TLS) {
            if tls != TlsPolicy::Opportunistic {
                let _ = timed(timeout, client.cmd(b"QUIT\r\n")).await;
                return Err(OpenError {
                    attempt: Attempt::Temporary(format!("451 4.7.5 {because}: {host} does not offer STARTTLS")),
                    tls: Some(TlsFailure::NoStartTls),
                });
            }
            return Ok(Self::new(Stream::Plain(client), false, &ehlo, addr));
        }
        let Some(clients) = clients else {
            return Err(Attempt::Temporary(format!(
                "451 4.7.5 {host} offers STARTTLS but this process has no TLS client"
            ))
            .into());
        };
        let validated = tls == TlsPolicy::Validated;
        let connector = if validated { clients.validating() } else { clients.opportunistic().clone() };
        let mut tls_client = client.start_tls(&connector, host).await.map_err(|e| match e {
            mail_send::Error::UnexpectedReply(r) => OpenError::from(refused(&r)),
            mail_send::Error::Tls(err) => {
                let kind = if matches!(*err, rustls::Error::InvalidCertificate(_)) {
                    TlsFailure::Certificate
                } else {
                    TlsFailure::Handshake
                };
                let context = if tls == TlsPolicy::Opportunistic { String::new() } else { format!("{because}: ") };
                OpenError {
                    attempt: Attempt::Temporary(format!("451 4.7.5 {context}STARTTLS with {host} failed: {err}")),
                    tls: Some(kind),
                }
            }
            other => OpenError {
                attempt: Attempt::Temporary(format!("451 4.7.5 STARTTLS with {host} failed: {other}")),
                tls: Some(TlsFailure::Handshake),
            },
        })?;
        let ehlo = tls_client.ehlo(helo).await.map_err(classify)?;
        Ok(Self::new(Stream::Tls(Box::new(tls_client)), validated, &ehlo, addr))
    }

    fn new(stream: Stream, validated: bool, ehlo: &smtp_proto::EhloResponse<String>, addr: SocketAddr) -> Self {
        Self {
            stream,
            validated,
            sts_checked: None,
            pipelining: ehlo.has_capability(EXT_PIPELINING),
            eight_bit: ehlo.has_capability(EXT_8BIT_MIME),
            addr,
            transactions: 0,
            idle_since: Instant::now(),
        }
    }

    /// Whether the certificate was validated for the host when the session
    /// was upgraded ([`TlsPolicy::Validated`]).
    pub(crate) fn is_validated(&self) -> bool {
        self.validated
    }

    /// Whether this session meets what MTA-STS asks of an MX connection
    /// (STARTTLS, a certificate valid for `host` from a trust anchor), and if
    /// not, why: what a `testing` policy reports.
    pub(crate) fn sts_problem(&mut self, clients: Option<&TlsClients>, host: &str) -> Option<(TlsFailure, String)> {
        if let Some(found) = &self.sts_checked {
            return found.clone();
        }
        let found = self.check_sts(clients, host);
        self.sts_checked = Some(found.clone());
        found
    }

    fn check_sts(&self, clients: Option<&TlsClients>, host: &str) -> Option<(TlsFailure, String)> {
        let Stream::Tls(client) = &self.stream else {
            return Some((TlsFailure::NoStartTls, format!("{host} does not offer STARTTLS")));
        };
        if self.validated {
            return None;
        }
        let Some(clients) = clients else {
            return Some((TlsFailure::Certificate, "no TLS client to check the certificate".to_owned()));
        };
        clients
            .check_certificate(client.tls_connection(), host)
            .err()
            .map(|why| (TlsFailure::Certificate, format!("the certificate of {host} is not valid: {why}")))
    }

    /// Whether the session is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// One transaction: MAIL, RCPT, DATA, the message. A refused step is
    /// followed by `RSET` so the connection can be used again.
    pub(crate) async fn send(&mut self, from: &str, to: &str, body: &[u8], timeout: Duration) -> Outcome {
        self.transactions += 1;
        let (pipelining, eight_bit) = (self.pipelining, self.eight_bit);
        match &mut self.stream {
            Stream::Plain(c) => transaction(c, pipelining, eight_bit, from, to, body, timeout).await,
            Stream::Tls(c) => transaction(c.as_mut(), pipelining, eight_bit, from, to, body, timeout).await,
        }
    }

    /// Ends the session politely (best effort, bounded).
    pub(crate) async fn quit(self) {
        let limit = Duration::from_secs(2);
        match self.stream {
            Stream::Plain(mut c) => {
                let _ = timed(limit, c.cmd(b"QUIT\r\n")).await;
            }
            Stream::Tls(mut c) => {
                let _ = timed(limit, c.cmd(b"QUIT\r\n")).await;
            }
        }
    }
}

fn io_failure(err: mail_send::Error, untouched: bool) -> Outcome {
    Outcome {
        attempt: classify(err),
        reusable: false,
        untouched,
    }
}

async fn reset<T: AsyncRead + AsyncWrite + Unpin>(client: &mut SmtpClient<T>) -> bool {
    matches!(client.cmd(b"RSET\r\n").await, Ok(r) if r.is_positive_completion())
}

async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    pipelining: bool,
    eight_bit: bool,
    from: &str,
    to: &str,
    body: &[u8],
    timeout: Duration,
) -> Outcome {
    let param = if eight_bit { " BODY=8BITMIME" } else { "" };
    let mail = format!("MAIL FROM:<{from}>{param}\r\n");
    let rcpt = format!("RCPT TO:<{to}>\r\n");
    // The envelope: pipelined in one write when offered, else one step at a time.
    let (mail_reply, rcpt_reply, data_reply) = if pipelining {
        match client.cmds([mail.as_bytes(), rcpt.as_bytes(), b"DATA\r\n"]).await {
            Ok(mut replies) if replies.len() == 3 => {
                let data = replies.pop();
                let rcpt = replies.pop();
                let mail = replies.pop();
                match (mail, rcpt, data) {
                    (Some(m), Some(r), Some(d)) => (m, Some(r), Some(d)),
                    _ => return io_failure(mail_send::Error::UnparseableReply, false),
                }
            }
            Ok(_) => return io_failure(mail_send::Error::UnparseableReply, false),
            Err(err) => return io_failure(err, true),
        }
    } else {
        let mail_reply = match client.cmd(mail.as_bytes()).await {
            Ok(r) => r,
            Err(err) => return io_failure(err, true),
        };
        if !mail_reply.is_positive_completion() {
            (mail_reply, None, None)
        } else {
            let rcpt_reply = match client.cmd(rcpt.as_bytes()).await {
                Ok(r) => r,
                Err(err) => return io_failure(err, false),
            };
            if !rcpt_reply.is_positive_completion() {
                (mail_reply, Some(rcpt_reply), None)
            } else {
                match client.cmd(b"DATA\r\n").await {
                    Ok(r) => (mail_reply, Some(rcpt_reply), Some(r)),
                    Err(err) => return io_failure(err, false),
                }
            }
        }
    };
    let refusal = if !mail_reply.is_positive_completion() {
        Some(&mail_reply)
    } else {
        rcpt_reply.as_ref().filter(|r| !r.is_positive_completion())
    };
    let data_open = data_reply.as_ref().is_some_and(|r| r.code() == 354);
    if let Some(refusal) = refusal {
        let attempt = refused(refusal);
        let closing = refusal.code() == 421;
        if data_open {
            // Pipelined DATA accepted with no valid recipient (RFC 2920 §3.1):
            // end it with an empty message the server must refuse.
            let end = async {
                client.stream.write_all(b".\r\n").await?;
                client.stream.flush().await?;
                client.read().await
            };
            if timed(timeout, end).await.is_err() {
                return Outcome { attempt, reusable: false, untouched: false };
            }
        }
        let reusable = !closing && reset(client).await;
        return Outcome { attempt, reusable, untouched: false };
    }
    let Some(data_reply) = data_reply else {
        return io_failure(mail_send::Error::UnparseableReply, false);
    };
    if !data_open {
        let reusable = data_reply.code() != 421 && reset(client).await;
        return Outcome { attempt: refused(&data_reply), reusable, untouched: false };
    }
    let wire = dot_stuffed(body);
    let sent = async {
        client.stream.write_all(&wire).await?;
        client.stream.flush().await?;
        client.read().await
    };
    match timed(timeout, sent).await {
        Ok(r) if r.is_positive_completion() => Outcome {
            attempt: Attempt::Delivered(reply_text(&r)),
            reusable: true,
            untouched: false,
        },
        Ok(r) => {
            let reusable = r.code() != 421 && reset(client).await;
            Outcome { attempt: refused(&r), reusable, untouched: false }
        }
        Err(err) => io_failure(err, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(dot_stuffed(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuffed(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuffed(b"x\r\nno crlf"), b"x\r\nno crlf\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b".\r\n");
        assert_eq!(dot_stuffed(b"a.b\r\n"), b"a.b\r\n.\r\n", "only at line start");
    }

    #[test]
    fn replies_map_to_outcomes() {
        let r = |code: u16, esc: [u8; 3], text: &str| {
            Response::new(code, esc[0], esc[1], esc[2], text.to_owned())
        };
        assert!(matches!(refused(&r(451, [0, 0, 0], "x")), Attempt::Temporary(t) if t == "451 x"));
        assert_eq!(
            refused(&r(550, [5, 1, 1], "no\r\nuser")),
            Attempt::Permanent("550 5.1.1 no  user".to_owned()),
            "one line, with the enhanced code"
        );
        assert!(matches!(classify(mail_send::Error::Timeout), Attempt::Temporary(_)));
    }
}
