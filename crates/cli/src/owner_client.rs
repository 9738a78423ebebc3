//! The owner's commands: HTTP clients of a running server that sign every
//! request with the owner's master key (DESIGN.md §2: unlocking the key is the
//! approval).
//!
//! - `agentkeys owner enroll --server URL --owner ID --code CODE`: generates the
//!   Ed25519 master key, seals it with the passphrase (Argon2id with
//!   [`KdfParams::PRODUCTION`] + XChaCha20-Poly1305) into
//!   `<config dir>/owner-<id>.key` (never overwriting one), and registers the
//!   public key with `POST /v1/owners/{id}/enroll`.
//! - `agentkeys grant create|change|revoke`, and `grant list`, `key revoke`,
//!   `agentkeys audit list` with `--server URL` / `--owner ID`: unlock the key file
//!   and send one signed request each.
//!
//! Without `--server` (or `AGENTKEYS_SERVER`) the signed request goes to the same
//! router in-process, over `--data-dir` ([`crate::local_api`]): same signature
//! check against the enrolled public key, same replay guard, same audit. There is
//! no unsigned way to create, change or revoke a grant.
//!
//! The passphrase comes from `--passphrase-file`, else `AGENTKEYS_PASSPHRASE`,
//! else a prompt. The HTTP client is the daemon's ([`agentkeys_agent::https`]):
//! `https://` with rustls (TLS 1.2+) or `http://`. An HTTPS server is trusted
//! when its certificate is the one pinned for that URL at enrollment
//! (`<config dir>/known_servers.json`), or `--server-fingerprint`, or chains to
//! `--ca-file`/`AGENTKEYS_CA_FILE` or the webpki roots ([`agentkeys_agent::tls`]).
//! Enrollment over a certificate nothing vouches for is refused with its
//! fingerprint: the owner compares it with the one the operator gave
//! (`agentkeys serve` and `agentkeys owner add` print it) and runs again with
//! `--server-fingerprint`; it is then pinned for every later command.

use std::path::{Path, PathBuf};

use agentkeys_approval::key_file::config_dir;
use agentkeys_approval::{
    Confirm, EncryptedKeyFile, KdfParams, MasterKey, Nonce, SaveMode, default_path, resolve_passphrase, sign_request,
};
use agentkeys_agent::https::{SimpleClient, SimpleError};
use agentkeys_agent::tls::{Accepted, CA_FILE_ENV, Fingerprint, SERVER_FINGERPRINT_ENV, Trust};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{MAX_GRANT_TTL_SECS, OwnerId, duration::parse_ttl};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::config::Config;

/// Environment variable naming the server for owner commands.
pub(crate) const SERVER_ENV: &str = "AGENTKEYS_SERVER";

/// Longest wait for one owner request, answer included (a pairing collect
/// long-polls for 25 s).
pub(crate) const OWNER_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);
/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// The owner's pinned server certificates, in the config directory.
pub(crate) const KNOWN_SERVERS_FILE: &str = "known_servers.json";

/// Whom an HTTPS `--server` is trusted as (besides a pin from enrollment).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// PEM certificates to trust for https:// besides the webpki roots (a private
    /// CA, or the server's own certificate). Env: AGENTKEYS_CA_FILE.
    #[arg(long, env = CA_FILE_ENV, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// The server certificate's SHA-256 fingerprint, as `agentkeys serve` prints
    /// it: trusted and pinned. Env: AGENTKEYS_SERVER_FINGERPRINT.
    #[arg(long, env = SERVER_FINGERPRINT_ENV, value_name = "SHA256")]
    pub(crate) server_fingerprint: Option<String>,
}

impl TlsArgs {
    /// The flag's fingerprint, checked.
    pub(crate) fn fingerprint(&self) -> Result<Option<Fingerprint>> {
        self.server_fingerprint
            .as_deref()
            .map(|f| f.parse::<Fingerprint>().map_err(|e| anyhow!("--server-fingerprint: {e}")))
            .transpose()
    }
}

