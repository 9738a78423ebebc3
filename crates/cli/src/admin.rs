//! Admin commands over the metadata store. They open the data directory directly,
//! so they work whether or not the server is running (SQLite WAL lets both in).

use agentkeys_audit::{Actor, AuditEvent, hash_address, ops};
use agentkeys_core::time::rfc3339;
use agentkeys_core::{
    Address, AgentId, AgentKey, Domain, Grant, GrantId, InboxPattern, InboxStatus, KeyId,
    MAX_AGENT_KEY_TTL_SECS, MAX_GRANT_TTL_SECS, OwnerId, Scopes, duration::parse_ttl,
};
use agentkeys_store::{AgentRecord, InboxRecord, KeyRecord, MetadataStore, OwnerRecord, StoreError};
use anyhow::{Context, Result, anyhow};
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
}

/// `agentkeys agent …`
#[derive(Debug, Subcommand)]
pub(crate) enum AgentCmd {
    /// Add an agent under an owner.
    Add {
        /// Agent id: 0x followed by 40 hex digits.
        id: String,
        /// The owning owner's id.
        #[arg(long)]
        owner: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List agents.
    List {
        /// Only this owner's agents.
        #[arg(long)]
        owner: Option<String>,
    },
}

/// `agentkeys inbox …`
#[derive(Debug, Subcommand)]
pub(crate) enum InboxCmd {
    /// Create an inbox for an agent; prints its address.
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
    },
    /// List inboxes.
    List {
        /// Only this owner's inboxes.
        #[arg(long)]
        owner: Option<String>,
    },
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
    /// Revoke a key.
    Revoke {
        /// The key id (key_…).
        key_id: String,
    },
}

/// `agentkeys grant …`
#[derive(Debug, Subcommand)]
pub(crate) enum GrantCmd {
    /// Grant an agent scopes on inboxes.
    Add {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// An address, a prefix ending in * (bot-*), or *@domain.
        #[arg(long)]
        inbox: String,
        /// Comma-separated: read, send, admin.
        #[arg(long)]
        scopes: String,
        /// Lifetime, e.g. 12h, 30d (default and maximum 30d).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List grants.
    List {
        /// Only this agent's grants.
        #[arg(long)]
        agent: Option<String>,
    },
    /// Revoke a grant.
    Revoke {
        /// The grant id (gr_…).
        grant_id: String,
    },
}

/// `agentkeys queue …`
#[derive(Debug, Subcommand)]
pub(crate) enum QueueCmd {
    /// List the outbound queue.
    List,
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
        json!({ "owner": rec.owner, "agent": rec.agent, "status": rec.status }),
    )
}

