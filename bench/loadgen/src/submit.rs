//! `submit`: authenticated submission throughput, and optionally the time until
//! the server reports every message delivered.
//!
//! C persistent sessions (connect, EHLO, STARTTLS, EHLO, AUTH PLAIN), each
//! sending messages back to back (MAIL, RCPT, DATA; one recipient, no
//! pipelining) until `count` messages have been taken in total or the deadline
//! passes; then QUIT. With `--metrics-url`, polls the server's Prometheus
//! counter `agentkeys_delivery_attempts_total{result="delivered"}` until it has
//! grown by the number of accepted messages (or `--deliver-timeout` passes), and
//! reports the end-to-end rate from the first submission to the last delivery.
//! Several `--metrics-url`s (nodes sharing one queue: whichever node's runner
//! claims a message delivers it) are added up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cpu;
use crate::smtp::{self, TlsTarget};
use crate::stats;

/// How often the delivered counter is read.
const POLL_EVERY: Duration = Duration::from_millis(50);

pub struct Options {
    pub target: TlsTarget,
    pub user: String,
    pub pass: String,
    pub from: String,
    pub to: String,
    pub count: u64,
    pub concurrency: usize,
    pub size: usize,
    pub sources: u8,
    pub max_duration: Duration,
    pub server_pid: Option<u32>,
    /// `host:port` and path of the server's /metrics (loopback only).
    pub metrics: Vec<(SocketAddr, String)>,
    pub deliver_timeout: Duration,
    pub label: String,
}

#[derive(Serialize)]
pub struct Counters {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub label: String,
    pub addr: String,
    pub concurrency: usize,
    pub size: usize,
    pub requested: u64,
    pub accepted: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// From the first MAIL FROM to the last 250 after DATA.
    pub submit_seconds: f64,
    pub submitted_per_second: f64,
    pub submit_latency_p50_ms: Option<f64>,
    pub submit_latency_p99_ms: Option<f64>,
    /// CPU during submission.
    pub submit_cpu: cpu::Usage,
    /// Delivered-counter growth seen (None without --metrics-url).
    pub delivered: Option<u64>,
    /// From the first MAIL FROM until the counter showed every accepted message delivered.
    pub end_to_end_seconds: Option<f64>,
    pub delivered_per_second: Option<f64>,
    pub all_delivered: Option<bool>,
    /// The counters' growth over the whole run (delivered, deferred, bounced).
    pub attempts: Option<Counters>,
    /// CPU from the first submission to the last delivery.
    pub end_to_end_cpu: Option<cpu::Usage>,
}

/// The message: headers, then `size` bytes of 80-column lines (none starts with a dot).
fn message(from: &str, to: &str, size: usize, n: u64) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: outbound bench {n}\r\n\
         Date: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <bench-{n}@loadgen.localhost>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    let mut body = 0;
    while body < size {
        m.extend_from_slice(line);
        body += line.len();
    }
    m.extend_from_slice(b".\r\n");
    m
}

