//! `idle`: hold N idle SMTP connections and sample the server's memory.
//!
//! Each connection is bound to a source in 127.0.0.1..=127.0.0.`sources`, reads
//! the banner and sends EHLO (optionally STARTTLS + EHLO), then sits idle. While
//! they are held, `/proc/PID/status` of the server is sampled every 100 ms.
//! At the end every connection sends NOOP, to show it was still open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::smtp::{self, Smtp, TlsTarget};

/// Connections being opened at once (keeps the server's accept backlog small).
const CONNECT_PARALLELISM: usize = 64;
/// How often the server's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Most distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;

pub struct Options {
    pub addr: std::net::SocketAddr,
    pub connections: usize,
    pub sources: u8,
    pub hold: Duration,
    pub server_pid: Option<u32>,
    pub reset_hwm: bool,
    /// Upgrade each connection with STARTTLS before idling.
    pub tls: Option<TlsTarget>,
    pub label: String,
}

#[derive(Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub label: String,
    pub addr: String,
    pub starttls: bool,
    pub requested: usize,
    pub established: usize,
    pub failed: usize,
    pub alive_at_end: usize,
    pub held_seconds: f64,
    pub server_pid: Option<u32>,
    pub rss_before_kb: Option<u64>,
    pub rss_peak_sampled_kb: Option<u64>,
    pub vm_hwm_kb: Option<u64>,
    pub hwm_reset: bool,
    pub error_samples: Vec<String>,
}

/// Both plain and TLS sessions are held as opaque values; only NOOP is sent.
trait Held: Send {
    fn noop(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>>;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Held for Smtp<S> {
    fn noop(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            self.expect("NOOP", 250, "NOOP").await?;
            Ok(())
        })
    }
}

/// Reads `VmRSS` and `VmHWM` (kB) from `/proc/PID/status`.
pub fn read_memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing"))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parse {line:?}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub async fn run(opts: Options) -> Result<Report> {
    let mut hwm_reset = false;
    let mut rss_before = None;
    if let Some(pid) = opts.server_pid {
        if opts.reset_hwm {
            // Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .with_context(|| format!("reset VmHWM of {pid}"))?;
            hwm_reset = true;
        }
        rss_before = Some(read_memory(pid)?.0);
    }
    let mut peak = rss_before;
    let sample = |peak: &mut Option<u64>| {
        if let Some(pid) = opts.server_pid
            && let Ok((rss, _)) = read_memory(pid)
        {
            *peak = Some(peak.map_or(rss, |p| p.max(rss)));
        }
    };

    let tls = opts.tls.clone().map(Arc::new);
    let permits = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut tasks = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let permits = Arc::clone(&permits);
        let addr = opts.addr;
        let source = smtp::source_ip(i, opts.sources);
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let held: Box<dyn Held> = match tls {
                Some(target) => Box::new(smtp::tls_session(&target, source).await?),
                None => {
                    let mut s = Smtp::new(smtp::connect(addr, source).await?);
                    s.expect_reply(220, "banner").await?;
                    s.expect(&format!("EHLO {}", smtp::EHLO_NAME), 250, "EHLO")
                        .await?;
                    Box::new(s)
                }
            };
            anyhow::Ok(held)
        }));
    }
    let mut held = Vec::with_capacity(opts.connections);
    let mut failed = 0;
    let mut error_samples: Vec<String> = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(h) => held.push(h),
            Err(e) => {
                failed += 1;
                let e = format!("{e:#}");
                if error_samples.len() < MAX_ERROR_SAMPLES && !error_samples.contains(&e) {
                    error_samples.push(e);
                }
            }
        }
        sample(&mut peak);
    }
    eprintln!(
        "idle[{}]: {} established, {} failed; holding {:?}",
        opts.label,
        held.len(),
        failed,
        opts.hold
    );

    let hold_start = Instant::now();
    while hold_start.elapsed() < opts.hold {
        sample(&mut peak);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    sample(&mut peak);
    let held_seconds = hold_start.elapsed().as_secs_f64();
    let vm_hwm = match opts.server_pid {
        Some(pid) => Some(read_memory(pid)?.1),
        None => None,
    };

    let mut alive = 0;
    for h in &mut held {
        if h.noop().await.is_ok() {
            alive += 1;
        }
    }
    let established = held.len();
    drop(held);
    if established == 0 && opts.connections > 0 {
        bail!("no connection could be established: {error_samples:?}");
    }

    Ok(Report {
        kind: "idle",
        label: opts.label,
        addr: opts.addr.to_string(),
        starttls: opts.tls.is_some(),
        requested: opts.connections,
        established,
        failed,
        alive_at_end: alive,
        held_seconds,
        server_pid: opts.server_pid,
        rss_before_kb: rss_before,
        rss_peak_sampled_kb: peak,
        vm_hwm_kb: vm_hwm,
        hwm_reset,
        error_samples,
    })
}
