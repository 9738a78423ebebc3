//! The console's email fallback gate (issue 12) in a real headless Chromium
//! (Debian's `chromium`, Playwright) against the real server, with the code
//! mails delivered by the server's own outbound path to a receiving test MTA
//! (aiosmtpd, tests/resources/smtp_sink.py) and their DKIM signatures checked
//! by dkimpy. The checks of the browser side are in
//! `tests/resources/console_email_gate.py`; screenshots are kept under
//! `target/tmp/console-email-gate/`. Here: the actions done with a mailed code
//! are audited with `gate: email_code`, and every code mail is signed.
//!
//! Needs `chromium`, the `playwright` Python module, aiosmtpd and dkimpy:
//! `scripts/test.sh` installs them.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Server, dkim_dns, enroll_owner, owner_json, resource, run_json};
use serde_json::Value;

const OWNER: &str = "0x00000000000000000000000000000000000000e1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn email_codes_and_links_approve_once_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    run_json(&d, &["owner", "add", OWNER, "--email", "owner@example.net"]);
    enroll_owner(&d, OWNER);
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let mut sink = Command::new("python3")
        .arg(resource("smtp_sink.py"))
        .arg(&sink_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3 smtp_sink.py (run scripts/test.sh, which installs aiosmtpd)");
    let mut line = String::new();
    BufReader::new(sink.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let smarthost = format!("127.0.0.1:{}", line.trim());

    let port = free_port();
    let base = format!("http://localhost:{port}");
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(
        &d,
        &[
            ("AGENTKEYS_LISTEN_HTTP", &listen),
            ("AGENTKEYS_PUBLIC_URL", &base),
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_SMARTHOST", &smarthost),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
        ],
    );
    let link = owner_json(&d, OWNER, &["owner", "passkey", "add", "--server", &base]);
    let link = link["url"].as_str().unwrap().to_owned();
    let agent = run_json(&d, &["agent", "add", "--owner", OWNER])["id"].as_str().unwrap().to_owned();
    let key1 = run_json(&d, &["key", "create", "--agent", &agent])["id"].as_str().unwrap().to_owned();
    let key2 = run_json(&d, &["key", "create", "--agent", &agent])["id"].as_str().unwrap().to_owned();
    let inbox = run_json(&d, &["inbox", "create", "--agent", &agent, "--name", "ci"])["address"].as_str().unwrap().to_owned();
    let grant = owner_json(&d, OWNER, &["grant", "create", "--agent", &agent, "--inbox", &inbox, "--scopes", "read"]);
    let grant = grant["id"].as_str().unwrap().to_owned();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-email-gate");
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("python3")
        .arg(resource("console_email_gate.py"))
        .args(["--base", &base, "--link", &link, "--owner", OWNER, "--agent", &agent, "--grant", &grant])
        .args(["--key1", &key1, "--key2", &key2])
        .arg("--sink")
        .arg(&sink_dir)
        .arg("--db")
        .arg(d.join("meta.sqlite"))
        .arg("--artifacts")
        .arg(&shots)
        .stderr(Stdio::inherit())
        .output()
        .expect("spawn python3 (Playwright)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser script failed: {stdout}");
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(done["step"], "done");
    assert_eq!(done["codes"], 10);

    // The actions the mailed codes approved, audited with that gate.
    let records = run_json(&d, &["audit", "list", "--limit", "100000"]);
    let gate_of = |op: &str| -> Vec<String> {
        records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["operation"] == op)
            .map(|r| r["detail"]["approval"]["gate"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(gate_of("key.revoke"), ["email_code"]);
    assert_eq!(gate_of("grant.revoke"), ["email_code"]);
    assert_eq!(gate_of("grant.create"), ["master_key"]);
    let asked = records.as_array().unwrap().iter().filter(|r| r["operation"] == "owner.email_code").count();
    assert_eq!(asked, 10, "every code mailed is on the record");
    let links = records.as_array().unwrap().iter().filter(|r| r["operation"] == "owner.email_link").count();
    assert_eq!(links, 1, "the one link pressed");
    assert_eq!(run_json(&d, &["audit", "verify"])["ok"], true);

    // Every code mail arrived DKIM-signed by the server (both signatures verify).
    let mails: Vec<String> = std::fs::read_dir(&sink_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(mails.len(), 10, "one mail per code");
    let plan = serde_json::json!({ "dns": dkim_dns(&d, "agents.localhost"), "messages": mails });
    let plan_path = dir.path().join("dkim-plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let verified = Command::new("python3").arg(resource("verify_dkim.py")).arg(&plan_path).output().unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && report.lines().count() == 10, "dkimpy: {report}");
    assert!(server.stop().success());
    sink.kill().ok();
    sink.wait().ok();
}

