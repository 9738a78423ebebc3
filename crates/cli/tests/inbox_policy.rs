//! Issue 13 §2 through the real binary: an inbox's allow and block lists, set
//! by its owner with `agentkeys inbox policy` (signed), refuse sends over SMTP
//! submission (swaks: `550 5.7.1` at RCPT) and the HTTP API (curl: `403
//! SEND_POLICY`), refuse inbound mail at the end of DATA (`550 5.7.1`, nothing
//! stored for the refusing inbox), and the OTP tools never read a code from a
//! sender the receive lists refuse, nor unauthenticated mail under
//! `unauthenticated: hide`. The service `example.com` signs with a real DKIM
//! key published by a loopback DNS server, so `authenticated` is the MX's own.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use agentkeys_testdns::{TestDns, Zone};
use common::*;
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const OWNER_B: &str = "0x000000000000000000000000000000000000000b";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const BOB: &str = "0x00000000000000000000000000000000000000a2";
const ALICE_INBOX: &str = "alice@agents.localhost";
const BOB_INBOX: &str = "bob@agents.localhost";
const SERVICE: &str = "example.com";

struct World {
    /// Declared first: the server stops before its database is dropped.
    server: Server,
    _db: Option<agentkeys_store::postgres::TempDatabase>,
    _dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    _dns: TestDns,
    dkim: DkimKey,
    alice_key: String,
}

fn world() -> World {
    world_with(&[])
}

fn world_with(env: &[(&str, &str)]) -> World {
    world_on(env, false)
}

/// A world whose metadata is in SQLite, or with `postgres` in a fresh
/// PostgreSQL database of its own (`AGENTKEYS_TEST_DATABASE_URL`).
fn world_on(env: &[(&str, &str)], postgres: bool) -> World {
    let dkim = DkimKey::generate();
    let zone = Zone::new()
        .txt(&format!("sel._domainkey.{SERVICE}"), &dkim.dns_txt())
        .txt(SERVICE, "v=spf1 ip4:192.0.2.1 -all")
        .txt(&format!("_dmarc.{SERVICE}"), "v=DMARC1; p=reject; adkim=r; aspf=r");
    let dns = TestDns::start(zone).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = postgres.then(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = runtime.block_on(agentkeys_store::postgres::TempDatabase::create()).expect("a PostgreSQL for tests");
        use_database(dir.path(), db.url());
        db
    });
    let (_, _, _, alice_key) = provision(dir.path(), OWNER_A, ALICE, "alice");
    provision(dir.path(), OWNER_A, BOB, "bob");
    enroll_owner(dir.path(), OWNER_B);
    let nameserver = dns.nameserver();
    let mut env = env.to_vec();
    env.push(("AGENTKEYS_DNS_NAMESERVERS", &nameserver));
    let server = Server::start(dir.path(), &env);
    World { server, _db: db, _dir: dir, config_dir: tempfile::tempdir().unwrap(), _dns: dns, dkim, alice_key }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

fn mail(from: &str, to: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{}@mail.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        ulid::Ulid::new()
    )
}

fn code_mail(from: &str, code: &str) -> String {
    mail(from, ALICE_INBOX, "Your code", &format!("Your verification code is {code}.\r\nIt expires in 10 minutes.\r\n"))
}

impl World {
    fn data_dir(&self) -> &std::path::Path {
        &self.server.data_dir
    }

    /// `agentkeys inbox policy ARGS` as `owner`, signed; the whole output.
    fn policy(&self, owner: &str, args: &[&str]) -> Output {
        let mut all = vec!["inbox", "policy"];
        all.extend_from_slice(args);
        owner_run(self.data_dir(), owner, &all)
    }

    /// [`World::policy`] as alice's owner, with `--json`, asserting success.
    /// Sets alice's inbox policy from another process (the owner's local
    /// command), then waits out the server's policy cache: a change made
    /// elsewhere applies to mail within `POLICY_CACHE_TTL`.
    fn set_policy(&self, args: &[&str]) -> Value {
        let mut all = vec!["inbox", "policy", ALICE_INBOX];
        all.extend_from_slice(args);
        let set = owner_json(self.data_dir(), OWNER_A, &all);
        std::thread::sleep(agentkeys_store::POLICY_CACHE_TTL);
        set
    }

