//! Outbound delivery end to end: the real server process, a submission through
//! Python's smtplib, and a real receiving MTA (aiosmtpd, tests/resources/smtp_sink.py)
//! on loopback as the smarthost. Backoff is scaled down so retries take seconds.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, dkim_dns, http_get, provision, python, resource, run_json, stored_messages};
use serde_json::{Value, json};

const OWNER: &str = "0x000000000000000000000000000000000000000a";
const ALICE: &str = "0x00000000000000000000000000000000000000a1";

/// The receiving MTA, killed on drop.
struct Sink {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sink {
    fn start(dir: &Path, args: &[&str]) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource("smtp_sink.py"))
            .arg(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 smtp_sink.py (run scripts/test.sh, which installs aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("smtp_sink.py printed {line:?}, not a port"));
        Sink {
            child,
            port,
            dir: dir.to_path_buf(),
        }
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

    fn data_attempts(&self) -> usize {
        std::fs::read_to_string(self.dir.join("attempts")).map_or(0, |s| s.lines().count())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn delivery_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AGENTKEYS_DELIVERY_ENABLED", "true".to_owned()),
        ("AGENTKEYS_SMARTHOST", format!("127.0.0.1:{port}")),
        // 1 min → 60 ms (whole seconds in the queue: retries about a second apart).
        ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001".to_owned()),
    ]
}

fn start_server(data_dir: &Path, port: u16) -> Server {
    let env = delivery_env(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(data_dir, &env)
}

fn submit(server: &Server, alice: &str, key: &str, to: &str, subject: &str) {
    let plan = json!({"port": server.submission.port(), "tls": "starttls", "login": [alice, key], "steps": [
        ["sendmail", alice, [to], {"from": alice, "to": to, "subject": subject}],
    ]});
    let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
    assert_eq!(r["login"][0], 235, "{r}");
    assert_eq!(r["steps"][0][0], 250, "{r}");
}

fn submit_raw(server: &Server, alice: &str, key: &str, to: &str, raw: &str) {
    let plan = json!({"port": server.submission.port(), "tls": "starttls", "login": [alice, key], "steps": [
        ["sendmail", alice, [to], {"raw": raw}],
    ]});
    let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
    assert_eq!(r["steps"][0][0], 250, "{r}");
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn queue(data_dir: &Path) -> Vec<Value> {
    run_json(data_dir, &["queue", "list"])
        .as_array()
        .unwrap()
        .clone()
}

fn all_in_state(data_dir: &Path, state: &str) -> bool {
    let q = queue(data_dir);
    !q.is_empty() && q.iter().all(|e| e["state"] == state)
}


#[test]
fn temporary_failures_retry_with_backoff_and_deliver_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    let (_, _, alice, key) = provision(&d, OWNER, ALICE, "alice");
    let sink = Sink::start(&dir.path().join("sink"), &["--tempfail", "2"]);
    let server = start_server(&d, sink.port);
    submit(&server, &alice, &key, "friend@example.com", "retried");

    wait_for("delivery", Duration::from_secs(60), || {
        all_in_state(&d, "delivered")
    });
    let q = queue(&d);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["attempts"], 3, "{q:?}");
    // Give a duplicate a chance to show up, then count.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.messages().len(), 1, "exactly one copy arrives");
    assert_eq!(sink.data_attempts(), 3);
    let envelope: Value = serde_json::from_str(
        &std::fs::read_to_string(sink.messages()[0].with_extension("json")).unwrap(),
    )
    .unwrap();
    assert_eq!(envelope["mail_from"], alice.as_str());
    assert_eq!(envelope["rcpt_tos"], json!(["friend@example.com"]));

    let id = q[0]["id"].as_str().unwrap().to_owned();
    let show = run_json(&d, &["queue", "show", &id]);
    let outcomes: Vec<&str> = show["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["deferred", "deferred", "delivered"], "{show}");
    assert!(
        show["attempts"][0]["response"]
            .as_str()
            .unwrap()
            .starts_with("451"),
        "{show}"
    );
    // Delivered everywhere: the queued copy is gone.
    assert!(
        !server
            .blobs()
            .join("queue")
            .join(format!("{id}.eml"))
            .exists()
    );

    // The delivered copy verifies under both DKIM keys with an independent verifier.
    let plan = json!({"dns": dkim_dns(&d, "agents.localhost"), "messages": [sink.messages()[0].display().to_string()]});
    let plan_path = dir.path().join("dkim-plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let out = python("verify_dkim.py", &[plan_path.display().to_string()]);
    assert!(out.lines().any(|l| l.starts_with("ok")), "{out}");

    // The metrics saw it.
    let metrics = http_get(server.http, "/metrics");
    assert!(
        metrics.contains("agentkeys_delivery_attempts_total{result=\"deferred\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentkeys_delivery_attempts_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentkeys_delivery_latency_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("agentkeys_queue_depth"), "{metrics}");
}

#[test]
fn permanent_failure_bounces_with_a_dsn_in_the_sender_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    let (_, _, alice, key) = provision(&d, OWNER, ALICE, "alice");
    let sink = Sink::start(&dir.path().join("sink"), &["--reject"]);
    let server = start_server(&d, sink.port);
    // The sender's agent follows its inbox: the DSN lands through the same
    // path as any mail (indexed, then announced).
    let cap = read_capability(&server, &key, &alice);
    let mut events = std::process::Command::new("python3")
        .arg(resource("sse_client.py"))
        .arg(serde_json::json!({ "url": format!("http://{}/v1/inboxes/{alice}/events", server.http), "token": cap, "count": 1, "timeout": 90 }).to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut events_out = std::io::BufReader::new(events.stdout.take().unwrap());
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut events_out, &mut ready).unwrap();
    assert_eq!(ready.trim(), "READY 200");
    submit(&server, &alice, &key, "nobody@example.com", "doomed");

    wait_for("the bounce", Duration::from_secs(60), || {
        all_in_state(&d, "bounced")
    });
    let q = queue(&d);
    assert_eq!(q[0]["attempts"], 1, "5xx bounces at once: {q:?}");
    assert!(
        q[0]["last_response"].as_str().unwrap().starts_with("550"),
        "{q:?}"
    );
    let dsns = stored_messages(&server.blobs(), OWNER, &alice);
    assert_eq!(dsns.len(), 1, "one DSN in the sender inbox");
    let dsn = std::fs::read_to_string(&dsns[0]).unwrap();
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains("message/delivery-status"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@example.com"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(
        dsn.contains("Subject: doomed"),
        "the original's headers come back: {dsn}"
    );
    assert!(sink.messages().is_empty());

    let dsn_id = dsns[0].file_stem().unwrap().to_string_lossy().into_owned();
    let mut report = String::new();
    std::io::BufRead::read_line(&mut events_out, &mut report).unwrap();
    events.wait().unwrap();
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["events"][0]["id"], dsn_id.as_str(), "{report}");
    let listing = curl_json(&format!("http://{}/v1/inboxes/{alice}/messages", server.http), &cap);
    assert_eq!(listing["messages"][0]["message_id"], dsn_id.as_str(), "{listing}");
}

fn curl_json(url: &str, bearer: &str) -> Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-H"])
        .arg(format!("Authorization: Bearer {bearer}"))
        .arg(url)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn read_capability(server: &Server, key: &str, inbox: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "-H", "Content-Type: application/json", "-H"])
        .arg(format!("Authorization: Bearer {key}"))
        .arg("--data-binary")
        .arg(serde_json::json!({ "inbox": inbox }).to_string())
        .arg(format!("http://{}/v1/credentials/read", server.http))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[test]
fn queued_mail_survives_sigkill_and_is_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    let (_, _, alice, key) = provision(&d, OWNER, ALICE, "alice");
    // First life: delivery off (its runner must not get there first).
    let server = Server::start(&d, &[]);
    for i in 0..5 {
        submit(
            &server,
            &alice,
            &key,
            &format!("friend{i}@example.com"),
            &format!("crash-{i}"),
        );
    }
    server.kill();
    assert_eq!(queue(&d).len(), 5);

    let sink = Sink::start(&dir.path().join("sink"), &[]);
    // A second life that is killed while delivering (some rows may be leased).
    let server = start_server(&d, sink.port);
    server.kill();
    let server = start_server(&d, sink.port);
    wait_for("every message delivered", Duration::from_secs(90), || {
        all_in_state(&d, "delivered")
    });
    let mut subjects: Vec<String> = sink
        .messages()
        .iter()
        .map(|p| {
            let m = std::fs::read_to_string(p).unwrap();
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_owned()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(
        subjects,
        (0..5).map(|i| format!("crash-{i}")).collect::<Vec<_>>(),
        "none lost"
    );
    drop(server);
}

#[test]
fn smuggling_vectors_arrive_as_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    let (_, _, alice, key) = provision(&d, OWNER, ALICE, "alice");
    let sink = Sink::start(&dir.path().join("sink"), &[]);
    let server = start_server(&d, sink.port);
    // Bare-LF and bare-CR end-of-data look-alikes followed by a second envelope
    // (CVE-2023-51764/51765/51766 family). smtplib sends the raw bytes as given.
    let vectors = ["\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r", "\r\n.\n"];
    for (i, v) in vectors.iter().enumerate() {
        let raw = format!(
            "From: {alice}\r\nTo: victim@example.com\r\nSubject: vector-{i}\r\n\r\nbody{v}MAIL FROM:<ceo@agents.localhost>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nFrom: ceo@agents.localhost\r\nSubject: smuggled\r\n\r\nhi\r\n"
        );
        submit_raw(&server, &alice, &key, "victim@example.com", &raw);
    }
    wait_for("delivery", Duration::from_secs(60), || {
        all_in_state(&d, "delivered") && queue(&d).len() == vectors.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        vectors.len(),
        "one message per submission, nothing smuggled"
    );
    for m in &messages {
        let text = std::fs::read_to_string(m).unwrap();
        let envelope: Value =
            serde_json::from_str(&std::fs::read_to_string(m.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(envelope["mail_from"], alice.as_str(), "{text}");
        assert!(text.contains("Subject: vector-"), "{text}");
    }
}

/// The outbound corpus (tests/resources/outbound_corpus.py, deterministic): 120
/// messages of every header shape, body shape (multipart, attachments, 8-bit and
/// UTF-8, long lines, leading dots, smuggling look-alikes) and line-ending mix,
/// submitted by an agent over STARTTLS + AUTH, delivered by the runner to a real
/// MTA (aiosmtpd, pipelining on) and checked there by dkimpy: both signatures of
/// every received message must verify. A failure names the message.
#[test]
fn a_varied_corpus_arrives_with_both_dkim_signatures_valid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir_all(&d).unwrap();
    let (_, _, alice, key) = provision(&d, OWNER, ALICE, "alice");
    let sink = Sink::start(&dir.path().join("sink"), &["--pipelining"]);
    let server = start_server(&d, sink.port);

    let corpus = dir.path().join("corpus");
    let count: usize = python(
        "outbound_corpus.py",
        &[corpus.display().to_string(), alice.clone()],
    )
    .trim()
    .parse()
    .unwrap();
    assert!(count >= 100, "the corpus has only {count} messages");
    let mut names: Vec<String> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), count);

    let submitted: Value = serde_json::from_str(&python(
        "submit_files.py",
        &[
            server.submission.port().to_string(),
            alice.clone(),
            key.clone(),
            "friend@example.com".to_owned(),
            corpus.display().to_string(),
        ],
    ))
    .unwrap();
    for name in &names {
        assert_eq!(submitted[name][0], 250, "{name} was not accepted: {}", submitted[name]);
    }

    wait_for("the corpus delivered", Duration::from_secs(180), || {
        queue(&d).len() == count && all_in_state(&d, "delivered")
    });
    std::thread::sleep(Duration::from_secs(1));

    // Name every received copy after its source (its X-Corpus header).
    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).unwrap();
    let mut arrived = Vec::new();
    for path in sink.messages() {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Corpus: "))
            .unwrap_or_else(|| panic!("{} has no X-Corpus header:\n{text}", path.display()))
            .trim()
            .to_owned();
        std::fs::write(received.join(format!("{name}.eml")), &bytes).unwrap();
        arrived.push(format!("{name}.eml"));
    }
    arrived.sort();
    assert_eq!(arrived, names, "every corpus message arrived exactly once");

    let plan = json!({
        "dns": dkim_dns(&d, "agents.localhost"),
        "messages": names.iter().map(|n| received.join(n).display().to_string()).collect::<Vec<_>>(),
    });
    let plan_path = dir.path().join("dkim-plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(resource("verify_dkim.py"))
        .arg(&plan_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("ok")).collect();
    assert!(
        out.status.success() && failures.is_empty(),
        "dkimpy refused {} of {count} received messages:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok")).count(), count);
}
