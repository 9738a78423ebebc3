//! Load generators for `bench/run.sh` (AgentKeys Mail benchmark).
//!
//! Inbound MX throughput is measured with Postfix's `smtp-source`; this program
//! covers what `smtp-source` cannot: TLS submission handshakes, idle
//! connections with memory sampling, AUTH timing per failure step, and the
//! Markdown report. Every target must be in 127.0.0.0/8.

mod auth_timing;
mod cpu;
mod handshakes;
mod idle;
mod inbound;
mod read_path;
mod report;
mod smtp;
mod stats;
mod submit;
mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio_rustls::rustls::pki_types::ServerName;

#[derive(Parser)]
#[command(about = "AgentKeys Mail bench load generator (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to reach the TLS submission service.
#[derive(clap::Args, Clone)]
struct TlsArgs {
    /// Submission address, 127.0.0.0/8 only.
    #[arg(long)]
    addr: SocketAddr,
    /// STARTTLS (port 587 style) or implicit TLS (port 465 style).
    #[arg(long, value_enum, default_value = "starttls")]
    tls_mode: smtp::TlsMode,
    /// TLS server name to send (SNI); the certificate is not verified.
    #[arg(long, default_value = "agents.localhost")]
    sni: String,
    /// Allow TLS session resumption (default: every handshake is a full one).
    #[arg(long)]
    resume: bool,
    /// Spread connections over source addresses 127.0.0.1..=127.0.0.N.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(1..=254))]
    sources: u8,
}

