//! Inboxes an agent creates for itself (issue 11 §5), against the real binary:
//! the owner grants `signup-*@agents.localhost` with `read,create`; the agent
//! creates `signup-gh@…` with a short expiry (`agentkeys mail inbox-create`,
//! and the MCP tool `create_inbox` through the official SDK); swaks gets `250`
//! before the expiry and `550 5.1.1` after it; the sweeper removes the inbox
//! with its mail, audited. Creating outside the pattern, without `create`,
//! beyond the grant's expiry, or as another owner's agent is refused. Revoking
//! the grant ends the inboxes created under it (`550 5.1.1`, swept); agents
//! create only on a domain assigned to their owner (`domain assign`); the
//! owner's own `inbox create --expires-in` has the agent's limits.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agentkeys_core::time::rfc3339;
use common::*;
use serde_json::{Value, json};

const OWNER_A: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const OWNER_B: &str = "0xb2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const AGENT_A: &str = "0xa100000000000000000000000000000000000001";
const AGENT_B: &str = "0xb200000000000000000000000000000000000001";
/// The short life the agent asks for: long enough to deliver once on a busy
/// machine, short enough to wait out.
const SHORT_LIFE: &str = "10s";
/// How long the test waits for the sweeper (interval 1 s) at most.
const SWEEP_WAIT: Duration = Duration::from_secs(60);

struct Agent<'a> {
    server: &'a Server,
    key: String,
    config_dir: &'a Path,
}

