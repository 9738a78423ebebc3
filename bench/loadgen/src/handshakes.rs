//! `handshakes`: full submission handshakes per second.
//!
//! One iteration: connect, 220, EHLO, STARTTLS, TLS handshake, EHLO,
//! AUTH PLAIN (expect 235), QUIT (expect 221). Workers loop until the deadline;
//! iterations finishing during the warm-up are not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::cpu;
use crate::smtp::{self, TlsTarget};
use crate::stats;

/// Most distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;

pub struct Options {
    pub target: TlsTarget,
    pub user: String,
    pub pass: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub sources: u8,
    /// The server's PID, to account its CPU time during the measured window.
    pub server_pid: Option<u32>,
}

#[derive(Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub addr: String,
    pub tls_mode: String,
    pub concurrency: usize,
    pub measured_seconds: f64,
    pub completed: u64,
    pub errors: u64,
    pub handshakes_per_second: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub key_exchange: Option<String>,
    pub error_samples: Vec<String>,
    /// CPU time used during the measured window (server, this load generator, everyone).
    pub cpu: cpu::Usage,
    /// Server CPU time per completed handshake.
    pub server_cpu_ms_per_handshake: Option<f64>,
}

#[derive(Default)]
struct WorkerResult {
    latencies_ms: Vec<f64>,
    errors: u64,
    error_samples: Vec<String>,
    negotiated: Option<(String, String, String)>,
}

pub async fn run(opts: Options) -> Result<Report> {
    let opts = Arc::new(opts);
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let deadline = measure_from + opts.duration;
    let mut tasks = Vec::with_capacity(opts.concurrency);
    for worker in 0..opts.concurrency {
        let opts = Arc::clone(&opts);
        tasks.push(tokio::spawn(async move {
            worker_loop(&opts, worker, measure_from, deadline).await
        }));
    }
    // CPU accounting over the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = cpu::Snapshot::take(opts.server_pid);
    tokio::time::sleep_until(deadline.into()).await;
    let cpu_usage = cpu::Usage::between(cpu_start, cpu::Snapshot::take(opts.server_pid));

    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut error_samples: Vec<String> = Vec::new();
    let mut negotiated = None;
    for task in tasks {
        let r = task.await?;
        latencies.extend(r.latencies_ms);
        errors += r.errors;
        for e in r.error_samples {
            if error_samples.len() < MAX_ERROR_SAMPLES && !error_samples.contains(&e) {
                error_samples.push(e);
            }
        }
        negotiated = negotiated.or(r.negotiated);
    }
    let measured = opts.duration.as_secs_f64();
    let (tls_version, cipher_suite, key_exchange) = match negotiated {
        Some((v, c, k)) => (Some(v), Some(c), Some(k)),
        None => (None, None, None),
    };
    Ok(Report {
        kind: "handshakes",
        addr: opts.target.addr.to_string(),
        tls_mode: format!("{:?}", opts.target.mode).to_lowercase(),
        concurrency: opts.concurrency,
        measured_seconds: measured,
        completed: latencies.len() as u64,
        errors,
        handshakes_per_second: latencies.len() as f64 / measured,
        latency_p50_ms: stats::percentile(&latencies, 50.0),
        latency_p99_ms: stats::percentile(&latencies, 99.0),
        tls_version,
        cipher_suite,
        key_exchange,
        error_samples,
        server_cpu_ms_per_handshake: cpu_usage
            .server_seconds
            .filter(|_| !latencies.is_empty())
            .map(|s| s * 1e3 / latencies.len() as f64),
        cpu: cpu_usage,
    })
}

async fn worker_loop(
    opts: &Options,
    worker: usize,
    measure_from: Instant,
    deadline: Instant,
) -> WorkerResult {
    let auth = smtp::auth_plain_line(&opts.user, &opts.pass);
    let mut result = WorkerResult::default();
    let mut i = worker;
    while Instant::now() < deadline {
        let source = smtp::source_ip(i, opts.sources);
        i += opts.concurrency;
        let began = Instant::now();
        match one_handshake(&opts.target, source, &auth).await {
            Ok(negotiated) => {
                let done = Instant::now();
                if done >= measure_from && done <= deadline {
                    result.latencies_ms.push((done - began).as_secs_f64() * 1e3);
                }
                if result.negotiated.is_none() {
                    result.negotiated = Some(negotiated);
                }
            }
            Err(e) => {
                result.errors += 1;
                if result.error_samples.len() < MAX_ERROR_SAMPLES {
                    result.error_samples.push(format!("{e:#}"));
                }
                // Back off briefly so a refusing server does not turn this into a spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    result
}

async fn one_handshake(
    target: &TlsTarget,
    source: std::net::Ipv4Addr,
    auth: &str,
) -> Result<(String, String, String)> {
    let mut session = smtp::tls_session(target, source).await?;
    session.expect(auth, 235, "AUTH PLAIN").await?;
    session.expect("QUIT", 221, "QUIT").await?;
    let mut tls = session.into_inner()?;
    let conn = tls.get_ref().1;
    let negotiated = (
        conn.protocol_version()
            .map_or_else(|| "?".into(), |v| format!("{v:?}")),
        conn.negotiated_cipher_suite()
            .map_or_else(|| "?".into(), |c| format!("{:?}", c.suite())),
        conn.negotiated_key_exchange_group()
            .map_or_else(|| "?".into(), |g| format!("{:?}", g.name())),
    );
    // Best effort close_notify; the server has already said 221.
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    Ok(negotiated)
}
