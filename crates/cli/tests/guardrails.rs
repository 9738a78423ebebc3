//! Issue 13 §3 through the real binary: an agent's send limits, set by its
//! owner with `agentkeys agent limits` (signed), refuse over SMTP submission
//! (swaks: `452 4.7.0` naming the limit) and HTTP send (curl: `429 SEND_LIMIT`
//! with `Retry-After`), audited; a message held for review (`250 … held for
//! review`, `202 {"status":"held"}`) reaches the receiving MTA
//! (tests/resources/smtp_sink.py) only after the owner's `agentkeys review
//! approve`, with DKIM signatures an independent verifier accepts
//! (tests/resources/verify_dkim.py), and a rejected one never arrives. The
//! agent sees each sent message's state (`GET …/sent`).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const OWNER_B: &str = "0x000000000000000000000000000000000000000b";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";
const ALICE_INBOX: &str = "alice@agents.localhost";

/// The receiving MTA, killed on drop.
struct Sink {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sink {
    fn start(dir: &Path) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource("smtp_sink.py"))
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 smtp_sink.py (run scripts/test.sh, which installs aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("smtp_sink.py printed {line:?}, not a port"));
        Sink { child, port, dir: dir.to_path_buf() }
    }

    fn messages(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
    }

    fn texts(&self) -> Vec<String> {
        self.messages().iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

struct World {
    server: Server,
    sink: Sink,
    dir: tempfile::TempDir,
    alice_key: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (_, _, _, alice_key) = provision(&data, OWNER_A, ALICE, "alice");
    enroll_owner(&data, OWNER_B);
    let sink = Sink::start(&dir.path().join("sink"));
    let smarthost = format!("127.0.0.1:{}", sink.port);
    let env = [
        ("AGENTKEYS_DELIVERY_ENABLED", "true"),
        ("AGENTKEYS_SMARTHOST", smarthost.as_str()),
        ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
    ];
    let server = Server::start(&data, &env);
    World { server, sink, dir, alice_key }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

/// The server's replies in a swaks transcript.
fn replies(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| {
            l.strip_prefix("<~* ").or_else(|| l.strip_prefix("<~  ")).or_else(|| l.strip_prefix("<** ")).or_else(|| l.strip_prefix("<-  "))
        })
        .map(|l| l.trim().to_owned())
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl World {
    fn data(&self) -> &Path {
        &self.server.data_dir
    }

    /// `agentkeys ARGS` as `owner`, signed; the whole output.
    fn owner(&self, owner: &str, args: &[&str]) -> Output {
        owner_run(self.data(), owner, args)
    }

    fn owner_json(&self, args: &[&str]) -> Value {
        owner_json(self.data(), OWNER_A, args)
    }

    /// swaks as alice over STARTTLS on submission; the transcript.
    fn submit(&self, to: &str, subject: &str) -> String {
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &self.server.submission.port().to_string(), "--tls"])
            .args(["--auth", "PLAIN", "--auth-user", ALICE_INBOX, "--auth-password", &self.alice_key])
            .args(["--timeout", "30", "--ehlo", "swaks.example.net", "--from", ALICE_INBOX, "--to", to])
            .args(["--header", &format!("Subject: {subject}")])
            .output()
            .expect("swaks is installed");
        text(&out.stdout) + "\n" + &text(&out.stderr)
    }

    /// The reply swaks got to the end of DATA.
    fn submit_reply(&self, to: &str, subject: &str) -> String {
        let t = self.submit(to, subject);
        let r = replies(&t);
        let dot = r.iter().position(|l| l.starts_with("354")).unwrap_or_else(|| panic!("no DATA in {t}"));
        r[dot + 1].clone()
    }

    /// POST a JSON send from alice; (status, response head, body).
    fn http_send(&self, to: &str, subject: &str) -> (u16, String, Value) {
        let body = json!({"to": [to], "subject": subject, "text": "hello"}).to_string();
        curl("POST", &format!("http://{}/v1/inboxes/{ALICE_INBOX}/send", self.server.http), Some(&self.alice_key), Some(&body))
    }

    /// `agentkeys mail ARGS --json` as alice's agent, asserting success.
    fn agent_mail(&self, args: &[&str]) -> Value {
        let out = agentkeys(self.data())
            .arg("mail")
            .args(args)
            .arg("--json")
            .env("AGENTKEYS_SERVER", format!("http://{}", self.server.http))
            .env("AGENTKEYS_AGENT_KEY", &self.alice_key)
            .env("AGENTKEYS_SUBMISSION", self.server.submission.to_string())
            .env("AGENTKEYS_CA_FILE", self.data().join("tls/cert.pem"))
            .env("AGENTKEYS_CONFIG_DIR", self.dir.path().join("agent-config"))
            .output()
            .unwrap();
        assert!(out.status.success(), "mail {args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn audit_operations(&self) -> Vec<Value> {
        run_json(self.data(), &["audit", "list", "--limit", "100000"]).as_array().unwrap().clone()
    }

    /// A read capability for alice's inbox, minted with her key.
    fn capability(&self) -> String {
        let body = json!({"inbox": ALICE_INBOX}).to_string();
        let (status, _, v) =
            curl("POST", &format!("http://{}/v1/credentials/read", self.server.http), Some(&self.alice_key), Some(&body));
        assert_eq!(status, 200, "{v}");
        v["token"].as_str().or_else(|| v["capability"].as_str()).unwrap_or_else(|| panic!("{v}")).to_owned()
    }

    fn sent(&self, capability: &str) -> Vec<Value> {
        let (status, _, v) = curl("GET", &format!("http://{}/v1/inboxes/{ALICE_INBOX}/sent", self.server.http), Some(capability), None);
        assert_eq!(status, 200, "{v}");
        v["sent"].as_array().unwrap().clone()
    }
}

fn retry_after(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
}

#[test]
fn limits_refuse_over_smtp_and_http_naming_the_limit_and_only_the_owner_sets_them() {
    let w = world();
    // Open by default.
    let v = w.owner_json(&["agent", "limits", ALICE]);
    assert_eq!((v["per_hour"].clone(), v["review"].clone()), (Value::Null, json!("none")), "{v}");
    // Another owner's agent: the same answer as a missing one.
    let theirs = w.owner(OWNER_B, &["agent", "limits", ALICE, "--per-hour", "1"]);
    let missing = w.owner(OWNER_B, &["agent", "limits", "0x00000000000000000000000000000000000000ff", "--per-hour", "1"]);
    assert!(!theirs.status.success() && !missing.status.success());
    assert!(text(&theirs.stderr).contains("404"), "{}", text(&theirs.stderr));
    assert_eq!(text(&theirs.stderr), text(&missing.stderr));

    let v = w.owner_json(&["agent", "limits", ALICE, "--per-hour", "2"]);
    assert_eq!(v["per_hour"], 2, "{v}");
    // Two sends go (one per door), the third is refused on both doors, naming the limit.
    assert!(w.submit_reply("friend@example.com", "one").starts_with("250 2.0.0 Message accepted"));
    let (status, _, v) = w.http_send("friend@example.com", "two");
    assert_eq!((status, v["status"].as_str()), (202, Some("queued")), "{v}");
    let refused = w.submit_reply("friend@example.com", "three");
    assert!(refused.starts_with("452 4.7.0 Send limit: per-hour send limit of 2 messages reached"), "{refused}");
    assert!(refused.contains("(per-hour)"), "{refused}");
    let (status, head, v) = w.http_send("friend@example.com", "four");
    assert_eq!((status, v["code"].as_str(), v["field"].as_str()), (429, Some("SEND_LIMIT"), Some("per-hour")), "{v}");
    let after = retry_after(&head);
    assert!((1..=3600).contains(&after), "Retry-After {after}");
    assert!(v["detail"].as_str().unwrap().contains("agentkeys agent limits"), "{v}");

    // A day limit: the hour is lifted, the day still counts the two sent.
    let v = w.owner_json(&["agent", "limits", ALICE, "--per-hour", "off", "--per-day", "3"]);
    assert_eq!((v["per_hour"].clone(), v["per_day"].clone()), (Value::Null, json!(3)), "{v}");
    assert!(w.submit_reply("friend@example.com", "five").starts_with("250 "));
    let refused = w.submit_reply("friend@example.com", "six");
    assert!(refused.starts_with("452 4.7.0") && refused.contains("(per-day)"), "{refused}");

    // New recipients: friend@ was new today (one), one more fits, a third does
    // not; friend@ is known, so it still goes.
    w.owner_json(&["agent", "limits", ALICE, "--per-day", "off", "--new-recipients-per-day", "2"]);
    let r = w.submit_reply("new1@example.com", "seven");
    assert!(r.starts_with("250 "), "{r}");
    let (status, _, v) = w.http_send("new2@example.com", "eight");
    assert_eq!((status, v["field"].as_str()), (429, Some("new-recipients-per-day")), "{v}");
    assert!(w.submit_reply("friend@example.com", "nine").starts_with("250 "), "known recipients still go");

    // Audited: the changes by the owner, each refusal by the agent.
    let log = w.audit_operations();
    let ops = |op: &str| log.iter().filter(|r| r["operation"] == op).count();
    assert_eq!(ops("agent.limits"), 3, "three changes (reading changes nothing)");
    assert_eq!(ops("send.limited"), 4, "one record per refusal");
    let limited: Vec<&Value> = log.iter().filter(|r| r["operation"] == "send.limited").collect();
    assert_eq!(limited[0]["outcome"], "denied");
    assert_eq!(limited[0]["detail"]["limit"], "per-hour");

    // Five messages went to the sink, none of the refused ones.
    wait_for("five deliveries", Duration::from_secs(60), || w.sink.messages().len() >= 5);
    std::thread::sleep(Duration::from_secs(1));
    let mut subjects: Vec<String> = w
        .sink
        .texts()
        .iter()
        .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("Subject: ")).map(str::to_owned))
        .collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["five", "nine", "one", "seven", "two"]);
}

