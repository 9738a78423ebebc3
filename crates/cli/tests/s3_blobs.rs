//! Blobs on S3, read the "broker, not proxy" way (issue 10 §3), through the
//! real binary: `agentkeys serve` with `AGENTKEYS_BLOBS=s3://mail/prod` on a
//! real S3 server (`s3s-fs`, which checks every SigV4 signature itself), mail
//! in through the MX with swaks, and then:
//!
//! - the agent's `mail list` / `mail show` / `mail otp --wait` and the MCP
//!   tools work unchanged, reading the bytes straight from the object store
//!   (with the store stopped, they fail naming the store, while the server's
//!   index still lists);
//! - the read capability carries a presigned `list_url` of its own prefix,
//!   listings a presigned `raw_url` per message, the raw-message route answers
//!   `307` to the store; curl reads them;
//! - the same URLs edited to another inbox's object or prefix, or used after
//!   the capability expired, are refused with `403` by s3s-fs itself, and a
//!   capability for one inbox never yields a URL under another.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Mcp, S3sFs, Server, agentkeys, owner_json, provision, run_json};
use serde_json::{Value, json};

const OWNER_A: &str = "0x5300000000000000000000000000000000000a0a";
const OWNER_B: &str = "0x5300000000000000000000000000000000000b0b";
const AGENT_A: &str = "0x5300000000000000000000000000000000000a01";
const AGENT_B: &str = "0x5300000000000000000000000000000000000b01";
const BUCKET: &str = "mail";
const PREFIX: &str = "prod";
const SERVICE: &str = "service.example";

/// An owner A agent with inboxes `signup` and `peer` (read+send on both), and
/// owner B's agent with inbox `bee`; the server keeps blobs on `s3`.
struct World {
    dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    s3: S3sFs,
    server: Server,
    signup: String,
    peer: String,
    bee: String,
    key_a: String,
    key_b: String,
}

fn world(ports: std::ops::RangeInclusive<u16>) -> World {
    let dir = tempfile::Builder::new().prefix("s3read-").tempdir().unwrap();
    let d = dir.path();
    let (_, _, signup, key_a) = provision(d, OWNER_A, AGENT_A, "signup");
    let peer =
        run_json(d, &["inbox", "create", "--agent", AGENT_A, "--name", "peer"])["address"].as_str().unwrap().to_owned();
    owner_json(d, OWNER_A, &["grant", "create", "--agent", AGENT_A, "--inbox", &peer, "--scopes", "read,send"]);
    let (_, _, bee, key_b) = provision(d, OWNER_B, AGENT_B, "bee");
    let s3 = S3sFs::start(BUCKET, ports);
    let env = s3.serve_env(PREFIX);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(d, &env);
    World { dir, config_dir: tempfile::tempdir().unwrap(), s3, server, signup, peer, bee, key_a, key_b }
}

impl World {
    fn base(&self) -> String {
        format!("http://{}", self.server.http)
    }

