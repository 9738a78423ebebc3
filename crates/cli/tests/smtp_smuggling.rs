//! SMTP smuggling against the real server, on every SMTP listener: the MX over a
//! raw socket and over Python's smtplib, submission over STARTTLS and over
//! implicit TLS (smtplib). Each vector — named after the advisory that
//! published it — carries a forged second transaction inside the data; only
//! `<CRLF>.<CRLF>` ends DATA, so exactly one message is stored per attempt, the
//! forged transaction never runs, and a NUL is refused with `550 5.6.0`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Server, provision, python, run_json, stored_messages};
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const OWNER_B: &str = "0x000000000000000000000000000000000000000b";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const BOB: &str = "0x00000000000000000000000000000000000000a2";
const CAROL: &str = "0x00000000000000000000000000000000000000b1";

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

struct World {
    _dir: tempfile::TempDir,
    server: Server,
    alice_key: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, _, alice_key) = provision(d, OWNER_A, ALICE, "alice");
    provision(d, OWNER_A, BOB, "bob");
    provision(d, OWNER_B, CAROL, "carol");
    let server = Server::start(d, &[]);
    World { _dir: dir, server, alice_key }
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

fn smtp(plan: Value) -> Value {
    serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap()
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
    let w = world();

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
    let alice = "alice@agents.localhost";
    for (port, tls) in [(w.server.submission.port(), "starttls"), (w.server.submission_tls.port(), "implicit")] {
        let r = smtp(json!({"port": port, "tls": tls, "login": [alice, &w.alice_key],
                            "steps": smtplib_steps(alice, "bob@agents.localhost")}));
        assert_eq!(r["login"][0], 235, "{r}");
        assert_smtplib_result(&r);
    }
    assert_stored_once_each(&w, "bob@agents.localhost", 2);
    // The forged remote recipient was never queued.
    let queue = run_json(&w.server.data_dir, &["queue", "list"]);
    assert_eq!(queue.as_array().unwrap().len(), 0, "{queue}");
}
