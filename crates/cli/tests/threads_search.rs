//! Threads and search (issue 13 §4) through the real server and binary: a
//! generated corpus of conversations (replies by In-Reply-To, by References
//! only, by subject alone, replies that arrive before what they answer) is
//! delivered over real SMTP (Python's smtplib), then `agentkeys mail
//! threads|thread|search --json` and the MCP tools `list_threads`,
//! `get_thread`, `search_messages`, `get_message` (through the official MCP
//! Python SDK client) must answer what the corpus says; another owner's
//! inbox, an inbox outside the agent's grant and another inbox's thread answer
//! as if nothing existed. A reply the agent sends shows in its thread's
//! `sent` entries, and in no other thread.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use serde_json::{Value, json};

const OWNER_A: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const OWNER_B: &str = "0xb2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const AGENT_A: &str = "0xa100000000000000000000000000000000000001";
const AGENT_A2: &str = "0xa100000000000000000000000000000000000002";
const AGENT_B: &str = "0xb200000000000000000000000000000000000001";

struct World {
    _dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    server: Server,
    bot: String,
    other: String,
    bee: String,
    key_a: String,
    key_b: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, bot, key_a) = provision(d, OWNER_A, AGENT_A, "bot");
    let (_, _, other, _) = provision(d, OWNER_A, AGENT_A2, "other");
    let (_, _, bee, key_b) = provision(d, OWNER_B, AGENT_B, "bee");
    let server = Server::start(d, &[]);
    World { _dir: dir, config_dir: tempfile::tempdir().unwrap(), server, bot, other, bee, key_a, key_b }
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

    fn mail(&self, key: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = agentkeys(&self.server.data_dir);
        cmd.arg("mail").args(args).arg("--json");
        for (k, v) in self.env(key) {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn mail_json(&self, key: &str, args: &[&str]) -> Value {
        let out = self.mail(key, args);
        assert!(out.status.success(), "mail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Delivers every message of `raws` to `rcpt` over one smtplib session each.
    fn deliver(&self, rcpt: &str, raw: &str) {
        let plan = json!({"port": self.server.inbound.port(), "steps": [
            ["mail", "bounce@sender.example"], ["rcpt", rcpt], ["data", {"raw": raw}],
        ]});
        let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
        let codes: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s[0].as_i64().unwrap()).collect();
        assert_eq!(codes, [250, 250, 250], "{r}");
    }
}

/// One generated message: its conversation, its marker word, and the raw text.
struct Generated {
    conversation: usize,
    marker: String,
    from_domain: &'static str,
    attachment: bool,
    raw: String,
}

const DOMAINS: [&str; 3] = ["alpha.example", "beta.example", "mail.alpha.example"];
const TOPICS: [&str; 4] = ["budget", "launch", "hiring", "offsite"];

/// Conversations of 1-4 messages: the first a new subject, then replies that
/// link by In-Reply-To (and References), by References only, or (no id
/// headers) by a `Re:`/`AW:`/`SV:` subject; in conversation 0 the first reply
/// is delivered before the message it answers.
fn corpus(bot: &str) -> Vec<Generated> {
    let mut out = Vec::new();
    let sizes = [3, 2, 4, 1, 2];
    for (c, &n) in sizes.iter().enumerate() {
        let topic = TOPICS[c % TOPICS.len()];
        let subject = format!("{topic} plan {c}");
        for k in 0..n {
            let domain = DOMAINS[(c + k) % DOMAINS.len()];
            let marker = format!("marker{c}x{k}");
            let mut headers = format!("From: Person {k} <p{k}@{domain}>\r\nTo: {bot}\r\nMessage-ID: <c{c}m{k}@{domain}>\r\n");
            let link = match (k, c % 3) {
                (0, _) => String::new(),
                (_, 0) => format!("In-Reply-To: <c{c}m{}@{}>\r\nReferences: <c{c}m0@{}>\r\n", k - 1, DOMAINS[(c + k - 1) % 3], DOMAINS[c % 3]),
                (_, 1) => format!("References: <c{c}m0@{}> <c{c}m{}@{}>\r\n", DOMAINS[c % 3], k - 1, DOMAINS[(c + k - 1) % 3]),
                _ => String::new(),
            };
            headers.push_str(&link);
            let prefix = if k == 0 { "" } else { ["Re: ", "AW: ", "SV: Re: "][k % 3] };
            headers.push_str(&format!("Subject: {prefix}{subject}\r\n"));
            let attachment = c == 1 && k == 0;
            let body = format!("Notes about the {topic}: {marker}.\r\n\r\nOn Mon, Dec 7, 2026 at 10:00 AM Someone <s@{domain}> wrote:\r\n> older quoted words quotedonly\r\n");
            let raw = if attachment {
                format!("{headers}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{body}--b\r\n\
                         Content-Type: text/csv\r\nContent-Disposition: attachment; filename=a.csv\r\n\r\nx,1\r\n--b--\r\n")
            } else {
                format!("{headers}\r\n{body}")
            };
            out.push(Generated { conversation: c, marker, from_domain: domain, attachment, raw });
        }
    }
    // Conversation 0: its first reply is delivered before the original.
    out.swap(0, 1);
    out
}

fn ids_by_marker(w: &World, key: &str, inbox: &str) -> BTreeMap<String, String> {
    let list = w.mail_json(key, &["list", "--inbox", inbox, "--limit", "100"]);
    let mut out = BTreeMap::new();
    for m in list["messages"].as_array().unwrap() {
        let id = m["message_id"].as_str().unwrap().to_owned();
        let shown = w.mail_json(key, &["show", &id, "--inbox", inbox]);
        let text = shown["text"].as_str().unwrap_or_default();
        let marker = text.split(|c: char| !c.is_alphanumeric()).find(|t| t.starts_with("marker")).unwrap().to_owned();
        out.insert(marker, id);
    }
    out
}

#[test]
fn threads_and_search_over_a_generated_corpus_delivered_over_smtp() {
    let w = world();
    let messages = corpus(&w.bot);
    for g in &messages {
        w.deliver(&w.bot, &g.raw);
    }
    // The same words for another owner's inbox and another inbox of the same owner.
    w.deliver(&w.bee, &messages[0].raw);
    w.deliver(&w.other, &messages[0].raw);
    let ids = ids_by_marker(&w, &w.key_a, &w.bot);
    assert_eq!(ids.len(), messages.len());

    // Threads: one per conversation, with every message of it.
    let threads = w.mail_json(&w.key_a, &["threads", "--inbox", &w.bot, "--limit", "100"]);
    let threads = threads["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 5, "{threads:?}");
    let mut by_conversation: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for g in &messages {
        by_conversation.entry(g.conversation).or_default().insert(ids[&g.marker].clone());
    }
    for t in threads {
        let id = t["thread_id"].as_str().unwrap();
        let thread = w.mail_json(&w.key_a, &["thread", id, "--inbox", &w.bot]);
        let members: BTreeSet<String> =
            thread["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(t["message_count"].as_u64().unwrap() as usize, members.len());
        assert!(by_conversation.values().any(|c| *c == members), "thread {id} = {members:?}, conversations {by_conversation:?}");
        let order: Vec<&str> = thread["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap()).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "oldest first");
    }

    // Search: every rule against the corpus.
    let found = |args: &[&str]| -> BTreeSet<String> {
        let mut full = vec!["search", "--inbox", w.bot.as_str(), "--limit", "100"];
        full.extend_from_slice(args);
        let v = w.mail_json(&w.key_a, &full);
        v["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect()
    };
    let want = |pred: &dyn Fn(&Generated) -> bool| -> BTreeSet<String> {
        messages.iter().filter(|g| pred(g)).map(|g| ids[&g.marker].clone()).collect()
    };
    for g in &messages {
        assert_eq!(found(&["--text", &g.marker.to_uppercase()]), want(&|x| x.marker == g.marker), "{}", g.marker);
    }
    for topic in TOPICS {
        assert_eq!(found(&["--text", topic]), want(&|x| TOPICS[x.conversation % 4] == topic), "{topic}");
        assert_eq!(found(&["--subject", &format!("{topic} plan")]), want(&|x| TOPICS[x.conversation % 4] == topic));
    }
    assert_eq!(found(&["--from", "alpha.example"]), want(&|x| x.from_domain.ends_with("alpha.example")));
    assert_eq!(found(&["--from", "mail.alpha.example"]), want(&|x| x.from_domain == "mail.alpha.example"));
    assert_eq!(found(&["--from", "p0@beta.example"]), want(&|x| x.from_domain == "beta.example" && x.marker.ends_with("x0")));
    assert_eq!(found(&["--has-attachment", "true"]), want(&|x| x.attachment));
    assert_eq!(found(&["--text", "budget", "--has-attachment", "false"]), want(&|x| x.conversation % 4 == 0 && !x.attachment));
    assert_eq!(found(&["--to", &w.bot, "--since", "1h"]), want(&|_| true));
    assert_eq!(found(&["--until", "2000-01-01"]), BTreeSet::new());
    assert_eq!(found(&["--text", "nosuchwordanywhere"]), BTreeSet::new());
    // Every search hit names its message's thread.
    let v = w.mail_json(&w.key_a, &["search", "--inbox", &w.bot, "--text", "launch"]);
    for hit in v["messages"].as_array().unwrap() {
        assert!(threads.iter().any(|t| t["thread_id"] == hit["thread_id"]), "{hit}");
    }
    // Paging: two at a time, same answer.
    let mut paged = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let mut args = vec!["search", "--inbox", w.bot.as_str(), "--limit", "2"];
        if let Some(c) = &cursor {
            args.extend_from_slice(&["--cursor", c.as_str()]);
        }
        let v = w.mail_json(&w.key_a, &args);
        paged.extend(v["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_owned()));
        cursor = v["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, want(&|_| true));
    // A wordless search is a clear refusal.
    let out = w.mail(&w.key_a, &["search", "--inbox", &w.bot, "--text", "?!"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no words"), "{}", String::from_utf8_lossy(&out.stderr));

    // Scoping: no grant for `other` or `bee`; a capability for `bot` reaches no other inbox or thread.
    for inbox in [&w.other, &w.bee] {
        let out = w.mail(&w.key_a, &["search", "--inbox", inbox, "--text", "budget"]);
        assert!(!out.status.success(), "{inbox}");
    }
    let bee_threads = w.mail_json(&w.key_b, &["threads", "--inbox", &w.bee]);
    let bee_thread = bee_threads["threads"][0]["thread_id"].as_str().unwrap().to_owned();
    let base = format!("http://{}", w.server.http);
    let (status, _, minted) = curl("POST", &format!("{base}/v1/credentials/read"), Some(&w.key_a), Some(&json!({"inbox": w.bot}).to_string()));
    assert_eq!(status, 200, "{minted}");
    let cap = minted["token"].as_str().unwrap();
    for path in [
        format!("/v1/inboxes/{}/search?text=budget", w.bee),
        format!("/v1/inboxes/{}/threads", w.other),
        format!("/v1/inboxes/{}/threads/{bee_thread}", w.bot),
        format!("/v1/inboxes/{}/threads/not-a-ulid", w.bot),
    ] {
        let (status, _, body) = curl("GET", &format!("{base}{path}"), Some(cap), None);
        assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")), "{path}: {body}");
    }
    let (status, _, body) = curl("GET", &format!("{base}/v1/inboxes/{}/search?colour=red", w.bot), Some(cap), None);
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_REQUEST")), "{body}");

    // MCP through the official SDK client: the same answers, and get_message's latest_text.
    let mut mcp = Mcp::stdio(&w.env(&w.key_a));
    let listed = mcp.ok("list_threads", json!({"inbox": w.bot, "limit": 100}));
    assert_eq!(listed["threads"].as_array().unwrap().len(), 5);
    let t0 = listed["threads"][0]["thread_id"].as_str().unwrap();
    let thread = mcp.ok("get_thread", json!({"inbox": w.bot, "thread_id": t0}));
    assert_eq!(thread["messages"].as_array().unwrap().len() as u64, listed["threads"][0]["message_count"].as_u64().unwrap());
    let hits = mcp.ok("search_messages", json!({"inbox": w.bot, "text": "hiring", "from": "alpha.example", "limit": 100}));
    let got: BTreeSet<String> = hits["messages"].as_array().unwrap().iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, want(&|x| x.conversation % 4 == 2 && x.from_domain.ends_with("alpha.example")));
    let err = mcp.err("search_messages", json!({"inbox": w.bee, "text": "budget"}));
    assert!(!err.is_empty());
    let reply = &ids[&messages.iter().find(|g| g.conversation == 0 && g.marker.ends_with("x1")).unwrap().marker];
    let shown = mcp.ok("get_message", json!({"inbox": w.bot, "message_id": reply}));
    assert_eq!(shown["latest_text"], "Notes about the budget: marker0x1.", "{shown}");
    assert!(shown["text"].as_str().unwrap().contains("quotedonly"));
    // The server indexes the whole decoded body, quoted history included
    // (stripping quotes is the agent's `latest_text`, not the index's).
    assert_eq!(found(&["--text", "quotedonly"]).len(), messages.len());

    // A reply the agent sends stays in its thread: `mail thread` and MCP
    // `get_thread` show it under `sent` (placed by its In-Reply-To and
    // References), with its subject, recipient and delivery state; no other
    // thread shows it.
    let original = &ids[&messages.iter().find(|g| g.conversation == 1 && g.marker.ends_with("x0")).unwrap().marker];
    w.mail_json(&w.key_a, &["reply", original, "--inbox", &w.bot, "--text", "agreed"]);
    let sent = w.mail_json(&w.key_a, &["sent", "--inbox", &w.bot]);
    assert_eq!(sent["sent"].as_array().unwrap().len(), 1, "{sent}");
    let sent_id = sent["sent"][0]["message_id"].as_str().unwrap().to_owned();
    let hit = w.mail_json(&w.key_a, &["search", "--inbox", &w.bot, "--text", "marker1x0"]);
    let home = hit["messages"][0]["thread_id"].as_str().unwrap().to_owned();
    for t in threads {
        let id = t["thread_id"].as_str().unwrap();
        let thread = w.mail_json(&w.key_a, &["thread", id, "--inbox", &w.bot]);
        let shown: Vec<&str> = thread["sent"].as_array().unwrap().iter().map(|s| s["message_id"].as_str().unwrap()).collect();
        if id == home {
            assert_eq!(shown, [sent_id.as_str()], "{thread}");
            assert_eq!(thread["sent"][0]["subject"], "Re: launch plan 1", "{thread}");
            assert_eq!(thread["sent"][0]["recipients"], json!(["p0@beta.example"]), "{thread}");
            assert!(thread["sent"][0]["state"].is_string(), "{thread}");
        } else {
            assert!(shown.is_empty(), "{thread}");
        }
    }
    let via_mcp = mcp.ok("get_thread", json!({"inbox": w.bot, "thread_id": home}));
    assert_eq!(via_mcp["sent"][0]["message_id"], sent_id.as_str(), "{via_mcp}");
    let (status, _, body) = curl("GET", &format!("{base}/v1/inboxes/{}/threads/{home}", w.bot), Some(cap), None);
    assert_eq!((status, body["sent"][0]["message_id"].as_str()), (200, Some(sent_id.as_str())), "{body}");

    // The inbox's allow/block policy holds on threads and search as on the
    // listing, for a raw capability too: a blocked sender's mail is left out
    // and named by id only (`withheld_ids`); the agent's tools count it.
    owner_json(&w.server.data_dir, OWNER_A, &["inbox", "policy", &w.bot, "--receive-block", "beta.example"]);
    let blocked = want(&|x| x.from_domain == "beta.example");
    assert!(!blocked.is_empty() && blocked.len() < messages.len());
    let ids_of = |v: &Value, field: &str| -> BTreeSet<String> {
        v[field].as_array().unwrap().iter().map(|m| m.as_str().map_or_else(|| m["message_id"].as_str().unwrap().to_owned(), str::to_owned)).collect()
    };
    let (status, _, body) = curl("GET", &format!("{base}/v1/inboxes/{}/search?limit=100", w.bot), Some(cap), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids_of(&body, "messages"), want(&|x| x.from_domain != "beta.example"), "{body}");
    assert_eq!(ids_of(&body, "withheld_ids"), blocked, "{body}");
    let (_, _, body) = curl("GET", &format!("{base}/v1/inboxes/{}/threads?limit=100", w.bot), Some(cap), None);
    let latest: BTreeSet<String> = body["threads"].as_array().unwrap().iter().map(|t| t["latest"]["message_id"].as_str().unwrap().to_owned()).collect();
    assert!(latest.is_disjoint(&blocked), "{body}");
    assert!(ids_of(&body, "withheld_ids").is_subset(&blocked), "{body}");
    assert_eq!(latest.len() + body["withheld_ids"].as_array().unwrap().len(), threads.len(), "{body}");
    for t in threads {
        let id = t["thread_id"].as_str().unwrap();
        let (status, _, body) = curl("GET", &format!("{base}/v1/inboxes/{}/threads/{id}", w.bot), Some(cap), None);
        assert_eq!(status, 200, "{body}");
        let (shown, withheld) = (ids_of(&body, "messages"), ids_of(&body, "withheld_ids"));
        assert!(shown.is_disjoint(&blocked) && withheld.is_subset(&blocked), "{body}");
        assert_eq!(shown.len() + withheld.len(), t["message_count"].as_u64().unwrap() as usize, "{body}");
    }
    let v = w.mail_json(&w.key_a, &["search", "--inbox", &w.bot, "--from", "beta.example"]);
    assert!(v["messages"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["withheld"].as_u64(), Some(blocked.len() as u64), "{v}");
}
