//! Webhooks through the real server and binary (issue 13 §1), received by a
//! Python receiver that verifies every request with the Standard Webhooks
//! reference library (tests/resources/webhook_receiver.py), and a real
//! receiving MTA (aiosmtpd, tests/resources/smtp_sink.py) for the outbound events.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const OWNER_A: &str = "0x00000000000000000000000000000000000000a0";
const OWNER_B: &str = "0x00000000000000000000000000000000000000b0";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const CAROL: &str = "0x00000000000000000000000000000000000000b1";

/// The receiver, killed on drop.
struct Receiver {
    child: Child,
    stdin: ChildStdin,
    replies: BufReader<std::process::ChildStdout>,
    port: u16,
    log: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Receiver {
        let log = dir.join(format!("{name}.jsonl"));
        let mut child = Command::new("python3")
            .arg(resource("webhook_receiver.py"))
            .arg(&log)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 webhook_receiver.py (run scripts/test.sh, which installs standardwebhooks)");
        let mut replies = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("webhook_receiver.py printed {line:?}, not a port"));
        let stdin = child.stdin.take().unwrap();
        Receiver { child, stdin, replies, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        let mut ok = String::new();
        self.replies.read_line(&mut ok).unwrap();
        assert_eq!(ok.trim(), "OK");
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Requests answered 200, by event type.
    fn delivered(&self) -> BTreeMap<String, Vec<Value>> {
        let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in self.requests().into_iter().filter(|r| r["status"] == 200) {
            out.entry(r["body"]["type"].as_str().unwrap_or("?").to_owned()).or_default().push(r);
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The receiving MTA, killed on drop.
struct Sink(Child, u16);

impl Sink {
    fn start(dir: &Path, args: &[&str]) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource("smtp_sink.py"))
            .arg(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 smtp_sink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap();
        Sink(child, port)
    }
}

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

/// Webhook settings every server here runs with: fast retries, loopback allowed.
fn webhook_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AGENTKEYS_WEBHOOKS_ALLOW_PRIVATE", "true".to_owned()),
        // 5 s → 5 ms, the 24 h period → 86 s.
        ("AGENTKEYS_WEBHOOKS_BACKOFF_SCALE", "0.001".to_owned()),
        ("AGENTKEYS_WEBHOOKS_EXPIRY_CHECK_INTERVAL", "1s".to_owned()),
        ("AGENTKEYS_WEBHOOKS_EXPIRY_NOTICE", "400d".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn start(data_dir: &Path, env: &[(&'static str, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(data_dir, &env)
}

fn api(server: &Server) -> String {
    format!("http://{}", server.http)
}

/// `agentkeys webhook ARGS --server … --json` as `owner`.
fn webhook(server: &Server, owner: &str, args: &[&str]) -> std::process::Output {
    let url = api(server);
    let mut all = vec!["webhook"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &url, "--json"]);
    owner_run(&server.data_dir, owner, &all)
}

fn webhook_ok(server: &Server, owner: &str, args: &[&str]) -> Value {
    let out = webhook(server, owner, args);
    assert!(out.status.success(), "webhook {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mx_message(from: &str, to: &str, subject: &str) -> String {
    format!("From: Sender <{from}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.net>\r\n\r\nthe body must never reach a webhook 8d1f\r\n")
}

fn deliveries(server: &Server, owner: &str, id: &str) -> Vec<Value> {
    webhook_ok(server, owner, &["deliveries", id]).as_array().unwrap().clone()
}

#[test]
fn every_event_type_arrives_signed_and_verifies_with_the_reference_library() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    // Phase 1: a sink that defers the first DATA, then accepts.
    let sink = Sink::start(&d.join("sink1"), &["--tempfail", "1"]);
    let delivery = vec![
        ("AGENTKEYS_DELIVERY_ENABLED", "true".to_owned()),
        ("AGENTKEYS_SMARTHOST", format!("127.0.0.1:{}", sink.1)),
        ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001".to_owned()),
    ];
    let server = start(d, &webhook_env(&delivery));
    let mut receiver = Receiver::start(d, "all", &[]);
    let all_events = "message.received,message.sent,message.delivered,message.deferred,message.bounced,grant.expiring,key.expiring";
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/hooks?src=ak"), "--events", all_events]);
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_") && secret.starts_with("whsec_"), "{created}");
    receiver.command(&format!("SECRET {secret}"));
    // The secret is shown once: the list never has it.
    let listed = webhook_ok(&server, OWNER_A, &["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&secret[6..]), "{listed}");

    // message.received over the MX.
    assert_eq!(send_raw(server.inbound, "sender@example.net", &alice, &mx_message("sender@example.net", &alice, "hello-webhooks")).unwrap(), 250);
    // message.sent, .deferred, .delivered over the HTTP send door.
    let body = json!({"to": ["bob@remote.example"], "subject": "out", "text": "hi"}).to_string();
    let (status, _, answer) = curl("POST", &format!("{}/v1/inboxes/{alice}/send", api(&server)), Some(&alice_key), Some(&body));
    assert_eq!(status, 202, "{answer}");
    for event in ["message.received", "message.sent", "message.deferred", "message.delivered", "grant.expiring", "key.expiring"] {
        wait_for(event, Duration::from_secs(60), || receiver.delivered().contains_key(event));
    }
    server.stop();
    drop(sink);

    // Phase 2: a sink that refuses every recipient: message.bounced (and the
    // DSN in alice's inbox is another message.received).
    let sink = Sink::start(&d.join("sink2"), &["--reject"]);
    let delivery = vec![
        ("AGENTKEYS_DELIVERY_ENABLED", "true".to_owned()),
        ("AGENTKEYS_SMARTHOST", format!("127.0.0.1:{}", sink.1)),
        ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001".to_owned()),
    ];
    let server = start(d, &webhook_env(&delivery));
    let (status, _, answer) = curl("POST", &format!("{}/v1/inboxes/{alice}/send", api(&server)), Some(&alice_key), Some(&body));
    assert_eq!(status, 202, "{answer}");
    wait_for("message.bounced", Duration::from_secs(60), || receiver.delivered().contains_key("message.bounced"));

    let got = receiver.delivered();
    for (event, requests) in &got {
        for r in requests {
            assert_eq!(r["verified"], true, "{event}: the reference library verifies the signature: {r}");
            assert!(r["id"].as_str().unwrap().starts_with("msg_"), "{r}");
            assert_eq!(r["body"]["type"], *event);
            assert_eq!(r["headers"]["content-type"], "application/json");
        }
    }
    let received = &got["message.received"].iter().find(|r| r["body"]["data"]["subject"] == "hello-webhooks").expect("the MX message")["body"]["data"];
    assert_eq!(received["inbox"], alice.as_str());
    assert_eq!(received["from"], "sender@example.net");
    assert_eq!(received["authenticated"], false, "no DKIM/DMARC pass for example.net here");
    assert!(received["size"].as_u64().unwrap() > 0 && received["message_id"].as_str().is_some(), "{received}");
    let sent = &got["message.sent"][0]["body"]["data"];
    assert_eq!(sent["recipients"], json!(["bob@remote.example"]));
    assert_eq!(got["message.deferred"][0]["body"]["data"]["recipient"], "bob@remote.example");
    assert!(got["message.bounced"][0]["body"]["data"]["response"].as_str().unwrap().contains("550"), "{}", got["message.bounced"][0]);
    assert_eq!(got["grant.expiring"][0]["body"]["data"]["inbox"], alice.as_str());
    assert!(got["key.expiring"][0]["body"]["data"]["key_id"].as_str().unwrap().starts_with("key_"));
    // Never the body of a message.
    assert!(!std::fs::read_to_string(&receiver.log).unwrap().contains("8d1f"), "a message body leaked into a webhook");
    // Once per credential and expiry, although the check runs every second.
    std::thread::sleep(Duration::from_secs(3));
    let got = receiver.delivered();
    assert_eq!((got["grant.expiring"].len(), got["key.expiring"].len()), (1, 1));
    // Every event is one delivery id, delivered once.
    let mut ids: Vec<&str> = got.values().flatten().map(|r| r["id"].as_str().unwrap()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "each delivery id answered 200 once");
    let log = deliveries(&server, OWNER_A, &id);
    assert!(log.iter().all(|d| d["state"] == "delivered"), "{log:?}");
    assert_eq!(log.len(), n);
}

#[test]
fn a_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    let server = start(d, &webhook_env(&[]));
    let mut receiver = Receiver::start(d, "flaky", &["--fail-first", "3"]);
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/"), "--events", "message.received", "--inbox", &alice]);
    receiver.command(&format!("SECRET {}", created["secret"].as_str().unwrap()));
    let id = created["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, &format!("m{i}"))).unwrap(), 250);
    }
    wait_for("three deliveries", Duration::from_secs(60), || receiver.delivered().get("message.received").is_some_and(|r| r.len() == 3));
    // Let any stray retry arrive before counting.
    std::thread::sleep(Duration::from_secs(2));
    let requests = receiver.requests();
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in requests {
        by_id.entry(r["id"].as_str().unwrap().to_owned()).or_default().push(r);
    }
    assert_eq!(by_id.len(), 3, "one delivery id per message");
    for (wid, attempts) in &by_id {
        let statuses: Vec<&Value> = attempts.iter().map(|r| &r["status"]).collect();
        assert_eq!(statuses, [500, 500, 500, 200], "{wid}: 500 three times, then 200 once, then nothing");
        assert!(attempts.iter().all(|r| r["verified"] == true), "{wid}: every attempt is signed");
        let bodies: Vec<&Value> = attempts.iter().map(|r| &r["body"]).collect();
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{wid}: every attempt sends the same body");
    }
    let log = deliveries(&server, OWNER_A, &id);
    assert_eq!(log.len(), 3);
    for d in &log {
        assert_eq!((d["state"].as_str(), d["attempts"].as_u64(), d["last_status"].as_u64()), (Some("delivered"), Some(4), Some(200)), "{d}");
    }
    // Redelivery sends the same delivery id again.
    let first = log[0]["id"].as_str().unwrap().to_owned();
    let again = webhook_ok(&server, OWNER_A, &["redeliver", &first]);
    assert_eq!(again["state"], "pending");
    wait_for("the redelivery", Duration::from_secs(30), || receiver.requests().iter().filter(|r| r["id"] == first.as_str()).count() == 5);
    assert_eq!(receiver.requests().iter().rev().find(|r| r["id"] == first.as_str()).unwrap()["status"], 200);
}

#[test]
fn another_owner_cannot_see_delete_rotate_or_redeliver_a_subscription() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    let (_, _, carol, _) = provision(d, OWNER_B, CAROL, "carol");
    let server = start(d, &webhook_env(&[]));
    let mut receiver = Receiver::start(d, "a", &[]);
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/"), "--events", "message.received"]);
    receiver.command(&format!("SECRET {}", created["secret"].as_str().unwrap()));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "x")).unwrap(), 250);
    wait_for("the delivery", Duration::from_secs(60), || !receiver.delivered().is_empty());
    let delivery = deliveries(&server, OWNER_A, &id)[0]["id"].as_str().unwrap().to_owned();

    // Owner B: an empty list, and 404 for A's objects exactly like for missing ones.
    assert_eq!(webhook_ok(&server, OWNER_B, &["list"]), json!([]));
    let missing_hook = "wh_01JAAAAAAAAAAAAAAAAAAAAAAA";
    let missing_delivery = "msg_01JAAAAAAAAAAAAAAAAAAAAAAA";
    for (args, missing) in [
        (vec!["deliveries", id.as_str()], vec!["deliveries", missing_hook]),
        (vec!["delete", id.as_str()], vec!["delete", missing_hook]),
        (vec!["rotate", id.as_str()], vec!["rotate", missing_hook]),
        (vec!["redeliver", delivery.as_str()], vec!["redeliver", missing_delivery]),
    ] {
        let foreign = webhook(&server, OWNER_B, &args);
        let absent = webhook(&server, OWNER_B, &missing);
        let (foreign, absent) = (String::from_utf8_lossy(&foreign.stderr), String::from_utf8_lossy(&absent.stderr));
        assert!(foreign.contains("refused (404 NOT_FOUND)"), "{args:?}: {foreign}");
        assert_eq!(foreign, absent, "{args:?}: another owner's object answers like a missing one");
    }
    // Nor may B subscribe to A's inbox.
    let out = webhook(&server, OWNER_B, &["create", "--url", &receiver.url("/"), "--events", "message.received", "--inbox", &alice]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused (404 NOT_FOUND)"), "{}", String::from_utf8_lossy(&out.stderr));
    // B's own subscription hears nothing of A's mail, and A's subscription nothing of B's.
    let b_hook = webhook_ok(&server, OWNER_B, &["create", "--url", &receiver.url("/b"), "--events", "message.received"]);
    assert_eq!(send_raw(server.inbound, "s@example.net", &carol, &mx_message("s@example.net", &carol, "y")).unwrap(), 250);
    let b_id = b_hook["id"].as_str().unwrap();
    wait_for("B's delivery", Duration::from_secs(60), || deliveries(&server, OWNER_B, b_id).len() == 1);
    assert_eq!(deliveries(&server, OWNER_A, &id).len(), 1, "A's subscription got only A's message");
    // Still A's: A deletes it.
    assert_eq!(webhook_ok(&server, OWNER_A, &["delete", &id])["deleted"], true);
    // The audit log has A's create and delete.
    let audit = owner_json(d, OWNER_A, &["audit", "list", "--server", &api(&server)]);
    let ops: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["operation"].as_str()).filter(|o| o.starts_with("webhook.")).collect();
    assert_eq!(ops, ["webhook.create", "webhook.delete"]);
}

#[test]
fn ssrf_targets_are_refused_at_creation_and_at_connect_time() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    let mut receiver = Receiver::start(d, "ssrf", &[]);
    // Allowed while the operator allows private targets…
    let server = start(d, &webhook_env(&[]));
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/"), "--events", "message.received"]);
    receiver.command(&format!("SECRET {}", created["secret"].as_str().unwrap()));
    let id = created["id"].as_str().unwrap().to_owned();
    server.stop();
    // …refused at creation once it does not,
    let server = start(d, &webhook_env(&[("AGENTKEYS_WEBHOOKS_ALLOW_PRIVATE", "false".to_owned())]));
    let port = receiver.port;
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        "http://[fd00::1]/".to_owned(),
    ] {
        let out = webhook(&server, OWNER_A, &["create", "--url", &url, "--events", "message.received"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("refused (400 INVALID_REQUEST)") && err.contains("public addresses only"), "{url}: {err}");
    }
    for (url, why) in [("ftp://example.com/", "scheme"), ("https://user:pw@example.com/", "password"), ("not a url", "absolute")] {
        let err = String::from_utf8_lossy(&webhook(&server, OWNER_A, &["create", "--url", url, "--events", "message.received"]).stderr).into_owned();
        assert!(err.contains("400") && err.contains(why), "{url}: {err}");
    }
    let err = String::from_utf8_lossy(&webhook(&server, OWNER_A, &["create", "--url", "https://example.com/", "--events", "message.read"]).stderr).into_owned();
    assert!(err.contains("400") && err.contains("not an event type"), "{err}");
    // …and at connect time: the subscription made while allowed never reaches
    // the loopback receiver; its deliveries record why.
    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "z")).unwrap(), 250);
    wait_for("a refused attempt", Duration::from_secs(60), || {
        deliveries(&server, OWNER_A, &id).first().is_some_and(|d| d["attempts"].as_u64() >= Some(1))
    });
    let log = deliveries(&server, OWNER_A, &id);
    assert!(log[0]["last_error"].as_str().unwrap().contains("public addresses only"), "{}", log[0]);
    assert!(log[0]["last_status"].is_null());
    assert!(receiver.requests().is_empty(), "nothing reached the loopback receiver");
}

