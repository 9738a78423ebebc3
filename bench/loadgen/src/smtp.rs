//! A minimal SMTP client: reply reading, commands, STARTTLS, loopback-only connect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

/// Longest reply line we accept, CRLF included (RFC 5321 §4.5.3.1.5 allows 512).
pub const MAX_REPLY_LINE: u64 = 4096;
/// Most lines in one multi-line reply (an EHLO answer has about a dozen).
pub const MAX_REPLY_LINES: usize = 64;
/// Upper bound on any single protocol step, so a silent server never hangs the bench.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// The name we announce in EHLO.
pub const EHLO_NAME: &str = "loadgen.localhost";

/// One SMTP reply: its code and its lines (CRLF stripped).
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether an EHLO reply advertises `keyword` (case-insensitive).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.get(4..)
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

/// An SMTP client connection over any byte stream.
pub struct Smtp<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    pub fn new(stream: S) -> Self {
        Self {
            io: BufReader::new(stream),
        }
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply> {
        tokio::time::timeout(STEP_TIMEOUT, self.read_reply_inner())
            .await
            .context("timed out waiting for a reply")?
    }

    async fn read_reply_inner(&mut self) -> Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = (&mut self.io)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut raw)
                .await?;
            if n == 0 {
                bail!("connection closed by server");
            }
            ensure!(
                raw.ends_with(b"\n"),
                "reply line longer than {MAX_REPLY_LINE} bytes"
            );
            let text = String::from_utf8_lossy(&raw).trim_end().to_string();
            ensure!(text.len() >= 3, "short reply line {text:?}");
            let code: u16 = text[..3]
                .parse()
                .with_context(|| format!("bad reply line {text:?}"))?;
            let last = text.len() == 3 || text.as_bytes()[3] == b' ';
            lines.push(text);
            if last {
                return Ok(Reply { code, lines });
            }
            ensure!(lines.len() < MAX_REPLY_LINES, "reply has too many lines");
        }
    }

    /// Sends `line` + CRLF in one write.
    pub async fn send(&mut self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        tokio::time::timeout(STEP_TIMEOUT, async {
            self.io.write_all(&buf).await?;
            self.io.flush().await
        })
        .await
        .context("timed out writing")??;
        Ok(())
    }

    /// Sends raw bytes (a message already terminated by `.` CRLF) in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(STEP_TIMEOUT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .context("timed out writing")??;
        Ok(())
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply> {
        self.send(line).await?;
        self.read_reply().await
    }

    /// Reads a reply and checks its code.
    pub async fn expect_reply(&mut self, code: u16, what: &str) -> Result<Reply> {
        let reply = self.read_reply().await?;
        ensure!(
            reply.code == code,
            "{what}: expected {code}, got {:?}",
            reply.lines
        );
        Ok(reply)
    }

    /// Sends a command and checks its reply code. `what` names the step in errors
    /// (never the command itself: it may carry credentials).
    pub async fn expect(&mut self, line: &str, code: u16, what: &str) -> Result<Reply> {
        self.send(line).await?;
        self.expect_reply(code, what).await
    }

    /// Returns the stream, refusing if the server sent bytes we have not read
    /// (data pipelined past a STARTTLS reply would otherwise leak into TLS).
    pub fn into_inner(self) -> Result<S> {
        ensure!(
            self.io.buffer().is_empty(),
            "server sent data after its reply"
        );
        Ok(self.io.into_inner())
    }
}

/// Refuses anything but 127.0.0.0/8: the bench never leaves loopback.
pub fn check_loopback(addr: SocketAddr) -> Result<()> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(()),
        _ => bail!("{addr} is not in 127.0.0.0/8; the bench only talks to loopback"),
    }
}

/// The `i`-th source address when spreading over 127.0.0.1..=127.0.0.`sources`.
pub fn source_ip(i: usize, sources: u8) -> Ipv4Addr {
    let n = usize::from(sources.max(1));
    // i % n < 255, so the cast cannot truncate.
    Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8)
}

