//! `agentkeys audit`: admin commands leave a verifiable trail; editing the
//! database by hand is caught and named.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use agentkeys_audit::{AuditRecord, ChainHead, Outcome, SealedRecord, canonical_json, hash_to_hex};
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
    // No data directory: verify says so and creates none.
    let out = run(dir.path(), &["audit", "verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data directory"));
    assert!(!dir.path().join("meta.sqlite").exists());
    // An empty database (an empty file is one) holds an empty log, which verifies.
    std::fs::write(dir.path().join("meta.sqlite"), b"").unwrap();
    let ok = run_json(dir.path(), &["audit", "verify"]);
    assert_eq!(
        ok,
        serde_json::json!({
            "ok": true, "count": 0, "head": "0".repeat(64), "checkpoints": 0, "chained": 0, "covered": 0, "against": null
        })
    );
    assert_eq!(run_json(dir.path(), &["audit", "list"]), serde_json::json!([]));
}

fn verify_report(d: &Path) -> (Option<i32>, serde_json::Value) {
    let out = run(d, &["audit", "verify", "--json"]);
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
}

/// Checkpoints signed with the authority's key pin the chain: every local
/// command that appends records signs the head before it exits (chained:
/// counter and previous checkpoint's hash), `audit verify` checks each
/// signature and that the chain still holds the signed record, and names the
/// first bad checkpoint (forged, vouching for records cut off the end, or for a
/// record that was replaced).
#[test]
fn signed_checkpoints_catch_forgery_truncation_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_json(d, &["owner", "add", OWNER]);
    run_json(d, &["agent", "add", AGENT, "--owner", OWNER]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    let first = run_json(d, &["audit", "checkpoint"]);
    assert_eq!((first["seq"].as_u64(), &first["time"]), (Some(3), &serde_json::Value::Null), "the command signed record 3");
    run_json(d, &["key", "create", "--agent", AGENT]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    let (code, ok) = verify_report(d);
    assert_eq!(code, Some(0));
    assert_eq!((ok["checkpoints"].as_u64(), ok["chained"].as_u64(), ok["covered"].as_u64()), (Some(5), Some(5), Some(5)), "{ok}");
    let counters: Vec<String> = sqlite3_rows(d, "SELECT counter || ':' || seq FROM audit_checkpoints ORDER BY seq");
    assert_eq!(counters, ["1:1", "2:2", "3:3", "4:4", "5:5"]);
    let head3 = sqlite3_rows(d, "SELECT head_hash FROM audit_checkpoints WHERE seq = 3").remove(0);

    // A forged checkpoint: its time moved, so the signature no longer matches.
    sqlite3(d, "DROP TRIGGER audit_checkpoints_no_update; UPDATE audit_checkpoints SET ts = ts + 1 WHERE seq = 5;");
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1));
    assert_eq!(bad["checkpoint"], 5, "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("signature does not verify"), "{bad}");
    let text = run(d, &["audit", "verify"]);
    assert!(String::from_utf8_lossy(&text.stderr).contains("audit checkpoint at record 5 is bad"));
    // The first bad one is named: checkpoint 3 vouching for another hash.
    let other = if head3.starts_with('0') { "1" } else { "0" };
    sqlite3(d, &format!("UPDATE audit_checkpoints SET head_hash = '{other}' || substr(head_hash, 2) WHERE seq = 3;"));
    assert_eq!(verify_report(d).1["checkpoint"], 3);
    // Unreadable is bad too, and named.
    sqlite3(d, "UPDATE audit_checkpoints SET head_hash = 'x' || substr(head_hash, 2) WHERE seq = 3;");
    let (code, bad) = verify_report(d);
    assert_eq!((code, bad["checkpoint"].as_u64()), (Some(1), Some(3)), "{bad}");
    sqlite3(d, &format!("UPDATE audit_checkpoints SET head_hash = '{head3}' WHERE seq = 3;"));
    sqlite3(d, "UPDATE audit_checkpoints SET ts = ts - 1 WHERE seq = 5;");
    assert_eq!(verify_report(d).0, Some(0), "restored");
    // Out of sequence: two checkpoints swap places (their seqs swapped).
    let swap = "UPDATE audit_checkpoints SET seq = seq + 100 WHERE seq IN (2, 4); \
                UPDATE audit_checkpoints SET seq = 4 WHERE seq = 102; UPDATE audit_checkpoints SET seq = 2 WHERE seq = 104;";
    sqlite3(d, swap);
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1), "{bad}");
    sqlite3(d, swap);
    assert_eq!(verify_report(d).0, Some(0), "restored");
    // A checkpoint in the middle deleted: the counter skips, named.
    sqlite3(d, "CREATE TABLE saved AS SELECT * FROM audit_checkpoints WHERE seq = 2; DROP TRIGGER audit_checkpoints_no_delete; DELETE FROM audit_checkpoints WHERE seq = 2;");
    let (code, bad) = verify_report(d);
    assert_eq!((code, bad["checkpoint"].as_u64()), (Some(1), Some(3)), "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("checkpoint 2 should come next"), "{bad}");
    sqlite3(d, "INSERT INTO audit_checkpoints SELECT * FROM saved; DROP TABLE saved;");
    assert_eq!(verify_report(d).0, Some(0), "restored");

    // Records cut off the end: the chain alone still verifies, the checkpoints do not.
    sqlite3(d, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq >= 4;");
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1));
    assert_eq!(bad["checkpoint"], 4, "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("removed from the end"), "{bad}");

    // The end rewritten into a valid chain: records 4 and 5 again, but other ones.
    run_json(d, &["key", "create", "--agent", AGENT]);
    run_json(d, &["key", "create", "--agent", AGENT]);
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1));
    assert_eq!(bad["checkpoint"], 4, "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("chain was rewritten"), "{bad}");
}

