//! The loopback DNS server of `agentkeys-testdns` as a process, for the
//! benchmarks (`bench/run.sh`): serves a zone file on a given address (port 53 on
//! a loopback address of its own, so peers that only speak to port 53 — OpenDKIM
//! and OpenDMARC through the C library's resolver — can use it too) until killed.
//!
//! ```text
//! agentkeys-testdns --listen 127.0.53.1:53 --zone zone.txt [--drop-every N]
//! ```
//!
//! `--drop-every 1` never answers (a name server that is down); `--drop-every 10`
//! loses every tenth query. It prints `listening on ADDR` once it serves; with
//! `--stats FILE` it keeps FILE holding the number of queries received so far
//! (rewritten every 200 ms). It runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use agentkeys_testdns::{TestDns, Zone};

const USAGE: &str = "usage: agentkeys-testdns --listen IP:PORT --zone FILE [--drop-every N] [--stats FILE]";
/// How often `--stats` is rewritten.
const STATS_EVERY: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentkeys-testdns: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut listen: Option<SocketAddr> = None;
    let mut zone_file: Option<String> = None;
    let mut drop_every: Option<u64> = None;
    let mut stats: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--zone" => zone_file = Some(value()?),
            "--stats" => stats = Some(value()?),
            "--drop-every" => {
                let n: u64 = value()?.parse().map_err(|e| format!("--drop-every: {e}"))?;
                if n == 0 {
                    return Err("--drop-every must be at least 1".into());
                }
                drop_every = Some(n);
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or(USAGE)?;
    let zone_file = zone_file.ok_or(USAGE)?;
    let text = std::fs::read_to_string(&zone_file).map_err(|e| format!("{zone_file}: {e}"))?;
    let mut zone = Zone::parse(&text).map_err(|errors| {
        errors.iter().map(|e| format!("{zone_file}: {e}")).collect::<Vec<_>>().join("\n")
    })?;
    if let Some(n) = drop_every {
        zone = zone.drop_every(n);
    }
    let dns = TestDns::bind(listen, zone).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    dns.set_logging(false);
    println!("listening on {}", dns.addr());
    loop {
        if let Some(path) = &stats {
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, format!("{}\n", dns.received()))
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| format!("--stats {path}: {e}"))?;
        }
        std::thread::sleep(STATS_EVERY);
    }
}
