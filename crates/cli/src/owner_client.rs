//! The owner's commands: HTTP clients of a running server that sign every
//! request with the owner's master key (DESIGN.md §2: unlocking the key is the
//! approval).
//!
//! - `agentkeys owner enroll --server URL --owner ID --code CODE`: generates the
//!   Ed25519 master key, seals it with the passphrase (Argon2id with
//!   [`KdfParams::PRODUCTION`] + XChaCha20-Poly1305) into
//!   `<config dir>/owner-<id>.key` (never overwriting one), and registers the
//!   public key with `POST /v1/owners/{id}/enroll`.
//! - `agentkeys grant create|list|revoke`, `agentkeys key revoke`, `agentkeys audit
//!   list` with `--server URL` (or `AGENTKEYS_SERVER`): unlock the key file and
//!   send one signed request each. Without a server they are the operator's local
//!   commands (`grant create` has no operator form).
//!
//! The passphrase comes from `--passphrase-file`, else `AGENTKEYS_PASSPHRASE`,
//! else a prompt. The HTTP client is `ureq` 3 without default features: plain
//! HTTP only, so point `--server` at loopback or a TLS-terminating proxy's
//! plain-HTTP side.

use std::path::{Path, PathBuf};

use agentkeys_approval::key_file::config_dir;
use agentkeys_approval::{
    Confirm, EncryptedKeyFile, KdfParams, MasterKey, Nonce, SaveMode, default_path, resolve_passphrase, sign_request,
};
use agentkeys_core::{MAX_GRANT_TTL_SECS, OwnerId, duration::parse_ttl};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

/// Environment variable naming the server for owner commands.
pub(crate) const SERVER_ENV: &str = "AGENTKEYS_SERVER";

/// How an owner command reaches the server and finds the key.
#[derive(Debug, Clone, Args)]
pub(crate) struct OwnerConn {
    /// Act as the owner against this server's HTTP API (e.g. http://127.0.0.1:8787),
    /// signing the request with the owner's master key. Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    pub(crate) server: Option<String>,
    /// The owner (default: the only key file in the owner config directory).
    #[arg(long, value_name = "ID")]
    pub(crate) owner: Option<String>,
    /// Read the passphrase from this file (default: AGENTKEYS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
}

/// `agentkeys owner enroll`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EnrollArgs {
    /// The server's HTTP API, e.g. http://127.0.0.1:8787. Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    server: String,
    /// Your owner id, as the operator created it.
    #[arg(long, value_name = "ID")]
    owner: String,
    /// The single-use enrollment code the operator gave you (enr_…).
    #[arg(long, value_name = "CODE")]
    code: String,
    /// Read the new passphrase from this file (default: AGENTKEYS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// `agentkeys grant create`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GrantCreateArgs {
    /// One of your agents.
    #[arg(long)]
    agent: String,
    /// An address, a prefix ending in * (bot-*@…), or *@domain.
    #[arg(long)]
    inbox: String,
    /// Comma-separated: read, send, admin.
    #[arg(long)]
    scopes: String,
    /// Lifetime, e.g. 12h, 30d (default and maximum 30d).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    #[command(flatten)]
    conn: OwnerConn,
}

