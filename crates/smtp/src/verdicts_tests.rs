//! Verdicts: header surgery (pure) and mail-auth against a real DNS server on
//! loopback (agentkeys-testdns) serving fixed records.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use agentkeys_testdns::{TestDns, Zone};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
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
}

fn verifier(dns: &TestDns) -> MailAuthVerifier {
    let addr: SocketAddr = dns.addr();
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    ns.connections = vec![udp, tcp];
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
    let v = verifier(&dns).with_deadline(std::time::Duration::ZERO);
    let h = verdict(&v, "bounce@bank.example", &sign(MESSAGE)).await;
    assert!(h.contains("dkim=temperror"), "{h}");
    assert!(h.contains("spf=temperror"), "{h}");
    assert!(h.contains("dmarc=temperror"), "{h}");
    assert!(h.contains("header.from=bank.example"), "{h}");
}

#[tokio::test]
async fn a_name_server_that_never_answers_ends_in_temperror_at_the_deadline() {
    let dns = TestDns::start(zone()).unwrap();
    let message = MESSAGE.replace("bank.example", "silent.example");
    let v = verifier(&dns).with_deadline(std::time::Duration::from_secs(1));
    let h = verdict(&v, "x@silent.example", &message).await;
    assert!(h.contains("dkim=temperror"), "{h}");
    assert!(h.contains("spf=temperror"), "{h}");
    assert!(h.contains("dmarc=temperror"), "{h}");
}

/// After a timeout, later messages are bounded by the short outage timeout for
/// the window, then by the configured deadline again. The clock is paused:
/// the durations below are virtual, exact up to the timer's millisecond.
#[tokio::test(start_paused = true)]
async fn a_timeout_shortens_the_next_deadlines_for_the_outage_window() {
    use std::time::Duration;
    let dns = TestDns::start(zone()).unwrap();
    let message = MESSAGE.replace("bank.example", "silent.example");
    let deadline = Duration::from_secs(1);
    let v = verifier(&dns).with_deadline(deadline);
    let within = |elapsed: Duration, bound: Duration| elapsed >= bound && elapsed < bound + Duration::from_millis(10);
    assert_eq!(v.current_deadline(), deadline);
    let started = tokio::time::Instant::now();
    let h = verdict(&v, "x@silent.example", &message).await;
    assert!(h.contains("spf=temperror"), "{h}");
    assert!(within(started.elapsed(), deadline), "the first check runs to its deadline: {:?}", started.elapsed());
    assert_eq!(v.current_deadline(), VERDICT_OUTAGE_TIMEOUT);
    let started = tokio::time::Instant::now();
    let h = verdict(&v, "x@silent.example", &message).await;
    assert!(h.contains("dmarc=temperror"), "{h}");
    assert!(within(started.elapsed(), VERDICT_OUTAGE_TIMEOUT), "during the window: {:?}", started.elapsed());
    tokio::time::advance(VERDICT_OUTAGE_WINDOW).await;
    assert_eq!(v.current_deadline(), deadline, "after the window: the configured deadline again");
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
