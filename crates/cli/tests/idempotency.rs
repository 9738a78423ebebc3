//! `Idempotency-Key` on the send route (issue 11 §5) against the real binary:
//! a retried HTTP send mails once (stored copies and queue rows counted), the
//! same key with another body is 409 `IDEMPOTENCY_KEY_REUSED`, keys are per
//! agent, and `mail send --idempotency-key` / the MCP `send_message` tool
//! (official Python SDK client) called twice with one key send once. The MCP
//! `list_messages` `to_tag` filter is checked on the same server. A claim left
//! by a crashed send is resolved by what was stored, on SQLite + files and on
//! PostgreSQL + S3.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::io::Write as _;

use common::*;
use serde_json::{Value, json};

const OWNER: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const ALICE: &str = "0xa100000000000000000000000000000000000001";
const BOB: &str = "0xa100000000000000000000000000000000000002";

/// POSTs `body` with curl and extra headers; (status, response headers, body).
fn post(server: &Server, path: &str, key: &str, content_type: &str, headers: &[&str], body: &[u8]) -> (u16, String, String) {
    post_to(server.http, path, key, content_type, headers, body)
}

/// [`post`] to the HTTP listener at `http`.
fn post_to(
    http: std::net::SocketAddr,
    path: &str,
    key: &str,
    content_type: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-D"]).arg(&head);
    cmd.arg("-H").arg(format!("Authorization: Bearer {key}"));
    cmd.arg("-H").arg(format!("Content-Type: {content_type}"));
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.args(["--data-binary", "@-"]).arg(format!("http://{http}{path}"));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn curl");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), std::fs::read_to_string(head).unwrap().to_ascii_lowercase(), body.to_owned())
}

fn queue_len(server: &Server) -> usize {
    run_json(&server.data_dir, &["queue", "list"]).as_array().unwrap().len()
}

struct World {
    _dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    server: Server,
    alice: String,
    alice_key: String,
    bob: String,
    bob_key: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, alice, alice_key) = provision(dir.path(), OWNER, ALICE, "alice");
    let (_, _, bob, bob_key) = provision(dir.path(), OWNER, BOB, "bob");
    let server = Server::start(dir.path(), &[]);
    World { _dir: dir, config_dir: tempfile::tempdir().unwrap(), server, alice, alice_key, bob, bob_key }
}

impl World {
    fn env(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("AGENTKEYS_SERVER".into(), format!("http://{}", self.server.http)),
            ("AGENTKEYS_AGENT_KEY".into(), key.into()),
            ("AGENTKEYS_SUBMISSION".into(), self.server.submission.to_string()),
            ("AGENTKEYS_CA_FILE".into(), self.server.data_dir.join("tls/cert.pem").display().to_string()),
            ("AGENTKEYS_CONFIG_DIR".into(), self.config_dir.path().display().to_string()),
        ]
    }

    fn stored(&self, inbox: &str) -> usize {
        stored_messages(&self.server.blobs(), OWNER, inbox).len()
    }
}

