//! Pairing from the command line (DESIGN.md §5).
//!
//! - `agentkeys agent pair --server URL [--name NAME]` (the agent's machine):
//!   generates an Ed25519 device key, opens a pairing request (`POST
//!   /v1/pairings`, 60 s), prints the pair code and the 6-digit confirmation
//!   code, and long-polls `POST /v1/pairings/{code}/collect` (signed with the
//!   device key) until the owner approves or the request expires. Over
//!   `https://` the server's certificate is accepted on first contact unless
//!   `--server-fingerprint` or a CA vouches for it; its SHA-256 fingerprint is
//!   printed with the codes, every later request of the pairing must meet the
//!   same certificate, and it is **pinned** in `agent.json`.
//!   The agent key it receives is written to `<config dir>/agent.json` (mode
//!   0600, atomic replace) with everything the first send needs: the server
//!   URL, the agent id, the pinned fingerprint, the server's hostname, and how to
//!   send: SMTP submission (host and port from the server) when a STARTTLS
//!   session under the same trust succeeds now, else the HTTP send route. With
//!   `--json` it prints one line at once (`pair_code`, `confirmation_code`,
//!   `expires_at`, `agent_id`, `server_fingerprint`) and one when it ends
//!   (`status`: `approved`, `expired`, `already_consumed`, `not_found`,
//!   `locked` (the owner's tries of the 6 digits are spent), `denied` (the
//!   owner denied it; the wait stops at once) or `error`, and `agent_id`).
//! - `agentkeys approve PAIR-CODE [--digits NNNNNN]` (the owner's machine):
//!   unlocks the master key, shows the request (agent id and name, device
//!   fingerprint, and the server certificate its own pinned connection met,
//!   which must match the agent's screen), asks for the 6 digits the agent
//!   shows unless `--digits` gives them, and approves with a signed request;
//!   the server compares the digits (it never shows them to the owner), at most
//!   `MAX_CONFIRMATION_TRIES` (5) times per request.
//! - `agentkeys deny PAIR-CODE` (the owner's machine): denies the request
//!   outright with a signed request; the waiting agent stops at once, and the
//!   request can never be approved.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use agentkeys_approval::key_file::config_dir;
use agentkeys_approval::{DeviceKey, PairCode};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

use agentkeys_agent::tls::{Accepted, Trust};

use crate::owner_client::{OwnerConn, Remote, SERVER_ENV, Session, TlsArgs, base_url, create_config_dir};

/// Longest wait for pairing's STARTTLS check of the submission listener.
pub(crate) const SUBMISSION_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// File name of the agent's configuration in the config directory.
pub(crate) const AGENT_CONFIG_FILE: &str = "agent.json";

/// `agentkeys agent pair`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PairArgs {
    /// The server's API, e.g. https://mail.example.com:8443. Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    server: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// A display name for this agent, shown to the owner.
    #[arg(long)]
    name: Option<String>,
    /// The owner whose approval this asks for (their owner id or email): only
    /// they can approve it, and it waits for them on their console's approvals page.
    #[arg(long, value_name = "ID_OR_EMAIL")]
    owner: Option<String>,
}

/// `agentkeys approve`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApproveArgs {
    /// The pair code the agent printed (ABCD-EFGH).
    pair_code: String,
    /// The 6 digits the agent's screen shows, for scripts; without it approve
    /// asks for them. The server compares them (at most 5 tries per request).
    #[arg(long, value_name = "NNNNNN")]
    digits: Option<String>,
    #[command(flatten)]
    conn: OwnerConn,
}

/// `agentkeys deny`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DenyArgs {
    /// The pair code the agent printed (ABCD-EFGH).
    pair_code: String,
    #[command(flatten)]
    conn: OwnerConn,
}

/// Where the agent's configuration lives: `<config dir>/agent.json`.
pub(crate) fn agent_config_path() -> Result<PathBuf> {
    Ok(config_dir()?.join(AGENT_CONFIG_FILE))
}

