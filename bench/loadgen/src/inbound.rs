//! `inbound`: MX throughput with a pool of ready-made messages (the realistic
//! inbound benchmark: DKIM-signed mail from domains a loopback DNS server
//! answers for), and the time every message waited for its `250`.
//!
//! C workers send the pool's messages in turn (message i goes with its own HELO
//! name and MAIL FROM, as the pool says) until `count` messages are taken or the
//! deadline passes. Per connection: connect, banner, EHLO, MAIL, RCPT, DATA, the
//! message, `250`, QUIT. Persistent: one session per worker (EHLO with the name
//! of its first message), messages back to back. No pipelining. For every
//! message, the time from the end of its data (`.` sent) to the `250` is kept:
//! that is where the server's SPF/DKIM/DMARC checks and the durable write sit.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cpu;
use crate::smtp::{self, Smtp};
use crate::stats;

/// One message of the pool, ready to send.
pub struct PoolMessage {
    pub helo: String,
    pub mail_from: String,
    /// Dot-stuffed, ending in CRLF `.` CRLF.
    pub data: Vec<u8>,
}

#[derive(Deserialize)]
struct PoolLine {
    helo: String,
    mail_from: String,
    data: String,
}

/// Reads a pool written by the `inbound_pool` example (one JSON object a line).
pub fn load_pool(path: &Path) -> Result<Vec<PoolMessage>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut pool = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let m: PoolLine = serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        pool.push(PoolMessage { helo: m.helo, mail_from: m.mail_from, data: terminated(&m.data) });
    }
    anyhow::ensure!(!pool.is_empty(), "{} has no messages", path.display());
    Ok(pool)
}

/// The message as DATA sends it: CRLF line ends, leading dots doubled, then `.`.
fn terminated(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    for line in message.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

pub struct Options {
    pub addr: SocketAddr,
    pub pool: Vec<PoolMessage>,
    pub rcpt: String,
    pub count: u64,
    pub concurrency: usize,
    pub persistent: bool,
    pub max_duration: Duration,
    pub server_pid: Option<u32>,
    /// Processes whose CPU, with all their descendants', is the server's (a
    /// multi-process peer: Postfix's master and the milters); replaces `server_pid`.
    pub server_trees: Vec<u32>,
    pub label: String,
}

#[derive(Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub label: String,
    pub addr: String,
    pub mode: &'static str,
    pub concurrency: usize,
    pub pool: usize,
    pub requested: u64,
    pub accepted: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// From the start until the last `250`.
    pub seconds: f64,
    pub per_second: f64,
    /// End of data (`.` sent) to `250`, per message.
    pub wait_p50_ms: Option<f64>,
    pub wait_p99_ms: Option<f64>,
    pub wait_max_ms: Option<f64>,
    /// Messages whose `250` came more than 1 s after their data.
    pub waits_over_1s: usize,
    pub cpu: cpu::Usage,
    /// Server CPU (user + system) per accepted message.
    pub server_cpu_per_message_ms: Option<f64>,
}

pub async fn run(opts: Options) -> Result<Report> {
    smtp::check_loopback(opts.addr)?;
    let opts = Arc::new(opts);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + opts.max_duration;
    let cpu_start = cpu::Snapshot::take(opts.server_pid);
    let trees_cpu = || opts.server_trees.iter().map(|p| cpu::tree_seconds(*p)).sum::<f64>();
    let trees_start = trees_cpu();
    let tasks: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let opts = Arc::clone(&opts);
            let next = Arc::clone(&next);
            tokio::spawn(async move { worker(&opts, &next, deadline).await })
        })
        .collect();
    let mut tally = stats::Tally::default();
    for task in tasks {
        tally.merge(task.await?);
    }
    let stats::Tally { samples_ms: waits, errors, error_samples, last_done } = tally;
    let last_done = last_done.unwrap_or(start);
    let mut cpu = cpu::Usage::between(cpu_start, cpu::Snapshot::take(opts.server_pid));
    if !opts.server_trees.is_empty() {
        cpu.server_seconds = Some(trees_cpu() - trees_start);
    }
    let accepted = waits.len() as u64;
    let seconds = (last_done - start).as_secs_f64().max(1e-9);
    let per_second = accepted as f64 / seconds;
    let server_cpu_per_message_ms = cpu.server_seconds.filter(|_| accepted > 0).map(|s| s * 1e3 / accepted as f64);
    let wait_max_ms = waits.iter().copied().reduce(f64::max);
    eprintln!(
        "inbound {}: {accepted} accepted in {seconds:.3}s = {per_second:.0}/s ({errors} errors), wait max {:.1} ms",
        opts.label,
        wait_max_ms.unwrap_or(0.0)
    );
    Ok(Report {
        kind: "inbound",
        label: opts.label.clone(),
        addr: opts.addr.to_string(),
        mode: if opts.persistent { "persistent" } else { "per-connection" },
        concurrency: opts.concurrency,
        pool: opts.pool.len(),
        requested: opts.count,
        accepted,
        errors,
        error_samples,
        seconds,
        per_second,
        wait_p50_ms: stats::percentile(&waits, 50.0),
        wait_p99_ms: stats::percentile(&waits, 99.0),
        wait_max_ms,
        waits_over_1s: waits.iter().filter(|w| **w > 1000.0).count(),
        cpu,
        server_cpu_per_message_ms,
    })
}