fn sqlite3_rows(data: &Path, sql: &str) -> Vec<String> {
    let out = Command::new("sqlite3").arg(data.join("meta.sqlite")).arg(sql).output().expect("spawn sqlite3");
    assert!(out.status.success(), "sqlite3 {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// What an attacker with sqlite3 does after editing records: recompute every
/// hash from the first changed record on and write the rows back (dropping the
/// append-only guards first). `edit` changes the records read back.
fn rewrite_chain(d: &Path, edit: impl FnOnce(&mut Vec<AuditRecord>)) {
    let listed = run_json(d, &["audit", "list", "--limit", "100000"]);
    let mut records: Vec<AuditRecord> = serde_json::from_value(listed).unwrap();
    edit(&mut records);
    let mut head = ChainHead::GENESIS;
    let mut sql = String::from("DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete; DELETE FROM audit_log;");
    for (i, r) in records.iter().enumerate() {
        let mut sealed = SealedRecord::seal(&head, r.ts, &r.event()).unwrap().record().clone();
        sealed.seq = i as u64 + 1;
        sealed.prev_hash = head.hash;
        sealed.hash = sealed.compute_hash().unwrap();
        head = sealed.head();
        let q = |s: &str| s.replace('\'', "''");
        sql.push_str(&format!(
            "INSERT INTO audit_log (seq, ts, actor, operation, subject, outcome, detail, prev_hash, hash) VALUES ({}, {}, '{}', '{}', '{}', '{}', '{}', '{}', '{}');",
            sealed.seq,
            sealed.ts,
            q(&sealed.actor.to_string()),
            q(&sealed.operation),
            q(&sealed.subject),
            sealed.outcome,
            q(&canonical_json(&sealed.detail).unwrap()),
            hash_to_hex(&sealed.prev_hash),
            hash_to_hex(&sealed.hash),
        ));
    }
    sqlite3(d, &sql);
}

/// Waits (bounded) until the clock is `secs` past the newest record, so a
/// `--max-age` of less than that makes every uncovered record overdue. This
/// waits for a condition; nothing asserts on how long it took.
fn wait_past_newest_record(d: &Path, secs: i64) {
    let newest = run_json(d, &["audit", "list", "--limit", "100000"]).as_array().unwrap().iter().map(|r| r["ts"].as_i64().unwrap()).max().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while unix_now() < newest + secs {
        assert!(std::time::Instant::now() < deadline, "the clock did not move");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Issue 15 item 4, the attack as reported, through the real server and swaks:
/// a refused submission AUTH is rewritten as `ok`, the chain recomputed with
/// sqlite3 and the checkpoints deleted. `audit verify` used to pass ("0 signed
/// checkpoint(s) verified", exit 0); now it fails whichever way the checkpoints
/// go, and a checkpoint exported before the attack catches the rewrite however
/// fresh the records are.
#[test]
fn the_reported_attack_fails_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let export = d.join("exported-checkpoint.json");
    let seed = run_json(d, &["demo", "seed"]);
    let server = common::Server::start(d, &[("AGENTKEYS_AUTH_FAILURES_PER_IP", "1000")]);
    let case = seed["cases"].as_array().unwrap().iter().find(|c| c["expect"] != "235").unwrap();
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &server.submission.port().to_string(), "--tls", "--auth", "PLAIN"])
        .args(["--auth-user", case["username"].as_str().unwrap(), "--auth-password", case["password"].as_str().unwrap()])
        .args(["--timeout", "30", "--quit-after", "AUTH"])
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("535 5.7.8"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(server.stop().success());
    // The server signed the head when it stopped; keep a copy off the box.
    let exported = run_json(d, &["audit", "checkpoint", "--export", export.to_str().unwrap()]);
    assert_eq!(exported["time"], serde_json::Value::Null, "the server's shutdown checkpoint covers the head: {exported}");
    let ok = run_json(d, &["audit", "verify", "--against", export.to_str().unwrap()]);
    assert_eq!((ok["ok"].as_bool(), ok["covered"].as_u64()), (Some(true), ok["count"].as_u64()), "{ok}");
    let ok = run_json(d, &["audit", "verify", "--max-age", "1s"]);
    assert_eq!(ok["ok"], true, "every record is covered, so no age matters: {ok}");

    // The attack: the refused AUTH becomes a success, the chain is recomputed.
    rewrite_chain(d, |records| {
        let auth = records.iter_mut().rev().find(|r| r.operation == "submission.auth" && r.outcome == Outcome::Denied).unwrap();
        auth.outcome = Outcome::Ok;
        auth.detail = serde_json::json!({});
    });
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1), "checkpoints still in place name the rewrite: {bad}");
    assert!(bad["reason"].as_str().unwrap().contains("chain was rewritten"), "{bad}");

    // Then every checkpoint deleted: the recorded start of the chain names it.
    sqlite3(d, "DROP TRIGGER audit_checkpoints_no_delete; DELETE FROM audit_checkpoints;");
    let (code, bad) = verify_report(d);
    assert_eq!(code, Some(1), "{bad}");
    assert!(bad["reason"].as_str().unwrap().contains("checkpoints were deleted"), "{bad}");
    let text = run(d, &["audit", "verify"]);
    assert_eq!(text.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&text.stdout).contains("0 signed checkpoint(s) verified"));
    // Nothing restarts the chain over the deletion, not even on the operator's word.
    let out = run(d, &["audit", "checkpoint", "--start-over"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its checkpoints are gone"), "{}", String::from_utf8_lossy(&out.stderr));

    // And the start too: the head is then not covered by any checkpoint, which
    // verify refuses once the records are older than the allowed age.
    sqlite3(d, "DROP TRIGGER audit_checkpoint_start_no_delete; DELETE FROM audit_checkpoint_start;");
    wait_past_newest_record(d, 2);
    let out = run(d, &["audit", "verify", "--json", "--max-age", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let bad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(bad["reason"].as_str().unwrap().contains("not covered by a signed checkpoint"), "{bad}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit checkpoints do not vouch for the log"), "{}", String::from_utf8_lossy(&out.stderr));

    // The exported copy catches the rewrite whatever the age, and refuses to
    // be edited itself.
    let out = run(d, &["audit", "verify", "--json", "--against", export.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let bad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(bad["reason"].as_str().unwrap().contains("rewritten up to it"), "{bad}");
    let mut edited: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    edited["ts"] = serde_json::json!(edited["ts"].as_i64().unwrap() + 1);
    std::fs::write(&export, edited.to_string()).unwrap();
    let out = run(d, &["audit", "verify", "--json", "--against", export.to_str().unwrap()]);
    let bad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(bad["reason"].as_str().unwrap().contains("signature does not verify"), "{bad}");

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
