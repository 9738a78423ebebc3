//! The real server process with Python's smtplib as the client: inbound MX,
//! submission over STARTTLS and implicit TLS, local delivery, limits, relay.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Server, provision, python, run_json, stored_messages};
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const OWNER_B: &str = "0x000000000000000000000000000000000000000b";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const BOB: &str = "0x00000000000000000000000000000000000000a2";
const CAROL: &str = "0x00000000000000000000000000000000000000b1";

struct World {
    _dir: tempfile::TempDir,
    server: Server,
    alice: (String, String),
    bob: (String, String),
}

fn world(extra_env: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, alice, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    let (_, _, bob, bob_key) = provision(d, OWNER_A, BOB, "bob");
    provision(d, OWNER_B, CAROL, "carol");
    run_json(d, &["inbox", "create", "--agent", CAROL, "--name", "off"]);
    run_json(d, &["inbox", "set-status", "off@agents.localhost", "disabled"]);
    let server = Server::start(d, extra_env);
    World { _dir: dir, server, alice: (alice, alice_key), bob: (bob, bob_key) }
}

fn smtp(plan: Value) -> Value {
    serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap()
}

fn codes(result: &Value) -> Vec<i64> {
    result["steps"].as_array().unwrap().iter().map(|s| s[0].as_i64().unwrap()).collect()
}

fn text(result: &Value, i: usize) -> String {
    result["steps"][i][1].as_str().unwrap().to_owned()
}

#[test]
fn mx_stores_one_copy_per_envelope_recipient() {
    let w = world(&[]);
    let r = smtp(json!({"port": w.server.inbound.port(), "steps": [
        ["mail", "sender@example.net"],
        ["rcpt", "alice@agents.localhost"],
        ["rcpt", "Bob@Agents.Localhost"],
        // The To: header names carol; routing must ignore it.
        ["data", {"from": "sender@example.net", "to": "carol@agents.localhost", "subject": "hello-mx"}],
    ]}));
    assert_eq!(codes(&r), [250, 250, 250, 250], "{r}");
    let blobs = w.server.blobs();
    for inbox in ["alice@agents.localhost", "bob@agents.localhost"] {
        let files = stored_messages(&blobs, OWNER_A, inbox);
        assert_eq!(files.len(), 1, "{inbox}: {files:?}");
        let body = std::fs::read_to_string(&files[0]).unwrap();
        // Our verdicts on top (the harness's DNS knows no sender domain), then our trace line.
        assert!(body.starts_with("Authentication-Results: mx.agents.localhost;"), "{body}");
        assert!(body.contains("\r\nReceived: from client.example.net"), "{body}");
        assert!(body.contains("Subject: hello-mx"));
    }
    assert!(stored_messages(&blobs, OWNER_B, "carol@agents.localhost").is_empty(), "forged To: must not route");
}

#[test]
fn mx_refuses_unknown_disabled_and_relay() {
    let w = world(&[]);
    let r = smtp(json!({"port": w.server.inbound.port(), "steps": [
        ["mail", "sender@example.net"],
        ["rcpt", "nobody@agents.localhost"],
        ["rcpt", "off@agents.localhost"],
        ["rcpt", "someone@example.com"],
        ["rcpt", "alice@agents.localhost"],
        ["data", {"subject": "after-refusals"}],
    ]}));
    assert_eq!(codes(&r), [250, 550, 550, 550, 250, 250], "{r}");
    assert!(text(&r, 1).starts_with("5.1.1"), "{r}");
    assert!(text(&r, 2).starts_with("5.2.1"), "{r}");
    assert!(text(&r, 3).starts_with("5.7.1"), "{r}");
    assert_eq!(stored_messages(&w.server.blobs(), OWNER_A, "alice@agents.localhost").len(), 1);
}

#[test]
fn mx_recipient_limit_is_50() {
    let w = world(&[]);
    let mut steps = vec![json!(["mail", "sender@example.net"])];
    // Distinct inboxes: a repeated recipient is one recipient.
    for i in 0..51 {
        let name = format!("r{i}");
        run_json(&w.server.data_dir, &["inbox", "create", "--agent", ALICE, "--name", &name]);
        steps.push(json!(["rcpt", format!("{name}@agents.localhost")]));
    }
    let r = smtp(json!({"port": w.server.inbound.port(), "steps": steps}));
    let c = codes(&r);
    assert!(c[1..=50].iter().all(|&x| x == 250), "{r}");
    assert_eq!(c[51], 452, "{r}");
    assert!(text(&r, 51).starts_with("4.5.3"), "{r}");
}

