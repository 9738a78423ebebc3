//! Issue 14, the IMAP/SMTP mail backend, through the real binary against a
//! real provider: Dovecot (IMAP over TLS, IDLE) and Postfix (submission with
//! STARTTLS and AUTH through Dovecot's SASL), both from Debian, configured from
//! files this test writes in a temporary directory, run as this test's own
//! processes on loopback and stopped by PID. Messages reach the provider with
//! Python's imaplib (`tests/resources/imap_append.py`).
//!
//! The hosted domain is `agents.localhost` with `--backend imap`: the provider
//! mailbox `agent` belongs to the inbox `signup@agents.localhost`. The last
//! test runs two nodes on one PostgreSQL database (`AGENTKEYS_TEST_DATABASE_URL`,
//! a database of its own, dropped at the end) and one s3s-fs bucket (ports
//! 21620–21639).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentkeys_testdns::{TestDns, Zone};
use common::*;
use serde_json::Value;

const OWNER: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const AGENT: &str = "0xa100000000000000000000000000000000000001";
const SERVICE: &str = "example.com";
const USER: &str = "agent";
const PASSWORD: &str = "app-pass-7Hq2xV9k";

/// A port free on loopback now (the peers cannot take port 0 and report it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "{what} exited at start");
        assert!(Instant::now() < deadline, "{what} does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child stopped by PID (SIGTERM, then reaped) when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status().ok();
        if wait_timeout(&mut self.0, Duration::from_secs(10)).is_none() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// Dovecot: IMAPS on `imap`, its SASL service for Postfix on `auth`.
struct Dovecot {
    dir: PathBuf,
    imap: u16,
    auth: u16,
    _process: Peer,
}

impl Dovecot {
    /// `auth_failure_delay = 0`: a client retrying a refused login at once
    /// would show as many attempts in the log. With `oauth` (the port of
    /// `oauth_provider.py`) also an oauth2 passdb for XOAUTH2 logins that asks that
    /// provider's introspection endpoint whether a token is active.
    fn start_with(dir: &Path, cert: &Path, key: &Path, oauth: Option<u16>) -> Dovecot {
        let dir = dir.join("dovecot");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        // Mail is written by the unprivileged user the static userdb names.
        Command::new("chmod").args(["-R", "777"]).arg(dir.join("mail")).status().unwrap();
        std::fs::write(dir.join("users"), format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
        let (imap, auth) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {d}/run\nstate_dir = {d}/run\nlog_path = {d}/dovecot.log\n\
             ssl = required\nssl_cert = <{cert}\nssl_key = <{key}\nauth_mechanisms = plain login\n\
             auth_failure_delay = 0\nauth_verbose = yes\nmail_location = maildir:{d}/mail/%u\n\
             {{oauth_passdb}}passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/mail/%u\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = 0\n  }}\n  inet_listener imaps {{\n    port = {imap}\n    ssl = yes\n  }}\n}}\n\
             service auth {{\n  inet_listener {{\n    address = 127.0.0.1\n    port = {auth}\n  }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let conf = match oauth {
            None => conf,
            Some(port) => {
                std::fs::write(
                    dir.join("oauth2.conf.ext"),
                    format!(
                        "introspection_mode = post\nintrospection_url = http://127.0.0.1:{port}/introspect\n\
                         force_introspection = yes\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n"
                    ),
                )
                .unwrap();
                conf.replace("auth_mechanisms = plain login", "auth_mechanisms = plain login xoauth2 oauthbearer").replace(
                    "{oauth_passdb}",
                    &format!("passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {d}/oauth2.conf.ext\n}}\n"),
                )
            }
        };
        let conf = conf.replace("{oauth_passdb}", "");
        std::fs::write(dir.join("dovecot.conf"), conf).unwrap();
        let mut child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dovecot (apt-get install dovecot-imapd)");
        wait_for_port(imap, &mut child, "dovecot");
        Dovecot { dir, imap, auth, _process: Peer(child) }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Login attempts of `USER` with a wrong password, as Dovecot's auth logged them.
    fn failed_logins(&self) -> usize {
        self.log().lines().filter(|l| l.contains(&format!("passwd-file({USER},")) && l.contains("Password mismatch")).count()
    }
}

/// Postfix: submission (STARTTLS required, AUTH through Dovecot) on `port`;
/// mail for example.net is delivered to the Maildir `vmail/peer/`.
struct Postfix {
    dir: PathBuf,
    port: u16,
    _process: Peer,
}

impl Postfix {
    fn start(dir: &Path, cert: &Path, key: &Path, sasl_port: u16) -> Postfix {
        let dir = dir.join("postfix");
        for sub in ["conf", "queue", "data", "vmail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Command::new("chmod").arg("777").arg(dir.join("vmail")).status().unwrap();
        let port = free_port();
        let d = dir.display();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             myhostname = submission.provider.test\nmydomain = provider.test\nmyorigin = provider.test\nmydestination =\n\
             inet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
             maillog_file_prefixes = /tmp, {d}\nmaillog_file = {d}/postfix.log\n\
             smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\nsmtpd_tls_security_level = may\n\
             smtpd_sasl_type = dovecot\nsmtpd_sasl_path = inet:127.0.0.1:{sasl_port}\nsmtpd_sasl_auth_enable = no\n\
             smtpd_relay_restrictions = permit_sasl_authenticated, reject\n\
             virtual_mailbox_domains = example.net\nvirtual_mailbox_base = {d}/vmail\nvirtual_mailbox_maps = static:peer/\n\
             virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n",
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(dir.join("conf/main.cf"), main).unwrap();
        let mut master = format!(
            "127.0.0.1:{port} inet n - n - - smtpd -o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt \
             -o smtpd_sasl_auth_enable=yes -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n"
        );
        for (name, kind, private, maxproc, command) in [
            ("pickup", "unix", "n", "1", "pickup"),
            ("cleanup", "unix", "n", "0", "cleanup"),
            ("qmgr", "unix", "n", "1", "qmgr"),
            ("tlsmgr", "unix", "-", "1", "tlsmgr"),
            ("rewrite", "unix", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "0", "bounce"),
            ("defer", "unix", "-", "0", "bounce"),
            ("trace", "unix", "-", "0", "bounce"),
            ("verify", "unix", "-", "1", "verify"),
            ("flush", "unix", "n", "0", "flush"),
            ("proxymap", "unix", "-", "-", "proxymap"),
            ("smtp", "unix", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "showq"),
            ("error", "unix", "-", "-", "error"),
            ("retry", "unix", "-", "-", "error"),
            ("discard", "unix", "-", "-", "discard"),
            ("virtual", "unix", "-", "-", "virtual"),
            ("anvil", "unix", "-", "1", "anvil"),
            ("scache", "unix", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "1", "postlogd"),
        ] {
            let unpriv = if name == "virtual" { "n" } else { "-" };
            master.push_str(&format!("{name} {kind} {private} {unpriv} n - {maxproc} {command}\n"));
        }
        std::fs::write(dir.join("conf/master.cf"), master).unwrap();
        let conf = dir.join("conf");
        let created = Command::new("postfix").arg("-c").arg(&conf).args(["post-install", "create-missing"]).status().unwrap();
        assert!(created.success(), "postfix post-install");
        // The master writes its lock as the mail owner.
        Command::new("chown").arg("postfix").arg(dir.join("data")).status().unwrap();
        let mut child = Command::new("/usr/lib/postfix/sbin/master")
            .arg("-c")
            .arg(&conf)
            .arg("-d")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("postfix master (apt-get install postfix)");
        wait_for_port(port, &mut child, "postfix");
        Postfix { dir, port, _process: Peer(child) }
    }

    /// The messages Postfix delivered to peer@example.net.
    fn delivered(&self) -> Vec<String> {
        let new = self.dir.join("vmail/peer/new");
        let mut found: Vec<String> = std::fs::read_dir(new)
            .map(|entries| entries.filter_map(Result::ok).map(|e| std::fs::read_to_string(e.path()).unwrap()).collect())
            .unwrap_or_default();
        found.sort();
        found
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default()
    }
}

/// A self-signed certificate for 127.0.0.1 (both peers present it; the
/// server trusts it through `delivery.ca_file`).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("provider-cert.pem"), dir.join("provider-key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=provider.test"])
        // An end-entity certificate (webpki refuses a CA certificate as one).
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req");
    // Dovecot and Postfix read the key as root; the file stays private.
    (cert, key)
}

struct World {
    dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    cert: PathBuf,
    dovecot: Dovecot,
    dns: TestDns,
    dkim: DkimKey,
    inbox: String,
    key: String,
}

fn world() -> World {
    world_on(None)
}

/// [`world`] with the deployment environment `shared` (a shared database and
/// bucket) for every command and server of its data directory.
fn world_on(shared: Option<&[(String, String)]>) -> World {
    world_full(shared, None)
}

fn world_full(shared: Option<&[(String, String)]>, oauth: Option<u16>) -> World {
    let dir = tempfile::tempdir().unwrap();
    if let Some(env) = shared {
        share_deployment(dir.path(), env);
    }
    let (cert, key_file) = certificate(dir.path());
    let dovecot = Dovecot::start_with(dir.path(), &cert, &key_file, oauth);
    let dkim = DkimKey::generate();
    let zone = Zone::new()
        .txt(&format!("sel._domainkey.{SERVICE}"), &dkim.dns_txt())
        .txt(SERVICE, "v=spf1 ip4:192.0.2.1 -all")
        .txt(&format!("_dmarc.{SERVICE}"), "v=DMARC1; p=reject; adkim=r; aspf=r");
    let dns = TestDns::start(zone).unwrap();
    let (_, _, inbox, key) = provision(dir.path(), OWNER, AGENT, "signup");
    World { dir, config_dir: tempfile::tempdir().unwrap(), cert, dovecot, dns, dkim, inbox, key }
}

impl World {
    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// `agentkeys domain set-backend agents.localhost --backend imap …` with `password`.
    fn set_imap_backend(&self, password: &str, smtp_port: u16) -> Output {
        let file = self.data().join("provider-password");
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let out = agentkeys(self.data())
            .args(["domain", "set-backend", "agents.localhost", "--backend", "imap", "--imap-host", "127.0.0.1"])
            .args(["--imap-port", &self.dovecot.imap.to_string(), "--smtp-host", "127.0.0.1"])
            .args(["--smtp-port", &smtp_port.to_string(), "--username", USER, "--deliver-to", &self.inbox])
            .arg("--password-file")
            .arg(&file)
            .output()
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        out
    }

    fn serve(&self, extra: &[(&str, &str)]) -> Server {
        let ca = self.cert.display().to_string();
        let dns = self.dns.nameserver();
        let mut env = vec![
            ("AGENTKEYS_DELIVERY_CA_FILE", ca.as_str()),
            ("AGENTKEYS_DNS_NAMESERVERS", dns.as_str()),
            ("AGENTKEYS_BACKENDS_BACKOFF_SCALE", "0.005"),
        ];
        env.extend_from_slice(extra);
        Server::start(self.data(), &env)
    }

    /// `agentkeys mail ARGS` as the agent.
    fn mail(&self, server: &Server, args: &[&str]) -> Command {
        let mut cmd = agentkeys(self.data());
        cmd.arg("mail").args(args);
        for (k, v) in [
            ("AGENTKEYS_SERVER", format!("http://{}", server.http)),
            ("AGENTKEYS_AGENT_KEY", self.key.clone()),
            ("AGENTKEYS_SUBMISSION", server.submission.to_string()),
            ("AGENTKEYS_CA_FILE", server.data_dir.join("tls/cert.pem").display().to_string()),
            ("AGENTKEYS_CONFIG_DIR", self.config_dir.path().display().to_string()),
        ] {
            cmd.env(k, v);
        }
        cmd
    }

    /// The domain's row of `agentkeys domain list --json`.
    fn domain_row(&self) -> Value {
        let list = run_json(self.data(), &["domain", "list"]);
        list.as_array().unwrap().iter().find(|d| d["domain"] == "agents.localhost").cloned().unwrap()
    }

    fn wait_for_backend_status(&self, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = self.domain_row();
            if row["backend_status"] == status {
                return row;
            }
            assert!(Instant::now() < deadline, "backend status never became {status}: {row}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `messages` to files and appends them with imaplib, `interval_ms`
    /// apart; returns the running appender.
    fn append(&self, messages: &[String], interval_ms: u64) -> Child {
        let spool = self.data().join(format!("spool-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&spool).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(resource("imap_append.py"))
            .args(["127.0.0.1", &self.dovecot.imap.to_string()])
            .arg(&self.cert)
            .args([USER, PASSWORD, &interval_ms.to_string()]);
        for (i, m) in messages.iter().enumerate() {
            let file = spool.join(format!("{i:04}.eml"));
            std::fs::write(&file, m).unwrap();
            cmd.arg(file);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap()
    }

    /// A message from the service, DKIM-signed with its key.
    fn signed(&self, subject: &str, body: &str) -> String {
        let raw = format!(
            "Return-Path: <bounce@{SERVICE}>\r\nFrom: Example <no-reply@{SERVICE}>\r\nTo: {}\r\nSubject: {subject}\r\n\
             Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{}@mail.test>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n{body}",
            self.inbox,
            ulid::Ulid::new()
        );
        self.dkim.sign(SERVICE, &raw)
    }

    /// Every message of the inbox, listed by the agent (one page of 100).
    fn subjects(&self, server: &Server) -> Vec<String> {
        let out = self.mail(server, &["list", "--inbox", &self.inbox, "--limit", "100", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["messages"].as_array().unwrap().iter().map(|m| m["subject"].as_str().unwrap_or("").to_owned()).collect()
    }
}

fn wait_output(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// Rounds of APPEND → `mail otp --wait` measured (each must finish within 2 s;
/// the p50/p99 are printed for BENCHMARKS.md).
const OTP_ROUNDS: usize = 20;

/// A verification mail delivered into the provider's mailbox reaches a waiting
/// `mail otp --wait` within 2 s (IDLE, not polling), authenticated by our own
/// DKIM/DMARC evaluation, with the same `Received:`/verdict fields as MX mail.
#[test]
fn mail_appended_at_the_provider_reaches_otp_wait_within_two_seconds() {
    let w = world();
    let set = w.set_imap_backend(PASSWORD, 1);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let server = w.serve(&[]);
    w.wait_for_backend_status("running");

    let mut latencies = Vec::new();
    for round in 0..OTP_ROUNDS {
        let code = format!("{}", 400_000 + round * 7_919);
        let waiter = w
            .mail(&server, &["otp", "--wait", "--from", SERVICE, "--timeout", "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The wait is following the event stream before the mail arrives.
        std::thread::sleep(Duration::from_millis(400));
        let appender = w.append(&[w.signed("Your Example code", &format!("Your verification code is {code}.\r\n"))], 0);
        let out = wait_output(waiter);
        let done = unix_now();
        let appended = wait_output(appender);
        assert!(appended.status.success());
        // `appended 1 <unix time>`: when the APPEND's OK arrived.
        let appended_at: f64 = String::from_utf8_lossy(&appended.stdout)
            .split_whitespace()
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap();
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), code, "round {round}");
        let latency = done - appended_at;
        assert!(latency < 2.0, "round {round}: APPEND to OTP took {latency:.3} s");
        latencies.push(latency);
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    println!(
        "IMAP APPEND -> mail otp --wait: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
        latencies.len(),
        pick(0.50) * 1000.0,
        pick(0.99) * 1000.0,
        latencies[latencies.len() - 1] * 1000.0
    );

    // Stored as the MX stores: our Received: and verdicts on top.
    let files = stored_messages(&server.blobs(), OWNER, &w.inbox);
    assert_eq!(files.len(), OTP_ROUNDS, "each message copied once");
    let stored = std::fs::read_to_string(&files[0]).unwrap();
    let results = stored.lines().find(|l| l.starts_with("Authentication-Results:")).unwrap();
    assert!(results.contains("mx.agents.localhost"), "{results}");
    assert!(stored.contains("dkim=pass") && stored.contains("dmarc=pass"), "{stored}");
    assert!(stored.contains("via IMAP"), "{stored}");
    assert!(!stored.contains(PASSWORD));
    server.stop();
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// SIGKILL in the middle of a burst, then a restart: every message is in the
/// inbox exactly once (cursor and pending id in the store).
#[test]
fn a_server_killed_in_a_burst_imports_every_message_exactly_once() {
    const BURST: usize = 40;
    let w = world();
    let set = w.set_imap_backend(PASSWORD, 1);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let server = w.serve(&[]);
    w.wait_for_backend_status("running");
    let messages: Vec<String> = (0..BURST).map(|i| w.signed(&format!("burst {i:03}"), "hello\r\n")).collect();
    let appender = w.append(&messages, 60);
    // Kill once some, not all, are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let n = w.subjects(&server).len();
        if n >= 5 {
            break n;
        }
        assert!(Instant::now() < deadline, "nothing imported");
        std::thread::sleep(Duration::from_millis(50));
    };
    server.kill();
    assert!(before < BURST, "the kill came after the burst ({before})");
    let server = w.serve(&[]);
    assert!(wait_output(appender).status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let subjects = loop {
        let subjects = w.subjects(&server);
        if subjects.len() >= BURST {
            // A duplicate would show up right after; give it a moment.
            std::thread::sleep(Duration::from_millis(500));
            break w.subjects(&server);
        }
        assert!(Instant::now() < deadline, "{} of {BURST} imported", subjects.len());
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut sorted = subjects.clone();
    sorted.sort();
    let expected: Vec<String> = (0..BURST).map(|i| format!("burst {i:03}")).collect();
    assert_eq!(sorted, expected, "every message exactly once (killed after {before})");
    server.stop();
}

/// An agent's send goes out through the provider's submission server
/// (STARTTLS, AUTH as the mailbox's user), DKIM-signed by us, From pinned.
#[test]
fn an_agents_send_goes_through_the_providers_submission_server() {
    let w = world();
    let postfix = Postfix::start(w.data(), &w.cert, &w.dir.path().join("provider-key.pem"), w.dovecot.auth);
    let set = w.set_imap_backend(PASSWORD, postfix.port);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let server = w.serve(&[("AGENTKEYS_DELIVERY_ENABLED", "true")]);
    let out = w
        .mail(&server, &["send", "--inbox", &w.inbox, "--to", "peer@example.net", "--subject", "through the provider", "--text", "hi"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let found = postfix.delivered();
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "nothing delivered; postfix log:\n{}", postfix.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(delivered.len(), 1);
    let message = &delivered[0];
    assert!(message.contains("Subject: through the provider"), "{message}");
    assert!(message.contains(&format!("From: {}", w.inbox)) || message.contains(&format!("<{}>", w.inbox)), "{message}");
    assert!(message.contains("DKIM-Signature:"), "{message}");
    let log = postfix.log();
    assert!(log.contains(&format!("sasl_username={USER}")), "the submission was authenticated: {log}");
    assert!(log.contains("status=sent"), "{log}");
    server.stop();
}

/// A wrong password: the domain's backend status says so (without the
/// password), one audit record, and the next login waits for the backoff
/// instead of hammering the provider.
#[test]
fn a_wrong_password_is_reported_and_not_retried_in_a_tight_loop() {
    let w = world();
    let set = w.set_imap_backend("wrong-password-123", 1);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    // AUTH_FAILED_BACKOFF (15 min) x 0.005 = 4.5 s between logins.
    let server = w.serve(&[]);
    let row = w.wait_for_backend_status("auth_failed");
    let detail = row["backend_detail"].as_str().unwrap();
    assert!(detail.contains("refused the login of agent") && detail.contains("set-backend"), "{detail}");
    assert!(!detail.contains("wrong-password-123"), "{detail}");
    // Our refused logins, counted by the server; Dovecot logs each attempt it checked.
    let refusals = || metric(&server, "agentkeys_backend_auth_failures_total{kind=\"imap\"}");
    let first = refusals();
    assert!(first >= 1.0 && w.dovecot.failed_logins() >= 1);
    std::thread::sleep(Duration::from_secs(3));
    let later = refusals();
    assert!(later - first <= 1.0, "{} refused logins in 3 s: a tight loop\n{}", later - first, w.dovecot.log());
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusals() <= first {
        assert!(Instant::now() < deadline, "never retried after the backoff\n{}", w.dovecot.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let audit = run_json(w.data(), &["audit", "list"]);
    let refused: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|r| r["operation"] == "backend.auth_failed").collect();
    assert_eq!(refused.len(), 1, "one record per streak, not one per retry: {audit}");
    assert!(!audit.to_string().contains("wrong-password-123"));
    server.stop();
}

/// Two nodes on one PostgreSQL database both configured with the backend: one
/// follows the mailbox at a time (the follower lease), and when that node is
/// SIGKILLed in the middle of a burst the other takes over; every message is
/// imported exactly once (two followers would each copy every message).
#[test]
fn two_nodes_follow_one_mailbox_once_and_the_survivor_takes_over() {
    use std::os::unix::fs::PermissionsExt as _;
    const BURST: usize = 30;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime.block_on(agentkeys_store::postgres::TempDatabase::create()).expect("a PostgreSQL for tests");
    drop(runtime);
    let s3 = S3sFs::start("mail", 21620..=21639);
    let mut shared: Vec<(String, String)> = s3.serve_env("ak").into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    shared.push(("AGENTKEYS_DATABASE_URL".to_owned(), db.url().to_owned()));
    let w = world_on(Some(&shared));
    let node_b = tempfile::tempdir().unwrap();
    share_deployment(node_b.path(), &shared);
    let seed = node_b.path().join("master.seed");
    std::fs::copy(w.data().join("master.seed"), &seed).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let set = w.set_imap_backend(PASSWORD, 1);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let ca = w.cert.display().to_string();
    let dns = w.dns.nameserver();
    let env = [
        ("AGENTKEYS_DELIVERY_CA_FILE", ca.as_str()),
        ("AGENTKEYS_DNS_NAMESERVERS", dns.as_str()),
        ("AGENTKEYS_BACKENDS_BACKOFF_SCALE", "0.02"),
    ];
    let servers = [Server::start(w.data(), &env), Server::start(node_b.path(), &env)];
    w.wait_for_backend_status("running");
    let holder = || -> Option<u32> {
        let out = Command::new("psql")
            .args([db.url(), "-XAtc", "SELECT holder FROM backend_leases WHERE domain = 'agents.localhost'"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        text.split('/').nth(1).and_then(|pid| pid.parse().ok())
    };
    let holding = holder().expect("one node holds the lease");
    let at = servers.iter().position(|s| s.child.id() == holding).expect("the holder is one of our nodes");
    let messages: Vec<String> = (0..BURST).map(|i| w.signed(&format!("pair {i:03}"), "hello\r\n")).collect();
    let appender = w.append(&messages, 60);
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let n = w.subjects(&servers[1 - at]).len();
        if n >= 5 {
            break n;
        }
        assert!(Instant::now() < deadline, "nothing imported");
        std::thread::sleep(Duration::from_millis(50));
    };
    let [first, second] = servers;
    let (killed, survivor) = if at == 0 { (first, second) } else { (second, first) };
    killed.kill();
    assert!(before < BURST, "the kill came after the burst ({before})");
    assert!(wait_output(appender).status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let subjects = loop {
        let subjects = w.subjects(&survivor);
        if subjects.len() >= BURST {
            std::thread::sleep(Duration::from_millis(500));
            break w.subjects(&survivor);
        }
        assert!(Instant::now() < deadline, "{} of {BURST} imported", subjects.len());
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut sorted = subjects;
    sorted.sort();
    let expected: Vec<String> = (0..BURST).map(|i| format!("pair {i:03}")).collect();
    assert_eq!(sorted, expected, "every message exactly once across the two nodes (killed after {before})");
    assert_eq!(holder(), Some(survivor.child.id()), "the survivor holds the lease");
    survivor.stop();
}

/// Sessions of `USER` that Dovecot logged as opened and as ended.
fn sessions_opened_and_ended(dovecot: &Dovecot) -> (usize, usize) {
    let log = dovecot.log();
    let opened = log.lines().filter(|l| l.contains("imap-login: ") && l.contains("Login: user=<agent>")).count();
    let ended = log
        .lines()
        .filter(|l| l.contains(&format!("imap({USER})")) && (l.contains("Disconnected") || l.contains("Logged out")))
        .count();
    (opened, ended)
}

/// `domain set-backend` takes effect on a running server, without a restart:
/// switched from native to imap, the server starts following the mailbox and
/// mail delivered there reaches the agent; switched back to native, the
/// follower stops (Dovecot logs its session's end) and mail delivered to the
/// mailbox afterwards is not imported.
#[test]
fn a_backend_set_on_a_running_server_starts_and_stops_without_a_restart() {
    let w = world();
    let server = w.serve(&[]);
    assert_ne!(w.domain_row()["backend"], "imap", "{}", w.domain_row());
    let set = w.set_imap_backend(PASSWORD, 1);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    w.wait_for_backend_status("running");
    let appended = wait_output(w.append(&[w.signed("Switched on", "Your verification code is 135791.\r\n")], 0));
    assert!(appended.status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.subjects(&server).iter().any(|s| s == "Switched on") {
        assert!(Instant::now() < deadline, "mail at the provider never reached the inbox after the switch");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sessions_opened_and_ended(&w.dovecot).0 >= 2, "the follower and the appender logged in:\n{}", w.dovecot.log());

    let out = agentkeys(w.data()).args(["domain", "set-backend", "agents.localhost", "--backend", "native"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The follower's IMAP session ends: every session Dovecot opened is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (opened, ended) = sessions_opened_and_ended(&w.dovecot);
        if opened == ended {
            break;
        }
        assert!(Instant::now() < deadline, "the IMAP follower is still connected: {opened} sessions, {ended} ended\n{}", w.dovecot.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = sessions_opened_and_ended(&w.dovecot).0;
    let appended = wait_output(w.append(&[w.signed("Switched off", "Your verification code is 246802.\r\n")], 0));
    assert!(appended.status.success());
    // Several reload intervals (0.5 s here) and far longer than IDLE's delivery (< 2 s).
    std::thread::sleep(Duration::from_secs(4));
    assert!(!w.subjects(&server).iter().any(|s| s == "Switched off"), "imported while the domain is native");
    assert_eq!(sessions_opened_and_ended(&w.dovecot).0, opened + 1, "only the appender logged in again");
    server.stop();
}

/// On two nodes sharing one PostgreSQL database (ports 23640–23659 for the
/// bucket), a backend set while both run is followed by exactly one node
/// (the follower lease), each message imported once; set back to native,
/// both nodes stop: every IMAP session ends and nobody holds the lease.
#[test]
fn on_two_nodes_a_backend_set_while_running_is_followed_once_and_stopped_by_both() {
    use std::os::unix::fs::PermissionsExt as _;
    const BURST: usize = 8;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime.block_on(agentkeys_store::postgres::TempDatabase::create()).expect("a PostgreSQL for tests");
    drop(runtime);
    let s3 = S3sFs::start("mail", 23640..=23659);
    let mut shared: Vec<(String, String)> = s3.serve_env("ak").into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    shared.push(("AGENTKEYS_DATABASE_URL".to_owned(), db.url().to_owned()));
    let w = world_on(Some(&shared));
    let node_b = tempfile::tempdir().unwrap();
    share_deployment(node_b.path(), &shared);
    let seed = node_b.path().join("master.seed");
    std::fs::copy(w.data().join("master.seed"), &seed).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = w.cert.display().to_string();
    let dns = w.dns.nameserver();
    let env = [
        ("AGENTKEYS_DELIVERY_CA_FILE", ca.as_str()),
        ("AGENTKEYS_DNS_NAMESERVERS", dns.as_str()),
        ("AGENTKEYS_BACKENDS_BACKOFF_SCALE", "0.02"),
    ];
    let servers = [Server::start(w.data(), &env), Server::start(node_b.path(), &env)];
    let holder = || -> Option<u32> {
        let out = Command::new("psql")
            .args([db.url(), "-XAtc", "SELECT holder FROM backend_leases WHERE domain = 'agents.localhost'"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        text.split('/').nth(1).and_then(|pid| pid.parse().ok())
    };

    let set = w.set_imap_backend(PASSWORD, 1);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    w.wait_for_backend_status("running");
    let holding = holder().expect("one node holds the lease");
    assert!(servers.iter().any(|s| s.child.id() == holding), "the holder is one of our nodes");
    let messages: Vec<String> = (0..BURST).map(|i| w.signed(&format!("hot {i:03}"), "hello\r\n")).collect();
    assert!(wait_output(w.append(&messages, 20)).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.subjects(&servers[0]).len() < BURST {
        assert!(Instant::now() < deadline, "{} of {BURST} imported", w.subjects(&servers[0]).len());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sorted = w.subjects(&servers[1]);
    sorted.sort();
    let expected: Vec<String> = (0..BURST).map(|i| format!("hot {i:03}")).collect();
    assert_eq!(sorted, expected, "each message once across the two nodes");
    assert_eq!(holder(), Some(holding), "the lease stayed with one node");

    let out = agentkeys(w.data()).args(["domain", "set-backend", "agents.localhost", "--backend", "native"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (opened, ended) = sessions_opened_and_ended(&w.dovecot);
        if opened == ended && holder().is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "still following: {opened} sessions, {ended} ended, lease {:?}", holder());
        std::thread::sleep(Duration::from_millis(100));
    }
    let [first, second] = servers;
    first.stop();
    second.stop();
}

/// `tests/resources/oauth_provider.py`: the token endpoint our server asks
/// and the introspection endpoint Dovecot asks, counting token requests.
struct OAuthProvider {
    port: u16,
    count_file: PathBuf,
    _process: Peer,
}

const CLIENT_ID: &str = "client-4711.apps.test";
const CLIENT_SECRET: &str = "client-secret-Zq81";
const REFRESH_TOKEN: &str = "refresh-token-1//0gXk";

impl OAuthProvider {
    /// Issues access tokens living `lifetime_s` for [`REFRESH_TOKEN`].
    fn start(dir: &Path, lifetime_s: u64) -> OAuthProvider {
        use std::io::BufRead as _;
        let count_file = dir.join(format!("oauth-requests-{}", ulid::Ulid::new()));
        let mut child = Command::new("python3")
            .arg(resource("oauth_provider.py"))
            .args([&lifetime_s.to_string(), REFRESH_TOKEN, CLIENT_ID, CLIENT_SECRET, USER])
            .arg(&count_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("port ").unwrap().parse().unwrap();
        OAuthProvider { port, count_file, _process: Peer(child) }
    }

    /// Token requests received so far.
    fn token_requests(&self) -> usize {
        std::fs::read_to_string(&self.count_file).map(|t| t.trim().parse().unwrap()).unwrap_or(0)
    }
}

impl World {
    /// `agentkeys domain set-backend … --oauth2-*` with `refresh_token`.
    fn set_xoauth2_backend(&self, oauth: &OAuthProvider, refresh_token: &str) -> Output {
        let (secret, refresh) = (self.data().join("client-secret"), self.data().join("refresh-token"));
        std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
        std::fs::write(&refresh, format!("{refresh_token}\n")).unwrap();
        let out = agentkeys(self.data())
            .args(["domain", "set-backend", "agents.localhost", "--backend", "imap", "--imap-host", "127.0.0.1"])
            .args(["--imap-port", &self.dovecot.imap.to_string(), "--smtp-host", "127.0.0.1", "--smtp-port", "1"])
            .args(["--username", USER, "--deliver-to", &self.inbox])
            .args(["--oauth2-token-url", &format!("http://127.0.0.1:{}/token", oauth.port), "--oauth2-client-id", CLIENT_ID])
            .arg("--oauth2-client-secret-file")
            .arg(&secret)
            .arg("--oauth2-refresh-token-file")
            .arg(&refresh)
            .output()
            .unwrap();
        std::fs::remove_file(&secret).unwrap();
        std::fs::remove_file(&refresh).unwrap();
        out
    }

    /// Appends one signed OTP mail and waits for `mail otp --wait` to print its code.
    fn otp_round(&self, server: &Server, code: &str) {
        let waiter = self
            .mail(server, &["otp", "--wait", "--from", SERVICE, "--timeout", "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let appended = wait_output(self.append(&[self.signed("Your code", &format!("Your verification code is {code}"))], 0));
        assert!(appended.status.success());
        let out = wait_output(waiter);
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), self.dovecot.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), code);
    }

    /// Ends the provider's IMAP sessions of `USER` (the follower reconnects).
    fn kick(&self) {
        let status = Command::new("doveadm")
            .arg("-c")
            .arg(self.dovecot.dir.join("dovecot.conf"))
            .args(["kick", USER])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "doveadm kick");
    }
}

/// XOAUTH2: the server gets an access token with the refresh-token grant, logs
/// in with AUTHENTICATE XOAUTH2 (Dovecot checks the token with the provider's
/// introspection endpoint), and mail reaches `mail otp --wait`. Tokens live
/// 2 s: after one expired, a new session gets a new token and keeps importing.
/// No secret is stored or printed in the clear.
#[test]
fn an_xoauth2_login_imports_mail_and_refreshes_its_expired_token() {
    let dir = tempfile::tempdir().unwrap();
    let oauth = OAuthProvider::start(dir.path(), 2);
    let w = world_full(None, Some(oauth.port));
    let set = w.set_xoauth2_backend(&oauth, REFRESH_TOKEN);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let server = w.serve(&[]);
    w.wait_for_backend_status("running");
    assert_eq!(oauth.token_requests(), 1);
    w.otp_round(&server, "314159");
    assert!(w.dovecot.log().contains("method=XOAUTH2"), "{}", w.dovecot.log());
    // Past the token's life; the session Dovecot ends makes the follower log in again.
    std::thread::sleep(Duration::from_secs(3));
    w.kick();
    w.otp_round(&server, "271828");
    assert!(oauth.token_requests() >= 2, "the expired token was not refreshed");
    let log: Vec<String> = server.stdout_lines.try_iter().collect();
    let everything = format!("{} {} {}", run_json(w.data(), &["audit", "list"]), log.join("\n"), w.domain_row());
    for secret in [CLIENT_SECRET, REFRESH_TOKEN, "Bearer"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    server.stop();
}

/// A revoked refresh token (the endpoint answers 400 invalid_grant) is a
/// refused login: status `auth_failed` naming the reason, one audit record,
/// and the endpoint is asked again only after the backoff, not in a loop.
#[test]
fn a_revoked_refresh_token_is_reported_and_not_retried_in_a_tight_loop() {
    let dir = tempfile::tempdir().unwrap();
    let oauth = OAuthProvider::start(dir.path(), 3600);
    let w = world_full(None, Some(oauth.port));
    let set = w.set_xoauth2_backend(&oauth, "revoked-refresh-token");
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    // AUTH_FAILED_BACKOFF (15 min) x 0.005 = 4.5 s between attempts.
    let server = w.serve(&[]);
    let row = w.wait_for_backend_status("auth_failed");
    let detail = row["backend_detail"].as_str().unwrap();
    assert!(detail.contains("invalid_grant") && detail.contains("OAuth2 refresh token"), "{detail}");
    let first = oauth.token_requests();
    assert!(first >= 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(oauth.token_requests() - first <= 1, "{} token requests in 3 s: a tight loop", oauth.token_requests() - first);
    let deadline = Instant::now() + Duration::from_secs(30);
    while oauth.token_requests() <= first {
        assert!(Instant::now() < deadline, "never retried after the backoff");
        std::thread::sleep(Duration::from_millis(200));
    }
    let audit = run_json(w.data(), &["audit", "list"]);
    let refused = audit.as_array().unwrap().iter().filter(|r| r["operation"] == "backend.auth_failed").count();
    assert_eq!(refused, 1, "{audit}");
    assert_eq!(w.dovecot.log().matches("method=XOAUTH2").count(), 0, "no login is tried without a token");
    server.stop();
}

/// The CLI refuses an OAuth2 setup that is incomplete, mixed with a password,
/// or with a plain-http endpoint off loopback.
#[test]
fn xoauth2_options_are_checked() {
    let w = world();
    let base = ["domain", "set-backend", "agents.localhost", "--backend", "imap", "--imap-host", "127.0.0.1", "--smtp-host", "127.0.0.1", "--username", USER];
    let file = w.data().join("some-secret");
    std::fs::write(&file, "s\n").unwrap();
    let run = |extra: &[&str]| {
        let out = agentkeys(w.data()).args(base).args(["--deliver-to", &w.inbox]).args(extra).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let f = file.to_str().unwrap();
    let e = run(&["--oauth2-token-url", "http://oauth.example.com/token", "--oauth2-client-id", "c", "--oauth2-client-secret-file", f, "--oauth2-refresh-token-file", f]);
    assert!(e.contains("must be https"), "{e}");
    let e = run(&["--oauth2-token-url", "https://oauth.example.com/token", "--oauth2-client-id", "c", "--oauth2-client-secret-file", f]);
    assert!(e.contains("--oauth2-refresh-token-file"), "{e}");
    let e = run(&["--oauth2-token-url", "https://oauth.example.com/token", "--password-file", f]);
    assert!(e.contains("cannot be used with"), "{e}");
}
