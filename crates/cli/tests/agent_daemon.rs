//! The agent's daemon against the real server: `agentkeys mcp` driven by the
//! official MCP Python SDK over stdio and streamable HTTP, `agentkeys mail …`
//! with `--json`, the end-to-end OTP flow (smtplib → MX → wait_for_message →
//! extract_otp), sending through submission, and isolation through MCP.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentkeys_testdns::{TestDns, Zone};
use common::*;
use serde_json::{Value, json};

const OWNER_A: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const OWNER_B: &str = "0xb2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const AGENT_A: &str = "0xa100000000000000000000000000000000000001";
const AGENT_A2: &str = "0xa100000000000000000000000000000000000002";
const AGENT_B: &str = "0xb200000000000000000000000000000000000001";
const TOOLS: [&str; 18] = [
    "list_inboxes",
    "create_inbox",
    "list_messages",
    "get_message",
    "get_attachment",
    "send_message",
    "reply_to_message",
    "forward_message",
    "wait_for_message",
    "wait_for_otp",
    "extract_otp",
    "mark_messages",
    "list_threads",
    "get_thread",
    "search_messages",
    "list_sent",
    "request_grant",
    "list_grant_requests",
];

/// A server with: owner A's agent (inboxes `signup` and `peer`, read+send on
/// both), owner A's second agent (inbox `other`, not covered for agent A), and
/// owner B's agent (inbox `bee`).
struct World {
    _dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    server: Server,
    signup: String,
    peer: String,
    other: String,
    bee: String,
    key_a: String,
    key_b: String,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, signup, key_a) = provision(d, OWNER_A, AGENT_A, "signup");
    let v = run_json(d, &["inbox", "create", "--agent", AGENT_A, "--name", "peer"]);
    let peer = v["address"].as_str().unwrap().to_owned();
    owner_json(d, OWNER_A, &["grant", "create", "--agent", AGENT_A, "--inbox", &peer, "--scopes", "read,send"]);
    let (_, _, other, _) = provision(d, OWNER_A, AGENT_A2, "other");
    let (_, _, bee, key_b) = provision(d, OWNER_B, AGENT_B, "bee");
    let server = Server::start(d, &[]);
    World { _dir: dir, config_dir: tempfile::tempdir().unwrap(), server, signup, peer, other, bee, key_a, key_b }
}

impl World {
    /// The daemon's environment for an agent key.
    fn env(&self, key: &str) -> Vec<(String, String)> {
        vec![
            ("AGENTKEYS_SERVER".into(), format!("http://{}", self.server.http)),
            ("AGENTKEYS_AGENT_KEY".into(), key.into()),
            ("AGENTKEYS_SUBMISSION".into(), self.server.submission.to_string()),
            ("AGENTKEYS_CA_FILE".into(), self.server.data_dir.join("tls/cert.pem").display().to_string()),
            // No agent.json from the machine running the tests.
            ("AGENTKEYS_CONFIG_DIR".into(), self.config_dir.path().display().to_string()),
        ]
    }

    /// `agentkeys mail …` as agent `key`, with `--json`.
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

    /// Sends `raw` to `rcpt` through the MX with smtplib; asserts the `250`.
    fn deliver(&self, rcpt: &str, raw: &str) {
        let plan = json!({"port": self.server.inbound.port(), "steps": [
            ["mail", "no-reply@service.example"],
            ["rcpt", rcpt],
            ["data", {"raw": raw}],
        ]});
        let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
        let codes: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s[0].as_i64().unwrap()).collect();
        assert_eq!(codes, [250, 250, 250], "{r}");
    }
}

fn verification_mail(to: &str, code: &str) -> String {
    format!(
        "From: Example Service <no-reply@service.example>\r\nTo: {to}\r\nSubject: Verify your email for Example\r\n\
         Message-ID: <verify-{code}@service.example>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nWelcome to Example!\r\n\r\nYour verification code is {code}.\r\n\
         It expires in 10 minutes.\r\n"
    )
}

fn mail_with_attachment(to: &str) -> String {
    format!(
        "From: Reports <reports@service.example>\r\nTo: {to}\r\nSubject: Monthly report\r\nMessage-ID: <report-1@service.example>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
         The report is attached.\r\n--b1\r\nContent-Type: text/csv; name=\"report.csv\"\r\nContent-Disposition: attachment; filename=\"report.csv\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nYSxiLGMKMSwyLDMK\r\n--b1--\r\n"
    )
}

