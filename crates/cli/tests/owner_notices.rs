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
