//! The MTA-STS policy fetch against a real HTTPS server (Python `http.server` +
//! `ssl`, tests/resources/policy_server.py) with certificates from a test CA
//! (tests/resources/test_ca.py): what RFC 8461 §3.3 asks of the fetch.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentkeys_delivery::{
    FetchError, HttpsPolicyFetcher, MAX_POLICY_BYTES, MtaSts, PolicyFetcher, StaticResolver, StsMode, TlsClients,
    load_trust_anchors,
};

fn resource(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources").join(name)
}

struct PolicyServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PolicyServer {
    fn start(certs: &Path, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource("policy_server.py"))
            .arg(certs.join("policy.pem"))
            .arg(certs.join("policy.key"))
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 policy_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Self { child, port: line.trim().parse().unwrap(), dir: dir.to_path_buf() }
    }

    fn serve(&self, host: &str, body: &str) {
        std::fs::write(self.dir.join(format!("{host}.txt")), body).unwrap();
    }

    fn set(&self, host: &str, ext: &str, value: &str) {
        std::fs::write(self.dir.join(format!("{host}.{ext}")), value).unwrap();
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.ok.test\r\nmax_age: 86400\r\n";

/// The CA, a certificate for the policy hosts of `names` (not `wrongname.test`'s),
/// the server, and a resolver pointing every `mta-sts.<name>` at it.
fn world(dir: &Path, names: &[&str]) -> (PolicyServer, StaticResolver, PathBuf) {
    let certs = dir.join("certs");
    let hosts: Vec<String> = names.iter().filter(|n| **n != "wrongname.test").map(|n| format!("mta-sts.{n}")).collect();
    let out = Command::new("python3")
        .arg(resource("test_ca.py"))
        .arg(&certs)
        .arg(format!("policy={}", hosts.join(",")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = PolicyServer::start(&certs, &dir.join("policies"));
    let mut resolver = StaticResolver::new();
    for name in names {
        resolver = resolver.with_ip(&format!("mta-sts.{name}"), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    (server, resolver, certs.join("ca.pem"))
}

fn fetcher(resolver: &StaticResolver, ca: Option<&Path>, port: u16) -> HttpsPolicyFetcher {
    let anchors = ca.map(|p| load_trust_anchors(p).unwrap()).unwrap_or_default();
    let tls = TlsClients::new(&anchors).unwrap();
    HttpsPolicyFetcher::new(Arc::new(resolver.clone()), tls.validating_config(), port).with_timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn the_fetch_validates_the_certificate_and_takes_only_a_plain_200() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["ok.test", "moved.test", "html.test", "huge.test", "gone.test", "wrongname.test"];
    let (server, resolver, ca) = world(dir.path(), &names);
    server.serve("mta-sts.ok.test", POLICY);
    server.serve("mta-sts.moved.test", POLICY);
    server.set("mta-sts.moved.test", "status", "301");
    server.serve("mta-sts.html.test", POLICY);
    server.set("mta-sts.html.test", "type", "text/html");
    server.serve("mta-sts.huge.test", &format!("{POLICY}{}", "x".repeat(MAX_POLICY_BYTES)));
    server.serve("mta-sts.wrongname.test", POLICY);
    let fetch = fetcher(&resolver, Some(&ca), server.port);

    assert_eq!(fetch.fetch("ok.test").await.unwrap(), POLICY);
    let moved = fetch.fetch("moved.test").await.unwrap_err().to_string();
    assert!(moved.contains("HTTP 301") && moved.contains("redirects are not followed"), "{moved}");
    let html = fetch.fetch("html.test").await.unwrap_err().to_string();
    assert!(html.contains("text/html, not text/plain"), "{html}");
    let huge = fetch.fetch("huge.test").await.unwrap_err().to_string();
    assert!(huge.contains(&format!("over {MAX_POLICY_BYTES} bytes")), "{huge}");
    let gone = fetch.fetch("gone.test").await.unwrap_err().to_string();
    assert!(gone.contains("HTTP 404"), "{gone}");
    // The certificate is the CA's but not for mta-sts.wrongname.test.
    let wrong = fetch.fetch("wrongname.test").await.unwrap_err();
    assert!(matches!(&wrong, FetchError::Transport(t) if t.contains("TLS with") && t.contains("certificate")), "{wrong}");
    let unknown = fetch.fetch("nowhere.test").await.unwrap_err();
    assert!(matches!(unknown, FetchError::Resolve { .. }), "{unknown}");
    // Without the test CA as a trust anchor, nothing validates.
    let untrusted = fetcher(&resolver, None, server.port).fetch("ok.test").await.unwrap_err();
    assert!(matches!(&untrusted, FetchError::Transport(t) if t.contains("UnknownIssuer")), "{untrusted}");
    // The one fetch that got through asked for the right host and path.
    assert!(server.requests().contains(&"mta-sts.ok.test /.well-known/mta-sts.txt".to_owned()), "{:?}", server.requests());
    assert!(!server.requests().iter().any(|r| r.starts_with("elsewhere.test")), "the redirect was not followed");
}

#[tokio::test]
async fn discovery_over_the_real_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (server, resolver, ca) = world(dir.path(), &["ok.test"]);
    server.serve("mta-sts.ok.test", POLICY);
    let dns = resolver.clone().with_txt("_mta-sts.ok.test", "v=STSv1; id=20260101T000000;");
    let sts = MtaSts::new(Arc::new(dns), Arc::new(fetcher(&resolver, Some(&ca), server.port)));
    let policy = sts.policy_for("ok.test").await.unwrap();
    assert_eq!(policy.mode, StsMode::Enforce);
    assert!(policy.allows_mx("mx.ok.test") && !policy.allows_mx("mx.other.test"));
    sts.policy_for("ok.test").await.unwrap();
    assert_eq!(server.requests().len(), 1, "the second lookup used the cache: {:?}", server.requests());
}