#[test]
fn mx_size_limits_declared_and_undeclared() {
    let w = world(&[("AGENTKEYS_MAX_MESSAGE_SIZE", "100000")]);
    let r = smtp(json!({"port": w.server.inbound.port(), "steps": [
        ["mail", "sender@example.net", ["SIZE=200000"]],
        ["rset"],
        ["mail", "sender@example.net"],
        ["rcpt", "alice@agents.localhost"],
        ["data", {"subject": "too-big", "size": 300000}],
        // The session goes on: a normal message still gets through.
        ["mail", "sender@example.net"],
        ["rcpt", "alice@agents.localhost"],
        ["data", {"subject": "fits", "size": 5000}],
    ]}));
    assert_eq!(codes(&r), [552, 250, 250, 250, 552, 250, 250, 250], "{r}");
    assert!(text(&r, 0).starts_with("5.3.4") && text(&r, 4).starts_with("5.3.4"), "{r}");
    let files = stored_messages(&w.server.blobs(), OWNER_A, "alice@agents.localhost");
    assert_eq!(files.len(), 1);
    assert!(std::fs::read_to_string(&files[0]).unwrap().contains("Subject: fits"));
}

#[test]
fn submission_delivers_locally_and_queues_remote() {
    let w = world(&[]);
    let (alice, key) = &w.alice;
    let r = smtp(json!({"port": w.server.submission.port(), "tls": "starttls", "login": [alice, key], "steps": [
        ["sendmail", alice, ["bob@agents.localhost", "friend@example.com"], {"from": alice, "to": "bob@agents.localhost", "subject": "from-alice"}],
    ]}));
    assert_eq!(r["login"][0], 235, "{r}");
    assert_eq!(codes(&r), [250], "{r}");
    assert_eq!(text(&r, 0), "{}", "no recipient refused: {r}");
    let files = stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost");
    assert_eq!(files.len(), 1);
    assert!(std::fs::read_to_string(&files[0]).unwrap().contains("Subject: from-alice"));
    let queue = run_json(&w.server.data_dir, &["queue", "list"]);
    let queue = queue.as_array().unwrap();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!(queue[0]["recipient"], "friend@example.com");
    assert_eq!(queue[0]["state"], "queued");
    assert_eq!(queue[0]["sender"], alice.as_str());
}

#[test]
fn submission_pins_sender_to_the_inbox() {
    let w = world(&[]);
    let (alice, key) = &w.alice;
    let (bob, _) = &w.bob;
    let r = smtp(json!({"port": w.server.submission_tls.port(), "tls": "implicit", "login": [alice, key], "steps": [
        ["mail", bob],
        ["rset"],
        ["mail", alice],
        ["rcpt", "bob@agents.localhost"],
        ["data", {"from": bob, "subject": "forged-from"}],
        ["mail", alice],
        ["rcpt", "bob@agents.localhost"],
        ["data", {"from": format!("Alice <{alice}>"), "subject": "honest"}],
    ]}));
    assert_eq!(r["login"][0], 235, "{r}");
    assert_eq!(codes(&r), [550, 250, 250, 250, 550, 250, 250, 250], "{r}");
    assert!(text(&r, 0).starts_with("5.7.1") && text(&r, 4).starts_with("5.7.1"), "{r}");
    let files = stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost");
    assert_eq!(files.len(), 1, "only the honest message is delivered");
    assert!(std::fs::read_to_string(&files[0]).unwrap().contains("Subject: honest"));
}

#[test]
fn submission_requires_auth_and_tls() {
    let w = world(&[]);
    // MAIL before AUTH (under TLS): 530 5.7.0.
    let r = smtp(json!({"port": w.server.submission.port(), "tls": "starttls", "steps": [["mail", "alice@agents.localhost"]]}));
    assert_eq!(codes(&r), [530], "{r}");
    assert!(text(&r, 0).starts_with("5.7.0"), "{r}");
    // AUTH before STARTTLS: 538 5.7.11 (smtplib refuses to try LOGIN when AUTH is not
    // advertised, so speak it by hand over a raw socket).
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(w.server.submission).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    writer.write_all(b"EHLO client.example.net\r\n").unwrap();
    let mut ehlo = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        ehlo.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    writer.write_all(b"AUTH PLAIN AGFsaWNlQGFnZW50cy5sb2NhbGhvc3QAeA==\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("538 5.7.11"), "{line}");
}
