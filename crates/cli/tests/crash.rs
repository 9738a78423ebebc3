//! Durability: SIGKILL the server while clients are sending. After a restart every
//! message that got `250` is stored exactly once and no partial file is visible.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, all_files, provision, send_raw};

const OWNER: &str = "0x00000000000000000000000000000000000000c0";
const AGENT: &str = "0x00000000000000000000000000000000000000c1";
/// Client threads sending concurrently.
const CLIENTS: usize = 8;
/// Upper bound on messages per client (the kill comes long before).
const MAX_PER_CLIENT: usize = 2_000;

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, inbox, _) = provision(dir.path(), OWNER, AGENT, "crash");
    let server = Server::start(dir.path(), &[]);
    let addr = server.inbound;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in 0..CLIENTS {
        let (acked, stop, inbox) = (acked.clone(), stop.clone(), inbox.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..MAX_PER_CLIENT {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let token = format!("msg-{c}-{i}");
                // ~8 KB body so writes are in flight when the kill lands.
                let body = format!(
                    "From: load@example.net\r\nSubject: {token}\r\n\r\n{}\r\nEND-{token}",
                    "0123456789abcdef".repeat(512)
                );
                if let Ok(250) = send_raw(addr, "load@example.net", &inbox, &body) {
                    acked.lock().unwrap().push(token);
                }
            }
        }));
    }
    // Let traffic build up, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 100, "too few messages acknowledged before the kill: {}", acked.len());

    // Restart: the staging area is swept, every acknowledged message is there once.
    let server = Server::start(dir.path(), &[]);
    let blobs = server.blobs();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for file in all_files(&blobs) {
        let rel = file.strip_prefix(&blobs).unwrap().to_string_lossy().into_owned();
        if rel.starts_with(".tmp/") {
            // The staging area is not visible under any key; staged message data
            // from the killed process must be gone after the restart.
            // Only the new instance's lock file may be there.
            assert!(rel.ends_with(".lock"), "stale staging file after restart: {rel}");
            continue;
        }
        assert!(rel.starts_with(&format!("{OWNER}/{inbox}/")) && rel.ends_with(".eml"), "unexpected file {rel}");
        let text = std::fs::read_to_string(&file).unwrap();
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("{rel} has no Subject"))
            .to_owned();
        assert!(text.trim_end().ends_with(&format!("END-{token}")), "partial file visible: {rel}");
        *counts.entry(token).or_default() += 1;
    }
    for token in &acked {
        assert_eq!(counts.get(token), Some(&1), "{token} acknowledged with 250 but stored {:?} times", counts.get(token));
    }
    assert!(counts.values().all(|&n| n == 1), "duplicates stored");
    drop(server);
}

/// Issue 10: exactly-once inbound across a crash in the one window that used
/// to store a message twice. The server dies (a real abort, by the
/// `AGENTKEYS_TEST_CRASH_BEFORE_INDEX` fault hook) after the message's blob is
/// durable and before its index commit, so the sender gets no `250` and sends
/// again to the restarted server. Afterwards the inbox lists the message
/// exactly once: the unacknowledged blob is not indexed by the restart (the
/// index commit is the acknowledgement). `blobs` counts the stored copies.
fn a_crash_before_the_index_commit_leaves_one_copy(d: &std::path::Path, env: &[(&str, &str)], blobs: &dyn Fn() -> usize) {
    let (_, _, inbox, key) = provision(d, OWNER, AGENT, "once");
    let body = "From: once@example.net\r\nSubject: exactly once\r\nX-Crash-Token: once-1\r\n\r\nhello\r\n";
    let mut with_fault = env.to_vec();
    with_fault.push(("AGENTKEYS_TEST_CRASH_BEFORE_INDEX", "1"));
    let mut crashing = Server::start(d, &with_fault);
    let first = send_raw(crashing.inbound, "once@example.net", &inbox, body);
    assert!(first.is_err(), "the fault hook must cut the session before the 250: {first:?}");
    let status = common::wait_timeout(&mut crashing.child, Duration::from_secs(30)).expect("the server died");
    assert!(!status.success(), "the server crashed: {status:?}");
    crashing.kill();
    assert_eq!(blobs(), 1, "the crashed write left its (unacknowledged) blob");

    // The sender retries at the restarted server, as an MTA does.
    let server = Server::start(d, env);
    assert_eq!(send_raw(server.inbound, "once@example.net", &inbox, body).unwrap(), 250);
    let base = format!("http://{}", server.http);
    let (status, _, cap) = common::curl("POST", &format!("{base}/v1/credentials/read"), Some(&key), Some(&format!("{{\"inbox\":\"{inbox}\"}}")));
    assert_eq!(status, 200, "{cap}");
    let token = cap["token"].as_str().unwrap();
    let (status, _, page) = common::curl("GET", &format!("{base}/v1/inboxes/{inbox}/messages?limit=100"), Some(token), None);
    assert_eq!(status, 200, "{page}");
    let listed = page["messages"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "the retried message is listed exactly once: {page}");
    let stored = blobs();
    assert!(stored <= 2, "at most the acknowledged copy and the crashed one: {stored}");
    server.stop();
}

#[test]
fn sqlite_files_a_crash_before_the_index_commit_leaves_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let count = || {
        let blobs = d.join("blobs");
        all_files(&blobs).iter().filter(|f| f.extension().is_some_and(|e| e == "eml")).count()
    };
    a_crash_before_the_index_commit_leaves_one_copy(dir.path(), &[], &count);
}

#[test]
fn postgres_s3_a_crash_before_the_index_commit_leaves_one_copy() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime
        .block_on(agentkeys_store::postgres::TempDatabase::create())
        .expect("a PostgreSQL for tests (AGENTKEYS_TEST_DATABASE_URL)");
    drop(runtime);
    let s3 = common::S3sFs::start("mail", 19880..=19899);
    let dir = tempfile::tempdir().unwrap();
    let mut shared: Vec<(String, String)> = s3.serve_env("ak").into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    shared.push(("AGENTKEYS_DATABASE_URL".to_owned(), db.url().to_owned()));
    common::share_deployment(dir.path(), &shared);
    let objects = s3.root.join(&s3.bucket).join("ak");
    let count = || all_files(&objects).iter().filter(|f| f.extension().is_some_and(|e| e == "eml")).count();
    a_crash_before_the_index_commit_leaves_one_copy(dir.path(), &[], &count);
}