    /// `agentkeys mail ARGS` as alice's agent.
    fn agent(&self, args: &[&str]) -> Output {
        let mut cmd = agentkeys(self.data_dir());
        cmd.arg("mail").args(args);
        cmd.env("AGENTKEYS_SERVER", format!("http://{}", self.server.http))
            .env("AGENTKEYS_AGENT_KEY", &self.alice_key)
            .env("AGENTKEYS_SUBMISSION", self.server.submission.to_string())
            .env("AGENTKEYS_CA_FILE", self.data_dir().join("tls/cert.pem"))
            .env("AGENTKEYS_CONFIG_DIR", self.config_dir.path());
        cmd.output().unwrap()
    }

    /// swaks as alice over STARTTLS on submission to `to` (comma-separated);
    /// the whole transcript.
    fn submit(&self, to: &str) -> String {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &self.server.submission.port().to_string(), "--tls"])
            .args(["--auth", "PLAIN", "--auth-user", ALICE_INBOX, "--auth-password", &self.alice_key])
            .args(["--timeout", "30", "--ehlo", "swaks.example.net", "--from", ALICE_INBOX, "--to", to])
            .output()
            .expect("swaks is installed");
        text(&out.stdout) + "\n" + &text(&out.stderr)
    }

    /// swaks to the MX (no AUTH): `from` as envelope sender, `to` comma-separated; the transcript.
    fn mx(&self, from: &str, to: &str, raw: &str) -> String {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &self.server.inbound.port().to_string()])
            .args(["--timeout", "30", "--ehlo", "mta.example.net", "--from", from, "--to", to, "--data", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(raw.as_bytes())?;
                c.wait_with_output()
            })
            .expect("swaks is installed");
        text(&out.stdout) + "\n" + &text(&out.stderr)
    }

    /// POST a JSON send from alice; (status, problem or answer).
    fn http_send(&self, to: &str) -> (u16, Value) {
        let body = json!({"to": [to], "subject": "hi", "text": "hello"}).to_string();
        let (status, _, v) = curl(
            "POST",
            &format!("http://{}/v1/inboxes/{ALICE_INBOX}/send", self.server.http),
            Some(&self.alice_key),
            Some(&body),
        );
        (status, v)
    }

    fn queued(&self) -> Vec<String> {
        run_json(self.data_dir(), &["queue", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["recipient"].as_str().unwrap().to_owned())
            .collect()
    }

    fn stored(&self, inbox: &str) -> usize {
        stored_messages(&self.server.blobs(), OWNER_A, inbox).len()
    }
}

