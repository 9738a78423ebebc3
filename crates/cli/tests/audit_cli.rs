//! `agentkeys audit`: admin commands leave a verifiable trail; editing the
//! database by hand is caught and named.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{enroll_with_code, owner_json, run, run_json};

const OWNER: &str = "0x00000000000000000000000000000000000000aa";
const AGENT: &str = "0x00000000000000000000000000000000000000bb";

fn sqlite3(data: &Path, sql: &str) {
    let out = Command::new("sqlite3").arg(data.join("meta.sqlite")).arg(sql).output().expect("spawn sqlite3");
    assert!(out.status.success(), "sqlite3 {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn admin_commands_are_audited_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let added = run_json(d, &["owner", "add", OWNER, "--email", "Human@Example.com"]);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    let inbox = run_json(d, &["inbox", "create", "--agent", AGENT, "--name", "signup"]);
    let key = run_json(d, &["key", "create", "--agent", AGENT]);
    // The owner enrolls and grants (signed with the master key); the operator cannot.
    enroll_with_code(d, OWNER, added["enrollment_code"].as_str().unwrap());
    let grant =
        owner_json(d, OWNER, &["grant", "create", "--agent", AGENT, "--inbox", "signup@agents.localhost", "--scopes", "send"]);
    run_json(d, &["inbox", "set-status", "signup@agents.localhost", "disabled"]);
    run_json(d, &["key", "revoke", key["id"].as_str().unwrap()]);
    owner_json(d, OWNER, &["grant", "revoke", grant["id"].as_str().unwrap()]);
    // A refused command leaves no record.
    assert!(!run(d, &["owner", "add", OWNER]).status.success());

    let records = run_json(d, &["audit", "list"]);
    let records = records.as_array().unwrap();
    let ops: Vec<&str> = records.iter().map(|r| r["operation"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "owner.create",
            "agent.create",
            "inbox.create",
            "key.create",
            "owner.enroll",
            "grant.create",
            "inbox.set_status",
            "key.revoke",
            "grant.revoke"
        ]
    );
    let owner_actor = format!("owner:{OWNER}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
        let by_owner = matches!(r["operation"].as_str().unwrap(), "owner.enroll" | "grant.create" | "grant.revoke");
        assert_eq!(r["actor"], if by_owner { owner_actor.as_str() } else { "operator" }, "{r}");
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
        if i > 0 {
            assert_eq!(r["prev_hash"], records[i - 1]["hash"]);
        }
    }
    assert_eq!(records[0]["prev_hash"], "0".repeat(64));
    assert_eq!(records[2]["subject"], inbox["address"]);
    assert_eq!(records[3]["subject"], key["id"]);
    // No secrets or key hashes, and the owner's own address only as a keyed hash.
    let all = serde_json::to_string(records).unwrap();
    let secret = key["key"].as_str().unwrap();
    assert!(!all.contains(secret) && !all.contains(&secret[3..]), "the key secret leaked into the audit log");
    assert!(!all.to_lowercase().contains("human@example.com"), "a third-party address leaked");
    assert_eq!(records[0]["detail"]["email_hash"].as_str().unwrap().len(), 64);
    for r in records {
        assert!(r["detail"].get("hash").is_none() && r["detail"].get("key").is_none(), "{r}");
    }

    // Paging.
    let page = run_json(d, &["audit", "list", "--after", "3", "--limit", "2"]);
    assert_eq!(page.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 5]);
    let text = run(d, &["audit", "list", "--limit", "1"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("owner.create"));

    let ok = run_json(d, &["audit", "verify"]);
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["count"], 9);
    assert_eq!(ok["head"], records[8]["hash"]);
    let text = run(d, &["audit", "verify"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("intact: 9 records"));

    // Someone with the file edits record 6 (the grant) to widen its scopes. The
    // table refuses updates, so they drop its guard first.
    sqlite3(
        d,
        "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET detail = replace(detail, '\"send\"', '\"read,send\"') WHERE seq = 6;",
    );
    let out = run(d, &["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["seq"], 6);
    assert_eq!(report["verified"], 5);
    assert!(report["reason"].as_str().unwrap().contains("hash does not match"), "{report}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit record 6 is broken"), "{err}");

    let text = run(d, &["audit", "verify"]);
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stderr).contains("audit record 6 is broken"));

    // An unreadable record further on does not hide the first break; on its own
    // it is named too.
    sqlite3(d, "UPDATE audit_log SET actor = 'nobody' WHERE seq = 8;");
    let report: serde_json::Value = serde_json::from_slice(&run(d, &["audit", "verify", "--json"]).stdout).unwrap();
    assert_eq!(report["seq"], 6);
    sqlite3(
        d,
        &format!(
            "UPDATE audit_log SET detail = '{}' WHERE seq = 6;",
            records[5]["detail"].to_string().replace('\'', "''")
        ),
    );
    let report: serde_json::Value = serde_json::from_slice(&run(d, &["audit", "verify", "--json"]).stdout).unwrap();
    assert_eq!(report["seq"], 8, "{report}");
    assert!(report["reason"].as_str().unwrap().contains("actor"), "{report}");
}

