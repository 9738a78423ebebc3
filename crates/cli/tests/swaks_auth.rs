//! swaks over STARTTLS against every AUTH outcome of `agentkeys demo seed`, the
//! per-IP failure throttle, and the `From:`/`Sender:` pinning of what an
//! authenticated sender submits.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Server, provision, run_json, stored_messages};

fn swaks(port: u16, user: &str, pass: &str, mech: &str) -> String {
    swaks_with(port, user, pass, mech, &["--quit-after", "AUTH"])
}

/// swaks over STARTTLS with AUTH and `extra` arguments; the whole transcript.
fn swaks_with(port: u16, user: &str, pass: &str, mech: &str, extra: &[&str]) -> String {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string(), "--tls", "--auth", mech])
        .args(["--auth-user", user, "--auth-password", pass, "--timeout", "30"])
        .args(["--ehlo", "swaks.example.net"])
        .args(extra)
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The reply line to AUTH (after the SASL exchange) in a swaks transcript.
fn auth_reply(transcript: &str) -> String {
    transcript
        .lines()
        .filter(|l| l.starts_with("<~") || l.starts_with("<~*"))
        .map(|l| l.trim_start_matches("<~*").trim_start_matches("<~").trim().to_owned())
        .find(|l| l.starts_with("235") || l.starts_with("535") || l.starts_with("454") || l.starts_with("421"))
        .unwrap_or_else(|| panic!("no AUTH reply in transcript:\n{transcript}"))
}

#[test]
fn every_demo_outcome_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let seed = run_json(dir.path(), &["demo", "seed"]);
    let server = Server::start(dir.path(), &[("AGENTKEYS_AUTH_FAILURES_PER_IP", "1000")]);
    let mut seen = 0;
    for (i, case) in seed["cases"].as_array().unwrap().iter().enumerate() {
        let (user, pass) = (case["username"].as_str().unwrap(), case["password"].as_str().unwrap());
        let mech = if i % 2 == 0 { "PLAIN" } else { "LOGIN" };
        let reply = auth_reply(&swaks(server.submission.port(), user, pass, mech));
        match case["expect"].as_str().unwrap() {
            "235" => assert!(reply.starts_with("235 2.7.0"), "{}: {reply}", case["case"]),
            _ => assert_eq!(reply, "535 5.7.8 Authentication credentials invalid", "{}", case["case"]),
        }
        seen += 1;
    }
    assert!(seen >= 11, "the demo seed must cover every outcome");

    // Every decision is in the audit log, with its reason, and never a key.
    let records = run_json(dir.path(), &["audit", "list", "--limit", "1000"]);
    let auths: Vec<&serde_json::Value> =
        records.as_array().unwrap().iter().filter(|r| r["operation"] == "submission.auth").collect();
    assert_eq!(auths.len(), seen, "one audit record per AUTH decision");
    for case in seed["cases"].as_array().unwrap() {
        let outcome = case["outcome"].as_str().unwrap();
        let recorded = auths.iter().any(|r| match outcome {
            "ok" => r["outcome"] == "ok",
            reason => r["outcome"] == "denied" && r["detail"]["reason"] == reason,
        });
        assert!(recorded, "no audit record for {outcome}");
        let password = case["password"].as_str().unwrap();
        if password.len() > 10 {
            assert!(!records.to_string().contains(password), "a key is in the audit log");
        }
    }
    let verify = common::run(dir.path(), &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[test]
fn per_ip_failures_lock_out_even_correct_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let seed = run_json(dir.path(), &["demo", "seed"]);
    let cases = seed["cases"].as_array().unwrap();
    let valid = cases.iter().find(|c| c["outcome"] == "ok").unwrap();
    let bad = cases.iter().find(|c| c["outcome"] == "KEY_REVOKED").unwrap();
    let server = Server::start(
        dir.path(),
        &[("AGENTKEYS_AUTH_FAILURES_PER_IP", "3"), ("AGENTKEYS_AUTH_FAILURE_WINDOW", "10m")],
    );
    let port = server.submission.port();
    let user = valid["username"].as_str().unwrap();
    assert!(auth_reply(&swaks(port, user, valid["password"].as_str().unwrap(), "PLAIN")).starts_with("235"));
    for _ in 0..3 {
        let reply = auth_reply(&swaks(port, user, bad["password"].as_str().unwrap(), "PLAIN"));
        assert!(reply.starts_with("535 5.7.8"), "{reply}");
    }
    let reply = auth_reply(&swaks(port, user, valid["password"].as_str().unwrap(), "PLAIN"));
    assert!(reply.starts_with("454 4.7.0"), "throttled IP must get 454 even with the right key: {reply}");
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
fn a_foreign_sender_or_display_name_is_refused() {
    const OWNER: &str = "0x000000000000000000000000000000000000000a";
    let dir = tempfile::tempdir().unwrap();
    let (_, _, alice, key) = provision(dir.path(), OWNER, "0x00000000000000000000000000000000000000a1", "alice");
    provision(dir.path(), OWNER, "0x00000000000000000000000000000000000000a2", "bob");
    let server = Server::start(dir.path(), &[]);
    let send = |extra: &[&str]| {
        let envelope = ["--from", alice.as_str(), "--to", "bob@agents.localhost"];
        data_reply(&swaks_with(server.submission.port(), &alice, &key, "PLAIN", &[&envelope[..], extra].concat()))
    };
    let from_refused = "550 5.7.1 From: header must hold exactly the authenticated inbox";
    for (case, extra, expected) in [
        ("Sender: another address", &["--header", "Sender: ceo@bank.example"][..], "550 5.7.1 Sender: header must be absent or exactly the authenticated inbox"),
        ("display name is an address", &["--h-From", "\"ceo@bank.example\" <alice@agents.localhost>"][..], from_refused),
        ("display name with spaces", &["--h-From", "\"ceo @ bank.example\" <alice@agents.localhost>"][..], from_refused),
        ("encoded display name", &["--h-From", "=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <alice@agents.localhost>"][..], from_refused),
    ] {
        assert_eq!(send(extra), expected, "{case}");
    }
    assert!(stored_messages(&server.blobs(), OWNER, "bob@agents.localhost").is_empty());
    // Honest forms pass: a plain name, the inbox as its own Sender.
    let honest = send(&["--h-From", "Alice Bot <alice@agents.localhost>", "--header", "Sender: alice@agents.localhost"]);
    assert!(honest.starts_with("250 2.0.0 Message accepted"), "{honest}");
    assert_eq!(stored_messages(&server.blobs(), OWNER, "bob@agents.localhost").len(), 1);
}
