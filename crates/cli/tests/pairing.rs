//! Pairing end to end against the real server process: the agent runs `agent
//! pair --json` in the background, the owner runs `approve CODE --digits N`, the agent
//! saves its key (0600) and, once the owner grants it an inbox, mints with it.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Server, agentkeys, run_json};
use serde_json::{Value, json};

const OWNER: &str = "0x00000000000000000000000000000000000000aa";
const PASSPHRASE: &str = "correct horse battery staple";

fn owner_cmd(data_dir: &Path, config_dir: &Path, server: &str, args: &[&str]) -> Output {
    agentkeys(data_dir)
        .env("AGENTKEYS_CONFIG_DIR", config_dir)
        .env("AGENTKEYS_PASSPHRASE", PASSPHRASE)
        .env("AGENTKEYS_SERVER", server)
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("spawn agentkeys")
}

fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn mint(base: &str, key: &str, inbox: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {key}"), "-H", "Content-Type: application/json"])
        .args(["--data-binary", &json!({ "inbox": inbox }).to_string()])
        .arg(format!("{base}/v1/credentials/read"))
        .output()
        .expect("spawn curl");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn agent_pairs_owner_approves_key_works_after_grant() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let (home_owner, home_agent) = (dir.path().join("owner"), dir.path().join("agent"));
    std::fs::create_dir(&d).unwrap();
    let code = run_json(&d, &["owner", "add", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let server = Server::start(&d, &[]);
    let base = format!("http://{}", server.http);
    ok_json(&owner_cmd(&d, &home_owner, &base, &["owner", "enroll", "--owner", OWNER, "--code", &code]));

    // The agent: one JSON line at once, then it waits.
    let mut child = agentkeys(&d)
        .env("AGENTKEYS_CONFIG_DIR", &home_agent)
        .args(["agent", "pair", "--server", &base, "--name", "ci bot", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pair_code = first["pair_code"].as_str().unwrap().to_owned();
    let digits = first["confirmation_code"].as_str().unwrap().to_owned();
    let agent_id = first["agent_id"].as_str().unwrap().to_owned();
    assert!(first["expires_at"].is_string() && digits.len() == 6 && agent_id.len() == 42, "{first}");

    // Wrong digits: refused by the server, nothing approved (a try spent).
    let wrong = if digits == "000000" { "111111" } else { "000000" };
    let refused = owner_cmd(&d, &home_owner, &base, &["approve", &pair_code, "--digits", wrong]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(err.contains("CONFIRMATION_MISMATCH"), "{err}");
    // Not 6 digits: refused before anything is sent.
    let malformed = owner_cmd(&d, &home_owner, &base, &["approve", &pair_code, "--digits", "12345"]);
    let err = String::from_utf8_lossy(&malformed.stderr).into_owned();
    assert!(!malformed.status.success() && err.contains("type the 6 digits"), "{err}");
    // The owner approves with the digits the agent shows (no prompt with
    // --digits; the passphrase still unlocks the key).
    let approved = ok_json(&owner_cmd(&d, &home_owner, &base, &["approve", &pair_code, "--digits", &digits]));
    assert_eq!((approved["agent_id"].as_str(), approved["owner"].as_str()), (Some(agent_id.as_str()), Some(OWNER)));
    // A second approval of the same code: ALREADY_CONSUMED.
    let again = owner_cmd(&d, &home_owner, &base, &["approve", &pair_code, "--digits", &digits]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(err.contains("409 ALREADY_CONSUMED"), "{err}");

    // The agent's final line, and its config file.
    let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!((last["status"].as_str(), last["agent_id"].as_str()), (Some("approved"), Some(agent_id.as_str())), "{last}");
    assert!(child.wait().unwrap().success());
    let config_path = home_agent.join("agent.json");
    assert_eq!(std::fs::metadata(&config_path).unwrap().permissions().mode() & 0o777, 0o600);
    let config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!((config["server"].as_str(), config["agent_id"].as_str()), (Some(base.as_str()), Some(agent_id.as_str())));
    let agent_key = config["agent_key"].as_str().unwrap().to_owned();
    assert!(agent_key.starts_with("ak_"));

    // The agent exists under the owner; it can mint once the owner grants it an inbox.
    let agents = run_json(&d, &["agent", "list", "--owner", OWNER]);
    assert_eq!(agents[0]["id"], agent_id.as_str());
    assert_eq!(agents[0]["name"], "ci bot");
    let inbox = run_json(&d, &["inbox", "create", "--agent", &agent_id, "--name", "ci"])["address"].as_str().unwrap().to_owned();
    assert_eq!(mint(&base, &agent_key, &inbox), 403);
    ok_json(&owner_cmd(&d, &home_owner, &base, &["grant", "create", "--agent", &agent_id, "--inbox", &inbox, "--scopes", "read"]));
    assert_eq!(mint(&base, &agent_key, &inbox), 200);

    // An interactive approve answered with nothing approves nothing; the
    // owner's screen never shows the digits (they come from the agent's).
    let mut child = agentkeys(&d)
        .env("AGENTKEYS_CONFIG_DIR", dir.path().join("agent2"))
        .args(["agent", "pair", "--server", &base, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let declined = owner_cmd(&d, &home_owner, &base, &["approve", first["pair_code"].as_str().unwrap()]);
    assert!(!declined.status.success());
    let err = String::from_utf8_lossy(&declined.stderr).into_owned();
    assert!(err.contains("not approved") && err.contains("type the 6 digits"), "{err}");
    assert!(!err.contains(first["confirmation_code"].as_str().unwrap()), "{err}");
    // Typed at the prompt, they approve.
    let mut typed = agentkeys(&d)
        .env("AGENTKEYS_CONFIG_DIR", &home_owner)
        .env("AGENTKEYS_PASSPHRASE", PASSPHRASE)
        .env("AGENTKEYS_SERVER", &base)
        .args(["approve", first["pair_code"].as_str().unwrap(), "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = typed.stdin.take().unwrap();
        writeln!(stdin, "{}", first["confirmation_code"].as_str().unwrap()).unwrap();
    }
    let typed = typed.wait_with_output().unwrap();
    assert!(typed.status.success(), "{}", String::from_utf8_lossy(&typed.stderr));
    let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["status"], "approved", "{last}");
    let _ = child.kill();
    let _ = child.wait();

    let ops: Vec<String> = run_json(&d, &["audit", "list"]).as_array().unwrap().iter().map(|r| r["operation"].as_str().unwrap_or("").to_owned()).collect();
    assert!(ops.iter().any(|o| o == "pairing.approve") && ops.iter().any(|o| o == "pairing.collect"), "{ops:?}");
    assert_eq!(run_json(&d, &["audit", "verify"])["ok"], true);
    assert!(server.stop().success());
}

/// Issue 12: once the owner has spent the 5 tries of the 6 digits, the waiting
/// agent stops at once (its long-poll is woken and answers 409
/// `CONFIRMATION_LOCKED`) with a message saying what to do, instead of
/// polling until the 10 minutes end.
#[test]
fn a_locked_pairing_stops_the_agent_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let home_owner = dir.path().join("owner");
    std::fs::create_dir(&d).unwrap();
    let code = run_json(&d, &["owner", "add", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let server = Server::start(&d, &[]);
    let base = format!("http://{}", server.http);
    ok_json(&owner_cmd(&d, &home_owner, &base, &["owner", "enroll", "--owner", OWNER, "--code", &code]));

    for json_mode in [true, false] {
        let mut cmd = agentkeys(&d);
        cmd.env("AGENTKEYS_CONFIG_DIR", dir.path().join(format!("agent-{json_mode}")))
            .args(["agent", "pair", "--server", &base, "--name", "locked bot", "--owner", OWNER]);
        if json_mode {
            cmd.arg("--json");
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (pair_code, digits) = if json_mode {
            let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            (first["pair_code"].as_str().unwrap().to_owned(), first["confirmation_code"].as_str().unwrap().to_owned())
        } else {
            let mut got = (String::new(), String::new());
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some(c) = line.strip_prefix("Pair code:") {
                    got.0 = c.trim().to_owned();
                }
                if let Some(c) = line.strip_prefix("Confirmation code:") {
                    got.1 = c.trim().to_owned();
                }
                if line.starts_with("Waiting for approval") {
                    break;
                }
            }
            got
        };
        assert_eq!((pair_code.len(), digits.len()), (9, 6), "{pair_code:?} {digits:?}");
        let wrong = if digits == "000000" { "111111" } else { "000000" };
        for _ in 0..5 {
            let refused = owner_cmd(&d, &home_owner, &base, &["approve", &pair_code, "--digits", wrong]);
            assert!(String::from_utf8_lossy(&refused.stderr).contains("CONFIRMATION_MISMATCH"));
        }
        let locked_at = std::time::Instant::now();
        // The agent stops by itself, long before its request would expire.
        let status = common::wait_timeout(&mut child, std::time::Duration::from_secs(15)).unwrap_or_else(|| {
            child.kill().ok();
            panic!("the agent kept polling a locked pairing request")
        });
        let stopped_after = locked_at.elapsed();
        eprintln!("json={json_mode}: the agent stopped {stopped_after:?} after the 5th wrong try");
        assert!(!status.success());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("locked") && stderr.contains("wrong digits 5 times") && stderr.contains("agentkeys agent pair"), "{stderr}");
        if json_mode {
            let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert_eq!(last["status"], "locked", "{last}");
        }
        // Even the right digits cannot approve it now.
        let late = owner_cmd(&d, &home_owner, &base, &["approve", &pair_code, "--digits", &digits]);
        assert!(String::from_utf8_lossy(&late.stderr).contains("CONFIRMATION_LOCKED"));
    }
    assert!(server.stop().success());
}

/// Issue 12: the owner denies a pairing request outright (`agentkeys deny
/// CODE`, signed with the master key). The waiting agent stops at once (its
/// long-poll is woken and answers 403 `DENIED`) saying the owner denied it;
/// the request is dead (a later approve with the right digits is 404, like an
/// unknown code); another owner could not deny it (404); the denial is
/// audited with the gate used.
#[test]
fn a_denied_pairing_stops_the_agent_and_can_never_be_approved() {
    const OTHER: &str = "0x00000000000000000000000000000000000000bb";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let (home_owner, home_other) = (dir.path().join("owner"), dir.path().join("other"));
    std::fs::create_dir(&d).unwrap();
    let code = run_json(&d, &["owner", "add", OWNER])["enrollment_code"].as_str().unwrap().to_owned();
    let other_code = run_json(&d, &["owner", "add", OTHER])["enrollment_code"].as_str().unwrap().to_owned();
    let server = Server::start(&d, &[]);
    let base = format!("http://{}", server.http);
    ok_json(&owner_cmd(&d, &home_owner, &base, &["owner", "enroll", "--owner", OWNER, "--code", &code]));
    ok_json(&owner_cmd(&d, &home_other, &base, &["owner", "enroll", "--owner", OTHER, "--code", &other_code]));

    for json_mode in [true, false] {
        let mut cmd = agentkeys(&d);
        cmd.env("AGENTKEYS_CONFIG_DIR", dir.path().join(format!("agent-{json_mode}")))
            .args(["agent", "pair", "--server", &base, "--name", "unwanted bot", "--owner", OWNER]);
        if json_mode {
            cmd.arg("--json");
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (pair_code, digits) = if json_mode {
            let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            (first["pair_code"].as_str().unwrap().to_owned(), first["confirmation_code"].as_str().unwrap().to_owned())
        } else {
            let mut got = (String::new(), String::new());
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some(c) = line.strip_prefix("Pair code:") {
                    got.0 = c.trim().to_owned();
                }
                if let Some(c) = line.strip_prefix("Confirmation code:") {
                    got.1 = c.trim().to_owned();
                }
                if line.starts_with("Waiting for approval") {
                    break;
                }
            }
            got
        };
        assert_eq!((pair_code.len(), digits.len()), (9, 6), "{pair_code:?} {digits:?}");

        // Addressed to OWNER: the other owner cannot deny it (nor learn it exists).
        let foreign = owner_cmd(&d, &home_other, &base, &["deny", &pair_code]);
        assert!(!foreign.status.success());
        let err = String::from_utf8_lossy(&foreign.stderr).into_owned();
        assert!(err.contains("404 NOT_FOUND"), "{err}");

        let denied = ok_json(&owner_cmd(&d, &home_owner, &base, &["deny", &pair_code]));
        assert_eq!((denied["status"].as_str(), denied["owner"].as_str()), (Some("denied"), Some(OWNER)), "{denied}");
        let denied_at = std::time::Instant::now();
        // The agent stops by itself: its long-poll (25 s) was woken by the denial.
        let status = common::wait_timeout(&mut child, std::time::Duration::from_secs(15)).unwrap_or_else(|| {
            child.kill().ok();
            panic!("the agent kept waiting on a denied pairing request")
        });
        eprintln!("json={json_mode}: the agent stopped {:?} after the denial", denied_at.elapsed());
        assert!(!status.success());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("the owner denied this pairing"), "{stderr}");
        if json_mode {
            let last: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            assert_eq!(last["status"], "denied", "{last}");
            assert!(last["detail"].as_str().unwrap().contains("403 DENIED"), "{last}");
        }
        // Dead: the right digits cannot approve it, nor can it be denied again.
        for args in [vec!["approve", pair_code.as_str(), "--digits", digits.as_str()], vec!["deny", pair_code.as_str()]] {
            let late = owner_cmd(&d, &home_owner, &base, &args);
            assert!(!late.status.success());
            let err = String::from_utf8_lossy(&late.stderr).into_owned();
            assert!(err.contains("404 NOT_FOUND"), "{args:?}: {err}");
        }
        assert!(!dir.path().join(format!("agent-{json_mode}")).join("agent.json").exists(), "no key was handed out");
    }
    // No agent was created; each denial is audited with its gate.
    assert_eq!(run_json(&d, &["agent", "list", "--owner", OWNER]).as_array().unwrap().len(), 0);
    let records = run_json(&d, &["audit", "list"]);
    let denials: Vec<&Value> = records.as_array().unwrap().iter().filter(|r| r["operation"] == "pairing.deny").collect();
    assert_eq!(denials.len(), 2, "{records}");
    for r in &denials {
        assert_eq!((r["actor"].as_str(), r["outcome"].as_str()), (Some(format!("owner:{OWNER}").as_str()), Some("ok")), "{r}");
        assert_eq!(r["detail"]["approval"]["gate"], "master_key", "{r}");
        assert_eq!(r["detail"]["name"], "unwanted bot", "{r}");
    }
    assert_eq!(run_json(&d, &["audit", "verify"])["ok"], true);
    assert!(server.stop().success());
}
