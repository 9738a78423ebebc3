//! MTA-STS (RFC 8461) honoured by the real server's MX delivery. A real DNS
//! server on loopback (agentkeys-testdns) publishes each recipient domain's MX,
//! its `_mta-sts` TXT record and `mta-sts.<domain>` → 127.0.0.1; a Python HTTPS
//! server (tests/resources/policy_server.py) serves the policies with a
//! certificate from a test CA (tests/resources/test_ca.py) that the server
//! trusts through `delivery.ca_file`; two aiosmtpd receivers share the MX port
//! on 127.0.0.1 (STARTTLS with a CA-signed certificate for mx.good.test) and
//! 127.0.0.2 (no STARTTLS).
//!
//! | domain | policy | MX | expected |
//! |---|---|---|---|
//! | good.test | enforce, mx.good.test | TLS receiver, valid certificate | delivered over TLS |
//! | plain.test | enforce, mx.plain.test | receiver without STARTTLS | deferred (MTA-STS, STARTTLS), nothing sent |
//! | stray.test | enforce, *.elsewhere.test | mx.stray.test (TLS receiver) | deferred (MTA-STS, mx), never contacted |
//! | bad.test | enforce, mx.bad.test | TLS receiver, certificate for other names | deferred (MTA-STS, certificate), nothing sent |
//! | trial.test | testing, mx.trial.test | receiver without STARTTLS | delivered, the failure counted |

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentkeys_testdns::{TestDns, Zone};
use common::{Server, provision, python, resource, run_json};
use serde_json::{Value, json};

const OWNER: &str = "0x000000000000000000000000000000000000000a";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";

