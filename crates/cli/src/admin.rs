//! Admin commands over the metadata store. They open the data directory directly,
//! so they work whether or not the server is running (SQLite WAL lets both in).

use agentkeys_audit::{Actor, AuditEvent, hash_address, ops};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{
    Address, AgentId, AgentKey, Domain, Grant, InboxStatus, KeyId, MAX_AGENT_KEY_TTL_SECS, OwnerId,
    duration::parse_ttl,
};
use agentkeys_store::{AgentRecord, InboxRecord, KeyRecord, OwnerRecord, StoreError};
use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::json;

use crate::config::{Config, KEYS};
use crate::datadir::DataDir;

/// `agentkeys owner …`
#[derive(Debug, Subcommand)]
pub(crate) enum OwnerCmd {
    /// Add an owner.
    Add {
        /// Owner id: 0x followed by 40 hex digits.
        id: String,
        /// Notification address (we send to it, never read it).
        #[arg(long)]
        email: Option<String>,
    },
    /// List owners.
    List,
    /// Issue a new enrollment code for an owner (valid 24 h, single use; replaces
    /// any earlier code). Redeeming it registers a new master key.
    EnrollCode {
        /// Owner id.
        id: String,
    },
    /// On the owner's machine: create the master key, seal it with a passphrase
    /// and register it with the server using the operator's enrollment code.
    Enroll(crate::owner_client::EnrollArgs),
    /// The owner's passkeys for the web console (`/console`).
    #[command(subcommand)]
    Passkey(PasskeyCmd),
    /// Which notices are mailed to your address (signed with your master key);
    /// without flags, shows them.
    Notifications(crate::owner_client::NotificationArgs),
}

/// `agentkeys owner passkey …`
#[derive(Debug, Subcommand)]
pub(crate) enum PasskeyCmd {
    /// Print a one-time link (15 minutes, single use) that registers a passkey
    /// for the console; signed with your master key.
    Add(crate::owner_client::OwnerConn),
}

