//! `agentkeys domain dns` and `domain verify` end to end with the real binary
//! and a real DNS server on loopback (agentkeys-testdns): every record `domain
//! dns` prints (MX, SPF, DMARC, both DKIM keys, and with `mta_sts.mode` and
//! `tls_rpt.rua` set the `_mta-sts` and `_smtp._tls` records) is read back from
//! its BIND output and published as printed (long TXT records as several
//! strings); then `domain verify` judges what the DNS server answers. Also: the
//! policy whose id `_mta-sts` carries is what the HTTP listener serves.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agentkeys_testdns::{TestDns, Zone};
use common::{Server, agentkeys, run_json};
use serde_json::Value;

const DOMAIN: &str = "verify.test";
const HOSTNAME: &str = "mx.verify.test";
/// The MTA-STS and TLS-RPT settings of every command (and the server) here.
const STS_ENV: [(&str, &str); 4] = [
    ("AGENTKEYS_HOSTNAME", HOSTNAME),
    ("AGENTKEYS_MTA_STS_MODE", "enforce"),
    ("AGENTKEYS_MTA_STS_MAX_AGE", "86400"),
    ("AGENTKEYS_TLS_RPT_RUA", "mailto:tlsrpt@verify.test"),
];

/// One resource record of the zone file: owner, type, and its data (TXT: the
/// character-strings as printed).
#[derive(Debug, Clone)]
struct Record {
    name: String,
    kind: String,
    data: Vec<String>,
}

/// The quoted strings of a TXT record's data, unescaped.
fn quoted_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => s.extend(chars.next()),
                '"' => break,
                other => s.push(other),
            }
        }
        out.push(s);
    }
    out
}

/// Reads the records of `domain dns`'s BIND output: `name TTL IN TYPE data`,
/// data continued over lines inside parentheses; `;` comments skipped.
fn parse_zone(text: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.splitn(5, '\t').collect();
        assert_eq!(fields.len(), 5, "not a record line: {line:?}");
        assert_eq!((fields[1], fields[2]), ("3600", "IN"), "{line}");
        let mut data = fields[4].to_owned();
        if data.starts_with('(') {
            while !data.trim_end().ends_with(')') {
                data.push_str(lines.next().expect("unclosed parenthesis"));
            }
        }
        let name = fields[0].trim_end_matches('.').to_owned();
        let data = match fields[3] {
            "TXT" => quoted_strings(&data),
            _ => vec![data],
        };
        records.push(Record { name, kind: fields[3].to_owned(), data });
    }
    records
}

/// The records as a testdns zone.
fn zone(records: &[Record]) -> Zone {
    records.iter().fold(Zone::new(), |zone, r| match r.kind.as_str() {
        "MX" => {
            let (preference, exchange) = r.data[0].split_once(' ').unwrap();
            zone.mx(&r.name, preference.parse().unwrap(), exchange)
        }
        "TXT" => zone.txt_strings(&r.name, &r.data.iter().map(String::as_str).collect::<Vec<_>>()),
        other => panic!("domain dns printed a {other} record"),
    })
}

fn command(data: &std::path::Path, nameserver: &str) -> Command {
    let mut cmd = agentkeys(data);
    cmd.envs(STS_ENV).env("AGENTKEYS_DNS_NAMESERVERS", nameserver);
    cmd
}

/// `domain verify` (text, then JSON): exit status, text lines, JSON.
fn verify(data: &std::path::Path, nameserver: &str) -> (Output, String, Value) {
    let text = command(data, nameserver).args(["domain", "verify", DOMAIN]).output().unwrap();
    let json = command(data, nameserver).args(["domain", "verify", DOMAIN, "--json"]).output().unwrap();
    assert_eq!(text.status.code(), json.status.code(), "both forms agree");
    let value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json.stdout)));
    (text.clone(), String::from_utf8(text.stdout).unwrap(), value)
}

fn status(value: &Value) -> &str {
    value["status"].as_str().unwrap()
}

