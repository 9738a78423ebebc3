//! Notices to the owner's own address (issue 12), end to end: the real server
//! process queues them from `notifications@<domain>`, DKIM-signed, and its
//! delivery runner hands them to a real receiving MTA (aiosmtpd,
//! tests/resources/smtp_sink.py) as the smarthost; dkimpy
//! (tests/resources/verify_dkim.py) verifies both signatures of every one.
//! A pairing request addressed to the owner, a grant expiring within 3 days
//! (once), an agent's refused AUTHs crossing the threshold, the audit chain
//! failing verification; the owner's settings (`agentkeys owner notifications`)
//! turn a kind off; no notice carries a key, token, pair code or the digits.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, agentkeys, curl, enroll_owner, owner_json, owner_run, resource, run_json, dkim_dns};
use serde_json::{Value, json};

const OWNER: &str = "0x00000000000000000000000000000000000000d1";
const OWNER_MAIL: &str = "owner@example.net";

/// The receiving MTA, killed on drop.
struct Sink {
    child: Child,
    port: u16,
    dir: PathBuf,
    decoded: std::cell::RefCell<std::collections::HashMap<PathBuf, String>>,
}

/// Python's email parser (an independent MIME reader): the decoded From, To,
/// Subject and Auto-Submitted fields and every text part, then the raw message.
const DECODE: &str = r#"
import email, email.policy, sys
raw = open(sys.argv[1], "rb").read()
m = email.message_from_bytes(raw, policy=email.policy.default)
for h in ("From", "To", "Subject", "Auto-Submitted"):
    print(f"{h}: {m[h]}")
for part in m.walk():
    if part.get_content_maintype() == "text":
        print(f"--- {part.get_content_type()}")
        print(part.get_content())
print("--- raw")
print(raw.decode("utf-8", "replace"))
"#;

impl Sink {
    fn start(dir: &Path) -> Sink {
        Sink::start_with(dir, &[])
    }

