//! Inbound authentication verdicts end to end: the real server resolves through a
//! real DNS server on loopback (agentkeys-testdns) that publishes a sender domain's
//! RSA DKIM key, SPF and DMARC records; Python's smtplib sends from 127.0.0.1; the
//! stored copies carry our `Authentication-Results:`.

#![allow(clippy::unwrap_used)]

mod common;

use agentkeys_testdns::{TestDns, Zone};
use common::{DkimKey, Server, metric, provision, python, send_raw, stored_messages};
use serde_json::{Value, json};

const OWNER: &str = "0x000000000000000000000000000000000000000a";
const AGENT: &str = "0x00000000000000000000000000000000000000a1";
const HOST: &str = "mx.agents.localhost";

struct Sender(DkimKey);

impl Sender {
    fn new() -> Self {
        Self(DkimKey::generate())
    }

    /// DKIM-signs `message` (rsa-sha256, relaxed/relaxed, d=bank.example, s=sel).
    fn sign(&self, message: &str) -> String {
        self.0.sign("bank.example", message)
    }

    /// DKIM-signs `message` with d=`domain`, s=sel.
    fn sign_as(&self, domain: &str, message: &str) -> String {
        self.0.sign(domain, message)
    }

    fn zone(&self) -> Zone {
        Zone::new()
            // Over 255 bytes: published as several character-strings.
            .txt("sel._domainkey.bank.example", &self.0.dns_txt())
            .txt("bank.example", "v=spf1 ip4:127.0.0.1 -all")
            .txt("_dmarc.bank.example", "v=DMARC1; p=reject; adkim=s; aspf=r")
    }
}

fn message(subject: &str, extra_headers: &str) -> String {
    format!(
        "{extra_headers}From: Bank <alerts@bank.example>\r\nTo: bot@agents.localhost\r\nSubject: {subject}\r\n\
         Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@bank.example>\r\n\r\n\
         Your verification code is 482913.\r\nIt expires in 10 minutes.\r\n"
    )
}

fn send(server: &Server, raw: &str) {
    let plan = json!({"port": server.inbound.port(), "steps": [
        ["mail", "bounce@bank.example"],
        ["rcpt", "bot@agents.localhost"],
        ["data", {"raw": raw}],
    ]});
    let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
    let codes: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s[0].as_i64().unwrap()).collect();
    assert_eq!(codes, [250, 250, 250], "authentication results never refuse mail: {r}");
}

/// The stored copy whose Subject is `subject`.
fn stored(server: &Server, subject: &str) -> String {
    stored_messages(&server.blobs(), OWNER, "bot@agents.localhost")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|m| m.contains(&format!("Subject: {subject}\r\n")))
        .unwrap_or_else(|| panic!("no stored message with subject {subject}"))
}

/// Our verdict: the first header field, unfolded.
fn verdict(stored: &str) -> String {
    assert!(stored.starts_with(&format!("Authentication-Results: {HOST};")), "ours comes first:\n{stored}");
    let end = stored.find("\r\nReceived: ").expect("our Received: right below it");
    stored[..end].replace("\r\n\t", " ")
}

