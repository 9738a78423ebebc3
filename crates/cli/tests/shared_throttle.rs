//! Two `agentkeys serve` nodes on one fresh PostgreSQL database (issue 10 §2:
//! what is shared is really shared): SMTP AUTH failures spread over both nodes
//! get the address refused at the configured limit in total, not per node;
//! refused agent keys spread over both spend one HTTP budget; a pairing opened
//! on node A and approved through node B is collected by the long-poll that
//! was already waiting on node A.
//!
//! Each test creates its own database (`AGENTKEYS_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; dropped at the end) and runs
//! its nodes on fixed loopback ports of its own in 19500–19599, HTTPS off. The
//! second node's data directory gets the first node's `master.seed`, as an
//! operator would copy it (the server refuses another seed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentkeys_store::postgres::TempDatabase;
use common::{Server, curl, enroll_owner, metric, owner_run, provision, use_database};
use serde_json::{Value, json};

const OWNER: &str = "0x00000000000000000000000000000000000000b1";
const AGENT: &str = "0x00000000000000000000000000000000000000b2";
/// The AUTH failure limit both nodes are configured with.
const AUTH_LIMIT: u32 = 4;
/// Longest a bounded wait for the server's state may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Two nodes on one database, and the database (dropped last).
struct Cluster {
    a: Server,
    b: Server,
    _dir: tempfile::TempDir,
    dir_a: PathBuf,
    _db: TempDatabase,
}

/// A fresh database, the first node's data directory provisioned through it
/// (owner, agent, `bot@` inbox, key, read+send grant: returns the address and
/// key), the seed copied to the second's, both nodes started with `env` on the
/// ports `first_port..first_port + 4` and `first_port + 10..first_port + 14`.
fn cluster(first_port: u16, env: &[(&str, &str)]) -> (Cluster, String, String) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = runtime.block_on(TempDatabase::create()).expect("a PostgreSQL for tests (AGENTKEYS_TEST_DATABASE_URL)");
    drop(runtime);
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("node-a"), dir.path().join("node-b"));
    for d in [&dir_a, &dir_b] {
        use_database(d, db.url());
    }
    let (_, _, address, key) = provision(&dir_a, OWNER, AGENT, "bot");
    copy_seed(&dir_a, &dir_b);
    let start = |dir: &Path, port: u16| {
        let listen: Vec<(&str, String)> = [
            "AGENTKEYS_LISTEN_INBOUND",
            "AGENTKEYS_LISTEN_SUBMISSION",
            "AGENTKEYS_LISTEN_SUBMISSION_TLS",
            "AGENTKEYS_LISTEN_HTTP",
        ]
        .into_iter()
        .zip(port..)
        .map(|(k, p)| (k, format!("127.0.0.1:{p}")))
        .collect();
        let mut all: Vec<(&str, &str)> = listen.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(env);
        Server::start(dir, &all)
    };
    let a = start(&dir_a, first_port);
    let b = start(&dir_b, first_port + 10);
    (Cluster { a, b, _dir: dir, dir_a, _db: db }, address, key)
}

/// The second node gets the first node's master seed (mode 0600).
fn copy_seed(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let seed = to.join("master.seed");
    std::fs::copy(from.join("master.seed"), &seed).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// swaks over STARTTLS, AUTH PLAIN, quitting after AUTH: the reply to AUTH.
fn smtp_auth(server: &Server, user: &str, pass: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &server.submission.port().to_string(), "--tls", "--auth", "PLAIN"])
        .args(["--auth-user", user, "--auth-password", pass, "--timeout", "30", "--quit-after", "AUTH"])
        .args(["--ehlo", "swaks.example.net"])
        .output()
        .expect("swaks is installed (.ci/run installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    transcript
        .lines()
        .map(|l| l.trim_start_matches("<~*").trim_start_matches("<~").trim())
        .find(|l| l.starts_with("235") || l.starts_with("535") || l.starts_with("454"))
        .unwrap_or_else(|| panic!("no AUTH reply in transcript:\n{transcript}"))
        .to_owned()
}

