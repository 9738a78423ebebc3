//! The `Authentication-Results` parser against the real writer our MX uses:
//! headers produced by mail-auth 0.13's `AuthenticationResults`, in a message,
//! through `ParsedMessage`.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agentkeys_agent::message::ParsedMessage;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::Signature;
use mail_auth::{
    AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult, Error, SpfOutput, SpfResult,
};

const OUR_MX: &str = "mx.agents.localhost";
const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn message_with(header: &str, from: &str) -> ParsedMessage {
    let raw = format!("{header}From: {from}\r\nSubject: Your code\r\n\r\nYour code is 482913.\r\n");
    ParsedMessage::parse("01JDMAILAUTH00000000000000", raw.as_bytes(), OUR_MX).unwrap()
}

fn signature(d: &str, i: &str) -> Signature {
    Signature {
        d: d.into(),
        s: "sel1".into(),
        i: i.into(),
        b: vec![7; 64],
        ..Default::default()
    }
}

#[test]
fn dmarc_pass_as_mail_auth_writes_it() {
    let sig = signature("shop.example", "");
    let header = AuthenticationResults::new(OUR_MX)
        .with_dkim_results(&[DkimOutput::pass().with_signature(&sig)], "shop.example")
        .with_spf_mailfrom_result(
            &SpfOutput::new("shop.example".into()).with_result(SpfResult::Pass),
            IP,
            "bounce@shop.example",
            "mail.shop.example",
        )
        .with_dmarc_result(
            &DmarcOutput::new("shop.example".into()).with_dkim_result(DmarcResult::Pass),
        )
        .to_header();
    assert!(header.contains("\r\n\t"), "folded: {header}");
    let m = message_with(&header, "Shop <no-reply@shop.example>");
    let a = &m.authentication;
    assert!(a.verdicts_present, "{header}");
    assert!(a.authenticated, "{header} → {a:?}");
    assert_eq!(a.spf.as_deref(), Some("pass"));
    assert_eq!(a.dmarc.as_deref(), Some("pass"));
    assert_eq!(a.dkim.len(), 1);
    assert_eq!(a.dkim[0].domain.as_deref(), Some("shop.example"));
    assert_eq!(a.dkim[0].selector.as_deref(), Some("sel1"));
    let spf = a.results.iter().find(|r| r.method == "spf").unwrap();
    assert_eq!(
        spf.property("smtp", "mailfrom"),
        Some("bounce@shop.example")
    );
}

#[test]
fn aligned_dkim_with_identity_and_failed_dmarc_policy_record() {
    // header.i (quoted when it needs to be) instead of header.d; DMARC none.
    let sig = signature("mail.shop.example", "@mail.shop.example");
    let header = AuthenticationResults::new(OUR_MX)
        .with_dkim_results(&[DkimOutput::pass().with_signature(&sig)], "shop.example")
        .with_spf_ehlo_result(
            &SpfOutput::new("x".into()).with_result(SpfResult::SoftFail),
            IP,
            "mail.shop.example",
        )
        .with_dmarc_result(&DmarcOutput::new("shop.example".into()))
        .to_header();
    let m = message_with(&header, "no-reply@shop.example");
    assert!(
        m.authentication.authenticated,
        "{header} → {:?}",
        m.authentication
    );
    assert_eq!(
        m.authentication.dkim[0].domain.as_deref(),
        Some("mail.shop.example")
    );
}

#[test]
fn failures_as_mail_auth_writes_them() {
    let good = signature("attacker.example", "");
    let bad = signature("shop.example", "");
    let header = AuthenticationResults::new(OUR_MX)
        .with_dkim_results(
            &[
                // A valid signature of another domain, and a broken one of the From: domain.
                DkimOutput::pass().with_signature(&good),
                DkimOutput::fail(Error::NotAligned).with_signature(&bad),
            ],
            "shop.example",
        )
        .with_spf_mailfrom_result(
            &SpfOutput::new("attacker.example".into()).with_result(SpfResult::Fail),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "x@attacker.example",
            "attacker.example",
        )
        .with_dmarc_result(
            &DmarcOutput::new("shop.example".into())
                .with_dkim_result(DmarcResult::Fail(Error::NotAligned))
                .with_spf_result(DmarcResult::Fail(Error::NotAligned)),
        )
        .to_header();
    let m = message_with(&header, "Shop <no-reply@shop.example>");
    let a = &m.authentication;
    assert!(!a.authenticated, "{header} → {a:?}");
    assert_eq!(a.dmarc.as_deref(), Some("fail"));
    assert_eq!(a.spf.as_deref(), Some("fail"));
    let results: Vec<&str> = a.dkim.iter().map(|d| d.result.as_str()).collect();
    assert_eq!(results, ["pass", "fail"]);
}

#[test]
fn the_same_header_under_another_hostname_is_ignored() {
    let sig = signature("shop.example", "");
    let header = AuthenticationResults::new("mx.elsewhere.example")
        .with_dkim_results(&[DkimOutput::pass().with_signature(&sig)], "shop.example")
        .with_dmarc_result(
            &DmarcOutput::new("shop.example".into()).with_dkim_result(DmarcResult::Pass),
        )
        .to_header();
    let m = message_with(&header, "no-reply@shop.example");
    assert!(!m.authentication.verdicts_present);
    assert!(!m.authentication.authenticated);
}

#[test]
fn none_as_mail_auth_writes_it() {
    let header = AuthenticationResults::new(OUR_MX).to_header();
    assert!(header.contains("; none"), "{header}");
    let m = message_with(&header, "no-reply@shop.example");
    assert!(m.authentication.verdicts_present);
    assert!(m.authentication.results.is_empty());
    assert!(!m.authentication.authenticated);
}