pub async fn run(opts: Options) -> Result<Report> {
    let opts = Arc::new(opts);
    let baseline = if opts.metrics.is_empty() {
        None
    } else {
        Some(read_all_counters(&opts.metrics).await.context("reading /metrics before the run")?)
    };
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + opts.max_duration;
    let cpu_start = cpu::Snapshot::take(opts.server_pid);
    let mut tasks = Vec::with_capacity(opts.concurrency);
    for worker in 0..opts.concurrency {
        let opts = Arc::clone(&opts);
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move { worker_loop(&opts, worker, &next, deadline).await }));
    }
    let mut tally = stats::Tally::default();
    for task in tasks {
        tally.merge(task.await?);
    }
    let stats::Tally { samples_ms: latencies, errors, error_samples, last_done } = tally;
    let last_done = last_done.unwrap_or(start);
    let submit_cpu = cpu::Usage::between(cpu_start, cpu::Snapshot::take(opts.server_pid));
    let accepted = latencies.len() as u64;
    let submit_seconds = (last_done - start).as_secs_f64();
    eprintln!(
        "submit: {accepted} accepted in {submit_seconds:.3}s = {:.0}/s ({errors} errors)",
        accepted as f64 / submit_seconds.max(1e-9)
    );

    let mut report = Report {
        kind: "submit",
        label: opts.label.clone(),
        addr: opts.target.addr.to_string(),
        concurrency: opts.concurrency,
        size: opts.size,
        requested: opts.count,
        accepted,
        errors,
        error_samples,
        submit_seconds,
        submitted_per_second: accepted as f64 / submit_seconds.max(1e-9),
        submit_latency_p50_ms: stats::percentile(&latencies, 50.0),
        submit_latency_p99_ms: stats::percentile(&latencies, 99.0),
        submit_cpu,
        delivered: None,
        end_to_end_seconds: None,
        delivered_per_second: None,
        all_delivered: None,
        attempts: None,
        end_to_end_cpu: None,
    };
    if let Some(base) = baseline {
        let wait_until = Instant::now() + opts.deliver_timeout;
        let mut now_counters;
        loop {
            now_counters = read_all_counters(&opts.metrics).await?;
            let done = now_counters.delivered.saturating_sub(base.delivered)
                + now_counters.bounced.saturating_sub(base.bounced);
            if done >= accepted || Instant::now() >= wait_until {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let end = Instant::now();
        let delivered = now_counters.delivered.saturating_sub(base.delivered);
        let secs = (end - start).as_secs_f64();
        report.delivered = Some(delivered);
        report.end_to_end_seconds = Some(secs);
        report.delivered_per_second = Some(delivered as f64 / secs);
        report.all_delivered = Some(delivered >= accepted);
        report.attempts = Some(Counters {
            delivered,
            deferred: now_counters.deferred.saturating_sub(base.deferred),
            bounced: now_counters.bounced.saturating_sub(base.bounced),
        });
        report.end_to_end_cpu = Some(cpu::Usage::between(cpu_start, cpu::Snapshot::take(opts.server_pid)));
        eprintln!(
            "submit: {delivered} of {accepted} delivered {secs:.3}s after the first submission = {:.0}/s",
            delivered as f64 / secs
        );
    }
    Ok(report)
}

async fn worker_loop(opts: &Options, worker: usize, next: &AtomicU64, deadline: Instant) -> stats::Tally {
    let mut result = stats::Tally::default();
    let auth = smtp::auth_plain_line(&opts.user, &opts.pass);
    // At most three sessions per worker (a failed one is replaced), bounded by the deadline.
    for attempt in 0..3 {
        if Instant::now() >= deadline || next.load(Ordering::Relaxed) >= opts.count {
            break;
        }
        let source = smtp::source_ip(worker + attempt * opts.concurrency, opts.sources);
        if let Err(e) = session(opts, source, &auth, next, deadline, &mut result).await {
            result.error(&e);
        } else {
            break;
        }
    }
    result
}

async fn session(
    opts: &Options,
    source: std::net::Ipv4Addr,
    auth: &str,
    next: &AtomicU64,
    deadline: Instant,
    result: &mut stats::Tally,
) -> Result<()> {
    let mut s = smtp::tls_session(&opts.target, source).await?;
    s.expect(auth, 235, "AUTH PLAIN").await?;
    let mail = format!("MAIL FROM:<{}>", opts.from);
    let rcpt = format!("RCPT TO:<{}>", opts.to);
    while Instant::now() < deadline {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.count {
            break;
        }
        let body = message(&opts.from, &opts.to, opts.size, n);
        let began = Instant::now();
        s.expect(&mail, 250, "MAIL FROM").await?;
        s.expect(&rcpt, 250, "RCPT TO").await?;
        s.expect("DATA", 354, "DATA").await?;
        s.send_raw(&body).await?;
        s.expect_reply(250, "end of DATA").await?;
        let done = Instant::now();
        result.done((done - began).as_secs_f64() * 1e3, done);
    }
    s.expect("QUIT", 221, "QUIT").await?;
    Ok(())
}

/// The delivery-attempt counters of every page, added up.
async fn read_all_counters(pages: &[(SocketAddr, String)]) -> Result<Counters> {
    let mut sum = Counters { delivered: 0, deferred: 0, bounced: 0 };
    for (addr, path) in pages {
        let c = read_counters(*addr, path).await?;
        sum.delivered += c.delivered;
        sum.deferred += c.deferred;
        sum.bounced += c.bounced;
    }
    Ok(sum)
}

/// Reads the delivery-attempt counters from a Prometheus text page.
async fn read_counters(addr: SocketAddr, path: &str) -> Result<Counters> {
    smtp::check_loopback(addr)?;
    let text = tokio::time::timeout(smtp::STEP_TIMEOUT, async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        tcp.take(16 << 20).read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .context("/metrics timed out")??;
    ensure!(text.starts_with("HTTP/1.") && text.get(9..12) == Some("200"), "/metrics: {:?}", text.lines().next());
    Ok(parse_counters(&text))
}

fn parse_counters(text: &str) -> Counters {
    let get = |result: &str| {
        let key = format!("agentkeys_delivery_attempts_total{{result=\"{result}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    Counters { delivered: get("delivered"), deferred: get("deferred"), bounced: get("bounced") }
}

/// Splits `http://127.0.0.1:PORT/path` into its address and path.
pub fn parse_metrics_url(url: &str) -> Result<(SocketAddr, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--metrics-url must start with http://");
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host.parse().context("--metrics-url host must be IP:PORT")?;
    smtp::check_loopback(addr)?;
    Ok((addr, if path.is_empty() { "/metrics".into() } else { path.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_prometheus_text() {
        let c = parse_counters(
            "# TYPE agentkeys_delivery_attempts_total counter\n\
             agentkeys_delivery_attempts_total{result=\"delivered\"} 4999\n\
             agentkeys_delivery_attempts_total{result=\"deferred\"} 2\n",
        );
        assert_eq!((c.delivered, c.deferred, c.bounced), (4999, 2, 0));
    }

    #[test]
    fn message_is_terminated_and_sized() {
        let m = message("a@b.test", "x@c.test", 10_240, 1);
        assert!(m.ends_with(b"\r\n.\r\n"));
        assert!(m.len() > 10_240 && m.len() < 10_240 + 400);
    }

    #[test]
    fn metrics_url() {
        let (a, p) = parse_metrics_url("http://127.0.0.1:9000/metrics").expect("url");
        assert_eq!((a.port(), p.as_str()), (9000, "/metrics"));
        assert!(parse_metrics_url("http://10.0.0.1:9000/metrics").is_err());
    }
}