/// How an owner command reaches the server and finds the key.
#[derive(Debug, Clone, Args)]
pub(crate) struct OwnerConn {
    /// The server's API (e.g. https://mail.example.com:8443, or
    /// http://127.0.0.1:8787 on the server's machine); without it the signed
    /// request is checked and applied locally against --data-dir. Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    pub(crate) server: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// The owner (default: the only key file in the owner config directory).
    #[arg(long, value_name = "ID")]
    pub(crate) owner: Option<String>,
    /// Read the passphrase from this file (default: AGENTKEYS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
}

/// The owner side of a list command whose `--owner` is already the operator's
/// filter: `--server` (or AGENTKEYS_SERVER) turns it into the owner's signed
/// request, and `--owner` then picks the key.
#[derive(Debug, Clone, Args)]
pub(crate) struct RemoteOwner {
    /// The server's API: list your own, signed with your master key. Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    pub(crate) server: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// Read the passphrase from this file (default: AGENTKEYS_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
}

impl RemoteOwner {
    /// The connection, with `owner` picking the key file.
    pub(crate) fn conn(self, owner: Option<String>) -> OwnerConn {
        OwnerConn { server: self.server, tls: self.tls, owner, passphrase_file: self.passphrase_file }
    }
}

/// `agentkeys owner enroll`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EnrollArgs {
    /// The server's API, e.g. https://mail.example.com:8443 (without it: locally,
    /// against --data-dir). Env: AGENTKEYS_SERVER.
    #[arg(long, env = SERVER_ENV, value_name = "URL")]
    server: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
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
    /// An address, a prefix ending in * (bot-*), a prefix in a domain
    /// (signup-*@domain), or *@domain.
    #[arg(long)]
    inbox: String,
    /// Comma-separated: read, send, admin, create (create: the agent may create
    /// inboxes under the pattern for itself, e.g. `signup-*@domain`).
    #[arg(long)]
    scopes: String,
    /// Lifetime, e.g. 12h, 30d (default and maximum 30d).
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    #[command(flatten)]
    conn: OwnerConn,
}

/// `agentkeys grant change`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GrantChangeArgs {
    /// The grant id (gr_…).
    grant_id: String,
    /// New scopes, comma-separated; must be within the current ones (a change only narrows).
    #[arg(long)]
    scopes: Option<String>,
    /// New lifetime from now, e.g. 12h, 7d (at most 30d): the new expiry.
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    #[command(flatten)]
    conn: OwnerConn,
}

/// `--server` without its trailing slash, checked: `https://` or `http://`,
/// scheme, host and port only.
pub(crate) fn base_url(server: &str) -> Result<String> {
    let (base, _, _) = agentkeys_agent::config::parse_server(server).map_err(|e| anyhow!("--server: {e}"))?;
    Ok(base)
}

/// `<config dir>/known_servers.json`: `{"<base URL>": "<fingerprint>"}`.
fn known_servers_path() -> Result<PathBuf> {
    Ok(config_dir()?.join(KNOWN_SERVERS_FILE))
}

fn known_servers() -> Result<serde_json::Map<String, Value>> {
    let path = known_servers_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Map<String, Value>>(&bytes)
            .with_context(|| format!("{} is not valid JSON (remove it and give --server-fingerprint once)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::Map::new()),
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// The fingerprint pinned for `base` at enrollment, if any.
pub(crate) fn pinned_fingerprint(base: &str) -> Result<Option<Fingerprint>> {
    let servers = known_servers()?;
    servers
        .get(base)
        .and_then(Value::as_str)
        .map(|f| f.parse::<Fingerprint>().map_err(|e| anyhow!("{} for {base}: {e}", KNOWN_SERVERS_FILE)))
        .transpose()
}

/// Pins `fingerprint` for `base` (atomic replace, mode 0600).
pub(crate) fn pin_server(base: &str, fingerprint: Fingerprint) -> Result<PathBuf> {
    let path = known_servers_path()?;
    let mut servers = known_servers()?;
    servers.insert(base.to_owned(), Value::String(fingerprint.to_string()));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(servers))?;
    bytes.push(b'\n');
    crate::pairing_client::write_private_atomic(&path, &bytes)?;
    Ok(path)
}

/// An HTTP(S) connection to `--server`: the URL and the client.
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) base: String,
    client: SimpleClient,
    /// `--server-fingerprint` when it differs from the pin on file: pinned once
    /// a request has gone through with it.
    repin: Option<Fingerprint>,
}

