//! A full disk: the MX answers `452 4.3.1` (never `250`), leaves no visible partial
//! file, and accepts mail again once space is back; audited operations (mints,
//! HTTP send, submission AUTH) are refused with temporary errors while it is
//! full and succeed at their first retry once space is back, with `/readyz`
//! saying `not ready` and then `ready` by itself. Runs the real server on a tiny
//! tmpfs (needs root to mount, as in CI).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{curl, Server, all_files, provision, run_json, send_raw, stored_messages};
use serde_json::{Value, json};

const OWNER: &str = "0x00000000000000000000000000000000000000e0";
const AGENT: &str = "0x00000000000000000000000000000000000000e1";

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        Command::new("umount").arg("-l").arg(&self.0).status().ok();
    }
}

/// Mounts a tmpfs of `size` on a fresh directory; `None` (with a message) when
/// that is not possible here. CI runs as root and must be able to.
fn mount_tmpfs(size: &str) -> Option<(tempfile::TempDir, PathBuf, Tmpfs)> {
    let outer = tempfile::tempdir().unwrap();
    let mnt = outer.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI runs as root and must be able to mount a tmpfs for this test"
        );
        eprintln!("skipping: cannot mount a tmpfs here (not root)");
        return None;
    }
    let guard = Tmpfs(mnt.clone());
    Some((outer, mnt, guard))
}

/// Fills the file system under `dir` to the last byte; returns the filler files.
fn fill(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (n, chunk) in [64 * 1024, 4096, 512, 1].into_iter().enumerate() {
        let path = dir.join(format!("filler{n}"));
        let mut file = std::fs::File::create(&path).unwrap();
        let bytes = vec![0u8; chunk];
        while file.write_all(&bytes).is_ok() {}
        files.push(path);
    }
    files
}

#[test]
fn full_disk_answers_452_and_recovers() {
    let Some((_outer, mnt, _guard)) = mount_tmpfs("8m") else {
        return;
    };
    let data = mnt.join("data");
    let (_, _, inbox, _) = provision(&data, OWNER, AGENT, "full");
    let server = Server::start(&data, &[]);
    let body = format!("From: a@example.net\r\nSubject: big\r\n\r\n{}", "x".repeat(200 * 1024));
    assert_eq!(send_raw(server.inbound, "a@example.net", &inbox, &body).unwrap(), 250);

    // Fill the file system.
    let filler_path = mnt.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    let code = send_raw(server.inbound, "a@example.net", &inbox, &body).unwrap();
    assert_eq!(code, 452, "a full disk must answer 452 4.3.1");
    assert_eq!(stored_messages(&server.blobs(), OWNER, &inbox).len(), 1, "no partial file visible under the inbox");
    for f in all_files(&server.blobs()) {
        let rel = f.strip_prefix(server.blobs()).unwrap().to_string_lossy().into_owned();
        assert!(rel.ends_with(".eml") || rel.ends_with(".lock"), "leftover {rel}");
    }

    std::fs::remove_file(&filler_path).unwrap();
    assert_eq!(send_raw(server.inbound, "a@example.net", &inbox, &body).unwrap(), 250);
    assert_eq!(stored_messages(&server.blobs(), OWNER, &inbox).len(), 2);
    drop(server);
}

const FULL_OWNER: &str = "0x00000000000000000000000000000000000000e2";
const FULL_AGENT: &str = "0x00000000000000000000000000000000000000e3";

/// Most mints tried before SQLite must have refused one on the full disk.
const MAX_MINTS_WHILE_FULL: usize = 3000;

fn mint(server: &Server, key: &str, inbox: &str) -> (u16, String, Value) {
    let body = json!({ "inbox": inbox }).to_string();
    curl("POST", &format!("http://{}/v1/credentials/read", server.http), Some(key), Some(&body))
}

fn http_send(server: &Server, key: &str, inbox: &str, n: usize) -> (u16, String, Value) {
    let body = json!({ "to": [inbox], "subject": format!("note {n}"), "text": "hello" }).to_string();
    curl("POST", &format!("http://{}/v1/inboxes/{inbox}/send", server.http), Some(key), Some(&body))
}

fn readyz(server: &Server) -> (u16, Value) {
    let (status, headers, body) = curl("GET", &format!("http://{}/readyz", server.http), None, None);
    assert!(headers.contains("content-type: application/json"), "{headers}");
    (status, body)
}

/// Polls `/readyz` (bounded) until it answers `want`; the last body.
fn readyz_until(server: &Server, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(server);
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz never answered {want}; last {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first reply line to AUTH in a swaks transcript.
fn submission_auth(server: &Server, user: &str, pass: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &server.submission.port().to_string(), "--tls", "--auth", "PLAIN"])
        .args(["--auth-user", user, "--auth-password", pass, "--timeout", "30", "--quit-after", "AUTH"])
        .args(["--ehlo", "swaks.example.net"])
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    transcript
        .lines()
        .map(|l| l.trim_start_matches("<~*").trim_start_matches("<~").trim())
        .find(|l| ["235", "535", "454", "421"].iter().any(|c| l.starts_with(c)))
        .unwrap_or_else(|| panic!("no AUTH reply in transcript:\n{transcript}"))
        .to_owned()
}

