//! Test harness: runs the real `agentkeys` binary (server and admin commands)
//! against a temporary data directory, on ephemeral loopback ports.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_agentkeys");

/// Repository root (for tests/resources).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// A resource file under tests/resources.
pub fn resource(name: &str) -> PathBuf {
    repo_root().join("tests/resources").join(name)
}

/// Environment variables, in order.
type Env = Vec<(String, String)>;

/// The deployment environments registered with [`share_deployment`], by data directory.
static DEPLOYMENTS: std::sync::Mutex<Vec<(PathBuf, Env)>> = std::sync::Mutex::new(Vec::new());

/// Registers environment that every command run against `data_dir` gets, the
/// server's included: where a multi-node deployment keeps its metadata and
/// blobs (`AGENTKEYS_DATABASE_URL`, `AGENTKEYS_BLOBS`, the `AWS_*` variables),
/// so the harness's admin helpers ([`provision`], [`run_json`], …) work against
/// a node's data directory unchanged. Replaces an earlier registration.
pub fn share_deployment(data_dir: &Path, env: &[(String, String)]) {
    let mut all = DEPLOYMENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.retain(|(dir, _)| dir != data_dir);
    all.push((data_dir.to_path_buf(), env.to_vec()));
}

fn deployment_env(data_dir: &Path) -> Env {
    let all = DEPLOYMENTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.iter().find(|(dir, _)| dir == data_dir).map(|(_, env)| env.clone()).unwrap_or_default()
}

/// [`share_deployment`] of just the metadata: from now on, every command and
/// server the harness runs with `data_dir` keeps its metadata at `url`
/// (`postgres://…`), as nodes sharing it do.
pub fn use_database(data_dir: &Path, url: &str) {
    share_deployment(data_dir, &[("AGENTKEYS_DATABASE_URL".to_owned(), url.to_owned())]);
}

/// A command for the binary with a clean AGENTKEYS_* environment (plus the
/// data directory's [`share_deployment`] environment) and `--data-dir`.
pub fn agentkeys(data_dir: &Path) -> Command {
    agentkeys_under(&[], data_dir)
}

/// [`agentkeys`] run by `wrapper` (e.g. `["prlimit", "--nofile=512:512", "--"]`).
pub fn agentkeys_under(wrapper: &[&str], data_dir: &Path) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(BIN);
            cmd
        }
        None => Command::new(BIN),
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENTKEYS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in deployment_env(data_dir) {
        cmd.env(k, v);
    }
    cmd.arg("--data-dir").arg(data_dir);
    cmd
}

/// Runs an admin command and returns its output.
pub fn run(data_dir: &Path, args: &[&str]) -> Output {
    agentkeys(data_dir).args(args).output().expect("spawn agentkeys")
}