    /// The agent daemon's environment (no AWS variables: it needs none).
    fn env(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("AGENTKEYS_SERVER".into(), self.base()),
            ("AGENTKEYS_AGENT_KEY".into(), key.into()),
            ("AGENTKEYS_SUBMISSION".into(), self.server.submission.to_string()),
            ("AGENTKEYS_CA_FILE".into(), self.server.data_dir.join("tls/cert.pem").display().to_string()),
            ("AGENTKEYS_CONFIG_DIR".into(), self.config_dir.path().display().to_string()),
        ]
    }

    /// `agentkeys mail ARGS` as agent `key` (not yet run).
    fn mail_cmd(&self, key: &str, args: &[&str]) -> Command {
        let mut cmd = agentkeys(&self.server.data_dir);
        cmd.arg("mail").args(args);
        for (k, v) in self.env(key) {
            cmd.env(k, v);
        }
        for k in ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            cmd.env_remove(k);
        }
        cmd
    }

    fn mail(&self, key: &str, args: &[&str]) -> Output {
        self.mail_cmd(key, args).output().unwrap()
    }

    fn mail_json(&self, key: &str, args: &[&str]) -> Value {
        let out = self.mail_cmd(key, args).arg("--json").output().unwrap();
        assert!(out.status.success(), "mail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Sends `raw` to `rcpt` through the MX with swaks; asserts the `250`.
    fn deliver(&self, rcpt: &str, raw: &str) {
        let file = self.dir.path().join(format!("swaks-{}.eml", ulid::Ulid::new()));
        std::fs::write(&file, raw).unwrap();
        let out = Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &self.server.inbound.port().to_string()])
            .args(["--from", &format!("bounce@{SERVICE}"), "--to", rcpt, "--timeout", "30"])
            .arg("--data")
            .arg(&file)
            .output()
            .expect("swaks is installed (.ci/run installs it)");
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && transcript.contains("<-  250 2.0.0"), "{transcript}");
    }

    /// Mints a read capability for `inbox` with agent key `key` over HTTP: the whole answer.
    fn mint(&self, key: &str, inbox: &str) -> Value {
        let (status, head, body) =
            curl(&format!("{}/v1/credentials/read", self.base()), Some(key), Some(&json!({ "inbox": inbox })));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(header(&head, "cache-control"), Some("no-store"), "{head}");
        serde_json::from_slice(&body).unwrap()
    }

    /// One page of `inbox`'s listing under capability `cap`.
    fn list(&self, cap: &str, inbox: &str) -> (u16, Value) {
        let (status, _, body) =
            curl(&format!("{}/v1/inboxes/{inbox}/messages?order=asc", self.base()), Some(cap), None);
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The raw-message route under `cap`: status and lowercased head.
    fn raw_route(&self, cap: &str, inbox: &str, id: &str) -> (u16, String) {
        let (status, head, _) = curl(&format!("{}/v1/inboxes/{inbox}/messages/{id}", self.base()), Some(cap), None);
        (status, head)
    }

    /// The object key of message `id` of `owner`'s `inbox`.
    fn object_key(owner: &str, inbox: &str, id: &str) -> String {
        format!("{PREFIX}/{owner}/{inbox}/{id}.eml")
    }
}

