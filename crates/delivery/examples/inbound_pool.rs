//! The message pool and DNS zone of the realistic inbound benchmark
//! (`bench/run.sh`, part `realistic`; BENCHMARKS.md).
//!
//! Writes into `--out DIR`:
//!
//! - `zone.txt`: the records of `--domains` sender domains `sN.bench-mail.example`
//!   for `agentkeys-testdns` (crates/testdns): an RSA-2048 DKIM key (selector
//!   `rsa`) and an Ed25519 one (selector `ed`); SPF `v=spf1 mx include:_spf.<d>
//!   -all` (an MX whose address does not match, then an include that allows
//!   127.0.0.0/8: three lookups, as real senders' records need); a HELO name
//!   `mail.<d>` with `v=spf1 a -all` and an A record 127.0.0.1; DMARC
//!   `v=DMARC1; p=reject`. Not under `.test`: libunbound (OpenDKIM's resolver,
//!   the peer) answers every `.test` name NXDOMAIN itself (RFC 6761 default
//!   local zone) without asking the name server.
//! - `signed.jsonl`: `--messages` messages, one JSON object a line (`helo`,
//!   `mail_from`, `data`), from the domains in turn, each `--size` body bytes,
//!   DKIM-signed by its domain: RSA-2048 only, Ed25519 only, or both, in turn.
//!   Signed once here, so the load generator does not measure signing.
//! - `plain.jsonl`: the same messages unsigned, from `loadgen.localhost` (a name
//!   the resolver answers itself, so no SPF, DKIM or DMARC lookup happens).
//!
//! ```sh
//! cargo run --release -p agentkeys-delivery --example inbound_pool -- --out DIR [--messages 600 --domains 6 --size 10240]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::PathBuf;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const RCPT: &str = "bench@agents.localhost";
const SIGNED_HEADERS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];

struct Args {
    out: PathBuf,
    messages: usize,
    domains: usize,
    size: usize,
}

fn args() -> Args {
    let mut a = Args { out: PathBuf::new(), messages: 600, domains: 6, size: 10_240 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = value.into(),
            "--messages" => a.messages = value.parse().expect("--messages"),
            "--domains" => a.domains = value.parse().expect("--domains"),
            "--size" => a.size = value.parse().expect("--size"),
            _ => panic!("unknown flag {flag} (--out DIR, --messages N, --domains N, --size BYTES)"),
        }
    }
    assert!(!a.out.as_os_str().is_empty(), "--out DIR is required");
    assert!(a.messages > 0 && a.domains > 0, "--messages and --domains must be positive");
    a
}

struct SenderDomain {
    name: String,
    rsa: DkimSigner<RsaKey<Sha256>, mail_auth::dkim::Done>,
    ed: DkimSigner<Ed25519Key, mail_auth::dkim::Done>,
    rsa_public: Vec<u8>,
    ed_public: Vec<u8>,
}

impl SenderDomain {
    fn new(name: String) -> Self {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let rsa_der = rsa.as_der().unwrap().as_ref().to_vec();
        let rsa_public = rsa.public_key().as_der().unwrap().as_ref().to_vec();
        let rsa_key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(rsa_der))).unwrap();
        let mut seed = [0u8; 32];
        SystemRandom::new().fill(&mut seed).unwrap();
        let ed = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let ed_public = ed.public_key().as_ref().to_vec();
        let ed_key = Ed25519Key::from_seed_and_public_key(&seed, &ed_public).unwrap();
        let rsa = relaxed_signer(rsa_key, &name, "rsa");
        let ed = relaxed_signer(ed_key, &name, "ed");
        Self { name, rsa, ed, rsa_public, ed_public }
    }

    fn zone(&self, out: &mut String) {
        let d = &self.name;
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        writeln!(out, "rsa._domainkey.{d} TXT v=DKIM1; k=rsa; p={}", b64(&self.rsa_public)).unwrap();
        writeln!(out, "ed._domainkey.{d} TXT v=DKIM1; k=ed25519; p={}", b64(&self.ed_public)).unwrap();
        writeln!(out, "{d} TXT v=spf1 mx include:_spf.{d} -all").unwrap();
        writeln!(out, "{d} MX 10 mx.{d}").unwrap();
        writeln!(out, "mx.{d} A 192.0.2.25").unwrap();
        writeln!(out, "_spf.{d} TXT v=spf1 ip4:127.0.0.0/8 -all").unwrap();
        writeln!(out, "mail.{d} TXT v=spf1 a -all").unwrap();
        writeln!(out, "mail.{d} A 127.0.0.1").unwrap();
        writeln!(out, "_dmarc.{d} TXT v=DMARC1; p=reject; adkim=r; aspf=r").unwrap();
    }
}

/// A relaxed/relaxed signer of [`SIGNED_HEADERS`] for `domain`, `selector`.
fn relaxed_signer<K: SigningKey>(key: K, domain: &str, selector: &str) -> DkimSigner<K, mail_auth::dkim::Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// A message from `from_domain`: the usual headers, then `size` bytes of
/// 80-column lines.
fn message(i: usize, from_domain: &str, size: usize) -> String {
    let mut m = format!(
        "From: Alerts <alerts@{from_domain}>\r\nTo: <{RCPT}>\r\nSubject: bench message {i}\r\n\
         Date: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <bench-{i}@{from_domain}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    let mut body = 0;
    while body < size {
        m.push_str(line);
        body += line.len();
    }
    m
}

fn json_line(helo: &str, mail_from: &str, data: &str) -> String {
    let mut line = serde_json::json!({"helo": helo, "mail_from": mail_from, "data": data}).to_string();
    line.push('\n');
    line
}

fn main() {
    let args = args();
    std::fs::create_dir_all(&args.out).unwrap();
    let domains: Vec<SenderDomain> =
        (0..args.domains).map(|i| SenderDomain::new(format!("s{i}.bench-mail.example"))).collect();
    let mut zone = String::from("# The realistic inbound benchmark's sender domains (inbound_pool example).\n");
    for d in &domains {
        d.zone(&mut zone);
    }
    std::fs::write(args.out.join("zone.txt"), zone).unwrap();

    let (mut signed, mut plain) = (String::new(), String::new());
    let mut kinds = [0usize; 3];
    for i in 0..args.messages {
        let d = &domains[i % domains.len()];
        let raw = message(i, &d.name, args.size);
        let kind = (i / domains.len()) % 3;
        kinds[kind] += 1;
        let mut headers = String::new();
        if kind != 1 {
            headers.push_str(&d.rsa.sign(raw.as_bytes()).unwrap().to_header());
        }
        if kind != 0 {
            headers.push_str(&d.ed.sign(raw.as_bytes()).unwrap().to_header());
        }
        signed.push_str(&json_line(&format!("mail.{}", d.name), &format!("bounce@{}", d.name), &format!("{headers}{raw}")));
        let plain_raw = message(i, "loadgen.localhost", args.size);
        plain.push_str(&json_line("loadgen.localhost", "sender@loadgen.localhost", &plain_raw));
    }
    std::fs::write(args.out.join("signed.jsonl"), signed).unwrap();
    std::fs::write(args.out.join("plain.jsonl"), plain).unwrap();
    println!(
        "{{\"messages\": {}, \"domains\": {}, \"rsa_only\": {}, \"ed25519_only\": {}, \"both\": {}, \"size\": {}}}",
        args.messages, args.domains, kinds[0], kinds[1], kinds[2], args.size
    );
}