/// Runs an admin command with `--json`, asserting success, and parses stdout.
pub fn run_json(data_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = agentkeys(data_dir).args(args).arg("--json").output().expect("spawn agentkeys");
    assert!(out.status.success(), "agentkeys {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("agentkeys {args:?} printed invalid JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub inbound: SocketAddr,
    pub submission: SocketAddr,
    pub submission_tls: SocketAddr,
    pub http: SocketAddr,
    pub stdout_lines: mpsc::Receiver<String>,
    /// The loopback DNS server the server resolves through (empty zone: every name
    /// NXDOMAIN) unless the test gave its own `AGENTKEYS_DNS_NAMESERVERS`, so no
    /// test waits on, or depends on, the machine's DNS.
    pub dns: Option<agentkeys_testdns::TestDns>,
}

fn addr_after(line: &str, label: &str) -> Option<SocketAddr> {
    let rest = line.trim_start().strip_prefix(label)?;
    rest.split_whitespace().next()?.parse().ok()
}

impl Server {
    /// Starts `agentkeys serve` on ephemeral ports with extra environment.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_under(&[], data_dir, env)
    }

    /// [`Server::start`] run by `wrapper` (see [`agentkeys_under`]).
    pub fn start_under(wrapper: &[&str], data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = agentkeys_under(wrapper, data_dir);
        cmd.arg("serve")
            .env("AGENTKEYS_LISTEN_INBOUND", "127.0.0.1:0")
            .env("AGENTKEYS_LISTEN_SUBMISSION", "127.0.0.1:0")
            .env("AGENTKEYS_LISTEN_SUBMISSION_TLS", "127.0.0.1:0")
            .env("AGENTKEYS_LISTEN_HTTP", "127.0.0.1:0")
            // HTTPS is on by default (8443): tests that want it set their own port.
            .env("AGENTKEYS_LISTEN_HTTPS", "off")
            .env("AGENTKEYS_LOG", "warn")
            // No outbound delivery unless a test asks for it (no real DNS or port 25).
            .env("AGENTKEYS_DELIVERY_ENABLED", "false")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let dns = if env.iter().any(|(k, _)| *k == "AGENTKEYS_DNS_NAMESERVERS") {
            None
        } else {
            let dns = agentkeys_testdns::TestDns::start(agentkeys_testdns::Zone::new()).expect("start test DNS");
            cmd.env("AGENTKEYS_DNS_NAMESERVERS", dns.nameserver());
            Some(dns)
        };
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn agentkeys serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut inbound, mut submission, mut submission_tls, mut http) = (None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.is_none() || inbound.is_none() || submission.is_none() || submission_tls.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let status = child.try_wait();
                panic!("server did not print its listeners in time (exit: {status:?})")
            });
            inbound = inbound.or(addr_after(&line, "inbound MX"));
            submission = submission.or(addr_after(&line, "submission      "));
            submission_tls = submission_tls.or(addr_after(&line, "submission TLS"));
            http = http.or(addr_after(&line, "HTTP"));
        }
        Server {
            child,
            data_dir: data_dir.to_path_buf(),
            inbound: inbound.expect("inbound"),
            submission: submission.expect("submission"),
            submission_tls: submission_tls.expect("submission_tls"),
            http: http.expect("http"),
            stdout_lines: rx,
            dns,
        }
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: &str) {
        let status =
            Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // The process may be exiting already (an earlier signal): ignore kill's status.
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().ok();
        let status = wait_timeout(&mut self.child, Duration::from_secs(60)).expect("server did not exit after SIGTERM");
        drop(self.dns.take());
        std::mem::forget(self);
        status
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        drop(self.dns.take());
        std::mem::forget(self);
    }

    /// The blob tree.
    pub fn blobs(&self) -> PathBuf {
        self.data_dir.join("blobs")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Waits for a child with a timeout.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every stored message file (`*.eml`) for an inbox, sorted.
pub fn stored_messages(blobs: &Path, owner: &str, inbox: &str) -> Vec<PathBuf> {
    let dir = blobs.join(owner).join(inbox);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => {
            rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect()
        }
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Every file under `dir`, recursively (hidden staging dirs included).
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() { stack.push(p) } else { out.push(p) }
            }
        }
    }
    out.sort();
    out
}

/// Runs a Python helper script from tests/resources with arguments; returns stdout
/// on success, panics with stderr otherwise.
pub fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3").arg(resource(script)).args(args).output().expect("spawn python3");
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The passphrase of every owner key file the harness enrolls.
pub const OWNER_PASSPHRASE: &str = "harness passphrase: correct horse battery staple";

/// The harness owners' config directory ("their own machine"): key files and the
/// passphrase file, inside the data directory so it goes away with it.
pub fn owner_config_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("owner-config")
}

/// The passphrase file of the harness owners (created on first use).
pub fn owner_passphrase_file(data_dir: &Path) -> PathBuf {
    let dir = owner_config_dir(data_dir);
    let path = dir.join("passphrase");
    if !path.exists() {
        std::fs::create_dir_all(&dir).expect("owner config dir");
        std::fs::write(&path, OWNER_PASSPHRASE).expect("passphrase file");
    }
    path
}

/// An owner command run "on the owner's machine" with the harness's config
/// directory and passphrase file, without a server: the signed request is checked
/// and applied against `data_dir` (`--owner` picks the key).
pub fn owner_run(data_dir: &Path, owner: &str, args: &[&str]) -> Output {
    let passphrase = owner_passphrase_file(data_dir);
    agentkeys(data_dir)
        .env("AGENTKEYS_CONFIG_DIR", owner_config_dir(data_dir))
        .args(args)
        .arg("--owner")
        .arg(owner)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .output()
        .expect("spawn agentkeys")
}