/// Writes `contents` to `path` with mode 0600: a temporary file in the same
/// directory, fsynced, renamed over `path`, then the directory fsynced.
pub(crate) fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    create_config_dir(path)?;
    let dir = path.parent().ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(AGENT_CONFIG_FILE);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn line(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// `agentkeys agent pair`.
pub(crate) async fn pair(args: PairArgs, json: bool) -> Result<()> {
    let base = base_url(&args.server)?;
    let (_, _, host) = agentkeys_agent::config::parse_server(&base).map_err(|e| anyhow!(e))?;
    let https = base.starts_with("https://");
    let flag = args.tls.fingerprint()?;
    let ca_file = args.tls.ca_file.as_deref().map(std::path::absolute).transpose()?;
    let first = Remote::new(&base, &Trust { ca_file: ca_file.clone(), pin: flag, first_contact: flag.is_none() })?;
    let config_path = agent_config_path()?;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let body = json!({ "device_public_key": device.public_key().to_base64(), "name": args.name, "owner": args.owner }).to_string();
    let (status, opened, text) = first.send_raw("POST", "/v1/pairings", None, Some(body.as_bytes())).await?;
    if status != 201 {
        bail!("the server refused ({status} {}): {}", s(&opened["code"]), opened["detail"].as_str().unwrap_or(text.trim()));
    }
    let code: PairCode =
        opened["pair_code"].as_str().unwrap_or_default().parse().map_err(|_| anyhow!("the server sent no valid pair code"))?;
    // The 6 digits bind the pair code to this device key: computed here, so a
    // device key swapped on the way shows as different digits on the owner's screen.
    let digits = agentkeys_approval::ConfirmationCode::derive(&code, &device.public_key()).to_string();
    if opened["confirmation_code"].as_str() != Some(digits.as_str()) {
        bail!("the server's confirmation code does not match this device key: the request was altered on the way to {base}; do not approve it");
    }
    // From here on the pairing talks only to the certificate it met first.
    let seen = if https { first.seen() } else { None };
    let pin = seen.map(|c| c.fingerprint);
    let remote = Remote::new(&base, &Trust { ca_file: ca_file.clone(), pin, first_contact: false })?;
    let agent_id = device.agent_id();
    if json {
        line(&json!({
            "pair_code": code.as_str(),
            "confirmation_code": digits,
            "expires_at": opened["expires_at"],
            "agent_id": agent_id,
            "server_fingerprint": pin.map(|f| f.to_string()),
        }));
    } else {
        println!("Pair code:          {code}\nConfirmation code:  {digits}");
        match seen {
            Some(c) => println!(
                "Server certificate: SHA-256 {}{}",
                c.fingerprint,
                match c.accepted {
                    Accepted::FirstContact => "\n                    (not vouched for by any CA: it is pinned now; the owner's `agentkeys approve` shows the certificate the server presents to the owner, and it must be this one)",
                    Accepted::Pinned => " (as given)",
                    Accepted::Chain => " (CA-signed)",
                }
            ),
            None => println!("Server certificate: none (plain HTTP: use https:// unless the server is on this machine or a private network)"),
        }
        match &args.owner {
            Some(owner) => println!(
                "Asked {owner} to approve: on their console's approvals page (or `agentkeys approve {code}` on their machine) they type the 6 digits above."
            ),
            None => println!("On the owner's machine run `agentkeys approve {code}` and check that the 6 digits and the certificate match."),
        }
        println!("Waiting for approval, 10 minutes (expires {}) …", s(&opened["expires_at"]));
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(device.sign_collect(&code).to_bytes());
    let collect = json!({ "signature": signature }).to_string();
    let path = format!("/v1/pairings/{code}/collect");
    let (outcome, detail) = loop {
        let (status, answer, text) = match remote.send_raw("POST", &path, None, Some(collect.as_bytes())).await {
            Ok(r) => r,
            Err(e) => break ("error", e.to_string()),
        };
        match status {
            200 => {
                let key = answer["agent_key"].as_str().ok_or_else(|| anyhow!("the server sent no agent key"))?;
                let trust = Trust { ca_file: ca_file.clone(), pin, first_contact: false };
                let (send_via, submission, why) = choose_send_route(&host, &answer["server"], &trust).await;
                let mut config = json!({
                    "server": base,
                    "agent_id": agent_id,
                    "agent_key": key,
                    "send_via": send_via,
                });
                if let Some(fp) = pin {
                    config["server_fingerprint"] = json!(fp.to_string());
                }
                if let Some(ca) = &ca_file {
                    config["ca_file"] = json!(ca);
                }
                if let Some(sub) = &submission {
                    config["submission"] = json!(sub);
                }
                if let Some(hostname) = answer["server"]["hostname"].as_str() {
                    config["hostname"] = json!(hostname);
                }
                let mut bytes = serde_json::to_vec_pretty(&config)?;
                bytes.push(b'\n');
                write_private_atomic(&config_path, &bytes)?;
                if json {
                    line(&json!({
                        "status": "approved",
                        "agent_id": agent_id,
                        "owner": answer["owner"],
                        "key_id": answer["key_id"],
                        "expires_at": answer["expires_at"],
                        "config": config_path,
                        "send_via": send_via,
                        "submission": submission,
                        "server_fingerprint": pin.map(|f| f.to_string()),
                    }));
                } else {
                    println!(
                        "Approved by owner {}: agent {agent_id}; key saved in {} (expires {})\nSending: {why}",
                        s(&answer["owner"]),
                        config_path.display(),
                        s(&answer["expires_at"])
                    );
                }
                return Ok(());
            }
            202 => continue,
            _ => {
                let code = answer["code"].as_str().unwrap_or("");
                let outcome = match code {
                    "EXPIRED" => "expired",
                    "ALREADY_CONSUMED" => "already_consumed",
                    "NOT_FOUND" => "not_found",
                    "CONFIRMATION_LOCKED" => "locked",
                    "DENIED" => "denied",
                    _ => "error",
                };
                break (outcome, format!("{status} {code}: {}", answer["detail"].as_str().unwrap_or(text.trim())));
            }
        }
    };
    if json {
        line(&json!({ "status": outcome, "agent_id": agent_id, "detail": detail }));
    }
    match outcome {
        "expired" => bail!("the pairing request expired before the owner approved it; run `agentkeys agent pair` again"),
        "locked" => bail!(
            "the pairing request is locked: the owner typed wrong digits {} times, so it can no longer be approved. \
             Run `agentkeys agent pair` again and make sure the owner types the 6 digits this new request shows",
            agentkeys_approval::MAX_CONFIRMATION_TRIES
        ),
        "denied" => bail!("the owner denied this pairing; this device was not paired (ask the owner, then run `agentkeys agent pair` again)"),
        _ => bail!("pairing failed ({detail})"),
    }
}

/// How the paired agent will send: `smtp` with `host:port` when the server
/// named its submission port and a STARTTLS session under `trust` succeeds
/// now, else `http` (the API's send route, which needs nothing more). The
/// third value says why, for the owner of the agent.
async fn choose_send_route(host: &str, server: &Value, trust: &Trust) -> (&'static str, Option<String>, String) {
    let Some(port) = server["submission_port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
        return ("http", None, "through the HTTP API (the server did not name its submission port)".to_owned());
    };
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    match agentkeys_agent::client::probe_submission(host, port, trust, SUBMISSION_PROBE_TIMEOUT).await {
        Ok(()) => ("smtp", Some(target.clone()), format!("SMTP submission at {target} (STARTTLS, checked now)")),
        Err(e) => ("http", None, format!("through the HTTP API (submission at {target} is not usable from here: {e})")),
    }
}

/// The confirmation digits as typed: exactly 6 ASCII digits.
fn check_digits(d: &str) -> Result<()> {
    if d.len() == 6 && d.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        bail!("{d:?} is not the confirmation code: type the 6 digits the agent shows (like 123456)")
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `agentkeys approve PAIR-CODE`.
pub(crate) async fn approve(args: ApproveArgs, config: &crate::config::Config, json: bool) -> Result<()> {
    if args.conn.server.is_none() {
        bail!("approve talks to the server the agent is waiting on: give --server URL (or AGENTKEYS_SERVER)");
    }
    let code: PairCode = args
        .pair_code
        .parse()
        .map_err(|_| anyhow!("{:?} is not a pair code (8 characters like ABCD-EFGH)", args.pair_code))?;
    let session = Session::open(&args.conn, config).await?;
    if let Some(d) = &args.digits {
        check_digits(d)?;
    }
    let seen = session.call("GET", &format!("/v1/pairings/{code}"), None).await?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "Pairing request {code}")?;
    writeln!(err, "  agent:              {} ({})", s(&seen["agent_id"]), seen["name"].as_str().unwrap_or("no name"))?;
    writeln!(err, "  device fingerprint: {}", s(&seen["device_fingerprint"]))?;
    match session.seen() {
        Some(c) => writeln!(err, "  server certificate: SHA-256 {}   (must match the agent's screen)", c.fingerprint)?,
        None => writeln!(
            err,
            "  server certificate: not seen from here (plain HTTP or local); compare the agent's with the TLS fingerprint `agentkeys serve` printed"
        )?,
    }
    writeln!(err, "  expires:            {}", s(&seen["expires_at"]))?;
    let digits = match args.digits {
        Some(d) => d,
        None => {
            write!(err, "To approve, type the 6 digits the agent shows (empty: do not approve): ")?;
            err.flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            let answer = answer.trim().replace(' ', "");
            if answer.is_empty() {
                bail!("not approved");
            }
            check_digits(&answer)?;
            answer
        }
    };
    drop(err);
    let body = json!({ "confirmation_code": digits }).to_string();
    let answer = session.call("POST", &format!("/v1/pairings/{code}/approve"), Some(body.as_bytes())).await?;
    if json {
        println!("{answer}");
    } else {
        println!(
            "approved: agent {} is now yours; it must collect its key by {}",
            s(&answer["agent_id"]),
            s(&answer["collect_by"])
        );
    }
    Ok(())
}

/// `agentkeys deny PAIR-CODE`.
pub(crate) async fn deny(args: DenyArgs, config: &crate::config::Config, json: bool) -> Result<()> {
    if args.conn.server.is_none() {
        bail!("deny talks to the server the agent is waiting on: give --server URL (or AGENTKEYS_SERVER)");
    }
    let code: PairCode = args
        .pair_code
        .parse()
        .map_err(|_| anyhow!("{:?} is not a pair code (8 characters like ABCD-EFGH)", args.pair_code))?;
    let session = Session::open(&args.conn, config).await?;
    let answer = session.call("POST", &format!("/v1/pairings/{code}/deny"), None).await?;
    if json {
        println!("{answer}");
    } else {
        println!(
            "denied: the pairing request of agent {} can never be approved; the agent was told",
            s(&answer["agent_id"])
        );
    }
    Ok(())
}