    /// With more `smtp_sink.py` options (e.g. `--reject-domain D`).
    fn start_with(dir: &Path, options: &[&str]) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource("smtp_sink.py"))
            .arg(dir)
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 smtp_sink.py (run scripts/test.sh, which installs aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("smtp_sink.py printed {line:?}, not a port"));
        Sink { child, port, dir: dir.to_path_buf(), decoded: Default::default() }
    }

    /// Every received message: (path, text).
    fn messages(&self) -> Vec<(PathBuf, String)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort_by_key(|p| p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0));
        let mut cache = self.decoded.borrow_mut();
        files
            .into_iter()
            .map(|p| {
                let text = cache.entry(p.clone()).or_insert_with(|| {
                    let out = Command::new("python3").args(["-c", DECODE]).arg(&p).output().unwrap();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    String::from_utf8_lossy(&out.stdout).into_owned()
                });
                (p, text.clone())
            })
            .collect()
    }

    /// Waits for a message whose text contains `needle`.
    fn wait_for(&self, needle: &str, limit: Duration) -> (PathBuf, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.messages().into_iter().find(|(_, m)| m.contains(needle)) {
                return found;
            }
            assert!(Instant::now() < deadline, "no mail containing {needle:?} arrived; got {:#?}", self.subjects());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn subjects(&self) -> Vec<String> {
        self.messages().iter().filter_map(|(_, m)| m.lines().find(|l| l.starts_with("Subject:")).map(str::to_owned)).collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}


/// Both DKIM signatures of every message verify with dkimpy.
pub fn assert_dkim(data_dir: &Path, work: &Path, messages: &[PathBuf]) {
    let plan = json!({"dns": dkim_dns(data_dir, "agents.localhost"), "messages": messages});
    let plan_path = work.join("dkim-plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let out = Command::new("python3").arg(resource("verify_dkim.py")).arg(&plan_path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.lines().all(|l| l.starts_with("ok")), "dkimpy: {stdout}");
    assert_eq!(stdout.lines().count(), messages.len(), "{stdout}");
}

/// Starts `agent pair … --owner OWNER`; returns the child and (pair code, digits, agent id).
fn pair(d: &Path, config: &Path, name: &str, base: &str) -> (Child, BufReader<std::process::ChildStdout>, [String; 3]) {
    let mut child = agentkeys(d)
        .env("AGENTKEYS_CONFIG_DIR", config)
        .args(["agent", "pair", "--server", base, "--name", name, "--owner", OWNER, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("agent pair printed {first:?}: {e}"));
    let got = ["pair_code", "confirmation_code", "agent_id"].map(|k| first[k].as_str().unwrap().to_owned());
    (child, lines, got)
}

#[test]
fn owner_notices_arrive_signed_once_and_follow_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    run_json(&d, &["owner", "add", OWNER, "--email", OWNER_MAIL]);
    enroll_owner(&d, OWNER);
    let sink = Sink::start(&dir.path().join("sink"));
    let smarthost = format!("127.0.0.1:{}", sink.port);
    let server = Server::start(
        &d,
        &[
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_SMARTHOST", &smarthost),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
            ("AGENTKEYS_NOTICE_SWEEP_INTERVAL", "1s"),
            ("AGENTKEYS_NOTICE_AUDIT_INTERVAL", "1s"),
        ],
    );
    let base = format!("http://{}", server.http);
    let mut secrets: Vec<String> = Vec::new();

    // A pairing request addressed to the owner: a notice with a link to the console.
    let (mut child, mut lines, [code, digits, agent]) = pair(&d, &dir.path().join("agent1"), "ci bot", &base);
    secrets.extend([code.clone(), digits.clone()]);
    let (_, mail) = sink.wait_for("ci bot", Duration::from_secs(30));
    assert!(mail.contains("From: AgentKeys <notifications@agents.localhost>"), "{mail}");
    assert!(mail.contains(&format!("To: {OWNER_MAIL}")), "{mail}");
    assert!(mail.contains("Auto-Submitted: auto-generated"), "{mail}");
    assert!(mail.contains("--- text/plain") && mail.contains("--- text/html"), "both parts: {mail}");
    assert!(mail.contains(&agent) && mail.contains("SHA256:"), "agent id and device fingerprint: {mail}");
    assert!(mail.contains("/console"), "a link to the approval page: {mail}");
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(sink.messages()[0].0.with_extension("json")).unwrap()).unwrap();
    assert_eq!(envelope["rcpt_tos"], json!([OWNER_MAIL]), "{envelope}");
    assert_eq!(envelope["mail_from"], "notifications@agents.localhost", "{envelope}");
    let approved = owner_run(&d, OWNER, &["approve", &code, "--digits", &digits, "--server", &base]);
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    let mut last = String::new();
    lines.read_line(&mut last).unwrap();
    assert!(child.wait().unwrap().success(), "{last}");
    let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("agent1").join("agent.json")).unwrap()).unwrap();
    let agent_key = config["agent_key"].as_str().unwrap().to_owned();
    secrets.push(agent_key.clone());

    // A grant expiring within 3 days: one notice, once.
    let inbox = run_json(&d, &["inbox", "create", "--agent", &agent, "--name", "ci"])["address"].as_str().unwrap().to_owned();
    let grant = owner_json(&d, OWNER, &["grant", "create", "--agent", &agent, "--inbox", &inbox, "--scopes", "read", "--ttl", "2d"]);
    let grant = grant["id"].as_str().unwrap().to_owned();
    let (_, mail) = sink.wait_for(&format!("grant {grant}"), Duration::from_secs(30));
    assert!(mail.contains("expires soon") && mail.contains("ci bot"), "{mail}");
    std::thread::sleep(Duration::from_secs(3));
    let about_grant = sink.messages().iter().filter(|(_, m)| m.contains(&format!("grant {grant} of agent"))).count();
    assert_eq!(about_grant, 1, "notified once over several sweeps: {:#?}", sink.subjects());

    // Refused AUTHs crossing the threshold: the agent sends without a send grant.
    let send = format!("{base}/v1/inboxes/{inbox}/send");
    let body = json!({"to": ["someone@example.org"], "subject": "x", "text": "x"}).to_string();
    for _ in 0..10 {
        let (status, _, _) = curl("POST", &send, Some(&agent_key), Some(&body));
        assert_eq!(status, 401);
    }
    let (_, mail) = sink.wait_for("refused logins", Duration::from_secs(30));
    assert!(mail.contains(&agent) && mail.contains("audit list --agent"), "{mail}");

    // A send limit (issue 13 §3): the second send within the hour is refused,
    // and the owner is told once.
    owner_json(&d, OWNER, &["grant", "create", "--agent", &agent, "--inbox", &inbox, "--scopes", "send"]);
    owner_json(&d, OWNER, &["agent", "limits", &agent, "--per-hour", "1"]);
    let to_self = json!({"to": [inbox.clone()], "subject": "x", "text": "x"}).to_string();
    assert_eq!(curl("POST", &send, Some(&agent_key), Some(&to_self)).0, 202);
    for _ in 0..2 {
        assert_eq!(curl("POST", &send, Some(&agent_key), Some(&to_self)).0, 429);
    }
    let (_, mail) = sink.wait_for("reached its send limit", Duration::from_secs(30));
    assert!(mail.contains("per-hour") && mail.contains("agentkeys agent limits"), "{mail}");
    std::thread::sleep(Duration::from_secs(3));
    let limit_notices = sink.messages().iter().filter(|(_, m)| m.contains("reached its send limit")).count();
    assert_eq!(limit_notices, 1, "one notice per agent, limit and hour: {:#?}", sink.subjects());

    // Settings: the owner turns pairing notices off (signed), pairs a second
    // agent (no notice), turns them on again and pairs a third (a notice).
    let shown = owner_json(&d, OWNER, &["owner", "notifications"]);
    assert_eq!(shown["address"], OWNER_MAIL);
    assert!(shown["notices"].as_object().unwrap().values().all(|v| v == true), "{shown}");
    let off = owner_json(&d, OWNER, &["owner", "notifications", "--pairing", "off", "--server", &base]);
    assert_eq!(off["notices"]["pairing"], false, "{off}");
    assert_eq!(off["notices"]["expiring"], true, "{off}");
    let bad = owner_run(&d, OWNER, &["owner", "notifications", "--pairing", "maybe"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("on"), "a clear error");
    let (mut quiet, _, [qcode, qdigits, _]) = pair(&d, &dir.path().join("agent2"), "quiet bot", &base);
    secrets.extend([qcode, qdigits]);
    std::thread::sleep(Duration::from_secs(2));
    owner_json(&d, OWNER, &["owner", "notifications", "--pairing", "on", "--server", &base]);
    let (mut loud, _, [lcode, ldigits, _]) = pair(&d, &dir.path().join("agent3"), "loud bot", &base);
    secrets.extend([lcode, ldigits]);
    sink.wait_for("loud bot", Duration::from_secs(30));
    assert!(!sink.messages().iter().any(|(_, m)| m.contains("quiet bot")), "pairing notices were off: {:#?}", sink.subjects());
    quiet.kill().ok();
    loud.kill().ok();
    quiet.wait().ok();
    loud.wait().ok();
    let records = run_json(&d, &["audit", "list", "--limit", "100000"]);
    let changes: Vec<&Value> = records.as_array().unwrap().iter().filter(|r| r["operation"] == "owner.notifications").collect();
    assert_eq!(changes.len(), 2, "each change audited");
    assert!(changes.iter().all(|r| r["detail"]["approval"]["gate"] == "master_key"), "{changes:?}");

    // The audit chain failing verification: an edited record.
    let edit = Command::new("sqlite3")
        .arg(d.join("meta.sqlite"))
        .arg("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET subject = 'edited' WHERE seq = 3;")
        .output()
        .expect("spawn sqlite3");
    assert!(edit.status.success(), "{}", String::from_utf8_lossy(&edit.stderr));
    let (_, mail) = sink.wait_for("failed verification", Duration::from_secs(30));
    assert!(mail.contains("Audit record 3 does not verify"), "{mail}");
    std::thread::sleep(Duration::from_secs(3));
    let audit_notices = sink.messages().iter().filter(|(_, m)| m.contains("Audit record 3 does not verify")).count();
    assert_eq!(audit_notices, 1, "once per broken record");

    // Every notice is signed (both signatures verify) and carries no secret.
    let all = sink.messages();
    assert!(all.len() >= 5, "{:#?}", sink.subjects());
    for (path, mail) in &all {
        for secret in &secrets {
            assert!(!mail.contains(secret.as_str()), "{} carries a secret ({secret})", path.display());
        }
        assert!(!mail.contains("ak_"), "{} carries something like a key", path.display());
        assert!(mail.contains("From: AgentKeys <notifications@agents.localhost>"), "{}", path.display());
    }
    let paths: Vec<PathBuf> = all.iter().map(|(p, _)| p.clone()).collect();
    assert_dkim(&d, dir.path(), &paths);
    assert!(server.stop().success());
}

