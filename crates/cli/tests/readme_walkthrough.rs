//! The README's walk-through runs top to bottom as written (issue 11 §4): every
//! command of the `sh` blocks from "Walk-through: an inbox, mail in, mail out"
//! to "The agent's side" is read out of README.md and run, in order, against a
//! real `agentkeys serve`, on three "machines" (directories with their own HOME):
//! the operator's (next to the server's `./agentkeys-data`), the owner's (after
//! `export AGENTKEYS_SERVER=https://…`) and the agent's (`agent pair`). Only the
//! README's placeholders are filled in (`enr_…`, `3F:9A:…:C2`, `ak_…`, `gr_…`,
//! `key_…`, the pair code, the fixed ports and paths), each with what an earlier
//! command printed. A command the README shows that fails, fails this test; so
//! does an order that cannot work (the original revoked the grant before the
//! `swaks` AUTH step). After the walk-through, the README's claims about it are
//! checked: the AUTH step now answers `535`, and the owner's `audit list` names
//! the reason the SMTP reply does not.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Server;

const BIN: &str = env!("CARGO_BIN_EXE_agentkeys");
const PASSPHRASE: &str = "correct horse battery staple";
const FIRST: &str = "## Walk-through: an inbox, mail in, mail out";
const LAST: &str = "### The agent's side";

/// The walk-through's commands, one per logical line, in blocks.
fn walkthrough_blocks() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let start = readme.find(FIRST).expect("the walk-through section");
    let end = start + readme[start..].find(LAST).expect("the agent's side section");
    let mut blocks = Vec::new();
    let mut lines = readme[start..end].lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let mut block = Vec::new();
        let mut pending = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            let code = strip_comment(line);
            if let Some(head) = code.trim_end().strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(&code);
            let command = std::mem::take(&mut pending).trim().to_owned();
            if !command.is_empty() {
                block.push(command);
            }
        }
        blocks.push(block);
    }
    blocks
}

/// `line` without a shell comment (`#` at the start or after a blank, outside quotes).
fn strip_comment(line: &str) -> String {
    let (mut out, mut quote, mut prev_blank) = (String::new(), None, true);
    for c in line.chars() {
        match (quote, c) {
            (None, '#') if prev_blank => break,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        prev_blank = c.is_whitespace();
        out.push(c);
    }
    out
}

/// Shell words of a command (single and double quotes, no expansion but `$ak`).
fn words(command: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut in_word) = (Vec::new(), String::new(), None, false);
    for c in command.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The first whitespace-separated token of `text` starting with `prefix`.
fn token(text: &str, prefix: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '(' | ')' | '"' | ';'))
        .find(|w| w.starts_with(prefix) && w.len() > prefix.len())
        .map(str::to_owned)
}

/// Where a block runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Machine {
    Operator,
    Owner,
    Agent,
}

fn machine_of(block: &[String]) -> Machine {
    let has = |s: &str| block.iter().any(|c| c.contains(s));
    if has("agent pair") {
        Machine::Agent
    } else if has("AGENTKEYS_SERVER") || has("$ak approve") || has("$ak grant ") {
        Machine::Owner
    } else {
        Machine::Operator
    }
}

struct Walk {
    root: PathBuf,
    server: Server,
    https: String,
    fingerprint: String,
    /// Placeholder → what an earlier command printed.
    filled: HashMap<&'static str, String>,
    owner_env: Vec<(String, String)>,
    pairing: Option<(Child, mpsc::Receiver<String>)>,
}

