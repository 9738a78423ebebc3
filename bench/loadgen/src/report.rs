//! `report`: turns a results directory written by `bench/run.sh` into Markdown.
//!
//! Inputs (any may be missing; the table then says "not measured"):
//! - `meta.tsv`: `key<TAB>value` lines (machine, versions, load parameters);
//! - `throughput.tsv`: `target<TAB>mode<TAB>run<TAB>messages<TAB>seconds<TAB>ok`
//!   and optionally `<TAB>server_cpu_seconds` (user + system, empty if unknown);
//! - `realistic-*.json`, `sick-*.json`, `realistic-checks.tsv`,
//!   `realistic-meta.tsv`: the realistic inbound part ([`render_realistic`]);
//! - `handshakes.json`, `idle.json`, `idle-tls.json`, `idle-sink.json`,
//!   `auth-timing.json`: the JSON printed by the other subcommands.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::stats;

/// Bar: our durable inbound throughput over Postfix's, same run.
pub const BAR_VS_POSTFIX: f64 = 1.5;
/// Bar: our durable inbound throughput over smtp-sink's (no storage).
pub const BAR_VS_SINK: f64 = 0.5;
/// Bar: full TLS submission handshakes per second.
pub const BAR_HANDSHAKES_PER_SECOND: f64 = 2500.0;
/// Bar: peak RSS at 1,000 idle connections, in KiB (64 MiB).
pub const BAR_IDLE_RSS_KB: u64 = 64 * 1024;
/// Tolerance for "AUTH failures are never faster or slower by step": the spread
/// of the per-step medians must stay within this fraction of their median…
pub const AUTH_SPREAD_TOLERANCE: f64 = 0.05;
/// …or within this many milliseconds, whichever is larger (loopback jitter).
pub const AUTH_SPREAD_FLOOR_MS: f64 = 0.05;

const TARGETS: [(&str, &str); 3] = [
    ("smtp-sink", "smtp-sink (no storage)"),
    ("postfix", "Postfix (durable queue)"),
    ("agentkeys", "AgentKeys (durable)"),
];
const MODES: [(&str, &str); 2] = [
    ("per-connection", "one message per connection"),
    ("persistent", "persistent connections (`-d`)"),
];

struct Run {
    target: String,
    mode: String,
    messages: f64,
    seconds: f64,
    ok: bool,
    /// The server's CPU time (user + system) during the run, when measured.
    cpu_seconds: Option<f64>,
}

fn read_meta(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("meta.tsv"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn read_runs(dir: &Path) -> Result<Vec<Run>> {
    let Ok(text) = std::fs::read_to_string(dir.join("throughput.tsv")) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            anyhow::ensure!(f.len() == 6 || f.len() == 7, "throughput.tsv: bad line {l:?}");
            Ok(Run {
                target: f[0].to_string(),
                mode: f[1].to_string(),
                messages: f[3].parse().with_context(|| format!("messages in {l:?}"))?,
                seconds: f[4].parse().with_context(|| format!("seconds in {l:?}"))?,
                ok: f[5] == "1",
                cpu_seconds: f.get(6).and_then(|c| c.parse().ok()),
            })
        })
        .collect()
}

fn read_json(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "**FAIL**" }
}

fn opt_ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "–".into(), |x| format!("{x:.3}"))
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// Median messages/s over the successful runs of (target, mode).
fn median_rate(runs: &[Run], target: &str, mode: &str) -> Option<f64> {
    let rates: Vec<f64> = runs
        .iter()
        .filter(|r| r.ok && r.target == target && r.mode == mode && r.seconds > 0.0)
        .map(|r| r.messages / r.seconds)
        .collect();
    stats::median(&rates)
}

/// Median server CPU per message (µs) over the successful runs of (target, mode)
/// that measured it.
fn median_cpu_us(runs: &[Run], target: &str, mode: &str) -> Option<f64> {
    let per: Vec<f64> = runs
        .iter()
        .filter(|r| r.ok && r.target == target && r.mode == mode && r.messages > 0.0)
        .filter_map(|r| Some(r.cpu_seconds? * 1e6 / r.messages))
        .collect();
    stats::median(&per)
}