/// [`owner_run`] with `--json`, asserting success; parses stdout.
pub fn owner_json(data_dir: &Path, owner: &str, args: &[&str]) -> serde_json::Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = owner_run(data_dir, owner, &with_json);
    assert!(out.status.success(), "agentkeys {args:?} (as owner {owner}) failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("agentkeys {args:?} printed invalid JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Makes sure `owner` exists and has an enrolled master key in the harness's owner
/// config directory: adds the owner if missing (the operator's enrollment code),
/// or issues a new code for an owner someone else added, then `owner enroll`
/// locally against `data_dir`. Idempotent.
pub fn enroll_owner(data_dir: &Path, owner: &str) {
    let key_file = owner_config_dir(data_dir).join(format!("owner-{}.key", owner.to_ascii_lowercase()));
    if key_file.exists() {
        return;
    }
    let added = agentkeys(data_dir).args(["owner", "add", owner, "--json"]).output().expect("spawn agentkeys");
    let answer: serde_json::Value = if added.status.success() {
        serde_json::from_slice(&added.stdout).expect("owner add JSON")
    } else {
        // The owner exists (added by the test itself): a fresh code replaces any earlier one.
        run_json(data_dir, &["owner", "enroll-code", owner])
    };
    enroll_with_code(data_dir, owner, answer["enrollment_code"].as_str().expect("enrollment code"));
}

/// `owner enroll` with the operator's `code`, locally against `data_dir`, into the
/// harness's owner config directory.
pub fn enroll_with_code(data_dir: &Path, owner: &str, code: &str) {
    let passphrase = owner_passphrase_file(data_dir);
    let out = agentkeys(data_dir)
        .env("AGENTKEYS_CONFIG_DIR", owner_config_dir(data_dir))
        .args(["owner", "enroll", "--owner", owner, "--code", code, "--passphrase-file"])
        .arg(&passphrase)
        .arg("--json")
        .output()
        .expect("spawn agentkeys");
    assert!(out.status.success(), "owner enroll {owner} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Sets up an owner, an agent, an inbox with the given local part, a key and a
/// read+send grant; returns (owner, agent, address, key).
///
/// The owner is enrolled with a master key ([`enroll_owner`]) and the grant is the
/// owner's signed `grant create` (checked and applied locally against `data_dir`,
/// so no server needs to run).
pub fn provision(data_dir: &Path, owner: &str, agent: &str, local: &str) -> (String, String, String, String) {
    enroll_owner(data_dir, owner);
    let v = run_json(data_dir, &["agent", "add", agent, "--owner", owner]);
    assert_eq!(v["id"], agent);
    let v = run_json(data_dir, &["inbox", "create", "--agent", agent, "--name", local]);
    let address = v["address"].as_str().expect("address").to_owned();
    let v = run_json(data_dir, &["key", "create", "--agent", agent]);
    let key = v["key"].as_str().expect("key").to_owned();
    owner_json(data_dir, owner, &["grant", "create", "--agent", agent, "--inbox", &address, "--scopes", "read,send"]);
    (owner.to_owned(), agent.to_owned(), address, key)
}

/// A minimal blocking SMTP client over a real socket, for load and crash tests:
/// one message per connection. Returns the final reply code, or an I/O error.
pub fn send_raw(addr: SocketAddr, from: &str, rcpt: &str, message: &str) -> std::io::Result<u16> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let read_reply = |reader: &mut BufReader<std::net::TcpStream>| -> std::io::Result<u16> {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(line.clone()));
            }
        }
    };
    read_reply(&mut reader)?;
    for cmd in [
        "EHLO loadgen.example.net\r\n".to_owned(),
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<{rcpt}>\r\n"),
        "DATA\r\n".to_owned(),
    ] {
        writer.write_all(cmd.as_bytes())?;
        let code = read_reply(&mut reader)?;
        if code >= 400 {
            return Ok(code);
        }
    }
    writer.write_all(message.as_bytes())?;
    writer.write_all(b"\r\n.\r\n")?;
    let code = read_reply(&mut reader)?;
    writer.write_all(b"QUIT\r\n").ok();
    Ok(code)
}

/// A plain HTTP/1.1 GET to the server's HTTP listener; the whole response (status
/// line, headers, body) as text.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to HTTP");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("send GET");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    out
}

