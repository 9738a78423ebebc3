//! HTTPS everywhere, through the real binary (issue 11 §3): the server serves
//! its API over TLS with its self-signed development certificate; an owner in
//! another HOME enrolls over `https://` (refused until the fingerprint the
//! operator printed is given, then pinned) and manages grants with no flags; an
//! agent in a third HOME pairs over `https://` (the certificate is shown on both
//! screens and pinned), and its first `mail send` right after pairing succeeds
//! with no environment at all, from the CLI and over MCP. A server presenting another certificate is
//! refused by the agent, its submission, and the owner, each naming the URL and
//! the fix. TLS below 1.2 is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Server, run_json};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_agentkeys");
const OWNER: &str = "0x00000000000000000000000000000000000000bb";
const PASSPHRASE: &str = "correct horse battery staple";

/// The HTTPS address and the certificate fingerprint `serve` printed.
fn https_and_fingerprint(server: &Server) -> (String, String) {
    let (mut https, mut fingerprint) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while https.is_none() || fingerprint.is_none() {
        let line = server
            .stdout_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("serve printed no HTTPS listener and fingerprint");
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("HTTPS ") {
            https = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("TLS fingerprint") {
            fingerprint = rest.trim().strip_prefix("SHA-256 ").map(str::to_owned);
        }
    }
    (format!("https://{}", https.unwrap()), fingerprint.unwrap())
}

fn start(data_dir: &Path) -> (Server, String, String) {
    let server = Server::start(data_dir, &[("AGENTKEYS_LISTEN_HTTPS", "127.0.0.1:0")]);
    let (url, fingerprint) = https_and_fingerprint(&server);
    (server, url, fingerprint)
}

/// A command "on another machine": only PATH and HOME, in HOME.
fn elsewhere(home: &Path) -> Command {
    std::fs::create_dir_all(home).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", home).current_dir(home);
    cmd.stdin(Stdio::null());
    cmd
}

fn owner(home: &Path, args: &[&str]) -> Output {
    let pass = home.join("passphrase");
    if !pass.exists() {
        std::fs::create_dir_all(home).unwrap();
        std::fs::write(&pass, PASSPHRASE).unwrap();
    }
    elsewhere(home).args(args).arg("--passphrase-file").arg(&pass).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "unexpected success: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `openssl x509 -fingerprint -sha256` of the server's certificate: an
/// independent computation of what `serve` printed.
fn openssl_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(cert).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit_once('=').unwrap().1.to_owned()
}

/// Pairs an agent living in `home` with the server at `url`, the owner in
/// `owner_home` approving; answers the agent's first and last JSON lines and
/// the owner's approval screen.
fn pair(home: &Path, owner_home: &Path, url: &str) -> (Value, Value, String) {
    let mut child = elsewhere(home)
        .args(["agent", "pair", "--server", url, "--name", "https bot", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first: Value = serde_json::from_str(&rx.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
    let digits = first["confirmation_code"].as_str().unwrap();
    let approve = owner(owner_home, &["approve", first["pair_code"].as_str().unwrap(), "--digits", digits, "--server", url]);
    let screen = String::from_utf8_lossy(&approve.stderr).into_owned();
    ok(&approve);
    let last: Value = serde_json::from_str(&rx.recv_timeout(Duration::from_secs(60)).unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    (first, last, screen)
}

/// `send_message` through `agentkeys mcp` on stdio; answers the tool call's JSON-RPC line.
fn mcp_send(home: &Path, inbox: &str) -> String {
    use std::io::Write as _;
    let mut child = elsewhere(home).arg("mcp").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "send_message",
        "arguments": {"inbox": inbox, "to": [inbox], "subject": "over mcp", "text": "hi"}}});
    let mut stdin = child.stdin.take().unwrap();
    for line in [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"https-test","version":"1"}}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
        call.to_string(),
    ] {
        writeln!(stdin, "{line}").unwrap();
    }
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no MCP answer");
        if line.contains(r#""id":2"#) {
            break line;
        }
    };
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    answer
}

