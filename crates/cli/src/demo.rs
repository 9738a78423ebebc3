//! `agentkeys demo seed`: a fixture set that exercises every submission AUTH outcome.
//!
//! Grants exist only with an owner's approval, so the fixture owners are enrolled
//! like real ones: the seed generates each owner's master key, redeems an
//! enrollment code with it, and creates the grants with requests signed by it
//! (through the API router in-process, [`crate::local_api`]). The keys are kept,
//! sealed with a generated passphrase, in `<data-dir>/demo/` (`owner-<id>.key`
//! and `passphrase`, mode 0600), so the demo owners can be driven afterwards:
//! `AGENTKEYS_CONFIG_DIR=<data-dir>/demo agentkeys grant list --owner <id>
//! --passphrase-file <data-dir>/demo/passphrase`.

use agentkeys_core::{Address, AgentId, AgentKey, AuthFailure, InboxStatus, MAX_GRANT_TTL_SECS, OwnerId};
use agentkeys_store::{AgentRecord, InboxRecord, OwnerRecord, StoreError};
use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::json;

use agentkeys_approval::{EncryptedKeyFile, KdfParams, MasterKey, Passphrase, SaveMode};
use agentkeys_approval::key_file::key_file_name;

use crate::admin::{agent_event, create_key, inbox_event, owner_event, revoke_key};
use crate::owner_client::{Session, Transport};
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

/// Where the demo owners' sealed master keys and their passphrase live, under the data directory.
pub(crate) const DEMO_DIR: &str = "demo";
/// The generated passphrase of the demo owners' key files.
const PASSPHRASE_FILE: &str = "passphrase";

/// Generates `owner`'s master key, enrolls it with `code` through the API, and
/// seals it under `passphrase` into `dir`; answers a session signing as `owner`.
async fn enroll_demo_owner(
    router: &axum::Router,
    dir: &std::path::Path,
    passphrase: &Passphrase,
    owner: &OwnerId,
    code: &str,
) -> Result<Session> {
    let mut rng = rand::rngs::OsRng;
    let key = MasterKey::generate(&mut rng);
    let body = json!({ "code": code, "public_key": key.public_key().to_base64() }).to_string();
    let path = format!("/v1/owners/{owner}/enroll");
    Transport::Local(router.clone()).call("POST", &path, None, Some(body.as_bytes())).await?;
    let file = EncryptedKeyFile::seal(&key, owner, passphrase, KdfParams::PRODUCTION, &mut rng)?;
    let path = dir.join(key_file_name(owner));
    file.save(&path, SaveMode::CreateNew).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(Session::with_key(Transport::Local(router.clone()), owner.clone(), key))
}

/// Creates `dir` (0700) with a generated passphrase in `passphrase_path` (0600).
fn demo_passphrase(dir: &std::path::Path, passphrase_path: &std::path::Path) -> Result<Passphrase> {
    use rand::Rng as _;
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(agentkeys_approval::key_file::CONFIG_DIR_MODE)
        .create(dir)
        .map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut rng = rand::rngs::OsRng;
    let text: String = (0..32).map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rng.gen_range(0..32)])).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(passphrase_path)
        .map_err(|e| anyhow!("cannot create {}: {e}", passphrase_path.display()))?;
    writeln!(f, "{text}")?;
    Passphrase::new(text).map_err(|e| anyhow!("{e}"))
}

fn id<T: std::str::FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| anyhow!("fixture id {s}: {e}"))
}

pub(crate) async fn run(config: &Config, cmd: DemoCmd, json: bool) -> Result<()> {
    let DemoCmd::Seed = cmd;
    let dir = DataDir::create_or_open(config).await?;
    let now = crate::now();
    let (owner_a, owner_b): (OwnerId, OwnerId) = (id(DEMO_OWNER_A)?, id(DEMO_OWNER_B)?);
    let (sender, reader, other): (AgentId, AgentId, AgentId) = (id(AGENT_SENDER)?, id(AGENT_READER)?, id(AGENT_OTHER)?);

    let router = crate::local_api::router_for(&dir, config)?;
    let demo_dir = dir.path.join(DEMO_DIR);
    let passphrase_path = demo_dir.join(PASSPHRASE_FILE);
    let mut owners = Vec::new();
    for owner in [&owner_a, &owner_b] {
        let rec = OwnerRecord { id: owner.clone(), email: None, created_at: now };
        let (code, ticket) = crate::admin::enrollment_ticket(owner);
        let mut event = owner_event(&dir, &rec);
        event.detail["enrollment_expires_at"] = json!(ticket.expires_at);
        match dir.meta.add_owner_with_enrollment(&rec, &ticket, &event).await {
            Ok(_receipt) => {}
            Err(StoreError::Conflict { .. }) => bail!(
                "demo fixtures already exist in {}; keys are shown only once, so seed a fresh data directory (--data-dir)",
                dir.path.display()
            ),
            Err(e) => return Err(e.into()),
        }
        owners.push((owner, code));
    }
    let passphrase = demo_passphrase(&demo_dir, &passphrase_path)?;
    let session_a = enroll_demo_owner(&router, &demo_dir, &passphrase, owners[0].0, &owners[0].1).await?;
    let session_b = enroll_demo_owner(&router, &demo_dir, &passphrase, owners[1].0, &owners[1].1).await?;
    let (session_a, session_b) = (&session_a, &session_b);
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
        let rec = InboxRecord { address: address.clone(), owner: (*owner).clone(), agent: (*agent).clone(), status: *status, created_at: now, expires_at: None };
        let _receipt = dir.meta.create_inbox(&rec, &inbox_event(&rec)).await?;
    }

    let expires = now + MAX_GRANT_TTL_SECS;
    // Owner-signed grants. The sender's covers demo*, not archive@ (GRANT_DOES_NOT_COVER).
    let reader_inbox = addr("reader")?.to_string();
    let other_inbox = addr("other")?.to_string();
    for (session, agent, inbox, scopes) in [
        (session_a, &sender, "demo*", vec!["read", "send"]),
        (session_a, &reader, reader_inbox.as_str(), vec!["read"]),
        (session_b, &other, other_inbox.as_str(), vec!["read", "send"]),
    ] {
        let body = json!({ "agent": agent, "inbox": inbox, "scopes": scopes }).to_string();
        session.call("POST", "/v1/grants", Some(body.as_bytes())).await?;
    }

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
        println!(
            "{}",
            json!({ "owners": [owner_a, owner_b], "owner_keys": demo_dir, "passphrase_file": passphrase_path, "cases": rows })
        );
    } else {
        println!("demo fixtures created in {} (owners {owner_a}, {owner_b})", dir.path.display());
        println!(
            "demo owners' master keys: {} (passphrase in {}); act as one with\n  AGENTKEYS_CONFIG_DIR={} agentkeys grant list --owner {owner_a} --passphrase-file {}",
            demo_dir.display(),
            passphrase_path.display(),
            demo_dir.display(),
            passphrase_path.display()
        );
        println!("submission AUTH outcomes (username / password → reply):");
        for c in &cases {
            println!("  {:<28} {:<20} {}\n      user {}\n      pass {}", c.name, outcome(c), expect(c), c.username, c.password);
        }
    }
    Ok(())
}