/// A child process killed (and reaped) when the test ends, even by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn check_tool_list(mcp: &mut Mcp) {
    let listed = mcp.send(json!({"op": "list_tools"}));
    assert_eq!(listed["schema_errors"], json!({}), "{listed}");
    let tools = listed["tools"].as_array().unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    let mut want = TOOLS.to_vec();
    want.sort_unstable();
    assert_eq!(names, want);
    for t in tools {
        let name = t["name"].as_str().unwrap();
        let sends = matches!(name, "send_message" | "reply_to_message" | "forward_message");
        let creates = matches!(name, "create_inbox" | "request_grant");
        assert_eq!(t["annotations"]["destructive_hint"], sends, "{t}");
        assert_eq!(t["annotations"]["read_only_hint"], !sends && !creates, "{t}");
        assert_eq!(t["input_schema"]["type"], "object", "{t}");
        if !matches!(name, "list_inboxes" | "create_inbox" | "list_grant_requests") {
            let required: Vec<&str> =
                t["input_schema"]["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
            assert!(required.contains(&"inbox"), "{name} must require inbox: {t}");
        }
    }
    // The schemas say what is valid: the client-side validator agrees.
    let v = mcp.send(json!({"op": "validate", "name": "wait_for_message", "arguments": {"inbox": "a@b.c", "timeout_s": 5}}));
    assert_eq!(v["valid"], true, "{v}");
    let v = mcp.send(json!({"op": "validate", "name": "wait_for_message", "arguments": {"timeout_s": 5}}));
    assert_eq!(v["valid"], false, "{v}");
    let v = mcp.send(json!({"op": "validate", "name": "list_messages", "arguments": {"inbox": "a@b.c", "limit": "x"}}));
    assert_eq!(v["valid"], false, "{v}");
}