#[test]
fn a_dead_receiver_neither_fails_nor_blocks_mail_acceptance() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    let server = start(d, &webhook_env(&[("AGENTKEYS_WEBHOOKS_CONCURRENCY", "2".to_owned())]));
    let mut hanging = Receiver::start(d, "hang", &[]);
    hanging.command("MODE hang");
    // Ten subscriptions to a receiver that never answers, one to a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(webhook_ok(&server, OWNER_A, &["create", "--url", &hanging.url(&format!("/{i}")), "--events", "message.received"])["id"].as_str().unwrap().to_owned());
    }
    webhook_ok(&server, OWNER_A, &["create", "--url", &format!("http://127.0.0.1:{closed}/"), "--events", "message.received"]);
    for i in 0..40 {
        let code = send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, &format!("load{i}"))).unwrap();
        assert_eq!(code, 250, "message {i} accepted while every receiver is dead");
    }
    assert_eq!(stored_messages(&server.blobs(), OWNER_A, &alice).len(), 40);
    // The events are recorded, not lost: 40 pending deliveries per subscription.
    wait_for("all deliveries recorded", Duration::from_secs(60), || ids.iter().all(|id| deliveries(&server, OWNER_A, id).len() == 40));
    assert!(deliveries(&server, OWNER_A, &ids[0]).iter().all(|d| d["state"] != "delivered"));
}

