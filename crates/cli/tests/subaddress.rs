//! Subaddressing (issue 11 §5) against the real binary: swaks delivers
//! `hello+github@agents.localhost` to the `hello` inbox over the MX, the agent
//! sees the tag and filters by it (`mail list --to-tag`), an unknown base is
//! still `550 5.1.1`, sent mail to a tagged hosted address is delivered locally
//! with its tag, and a separator that occurs in inbox names is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const OWNER: &str = "0xa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const AGENT: &str = "0xa100000000000000000000000000000000000001";

/// swaks to the MX; the whole transcript and whether it succeeded.
fn swaks(port: u16, to: &str, subject: &str) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string(), "--from", "no-reply@service.example"])
        .args([&format!("--to={to}"), "--header", &format!("Subject: {subject}"), "--body", "Your code is 123456", "--timeout", "30"])
        .output()
        .expect("swaks");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn agent_env(server: &Server, key: &str, config_dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("AGENTKEYS_SERVER".into(), format!("http://{}", server.http)),
        ("AGENTKEYS_AGENT_KEY".into(), key.into()),
        ("AGENTKEYS_SUBMISSION".into(), server.submission.to_string()),
        ("AGENTKEYS_CA_FILE".into(), server.data_dir.join("tls/cert.pem").display().to_string()),
        ("AGENTKEYS_CONFIG_DIR".into(), config_dir.display().to_string()),
    ]
}

fn mail_json(server: &Server, env: &[(String, String)], args: &[&str]) -> Value {
    let mut cmd = agentkeys(&server.data_dir);
    cmd.arg("mail").args(args).arg("--json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "mail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn subjects(list: &Value) -> Vec<String> {
    let mut s: Vec<String> =
        list["messages"].as_array().unwrap().iter().map(|m| m["subject"].as_str().unwrap().to_owned()).collect();
    s.sort();
    s
}

#[test]
fn tagged_addresses_reach_the_base_inbox_and_filter_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, hello, key) = provision(d, OWNER, AGENT, "hello");
    assert_eq!(hello, "hello@agents.localhost");
    let server = Server::start(d, &[]);
    let port = server.inbound.port();

    let (ok, t) = swaks(port, "hello+github@agents.localhost", "from github");
    assert!(ok, "{t}");
    let (ok, t) = swaks(port, "Hello+News@Agents.Localhost", "from news");
    assert!(ok, "{t}");
    let (ok, t) = swaks(port, "hello@agents.localhost", "plain");
    assert!(ok, "{t}");
    // An unknown base stays unknown, with or without a tag; a bad tag is no inbox.
    for to in ["nobody+github@agents.localhost", "nobody@agents.localhost", "hello+@agents.localhost"] {
        let (ok, t) = swaks(port, to, "lost");
        assert!(!ok && t.contains("550 5.1.1"), "{to}: {t}");
    }
    // smtplib for a local part swaks takes for an option.
    let plan = serde_json::json!({"port": port, "steps": [["mail", "a@service.example"], ["rcpt", "+github@agents.localhost"]]});
    let r: Value = serde_json::from_str(&python("smtp_client.py", &[plan.to_string()])).unwrap();
    assert_eq!(r["steps"][1][0], 550, "{r}");
    assert!(r["steps"][1][1].as_str().unwrap().starts_with("5.1.1"), "{r}");
    let files = stored_messages(&server.blobs(), OWNER, &hello);
    assert_eq!(files.len(), 3, "{files:?}");
    let tagged: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .filter(|m| m.starts_with("Delivered-To: "))
        .map(|m| m.lines().next().unwrap().to_owned())
        .collect();
    let mut tagged_sorted = tagged.clone();
    tagged_sorted.sort();
    assert_eq!(tagged_sorted, ["Delivered-To: hello+github@agents.localhost", "Delivered-To: hello+news@agents.localhost"]);

    let config_dir = tempfile::tempdir().unwrap();
    let env = agent_env(&server, &key, config_dir.path());
    let all = mail_json(&server, &env, &["list", "--inbox", &hello]);
    assert_eq!(subjects(&all), ["from github", "from news", "plain"]);
    for m in all["messages"].as_array().unwrap() {
        let want = match m["subject"].as_str().unwrap() {
            "from github" => Some("github"),
            "from news" => Some("news"),
            _ => None,
        };
        assert_eq!(m["to_tag"].as_str(), want, "{m}");
    }
    let github = mail_json(&server, &env, &["list", "--inbox", &hello, "--to-tag", "github"]);
    assert_eq!(subjects(&github), ["from github"]);
    assert_eq!(github["messages"][0]["delivered_to"], "hello+github@agents.localhost");
    let none = mail_json(&server, &env, &["list", "--inbox", &hello, "--to-tag", "gitlab"]);
    assert_eq!(subjects(&none), Vec::<String>::new());
    // The parsed message's To shows the tagged address too.
    let id = github["messages"][0]["message_id"].as_str().unwrap().to_owned();
    let shown = mail_json(&server, &env, &["show", &id, "--inbox", &hello]);
    assert!(shown.to_string().contains("hello+github@agents.localhost"), "{shown}");

    // Sent mail to a tagged hosted address is delivered locally, tag kept.
    let sent = mail_json(
        &server,
        &env,
        &["send", "--inbox", &hello, "--to", "hello+self@agents.localhost", "--subject", "note to self", "--text", "hi"],
    );
    assert!(sent.to_string().contains("message_id"), "{sent}");
    let mine = mail_json(&server, &env, &["list", "--inbox", &hello, "--to-tag", "self"]);
    assert_eq!(subjects(&mine), ["note to self"]);
    server.stop();
}