fn findings(value: &Value) -> Vec<(String, String)> {
    value["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["record"].as_str().unwrap().to_owned(), c["finding"]["finding"].as_str().unwrap().to_owned()))
        .collect()
}

/// A setup: a data directory hosting verify.test, and its records as printed.
fn hosted() -> (tempfile::TempDir, std::path::PathBuf, String, Vec<Record>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run_json(&data, &["domain", "add", DOMAIN]);
    let out = command(&data, "127.0.0.1:9").args(["domain", "dns", DOMAIN]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let records = parse_zone(&text);
    (dir, data, text, records)
}

#[test]
fn domain_verify_against_a_real_dns_server() {
    let (_dir, data, text, records) = hosted();
    let kinds: Vec<(&str, &str)> = records.iter().map(|r| (r.name.as_str(), r.kind.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (DOMAIN, "MX"),
            (DOMAIN, "TXT"),
            ("_dmarc.verify.test", "TXT"),
            ("ed1._domainkey.verify.test", "TXT"),
            ("rsa1._domainkey.verify.test", "TXT"),
            ("_mta-sts.verify.test", "TXT"),
            ("_smtp._tls.verify.test", "TXT"),
        ],
        "{text}"
    );
    assert!(records[4].data.len() > 1, "the RSA key is over 255 bytes: several strings");
    assert!(text.contains("; mta-sts.verify.test must point (A/AAAA or CNAME) at an HTTPS front"), "{text}");
    assert_eq!(records[6].data, ["v=TLSRPTv1; rua=mailto:tlsrpt@verify.test"]);

    // Nothing published: pending, each record named as missing.
    let dns = TestDns::start(Zone::new()).unwrap();
    let (out, lines, value) = verify(&data, &dns.nameserver());
    assert_eq!(out.status.code(), Some(1), "{lines}");
    assert_eq!(status(&value), "pending", "{value}");
    assert!(findings(&value).iter().all(|(_, f)| f == "missing"), "{value}");
    assert!(lines.contains("MISSING     MTA-STS _mta-sts.verify.test: publish"), "{lines}");
    assert!(lines.contains("MISSING     TLS-RPT _smtp._tls.verify.test: publish"), "{lines}");
    assert!(lines.contains("verify.test: pending"), "{lines}");

    // Every record printed by `domain dns` published: verified.
    dns.set_zone(zone(&records));
    let (out, lines, value) = verify(&data, &dns.nameserver());
    assert_eq!(out.status.code(), Some(0), "{lines}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&value), "verified", "{value}");
    assert_eq!(findings(&value).len(), 7);
    let listed = run_json(&data, &["domain", "list"]);
    let row = listed.as_array().unwrap().iter().find(|d| d["domain"] == DOMAIN).unwrap().clone();
    assert_eq!(row["status"], "verified", "{listed}");

    // One DKIM key altered (a character of p= changed): invalid, naming it.
    let mut altered = records.clone();
    let ed = altered.iter_mut().find(|r| r.name == "ed1._domainkey.verify.test").unwrap();
    let p_at = ed.data[0].find("p=").unwrap() + 2;
    let first = ed.data[0].as_bytes()[p_at];
    let swapped = if first == b'A' { "B" } else { "A" };
    ed.data[0].replace_range(p_at..=p_at, swapped);
    dns.set_zone(zone(&altered));
    let (out, lines, value) = verify(&data, &dns.nameserver());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status(&value), "invalid", "{value}");
    let not_ok: Vec<(String, String)> = findings(&value).into_iter().filter(|(_, f)| f != "ok").collect();
    assert_eq!(not_ok, [("DKIM ed1".to_owned(), "wrong".to_owned())], "{value}");
    assert!(
        lines.contains("WRONG       DKIM ed1 ed1._domainkey.verify.test: the published key is not this server's key"),
        "{lines}"
    );

    // A changed policy (another max_age) makes the published id stale: invalid, naming MTA-STS.
    dns.set_zone(zone(&records));
    let stale = command(&data, &dns.nameserver())
        .env("AGENTKEYS_MTA_STS_MAX_AGE", "7d")
        .args(["domain", "verify", DOMAIN])
        .output()
        .unwrap();
    let stale_lines = String::from_utf8(stale.stdout).unwrap();
    assert_eq!(stale.status.code(), Some(1), "{stale_lines}");
    assert!(stale_lines.contains("WRONG       MTA-STS _mta-sts.verify.test: id="), "{stale_lines}");
    assert!(stale_lines.contains("verify.test: invalid"), "{stale_lines}");

    // A name server that never answers: failed (nothing can be concluded).
    let (silent, port) = silent_nameserver();
    let started = Instant::now();
    let (out, lines, value) = verify(&data, &format!("127.0.0.1:{port}"));
    drop(silent);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status(&value), "failed", "{value}");
    assert!(findings(&value).iter().all(|(_, f)| f == "unresolved"), "{value}");
    assert!(lines.contains("DNS FAILED  MX verify.test"), "{lines}");
    assert!(lines.contains("verify.test: failed"), "{lines}");
    // The lookups run at once: two commands took about one timeout each, not seven.
    assert!(started.elapsed() < Duration::from_secs(90), "{:?}", started.elapsed());
}

/// A UDP socket and a TCP listener on one loopback port that never answer
/// (nothing reads the socket; the listener never accepts).
fn silent_nameserver() -> ((UdpSocket, TcpListener), u16) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return ((udp, tcp), port);
        }
    }
    panic!("no port free for both UDP and TCP");
}

#[test]
fn the_policy_served_is_the_one_whose_id_is_published() {
    let (_dir, data, _text, records) = hosted();
    let sts = records.iter().find(|r| r.name == "_mta-sts.verify.test").unwrap();
    let id = sts.data[0].strip_prefix("v=STSv1; id=").unwrap().to_owned();
    let server = Server::start(&data, &STS_ENV);
    let get = |host: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-D", "-", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://{}/.well-known/mta-sts.txt", server.http))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_ascii_lowercase(), body.to_owned())
    };
    let (head, body) = get("mta-sts.verify.test");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/plain\r\n"), "{head}");
    assert_eq!(body, "version: STSv1\r\nmode: enforce\r\nmx: mx.verify.test\r\nmax_age: 86400\r\n");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
    let expect: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id, expect, "the published id is derived from exactly the policy served");
    let (head, _) = get("MTA-STS.Verify.Test:443");
    assert!(head.starts_with("http/1.1 200"), "port and case do not matter: {head}");
    for host in ["mta-sts.unknown.test", "verify.test", "127.0.0.1"] {
        let (head, body) = get(host);
        assert!(head.starts_with("http/1.1 404"), "{host}: {head}");
        assert!(head.contains("content-type: application/problem+json"), "{head}");
        assert!(body.contains("\"NOT_FOUND\""), "{body}");
    }
}
