//! The owner's web console (issue 12) in a real headless Chromium (Debian's
//! `chromium`, driven by Playwright with a virtual WebAuthn authenticator, user
//! verification on) against the real server: register a passkey with the link
//! `agentkeys owner passkey add` prints, sign in, approve a pairing by typing the
//! 6 digits while a real `agentkeys agent pair` waits (wrong digits refused),
//! deny another pairing outright (that agent stops at once), read, approve
//! and reject messages held for review (hostile HTML rendered inert),
//! revoke a key and a grant (each asking the authenticator again), create an
//! inbox and disable it (the MX then refuses it), read a hostile HTML message,
//! see what the agent sent (a bounce from a real receiving MTA), the keys' last
//! use, the audit with its time filter; a second owner sees none of it, and
//! every route tried with the first owner's ids answers like a missing object. The checks are in
//! `tests/resources/console_browser.py`; screenshots of every page, and the
//! axe-core results, are kept under `target/tmp/console-browser/`.
//!
//! Needs `chromium`, the `playwright` Python module and axe-core
//! (`AGENTKEYS_AXE`, the path of `axe.min.js`): `scripts/test.sh` installs them.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, agentkeys, curl, enroll_owner, owner_json, owner_run, resource, run_json, send_raw, stored_messages};
use serde_json::{Value, json};

const OWNER: &str = "0x00000000000000000000000000000000000000c1";
const OWNER2: &str = "0x00000000000000000000000000000000000000c2";

/// HTML mail with everything that must not run or load in the console.
const HOSTILE: &str = concat!(
    "From: Mallory <mallory@evil.example>\r\n",
    "To: ci@agents.localhost\r\n",
    "Subject: Your invoice\r\n",
    "Date: Mon, 7 Dec 2026 06:00:00 +0000\r\n",
    "Message-ID: <hostile-1@evil.example>\r\n",
    "MIME-Version: 1.0\r\n",
    "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
    "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n",
    "<p onclick=\"window.__pwned=1\">Pay <b>now</b></p><script>window.__pwned=1</script>",
    "<img src=\"http://127.0.0.1:9/pixel.gif\"><form action=\"http://127.0.0.1:9/\"><input name=pw></form>",
    "<a href=\"javascript:window.__pwned=1\">open</a><iframe src=\"http://127.0.0.1:9/\"></iframe>",
    "<div style=\"background:url(http://127.0.0.1:9/bg)\">styled</div>\r\n",
    "--b\r\nContent-Type: application/pdf; name=invoice.pdf\r\n",
    "Content-Disposition: attachment; filename=invoice.pdf\r\n\r\nPDFDATA\r\n",
    "--b--\r\n"
);

/// A real receiving MTA (aiosmtpd, `smtp_sink.py --reject`) as the smarthost:
/// every recipient answers `550 5.1.1`, so the agent's mail bounces.
struct Sink(std::process::Child, u16);

impl Sink {
    fn start(dir: &std::path::Path) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new("python3")
            .arg(resource("smtp_sink.py"))
            .arg(dir)
            .arg("--reject")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 smtp_sink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap();
        Sink(child, port)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-browser");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn owner_console_in_a_real_browser() {
    let axe = std::env::var("AGENTKEYS_AXE").unwrap_or_else(|_| "/opt/agentkeys-test-node/node_modules/axe-core/axe.min.js".to_owned());
    assert!(std::path::Path::new(&axe).exists(), "axe-core not found at {axe}: run scripts/test.sh (it installs it) or set AGENTKEYS_AXE");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::create_dir(&d).unwrap();
    enroll_owner(&d, OWNER);

    // Passkeys need a host name: the server's public URL is http://localhost:PORT.
    let port = free_port();
    let base = format!("http://localhost:{port}");
    let listen = format!("127.0.0.1:{port}");
    let sink = Sink::start(&dir.path().join("sink"));
    let smarthost = format!("127.0.0.1:{}", sink.1);
    let server = Server::start(
        &d,
        &[
            ("AGENTKEYS_LISTEN_HTTP", &listen),
            ("AGENTKEYS_PUBLIC_URL", &base),
            ("AGENTKEYS_DELIVERY_ENABLED", "true"),
            ("AGENTKEYS_SMARTHOST", &smarthost),
            ("AGENTKEYS_DELIVERY_BACKOFF_SCALE", "0.001"),
        ],
    );

