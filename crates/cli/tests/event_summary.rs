//! The header summary in `message.received` events and listings (issue 11 §4),
//! through the real binary on both metadata backends: Python's smtplib sends a
//! DKIM-signed mail with RFC 2047 From/Subject (verdicts from a real DNS server
//! on loopback), a look-alike From that no verdict backs, and one whose Subject
//! is raw bytes and control characters; a raw `http.client` SSE subscriber and
//! the list route must show each one's From header, decoded Subject and
//! `authenticated`, and the malformed one must still be stored and
//! acknowledged. On PostgreSQL the events travel through NOTIFY (`PgEvents`).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use agentkeys_store::postgres::TempDatabase;
use agentkeys_testdns::{TestDns, Zone};
use common::{DkimKey, Server, curl, provision, python, stored_messages, use_database};
use serde_json::{Value, json};

const OWNER: &str = "0x000000000000000000000000000000000000000a";
const AGENT: &str = "0x00000000000000000000000000000000000000a1";

/// A running SSE subscriber (tests/resources/sse_client.py).
struct Subscriber {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Subscriber {
    fn start(plan: Value) -> Self {
        let mut child = Command::new("python3")
            .arg(common::resource("sse_client.py"))
            .arg(plan.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sse_client.py");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY 200", "the subscription was refused");
        Self { child, stdout }
    }

    fn finish(mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        self.child.wait().unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// One SMTP transaction with smtplib: MAIL, RCPT, then the message (`raw`:
/// latin-1 code points sent verbatim, terminator included); the three codes.
fn send(server: &Server, mail_from: &str, rcpt: &str, raw: &str) -> Vec<i64> {
    let plan = json!({"port": server.inbound.port(), "steps": [["mail", mail_from], ["rcpt", rcpt], ["raw_data", raw]]});
    let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
    r["steps"].as_array().unwrap().iter().map(|s| s[0].as_i64().unwrap()).collect()
}

/// `message` with CRLF line ends, dot-stuffed and terminated for `raw_data`.
fn data(message: &str) -> String {
    let mut out: String = message.split("\r\n").map(|l| if l.starts_with('.') { format!(".{l}\r\n") } else { format!("{l}\r\n") }).collect();
    out.push_str(".\r\n");
    out
}

fn summary_of(v: &Value) -> (Value, Value, Value) {
    (v["header_from"].clone(), v["subject"].clone(), v["authenticated"].clone())
}

fn events_and_list_carry_the_header_summary(database: Option<&str>) {
    let key = DkimKey::generate();
    let zone = Zone::new()
        .txt("sel._domainkey.bank.example", &key.dns_txt())
        .txt("bank.example", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.bank.example", "v=DMARC1; p=reject; adkim=s; aspf=s");
    let dns = TestDns::start(zone).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if let Some(url) = database {
        use_database(d, url);
    }
    let (_, _, bot, agent_key) = provision(d, OWNER, AGENT, "bot");
    let server = Server::start(d, &[("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver())]);
    let base = format!("http://{}", server.http);
    let body = json!({ "inbox": bot }).to_string();
    let (status, _, minted) = curl("POST", &format!("{base}/v1/credentials/read"), Some(&agent_key), Some(&body));
    assert_eq!(status, 200, "{minted}");
    let cap = minted["token"].as_str().unwrap().to_owned();
    let events = Subscriber::start(json!({
        "url": format!("{base}/v1/inboxes/{bot}/events"), "token": cap, "count": 3, "timeout": 90,
    }));

    // 1. Signed by bank.example: authenticated, with a decoded name and subject.
    let signed = key.sign(
        "bank.example",
        &format!(
            "From: =?utf-8?q?Bank_Caf=C3=A9?= <alerts@bank.example>\r\nTo: {bot}\r\n\
             Subject: =?utf-8?b?WW91ciBjb2RlOiA0ODI5MTMg4pyT?=\r\nMessage-ID: <signed@bank.example>\r\n\r\n\
             Your verification code is 482913.\r\n"
        ),
    );
    assert_eq!(send(&server, "bounce@bank.example", &bot, &data(&signed)), [250, 250, 250]);
    // 2. The same From header, unsigned, from elsewhere: nothing authenticates it.
    let spoof = format!(
        "From: \"alerts@bank.example\" <alerts@bank.example>\r\nTo: {bot}\r\nSubject: Your code: 000000\r\n\
         Message-ID: <spoof@evil.test>\r\n\r\nYour verification code is 000000.\r\n"
    );
    assert_eq!(send(&server, "x@evil.test", &bot, &data(&spoof)), [250, 250, 250]);
    // 3. A Subject of raw bytes: invalid UTF-8, controls, a broken encoded word,
    //    a bidi override. Stored and acknowledged all the same.
    let malformed = format!(
        "From: Odd <odd@evil.test>\r\nTo: {bot}\r\nSubject: a\u{1}b\u{1b}[31m\u{ff}\u{fe} =?utf-8?q?=ZZ=E2=80=AEx?= \u{7f}end\r\n\
         Message-ID: <odd@evil.test>\r\n\r\nbody\r\n"
    );
    assert_eq!(send(&server, "odd@evil.test", &bot, &data(&malformed)), [250, 250, 250], "a malformed Subject loses no mail");
    assert_eq!(stored_messages(&server.blobs(), OWNER, &bot).len(), 3);

    let report = events.finish();
    let got: Vec<&Value> = report["events"].as_array().unwrap().iter().map(|e| &e["data"]).collect();
    assert_eq!(got.len(), 3, "{report}");
    assert_eq!(
        summary_of(got[0]),
        (json!({"address": "alerts@bank.example", "name": "Bank Café"}), json!("Your code: 482913 ✓"), json!(true)),
        "{report}"
    );
    assert_eq!(
        summary_of(got[1]),
        (json!({"address": "alerts@bank.example", "name": "alerts@bank.example"}), json!("Your code: 000000"), json!(false)),
        "the look-alike is not authenticated: {report}"
    );
    let (from, subject, authenticated) = summary_of(got[2]);
    assert_eq!((from, authenticated), (json!({"address": "odd@evil.test", "name": "Odd"}), json!(false)));
    let subject = subject.as_str().unwrap_or_else(|| panic!("a subject, cleaned: {report}"));
    assert!(subject.starts_with('a') && subject.ends_with("end"), "{subject:?}");
    assert!(!subject.chars().any(|c| c.is_control() || c == '\u{202E}'), "control and bidi characters removed: {subject:?}");

    // The listing says the same, newest first.
    let (status, _, page) = curl("GET", &format!("{base}/v1/inboxes/{bot}/messages?order=asc"), Some(&cap), None);
    assert_eq!(status, 200, "{page}");
    let listed: Vec<(Value, Value, Value)> = page["messages"].as_array().unwrap().iter().map(summary_of).collect();
    let streamed: Vec<(Value, Value, Value)> = got.iter().map(|v| summary_of(v)).collect();
    assert_eq!(listed, streamed, "{page}");
    server.stop();
}

#[test]
fn events_and_list_carry_the_header_summary_on_sqlite() {
    events_and_list_carry_the_header_summary(None);
}

#[test]
fn events_and_list_carry_the_header_summary_on_postgres_through_notify() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime.block_on(TempDatabase::create()).expect("a PostgreSQL for tests (AGENTKEYS_TEST_DATABASE_URL)");
    events_and_list_carry_the_header_summary(Some(db.url()));
    drop(db);
    drop(runtime);
}