#[test]
fn mcp_over_stdio_every_tool_against_the_real_server() {
    let w = world();
    let mut mcp = Mcp::stdio(&w.env(&w.key_a));
    assert_eq!(mcp.ready["server"], "agentkeys-mail");
    assert_eq!(mcp.ready["tools_capability"], true);
    check_tool_list(&mut mcp);

    // list_inboxes: the agent's two inboxes, not the other agent's, not owner B's.
    let inboxes = mcp.ok("list_inboxes", json!({}));
    let mut addresses: Vec<&str> = inboxes["inboxes"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    addresses.sort_unstable();
    let mut want = vec![w.peer.as_str(), w.signup.as_str()];
    want.sort_unstable();
    assert_eq!(addresses, want, "{inboxes}");
    assert_eq!(inboxes["inboxes"][0]["scopes"], json!(["read", "send"]));

    // The OTP flow: wait (live, or found in the look-back window), then extract.
    let signup = w.signup.clone();
    let inbound = w.server.inbound.port();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let plan = json!({"port": inbound, "steps": [
            ["mail", "no-reply@service.example"], ["rcpt", signup], ["data", {"raw": verification_mail(&signup, "483920")}],
        ]});
        python("smtp_client.py", &[plan.to_string()])
    });
    let got = mcp.ok("wait_for_message", json!({"inbox": w.signup, "from_domain": "service.example", "timeout_s": 60}));
    sender.join().unwrap();
    assert_eq!(got["subject"], "Verify your email for Example", "{got}");
    assert_eq!(got["from"], "no-reply@service.example");
    let id = got["message_id"].as_str().unwrap().to_owned();
    let otp = mcp.ok("extract_otp", json!({"inbox": w.signup, "message_id": id, "require_authenticated": false}));
    assert_eq!(otp["code"], "483920", "{otp}");
    assert_eq!(otp["message_id"], id.as_str());
    assert_eq!(otp["authenticated"], false, "an unsigned mail from an unknown domain is not authenticated: {otp}");
    // Unauthenticated: refused unless asked for, and then with a warning.
    let refused = mcp.err("extract_otp", json!({"inbox": w.signup, "message_id": id}));
    assert!(refused.contains("refused sender") && refused.contains("not authenticated"), "{refused}");
    assert!(otp["warning"].as_str().unwrap().starts_with("NOT AUTHENTICATED"), "{otp}");
    // Without message_id: the newest matching message (handed out already, so include_seen).
    let otp = mcp.ok(
        "extract_otp",
        json!({"inbox": w.signup, "from_address": "no-reply@service.example", "require_authenticated": false, "include_seen": true}),
    );
    assert_eq!(otp["code"], "483920", "{otp}");

    // get_message (parsed), list_messages with filters, get_attachment.
    let m = mcp.ok("get_message", json!({"inbox": w.signup, "message_id": id}));
    assert_eq!(m["subject"], "Verify your email for Example", "{m}");
    assert!(m["text"].as_str().unwrap().contains("483920"), "{m}");
    w.deliver(&w.signup, &mail_with_attachment(&w.signup));
    let list = mcp.ok("list_messages", json!({"inbox": w.signup, "limit": 10}));
    assert_eq!(list["messages"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["messages"][0]["subject"], "Monthly report", "newest first: {list}");
    let filtered = mcp.ok("list_messages", json!({"inbox": w.signup, "subject_contains": "VERIFY"}));
    assert_eq!(filtered["messages"].as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered["messages"][0]["message_id"], id.as_str());
    let none = mcp.ok("list_messages", json!({"inbox": w.signup, "from": "nobody.example"}));
    assert_eq!(none["messages"], json!([]), "{none}");
    let report_id = list["messages"][0]["message_id"].as_str().unwrap().to_owned();
    let report = mcp.ok("get_message", json!({"inbox": w.signup, "message_id": report_id}));
    let index = report["attachments"][0]["index"].clone();
    assert_eq!(report["attachments"][0]["filename"], "report.csv", "{report}");
    let att = mcp.ok("get_attachment", json!({"inbox": w.signup, "message_id": report_id, "index": index}));
    assert_eq!(att["content_base64"], "YSxiLGMKMSwyLDMK", "{att}");
    assert!(mcp.err("get_attachment", json!({"inbox": w.signup, "message_id": report_id, "index": 7})).contains("no attachment 7"));

    // send_message through submission to the agent's other inbox; it arrives.
    let sent = mcp.ok(
        "send_message",
        json!({"inbox": w.signup, "to": [w.peer], "subject": "hello peer", "text": "ping",
               "attachments": [{"filename": "n.txt", "content_type": "text/plain", "content_base64": "bm90ZQ=="}]}),
    );
    assert_eq!(sent["via"], "smtp", "{sent}");
    let arrived = mcp.ok("wait_for_message", json!({"inbox": w.peer, "subject_contains": "hello peer", "timeout_s": 60}));
    assert_eq!(arrived["from"], w.signup.as_str(), "{arrived}");
    let peer_id = arrived["message_id"].as_str().unwrap().to_owned();

    // list_sent: the message just sent, with its recipients; then that one by its id.
    let sent_list = mcp.ok("list_sent", json!({"inbox": w.signup}));
    assert_eq!(sent_list["inbox"], w.signup.as_str(), "{sent_list}");
    let mine = sent_list["sent"].as_array().unwrap().iter().find(|s| s["recipients"] == json!([w.peer])).unwrap_or_else(|| panic!("{sent_list}"));
    let one = mcp.ok("list_sent", json!({"inbox": w.signup, "message_id": mine["message_id"]}));
    assert_eq!(one["sent"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["sent"][0]["message_id"], mine["message_id"], "{one}");
    assert!(!mcp.err("list_sent", json!({"inbox": w.signup, "message_id": "01JZZZZZZZZZZZZZZZZZZZZZZZ"})).is_empty());

    // reply_to_message: threaded, back to the sender.
    let reply = mcp.ok("reply_to_message", json!({"inbox": w.peer, "message_id": peer_id, "text": "pong"}));
    assert_eq!(reply["recipients"], 1, "{reply}");
    let back = mcp.ok("wait_for_message", json!({"inbox": w.signup, "subject_contains": "Re: hello peer", "timeout_s": 60}));
    let back_msg = mcp.ok("get_message", json!({"inbox": w.signup, "message_id": back["message_id"]}));
    assert_eq!(back_msg["subject"], "Re: hello peer", "{back_msg}");
    let original = mcp.ok("get_message", json!({"inbox": w.peer, "message_id": peer_id}));
    let original_id = original["rfc5322_message_id"].as_str().expect("the sent message has a Message-ID").to_owned();
    assert_eq!(back_msg["in_reply_to"], original_id.as_str(), "{back_msg}");
    assert!(back_msg["references"].as_array().unwrap().iter().any(|r| r == original_id.as_str()), "{back_msg}");

    // forward_message: Fwd: subject, the original attached.
    mcp.ok("forward_message", json!({"inbox": w.signup, "message_id": id, "to": [w.peer], "text": "fyi"}));
    let fwd = mcp.ok("wait_for_message", json!({"inbox": w.peer, "subject_contains": "Fwd: Verify", "timeout_s": 60}));
    let fwd_msg = mcp.ok("get_message", json!({"inbox": w.peer, "message_id": fwd["message_id"]}));
    assert!(
        fwd_msg["attachments"].as_array().unwrap().iter().any(|a| a["content_type"] == "message/rfc822"),
        "{fwd_msg}"
    );

    // Errors are tool errors with a clear message.
    assert!(mcp.err("get_message", json!({"inbox": w.signup, "message_id": "01JZZZZZZZZZZZZZZZZZZZZZZZ"})).contains("not found"));
    assert!(mcp.err("get_message", json!({"inbox": w.signup, "message_id": "../../x"})).contains("ULID"));
    assert!(mcp.err("wait_for_message", json!({"inbox": w.signup, "timeout_s": 100000})).contains("over the limit"));
    assert!(mcp.err("send_message", json!({"inbox": w.signup, "to": [], "text": "x"})).contains("no recipients"));
    let timed_out = mcp.err("wait_for_message", json!({"inbox": w.signup, "from_domain": "never.example", "timeout_s": 1}));
    assert!(timed_out.contains("within 1 s"), "{timed_out}");
}

#[test]
fn read_capabilities_are_reused_within_a_daemon() {
    let w = world();
    w.deliver(&w.signup, &verification_mail(&w.signup, "111222"));
    let mut mcp = Mcp::stdio(&w.env(&w.key_a));
    for _ in 0..3 {
        let list = mcp.ok("list_messages", json!({"inbox": w.signup}));
        assert_eq!(list["messages"].as_array().unwrap().len(), 1, "{list}");
    }
    drop(mcp);
    let records = run_json(&w.server.data_dir, &["audit", "list"]);
    let mints: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "credential.read" && r["subject"] == w.signup.as_str())
        .collect();
    assert_eq!(mints.len(), 1, "three listings, one capability: {mints:?}");
}