impl Remote {
    /// A client of `server` trusting `trust`.
    pub(crate) fn new(server: &str, trust: &Trust) -> Result<Self> {
        let base = base_url(server)?;
        let client = SimpleClient::new(trust, OWNER_REQUEST_TIMEOUT).map_err(|e| anyhow!(e))?;
        Ok(Self { base, client, repin: None })
    }

    /// A client of `server` for an owner command: the flag's fingerprint, else
    /// the one pinned at enrollment, else the CA file and the webpki roots.
    pub(crate) fn for_owner(server: &str, tls: &TlsArgs) -> Result<Self> {
        let base = base_url(server)?;
        let on_file = pinned_fingerprint(&base)?;
        let flag = tls.fingerprint()?;
        let pin = flag.or(on_file);
        let mut remote = Self::new(server, &Trust { ca_file: tls.ca_file.clone(), pin, first_contact: false })?;
        remote.repin = flag.filter(|f| base.starts_with("https://") && Some(*f) != on_file);
        Ok(remote)
    }

    /// The certificate the last HTTPS request met.
    pub(crate) fn seen(&self) -> Option<agentkeys_agent::tls::SeenCert> {
        self.client.seen()
    }

    /// Sends one request to `base + path`; answers the status, the body as JSON
    /// (`Null` if it is not JSON) and the body text, whatever the status.
    pub(crate) async fn send_raw(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::result::Result<(u16, Value, String), SimpleError> {
        let url = format!("{}{path}", self.base);
        let (status, bytes) = self.client.request(method, &url, authorization, body, MAX_ANSWER_BYTES).await?;
        if let Some(fp) = self.repin
            && self.seen().is_some_and(|c| c.fingerprint == fp)
        {
            // Best effort: the request itself succeeded.
            if let Err(e) = pin_server(&self.base, fp) {
                eprintln!("warning: cannot pin the server certificate: {e:#}");
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, value, text))
    }
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

/// Where owner requests go: a server over HTTP(S), or the same router in-process.
pub(crate) enum Transport {
    /// `--server URL`.
    Http(Box<Remote>),
    /// No server: the API router over the local data directory.
    Local(axum::Router),
}

impl Transport {
    /// `--server`'s URL, or the router over `config`'s data directory.
    pub(crate) async fn new(server: Option<&str>, tls: &TlsArgs, config: &Config) -> Result<Self> {
        match server {
            Some(server) => Ok(Self::Http(Box::new(Remote::for_owner(server, tls)?))),
            None => Ok(Self::Local(crate::local_api::router(config).await?)),
        }
    }

    /// The server certificate the last request met (HTTPS only).
    pub(crate) fn seen(&self) -> Option<agentkeys_agent::tls::SeenCert> {
        match self {
            Self::Http(remote) => remote.seen(),
            Self::Local(_) => None,
        }
    }

    /// One request; the JSON body of a 2xx, or an error with the problem's code and detail.
    pub(crate) async fn call(&self, method: &str, path: &str, authorization: Option<&str>, body: Option<&[u8]>) -> Result<Value> {
        let (status, value, text) = match self {
            Self::Http(remote) => remote.send_raw(method, path, authorization, body).await?,
            Self::Local(router) => crate::local_api::call(router, method, path, authorization, body).await?,
        };
        if !(200..300).contains(&status) {
            let code = value["code"].as_str().unwrap_or("?");
            let detail = value["detail"].as_str().unwrap_or(text.trim());
            bail!("refused ({status} {code}): {detail}");
        }
        Ok(value)
    }
}

/// An unlocked owner: the key and where to send requests.
pub(crate) struct Session {
    transport: Transport,
    owner: OwnerId,
    key: MasterKey,
}

impl Session {
    pub(crate) async fn open(conn: &OwnerConn, config: &Config) -> Result<Self> {
        let path = key_file_path(conn.owner.as_deref())?;
        let file = EncryptedKeyFile::load(&path).with_context(|| format!("cannot load the owner key {}", path.display()))?;
        let owner = file.owner().clone();
        let prompt = format!("Passphrase for owner {owner}: ");
        let passphrase = resolve_passphrase(conn.passphrase_file.as_deref(), &prompt, Confirm::Once)?;
        let key = file.unlock(&passphrase).with_context(|| format!("cannot unlock {}", path.display()))?;
        let transport = Transport::new(conn.server.as_deref(), &conn.tls, config).await?;
        Ok(Self { transport, owner, key })
    }

    /// The server certificate the last request met (HTTPS only).
    pub(crate) fn seen(&self) -> Option<agentkeys_agent::tls::SeenCert> {
        self.transport.seen()
    }

    /// A session over an already unlocked key (the demo fixtures' generated keys).
    pub(crate) fn with_key(transport: Transport, owner: OwnerId, key: MasterKey) -> Self {
        Self { transport, owner, key }
    }

    /// One signed request: `path` includes the query, exactly as sent.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Value> {
        let nonce = Nonce::generate(&mut rand::rngs::OsRng);
        let signature =
            sign_request(&self.key, &self.owner, method, path, body.unwrap_or_default(), crate::now(), &nonce)?;
        self.transport.call(method, path, Some(&signature.header_value()), body).await
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
pub(crate) async fn enroll(args: EnrollArgs, config: &Config, json: bool) -> Result<()> {
    let transport = Transport::new(args.server.as_deref(), &args.tls, config).await?;
    let owner: OwnerId = args.owner.parse().map_err(|e| anyhow!("--owner: {e}"))?;
    let path = default_path(&owner)?;
    if path.exists() {
        bail!(
            "{} already exists: this machine already holds a key for owner {owner}; move it away first if you really mean to replace it",
            path.display()
        );
    }
    let prompt = format!("New passphrase for owner {owner}: ");
    let passphrase = resolve_passphrase(args.passphrase_file.as_deref(), &prompt, Confirm::Twice)?.check_new()?;
    let mut rng = rand::rngs::OsRng;
    let key = MasterKey::generate(&mut rng);
    let file = EncryptedKeyFile::seal(&key, &owner, &passphrase, KdfParams::PRODUCTION, &mut rng)?;
    create_config_dir(&path)?;
    // Saved before registering, so a registered key is never lost; removed again if
    // the server refuses.
    file.save(&path, SaveMode::CreateNew).with_context(|| format!("cannot write {}", path.display()))?;
    let body = json!({ "code": args.code, "public_key": file.public_key().to_base64() }).to_string();
    match transport.call("POST", &format!("/v1/owners/{owner}/enroll"), None, Some(body.as_bytes())).await {
        Ok(answer) => {
            // The certificate this enrollment went over is pinned for later commands.
            let pinned = match (&transport, transport.seen()) {
                (Transport::Http(remote), Some(seen)) if seen.accepted != Accepted::FirstContact => {
                    pin_server(&remote.base, seen.fingerprint)?;
                    Some(seen.fingerprint)
                }
                _ => None,
            };
            let out = json!({
                "owner": owner,
                "key_file": path,
                "enrolled_at": answer["enrolled_at"],
                "server_fingerprint": pinned.map(|f| f.to_string()),
            });
            print(json, &out, || {
                let mut text = format!(
                    "owner {owner} enrolled; master key sealed in {} (keep the passphrase: it approves every grant)",
                    path.display()
                );
                if let Some(f) = pinned {
                    text.push_str(&format!("\nserver certificate pinned: SHA-256 {f}"));
                }
                text
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
pub(crate) async fn grant_create(args: GrantCreateArgs, config: &Config, json: bool) -> Result<()> {
    let ttl = args.ttl.as_deref().map(|t| parse_ttl(t, MAX_GRANT_TTL_SECS)).transpose().map_err(|e| anyhow!("--ttl: {e}"))?;
    let scopes: Vec<&str> = args.scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut body = json!({ "agent": args.agent, "inbox": args.inbox, "scopes": scopes });
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    let session = Session::open(&args.conn, config).await?;
    let answer = session.call("POST", "/v1/grants", Some(body.to_string().as_bytes())).await?;
    print(json, &answer, || {
        format!("grant {} created for agent {} on {} ({}), expires {}", answer["id"].as_str().unwrap_or("?"), args.agent, args.inbox, args.scopes, answer["expires_at"].as_str().unwrap_or("?"))
    });
    Ok(())
}

/// `agentkeys grant change ID [--scopes …] [--ttl …]`.
pub(crate) async fn grant_change(args: GrantChangeArgs, config: &Config, json: bool) -> Result<()> {
    valid_id("grant", &args.grant_id)?;
    if args.scopes.is_none() && args.ttl.is_none() {
        bail!("nothing to change: give --scopes (narrower) and/or --ttl (new lifetime from now)");
    }
    let ttl = args.ttl.as_deref().map(|t| parse_ttl(t, MAX_GRANT_TTL_SECS)).transpose().map_err(|e| anyhow!("--ttl: {e}"))?;
    let mut body = json!({});
    if let Some(scopes) = &args.scopes {
        body["scopes"] = json!(scopes.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>());
    }
    if let Some(ttl) = ttl {
        body["ttl"] = json!(ttl);
    }
    let session = Session::open(&args.conn, config).await?;
    let path = format!("/v1/grants/{}", args.grant_id);
    let answer = session.call("PATCH", &path, Some(body.to_string().as_bytes())).await?;
    print(json, &answer, || {
        format!("grant {} now allows {} until {}", s(&answer["id"]), s(&answer["scopes"]), s(&answer["expires_at"]))
    });
    Ok(())
}

fn valid_id(kind: &str, id: &str) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("{kind} id {id:?} is not valid");
    }
    Ok(())
}

/// `agentkeys owner passkey add`: a one-time link that registers a passkey for
/// the web console (`POST /v1/owner/passkey-links`, signed).
pub(crate) async fn passkey_add(conn: &OwnerConn, config: &Config, json: bool) -> Result<()> {
    let answer = Session::open(conn, config).await?.call("POST", "/v1/owner/passkey-links", None).await?;
    print(json, &answer, || {
        format!(
            "Open this link in the browser you will approve with, before {} (single use):\n{}",
            s(&answer["expires_at"]),
            s(&answer["url"])
        )
    });
    Ok(())
}

/// `agentkeys owner notifications`: each kind of notice on or off.
#[derive(Debug, Clone, Args)]
pub(crate) struct NotificationArgs {
    #[command(flatten)]
    pub(crate) conn: OwnerConn,
    /// A new pairing request addressed to you.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub(crate) pairing: Option<String>,
    /// A grant or key of your agents expiring within 3 days.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub(crate) expiring: Option<String>,
    /// An agent's refused logins (AUTH) crossing the threshold.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub(crate) refused_auth: Option<String>,
    /// The audit chain failing verification.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub(crate) audit: Option<String>,
    /// An agent's bounces crossing the threshold.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub(crate) bounces: Option<String>,
    /// An agent reaching its send limit.
    #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
    pub(crate) send_limit: Option<String>,
}

/// `agentkeys owner notifications [--pairing on|off] …` (`GET`/`PATCH
/// /v1/owner/notifications`, signed).
pub(crate) async fn notifications(args: &NotificationArgs, config: &Config, json: bool) -> Result<()> {
    let changes: serde_json::Map<String, serde_json::Value> = [
        ("pairing", &args.pairing),
        ("expiring", &args.expiring),
        ("refused_auth", &args.refused_auth),
        ("audit", &args.audit),
        ("bounces", &args.bounces),
        ("send_limit", &args.send_limit),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k.to_owned(), json!(v == "on"))))
    .collect();
    let session = Session::open(&args.conn, config).await?;
    let answer = if changes.is_empty() {
        session.call("GET", "/v1/owner/notifications", None).await?
    } else {
        let body = json!({ "notices": changes }).to_string();
        session.call("PATCH", "/v1/owner/notifications", Some(body.as_bytes())).await?
    };
    print(json, &answer, || {
        let mut lines = vec![match answer["address"].as_str() {
            Some(a) => format!("notices are mailed to {a}"),
            None => "no email address is on file for you: no notice can be sent (the operator sets it with `owner add --email`)".to_owned(),
        }];
        if let Some(map) = answer["notices"].as_object() {
            lines.extend(map.iter().map(|(k, v)| format!("  {k:<13} {}", if v.as_bool() == Some(true) { "on" } else { "off" })));
        }
        lines.join("\n")
    });
    Ok(())
}

/// `agentkeys grant list --server …`.
pub(crate) async fn grant_list(conn: &OwnerConn, config: &Config, json: bool) -> Result<()> {
    let answer = Session::open(conn, config).await?.call("GET", "/v1/grants", None).await?;
    print(json, &answer, || {
        let rows = answer.as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|g| format!("{}  {}  agent {}  {}  {}  expires {}", s(&g["id"]), s(&g["state"]), s(&g["agent"]), s(&g["inbox"]), s(&g["scopes"]), s(&g["expires_at"])))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `agentkeys grant requests`: the owner's pending grant requests.
pub(crate) async fn grant_requests(conn: &OwnerConn, config: &Config, json: bool) -> Result<()> {
    let answer = Session::open(conn, config).await?.call("GET", "/v1/owner/grant-requests", None).await?;
    print(json, &answer, || {
        let rows = answer["requests"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            return "no grant requests are waiting for you".to_owned();
        }
        rows.iter()
            .map(|r| {
                format!(
                    "{}  agent {}  {} on {}  for {} s  decide by {}  {}",
                    s(&r["id"]),
                    s(&r["agent"]),
                    s(&r["scopes"]),
                    s(&r["inbox"]),
                    r["ttl"],
                    s(&r["decide_by"]),
                    r["reason"].as_str().map(|why| format!("\"{why}\"")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `agentkeys grant decide ar_… approve|deny`.
pub(crate) async fn grant_decide(conn: &OwnerConn, config: &Config, id: &str, approve: bool, json: bool) -> Result<()> {
    if !id.starts_with("ar_") || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("{id:?} is not a grant request id (ar_…): see `agentkeys grant requests`");
    }
    let verb = if approve { "approve" } else { "deny" };
    let answer = Session::open(conn, config).await?.call("POST", &format!("/v1/owner/grant-requests/{id}/{verb}"), None).await?;
    print(json, &answer, || match answer["grant"].as_str() {
        Some(grant) => format!("approved {id}: grant {grant} created, expires {}", s(&answer["expires_at"])),
        None => format!("denied {id}: nothing was granted"),
    });
    Ok(())
}

/// `agentkeys agent list --server …`: the owner's agents and their keys.
pub(crate) async fn agent_list(conn: &OwnerConn, config: &Config, json: bool) -> Result<()> {
    let answer = Session::open(conn, config).await?.call("GET", "/v1/agents", None).await?;
    print(json, &answer, || {
        let mut lines = Vec::new();
        for a in answer.as_array().cloned().unwrap_or_default() {
            lines.push(format!("{}  {}", s(&a["id"]), a["name"].as_str().unwrap_or("")));
            for k in a["keys"].as_array().cloned().unwrap_or_default() {
                lines.push(format!("    {}  {}  expires {}", s(&k["id"]), s(&k["state"]), s(&k["expires_at"])));
            }
        }
        lines.join("\n")
    });
    Ok(())
}

/// `agentkeys inbox list --server …`: the owner's inboxes.
pub(crate) async fn inbox_list(conn: &OwnerConn, config: &Config, json: bool) -> Result<()> {
    let answer = Session::open(conn, config).await?.call("GET", "/v1/inboxes", None).await?;
    print(json, &answer, || {
        let rows = answer.as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|i| {
                let expiry = i["expires_at"].as_str().map(|t| format!("  expires {t}")).unwrap_or_default();
                format!("{}  {}  agent {}{expiry}", s(&i["address"]), s(&i["status"]), s(&i["agent"]))
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `agentkeys inbox create --agent ID --server …`: an inbox for one of the owner's agents.
pub(crate) async fn inbox_create(
    conn: &OwnerConn,
    config: &Config,
    agent: &str,
    address: &agentkeys_core::Address,
    expires_in: Option<i64>,
    json: bool,
) -> Result<()> {
    let mut body = json!({ "agent": agent, "address": address });
    if let Some(secs) = expires_in {
        body["expires_in"] = json!(secs);
    }
    let body = body.to_string();
    let answer = Session::open(conn, config).await?.call("POST", "/v1/inboxes", Some(body.as_bytes())).await?;
    print(json, &answer, || s(&answer["address"]).to_owned());
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `agentkeys grant revoke ID --server …` and `agentkeys key revoke ID --server …`.
pub(crate) async fn revoke(conn: &OwnerConn, config: &Config, kind: &str, id: &str, json: bool) -> Result<()> {
    valid_id(kind, id)?;
    let collection = if kind == "grant" { "grants" } else { "keys" };
    let answer = Session::open(conn, config).await?.call("DELETE", &format!("/v1/{collection}/{id}"), None).await?;
    print(json, &answer, || format!("{kind} {id} revoked"));
    Ok(())
}

/// `agentkeys audit list --server …`: the records that concern the owner.
pub(crate) async fn audit_list(
    conn: &OwnerConn,
    config: &Config,
    after: u64,
    limit: u32,
    filter: &crate::audit::Filter,
    json: bool,
) -> Result<()> {
    let session = Session::open(conn, config).await?;
    // Pages of the owner's records until `limit` of them pass the filter.
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut cursor = after;
    while rows.len() < limit as usize {
        let answer = session.call("GET", &format!("/v1/audit?after={cursor}&limit={limit}"), None).await?;
        let page = answer["records"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last().and_then(|r| r["seq"].as_u64()) else { break };
        cursor = last;
        rows.extend(page.into_iter().filter(|r| {
            filter.matches(r["actor"].as_str().unwrap_or(""), r["subject"].as_str().unwrap_or(""), r["ts"].as_i64().unwrap_or(0))
        }));
    }
    rows.truncate(limit as usize);
    let records = serde_json::Value::Array(rows.clone());
    print(json, &records, || {
        rows.iter()
            .map(|r| {
                let time = r["ts"].as_i64().map_or_else(|| "-".to_owned(), rfc3339);
                // A refusal says why (an agent's AUTH refused for KEY_REVOKED, say): the
                // SMTP reply stays uniform, so this is where the owner learns it.
                let reason = r["detail"]["reason"].as_str().map(|why| format!("  reason {why}")).unwrap_or_default();
                format!(
                    "{:>6}  {time}  {}  {}  {}  {}{reason}",
                    r["seq"],
                    s(&r["actor"]),
                    s(&r["operation"]),
                    s(&r["subject"]),
                    s(&r["outcome"])
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
