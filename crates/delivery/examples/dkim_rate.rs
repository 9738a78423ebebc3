//! DKIM signing rate on one thread, per algorithm, for the outbound benchmark
//! (`bench/run.sh`, BENCHMARKS.md).
//!
//! Signs the same 10 KB message (relaxed/relaxed, the headers of
//! [`SIGNED_HEADERS`]) with RSA-2048 only, Ed25519 only, and both keys through
//! [`DkimSigner::sign`] (what submission does: normalize, then two signatures),
//! each for at most `--count` signatures or `--seconds` seconds, whichever comes
//! first, after a short warm-up. Prints one JSON line per case and a summary line;
//! one thread, so signatures/s is per core.
//!
//! ```sh
//! cargo run --release -p agentkeys-delivery --example dkim_rate [-- --count 5000 --seconds 3 --size 10240]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use agentkeys_core::{Domain, MasterSeed};
use agentkeys_delivery::{DomainKeys, SIGNED_HEADERS, Selectors, normalize_for_relay};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const DOMAIN: &str = "agents.localhost";

struct Args {
    count: u64,
    seconds: f64,
    size: usize,
}

fn args() -> Args {
    let mut a = Args { count: 5_000, seconds: 3.0, size: 10_240 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => a.count = value.parse().expect("--count"),
            "--seconds" => a.seconds = value.parse().expect("--seconds"),
            "--size" => a.size = value.parse().expect("--size"),
            _ => panic!("unknown flag {flag} (--count N, --seconds S, --size BYTES)"),
        }
    }
    assert!(a.count > 0 && a.seconds > 0.0, "--count and --seconds must be positive");
    a
}

/// A message like the bench's: a few headers, then `size` bytes of 80-column lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: bench@{DOMAIN}\r\nTo: x@bench-remote.test\r\nSubject: dkim rate\r\n\
         Date: Sun, 22 Nov 2026 00:00:00 +0000\r\nMessage-ID: <dkim-rate@{DOMAIN}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    let mut body = 0;
    while body < size {
        m.extend_from_slice(line);
        body += line.len();
    }
    m
}

/// Runs `sign` up to `count` times or for `seconds`, after 20 unmeasured calls.
fn measure(name: &str, count: u64, seconds: f64, mut sign: impl FnMut() -> usize) {
    for _ in 0..20 {
        std::hint::black_box(sign());
    }
    let limit = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < count && start.elapsed() < limit {
        bytes = std::hint::black_box(sign());
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"kind\":\"dkim_rate\",\"algorithm\":\"{name}\",\"threads\":1,\"signatures\":{n},\"seconds\":{secs:.3},\
         \"per_second_per_core\":{:.1},\"us_per_message\":{:.1},\"signed_bytes\":{bytes}}}",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

fn main() {
    let args = args();
    let msg = message(args.size);
    let domain: Domain = DOMAIN.parse().unwrap();
    let seed = MasterSeed::from_bytes([7; 32]);
    let selectors = Selectors::default();

    // RSA-2048 alone (a fresh key, as `domain add` makes).
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let rsa_der = rsa.as_der().unwrap().as_ref().to_vec();
    let rsa_key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(rsa_der))).unwrap();
    let rsa_signer = DkimSigner::from_key(rsa_key)
        .domain(DOMAIN)
        .selector(selectors.rsa.as_str())
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);

    // Ed25519 alone.
    let ed_seed = [9u8; 32];
    let ed = Ed25519KeyPair::from_seed_unchecked(&ed_seed).unwrap();
    let ed_key = Ed25519Key::from_seed_and_public_key(&ed_seed, ed.public_key().as_ref()).unwrap();
    let ed_signer = DkimSigner::from_key(ed_key)
        .domain(DOMAIN)
        .selector(selectors.ed25519.as_str())
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);

    // Both, exactly as submission signs (normalize, RSA, Ed25519, prepend).
    let record = DomainKeys::generate_record(&seed, &domain, 1, &selectors, 0).unwrap();
    let both = DomainKeys::open(&seed, &record).unwrap().signer().unwrap();

    let normalized = normalize_for_relay(&msg);
    measure("rsa-sha256", args.count, args.seconds, || rsa_signer.sign(&normalized).unwrap().to_header().len());
    measure("ed25519-sha256", args.count, args.seconds, || ed_signer.sign(&normalized).unwrap().to_header().len());
    measure("both", args.count, args.seconds, || both.sign(&msg).unwrap().len());
}
