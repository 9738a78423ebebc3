//! Verdicts: header surgery (pure) and mail-auth against a real DNS server on
//! loopback (agentkeys-testdns) serving fixed records.

use std::net::{IpAddr, Ipv4Addr};

use agentkeys_testdns::{TestDns, Zone};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner};

use super::*;
use crate::InboundEnvelope;

const HOST: &str = "mx.agents.test";
const SEED: [u8; 32] = [42; 32];

// ----- authserv-id and header surgery -------------------------------------------

#[test]
fn authserv_id_forms() {
    let cases: &[(&str, Option<&str>)] = &[
        (" mx.agents.test; dkim=pass", Some("mx.agents.test")),
        ("MX.Agents.Test.;spf=pass", Some("mx.agents.test")),
        (" (a comment (nested)) mx.agents.test 1; none", Some("mx.agents.test")),
        (" \"mx.agents.test\"; none", Some("mx.agents.test")),
        ("\r\n\tmx.agents.test;\r\n\tdkim=pass", Some("mx.agents.test")),
        (" other.example; dkim=pass header.d=mx.agents.test", Some("other.example")),
        ("   ", None),
        (" (unterminated", None),
    ];
    for (value, want) in cases {
        assert_eq!(parse_authserv_id(value.as_bytes()).as_deref(), *want, "{value:?}");
    }
}

fn strip(message: &str) -> String {
    String::from_utf8(strip_own_results(message.as_bytes(), HOST)).unwrap()
}

#[test]
fn own_results_are_removed_whole_foreign_ones_kept() {
    let message = "Received: from a (1.2.3.4)\r\n\tby mx.agents.test;\r\n\tdate\r\n\
        Authentication-Results: mx.agents.test;\r\n\tdkim=pass header.d=bank.example\r\n\
        authentication-results : MX.AGENTS.TEST. ; spf=pass\r\n\
        Authentication-Results: relay.example; dkim=fail\r\n\
        X-Authentication-Results: mx.agents.test; dkim=pass\r\n\
        ARC-Authentication-Results: i=1; mx.agents.test; dkim=pass\r\n\
        Subject: hi\r\n\
        \r\n\
        Authentication-Results: mx.agents.test; dkim=pass\r\n";
    let want = "Received: from a (1.2.3.4)\r\n\tby mx.agents.test;\r\n\tdate\r\n\
        Authentication-Results: relay.example; dkim=fail\r\n\
        X-Authentication-Results: mx.agents.test; dkim=pass\r\n\
        ARC-Authentication-Results: i=1; mx.agents.test; dkim=pass\r\n\
        Subject: hi\r\n\
        \r\n\
        Authentication-Results: mx.agents.test; dkim=pass\r\n";
    assert_eq!(strip(message), want, "the body is never touched");
}

#[test]
fn bare_lf_and_comment_forms_are_stripped() {
    let message = "Authentication-Results: (forged)\n mx.agents.test; dkim=pass\nSubject: x\n\nbody\n";
    assert_eq!(strip(message), "Subject: x\n\nbody\n");
    let message = "Authentication-Results: \"mx.agents.test\"; dkim=pass\r\nFrom: a@b\r\n\r\n";
    assert_eq!(strip(message), "From: a@b\r\n\r\n");
}

#[test]
fn a_lookalike_authserv_id_is_kept() {
    for id in ["mx.agents.test.evil", "evil-mx.agents.test", "xmx.agents.test"] {
        let message = format!("Authentication-Results: {id}; dkim=pass\r\n\r\n");
        assert_eq!(strip(&message), message, "{id}");
    }
}

#[test]
fn without_header_end_everything_is_header() {
    assert_eq!(strip("Authentication-Results: mx.agents.test; none"), "");
    assert_eq!(strip(""), "");
}

// ----- mail-auth over a real DNS server -----------------------------------------