#[test]
fn over_https_the_first_send_after_pairing_works_and_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    let (owner_home, agent_home) = (dir.path().join("owner-home"), dir.path().join("agent-home"));
    let code = run_json(&d, &["owner", "add", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let (server, url, fingerprint) = start(&d);
    assert_eq!(fingerprint, openssl_fingerprint(&d.join("tls/cert.pem")));

    // TLS 1.2 and 1.3 only.
    for (version, accepted) in [("-tls1", false), ("-tls1_1", false), ("-tls1_2", true), ("-tls1_3", true)] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", url.trim_start_matches("https://"), version])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.contains("BEGIN CERTIFICATE"), accepted, "{version}: {text}");
    }

    // The owner, elsewhere: enrolling over a certificate nothing vouches for is
    // refused, naming the URL, the fingerprint and the flag…
    let enroll = ["owner", "enroll", "--server", &url, "--owner", OWNER, "--code", &code];
    let err = refused(&owner(&owner_home, &enroll));
    assert!(err.contains(&url) && err.contains(&fingerprint) && err.contains("--server-fingerprint"), "{err}");
    // …and a wrong fingerprint is no better (the pin is not skippable).
    let wrong = "AB:".repeat(31) + "AB";
    let err = refused(&owner(&owner_home, &[&enroll[..], &["--server-fingerprint", &wrong]].concat()));
    assert!(err.contains(&fingerprint) && err.contains(&wrong) && err.contains("intercepting"), "{err}");
    // With the fingerprint the operator printed it works, and is pinned.
    let out = ok(&owner(&owner_home, &[&enroll[..], &["--server-fingerprint", &fingerprint]].concat()));
    assert!(out.contains(&fingerprint), "{out}");
    let known: Value =
        serde_json::from_slice(&std::fs::read(owner_home.join(".config/agentkeys/known_servers.json")).unwrap()).unwrap();
    assert_eq!(known[&url], fingerprint.as_str());

    // The agent, in a third HOME, pairs over HTTPS: both screens show the certificate.
    let (first, last, screen) = pair(&agent_home, &owner_home, &url);
    assert_eq!(first["server_fingerprint"], fingerprint.as_str(), "{first}");
    // The owner's screen shows the certificate to compare, never the digits (the owner types them).
    assert!(screen.contains(&fingerprint) && !screen.contains(first["confirmation_code"].as_str().unwrap()), "{screen}");
    assert_eq!(last["status"], "approved", "{last}");
    assert_eq!(last["send_via"], "smtp", "submission is reachable and pinned: {last}");
    assert_eq!(last["submission"], format!("127.0.0.1:{}", server.submission.port()).as_str());
    let config: Value =
        serde_json::from_slice(&std::fs::read(agent_home.join(".config/agentkeys/agent.json")).unwrap()).unwrap();
    assert_eq!((config["server"].as_str(), config["server_fingerprint"].as_str()), (Some(url.as_str()), Some(fingerprint.as_str())));
    let agent_id = last["agent_id"].as_str().unwrap().to_owned();

    // The owner, in their own HOME, makes the agent an inbox and grants it over
    // HTTPS with no TLS flag (the pin), without the operator; lists show both.
    let created = ok(&owner(&owner_home, &["inbox", "create", "--agent", &agent_id, "--name", "signup", "--server", &url, "--json"]));
    let inbox = serde_json::from_str::<Value>(&created).unwrap()["address"].as_str().unwrap().to_owned();
    assert_eq!(inbox, "signup@agents.localhost");
    let inboxes = ok(&owner(&owner_home, &["inbox", "list", "--server", &url, "--json"]));
    assert!(inboxes.contains(&inbox), "{inboxes}");
    let agents = ok(&owner(&owner_home, &["agent", "list", "--server", &url, "--json"]));
    assert!(agents.contains(&agent_id), "{agents}");
    ok(&owner(&owner_home, &["grant", "create", "--agent", &agent_id, "--inbox", &inbox, "--scopes", "read,send", "--server", &url]));
    let grants = ok(&owner(&owner_home, &["grant", "list", "--server", &url, "--json"]));
    assert!(grants.contains(&inbox), "{grants}");

    // The first send after pairing: no environment but HOME and PATH.
    let sent = ok(&elsewhere(&agent_home).args(["mail", "send", "--to", &inbox, "--subject", "first", "--text", "hi", "--json"]).output().unwrap());
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["via"], "smtp", "{sent}");
    let listed = ok(&elsewhere(&agent_home).args(["mail", "list", "--json"]).output().unwrap());
    assert!(listed.contains("first"), "{listed}");
    // And over MCP (stdio JSON-RPC), the same: `send_message` with nothing set.
    let answer = mcp_send(&agent_home, &inbox);
    assert!(answer.contains(r#""isError":false"#) && answer.contains(r#"\"via\": \"smtp\""#), "{answer}");

    // Another server (another self-signed certificate) at the agent's and owner's URLs.
    let d2 = dir.path().join("data2");
    std::fs::create_dir(&d2).unwrap();
    let (other, other_url, other_fingerprint) = start(&d2);
    assert_ne!(other_fingerprint, fingerprint);
    let agent_config = agent_home.join(".config/agentkeys/agent.json");
    let mut moved = config.clone();
    moved["server"] = Value::from(other_url.as_str());
    std::fs::write(&agent_config, serde_json::to_vec(&moved).unwrap()).unwrap();
    let err = refused(&elsewhere(&agent_home).args(["mail", "list"]).output().unwrap());
    assert!(
        err.contains(&other_url) && err.contains(&other_fingerprint) && err.contains(&fingerprint) && err.contains("agentkeys agent pair"),
        "{err}"
    );
    // Submission is pinned too.
    moved["server"] = Value::from(url.as_str());
    moved["submission"] = Value::from(format!("127.0.0.1:{}", other.submission.port()));
    std::fs::write(&agent_config, serde_json::to_vec(&moved).unwrap()).unwrap();
    let err = refused(&elsewhere(&agent_home).args(["mail", "send", "--to", &inbox, "--text", "x"]).output().unwrap());
    assert!(err.contains("submission") && err.contains(&other_fingerprint) && err.contains("agentkeys agent pair"), "{url} {other_url} {err}");
    // The owner: the pin for this URL does not fit the other server's certificate.
    let mut known = known.clone();
    known[&other_url] = Value::from(fingerprint.as_str());
    std::fs::write(owner_home.join(".config/agentkeys/known_servers.json"), serde_json::to_vec(&known).unwrap()).unwrap();
    let err = refused(&owner(&owner_home, &["grant", "list", "--server", &other_url]));
    assert!(err.contains(&other_url) && err.contains(&other_fingerprint) && err.contains("--server-fingerprint"), "{err}");
    // --ca-file with the other server's certificate: TLS is trusted (the owner is
    // simply unknown there, so the signed request itself is refused).
    let cert = d2.join("tls/cert.pem");
    let err = refused(&owner(&owner_home, &["grant", "list", "--server", &other_url, "--ca-file", cert.to_str().unwrap()]));
    assert!(err.contains("refused (") && !err.contains("certificate"), "{err}");
    drop(other);
    drop(server);
}

#[test]
fn paired_over_plain_http_without_a_trusted_submission_certificate_the_agent_sends_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    let (owner_home, agent_home) = (dir.path().join("owner-home"), dir.path().join("agent-home"));
    let code = run_json(&d, &["owner", "add", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let server = Server::start(&d, &[]);
    let url = format!("http://{}", server.http);
    ok(&owner(&owner_home, &["owner", "enroll", "--server", &url, "--owner", OWNER, "--code", &code]));
    let (first, last, screen) = pair(&agent_home, &owner_home, &url);
    assert!(first["server_fingerprint"].is_null(), "{first}");
    assert!(screen.contains("server certificate: not seen"), "{screen}");
    // STARTTLS with the self-signed certificate cannot be checked: the HTTP send route.
    assert_eq!(last["send_via"], "http", "{last}");
    let agent_id = last["agent_id"].as_str().unwrap().to_owned();
    let inbox = run_json(&d, &["inbox", "create", "--agent", &agent_id, "--name", "plain"])["address"].as_str().unwrap().to_owned();
    ok(&owner(&owner_home, &["grant", "create", "--agent", &agent_id, "--inbox", &inbox, "--scopes", "read,send", "--server", &url]));
    let sent = ok(&elsewhere(&agent_home).args(["mail", "send", "--to", &inbox, "--text", "hi", "--json"]).output().unwrap());
    assert!(sent.contains("\"via\":\"http\""), "{sent}");
}

/// An operator-supplied certificate (`tls.cert`/`tls.key`, here issued by a
/// test CA for `localhost`) is the one HTTPS serves and `serve` prints; an
/// owner elsewhere who does not trust that CA is refused, shown its
/// fingerprint; with the CA (`--ca-file`, no fingerprint) they enroll and then
/// manage inboxes and grants with no TLS flag.
#[test]
fn an_operator_supplied_certificate_is_served_and_trusted_through_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    let certs = dir.path().join("certs");
    common::python("test_ca.py", &[certs.display().to_string(), "server=localhost".to_owned()]);
    let (cert, key, ca) = (certs.join("server.pem"), certs.join("server.key"), certs.join("ca.pem"));
    let code = run_json(&d, &["owner", "add", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let agent = run_json(&d, &["agent", "add", "--owner", OWNER])["id"].as_str().unwrap().to_owned();
    let server = Server::start(
        &d,
        &[
            ("AGENTKEYS_LISTEN_HTTPS", "127.0.0.1:0"),
            ("AGENTKEYS_TLS_CERT", cert.to_str().unwrap()),
            ("AGENTKEYS_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    let (url, fingerprint) = https_and_fingerprint(&server);
    assert_eq!(fingerprint, openssl_fingerprint(&cert), "serve presents the operator's certificate");
    // The certificate names localhost, not the address.
    let url = url.replace("https://127.0.0.1:", "https://localhost:");

    let owner_home = dir.path().join("owner-home");
    let enroll = ["owner", "enroll", "--server", &url, "--owner", OWNER, "--code", &code];
    let err = refused(&owner(&owner_home, &enroll));
    assert!(err.contains(&url) && err.contains(&fingerprint), "{err}");
    let ca_file = ca.to_str().unwrap();
    ok(&owner(&owner_home, &[&enroll[..], &["--ca-file", ca_file]].concat()));
    let created = ok(&owner(&owner_home, &["inbox", "create", "--agent", &agent, "--name", "ops", "--server", &url, "--json"]));
    let inbox = serde_json::from_str::<Value>(&created).unwrap()["address"].as_str().unwrap().to_owned();
    ok(&owner(&owner_home, &["grant", "create", "--agent", &agent, "--inbox", &inbox, "--scopes", "read", "--server", &url]));
    let grants = ok(&owner(&owner_home, &["grant", "list", "--server", &url, "--json"]));
    assert!(grants.contains(&inbox), "{grants}");
    drop(server);
}