#[test]
fn a_held_message_reaches_the_mta_only_after_approval_signed_and_a_rejected_one_never() {
    let w = world();
    w.owner_json(&["agent", "limits", ALICE, "--review", "new-recipients"]);

    // Both doors accept and hold.
    let held_smtp = w.submit_reply("friend@example.com", "please approve");
    assert!(held_smtp.starts_with("250 2.0.0 Message ") && held_smtp.ends_with("held for review by the inbox's owner"), "{held_smtp}");
    let (status, _, v) = w.http_send("stranger@example.com", "please reject");
    assert_eq!((status, v["status"].as_str()), (202, Some("held")), "{v}");
    let rejected_id = v["message_id"].as_str().unwrap().to_owned();

    // The agent sees both as held; nothing is queued or delivered.
    let capability = w.capability();
    let sent = w.sent(&capability);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|m| m["state"] == "held"), "{sent:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(w.sink.messages().is_empty(), "nothing leaves before the owner decides");
    assert_eq!(run_json(w.data(), &["queue", "list"]).as_array().unwrap().len(), 0);

    // The owner lists and reads them.
    let list = w.owner_json(&["review", "list"]);
    let held: Vec<Value> = list["held"].as_array().unwrap().clone();
    assert_eq!(held.len(), 2, "{list}");
    let approve_id = held.iter().find(|h| h["subject"] == "please approve").unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(held.iter().find(|h| h["subject"] == "please reject").unwrap()["id"], rejected_id.as_str());
    let shown = w.owner_json(&["review", "show", &approve_id]);
    assert_eq!(shown["reason"], "new-recipients");
    assert!(shown["message"].as_str().unwrap().contains("Subject: please approve"), "{shown}");
    // Another owner sees none and cannot decide.
    let theirs = w.owner(OWNER_B, &["review", "approve", &approve_id]);
    assert!(!theirs.status.success() && text(&theirs.stderr).contains("404"), "{}", text(&theirs.stderr));
    assert_eq!(owner_json(w.data(), OWNER_B, &["review", "list", "--all"])["held"], json!([]));

    // Reject one, approve the other (over the network, signed).
    let server = format!("http://{}", w.server.http);
    let v = w.owner_json(&["review", "reject", &rejected_id, "--server", &server]);
    assert_eq!(v["state"], "rejected", "{v}");
    let v = w.owner_json(&["review", "approve", &approve_id, "--server", &server]);
    assert_eq!(v["state"], "approved", "{v}");
    let released_as = v["released_as"].as_str().unwrap().to_owned();
    let again = w.owner(OWNER_A, &["review", "approve", &approve_id]);
    assert!(text(&again.stderr).contains("409 ALREADY_DECIDED"), "{}", text(&again.stderr));

    // The approved one arrives, DKIM-signed; the rejected one never does.
    wait_for("the approved message", Duration::from_secs(60), || !w.sink.messages().is_empty());
    std::thread::sleep(Duration::from_secs(2));
    let messages = w.sink.messages();
    assert_eq!(messages.len(), 1, "only the approved message");
    let delivered = std::fs::read_to_string(&messages[0]).unwrap();
    assert!(delivered.contains("Subject: please approve"), "{delivered}");
    assert!(delivered.contains("DKIM-Signature:"), "{delivered}");
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(messages[0].with_extension("json")).unwrap()).unwrap();
    assert_eq!(envelope["rcpt_tos"], json!(["friend@example.com"]));
    assert_eq!(envelope["mail_from"], ALICE_INBOX);
    verify_dkim(&w, &messages[0]);

    // The agent sees where each stands; the queue has the released copy.
    wait_for("delivered state", Duration::from_secs(30), || {
        w.sent(&capability).iter().any(|m| m["state"] == "delivered")
    });
    let sent = w.sent(&capability);
    let state = |subject_id: &str| sent.iter().find(|m| m["message_id"] == subject_id).unwrap()["state"].clone();
    assert_eq!(state(&rejected_id), "rejected");
    let approved = sent.iter().find(|m| m["state"] == "delivered").unwrap();
    assert_eq!(approved["deliveries"][0]["recipient"], "friend@example.com", "{approved}");
    assert!(approved["last_response"].as_str().unwrap().starts_with("250"), "{approved}");
    // The same through the agent's tools: `mail sent`, and `mail show` on a sent id.
    let listed = w.agent_mail(&["sent", "--inbox", ALICE_INBOX]);
    let states: Vec<&str> = listed["sent"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states.len(), 2, "{listed}");
    assert!(states.contains(&"rejected") && states.contains(&"delivered"), "{listed}");
    let shown = w.agent_mail(&["show", &rejected_id, "--inbox", ALICE_INBOX]);
    assert_eq!((shown["message_id"].as_str(), shown["state"].as_str()), (Some(rejected_id.as_str()), Some("rejected")), "{shown}");
    let queue = run_json(w.data(), &["queue", "list"]);
    assert_eq!(queue[0]["id"], released_as.as_str(), "{queue}");

    // friend@ is known now: the next message to it is not held.
    assert!(w.submit_reply("friend@example.com", "known now").starts_with("250 2.0.0 Message accepted"));
    wait_for("the second delivery", Duration::from_secs(60), || w.sink.messages().len() == 2);

    // An edit: the owner sends a replacement; its From must stay the inbox.
    assert!(w.submit_reply("other@example.com", "draft").contains("held for review"));
    let id = w.owner_json(&["review", "list"])["held"][0]["id"].as_str().unwrap().to_owned();
    let forged = w.dir.path().join("forged.eml");
    std::fs::write(&forged, "From: ceo@agents.localhost\r\nTo: other@example.com\r\nSubject: edited\r\n\r\nhi\r\n").unwrap();
    let refused = w.owner(OWNER_A, &["review", "approve", &id, "--edit", forged.to_str().unwrap()]);
    assert!(text(&refused.stderr).contains("403 FROM_NOT_AUTHORIZED"), "{}", text(&refused.stderr));
    assert_eq!(w.owner_json(&["review", "list"])["held"][0]["state"], "held", "a refused edit decides nothing");
    let edit = w.dir.path().join("edit.eml");
    std::fs::write(
        &edit,
        format!("From: {ALICE_INBOX}\r\nTo: other@example.com\r\nSubject: edited by the owner\r\nMessage-ID: <edit@agents.localhost>\r\n\r\nbetter words\r\n"),
    )
    .unwrap();
    let v = w.owner_json(&["review", "approve", &id, "--edit", edit.to_str().unwrap()]);
    assert_eq!(v["state"], "approved");
    wait_for("the edited message", Duration::from_secs(60), || w.sink.messages().len() == 3);
    let edited = w.sink.texts().into_iter().find(|t| t.contains("better words")).expect("the edited text arrives");
    assert!(edited.contains("Subject: edited by the owner") && !edited.contains("Subject: draft"), "{edited}");

    // Audited: the holds by the agent, the decisions by the owner.
    let log = w.audit_operations();
    let ops = |op: &str| log.iter().filter(|r| r["operation"] == op).collect::<Vec<_>>();
    assert_eq!(ops("review.hold").len(), 3);
    assert_eq!(ops("review.reject").len(), 1);
    let approvals = ops("review.approve");
    assert_eq!(approvals.len(), 2);
    assert_eq!(approvals[1]["detail"]["edited"], true);
}

/// The delivered copy verifies under both DKIM keys with dkimpy.
fn verify_dkim(w: &World, message: &Path) {
    let records = dkim_dns(w.data(), "agents.localhost");
    let plan = json!({"dns": records, "messages": [message.display().to_string()]});
    let plan_path = w.dir.path().join("dkim-plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let out = python("verify_dkim.py", &[plan_path.display().to_string()]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l.starts_with("ok")), "{out}");
}
