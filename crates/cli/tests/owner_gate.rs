//! The owner's approval gate end to end against the real server process: the
//! operator adds an owner (enrollment code), the owner enrolls from "their own
//! machine" (a separate config directory), grants their agent access with a
//! signed request, the agent can mint, the owner revokes, the agent cannot. A
//! replayed signed request and another owner's key are refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use agentkeys_approval::{EncryptedKeyFile, Nonce, Passphrase, sign_request};
use common::{Server, agentkeys, run_json};
use serde_json::{Value, json};

const OWNER_A: &str = "0x00000000000000000000000000000000000000aa";
const OWNER_B: &str = "0x00000000000000000000000000000000000000bb";
const AGENT_A: &str = "0x00000000000000000000000000000000000000a1";
const AGENT_B: &str = "0x00000000000000000000000000000000000000b1";
const PASSPHRASE: &str = "correct horse battery staple";

/// An owner command run "on the owner's machine": its own config dir, the
/// passphrase from the environment, the server from the environment.
fn owner_cmd(data_dir: &Path, config_dir: &Path, server: &str, args: &[&str]) -> Output {
    agentkeys(data_dir)
        .env("AGENTKEYS_CONFIG_DIR", config_dir)
        .env("AGENTKEYS_PASSPHRASE", PASSPHRASE)
        .env("AGENTKEYS_SERVER", server)
        .args(args)
        .arg("--json")
        .output()
        .expect("spawn agentkeys")
}

fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `curl` one request; returns (status, parsed body).
fn curl(method: &str, url: &str, headers: &[String], body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(url).output().expect("spawn curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn mint(base: &str, key: &str, inbox: &str) -> u16 {
    let body = json!({ "inbox": inbox }).to_string();
    curl("POST", &format!("{base}/v1/credentials/read"), &[format!("Authorization: Bearer {key}")], Some(&body)).0
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn owner_enrolls_grants_and_revokes_with_signed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let (home_a, home_b) = (dir.path().join("owner-a"), dir.path().join("owner-b"));
    std::fs::create_dir(&d).unwrap();

    // Operator side.
    let added = run_json(&d, &["owner", "add", OWNER_A, "--email", "a@example.com"]);
    assert_eq!(added["id"], OWNER_A);
    let code_a = added["enrollment_code"].as_str().unwrap().to_owned();
    assert!(code_a.starts_with("enr_"), "{added}");
    let code_b = run_json(&d, &["owner", "add", OWNER_B])["enrollment_code"].as_str().unwrap().to_owned();
    run_json(&d, &["agent", "add", AGENT_A, "--owner", OWNER_A]);
    run_json(&d, &["agent", "add", AGENT_B, "--owner", OWNER_B]);
    let inbox = run_json(&d, &["inbox", "create", "--agent", AGENT_A, "--name", "bot"])["address"].as_str().unwrap().to_owned();
    let key = run_json(&d, &["key", "create", "--agent", AGENT_A]);
    let (agent_key, key_id) = (key["key"].as_str().unwrap().to_owned(), key["id"].as_str().unwrap().to_owned());
    // Text output tells the operator how the owner enrolls.
    let text = agentkeys(&d).args(["owner", "enroll-code", OWNER_A]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("agentkeys owner enroll --server"));
    let code_a2 = run_json(&d, &["owner", "enroll-code", OWNER_A])["enrollment_code"].as_str().unwrap().to_owned();

    let server = Server::start(&d, &[]);
    let base = format!("http://{}", server.http);

    // The replaced code no longer works; the new one does, once.
    let out = owner_cmd(&d, &home_a, &base, &["owner", "enroll", "--owner", OWNER_A, "--code", &code_a]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ENROLLMENT_CODE"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!home_a.join(format!("owner-{OWNER_A}.key")).exists(), "a refused enrollment leaves no key file");
    let started = std::time::Instant::now();
    let enrolled = ok_json(&owner_cmd(&d, &home_a, &base, &["owner", "enroll", "--owner", OWNER_A, "--code", &code_a2]));
    eprintln!("owner enroll took {:?}", started.elapsed());
    assert_eq!(enrolled["owner"], OWNER_A);
    // Refuses to overwrite the key file.
    let out = owner_cmd(&d, &home_a, &base, &["owner", "enroll", "--owner", OWNER_A, "--code", &code_a2]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already exists"));
    ok_json(&owner_cmd(&d, &home_b, &base, &["owner", "enroll", "--owner", OWNER_B, "--code", &code_b]));

    // No grant yet: the agent cannot mint.
    assert_eq!(mint(&base, &agent_key, &inbox), 403);
    let grant = ok_json(&owner_cmd(
        &d,
        &home_a,
        &base,
        &["grant", "create", "--agent", AGENT_A, "--inbox", &inbox, "--scopes", "read,send", "--ttl", "1d"],
    ));
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    assert!(grant_id.starts_with("gr_") && grant["expires_at"].is_string(), "{grant}");
    assert_eq!(mint(&base, &agent_key, &inbox), 200);
    let listed = ok_json(&owner_cmd(&d, &home_a, &base, &["grant", "list"]));
    assert_eq!(listed[0]["id"], grant_id.as_str());
    assert_eq!(ok_json(&owner_cmd(&d, &home_b, &base, &["grant", "list"])), json!([]));

    // Owner B's key reaches nothing of A's: 404, like a missing id.
    let out = owner_cmd(&d, &home_b, &base, &["grant", "revoke", &grant_id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("404 NOT_FOUND"), "{err}");
    let out = owner_cmd(&d, &home_b, &base, &["key", "revoke", &key_id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("404 NOT_FOUND"));
    assert_eq!(mint(&base, &agent_key, &inbox), 200);

    // A captured signed request replayed: refused.
    let file = EncryptedKeyFile::load(&home_a.join(format!("owner-{OWNER_A}.key"))).unwrap();
    let master = file.unlock(&Passphrase::new(PASSPHRASE.into()).unwrap()).unwrap();
    let nonce = Nonce::generate(&mut rand::rngs::OsRng);
    let sig = sign_request(&master, &OWNER_A.parse().unwrap(), "GET", "/v1/grants", b"", now(), &nonce).unwrap();
    let auth = vec![format!("Authorization: {}", sig.header_value())];
    assert_eq!(curl("GET", &format!("{base}/v1/grants"), &auth, None).0, 200);
    let (status, problem) = curl("GET", &format!("{base}/v1/grants"), &auth, None);
    assert_eq!((status, problem["code"].as_str()), (401, Some("REPLAYED_NONCE")));

    // The owner revokes: the agent is denied.
    ok_json(&owner_cmd(&d, &home_a, &base, &["grant", "revoke", &grant_id]));
    assert_eq!(mint(&base, &agent_key, &inbox), 403);

    // The owner's audit view: their signed changes, with the approval evidence.
    let records = ok_json(&owner_cmd(&d, &home_a, &base, &["audit", "list", "--limit", "1000"]));
    let ops: Vec<&str> = records.as_array().unwrap().iter().map(|r| r["operation"].as_str().unwrap()).collect();
    for op in ["owner.create", "owner.enroll", "grant.create", "grant.revoke", "credential.read"] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
    let created = records.as_array().unwrap().iter().find(|r| r["operation"] == "grant.create").unwrap();
    assert_eq!(created["actor"], format!("owner:{OWNER_A}"));
    assert!(created["detail"]["approval"]["nonce"].is_string());
    // The operator's full chain still verifies.
    assert_eq!(run_json(&d, &["audit", "verify"])["ok"], true);
    assert!(server.stop().success());
}
