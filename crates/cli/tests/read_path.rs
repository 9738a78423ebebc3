//! The read path against the real server process: mail sent to the MX with
//! Python's smtplib, a read capability minted over HTTP, then listing (both
//! orders, cursors, limit bounds), fetching the stored bytes, Server-Sent Events
//! with a raw http.client subscriber (live, and `Last-Event-ID` resume), owner and
//! inbox isolation over the API and the event stream, envelope-only routing,
//! index reconciliation after a crash, and retention on a running server.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, provision, python, run, run_json, stored_messages};
use serde_json::{Value, json};

const OWNER_A: &str = "0x000000000000000000000000000000000000000a";
const OWNER_B: &str = "0x000000000000000000000000000000000000000b";
const AGENT_A: &str = "0x00000000000000000000000000000000000000a1";
const AGENT_A2: &str = "0x00000000000000000000000000000000000000a2";
const AGENT_B: &str = "0x00000000000000000000000000000000000000b1";

/// `curl` one request; returns (status, content type, body bytes).
fn curl(url: &str, bearer: Option<&str>, body: Option<&Value>) -> (u16, String, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code} %{content_type}"]);
    if let Some(k) = bearer {
        cmd.arg("-H").arg(format!("Authorization: Bearer {k}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(b.to_string());
    }
    let out = cmd.arg(url).output().expect("spawn curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let split = out.stdout.iter().rposition(|&b| b == b'\n').expect("status line");
    let trailer = String::from_utf8_lossy(&out.stdout[split + 1..]).into_owned();
    let (status, content_type) = trailer.split_once(' ').unwrap_or((&trailer, ""));
    (status.parse().expect("status"), content_type.to_owned(), out.stdout[..split].to_vec())
}

fn get_json(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let (status, _, body) = curl(url, bearer, None);
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A read capability for `inbox`, minted with the agent key over HTTP.
fn capability(base: &str, key: &str, inbox: &str) -> String {
    let (status, _, body) = curl(&format!("{base}/v1/credentials/read"), Some(key), Some(&json!({ "inbox": inbox })));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v.get("list_url").is_none(), "blobs in files: no presigned listing: {v}");
    v["token"].as_str().unwrap().to_owned()
}

/// Sends messages to the MX with smtplib: (envelope recipient, To: header, subject).
fn send(server: &Server, mails: &[(&str, &str, &str)]) {
    let steps: Vec<Value> = mails
        .iter()
        .map(|(rcpt, to, subject)| {
            json!(["sendmail", "sender@remote.example", [rcpt], { "from": "sender@remote.example", "to": to, "subject": subject, "size": 300 }])
        })
        .collect();
    let plan = json!({ "port": server.inbound.port(), "steps": steps });
    let result: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
    for step in result["steps"].as_array().unwrap() {
        // sendmail answers {} (every recipient accepted) or raises with a code.
        assert!(step.is_object() || step[0] == 250, "send failed: {result}");
    }
}

/// The ids of an inbox's stored files, oldest first.
fn stored_ids(server: &Server, owner: &str, inbox: &str) -> Vec<String> {
    stored_messages(&server.blobs(), owner, inbox)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Every page of a listing, following `next_cursor`; returns the ids in order.
fn list_all(base: &str, cap: &str, inbox: &str, order: &str, limit: u32) -> Vec<String> {
    let cursor_param = if order == "asc" { "after" } else { "before" };
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{base}/v1/inboxes/{inbox}/messages?order={order}&limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&{cursor_param}={c}"));
        }
        let (status, page) = get_json(&url, Some(cap));
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= limit as usize);
        for m in messages {
            assert!(m["received_at"].as_i64().unwrap() > 1_700_000_000);
            assert!(m["size"].as_u64().unwrap() > 0);
            assert!(m.get("raw_url").is_none(), "blobs in files: the server serves the bytes: {m}");
            ids.push(m["message_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(messages.len(), limit as usize, "a cursor only after a full page");
                cursor = Some(c.to_owned());
            }
            None => return ids,
        }
    }
    panic!("listing did not end");
}

/// A running SSE subscriber (tests/resources/sse_client.py).
struct Subscriber {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Subscriber {
    /// Connects and waits until the response headers arrived (the server has
    /// subscribed by then); returns the subscriber and the HTTP status.
    fn start(plan: Value) -> (Self, u16) {
        let mut child = Command::new("python3")
            .arg(common::resource("sse_client.py"))
            .arg(plan.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sse_client.py");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let status = line.trim().strip_prefix("READY ").unwrap_or_else(|| panic!("no READY line: {line:?}"));
        let status = status.parse().unwrap();
        (Self { child, stdout }, status)
    }

    /// Waits for the subscriber to finish; returns its report.
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

fn events_url(base: &str, inbox: &str) -> String {
    format!("{base}/v1/inboxes/{inbox}/events")
}

fn event_ids(report: &Value) -> Vec<String> {
    report["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

struct World {
    _dir: tempfile::TempDir,
    server: Server,
    base: String,
    /// Owner A's inbox `bot` and its agent key.
    bot: (String, String),
    /// Owner A's inbox `spare` (another agent of A) and its key.
    spare: (String, String),
    /// Owner B's inbox `other` and its key.
    other: (String, String),
}

fn world(env: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, bot, bot_key) = provision(d, OWNER_A, AGENT_A, "bot");
    let (_, _, spare, spare_key) = provision(d, OWNER_A, AGENT_A2, "spare");
    let (_, _, other, other_key) = provision(d, OWNER_B, AGENT_B, "other");
    let server = Server::start(d, env);
    let base = format!("http://{}", server.http);
    World { _dir: dir, server, base, bot: (bot, bot_key), spare: (spare, spare_key), other: (other, other_key) }
}

#[test]
fn list_both_orders_with_cursors_and_fetch_the_stored_bytes() {
    let w = world(&[]);
    let (bot, key) = (&w.bot.0, &w.bot.1);
    let mails: Vec<(&str, &str, String)> = (0..7).map(|i| (bot.as_str(), bot.as_str(), format!("hello {i}"))).collect();
    let mails: Vec<(&str, &str, &str)> = mails.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
    send(&w.server, &mails);
    let on_disk = stored_ids(&w.server, OWNER_A, bot);
    assert_eq!(on_disk.len(), 7);
    let cap = capability(&w.base, key, bot);

    // Every page size, both orders: the same messages as on disk, in id order.
    let mut newest_first = on_disk.clone();
    newest_first.reverse();
    for limit in [1, 3, 7, 100] {
        assert_eq!(list_all(&w.base, &cap, bot, "desc", limit), newest_first, "desc, limit {limit}");
        assert_eq!(list_all(&w.base, &cap, bot, "asc", limit), on_disk, "asc, limit {limit}");
    }
    // Defaults: newest first, one page of up to 50.
    let (status, page) = get_json(&format!("{}/v1/inboxes/{bot}/messages", w.base), Some(&cap));
    assert_eq!(status, 200);
    assert_eq!(page["messages"][0]["message_id"], newest_first[0].as_str());
    assert_eq!(page["next_cursor"], Value::Null);
    // Both bounds at once: strictly between.
    let url = format!("{}/v1/inboxes/{bot}/messages?order=asc&after={}&before={}", w.base, on_disk[1], on_disk[5]);
    let (_, page) = get_json(&url, Some(&cap));
    let between: Vec<&str> = page["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap()).collect();
    assert_eq!(between, on_disk[2..5].iter().map(String::as_str).collect::<Vec<_>>());

    // Limit bounds and bad parameters: 400 problem JSON naming the parameter.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("order=newest", "order"),
        ("before=not-a-ulid", "before"),
        ("after=1", "after"),
        ("limit=5&limit=6", "limit"),
        ("offset=3", "offset"),
    ] {
        let (status, problem) = get_json(&format!("{}/v1/inboxes/{bot}/messages?{query}", w.base), Some(&cap));
        assert_eq!((status, problem["code"].as_str(), problem["field"].as_str()), (400, Some("INVALID_REQUEST"), Some(field)), "{query}: {problem}");
    }
    let (status, _) = get_json(&format!("{}/v1/inboxes/{bot}/messages?limit=100", w.base), Some(&cap));
    assert_eq!(status, 200);

    // Fetch: exactly the stored bytes, as message/rfc822.
    for id in &on_disk {
        let (status, content_type, body) = curl(&format!("{}/v1/inboxes/{bot}/messages/{id}", w.base), Some(&cap), None);
        assert_eq!((status, content_type.as_str()), (200, "message/rfc822"));
        let file = w.server.blobs().join(OWNER_A).join(bot).join(format!("{id}.eml"));
        assert_eq!(body, std::fs::read(file).unwrap());
        // Our headers come first: the MX's verdicts, then our Received: line.
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("Authentication-Results: "), "our verdicts come first: {text}");
        assert!(text.contains("\r\nReceived: from "), "then our Received: line");
    }
    w.server.stop();
}

#[test]
fn isolation_between_owners_and_inboxes_over_the_api() {
    let w = world(&[]);
    let (bot, other, spare) = (&w.bot.0, &w.other.0, &w.spare.0);
    // The To: header names owner B's inbox; only the envelope counts.
    send(&w.server, &[(bot, other, "for bot, To: forged")]);
    let id = stored_ids(&w.server, OWNER_A, bot).pop().unwrap();
    assert!(stored_ids(&w.server, OWNER_B, other).is_empty(), "a forged To: routes nothing");
    let cap_bot = capability(&w.base, &w.bot.1, bot);
    let cap_other = capability(&w.base, &w.other.1, other);
    let cap_spare = capability(&w.base, &w.spare.1, spare);

    let (status, page) = get_json(&format!("{}/v1/inboxes/{other}/messages", w.base), Some(&cap_other));
    assert_eq!((status, page["messages"].as_array().unwrap().len()), (200, 0), "B's inbox is empty: {page}");

    // The reference 404: an inbox that does not exist, with a valid capability.
    let (status, missing) = get_json(&format!("{}/v1/inboxes/nobody@agents.localhost/messages", w.base), Some(&cap_bot));
    assert_eq!((status, missing["code"].as_str()), (404, Some("NOT_FOUND")));
    let not_found = |url: String, cap: &str| {
        let (status, _, body) = curl(&url, Some(cap), None);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, &body), (404, &missing), "{url}");
    };
    // Owner B's capability on owner A's inbox and message.
    not_found(format!("{}/v1/inboxes/{bot}/messages", w.base), &cap_other);
    not_found(format!("{}/v1/inboxes/{bot}/messages/{id}", w.base), &cap_other);
    not_found(format!("{}/v1/inboxes/{bot}/events", w.base), &cap_other);
    // Owner A's own other inbox, not covered by this capability (and the reverse).
    not_found(format!("{}/v1/inboxes/{spare}/messages", w.base), &cap_bot);
    not_found(format!("{}/v1/inboxes/{bot}/messages/{id}", w.base), &cap_spare);
    not_found(format!("{}/v1/inboxes/{bot}/events", w.base), &cap_spare);
    // The message id under B's own inbox path, an unknown id, a malformed id.
    not_found(format!("{}/v1/inboxes/{other}/messages/{id}", w.base), &cap_other);
    not_found(format!("{}/v1/inboxes/{bot}/messages/01J00000000000000000000000", w.base), &cap_bot);
    not_found(format!("{}/v1/inboxes/{bot}/messages/..%2F..%2Fmaster.seed", w.base), &cap_bot);
    not_found(format!("{}/v1/inboxes/{bot}/messages/{}", w.base, id.to_lowercase() + "x"), &cap_bot);

    // Bad capabilities: one 401 body whatever the reason.
    let (status, reference) = get_json(&format!("{}/v1/inboxes/{bot}/messages", w.base), None);
    assert_eq!((status, reference["code"].as_str()), (401, Some("INVALID_CAPABILITY")), "{reference}");
    let mut tampered = cap_bot.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let seed_file = w.server.data_dir.join("master.seed");
    let forge = |exp_offset: i64| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let payload = json!({
            "owner": OWNER_A, "inbox": bot, "prefix": format!("{OWNER_A}/{bot}/"),
            "iat": now - 600, "exp": now + exp_offset, "jti": "forged-in-test",
        });
        let plan = json!({ "seed_file": seed_file, "payload": payload });
        python("forge_capability.py", &[plan.to_string()]).trim().to_owned()
    };
    // The independent signer agrees with the server (a fresh one is accepted)...
    let (status, _) = get_json(&format!("{}/v1/inboxes/{bot}/messages", w.base), Some(&forge(300)));
    assert_eq!(status, 200, "a capability signed by the independent implementation");
    // ...so an expired one is refused for its expiry alone.
    let expired = forge(-1);
    for bad in [tampered.as_str(), expired.as_str(), w.bot.1.as_str(), "akcap1.x.y"] {
        for path in [
            format!("{bot}/messages"),
            format!("{bot}/messages/{id}"),
            format!("{bot}/events"),
        ] {
            let (status, body) = get_json(&format!("{}/v1/inboxes/{path}", w.base), Some(bad));
            assert_eq!((status, &body), (401, &reference), "{path}");
        }
    }
    w.server.stop();
}

#[test]
fn events_live_then_resume_with_last_event_id_and_other_owners_see_nothing() {
    let w = world(&[]);
    let (bot, other) = (&w.bot.0, &w.other.0);
    let cap_bot = capability(&w.base, &w.bot.1, bot);
    let cap_other = capability(&w.base, &w.other.1, other);

    // Live: subscribe (A and B), then mail arrives for A (with a To: naming B).
    let (a, status) = Subscriber::start(json!({ "url": events_url(&w.base, bot), "token": cap_bot, "count": 1, "timeout": 60 }));
    assert_eq!(status, 200);
    let (b, status) = Subscriber::start(json!({ "url": events_url(&w.base, other), "token": cap_other, "count": 1, "timeout": 60 }));
    assert_eq!(status, 200);
    send(&w.server, &[(bot, other, "first")]);
    let first = a.finish();
    let stored = stored_ids(&w.server, OWNER_A, bot);
    assert_eq!(event_ids(&first), stored, "{first}");
    let event = &first["events"][0];
    assert_eq!(event["event"], "message.received");
    assert_eq!(event["data"]["message_id"], stored[0].as_str());
    let size = std::fs::metadata(w.server.blobs().join(OWNER_A).join(bot).join(format!("{}.eml", stored[0]))).unwrap().len();
    assert_eq!(event["data"]["size"], size);
    assert!(event["data"]["received_at"].as_i64().unwrap() > 1_700_000_000);
    // B's stream: its first event is B's own mail, so A's never showed up on it.
    send(&w.server, &[(other, other, "for B")]);
    let b = b.finish();
    assert_eq!(event_ids(&b), stored_ids(&w.server, OWNER_B, other), "{b}");

    // Missed while disconnected: two messages; resume replays them, then live.
    send(&w.server, &[(bot, bot, "second"), (bot, bot, "third")]);
    let (resumed, status) = Subscriber::start(json!({
        "url": events_url(&w.base, bot), "token": cap_bot, "last_event_id": stored[0], "count": 3, "timeout": 60,
    }));
    assert_eq!(status, 200);
    send(&w.server, &[(bot, bot, "fourth")]);
    let resumed = resumed.finish();
    let all = stored_ids(&w.server, OWNER_A, bot);
    assert_eq!(all.len(), 4);
    // Sorted: events come in commit order, file names in id order, and two ids
    // made in the same millisecond may sort either way.
    let in_commit_order = event_ids(&resumed);
    let mut got = in_commit_order.clone();
    got.sort();
    assert_eq!(got, all[1..].to_vec(), "replay then live, no gap, no duplicate: {resumed}");

    // Resuming from the newest id replays nothing: the next event is new mail.
    let (tail, _) = Subscriber::start(json!({
        "url": events_url(&w.base, bot), "token": cap_bot, "last_event_id": in_commit_order[2], "count": 1, "timeout": 60,
    }));
    send(&w.server, &[(bot, bot, "fifth")]);
    let tail = tail.finish();
    let newest: Vec<String> = stored_ids(&w.server, OWNER_A, bot).into_iter().filter(|id| !all.contains(id)).collect();
    assert_eq!(event_ids(&tail), newest);

    // A malformed Last-Event-ID is a 400, not a silent full replay.
    let (bad, status) = Subscriber::start(json!({
        "url": events_url(&w.base, bot), "token": cap_bot, "last_event_id": "nope", "count": 1, "timeout": 10,
    }));
    assert_eq!(status, 400);
    assert_eq!(bad.finish()["body"]["code"], "INVALID_REQUEST");
    w.server.stop();
}

/// Issue 10: the index commit is the acknowledgement. A blob without an index
/// row is a write whose `250` never went out (a crash between the blob and the
/// commit; the sender sent again) or the leftover of a removal: the next start
/// never lists it, and removes it once no node could still commit it.
#[test]
fn a_blob_without_index_row_is_never_listed_and_removed_once_settled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, bot, key) = provision(d, OWNER_A, AGENT_A, "bot");
    let server = Server::start(d, &[]);
    send(&server, &[(&bot, &bot, "indexed normally")]);
    let normal = stored_ids(&server, OWNER_A, &bot).pop().unwrap();
    server.stop();
    // Two such blobs: one received an hour ago (settled: no commit can index it
    // any more), one just now (a node might still be about to commit it).
    let now_ms = u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let settled = ulid::Ulid::from_parts(now_ms - 3_600_000, 1).to_string();
    let young = ulid::Ulid::from_parts(now_ms, 1).to_string();
    let inbox_dir = d.join("blobs").join(OWNER_A).join(&bot);
    for id in [&settled, &young] {
        std::fs::write(inbox_dir.join(format!("{id}.eml")), b"Subject: orphan\r\n\r\nbody\r\n").unwrap();
    }
    let server = Server::start(d, &[]);
    let base = format!("http://{}", server.http);
    let cap = capability(&base, &key, &bot);
    assert_eq!(list_all(&base, &cap, &bot, "asc", 100), vec![normal.clone()]);
    // The reconcile runs after readiness: wait (bounded) for the settled one to go.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_ids(&server, OWNER_A, &bot).contains(&settled) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut left = stored_ids(&server, OWNER_A, &bot);
    left.sort();
    let mut want = vec![normal, young];
    want.sort();
    assert_eq!(left, want, "the settled orphan is removed, the young one left for a later pass");
    server.stop();
}