    let link = owner_json(&d, OWNER, &["owner", "passkey", "add", "--server", &base]);
    let link = link["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("{base}/console/passkey/new#t=")), "{link}");

    // The agent asks to be paired and waits.
    let mut agent_pair = agentkeys(&d)
        .env("AGENTKEYS_CONFIG_DIR", dir.path().join("agent"))
        .args(["agent", "pair", "--server", &base, "--name", "ci bot", "--owner", OWNER, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent_lines = BufReader::new(agent_pair.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&agent_lines.next().unwrap().unwrap()).unwrap();
    let (pair_code, digits, agent) = (
        first["pair_code"].as_str().unwrap().to_owned(),
        first["confirmation_code"].as_str().unwrap().to_owned(),
        first["agent_id"].as_str().unwrap().to_owned(),
    );

    // Addressed to OWNER: another owner, even with the pair code and the master
    // key, finds nothing (the same 404 as an unknown code).
    enroll_owner(&d, OWNER2);
    let foreign = owner_run(&d, OWNER2, &["approve", &pair_code, "--digits", &digits, "--server", &base]);
    let err = String::from_utf8_lossy(&foreign.stderr).into_owned();
    assert!(!foreign.status.success() && err.contains("404 NOT_FOUND"), "{err}");

    let shots = artifacts();
    let mut browser = Command::new("python3")
        .arg(resource("console_browser.py"))
        .args(["--base", &base, "--link", &link, "--owner", OWNER, "--pair-code", &pair_code, "--digits", &digits])
        .arg("--artifacts")
        .arg(&shots)
        .args(["--axe", &axe])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3 (Playwright)");
    let mut browser_in = browser.stdin.take().unwrap();
    let mut browser_lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut step = || -> Value {
        let line = browser_lines.next().and_then(Result::ok).unwrap_or_else(|| panic!("the browser script stopped early"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("browser script printed {line:?}: {e}"))
    };
    assert_eq!(step()["step"], "approved");

    // The waiting agent got its key.
    let last: Value = serde_json::from_str(&agent_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!((last["status"].as_str(), last["agent_id"].as_str()), (Some("approved"), Some(agent.as_str())), "{last}");
    assert!(agent_pair.wait().unwrap().success());
    let agents = run_json(&d, &["agent", "list", "--owner", OWNER]);
    assert_eq!(agents[0]["id"], agent.as_str());

    // What the browser looks at next: a key, an inbox with a hostile message, a
    // grant, and a second owner with a registration link of their own.
    let keys = run_json(&d, &["key", "list", "--agent", &agent]);
    let key = keys[0]["id"].as_str().unwrap().to_owned();
    let inbox = run_json(&d, &["inbox", "create", "--agent", &agent, "--name", "ci"])["address"].as_str().unwrap().to_owned();
    let grant = owner_json(&d, OWNER, &["grant", "create", "--agent", &agent, "--inbox", &inbox, "--scopes", "read"]);
    let grant = grant["id"].as_str().unwrap().to_owned();
    // Three credential reads by the agent: one line "× 3" on the audit page.
    let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("agent").join("agent.json")).unwrap()).unwrap();
    let agent_key = config["agent_key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let (status, _, _) = curl("POST", &format!("{base}/v1/credentials/read"), Some(&agent_key), Some(&json!({ "inbox": inbox }).to_string()));
        assert_eq!(status, 200);
    }
    // The agent sends to another server under a send grant; the receiving MTA
    // refuses it: a bounce for the sent view.
    owner_json(&d, OWNER, &["grant", "create", "--agent", &agent, "--inbox", &inbox, "--scopes", "send"]);
    let out = json!({ "to": ["bob@remote.example"], "subject": "hello from ci bot", "text": "hi" }).to_string();
    let (status, _, answer) = curl("POST", &format!("{base}/v1/inboxes/{inbox}/send"), Some(&agent_key), Some(&out));
    assert_eq!(status, 202, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queue = run_json(&d, &["queue", "list"]);
        if queue.as_array().unwrap().iter().any(|q| q["recipient"] == "bob@remote.example" && q["state"] == "bounced") {
            break;
        }
        assert!(Instant::now() < deadline, "the message did not bounce: {queue}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(send_raw(server.inbound, "mallory@evil.example", &inbox, HOSTILE).unwrap(), 250);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_messages(&server.blobs(), OWNER, &inbox).is_empty() {
        assert!(Instant::now() < deadline, "the message was not stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent asks its owner for three grants (`mail grant-request`): the
    // browser approves one, denies one, and the second owner tries the third.
    let requests: Vec<String> = ["read", "send", "read"]
        .iter()
        .enumerate()
        .map(|(i, scopes)| {
            let out = agentkeys(&d)
                .env("AGENTKEYS_CONFIG_DIR", dir.path().join("agent"))
                .args(["mail", "grant-request", "--inbox", &inbox, "--scopes", scopes, "--ttl", "2d"])
                .args(["--reason", &format!("request {i}: sign up at example.com"), "--json"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let asked: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(asked["status"], "pending", "{asked}");
            asked["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // Two more agents ask OWNER to pair them: the browser denies the first
    // (it must stop at once), the second owner tries to deny the second.
    let mut unwanted: Vec<(std::process::Child, std::io::Lines<BufReader<std::process::ChildStdout>>, String)> = (0..2)
        .map(|i| {
            let mut child = agentkeys(&d)
                .env("AGENTKEYS_CONFIG_DIR", dir.path().join(format!("unwanted-{i}")))
                .args(["agent", "pair", "--server", &base, "--name", &format!("unwanted bot {i}"), "--owner", OWNER, "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            let id = first["agent_id"].as_str().unwrap().to_owned();
            (child, lines, id)
        })
        .collect();
    // Every message the agent sends now waits for its owner's review: three
    // held ones (one with hostile HTML) for the console's review page.
    owner_json(&d, OWNER, &["agent", "limits", &agent, "--review", "all"]);
    let held: Vec<String> = [("held: please approve", "carol@remote.example"), ("held: please reject", "dave@remote.example"), ("held: left alone", "erin@remote.example")]
        .iter()
        .map(|(subject, to)| {
            let html = "<p onclick=\"window.__pwned=1\">Hi <b>carol</b></p><script>window.__pwned=1</script><img src=\"http://127.0.0.1:9/held.gif\">";
            let body = json!({ "to": [to], "subject": subject, "text": "see the HTML part", "html": html }).to_string();
            let (status, _, answer) = curl("POST", &format!("{base}/v1/inboxes/{inbox}/send"), Some(&agent_key), Some(&body));
            assert_eq!(status, 202, "{answer}");
            assert_eq!(answer["status"], "held", "{answer}");
            answer["message_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let link2 = owner_json(&d, OWNER2, &["owner", "passkey", "add", "--server", &base]);
    let setup = json!({
        "grant": grant, "key": key, "agent": agent, "inbox": inbox,
        "owner2": OWNER2, "link2": link2["url"], "mx": server.inbound.port(),
        "sent_to": "bob@remote.example", "requests": requests,
        "unwanted": [unwanted[0].2, unwanted[1].2],
        "held": held,
    });
    writeln!(browser_in, "{setup}").unwrap();
    browser_in.flush().unwrap();
    let done = step();
    assert_eq!(done["step"], "done", "{done}");
    // The denied agent stopped by itself with the owner's answer; the other
    // still waits (the second owner could not deny it).
    let (mut denied_agent, mut denied_lines, _) = unwanted.remove(0);
    let last: Value = serde_json::from_str(&denied_lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["status"], "denied", "{last}");
    assert!(!denied_agent.wait().unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut denied_agent.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("the owner denied this pairing"), "{stderr}");
    let (mut waiting, _, _) = unwanted.remove(0);
    assert!(waiting.try_wait().unwrap().is_none(), "the request the second owner tried to deny still waits");
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    assert!(browser.wait().unwrap().success(), "the browser script failed");
    let taken = done["screenshots"].as_array().unwrap();
    assert!(taken.len() >= 15, "screenshots of every page: {taken:?}");
    for shot in taken {
        assert!(std::fs::metadata(shot.as_str().unwrap()).unwrap().len() > 1000, "{shot}");
    }

    // The console's actions are in the audit chain with the gate they passed.
    let records = run_json(&d, &["audit", "list"]);
    let gate_of = |op: &str| -> Vec<String> {
        records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["operation"] == op && r["outcome"] == "ok")
            .map(|r| r["detail"]["approval"]["gate"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(gate_of("pairing.approve"), ["passkey"]);
    assert_eq!(gate_of("pairing.deny"), ["passkey"]);
    assert_eq!(gate_of("review.approve"), ["passkey"]);
    assert_eq!(gate_of("review.reject"), ["passkey"]);
    // The message the second owner tried to approve still waits.
    let waiting = owner_json(&d, OWNER, &["review", "list"]);
    let waiting: Vec<&str> = waiting["held"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(waiting, [held[2].as_str()]);
    assert_eq!(gate_of("key.revoke"), ["passkey"]);
    assert_eq!(gate_of("grant.create"), ["master_key", "master_key", "passkey", "passkey"]);
    assert_eq!(gate_of("grant.request_deny"), ["passkey"]);
    let approved: Vec<&Value> =
        records.as_array().unwrap().iter().filter(|r| r["operation"] == "grant.create" && r["detail"]["request"].is_string()).collect();
    assert_eq!(approved.len(), 1, "the approved request's grant names it");
    assert_eq!(approved[0]["detail"]["request"], requests[0].as_str());
    assert_eq!(gate_of("grant.change"), ["passkey"]);
    assert_eq!(gate_of("grant.revoke"), ["passkey"]);
    assert_eq!(gate_of("agent.stop"), ["passkey"]);
    assert_eq!(gate_of("inbox.set_status"), ["passkey"]);
    assert_eq!(gate_of("inbox.create").iter().filter(|g| *g == "passkey").count(), 1, "the console's inbox");
    // The wrong digits are on record, refused, with the reason.
    let denied: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "pairing.approve" && r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0]["detail"]["reason"].as_str().unwrap().contains("6 digits"), "{}", denied[0]);
    drop(sink);
    assert_eq!(run_json(&d, &["audit", "verify"])["ok"], true);
    assert!(server.stop().success());
}
