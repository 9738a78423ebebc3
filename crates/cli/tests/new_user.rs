//! The stumbles a new user met (issue 11 §4), each through the real binary:
//! commands that would create a stray data directory, errors that do not say
//! what to do, a one-letter passphrase, ids the operator had to invent, a
//! refused AUTH whose reason the owner could not see, a short message id.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{Server, agentkeys, owner_json, owner_run, provision, run, run_json};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Read-only and owner commands in a directory without a data directory fail
/// with the fix, and leave nothing behind (no `agentkeys-data`, no master seed).
#[test]
fn no_command_but_serve_and_the_operators_first_ones_creates_a_data_dir() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("agentkeys-data");
    for args in [
        &["grant", "list"][..],
        &["inbox", "list"],
        &["agent", "list"],
        &["owner", "list"],
        &["audit", "verify"],
        &["audit", "list"],
        &["queue", "list"],
        &["domain", "list"],
        &["key", "list", "--agent", "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"],
        &["agent", "add", "--owner", "0x1111111111111111111111111111111111111111"],
    ] {
        let out = run(&data, args);
        assert!(!out.status.success(), "{args:?} succeeded without a data directory");
        let err = stderr(&out);
        assert!(err.contains("no data directory at") && err.contains("--data-dir") && err.contains("agentkeys serve"), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
    // The operator's first command does create it.
    let out = run(&data, &["owner", "add", "0x1111111111111111111111111111111111111111"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(data.join("master.seed").exists());
}

/// `owner enroll` with nothing on standard input names the non-interactive
/// sources; a weak new passphrase is refused before anything is written.
#[test]
fn enroll_says_where_the_passphrase_comes_from_and_refuses_weak_ones() {
    let dir = tempfile::tempdir().unwrap();
    let owner = "0x1111111111111111111111111111111111111111";
    let added = run_json(dir.path(), &["owner", "add", owner]);
    let code = added["enrollment_code"].as_str().unwrap();
    let home = dir.path().join("owner-home");

    let mut child = agentkeys(dir.path())
        .env("AGENTKEYS_CONFIG_DIR", &home)
        .args(["owner", "enroll", "--owner", owner, "--code", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--passphrase-file") && err.contains("AGENTKEYS_PASSPHRASE"), "{err}");

    for weak in ["a", "password", "aaaaaaaaaaaaaaaa", "abababababababab"] {
        let out = agentkeys(dir.path())
            .env("AGENTKEYS_CONFIG_DIR", &home)
            .env("AGENTKEYS_PASSPHRASE", weak)
            .args(["owner", "enroll", "--owner", owner, "--code", code])
            .output()
            .unwrap();
        assert!(!out.status.success(), "passphrase {weak:?} was accepted");
        assert!(stderr(&out).contains("too weak"), "{}", stderr(&out));
        assert!(!home.join(format!("owner-{owner}.key")).exists(), "a key was sealed under {weak:?}");
    }
    // The code was not used up by the refusals: a good passphrase enrolls.
    let out = agentkeys(dir.path())
        .env("AGENTKEYS_CONFIG_DIR", &home)
        .env("AGENTKEYS_PASSPHRASE", "correct horse battery staple")
        .args(["owner", "enroll", "--owner", owner, "--code", code])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A server that is not running: the error names the URL and what to check.
#[test]
fn an_unreachable_server_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let out = agentkeys(dir.path())
        .env("AGENTKEYS_CONFIG_DIR", dir.path().join("home"))
        .env("AGENTKEYS_PASSPHRASE", "correct horse battery staple")
        .args(["owner", "enroll", "--server", &url, "--owner", "0x1111111111111111111111111111111111111111"])
        .args(["--code", "enr_0000000000000000000000000a"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&url) && err.to_lowercase().contains("connection refused") && err.contains("agentkeys serve"), "{err}");
    assert!(!err.contains("io: Connection refused"), "{err}");
}

/// `owner add` tells the owner the server's configured URL, not a placeholder.
#[test]
fn owner_add_prints_the_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentkeys(dir.path())
        .env("AGENTKEYS_PUBLIC_URL", "https://mail.example.com")
        .args(["owner", "add", "0x1111111111111111111111111111111111111111"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--server https://mail.example.com "), "{text}");
    assert!(!text.contains("<this server"), "{text}");
}

/// `agent add` without an id makes one; lists show the name next to the id.
#[test]
fn agent_ids_are_generated_and_names_listed() {
    let dir = tempfile::tempdir().unwrap();
    let owner = "0x1111111111111111111111111111111111111111";
    run_json(dir.path(), &["owner", "add", owner]);
    let mut ids = Vec::new();
    for name in ["signup-bot", "news-bot"] {
        let v = run_json(dir.path(), &["agent", "add", "--owner", owner, "--name", name]);
        let id = v["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("0x") && id.len() == 42, "{id}");
        assert_eq!(v["name"], name);
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    run_json(dir.path(), &["inbox", "create", "--agent", &ids[0], "--name", "hello"]);
    let out = run(dir.path(), &["inbox", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("agent {} (signup-bot)", ids[0])), "{text}");
    let listed = run_json(dir.path(), &["inbox", "list"]);
    assert_eq!(listed[0]["agent_name"], "signup-bot");
}

/// The SMTP reply to a refused AUTH is uniform; the owner's audit list says why.
#[test]
fn the_owner_sees_why_an_agents_auth_was_refused() {
    let dir = tempfile::tempdir().unwrap();
    let owner = "0x1111111111111111111111111111111111111111";
    let (_, _, address, key) = provision(dir.path(), owner, "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", "hello");
    let keys = run_json(dir.path(), &["key", "list", "--agent", "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"]);
    let key_id = keys[0]["id"].as_str().unwrap();
    owner_json(dir.path(), owner, &["key", "revoke", key_id]);
    let server = Server::start(dir.path(), &[]);
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &server.submission.port().to_string(), "--tls", "--auth", "PLAIN"])
        .args(["--auth-user", &address, "--auth-password", &key, "--quit-after", "AUTH", "--timeout", "30"])
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(transcript.contains("535 5.7.8 Authentication credentials invalid"), "{transcript}");
    drop(server);
    let out = owner_run(dir.path(), owner, &["audit", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("submission.auth")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("denied") && line.contains("reason KEY_REVOKED"), "{line}");
}

/// A reply to the agent's note to itself says so; a unique prefix of a
/// message id is enough for `mail show`.
#[test]
fn short_ids_and_notes_to_self() {
    let dir = tempfile::tempdir().unwrap();
    let owner = "0x1111111111111111111111111111111111111111";
    let (_, _, address, key) = provision(dir.path(), owner, "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", "hello");
    let server = Server::start(dir.path(), &[]);
    let base = format!("http://{}", server.http);
    let mail = |args: &[&str]| {
        agentkeys(dir.path())
            .env("AGENTKEYS_SERVER", &base)
            .env("AGENTKEYS_AGENT_KEY", &key)
            .env("AGENTKEYS_SEND_VIA", "http")
            .env("AGENTKEYS_CONFIG_DIR", dir.path().join("agent-home"))
            .args(["mail"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = mail(&["send", "--to", &address, "--subject", "note to self", "--text", "remember"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut id = String::new();
    for _ in 0..100 {
        let out = mail(&["list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(m) = v["messages"].as_array().and_then(|m| m.first()) {
            id = m["message_id"].as_str().unwrap().to_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!id.is_empty(), "the note never arrived");

    let out = mail(&["show", &id[..10].to_ascii_lowercase()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("note to self"));
    let out = mail(&["show", "7ZZZZZZZ"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no message in"), "{}", stderr(&out));

    let out = mail(&["reply", &id, "--text", "again"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("went only to it") && err.contains("mail send --to"), "{err}");
    assert!(!err.contains("no From:"), "{err}");
    let _ = std::io::stderr().flush();
}

/// An owner on another machine (their own config directory, `--server`) lists
/// their agents with keys and their inboxes, and creates an inbox for their
/// agent without the operator; another owner's agent is "not found".
#[test]
fn an_owner_manages_inboxes_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = ("0x1111111111111111111111111111111111111111", "0x2222222222222222222222222222222222222222");
    let alice_agent = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
    provision(dir.path(), alice, alice_agent, "hello");
    provision(dir.path(), bob, "0xb2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2", "other");
    let server = Server::start(dir.path(), &[]);
    let url = format!("http://{}", server.http);
    let as_owner = |owner: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &url]);
        owner_run(dir.path(), owner, &all)
    };

    let out = as_owner(alice, &["agent", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents}");
    assert_eq!(agents[0]["id"], alice_agent);
    assert_eq!(agents[0]["keys"][0]["state"], "active");
    assert!(!agents.to_string().contains("ak_"), "a key secret is listed");

    let out = as_owner(alice, &["inbox", "create", "--agent", alice_agent, "--name", "signup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["address"], "signup@agents.localhost");

    // Bob cannot give Alice's agent an inbox, and learns nothing from trying.
    let out = as_owner(bob, &["inbox", "create", "--agent", alice_agent, "--name", "sneaky"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404 NOT_FOUND"), "{}", stderr(&out));
    // A taken address is a conflict, a foreign domain a field error.
    let out = as_owner(alice, &["inbox", "create", "--agent", alice_agent, "--name", "other"]);
    assert!(stderr(&out).contains("409 ADDRESS_TAKEN"), "{}", stderr(&out));
    let out = as_owner(alice, &["inbox", "create", "--agent", alice_agent, "--name", "x", "--domain", "example.com"]);
    assert!(stderr(&out).contains("400") && stderr(&out).contains("not a domain this server hosts"), "{}", stderr(&out));

    // A grant for an exact address that does not exist: 404, nothing granted.
    let out = as_owner(alice, &["grant", "create", "--agent", alice_agent, "--inbox", "ghost@agents.localhost", "--scopes", "read"]);
    assert!(!out.status.success() && stderr(&out).contains("404 NOT_FOUND"), "{}", stderr(&out));
    let out = as_owner(alice, &["grant", "list", "--json"]);
    let grants = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !grants.contains("ghost@"), "{grants}");

    let out = as_owner(alice, &["inbox", "list", "--json"]);
    let inboxes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let addresses: Vec<&str> = inboxes.as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(addresses.len(), 2, "{inboxes}");
    assert!(addresses.contains(&"signup@agents.localhost") && addresses.contains(&"hello@agents.localhost"));

    // The new inbox receives mail at once, and the creation is audited as Alice's.
    assert_eq!(common::send_raw(server.inbound, "a@example.net", "signup@agents.localhost", "Subject: hi\r\n\r\nhi\r\n").unwrap(), 250);
    let records = run_json(dir.path(), &["audit", "list", "--limit", "1000"]);
    assert!(
        records.as_array().unwrap().iter().any(|r| r["operation"] == "inbox.create"
            && r["subject"] == "signup@agents.localhost"
            && r["actor"].as_str().unwrap_or("").contains(alice)),
        "{records}"
    );
}