async fn worker(opts: &Options, next: &AtomicU64, deadline: Instant) -> stats::Tally {
    let mut result = stats::Tally::default();
    let source = smtp::source_ip(0, 1);
    if opts.persistent {
        // At most three sessions (a failed one is replaced), bounded by the deadline.
        for _ in 0..3 {
            if Instant::now() >= deadline || next.load(Ordering::Relaxed) >= opts.count {
                break;
            }
            match persistent_session(opts, source, next, deadline, &mut result).await {
                Ok(()) => break,
                Err(e) => result.error(&e),
            }
        }
        return result;
    }
    while Instant::now() < deadline {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.count {
            break;
        }
        let message = &opts.pool[(n % opts.pool.len() as u64) as usize];
        if let Err(e) = one_message_session(opts, source, message, &mut result).await {
            result.error(&e);
        }
    }
    result
}

async fn greet(opts: &Options, source: std::net::Ipv4Addr, helo: &str) -> Result<Smtp<tokio::net::TcpStream>> {
    let mut s = Smtp::new(smtp::connect(opts.addr, source).await?);
    s.expect_reply(220, "banner").await?;
    s.expect(&format!("EHLO {helo}"), 250, "EHLO").await?;
    Ok(s)
}

async fn send_message(
    s: &mut Smtp<tokio::net::TcpStream>,
    opts: &Options,
    message: &PoolMessage,
    result: &mut stats::Tally,
) -> Result<()> {
    s.expect(&format!("MAIL FROM:<{}>", message.mail_from), 250, "MAIL FROM").await?;
    s.expect(&format!("RCPT TO:<{}>", opts.rcpt), 250, "RCPT TO").await?;
    s.expect("DATA", 354, "DATA").await?;
    s.send_raw(&message.data).await?;
    let sent = Instant::now();
    s.expect_reply(250, "end of DATA").await?;
    let done = Instant::now();
    result.done((done - sent).as_secs_f64() * 1e3, done);
    Ok(())
}

async fn one_message_session(
    opts: &Options,
    source: std::net::Ipv4Addr,
    message: &PoolMessage,
    result: &mut stats::Tally,
) -> Result<()> {
    let mut s = greet(opts, source, &message.helo).await?;
    send_message(&mut s, opts, message, result).await?;
    s.expect("QUIT", 221, "QUIT").await?;
    Ok(())
}

async fn persistent_session(
    opts: &Options,
    source: std::net::Ipv4Addr,
    next: &AtomicU64,
    deadline: Instant,
    result: &mut stats::Tally,
) -> Result<()> {
    let first = next.load(Ordering::Relaxed);
    let helo = &opts.pool[(first % opts.pool.len() as u64) as usize].helo;
    let mut s = greet(opts, source, helo).await?;
    while Instant::now() < deadline {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= opts.count {
            break;
        }
        let message = &opts.pool[(n % opts.pool.len() as u64) as usize];
        send_message(&mut s, opts, message, result).await?;
    }
    s.expect("QUIT", 221, "QUIT").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_dot_stuffed_crlf_and_terminated() {
        let got = terminated("Subject: x\n\n.leading dot\r\nplain\n..two\n");
        assert_eq!(got, b"Subject: x\r\n\r\n..leading dot\r\nplain\r\n...two\r\n.\r\n");
    }
}