fn audit_records(d: &Path, operation: &str) -> Vec<Value> {
    let records = run_json(d, &["audit", "list", "--limit", "100000"]);
    records.as_array().unwrap().iter().filter(|r| r["operation"] == operation).cloned().collect()
}

#[test]
fn retention_deletes_old_messages_per_domain_and_audits_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, bot, key) = provision(d, OWNER_A, AGENT_A, "bot");
    // A second hosted domain keeps the default retention (30 days).
    let out = run(d, &["domain", "add", "keep.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = run_json(d, &["inbox", "create", "--agent", AGENT_A, "--name", "kept", "--domain", "keep.test"]);
    let kept = v["address"].as_str().unwrap().to_owned();
    common::owner_json(d, OWNER_A, &["grant", "create", "--agent", AGENT_A, "--inbox", &kept, "--scopes", "read"]);
    let v = run_json(d, &["domain", "set-retention", "agents.localhost", "3s"]);
    assert_eq!(v["retention"], 3);
    let bad = run(d, &["domain", "set-retention", "agents.localhost", "0s"]);
    assert!(!bad.status.success());
    let unknown = run(d, &["domain", "set-retention", "nope.test", "3s"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"), "{unknown:?}");

    let server = Server::start(d, &[("AGENTKEYS_RETENTION_SWEEP_INTERVAL", "1s")]);
    let base = format!("http://{}", server.http);
    send(&server, &[(&bot, &bot, "short-lived"), (&bot, &bot, "short-lived too"), (&kept, &kept, "kept")]);
    assert_eq!(stored_ids(&server, OWNER_A, &bot).len(), 2);
    let cap = capability(&base, &key, &bot);
    // Within a bounded wait, the sweeper removes both (index and blobs).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = list_all(&base, &cap, &bot, "desc", 100);
        if listed.is_empty() && stored_ids(&server, OWNER_A, &bot).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not swept in time: {listed:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The other domain's message stays, listed and on disk.
    let cap_kept = capability(&base, &key, &kept);
    assert_eq!(list_all(&base, &cap_kept, &kept, "desc", 100).len(), 1);
    assert_eq!(stored_ids(&server, OWNER_A, &kept).len(), 1);
    server.stop();

    let sweeps = audit_records(d, "message.expire");
    let counted: u64 = sweeps.iter().map(|r| r["detail"]["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 2, "{sweeps:?}");
    assert!(sweeps.iter().all(|r| r["actor"] == "system" && r["subject"] == "agents.localhost" && r["detail"]["retention"] == 3));
    assert_eq!(audit_records(d, "domain.set_retention").len(), 1);
    let verify = run(d, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