#[test]
fn a_retried_http_send_mails_once_and_another_body_is_409() {
    let w = world();
    let path = format!("/v1/inboxes/{}/send", w.alice);
    let body = json!({"to": [w.bob.clone(), "someone@remote.test"], "subject": "invoice 7", "text": "pay me"}).to_string();
    let key = "Idempotency-Key: 4f1c2a9e-7b1d-4c55-9e0f-000000000001";
    let (s1, h1, b1) = post(&w.server, &path, &w.alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!(s1, 202, "{b1}");
    assert!(!h1.contains("idempotent-replayed"), "{h1}");
    let first: Value = serde_json::from_str(&b1).unwrap();
    let (s2, h2, b2) = post(&w.server, &path, &w.alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!(s2, 202, "{b2}");
    assert!(h2.contains("idempotent-replayed: true"), "{h2}");
    assert_eq!(serde_json::from_str::<Value>(&b2).unwrap(), first);
    assert_eq!((w.stored(&w.bob), queue_len(&w.server)), (1, 1), "one local copy and one queued copy");

    // The same key with another body sends nothing and says why.
    let other = json!({"to": [w.bob.clone()], "subject": "invoice 8", "text": "pay me more"}).to_string();
    let (s3, h3, b3) = post(&w.server, &path, &w.alice_key, "application/json", &[key], other.as_bytes());
    assert_eq!(s3, 409, "{b3}");
    assert!(h3.contains("content-type: application/problem+json"), "{h3}");
    let problem: Value = serde_json::from_str(&b3).unwrap();
    assert_eq!(problem["code"], "IDEMPOTENCY_KEY_REUSED", "{problem}");
    assert_eq!(problem["status"], 409);
    assert_eq!((w.stored(&w.bob), queue_len(&w.server)), (1, 1));

    // The key is the agent's own: Bob's send with the same key is a new send.
    let bob_path = format!("/v1/inboxes/{}/send", w.bob);
    let to_alice = json!({"to": [w.alice.clone()], "subject": "hi", "text": "hi"}).to_string();
    let (s4, _, b4) = post(&w.server, &bob_path, &w.bob_key, "application/json", &[key], to_alice.as_bytes());
    assert_eq!(s4, 202, "{b4}");
    assert_eq!(w.stored(&w.alice), 1);

    // A raw message retried unchanged is one message too.
    let raw = format!("From: {}\r\nTo: {}\r\nSubject: raw\r\nMessage-ID: <raw-1@agents.localhost>\r\n\r\nraw body\r\n", w.alice, w.bob);
    let raw_key = "Idempotency-Key: raw-1";
    for _ in 0..3 {
        let (s, _, b) = post(&w.server, &path, &w.alice_key, "message/rfc822", &[raw_key], raw.as_bytes());
        assert_eq!(s, 202, "{b}");
    }
    assert_eq!(w.stored(&w.bob), 2);

    // A refused request releases its key: fixed, the same key sends.
    let bad = json!({"to": ["nobody@agents.localhost"], "subject": "x", "text": "x"}).to_string();
    let (s5, _, b5) = post(&w.server, &path, &w.alice_key, "application/json", &["Idempotency-Key: fix-me"], bad.as_bytes());
    assert_eq!(s5, 400, "{b5}");
    let (s6, _, b6) = post(&w.server, &path, &w.alice_key, "application/json", &["Idempotency-Key: fix-me"], to_alice.as_bytes());
    assert_eq!(s6, 202, "{b6}");

    // A malformed key is refused before anything is sent.
    let long = format!("Idempotency-Key: {}", "k".repeat(256));
    let (s7, _, b7) = post(&w.server, &path, &w.alice_key, "application/json", &[&long], body.as_bytes());
    assert_eq!(s7, 400, "{b7}");
    assert!(b7.contains("Idempotency-Key"), "{b7}");
    assert_eq!((w.stored(&w.bob), queue_len(&w.server)), (2, 1));
}

/// Concurrent retries of one send: one message, every answer a 202 (first or
/// replayed) or 409 IDEMPOTENCY_KEY_IN_USE.
#[test]
fn concurrent_retries_send_once() {
    let w = world();
    let path = format!("/v1/inboxes/{}/send", w.alice);
    let body = json!({"to": [w.bob.clone()], "subject": "race", "text": "once"}).to_string();
    let (http, key) = (w.server.http, w.alice_key.as_str());
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let (status, _, text) =
                        post_to(http, &path, key, "application/json", &["Idempotency-Key: race-1"], body.as_bytes());
                    (status, text)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<&String> = answers.iter().filter(|(s, _)| *s == 202).map(|(_, t)| t).collect();
    assert!(!accepted.is_empty(), "{answers:?}");
    assert!(accepted.windows(2).all(|p| p[0] == p[1]), "{answers:?}");
    for (status, text) in &answers {
        assert!(*status == 202 || (*status == 409 && text.contains("IDEMPOTENCY_KEY_IN_USE")), "{status} {text}");
    }
    assert_eq!(w.stored(&w.bob), 1);
}

#[test]
fn mail_send_with_a_key_twice_sends_once() {
    let w = world();
    let run = || {
        let mut cmd = agentkeys(&w.server.data_dir);
        cmd.args(["mail", "send", "--inbox", &w.alice, "--to", &w.bob, "--subject", "once", "--text", "only once"]);
        cmd.args(["--idempotency-key", "cli-key-1", "--json"]);
        for (k, v) in w.env(&w.alice_key) {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    assert_eq!(first["replayed"], Value::Null, "{first}");
    assert_eq!(second["replayed"], true, "{second}");
    assert_eq!(first["queue_id"], second["queue_id"]);
    assert_eq!(w.stored(&w.bob), 1);
}

#[test]
fn mcp_send_message_with_one_key_twice_sends_once_and_list_messages_filters_by_tag() {
    let w = world();
    let mut mcp = Mcp::stdio(&w.env(&w.alice_key));
    let tagged = w.bob.replace('@', "+billing@");
    let args = json!({"inbox": w.alice, "to": [tagged], "subject": "invoice", "text": "hello", "idempotency_key": "mcp-1"});
    let first = mcp.ok("send_message", args.clone());
    let second = mcp.ok("send_message", args.clone());
    assert_eq!(first["queue_id"], second["queue_id"], "{first} {second}");
    assert_eq!(second["replayed"], true, "{second}");
    assert_eq!(w.stored(&w.bob), 1);
    let mut changed = args.clone();
    changed["text"] = json!("hello again");
    let refused = mcp.err("send_message", changed);
    assert!(refused.contains("IDEMPOTENCY_KEY_REUSED"), "{refused}");
    assert_eq!(w.stored(&w.bob), 1);
    drop(mcp);

    // Bob's MCP sees the tag and filters by it.
    let plain = json!({"inbox": w.alice, "to": [w.bob.clone()], "subject": "plain", "text": "x"});
    let mut alice = Mcp::stdio(&w.env(&w.alice_key));
    alice.ok("send_message", plain);
    drop(alice);
    let mut bob = Mcp::stdio(&w.env(&w.bob_key));
    let all = bob.ok("list_messages", json!({"inbox": w.bob}));
    assert_eq!(all["messages"].as_array().unwrap().len(), 2, "{all}");
    let billing = bob.ok("list_messages", json!({"inbox": w.bob, "to_tag": "billing"}));
    let got = billing["messages"].as_array().unwrap();
    assert_eq!(got.len(), 1, "{billing}");
    assert_eq!(got[0]["subject"], "invoice");
    assert_eq!(got[0]["to_tag"], "billing");
}

/// Where a test's metadata lives, for the checks that read or edit it directly
/// (as an operator would, with the database's own client).
enum Meta {
    /// The data directory's `meta.sqlite` (`sqlite3`).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database (`psql`).
    Postgres(String),
}

impl Meta {
    /// The rows of `sql`, one line each.
    fn query(&self, sql: &str) -> Vec<String> {
        let out = match self {
            Meta::Sqlite(d) => Command::new("sqlite3").arg(d.join("meta.sqlite")).arg(sql).output(),
            Meta::Postgres(url) => Command::new("psql").args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).output(),
        }
        .expect("sqlite3 and psql are installed (scripts/test.sh)");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
    }

    /// Runs `sql` (the server stopped).
    fn exec(&self, sql: &str) {
        self.query(sql);
    }

    /// Ids of the messages indexed in `inbox` (what its owner's agents can list).
    fn indexed(&self, inbox: &str) -> Vec<String> {
        self.query(&format!("SELECT id FROM messages WHERE inbox = '{inbox}' ORDER BY id"))
    }

    /// Message ids in the outbound queue, one per row.
    fn queued(&self) -> Vec<String> {
        self.query("SELECT message_id FROM outbound_queue ORDER BY message_id")
    }
}

/// Issue 10: a node that dies between claiming an `Idempotency-Key` and
/// recording the answer no longer leaves the key "in use" for 24 h. The claim
/// records the message id; once stale (`STALE_CLAIM_SECS`, moved into the past
/// here by editing `created_at`, as the clock would) it is resolved by what was
/// stored.
///
/// 1. A real crash (the `AGENTKEYS_TEST_CRASH_BEFORE_INDEX` fault hook aborts
///    the server after the blob write, before the index commit): nothing was
///    stored, so the retry sends the message, once.
/// 2. The state a crash after storing and before recording the answer leaves
///    (the answer erased): the retry gets the first answer, nothing is sent again.
/// 3. The state a crash after the index commit and before queueing the remote
///    recipient leaves (the answer and the queue row erased): the retry gets the
///    first answer and queues the remote recipient, once, under the first id.
///
/// `d` is the data directory (with its deployment shared when the stores are
/// PostgreSQL and S3), `meta` where its metadata is.
fn a_crashed_sends_claim_is_resolved_by_what_was_stored(d: &std::path::Path, meta: &Meta) {
    let (_, _, alice, alice_key) = provision(d, OWNER, ALICE, "alice");
    let (_, _, bob, _) = provision(d, OWNER, BOB, "bob");
    let path = format!("/v1/inboxes/{alice}/send");
    let body = json!({"to": [bob.clone(), "someone@remote.test"], "subject": "sign-up", "text": "once"}).to_string();
    let key = "Idempotency-Key: crash-1";

    let mut crashing = Server::start(d, &[("AGENTKEYS_TEST_CRASH_BEFORE_INDEX", "1")]);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-X", "POST", "-H", key, "-H", "Content-Type: application/json"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {alice_key}"))
        .args(["--data-binary", &body])
        .arg(format!("http://{}{path}", crashing.http))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server died mid-send: {}", String::from_utf8_lossy(&out.stdout));
    let status = wait_timeout(&mut crashing.child, std::time::Duration::from_secs(30)).expect("the server died");
    assert!(!status.success(), "{status:?}");
    crashing.kill();
    assert!(meta.indexed(&bob).is_empty());
    assert_eq!(meta.query("SELECT count(*) FROM send_idempotency WHERE response IS NULL"), ["1"], "the crash left the claim");

    // Within STALE_CLAIM_SECS the key is still in use (the send might be running).
    let server = Server::start(d, &[]);
    let (s, _, b) = post(&server, &path, &alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!(s, 409, "{b}");
    assert!(b.contains("IDEMPOTENCY_KEY_IN_USE"), "{b}");
    server.stop();
    let stale = agentkeys_store::STALE_CLAIM_SECS;
    meta.exec(&format!("UPDATE send_idempotency SET created_at = created_at - {stale}"));

    // Stale, its message never stored: the retry sends it.
    let server = Server::start(d, &[]);
    let (s, h, b) = post(&server, &path, &alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!(s, 202, "{b}");
    assert!(!h.contains("idempotent-replayed"), "{h}");
    let sent: Value = serde_json::from_str(&b).unwrap();
    let id = sent["message_id"].as_str().unwrap().to_owned();
    assert_eq!(meta.indexed(&bob), vec![id.clone()], "sent exactly once");
    assert_eq!(meta.queued(), vec![id.clone()], "queued exactly once");
    let (s, h, b) = post(&server, &path, &alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!((s, h.contains("idempotent-replayed: true")), (202, true), "{b}");
    server.stop();

    // Stored, answer not recorded: what a crash after the index commit leaves.
    meta.exec(&format!("UPDATE send_idempotency SET response = NULL, created_at = created_at - {stale}"));
    let server = Server::start(d, &[]);
    let (s, h, b) = post(&server, &path, &alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!(s, 202, "{b}");
    assert!(h.contains("idempotent-replayed: true"), "{h}");
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap(), sent, "the first answer, rebuilt from the stored message");
    assert_eq!((meta.indexed(&bob).len(), meta.queued()), (1, vec![id.clone()]), "nothing sent again");
    server.stop();

    // Indexed, not queued, answer not recorded: what a crash between the
    // index commit and queueing leaves. The retry queues it, under its id.
    meta.exec("DELETE FROM outbound_queue");
    meta.exec(&format!("UPDATE send_idempotency SET response = NULL, created_at = created_at - {stale}"));
    let server = Server::start(d, &[]);
    let (s, h, b) = post(&server, &path, &alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!(s, 202, "{b}");
    assert!(h.contains("idempotent-replayed: true"), "{h}");
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap(), sent);
    assert_eq!((meta.indexed(&bob), meta.queued()), (vec![id.clone()], vec![id.clone()]), "completed exactly once");
    let (s, h, _) = post(&server, &path, &alice_key, "application/json", &[key], body.as_bytes());
    assert_eq!((s, h.contains("idempotent-replayed: true")), (202, true));
    assert_eq!(meta.queued(), vec![id], "the replay queues nothing more");
    server.stop();
}

#[test]
fn a_claim_left_by_a_crashed_send_is_resolved_by_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    a_crashed_sends_claim_is_resolved_by_what_was_stored(dir.path(), &Meta::Sqlite(dir.path().to_path_buf()));
}

/// The same on PostgreSQL metadata and S3 blobs (`s3s-fs`): the claim, the
/// crash and its resolution go through the shared stores several nodes use.
#[test]
fn postgres_s3_a_claim_left_by_a_crashed_send_is_resolved_by_what_was_stored() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime
        .block_on(agentkeys_store::postgres::TempDatabase::create())
        .expect("a PostgreSQL for tests (AGENTKEYS_TEST_DATABASE_URL)");
    drop(runtime);
    let s3 = S3sFs::start("mail", 21500..=21519);
    let dir = tempfile::tempdir().unwrap();
    let mut shared: Vec<(String, String)> = s3.serve_env("ak").into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    shared.push(("AGENTKEYS_DATABASE_URL".to_owned(), db.url().to_owned()));
    share_deployment(dir.path(), &shared);
    a_crashed_sends_claim_is_resolved_by_what_was_stored(dir.path(), &Meta::Postgres(db.url().to_owned()));
    // The crashed write's blob (never indexed) and the sent message's copies are
    // objects in the bucket, not files in the data directory.
    let objects = s3.root.join(&s3.bucket).join("ak");
    assert!(all_files(&objects).iter().any(|f| f.extension().is_some_and(|e| e == "eml")), "the blobs are in S3");
    assert!(!dir.path().join("blobs").exists(), "nothing was written to the file blob store");
}