#[test]
fn verdicts_for_signed_unsigned_altered_and_forged_mail() {
    let sender = Sender::new();
    let dns = TestDns::start(sender.zone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    provision(dir.path(), OWNER, AGENT, "bot");
    let server = Server::start(dir.path(), &[("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver())]);

    // 1. Signed by bank.example, sent from an address its SPF allows, DMARC p=reject.
    send(&server, &sender.sign(&message("signed", "")));
    let v = verdict(&stored(&server, "signed"));
    assert!(v.contains("dkim=pass header.d=bank.example header.s=sel"), "{v}");
    assert!(v.contains("spf=pass"), "{v}");
    assert!(v.contains("smtp.mailfrom=bounce@bank.example"), "{v}");
    assert!(v.contains("dmarc=pass header.from=bank.example"), "{v}");

    // 2. Unsigned.
    send(&server, &message("unsigned", ""));
    let v = verdict(&stored(&server, "unsigned"));
    assert!(v.contains("dkim=none"), "{v}");
    assert!(v.contains("spf=pass"), "{v}");

    // 3. Body altered after signing.
    let altered = sender.sign(&message("altered", "")).replace("482913", "000000");
    send(&server, &altered);
    let v = verdict(&stored(&server, "altered"));
    assert!(v.contains("dkim=fail"), "{v}");
    assert!(v.contains("header.d=bank.example"), "{v}");

    // 4. A forged verdict in our name arrives with the message; a foreign one too.
    let forged = message(
        "forged",
        &format!(
            "Authentication-Results: {HOST};\r\n\tdkim=pass header.d=bank.example;\r\n\tdmarc=pass header.from=bank.example\r\n\
             Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=bank.example\r\n"
        ),
    );
    send(&server, &forged);
    let copy = stored(&server, "forged");
    let v = verdict(&copy);
    assert!(v.contains("dkim=none"), "our real verdict: {v}");
    let ours = copy.matches(&format!("Authentication-Results: {HOST};")).count();
    assert_eq!(ours, 1, "the forged one is gone:\n{copy}");
    assert!(!copy.contains("dkim=pass"), "{copy}");
    assert!(
        copy.contains("Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=bank.example\r\n"),
        "a foreign verdict stays:\n{copy}"
    );

    // The verdicts came from our DNS server, over the wire.
    let seen = dns.queries();
    assert!(seen.iter().any(|q| q.name == "sel._domainkey.bank.example." && q.record_type == "TXT"), "{seen:?}");
    assert!(seen.iter().any(|q| q.name == "_dmarc.bank.example."), "{seen:?}");
    drop(server);
}

#[test]
fn dns_failure_is_temperror_and_the_message_is_kept() {
    let dns = TestDns::start(Zone::new().servfail("bank.example").servfail("_dmarc.bank.example")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    provision(dir.path(), OWNER, AGENT, "bot");
    let server = Server::start(dir.path(), &[("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver())]);
    send(&server, &message("dns-down", ""));
    let v = verdict(&stored(&server, "dns-down"));
    assert!(v.contains("spf=temperror"), "{v}");
    assert!(v.contains("dmarc=temperror"), "{v}");
}

/// The names of `silent.example` never get an answer (its name server is down);
/// `bank.example` answers normally.
fn zone_with_a_silent_domain(sender: &Sender) -> Zone {
    sender
        .zone()
        .no_answer("silent.example")
        .no_answer("_dmarc.silent.example")
        .no_answer("sel._domainkey.silent.example")
}

fn silent_message(sender: &Sender, subject: &str) -> String {
    sender.sign_as("silent.example", &message(subject, "").replace("alerts@bank.example", "alerts@silent.example"))
}

/// Issue 15 item 5: a name server that does not answer must not hold the MX.
/// Twenty sessions at once send mail from a domain whose name server is silent,
/// while a signed message from a healthy domain arrives: every session gets its
/// `250`, the silent domain's copies say `temperror`, the healthy one's verdicts
/// are computed in full, and each silent name was asked a few times (one query,
/// its attempts), not once per message. A message from the same domain after
/// that is answered from the failing entries: not one more query reaches the
/// name server.
#[test]
fn a_silent_name_server_does_not_hold_the_mx() {
    let sender = Sender::new();
    let dns = TestDns::start(zone_with_a_silent_domain(&sender)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    provision(dir.path(), OWNER, AGENT, "bot");
    let server = Server::start(dir.path(), &[("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver())]);

    let sessions: Vec<_> = (0..20)
        .map(|i| {
            let raw = silent_message(&sender, &format!("silent-{i}"));
            let addr = server.inbound;
            std::thread::spawn(move || send_raw(addr, "bounce@silent.example", "bot@agents.localhost", &raw))
        })
        .collect();
    send(&server, &sender.sign(&message("healthy", "")));
    for (i, session) in sessions.into_iter().enumerate() {
        assert_eq!(session.join().unwrap().unwrap(), 250, "session {i}");
    }

    let v = verdict(&stored(&server, "healthy"));
    assert!(v.contains("dkim=pass header.d=bank.example"), "{v}");
    assert!(v.contains("spf=pass"), "{v}");
    assert!(v.contains("dmarc=pass header.from=bank.example"), "{v}");
    for i in 0..20 {
        let v = verdict(&stored(&server, &format!("silent-{i}")));
        assert!(v.contains("dkim=temperror") && v.contains("header.d=silent.example"), "{v}");
        assert!(v.contains("spf=temperror"), "{v}");
        assert!(v.contains("dmarc=temperror") && v.contains("header.from=silent.example"), "{v}");
    }

    // Wait (bounded) until the server gave up on the silent names, so every
    // attempt it will make has been made.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&server, "agentkeys_verdict_dns_upstream_total{result=\"failed\"}") < 3.0 {
        assert!(std::time::Instant::now() < deadline, "the silent names never failed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let silent = [
        ("silent.example", "TXT"),
        ("_dmarc.silent.example", "TXT"),
        ("sel._domainkey.silent.example", "TXT"),
    ];
    assert_eq!(
        metric(&server, "agentkeys_verdict_dns_upstream_total{result=\"failed\"}"),
        3.0,
        "one upstream query per silent name, shared by the 20 messages"
    );
    let asked: Vec<usize> = silent.iter().map(|(name, t)| dns.count(name, t)).collect();
    for ((name, _), n) in silent.iter().zip(&asked) {
        // hickory resends a lost UDP packet within a query: a few packets, never one per message.
        assert!((1..20).contains(n), "{name} asked {n} times for 20 messages");
    }

    let failing_before = metric(&server, "agentkeys_verdict_dns_failing_answers_total");
    assert_eq!(send_raw(server.inbound, "bounce@silent.example", "bot@agents.localhost", &silent_message(&sender, "again")).unwrap(), 250);
    let v = verdict(&stored(&server, "again"));
    assert!(v.contains("spf=temperror") && v.contains("dmarc=temperror"), "{v}");
    let again: Vec<usize> = silent.iter().map(|(name, t)| dns.count(name, t)).collect();
    assert_eq!(again, asked, "no query for names known to fail");
    assert!(
        metric(&server, "agentkeys_verdict_dns_failing_answers_total") > failing_before,
        "answered from the failing entries"
    );
}
