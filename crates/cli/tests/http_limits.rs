//! The HTTP listener's limits against the real binary (issue 15, item 3): idle
//! HTTP connections cannot take the descriptors the MX needs, and clients that
//! never finish a request head are cut off by the header timeout.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, provision, stored_messages};

const OWNER: &str = "0x00000000000000000000000000000000000000c1";
const AGENT: &str = "0x00000000000000000000000000000000000000c2";

/// Longest any test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reads until the server closes (or resets) the connection; panics if it is
/// still open after [`PATIENCE`].
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                assert!(Instant::now() < deadline, "the server kept the connection open");
            }
            Err(_) => return out,
        }
    }
}

/// `GET path` on a new connection from 127.0.0.1 with curl; the status.
fn curl_status(http: SocketAddr, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{http}{path}"))
        .output()
        .expect("spawn curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Delivers one message to `rcpt` through the MX, connecting from `source`
/// (Python's smtplib, a real client); returns smtplib's final reply code.
fn deliver_from(source: &str, mx: SocketAddr, rcpt: &str) -> String {
    let script = r#"
import smtplib, sys
source, host, port, rcpt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with smtplib.SMTP(host, port, source_address=(source, 0), timeout=30) as s:
    s.ehlo("client.example.net")
    s.sendmail("sender@example.net", [rcpt], "From: sender@example.net\r\nTo: " + rcpt + "\r\nSubject: through a saturated HTTP listener\r\n\r\nhello\r\n")
    print(s.noop()[0])
"#;
    let out = Command::new("python3")
        .args(["-c", script, source, &mx.ip().to_string(), &mx.port().to_string(), rcpt])
        .output()
        .expect("spawn python3");
    assert!(out.status.success(), "smtplib failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The issue's scenario: the server under a 512-descriptor limit, 600 idle HTTP
/// connections from 127.0.0.1 (no HTTP cap of its own would stop them: the
/// configured caps are far above), then an MX session from 127.0.0.2 delivers.
/// HTTP gets its share of the descriptors and answers 503 beyond it; once the
/// idle clients leave, HTTP serves again without a restart.
#[test]
fn idle_http_connections_cannot_take_the_descriptors_of_the_mx() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, inbox, _) = provision(dir.path(), OWNER, AGENT, "saturated");
    let server = Server::start_under(
        &["prlimit", "--nofile=512:512", "--"],
        dir.path(),
        &[
            ("AGENTKEYS_HTTP_MAX_CONNECTIONS", "100000"),
            ("AGENTKEYS_HTTP_MAX_CONNECTIONS_PER_IP", "100000"),
            // The idle clients must outlive the test, not be timed out.
            ("AGENTKEYS_HTTP_HEADER_TIMEOUT", "10m"),
            ("AGENTKEYS_HTTP_IDLE_TIMEOUT", "10m"),
            ("AGENTKEYS_HTTP_CONNECTION_LIFETIME", "1h"),
        ],
    );
    let caps = server.stdout_lines.recv_timeout(PATIENCE).unwrap();
    assert!(caps.trim_start().starts_with("connections"), "{caps}");
    assert!(caps.contains("512 file descriptors"), "{caps}");

    let mut idle = Vec::new();
    for _ in 0..600 {
        match TcpStream::connect(server.http) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Some were refused with a 503 (beyond HTTP's share); the rest are held open.
    let mut refused = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 503")) {
            refused += 1;
        }
    }
    assert!(refused > 0, "every one of 600 connections was taken under a 512-descriptor limit");

    let code = deliver_from("127.0.0.2", server.inbound, &inbox);
    assert_eq!(code, "250");
    let stored = stored_messages(&server.blobs(), OWNER, &inbox);
    assert_eq!(stored.len(), 1);
    let text = std::fs::read_to_string(&stored[0]).unwrap();
    assert!(text.contains("127.0.0.2"), "the Received: line names the MX client: {text}");
    // A new HTTP client while saturated: refused, not hung.
    assert_eq!(curl_status(server.http, "/healthz"), 503);

    drop(idle);
    let deadline = Instant::now() + PATIENCE;
    while curl_status(server.http, "/healthz") != 200 {
        assert!(Instant::now() < deadline, "HTTP did not recover after the idle clients left");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.stop().success());
}

/// A client that connects and says nothing, and one that sends its request head
/// one byte a second, are both closed by the header timeout (2 s here), and the
/// server goes on serving.
#[test]
fn silent_and_slowloris_clients_are_closed_by_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AGENTKEYS_HTTP_HEADER_TIMEOUT", "2s")]);
    let mut silent = TcpStream::connect(server.http).unwrap();
    let mut slow = TcpStream::connect(server.http).unwrap();
    let slow_writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut writer = slow_writer;
        let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        // Never finishes: the head goes on one byte a second, at most a minute.
        for byte in head.iter().chain(std::iter::repeat(&b'a')).take(60) {
            if writer.write_all(&[*byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    });
    read_to_close(&mut silent);
    read_to_close(&mut slow);
    let _ = trickle.join();
    assert_eq!(curl_status(server.http, "/healthz"), 200);
    assert!(server.stop().success());
}