pub(crate) fn base_url(server: &str) -> Result<String> {
    let server = server.trim_end_matches('/');
    if !server.starts_with("http://") {
        bail!("--server {server:?}: give the API's plain-HTTP URL, e.g. http://127.0.0.1:8787 (https is not supported by this client; use a local TLS-terminating proxy)");
    }
    Ok(server.to_owned())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// Sends one request; answers the JSON body of a 2xx, or an error carrying the
/// problem's code and detail.
pub(crate) fn send(method: &str, url: &str, authorization: Option<&str>, body: Option<&[u8]>) -> Result<Value> {
    let (status, value, text) = send_raw(method, url, authorization, body)?;
    if !(200..300).contains(&status) {
        let code = value["code"].as_str().unwrap_or("?");
        let detail = value["detail"].as_str().unwrap_or(text.trim());
        bail!("the server refused ({status} {code}): {detail}");
    }
    Ok(value)
}

/// Sends one request; answers the status, the body as JSON (`Null` if it is not
/// JSON) and the body text, whatever the status.
pub(crate) fn send_raw(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(u16, Value, String)> {
    let agent = agent();
    let result = match (method, body) {
        ("GET", _) => {
            let mut req = agent.get(url);
            if let Some(a) = authorization {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        ("DELETE", _) => {
            let mut req = agent.delete(url);
            if let Some(a) = authorization {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        (_, body) => {
            let mut req = agent.post(url).header("Content-Type", "application/json");
            if let Some(a) = authorization {
                req = req.header("Authorization", a);
            }
            req.send(body.unwrap_or_default())
        }
    };
    let mut response = result.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().with_context(|| format!("cannot read the answer of {url}"))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok((status, value, text))
}

/// The key file to use: `--owner`'s, else the only `owner-*.key` in the config dir.
fn key_file_path(owner: Option<&str>) -> Result<PathBuf> {
    if let Some(owner) = owner {
        let owner: OwnerId = owner.parse().map_err(|e| anyhow!("--owner: {e}"))?;
        return Ok(default_path(&owner)?);
    }
    let dir = config_dir()?;
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("no owner key in {} (enroll with `agentkeys owner enroll`)", dir.display()))?;
    let mut keys: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("owner-") && n.ends_with(".key")))
        .collect();
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => bail!("no owner key in {} (enroll with `agentkeys owner enroll`)", dir.display()),
        n => bail!("{n} owner keys in {}; say which with --owner ID", dir.display()),
    }
}

/// An unlocked owner: the key and where to send requests.
pub(crate) struct Session {
    base: String,
    owner: OwnerId,
    key: MasterKey,
}

impl Session {
    pub(crate) fn open(conn: &OwnerConn) -> Result<Self> {
        let server = conn.server.as_deref().ok_or_else(|| anyhow!("give --server URL (or AGENTKEYS_SERVER)"))?;
        let base = base_url(server)?;
        let path = key_file_path(conn.owner.as_deref())?;
        let file = EncryptedKeyFile::load(&path).with_context(|| format!("cannot load the owner key {}", path.display()))?;
        let owner = file.owner().clone();
        let prompt = format!("Passphrase for owner {owner}: ");
        let passphrase = resolve_passphrase(conn.passphrase_file.as_deref(), &prompt, Confirm::Once)?;
        let key = file.unlock(&passphrase).with_context(|| format!("cannot unlock {}", path.display()))?;
        Ok(Self { base, owner, key })
    }

    /// One signed request: `path` includes the query, exactly as sent.
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value> {
        let nonce = Nonce::generate(&mut rand::rngs::OsRng);
        let signature =
            sign_request(&self.key, &self.owner, method, path, body.unwrap_or_default(), crate::now(), &nonce)?;
        send(method, &format!("{}{path}", self.base), Some(&signature.header_value()), body)
    }
}

fn print(json: bool, value: &Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

/// `agentkeys owner enroll`.
pub(crate) async fn enroll(args: EnrollArgs, json: bool) -> Result<()> {
    let base = base_url(&args.server)?;
    let owner: OwnerId = args.owner.parse().map_err(|e| anyhow!("--owner: {e}"))?;
    let path = default_path(&owner)?;
    if path.exists() {
        bail!(
            "{} already exists: this machine already holds a key for owner {owner}; move it away first if you really mean to replace it",
            path.display()
        );
    }
    let prompt = format!("New passphrase for owner {owner}: ");
    let passphrase = resolve_passphrase(args.passphrase_file.as_deref(), &prompt, Confirm::Twice)?;
    let mut rng = rand::rngs::OsRng;
    let key = MasterKey::generate(&mut rng);
    let file = EncryptedKeyFile::seal(&key, &owner, &passphrase, KdfParams::PRODUCTION, &mut rng)?;
    create_config_dir(&path)?;
    // Saved before registering, so a registered key is never lost; removed again if
    // the server refuses.
    file.save(&path, SaveMode::CreateNew).with_context(|| format!("cannot write {}", path.display()))?;
    let body = json!({ "code": args.code, "public_key": file.public_key().to_base64() }).to_string();
    let url = format!("{base}/v1/owners/{owner}/enroll");
    match send("POST", &url, None, Some(body.as_bytes())) {
        Ok(answer) => {
            let out = json!({ "owner": owner, "key_file": path, "enrolled_at": answer["enrolled_at"] });
            print(json, &out, || {
                format!("owner {owner} enrolled; master key sealed in {} (keep the passphrase: it approves every grant)", path.display())
            });
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

pub(crate) fn create_config_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent() else { return Ok(()) };
    if dir.exists() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(agentkeys_approval::key_file::CONFIG_DIR_MODE)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// `agentkeys grant create`.
pub(crate) async fn grant_create(args: GrantCreateArgs, json: bool) -> Result<()> {
    let ttl = args.ttl.as_deref().map(|t| parse_ttl(t, MAX_GRANT_TTL_SECS)).transpose().map_err(|e| anyhow!("--ttl: {e}"))?;
    let scopes: Vec<&str> = args.scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut body = json!({ "agent": args.agent, "inbox": args.inbox, "scopes": scopes });
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    let session = Session::open(&args.conn)?;
    let answer = session.call("POST", "/v1/grants", Some(body.to_string().as_bytes()))?;
    print(json, &answer, || {
        format!("grant {} created for agent {} on {} ({}), expires {}", answer["id"].as_str().unwrap_or("?"), args.agent, args.inbox, args.scopes, answer["expires_at"].as_str().unwrap_or("?"))
    });
    Ok(())
}

/// `agentkeys grant list --server …`.
pub(crate) async fn grant_list(conn: &OwnerConn, json: bool) -> Result<()> {
    let answer = Session::open(conn)?.call("GET", "/v1/grants", None)?;
    print(json, &answer, || {
        let rows = answer.as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|g| format!("{}  {}  agent {}  {}  {}  expires {}", s(&g["id"]), s(&g["state"]), s(&g["agent"]), s(&g["inbox"]), s(&g["scopes"]), s(&g["expires_at"])))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `agentkeys grant revoke ID --server …` and `agentkeys key revoke ID --server …`.
pub(crate) async fn revoke(conn: &OwnerConn, kind: &str, id: &str, json: bool) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("{kind} id {id:?} is not valid");
    }
    let collection = if kind == "grant" { "grants" } else { "keys" };
    let answer = Session::open(conn)?.call("DELETE", &format!("/v1/{collection}/{id}"), None)?;
    print(json, &answer, || format!("{kind} {id} revoked"));
    Ok(())
}

/// `agentkeys audit list --server …`: the records that concern the owner.
pub(crate) async fn audit_list(conn: &OwnerConn, after: u64, limit: u32, json: bool) -> Result<()> {
    let answer = Session::open(conn)?.call("GET", &format!("/v1/audit?after={after}&limit={limit}"), None)?;
    print(json, &answer["records"], || {
        let rows = answer["records"].as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|r| format!("{}  {}  {}  {}  {}  {}", r["seq"], r["ts"], s(&r["actor"]), s(&r["operation"]), s(&r["subject"]), s(&r["outcome"])))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