/// A key of the same shape that is not `key` (its last character changed).
fn another_key(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

fn base(server: &Server) -> String {
    format!("http://{}", server.http)
}

/// A read-token mint with `key` for `inbox`: (status, problem code).
fn mint(server: &Server, key: &str, inbox: &str) -> (u16, String) {
    let body = json!({ "inbox": inbox }).to_string();
    let (status, _, answer) = curl("POST", &format!("{}/v1/credentials/read", base(server)), Some(key), Some(&body));
    (status, answer["code"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn smtp_auth_failures_spread_over_two_nodes_refuse_the_address_at_the_limit_in_total() {
    let limit = AUTH_LIMIT.to_string();
    let env = [("AGENTKEYS_AUTH_FAILURES_PER_IP", limit.as_str()), ("AGENTKEYS_AUTH_FAILURE_WINDOW", "10m")];
    let (nodes, address, key) = cluster(19500, &env);
    let wrong = another_key(&key);
    let node = |i: u32| if i.is_multiple_of(2) { &nodes.a } else { &nodes.b };
    for n in [&nodes.a, &nodes.b] {
        assert!(smtp_auth(n, &address, &key).starts_with("235 2.7.0"), "the key works on both nodes");
    }
    // One short of the limit, alternating nodes: each node saw fewer still, and
    // the right key still works on both.
    for i in 0..AUTH_LIMIT - 1 {
        let reply = smtp_auth(node(i), &address, &wrong);
        assert!(reply.starts_with("535 5.7.8"), "failure {i}: {reply}");
    }
    for n in [&nodes.a, &nodes.b] {
        assert!(smtp_auth(n, &address, &key).starts_with("235 2.7.0"), "below the limit nothing is refused");
    }
    // The limit-th failure, on whichever node: now both refuse the address,
    // the right key included, though neither saw more than half the failures.
    let reply = smtp_auth(node(AUTH_LIMIT - 1), &address, &wrong);
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    for (name, n) in [("A", &nodes.a), ("B", &nodes.b)] {
        let reply = smtp_auth(n, &address, &key);
        assert!(reply.starts_with("454 4.7.0"), "node {name} must refuse the address with 454 at the limit in total: {reply}");
    }
}

#[test]
fn refused_agent_keys_spread_over_two_nodes_spend_one_http_budget() {
    use agentkeys_api::throttle::AUTH_FAILURES_PER_IP;
    let (nodes, address, key) = cluster(19520, &[]);
    let node = |i: u32| if i.is_multiple_of(2) { &nodes.a } else { &nodes.b };
    let unknown = another_key(&key);
    for i in 0..AUTH_FAILURES_PER_IP {
        assert_eq!(mint(node(i), &unknown, &address), (401, "INVALID_KEY".to_owned()), "refusal {i} is answered as is");
        if i == AUTH_FAILURES_PER_IP - 2 {
            for n in [&nodes.a, &nodes.b] {
                assert_eq!(mint(n, &key, &address).0, 200, "within the budget the right key works on both nodes");
            }
        }
    }
    // The refusal past the budget, counted over both nodes, is 429; from then
    // on both nodes answer 429 before looking at the key.
    assert_eq!(mint(node(AUTH_FAILURES_PER_IP), &unknown, &address), (429, "RATE_LIMITED".to_owned()));
    for (name, n) in [("A", &nodes.a), ("B", &nodes.b)] {
        assert_eq!(mint(n, &key, &address), (429, "RATE_LIMITED".to_owned()), "node {name}: the address is throttled");
    }
    let (_, head, _) = curl("POST", &format!("{}/v1/credentials/read", base(&nodes.b)), Some(&key), Some("{}"));
    assert!(head.contains("retry-after: "), "{head}");
}

#[test]
fn a_pairing_opened_on_one_node_and_approved_through_another_is_collected_by_the_waiting_long_poll() {
    use agentkeys_approval::{DeviceKey, PairCode};
    let (nodes, address, _) = cluster(19540, &[]);
    enroll_owner(&nodes.dir_a, OWNER);
    let device = DeviceKey::generate(&mut rand::rngs::OsRng);
    let open = json!({ "device_public_key": device.public_key().to_base64(), "name": "two-node bot" }).to_string();
    let (status, _, opened) = curl("POST", &format!("{}/v1/pairings", base(&nodes.a)), None, Some(&open));
    assert_eq!(status, 201, "{opened}");
    let code: PairCode = opened["pair_code"].as_str().unwrap().parse().unwrap();

    // The agent's long-poll on node A.
    let signature =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, device.sign_collect(&code).to_bytes());
    let collect_url = format!("{}/v1/pairings/{code}/collect", base(&nodes.a));
    let collect_body = json!({ "signature": signature }).to_string();
    let collecting = std::thread::spawn(move || {
        let sent = Instant::now();
        let answer = curl("POST", &collect_url, None, Some(&collect_body));
        (answer, sent.elapsed())
    });
    let deadline = Instant::now() + PATIENCE;
    while metric(&nodes.a, "agentkeys_pairing_collects_waiting") < 1.0 {
        assert!(Instant::now() < deadline, "the collect never waited on node A");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The owner approves through node B.
    let digits = opened["confirmation_code"].as_str().unwrap();
    let approved = owner_run(&nodes.dir_a, OWNER, &["approve", code.as_str(), "--digits", digits, "--server", &base(&nodes.b), "--json"]);
    assert!(approved.status.success(), "approve via node B: {}", String::from_utf8_lossy(&approved.stderr));

    // The waiting long-poll answers with the key. Had node A not heard of the
    // approval, it would have answered only when its wait ran out (COLLECT_WAIT
    // after the request): an answer before that is the wake-up.
    let ((status, _, answer), elapsed) = collecting.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["agent_id"], Value::from(device.agent_id().to_string()));
    let agent_key = answer["agent_key"].as_str().unwrap().to_owned();
    assert!(elapsed < agentkeys_api::pairing::COLLECT_WAIT, "answered by the approval, not the end of the wait: {elapsed:?}");
    // The key is known to node B too (a valid key without a grant: 403, not 401).
    assert_eq!(mint(&nodes.b, &agent_key, &address), (403, "NO_GRANT".to_owned()));
}

#[test]
fn pairing_opens_spread_over_two_nodes_spend_one_budget() {
    use agentkeys_api::throttle::PAIRINGS_PER_IP;
    use agentkeys_approval::DeviceKey;
    let (nodes, _, _) = cluster(19560, &[]);
    enroll_owner(&nodes.dir_a, OWNER);
    let open = |n: &Server| {
        let device = DeviceKey::generate(&mut rand::rngs::OsRng);
        let body = json!({ "device_public_key": device.public_key().to_base64(), "name": "bot" }).to_string();
        let (status, head, answer) = curl("POST", &format!("{}/v1/pairings", base(n)), None, Some(&body));
        (status, head, answer)
    };
    // Alternating nodes: each saw half the opens, the address the whole budget.
    for i in 0..PAIRINGS_PER_IP {
        let n = if i.is_multiple_of(2) { &nodes.a } else { &nodes.b };
        let (status, _, answer) = open(n);
        assert_eq!(status, 201, "open {i}: {answer}");
    }
    for (name, n) in [("A", &nodes.a), ("B", &nodes.b)] {
        let (status, head, answer) = open(n);
        assert_eq!((status, answer["code"].as_str()), (429, Some("RATE_LIMITED")), "node {name}: {answer}");
        assert!(head.contains("retry-after: "), "{head}");
    }
}