/// Issue 12: a flood of pairing requests addressed to one owner (anyone who
/// knows the owner's id can open them) mails at most
/// `MAX_PAIRING_NOTICES_PER_HOUR` (5) notices and one summary that hour; every
/// request is still pending for the owner (the console's approvals list reads
/// these rows).
#[test]
fn a_flood_of_pairing_requests_mails_the_owner_at_most_five_notices_and_one_summary() {
    const CAP: usize = 5;
    const FLOOD: usize = CAP + 3;
    // The cap counts per clock hour: do not start within a minute of its end.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if now % 3600 > 3540 {
        std::thread::sleep(Duration::from_secs(3600 - now % 3600 + 1));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    run_json(&d, &["owner", "add", OWNER, "--email", OWNER_MAIL]);
    enroll_owner(&d, OWNER);
    let sink = Sink::start(&dir.path().join("sink"));
    let smarthost = format!("127.0.0.1:{}", sink.port);
    let server = Server::start(
        &d,
        &[
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_SMARTHOST", &smarthost),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
        ],
    );
    let base = format!("http://{}", server.http);
    let mut agents = Vec::new();
    for i in 0..FLOOD {
        let (child, _, [_, _, agent]) = pair(&d, &dir.path().join(format!("flood{i}")), &format!("flood bot {i}"), &base);
        agents.push((child, agent));
    }
    let (_, summary) = sink.wait_for("More pairing requests addressed to you", Duration::from_secs(30));
    assert!(summary.contains(&format!("More than {CAP} pairing requests")) && summary.contains("/console"), "{summary}");
    // Give every other request time to (not) produce a mail.
    std::thread::sleep(Duration::from_secs(3));
    let mails = sink.messages();
    let notices = mails.iter().filter(|(_, m)| m.contains("Pairing request from agent \"flood bot")).count();
    let summaries = mails.iter().filter(|(_, m)| m.contains("More pairing requests addressed to you")).count();
    assert_eq!((notices, summaries), (CAP, 1), "{:#?}", sink.subjects());
    assert_eq!(mails.len(), CAP + 1, "nothing else was mailed: {:#?}", sink.subjects());
    let paths: Vec<PathBuf> = mails.iter().map(|(p, _)| p.clone()).collect();
    assert_dkim(&d, dir.path(), &paths);
    // Every request is still pending and addressed to the owner.
    let pending = Command::new("sqlite3")
        .arg(d.join("meta.sqlite"))
        .arg(format!("SELECT agent FROM pairing_requests WHERE addressed_to = '{OWNER}' AND status = 'pending'"))
        .output()
        .expect("spawn sqlite3");
    let listed = String::from_utf8_lossy(&pending.stdout);
    for (_, agent) in &agents {
        assert!(listed.contains(agent.as_str()), "{agent} is not pending: {listed}");
    }
    for (mut child, _) in agents {
        child.kill().ok();
        child.wait().ok();
    }
    assert!(server.stop().success());
}