/// The server's replies (`<~ ` lines) in a swaks transcript.
fn replies(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("<~* ").or_else(|| l.strip_prefix("<~  ")).or_else(|| l.strip_prefix("<** ")).or_else(|| l.strip_prefix("<-  ")))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn send_lists_refuse_over_smtp_and_http_and_changes_are_owner_only_and_audited() {
    let w = world();
    // No policy: open, shown as such.
    let v = w.set_policy(&[]);
    assert_eq!(v["send_allow"], json!([]), "{v}");
    assert_eq!(v["unauthenticated"], "show", "{v}");

    let v = w.set_policy(&["--send-block", "Blocked.TEST", "--send-block", "ceo@partner.test"]);
    assert_eq!(v["send_block"], json!(["blocked.test", "ceo@partner.test"]), "{v}");

    // SMTP submission: refused at RCPT, naming the list; the allowed one goes on.
    for refused in ["x@blocked.test", "x@mail.blocked.test", "CEO@partner.test"] {
        let t = w.submit(refused);
        assert!(
            replies(&t).iter().any(|r| r == "550 5.7.1 Recipient refused by the inbox's send policy (send_block)"),
            "{refused}: {t}"
        );
    }
    assert!(w.queued().is_empty(), "nothing queued: {:?}", w.queued());
    // A look-alike of a blocked domain is not blocked; another address at the
    // partner is not either.
    let t = w.submit("x@notblocked.test,intern@partner.test");
    assert!(replies(&t).iter().any(|r| r.contains("Message accepted") || r.starts_with("250 2.0.0")), "{t}");
    let mut q = w.queued();
    q.sort();
    assert_eq!(q, ["intern@partner.test", "x@notblocked.test"]);

    // HTTP: 403 problem JSON naming the recipient; nothing sent.
    let (status, v) = w.http_send("someone@blocked.test");
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "SEND_POLICY", "{v}");
    assert_eq!(v["field"], "to", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("someone@blocked.test"), "{v}");
    assert_eq!(w.queued().len(), 2);

    // An allow list: only its recipients, local ones included.
    w.set_policy(&["--send-allow", "partner.test"]);
    let (status, v) = w.http_send("friend@example.net");
    assert_eq!((status, v["code"].as_str()), (403, Some("SEND_POLICY")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("send allow list"), "{v}");
    let (status, v) = w.http_send(BOB_INBOX);
    assert_eq!(status, 403, "a local recipient obeys the list too: {v}");
    assert_eq!(w.stored(BOB_INBOX), 0);
    let t = w.submit("friend@example.net");
    assert!(replies(&t).iter().any(|r| r == "550 5.7.1 Recipient refused by the inbox's send policy (send_allow)"), "{t}");
    let (status, v) = w.http_send("sales@eu.partner.test");
    assert_eq!(status, 202, "{v}");
    // The block list wins over the allow list.
    let (status, _) = w.http_send("ceo@partner.test");
    assert_eq!(status, 403);

    // --clear empties a list.
    let v = w.set_policy(&["--clear", "send-allow"]);
    assert_eq!(v["send_allow"], json!([]), "{v}");
    assert_eq!(w.http_send(BOB_INBOX).0, 202);

    // Bad input: the CLI says what a pattern is, and nothing changes.
    let out = w.policy(OWNER_A, &[ALICE_INBOX, "--send-allow", "not a domain"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("neither an address"), "{}", text(&out.stderr));
    let out = w.policy(OWNER_A, &[ALICE_INBOX, "--clear", "everything"]);
    assert!(text(&out.stderr).contains("receive-allow, receive-block, send-allow or send-block"), "{}", text(&out.stderr));
    // Another owner: the inbox does not exist for them.
    let out = w.policy(OWNER_B, &[ALICE_INBOX, "--send-allow", "evil.test"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    let v = w.set_policy(&[]);
    assert_eq!(v["send_allow"], json!([]), "{v}");

    // Audited, with sizes and a digest, never the addresses.
    let records = run_json(w.data_dir(), &["audit", "list", "--limit", "1000"]);
    let changes: Vec<&Value> = records.as_array().unwrap().iter().filter(|r| r["operation"] == "inbox.policy").collect();
    assert_eq!(changes.len(), 3, "three changes: {changes:?}");
    assert!(changes.iter().all(|r| r["outcome"] == "ok" && r["detail"]["policy_sha256"].as_str().is_some_and(|d| d.len() == 64)));
    let all = serde_json::to_string(&changes).unwrap();
    assert!(!all.contains("partner.test") && !all.contains("blocked.test"), "{all}");
    let verify = run(w.data_dir(), &["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn receive_lists_refuse_at_data_and_the_otp_tools_read_only_allowed_senders() {
    let w = world();
    let signed = |code: &str| w.dkim.sign(SERVICE, &code_mail("Example <no-reply@example.com>", code));

    // Before any policy: a code from anyone is read (the control).
    let t = w.mx("attacker@evil.test", ALICE_INBOX, &code_mail("\"Example\" <attacker@evil.test>", "111111"));
    assert!(replies(&t).iter().any(|r| r.starts_with("250 ") && r.contains("queued")) || t.contains("250 2.0.0"), "{t}");
    let out = w.agent(&["otp", "--allow-unauthenticated", "--include-seen"]);
    assert_eq!(text(&out.stdout), "111111", "{}", text(&out.stderr));

    // A receive allow list: mail stored before it is never read by the OTP tools…
    let v = w.set_policy(&["--receive-allow", SERVICE]);
    assert_eq!(v["receive_allow"], json!([SERVICE]), "{v}");
    let out = w.agent(&["otp", "--allow-unauthenticated", "--include-seen"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("withheld by the inbox's allow/block policy"), "{err}");
    assert!(!err.contains("evil.test"), "withheld mail is not described: {err}");
    // …and new mail from outside it is refused at the end of DATA, not stored.
    let before = w.stored(ALICE_INBOX);
    let t = w.mx("attacker@evil.test", ALICE_INBOX, &code_mail("attacker@evil.test", "222222"));
    assert!(replies(&t).iter().any(|r| r == "550 5.7.1 Refused by the recipient's sender policy"), "{t}");
    assert_eq!(w.stored(ALICE_INBOX), before);
    // With another recipient that has no policy, only that one gets a copy.
    let bob_before = w.stored(BOB_INBOX);
    let t = w.mx("attacker@evil.test", &format!("{ALICE_INBOX},{BOB_INBOX}"), &code_mail("attacker@evil.test", "333333"));
    assert!(t.contains("250 2.0.0"), "{t}");
    assert_eq!((w.stored(ALICE_INBOX), w.stored(BOB_INBOX)), (before, bob_before + 1));
    // The allowed sender (a subdomain's envelope, the domain's From:) gets through and is read.
    let t = w.mx("bounce@mail.example.com", ALICE_INBOX, &signed("444444"));
    assert!(t.contains("250 2.0.0"), "{t}");
    let out = w.agent(&["otp", "--from", SERVICE]);
    assert_eq!(text(&out.stdout), "444444", "{}", text(&out.stderr));

    // A block list inside the allowed domain, on the From: or the envelope.
    w.set_policy(&["--receive-block", "phish.example.com"]);
    let t = w.mx("bounce@example.com", ALICE_INBOX, &code_mail("x@phish.example.com", "555555"));
    assert!(replies(&t).iter().any(|r| r.starts_with("550 5.7.1")), "{t}");
    let t = w.mx("x@phish.example.com", ALICE_INBOX, &signed("666666"));
    assert!(replies(&t).iter().any(|r| r.starts_with("550 5.7.1")), "{t}");

    // unauthenticated: hide. An unsigned mail from the allowed domain is stored
    // (the MX does not refuse it) but the tools never hand it out, even when
    // the caller allows unauthenticated senders; a signed one still is.
    w.set_policy(&["--unauthenticated", "hide"]);
    let t = w.mx("bounce@example.com", ALICE_INBOX, &code_mail("no-reply@example.com", "777777"));
    assert!(t.contains("250 2.0.0"), "{t}");
    let out = w.agent(&["otp", "--from", SERVICE, "--allow-unauthenticated"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("withheld"), "{}", text(&out.stderr));
    w.mx("bounce@example.com", ALICE_INBOX, &signed("888888"));
    let out = w.agent(&["otp", "--from", SERVICE, "--allow-unauthenticated"]);
    assert_eq!(text(&out.stdout), "888888", "{}", text(&out.stderr));
    // The listing withholds it too; under label it is listed, marked.
    let list = |w: &World| -> Value { serde_json::from_slice(&w.agent(&["list", "--json", "--limit", "100"]).stdout).unwrap() };
    let v = list(&w);
    let unsigned = v["messages"].as_array().unwrap().iter().filter(|m| m["authenticated"].is_null()).count();
    // The first attacker mail (off the allow list) and the unsigned one.
    assert_eq!(v["withheld"], 2, "{v}");
    assert_eq!(unsigned, v["messages"].as_array().unwrap().len(), "no marks under hide: {v}");
    w.set_policy(&["--unauthenticated", "label"]);
    let v = list(&w);
    assert_eq!(v["withheld"], 1, "only the attacker's: {v}");
    let marks: Vec<bool> = v["messages"].as_array().unwrap().iter().map(|m| m["authenticated"].as_bool().unwrap()).collect();
    assert_eq!(marks.iter().filter(|a| !**a).count(), 1, "the unsigned one is marked: {v}");
    assert!(marks.iter().filter(|a| **a).count() >= 2, "{v}");
    // show again: the listing carries the verdict the index recorded (as it
    // does without any policy), and the unsigned code is read with the opt-out.
    w.set_policy(&["--unauthenticated", "show"]);
    let v = list(&w);
    let marks: Vec<Option<bool>> = v["messages"].as_array().unwrap().iter().map(|m| m["authenticated"].as_bool()).collect();
    assert_eq!(marks.iter().filter(|a| **a == Some(false)).count(), 1, "the recorded verdict: {v}");
    let out = w.agent(&["otp", "--from", SERVICE, "--allow-unauthenticated"]);
    assert_eq!(text(&out.stdout), "777777", "{}", text(&out.stderr));
}

/// `policy.receive_action = withhold`: the MX stores mail the receive lists
/// refuse, and the agent's tools never show it: not in `mail list` (counted
/// as withheld), not by id (`mail show`), not as a code.
#[test]
fn withhold_mode_stores_refused_mail_and_the_agent_tools_never_show_it() {
    let w = world_with(&[("AGENTKEYS_RECEIVE_POLICY_ACTION", "withhold")]);
    w.set_policy(&["--receive-block", "evil.test"]);
    let t = w.mx("bounce@example.com", ALICE_INBOX, &w.dkim.sign(SERVICE, &code_mail("Example <no-reply@example.com>", "999999")));
    assert!(t.contains("250 2.0.0"), "{t}");
    let before: std::collections::BTreeSet<_> = stored_messages(&w.server.blobs(), OWNER_A, ALICE_INBOX).into_iter().collect();
    let t = w.mx("attacker@evil.test", ALICE_INBOX, &code_mail("\"Example\" <attacker@evil.test>", "121212"));
    assert!(t.contains("250 2.0.0"), "stored, not refused: {t}");
    let after: Vec<_> = stored_messages(&w.server.blobs(), OWNER_A, ALICE_INBOX).into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(after.len(), 1, "the refused sender's copy is stored");
    let evil_id = after[0].file_stem().unwrap().to_str().unwrap().to_owned();

    let out = w.agent(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let froms: Vec<&str> = list["messages"].as_array().unwrap().iter().map(|m| m["from"].as_str().unwrap()).collect();
    assert_eq!(froms, ["no-reply@example.com"], "{list}");
    assert_eq!(list["withheld"], 1, "{list}");
    assert!(!list.to_string().contains("evil.test"), "{list}");

    let out = w.agent(&["show", &evil_id]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("withheld by the inbox's allow/block policy"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("121212"));

    // The server enforces it, not only the agent's tools: a read capability
    // used directly lists it only as an id, cannot fetch it, and its event
    // stream skips it.
    let good_id = before.iter().next().unwrap().file_stem().unwrap().to_str().unwrap().to_owned();
    let base = format!("http://{}", w.server.http);
    let body = json!({ "inbox": ALICE_INBOX }).to_string();
    let (status, _, minted) = curl("POST", &format!("{base}/v1/credentials/read"), Some(&w.alice_key), Some(&body));
    assert_eq!(status, 200, "{minted}");
    let cap = minted["token"].as_str().unwrap();
    let (status, _, page) = curl("GET", &format!("{base}/v1/inboxes/{ALICE_INBOX}/messages?limit=100"), Some(cap), None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["withheld_ids"], json!([evil_id]), "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 1, "{page}");
    assert!(!page.to_string().contains("evil.test"), "{page}");
    let (status, _, problem) = curl("GET", &format!("{base}/v1/inboxes/{ALICE_INBOX}/messages/{evil_id}"), Some(cap), None);
    assert_eq!((status, problem["code"].as_str()), (403, Some("MESSAGE_WITHHELD")), "{problem}");
    assert!(!problem.to_string().contains("121212") && !problem.to_string().contains("evil.test"), "{problem}");
    let (status, _, _) = curl("GET", &format!("{base}/v1/inboxes/{ALICE_INBOX}/messages/{good_id}"), Some(cap), None);
    assert_eq!(status, 200);
    // Replay from the beginning (an id before every message) for 3 s.
    let sse = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "3", "-H", &format!("Authorization: Bearer {cap}")])
        .args(["-H", "Last-Event-ID: 00000000000000000000000000"])
        .arg(format!("{base}/v1/inboxes/{ALICE_INBOX}/events"))
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&sse.stdout);
    assert!(events.contains(&format!("id: {good_id}")), "{events}");
    assert!(!events.contains(&evil_id) && !events.contains("evil.test"), "{events}");

    // The newest code is the refused sender's; the tools read the allowed one.
    let out = w.agent(&["otp", "--allow-unauthenticated"]);
    assert_eq!(text(&out.stdout), "999999", "{}", text(&out.stderr));

    // Lifting the block shows it again (it was stored all along).
    w.set_policy(&["--clear", "receive-block"]);
    let out = w.agent(&["show", &evil_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("121212"), "{}", text(&out.stdout));
}

/// The same doors on the PostgreSQL backend (the scale-out deployment): the
/// owner's lists are stored there and every door reads them from there.
#[test]
fn the_lists_hold_on_postgresql() {
    let w = world_on(&[], true);
    let v = w.set_policy(&["--send-block", "blocked.test", "--receive-allow", SERVICE]);
    assert_eq!(v["send_block"], json!(["blocked.test"]), "{v}");
    let t = w.submit("x@blocked.test");
    assert!(replies(&t).iter().any(|r| r == "550 5.7.1 Recipient refused by the inbox's send policy (send_block)"), "{t}");
    let (status, v) = w.http_send("y@blocked.test");
    assert_eq!((status, v["code"].as_str()), (403, Some("SEND_POLICY")), "{v}");
    assert_eq!(w.http_send("y@partner.test").0, 202);
    let t = w.mx("attacker@evil.test", ALICE_INBOX, &code_mail("attacker@evil.test", "222222"));
    assert!(replies(&t).iter().any(|r| r == "550 5.7.1 Refused by the recipient's sender policy"), "{t}");
    let t = w.mx("bounce@example.com", ALICE_INBOX, &w.dkim.sign(SERVICE, &code_mail("Example <no-reply@example.com>", "424242")));
    assert!(t.contains("250 2.0.0"), "{t}");
    let out = w.agent(&["otp", "--from", SERVICE]);
    assert_eq!(text(&out.stdout), "424242", "{}", text(&out.stderr));
    let out = w.policy(OWNER_B, &[ALICE_INBOX, "--send-allow", "evil.test"]);
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    // The same change over the network: the signed PATCH to the server.
    let server = format!("http://{}", w.server.http);
    let out = w.policy(OWNER_A, &[ALICE_INBOX, "--clear", "send-block", "--server", &server, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["send_block"].clone(), v["receive_allow"].clone()), (json!([]), json!([SERVICE])), "{v}");
    assert_eq!(w.http_send("x@blocked.test").0, 202);
}

/// An agent tightens its own inbox's lists under a grant with `admin` on it
/// (`agentkeys mail policy`); without one, or to loosen them, it is refused
/// and nothing changes; the records name the agent and its grant.
#[test]
fn an_agent_with_admin_tightens_its_own_lists_and_only_the_owner_loosens_them() {
    let w = world();
    let agent_json = |args: &[&str]| -> Value {
        let mut all = vec!["policy", "--inbox", ALICE_INBOX, "--json"];
        all.extend_from_slice(args);
        let out = w.agent(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let agent_err = |args: &[&str]| -> String {
        let mut all = vec!["policy", "--inbox", ALICE_INBOX];
        all.extend_from_slice(args);
        let out = w.agent(&all);
        assert!(!out.status.success(), "{args:?}: {}", text(&out.stdout));
        text(&out.stderr)
    };
    // Reading needs only the read grant; changing needs admin.
    assert_eq!(agent_json(&[])["receive_block"], json!([]));
    let err = agent_err(&["--block-sender", "evil.test"]);
    assert!(err.contains("NO_GRANT") && err.contains("admin"), "{err}");
    assert_eq!(w.set_policy(&[])["receive_block"], json!([]), "nothing changed");
    owner_json(w.data_dir(), OWNER_A, &["grant", "create", "--agent", ALICE, "--inbox", ALICE_INBOX, "--scopes", "read,admin"]);

    // Tightening: blocks are added to the lists there are.
    assert_eq!(agent_json(&["--block-sender", "evil.test"])["receive_block"], json!(["evil.test"]));
    let v = agent_json(&["--block-sender", "spam.test", "--block-recipient", "x@leak.test"]);
    assert_eq!((v["receive_block"].clone(), v["send_block"].clone()), (json!(["evil.test", "spam.test"]), json!(["x@leak.test"])), "{v}");
    let t = w.mx("attacker@evil.test", ALICE_INBOX, &code_mail("attacker@evil.test", "222222"));
    assert!(replies(&t).iter().any(|r| r == "550 5.7.1 Refused by the recipient's sender policy"), "{t}");
    assert_eq!(w.http_send("x@leak.test").1["code"], "SEND_POLICY");
    // An allow list the owner set may be narrowed, never widened or emptied.
    w.set_policy(&["--receive-allow", "example.com", "--receive-allow", "github.com"]);
    assert_eq!(agent_json(&["--allow-sender", "github.com"])["receive_allow"], json!(["github.com"]));
    let err = agent_err(&["--allow-sender", "example.com"]);
    assert!(err.contains("POLICY_OWNER_ONLY") && err.contains("receive_allow"), "{err}");
    assert_eq!(agent_json(&["--unauthenticated", "hide"])["unauthenticated"], "hide");
    let err = agent_err(&["--unauthenticated", "label"]);
    assert!(err.contains("POLICY_OWNER_ONLY") && err.contains("unauthenticated"), "{err}");
    // Removing a block over HTTP directly (a PATCH naming the shorter list) is refused too.
    let base = format!("http://{}", w.server.http);
    let (status, _, problem) = curl(
        "PATCH",
        &format!("{base}/v1/inboxes/{ALICE_INBOX}/policy"),
        Some(&w.alice_key),
        Some(r#"{"receive_block":["spam.test"]}"#),
    );
    assert_eq!((status, problem["code"].as_str(), problem["field"].as_str()), (403, Some("POLICY_OWNER_ONLY"), Some("receive_block")), "{problem}");
    // Another inbox (no admin grant there) answers like one that does not exist for it.
    let (status, _, problem) = curl("PATCH", &format!("{base}/v1/inboxes/{BOB_INBOX}/policy"), Some(&w.alice_key), Some(r#"{"receive_block":["a.test"]}"#));
    assert_eq!((status, problem["code"].as_str()), (403, Some("NO_GRANT")), "{problem}");
    let (status, _, problem) = curl("PATCH", &format!("{base}/v1/inboxes/nobody@agents.localhost/policy"), Some(&w.alice_key), Some(r#"{"receive_block":["a.test"]}"#));
    assert_eq!((status, problem["code"].as_str()), (403, Some("NO_GRANT")), "{problem}");
    // The owner loosens.
    assert_eq!(w.set_policy(&["--clear", "receive-block"])["receive_block"], json!([]));

    // Audited as the agent, under its grant; never the addresses.
    let records = run_json(w.data_dir(), &["audit", "list", "--limit", "1000"]);
    let by_agent: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "inbox.policy" && r["actor"].to_string().contains(ALICE))
        .collect();
    assert_eq!(by_agent.len(), 4, "{by_agent:?}");
    assert!(by_agent.iter().all(|r| r["detail"]["grant"].is_string()), "{by_agent:?}");
    assert!(!serde_json::to_string(&by_agent).unwrap().contains("evil.test"));
    assert!(run(w.data_dir(), &["audit", "verify"]).status.success());
}
