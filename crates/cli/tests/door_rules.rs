//! The rules every door shares, against the real server: `From:`/`Sender:`
//! pinning over swaks (submission), one inbox address rule for `inbox create`
//! and the MX, and the recipient limit counting every `RCPT` (smtplib). The HTTP
//! door's side of the same rules is in `http_send.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Server, provision, python, run, run_json, stored_messages};
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const BOB: &str = "0x00000000000000000000000000000000000000a2";

/// swaks over STARTTLS as alice to bob, with extra swaks arguments; returns the
/// transcript.
fn swaks(server: &Server, alice_key: &str, extra: &[&str]) -> String {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &server.submission.port().to_string(), "--tls"])
        .args(["--auth", "PLAIN", "--auth-user", "alice@agents.localhost", "--auth-password", alice_key])
        .args(["--from", "alice@agents.localhost", "--to", "bob@agents.localhost", "--timeout", "30"])
        .args(["--ehlo", "swaks.example.net"])
        .args(extra)
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The server's answer to the end of data in a swaks transcript.
fn data_reply(transcript: &str) -> String {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("<~* ").or_else(|| l.strip_prefix("<~  ")))
        .find(|l| l.contains("Message accepted") || l.starts_with("550 "))
        .unwrap_or_else(|| panic!("no reply to the data in:\n{transcript}"))
        .trim()
        .to_owned()
}

#[test]
fn submission_refuses_a_foreign_sender_or_display_name_over_swaks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, _, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    provision(d, OWNER_A, BOB, "bob");
    let server = Server::start(d, &[]);

    let from_refused = "550 5.7.1 From: header must hold exactly the authenticated inbox";
    for (case, args, expected) in [
        ("Sender: another address", &["--header", "Sender: ceo@bank.example"][..], "550 5.7.1 Sender: header must be absent or exactly the authenticated inbox"),
        ("display name is an address", &["--h-From", "\"ceo@bank.example\" <alice@agents.localhost>"][..], from_refused),
        ("display name with spaces", &["--h-From", "\"ceo @ bank.example\" <alice@agents.localhost>"][..], from_refused),
        ("encoded display name", &["--h-From", "=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <alice@agents.localhost>"][..], from_refused),
    ] {
        assert_eq!(data_reply(&swaks(&server, &alice_key, args)), expected, "{case}");
    }
    assert!(stored_messages(&server.blobs(), OWNER_A, "bob@agents.localhost").is_empty());

    // Honest forms pass: a plain name, the inbox as its own Sender.
    let honest = swaks(&server, &alice_key, &["--h-From", "Alice Bot <alice@agents.localhost>", "--header", "Sender: alice@agents.localhost"]);
    assert!(data_reply(&honest).starts_with("250 2.0.0 Message accepted"), "{honest}");
    assert_eq!(stored_messages(&server.blobs(), OWNER_A, "bob@agents.localhost").len(), 1);
}

#[test]
fn inbox_create_and_the_mx_share_one_address_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    provision(d, OWNER_A, ALICE, "alice");
    for local in [".", ".a", "a.", "a..b"] {
        let out = run(d, &["inbox", "create", "--agent", ALICE, "--name", local]);
        assert!(!out.status.success(), "{local:?} was created");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--name") && err.contains("no dot first, last or next to another dot"), "{local:?}: {err}");
    }
    let created = run_json(d, &["inbox", "create", "--agent", ALICE, "--name", "a.b_c-d"]);
    assert_eq!(created["address"], "a.b_c-d@agents.localhost");
    let inboxes = run_json(d, &["inbox", "list"]);
    assert_eq!(inboxes.as_array().unwrap().len(), 2, "{inboxes}");

    let server = Server::start(d, &[]);
    let r: Value = serde_json::from_str(&python(
        "smtp_client.py",
        &[json!({"port": server.inbound.port(), "steps": [
            ["mail", "sender@example.net"],
            ["rcpt", "a..b@agents.localhost"],
            ["rcpt", "a.b_c-d@agents.localhost"],
            ["data", {"subject": "dotted"}],
        ]})
        .to_string()],
    ))
    .unwrap();
    let codes: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s[0].as_i64().unwrap()).collect();
    assert_eq!(codes[0], 250, "{r}");
    assert!(codes[1] >= 500, "a..b is no inbox: {r}");
    assert_eq!(&codes[2..], [250, 250], "{r}");
    assert_eq!(stored_messages(&server.blobs(), OWNER_A, "a.b_c-d@agents.localhost").len(), 1);
}

#[test]
fn the_recipient_limit_counts_repeated_rcpts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, alice, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    provision(d, OWNER_A, BOB, "bob");
    let server = Server::start(d, &[]);
    // The same recipient 51 times, on the MX and on submission.
    let rcpts = |n: usize| (0..n).map(|_| json!(["rcpt", "bob@agents.localhost"]));
    let mx: Vec<Value> = std::iter::once(json!(["mail", "sender@example.net"])).chain(rcpts(51)).collect();
    let sub: Vec<Value> = std::iter::once(json!(["mail", alice])).chain(rcpts(51)).collect();
    for (port, tls, login, steps) in [
        (server.inbound.port(), "none", Value::Null, mx),
        (server.submission.port(), "starttls", json!([alice, alice_key]), sub),
    ] {
        let r: Value = serde_json::from_str(&python(
            "smtp_client.py",
            &[json!({"port": port, "tls": tls, "login": login, "steps": steps}).to_string()],
        ))
        .unwrap();
        let steps = r["steps"].as_array().unwrap();
        let codes: Vec<i64> = steps.iter().map(|s| s[0].as_i64().unwrap()).collect();
        assert!(codes[..=50].iter().all(|&c| c == 250), "{tls}: {r}");
        assert_eq!(codes[51], 452, "{tls}: {r}");
        assert!(steps[51][1].as_str().unwrap().starts_with("4.5.3"), "{tls}: {r}");
    }
}
