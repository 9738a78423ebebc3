//! Schemathesis (an independent, property-based API tester) against the real
//! server and its own `/v1/openapi.json` (issue 15, item 12): a bounded run of
//! generated requests, valid and invalid, to every operation, that must find no
//! 5xx, no status the document does not list for the operation, and no
//! response that does not match its documented schema.
//!
//! Requests carry a valid agent key (`Authorization: Bearer ak_…`) so the agent
//! routes get past authentication; owner-signed and read-capability routes answer
//! their documented 401 to it. Installed by `scripts/test.sh` (PyPI `schemathesis`).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, owner_json, provision, run_json, wait_timeout};

const OWNER: &str = "0x00000000000000000000000000000000000000d1";
const AGENT: &str = "0x00000000000000000000000000000000000000d2";

/// Generated cases per operation (and per phase).
const EXAMPLES_PER_OPERATION: &str = "200";
/// The whole run's bound: it is killed, and the test fails, past this.
const RUN_LIMIT: Duration = Duration::from_secs(8 * 60);

/// The runs take turns (each uses two workers of a small machine).
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn generated_requests_find_no_server_error_and_no_undocumented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, _, key) = provision(dir.path(), OWNER, AGENT, "fuzzed");
    run_against(dir.path(), &key, &[]);
}

/// The inbox of the document's own examples (`ReadCredentialRequest.inbox`).
const EXAMPLE_INBOX: &str = "bot-1@agents.example.com";

/// The same with blobs on S3 (`s3s-fs`). The agent also holds a grant on the
/// inbox of the document's example, so the example's mint succeeds and its
/// answer, with the presigned `list_url`, is checked against the schema too.
#[test]
fn the_same_with_blobs_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, _, key) = provision(d, OWNER, AGENT, "fuzzed");
    let (local, domain) = EXAMPLE_INBOX.split_once('@').unwrap();
    run_json(d, &["domain", "add", domain]);
    run_json(d, &["inbox", "create", "--agent", AGENT, "--name", local, "--domain", domain]);
    owner_json(d, OWNER, &["grant", "create", "--agent", AGENT, "--inbox", EXAMPLE_INBOX, "--scopes", "read"]);
    let s3 = common::S3sFs::start("mail", 19420..=19439);
    let env = s3.serve_env("fuzz");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_against(d, &key, &env);
    let minted = run_json(d, &["audit", "list", "--agent", AGENT, "--limit", "100000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "credential.read" && r["subject"] == EXAMPLE_INBOX)
        .count();
    assert!(minted > 0, "the run minted no read capability (with list_url) for {EXAMPLE_INBOX}");
}

/// A server on `dir` with `env`, and a bounded run with agent key `key`.
fn run_against(dir: &std::path::Path, key: &str, env: &[(&str, &str)]) {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let available = Command::new("schemathesis").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(available, "schemathesis is not installed (scripts/test.sh installs it: pip install 'schemathesis>=4,<5')");
    let server = Server::start(dir, env);
    let report = dir.join("schemathesis-report");
    let started = Instant::now();
    let mut run = Command::new("schemathesis")
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", server.http))
        .args(["--checks", "not_a_server_error,status_code_conformance,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", EXAMPLES_PER_OPERATION])
        .args(["--seed", "15"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "40"])
        .args(["--no-color", "--output-truncate", "false", "--suppress-health-check", "all"])
        .arg("--report-dir")
        .arg(&report)
        .arg("-H")
        .arg(format!("Authorization: Bearer {key}"))
        .current_dir(dir)
        .env("SCHEMATHESIS_HOOKS", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn schemathesis");
    let mut stdout = run.stdout.take().unwrap();
    let mut stderr = run.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).ok();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).ok();
        text
    });
    let status = wait_timeout(&mut run, RUN_LIMIT);
    if status.is_none() {
        run.kill().ok();
        run.wait().ok();
    }
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    eprintln!("schemathesis ran {:.0} s", started.elapsed().as_secs_f64());
    let status = status.unwrap_or_else(|| panic!("schemathesis ran past {RUN_LIMIT:?}:\n{out}\n{err}"));
    assert!(status.success(), "schemathesis found problems:\n{out}\n{err}");
    // It really tested every operation and generated cases (a run that tested
    // nothing also exits 0): "Selected: 21/21", "Tested: 21", "N generated, N passed".
    let field = |label: &str| out.lines().find_map(|l| l.trim().strip_prefix(label)).map(str::trim).unwrap_or("");
    let (selected, total) = field("Selected:").split_once('/').unwrap_or_else(|| panic!("no operation count:\n{out}"));
    assert_eq!((selected, field("Tested:")), (total, total), "not every operation was tested:\n{out}");
    assert!(total.parse::<u32>().unwrap() >= 20, "{out}");
    let cases = out.lines().find(|l| l.contains(" generated, ")).unwrap_or_else(|| panic!("no case count:\n{out}"));
    let generated: u32 = cases.split_whitespace().next().unwrap().parse().unwrap();
    assert!(generated >= 2_000, "{cases}");
    assert!(server.stop().success());
}