#[test]
fn a_killed_server_resumes_pending_deliveries_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    let server = start(d, &webhook_env(&[]));
    let mut receiver = Receiver::start(d, "resume", &[]);
    receiver.command("MODE fail");
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/"), "--events", "message.received"]);
    receiver.command(&format!("SECRET {}", created["secret"].as_str().unwrap()));
    let id = created["id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, &format!("k{i}"))).unwrap(), 250);
    }
    wait_for("failed attempts", Duration::from_secs(60), || {
        let log = deliveries(&server, OWNER_A, &id);
        log.len() == 5 && log.iter().all(|d| d["attempts"].as_u64() >= Some(1))
    });
    server.kill();
    receiver.command("MODE ok");
    let server = start(d, &webhook_env(&[]));
    wait_for("every delivery after the restart", Duration::from_secs(60), || {
        deliveries(&server, OWNER_A, &id).iter().filter(|d| d["state"] == "delivered").count() == 5
    });
    let delivered: Vec<String> = receiver.requests().iter().filter(|r| r["status"] == 200).map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((delivered.len(), unique.len()), (5, 5), "each pending delivery arrived once after the restart");
    assert!(receiver.requests().iter().all(|r| r["verified"] == true));
}

#[test]
fn a_rotated_secret_signs_beside_the_previous_one_during_the_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    let server = start(d, &webhook_env(&[]));
    let mut receiver = Receiver::start(d, "rotate", &[]);
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/"), "--events", "message.received"]);
    let id = created["id"].as_str().unwrap().to_owned();
    receiver.command(&format!("SECRET {}", created["secret"].as_str().unwrap())); // secret 0
    let rotated = webhook_ok(&server, OWNER_A, &["rotate", &id, "--overlap", "1h"]);
    assert!(rotated["webhook"]["previous_secret_until"].is_string(), "{rotated}");
    receiver.command(&format!("SECRET {}", rotated["secret"].as_str().unwrap())); // secret 1
    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "r1")).unwrap(), 250);
    wait_for("the first delivery", Duration::from_secs(60), || receiver.delivered().len() == 1);
    assert_eq!(receiver.requests()[0]["verified_with"], json!([0, 1]), "both secrets sign during the overlap");
    // Ending the overlap: only the newest secret signs.
    let ended = webhook_ok(&server, OWNER_A, &["rotate", &id, "--overlap", "0"]);
    receiver.command(&format!("SECRET {}", ended["secret"].as_str().unwrap())); // secret 2
    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "r2")).unwrap(), 250);
    wait_for("the second delivery", Duration::from_secs(60), || receiver.requests().len() == 2);
    assert_eq!(receiver.requests()[1]["verified_with"], json!([2]));
}

