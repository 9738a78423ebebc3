//! The real server process with Python's smtplib (and a raw socket) as the
//! client: inbound MX, submission over STARTTLS and implicit TLS, local delivery,
//! limits, relay, the one inbox address rule, and SMTP smuggling.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Server, provision, python, run, run_json, stored_messages};
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
    // Distinct inboxes (repeated ones count too: the next test).
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

#[test]
fn the_recipient_limit_counts_repeated_rcpts() {
    let w = world(&[]);
    let (alice, key) = &w.alice;
    // The same recipient 51 times, on the MX and on submission: one copy, but
    // every RCPT counts.
    let rcpts = |n: usize| (0..n).map(|_| json!(["rcpt", "bob@agents.localhost"]));
    let mx: Vec<Value> = std::iter::once(json!(["mail", "sender@example.net"])).chain(rcpts(51)).collect();
    let sub: Vec<Value> = std::iter::once(json!(["mail", alice])).chain(rcpts(51)).collect();
    for (port, tls, login, steps) in [
        (w.server.inbound.port(), "none", Value::Null, mx),
        (w.server.submission.port(), "starttls", json!([alice, key]), sub),
    ] {
        let r = smtp(json!({"port": port, "tls": tls, "login": login, "steps": steps}));
        let c = codes(&r);
        assert!(c[..=50].iter().all(|&x| x == 250), "{tls}: {r}");
        assert_eq!(c[51], 452, "{tls}: {r}");
        assert!(text(&r, 51).starts_with("4.5.3"), "{tls}: {r}");
    }
}

#[test]
fn inbox_create_and_the_mx_share_one_address_rule() {
    let w = world(&[]);
    let d = &w.server.data_dir;
    for local in [".", ".a", "a.", "a..b"] {
        let out = run(d, &["inbox", "create", "--agent", ALICE, "--name", local]);
        assert!(!out.status.success(), "{local:?} was created");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--name") && err.contains("no dot first, last or next to another dot"), "{local:?}: {err}");
    }
    let created = run_json(d, &["inbox", "create", "--agent", ALICE, "--name", "a.b_c-d"]);
    assert_eq!(created["address"], "a.b_c-d@agents.localhost");
    let r = smtp(json!({"port": w.server.inbound.port(), "steps": [
        ["mail", "sender@example.net"],
        ["rcpt", "a..b@agents.localhost"],
        ["rcpt", "a.b_c-d@agents.localhost"],
        ["data", {"subject": "dotted"}],
    ]}));
    let c = codes(&r);
    assert_eq!(c[0], 250, "{r}");
    assert!(c[1] >= 500, "a..b is nobody: {r}");
    assert_eq!(&c[2..], [250, 250], "{r}");
    assert_eq!(stored_messages(&w.server.blobs(), OWNER_A, "a.b_c-d@agents.localhost").len(), 1);
}

// ----- SMTP smuggling ---------------------------------------------------------------
//
// On every SMTP listener — the MX over a raw socket and over smtplib, submission
// over STARTTLS and implicit TLS — each vector, named after the advisory that
// published it, carries a forged second transaction inside the data. Only
// `<CRLF>.<CRLF>` ends DATA, so exactly one message is stored per attempt, the
// forged transaction never runs, and a NUL is refused with `550 5.6.0`.

/// Terminators that some receiver once took for the end of data. None of them
/// may end ours.
const VECTORS: &[(&str, &str)] = &[
    ("CVE-2023-51764 Postfix <LF>.<LF>", "\n.\n"),
    ("CVE-2023-51764 Postfix <LF>.<CR><LF>", "\n.\r\n"),
    ("CVE-2023-51765 sendmail <LF>.<CR><LF>", "\r\n\n.\r\n"),
    ("CVE-2023-51766 Exim <CR><LF>.<LF>", "\r\n.\n"),
    ("<CR>.<CR><LF>", "\r.\r\n"),
    ("<CR>.<CR>", "\r.\r"),
    ("smtp-proto 0.2.5 <CR><LF>.<CR><CR><LF>", "\r\n.\r\r\n"),
    ("smtp-proto 0.2.5 <CR><CR><LF>.<CR><CR><LF>", "\r\r\n.\r\r\n"),
];

/// For receivers that drop NULs, `<CR><LF>.<CR><LF>`; for us a refused message.
const NUL_VECTOR: &str = "\r\n\0.\r\n";

/// The data of one attempt: an honest message whose body holds `terminator`
/// and then a forged transaction to carol (another owner) and a remote address.
fn attempt(from: &str, to: &str, name: &str, terminator: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: outer {name}\r\n\r\nhello{terminator}\
         MAIL FROM:<{from}>\r\nRCPT TO:<carol@agents.localhost>\r\nRCPT TO:<friend@example.com>\r\nDATA\r\n\
         From: {from}\r\nSubject: smuggled\r\n\r\nforged\r\n\r\n.\r\n"
    )
}

/// One SMTP reply (all lines), as text.
fn read_reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "connection closed after {reply:?}");
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

