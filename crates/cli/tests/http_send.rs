//! `POST /v1/inboxes/{address}/send` against the real server (curl as the client):
//! the second door of submission lands mail locally, queues a DKIM-signed copy for
//! remote recipients, pins `From:` like SMTP submission, and answers every
//! credential failure with one identical 401.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{Server, owner_json, provision, run_json, stored_messages};
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const OWNER_B: &str = "0x000000000000000000000000000000000000000b";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const BOB: &str = "0x00000000000000000000000000000000000000a2";
const DAVE: &str = "0x00000000000000000000000000000000000000a3";
const CAROL: &str = "0x00000000000000000000000000000000000000b1";

/// POSTs `body` with curl; returns (status, body text).
fn post(server: &Server, path: &str, key: Option<&str>, content_type: &str, body: &[u8]) -> (u16, String) {
    post_to(server.http, path, key, content_type, body)
}

/// [`post`] to the listener at `http`.
fn post_to(http: std::net::SocketAddr, path: &str, key: Option<&str>, content_type: &str, body: &[u8]) -> (u16, String) {
    let url = format!("http://{http}{path}");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"]);
    if let Some(k) = key {
        cmd.arg("-H").arg(format!("Authorization: Bearer {k}"));
    }
    cmd.arg("-H").arg(format!("Content-Type: {content_type}"));
    cmd.args(["--data-binary", "@-"]).arg(url).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn curl");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

fn send_json(server: &Server, from: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    send_json_to(server.http, from, key, body)
}

fn send_json_to(http: std::net::SocketAddr, from: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let (status, text) = post_to(http, &format!("/v1/inboxes/{from}/send"), key, "application/json", body.to_string().as_bytes());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

struct World {
    dir: tempfile::TempDir,
    server: Server,
    alice_key: String,
    dave_key: String,
}

fn world(env: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, _, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    provision(d, OWNER_A, BOB, "bob");
    provision(d, OWNER_B, CAROL, "carol");
    // Dave may read his inbox but not send from it.
    run_json(d, &["agent", "add", DAVE, "--owner", OWNER_A]);
    run_json(d, &["inbox", "create", "--agent", DAVE, "--name", "dave"]);
    let dave_key = run_json(d, &["key", "create", "--agent", DAVE])["key"].as_str().unwrap().to_owned();
    owner_json(d, OWNER_A, &["grant", "create", "--agent", DAVE, "--inbox", "dave@agents.localhost", "--scopes", "read"]);
    run_json(d, &["inbox", "create", "--agent", BOB, "--name", "off"]);
    run_json(d, &["inbox", "set-status", "off@agents.localhost", "disabled"]);
    let server = Server::start(d, env);
    World { dir, server, alice_key, dave_key }
}

fn queue(server: &Server) -> Vec<Value> {
    run_json(&server.data_dir, &["queue", "list"]).as_array().unwrap().clone()
}

#[test]
fn json_send_lands_locally_and_queues_a_signed_copy() {
    let w = world(&[]);
    let (status, r) = send_json(
        &w.server,
        "alice@agents.localhost",
        Some(&w.alice_key),
        &json!({
            "to": ["bob@agents.localhost", "friend@example.com"],
            "bcc": ["hidden@example.net"],
            "subject": "Re: your code",
            "text": "It was 482913.",
            "in_reply_to": "<orig@bank.example>",
            "references": ["<orig@bank.example>"],
            "attachments": [{"filename": "note.txt", "content_type": "text/plain", "content_base64": "aGVsbG8="}],
        }),
    );
    assert_eq!(status, 202, "{r}");
    let id = r["message_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 26, "a ULID: {r}");
    assert_eq!(r["rfc5322_message_id"], format!("<{}@agents.localhost>", id.to_ascii_lowercase()));

    let bob = stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost");
    assert_eq!(bob.len(), 1);
    assert!(bob[0].ends_with(format!("{id}.eml")), "{bob:?}");
    let copy = std::fs::read_to_string(&bob[0]).unwrap();
    assert!(copy.starts_with("Received: from agent 0x00000000000000000000000000000000000000a1 (HTTP API)"), "{copy}");
    assert!(copy.contains("From: <alice@agents.localhost>") || copy.contains("From: alice@agents.localhost"), "{copy}");
    assert!(copy.contains("In-Reply-To: <orig@bank.example>"), "{copy}");
    assert!(!copy.contains("hidden@"), "no Bcc in any header: {copy}");

    let q = queue(&w.server);
    let mut rcpts: Vec<&str> = q.iter().map(|e| e["recipient"].as_str().unwrap()).collect();
    rcpts.sort_unstable();
    assert_eq!(rcpts, ["friend@example.com", "hidden@example.net"], "{q:?}");
    assert!(q.iter().all(|e| e["state"] == "queued" && e["sender"] == "alice@agents.localhost"), "{q:?}");
    let queued = std::fs::read_to_string(w.server.blobs().join("queue").join(format!("{id}.eml"))).unwrap();
    assert!(queued.starts_with("DKIM-Signature:"), "signed before queueing: {queued}");
    assert!(queued.contains("d=agents.localhost"), "{queued}");
    assert!(!queued.contains("hidden@"), "{queued}");
}

#[test]
fn raw_send_pins_from_like_submission_and_drops_bcc() {
    let w = world(&[]);
    let key = Some(w.alice_key.as_str());
    let path = "/v1/inboxes/alice@agents.localhost/send";
    // From: another inbox of the same owner: refused, nothing stored or queued.
    let spoofed = "From: bob@agents.localhost\r\nTo: friend@example.com\r\nSubject: spoof\r\n\r\nhi\r\n";
    let (status, text) = post(&w.server, path, key, "message/rfc822", spoofed.as_bytes());
    assert_eq!(status, 403, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], "FROM_NOT_AUTHORIZED");
    assert!(queue(&w.server).is_empty());
    // Two From: addresses: refused the same way.
    let two = "From: alice@agents.localhost, bob@agents.localhost\r\nTo: friend@example.com\r\n\r\nhi\r\n";
    assert_eq!(post(&w.server, path, key, "message/rfc822", two.as_bytes()).0, 403);

    let honest = "From: Alice <alice@agents.localhost>\r\nTo: bob@agents.localhost\r\nCc: friend@example.com\r\n\
                  Bcc: secret@example.net\r\nSubject: raw\r\nMessage-ID: <raw-1@agents.localhost>\r\n\r\nbody\r\n";
    let (status, text) = post(&w.server, path, key, "message/rfc822", honest.as_bytes());
    assert_eq!(status, 202, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["rfc5322_message_id"], "<raw-1@agents.localhost>");
    let copy = std::fs::read_to_string(&stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost")[0]).unwrap();
    assert!(copy.contains("Subject: raw") && !copy.contains("Bcc") && !copy.contains("secret@"), "{copy}");
    let mut rcpts: Vec<String> = queue(&w.server).iter().map(|e| e["recipient"].as_str().unwrap().to_owned()).collect();
    rcpts.sort_unstable();
    assert_eq!(rcpts, ["friend@example.com", "secret@example.net"]);
}

#[test]
fn every_credential_failure_is_the_same_401() {
    let w = world(&[]);
    let body = json!({"to": ["friend@example.com"], "text": "hi"}).to_string();
    let try_send = |from: &str, key: Option<&str>| {
        post(&w.server, &format!("/v1/inboxes/{from}/send"), key, "application/json", body.as_bytes())
    };
    let unknown = format!("ak_{}", "x".repeat(43));
    let cases = [
        ("alice@agents.localhost", Some(unknown.as_str())), // unknown key
        ("alice@agents.localhost", Some("ak_short")),       // malformed key
        ("alice@agents.localhost", None),                   // no key
        ("dave@agents.localhost", Some(w.dave_key.as_str())), // read grant only
        ("bob@agents.localhost", Some(w.alice_key.as_str())), // own owner's inbox, grant does not cover it
        ("carol@agents.localhost", Some(w.alice_key.as_str())), // another owner's inbox
        ("nobody@agents.localhost", Some(w.alice_key.as_str())), // no such inbox
        ("not-an-address", Some(w.alice_key.as_str())),     // bad username
    ];
    let answers: Vec<(u16, String)> = cases.iter().map(|(from, key)| try_send(from, *key)).collect();
    for ((from, _), (status, text)) in cases.iter().zip(&answers) {
        assert_eq!(*status, 401, "{from}: {text}");
        assert_eq!(text, &answers[0].1, "{from}: identical body");
    }
    let problem: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(problem["code"], "SEND_NOT_AUTHORIZED");
    assert!(queue(&w.server).is_empty(), "nothing was sent");
    assert!(stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost").is_empty());

    // Each refusal is one `submission.auth` record of the HTTP door, with its
    // reason, like SMTP AUTH's; never the key.
    let records = run_json(w.dir.path(), &["audit", "list", "--limit", "1000"]);
    let refused: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "submission.auth" && r["detail"]["door"] == "http")
        .collect();
    assert_eq!(refused.len(), cases.len(), "{records:#}");
    assert!(refused.iter().all(|r| r["outcome"] == "denied" && r["detail"]["peer"] == "127.0.0.1"));
    let reasons: Vec<&str> = refused.iter().map(|r| r["detail"]["reason"].as_str().unwrap()).collect();
    assert!(reasons.contains(&"KEY_NOT_FOUND") && reasons.contains(&"OWNER_MISMATCH"), "{reasons:?}");
    assert!(!records.to_string().contains(&w.alice_key), "a key is in the audit log");
}

#[test]
fn bad_input_names_the_field_and_size_is_the_smtp_limit() {
    let w = world(&[("AGENTKEYS_MAX_MESSAGE_SIZE", "100000")]);
    let key = Some(w.alice_key.as_str());
    let field = |body: Value| {
        let (status, r) = send_json(&w.server, "alice@agents.localhost", key, &body);
        assert_eq!(status, 400, "{r}");
        assert_eq!(r["code"], "INVALID_REQUEST", "{r}");
        r["field"].as_str().unwrap().to_owned()
    };
    assert_eq!(field(json!({"to": ["not an address"]})), "to[0]");
    assert_eq!(field(json!({"to": ["nobody@agents.localhost"]})), "to[0]");
    assert_eq!(field(json!({"to": ["a@example.com"], "cc": ["off@agents.localhost"]})), "cc[0]");
    assert_eq!(field(json!({"to": ["a@example.com"], "colour": "red"})), "colour");
    assert_eq!(field(json!({"cc": []})), "to");
    // Bigger than the API's 16 KiB, within the SMTP limit: accepted.
    let text = "x".repeat(50_000);
    let (status, r) = send_json(&w.server, "alice@agents.localhost", key, &json!({"to": ["a@example.com"], "text": text}));
    assert_eq!(status, 202, "{r}");
    // Over the SMTP limit.
    let big = format!("From: alice@agents.localhost\r\nTo: a@example.com\r\n\r\n{}", "y".repeat(150_000));
    let (status, text) = post(&w.server, "/v1/inboxes/alice@agents.localhost/send", key, "message/rfc822", big.as_bytes());
    assert_eq!(status, 413, "{text}");
    let (status, _) = post(&w.server, "/v1/inboxes/alice@agents.localhost/send", key, "text/plain", b"hi");
    assert_eq!(status, 415);
}

/// The records of `agentkeys domain dns <domain>` (BIND syntax, parenthesized
/// TXT continuations joined) as a testdns zone, plus `mx_ip` for the MX host.
fn published_zone(data_dir: &std::path::Path, domain: &str, mx_ip: std::net::Ipv4Addr) -> agentkeys_testdns::Zone {
    let out = common::run(data_dir, &["domain", "dns", domain]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut records: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines().filter(|l| !l.trim_start().starts_with(';') && !l.trim().is_empty()) {
        if open {
            records.last_mut().unwrap().push_str(line);
        } else {
            records.push(line.to_owned());
        }
        open = records.last().unwrap().matches('(').count() > records.last().unwrap().matches(')').count();
    }
    let mut zone = agentkeys_testdns::Zone::new();
    for record in records {
        let mut fields = record.split_whitespace();
        let (name, _ttl, _class, kind) = (fields.next().unwrap(), fields.next(), fields.next(), fields.next().unwrap());
        let rest: Vec<&str> = fields.collect();
        zone = match kind {
            "MX" => {
                zone = zone.a(rest[1], mx_ip);
                zone.mx(name, rest[0].parse().unwrap(), rest[1])
            }
            "TXT" => {
                let joined: String = record.split('"').skip(1).step_by(2).collect();
                zone.txt(name, &joined)
            }
            other => panic!("unexpected record type {other} in:\n{text}"),
        };
    }
    zone
}

#[test]
fn http_sent_mail_passes_our_own_mx_with_the_published_records() {
    // A world whose server resolves through a DNS server this test controls.
    let dns = agentkeys_testdns::TestDns::start(agentkeys_testdns::Zone::new()).unwrap();
    let w = world(&[("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver())]);
    // A domain DNS is asked about: hickory answers every *.localhost name itself
    // (RFC 6761), so agents.localhost can have no DKIM/SPF/DMARC records.
    let d = &w.server.data_dir;
    run_json(d, &["domain", "add", "mail.example.test"]);
    run_json(d, &["inbox", "create", "--agent", ALICE, "--name", "alice", "--domain", "mail.example.test"]);
    owner_json(d, OWNER_A, &["grant", "create", "--agent", ALICE, "--inbox", "alice@mail.example.test", "--scopes", "send"]);
    let (status, r) = send_json(
        &w.server,
        "alice@mail.example.test",
        Some(&w.alice_key),
        &json!({"to": ["friend@example.com"], "subject": "round trip", "text": "signed by the HTTP door"}),
    );
    assert_eq!(status, 202, "{r}");
    let id = r["message_id"].as_str().unwrap();
    let queued_path = w.server.blobs().join("queue").join(format!("{id}.eml"));
    let queued = std::fs::read_to_string(&queued_path).unwrap();

    // Independent check: dkimpy verifies both signatures against the published keys.
    let zone_text = String::from_utf8(common::run(&w.server.data_dir, &["domain", "dns", "mail.example.test"]).stdout).unwrap();
    let mut dkim_records = serde_json::Map::new();
    let mut current: Option<(String, String)> = None;
    for line in zone_text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains("._domainkey.") {
            if let Some((n, v)) = current.take() {
                dkim_records.insert(n, Value::String(v));
            }
            current = Some((first.to_owned(), String::new()));
        } else if !line.starts_with(char::is_whitespace)
            && let Some((n, v)) = current.take()
        {
            dkim_records.insert(n, Value::String(v));
        }
        if let Some((_, v)) = current.as_mut() {
            v.extend(line.split('"').skip(1).step_by(2));
        }
    }
    if let Some((n, v)) = current.take() {
        dkim_records.insert(n, Value::String(v));
    }
    assert_eq!(dkim_records.len(), 2, "{zone_text}");
    let plan = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(plan.path(), json!({"dns": dkim_records, "messages": [queued_path]}).to_string()).unwrap();
    let verified = common::python("verify_dkim.py", &[plan.path().display().to_string()]);
    assert!(verified.starts_with("ok"), "{verified}");

    // Our own MX, with exactly the records `domain dns` says to publish (the MX
    // host at 127.0.0.1), gives the HTTP door's signed copy full marks.
    dns.set_zone(published_zone(&w.server.data_dir, "mail.example.test", std::net::Ipv4Addr::LOCALHOST));
    let plan = json!({"port": w.server.inbound.port(), "steps": [
        ["mail", "alice@mail.example.test"],
        ["rcpt", "bob@agents.localhost"],
        ["data", {"raw": queued}],
    ]});
    let out: Value = serde_json::from_str(&common::python("smtp_client.py", &[plan.to_string()])).unwrap();
    assert_eq!(out["steps"][2][0], 250, "{out}");
    let bob = stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost");
    assert_eq!(bob.len(), 1);
    let copy = std::fs::read_to_string(&bob[0]).unwrap();
    let verdict = copy[..copy.find("\r\nReceived: ").unwrap()].replace("\r\n\t", " ");
    assert!(verdict.starts_with("Authentication-Results: mx.agents.localhost;"), "{verdict}");
    assert!(verdict.contains("dkim=pass header.d=mail.example.test header.s=rsa1"), "{verdict}");
    assert!(verdict.contains("dkim=pass header.d=mail.example.test header.s=ed1"), "{verdict}");
    assert!(verdict.contains("spf=pass"), "{verdict}");
    assert!(verdict.contains("dmarc=pass header.from=mail.example.test policy.dmarc=quarantine"), "{verdict}");
    let seen = dns.queries();
    assert!(seen.iter().any(|q| q.name == "rsa1._domainkey.mail.example.test."), "{seen:?}");
}

/// Issue 15 item 13: only refused keys spend the address's failure budget. A
/// valid key sending from inboxes its grants do not cover (another of its
/// owner's, another owner's, a missing one, a read-only grant) gets the one 401
/// every time, never a 429, and its own inbox still sends; unknown keys from the
/// same address are throttled after the budget.
#[test]
fn a_valid_key_refused_for_an_inbox_does_not_throttle_its_address() {
    let budget = agentkeys_api::throttle::AUTH_FAILURES_PER_IP as usize;
    let w = world(&[]);
    let body = json!({"to": ["friend@example.com"], "text": "hi"});
    let refused_for_coverage = [
        ("bob@agents.localhost", w.alice_key.as_str()),
        ("carol@agents.localhost", w.alice_key.as_str()),
        ("nobody@agents.localhost", w.alice_key.as_str()),
        ("dave@agents.localhost", w.dave_key.as_str()),
    ];
    // 2 x budget refusals, four at a time (each waits out the AUTH failure floor).
    std::thread::scope(|s| {
        for (from, key) in refused_for_coverage {
            let (http, body) = (w.server.http, &body);
            s.spawn(move || {
                for _ in 0..budget / 2 {
                    let (status, problem) = send_json_to(http, from, Some(key), body);
                    assert_eq!((status, problem["code"].as_str()), (401, Some("SEND_NOT_AUTHORIZED")), "{from}");
                }
            });
        }
    });
    let (status, answer) = send_json(&w.server, "alice@agents.localhost", Some(&w.alice_key), &body);
    assert_eq!(status, 202, "the valid key still sends: {answer}");

    // Unknown keys do spend it: the budget's refusals, then a 429 (the budget
    // refills one cell per window/budget, so allow for what came back meanwhile).
    let unknown = format!("ak_{}", "x".repeat(43));
    let mut refusals = 0;
    let limited = (0..3 * budget).any(|_| {
        let (status, problem) = send_json(&w.server, "alice@agents.localhost", Some(&unknown), &body);
        match status {
            401 => refusals += 1,
            429 => assert_eq!(problem["code"], "RATE_LIMITED"),
            other => panic!("{other}: {problem}"),
        }
        status == 429
    });
    assert!(limited && refusals >= budget, "{refusals} refusals, limited: {limited}");
}

#[test]
fn the_http_door_applies_the_smtp_message_rules() {
    let w = world(&[]);
    let key = Some(w.alice_key.as_str());
    let raw = |message: &str| {
        let (status, text) = post(&w.server, "/v1/inboxes/alice@agents.localhost/send", key, "message/rfc822", message.as_bytes());
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };
    let refusal = |(status, p): (u16, Value)| (status, p["code"].as_str().map(str::to_owned), p["field"].as_str().map(str::to_owned));
    let expect = |status: u16, code: &str, field: &str| (status, Some(code.to_owned()), Some(field.to_owned()));
    // Sender: another address (SMTP: 550 5.7.1).
    let sender = "From: alice@agents.localhost\r\nSender: ceo@bank.example\r\nTo: bob@agents.localhost\r\n\r\nhi\r\n";
    assert_eq!(refusal(raw(sender)), expect(403, "FROM_NOT_AUTHORIZED", "Sender"));
    // A display name that is another address.
    for from in ["\"ceo@bank.example\" <alice@agents.localhost>", "=?utf-8?q?ceo=40bank.example?= <alice@agents.localhost>"] {
        let message = format!("From: {from}\r\nTo: bob@agents.localhost\r\n\r\nhi\r\n");
        assert_eq!(refusal(raw(&message)), expect(403, "FROM_NOT_AUTHORIZED", "From"), "{from}");
    }
    // A NUL, raw (the smuggling shape) or in a JSON field (SMTP: 550 5.6.0).
    let nul = "From: alice@agents.localhost\r\nTo: bob@agents.localhost\r\n\r\nhello\r\n\0.\r\nforged\r\n";
    assert_eq!(refusal(raw(nul)), expect(422, "MESSAGE_INVALID", "message"));
    let json_nul = send_json(&w.server, "alice@agents.localhost", key, &json!({"to": ["bob@agents.localhost"], "text": "a\u{0}b"}));
    assert_eq!(refusal(json_nul), expect(422, "MESSAGE_INVALID", "text"));
    // The limit counts repeated recipients, like SMTP counts every RCPT.
    let repeated = send_json(&w.server, "alice@agents.localhost", key, &json!({"to": vec!["bob@agents.localhost"; 51]}));
    assert_eq!(refusal(repeated), expect(400, "INVALID_REQUEST", "to"));
    assert!(stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost").is_empty(), "nothing refused was stored");
    assert!(queue(&w.server).is_empty());
    // The honest form passes.
    let honest = "From: Alice (alice@agents.localhost) <alice@agents.localhost>\r\nSender: alice@agents.localhost\r\nTo: bob@agents.localhost\r\n\r\nhi\r\n";
    assert_eq!(raw(honest).0, 202);
    assert_eq!(stored_messages(&w.server.blobs(), OWNER_A, "bob@agents.localhost").len(), 1);
}
