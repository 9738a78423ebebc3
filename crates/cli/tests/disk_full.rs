//! A full disk: the MX answers `452 4.3.1` (never `250`), leaves no visible partial
//! file, and accepts mail again once space is back. Runs the real server on a tiny
//! tmpfs (needs root to mount, as in CI).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;

use common::{Server, all_files, provision, send_raw, stored_messages};

const OWNER: &str = "0x00000000000000000000000000000000000000e0";
const AGENT: &str = "0x00000000000000000000000000000000000000e1";

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        Command::new("umount").arg("-l").arg(&self.0).status().ok();
    }
}

#[test]
fn full_disk_answers_452_and_recovers() {
    let outer = tempfile::tempdir().unwrap();
    let mnt = outer.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI runs as root and must be able to mount a tmpfs for this test"
        );
        eprintln!("skipping: cannot mount a tmpfs here (not root)");
        return;
    }
    let _guard = Tmpfs(mnt.clone());
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