#[test]
fn a_separator_inside_inbox_names_is_refused_at_create_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    provision(d, OWNER, AGENT, "sign-up");
    // With `-` as the separator, a new inbox containing it is refused with the fix.
    let out = agentkeys(d)
        .args(["inbox", "create", "--agent", AGENT, "--name", "shop-x"])
        .env("AGENTKEYS_SUBADDRESS_SEPARATOR", "-")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("shop@agents.localhost") && err.contains("separator"), "{err}");
    // A random name avoids it.
    let out = agentkeys(d).args(["inbox", "create", "--agent", AGENT, "--json"]).env("AGENTKEYS_SUBADDRESS_SEPARATOR", "-").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["address"].as_str().unwrap().contains('-'), "{v}");
    // The existing `sign-up` inbox would be unreachable: serve refuses to start.
    let out = agentkeys(d)
        .arg("serve")
        .env("AGENTKEYS_SUBADDRESS_SEPARATOR", "-")
        .env("AGENTKEYS_LISTEN_INBOUND", "127.0.0.1:0")
        .env("AGENTKEYS_LISTEN_SUBMISSION", "127.0.0.1:0")
        .env("AGENTKEYS_LISTEN_SUBMISSION_TLS", "127.0.0.1:0")
        .env("AGENTKEYS_LISTEN_HTTP", "127.0.0.1:0")
        .env("AGENTKEYS_DELIVERY_ENABLED", "false")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sign-up@agents.localhost") && err.contains("AGENTKEYS_SUBADDRESS_SEPARATOR"), "{err}");
    // A bad separator is a configuration error naming the key.
    let out = agentkeys(d).args(["inbox", "list"]).env("AGENTKEYS_SUBADDRESS_SEPARATOR", ".").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("AGENTKEYS_SUBADDRESS_SEPARATOR"), "{err}");
}

/// The owner's API refuses an inbox name containing the server's separator.
#[test]
fn the_owner_api_refuses_an_inbox_name_with_the_separator() {
    let dir = tempfile::tempdir().unwrap();
    provision(dir.path(), OWNER, AGENT, "hello");
    let server = Server::start(dir.path(), &[("AGENTKEYS_SUBADDRESS_SEPARATOR", "_")]);
    let url = format!("http://{}", server.http);
    let out = owner_run(dir.path(), OWNER, &["inbox", "create", "--agent", AGENT, "--name", "shop_x", "--server", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("400") && err.contains("separator"), "{err}");
    let out = owner_run(dir.path(), OWNER, &["inbox", "create", "--agent", AGENT, "--name", "shop-x", "--server", &url, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // And the MX resolves with it.
    let (ok, t) = swaks(server.inbound.port(), "hello_github@agents.localhost", "tagged");
    assert!(ok, "{t}");
    assert_eq!(stored_messages(&server.blobs(), OWNER, "hello@agents.localhost").len(), 1);
    server.stop();
}