impl Agent<'_> {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AGENTKEYS_SERVER".into(), format!("http://{}", self.server.http)),
            ("AGENTKEYS_AGENT_KEY".into(), self.key.clone()),
            // No agent.json from the machine running the tests.
            ("AGENTKEYS_CONFIG_DIR".into(), self.config_dir.display().to_string()),
        ]
    }

    /// `agentkeys mail …` as this agent, with `--json`.
    fn mail(&self, args: &[&str]) -> Output {
        let mut cmd = agentkeys(&self.server.data_dir);
        cmd.arg("mail").args(args).arg("--json");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn mail_json(&self, args: &[&str]) -> Value {
        let out = self.mail(args);
        assert!(out.status.success(), "mail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A refused `mail` command's stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.mail(args);
        assert!(!out.status.success(), "mail {args:?} should be refused: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// swaks delivers one message to `rcpt` through the MX; the transcript.
fn swaks(server: &Server, rcpt: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &server.inbound.port().to_string()])
        .args(["--from", "no-reply@github.example", "--to", rcpt, "--ehlo", "mx.github.example"])
        .args(["--header", "Subject: Your GitHub launch code", "--body", "Your code is 246810.", "--timeout", "30"])
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn audit_records(d: &Path, operation: &str) -> Vec<Value> {
    let records = run_json(d, &["audit", "list", "--limit", "100000"]);
    records.as_array().unwrap().iter().filter(|r| r["operation"] == operation).cloned().collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn an_agent_creates_a_signup_inbox_that_receives_until_it_expires_and_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config_dir = tempfile::tempdir().unwrap();
    enroll_owner(d, OWNER_A);
    run_json(d, &["agent", "add", AGENT_A, "--owner", OWNER_A]);
    // Agents create inboxes only on a domain the operator assigned to their owner.
    let assigned = run_json(d, &["domain", "assign", "agents.localhost", "--owner", OWNER_A]);
    assert_eq!(assigned["owner"], OWNER_A, "{assigned}");
    let key_a = run_json(d, &["key", "create", "--agent", AGENT_A])["key"].as_str().unwrap().to_owned();
    let grant = owner_json(
        d,
        OWNER_A,
        &["grant", "create", "--agent", AGENT_A, "--inbox", "signup-*@agents.localhost", "--scopes", "read,create", "--ttl", "1h"],
    );
    assert_eq!(grant["scopes"], "read,create", "{grant}");
    // A pattern the agent may read but not create under.
    owner_json(d, OWNER_A, &["grant", "create", "--agent", AGENT_A, "--inbox", "login-*@agents.localhost", "--scopes", "read"]);
    // Owner B's agent, with an inbox and a read+send grant of its own.
    let (_, _, _bee, key_b) = provision(d, OWNER_B, AGENT_B, "bee");
    // Owner B may not claim names on A's domain: the create grant is refused.
    let out = owner_run(d, OWNER_B, &["grant", "create", "--agent", AGENT_B, "--inbox", "signup-*@agents.localhost", "--scopes", "read,create"]);
    assert!(!out.status.success(), "a create grant on another owner's domain");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DOMAIN_NOT_ASSIGNED") && err.contains("domain assign"), "{err}");
    let server = Server::start(d, &[("AGENTKEYS_RETENTION_SWEEP_INTERVAL", "1s")]);
    let a = Agent { server: &server, key: key_a, config_dir: config_dir.path() };
    let b = Agent { server: &server, key: key_b, config_dir: config_dir.path() };

    // Created with a short life, within the grant.
    let created = a.mail_json(&["inbox-create", "--name", "signup-gh", "--expires-in", SHORT_LIFE]);
    let address = created["address"].as_str().unwrap().to_owned();
    assert_eq!(address, "signup-gh@agents.localhost");
    let expires_at = created["expires_at"].as_i64().unwrap();
    assert!(expires_at <= unix_now() + 10 && expires_at > unix_now(), "{created}");

    // Before its expiry it receives (swaks, the real MX) and the agent reads it.
    let transcript = swaks(&server, &address);
    assert!(transcript.contains("<-  250 2.0.0 Message accepted as"), "{transcript}");
    assert_eq!(stored_messages(&server.blobs(), OWNER_A, &address).len(), 1);
    let listed = a.mail_json(&["list", "--inbox", &address]);
    assert_eq!(listed["messages"][0]["subject"], "Your GitHub launch code", "{listed}");
    let mine = a.mail_json(&["inboxes"]);
    let entry = mine["inboxes"].as_array().unwrap().iter().find(|i| i["address"] == address.as_str()).cloned();
    assert_eq!(entry.map(|e| e["expires_at"].clone()), Some(json!(expires_at)), "{mine}");

    // Refused: outside every create pattern, a pattern without `create`,
    // longer than the grant, a name taken, and another owner's agent.
    let err = a.refused(&["inbox-create", "--name", "other-gh"]);
    assert!(err.contains("NO_GRANT"), "{err}");
    let err = a.refused(&["inbox-create", "--name", "login-gh"]);
    assert!(err.contains("NO_GRANT"), "{err}");
    let err = a.refused(&["inbox-create", "--name", "signup-late", "--expires-in", "2h"]);
    assert!(err.contains("INVALID_EXPIRY") && err.contains("after the grant"), "{err}");
    let err = a.refused(&["inbox-create", "--name", "signup-gh"]);
    assert!(err.contains("ADDRESS_TAKEN"), "{err}");
    let err = b.refused(&["inbox-create", "--name", "signup-evil", "--domain", "agents.localhost"]);
    assert!(err.contains("NO_GRANT"), "{err}");
    let listed = run_json(d, &["inbox", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    for refused in ["other-gh", "login-gh", "signup-late", "signup-evil"] {
        assert!(!names.iter().any(|n| n.starts_with(refused)), "{refused} was created: {names:?}");
    }

    // The MCP tool (official SDK over stdio): a fresh name under the pattern, and the same refusals.
    {
        let mut mcp = Mcp::stdio(&a.env());
        let made = mcp.ok("create_inbox", json!({ "expires_in_s": 600 }));
        let fresh = made["address"].as_str().unwrap();
        assert!(fresh.starts_with("signup-") && fresh.ends_with("@agents.localhost"), "{made}");
        let text = mcp.err("create_inbox", json!({ "name": "login-mcp" }));
        assert!(text.contains("NO_GRANT") && text.contains("create"), "{text}");
        let text = mcp.err("create_inbox", json!({ "name": "signup-long", "expires_in_s": 7200 }));
        assert!(text.contains("INVALID_EXPIRY"), "{text}");
    }

    // After its expiry: 550 5.1.1 at RCPT, whether or not the sweeper ran yet.
    while unix_now() <= expires_at {
        std::thread::sleep(Duration::from_millis(200));
    }
    let transcript = swaks(&server, &address);
    assert!(transcript.contains("<** 550 5.1.1"), "{transcript}");
    // The sweeper removes the inbox and its mail.
    let deadline = Instant::now() + SWEEP_WAIT;
    loop {
        let listed = run_json(d, &["inbox", "list"]);
        let present = listed.as_array().unwrap().iter().any(|i| i["address"] == address.as_str());
        if !present && stored_messages(&server.blobs(), OWNER_A, &address).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not swept in time: {listed}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = a.refused(&["list", "--inbox", &address]);
    assert!(err.contains("NO_GRANT"), "{err}");
    assert!(server.stop().success());

    // Audited: created by the agent, removed by the system with its one message, once.
    let creates = audit_records(d, "inbox.create");
    let create = creates.iter().find(|r| r["subject"] == address.as_str()).unwrap();
    assert_eq!(create["actor"], format!("agent:{AGENT_A}"));
    assert_eq!((&create["detail"]["owner"], &create["detail"]["expires_at"]), (&json!(OWNER_A), &json!(expires_at)));
    let expired: Vec<Value> =
        audit_records(d, "inbox.expire").into_iter().filter(|r| r["subject"] == address.as_str()).collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!((expired[0]["actor"].as_str(), &expired[0]["detail"]["messages"]), (Some("system"), &json!(1)));
    // The owner sees it in their own audit view.
    let mine = owner_run(d, OWNER_A, &["audit", "list"]);
    let text = String::from_utf8_lossy(&mine.stdout);
    assert!(text.lines().any(|l| l.contains("inbox.expire") && l.contains(&address)), "{text}");
    let verify = run(d, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

/// How long the test waits, at most, for the MX to stop taking mail for an
/// ended inbox (the RCPT cache keeps a found inbox for 1 s).
const END_WAIT: Duration = Duration::from_secs(20);

#[test]
fn revoking_the_grant_ends_the_inboxes_created_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config_dir = tempfile::tempdir().unwrap();
    enroll_owner(d, OWNER_A);
    run_json(d, &["agent", "add", AGENT_A, "--owner", OWNER_A]);
    run_json(d, &["domain", "assign", "agents.localhost", "--owner", OWNER_A]);
    let key_a = run_json(d, &["key", "create", "--agent", AGENT_A])["key"].as_str().unwrap().to_owned();
    let signup = ["grant", "create", "--agent", AGENT_A, "--inbox", "signup-*@agents.localhost", "--scopes", "read,create", "--ttl", "1h"];
    let grant = owner_json(d, OWNER_A, &signup);
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    // A second create grant whose inbox must outlive the first grant's revocation.
    let other = owner_json(d, OWNER_A, &["grant", "create", "--agent", AGENT_A, "--inbox", "login-*@agents.localhost", "--scopes", "read,create", "--ttl", "1h"]);
    let server = Server::start(d, &[("AGENTKEYS_RETENTION_SWEEP_INTERVAL", "1s")]);
    let a = Agent { server: &server, key: key_a, config_dir: config_dir.path() };
    let ended = a.mail_json(&["inbox-create", "--name", "signup-rv", "--expires-in", "30m"])["address"].as_str().unwrap().to_owned();
    let kept = a.mail_json(&["inbox-create", "--name", "login-rv", "--expires-in", "30m"])["address"].as_str().unwrap().to_owned();
    let created = unix_now();
    for rcpt in [&ended, &kept] {
        let transcript = swaks(&server, rcpt);
        assert!(transcript.contains("<-  250 2.0.0 Message accepted as"), "{transcript}");
    }

    // The owner revokes the signup grant (signed, in-process, while the server
    // runs), in a later second than the inboxes' creation: revoked in the same
    // second, an inbox ends one second after its creation (the store's
    // conformance test `a_grant_ended_in_its_inboxs_creation_second_ends_it_a_second_later`),
    // and this test checks the expiry at the revocation.
    while unix_now() <= created {
        std::thread::sleep(Duration::from_millis(50));
    }
    let revoked_at = unix_now();
    let out = owner_run(d, OWNER_A, &["grant", "revoke", &grant_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = run_json(d, &["inbox", "list"]);
    let expiry = |address: &str| listed.as_array().unwrap().iter().find(|i| i["address"] == address).map(|i| i["expires_at"].clone());
    // Removed already, or listed with an expiry at the revocation.
    if let Some(at) = expiry(&ended) {
        // RFC 3339 in one fixed format sorts like the times it names.
        let (lo, hi) = (rfc3339(revoked_at), rfc3339(unix_now()));
        let at = at.as_str().unwrap();
        assert!(lo.as_str() <= at && at <= hi.as_str(), "ends at the revocation: {listed}");
    }
    assert!(expiry(&kept).is_some(), "another grant's inbox stays: {listed}");

    // The MX refuses it (550 5.1.1) and the sweeper removes it with its mail;
    // the other grant's inbox still receives.
    let deadline = Instant::now() + END_WAIT;
    loop {
        let transcript = swaks(&server, &ended);
        if transcript.contains("<** 550 5.1.1") {
            break;
        }
        assert!(transcript.contains("<-  250 2.0.0"), "{transcript}");
        assert!(Instant::now() < deadline, "still receiving after the revocation: {transcript}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + SWEEP_WAIT;
    while !stored_messages(&server.blobs(), OWNER_A, &ended).is_empty()
        || run_json(d, &["inbox", "list"]).as_array().unwrap().iter().any(|i| i["address"] == ended.as_str())
    {
        assert!(Instant::now() < deadline, "not swept in time");
        std::thread::sleep(Duration::from_millis(200));
    }
    let transcript = swaks(&server, &kept);
    assert!(transcript.contains("<-  250 2.0.0 Message accepted as"), "{transcript}");
    // Shared again, the domain takes no new agent-created inboxes under any grant.
    run_json(d, &["domain", "assign", "agents.localhost", "--shared"]);
    let err = a.refused(&["inbox-create", "--name", "login-late", "--expires-in", "5m"]);
    assert!(err.contains("DOMAIN_NOT_ASSIGNED"), "{err}");
    assert!(server.stop().success());

    // Audited: the revocation, then the inbox it ended (actor the owner), then its removal.
    let ends = audit_records(d, "inbox.end_with_grant");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["subject"], grant_id.as_str());
    assert_eq!(ends[0]["actor"], format!("owner:{OWNER_A}"));
    assert_eq!((&ends[0]["detail"]["count"], &ends[0]["detail"]["inboxes"]), (&json!(1), &json!([ended])));
    let expired: Vec<Value> = audit_records(d, "inbox.expire").into_iter().filter(|r| r["subject"] == ended.as_str()).collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(other["scopes"], "read,create");
    let verify = run(d, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn the_owner_creates_an_inbox_with_an_expiry_within_the_same_limits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    enroll_owner(d, OWNER_A);
    run_json(d, &["agent", "add", AGENT_A, "--owner", OWNER_A]);
    // Beyond 30 days: the agent's error, INVALID_EXPIRY, and nothing created.
    let out = owner_run(d, OWNER_A, &["inbox", "create", "--agent", AGENT_A, "--name", "long", "--expires-in", "31d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVALID_EXPIRY") && err.contains("30 days"), "{err}");
    let out = owner_run(d, OWNER_A, &["inbox", "create", "--agent", AGENT_A, "--name", "bad", "--expires-in", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expires-in"), "names the flag");
    // Within: created with its expiry, signed and audited with it.
    let before = unix_now();
    let made = owner_json(d, OWNER_A, &["inbox", "create", "--agent", AGENT_A, "--name", "short", "--expires-in", "2h"]);
    let at = made["expires_at"].as_str().unwrap().to_owned();
    let (lo, hi) = (rfc3339(before + 7200), rfc3339(unix_now() + 7200));
    assert!(lo <= at && at <= hi, "{made}");
    let forever = owner_json(d, OWNER_A, &["inbox", "create", "--agent", AGENT_A, "--name", "forever"]);
    assert!(forever.get("expires_at").is_none(), "no expiry unless asked: {forever}");
    let listed = run_json(d, &["inbox", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert!(!names.iter().any(|n| n.starts_with("long@") || n.starts_with("bad@")), "{names:?}");
    let creates = audit_records(d, "inbox.create");
    let record = creates.iter().find(|r| r["subject"] == "short@agents.localhost").unwrap();
    assert_eq!(record["actor"], format!("owner:{OWNER_A}"));
    assert_eq!(rfc3339(record["detail"]["expires_at"].as_i64().unwrap()), at, "{record}");
    assert!(record["detail"]["approval"].is_object(), "signed by the owner: {record}");
}

/// Issue 12: the names the server sends from (`notifications@`, the owner's
/// notices; `mailer-daemon@`, bounces) and the operator's role addresses
/// (`postmaster@`, `abuse@`, `hostmaster@`) cannot be taken as inboxes, in any
/// case, by any way of creating one: an agent holding a `create` grant on
/// `*@domain` (CLI and MCP), the owner's signed `inbox create`, the operator's.
#[test]
fn reserved_names_cannot_be_created_by_agents_owners_or_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config_dir = tempfile::tempdir().unwrap();
    enroll_owner(d, OWNER_A);
    run_json(d, &["agent", "add", AGENT_A, "--owner", OWNER_A]);
    run_json(d, &["domain", "assign", "agents.localhost", "--owner", OWNER_A]);
    let key = run_json(d, &["key", "create", "--agent", AGENT_A])["key"].as_str().unwrap().to_owned();
    owner_json(d, OWNER_A, &["grant", "create", "--agent", AGENT_A, "--inbox", "*@agents.localhost", "--scopes", "read,create", "--ttl", "1h"]);
    let server = Server::start(d, &[]);
    let a = Agent { server: &server, key, config_dir: config_dir.path() };
    let mut mcp = Mcp::stdio(&a.env());
    for name in ["notifications", "Notifications", "POSTMASTER", "mailer-daemon", "Abuse", "hostmaster"] {
        let err = a.refused(&["inbox-create", "--name", name]);
        assert!(err.contains("reserved") && err.contains("pick another name"), "agent CLI {name}: {err}");
        let err = mcp.err("create_inbox", json!({"name": name}));
        assert!(err.contains("reserved"), "MCP {name}: {err}");
        let out = owner_run(d, OWNER_A, &["inbox", "create", "--agent", AGENT_A, "--name", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("reserved"), "owner {name}: {err}");
        let out = run(d, &["inbox", "create", "--agent", AGENT_A, "--name", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("reserved"), "operator {name}: {err}");
    }
    // A tagged form is no inbox name at all.
    let err = a.refused(&["inbox-create", "--name", "Notifications+x"]);
    assert!(err.contains("INVALID_REQUEST") || err.contains("name"), "{err}");
    // Names that merely contain a reserved word are ordinary.
    let made = a.mail_json(&["inbox-create", "--name", "notifications-bot"]);
    assert_eq!(made["address"], "notifications-bot@agents.localhost", "{made}");
    let listed = run_json(d, &["inbox", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(names, ["notifications-bot@agents.localhost"], "nothing reserved was created");
    // Mail to the notices' sender (or a tag of it) finds no inbox at the MX.
    for rcpt in ["notifications@agents.localhost", "Notifications+x@agents.localhost"] {
        let transcript = swaks(&server, rcpt);
        assert!(transcript.contains("<** 550 5.1.1"), "{rcpt}: {transcript}");
    }
    drop(mcp);
    assert!(server.stop().success());
}
