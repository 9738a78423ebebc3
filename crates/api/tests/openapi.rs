//! The request patterns the OpenAPI document publishes agree with the parsers
//! the handlers use: every generated string that matches a documented pattern
//! is accepted by the parser of that field, so a schema-valid body is never
//! refused for its format (issue 15, item 12). Patterns may be narrower than
//! the parser; never wider.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use agentkeys_approval::codes::{ConfirmationCode, EnrollmentCode};
use agentkeys_core::{Address, AgentId, InboxPattern};
use rand::{Rng, SeedableRng};
use regex_automata::meta::Regex;
use serde_json::Value;
use utoipa::OpenApi as _;

fn document() -> Value {
    serde_json::to_value(agentkeys_api::openapi::ApiDoc::openapi()).unwrap()
}

/// The `pattern` of `schema`'s property `field`.
fn pattern(doc: &Value, schema: &str, field: &str) -> Regex {
    let p = doc["components"]["schemas"][schema]["properties"][field]["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{schema}.{field} has no pattern"));
    Regex::new(p).unwrap()
}

/// One character of `set`, or now and then one the grammar refuses.
fn pick(rng: &mut impl Rng, set: &[u8]) -> char {
    const ODD: &[u8] = b"+*@ _.!";
    let from = if rng.gen_bool(0.02) { ODD } else { set };
    from[rng.gen_range(0..from.len())] as char
}

/// A string shaped like `local@label.label…`, mostly of the grammar's
/// characters and lengths, sometimes over a length limit or with a character
/// it refuses, so both sides of every rule come up.
fn address_like(rng: &mut impl Rng) -> String {
    let local_len = if rng.gen_bool(0.1) { rng.gen_range(60..70) } else { rng.gen_range(0..12) };
    let mut s: String = (0..local_len).map(|_| pick(rng, b"abcXYZ019._-")).collect();
    if rng.gen_bool(0.3) {
        s.push('*');
    }
    if rng.gen_bool(0.9) {
        s.push('@');
    }
    for i in 0..rng.gen_range(1..5) {
        if i > 0 {
            s.push('.');
        }
        let len = if rng.gen_bool(0.1) { rng.gen_range(60..70) } else { rng.gen_range(0..12) };
        s.extend((0..len).map(|_| pick(rng, b"abzAZ09-")));
    }
    if rng.gen_bool(0.05) {
        s.push('.');
    }
    s
}

fn check<T: FromStr>(regex: &Regex, what: &str, candidates: impl Iterator<Item = String>) -> usize {
    let mut matched = 0;
    for c in candidates {
        if regex.is_match(&c) {
            matched += 1;
            assert!(T::from_str(&c).is_ok(), "{what}: {c:?} matches the documented pattern but is refused");
        }
    }
    matched
}

#[test]
fn documented_patterns_are_accepted_by_the_parsers() {
    let doc = document();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let addresses: Vec<String> = (0..50_000).map(|_| address_like(&mut rng)).collect();
    for schema in ["ReadCredentialRequest", "OidcCredentialRequest"] {
        let n = check::<Address>(&pattern(&doc, schema, "inbox"), schema, addresses.iter().cloned());
        assert!(n > 1_000, "{schema}: only {n} generated addresses matched");
    }
    let n = check::<Address>(&pattern(&doc, "CreateInboxRequest", "address"), "new inbox", addresses.iter().cloned());
    assert!(n > 1_000, "new inbox: only {n} generated addresses matched");
    let n = check::<InboxPattern>(&pattern(&doc, "CreateGrantRequest", "inbox"), "grant inbox", addresses.iter().cloned());
    assert!(n > 1_000, "grant inbox: {n}");

    let hex = |rng: &mut rand::rngs::StdRng, len: usize| -> String { (0..len).map(|_| pick(rng, b"0123456789abcdefABCDEF")).collect() };
    let wallets: Vec<String> = (0..5_000)
        .map(|_| {
            let (prefix, len) = (["0x", "0X", "x0", ""][rng.gen_range(0..4)], rng.gen_range(38..42));
            format!("{prefix}{}", hex(&mut rng, len))
        })
        .collect();
    assert!(check::<AgentId>(&pattern(&doc, "CreateGrantRequest", "agent"), "agent", wallets.into_iter()) > 100);

    // Crockford base32 (no i, l, o, u) plus those four, in both cases.
    const CROCKFORD: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyzABCDEFGHJKMNPQRSTVWXYZilouILOU";
    let codes: Vec<String> = (0..5_000)
        .map(|_| {
            let len = rng.gen_range(25..28);
            let body: String = (0..len).map(|_| pick(&mut rng, CROCKFORD)).collect();
            format!("{}{body}", ["enr_", "ENR_", "Enr_", "enr-"][rng.gen_range(0..4)])
        })
        .collect();
    assert!(check::<EnrollmentCode>(&pattern(&doc, "EnrollRequest", "code"), "enrollment code", codes.into_iter()) > 0);

    let digits: Vec<String> =
        (0..2_000).map(|_| (0..rng.gen_range(5..8)).map(|_| b"0123456789a"[rng.gen_range(0..11)] as char).collect()).collect();
    let confirmation = pattern(&doc, "ApprovePairingRequest", "confirmation_code");
    assert!(check::<ConfirmationCode>(&confirmation, "confirmation code", digits.into_iter()) > 100);
}

/// The base64 patterns: everything they match decodes, strictly, to the length
/// the field needs (a public key is then also checked to be an Ed25519 point,
/// which no pattern can say: that refusal is a documented 400).
#[test]
fn base64_patterns_match_exactly_the_canonical_encodings_of_their_length() {
    use base64::Engine as _;
    let doc = document();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    for (schema, field, len) in [
        ("EnrollRequest", "public_key", 32),
        ("OpenPairingRequest", "device_public_key", 32),
        ("CollectPairingRequest", "signature", 64),
    ] {
        let regex = pattern(&doc, schema, field);
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            let good = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert!(regex.is_match(&good), "{schema}.{field}: {good}");
            // One character changed: matches only if it still decodes to `len` bytes.
            let mut bad = good.clone().into_bytes();
            let i = rng.gen_range(0..bad.len());
            bad[i] = b"AZaz09+/=-_ "[rng.gen_range(0..12)];
            let bad = String::from_utf8(bad).unwrap();
            let decodes = base64::engine::general_purpose::STANDARD.decode(&bad).is_ok_and(|b| b.len() == len);
            assert_eq!(regex.is_match(&bad), decodes, "{schema}.{field}: {bad}");
        }
    }
}