pub fn render(dir: &Path) -> Result<String> {
    let meta = read_meta(dir);
    let m = |k: &str| meta.get(k).map_or("?", String::as_str);
    let runs = read_runs(dir)?;
    let mut bars: Vec<(String, String, bool)> = Vec::new();
    let mut out = String::new();

    writeln!(
        out,
        "Run {} on commit `{}` with `{}`.",
        m("date"),
        m("commit"),
        m("command")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Machine: {} CPUs ({}), {} RAM, Linux {}, work directory on {}; {}; Postfix {}. Load average (1, 5, 15 min): {}.",
        m("nproc"),
        m("cpu"),
        m("memory"),
        m("kernel"),
        m("filesystem"),
        m("rustc"),
        m("postfix"),
        m("load")
    )?;
    writeln!(out)?;

    // Inbound throughput.
    writeln!(out, "### Inbound MX throughput")?;
    writeln!(out)?;
    writeln!(
        out,
        "`smtp-source -s {} -m {} -l {}` (messages/s, median of {} runs; the three servers alternate run by run).",
        m("sessions"),
        m("messages"),
        m("size"),
        m("repeats")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| Mode | {} | {} | {} | AgentKeys / Postfix (bar ≥ {BAR_VS_POSTFIX}×) | AgentKeys / smtp-sink (bar ≥ {BAR_VS_SINK}) |",
        TARGETS[0].1, TARGETS[1].1, TARGETS[2].1
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    for (mode, mode_label) in MODES {
        let rate = |t: &str| median_rate(&runs, t, mode);
        let cell = |t: &str| rate(t).map_or_else(|| "not measured".into(), |r| format!("{r:.0}"));
        let ours = rate("agentkeys");
        let vs = |peer: Option<f64>,
                  bar: f64,
                  name: &str,
                  bars: &mut Vec<(String, String, bool)>| match (ours, peer) {
            (Some(o), Some(p)) if p > 0.0 => {
                let ratio = o / p;
                let pass = ratio >= bar;
                bars.push((
                    format!("inbound {mode_label}: AgentKeys / {name} ≥ {bar}"),
                    format!("{ratio:.2}"),
                    pass,
                ));
                format!("{ratio:.2} ({})", verdict(pass))
            }
            _ => "–".into(),
        };
        let vs_postfix = vs(rate("postfix"), BAR_VS_POSTFIX, "Postfix", &mut bars);
        let vs_sink = vs(rate("smtp-sink"), BAR_VS_SINK, "smtp-sink", &mut bars);
        writeln!(
            out,
            "| {mode_label} | {} | {} | {} | {vs_postfix} | {vs_sink} |",
            cell("smtp-sink"),
            cell("postfix"),
            cell("agentkeys")
        )?;
    }
    writeln!(out)?;
    if runs.iter().any(|r| r.cpu_seconds.is_some()) {
        writeln!(
            out,
            "Server CPU time (user + system, from `/proc/PID/stat` before and after each run; Postfix: the master and every \
             process under it, exited ones included) per accepted message, µs, median of the runs:"
        )?;
        writeln!(out)?;
        writeln!(out, "| Mode | {} | {} | {} |", TARGETS[0].1, TARGETS[1].1, TARGETS[2].1)?;
        writeln!(out, "|---|---:|---:|---:|")?;
        for (mode, mode_label) in MODES {
            let cell = |t: &str| {
                median_cpu_us(&runs, t, mode).map_or_else(|| "not measured".into(), |us| format!("{us:.0}"))
            };
            writeln!(out, "| {mode_label} | {} | {} | {} |", cell("smtp-sink"), cell("postfix"), cell("agentkeys"))?;
        }
        writeln!(out)?;
    }
    if let Some(accounting) = meta.get("accounting").filter(|a| !a.is_empty()) {
        writeln!(
            out,
            "Accounting after the runs (warm-ups included): {accounting}."
        )?;
        writeln!(out)?;
    }
    if !runs.is_empty() {
        writeln!(out, "<details><summary>Every run (messages/s)</summary>")?;
        writeln!(out)?;
        for (target, _) in TARGETS {
            for (mode, _) in MODES {
                let list: Vec<String> = runs
                    .iter()
                    .filter(|r| r.target == target && r.mode == mode)
                    .map(|r| {
                        if r.ok {
                            format!("{:.0}", r.messages / r.seconds)
                        } else {
                            "failed".into()
                        }
                    })
                    .collect();
                if !list.is_empty() {
                    writeln!(out, "- {target}, {mode}: {}", list.join(", "))?;
                }
            }
        }
        writeln!(out)?;
        writeln!(out, "</details>")?;
        writeln!(out)?;
    }

    // Handshakes.
    writeln!(out, "### Submission handshakes")?;
    writeln!(out)?;
    let ours_hs = read_json(dir, "handshakes.json");
    let postfix_hs = read_json(dir, "handshakes-postfix.json");
    if ours_hs.is_none() && postfix_hs.is_none() {
        writeln!(out, "Not measured.")?;
    } else {
        let any = ours_hs
            .as_ref()
            .or(postfix_hs.as_ref())
            .map_or(Value::Null, Clone::clone);
        writeln!(
            out,
            "Each handshake: connect, EHLO, STARTTLS, full TLS handshake (no resumption), EHLO, AUTH PLAIN → 235, QUIT; {} concurrent clients for {} s. \
             Postfix: the same private instance, STARTTLS with an ECDSA P-256 certificate, Cyrus SASL (sasldb).",
            any["concurrency"], any["measured_seconds"]
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "| Server | handshakes/s | p50 ms | p99 ms | errors | TLS | bar ≥ {BAR_HANDSHAKES_PER_SECOND:.0}/s |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---|---|")?;
        for (label, h, is_ours) in [
            ("Postfix", &postfix_hs, false),
            ("AgentKeys", &ours_hs, true),
        ] {
            let Some(h) = h else {
                writeln!(out, "| {label} | not measured | | | | | |")?;
                continue;
            };
            let rate = h["handshakes_per_second"].as_f64().unwrap_or(0.0);
            let errors = h["errors"].as_u64().unwrap_or(0);
            let bar_cell = if is_ours {
                let pass = rate >= BAR_HANDSHAKES_PER_SECOND && errors == 0;
                bars.push((
                    format!("submission handshakes/s with TLS ≥ {BAR_HANDSHAKES_PER_SECOND:.0}"),
                    format!("{rate:.0}"),
                    pass,
                ));
                verdict(pass).to_string()
            } else {
                "–".into()
            };
            writeln!(
                out,
                "| {label} | {rate:.0} | {} | {} | {errors} | {} {} {} | {bar_cell} |",
                opt_ms(&h["latency_p50_ms"]),
                opt_ms(&h["latency_p99_ms"]),
                h["tls_version"].as_str().unwrap_or("?"),
                h["cipher_suite"].as_str().unwrap_or("?"),
                h["key_exchange"].as_str().unwrap_or("?"),
            )?;
        }
        if let (Some(o), Some(p)) = (&ours_hs, &postfix_hs) {
            let (o, p) = (
                o["handshakes_per_second"].as_f64().unwrap_or(0.0),
                p["handshakes_per_second"].as_f64().unwrap_or(0.0),
            );
            if p > 0.0 {
                writeln!(out)?;
                writeln!(out, "AgentKeys / Postfix: {:.2}.", o / p)?;
            }
        }
        for (label, h) in [("Postfix", &postfix_hs), ("AgentKeys", &ours_hs)] {
            let Some(h) = h else { continue };
            let c = &h["cpu"];
            let secs = |v: &Value| {
                v.as_f64()
                    .map_or_else(|| "?".into(), |x| format!("{x:.1} s"))
            };
            if c["machine_total_seconds"].is_number() {
                writeln!(out)?;
                let server = if c["server_seconds"].is_number() {
                    format!(
                        "server {} ({} ms per handshake), ",
                        secs(&c["server_seconds"]),
                        h["server_cpu_ms_per_handshake"]
                            .as_f64()
                            .map_or_else(|| "?".into(), |x| format!("{x:.3}"))
                    )
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "CPU while measuring {label}: {server}load generator {}, all processes {} busy of {} available.",
                    secs(&c["loadgen_seconds"]),
                    secs(&c["machine_busy_seconds"]),
                    secs(&c["machine_total_seconds"]),
                )?;
            }
        }
        for (label, h) in [("Postfix", &postfix_hs), ("AgentKeys", &ours_hs)] {
            if let Some(samples) = h
                .as_ref()
                .and_then(|h| h["error_samples"].as_array().cloned())
                .filter(|a| !a.is_empty())
            {
                writeln!(out)?;
                writeln!(out, "{label} errors seen: {}", Value::Array(samples))?;
            }
        }
    }
    writeln!(out)?;

    // Idle memory.
    writeln!(out, "### Memory with idle connections")?;
    writeln!(out)?;
    let idle_files = [
        ("idle.json", "AgentKeys, inbound (EHLO)", true),
        (
            "idle-tls.json",
            "AgentKeys, submission (STARTTLS, EHLO)",
            false,
        ),
        ("idle-sink.json", "smtp-sink, for reference", false),
    ];
    let mut any_idle = false;
    for (file, label, is_bar) in idle_files {
        let Some(i) = read_json(dir, file) else {
            continue;
        };
        if !any_idle {
            writeln!(
                out,
                "| Server | established / requested | still open at end | RSS before | peak RSS (VmHWM) | bar |"
            )?;
            writeln!(out, "|---|---:|---:|---:|---:|---|")?;
            any_idle = true;
        }
        let established = i["established"].as_u64().unwrap_or(0);
        let requested = i["requested"].as_u64().unwrap_or(0);
        let alive = i["alive_at_end"].as_u64().unwrap_or(0);
        let hwm = i["vm_hwm_kb"].as_u64();
        let bar_cell = match (is_bar, hwm) {
            (true, Some(kb)) => {
                let pass = kb < BAR_IDLE_RSS_KB && established == requested && alive == established;
                bars.push((
                    format!("peak RSS at {requested} idle connections < 64 MiB"),
                    mib(kb),
                    pass,
                ));
                format!("< 64 MiB ({})", verdict(pass))
            }
            _ => "–".into(),
        };
        writeln!(
            out,
            "| {label} | {established} / {requested} | {alive} | {} | {} | {bar_cell} |",
            i["rss_before_kb"].as_u64().map_or_else(|| "–".into(), mib),
            hwm.map_or_else(|| "–".into(), mib),
        )?;
    }
    if !any_idle {
        writeln!(out, "Not measured.")?;
    }
    writeln!(out)?;

    // AUTH timing.
    writeln!(out, "### AUTH failure timing")?;
    writeln!(out)?;
    match read_json(dir, "auth-timing.json") {
        Some(a) => {
            writeln!(
                out,
                "Time from sending `AUTH PLAIN` to the full reply, over STARTTLS; {} attempts per case on {} concurrent connections per case (all cases at once), up to {} attempts per connection{}.",
                a["rounds"],
                a["lanes_per_case"],
                a["attempts_per_connection"],
                if a["stopped_by_deadline"].as_bool() == Some(true) {
                    " (stopped early by the time limit)"
                } else {
                    ""
                }
            )?;
            writeln!(out)?;
            writeln!(
                out,
                "| Case | outcome | reply | samples | min ms | median ms | p90 ms | median by attempt 1/2/3 (ms) | errors |"
            )?;
            writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|---:|")?;
            for c in a["cases"].as_array().cloned().unwrap_or_default() {
                let by_attempt: Vec<String> = c["median_by_attempt_ms"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(opt_ms)
                    .collect();
                writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c["case"].as_str().unwrap_or(""),
                    c["outcome"].as_str().unwrap_or("?"),
                    c["expect"],
                    c["samples"],
                    opt_ms(&c["min_ms"]),
                    opt_ms(&c["median_ms"]),
                    opt_ms(&c["p90_ms"]),
                    by_attempt.join(" / "),
                    c["errors"]
                )?;
            }
            writeln!(out)?;
            let errors: u64 = a["cases"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["errors"].as_u64()).sum())
                .unwrap_or(0);
            if let (Some(spread), Some(ratio)) = (
                a["failure_median_spread_ms"].as_f64(),
                a["failure_median_spread_ratio"].as_f64(),
            ) {
                let median = if ratio > 0.0 { spread / ratio } else { 0.0 };
                let allowed = (median * AUTH_SPREAD_TOLERANCE).max(AUTH_SPREAD_FLOOR_MS);
                let pass = spread <= allowed && errors == 0;
                bars.push((
                    format!(
                        "AUTH failures: per-step medians within max({:.0} %, {AUTH_SPREAD_FLOOR_MS} ms) of each other",
                        AUTH_SPREAD_TOLERANCE * 100.0
                    ),
                    format!("spread {spread:.3} ms ({:.1} %)", ratio * 100.0),
                    pass,
                ));
                writeln!(
                    out,
                    "Spread of the failure medians (slowest − fastest): {spread:.3} ms, {:.1} % of their median; allowed {allowed:.3} ms ({}).",
                    ratio * 100.0,
                    verdict(pass)
                )?;
            }
        }
        None => writeln!(out, "Not measured.")?,
    }
    writeln!(out)?;

    // Summary.
    writeln!(out, "### Bars")?;
    writeln!(out)?;
    if bars.is_empty() {
        writeln!(out, "No bar could be evaluated (AgentKeys not measured).")?;
    } else {
        writeln!(out, "| Bar | Measured | Verdict |")?;
        writeln!(out, "|---|---:|---|")?;
        for (bar, measured, pass) in &bars {
            writeln!(out, "| {bar} | {measured} | {} |", verdict(*pass))?;
        }
    }
    Ok(out)
}

