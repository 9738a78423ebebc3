//! The broker over HTTP against the real server process: per-address limits
//! (429 + Retry-After), owner-signed grant changes, audited refusals and the
//! fail-closed 503 when the audit log cannot be written, and the signed audit
//! checkpoint the server takes when it stops.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{curl, Server, owner_config_dir, owner_json, owner_passphrase_file, provision, run_json};
use serde_json::{Value, json};

const OWNER: &str = "0x00000000000000000000000000000000000000aa";
const OTHER_OWNER: &str = "0x00000000000000000000000000000000000000bb";
const AGENT: &str = "0x00000000000000000000000000000000000000a1";
const OTHER_AGENT: &str = "0x00000000000000000000000000000000000000b1";

fn mint(base: &str, key: &str, inbox: &str) -> (u16, String, Value) {
    curl("POST", &format!("{base}/v1/credentials/read"), Some(key), Some(&json!({ "inbox": inbox }).to_string()))
}

fn sqlite3(data: &Path, sql: &str) {
    let out = Command::new("sqlite3").arg(data.join("meta.sqlite")).arg(sql).output().expect("spawn sqlite3");
    assert!(out.status.success(), "sqlite3 {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An owner command against the running server (`--server`), as `owner`.
fn owner_http(data: &Path, base: &str, owner: &str, args: &[&str]) -> std::process::Output {
    common::agentkeys(data)
        .env("AGENTKEYS_CONFIG_DIR", owner_config_dir(data))
        .args(args)
        .args(["--server", base, "--owner", owner, "--passphrase-file"])
        .arg(owner_passphrase_file(data))
        .arg("--json")
        .output()
        .unwrap()
}

#[test]
fn refused_keys_and_pairing_opens_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, inbox, key) = provision(d, OWNER, AGENT, "bot");
    let server = Server::start(d, &[]);
    let base = format!("http://{}", server.http);
    assert_eq!(mint(&base, &key, &inbox).0, 200);
    let wrong = format!("ak_{}", "A".repeat(43));
    for n in 0..agentkeys_api::throttle::AUTH_FAILURES_PER_IP {
        assert_eq!(mint(&base, &wrong, &inbox).0, 401, "refusal {n}");
    }
    let (status, headers, body) = mint(&base, &wrong, &inbox);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED");
    assert!(headers.contains("content-type: application/problem+json"), "{headers}");
    let retry: u64 = headers.lines().find_map(|l| l.strip_prefix("retry-after: ")).unwrap().trim().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Throttled before the key is looked at: the right key gets the same 429.
    let (status, _, body) = mint(&base, &key, &inbox);
    assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMITED")));

    let open = || {
        let device = agentkeys_approval::DeviceKey::generate(&mut rand::rngs::OsRng);
        let body = json!({ "device_public_key": device.public_key().to_base64() }).to_string();
        curl("POST", &format!("{base}/v1/pairings"), None, Some(&body))
    };
    for n in 0..agentkeys_api::throttle::PAIRINGS_PER_IP {
        let (status, _, body) = open();
        assert_eq!(status, 201, "pairing {n}: {body}");
    }
    let (status, headers, body) = open();
    assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMITED")), "{body}");
    assert!(headers.contains("retry-after: "), "{headers}");
    server.stop();
}

#[test]
fn grant_changes_refusals_and_fail_closed_audit_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, inbox, key) = provision(d, OWNER, AGENT, "bot");
    provision(d, OTHER_OWNER, OTHER_AGENT, "other");
    let grant_id = run_json(d, &["grant", "list", "--agent", AGENT])[0]["id"].as_str().unwrap().to_owned();
    let server = Server::start(d, &[]);
    let base = format!("http://{}", server.http);

    // The owner narrows the grant to read and shortens it (PATCH, signed).
    let out = owner_http(d, &base, OWNER, &["grant", "change", &grant_id, "--scopes", "read", "--ttl", "2d"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((changed["scopes"].as_str(), changed["state"].as_str()), (Some("read"), Some("active")));
    assert_eq!(mint(&base, &key, &inbox).0, 200);
    // Widening is refused, whatever the owner signs; another owner sees no such grant.
    let out = owner_http(d, &base, OWNER, &["grant", "change", &grant_id, "--scopes", "read,send"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SCOPE_WIDENING"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = owner_http(d, &base, OTHER_OWNER, &["grant", "change", &grant_id, "--ttl", "1d"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = owner_http(d, &base, OWNER, &["grant", "change", &grant_id, "--ttl", "31d"]);
    assert!(!out.status.success());
    // The same through the local path (no --server): signed and checked alike.
    let local = owner_json(d, OWNER, &["grant", "change", &grant_id, "--ttl", "1d"]);
    assert_eq!(local["scopes"], "read");

    // Refusals are audited: another owner's inbox, and an unknown key.
    assert_eq!(mint(&base, &key, "other@agents.localhost").0, 403);
    let unknown = format!("ak_{}", "B".repeat(43));
    assert_eq!(mint(&base, &unknown, &inbox).0, 401);
    let records = run_json(d, &["audit", "list", "--limit", "1000"]);
    let records = records.as_array().unwrap();
    let changes: Vec<&Value> = records.iter().filter(|r| r["operation"] == "grant.change").collect();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["actor"], format!("owner:{OWNER}"));
    assert_eq!((changes[0]["detail"]["previous_scopes"].as_str(), changes[0]["detail"]["scopes"].as_str()), (Some("read,send"), Some("read")));
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r["operation"] == "credential.refused")
        .map(|r| r["detail"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["NO_GRANT", "KEY_NOT_FOUND"]);

    // The audit log cannot be written: no token, and no unrecorded refusal either.
    sqlite3(d, "CREATE TRIGGER inject_audit_failure BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'injected'); END;");
    let (status, _, body) = mint(&base, &key, &inbox);
    assert_eq!((status, body["code"].as_str()), (503, Some("AUDIT_UNAVAILABLE")), "{body}");
    assert!(body.get("token").is_none());
    let (status, _, body) = mint(&base, &unknown, &inbox);
    assert_eq!((status, body["code"].as_str()), (503, Some("AUDIT_UNAVAILABLE")), "{body}");
    sqlite3(d, "DROP TRIGGER inject_audit_failure;");
    assert_eq!(mint(&base, &key, &inbox).0, 200);

    // Stopping the server signs a checkpoint of the head; verify checks it.
    let head = run_json(d, &["audit", "verify"])["head"].as_str().unwrap().to_owned();
    assert_eq!(server.stop().code(), Some(0));
    let report = run_json(d, &["audit", "verify"]);
    assert_eq!(report["ok"], true);
    assert!(report["checkpoints"].as_u64().unwrap() >= 1, "{report}");
    let out = Command::new("sqlite3")
        .arg(d.join("meta.sqlite"))
        .arg("SELECT head_hash FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), head);
}