/// Over a raw socket: envelope, `data` as bytes, then NOOP and QUIT. Returns
/// the replies to the data, NOOP and QUIT: a smuggled transaction would shift
/// them (its MAIL reply would answer our NOOP).
fn raw_attempt(mx: SocketAddr, data: &str) -> [String; 3] {
    let stream = TcpStream::connect(mx).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    assert!(read_reply(&mut reader).starts_with("220 "));
    for (command, expect) in [
        ("EHLO raw.example.net\r\n", "250"),
        ("MAIL FROM:<sender@example.net>\r\n", "250"),
        ("RCPT TO:<alice@agents.localhost>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        writer.write_all(command.as_bytes()).unwrap();
        let reply = read_reply(&mut reader);
        assert!(reply.starts_with(expect), "{command:?}: {reply}");
    }
    writer.write_all(data.as_bytes()).unwrap();
    let data_reply = read_reply(&mut reader);
    writer.write_all(b"NOOP\r\n").unwrap();
    let noop = read_reply(&mut reader);
    writer.write_all(b"QUIT\r\n").unwrap();
    let quit = read_reply(&mut reader);
    [data_reply, noop, quit]
}

/// smtplib steps for every vector in one session: MAIL, RCPT, the raw data,
/// NOOP; then the NUL vector the same way.
fn smtplib_steps(from: &str, to: &str) -> Vec<Value> {
    let mut steps = Vec::new();
    for (name, terminator) in VECTORS.iter().chain([&("NUL", NUL_VECTOR)]) {
        steps.push(json!(["mail", from]));
        steps.push(json!(["rcpt", to]));
        steps.push(json!(["raw_data", attempt(from, to, name, terminator)]));
        steps.push(json!(["noop"]));
    }
    steps
}

/// Every vector stored exactly once, whole (the forged transaction inside it);
/// the NUL vector refused; the NOOP after each answered as a NOOP.
fn assert_smtplib_result(result: &Value) {
    let steps = result["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4 * (VECTORS.len() + 1), "{result}");
    for (i, chunk) in steps.chunks(4).enumerate() {
        let name = VECTORS.get(i).map_or("NUL", |v| v.0);
        let codes: Vec<i64> = chunk.iter().map(|s| s[0].as_i64().unwrap()).collect();
        let data = chunk[2][1].as_str().unwrap();
        let noop = chunk[3][1].as_str().unwrap();
        if name == "NUL" {
            assert_eq!(codes, [250, 250, 550, 250], "{name}: {result}");
            assert!(data.starts_with("5.6.0"), "{name}: {data}");
        } else {
            assert_eq!(codes, [250, 250, 250, 250], "{name}: {result}");
            assert!(data.starts_with("2.0.0 Message accepted"), "{name}: {data}");
        }
        assert_eq!(noop, "2.0.0 OK", "{name}: the reply after the data must answer our NOOP");
    }
}

/// Each stored message of `inbox` holds the forged transaction as text; there is
/// one per vector, named, and nothing reached carol or the queue.
fn assert_stored_once_each(w: &World, inbox: &str, per_vector: usize) {
    let files = stored_messages(&w.server.blobs(), OWNER_A, inbox);
    assert_eq!(files.len(), VECTORS.len() * per_vector, "{inbox}: {files:?}");
    let bodies: Vec<String> = files.iter().map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned()).collect();
    for (name, _) in VECTORS {
        let copies = bodies.iter().filter(|b| b.contains(&format!("Subject: outer {name}\r\n"))).count();
        assert_eq!(copies, per_vector, "{inbox}: {name}");
    }
    for body in &bodies {
        assert!(body.contains("MAIL FROM:<") && body.contains("forged"), "the forged transaction is data: {body}");
        assert!(!body.contains('\0'));
    }
    assert!(stored_messages(&w.server.blobs(), OWNER_B, "carol@agents.localhost").is_empty(), "smuggled RCPT delivered");
}

#[test]
fn smuggling_vectors_store_one_message_on_every_smtp_listener() {
    let w = world(&[]);
    let (alice, alice_key) = &w.alice;

    // The MX over a raw socket.
    for (name, terminator) in VECTORS {
        let [data, noop, quit] = raw_attempt(w.server.inbound, &attempt("sender@example.net", "alice@agents.localhost", name, terminator));
        assert!(data.starts_with("250 2.0.0 Message accepted"), "{name}: {data}");
        assert_eq!(noop, "250 2.0.0 OK\r\n", "{name}");
        assert!(quit.starts_with("221 "), "{name}: {quit}");
    }
    let [data, noop, _] = raw_attempt(w.server.inbound, &attempt("sender@example.net", "alice@agents.localhost", "NUL", NUL_VECTOR));
    assert_eq!(data, "550 5.6.0 NUL characters are not allowed in messages\r\n");
    assert_eq!(noop, "250 2.0.0 OK\r\n");
    assert_stored_once_each(&w, "alice@agents.localhost", 1);

    // The MX over smtplib: the same again, all vectors in one session.
    let r = smtp(json!({"port": w.server.inbound.port(), "steps": smtplib_steps("sender@example.net", "alice@agents.localhost")}));
    assert_smtplib_result(&r);
    assert_stored_once_each(&w, "alice@agents.localhost", 2);

    // Submission, STARTTLS (587) and implicit TLS (465): alice to bob.
    for (port, tls) in [(w.server.submission.port(), "starttls"), (w.server.submission_tls.port(), "implicit")] {
        let r = smtp(json!({"port": port, "tls": tls, "login": [alice, alice_key],
                            "steps": smtplib_steps(alice, "bob@agents.localhost")}));
        assert_eq!(r["login"][0], 235, "{r}");
        assert_smtplib_result(&r);
    }
    assert_stored_once_each(&w, "bob@agents.localhost", 2);
    // The forged remote recipient was never queued.
    let queue = run_json(&w.server.data_dir, &["queue", "list"]);
    assert_eq!(queue.as_array().unwrap().len(), 0, "{queue}");
}