/// Bar: signed-and-delivered outbound messages per second to smtp-sink.
pub const BAR_OUTBOUND_PER_SECOND: f64 = 1000.0;

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// The "Outbound" section: `outbound.json` (from `submit`), `dkim-rate.jsonl`
/// (from the `dkim_rate` example) and `outbound-meta.tsv`. Empty when the
/// outbound part did not run.
pub fn render_outbound(dir: &Path) -> Result<String> {
    let Some(o) = read_json(dir, "outbound.json") else {
        return Ok(String::new());
    };
    let meta = {
        let text = std::fs::read_to_string(dir.join("outbound-meta.tsv")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut out = String::new();
    writeln!(out, "Run {} on commit `{}` with `{}`.", m("date"), m("commit"), m("command"))?;
    writeln!(out)?;
    writeln!(out, "Machine: {} CPUs ({}); {}. Load average (1, 5, 15 min): {}.", m("nproc"), m("cpu"), m("rustc"), m("load"))?;
    writeln!(out)?;
    let count = o.get("requested").and_then(Value::as_u64).unwrap_or(0);
    let accepted = o.get("accepted").and_then(Value::as_u64).unwrap_or(0);
    let conc = o.get("concurrency").and_then(Value::as_u64).unwrap_or(0);
    let size = o.get("size").and_then(Value::as_u64).unwrap_or(0);
    writeln!(
        out,
        "`loadgen submit`: {count} messages of {size} body bytes to `{}` over {conc} persistent STARTTLS + AUTH PLAIN sessions (one recipient per message, no pipelining); \
         `agentkeys serve` with `AGENTKEYS_SMARTHOST` = smtp-sink on loopback. Each message is DKIM-signed (rsa-sha256 and ed25519-sha256) at submission, \
         queued durably, then relayed by the queue runner. Delivered = growth of `agentkeys_delivery_attempts_total{{result=\"delivered\"}}` on `/metrics`, polled every 50 ms.",
        m("rcpt")
    )?;
    writeln!(out)?;
    let rate = f(&o, "delivered_per_second");
    let delivered = o.get("delivered").and_then(Value::as_u64);
    writeln!(out, "| Measure | Value |")?;
    writeln!(out, "|---|---:|")?;
    writeln!(out, "| accepted / requested (submission errors) | {accepted} / {count} ({}) |", o.get("errors").and_then(Value::as_u64).unwrap_or(0))?;
    writeln!(
        out,
        "| submission only: messages/s (signing included) | {:.0} ({:.2} s) |",
        f(&o, "submitted_per_second").unwrap_or(0.0),
        f(&o, "submit_seconds").unwrap_or(0.0)
    )?;
    writeln!(
        out,
        "| submission latency p50 / p99 ms | {} / {} |",
        o.get("submit_latency_p50_ms").map_or("–".into(), opt_ms),
        o.get("submit_latency_p99_ms").map_or("–".into(), opt_ms)
    )?;
    match (rate, delivered, f(&o, "end_to_end_seconds")) {
        (Some(r), Some(d), Some(s)) => {
            writeln!(out, "| signed and delivered: messages/s (first submission → last delivery) | **{r:.0}** ({d} in {s:.2} s) |")?;
        }
        _ => writeln!(out, "| signed and delivered | not measured |")?,
    }
    if let Some(a) = o.get("attempts") {
        writeln!(
            out,
            "| delivery attempts: delivered / deferred / bounced | {} / {} / {} |",
            a.get("delivered").and_then(Value::as_u64).unwrap_or(0),
            a.get("deferred").and_then(Value::as_u64).unwrap_or(0),
            a.get("bounced").and_then(Value::as_u64).unwrap_or(0)
        )?;
    }
    for (key, label) in [("submit_cpu", "CPU during submission"), ("end_to_end_cpu", "CPU, first submission → last delivery")] {
        if let Some(c) = o.get(key) {
            writeln!(
                out,
                "| {label}: server / load generator / all busy of available (s) | {:.1} / {:.1} / {:.1} of {:.1} |",
                f(c, "server_seconds").unwrap_or(f64::NAN),
                f(c, "loadgen_seconds").unwrap_or(f64::NAN),
                f(c, "machine_busy_seconds").unwrap_or(f64::NAN),
                f(c, "machine_total_seconds").unwrap_or(f64::NAN)
            )?;
        }
    }
    if let (Some(s), Some(d)) = (o.get("end_to_end_cpu").and_then(|c| f(c, "server_seconds")), delivered.filter(|d| *d > 0)) {
        writeln!(out, "| server CPU per signed-and-delivered message | {:.3} ms |", s * 1e3 / d as f64)?;
    }
    writeln!(out)?;
    let rates: Vec<Value> = std::fs::read_to_string(dir.join("dkim-rate.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if rates.is_empty() {
        writeln!(out, "DKIM signing rate: not measured.")?;
    } else {
        writeln!(out, "DKIM signing of the same 10 KB message on one thread (`cargo run --release -p agentkeys-delivery --example dkim_rate`):")?;
        writeln!(out)?;
        writeln!(out, "| Algorithm | signatures/s per core | µs per message |")?;
        writeln!(out, "|---|---:|---:|")?;
        for r in &rates {
            writeln!(
                out,
                "| {} | {:.0} | {:.1} |",
                r.get("algorithm").and_then(Value::as_str).unwrap_or("?"),
                f(r, "per_second_per_core").unwrap_or(0.0),
                f(r, "us_per_message").unwrap_or(0.0)
            )?;
        }
        writeln!(out)?;
    }
    let verdict_text = match rate {
        Some(r) if delivered == Some(accepted) && accepted == count => verdict(r >= BAR_OUTBOUND_PER_SECOND).to_string(),
        Some(_) => "**FAIL** (not every message was accepted and delivered)".to_string(),
        None => "not measured".to_string(),
    };
    writeln!(out, "| Bar | Measured | Verdict |")?;
    writeln!(out, "|---|---:|---|")?;
    writeln!(
        out,
        "| signed-and-delivered messages/s to smtp-sink ≥ {BAR_OUTBOUND_PER_SECOND:.0} | {} | {verdict_text} |",
        rate.map_or("–".into(), |r| format!("{r:.0}"))
    )?;
    Ok(out)
}

/// Bar: ours verifying over Postfix with OpenDKIM and OpenDMARC, same mail.
pub const BAR_REALISTIC_VS_POSTFIX: f64 = 1.5;
/// Bar: ours verifying over ours without verification.
pub const BAR_REALISTIC_VS_PLAIN: f64 = 0.6;
/// Bar: with a sick resolver, over the healthy figure.
pub const BAR_SICK_VS_HEALTHY: f64 = 0.5;
/// Bar: the longest any message may wait for its `250`, ms.
pub const BAR_SICK_MAX_WAIT_MS: f64 = 1000.0;

const REALISTIC_TARGETS: [(&str, &str); 3] = [
    ("agentkeys-plain", "AgentKeys, no verification (unsigned, `.localhost` sender)"),
    ("postfix-milters", "Postfix + OpenDKIM + OpenDMARC"),
    ("agentkeys-verified", "AgentKeys, verifying"),
];
const SICK: [(&str, &str); 2] = [("silent", "never answers"), ("lossy", "drops every 10th query")];

/// Every `loadgen inbound` report named `{prefix}-{target}-{mode}-*.json`.
fn inbound_reports(dir: &Path, prefix: &str, target: &str, mode: &str) -> Vec<Value> {
    let start = format!("{prefix}-{target}-{mode}-");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(&start) && n.ends_with(".json"))
        .collect();
    names.sort();
    names.iter().filter_map(|n| read_json(dir, n)).collect()
}

fn median_of(reports: &[Value], key: &str) -> Option<f64> {
    let v: Vec<f64> = reports
        .iter()
        .filter(|r| r["errors"].as_u64() == Some(0))
        .filter_map(|r| r[key].as_f64())
        .collect();
    stats::median(&v)
}

fn max_of(reports: &[Value], key: &str) -> Option<f64> {
    reports.iter().filter_map(|r| r[key].as_f64()).reduce(f64::max)
}

fn fmt0(v: Option<f64>) -> String {
    v.map_or_else(|| "not measured".into(), |x| format!("{x:.0}"))
}

/// The realistic inbound section: DKIM-signed mail from domains a loopback DNS
/// server answers for, against Postfix with OpenDKIM and OpenDMARC, and with a
/// sick resolver. Empty when the part did not run.
pub fn render_realistic(dir: &Path) -> Result<String> {
    let meta = {
        let text = std::fs::read_to_string(dir.join("realistic-meta.tsv")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    if meta.is_empty() {
        return Ok(String::new());
    }
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());
    let mut out = String::new();
    let mut bars: Vec<(String, String, bool)> = Vec::new();
    writeln!(out, "Run {} on commit `{}` with `{}`.", m("date"), m("commit"), m("command"))?;
    writeln!(out)?;
    writeln!(out, "Machine: {} CPUs ({}); {}; Postfix {}, OpenDKIM {}, OpenDMARC {}. Load average (1, 5, 15 min): {}.",
        m("nproc"), m("cpu"), m("rustc"), m("postfix"), m("opendkim"), m("opendmarc"), m("load"))?;
    writeln!(out)?;
    writeln!(
        out,
        "`loadgen inbound`: {} messages per run, {} sessions, a pool of {} messages ({}) from {} sender domains, {} body bytes each; \
         {} runs per server and mode after {} untimed warm-up messages, the servers alternating run by run. \
         DNS: `agentkeys-testdns` on {} answering every SPF, DKIM, DMARC, MX and A record, for both servers.",
        m("messages"), m("sessions"), m("pool"), m("pool_kinds"), m("domains"), m("size"), m("repeats"), m("warmup"), m("dns")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| Mode | {} | {} | {} | verifying / Postfix + milters (bar ≥ {BAR_REALISTIC_VS_POSTFIX}×) | verifying / no verification (bar ≥ {BAR_REALISTIC_VS_PLAIN}) |",
        REALISTIC_TARGETS[0].1, REALISTIC_TARGETS[1].1, REALISTIC_TARGETS[2].1
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    let mut healthy: BTreeMap<&str, f64> = BTreeMap::new();
    for (mode, mode_label) in MODES {
        let rate = |t: &str| median_of(&inbound_reports(dir, "realistic", t, mode), "per_second");
        let (plain, postfix, ours) = (rate("agentkeys-plain"), rate("postfix-milters"), rate("agentkeys-verified"));
        if let Some(o) = ours {
            healthy.insert(mode, o);
        }
        let mut ratio = |peer: Option<f64>, bar: f64, name: &str| match (ours, peer) {
            (Some(o), Some(p)) if p > 0.0 => {
                let r = o / p;
                bars.push((format!("realistic inbound, {mode_label}: verifying / {name} ≥ {bar}"), format!("{r:.2}"), r >= bar));
                format!("{r:.2} ({})", verdict(r >= bar))
            }
            _ => "–".into(),
        };
        let vs_postfix = ratio(postfix, BAR_REALISTIC_VS_POSTFIX, "Postfix + milters");
        let vs_plain = ratio(plain, BAR_REALISTIC_VS_PLAIN, "no verification");
        writeln!(out, "| {mode_label} | {} | {} | {} | {vs_postfix} | {vs_plain} |", fmt0(plain), fmt0(postfix), fmt0(ours))?;
    }
    writeln!(out)?;
    writeln!(out, "Server CPU per accepted message (µs, median run; Postfix: master, its children and both milters) and the wait from end of data to `250` (ms, p99 of the median run / max over all runs):")?;
    writeln!(out)?;
    writeln!(out, "| Mode | Server | CPU µs / message | wait p99 ms | wait max ms |")?;
    writeln!(out, "|---|---|---:|---:|---:|")?;
    for (mode, mode_label) in MODES {
        for (target, label) in REALISTIC_TARGETS {
            let reports = inbound_reports(dir, "realistic", target, mode);
            if reports.is_empty() {
                continue;
            }
            let cpu = median_of(&reports, "server_cpu_per_message_ms").map(|ms| ms * 1e3);
            writeln!(
                out,
                "| {mode_label} | {label} | {} | {} | {} |",
                fmt0(cpu),
                median_of(&reports, "wait_p99_ms").map_or("–".into(), |v| format!("{v:.1}")),
                max_of(&reports, "wait_max_ms").map_or("–".into(), |v| format!("{v:.1}"))
            )?;
        }
    }
    writeln!(out)?;
    if let Ok(checks) = std::fs::read_to_string(dir.join("realistic-checks.tsv")) {
        writeln!(out, "Verification checked, not assumed:")?;
        writeln!(out)?;
        for line in checks.lines().filter(|l| !l.trim().is_empty()) {
            let (what, value) = line.split_once('\t').unwrap_or((line, ""));
            writeln!(out, "- {what}: {value}")?;
        }
        writeln!(out)?;
    }

    writeln!(out, "#### Sick resolver")?;
    writeln!(out)?;
    writeln!(
        out,
        "The same signed load against a freshly started AgentKeys (empty DNS cache, no warm-up; timed from the first message) whose \
         `dns.nameservers` is an `agentkeys-testdns` that never answers, or one that drops every 10th query. The healthy figure is the \
         verifying median above, same mode."
    )?;
    writeln!(out)?;
    writeln!(out, "| Name server | Mode | messages/s | / healthy (bar ≥ {BAR_SICK_VS_HEALTHY}) | wait p50 / p99 / max ms | waits > 1 s (bar 0) | errors |")?;
    writeln!(out, "|---|---|---:|---:|---|---:|---:|")?;
    for (kind, kind_label) in SICK {
        for (mode, mode_label) in MODES {
            let reports = inbound_reports(dir, "sick", kind, mode);
            let Some(r) = reports.first() else { continue };
            let rate = r["per_second"].as_f64();
            let ratio = match (rate, healthy.get(mode)) {
                (Some(x), Some(h)) if *h > 0.0 => {
                    let v = x / h;
                    bars.push((format!("sick resolver ({kind_label}), {mode_label}: / healthy ≥ {BAR_SICK_VS_HEALTHY}"), format!("{v:.2}"), v >= BAR_SICK_VS_HEALTHY));
                    format!("{v:.2} ({})", verdict(v >= BAR_SICK_VS_HEALTHY))
                }
                _ => "–".into(),
            };
            let max = r["wait_max_ms"].as_f64();
            let over = r["waits_over_1s"].as_u64().unwrap_or(0);
            if let Some(max) = max {
                let pass = max <= BAR_SICK_MAX_WAIT_MS && r["errors"].as_u64() == Some(0);
                bars.push((format!("sick resolver ({kind_label}), {mode_label}: longest wait for 250 ≤ 1 s"), format!("{max:.0} ms"), pass));
            }
            let ms = |k: &str| r[k].as_f64().map_or("–".into(), |v| format!("{v:.1}"));
            writeln!(
                out,
                "| {kind_label} | {mode_label} | {} | {ratio} | {} / {} / {} | {over} | {} |",
                fmt0(rate),
                ms("wait_p50_ms"),
                ms("wait_p99_ms"),
                ms("wait_max_ms"),
                r["errors"]
            )?;
        }
    }
    writeln!(out)?;
    if let Some(queries) = meta.get("dns_queries") {
        writeln!(out, "Queries the loopback name servers received over the whole part: {queries}.")?;
        writeln!(out)?;
    }
    writeln!(out, "| Bar | Measured | Verdict |")?;
    writeln!(out, "|---|---:|---|")?;
    for (bar, measured, pass) in &bars {
        writeln!(out, "| {bar} | {measured} | {} |", verdict(*pass))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ratios_from_a_results_dir() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("throughput.tsv"),
            "smtp-sink\tper-connection\t1\t1000\t1.0\t1\n\
             postfix\tper-connection\t1\t1000\t2.0\t1\n\
             agentkeys\tper-connection\t1\t1000\t1.0\t1\n\
             agentkeys\tpersistent\t1\t1000\t1.0\t0\n",
        )
        .expect("write");
        let md = render(&dir).expect("render");
        std::fs::remove_dir_all(&dir).expect("rm");
        // 1000/s over 500/s = 2.00 ≥ 1.5; 1000/s over 1000/s = 1.00 ≥ 0.5.
        assert!(
            md.contains(
                "| one message per connection | 1000 | 500 | 1000 | 2.00 (pass) | 1.00 (pass) |"
            ),
            "{md}"
        );
        assert!(md.contains("| persistent connections (`-d`) | not measured | not measured | not measured | – | – |"), "{md}");
        assert!(md.contains("agentkeys, persistent: failed"), "{md}");
    }

    #[test]
    fn cpu_column_is_optional_and_reported_per_message() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-cpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("throughput.tsv"),
            "agentkeys\tper-connection\t1\t1000\t1.0\t1\t0.150\nagentkeys\tpersistent\t1\t1000\t1.0\t1\n",
        )
        .expect("write");
        let md = render(&dir).expect("render");
        std::fs::remove_dir_all(&dir).expect("rm");
        assert!(md.contains("| one message per connection | not measured | not measured | 150 |"), "{md}");
    }

    #[test]
    fn realistic_section_ratios_and_sick_bars() {
        let dir = std::env::temp_dir().join(format!("loadgen-report-real-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("realistic-meta.tsv"), "date\tnow\nmessages\t100\n").expect("meta");
        let report = |rate: f64, max: f64| {
            serde_json::json!({"per_second": rate, "errors": 0, "wait_p50_ms": 1.0, "wait_p99_ms": 2.0,
                "wait_max_ms": max, "waits_over_1s": 0, "server_cpu_per_message_ms": 0.2}).to_string()
        };
        for (name, rate, max) in [
            ("realistic-agentkeys-plain-per-connection-1.json", 1000.0, 5.0),
            ("realistic-postfix-milters-per-connection-1.json", 400.0, 5.0),
            ("realistic-agentkeys-verified-per-connection-1.json", 800.0, 5.0),
            ("sick-silent-per-connection-1.json", 500.0, 600.0),
            ("sick-lossy-per-connection-1.json", 300.0, 1200.0),
        ] {
            std::fs::write(dir.join(name), report(rate, max)).expect("write");
        }
        let md = render_realistic(&dir).expect("render");
        std::fs::remove_dir_all(&dir).expect("rm");
        assert!(md.contains("| one message per connection | 1000 | 400 | 800 | 2.00 (pass) | 0.80 (pass) |"), "{md}");
        assert!(md.contains("| never answers | one message per connection | 500 | 0.62 (pass) |"), "{md}");
        assert!(md.contains("| drops every 10th query | one message per connection | 300 | 0.38 (**FAIL**) |"), "{md}");
        assert!(md.contains("longest wait for 250 ≤ 1 s | 1200 ms | **FAIL** |"), "{md}");
        assert!(render_realistic(&std::env::temp_dir().join("no-such-results-dir")).expect("empty").is_empty());
    }
}
