//! Start-up and shutdown of the real server process.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{Server, provision, stored_messages};

const OWNER: &str = "0x00000000000000000000000000000000000000d0";
const AGENT: &str = "0x00000000000000000000000000000000000000d1";

fn reply(reader: &mut BufReader<std::net::TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn healthz_metrics_and_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(dir.path().join("tls/cert.pem").exists());
    assert!(dir.path().join("master.seed").exists());
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(server.http).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    // One SMTP connection, so the counters exist.
    let s = std::net::TcpStream::connect(server.inbound).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert!(reply(&mut r).starts_with("220 "));
    (&s).write_all(b"QUIT\r\n").unwrap();
    assert!(reply(&mut r).starts_with("221 "));
    let metrics = get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200") && metrics.contains("agentkeys_smtp_connections_total"), "{metrics}");
}

#[test]
fn sigterm_lets_an_in_flight_message_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, inbox, _) = provision(dir.path(), OWNER, AGENT, "inflight");
    let server = Server::start(dir.path(), &[]);
    let s = std::net::TcpStream::connect(server.inbound).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    reply(&mut r);
    w.write_all(format!("EHLO c.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<{inbox}>\r\nDATA\r\n").as_bytes()).unwrap();
    for _ in 0..4 {
        reply(&mut r);
    }
    w.write_all(b"Subject: in flight\r\n\r\nfirst half\r\n").unwrap();
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused once shutdown began.
    assert!(std::net::TcpStream::connect(server.inbound).is_err(), "listener still accepting after SIGTERM");
    w.write_all(b"second half\r\n.\r\n").unwrap();
    let done = reply(&mut r);
    assert!(done.starts_with("250 "), "in-flight message must complete: {done:?}");
    w.write_all(b"QUIT\r\n").ok();
    let blobs = server.blobs();
    let status = server.stop();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(stored_messages(&blobs, OWNER, &inbox).len(), 1);
}

/// `/readyz`: (status code, JSON body).
fn readyz(server: &Server) -> (u16, serde_json::Value) {
    let text = common::http_get(server.http, "/readyz");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), serde_json::from_str(body).unwrap())
}

/// Polls `/readyz` (bounded) until it answers `want`; the body.
fn readyz_until(server: &Server, want: u16) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(server);
        if status == want {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "/readyz never answered {want}; last {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn readyz_reports_every_check_and_a_held_write_lock_until_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("AGENTKEYS_DELIVERY_ENABLED", "true")]);
    let ready = readyz_until(&server, 200);
    assert_eq!(ready["status"], "ready");
    for check in ["metadata", "audit", "blobs", "queue_runner"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    assert!(ready["checks"]["queue_runner"].get("detail").is_none(), "delivery is on: {ready}");

    // Another process (an operator's sqlite3) holds the database's write lock.
    let mut sqlite3 = std::process::Command::new("sqlite3")
        .arg(dir.path().join("meta.sqlite"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sqlite3 is installed");
    let mut stdin = sqlite3.stdin.take().unwrap();
    // `.timeout`: under load the server may be mid-write; without a busy timeout
    // sqlite3 would fail BEGIN and run the UPDATE on its own, holding nothing.
    stdin.write_all(b".timeout 10000\nBEGIN IMMEDIATE;\nUPDATE domains SET retention = retention;\n").unwrap();
    stdin.flush().unwrap();
    let held = readyz_until(&server, 503);
    assert_eq!(held["status"], "not ready", "{held}");
    for check in ["metadata", "audit"] {
        assert_eq!(held["checks"][check]["ok"], false, "{check}: {held}");
        assert!(held["checks"][check]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{held}");
    }
    assert_eq!(held["checks"]["blobs"]["ok"], true, "{held}");
    assert!(common::http_get(server.http, "/healthz").starts_with("HTTP/1.1 200"), "liveness is not readiness");

    stdin.write_all(b"ROLLBACK;\n").unwrap();
    drop(stdin);
    sqlite3.wait().unwrap();
    assert_eq!(readyz_until(&server, 200)["status"], "ready");
}
