//! Issue 10 §4: any one node may die. Three `agentkeys serve` nodes share one
//! PostgreSQL database (a fresh `ak_mn_<ulid>`, dropped at the end) and one S3
//! bucket (`s3s-fs`), behind HAProxy (TCP mode, health checks on `/readyz`).
//! While bounded senders that retry like real clients run through HAProxy
//! (an MTA with Python's smtplib on the MX port; an agent on the HTTP send
//! route with idempotency keys) and an agent waits for a sign-up code on a
//! node that survives, one node is SIGKILLed. Afterwards:
//!
//! - every message that got `250` is stored exactly once (index rows in
//!   PostgreSQL, objects in S3), except a copy whose `250` the kill swallowed
//!   after the final dot (RFC 1047: the sender could not know and sent again),
//!   which is counted and named;
//! - every queued outbound message reached a receiving MTA at least once, and
//!   exactly once except where the killed node was mid-attempt (its own
//!   receiving MTA got a copy before it died, and a survivor sent it again
//!   after the lease ran out), each such duplicate named;
//! - the waiting agent got the code that was accepted while the node was down;
//! - `agentkeys audit verify` passes over the whole chain;
//! - the killed node, restarted, is ready, passes HAProxy's checks, accepts
//!   mail and its queue runner claims work.
//!
//! Needs PostgreSQL (`AGENTKEYS_TEST_DATABASE_URL`, default the trust-auth
//! server at 127.0.0.1:5432) with `psql`, `s3s-fs`, `haproxy`, Python 3 with
//! aiosmtpd; `scripts/test.sh` installs the peers. No timing assertions: every
//! wait is bounded and only orders events.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentkeys_testdns::{TestDns, Zone};
use common::*;
use serde_json::Value;

/// This test's loopback ports: nodes, HAProxy, s3s-fs, the receiving MTAs, DNS.
const PORTS: std::ops::RangeInclusive<u16> = 19600..=19799;
/// The server PostgreSQL tests create their databases on, unless
/// `AGENTKEYS_TEST_DATABASE_URL` names another (a URL whose path is a database).
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const S3_ACCESS_KEY: &str = "multinode-access";
const S3_SECRET_KEY: &str = "multinode-secret-0123456789";
const BUCKET: &str = "mail";
const PREFIX: &str = "agentkeys";

const OWNER: &str = "0x00000000000000000000000000000000000000c1";
const AGENT: &str = "0x00000000000000000000000000000000000000c2";
const SERVICE: &str = "example.com";
/// Every node's `hostname`.
const HOSTNAME: &str = "mx.agents.localhost";

/// Messages the MTA sends through HAProxy's MX port, and its threads.
const MX_MESSAGES: usize = 60;
const MX_THREADS: usize = 3;
/// Messages the agent sends through HAProxy's HTTP port, and its threads.
const HTTP_MESSAGES: usize = 24;
const HTTP_THREADS: usize = 2;
/// The kill comes once this many of each were accepted (so it lands mid-run).
const KILL_AFTER_MX: usize = MX_MESSAGES / 3;
const KILL_AFTER_HTTP: usize = HTTP_MESSAGES / 4;
/// Each DATA at the killed node's receiving MTA waits this long before its
/// `250`, so the kill is likely to find a delivery attempt in flight.
const KILLED_SINK_DATA_DELAY: &str = "0.4";

/// Bounds of the waits (none is a timing assertion).
const START_LIMIT: Duration = Duration::from_secs(60);
const PROGRESS_LIMIT: Duration = Duration::from_secs(180);
const SENDERS_LIMIT: Duration = Duration::from_secs(300);
const QUEUE_LIMIT: Duration = Duration::from_secs(180);
const OTP_LIMIT: Duration = Duration::from_secs(30);
/// Attempts of the sign-up code's sender (and of the checks after restart).
const RETRY_ATTEMPTS: usize = 60;
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Most sends through the restarted node until its own runner delivers one.
const REJOIN_SENDS: usize = 10;

