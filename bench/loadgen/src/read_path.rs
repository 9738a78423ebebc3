//! The read path (issue 4): list-page latency over HTTP with a read
//! capability, and the time from the end of an SMTP DATA to the
//! `message.received` event at a Server-Sent Events subscriber.
//!
//! A minimal HTTP/1.1 client over one keep-alive connection (GET only,
//! `Content-Length` or chunked bodies), so the numbers are the server's, not a
//! client library's. Every loop is bounded in count and in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::smtp::{self, EHLO_NAME, STEP_TIMEOUT, Smtp};
use crate::stats::percentile;

/// Longest header or chunk-size line accepted.
const MAX_LINE: usize = 8192;
/// Largest response body accepted.
const MAX_BODY: usize = 4 << 20;

/// One HTTP/1.1 keep-alive connection.
struct Http {
    io: BufReader<TcpStream>,
    host: String,
}

/// A response head.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        smtp::check_loopback(addr)?;
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { io: BufReader::new(stream), host: addr.to_string() })
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = (&mut self.io).take(MAX_LINE as u64).read_line(&mut line).await?;
        ensure!(n > 0, "connection closed");
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    async fn request(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Head> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.io.get_mut().write_all(req.as_bytes()).await?;
        let status_line = self.line().await?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut head = Head { status, content_length: None, chunked: false };
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok(head);
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(value.parse().context("content-length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                head.chunked = true;
            }
        }
    }

    /// One chunk of a chunked body (`None` at the last chunk).
    async fn chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let size_line = self.line().await?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        ensure!(size <= MAX_BODY, "chunk too large");
        if size == 0 {
            self.line().await?; // the blank line after the last chunk (no trailers)
            return Ok(None);
        }
        let mut data = vec![0; size];
        self.io.read_exact(&mut data).await?;
        self.line().await?;
        Ok(Some(data))
    }

    async fn get(&mut self, path: &str, token: &str) -> Result<(u16, Vec<u8>)> {
        let head = self.request(path, &[("Authorization", &format!("Bearer {token}"))]).await?;
        let mut body = Vec::new();
        if head.chunked {
            while let Some(chunk) = self.chunk().await? {
                body.extend(chunk);
                ensure!(body.len() <= MAX_BODY, "body too large");
            }
        } else {
            let len = head.content_length.context("response without length")?;
            ensure!(len <= MAX_BODY, "body too large");
            body.resize(len, 0);
            self.io.read_exact(&mut body).await?;
        }
        Ok((head.status, body))
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn summarize(samples: &[f64]) -> Latency {
    let p = |q| percentile(samples, q).unwrap_or(f64::NAN);
    Latency { samples: samples.len(), p50_ms: p(50.0), p90_ms: p(90.0), p99_ms: p(99.0), max_ms: p(100.0) }
}

pub struct ListOptions {
    pub http: SocketAddr,
    pub inbox: String,
    pub token: String,
    pub requests: usize,
    pub limit: u32,
    pub max_duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct ListReport {
    /// Messages the inbox lists (walked once, pages of 100, before measuring).
    pub inbox_messages: usize,
    /// Page size of the measured requests.
    pub limit: u32,
    /// The newest page (no cursor), repeated.
    pub first_page: Latency,
    /// Pages at cursors spread over the whole inbox, both orders.
    pub cursor_pages: Latency,
}

/// Walks the inbox once for cursors, then times `requests` first-page GETs and
/// `requests` GETs at cursors spread over the inbox (alternating desc/asc).
pub async fn list(o: ListOptions) -> Result<ListReport> {
    let started = Instant::now();
    let mut http = Http::connect(o.http).await?;
    let base = format!("/v1/inboxes/{}/messages", o.inbox);
    let mut ids: Vec<String> = Vec::new();
    let mut cursor = String::new();
    loop {
        ensure!(started.elapsed() < o.max_duration, "walking the inbox took longer than --max-duration");
        let (status, body) = http.get(&format!("{base}?order=asc&limit=100{cursor}"), &o.token).await?;
        ensure!(status == 200, "listing answered {status}: {}", String::from_utf8_lossy(&body));
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        for m in page["messages"].as_array().context("messages")? {
            ids.push(m["message_id"].as_str().context("message_id")?.to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&after={c}"),
            None => break,
        }
    }
    ensure!(!ids.is_empty(), "the inbox is empty");
    let measure_until = Instant::now() + o.max_duration;
    let mut first = Vec::with_capacity(o.requests);
    let mut cursors = Vec::with_capacity(o.requests);
    for i in 0..o.requests {
        if Instant::now() > measure_until {
            break;
        }
        let t = Instant::now();
        let (status, body) = http.get(&format!("{base}?limit={}", o.limit), &o.token).await?;
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(status == 200 && body.len() > 2, "first page answered {status}");
        // A spread of cursors: a multiplicative walk over the ids.
        let at = (i * 7919) % ids.len();
        let (order, param) = if i % 2 == 0 { ("desc", "before") } else { ("asc", "after") };
        let path = format!("{base}?order={order}&limit={}&{param}={}", o.limit, ids[at]);
        let t = Instant::now();
        let (status, _) = http.get(&path, &o.token).await?;
        cursors.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(status == 200, "cursor page answered {status}");
    }
    Ok(ListReport { inbox_messages: ids.len(), limit: o.limit, first_page: summarize(&first), cursor_pages: summarize(&cursors) })
}

pub struct EventOptions {
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub inbox: String,
    pub token: String,
    pub messages: usize,
    pub size: usize,
    pub max_duration: Duration,
}

#[derive(Debug, Serialize)]
pub struct EventReport {
    pub messages: usize,
    /// Client's end of DATA (`.` sent) to the `250` read: the SMTP round trip,
    /// durable write included (the peer).
    pub dot_to_250: Latency,
    /// Client's end of DATA to the event read on the SSE connection.
    pub dot_to_event: Latency,
    /// The `250` read to the event read. The server publishes before it answers
    /// `250`, so this is often negative (the event won the race).
    pub reply_to_event: Latency,
}

/// Subscribes over SSE, then sends `messages` messages one at a time over one
/// SMTP connection and times each `250` and each event.
pub async fn events(o: EventOptions) -> Result<EventReport> {
    let started = Instant::now();
    let mut sse = Http::connect(o.http).await?;
    let head = sse
        .request(
            &format!("/v1/inboxes/{}/events", o.inbox),
            &[("Authorization", &format!("Bearer {}", o.token)), ("Accept", "text/event-stream")],
        )
        .await?;
    ensure!(head.status == 200 && head.chunked, "event stream answered {}", head.status);
    let mut pending = String::new();

    let stream = smtp::connect(o.smtp, std::net::Ipv4Addr::LOCALHOST).await?;
    stream.set_nodelay(true)?;
    let mut client = Smtp::new(stream);
    client.expect_reply(220, "greeting").await?;
    client.expect(&format!("EHLO {EHLO_NAME}"), 250, "EHLO").await?;
    let line = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOP.\r\n";
    let body = line.repeat(o.size / line.len() + 1);
    let (mut dot_250, mut dot_event, mut reply_event) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..o.messages {
        if started.elapsed() > o.max_duration {
            break;
        }
        client.expect("MAIL FROM:<bench@remote.example>", 250, "MAIL").await?;
        client.expect(&format!("RCPT TO:<{}>", o.inbox), 250, "RCPT").await?;
        client.expect("DATA", 354, "DATA").await?;
        let message = format!("From: bench@remote.example\r\nTo: {}\r\nSubject: event {i}\r\n\r\n{body}", o.inbox);
        client.send_raw(message.as_bytes()).await?;
        let t0 = Instant::now();
        client.send_raw(b".\r\n").await?;
        // The reply and the event race; read both concurrently.
        let reply = async {
            let r = client.read_reply().await?;
            ensure!(r.code == 250, "end of DATA answered {}: {:?}", r.code, r.lines);
            Ok::<Instant, anyhow::Error>(Instant::now())
        };
        let event = async {
            tokio::time::timeout(STEP_TIMEOUT, next_event(&mut sse, &mut pending))
                .await
                .context("no event within the step timeout")??;
            Ok::<Instant, anyhow::Error>(Instant::now())
        };
        let (t250, tevent) = tokio::try_join!(reply, event)?;
        let ms = |a: Instant, b: Instant| {
            if b >= a { (b - a).as_secs_f64() * 1000.0 } else { -((a - b).as_secs_f64() * 1000.0) }
        };
        dot_250.push(ms(t0, t250));
        dot_event.push(ms(t0, tevent));
        reply_event.push(ms(t250, tevent));
    }
    client.send("QUIT").await.ok();
    if dot_250.is_empty() {
        bail!("no message was sent within --max-duration");
    }
    Ok(EventReport {
        messages: dot_250.len(),
        dot_to_250: summarize(&dot_250),
        dot_to_event: summarize(&dot_event),
        reply_to_event: summarize(&reply_event),
    })
}

/// Reads the SSE body until one `message.received` event is complete; returns its id.
async fn next_event(sse: &mut Http, pending: &mut String) -> Result<String> {
    loop {
        while let Some(at) = pending.find("\n\n") {
            let frame: String = pending.drain(..at + 2).collect();
            if frame.starts_with(':') {
                continue; // keep-alive
            }
            if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: ")) {
                return Ok(id.to_owned());
            }
        }
        let chunk = sse.chunk().await?.context("the event stream ended")?;
        pending.push_str(std::str::from_utf8(&chunk)?);
    }
}