fn ed_public() -> Vec<u8> {
    Ed25519KeyPair::from_seed_unchecked(&SEED).unwrap().public_key().as_ref().to_vec()
}

fn dkim_record() -> String {
    format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(ed_public()))
}

fn sign(message: &str) -> String {
    let key = Ed25519Key::from_seed_and_public_key(&SEED, &ed_public()).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain("bank.example")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message.as_bytes())
        .unwrap();
    format!("{}{message}", signature.to_header())
}

const MESSAGE: &str = "From: Bank <alerts@bank.example>\r\nTo: bot@agents.test\r\nSubject: Your code\r\n\r\nYour code is 123456.\r\n";

fn zone() -> Zone {
    Zone::new()
        .txt("sel._domainkey.bank.example", &dkim_record())
        .txt("bank.example", "v=spf1 ip4:127.0.0.1 -all")
        .txt("_dmarc.bank.example", "v=DMARC1; p=reject")
        .servfail("broken.example")
        .txt("_dmarc.broken.example", "v=DMARC1; p=none")
        .no_answer("silent.example")
        .no_answer("_dmarc.silent.example")
        .no_answer("sel._domainkey.silent.example")
}

fn verifier(dns: &TestDns) -> MailAuthVerifier {
    let ns = crate::verdict_dns::name_server(dns.addr());
    MailAuthVerifier::new(ResolverConfig::from_parts(None, vec![], vec![ns]), ResolverOpts::default()).unwrap()
}

fn envelope(mail_from: &str) -> InboundEnvelope {
    InboundEnvelope {
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: "client.bank.example".to_owned(),
        mail_from: mail_from.to_owned(),
    }
}

async fn verdict(v: &MailAuthVerifier, mail_from: &str, message: &str) -> String {
    let header = v.verify(HOST, &envelope(mail_from), message.as_bytes()).await;
    assert!(header.starts_with("Authentication-Results: mx.agents.test;"), "{header}");
    assert!(header.ends_with("\r\n") && !header[..header.len() - 2].contains("\r\n\r\n"), "{header:?}");
    header.replace("\r\n\t", " ")
}

