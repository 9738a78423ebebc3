//! `dns.nameservers` drives outbound delivery too: with MX routing, the queue
//! runner asks the configured DNS server (agentkeys-testdns on loopback) for the
//! recipient domain's MX and delivers to it (a real MTA, aiosmtpd); a domain the
//! DNS server does not know (NXDOMAIN) bounces.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentkeys_testdns::{TestDns, Zone};
use common::{Server, provision, resource, run_json};
use serde_json::{Value, json};

const OWNER: &str = "0x000000000000000000000000000000000000000a";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mx_routing_uses_the_configured_name_servers() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir_all(&sink_dir).unwrap();
    let mut child = Command::new("python3")
        .arg(resource("smtp_sink.py"))
        .arg(&sink_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn smtp_sink.py (scripts/test.sh installs aiosmtpd)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _sink = Sink(child);
    let sink_port = line.trim().to_owned();

    let dns = TestDns::start(
        Zone::new().mx("example.test", 10, "mx.example.test").a("mx.example.test", Ipv4Addr::LOCALHOST),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (_, _, alice, key) = provision(&data, OWNER, ALICE, "alice");
    let server = Server::start(
        &data,
        &[
            ("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver()),
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_DELIVERY_MX_PORT", &sink_port),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
        ],
    );
    let body = json!({"to": ["friend@example.test", "someone@nowhere.test"], "subject": "via MX", "text": "hi"});
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {key}"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("http://{}/v1/inboxes/{alice}/send", server.http))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202");

    let state = |rcpt: &str| {
        let q: Vec<Value> = run_json(&server.data_dir, &["queue", "list"]).as_array().unwrap().clone();
        q.iter().find(|e| e["recipient"] == rcpt).map(|e| e["state"].as_str().unwrap().to_owned())
    };
    wait_for("delivery to the MX from our DNS", Duration::from_secs(60), || {
        state("friend@example.test").as_deref() == Some("delivered")
    });
    wait_for("the NXDOMAIN recipient to bounce", Duration::from_secs(60), || {
        state("someone@nowhere.test").as_deref() == Some("bounced")
    });
    let delivered = std::fs::read_dir(&sink_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .count();
    assert_eq!(delivered, 1);
    let seen = dns.queries();
    assert!(seen.iter().any(|q| q.name == "example.test." && q.record_type == "MX"), "{seen:?}");
    assert!(seen.iter().any(|q| q.name == "nowhere.test." && q.record_type == "MX"), "{seen:?}");
}
