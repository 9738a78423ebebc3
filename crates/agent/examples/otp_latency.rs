//! Benchmark: time from the MX's `250` (end of DATA) to `extract_otp` (with
//! `wait`) returning the code in the daemon, against a named peer measured in
//! the same run: the bare event, from the same `250` to the `message.received`
//! event reaching a plain SSE subscriber. Rounds alternate between the two.
//!
//! Run by `bench/otp_latency.sh`, which starts a server and provisions the inbox.
//! Environment: `AGENTKEYS_SERVER`, `AGENTKEYS_AGENT_KEY` (as for the daemon),
//! `BENCH_INBOX`, `BENCH_MX` (`host:port` of the inbound MX), `BENCH_ROUNDS`
//! (per measurement, default 200, at most [`MAX_ROUNDS`]). Prints one JSON object.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentkeys_agent::client::ApiClient;
use agentkeys_agent::config::AgentConfig;
use agentkeys_agent::mailbox::{ExtractOtpParams, MailService, MarkParams};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Most rounds per measurement.
const MAX_ROUNDS: usize = 2000;
/// The whole run stops after this long, whatever is left.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// One round gives up after this long.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// Pause between starting the waiter and sending, so the waiter's event stream
/// is open (as in real use: the agent waits, then the mail comes).
const SETTLE: Duration = Duration::from_millis(25);

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Result<u16, Error> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err("the MX closed the connection".into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).ok_or("bad reply")?);
        }
    }
}

/// Sends one message; returns the instant the final `250` was read.
async fn send(mx: &str, rcpt: &str, message: &str) -> Result<Instant, Error> {
    let stream = TcpStream::connect(mx).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    reply(&mut reader).await?;
    for cmd in ["EHLO bench.example\r\n".to_owned(), "MAIL FROM:<no-reply@service.example>\r\n".to_owned(), format!("RCPT TO:<{rcpt}>\r\n"), "DATA\r\n".to_owned()] {
        write.write_all(cmd.as_bytes()).await?;
        let code = reply(&mut reader).await?;
        if code >= 400 {
            return Err(format!("{} answered {code}", cmd.trim()).into());
        }
    }
    write.write_all(message.as_bytes()).await?;
    write.write_all(b"\r\n.\r\n").await?;
    let code = reply(&mut reader).await?;
    let at = Instant::now();
    if code != 250 {
        return Err(format!("end of data answered {code}").into());
    }
    let _ = write.write_all(b"QUIT\r\n").await;
    Ok(at)
}

fn mail(rcpt: &str, round: usize, code: &str) -> String {
    format!(
        "From: Example Service <no-reply@service.example>\r\nTo: {rcpt}\r\nSubject: Verify your email (round {round})\r\n\
         Message-ID: <bench-{round}-{code}@service.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Welcome!\r\n\r\nYour verification code is {code}.\r\nIt expires in 10 minutes.\r\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    serde_json::json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 0.50),
        "p90_ms": percentile(&ms, 0.90),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = AgentConfig::load(None, &env)?;
    let inbox = env.get("BENCH_INBOX").ok_or("set BENCH_INBOX")?.clone();
    let mx = env.get("BENCH_MX").ok_or("set BENCH_MX")?.clone();
    let rounds: usize = env.get("BENCH_ROUNDS").map_or(Ok(200), |r| r.parse())?;
    let rounds = rounds.min(MAX_ROUNDS);
    let client = ApiClient::new(config)?;
    let mail_service = MailService::new(client.clone());
    let started = Instant::now();
    let (mut otp_ms, mut event_ms) = (Vec::new(), Vec::new());
    let mut failures = 0usize;
    // One untimed warm-up of each kind (capability mint, connection pool).
    for round in 0..(2 * rounds + 2) {
        if started.elapsed() > RUN_LIMIT {
            eprintln!("run limit reached after {round} rounds");
            break;
        }
        let code = format!("{:06}", (round * 7919 + 104_729) % 1_000_000);
        let message = mail(&inbox, round, &code);
        let tag = format!("(round {round})");
        let measured = if round % 2 == 0 {
            let mail_service = mail_service.clone();
            let params = ExtractOtpParams {
                inbox: inbox.clone(),
                wait: true,
                subject_contains: Some(tag),
                timeout_s: Some(ROUND_LIMIT.as_secs()),
                // The bench's sender is not authenticated (no DKIM for
                // service.example); the hand-out record and the look-back window
                // are exercised as in real use.
                require_authenticated: Some(false),
                ..ExtractOtpParams::default()
            };
            let waiter = tokio::spawn(async move {
                let r = mail_service.extract_otp(&params).await;
                (r, Instant::now())
            });
            tokio::time::sleep(SETTLE).await;
            let t250 = send(&mx, &inbox, &message).await?;
            let (result, done) = tokio::time::timeout(ROUND_LIMIT, waiter).await??;
            let got = serde_json::to_value(result?.otp)?;
            if got["code"] != code.as_str() {
                failures += 1;
                eprintln!("round {round}: expected {code}, got {got}");
                continue;
            }
            Some((true, done.saturating_duration_since(t250)))
        } else {
            let mut events = client.events(&inbox, None).await?;
            let waiter = tokio::spawn(async move {
                let r = events.next().await;
                (r, Instant::now())
            });
            tokio::time::sleep(SETTLE).await;
            let t250 = send(&mx, &inbox, &message).await?;
            let (result, done) = tokio::time::timeout(ROUND_LIMIT, waiter).await??;
            let entry = result?;
            // Handed out by this peer: the next OTP wait skips it instead of
            // fetching it again (the bookkeeping an agent does by waiting).
            mail_service.mark_messages(&MarkParams { inbox: inbox.clone(), message_ids: vec![entry.message_id], read: true })?;
            Some((false, done.saturating_duration_since(t250)))
        };
        if round < 2 {
            continue; // warm-up
        }
        if let Some((is_otp, d)) = measured {
            let ms = d.as_secs_f64() * 1000.0;
            if is_otp { otp_ms.push(ms) } else { event_ms.push(ms) }
        }
    }
    let out = serde_json::json!({
        "measurement": "MX 250 -> extract_otp(wait) returns the code, in the daemon library",
        "rounds_per_measurement": rounds,
        "extract_otp": summary(otp_ms),
        "peer_bare_sse_event": summary(event_ms),
        "wrong_codes": failures,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    println!("{out}");
    Ok(())
}