#[test]
fn isolation_through_mcp() {
    let w = world();
    w.deliver(&w.signup, &verification_mail(&w.signup, "555666"));
    w.deliver(&w.other, &verification_mail(&w.other, "777888"));
    let mut a = Mcp::stdio(&w.env(&w.key_a));
    let own = a.ok("list_messages", json!({"inbox": w.signup}));
    let a_id = own["messages"][0]["message_id"].as_str().unwrap().to_owned();

    let mut b = Mcp::stdio(&w.env(&w.key_b));
    let b_inboxes = b.ok("list_inboxes", json!({}));
    assert_eq!(b_inboxes["inboxes"].as_array().unwrap().len(), 1, "{b_inboxes}");
    assert_eq!(b_inboxes["inboxes"][0]["address"], w.bee.as_str());
    // Owner B's agent on owner A's inbox answers exactly like on an inbox that
    // does not exist.
    let missing = "ghost@agents.localhost";
    let foreign = b.err("list_messages", json!({"inbox": w.signup}));
    let absent = b.err("list_messages", json!({"inbox": missing}));
    assert_eq!(foreign.replace(&w.signup, "X"), absent.replace(missing, "X"));
    let foreign = b.err("get_message", json!({"inbox": w.signup, "message_id": a_id}));
    let absent = b.err("get_message", json!({"inbox": missing, "message_id": a_id}));
    assert_eq!(foreign.replace(&w.signup, "X"), absent.replace(missing, "X"));
    let foreign = b.err("wait_for_message", json!({"inbox": w.signup, "timeout_s": 2}));
    assert!(foreign.contains("no active grant"), "{foreign}");
    let foreign = b.err("extract_otp", json!({"inbox": w.signup, "message_id": a_id}));
    assert!(foreign.contains("no active grant"), "{foreign}");
    // B's own inbox is empty: A's message id does not exist there.
    let cross = b.err("get_message", json!({"inbox": w.bee, "message_id": a_id}));
    assert!(cross.contains("not found"), "{cross}");

    // Owner A's agent and an inbox of its own owner that its grants do not cover.
    let a_inboxes = a.ok("list_inboxes", json!({}));
    assert!(!a_inboxes.to_string().contains(&w.other), "{a_inboxes}");
    let uncovered = a.err("list_messages", json!({"inbox": w.other}));
    let absent = a.err("list_messages", json!({"inbox": missing}));
    assert_eq!(uncovered.replace(&w.other, "X"), absent.replace(missing, "X"));
    let uncovered = a.err("extract_otp", json!({"inbox": w.other, "wait": true, "timeout_s": 2}));
    assert!(uncovered.contains("no active grant"), "{uncovered}");
    // Sending as an inbox the agent does not hold: refused at AUTH.
    let refused = a.err("send_message", json!({"inbox": w.other, "to": [w.signup], "subject": "x", "text": "x"}));
    assert!(refused.contains("refused to send as") && refused.contains("535"), "{refused}");
}