/// One request with curl (not redirected): status, head, body.
fn curl(url: &str, bearer: Option<&str>, body: Option<&Value>) -> (u16, String, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D", "/dev/stderr", "-o", "-"]);
    if let Some(k) = bearer {
        cmd.arg("-H").arg(format!("Authorization: Bearer {k}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(b.to_string());
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().expect("spawn curl");
    assert!(out.status.success(), "curl {url} failed: {}", String::from_utf8_lossy(&out.stderr));
    let head = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status line");
    (status, head, out.stdout)
}

/// A header's value from a response head (the name in any case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `%XX` escapes decoded (what S3 does with a signed path or query).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// `%`-encodes what a query value or a path segment must not hold raw.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The decoded query parameters of a URL.
fn query(url: &str) -> Vec<(String, String)> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn param(url: &str, name: &str) -> Option<String> {
    query(url).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// `url` with parameter `name` set to `value` (or removed), the rest as it was.
fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let (base, q) = url.split_once('?').unwrap();
    let mut parts: Vec<String> =
        q.split('&').filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != name).map(str::to_owned).collect();
    if let Some(v) = value {
        parts.push(format!("{name}={}", percent_encode(v)));
    }
    format!("{base}?{}", parts.join("&"))
}

/// The decoded object path of a presigned GET URL (`/bucket/key`).
fn object_path(url: &str) -> String {
    let no_query = url.split_once('?').map_or(url, |(p, _)| p);
    let path =
        no_query.split_once("://").map(|(_, rest)| rest).and_then(|rest| rest.find('/').map(|i| &rest[i..])).unwrap();
    percent_decode(path)
}

/// `url` reading object `key` instead (same signature, same query).
fn with_object(url: &str, key: &str) -> String {
    let (no_query, q) = url.split_once('?').unwrap();
    let (scheme, rest) = no_query.split_once("://").unwrap();
    let authority = &rest[..rest.find('/').unwrap()];
    let path: Vec<String> = key.split('/').map(percent_encode).collect();
    format!("{scheme}://{authority}/{BUCKET}/{}?{q}", path.join("/"))
}

/// The keys of a `ListObjectsV2` answer (S3's XML), decoded.
fn listed_keys(xml: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(xml);
    text.split("<Key>").skip(1).filter_map(|s| s.split_once("</Key>")).map(|(k, _)| percent_decode(k)).collect()
}

/// When a SigV4 presigned URL stops being valid (Unix seconds): X-Amz-Date + X-Amz-Expires.
fn url_end(url: &str) -> i64 {
    let date = param(url, "X-Amz-Date").expect("X-Amz-Date");
    let n = |r: std::ops::Range<usize>| date[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    secs + param(url, "X-Amz-Expires").expect("X-Amz-Expires").parse::<i64>().unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// S3's own refusal: 403 with an S3 XML error body (not one of ours).
fn assert_refused_by_s3(url: &str, why: &str) {
    let (status, head, body) = curl(url, None, None);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{why}: {url}\n{text}");
    assert!(text.contains("<Error>") && text.contains("<Code>"), "{why}: not S3's refusal: {head}{text}");
}

fn verification_mail(to: &str, code: &str) -> String {
    format!(
        "From: Example Service <no-reply@{SERVICE}>\r\nTo: {to}\r\nSubject: Verify your email for Example\r\n\
         Message-ID: <verify-{code}@{SERVICE}>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nWelcome to Example!\r\n\r\nYour verification code is {code}.\r\n\
         It expires in 10 minutes.\r\n"
    )
}

#[test]
fn the_agent_reads_mail_straight_from_the_object_store() {
    let w = world(19400..=19449);
    w.deliver(&w.signup, &verification_mail(&w.signup, "246810"));

    // Stored on S3 under <prefix>/<owner>/<inbox>/, nothing in the data directory.
    let list = w.mail_json(&w.key_a, &["list", "--inbox", &w.signup]);
    assert_eq!(list["messages"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["messages"][0]["subject"], "Verify your email for Example", "{list}");
    let id = list["messages"][0]["message_id"].as_str().unwrap().to_owned();
    let stored =
        w.s3.object(&World::object_key(OWNER_A, &w.signup, &id)).expect("the message is an object of the bucket");
    assert!(String::from_utf8_lossy(&stored).contains("246810"));
    assert!(common::stored_messages(&w.server.blobs(), OWNER_A, &w.signup).is_empty(), "no copy in files");
    let text = serde_json::to_string(&list).unwrap();
    assert!(!text.contains("X-Amz") && !text.contains("raw_url"), "no presigned URL in the agent's answers: {text}");

    let shown = w.mail_json(&w.key_a, &["show", &id, "--inbox", &w.signup]);
    assert!(shown["text"].as_str().unwrap().contains("246810"), "{shown}");
    let otp = w.mail_json(&w.key_a, &["otp", &id, "--inbox", &w.signup, "--allow-unauthenticated"]);
    assert_eq!(otp["code"], "246810", "{otp}");

    // `mail otp --wait`: the wait begins, then the code arrives (found through
    // the event stream, then read through the raw route's 307).
    let wait = [
        "otp",
        "--wait",
        "--inbox",
        w.signup.as_str(),
        "--from",
        SERVICE,
        "--allow-unauthenticated",
        "--timeout",
        "60",
    ];
    let child = w.mail_cmd(&w.key_a, &wait).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    w.deliver(&w.signup, &verification_mail(&w.signup, "135790"));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "135790");

    // The MCP tools, unchanged.
    let mut mcp = Mcp::stdio(&w.env(&w.key_a));
    let listed = mcp.ok("list_messages", json!({"inbox": w.signup, "limit": 10}));
    assert_eq!(listed["messages"].as_array().unwrap().len(), 2, "{listed}");
    let newest = listed["messages"][0]["message_id"].as_str().unwrap().to_owned();
    let m = mcp.ok("get_message", json!({"inbox": w.signup, "message_id": newest}));
    assert!(m["text"].as_str().unwrap().contains("135790"), "{m}");
    let got = mcp.ok("wait_for_otp", json!({"inbox": w.signup, "from_domain": SERVICE, "require_authenticated": false, "include_seen": true, "timeout_s": 5}));
    assert_eq!(got["code"], "135790", "{got}");
    assert!(!format!("{listed}{m}{got}").contains("X-Amz"), "no presigned URL reaches the MCP client");
    assert!(
        mcp.err("get_message", json!({"inbox": w.signup, "message_id": "01JZZZZZZZZZZZZZZZZZZZZZZZ"}))
            .contains("not found")
    );
    drop(mcp);

    // Sending between the agent's inboxes: stored on S3, read from there.
    w.mail_json(&w.key_a, &["send", "--inbox", &w.signup, "--to", &w.peer, "--subject", "over s3", "--text", "hi"]);
    let got = w.mail_json(&w.key_a, &["wait", "--inbox", &w.peer, "--subject", "over s3", "--timeout", "60"]);
    assert_eq!(got["from"], w.signup.as_str(), "{got}");

    // The bytes come from the store, not through the server: with the store
    // gone, the server still lists (its index), but reading fails naming the store.
    let mut w = w;
    w.s3.stop();
    let out = w.mail(&w.key_a, &["show", &id, "--inbox", &w.signup]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("object store at 127.0.0.1"), "{err}");
    let cap = w.mint(&w.key_a, &w.signup)["token"].as_str().unwrap().to_owned();
    assert_eq!(w.list(&cap, &w.signup).0, 200);
}

#[test]
fn presigned_urls_are_confined_to_their_capability_and_expire_with_it() {
    let w = world(19450..=19499);
    w.deliver(&w.signup, &verification_mail(&w.signup, "111111"));
    w.deliver(&w.signup, &verification_mail(&w.signup, "222222"));
    w.deliver(&w.peer, &verification_mail(&w.peer, "333333"));
    w.deliver(&w.bee, &verification_mail(&w.bee, "444444"));

    let mint = w.mint(&w.key_a, &w.signup);
    let cap = mint["token"].as_str().unwrap().to_owned();
    let expires_at = mint["expires_at"].as_i64().unwrap();
    let cap_peer = w.mint(&w.key_a, &w.peer)["token"].as_str().unwrap().to_owned();
    let cap_bee = w.mint(&w.key_b, &w.bee)["token"].as_str().unwrap().to_owned();
    let ids = |cap: &str, inbox: &str| -> Vec<(String, String)> {
        let (status, page) = w.list(cap, inbox);
        assert_eq!(status, 200, "{page}");
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["message_id"].as_str().unwrap().to_owned(),
                    m["raw_url"].as_str().expect("a raw_url on S3").to_owned(),
                )
            })
            .collect()
    };
    let mine = ids(&cap, &w.signup);
    let peer = ids(&cap_peer, &w.peer);
    let bee = ids(&cap_bee, &w.bee);
    assert_eq!((mine.len(), peer.len(), bee.len()), (2, 1, 1));

    // list_url: the capability's own prefix, fixed by the signature.
    let list_url = mint["list_url"].as_str().expect("a list_url on S3").to_owned();
    assert!(list_url.starts_with(&w.s3.endpoint()), "{list_url}");
    let my_prefix = format!("{PREFIX}/{OWNER_A}/{}/", w.signup);
    assert_eq!(param(&list_url, "prefix").as_deref(), Some(my_prefix.as_str()), "{list_url}");
    assert!(url_end(&list_url) <= expires_at, "the list URL outlives the capability: {list_url}");
    let (status, _, body) = curl(&list_url, None, None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut keys = listed_keys(&body);
    keys.sort();
    let mut want: Vec<String> = mine.iter().map(|(id, _)| World::object_key(OWNER_A, &w.signup, id)).collect();
    want.sort();
    assert_eq!(keys, want, "exactly the inbox's own messages");
    for other in [
        format!("{PREFIX}/{OWNER_A}/{}/", w.peer),
        format!("{PREFIX}/{OWNER_B}/{}/", w.bee),
        format!("{PREFIX}/{OWNER_A}/"),
        format!("{PREFIX}/"),
        String::new(),
        format!("{my_prefix}x"),
    ] {
        assert_refused_by_s3(
            &with_param(&list_url, "prefix", Some(&other)),
            &format!("list_url edited to prefix {other:?}"),
        );
    }
    assert_refused_by_s3(&with_param(&list_url, "prefix", None), "list_url without its prefix");
    assert_refused_by_s3(&with_param(&list_url, "X-Amz-Expires", Some("1800")), "list_url with a longer life");

    // raw_url: the message's own object; curl reads exactly the stored bytes.
    for (id, url) in &mine {
        let key = World::object_key(OWNER_A, &w.signup, id);
        assert_eq!(object_path(url), format!("/{BUCKET}/{key}"), "{url}");
        assert!(url_end(url) <= expires_at, "a raw_url outlives the capability: {url}");
        let (status, _, body) = curl(url, None, None);
        assert_eq!(status, 200);
        assert_eq!(Some(body), w.s3.object(&key));
    }
    // The same URL edited to another inbox's object (the agent's own other
    // inbox, another owner's) or to a sibling message: refused by S3.
    let (my_id, my_url) = &mine[0];
    for key in [
        World::object_key(OWNER_A, &w.peer, &peer[0].0),
        World::object_key(OWNER_B, &w.bee, &bee[0].0),
        World::object_key(OWNER_A, &w.signup, &mine[1].0),
        World::object_key(OWNER_B, &w.signup, my_id),
    ] {
        assert!(w.s3.object(&key).is_some() || key.contains(OWNER_B), "{key}");
        assert_refused_by_s3(&with_object(my_url, &key), &format!("raw_url edited to {key}"));
    }

    // The raw route: 307 to the same object, no-store; curl follows it.
    let (status, head) = w.raw_route(&cap, &w.signup, my_id);
    assert_eq!(status, 307, "{head}");
    assert_eq!(header(&head, "cache-control"), Some("no-store"), "{head}");
    let location = header(&head, "location").unwrap();
    assert!(location.starts_with(&w.s3.endpoint()), "{location}");
    assert_eq!(object_path(location), format!("/{BUCKET}/{}", World::object_key(OWNER_A, &w.signup, my_id)));
    assert!(url_end(location) <= expires_at, "{location}");
    let (status, _, body) = curl(location, None, None);
    assert_eq!(status, 200);
    assert_eq!(Some(body), w.s3.object(&World::object_key(OWNER_A, &w.signup, my_id)));
    let followed = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-L", "-H", &format!("Authorization: Bearer {cap}")])
        .arg(format!("{}/v1/inboxes/{}/messages/{my_id}", w.base(), w.signup))
        .output()
        .unwrap();
    assert_eq!(
        Some(followed.stdout),
        w.s3.object(&World::object_key(OWNER_A, &w.signup, my_id)),
        "curl -L reads the message"
    );

    // A capability for one inbox never yields a URL under another: the other
    // inbox's routes, or its message ids under our own inbox, are one 404, with no Location.
    for (inbox, id) in [(&w.peer, &peer[0].0), (&w.bee, &bee[0].0), (&w.signup, &peer[0].0), (&w.signup, &bee[0].0)] {
        let (status, head) = w.raw_route(&cap, inbox, id);
        assert_eq!(status, 404, "{inbox} {id}: {head}");
        assert!(header(&head, "location").is_none(), "{head}");
    }
    for inbox in [&w.peer, &w.bee] {
        let (status, page) = w.list(&cap, inbox);
        assert_eq!(status, 404, "{page}");
        assert!(!page.to_string().contains("X-Amz"), "{page}");
    }
    // Every URL any of the three capabilities handed out lies under its own inbox's prefix.
    for (owner, inbox, urls) in [(OWNER_A, &w.signup, &mine), (OWNER_A, &w.peer, &peer), (OWNER_B, &w.bee, &bee)] {
        for (_, url) in urls {
            assert!(object_path(url).starts_with(&format!("/{BUCKET}/{PREFIX}/{owner}/{inbox}/")), "{url}");
        }
    }

    // Expiry: a key that lives 15 s yields a capability that lives at most
    // that long, and every URL under it dies with it, refused by S3 itself.
    let short = run_json(w.dir.path(), &["key", "create", "--agent", AGENT_A, "--expires-in", "15s"]);
    let short_key = short["key"].as_str().unwrap();
    let mint = w.mint(short_key, &w.signup);
    let short_cap = mint["token"].as_str().unwrap().to_owned();
    let short_end = mint["expires_at"].as_i64().unwrap();
    assert!(mint["ttl"].as_i64().unwrap() <= 15 && mint["clamped"] == true, "{mint}");
    let short_list = mint["list_url"].as_str().unwrap().to_owned();
    let (status, page) = w.list(&short_cap, &w.signup);
    assert_eq!(status, 200, "{page}");
    let short_raw = page["messages"][0]["raw_url"].as_str().unwrap().to_owned();
    let (status, head) = w.raw_route(&short_cap, &w.signup, my_id);
    assert_eq!(status, 307, "{head}");
    let short_location = header(&head, "location").unwrap().to_owned();
    for url in [&short_list, &short_raw, &short_location] {
        assert!(url_end(url) <= short_end, "{url} outlives its capability ({short_end})");
    }
    // Before the end they work (15 s is the margin for a slow machine).
    assert_eq!(curl(&short_list, None, None).0, 200);
    assert_eq!(curl(&short_raw, None, None).0, 200);
    assert_eq!(curl(&short_location, None, None).0, 200);
    while unix_now() <= short_end + 1 {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_refused_by_s3(&short_list, "an expired list_url");
    assert_refused_by_s3(&short_raw, "an expired raw_url");
    assert_refused_by_s3(&short_location, "an expired 307 Location");
    // And the route, under the expired capability, hands out nothing.
    let (status, head) = w.raw_route(&short_cap, &w.signup, my_id);
    assert_eq!(status, 401, "{head}");
    assert!(header(&head, "location").is_none());
}