/// A Python child process that prints its port first; killed on drop.
struct Peer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Peer {
    fn start(script: &str, args: &[&str], dir: &Path) -> Peer {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource(script))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 {script} (scripts/test.sh installs aiosmtpd): {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("{script} printed {line:?}, not a port"));
        Peer { child, port, dir: dir.to_path_buf() }
    }

    /// The envelope recipients of every message a sink accepted.
    fn recipients(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") {
                let meta: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                out.extend(meta["rcpt_tos"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()));
            }
        }
        out.sort();
        out
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-sS", "--max-time", "30"]).args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn recipient_domains_mta_sts_policies_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let c = |name: &str| certs.join(name).display().to_string();
    python(
        "test_ca.py",
        &[
            c(""),
            "policy=mta-sts.good.test,mta-sts.plain.test,mta-sts.stray.test,mta-sts.trial.test,mta-sts.bad.test".to_owned(),
            "mx=mx.good.test,mx.stray.test".to_owned(),
        ],
    );

    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for (domain, mode, mx) in [
        ("good.test", "enforce", "mx.good.test"),
        ("plain.test", "enforce", "mx.plain.test"),
        ("stray.test", "enforce", "*.elsewhere.test"),
        ("trial.test", "testing", "mx.trial.test"),
        ("bad.test", "enforce", "mx.bad.test"),
    ] {
        std::fs::write(policies.join(format!("mta-sts.{domain}.txt")), policy(mode, mx)).unwrap();
    }
    let https = Peer::start("policy_server.py", &[&c("policy.pem"), &c("policy.key"), &policies.display().to_string()], &policies);

    // Two receivers on one port: TLS on 127.0.0.1, plaintext only on 127.0.0.2.
    let tls_dir = dir.path().join("tls-sink");
    let tls_sink = Peer::start(
        "smtp_sink.py",
        &[&tls_dir.display().to_string(), "--tls-cert", &c("mx.pem"), "--tls-key", &c("mx.key")],
        &tls_dir,
    );
    let mx_port = tls_sink.port.to_string();
    let plain_dir = dir.path().join("plain-sink");
    let plain_sink = Peer::start(
        "smtp_sink.py",
        &[&plain_dir.display().to_string(), "--host", "127.0.0.2", "--port", &mx_port],
        &plain_dir,
    );

    let tls_ip = Ipv4Addr::LOCALHOST;
    let plain_ip = Ipv4Addr::new(127, 0, 0, 2);
    let mut zone = Zone::new();
    for (domain, mx_ip, id) in [
        ("good.test", tls_ip, "good1"),
        ("plain.test", plain_ip, "plain1"),
        ("stray.test", tls_ip, "stray1"),
        ("trial.test", plain_ip, "trial1"),
        ("bad.test", tls_ip, "bad1"),
    ] {
        zone = zone
            .mx(domain, 10, &format!("mx.{domain}"))
            .a(&format!("mx.{domain}"), mx_ip)
            .txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id};"))
            .a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST);
    }
    let dns = TestDns::start(zone).unwrap();

    let data = dir.path().join("data");
    let (_, _, alice, key) = provision(&data, OWNER, ALICE, "alice");
    let server = Server::start(
        &data,
        &[
            ("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver()),
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_DELIVERY_MX_PORT", &mx_port),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
            ("AGENTKEYS_DELIVERY_CA_FILE", &c("ca.pem")),
            ("AGENTKEYS_DELIVERY_MTA_STS_PORT", &https.port.to_string()),
        ],
    );
    let body = json!({
        "to": ["a@good.test", "b@plain.test", "c@stray.test", "d@trial.test", "e@bad.test"],
        "subject": "MTA-STS",
        "text": "hello",
    });
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Authorization: Bearer {key}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body.to_string(),
        &format!("http://{}/v1/inboxes/{alice}/send", server.http),
    ]);
    assert_eq!(code, "202");

    let row = |rcpt: &str| -> Option<Value> {
        let q = run_json(&server.data_dir, &["queue", "list"]);
        q.as_array().unwrap().iter().find(|e| e["recipient"] == rcpt).cloned()
    };
    let state = |rcpt: &str| row(rcpt).and_then(|r| r["state"].as_str().map(str::to_owned));
    let last = |rcpt: &str| row(rcpt).and_then(|r| r["last_response"].as_str().map(str::to_owned)).unwrap_or_default();
    wait_for("delivery under the enforce policy", Duration::from_secs(60), || state("a@good.test").as_deref() == Some("delivered"));
    wait_for("delivery under the testing policy", Duration::from_secs(60), || state("d@trial.test").as_deref() == Some("delivered"));
    // Several attempts each, so a retry cannot sneak through either.
    let attempts = |rcpt: &str| row(rcpt).and_then(|r| r["attempts"].as_u64()).unwrap_or(0);
    wait_for("retries of the refused recipients", Duration::from_secs(60), || {
        attempts("b@plain.test") >= 2 && attempts("c@stray.test") >= 2 && attempts("e@bad.test") >= 2
    });

    let plain = last("b@plain.test");
    assert!(
        plain.starts_with("451 4.7.5 MTA-STS policy of plain.test (enforce): mx.plain.test does not offer STARTTLS"),
        "{plain}"
    );
    let stray = last("c@stray.test");
    assert!(
        stray.starts_with("451 4.7.5 MTA-STS policy of stray.test (enforce): no MX host may receive its mail (mx.stray.test not in mx: *.elsewhere.test)"),
        "{stray}"
    );
    let bad = last("e@bad.test");
    assert!(
        bad.starts_with("451 4.7.5 MTA-STS policy of bad.test (enforce): STARTTLS with mx.bad.test failed:")
            && bad.contains("certificate"),
        "{bad}"
    );
    for rcpt in ["b@plain.test", "c@stray.test", "e@bad.test"] {
        assert_ne!(state(rcpt).as_deref(), Some("delivered"), "{rcpt}");
        assert_ne!(state(rcpt).as_deref(), Some("bounced"), "a temporary failure: {rcpt}");
    }

    assert_eq!(tls_sink.recipients(), ["a@good.test"], "only the allowed, valid-TLS MX got mail");
    assert!(!tls_sink.lines("tls").is_empty(), "over STARTTLS");
    assert_eq!(plain_sink.recipients(), ["d@trial.test"], "testing delivers as before; enforce sent nothing in plaintext");

    let metrics = curl(&[&format!("http://{}/metrics", server.http)]);
    let counted = |mode: &str, reason: &str| {
        metrics.lines().any(|l| {
            l.starts_with("agentkeys_mta_sts_failures_total{")
                && l.contains(&format!("mode=\"{mode}\""))
                && l.contains(&format!("reason=\"{reason}\""))
                && !l.ends_with(" 0")
        })
    };
    assert!(counted("testing", "starttls"), "what the testing policy would have refused is counted:\n{metrics}");
    assert!(counted("enforce", "starttls"), "{metrics}");
    assert!(counted("enforce", "mx_mismatch"), "{metrics}");
    assert!(counted("enforce", "certificate"), "mx.bad.test's certificate is for other names:\n{metrics}");

    let requests = https.lines("requests");
    for domain in ["good.test", "plain.test", "stray.test", "trial.test", "bad.test"] {
        let wanted = format!("mta-sts.{domain} /.well-known/mta-sts.txt");
        let n = requests.iter().filter(|r| **r == wanted).count();
        assert_eq!(n, 1, "one fetch per policy id, then the cache: {requests:?}");
    }
    let seen = dns.queries();
    assert!(seen.iter().any(|q| q.name == "_mta-sts.good.test." && q.record_type == "TXT"), "{seen:?}");
}