static NEXT_PORT: AtomicU16 = AtomicU16::new(*PORTS.start());

/// The next port of [`PORTS`] nothing listens on.
fn free_port() -> u16 {
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        assert!(PORTS.contains(&port), "out of test ports");
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `done` or panics naming `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A database `ak_mn_<ulid>` of its own, created and dropped with `psql` (an
/// independent client, also used to read the index and the queue).
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    fn create() -> Self {
        let admin_url = std::env::var("AGENTKEYS_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("ak_mn_{}", ulid::Ulid::new().to_string().to_lowercase());
        let (base, _) = admin_url.rsplit_once('/').expect("a database URL with a path");
        let url = format!("{base}/{name}");
        let db = Self { admin_url, name, url };
        db.psql(&db.admin_url, &format!("CREATE DATABASE \"{}\"", db.name));
        db
    }

    fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .expect("run psql (the PostgreSQL client)");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The rows of `sql` on this database, one line each (`|` between columns).
    fn query(&self, sql: &str) -> Vec<String> {
        self.psql(&self.url, sql).lines().map(str::to_owned).collect()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let dropped = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &self.admin_url, "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
            .output();
        match dropped {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("cannot drop {}: {}", self.name, String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("cannot drop {}: {e}", self.name),
        }
    }
}

/// `s3s-fs` over a directory; the bucket is a directory in it. Killed by PID.
struct S3 {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl S3 {
    fn start(dir: &Path) -> Self {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("s3s-fs.log")).unwrap();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run s3s-fs (scripts/test.sh installs it: cargo install s3s-fs --features binary)");
        let s3 = Self { child, port, root };
        wait_until("s3s-fs to listen", START_LIMIT, || TcpStream::connect(local(s3.port)).is_ok());
        s3
    }

    /// The `.eml` objects of one inbox as stored on s3s-fs's disk: (ULID, bytes).
    fn inbox_objects(&self, owner: &str, inbox: &str) -> Vec<(String, String)> {
        let dir = self.root.join(BUCKET).join(PREFIX).join(owner).join(inbox);
        let mut out: Vec<(String, String)> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| {
                    let id = p.file_stem().unwrap().to_string_lossy().into_owned();
                    (id, String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned())
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A receiving MTA (tests/resources/smtp_sink.py), one per node life, so
/// every copy it holds was sent by that node. Killed by PID.
struct Sink {
    name: String,
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sink {
    fn start(dir: &Path, name: &str, extra: &[&str]) -> Self {
        let dir = dir.join(format!("sink-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(resource("smtp_sink.py"))
            .arg(&dir)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3 smtp_sink.py (scripts/test.sh installs aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), port.to_string(), "smtp_sink.py listens where asked");
        Self { name: name.to_owned(), child, port, dir }
    }

    /// The envelope recipients of every message it accepted.
    fn recipients(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            let is_meta = path.extension().is_some_and(|x| x == "json")
                && !path.file_name().unwrap().to_string_lossy().starts_with('.');
            if is_meta {
                let meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                for r in meta["rcpt_tos"].as_array().unwrap() {
                    out.push(r.as_str().unwrap().to_owned());
                }
            }
        }
        out
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// One node's fixed addresses (a restart must come back where HAProxy looks).
struct Node {
    name: String,
    dir: PathBuf,
    inbound: u16,
    submission: u16,
    submission_tls: u16,
    http: u16,
}

impl Node {
    fn new(base: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dir: base.join(name),
            inbound: free_port(),
            submission: free_port(),
            submission_tls: free_port(),
            http: free_port(),
        }
    }

    /// `agentkeys serve` on this node's ports, delivering through `sink`.
    fn start(&self, sink: &Sink, dns: &TestDns) -> Server {
        let env = [
            ("AGENTKEYS_LISTEN_INBOUND", local(self.inbound).to_string()),
            ("AGENTKEYS_LISTEN_SUBMISSION", local(self.submission).to_string()),
            ("AGENTKEYS_LISTEN_SUBMISSION_TLS", local(self.submission_tls).to_string()),
            ("AGENTKEYS_LISTEN_HTTP", local(self.http).to_string()),
            // The same on every node: it is also the authserv-id of the verdicts
            // the agent trusts (a node with its own name would write verdicts the
            // agent ignores, and a code from it would never count as authenticated).
            ("AGENTKEYS_HOSTNAME", HOSTNAME.to_owned()),
            ("AGENTKEYS_DNS_NAMESERVERS", dns.nameserver()),
            ("AGENTKEYS_DELIVERY_ENABLED", "true".to_owned()),
            ("AGENTKEYS_SMARTHOST", format!("127.0.0.1:{}", sink.port)),
            // Leases of 5 s (the minimum) and retries about a second apart.
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001".to_owned()),
            ("AGENTKEYS_LOG", "warn,agentkeys_delivery=info".to_owned()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = Server::start(&self.dir, &env);
        assert_eq!(server.http, local(self.http));
        server
    }

    fn ready(&self) -> bool {
        TcpStream::connect(local(self.http)).is_ok() && {
            let answer = http_get(local(self.http), "/readyz");
            answer.starts_with("HTTP/1.1 200") && answer.contains("\"status\":\"ready\"")
        }
    }
}

/// HAProxy in TCP mode in front of the nodes, run in the foreground (`-db`)
/// with a generated configuration; killed by PID.
struct HaProxy {
    child: Child,
    mx: u16,
    api: u16,
    stats: u16,
}

impl HaProxy {
    fn start(dir: &Path, nodes: &[&Node]) -> Self {
        let (mx, api, stats) = (free_port(), free_port(), free_port());
        let mut config = format!(
            "# Generated by crates/cli/tests/multinode.rs.
global
    maxconn 2000

defaults
    mode tcp
    timeout connect 500ms
    timeout client 60s
    timeout server 60s
    # A refused connection is retried, each time on another server.
    retries 3
    option redispatch 1

frontend mx
    bind 127.0.0.1:{mx}
    default_backend mx_nodes

frontend api
    bind 127.0.0.1:{api}
    default_backend api_nodes

# The API servers carry the health check (/readyz over HTTP); the MX servers
# of the same nodes follow it.
backend api_nodes
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
"
        );
        for n in nodes {
            config.push_str(&format!("    server {} 127.0.0.1:{} check\n", n.name, n.http));
        }
        config.push_str("\nbackend mx_nodes\n    balance roundrobin\n");
        for n in nodes {
            config.push_str(&format!("    server {0} 127.0.0.1:{1} track api_nodes/{0}\n", n.name, n.inbound));
        }
        config.push_str(&format!(
            "\nlisten stats\n    bind 127.0.0.1:{stats}\n    mode http\n    stats enable\n    stats uri /stats\n"
        ));
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy").arg("-c").arg("-q").arg("-f").arg(&path).output().expect(
            "run haproxy (scripts/test.sh installs it: apt-get install haproxy)",
        );
        assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let haproxy = Self { child, mx, api, stats };
        wait_until("HAProxy to listen", START_LIMIT, || TcpStream::connect(local(haproxy.stats)).is_ok());
        haproxy
    }

    /// The status HAProxy shows for `backend/server` (`UP`, `DOWN`, `UP 1/2`, …).
    fn status(&self, backend: &str, server: &str) -> String {
        let answer = http_get(local(self.stats), "/stats;csv");
        // The CSV starts at its header line (the body may be chunked).
        let mut lines = answer.lines().skip_while(|l| !l.starts_with("# pxname"));
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let column = header.iter().position(|h| *h == "status").expect("a status column");
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&backend) && f.get(1) == Some(&server))
            .and_then(|f| f.get(column).map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    fn wait_status(&self, server: &str, want: &str) {
        wait_until(&format!("HAProxy to show {server} {want}"), START_LIMIT, || {
            ["api_nodes", "mx_nodes"].iter().all(|b| self.status(b, server).starts_with(want))
        });
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A running tests/resources/retrying_sender.py: its finished messages as
/// they come, and its last line.
struct Senders {
    child: Child,
    lines: mpsc::Receiver<Value>,
    results: Vec<Value>,
    done: Option<Value>,
}

impl Senders {
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new("python3")
            .arg(resource("retrying_sender.py"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3 retrying_sender.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, results: Vec::new(), done: None }
    }

    /// Takes what arrived so far.
    fn poll(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            if v["done"] == true {
                self.done = Some(v);
            } else {
                self.results.push(v);
            }
        }
    }

    fn accepted(&self) -> usize {
        self.results.iter().filter(|r| r["outcome"] == "accepted").count()
    }

    /// Waits for the last line and the exit (bounded), then returns every result.
    fn finish(mut self, what: &str) -> Vec<Value> {
        let deadline = Instant::now() + SENDERS_LIMIT;
        while self.done.is_none() {
            assert!(Instant::now() < deadline, "{what} did not finish");
            if let Ok(v) = self.lines.recv_timeout(Duration::from_millis(200)) {
                if v["done"] == true {
                    self.done = Some(v);
                } else {
                    self.results.push(v);
                }
            }
        }
        let status = wait_timeout(&mut self.child, START_LIMIT).expect("the sender exits after its last line");
        assert!(status.success(), "{what} failed: {status}");
        std::mem::take(&mut self.results)
    }
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A child process killed (by its PID) and reaped if the test ends before it does.
struct KilledOnDrop(Option<Child>);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// The value of `name:` in a message's header (first occurrence).
fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn attempts(result: &Value) -> &Vec<Value> {
    result["attempts"].as_array().unwrap()
}

/// A DKIM-signed sign-up mail with `code` from the service.
fn signup_mail(key: &DkimKey, to: &str, code: &str) -> String {
    key.sign(
        SERVICE,
        &format!(
            "From: Example <no-reply@{SERVICE}>\r\nTo: {to}\r\nSubject: Your Example code\r\n\
             Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{}@mail.test>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\nYour verification code is {code}.\r\n",
            ulid::Ulid::new()
        ),
    )
}

/// Sends `raw` to `addr` like an MTA: retried on errors and 4xx, bounded.
fn deliver_retrying(addr: SocketAddr, from: &str, rcpt: &str, raw: &str) -> u16 {
    for _ in 0..RETRY_ATTEMPTS {
        match send_raw(addr, from, rcpt, raw) {
            Ok(code) if !(400..500).contains(&code) => return code,
            _ => std::thread::sleep(RETRY_PAUSE),
        }
    }
    panic!("{addr} never answered {rcpt}'s message with a final reply");
}

#[test]
fn any_one_node_may_die() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("multinode-").tempdir().unwrap();
    let base = tmp.path();
    let db = Database::create();
    let s3 = S3::start(base);
    let service_key = DkimKey::generate();
    let dns = TestDns::bind(
        local(free_port()),
        Zone::new()
            .txt(&format!("sel._domainkey.{SERVICE}"), &service_key.dns_txt())
            .txt(SERVICE, "v=spf1 ip4:192.0.2.1 -all")
            .txt(&format!("_dmarc.{SERVICE}"), "v=DMARC1; p=reject; adkim=r; aspf=r"),
    )
    .unwrap();
    let deployment: Vec<(String, String)> = [
        ("AGENTKEYS_DATABASE_URL", db.url.clone()),
        ("AGENTKEYS_BLOBS", format!("s3://{BUCKET}/{PREFIX}")),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3.port)),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| Node::new(base, n)).collect();
    for n in &nodes {
        share_deployment(&n.dir, &deployment);
    }
    let (victim, survivor) = (&nodes[0], &nodes[1]);

    // Provisioning through the first node's data directory: its seed is the deployment's.
    let (_, _, signup, key) = provision(&victim.dir, OWNER, AGENT, "signup");
    let inbox = |name: &str| {
        let v = run_json(&victim.dir, &["inbox", "create", "--agent", AGENT, "--name", name]);
        let address = v["address"].as_str().unwrap().to_owned();
        owner_json(&victim.dir, OWNER, &["grant", "create", "--agent", AGENT, "--inbox", &address, "--scopes", "read,send"]);
        address
    };
    let load = inbox("load");
    let outbox = inbox("outbox");

    // The first node creates the TLS material; the others get its seed and certificate.
    let sinks: Vec<Sink> = nodes
        .iter()
        .map(|n| Sink::start(base, &n.name, if n.name == victim.name { &["--data-delay", KILLED_SINK_DATA_DELAY] } else { &[] }))
        .collect();
    let mut servers: Vec<Option<Server>> = vec![Some(victim.start(&sinks[0], &dns))];
    for n in &nodes[1..] {
        std::fs::create_dir_all(n.dir.join("tls")).unwrap();
        for file in ["master.seed", "tls/cert.pem", "tls/key.pem"] {
            std::fs::copy(victim.dir.join(file), n.dir.join(file)).unwrap();
        }
    }
    for (i, n) in nodes.iter().enumerate().skip(1) {
        servers.push(Some(n.start(&sinks[i], &dns)));
    }
    for n in &nodes {
        wait_until(&format!("{} ready", n.name), START_LIMIT, || n.ready());
    }
    let haproxy = HaProxy::start(base, &nodes.iter().collect::<Vec<_>>());
    for n in &nodes {
        haproxy.wait_status(&n.name, "UP");
    }
    println!("[{:>6.1?}] 3 nodes ready behind HAProxy", started.elapsed());

    // The agent waits for a sign-up code on a node that survives.
    let config_dir = tempfile::Builder::new().prefix("multinode-agent-").tempdir().unwrap();
    let mut waiter = KilledOnDrop(Some(agentkeys(&survivor.dir)
        .args(["mail", "otp", "--wait", "--from", SERVICE, "--timeout", "150"])
        .env("AGENTKEYS_SERVER", format!("http://{}", local(survivor.http)))
        .env("AGENTKEYS_AGENT_KEY", &key)
        .env("AGENTKEYS_INBOX", &signup)
        .env("AGENTKEYS_CONFIG_DIR", config_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()));

    // The load, through HAProxy.
    let run_id = ulid::Ulid::new().to_string().to_lowercase();
    let mut mx = Senders::spawn(&[
        "smtp".into(),
        "--port".into(),
        haproxy.mx.to_string(),
        "--mail-from".into(),
        "loadgen@example.net".into(),
        "--rcpt".into(),
        load.clone(),
        "--prefix".into(),
        format!("mx-{run_id}"),
        "--count".into(),
        MX_MESSAGES.to_string(),
        "--threads".into(),
        MX_THREADS.to_string(),
    ]);
    let mut out = Senders::spawn(&[
        "http".into(),
        "--url".into(),
        format!("http://127.0.0.1:{}", haproxy.api),
        "--inbox".into(),
        outbox.clone(),
        "--key".into(),
        key.clone(),
        "--to-domain".into(),
        "example.net".into(),
        "--prefix".into(),
        format!("out-{run_id}"),
        "--count".into(),
        HTTP_MESSAGES.to_string(),
        "--threads".into(),
        HTTP_THREADS.to_string(),
        // A key whose node died before answering stays "in use": give up on it sooner.
        "--attempts".into(),
        "16".into(),
    ]);
    wait_until("the load to get going", PROGRESS_LIMIT, || {
        mx.poll();
        out.poll();
        mx.accepted() >= KILL_AFTER_MX && out.accepted() >= KILL_AFTER_HTTP
    });

    // ---- SIGKILL the first node ----
    let in_flight = db.query("SELECT count(*) FROM outbound_queue WHERE state = 'sending'");
    servers[0].take().unwrap().kill();
    println!(
        "[{:>6.1?}] SIGKILL {}: {} MX and {} HTTP messages accepted so far, {} queue rows being sent",
        started.elapsed(),
        victim.name,
        mx.accepted(),
        out.accepted(),
        in_flight[0]
    );

    // While it is down: the sign-up code arrives through HAProxy, and the waiting agent gets it.
    let code = format!("{:06}", 100_000 + rand_code(&run_id));
    let reply = deliver_retrying(local(haproxy.mx), &format!("bounce@{SERVICE}"), &signup, &signup_mail(&service_key, &signup, &code));
    assert_eq!(reply, 250, "the sign-up mail was refused");
    println!("[{:>6.1?}] sign-up code {code} accepted with {} down", started.elapsed(), victim.name);
    let child = waiter.0.as_mut().unwrap();
    let status = wait_timeout(child, OTP_LIMIT);
    if status.is_none() {
        child.kill().ok();
    }
    // Exited or killed: nothing is left to end.
    let waited = waiter.0.take().unwrap().wait_with_output().unwrap();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the waiting agent got no code: {}\nindexed for {signup}: {:?}\nstored: {:?}",
            String::from_utf8_lossy(&waited.stderr),
            db.query(&format!("SELECT seq, id FROM messages WHERE inbox = '{signup}'")),
            s3.inbox_objects(OWNER, &signup)
        )
    });
    assert!(status.success(), "mail otp --wait failed: {}", String::from_utf8_lossy(&waited.stderr));
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), code, "the waiting agent got another code");
    assert!(!victim.ready(), "the killed node still answers");
    println!("[{:>6.1?}] the agent waiting on {} got {code}", started.elapsed(), survivor.name);
    haproxy.wait_status(&victim.name, "DOWN");

    let mx_results = mx.finish("the MX senders");
    let out_results = out.finish("the HTTP senders");
    println!("[{:>6.1?}] senders done", started.elapsed());
    let all_delivered = || {
        db.query("SELECT count(*) FROM outbound_queue WHERE state <> 'delivered'")[0] == "0"
    };
    wait_until("the survivors to deliver the whole queue", QUEUE_LIMIT, all_delivered);
    println!("[{:>6.1?}] queue delivered by the survivors", started.elapsed());

    // ---- Restart: the killed node rejoins (with a receiving MTA of its own, so
    // its new life's deliveries are told apart from the old one's) ----
    // Rows indexed from here on were indexed by the restart (its reconcile) or later.
    let last_seq_before_restart: i64 = db.query("SELECT last_value FROM message_seq_values")[0].parse().unwrap();
    let reborn_sink = Sink::start(base, &format!("{}-restarted", victim.name), &[]);
    servers[0] = Some(victim.start(&reborn_sink, &dns));
    wait_until("the restarted node to be ready", START_LIMIT, || victim.ready());
    haproxy.wait_status(&victim.name, "UP");
    println!("[{:>6.1?}] {} restarted, ready and UP in HAProxy", started.elapsed(), victim.name);
    // It accepts mail itself…
    let after_id = format!("mx-{run_id}-after-restart");
    let after = format!(
        "From: loadgen@example.net\r\nTo: {load}\r\nSubject: {after_id}\r\nX-Multinode-Id: {after_id}\r\n\r\nafter the restart\r\n"
    );
    assert_eq!(send_raw(local(victim.inbound), "loadgen@example.net", &load, &after).unwrap(), 250);
    // …and its runner claims: a send through it is delivered by one of the runners; the
    // node that queued it is woken at once, the others poll, so a few sends suffice.
    let mut rejoin_sends = Vec::new();
    for i in 0..REJOIN_SENDS {
        let id = format!("out-{run_id}-rejoin-{i:02}");
        let body = format!(r#"{{"to": ["{id}@example.net"], "subject": "{id}", "text": "after the restart"}}"#);
        let url = format!("http://{}/v1/inboxes/{outbox}/send", local(victim.http));
        let (status, _, answer) = curl("POST", &url, Some(&key), Some(&body));
        assert_eq!(status, 202, "{answer}");
        rejoin_sends.push(id);
        wait_until("the rejoin send's delivery", QUEUE_LIMIT, all_delivered);
        if !reborn_sink.recipients().is_empty() {
            break;
        }
    }
    assert!(!reborn_sink.recipients().is_empty(), "the restarted node's runner never claimed a delivery");
    println!(
        "[{:>6.1?}] the restarted node accepted mail and its runner delivered ({} send(s))",
        started.elapsed(),
        rejoin_sends.len()
    );

    // ---- Inbound: every 250 stored exactly once, index and objects agree ----
    let objects = s3.inbox_objects(OWNER, &load);
    let seqs: BTreeMap<String, i64> = db
        .query(&format!("SELECT id, seq FROM messages WHERE owner = '{OWNER}' AND inbox = '{load}'"))
        .into_iter()
        .map(|row| {
            let (id, seq) = row.split_once('|').unwrap();
            (id.to_owned(), seq.parse().unwrap())
        })
        .collect();
    let rows: BTreeSet<String> = seqs.keys().cloned().collect();
    let object_ids: BTreeSet<String> = objects.iter().map(|(id, _)| id.clone()).collect();
    let without_blob: Vec<&String> = rows.difference(&object_ids).collect();
    assert!(without_blob.is_empty(), "index rows of {load} without their S3 object: {without_blob:?}");
    // The index commit is the acknowledgement: an object without a row is a
    // write the kill cut before its commit (no 250 went out, the sender sent
    // again). It is never listed, and is removed once no node can commit it.
    let mut copies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unacknowledged = Vec::new();
    for (object, message) in &objects {
        let id = header(message, "X-Multinode-Id").expect("every stored load message has its id").to_owned();
        if rows.contains(object) {
            copies.entry(id).or_default().push(object.clone());
        } else {
            unacknowledged.push((id, object.clone()));
        }
    }
    let mut problems = Vec::new();
    let mut rfc1047 = Vec::new();
    for r in &mx_results {
        let id = r["id"].as_str().unwrap();
        if r["outcome"] != "accepted" {
            problems.push(format!("MX {id} was never accepted: {r}"));
            continue;
        }
        let stored = copies.remove(id).unwrap_or_default();
        let lost_after_dot = attempts(r).iter().filter(|a| a["result"] == "error" && a["phase"] == "after-dot").count();
        match stored.len() {
            0 => problems.push(format!("MX {id} got 250 but is not stored: {r}")),
            1 => {}
            n if n <= 1 + lost_after_dot => {
                let late = stored.iter().filter(|o| seqs[*o] > last_seq_before_restart).count();
                assert_eq!(late, 0, "MX {id}: a copy indexed by the restart, not by a session: {stored:?}");
                rfc1047.push(format!(
                    "MX {id}: {n} copies {stored:?}; {lost_after_dot} attempt(s) lost the connection after the final dot: \
                     the killed node had committed the index row but not yet written the 250"
                ));
            }
            n => problems.push(format!("MX {id}: {n} copies {stored:?}, only {lost_after_dot} attempt(s) cut after the dot: {r}")),
        }
    }
    assert_eq!(copies.remove(&after_id).map(|c| c.len()), Some(1), "the restarted node stored its message once");
    assert!(copies.is_empty(), "stored messages nobody sent: {copies:?}");
    for (id, object) in &unacknowledged {
        let r = mx_results.iter().find(|r| r["id"] == id.as_str());
        let cut = r.is_some_and(|r| attempts(r).iter().any(|a| a["result"] == "error"));
        assert!(cut || id == &after_id, "unindexed object {object} of {id}, which no failed attempt explains: {r:?}");
    }
    println!("MX: {} unacknowledged object(s) the kill left (not indexed, never listed)", unacknowledged.len());
    let retried = mx_results.iter().filter(|r| attempts(r).len() > 1).count();
    println!(
        "MX: {} messages accepted ({} needed more than one attempt); {} RFC 1047 duplicate(s){}",
        mx_results.len(),
        retried,
        rfc1047.len(),
        rfc1047.iter().map(|d| format!("\n  {d}")).collect::<String>()
    );

    // ---- Outbound: every queued message reached a receiving MTA; duplicates explained ----
    let mut delivered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sink in sinks.iter().chain(std::iter::once(&reborn_sink)) {
        for rcpt in sink.recipients() {
            let id = rcpt.split('@').next().unwrap().to_owned();
            delivered.entry(id).or_default().push(sink.name.clone());
        }
    }
    let mut duplicates = Vec::new();
    let mut in_use = Vec::new();
    for r in &out_results {
        let id = r["id"].as_str().unwrap();
        let got = delivered.remove(id).unwrap_or_default();
        let cut = attempts(r).iter().any(|a| a["result"] == "error");
        match r["outcome"].as_str().unwrap() {
            "accepted" => {
                let killed_copy = got.iter().filter(|s| **s == victim.name).count();
                match got.len() {
                    0 => problems.push(format!("outbound {id} was queued (202) but never delivered: {r}")),
                    1 => {}
                    2 if killed_copy == 1 => duplicates.push(format!(
                        "outbound {id}: delivered by {got:?}: {} was mid-attempt when killed (the remote 250 came \
                         before its record), a survivor sent it again after the lease",
                        victim.name
                    )),
                    _ => problems.push(format!("outbound {id}: delivered {} times, by {got:?}: {r}", got.len())),
                }
            }
            // The node that claimed the key died before answering: the key stays
            // "in use" and the client cannot learn the outcome (see the report).
            "in_use" if cut => {
                if got.len() > 1 {
                    problems.push(format!("outbound {id} (outcome unknown to the client) delivered {got:?}"));
                }
                in_use.push(format!("outbound {id}: key stuck in use after a cut connection; delivered {} time(s)", got.len()));
            }
            _ => problems.push(format!("outbound {id}: {r}")),
        }
    }
    for id in &rejoin_sends {
        let got = delivered.remove(id).unwrap_or_default();
        if got.len() != 1 {
            problems.push(format!("outbound {id} (after the restart) delivered {got:?}"));
        }
    }
    assert!(delivered.is_empty(), "deliveries nobody queued: {delivered:?}");
    println!(
        "outbound: {} sends, {} duplicate(s), {} with an unknown outcome{}{}",
        out_results.len(),
        duplicates.len(),
        in_use.len(),
        duplicates.iter().map(|d| format!("\n  {d}")).collect::<String>(),
        in_use.iter().map(|d| format!("\n  {d}")).collect::<String>()
    );
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));

    // ---- Stop the nodes (SIGTERM: each signs a last checkpoint), then the whole chain verifies ----
    for server in servers.iter_mut() {
        let status = server.take().unwrap().stop();
        assert!(status.success(), "a node did not stop cleanly: {status}");
    }
    let verify = run(&survivor.dir, &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "audit verify failed:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    println!(
        "[{:>6.1?}] audit verify: {}",
        started.elapsed(),
        String::from_utf8_lossy(&verify.stdout).lines().next().unwrap_or_default()
    );
    drop(haproxy);
}

/// A number below 900000 from the run's id, so every run waits for its own code.
fn rand_code(run_id: &str) -> u32 {
    run_id.bytes().fold(7u32, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b))) % 900_000
}
