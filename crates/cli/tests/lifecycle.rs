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