#[tokio::test]
async fn signed_aligned_mail_passes_everything() {
    let dns = TestDns::start(zone()).unwrap();
    let v = verifier(&dns);
    let h = verdict(&v, "bounce@bank.example", &sign(MESSAGE)).await;
    assert!(h.contains("dkim=pass header.d=bank.example header.s=sel header.b="), "{h}");
    assert!(h.contains("spf=pass"), "{h}");
    assert!(h.contains("smtp.mailfrom=bounce@bank.example"), "{h}");
    assert!(h.contains("dmarc=pass header.from=bank.example policy.dmarc=reject"), "{h}");
    let order: Vec<usize> = ["dkim=", "spf=", "dmarc="].iter().map(|k| h.find(k).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{h}");
    assert!(dns.queries().iter().any(|q| q.name == "sel._domainkey.bank.example." && q.record_type == "TXT"));
}

#[tokio::test]
async fn unsigned_mail_is_dkim_none() {
    let dns = TestDns::start(zone()).unwrap();
    let h = verdict(&verifier(&dns), "bounce@bank.example", MESSAGE).await;
    assert!(h.contains("dkim=none;"), "{h}");
    assert!(h.contains("spf=pass"), "{h}");
    assert!(h.contains("dmarc=pass"), "SPF alone aligns: {h}");
}

#[tokio::test]
async fn altered_body_is_dkim_fail_and_wrong_ip_spf_fail() {
    let dns = TestDns::start(zone()).unwrap();
    let v = verifier(&dns);
    let altered = sign(MESSAGE).replace("123456", "999999");
    let h = verdict(&v, "bounce@bank.example", &altered).await;
    assert!(h.contains("dkim=fail (body hash did not verify) header.d=bank.example header.s=sel"), "{h}");
    let header = v
        .verify(
            HOST,
            &InboundEnvelope { client_ip: "192.0.2.7".parse().unwrap(), ..envelope("bounce@bank.example") },
            altered.as_bytes(),
        )
        .await;
    assert!(header.contains("spf=fail"), "{header}");
    assert!(header.contains("dmarc=fail"), "{header}");
}

#[tokio::test]
async fn servfail_is_temperror_and_the_header_is_still_written() {
    let dns = TestDns::start(zone()).unwrap();
    let h = verdict(&verifier(&dns), "x@broken.example", MESSAGE).await;
    assert!(h.contains("spf=temperror"), "{h}");
}

#[tokio::test]
async fn checks_that_run_out_of_time_are_all_temperror() {
    let dns = TestDns::start(zone()).unwrap();
    // Records that would pass, but no time to look them up.
    let v = verifier(&dns).with_budget(std::time::Duration::ZERO);
    let h = verdict(&v, "bounce@bank.example", &sign(MESSAGE)).await;
    assert!(h.contains("dkim=temperror"), "{h}");
    assert!(h.contains("header.d=bank.example header.s=sel"), "the signature is named: {h}");
    assert!(h.contains("spf=temperror"), "{h}");
    assert!(h.contains("dmarc=temperror"), "{h}");
    assert!(h.contains("header.from=bank.example"), "{h}");
}

fn silent_message() -> String {
    sign(MESSAGE).replace("bank.example", "silent.example")
}

#[tokio::test]
async fn a_name_server_that_never_answers_ends_in_temperror_within_the_budget() {
    let dns = TestDns::start(zone()).unwrap();
    let v = verifier(&dns);
    let h = verdict(&v, "x@silent.example", &silent_message()).await;
    assert!(h.contains("dkim=temperror"), "{h}");
    assert!(h.contains("spf=temperror"), "{h}");
    assert!(h.contains("dmarc=temperror"), "{h}");
}

/// Twenty messages at once from a domain whose name server is silent: each gets
/// its temperror verdicts, and the names are asked upstream once each (a few
/// attempts), not once per message. A later message from the same domain is
/// answered from the failing entries: no upstream query at all.
#[tokio::test]
async fn concurrent_messages_share_the_queries_and_a_failing_name_is_not_asked_again() {
    let dns = TestDns::start(zone()).unwrap();
    let v = std::sync::Arc::new(verifier(&dns));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let v = std::sync::Arc::clone(&v);
            tokio::spawn(async move { verdict(&v, "x@silent.example", &silent_message()).await })
        })
        .collect();
    for task in tasks {
        let h = task.await.unwrap();
        assert!(h.contains("dkim=temperror") && h.contains("spf=temperror") && h.contains("dmarc=temperror"), "{h}");
    }
    // One upstream query per name (hickory resends a lost UDP packet within a
    // query, so the server sees a few packets), never one per message.
    assert_eq!(v.answers().counts().queries, 5, "{:?}", v.answers().counts());
    for name in ["silent.example", "_dmarc.silent.example", "sel._domainkey.silent.example"] {
        let asked = dns.count(name, "TXT");
        assert!((1..20).contains(&asked), "{name} asked {asked} times for 20 messages");
    }
    let before = v.answers().counts();
    let h = verdict(&v, "x@silent.example", &silent_message()).await;
    assert!(h.contains("spf=temperror") && h.contains("dmarc=temperror"), "{h}");
    let after = v.answers().counts();
    assert_eq!(after.queries, before.queries, "no new upstream query for a name known to fail");
    assert!(after.failing > before.failing, "answered as failing at once: {before:?} -> {after:?}");
}