#[test]
fn mcp_over_streamable_http() {
    let w = world();
    let mut cmd = agentkeys(&w.server.data_dir);
    cmd.args(["mcp", "--http", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    for (k, v) in w.env(&w.key_a) {
        cmd.env(k, v);
    }
    let mut daemon = KillOnDrop(cmd.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(daemon.0.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let url = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"), "{first}");
    {
        let mut mcp = Mcp::spawn(&["http".into(), url.clone()], &[]);
        check_tool_list(&mut mcp);
        let inboxes = mcp.ok("list_inboxes", json!({}));
        assert_eq!(inboxes["inboxes"].as_array().unwrap().len(), 2, "{inboxes}");
        w.deliver(&w.signup, &verification_mail(&w.signup, "909192"));
        let otp = mcp.ok("extract_otp", json!({"inbox": w.signup, "wait": true, "from_domain": "service.example", "timeout_s": 60, "require_authenticated": false}));
        assert_eq!(otp["code"], "909192", "{otp}");
        let list = mcp.ok("list_messages", json!({"inbox": w.signup}));
        assert_eq!(list["messages"][0]["message_id"], otp["message_id"], "{list}");
        assert!(mcp.err("list_messages", json!({"inbox": w.bee})).contains("no active grant"));
    }
    // A second client gets its own session on the same daemon.
    {
        let mut again = Mcp::spawn(&["http".into(), url], &[]);
        assert_eq!(again.ok("list_inboxes", json!({}))["inboxes"].as_array().unwrap().len(), 2);
    }
    Command::new("kill").arg("-TERM").arg(daemon.0.id().to_string()).status().unwrap();
    let status = wait_timeout(&mut daemon.0, Duration::from_secs(30)).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn mcp_http_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentkeys(dir.path())
        .args(["mcp", "--http", "0.0.0.0:0"])
        .env("AGENTKEYS_SERVER", "http://127.0.0.1:9")
        .env("AGENTKEYS_AGENT_KEY", "ak_0123456789abcdefghijABCDEFGHIJ0123456789abc")
        .env("AGENTKEYS_CONFIG_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mail_cli_verbs_with_json() {
    let w = world();
    let inboxes = w.mail_json(&w.key_a, &["inboxes"]);
    assert_eq!(inboxes["inboxes"].as_array().unwrap().len(), 2, "{inboxes}");
    // Two inboxes: the CLI asks which one.
    let out = w.mail(&w.key_a, &["list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--inbox") && err.contains(&w.signup), "{err}");

    w.deliver(&w.signup, &verification_mail(&w.signup, "246810"));
    let list = w.mail_json(&w.key_a, &["list", "--inbox", &w.signup]);
    let id = list["messages"][0]["message_id"].as_str().unwrap().to_owned();
    assert_eq!(list["messages"][0]["subject"], "Verify your email for Example");
    let shown = w.mail_json(&w.key_a, &["show", &id, "--inbox", &w.signup]);
    assert!(shown["text"].as_str().unwrap().contains("246810"), "{shown}");
    let otp = w.mail_json(&w.key_a, &["otp", &id, "--inbox", &w.signup, "--allow-unauthenticated"]);
    assert_eq!(otp["code"], "246810", "{otp}");
    // Human output: the code alone on stdout.
    let mut cmd = agentkeys(&w.server.data_dir);
    cmd.args(["mail", "otp", &id, "--inbox", &w.signup, "--allow-unauthenticated"]);
    for (k, v) in w.env(&w.key_a) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "246810");

    let sent = w.mail_json(&w.key_a, &["send", "--inbox", &w.signup, "--to", &w.peer, "--subject", "cli hello", "--text", "hi"]);
    assert_eq!(sent["recipients"], 1, "{sent}");
    let got = w.mail_json(&w.key_a, &["wait", "--inbox", &w.peer, "--subject", "cli hello", "--timeout", "60"]);
    let peer_id = got["message_id"].as_str().unwrap().to_owned();
    w.mail_json(&w.key_a, &["reply", &peer_id, "--inbox", &w.peer, "--text", "back"]);
    let back = w.mail_json(&w.key_a, &["wait", "--inbox", &w.signup, "--subject", "Re: cli hello", "--timeout", "60"]);
    assert_eq!(back["from"], w.peer.as_str(), "{back}");
    w.mail_json(&w.key_a, &["forward", &peer_id, "--inbox", &w.peer, "--to", &w.signup]);
    w.mail_json(&w.key_a, &["wait", "--inbox", &w.signup, "--subject", "Fwd: cli hello", "--timeout", "60"]);

    // Without the server's certificate, submission TLS is refused, and the error
    // says which setting fixes it.
    let mut cmd = agentkeys(&w.server.data_dir);
    cmd.args(["mail", "send", "--inbox", &w.signup, "--to", &w.peer, "--text", "x"]);
    for (k, v) in w.env(&w.key_a) {
        if k != "AGENTKEYS_CA_FILE" {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("AGENTKEYS_CA_FILE"), "{err}");

    // Waiting with nothing arriving ends with an error, not a hang.
    let out = w.mail(&w.key_a, &["wait", "--inbox", &w.signup, "--from", "never.example", "--timeout", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("within 1 s"));
    // Owner B's agent: only its own inbox, used by default.
    let out = w.mail_json(&w.key_b, &["list"]);
    assert_eq!(out["inbox"], w.bee.as_str());
    // A revoked or wrong key: the error names the fix.
    let out = w.mail(&format!("ak_{}", "x".repeat(43)), &["inboxes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agentkeys agent pair"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mail_cli_without_configuration_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentkeys(dir.path()).args(["mail", "list"]).env("AGENTKEYS_CONFIG_DIR", dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agentkeys agent pair") && err.contains("AGENTKEYS_SERVER") && err.contains("AGENTKEYS_AGENT_KEY"), "{err}");
    // agent.json as pairing writes it is enough.
    std::fs::write(
        dir.path().join("agent.json"),
        r#"{"server": "http://127.0.0.1:9", "agent_id": "0xab", "agent_key": "ak_0123456789abcdefghijABCDEFGHIJ0123456789abc"}"#,
    )
    .unwrap();
    let out = agentkeys(dir.path()).args(["mail", "inboxes"]).env("AGENTKEYS_CONFIG_DIR", dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the server at http://127.0.0.1:9"), "{err}");
}


/// A sender domain (`bank.example`) with an RSA DKIM key, an SPF record that
/// does not list 127.0.0.1 (so only a valid DKIM signature can authenticate what
/// the tests send) and DMARC `p=reject`, published by a real DNS server on loopback.
struct SignedSender(DkimKey);

impl SignedSender {
    fn new() -> Self {
        Self(DkimKey::generate())
    }

    fn zone(&self) -> Zone {
        Zone::new()
            .txt("sel._domainkey.bank.example", &self.0.dns_txt())
            .txt("bank.example", "v=spf1 ip4:192.0.2.1 -all")
            .txt("_dmarc.bank.example", "v=DMARC1; p=reject; adkim=s; aspf=r")
    }

    fn sign(&self, message: &str) -> String {
        self.0.sign("bank.example", message)
    }
}

fn bank_mail(to: &str, subject: &str, code: &str) -> String {
    format!(
        "From: Bank <alerts@bank.example>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{subject}@bank.example>\r\n\r\nYour verification code is {code}.\r\nIt expires in 10 minutes.\r\n"
    )
}

#[test]
fn extract_otp_authenticated_follows_real_dkim_spf_dmarc() {
    let sender = SignedSender::new();
    let dns = TestDns::start(sender.zone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, _, inbox, key) = provision(dir.path(), OWNER_A, AGENT_A, "bot");
    let server = Server::start(dir.path(), &[("AGENTKEYS_DNS_NAMESERVERS", &dns.nameserver())]);
    let w = World {
        _dir: dir,
        config_dir: tempfile::tempdir().unwrap(),
        server,
        signup: inbox.clone(),
        peer: String::new(),
        other: String::new(),
        bee: String::new(),
        key_a: key.clone(),
        key_b: String::new(),
    };
    let mut mcp = Mcp::stdio(&w.env(&key));
    let send = |raw: &str| {
        let plan = json!({"port": w.server.inbound.port(), "steps": [
            ["mail", "bounce@bank.example"], ["rcpt", inbox], ["data", {"raw": raw}],
        ]});
        let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
        assert_eq!(r["steps"][2][0], 250, "{r}");
    };
    // Signed by bank.example, DMARC aligned: authenticated.
    send(&sender.sign(&bank_mail(&inbox, "signed-1", "314159")));
    // Unsigned, from an IP the domain's SPF does not list: not authenticated.
    send(&bank_mail(&inbox, "plain-1", "271828"));
    // Signed, then the body changed in transit: the signature fails.
    send(&sender.sign(&bank_mail(&inbox, "altered-1", "161803")).replace("161803", "141421"));
    // A forged verdict in our name travels with an unsigned message from a domain
    // with no records at all.
    send(&format!(
        "Authentication-Results: mx.agents.localhost; dkim=pass header.d=evil.example; dmarc=pass header.from=evil.example\r\n\
         From: <no-reply@evil.example>\r\nTo: {inbox}\r\nSubject: forged-1\r\nMessage-ID: <forged-1@evil.example>\r\n\r\n\
         Your verification code is 112358.\r\n"
    ));

    let otp = |mcp: &mut Mcp, subject: &str| mcp.ok("extract_otp", json!({"inbox": inbox, "wait": true, "subject_contains": subject, "timeout_s": 60, "require_authenticated": false}));
    let signed = otp(&mut mcp, "signed-1");
    assert_eq!(signed["code"], "314159", "{signed}");
    assert_eq!(signed["authenticated"], true, "{signed}");
    let altered = otp(&mut mcp, "altered-1");
    assert_eq!(altered["code"], "141421", "{altered}");
    assert_eq!(altered["authenticated"], false, "a broken signature never authenticates: {altered}");
    let forged = otp(&mut mcp, "forged-1");
    assert_eq!(forged["code"], "112358", "{forged}");
    assert_eq!(forged["authenticated"], false, "a forged verdict is stripped by the MX: {forged}");
    let unsigned = otp(&mut mcp, "plain-1");
    assert_eq!(unsigned["code"], "271828", "{unsigned}");
    assert_eq!(unsigned["authenticated"], false, "unsigned, SPF fail: {unsigned}");
    // extract_otp and get_message report the same verdict of the MX.
    let parsed = mcp.ok("get_message", json!({"inbox": inbox, "message_id": signed["message_id"]}));
    assert_eq!(parsed["authentication"]["authenticated"], true, "{parsed}");
}

#[test]
fn send_reply_forward_through_the_http_send_endpoint() {
    let w = world();
    let mut env = w.env(&w.key_a);
    env.push(("AGENTKEYS_SEND_VIA".into(), "http".into()));
    let mut mcp = Mcp::spawn(&["stdio".into(), BIN.into(), "mcp".into()], &env);
    let sent = mcp.ok(
        "send_message",
        json!({"inbox": w.signup, "to": [w.peer], "bcc": [w.signup], "subject": "over http", "text": "via the HTTP door"}),
    );
    assert_eq!(sent["via"], "http", "{sent}");
    assert_eq!(sent["recipients"], 2, "{sent}");
    assert!(sent["queue_id"].is_string(), "{sent}");
    let got = mcp.ok("wait_for_message", json!({"inbox": w.peer, "subject_contains": "over http", "timeout_s": 60}));
    let m = mcp.ok("get_message", json!({"inbox": w.peer, "message_id": got["message_id"]}));
    assert!(m["text"].as_str().unwrap().contains("via the HTTP door"), "{m}");
    // The Bcc recipient got its copy, and no copy shows the Bcc header.
    let bcc = mcp.ok("wait_for_message", json!({"inbox": w.signup, "subject_contains": "over http", "timeout_s": 60}));
    for (inbox, id) in [(&w.peer, &got["message_id"]), (&w.signup, &bcc["message_id"])] {
        let out = w.mail(&w.key_a, &["show", id.as_str().unwrap(), "--inbox", inbox]);
        assert!(out.status.success());
        let raw = std::fs::read_dir(w.server.blobs().join(OWNER_A).join(inbox.as_str()))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .find(|m| m.contains("Subject: over http"))
            .unwrap();
        assert!(!raw.to_ascii_lowercase().contains("\nbcc:"), "{raw}");
    }
    mcp.ok("reply_to_message", json!({"inbox": w.peer, "message_id": got["message_id"], "text": "ok"}));
    mcp.ok("wait_for_message", json!({"inbox": w.signup, "subject_contains": "Re: over http", "timeout_s": 60}));
    // Sending as an inbox the agent holds no grant for: the one 401 of the HTTP door.
    let refused = mcp.err("send_message", json!({"inbox": w.other, "to": [w.signup], "subject": "x", "text": "x"}));
    assert!(refused.contains("refused to send as") && refused.contains("SEND_NOT_AUTHORIZED"), "{refused}");
}

/// Issue 12: an agent asks its owner for a grant through MCP (`request_grant`)
/// and follows it (`list_grant_requests`): pending, then approved (the grant
/// works: the inbox is listed) or denied, as the owner decides with the master
/// key (`agentkeys grant requests` / `grant decide`). Another owner's agent
/// sees none of it; another owner cannot decide it.
#[test]
fn grant_requests_through_mcp_and_the_owner_cli() {
    let w = world();
    let d = w.server.data_dir.clone();
    let mut a = Mcp::stdio(&w.env(&w.key_a));
    assert_eq!(a.ok("list_grant_requests", json!({}))["requests"], json!([]));
    let asked = a.ok("request_grant", json!({"inbox": w.other, "scopes": ["read"], "ttl_s": 86400, "reason": "read the other bot's reports"}));
    assert_eq!(asked["status"], "pending", "{asked}");
    let read_id = asked["id"].as_str().unwrap().to_owned();
    let asked = a.ok("request_grant", json!({"inbox": "signup-*@agents.localhost", "scopes": ["create"]}));
    let create_id = asked["id"].as_str().unwrap().to_owned();
    // Bad input: a clear tool error, nothing asked.
    let bad = a.err("request_grant", json!({"inbox": w.other, "scopes": ["fly"]}));
    assert!(bad.contains("scopes"), "{bad}");
    let bad = a.err("request_grant", json!({"inbox": w.other, "scopes": ["read"], "ttl_s": 0}));
    assert!(bad.contains("ttl_s"), "{bad}");
    let listed = a.ok("list_grant_requests", json!({}));
    let requests = listed["requests"].as_array().unwrap();
    let ids: std::collections::BTreeSet<&str> = requests.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [create_id.as_str(), read_id.as_str()].into(), "{listed}");
    // Newest first (by the second they were made: two made in the same second
    // come in either order).
    let made: Vec<&str> = requests.iter().map(|r| r["created_at"].as_str().unwrap()).collect();
    assert!(made.windows(2).all(|w| w[0] >= w[1]), "newest first: {listed}");
    assert!(requests.iter().all(|r| r["status"] == "pending"), "{listed}");
    let read = requests.iter().find(|r| r["id"] == read_id.as_str()).unwrap();
    assert_eq!(read["reason"], "read the other bot's reports");

    // The owner sees both and decides with the master key.
    let pending = owner_json(&d, OWNER_A, &["grant", "requests"]);
    let pending = pending["requests"].as_array().unwrap();
    let pending_ids: std::collections::BTreeSet<&str> = pending.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(pending_ids, ids, "{pending:?}");
    let made: Vec<&str> = pending.iter().map(|r| r["created_at"].as_str().unwrap()).collect();
    assert!(made.windows(2).all(|w| w[0] <= w[1]), "oldest first: {pending:?}");
    // Owner B can neither see nor decide them: the same answer as an unknown id.
    enroll_owner(&d, OWNER_B);
    assert_eq!(owner_json(&d, OWNER_B, &["grant", "requests"])["requests"], json!([]));
    let foreign = owner_run(&d, OWNER_B, &["grant", "decide", &read_id, "approve"]);
    let unknown = owner_run(&d, OWNER_B, &["grant", "decide", "ar_0000000000000000", "approve"]);
    assert!(!foreign.status.success());
    assert_eq!(
        String::from_utf8_lossy(&foreign.stderr).replace(&read_id, "X"),
        String::from_utf8_lossy(&unknown.stderr).replace("ar_0000000000000000", "X")
    );
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("404"), "{}", String::from_utf8_lossy(&foreign.stderr));
    let malformed = owner_run(&d, OWNER_A, &["grant", "decide", "gr_nope", "approve"]);
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("grant requests"), "a clear error");

    let approved = owner_json(&d, OWNER_A, &["grant", "decide", &read_id, "approve"]);
    assert_eq!(approved["status"], "approved", "{approved}");
    let grant = approved["grant"].as_str().unwrap().to_owned();
    let denied = owner_json(&d, OWNER_A, &["grant", "decide", &create_id, "deny"]);
    assert_eq!((denied["status"].as_str(), denied["grant"].as_str()), (Some("denied"), None), "{denied}");
    let twice = owner_run(&d, OWNER_A, &["grant", "decide", &create_id, "approve"]);
    assert!(!twice.status.success(), "decided once");

    // The agent sees the decisions, and the approved grant works.
    let listed = a.ok("list_grant_requests", json!({}));
    let by_id = |id: &str| listed["requests"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!((by_id(&read_id)["status"].as_str(), by_id(&read_id)["grant"].as_str()), (Some("approved"), Some(grant.as_str())));
    assert_eq!(by_id(&create_id)["status"], "denied");
    assert!(by_id(&create_id)["decided_at"].is_string());
    let inboxes = a.ok("list_inboxes", json!({}));
    assert!(inboxes["inboxes"].as_array().unwrap().iter().any(|i| i["address"] == w.other.as_str()), "{inboxes}");
    // The CLI shows the same.
    let cli = w.mail_json(&w.key_a, &["grant-requests"]);
    assert_eq!(cli["requests"], listed["requests"]);
    // Owner B's agent sees none of owner A's agent's requests.
    let mut b = Mcp::stdio(&w.env(&w.key_b));
    assert_eq!(b.ok("list_grant_requests", json!({}))["requests"], json!([]));
    let records = run_json(&d, &["audit", "list"]);
    let ops: Vec<&str> = records.as_array().unwrap().iter().filter_map(|r| r["operation"].as_str()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "grant.request").count(), 2, "each ask audited once: {ops:?}");
    assert!(ops.contains(&"grant.request_deny"), "{ops:?}");
    let created = records.as_array().unwrap().iter().find(|r| r["operation"] == "grant.create" && r["detail"]["request"] == read_id.as_str()).unwrap();
    assert_eq!(created["detail"]["approval"]["gate"], "master_key", "{created}");
}