/// Connects to `addr` from `source` (bind before connect), with TCP_NODELAY.
pub async fn connect(addr: SocketAddr, source: Ipv4Addr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(IpAddr::V4(source), 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(addr))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {addr} from {source}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How the submission session gets to TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// Plain connect, EHLO, STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// Everything needed to open a TLS submission session.
#[derive(Clone)]
pub struct TlsTarget {
    pub addr: SocketAddr,
    pub mode: TlsMode,
    pub connector: TlsConnector,
    pub sni: ServerName<'static>,
}

/// Opens a session and returns it after the post-TLS EHLO: banner, EHLO,
/// STARTTLS, TLS handshake, EHLO (or TLS, banner, EHLO when implicit).
pub async fn tls_session(
    target: &TlsTarget,
    source: Ipv4Addr,
) -> Result<Smtp<TlsStream<TcpStream>>> {
    let tcp = connect(target.addr, source).await?;
    let tcp = match target.mode {
        TlsMode::Implicit => tcp,
        TlsMode::Starttls => {
            let mut plain = Smtp::new(tcp);
            plain.expect_reply(220, "banner").await?;
            let ehlo = plain
                .expect(&format!("EHLO {EHLO_NAME}"), 250, "EHLO")
                .await?;
            ensure!(
                ehlo.has_extension("STARTTLS"),
                "STARTTLS not advertised: {:?}",
                ehlo.lines
            );
            plain.expect("STARTTLS", 220, "STARTTLS").await?;
            plain.into_inner()?
        }
    };
    let tls = tokio::time::timeout(
        STEP_TIMEOUT,
        target.connector.connect(target.sni.clone(), tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")?;
    let mut session = Smtp::new(tls);
    if target.mode == TlsMode::Implicit {
        session.expect_reply(220, "banner").await?;
    }
    session
        .expect(&format!("EHLO {EHLO_NAME}"), 250, "EHLO after TLS")
        .await?;
    Ok(session)
}

/// The SASL PLAIN initial response for `user`/`pass` (RFC 4616: authzid empty).
pub fn auth_plain_line(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let mut raw = Vec::with_capacity(user.len() + pass.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(pass.as_bytes());
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_plain_matches_rfc4616_example_shape() {
        // base64("\0tim\0tanstaaftanstaaf") from RFC 4616 §4.
        assert_eq!(
            auth_plain_line("tim", "tanstaaftanstaaf"),
            "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }

    #[test]
    fn sources_wrap_inside_the_range() {
        assert_eq!(source_ip(0, 50), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(49, 50), Ipv4Addr::new(127, 0, 0, 50));
        assert_eq!(source_ip(50, 50), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(7, 0), Ipv4Addr::new(127, 0, 0, 1));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(check_loopback("127.0.0.1:25".parse().expect("addr")).is_ok());
        assert!(check_loopback("127.9.8.7:25".parse().expect("addr")).is_ok());
        assert!(check_loopback("10.0.0.1:25".parse().expect("addr")).is_err());
        assert!(check_loopback("[::1]:25".parse().expect("addr")).is_err());
    }

    #[tokio::test]
    async fn reads_multiline_reply_and_extensions() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"250-mx.localhost\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
            .await
            .expect("write");
        let mut smtp = Smtp::new(client);
        let reply = smtp.read_reply().await.expect("reply");
        assert_eq!(reply.code, 250);
        assert_eq!(reply.lines.len(), 3);
        assert!(reply.has_extension("starttls"));
        assert!(!reply.has_extension("AUTH"));
    }

    #[tokio::test]
    async fn refuses_data_pipelined_after_starttls_reply() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"220 go ahead\r\n250 injected\r\n")
            .await
            .expect("write");
        let mut smtp = Smtp::new(client);
        smtp.expect_reply(220, "STARTTLS").await.expect("reply");
        assert!(smtp.into_inner().is_err());
    }
}