/// A healthy domain's verdicts are computed while another domain's name server
/// is silent and messages from it are waiting.
#[tokio::test]
async fn a_healthy_domain_passes_while_another_is_silent() {
    let dns = TestDns::start(zone()).unwrap();
    let v = std::sync::Arc::new(verifier(&dns));
    let silent: Vec<_> = (0..10)
        .map(|_| {
            let v = std::sync::Arc::clone(&v);
            tokio::spawn(async move { verdict(&v, "x@silent.example", &silent_message()).await })
        })
        .collect();
    let h = verdict(&v, "bounce@bank.example", &sign(MESSAGE)).await;
    assert!(h.contains("dkim=pass") && h.contains("spf=pass") && h.contains("dmarc=pass"), "{h}");
    for task in silent {
        assert!(task.await.unwrap().contains("spf=temperror"));
    }
}

/// A name server that loses every third query: the lost ones are asked again,
/// and the verdicts are the full ones.
#[tokio::test]
async fn a_lossy_name_server_still_gives_full_verdicts() {
    let dns = TestDns::start(zone().drop_every(3)).unwrap();
    let v = verifier(&dns).with_budget(std::time::Duration::from_secs(30));
    let h = verdict(&v, "bounce@bank.example", &sign(MESSAGE)).await;
    assert!(h.contains("dkim=pass") && h.contains("spf=pass") && h.contains("dmarc=pass"), "{h}");
    assert!(dns.received() >= 3, "at least one query was lost (and asked again): {}", dns.received());
}

/// The prefetched DMARC names are exactly the ones mail-auth's tree walk asks,
/// for every depth of From domain (every name NXDOMAIN, so the walk goes all
/// the way down).
#[tokio::test]
async fn the_prefetched_dmarc_walk_is_mail_auths_walk() {
    let dns = TestDns::start(Zone::new()).unwrap();
    let v = verifier(&dns).with_budget(std::time::Duration::from_secs(30));
    for depth in 1..=10usize {
        let domain: Vec<String> = (0..depth).map(|i| format!("l{i}")).collect();
        let domain = domain.join(".");
        let walk = dmarc_tree_walk(&domain);
        let message = format!("From: <a@{domain}>\r\nSubject: x\r\n\r\nbody\r\n");
        let before = dns.queries().len();
        let _ = v.verify(HOST, &envelope("x@other.test"), message.as_bytes()).await;
        let asked: Vec<String> =
            dns.queries()[before..].iter().filter(|q| q.name.starts_with("_dmarc.")).map(|q| q.name.clone()).collect();
        for name in &asked {
            assert!(walk.contains(name), "depth {depth}: mail-auth asked {name}, not in {walk:?}");
        }
        for name in &walk {
            assert!(dns.count(name, "TXT") >= 1, "depth {depth}: {name} never asked");
        }
        if depth == 1 {
            assert!(walk.is_empty());
        }
    }
}

#[tokio::test]
async fn null_sender_and_no_from_still_give_a_header() {
    let dns = TestDns::start(zone()).unwrap();
    let h = verdict(&verifier(&dns), "", "Subject: no from\r\n\r\nbody\r\n").await;
    assert!(h.contains("dkim=none"), "{h}");
    assert!(h.contains("smtp.mailfrom=postmaster@client.bank.example") || h.contains("spf="), "{h}");
    assert!(h.ends_with("dmarc=none\r\n") || h.contains("dmarc=none"), "{h}");
}

// ----- the acceptance step --------------------------------------------------------