/// `agentkeys agent …`
#[derive(Debug, Subcommand)]
pub(crate) enum AgentCmd {
    /// Add an agent under an owner (prints its id).
    Add {
        /// Agent id: 0x followed by 40 hex digits (default: a new random one).
        id: Option<String>,
        /// The owning owner's id.
        #[arg(long)]
        owner: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List agents: your own and their keys with --server (signed), else every agent (operator).
    List {
        /// Only this owner's agents (operator); with --server, which key signs.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        remote: crate::owner_client::RemoteOwner,
    },
    /// Pair this machine as an agent: open a pairing request on a server, wait for
    /// the owner's `agentkeys approve`, save the agent key in <config dir>/agent.json.
    Pair(crate::pairing_client::PairArgs),
    /// An agent's send limits and review mode (owner; signed): messages per
    /// hour and day, new recipients per day, the bounce pause, hold for review.
    Limits(crate::guardrails_client::LimitsArgs),
}

/// `agentkeys inbox …`
#[derive(Debug, Subcommand)]
pub(crate) enum InboxCmd {
    /// Create an inbox for an agent; prints its address (as the owner, signed,
    /// with --server or --owner; else as the operator).
    Create {
        /// The agent the inbox is for.
        #[arg(long)]
        agent: String,
        /// Local part (default: a random bot-… name).
        #[arg(long)]
        name: Option<String>,
        /// Hosted domain (default: the configured domain).
        #[arg(long)]
        domain: Option<String>,
        /// Lifetime, e.g. 2h, 7d (at most 30d): after it the inbox stops
        /// receiving (550 5.1.1) and is removed with its mail. Default: never.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
    /// List inboxes: your own with --server (signed), else every inbox (operator).
    List {
        /// Only this owner's inboxes (operator); with --server, which key signs.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        remote: crate::owner_client::RemoteOwner,
    },
    /// Show or change an inbox's allow/block lists (as its owner, signed):
    /// patterns are added to the lists given; `--clear LIST` empties one first.
    Policy(crate::inbox_policy::PolicyArgs),
    /// Set an inbox's status.
    SetStatus {
        /// The inbox address.
        address: String,
        /// active, disabled or suspended.
        status: String,
    },
}

/// `agentkeys key …`
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCmd {
    /// Create an agent key; prints it once.
    Create {
        /// The agent the key identifies.
        #[arg(long)]
        agent: String,
        /// Lifetime, e.g. 2s, 15m, 12h, 30d (default and maximum 30d).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List an agent's keys (never the secrets).
    List {
        /// The agent.
        #[arg(long)]
        agent: String,
    },
    /// Revoke a key (as the owner with --server or --owner, signed; else as the operator).
    Revoke {
        /// The key id (key_…).
        key_id: String,
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
}

/// `agentkeys grant …`: every change is the owner's, signed with their master key
/// (to a server with `--server`, else checked and applied locally over `--data-dir`).
#[derive(Debug, Subcommand)]
pub(crate) enum GrantCmd {
    /// Grant one of your agents scopes on inboxes (owner; signed with your master key).
    Create(crate::owner_client::GrantCreateArgs),
    /// Narrow a grant's scopes or set its expiry (owner; signed). Never widens it.
    Change(crate::owner_client::GrantChangeArgs),
    /// List grants: yours with --server or --owner (signed), else every grant (operator, read-only).
    List {
        /// Only this agent's grants (operator view).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
    /// Revoke one of your grants (owner; signed with your master key).
    Revoke {
        /// The grant id (gr_…).
        grant_id: String,
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
    /// The grant requests your agents are waiting on (owner; signed).
    Requests {
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
    /// Approve or deny an agent's grant request (owner; signed with your master
    /// key): approved, the grant is created exactly as asked.
    Decide {
        /// The request id (ar_…), from `grant requests`.
        request_id: String,
        /// `approve` or `deny`.
        #[arg(value_parser = ["approve", "deny"])]
        decision: String,
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
}

/// `agentkeys queue …`
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCmd {
    /// List the outbound queue.
    List,
    /// Show one message's recipients and its delivery attempts.
    Show {
        /// The message id (ULID) from `queue list`.
        id: String,
    },
    /// Make a message's queued and deferred recipients due now.
    Retry {
        /// The message id (ULID).
        id: String,
    },
    /// Delete a message from the queue (recipients being sent right now stay);
    /// its stored copy goes when no recipient remains.
    Delete {
        /// The message id (ULID).
        id: String,
    },
}

fn print(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

/// The audit event of an admin command: the operator did `operation` to `subject`.
/// `detail` must never hold secrets, key material or key hashes.
pub(crate) fn operator_event(operation: &str, subject: impl Into<String>, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, operation, subject).with_detail(detail)
}

/// `owner.create`. The notification address is not ours, so only its keyed hash
/// goes into the log.
pub(crate) fn owner_event(dir: &DataDir, rec: &OwnerRecord) -> AuditEvent {
    let email_hash = rec.email.as_deref().map(|e| hash_address(&dir.address_key, e));
    operator_event(ops::OWNER_CREATE, rec.id.as_str(), json!({ "email_hash": email_hash }))
}

/// `agent.create`.
pub(crate) fn agent_event(rec: &AgentRecord) -> AuditEvent {
    operator_event(ops::AGENT_CREATE, rec.id.as_str(), json!({ "owner": rec.owner, "name": rec.name }))
}

/// `inbox.create`.
pub(crate) fn inbox_event(rec: &InboxRecord) -> AuditEvent {
    operator_event(
        ops::INBOX_CREATE,
        rec.address.as_str(),
        json!({ "owner": rec.owner, "agent": rec.agent, "status": rec.status, "expires_at": rec.expires_at }),
    )
}

fn ttl(arg: Option<&str>, max: i64) -> Result<i64> {
    match arg {
        None => Ok(max),
        Some(s) => parse_ttl(s, max).map_err(|e| anyhow!("--expires-in: {e}")),
    }
}

/// Issues (or replaces) the owner's single-use enrollment code, audited; returns
/// the code (shown once, stored only as its hash) and its expiry.
async fn issue_enrollment(dir: &DataDir, owner: &OwnerId) -> Result<(String, i64)> {
    let (code, rec) = enrollment_ticket(owner);
    let event = operator_event(ops::OWNER_ENROLLMENT_ISSUE, owner.as_str(), json!({ "expires_at": rec.expires_at }));
    let _receipt = dir
        .meta
        .issue_enrollment(&rec, &event)
        .await
        .map_err(|e| hint(e, "add the owner first with `agentkeys owner add`"))?;
    Ok((code, rec.expires_at))
}

/// A new enrollment code (to show once) and the ticket to store (its hash).
pub(crate) fn enrollment_ticket(owner: &OwnerId) -> (String, agentkeys_store::EnrollmentTicketRecord) {
    let (code, ticket) = agentkeys_approval::EnrollmentTicket::issue(&mut rand::rngs::OsRng, owner.clone(), crate::now());
    let rec = agentkeys_store::EnrollmentTicketRecord {
        owner: owner.clone(),
        code_hash: ticket.code_hash().0,
        expires_at: ticket.expires_at(),
        consumed_at: None,
    };
    (code.expose().to_owned(), rec)
}

/// How the owner uses an enrollment code. With an HTTPS listener, the
/// certificate's fingerprint goes with it: the owner's client pins it.
fn enrollment_text(config: &Config, owner: &OwnerId, code: &str, expires_at: i64) -> String {
    let server = match (config.listen_https, crate::tls::existing_fingerprint(config)) {
        (Some(addr), Some(fp)) => {
            let public = crate::config::server_url(config);
            let url = if public.starts_with("https://") { public } else { format!("https://{addr}") };
            format!("--server {url} --server-fingerprint {fp}")
        }
        _ => format!("--server {}", crate::config::server_url(config)),
    };
    format!(
        "enrollment code {code} (single use, valid until {})\n\
         give it to the owner, who runs on their own machine:\n  \
         agentkeys owner enroll {server} --owner {owner} --code {code}",
        rfc3339(expires_at)
    )
}

/// Agents' display names, so lists can show a name next to each id.
struct AgentNames(std::collections::HashMap<AgentId, String>);

impl AgentNames {
    async fn load(dir: &DataDir, owner: Option<&OwnerId>) -> Result<Self> {
        let agents = dir.meta.list_agents(owner).await?;
        Ok(Self(agents.into_iter().filter_map(|a| Some((a.id, a.name?))).collect()))
    }

    fn get(&self, agent: &AgentId) -> Option<&str> {
        self.0.get(agent).map(String::as_str)
    }

    /// `0x… (name)`, or the bare id for an agent without a name.
    fn label(&self, agent: &AgentId) -> String {
        match self.get(agent) {
            Some(name) => format!("{agent} ({name})"),
            None => agent.to_string(),
        }
    }
}

fn hint(err: StoreError, fix: &str) -> anyhow::Error {
    match err {
        StoreError::NotFound { .. } | StoreError::Conflict { .. } => anyhow!("{err}; {fix}"),
        other => anyhow!(other),
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| anyhow!("{what}: {e}"))
}

pub(crate) async fn owner(config: &Config, cmd: OwnerCmd, json: bool) -> Result<()> {
    // The owner's side runs on the owner's machine: no data directory.
    if let OwnerCmd::Enroll(args) = cmd {
        return crate::owner_client::enroll(args, config, json).await;
    }
    if let OwnerCmd::Passkey(PasskeyCmd::Add(conn)) = cmd {
        return crate::owner_client::passkey_add(&conn, config, json).await;
    }
    if let OwnerCmd::Notifications(args) = cmd {
        return crate::owner_client::notifications(&args, config, json).await;
    }
    let dir = match cmd {
        OwnerCmd::Add { .. } => DataDir::create_or_open(config).await?,
        _ => DataDir::open(config).await?,
    };
    match cmd {
        OwnerCmd::Add { id, email } => {
            let id: OwnerId = parse("owner id", &id)?;
            if let Some(e) = &email {
                let valid = e
                    .rsplit_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && !local.contains(char::is_whitespace) && domain.parse::<Domain>().is_ok());
                if !valid {
                    return Err(anyhow!("--email: {e:?} is not an email address (expected name@example.com)"));
                }
            }
            let rec = OwnerRecord { id: id.clone(), email, created_at: crate::now() };
            // The owner and their first enrollment code: one transaction, one record.
            let (code, ticket) = enrollment_ticket(&id);
            let mut event = owner_event(&dir, &rec);
            event.detail["enrollment_expires_at"] = json!(ticket.expires_at);
            let _receipt = dir
                .meta
                .add_owner_with_enrollment(&rec, &ticket, &event)
                .await
                .map_err(|e| hint(e, "owner ids are unique"))?;
            let expires_at = ticket.expires_at;
            print(json, json!({ "id": id, "enrollment_code": code, "enrollment_expires_at": rfc3339(expires_at), "server_fingerprint": crate::tls::existing_fingerprint(config).map(|f| f.to_string()) }), || {
                format!("owner {id} added\n{}", enrollment_text(config, &id, &code, expires_at))
            });
        }
        OwnerCmd::EnrollCode { id } => {
            let id: OwnerId = parse("owner id", &id)?;
            let (code, expires_at) = issue_enrollment(&dir, &id).await?;
            print(json, json!({ "id": id, "enrollment_code": code, "enrollment_expires_at": rfc3339(expires_at), "server_fingerprint": crate::tls::existing_fingerprint(config).map(|f| f.to_string()) }), || {
                enrollment_text(config, &id, &code, expires_at)
            });
        }
        OwnerCmd::Enroll(args) => return crate::owner_client::enroll(args, config, json).await,
        OwnerCmd::Passkey(PasskeyCmd::Add(conn)) => return crate::owner_client::passkey_add(&conn, config, json).await,
        OwnerCmd::Notifications(args) => return crate::owner_client::notifications(&args, config, json).await,
        OwnerCmd::List => {
            let owners = dir.meta.list_owners().await?;
            let rows: Vec<_> = owners
                .iter()
                .map(|o| json!({ "id": o.id, "email": o.email, "created_at": rfc3339(o.created_at) }))
                .collect();
            print(json, json!(rows), || {
                owners.iter().map(|o| format!("{}  {}", o.id, o.email.as_deref().unwrap_or("-"))).collect::<Vec<_>>().join("\n")
            });
        }
    }
    Ok(())
}

pub(crate) async fn agent(config: &Config, cmd: AgentCmd, json: bool) -> Result<()> {
    match cmd {
        // An HTTP client of a server; it never opens a data directory.
        AgentCmd::Pair(args) => crate::pairing_client::pair(args, json).await?,
        AgentCmd::Limits(args) => crate::guardrails_client::limits(args, config, json).await?,
        AgentCmd::Add { id, owner, name } => {
            let dir = DataDir::open(config).await?;
            let id: AgentId = match id {
                Some(id) => parse("agent id", &id)?,
                None => AgentId::generate(&mut rand::thread_rng()),
            };
            let owner: OwnerId = parse("--owner", &owner)?;
            let rec = AgentRecord { id: id.clone(), owner: owner.clone(), name, created_at: crate::now() };
            let _receipt = dir
                .meta
                .add_agent(&rec, &agent_event(&rec))
                .await
                .map_err(|e| hint(e, "add the owner first with `agentkeys owner add`, and use a new agent id"))?;
            print(json, json!({ "id": id, "owner": owner, "name": rec.name }), || match &rec.name {
                Some(name) => format!("agent {id} ({name}) added under owner {owner}"),
                None => format!("agent {id} added under owner {owner}"),
            });
        }
        AgentCmd::List { owner, remote } if remote.server.is_some() => {
            crate::owner_client::agent_list(&remote.conn(owner), config, json).await?;
        }
        AgentCmd::List { owner, remote: _ } => {
            let dir = DataDir::open(config).await?;
            let owner = owner.map(|o| parse::<OwnerId>("--owner", &o)).transpose()?;
            let agents = dir.meta.list_agents(owner.as_ref()).await?;
            let rows: Vec<_> = agents
                .iter()
                .map(|a| json!({ "id": a.id, "owner": a.owner, "name": a.name, "created_at": rfc3339(a.created_at) }))
                .collect();
            print(json, json!(rows), || {
                agents.iter().map(|a| format!("{}  owner {}  {}", a.id, a.owner, a.name.as_deref().unwrap_or(""))).collect::<Vec<_>>().join("\n")
            });
        }
    }
    Ok(())
}

/// The address `inbox create` makes: `--name` (else a random `bot-…`) at
/// `--domain` (else the configured domain); never one with the subaddress separator.
fn new_address(config: &Config, name: Option<&str>, domain: Option<&str>) -> Result<Address> {
    let domain: Domain = match domain {
        Some(d) => parse("--domain", d)?,
        None => config.domain.clone(),
    };
    let address = match name {
        Some(local) => Address::new(local, &domain).map_err(|e| anyhow!("--name: {e}"))?,
        None => config.subaddressing.random_inbox(&mut rand::thread_rng(), &domain),
    };
    config.subaddressing.check_new_inbox(&address).map_err(|e| anyhow!("--name: {e}"))?;
    Ok(address)
}

/// `--expires-in` of `inbox create` in seconds (the server checks the limits).
fn inbox_lifetime(expires_in: Option<&str>) -> Result<Option<i64>> {
    expires_in
        .map(|d| agentkeys_core::parse_duration(d).map_err(|e| anyhow!("--expires-in: {e} (e.g. 2h, 7d; at most 30d)")))
        .transpose()
}

pub(crate) async fn inbox(config: &Config, cmd: InboxCmd, json: bool) -> Result<()> {
    match cmd {
        InboxCmd::Create { agent, name, domain, expires_in, conn } if conn.server.is_some() || conn.owner.is_some() => {
            let address = new_address(config, name.as_deref(), domain.as_deref())?;
            let expires_in = inbox_lifetime(expires_in.as_deref())?;
            return crate::owner_client::inbox_create(&conn, config, &agent, &address, expires_in, json).await;
        }
        InboxCmd::List { owner, remote } if remote.server.is_some() => {
            return crate::owner_client::inbox_list(&remote.conn(owner), config, json).await;
        }
        InboxCmd::Policy(args) => return crate::inbox_policy::run(args, config, json).await,
        _ => {}
    }
    let dir = DataDir::open(config).await?;
    match cmd {
        InboxCmd::Create { agent, name, domain, expires_in, conn: _ } => {
            let agent: AgentId = parse("--agent", &agent)?;
            let address = new_address(config, name.as_deref(), domain.as_deref())?;
            let now = crate::now();
            let expires_at = agentkeys_core::owner_inbox_expiry(inbox_lifetime(expires_in.as_deref())?, now)
                .map_err(|e| anyhow!("--expires-in: {e}"))?;
            let owner = dir
                .meta
                .get_agent(&agent)
                .await?
                .ok_or_else(|| anyhow!("agent {agent} not found; add it first with `agentkeys agent add`"))?
                .owner;
            let rec = InboxRecord { address: address.clone(), owner, agent, status: InboxStatus::Active, created_at: now, expires_at };
            let _receipt = dir.meta.create_inbox(&rec, &inbox_event(&rec)).await.map_err(|e| hint(e, "pick another --name"))?;
            print(json, json!({ "address": address }), || address.to_string());
        }
        InboxCmd::List { owner, remote: _ } => {
            let owner = owner.map(|o| parse::<OwnerId>("--owner", &o)).transpose()?;
            let inboxes = dir.meta.list_inboxes(owner.as_ref()).await?;
            let names = AgentNames::load(&dir, owner.as_ref()).await?;
            let rows: Vec<_> = inboxes
                .iter()
                .map(|i| json!({ "address": i.address, "owner": i.owner, "agent": i.agent, "agent_name": names.get(&i.agent), "status": i.status, "created_at": rfc3339(i.created_at), "expires_at": i.expires_at.map(rfc3339) }))
                .collect();
            print(json, json!(rows), || {
                inboxes
                    .iter()
                    .map(|i| {
                        let expiry = i.expires_at.map(|t| format!("  expires {}", rfc3339(t))).unwrap_or_default();
                        format!("{}  {}  owner {}  agent {}{expiry}", i.address, i.status, i.owner, names.label(&i.agent))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        // Answered above, always as the owner.
        InboxCmd::Policy(_) => {}
        InboxCmd::SetStatus { address, status } => {
            let address: Address = parse("address", &address)?;
            let status: InboxStatus = parse("status", &status)?;
            let event = operator_event(ops::INBOX_SET_STATUS, address.as_str(), json!({ "status": status }));
            let _receipt = dir
                .meta
                .set_inbox_status(&address, status, &event)
                .await
                .map_err(|e| hint(e, "list inboxes with `agentkeys inbox list`"))?;
            print(json, json!({ "address": address, "status": status }), || format!("{address} is now {status}"));
        }
    }
    Ok(())
}

pub(crate) async fn key(config: &Config, cmd: KeyCmd, json: bool) -> Result<()> {
    if let KeyCmd::Revoke { key_id, conn } = &cmd
        && (conn.server.is_some() || conn.owner.is_some())
    {
        return crate::owner_client::revoke(conn, config, "key", key_id, json).await;
    }
    let dir = DataDir::open(config).await?;
    match cmd {
        KeyCmd::Create { agent, expires_in } => {
            let agent: AgentId = parse("--agent", &agent)?;
            let ttl = ttl(expires_in.as_deref(), MAX_AGENT_KEY_TTL_SECS)?;
            let (id, key, expires_at) = create_key(&dir, &agent, crate::now() + ttl).await?;
            print(json, json!({ "id": id, "key": key.expose(), "expires_at": rfc3339(expires_at) }), || {
                format!("{}\n(key {id}, expires {}; shown once, store it now)", key.expose(), rfc3339(expires_at))
            });
        }
        KeyCmd::List { agent } => {
            let agent: AgentId = parse("--agent", &agent)?;
            let keys = dir.meta.list_keys(&agent).await?;
            let now = crate::now();
            let state = |k: &KeyRecord| match (k.revoked_at, k.expires_at <= now) {
                (Some(_), _) => "revoked",
                (None, true) => "expired",
                (None, false) => "active",
            };
            let rows: Vec<_> = keys
                .iter()
                .map(|k| json!({ "id": k.id, "agent": k.agent, "state": state(k), "created_at": rfc3339(k.created_at), "expires_at": rfc3339(k.expires_at), "revoked_at": k.revoked_at.map(rfc3339) }))
                .collect();
            print(json, json!(rows), || {
                keys.iter().map(|k| format!("{}  {}  expires {}", k.id, state(k), rfc3339(k.expires_at))).collect::<Vec<_>>().join("\n")
            });
        }
        KeyCmd::Revoke { key_id, conn: _ } => {
            let id: KeyId = parse("key id", &key_id)?;
            revoke_key(&dir, &id).await.map_err(|e| hint(e, "list keys with `agentkeys key list --agent ID`"))?;
            print(json, json!({ "id": id, "revoked": true }), || format!("key {id} revoked"));
        }
    }
    Ok(())
}

/// Creates and stores a key for `agent`; returns its id, the secret and the expiry.
pub(crate) async fn create_key(dir: &DataDir, agent: &AgentId, expires_at: i64) -> Result<(KeyId, AgentKey, i64)> {
    let mut rng = rand::rngs::OsRng;
    let key = AgentKey::generate(&mut rng);
    let rec = KeyRecord {
        id: KeyId::generate(&mut rng),
        agent: agent.clone(),
        hash: dir.hasher.hash(&key),
        created_at: crate::now(),
        expires_at,
        revoked_at: None,
    };
    // The key id identifies the key; neither the secret nor its hash is logged.
    let event = operator_event(ops::KEY_CREATE, rec.id.as_str(), json!({ "agent": agent, "expires_at": expires_at }));
    let _receipt =
        dir.meta.create_key(&rec, &event).await.map_err(|e| hint(e, "add the agent first with `agentkeys agent add`"))?;
    Ok((rec.id, key, expires_at))
}

/// Revokes a key, audited.
pub(crate) async fn revoke_key(dir: &DataDir, id: &KeyId) -> Result<(), StoreError> {
    let event = operator_event(ops::KEY_REVOKE, id.as_str(), json!({}));
    dir.meta.revoke_key(id, crate::now(), &event).await.map(|_receipt| ())
}

pub(crate) async fn grant(config: &Config, cmd: GrantCmd, json: bool) -> Result<()> {
    match cmd {
        GrantCmd::Create(args) => crate::owner_client::grant_create(args, config, json).await,
        GrantCmd::Change(args) => crate::owner_client::grant_change(args, config, json).await,
        GrantCmd::Revoke { grant_id, conn } => crate::owner_client::revoke(&conn, config, "grant", &grant_id, json).await,
        GrantCmd::Requests { conn } => crate::owner_client::grant_requests(&conn, config, json).await,
        GrantCmd::Decide { request_id, decision, conn } => {
            crate::owner_client::grant_decide(&conn, config, &request_id, decision == "approve", json).await
        }
        GrantCmd::List { conn, .. } if conn.server.is_some() || conn.owner.is_some() => {
            crate::owner_client::grant_list(&conn, config, json).await
        }
        GrantCmd::List { agent, conn: _ } => {
            let dir = DataDir::open(config).await?;
            let agent = agent.map(|a| parse::<AgentId>("--agent", &a)).transpose()?;
            let grants = dir.meta.list_grants(agent.as_ref()).await?;
            let names = AgentNames::load(&dir, None).await?;
            let now = crate::now();
            let state = |g: &Grant| if g.revoked_at.is_some() { "revoked" } else if g.is_active(now) { "active" } else { "expired" };
            let rows: Vec<_> = grants
                .iter()
                .map(|g| json!({ "id": g.id, "owner": g.owner, "agent": g.agent, "agent_name": names.get(&g.agent), "inbox": g.pattern.to_string(), "scopes": g.scopes.to_string(), "state": state(g), "created_at": rfc3339(g.created_at), "expires_at": rfc3339(g.expires_at) }))
                .collect();
            print(json, json!(rows), || {
                grants.iter().map(|g| format!("{}  {}  agent {}  {}  {}  expires {}", g.id, state(g), names.label(&g.agent), g.pattern, g.scopes, rfc3339(g.expires_at))).collect::<Vec<_>>().join("\n")
            });
            Ok(())
        }
    }
}

pub(crate) async fn queue(config: &Config, cmd: QueueCmd, json: bool) -> Result<()> {
    let dir = DataDir::open(config).await?;
    match cmd {
        QueueCmd::List => {
            let entries = dir.meta.list_queue().await?;
            let rows: Vec<_> = entries
                .iter()
                .map(|q| json!({ "id": q.message_id, "sender": q.sender, "recipient": q.recipient, "state": q.state, "size": q.size, "queued_at": rfc3339(q.queued_at), "attempts": q.attempts, "last_response": q.last_response }))
                .collect();
            print(json, json!(rows), || {
                if entries.is_empty() {
                    return "queue is empty".to_owned();
                }
                entries.iter().map(|q| format!("{}  {}  {} -> {}  {} bytes", q.message_id, q.state, q.sender, q.recipient, q.size)).collect::<Vec<_>>().join("\n")
            });
        }
        QueueCmd::Show { id } => {
            let detail = dir.meta.queue_show(&id).await?;
            let recipients: Vec<_> = detail
                .recipients
                .iter()
                .map(|q| json!({ "recipient": q.recipient, "state": q.state, "attempts": q.attempts, "next_attempt_at": rfc3339(q.next_attempt_at), "last_response": q.last_response }))
                .collect();
            let attempts: Vec<_> = detail
                .attempts
                .iter()
                .map(|a| json!({ "recipient": a.recipient, "attempt": a.attempt, "at": rfc3339(a.at), "outcome": a.outcome, "response": a.response }))
                .collect();
            let first = detail.recipients.first();
            let value = json!({ "id": detail.message_id, "sender": first.map(|q| q.sender.as_str()), "size": first.map(|q| q.size), "queued_at": first.map(|q| rfc3339(q.queued_at)), "recipients": recipients, "attempts": attempts });
            print(json, value, || {
                let mut lines = vec![format!("message {}", detail.message_id)];
                lines.extend(detail.recipients.iter().map(|q| {
                    format!("  {}  {}  attempts {}  next {}  {}", q.recipient, q.state, q.attempts, rfc3339(q.next_attempt_at), q.last_response.as_deref().unwrap_or("-"))
                }));
                lines.push("attempts:".to_owned());
                lines.extend(detail.attempts.iter().map(|a| {
                    format!("  {}  #{} {}  {}  {}", rfc3339(a.at), a.attempt, a.recipient, a.outcome, a.response.as_deref().unwrap_or("-"))
                }));
                lines.join("\n")
            });
        }
        QueueCmd::Retry { id } => {
            let n = dir.meta.queue_retry(&id, crate::now()).await?;
            print(json, json!({ "id": id, "due_now": n }), || format!("{n} recipient(s) of {id} due now"));
        }
        QueueCmd::Delete { id } => {
            use agentkeys_store::{BlobKey, BlobStore as _};
            let (deleted, remaining) = dir.meta.queue_delete(&id).await?;
            let mut blob_removed = false;
            if remaining == 0
                && let Ok(ulid) = id.parse::<ulid::Ulid>()
            {
                blob_removed = dir.blobs.remove(&BlobKey::queued(ulid)).await?;
            }
            print(json, json!({ "id": id, "deleted": deleted, "remaining": remaining, "blob_removed": blob_removed }), || {
                if remaining == 0 {
                    format!("deleted {deleted} recipient(s) of {id}")
                } else {
                    format!("deleted {deleted} recipient(s) of {id}; {remaining} being sent right now stay")
                }
            });
        }
    }
    Ok(())
}

pub(crate) fn print_config_keys(json: bool) {
    let rows: Vec<_> = KEYS.iter().map(|k| json!({ "key": k.toml, "env": k.env, "help": k.help })).collect();
    print(json, json!(rows), || KEYS.iter().map(|k| format!("{:<30} {:<36} {}", k.toml, k.env, k.help)).collect::<Vec<_>>().join("\n"));
}
