//! The admin CLI against a real data directory, without a server running.

#![allow(clippy::unwrap_used)]

mod common;

use common::{enroll_owner, owner_config_dir, owner_json, owner_run, run, run_json};

const OWNER: &str = "0x00000000000000000000000000000000000000aa";
const AGENT: &str = "0x00000000000000000000000000000000000000bb";

fn fails_with(data: &std::path::Path, args: &[&str], needle: &str) {
    let out = run(data, args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: error must be one line, got {err:?}");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
}

#[test]
fn json_shapes_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(run_json(d, &["owner", "add", OWNER, "--email", "me@example.com"])["id"], OWNER);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER, "--name", "test bot"]);

    let named = run_json(d, &["inbox", "create", "--agent", AGENT, "--name", "Signup"]);
    assert_eq!(named["address"], "signup@agents.localhost");
    let random = run_json(d, &["inbox", "create", "--agent", AGENT]);
    let random = random["address"].as_str().unwrap();
    assert!(random.starts_with("bot-") && random.ends_with("@agents.localhost"), "{random}");

    let key = run_json(d, &["key", "create", "--agent", AGENT, "--expires-in", "15m"]);
    assert!(key["key"].as_str().unwrap().starts_with("ak_"));
    assert!(key["id"].as_str().unwrap().starts_with("key_"));
    assert!(key["expires_at"].as_str().unwrap().ends_with('Z'));

    enroll_owner(d, OWNER);
    let grant =
        owner_json(d, OWNER, &["grant", "create", "--agent", AGENT, "--inbox", "*@agents.localhost", "--scopes", "read,send"]);
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    assert!(grant_id.starts_with("gr_"));
    assert_eq!(grant["state"], "active");

    let inboxes = run_json(d, &["inbox", "list", "--owner", OWNER]);
    assert_eq!(inboxes.as_array().unwrap().len(), 2);
    let keys = run_json(d, &["key", "list", "--agent", AGENT]);
    assert_eq!(keys[0]["state"], "active");
    assert!(keys[0].get("key").is_none(), "key list must never print secrets");
    let grants = run_json(d, &["grant", "list"]);
    assert_eq!(grants[0]["inbox"], "*@agents.localhost");
    assert_eq!(grants[0]["scopes"], "read,send");

    let set = run_json(d, &["inbox", "set-status", "signup@agents.localhost", "suspended"]);
    assert_eq!(set["status"], "suspended");
    run_json(d, &["key", "revoke", key["id"].as_str().unwrap()]);
    assert_eq!(run_json(d, &["key", "list", "--agent", AGENT])[0]["state"], "revoked");
    owner_json(d, OWNER, &["grant", "revoke", &grant_id]);
    assert_eq!(run_json(d, &["grant", "list"])[0]["state"], "revoked");
    assert_eq!(run_json(d, &["queue", "list"]), serde_json::json!([]));
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails_with(d, &["owner", "add", "0x123"], "expected 0x followed by 40 hex digits");
    fails_with(d, &["owner", "add", OWNER, "--email", "nope"], "not an email address");
    run_json(d, &["owner", "add", OWNER]);
    fails_with(d, &["owner", "add", OWNER], "already exists");
    fails_with(d, &["agent", "add", AGENT, "--owner", "0x00000000000000000000000000000000000000cc"], "not found");
    fails_with(d, &["inbox", "create", "--agent", AGENT], "agent add");
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    run_json(d, &["inbox", "create", "--agent", AGENT, "--name", "dup"]);
    fails_with(d, &["inbox", "create", "--agent", AGENT, "--name", "dup"], "already exists");
    fails_with(d, &["inbox", "create", "--agent", AGENT, "--name", "bad name"], "--name");
    fails_with(d, &["inbox", "create", "--agent", AGENT, "--name", "x", "--domain", "elsewhere.test"], "not hosted");
    fails_with(d, &["key", "create", "--agent", AGENT, "--expires-in", "31d"], "over the maximum of 30d");
    fails_with(d, &["key", "create", "--agent", AGENT, "--expires-in", "soon"], "invalid duration");
    enroll_owner(d, OWNER);
    let owner_fails_with = |args: &[&str], needle: &str| {
        let out = owner_run(d, OWNER, args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: error must be one line, got {err:?}");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
    };
    owner_fails_with(&["grant", "create", "--agent", AGENT, "--inbox", "dup@agents.localhost", "--scopes", "read", "--ttl", "31d"], "over the maximum");
    owner_fails_with(&["grant", "create", "--agent", AGENT, "--inbox", "dup@agents.localhost", "--scopes", "write"], "unknown scope");
    owner_fails_with(&["grant", "create", "--agent", AGENT, "--inbox", "**", "--scopes", "read"], "inbox");
    owner_fails_with(&["grant", "revoke", "gr_0000000000000000000000"], "NOT_FOUND");
    fails_with(d, &["inbox", "set-status", "nobody@agents.localhost", "active"], "not found");
    fails_with(d, &["inbox", "set-status", "dup@agents.localhost", "paused"], "unknown inbox status");
    fails_with(d, &["key", "revoke", "key_0000000000000000"], "not found");

    // Nothing half-written: exactly the one inbox, no keys, no grants.
    assert_eq!(run_json(d, &["inbox", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(run_json(d, &["key", "list", "--agent", AGENT]), serde_json::json!([]));
    assert_eq!(run_json(d, &["grant", "list"]), serde_json::json!([]));
}

/// The operator has no way to create, change or revoke a grant: `grant add` is
/// gone, and the owner commands without the owner's key (or with a key the server
/// no longer has on file) are refused.
#[test]
fn grants_need_the_owners_signature_even_locally() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_json(d, &["owner", "add", OWNER]);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    let add = run(d, &["grant", "add", "--agent", AGENT, "--inbox", "*@agents.localhost", "--scopes", "read"]);
    assert!(!add.status.success());
    assert!(String::from_utf8_lossy(&add.stderr).contains("unrecognized subcommand"), "{}", String::from_utf8_lossy(&add.stderr));
    // No key file on this "machine".
    let empty = d.join("empty-config");
    std::fs::create_dir(&empty).unwrap();
    let out = common::agentkeys(d)
        .env("AGENTKEYS_CONFIG_DIR", &empty)
        .args(["grant", "create", "--agent", AGENT, "--inbox", "*@agents.localhost", "--scopes", "read"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner enroll"), "{}", String::from_utf8_lossy(&out.stderr));

    // The owner enrolls, then re-enrolls from another machine: the first key file
    // no longer matches the public key on file, and the local path checks it.
    enroll_owner(d, OWNER);
    let granted = owner_json(d, OWNER, &["grant", "create", "--agent", AGENT, "--inbox", "*@agents.localhost", "--scopes", "read"]);
    let code = run_json(d, &["owner", "enroll-code", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let second = d.join("second-machine");
    let out = common::agentkeys(d)
        .env("AGENTKEYS_CONFIG_DIR", &second)
        .env("AGENTKEYS_PASSPHRASE", "another passphrase")
        .args(["owner", "enroll", "--owner", OWNER, "--code", &code])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stale = owner_run(d, OWNER, &["grant", "revoke", granted["id"].as_str().unwrap()]);
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("OWNER_SIGNATURE_INVALID"), "{}", String::from_utf8_lossy(&stale.stderr));
    assert_eq!(run_json(d, &["grant", "list"])[0]["state"], "active");
    assert!(owner_config_dir(d).join(format!("owner-{OWNER}.key")).exists());
}

#[test]
fn demo_seed_covers_every_auth_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let v = run_json(dir.path(), &["demo", "seed"]);
    let cases = v["cases"].as_array().unwrap();
    let outcomes: std::collections::BTreeSet<&str> = cases.iter().map(|c| c["outcome"].as_str().unwrap()).collect();
    for expected in [
        "ok", "INVALID_USERNAME", "MALFORMED_KEY", "KEY_NOT_FOUND", "KEY_REVOKED", "KEY_EXPIRED",
        "NO_SEND_GRANT", "INBOX_NOT_FOUND", "INBOX_INACTIVE", "OWNER_MISMATCH", "GRANT_DOES_NOT_COVER",
    ] {
        assert!(outcomes.contains(expected), "missing {expected}");
    }
    // The fixture grants are the demo owners' own, signed with master keys the seed
    // enrolled and kept (sealed) in <data-dir>/demo.
    let demo = dir.path().join("demo");
    assert_eq!(v["owner_keys"].as_str().unwrap(), demo.to_str().unwrap());
    let out = common::agentkeys(dir.path())
        .env("AGENTKEYS_CONFIG_DIR", &demo)
        .args(["grant", "list", "--owner", "0x1111111111111111111111111111111111111111", "--passphrase-file"])
        .arg(demo.join("passphrase"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let grants: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(grants.as_array().unwrap().len(), 2, "{grants}");
    let records = run_json(dir.path(), &["audit", "list", "--limit", "1000"]);
    let creates: Vec<_> =
        records.as_array().unwrap().iter().filter(|r| r["operation"] == "grant.create").map(|r| r["actor"].clone()).collect();
    assert_eq!(creates.len(), 3);
    assert!(creates.iter().all(|a| a.as_str().unwrap().starts_with("owner:0x")), "{creates:?}");
    let again = run(dir.path(), &["demo", "seed"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh data directory"));
}

#[test]
fn bad_config_names_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agentkeys.toml");
    std::fs::write(&cfg, "domain = \"bad domain\"\nnope = 1\n[listen]\nhttp = \"x\"\n").unwrap();
    let out = common::agentkeys(dir.path())
        .args(["--config", cfg.to_str().unwrap(), "inbox", "list"])
        .env("AGENTKEYS_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["domain", "nope", "listen.http", "AGENTKEYS_MAX_CONNECTIONS"] {
        assert!(err.contains(key), "{key} not named in {err}");
    }
}

#[test]
fn domains_start_not_verified_and_verify_names_an_unhosted_domain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_json(d, &["domain", "add", "mail.example.org"]);
    let list = run_json(d, &["domain", "list"]);
    let rows = list.as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(row["status"], "not_started", "{list}");
        assert!(row["checked_at"].is_null(), "{list}");
    }
    let text = run(d, &["domain", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("mail.example.org\tnot_started\t"));
    fails_with(d, &["domain", "verify", "nowhere.example.org"], "not hosted here; add it with `agentkeys domain add nowhere.example.org`");
}

/// `agentkeys … | head`: a reader that went away stops the command quietly with
/// 141 (128 + SIGPIPE), no panic or backtrace on stderr, and what it did stays
/// done.
#[test]
fn a_closed_stdout_stops_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(common::BIN)
        .args(["--data-dir", d.to_str().unwrap(), "owner", "add", OWNER])
        .current_dir(d)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(run_json(d, &["owner", "list"])[0]["id"], OWNER, "the owner was added before the output failed");
}