#[test]
fn an_agent_subscribes_under_its_grant_and_only_it_gets_the_body_until_the_grant_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // alice holds read,send on alice@ only; a second inbox of hers has no grant.
    let (_, _, alice, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    let other = run_json(d, &["inbox", "create", "--agent", ALICE, "--name", "ungranted"])["address"].as_str().unwrap().to_owned();
    let server = start(d, &webhook_env(&[]));
    let url = format!("{}/v1/agent/webhooks", api(&server));
    let mut agent_rx = Receiver::start(d, "agent", &[]);
    let mut owner_rx = Receiver::start(d, "owner", &[]);
    let create = |inbox: &str, events: &[&str], body: bool, target: &str| {
        let request = json!({"url": target, "events": events, "inbox": inbox, "include_body": body}).to_string();
        curl("POST", &url, Some(&alice_key), Some(&request))
    };
    // Refused: an inbox no grant covers, owner-wide events, a bad key.
    let (status, _, answer) = create(&other, &["message.received"], false, &agent_rx.url("/"));
    assert_eq!((status, answer["code"].as_str()), (403, Some("NO_GRANT")), "{answer}");
    let (status, _, answer) = create(&alice, &["grant.expiring"], false, &agent_rx.url("/"));
    assert_eq!(status, 400, "{answer}");
    let (status, _, _) = curl("POST", &url, Some("akey_not_a_key"), Some(&json!({"url": agent_rx.url("/"), "events": ["message.received"], "inbox": alice}).to_string()));
    assert_eq!(status, 401);
    // The agent's subscription asks for the body; the owner's does not.
    let (status, _, created) = create(&alice, &["message.received", "message.sent"], true, &agent_rx.url("/agent"));
    assert_eq!(status, 201, "{created}");
    agent_rx.command(&format!("SECRET {}", created["secret"].as_str().unwrap()));
    let agent_hook = created["id"].as_str().unwrap().to_owned();
    assert_eq!((created["webhook"]["agent"].as_str(), created["webhook"]["include_body"].as_bool()), (Some(ALICE), Some(true)));
    let owner_hook = webhook_ok(&server, OWNER_A, &["create", "--url", &owner_rx.url("/owner"), "--events", "message.received"]);
    owner_rx.command(&format!("SECRET {}", owner_hook["secret"].as_str().unwrap()));
    // The agent lists its own only; the owner sees both.
    let (status, _, listed) = curl("GET", &url, Some(&alice_key), None);
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect::<Vec<_>>(), [agent_hook.as_str()]);
    assert_eq!(webhook_ok(&server, OWNER_A, &["list"]).as_array().unwrap().len(), 2);
    // The agent cannot delete the owner's subscription (404 like a missing one).
    let (status, _, _) = curl("DELETE", &format!("{url}/{}", owner_hook["id"].as_str().unwrap()), Some(&alice_key), None);
    assert_eq!(status, 404);

    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "b1")).unwrap(), 250);
    wait_for("both deliveries", Duration::from_secs(60), || !agent_rx.delivered().is_empty() && !owner_rx.delivered().is_empty());
    let agent_got = &agent_rx.delivered()["message.received"][0];
    assert_eq!(agent_got["verified"], true);
    assert!(agent_got["body"]["data"]["text"].as_str().unwrap().contains("8d1f"), "the body for the subscription that asked: {agent_got}");
    assert_eq!(agent_got["body"]["data"]["text_truncated"], false);
    assert!(!std::fs::read_to_string(&owner_rx.log).unwrap().contains("8d1f"), "never the body for one that did not ask");

    // The agent's own delivery log, redelivery and rotation; the owner's
    // subscription and its deliveries answer 404 like missing ones.
    let owner_id = owner_hook["id"].as_str().unwrap();
    let (status, _, log) = curl("GET", &format!("{url}/{agent_hook}/deliveries"), Some(&alice_key), None);
    assert_eq!(status, 200, "{log}");
    let delivery = log[0]["id"].as_str().unwrap().to_owned();
    assert_eq!((log.as_array().unwrap().len(), log[0]["state"].as_str()), (1, Some("delivered")), "{log}");
    let owner_delivery = deliveries(&server, OWNER_A, owner_id)[0]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("{url}/{owner_id}/deliveries"),
        format!("{url}/wh_missing/deliveries"),
    ] {
        let (status, _, answer) = curl("GET", &path, Some(&alice_key), None);
        assert_eq!(status, 404, "{path}: {answer}");
    }
    for path in [
        format!("{url}/{owner_id}/deliveries/{owner_delivery}/redeliver"),
        format!("{url}/{agent_hook}/deliveries/{owner_delivery}/redeliver"),
        format!("{url}/{owner_id}/rotate"),
    ] {
        let (status, _, answer) = curl("POST", &path, Some(&alice_key), None);
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, _, again) = curl("POST", &format!("{url}/{agent_hook}/deliveries/{delivery}/redeliver"), Some(&alice_key), None);
    assert_eq!((status, again["id"].as_str()), (202, Some(delivery.as_str())), "{again}");
    wait_for("the redelivery", Duration::from_secs(60), || {
        agent_rx.requests().iter().filter(|r| r["id"] == delivery.as_str() && r["verified"] == true).count() == 2
    });
    let (status, _, rotated) = curl("POST", &format!("{url}/{agent_hook}/rotate"), Some(&alice_key), Some(r#"{"overlap":60}"#));
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_") && rotated["webhook"]["previous_secret_until"].is_string(), "{rotated}");
    let (status, _, refused) = curl("POST", &format!("{url}/{agent_hook}/rotate"), Some(&alice_key), Some(r#"{"overlap":-1}"#));
    assert_eq!((status, refused["code"].as_str()), (400, Some("INVALID_REQUEST")), "{refused}");

    // The grant revoked: the owner's subscription goes on, the agent's falls silent.
    let grants = run_json(d, &["grant", "list"]);
    let grant = grants.as_array().unwrap().iter().find(|g| g["agent"] == ALICE).unwrap()["id"].as_str().unwrap().to_owned();
    let out = owner_run(d, OWNER_A, &["grant", "revoke", &grant, "--server", &api(&server), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "b2")).unwrap(), 250);
    wait_for("the owner's second delivery", Duration::from_secs(60), || owner_rx.delivered().get("message.received").is_some_and(|r| r.len() == 2));
    // Both events of one feed batch are recorded in one transaction: the agent's log is final.
    let log = deliveries(&server, OWNER_A, &agent_hook);
    assert_eq!(log.len(), 1, "nothing recorded for the agent after the revocation: {log:?}");
    // The agent deletes its own.
    let (status, _, deleted) = curl("DELETE", &format!("{url}/{agent_hook}"), Some(&alice_key), None);
    assert_eq!((status, deleted["deleted"].as_bool()), (200, Some(true)), "{deleted}");
    assert_eq!(webhook_ok(&server, OWNER_A, &["list"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_receiver_down_for_the_whole_retry_period_leaves_the_delivery_failed_after_the_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, alice, _) = provision(d, OWNER_A, ALICE, "alice");
    // 0.0002: the 24 h period is 17.3 s, the schedule (5 s … 8 h) 17.1 s of it.
    let server = start(d, &webhook_env(&[("AGENTKEYS_WEBHOOKS_BACKOFF_SCALE", "0.0002".to_owned())]));
    let mut receiver = Receiver::start(d, "down", &[]);
    receiver.command("MODE fail");
    let created = webhook_ok(&server, OWNER_A, &["create", "--url", &receiver.url("/"), "--events", "message.received"]);
    receiver.command(&format!("SECRET {}", created["secret"].as_str().unwrap()));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(send_raw(server.inbound, "s@example.net", &alice, &mx_message("s@example.net", &alice, "down")).unwrap(), 250);
    wait_for("the delivery to fail for good", Duration::from_secs(90), || {
        deliveries(&server, OWNER_A, &id).first().is_some_and(|d| d["state"] == "failed")
    });
    let log = deliveries(&server, OWNER_A, &id);
    let attempts = log[0]["attempts"].as_u64().unwrap();
    // The first attempt and one per schedule entry that fits in the period:
    // 11 on time; the last retry falls 1% before the period's end, so a worker
    // that polled late may find it past the end (10).
    assert!((10..=11).contains(&attempts), "{}", log[0]);
    assert_eq!((log[0]["last_status"].as_u64(), log[0]["next_attempt_at"].is_null()), (Some(500), true), "{}", log[0]);
    std::thread::sleep(Duration::from_secs(2));
    let requests = receiver.requests();
    assert_eq!(requests.len() as u64, attempts, "no attempt after it failed");
    assert!(requests.iter().all(|r| r["status"] == 500 && r["verified"] == true && r["id"] == log[0]["id"]));
    // Redelivered after it failed: one more attempt with the same id.
    receiver.command("MODE ok");
    webhook_ok(&server, OWNER_A, &["redeliver", log[0]["id"].as_str().unwrap()]);
    wait_for("the redelivery", Duration::from_secs(30), || deliveries(&server, OWNER_A, &id)[0]["state"] == "delivered");
    assert_eq!(deliveries(&server, OWNER_A, &id)[0]["attempts"].as_u64(), Some(attempts + 1));
    assert_eq!(receiver.requests().last().unwrap()["id"], log[0]["id"]);
}