fn ttl(arg: Option<&str>, max: i64) -> Result<i64> {
    match arg {
        None => Ok(max),
        Some(s) => parse_ttl(s, max).map_err(|e| anyhow!("--expires-in: {e}")),
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
    let dir = DataDir::open(config).await?;
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
            let _receipt = dir.meta.add_owner(&rec, &owner_event(&dir, &rec)).await.map_err(|e| hint(e, "owner ids are unique"))?;
            print(json, json!({ "id": id }), || format!("owner {id} added"));
        }
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
    let dir = DataDir::open(config).await?;
    match cmd {
        AgentCmd::Add { id, owner, name } => {
            let id: AgentId = parse("agent id", &id)?;
            let owner: OwnerId = parse("--owner", &owner)?;
            let rec = AgentRecord { id: id.clone(), owner: owner.clone(), name, created_at: crate::now() };
            let _receipt = dir
                .meta
                .add_agent(&rec, &agent_event(&rec))
                .await
                .map_err(|e| hint(e, "add the owner first with `agentkeys owner add`, and use a new agent id"))?;
            print(json, json!({ "id": id, "owner": owner }), || format!("agent {id} added under owner {owner}"));
        }
        AgentCmd::List { owner } => {
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

pub(crate) async fn inbox(config: &Config, cmd: InboxCmd, json: bool) -> Result<()> {
    let dir = DataDir::open(config).await?;
    match cmd {
        InboxCmd::Create { agent, name, domain } => {
            let agent: AgentId = parse("--agent", &agent)?;
            let domain: Domain = match domain {
                Some(d) => parse("--domain", &d)?,
                None => config.domain.clone(),
            };
            let address = match name {
                Some(local) => Address::new(&local, &domain).map_err(|e| anyhow!("--name: {e}"))?,
                None => Address::random_bot(&mut rand::thread_rng(), &domain),
            };
            let owner = dir
                .meta
                .get_agent(&agent)
                .await?
                .ok_or_else(|| anyhow!("agent {agent} not found; add it first with `agentkeys agent add`"))?
                .owner;
            let rec = InboxRecord { address: address.clone(), owner, agent, status: InboxStatus::Active, created_at: crate::now() };
            let _receipt = dir.meta.create_inbox(&rec, &inbox_event(&rec)).await.map_err(|e| hint(e, "pick another --name"))?;
            print(json, json!({ "address": address }), || address.to_string());
        }
        InboxCmd::List { owner } => {
            let owner = owner.map(|o| parse::<OwnerId>("--owner", &o)).transpose()?;
            let inboxes = dir.meta.list_inboxes(owner.as_ref()).await?;
            let rows: Vec<_> = inboxes
                .iter()
                .map(|i| json!({ "address": i.address, "owner": i.owner, "agent": i.agent, "status": i.status, "created_at": rfc3339(i.created_at) }))
                .collect();
            print(json, json!(rows), || {
                inboxes.iter().map(|i| format!("{}  {}  owner {}  agent {}", i.address, i.status, i.owner, i.agent)).collect::<Vec<_>>().join("\n")
            });
        }
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
        KeyCmd::Revoke { key_id } => {
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

/// Creates and stores a grant; returns its id.
pub(crate) async fn create_grant(dir: &DataDir, agent: &AgentId, pattern: InboxPattern, scopes: Scopes, expires_at: i64) -> Result<GrantId> {
    let owner = dir
        .meta
        .get_agent(agent)
        .await?
        .ok_or_else(|| anyhow!("agent {agent} not found; add it first with `agentkeys agent add`"))?
        .owner;
    let grant = Grant {
        id: GrantId::generate(&mut rand::rngs::OsRng),
        owner,
        agent: agent.clone(),
        pattern,
        scopes,
        created_at: crate::now(),
        expires_at,
        revoked_at: None,
    };
    let event = operator_event(
        ops::GRANT_CREATE,
        grant.id.as_str(),
        json!({
            "owner": grant.owner,
            "agent": grant.agent,
            "inbox": grant.pattern.to_string(),
            "scopes": grant.scopes.to_string(),
            "expires_at": grant.expires_at,
        }),
    );
    let _receipt = dir.meta.add_grant(&grant, &event).await.context("cannot store the grant")?;
    Ok(grant.id)
}

pub(crate) async fn grant(config: &Config, cmd: GrantCmd, json: bool) -> Result<()> {
    let dir = DataDir::open(config).await?;
    match cmd {
        GrantCmd::Add { agent, inbox, scopes, expires_in } => {
            let agent: AgentId = parse("--agent", &agent)?;
            let pattern: InboxPattern = parse("--inbox", &inbox)?;
            let scopes: Scopes = parse("--scopes", &scopes)?;
            let ttl = ttl(expires_in.as_deref(), MAX_GRANT_TTL_SECS)?;
            let id = create_grant(&dir, &agent, pattern, scopes, crate::now() + ttl).await?;
            print(json, json!({ "id": id }), || format!("grant {id} added"));
        }
        GrantCmd::List { agent } => {
            let agent = agent.map(|a| parse::<AgentId>("--agent", &a)).transpose()?;
            let grants = dir.meta.list_grants(agent.as_ref()).await?;
            let now = crate::now();
            let state = |g: &Grant| if g.revoked_at.is_some() { "revoked" } else if g.is_active(now) { "active" } else { "expired" };
            let rows: Vec<_> = grants
                .iter()
                .map(|g| json!({ "id": g.id, "owner": g.owner, "agent": g.agent, "inbox": g.pattern.to_string(), "scopes": g.scopes.to_string(), "state": state(g), "created_at": rfc3339(g.created_at), "expires_at": rfc3339(g.expires_at) }))
                .collect();
            print(json, json!(rows), || {
                grants.iter().map(|g| format!("{}  {}  agent {}  {}  {}  expires {}", g.id, state(g), g.agent, g.pattern, g.scopes, rfc3339(g.expires_at))).collect::<Vec<_>>().join("\n")
            });
        }
        GrantCmd::Revoke { grant_id } => {
            let id: GrantId = parse("grant id", &grant_id)?;
            let event = operator_event(ops::GRANT_REVOKE, id.as_str(), json!({}));
            let _receipt = dir
                .meta
                .revoke_grant(&id, crate::now(), &event)
                .await
                .map_err(|e| hint(e, "list grants with `agentkeys grant list`"))?;
            print(json, json!({ "id": id, "revoked": true }), || format!("grant {id} revoked"));
        }
    }
    Ok(())
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
    }
    Ok(())
}

pub(crate) fn print_config_keys(json: bool) {
    let rows: Vec<_> = KEYS.iter().map(|k| json!({ "key": k.toml, "env": k.env, "help": k.help })).collect();
    print(json, json!(rows), || KEYS.iter().map(|k| format!("{:<30} {:<36} {}", k.toml, k.env, k.help)).collect::<Vec<_>>().join("\n"));
}
