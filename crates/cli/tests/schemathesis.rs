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

use common::{Server, provision, wait_timeout};

const OWNER: &str = "0x00000000000000000000000000000000000000d1";
const AGENT: &str = "0x00000000000000000000000000000000000000d2";

/// Generated cases per operation (and per phase).
const EXAMPLES_PER_OPERATION: &str = "200";
/// The whole run's bound: it is killed, and the test fails, past this.
const RUN_LIMIT: Duration = Duration::from_secs(8 * 60);

#[test]
fn generated_requests_find_no_server_error_and_no_undocumented_answer() {
    let available = Command::new("schemathesis").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(available, "schemathesis is not installed (scripts/test.sh installs it: pip install 'schemathesis>=4,<5')");
    let dir = tempfile::tempdir().unwrap();
    let (_, _, _, key) = provision(dir.path(), OWNER, AGENT, "fuzzed");
    let server = Server::start(dir.path(), &[]);
    let report = dir.path().join("schemathesis-report");
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
        .current_dir(dir.path())
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