/// The value of one Prometheus sample on `/metrics` (`name{labels}` exactly as
/// printed), 0 when it is not there yet.
pub fn metric(server: &Server, sample: &str) -> f64 {
    http_get(server.http, "/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One request with the curl binary (an HTTP client we did not write): the
/// status, the response head lowercased, and the body as JSON (`Null` if it is
/// not JSON).
pub fn curl(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> (u16, String, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D", "-", "-o", "-", "-X", method]);
    if let Some(key) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(url).output().expect("spawn curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("curl printed UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status line");
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// The official MCP Python SDK client (`tests/resources/mcp_client.py`) driving
/// `agentkeys mcp`: one JSON request per line in, one answer per line out.
pub struct Mcp {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    /// The client's first line: server name, capabilities.
    pub ready: serde_json::Value,
}

impl Mcp {
    /// Starts the client with `args` (`stdio BIN mcp` or `http URL`) and only
    /// `env` of the AGENTKEYS_* variables; waits for it to be ready.
    pub fn spawn(args: &[String], env: &[(String, String)]) -> Mcp {
        let mut cmd = Command::new("python3");
        cmd.arg(resource("mcp_client.py")).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for (k, _) in std::env::vars() {
            if k.starts_with("AGENTKEYS_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("python3 mcp_client.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mcp = Mcp { child, stdin, lines, ready: serde_json::Value::Null };
        mcp.ready = mcp.read();
        assert_eq!(mcp.ready["ready"], true, "{}", mcp.ready);
        mcp
    }

    /// The client over stdio against `agentkeys mcp` with `env`.
    pub fn stdio(env: &[(String, String)]) -> Mcp {
        Mcp::spawn(&["stdio".into(), BIN.into(), "mcp".into()], env)
    }

    /// The client's next line.
    pub fn read(&mut self) -> serde_json::Value {
        let line = self.lines.recv_timeout(Duration::from_secs(120)).expect("the MCP client answered in time");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("fatal").is_none(), "MCP client failed: {v}");
        v
    }

    /// One request and its answer.
    pub fn send(&mut self, req: serde_json::Value) -> serde_json::Value {
        use std::io::Write as _;
        writeln!(self.stdin, "{req}").expect("write to the MCP client");
        self.stdin.flush().expect("flush the MCP client");
        self.read()
    }

    /// One tool call: the whole answer (`is_error`, `json`, `text`).
    pub fn call(&mut self, name: &str, arguments: serde_json::Value) -> serde_json::Value {
        self.send(serde_json::json!({"op": "call", "name": name, "arguments": arguments}))
    }

    /// A successful call's JSON answer.
    pub fn ok(&mut self, name: &str, arguments: serde_json::Value) -> serde_json::Value {
        let r = self.call(name, arguments.clone());
        assert_eq!(r["is_error"], false, "{name} {arguments}: {r}");
        r["json"].clone()
    }

    /// A failed call's text.
    pub fn err(&mut self, name: &str, arguments: serde_json::Value) -> String {
        let r = self.call(name, arguments.clone());
        assert_eq!(r["is_error"], true, "{name} {arguments} should fail: {r}");
        r["text"].as_str().unwrap_or_default().to_owned()
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        use std::io::Write as _;
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"op": "quit"}));
        let _ = self.stdin.flush();
        if wait_timeout(&mut self.child, Duration::from_secs(20)).is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// An RSA-2048 DKIM key of a sender domain the tests publish through
/// `crates/testdns`, and mail-auth's signer (rsa-sha256, relaxed/relaxed,
/// selector `sel`).
pub struct DkimKey {
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
}

impl DkimKey {
    /// A fresh key.
    pub fn generate() -> Self {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        Self {
            pkcs8: rsa.as_der().expect("PKCS#8").as_ref().to_vec(),
            spki: rsa.public_key().as_der().expect("SPKI").as_ref().to_vec(),
        }
    }

    /// The TXT record to publish at `sel._domainkey.<domain>`.
    pub fn dns_txt(&self) -> String {
        use base64::Engine as _;
        format!("v=DKIM1; k=rsa; p={}", base64::engine::general_purpose::STANDARD.encode(&self.spki))
    }

    /// `message` with a DKIM-Signature of `domain` (s=sel) in front.
    pub fn sign(&self, domain: &str, message: &str) -> String {
        use mail_auth::common::crypto::{RsaKey, Sha256};
        use mail_auth::common::headers::HeaderWriter as _;
        use mail_auth::dkim::{Canonicalization, DkimSigner};
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone())))
            .expect("RSA signing key");
        let signature = DkimSigner::from_key(key)
            .domain(domain)
            .selector("sel")
            .headers(["From", "To", "Subject", "Date", "Message-ID"])
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .sign(message.as_bytes())
            .expect("DKIM signature");
        format!("{}{message}", signature.to_header())
    }
}

/// A running `s3s-fs` (an S3 server that checks SigV4 signatures, presigned
/// URLs included) over a temporary root with one bucket, on a loopback port of
/// the caller's range; killed by its PID when dropped. Installed by
/// `scripts/test.sh` (`cargo install s3s-fs --version 0.14.1 --features binary --locked`).
pub struct S3sFs {
    child: Child,
    pub port: u16,
    /// The server's root directory: bucket `b`'s object `k` is the file `root/b/k`.
    pub root: PathBuf,
    pub bucket: String,
    _dir: tempfile::TempDir,
}

/// The access key of every [`S3sFs`].
pub const S3_ACCESS_KEY: &str = "s3-harness-access";
/// The secret key of every [`S3sFs`].
pub const S3_SECRET_KEY: &str = "s3-harness-secret-0123456789";

impl S3sFs {
    /// Starts the server with `bucket` on the first free port of `ports` and
    /// waits until it listens.
    pub fn start(bucket: &str, ports: std::ops::RangeInclusive<u16>) -> S3sFs {
        let dir = tempfile::Builder::new().prefix("s3read-s3s-").tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(bucket)).expect("bucket directory");
        let port = ports
            .clone()
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .unwrap_or_else(|| panic!("no free port in {ports:?}"));
        let log = std::fs::File::create(dir.path().join("s3s-fs.log")).expect("log file");
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run s3s-fs ({e}); install it: cargo install s3s-fs --version 0.14.1 --features binary --locked")
            });
        let server = S3sFs { child, port, root, bucket: bucket.to_owned(), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port} in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that makes `agentkeys serve` keep blobs here, under `prefix`.
    pub fn serve_env(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AGENTKEYS_BLOBS", format!("s3://{}/{prefix}", self.bucket)),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
        ]
    }

    /// The stored bytes of object `key` of the bucket, read from disk (not through S3).
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(&self.bucket).join(key)).ok()
    }

    /// Kills the server (by its PID) and reaps it.
    pub fn stop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The DKIM TXT records of `agentkeys domain dns DOMAIN` (name with its
/// trailing dot → the joined value), as tests/resources/verify_dkim.py wants
/// them. A simple zone reader: a record starts at a name containing
/// `._domainkey.` and collects every quoted string up to its closing
/// parenthesis or the line's end. Asserts both keys (RSA, Ed25519) are there.
pub fn dkim_dns(data_dir: &Path, domain: &str) -> serde_json::Map<String, serde_json::Value> {
    let out = run(data_dir, &["domain", "dns", domain]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zone = String::from_utf8(out.stdout).expect("`domain dns` prints UTF-8");
    let mut records = serde_json::Map::new();
    let mut current: Option<(String, String)> = None;
    let mut depth = 0i32;
    for raw in zone.lines() {
        let trimmed = raw.trim_start();
        if depth == 0 {
            if let Some((name, value)) = current.take() {
                records.insert(name, serde_json::Value::String(value));
            }
            let first = trimmed.split_whitespace().next().unwrap_or("");
            if !first.contains("._domainkey.") || !trimmed.contains("TXT") {
                continue;
            }
            let name = if first.ends_with('.') { first.to_owned() } else { format!("{first}.") };
            current = Some((name, String::new()));
        }
        let Some((_, value)) = current.as_mut() else { continue };
        let mut in_quote = false;
        for c in raw.chars() {
            match (in_quote, c) {
                (false, '"') => in_quote = true,
                (true, '"') => in_quote = false,
                (true, c) => value.push(c),
                (false, '(') => depth += 1,
                (false, ')') => depth -= 1,
                _ => {}
            }
        }
    }
    if let Some((name, value)) = current.take() {
        records.insert(name, serde_json::Value::String(value));
    }
    assert_eq!(records.len(), 2, "two DKIM records in:\n{zone}");
    records
}