impl Walk {
    fn home(&self, machine: Machine) -> PathBuf {
        let home = self.root.join(match machine {
            Machine::Operator => "operator",
            Machine::Owner => "owner",
            Machine::Agent => "agent",
        });
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    /// A command on `machine`: its HOME and working directory, PATH, and
    /// nothing else (the owner's exported variables on theirs).
    fn command(&self, machine: Machine, program: &str) -> Command {
        let home = self.home(machine);
        let mut cmd = Command::new(program);
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("HOME", &home).current_dir(&home);
        if machine == Machine::Owner {
            cmd.env("AGENTKEYS_PASSPHRASE", PASSPHRASE);
            cmd.envs(self.owner_env.iter().map(|(k, v)| (k, v)));
        }
        cmd
    }

    /// The README's placeholders and fixed addresses, filled in.
    fn fill(&self, word: &str) -> String {
        let mut w = word
            .replace("./target/release/agentkeys", BIN)
            .replace("$ak", BIN)
            .replace("https://127.0.0.1:8443", &self.https)
            .replace("127.0.0.1:2525", &self.server.inbound.to_string())
            .replace("127.0.0.1:2587", &self.server.submission.to_string())
            .replace("3F:9A:…:C2", &self.fingerprint)
            .replace("/tmp/demo", self.root.join("demo").to_str().unwrap())
            .replace("/mnt/elsewhere", self.root.join("elsewhere").to_str().unwrap());
        for (placeholder, value) in &self.filled {
            w = w.replace(placeholder, value);
        }
        assert!(!w.contains('…'), "README placeholder {word:?} has no value yet: the walk-through uses it before a command prints it");
        w
    }

    fn run_block(&mut self, block: &[String]) {
        let machine = machine_of(block);
        for command in block {
            let words = words(command);
            if let Some(rest) = command.strip_prefix("export ") {
                let (k, v) = rest.split_once('=').unwrap();
                self.owner_env.push((k.to_owned(), self.fill(v)));
                continue;
            }
            if words[0].starts_with("ak=") {
                continue;
            }
            let filled: Vec<String> = words.iter().map(|w| self.fill(w)).collect();
            if filled[0] == "ls" {
                let dir = self.home(machine).join(&filled[1]);
                let stored = std::fs::read_dir(&dir).map(Iterator::count).unwrap_or(0);
                assert_eq!(stored, 1, "`{command}`: one message stored in {}", dir.display());
                continue;
            }
            if filled.get(1).map(String::as_str) == Some("agent") && filled.get(2).map(String::as_str) == Some("pair") {
                self.start_pairing(machine, &filled);
                continue;
            }
            let out = self.run(machine, command, &filled);
            self.remember(&filled, &out);
        }
    }

    fn run(&mut self, machine: Machine, command: &str, filled: &[String]) -> Output {
        let mut cmd = self.command(machine, &filled[0]);
        cmd.args(&filled[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("`{command}`: {e}"));
        // `approve` asks for the 6 digits; the walk-through's owner types the ones the agent printed.
        let answer = if filled.get(1).map(String::as_str) == Some("approve") {
            format!("{}\n", self.filled.get("123456").expect("agent pair printed the confirmation code"))
        } else {
            String::new()
        };
        child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "README walk-through command `{command}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if filled.get(1).map(String::as_str) == Some("approve") {
            self.finish_pairing();
        }
        out
    }

    /// Keeps what later commands of the README refer to by placeholder.
    fn remember(&mut self, filled: &[String], out: &Output) {
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let verb: Vec<&str> = filled.iter().skip(1).take(2).map(String::as_str).collect();
        match verb.as_slice() {
            ["owner", "add"] => {
                self.filled.insert("enr_…", token(&text, "enr_").expect("owner add prints the enrollment code"));
            }
            ["key", "create"] => {
                self.filled.insert("ak_…", token(&text, "ak_").expect("key create prints the key"));
                self.filled.insert("key_…", token(&text, "key_").expect("key create prints the key id"));
            }
            ["grant", "create"] => {
                self.filled.insert("gr_…", token(&text, "gr_").expect("grant create prints the grant id"));
            }
            _ => {}
        }
    }

    /// `agent pair` waits for the owner: run it in the background and keep
    /// its pair code for the owner's `approve`.
    fn start_pairing(&mut self, machine: Machine, filled: &[String]) {
        let mut child = self
            .command(machine, &filled[0])
            .args(&filled[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut code, mut digits) = (None, None);
        while code.is_none() || digits.is_none() {
            let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("agent pair printed no pair code");
            if let Some(c) = line.trim().strip_prefix("Pair code:") {
                code = Some(c.trim().to_owned());
            }
            if let Some(d) = line.trim().strip_prefix("Confirmation code:") {
                digits = Some(d.trim().to_owned());
            }
        }
        self.filled.insert("ABCD-EFGH", code.unwrap_or_default());
        self.filled.insert("123456", digits.unwrap_or_default());
        self.pairing = Some((child, rx));
    }

    fn finish_pairing(&mut self) {
        let (mut child, rx) = self.pairing.take().expect("approve before agent pair");
        let status = common::wait_timeout(&mut child, Duration::from_secs(60)).expect("agent pair did not end after approval");
        let said: Vec<String> = rx.try_iter().collect();
        assert!(status.success(), "agent pair failed after approval: {said:?}");
        let config = self.home(Machine::Agent).join(".config/agentkeys/agent.json");
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(config["server_fingerprint"], self.fingerprint.as_str(), "{config}");
    }
}

/// The HTTPS address and the certificate fingerprint `serve` printed.
fn https_and_fingerprint(server: &Server) -> (String, String) {
    let (mut https, mut fingerprint) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while https.is_none() || fingerprint.is_none() {
        let line = server
            .stdout_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("serve printed no HTTPS listener and fingerprint");
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("HTTPS ") {
            https = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("TLS fingerprint") {
            fingerprint = rest.trim().strip_prefix("SHA-256 ").map(str::to_owned);
        }
    }
    (format!("https://{}", https.unwrap()), fingerprint.unwrap())
}

#[test]
fn the_readme_walkthrough_runs_top_to_bottom() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // The server runs next to the operator, on its default data directory.
    let data = root.join("operator/agentkeys-data");
    std::fs::create_dir_all(&data).unwrap();
    // Where `audit checkpoint --export /mnt/elsewhere/…` writes.
    std::fs::create_dir_all(root.join("elsewhere")).unwrap();
    let server = Server::start(&data, &[("AGENTKEYS_LISTEN_HTTPS", "127.0.0.1:0")]);
    let (https, fingerprint) = https_and_fingerprint(&server);
    let mut walk = Walk { root, server, https, fingerprint, filled: HashMap::new(), owner_env: Vec::new(), pairing: None };

    let blocks = walkthrough_blocks();
    let all: Vec<&String> = blocks.iter().flatten().collect();
    // What the walk-through must contain for this test to mean anything.
    for needle in ["owner add", "owner enroll", "grant create", "agent pair", "approve", "swaks --server 127.0.0.1:2525", "--auth PLAIN", "grant revoke", "key revoke"] {
        assert!(all.iter().any(|c| c.contains(needle)), "the walk-through has no `{needle}` command any more");
    }
    let auth_step = all.iter().find(|c| c.contains("--auth PLAIN")).map(|c| (*c).clone()).unwrap();
    for block in &blocks {
        walk.run_block(block);
    }
    assert!(walk.pairing.is_none(), "agent pair was never approved");

    // The README: after the revocations the AUTH step answers 535…
    let filled: Vec<String> = words(&auth_step).iter().map(|w| walk.fill(w)).collect();
    let out = walk.command(Machine::Operator, &filled[0]).args(&filled[1..]).stdin(Stdio::null()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && said.contains("535"), "{said}");
    // …and the owner's `audit list` shows why, which the SMTP reply never tells.
    let out = walk.command(Machine::Owner, BIN).args(["audit", "list", "--json"]).output().unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && (audit.contains("KEY_REVOKED") || audit.contains("GRANT_REVOKED")), "{audit}");
}
