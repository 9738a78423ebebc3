//! The owner's console over real HTTPS (issue 12): `serve` with its HTTPS
//! listener (a self-signed certificate) as the public URL; a real `agentkeys
//! agent pair --owner` over `https://` pins the certificate on first contact;
//! a real headless Chromium (Playwright, a virtual WebAuthn authenticator;
//! `tests/resources/console_https.py`) signs in over TLS and finds on the
//! approvals page and the pairing page the same certificate fingerprint as
//! the agent pinned, `serve` printed, and `openssl s_client` reads off the
//! live socket; it approves by typing the digits, and the agent collects its
//! key over the pinned connection; creating `notifications@` (or
//! `postmaster@`) for it from the console is refused as reserved. Screenshots under
//! `target/tmp/console-https/`.
//!
//! Needs `chromium` and the `playwright` Python module (`scripts/test.sh`
//! installs them).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, agentkeys, enroll_owner, owner_json, resource};
use serde_json::Value;

const OWNER: &str = "0x00000000000000000000000000000000000000c3";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The certificate fingerprint `serve` printed.
fn printed_fingerprint(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = server.stdout_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("serve printed no TLS fingerprint");
        if let Some(rest) = line.trim_start().strip_prefix("TLS fingerprint") {
            return rest.trim().strip_prefix("SHA-256 ").unwrap().to_owned();
        }
    }
}

/// The SHA-256 fingerprint of the certificate the live socket presents, by
/// `openssl s_client` and `openssl x509` (an independent TLS client).
fn socket_fingerprint(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit_once('=').unwrap_or_else(|| panic!("openssl printed {text:?}")).1.to_owned()
}

#[test]
fn the_console_over_https_shows_the_certificate_the_agent_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    enroll_owner(&d, OWNER);
    let port = free_port();
    let base = format!("https://localhost:{port}");
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&d, &[("AGENTKEYS_LISTEN_HTTPS", &listen), ("AGENTKEYS_PUBLIC_URL", &base)]);
    let fingerprint = printed_fingerprint(&server);
    assert_eq!(socket_fingerprint(port), fingerprint, "what serve printed is what the socket presents");

    // The owner's CLI over HTTPS needs the fingerprint (no CA vouches for it).
    let link = owner_json(&d, OWNER, &["owner", "passkey", "add", "--server", &base, "--server-fingerprint", &fingerprint]);
    let link = link["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("{base}/console/passkey/new#t=")), "{link}");

    // The agent pairs over HTTPS, addressed to the owner: first contact pins.
    let mut agent_pair = agentkeys(&d)
        .env("AGENTKEYS_CONFIG_DIR", dir.path().join("agent"))
        .args(["agent", "pair", "--server", &base, "--name", "https bot", "--owner", OWNER, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut agent_lines = BufReader::new(agent_pair.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&agent_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["server_fingerprint"], fingerprint.as_str(), "{first}");
    let (pair_code, digits) = (first["pair_code"].as_str().unwrap().to_owned(), first["confirmation_code"].as_str().unwrap().to_owned());
    let agent = first["agent_id"].as_str().unwrap().to_owned();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-https");
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("python3")
        .arg(resource("console_https.py"))
        .args(["--base", &base, "--link", &link, "--owner", OWNER, "--pair-code", &pair_code, "--digits", &digits])
        .args(["--fingerprint", &fingerprint, "--agent", &agent])
        .arg("--artifacts")
        .arg(&shots)
        .stdin(Stdio::null())
        .output()
        .expect("spawn python3 console_https.py (scripts/test.sh installs playwright)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser script failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(done["step"], "approved", "{done}");
    assert!(done["protocol"].as_str().unwrap().starts_with("TLS"), "{done}");
    assert_eq!(done["screenshots"].as_array().unwrap().len(), 5, "{done}");

    // The agent collected its key over the pinned connection, and keeps the pin.
    let last: Value = serde_json::from_str(&agent_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!((last["status"].as_str(), last["server_fingerprint"].as_str()), (Some("approved"), Some(fingerprint.as_str())), "{last}");
    assert!(agent_pair.wait().unwrap().success());
    let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("agent").join("agent.json")).unwrap()).unwrap();
    assert_eq!(config["server_fingerprint"], fingerprint.as_str());
    assert!(server.stop().success());
}
