//! `agentkeys demo seed`: a fixture set that exercises every submission AUTH outcome.

use agentkeys_core::{
    Address, AgentId, AgentKey, AuthFailure, InboxPattern, InboxStatus, MAX_GRANT_TTL_SECS, OwnerId, Scopes,
};
use agentkeys_store::{AgentRecord, InboxRecord, MetadataStore, OwnerRecord, StoreError};
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::json;

use crate::admin::{agent_event, create_grant, create_key, inbox_event, owner_event, revoke_key};
use crate::config::Config;
use crate::datadir::DataDir;

/// `agentkeys demo …`
#[derive(Debug, Subcommand)]
pub(crate) enum DemoCmd {
    /// Create two owners, their agents, inboxes, keys and grants, and print which
    /// username/password pair exercises which AUTH outcome.
    Seed,
}

/// Owner A of the fixtures.
pub(crate) const DEMO_OWNER_A: &str = "0x1111111111111111111111111111111111111111";
/// Owner B of the fixtures.
pub(crate) const DEMO_OWNER_B: &str = "0x2222222222222222222222222222222222222222";
const AGENT_SENDER: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const AGENT_READER: &str = "0xa2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const AGENT_OTHER: &str = "0xb1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";

struct Case {
    name: &'static str,
    outcome: Option<AuthFailure>,
    username: String,
    password: String,
}

fn id<T: std::str::FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| anyhow!("fixture id {s}: {e}"))
}

