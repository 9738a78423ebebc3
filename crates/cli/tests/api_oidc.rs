//! The HTTP API against the real server process: an agent key provisioned with the
//! admin CLI mints an OIDC token over HTTP (curl), an independent verifier (PyJWT,
//! `tests/resources/verify_jwt.py`) checks it against the served JWKS, and the
//! mint is in the audit log, whose chain still verifies.

mod common;

use std::process::Command;

use common::{Server, provision, python, run_json};
use serde_json::{Value, json};

const ISSUER: &str = "https://mail.example.test";

/// `curl` one request; returns (status, parsed body).
fn curl(url: &str, key: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(k) = key {
        cmd.arg("-H").arg(format!("Authorization: Bearer {k}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(b.to_string());
    }
    let out = cmd.arg(url).output().expect("spawn curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn oidc_token_over_http_verifies_independently_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_owner, agent, address, key) =
        provision(d, "0x00000000000000000000000000000000000000aa", "0x00000000000000000000000000000000000000a1", "bot");
    let server = Server::start(d, &[("AGENTKEYS_PUBLIC_URL", ISSUER)]);
    let base = format!("http://{}", server.http);

    let (status, discovery) = curl(&format!("{base}/.well-known/openid-configuration"), None, None);
    assert_eq!(status, 200);
    assert_eq!(discovery["issuer"], ISSUER);
    let (status, jwks) = curl(&format!("{base}/.well-known/jwks.json"), None, None);
    assert_eq!(status, 200);

    let (status, minted) =
        curl(&format!("{base}/v1/credentials/oidc"), Some(&key), Some(&json!({ "inbox": address, "ttl": 600 })));
    assert_eq!(status, 200, "{minted}");
    assert_eq!((minted["ttl"].as_i64(), minted["clamped"].as_bool()), (Some(600), Some(false)));
    let token = minted["token"].as_str().expect("token");

    let plan = json!({ "jwks": jwks, "token": token, "issuer": ISSUER, "audience": "sts.amazonaws.com" });
    let verdict: Value = serde_json::from_str(&python("verify_jwt.py", &[plan.to_string()])).unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["claims"]["sub"], format!("agentkeys:agent:{agent}"));

    // A read capability too, and a refused key.
    let (status, cap) = curl(&format!("{base}/v1/credentials/read"), Some(&key), Some(&json!({ "inbox": address })));
    assert_eq!(status, 200, "{cap}");
    assert!(cap["token"].as_str().unwrap().starts_with("akcap1."));
    let (status, problem) = curl(
        &format!("{base}/v1/credentials/oidc"),
        Some("ak_0000000000000000000000000000000000000000000"),
        Some(&json!({ "inbox": address })),
    );
    assert_eq!((status, problem["code"].as_str()), (401, Some("INVALID_KEY")));
    let (status, doc) = curl(&format!("{base}/v1/openapi.json"), None, None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/credentials/oidc"]["post"].is_object());
    let (status, _) = curl(&format!("{base}/healthz"), None, None);
    assert_eq!(status, 200);

    let records = run_json(d, &["audit", "list"]);
    let records = records.as_array().unwrap();
    let oidc: Vec<&Value> = records.iter().filter(|r| r["operation"] == "credential.oidc").collect();
    assert_eq!(oidc.len(), 1, "{records:?}");
    assert_eq!(oidc[0]["actor"], format!("agent:{agent}"));
    assert_eq!(oidc[0]["subject"], address);
    assert_eq!(oidc[0]["detail"]["jti"], verdict["claims"]["jti"]);
    assert_eq!(oidc[0]["detail"]["ttl"], 600);
    assert_eq!(records.iter().filter(|r| r["operation"] == "credential.read").count(), 1);
    let all = serde_json::to_string(records).unwrap();
    assert!(!all.contains(token) && !all.contains(&key), "a secret leaked into the audit log");
    let verified = run_json(d, &["audit", "verify"]);
    assert_eq!(verified["ok"], true, "{verified}");

    assert!(server.stop().success());
}
