//! Inboxes an agent creates for itself (issue 11 §5), against the real binary:
//! the owner grants `signup-*@agents.localhost` with `read,create`; the agent
//! creates `signup-gh@…` with a short expiry (`agentkeys mail inbox-create`,
//! and the MCP tool `create_inbox` through the official SDK); swaks gets `250`
//! before the expiry and `550 5.1.1` after it; the sweeper removes the inbox
//! with its mail, audited. Creating outside the pattern, without `create`,
//! beyond the grant's expiry, or as another owner's agent is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
