//! Pairing from the command line (DESIGN.md §5).
//!
//! - `agentkeys agent pair --server URL [--name NAME]` (the agent's machine):
//!   generates an Ed25519 device key, opens a pairing request (`POST
//!   /v1/pairings`, 60 s), prints the pair code and the 6-digit confirmation
//!   code, and long-polls `POST /v1/pairings/{code}/collect` (signed with the
//!   device key) until the owner approves or the request expires. The agent key
//!   it receives is written with the server URL and the agent id to
//!   `<config dir>/agent.json` (mode 0600, atomic replace). With `--json` it
//!   prints one line at once (`pair_code`, `confirmation_code`, `expires_at`,
//!   `agent_id`) and one when it ends (`status`: `approved`, `expired`,
//!   `already_consumed`, `not_found` or `error`, and `agent_id`).
//! - `agentkeys approve PAIR-CODE [--yes]` (the owner's machine): unlocks the
//!   master key, shows the request (agent id and name, device fingerprint, the 6
//!   digits), asks y/N unless `--yes`, and approves with a signed request.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use agentkeys_approval::key_file::config_dir;
use agentkeys_approval::{DeviceKey, PairCode};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

use crate::owner_client::{OwnerConn, SERVER_ENV, Session, base_url, create_config_dir, send_raw};

/// File name of the agent's configuration in the config directory.
pub(crate) const AGENT_CONFIG_FILE: &str = "agent.json";

/// `agentkeys agent pair`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PairArgs {
    /// The server's HTTP API, e.g. http://127.0.0.1:8787. Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    server: String,
    /// A display name for this agent, shown to the owner.
    #[arg(long)]
    name: Option<String>,
}

/// `agentkeys approve`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApproveArgs {
    /// The pair code the agent printed (ABCD-EFGH).
    pair_code: String,
    /// Approve without asking (the master key is still unlocked with the passphrase).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    conn: OwnerConn,
}

/// Where the agent's configuration lives: `<config dir>/agent.json`.
pub(crate) fn agent_config_path() -> Result<PathBuf> {
    Ok(config_dir()?.join(AGENT_CONFIG_FILE))
}

/// Writes `contents` to `path` with mode 0600: a temporary file in the same
/// directory, fsynced, renamed over `path`, then the directory fsynced.
fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    create_config_dir(path)?;
    let dir = path.parent().ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    let tmp = dir.join(format!(".{AGENT_CONFIG_FILE}.{}.tmp", std::process::id()));
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
    tokio::task::spawn_blocking(move || pair_blocking(&args, json)).await.context("the pairing task failed")?
}

fn pair_blocking(args: &PairArgs, json: bool) -> Result<()> {
    let base = base_url(&args.server)?;
    let config_path = agent_config_path()?;
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let body = json!({ "device_public_key": device.public_key().to_base64(), "name": args.name }).to_string();
    let (status, opened, text) = send_raw("POST", &format!("{base}/v1/pairings"), None, Some(body.as_bytes()))?;
    if status != 201 {
        bail!("the server refused ({status} {}): {}", s(&opened["code"]), opened["detail"].as_str().unwrap_or(text.trim()));
    }
    let code: PairCode =
        opened["pair_code"].as_str().unwrap_or_default().parse().map_err(|_| anyhow!("the server sent no valid pair code"))?;
    let agent_id = device.agent_id();
    if json {
        line(&json!({
            "pair_code": code.as_str(),
            "confirmation_code": opened["confirmation_code"],
            "expires_at": opened["expires_at"],
            "agent_id": agent_id,
        }));
    } else {
        println!(
            "Pair code:         {code}\nConfirmation code: {}\nOn the owner's machine run `agentkeys approve {code}` and check that the 6 digits match.\nWaiting for approval (expires {}) …",
            s(&opened["confirmation_code"]),
            s(&opened["expires_at"]),
        );
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(device.sign_collect(&code).to_bytes());
    let collect = json!({ "signature": signature }).to_string();
    let url = format!("{base}/v1/pairings/{code}/collect");
    let (outcome, detail) = loop {
        let (status, answer, text) = match send_raw("POST", &url, None, Some(collect.as_bytes())) {
            Ok(r) => r,
            Err(e) => break ("error", format!("{e:#}")),
        };
        match status {
            200 => {
                let key = answer["agent_key"].as_str().ok_or_else(|| anyhow!("the server sent no agent key"))?;
                let config = json!({ "server": base, "agent_id": agent_id, "agent_key": key });
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
                    }));
                } else {
                    println!(
                        "Approved by owner {}: agent {agent_id}; key saved in {} (expires {})",
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
        _ => bail!("pairing failed ({detail})"),
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
    let seen = session.call("GET", &format!("/v1/pairings/{code}"), None).await?;
    let digits = seen["confirmation_code"].as_str().ok_or_else(|| anyhow!("the server sent no confirmation code"))?;
    let mut err = std::io::stderr().lock();
    writeln!(err, "Pairing request {code}")?;
    writeln!(err, "  agent:              {} ({})", s(&seen["agent_id"]), seen["name"].as_str().unwrap_or("no name"))?;
    writeln!(err, "  device fingerprint: {}", s(&seen["device_fingerprint"]))?;
    writeln!(err, "  confirmation code:  {digits}   (must match the agent's screen)")?;
    writeln!(err, "  expires:            {}", s(&seen["expires_at"]))?;
    if !args.yes {
        write!(err, "Approve this agent? [y/N] ")?;
        err.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            bail!("not approved");
        }
    }
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