pub(crate) async fn run(config: &Config, cmd: DemoCmd, json: bool) -> Result<()> {
    let DemoCmd::Seed = cmd;
    let dir = DataDir::open(config).await?;
    let now = crate::now();
    let (owner_a, owner_b): (OwnerId, OwnerId) = (id(DEMO_OWNER_A)?, id(DEMO_OWNER_B)?);
    let (sender, reader, other): (AgentId, AgentId, AgentId) = (id(AGENT_SENDER)?, id(AGENT_READER)?, id(AGENT_OTHER)?);

    for owner in [&owner_a, &owner_b] {
        let rec = OwnerRecord { id: owner.clone(), email: None, created_at: now };
        match dir.meta.add_owner(&rec, &owner_event(&dir, &rec)).await {
            Ok(_receipt) => {}
            Err(StoreError::Conflict { .. }) => bail!(
                "demo fixtures already exist in {}; keys are shown only once, so seed a fresh data directory (--data-dir)",
                dir.path.display()
            ),
            Err(e) => return Err(e.into()),
        }
    }
    for (agent, owner, name) in [(&sender, &owner_a, "demo sender"), (&reader, &owner_a, "demo reader"), (&other, &owner_b, "other owner's agent")] {
        let rec = AgentRecord { id: agent.clone(), owner: owner.clone(), name: Some(name.to_owned()), created_at: now };
        let _receipt = dir.meta.add_agent(&rec, &agent_event(&rec)).await?;
    }

    let domain = &config.domain;
    let addr = |local: &str| Address::new(local, domain).map_err(|e| anyhow!(e));
    let demo = addr("demo")?;
    let inboxes = [
        (demo.clone(), &owner_a, &sender, InboxStatus::Active),
        (addr("demo-disabled")?, &owner_a, &sender, InboxStatus::Disabled),
        (addr("demo-suspended")?, &owner_a, &sender, InboxStatus::Suspended),
        (addr("archive")?, &owner_a, &sender, InboxStatus::Active),
        (addr("reader")?, &owner_a, &reader, InboxStatus::Active),
        (addr("other")?, &owner_b, &other, InboxStatus::Active),
    ];
    for (address, owner, agent, status) in &inboxes {
        let rec = InboxRecord { address: address.clone(), owner: (*owner).clone(), agent: (*agent).clone(), status: *status, created_at: now };
        let _receipt = dir.meta.create_inbox(&rec, &inbox_event(&rec)).await?;
    }

    let expires = now + MAX_GRANT_TTL_SECS;
    let scopes = |s: &str| s.parse::<Scopes>().map_err(|e| anyhow!(e));
    let pattern = |s: &str| s.parse::<InboxPattern>().map_err(|e| anyhow!(e));
    // The sender's grant covers demo*, not archive@ (GRANT_DOES_NOT_COVER).
    create_grant(&dir, &sender, pattern("demo*")?, scopes("read,send")?, expires).await?;
    create_grant(&dir, &reader, pattern(addr("reader")?.as_str())?, scopes("read")?, expires).await?;
    create_grant(&dir, &other, pattern(addr("other")?.as_str())?, scopes("read,send")?, expires).await?;

    let (_, valid, _) = create_key(&dir, &sender, expires).await?;
    let (revoked_id, revoked, _) = create_key(&dir, &sender, expires).await?;
    revoke_key(&dir, &revoked_id).await?;
    let (_, expired, _) = create_key(&dir, &sender, now - 1).await?;
    let (_, reader_key, _) = create_key(&dir, &reader, expires).await?;
    let (_, other_key, _) = create_key(&dir, &other, expires).await?;
    let unknown = AgentKey::generate(&mut rand::rngs::OsRng);

    let k = |key: &AgentKey| key.expose().to_owned();
    let cases = [
        Case { name: "valid", outcome: None, username: demo.to_string(), password: k(&valid) },
        Case { name: "username-not-an-address", outcome: Some(AuthFailure::InvalidUsername), username: "demo".to_owned(), password: k(&valid) },
        Case { name: "key-malformed", outcome: Some(AuthFailure::MalformedKey), username: demo.to_string(), password: "am_validkey12345678901234567890123456".to_owned() },
        Case { name: "key-unknown", outcome: Some(AuthFailure::KeyNotFound), username: demo.to_string(), password: k(&unknown) },
        Case { name: "key-revoked", outcome: Some(AuthFailure::KeyRevoked), username: demo.to_string(), password: k(&revoked) },
        Case { name: "key-expired", outcome: Some(AuthFailure::KeyExpired), username: demo.to_string(), password: k(&expired) },
        Case { name: "agent-without-send-grant", outcome: Some(AuthFailure::NoSendGrant), username: addr("reader")?.to_string(), password: k(&reader_key) },
        Case { name: "inbox-unknown", outcome: Some(AuthFailure::InboxNotFound), username: addr("nobody")?.to_string(), password: k(&valid) },
        Case { name: "inbox-disabled", outcome: Some(AuthFailure::InboxInactive), username: addr("demo-disabled")?.to_string(), password: k(&valid) },
        Case { name: "inbox-suspended", outcome: Some(AuthFailure::InboxInactive), username: addr("demo-suspended")?.to_string(), password: k(&valid) },
        Case { name: "key-of-other-owner", outcome: Some(AuthFailure::OwnerMismatch), username: demo.to_string(), password: k(&other_key) },
        Case { name: "inbox-not-covered-by-grant", outcome: Some(AuthFailure::GrantDoesNotCover), username: addr("archive")?.to_string(), password: k(&valid) },
    ];

    let outcome = |c: &Case| c.outcome.map_or_else(|| "ok".to_owned(), |f| f.to_string());
    let expect = |c: &Case| if c.outcome.is_some() { "535" } else { "235" };
    if json {
        let rows: Vec<_> = cases
            .iter()
            .map(|c| json!({ "case": c.name, "outcome": outcome(c), "username": c.username, "password": c.password, "expect": expect(c) }))
            .collect();
        println!("{}", json!({ "owners": [owner_a, owner_b], "cases": rows }));
    } else {
        println!("demo fixtures created in {} (owners {owner_a}, {owner_b})", dir.path.display());
        println!("submission AUTH outcomes (username / password → reply):");
        for c in &cases {
            println!("  {:<28} {:<20} {}\n      user {}\n      pass {}", c.name, outcome(c), expect(c), c.username, c.password);
        }
    }
    Ok(())
}