/// Issue 12: bounce notices without any limit set by the owner. An agent
/// (no `--max-bounce-percent`) sends to addresses the receiving MTA refuses
/// (`550 5.1.1`, aiosmtpd `--reject-domain`): once at least 10 deliveries
/// finished in the last day and 10% or more bounced
/// (`DEFAULT_BOUNCE_NOTICE_PERCENT`), its owner gets one `bounces` notice
/// (DKIM-valid), once per agent and day; sending is not paused.
#[test]
fn an_agent_bouncing_over_the_default_threshold_is_reported_once_without_a_limit_set() {
    const SENDS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    run_json(&d, &["owner", "add", OWNER, "--email", OWNER_MAIL]);
    enroll_owner(&d, OWNER);
    let agent = "0x00000000000000000000000000000000000000a7";
    run_json(&d, &["agent", "add", agent, "--owner", OWNER, "--name", "bouncy bot"]);
    let inbox = run_json(&d, &["inbox", "create", "--agent", agent, "--name", "bouncy"])["address"].as_str().unwrap().to_owned();
    owner_json(&d, OWNER, &["grant", "create", "--agent", agent, "--inbox", &inbox, "--scopes", "send"]);
    let key = run_json(&d, &["key", "create", "--agent", agent])["key"].as_str().unwrap().to_owned();
    let sink = Sink::start_with(&dir.path().join("sink"), &["--reject-domain", "nowhere.example"]);
    let smarthost = format!("127.0.0.1:{}", sink.port);
    let server = Server::start(
        &d,
        &[
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_SMARTHOST", &smarthost),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
            ("AGENTKEYS_NOTICE_SWEEP_INTERVAL", "1s"),
        ],
    );
    let base = format!("http://{}", server.http);
    let send = format!("{base}/v1/inboxes/{inbox}/send");
    // Nine sends bounce: 9 finished deliveries are too few to judge.
    for i in 0..SENDS - 1 {
        let body = json!({"to": [format!("gone{i}@nowhere.example")], "subject": "hello", "text": "x"}).to_string();
        assert_eq!(curl("POST", &send, Some(&key), Some(&body)).0, 202);
    }
    let bounced = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let queue = run_json(&d, &["queue", "list"]);
            let count = queue.as_array().unwrap().iter().filter(|q| q["state"] == "bounced" && q["sender"] == inbox.as_str()).count();
            if count >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{n} deliveries did not bounce: {queue}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    bounced(SENDS - 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!sink.messages().iter().any(|(_, m)| m.contains("of its mail bounced")), "below the sample size: {:#?}", sink.subjects());
    // The tenth: 10 of 10 bounced, one notice; sending is not paused.
    let body = json!({"to": ["gone9@nowhere.example"], "subject": "hello", "text": "x"}).to_string();
    assert_eq!(curl("POST", &send, Some(&key), Some(&body)).0, 202);
    bounced(SENDS);
    let (path, mail) = sink.wait_for("of its mail bounced", Duration::from_secs(30));
    assert!(mail.contains("bouncy bot") && mail.contains("10 of the last 10") && mail.contains("--max-bounce-percent"), "{mail}");
    assert!(mail.contains(&format!("To: {OWNER_MAIL}")), "{mail}");
    assert_eq!(curl("POST", &send, Some(&key), Some(&body)).0, 202, "a notice, not a pause");
    std::thread::sleep(Duration::from_secs(3));
    let notices = sink.messages().iter().filter(|(_, m)| m.contains("of its mail bounced")).count();
    assert_eq!(notices, 1, "once per agent and day: {:#?}", sink.subjects());
    assert!(!mail.contains(&key), "no secret in the notice");
    assert_dkim(&d, dir.path(), &[path]);
    assert!(server.stop().success());
}
