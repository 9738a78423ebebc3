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