#[test]
fn deleted_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_json(d, &["owner", "add", OWNER]);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    sqlite3(d, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq = 2;");
    let out = run(d, &["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["seq"], 3);
    assert!(report["reason"].as_str().unwrap().contains("expected record 2"), "{report}");
}

#[test]
fn concurrent_cli_processes_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_json(d, &["owner", "add", OWNER]); // creates the database and seed first
    let children: Vec<_> = (0..6u8)
        .map(|n| {
            let agent = format!("0x{}", format!("{:02x}", 0xc0 + n).repeat(20));
            common::agentkeys(d).args(["agent", "add", &agent, "--owner", OWNER]).stdout(Stdio::null()).spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let ok = run_json(d, &["audit", "verify"]);
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["count"], 7);
}

#[test]
fn empty_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ok = run_json(dir.path(), &["audit", "verify"]);
    assert_eq!(ok, serde_json::json!({ "ok": true, "count": 0, "head": "0".repeat(64), "checkpoints": 0 }));
    assert_eq!(run_json(dir.path(), &["audit", "list"]), serde_json::json!([]));
}

fn verify_report(d: &Path) -> (Option<i32>, serde_json::Value) {
    let out = run(d, &["audit", "verify", "--json"]);
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
}

/// Checkpoints signed with the authority's key pin the chain: `audit verify`
/// checks each signature and that the chain still holds the signed record, and
/// names the first bad checkpoint (forged, vouching for records cut off the end,
/// or for a record that was replaced).
#[test]
fn signed_checkpoints_catch_forgery_truncation_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_json(d, &["owner", "add", OWNER]);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    let first = run_json(d, &["audit", "checkpoint"]);
    assert_eq!(first["seq"], 3);
    assert_eq!(run_json(d, &["audit", "checkpoint"])["time"], serde_json::Value::Null, "head 3 is checkpointed already");
    run_json(d, &["key", "create", "--agent", AGENT]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    assert_eq!(run_json(d, &["audit", "checkpoint"])["seq"], 5);
    let (code, ok) = verify_report(d);
    assert_eq!(code, Some(0));
    assert_eq!(ok["checkpoints"], 2);

    // A forged checkpoint: its time moved, so the signature no longer matches.
    sqlite3(d, "DROP TRIGGER audit_checkpoints_no_update; UPDATE audit_checkpoints SET ts = ts + 1 WHERE seq = 5;");
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1));
    assert_eq!(bad["checkpoint"], 5, "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("signature does not verify"), "{bad}");
    let text = run(d, &["audit", "verify"]);
    assert!(String::from_utf8_lossy(&text.stderr).contains("audit checkpoint at record 5 is bad"));
    // The first bad one is named: checkpoint 3 vouching for another hash.
    let other = if first["head"].as_str().unwrap().starts_with('0') { "1" } else { "0" };
    sqlite3(d, &format!("UPDATE audit_checkpoints SET head_hash = '{other}' || substr(head_hash, 2) WHERE seq = 3;"));
    assert_eq!(verify_report(d).1["checkpoint"], 3);
    // Unreadable is bad too, and named.
    sqlite3(d, "UPDATE audit_checkpoints SET head_hash = 'x' || substr(head_hash, 2) WHERE seq = 3;");
    let (code, bad) = verify_report(d);
    assert_eq!((code, bad["checkpoint"].as_u64()), (Some(1), Some(3)), "{bad}");
    sqlite3(d, &format!("UPDATE audit_checkpoints SET head_hash = '{}' WHERE seq = 3;", first["head"].as_str().unwrap()));
    sqlite3(d, "UPDATE audit_checkpoints SET ts = ts - 1 WHERE seq = 5;");
    assert_eq!(verify_report(d).0, Some(0), "restored");

    // Records cut off the end: the chain alone still verifies, the checkpoint does not.
    sqlite3(d, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= 4;");
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1));
    assert_eq!(bad["checkpoint"], 5, "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("removed from the end"), "{bad}");

    // The end rewritten into a valid chain: records 4 and 5 again, but other ones.
    run_json(d, &["key", "create", "--agent", AGENT]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1));
    assert_eq!(bad["checkpoint"], 5, "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("chain was rewritten"), "{bad}");
}

#[test]
fn audit_list_filters_by_agent_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const OTHER: &str = "0x00000000000000000000000000000000000000cc";
    run_json(d, &["owner", "add", OWNER]);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    run_json(d, &["agent", "add", OTHER, "--owner", OWNER]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    run_json(d, &["key", "create", "--agent", OTHER]);
    let all = run_json(d, &["audit", "list"]).as_array().unwrap().len();

    let mine = run_json(d, &["audit", "list", "--agent", AGENT]);
    let mine = mine.as_array().unwrap();
    assert!(!mine.is_empty() && mine.len() < all, "{mine:?}");
    for r in mine {
        let text = r.to_string();
        assert!(text.contains(AGENT) && !text.contains(OTHER), "{text}");
    }
    // Everything happened within the last hour; nothing in the future.
    assert_eq!(run_json(d, &["audit", "list", "--since", "1h"]).as_array().unwrap().len(), all);
    assert_eq!(run_json(d, &["audit", "list", "--agent", AGENT, "--limit", "1"]).as_array().unwrap().len(), 1);

    let bad = run(d, &["audit", "list", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("such as 15m, 2h or 7d"), "{}", String::from_utf8_lossy(&bad.stderr));
    let bad = run(d, &["audit", "list", "--agent", "bob"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("0x followed by 40 hex digits"));
}