fn check_names(body: &Value) -> Vec<String> {
    body["checks"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn full_disk_refuses_audited_work_with_temporary_errors_and_the_first_retry_after_space_returns_succeeds() {
    let Some((_outer, mnt, _guard)) = mount_tmpfs("16m") else {
        return;
    };
    let data = mnt.join("data");
    let (_, _, inbox, key) = provision(&data, FULL_OWNER, FULL_AGENT, "fill");
    let server = Server::start(&data, &[("AGENTKEYS_AUTH_FAILURES_PER_IP", "1000")]);
    let ready = readyz_until(&server, 200);
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(check_names(&ready), ["audit", "blobs", "metadata", "queue_runner"], "{ready}");
    // Liveness is not readiness: /healthz only says the process answers.
    assert!(common::http_get(server.http, "/healthz").starts_with("HTTP/1.1 200"));

    let mut acknowledged_mints = 0;
    let mut acknowledged_messages = 0;
    let mail = "From: a@example.net\r\nSubject: hello\r\n\r\nhello\r\n";
    assert_eq!(mint(&server, &key, &inbox).0, 200);
    acknowledged_mints += 1;
    assert!(submission_auth(&server, &inbox, &key).starts_with("235"));
    assert_eq!(send_raw(server.inbound, "a@example.net", &inbox, mail).unwrap(), 250);
    acknowledged_messages += 1;
    let (status, _, body) = http_send(&server, &key, &inbox, 0);
    assert_eq!(status, 202, "{body}");
    acknowledged_messages += 1;

    let fillers = fill(&mnt);

    // Readiness says so, naming the check and the reason.
    let not_ready = readyz_until(&server, 503);
    assert_eq!(not_ready["status"], "not ready", "{not_ready}");
    assert_eq!(not_ready["checks"]["blobs"]["ok"], false, "{not_ready}");
    let reason = not_ready["checks"]["blobs"]["reason"].as_str().unwrap();
    assert!(reason.contains("full"), "{reason}");
    assert!(!reason.contains(mnt.to_str().unwrap()), "no paths in the public body: {reason}");
    assert!(common::http_get(server.http, "/healthz").starts_with("HTTP/1.1 200"));

    // Mail: 452 4.3.1 on the MX, 503 problem JSON on HTTP send.
    assert_eq!(send_raw(server.inbound, "a@example.net", &inbox, mail).unwrap(), 452);
    let (status, headers, body) = http_send(&server, &key, &inbox, 1);
    assert_eq!((status, body["code"].as_str()), (503, Some("BACKEND_UNAVAILABLE")), "{body}");
    assert!(headers.contains("content-type: application/problem+json"), "{headers}");

    // Mints until SQLite refuses: every answer a token or a temporary refusal.
    let mut refused = None;
    for _ in 0..MAX_MINTS_WHILE_FULL {
        let (status, headers, body) = mint(&server, &key, &inbox);
        match status {
            200 => acknowledged_mints += 1,
            503 => {
                assert_eq!(body["code"], "AUDIT_UNAVAILABLE", "{body}");
                assert!(headers.contains("content-type: application/problem+json"), "{headers}");
                assert!(body.get("token").is_none(), "{body}");
                refused = Some(body);
                break;
            }
            other => panic!("a mint on a full disk answered {other}: {body}"),
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("{MAX_MINTS_WHILE_FULL} mints on a full disk all succeeded"));
    eprintln!("{acknowledged_mints} mints acknowledged before the refusal {refused}");
    // More refusals, on whichever pooled connections serve them.
    for _ in 0..10 {
        assert_eq!(mint(&server, &key, &inbox).0, 503);
    }
    let auth = submission_auth(&server, &inbox, &key);
    assert!(auth.starts_with("454 4.7.0"), "AUTH on a full disk: {auth}");

    // Space comes back: the FIRST retry of each succeeds, no restart.
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    let (status, _, body) = mint(&server, &key, &inbox);
    assert_eq!(status, 200, "first mint after space returned: {body}");
    acknowledged_mints += 1;
    let auth = submission_auth(&server, &inbox, &key);
    assert!(auth.starts_with("235"), "first AUTH after space returned: {auth}");
    assert_eq!(send_raw(server.inbound, "a@example.net", &inbox, mail).unwrap(), 250);
    acknowledged_messages += 1;
    let (status, _, body) = http_send(&server, &key, &inbox, 2);
    assert_eq!(status, 202, "first HTTP send after space returned: {body}");
    acknowledged_messages += 1;
    let ready = readyz_until(&server, 200);
    assert_eq!(ready["status"], "ready", "{ready}");

    // Nothing acknowledged was lost; the chain is whole.
    assert_eq!(stored_messages(&server.blobs(), FULL_OWNER, &inbox).len(), acknowledged_messages);
    let report = run_json(&data, &["audit", "verify"]);
    assert_eq!(report["ok"], true, "{report}");
    let records = run_json(&data, &["audit", "list", "--limit", "100000"]);
    let mints = records.as_array().unwrap().iter().filter(|r| r["operation"] == "credential.read").count();
    assert_eq!(mints, acknowledged_mints, "every acknowledged mint is audited, no refused one is");
    drop(server);
}