struct Fixed(&'static str);

#[async_trait::async_trait]
impl InboundVerifier for Fixed {
    async fn verify(&self, _: &str, _: &InboundEnvelope, _: &[u8]) -> String {
        self.0.to_owned()
    }
}

fn delivery(message: &str, inbound: Option<Box<InboundEnvelope>>) -> crate::Delivery {
    crate::Delivery {
        id: ulid::Ulid::nil(),
        message: bytes::Bytes::from(message.to_owned()),
        received_at: 0,
        local: Vec::new(),
        outbound: None,
        inbound,
        submitted: None,
    }
}

#[tokio::test]
async fn add_verdicts_strips_forgeries_and_prepends_above_received() {
    let verifier = Fixed("Authentication-Results: mx.agents.test;\r\n\tdkim=none\r\n");
    let message = "Received: from x (127.0.0.1)\r\n\tby mx.agents.test\r\n\
        Authentication-Results: mx.agents.test; dkim=pass header.d=bank.example\r\n\
        Authentication-Results: relay.example; dkim=pass\r\nSubject: s\r\n\r\nb\r\n";
    let d = crate::add_verdicts(&verifier, HOST, delivery(message, Some(Box::new(envelope("a@b.example"))))).await;
    assert_eq!(
        std::str::from_utf8(&d.message).unwrap(),
        "Authentication-Results: mx.agents.test;\r\n\tdkim=none\r\n\
         Received: from x (127.0.0.1)\r\n\tby mx.agents.test\r\n\
         Authentication-Results: relay.example; dkim=pass\r\nSubject: s\r\n\r\nb\r\n"
    );
    assert_eq!(own_results(&d.message, HOST).as_deref(), Some(" mx.agents.test;\tdkim=none"));
    // Submission (no inbound envelope): untouched.
    let d = crate::add_verdicts(&verifier, HOST, delivery(message, None)).await;
    assert_eq!(std::str::from_utf8(&d.message).unwrap(), message);
}

/// Over generated header sections (our fields, lookalikes, foreign ones, folded,
/// CRLF and bare LF, with and without a body): the one-pass copy is exactly our
/// header followed by the stripped message, and strips exactly our fields.
#[test]
fn stripping_and_prepending_in_one_pass_is_strip_then_prepend() {
    use rand::{Rng as _, SeedableRng as _};
    let fields = [
        "Authentication-Results: mx.agents.test; dkim=pass",
        "authentication-results:MX.AGENTS.TEST.;\r\n\tspf=pass",
        "Authentication-Results: (c) \"mx.agents.test\"; none",
        "Authentication-Results: relay.example; dkim=fail",
        "Authentication-Results: mx.agents.test.evil; dkim=pass",
        "Received: from a\r\n\tby b",
        "Subject: hi",
        "X-Authentication-Results: mx.agents.test; dkim=pass",
        "no colon here",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for _ in 0..2000 {
        let eol = if rng.gen_bool(0.8) { "\r\n" } else { "\n" };
        let mut message = String::new();
        for _ in 0..rng.gen_range(0..8) {
            message.push_str(&fields[rng.gen_range(0..fields.len())].replace("\r\n", eol));
            message.push_str(eol);
        }
        if rng.gen_bool(0.7) {
            message.push_str(eol);
            message.push_str(&format!("Authentication-Results: mx.agents.test; in the body{eol}"));
        }
        let header = "Authentication-Results: mx.agents.test;\r\n\tdkim=none\r\n";
        let stripped = strip_own_results(message.as_bytes(), HOST);
        let mut want = header.as_bytes().to_vec();
        want.extend_from_slice(&stripped);
        assert_eq!(stripped_with_header(header, message.as_bytes(), HOST), want, "{message:?}");
        let ours_left = String::from_utf8(stripped).unwrap();
        for line in ours_left.split(eol).take_while(|l| !l.is_empty()) {
            assert!(
                !(line.to_ascii_lowercase().starts_with("authentication-results") && line.to_ascii_lowercase().contains("mx.agents.test;")),
                "{line:?} survived in {message:?}"
            );
        }
    }
}

#[test]
fn only_host_names_are_prefetched() {
    let cases: &[(&str, Option<&str>)] = &[
        ("Bank.Example", Some("bank.example.")),
        ("bank.example.", Some("bank.example.")),
        ("sel._domainkey.bank.example.", Some("sel._domainkey.bank.example.")),
        ("", None),
        (".", None),
        ("[192.0.2.1]", None),
        ("localhost", None),
        ("a..b", None),
        ("bad host.example", None),
        (&"x.".repeat(130), None),
    ];
    for (name, want) in cases {
        assert_eq!(dns_name(name).as_deref(), *want, "{name:?}");
    }
}