impl TlsArgs {
    fn target(&self) -> Result<smtp::TlsTarget> {
        smtp::check_loopback(self.addr)?;
        Ok(smtp::TlsTarget {
            addr: self.addr,
            mode: self.tls_mode,
            connector: tls::bench_connector(self.resume)?,
            sni: ServerName::try_from(self.sni.clone()).context("--sni")?,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Full submission handshakes per second: EHLO, STARTTLS, EHLO, AUTH PLAIN (235), QUIT.
    Handshakes {
        #[command(flatten)]
        tls: TlsArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        pass: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Measured time, e.g. 10s or 500ms.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// PID of the server, to report its CPU time per handshake.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Unmeasured time before it.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        warmup: Duration,
        /// Also write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Hold N idle connections (banner + EHLO) and sample the server's RSS.
    Idle {
        /// Server address, 127.0.0.0/8 only.
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Spread connections over source addresses 127.0.0.1..=127.0.0.N.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=254))]
        sources: u8,
        /// How long to hold them once all are open.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
        /// PID of the server, to read VmRSS/VmHWM from /proc/PID/status.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Reset the server's VmHWM first (write 5 to /proc/PID/clear_refs).
        #[arg(long, requires = "server_pid")]
        reset_hwm: bool,
        /// Upgrade each connection with STARTTLS and EHLO again before idling.
        #[arg(long)]
        starttls: bool,
        #[arg(long, default_value = "agents.localhost")]
        sni: String,
        /// A name for this measurement in the report.
        #[arg(long, default_value = "idle")]
        label: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// AUTH PLAIN reply latency per outcome of `agentkeys demo seed --json`.
    AuthTiming {
        #[command(flatten)]
        tls: TlsArgs,
        /// JSON file `{"cases":[{"outcome","username","password","expect"}…]}`.
        #[arg(long)]
        cases: PathBuf,
        /// Samples per case.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        /// Concurrent connections per case (each makes its share of the rounds in turn).
        #[arg(long, default_value_t = 4)]
        lanes: usize,
        /// Failing attempts per connection before reconnecting.
        #[arg(long, default_value_t = 3)]
        attempts_per_connection: usize,
        /// Stop (and report what was gathered) after this long.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        max_duration: Duration,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Submission throughput over persistent STARTTLS+AUTH sessions, then (with
    /// --metrics-url) the time until the server reports every message delivered.
    Submit {
        #[command(flatten)]
        tls: TlsArgs,
        #[arg(long)]
        user: String,
        #[arg(long)]
        pass: String,
        /// MAIL FROM and From: (default: --user).
        #[arg(long)]
        from: Option<String>,
        /// The one recipient of every message.
        #[arg(long, default_value = "x@bench-remote.test")]
        to: String,
        #[arg(long, default_value_t = 5000)]
        count: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Body bytes per message (80-column lines).
        #[arg(long, default_value_t = 10240)]
        size: usize,
        /// Stop submitting after this long.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        max_duration: Duration,
        /// PID of the server, for its CPU time.
        #[arg(long)]
        server_pid: Option<u32>,
        /// The server's Prometheus page, e.g. http://127.0.0.1:8080/metrics (loopback
        /// only); repeat it for several nodes sharing a queue (their counters add up).
        #[arg(long)]
        metrics_url: Vec<String>,
        /// Longest wait for deliveries after the last submission.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        deliver_timeout: Duration,
        #[arg(long, default_value = "agentkeys")]
        label: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List-page latency (GET /v1/inboxes/{inbox}/messages) with a read capability.
    ListLatency {
        /// HTTP listener, 127.0.0.0/8 only.
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        inbox: String,
        /// A read capability (akcap1.…) for the inbox.
        #[arg(long)]
        token: String,
        /// Timed requests of each kind (first page, cursor pages).
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        max_duration: Duration,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time from the end of SMTP DATA (and from its 250) to the message.received
    /// event at a Server-Sent Events subscriber of the same inbox.
    EventLatency {
        /// Inbound MX, 127.0.0.0/8 only.
        #[arg(long)]
        smtp: SocketAddr,
        /// HTTP listener, 127.0.0.0/8 only.
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        inbox: String,
        /// A read capability (akcap1.…) for the inbox.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Body bytes per message.
        #[arg(long, default_value_t = 2048)]
        size: usize,
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        max_duration: Duration,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// MX throughput with a pool of ready-made messages (the `inbound_pool`
    /// example's), and each message's wait from end of data to `250`.
    Inbound {
        /// MX address, 127.0.0.0/8 only.
        #[arg(long)]
        addr: SocketAddr,
        /// JSON lines: {"helo", "mail_from", "data"}.
        #[arg(long)]
        pool: PathBuf,
        #[arg(long, default_value = "bench@agents.localhost")]
        rcpt: String,
        #[arg(long, default_value_t = 10000)]
        count: u64,
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
        /// One session per worker, messages back to back (default: one message per connection).
        #[arg(long)]
        persistent: bool,
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        max_duration: Duration,
        /// PID of the server, for its CPU time per message.
        #[arg(long)]
        server_pid: Option<u32>,
        /// PIDs whose CPU, descendants included, is the server's (Postfix's master, the milters).
        #[arg(long, num_args = 1.., conflicts_with = "server_pid")]
        server_tree: Vec<u32>,
        #[arg(long, default_value = "inbound")]
        label: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// CPU seconds (user + system) of a process and all its descendants, the
    /// reaped ones included (cutime/cstime): for a multi-process peer like Postfix.
    CpuTree {
        #[arg(long, num_args = 1..)]
        pid: Vec<u32>,
    },
    /// Print N currently free TCP ports on 127.0.0.1 (space separated).
    FreePorts {
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Render a results directory written by bench/run.sh as Markdown.
    Report {
        #[arg(long)]
        dir: PathBuf,
        /// Render only the outbound section (outbound.json, dkim-rate.jsonl).
        #[arg(long)]
        outbound: bool,
        /// Render only the realistic inbound section (realistic-*.json, sick-*.json).
        #[arg(long, conflicts_with = "outbound")]
        realistic: bool,
    },
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn emit<T: serde::Serialize>(report: &T, out: Option<&PathBuf>) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    println!("{json}");
    if let Some(path) = out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Handshakes {
            tls,
            user,
            pass,
            concurrency,
            duration,
            warmup,
            server_pid,
            out,
        } => {
            if concurrency == 0 {
                bail!("--concurrency must be at least 1");
            }
            let report = handshakes::run(handshakes::Options {
                target: tls.target()?,
                user,
                pass,
                concurrency,
                duration,
                warmup,
                sources: tls.sources,
                server_pid,
            })
            .await?;
            eprintln!(
                "handshakes: {:.0}/s ({} completed, {} errors)",
                report.handshakes_per_second, report.completed, report.errors
            );
            emit(&report, out.as_ref())
        }
        Command::Idle {
            addr,
            connections,
            sources,
            hold,
            server_pid,
            reset_hwm,
            starttls,
            sni,
            label,
            out,
        } => {
            smtp::check_loopback(addr)?;
            let tls = if starttls {
                Some(smtp::TlsTarget {
                    addr,
                    mode: smtp::TlsMode::Starttls,
                    connector: tls::bench_connector(false)?,
                    sni: ServerName::try_from(sni).context("--sni")?,
                })
            } else {
                None
            };
            let report = idle::run(idle::Options {
                addr,
                connections,
                sources,
                hold,
                server_pid,
                reset_hwm,
                tls,
                label,
            })
            .await?;
            emit(&report, out.as_ref())
        }
        Command::AuthTiming {
            tls,
            cases,
            rounds,
            lanes,
            attempts_per_connection,
            max_duration,
            out,
        } => {
            let report = auth_timing::run(auth_timing::Options {
                target: tls.target()?,
                cases: auth_timing::load_cases(&cases)?,
                rounds,
                lanes,
                attempts_per_connection,
                max_duration,
                sources: tls.sources,
            })
            .await?;
            emit(&report, out.as_ref())
        }
        Command::ListLatency { http, inbox, token, requests, limit, max_duration, out } => {
            let report = read_path::list(read_path::ListOptions { http, inbox, token, requests, limit, max_duration }).await?;
            emit(&report, out.as_ref())
        }
        Command::EventLatency { smtp, http, inbox, token, messages, size, max_duration, out } => {
            smtp::check_loopback(smtp)?;
            let report =
                read_path::events(read_path::EventOptions { smtp, http, inbox, token, messages, size, max_duration }).await?;
            emit(&report, out.as_ref())
        }
        Command::Submit {
            tls,
            user,
            pass,
            from,
            to,
            count,
            concurrency,
            size,
            max_duration,
            server_pid,
            metrics_url,
            deliver_timeout,
            label,
            out,
        } => {
            if concurrency == 0 || count == 0 {
                bail!("--concurrency and --count must be at least 1");
            }
            let metrics = metrics_url.iter().map(|u| submit::parse_metrics_url(u)).collect::<Result<Vec<_>>>()?;
            let report = submit::run(submit::Options {
                target: tls.target()?,
                from: from.unwrap_or_else(|| user.clone()),
                user,
                pass,
                to,
                count,
                concurrency,
                size,
                sources: tls.sources,
                max_duration,
                server_pid,
                metrics,
                deliver_timeout,
                label,
            })
            .await?;
            emit(&report, out.as_ref())
        }
        Command::Inbound { addr, pool, rcpt, count, concurrency, persistent, max_duration, server_pid, server_tree, label, out } => {
            if concurrency == 0 || count == 0 {
                bail!("--concurrency and --count must be at least 1");
            }
            let report = inbound::run(inbound::Options {
                addr,
                pool: inbound::load_pool(&pool)?,
                rcpt,
                count,
                concurrency,
                persistent,
                max_duration,
                server_pid,
                server_trees: server_tree,
                label,
            })
            .await?;
            emit(&report, out.as_ref())
        }
        Command::CpuTree { pid } => {
            let total: f64 = pid.iter().map(|p| cpu::tree_seconds(*p)).sum();
            println!("{total:.3}");
            Ok(())
        }
        Command::FreePorts { count } => {
            // Hold every listener until all are chosen, so the ports are distinct.
            let listeners = (0..count)
                .map(|_| TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()?;
            let ports = listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port().to_string()))
                .collect::<std::io::Result<Vec<_>>>()?;
            println!("{}", ports.join(" "));
            Ok(())
        }
        Command::Report { dir, outbound, realistic } => {
            if realistic {
                print!("{}", report::render_realistic(&dir)?);
            } else if outbound {
                print!("{}", report::render_outbound(&dir)?);
            } else {
                print!("{}", report::render(&dir)?);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("s").is_err());
    }
}
