//! Server-side verification of signed owner requests: every refusal, in order.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;

use agentkeys_approval::signed_request::{MAX_HEADER_LEN, canonical_string};
use agentkeys_approval::{
    ApprovalError, HeaderError, MAX_CLOCK_SKEW, MasterKey, MemoryReplayGuard, Nonce, OwnerSignature,
    PublicKey, Replay, ReplayGuard, sign_request, verify_request,
};
use agentkeys_core::{NonceRecord, OwnerId, UnixTime};

const NOW: UnixTime = 1_767_225_600;
const PATH: &str = "/v1/agents?limit=10";
const BODY: &[u8] = b"{\"x\":1}";

fn owner() -> OwnerId {
    "0x00000000000000000000000000000000000000aa".parse().unwrap()
}

fn key() -> MasterKey {
    MasterKey::from_seed(&[7; 32])
}

fn nonce(n: u8) -> Nonce {
    format!("nonce-{n:0>16}").parse().unwrap()
}

fn header_at(ts: UnixTime, n: u8) -> String {
    sign_request(&key(), &owner(), "POST", PATH, BODY, ts, &nonce(n)).unwrap().header_value()
}

fn lookup(id: &OwnerId) -> Option<PublicKey> {
    (id == &owner()).then(|| key().public_key())
}

/// Runs verification of the standard request with `header` at `now`.
fn verify(header: &str, now: UnixTime, guard: &MemoryReplayGuard) -> Result<OwnerId, ApprovalError> {
    verify_request(header, "POST", PATH, BODY, now, lookup, guard).map(|v| v.owner().clone())
}

#[test]
fn a_valid_request_verifies_once() {
    let guard = MemoryReplayGuard::new();
    let header = header_at(NOW, 1);
    let verified = verify_request(&header, "POST", PATH, BODY, NOW, lookup, &guard).unwrap();
    assert_eq!(verified.owner(), &owner());
    assert_eq!(verified.timestamp(), NOW);
    assert_eq!(verified.nonce(), &nonce(1));
    assert_eq!(verify(&header, NOW + 1, &guard), Err(ApprovalError::Replayed));
    assert_eq!(ApprovalError::Replayed.code(), "REPLAYED_NONCE");
}

#[test]
fn timestamp_window_is_inclusive_at_the_skew_in_both_directions() {
    assert_eq!(MAX_CLOCK_SKEW, 60);
    let guard = MemoryReplayGuard::new();
    // Signed 60 s ago / 60 s ahead: accepted.
    assert!(verify(&header_at(NOW - MAX_CLOCK_SKEW, 1), NOW, &guard).is_ok());
    assert!(verify(&header_at(NOW + MAX_CLOCK_SKEW, 2), NOW, &guard).is_ok());
    // 61 s: refused, both directions.
    for ts in [NOW - MAX_CLOCK_SKEW - 1, NOW + MAX_CLOCK_SKEW + 1] {
        let err = verify(&header_at(ts, 3), NOW, &guard).unwrap_err();
        assert_eq!(err, ApprovalError::StaleTimestamp { ts, now: NOW });
        assert_eq!(err.code(), "STALE_TIMESTAMP");
    }
    // Extreme values do not overflow.
    let far = sign_request(&key(), &owner(), "POST", PATH, BODY, 999_999_999_999, &nonce(4)).unwrap();
    assert_eq!(verify(&far.header_value(), i64::MIN, &guard).unwrap_err().code(), "STALE_TIMESTAMP");
}

#[test]
fn unknown_owner() {
    let guard = MemoryReplayGuard::new();
    let header = header_at(NOW, 1);
    let err = verify_request(&header, "POST", PATH, BODY, NOW, |_| None, &guard).unwrap_err();
    assert_eq!((err.clone(), err.code()), (ApprovalError::UnknownOwner, "UNKNOWN_OWNER"));
    assert!(guard.is_empty());
}

#[test]
fn signature_by_another_key_or_over_another_request_is_refused() {
    let guard = MemoryReplayGuard::new();
    let header = header_at(NOW, 1);
    let other_key = MasterKey::from_seed(&[8; 32]).public_key();
    let err = verify_request(&header, "POST", PATH, BODY, NOW, |_| Some(other_key), &guard).unwrap_err();
    assert_eq!((err.clone(), err.code()), (ApprovalError::BadSignature, "BAD_SIGNATURE"));
    for (method, path, body) in [
        ("PUT", PATH, BODY),
        ("POST", "/v1/agents?limit=11", BODY),
        ("POST", "/v1/agents", BODY),
        ("POST", PATH, b"{\"x\":2}".as_slice()),
        ("POST", PATH, b"".as_slice()),
    ] {
        let err = verify_request(&header, method, path, body, NOW, lookup, &guard).unwrap_err();
        assert_eq!(err, ApprovalError::BadSignature, "{method} {path}");
    }
    // An owner id swapped in the header: the signature covers the owner id.
    let other_owner: OwnerId = "0x00000000000000000000000000000000000000bb".parse().unwrap();
    let swapped = header.replace(owner().as_str(), other_owner.as_str());
    let err = verify_request(&swapped, "POST", PATH, BODY, NOW, |_| Some(key().public_key()), &guard);
    assert_eq!(err.unwrap_err(), ApprovalError::BadSignature);
    // A different timestamp or nonce in the header, same signature.
    let sig = OwnerSignature::parse(&header).unwrap();
    let tampered = header.replace(&format!("ts={NOW}"), &format!("ts={}", NOW + 1));
    assert_eq!(verify(&tampered, NOW, &guard), Err(ApprovalError::BadSignature));
    let tampered = header.replace(sig.nonce().as_str(), nonce(2).as_str());
    assert_eq!(verify(&tampered, NOW, &guard), Err(ApprovalError::BadSignature));
    assert!(guard.is_empty(), "nothing was recorded");
}

#[test]
fn a_forged_request_does_not_burn_the_nonce() {
    let guard = MemoryReplayGuard::new();
    let forged = sign_request(&MasterKey::from_seed(&[9; 32]), &owner(), "POST", PATH, BODY, NOW, &nonce(1))
        .unwrap()
        .header_value();
    assert_eq!(verify(&forged, NOW, &guard), Err(ApprovalError::BadSignature));
    assert!(guard.is_empty());
    // The real owner's request with the same nonce still goes through.
    assert_eq!(verify(&header_at(NOW, 1), NOW, &guard), Ok(owner()));
}

/// Records which checks ran.
struct Spy {
    calls: Cell<u32>,
    answer: Result<(), Replay>,
}

impl ReplayGuard for Spy {
    fn check_and_record(&self, owner: &OwnerId, nonce: &Nonce, _: UnixTime, _: UnixTime) -> Result<NonceRecord, Replay> {
        self.calls.set(self.calls.get() + 1);
        self.answer.clone().map(|()| NonceRecord::first_use(owner, nonce.as_str()))
    }
}

#[test]
fn checks_run_in_the_documented_order() {
    let spy = Spy { calls: Cell::new(0), answer: Ok(()) };
    let looked_up = Cell::new(false);
    let spy_lookup = |id: &OwnerId| {
        looked_up.set(true);
        lookup(id)
    };
    // Stale: neither the key lookup nor the guard runs.
    let stale = header_at(NOW - 61, 1);
    assert!(verify_request(&stale, "POST", PATH, BODY, NOW, spy_lookup, &spy).is_err());
    assert!(!looked_up.get());
    assert_eq!(spy.calls.get(), 0);
    // Malformed header: nothing runs.
    assert!(verify_request("Bearer x", "POST", PATH, BODY, NOW, |_| unreachable!(), &spy).is_err());
    // Bad signature: the lookup runs, the guard does not.
    let err = verify_request(&header_at(NOW, 1), "GET", PATH, BODY, NOW, spy_lookup, &spy).unwrap_err();
    assert_eq!(err, ApprovalError::BadSignature);
    assert!(looked_up.get());
    assert_eq!(spy.calls.get(), 0);
    // Valid: the guard runs once.
    assert!(verify_request(&header_at(NOW, 1), "POST", PATH, BODY, NOW, lookup, &spy).is_ok());
    assert_eq!(spy.calls.get(), 1);
    // A guard that cannot decide fails closed.
    let down = Spy { calls: Cell::new(0), answer: Err(Replay::Unavailable { reason: "db down".into() }) };
    let err = verify_request(&header_at(NOW, 2), "POST", PATH, BODY, NOW, lookup, &down).unwrap_err();
    assert_eq!(err.code(), "REPLAY_GUARD_UNAVAILABLE");
}

#[test]
fn header_parsing_is_strict() {
    let good = header_at(NOW, 1);
    assert!(OwnerSignature::parse(&good).is_ok());
    let sig_b64 = good.rsplit_once("sig=").unwrap().1.to_owned();
    let o = owner();
    let n = nonce(1);
    let cases: Vec<(String, HeaderError)> = vec![
        (good.replacen("AgentKeys-Owner", "agentkeys-owner", 1), HeaderError::Scheme),
        (good.replacen("AgentKeys-Owner ", "AgentKeys-Owner  ", 1), HeaderError::Syntax { detail: "" }),
        (format!("Bearer {sig_b64}"), HeaderError::Scheme),
        (String::new(), HeaderError::Scheme),
        (good.replace(", ", ","), HeaderError::Syntax { detail: "" }),
        (good.replace(", ", " , "), HeaderError::Param { name: "owner", detail: "" }),
        (format!("{good}, extra=1"), HeaderError::Syntax { detail: "" }),
        (
            format!("AgentKeys-Owner ts={NOW}, owner={o}, nonce={n}, sig={sig_b64}"),
            HeaderError::Syntax { detail: "" },
        ),
        (
            good.replace("owner=", "owner=\"").replace(", ts", "\", ts"),
            HeaderError::Param { name: "owner", detail: "" },
        ),
        (good.replace(o.as_str(), "0x1234"), HeaderError::Param { name: "owner", detail: "" }),
        (
            good.replace(&format!("ts={NOW}"), &format!("ts=0{NOW}")),
            HeaderError::Param { name: "ts", detail: "" },
        ),
        (
            good.replace(&format!("ts={NOW}"), &format!("ts=+{NOW}")),
            HeaderError::Param { name: "ts", detail: "" },
        ),
        (good.replace(&format!("ts={NOW}"), "ts=-5"), HeaderError::Param { name: "ts", detail: "" }),
        (good.replace(&format!("ts={NOW}"), "ts="), HeaderError::Param { name: "ts", detail: "" }),
        (
            good.replace(&format!("ts={NOW}"), "ts=1234567890123"),
            HeaderError::Param { name: "ts", detail: "" },
        ),
        (good.replace(n.as_str(), "short"), HeaderError::Param { name: "nonce", detail: "" }),
        (good.replace(n.as_str(), "has space in it 123"), HeaderError::Param { name: "nonce", detail: "" }),
        (good.replace(n.as_str(), "has.dot.in.it.123456"), HeaderError::Param { name: "nonce", detail: "" }),
        (good.replace(&sig_b64, &sig_b64[1..]), HeaderError::Param { name: "sig", detail: "" }),
        (good.replace(&sig_b64, &format!("{sig_b64}==")), HeaderError::Param { name: "sig", detail: "" }),
        (
            good.replace(&sig_b64, &format!("+{}", &sig_b64[1..])),
            HeaderError::Param { name: "sig", detail: "" },
        ),
        (format!("{good}{}", "A".repeat(MAX_HEADER_LEN)), HeaderError::TooLong),
    ];
    for (header, expected) in cases {
        let err = OwnerSignature::parse(&header).unwrap_err();
        let same_kind = match (&err, &expected) {
            (HeaderError::Syntax { .. }, HeaderError::Syntax { .. }) => true,
            (HeaderError::Param { name: a, .. }, HeaderError::Param { name: b, .. }) => a == b,
            (a, b) => a == b,
        };
        assert!(same_kind, "{header:?}: got {err:?}, expected {expected:?}");
        let via_verify = verify(&header, NOW, &MemoryReplayGuard::new()).unwrap_err();
        assert_eq!(via_verify.code(), "BAD_AUTH_HEADER");
    }
}

#[test]
fn signature_malleability_is_refused() {
    // Adding the group order L to S gives a non-canonical signature that lax verifiers accept.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let sig = sign_request(&key(), &owner(), "POST", PATH, BODY, NOW, &nonce(1)).unwrap();
    let mut bytes = sig.signature().to_bytes();
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(bytes[32 + i]) + u16::from(L[i]) + carry;
        bytes[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = sig.header_value().replace(&b64.encode(sig.signature().to_bytes()), &b64.encode(bytes));
    assert_ne!(header, sig.header_value());
    let err = verify(&header, NOW, &MemoryReplayGuard::new()).unwrap_err();
    assert_eq!(err, ApprovalError::BadSignature);
}

#[test]
fn canonical_string_refuses_ambiguous_input() {
    let n = nonce(1);
    for (method, path) in [
        ("post", "/x"),
        ("", "/x"),
        ("POST\n", "/x"),
        ("VERYVERYLONGMETHOD", "/x"),
        ("POST", "x"),
        ("POST", "/a b"),
        ("POST", "/a\nb"),
        ("POST", "/\u{e9}"),
    ] {
        let err = canonical_string(method, path, b"", NOW, &n, &owner()).unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST", "{method:?} {path:?}");
    }
    let long = format!("/{}", "a".repeat(2047));
    assert!(canonical_string("GET", &long, b"", NOW, &n, &owner()).is_ok());
    assert!(canonical_string("GET", &format!("{long}a"), b"", NOW, &n, &owner()).is_err());
    assert!(canonical_string("GET", "/", b"", -1, &n, &owner()).is_err());
    // A server handed an unsignable method refuses rather than verifying something else.
    let err = verify_request(&header_at(NOW, 1), "post", PATH, BODY, NOW, lookup, &MemoryReplayGuard::new());
    assert_eq!(err.unwrap_err().code(), "INVALID_REQUEST");
}

#[test]
fn generated_nonces_are_valid_and_distinct() {
    let mut rng = rand::rngs::OsRng;
    let a = Nonce::generate(&mut rng);
    let b = Nonce::generate(&mut rng);
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), 22);
    assert_eq!(a.as_str().parse::<Nonce>().unwrap(), a);
}

#[test]
fn split_verification_for_async_replay_stores() {
    let sig = OwnerSignature::parse(&header_at(NOW, 1)).unwrap();
    let checked = sig.verify_signature("POST", PATH, BODY, NOW, lookup).unwrap();
    assert_eq!((checked.owner(), checked.timestamp(), checked.nonce()), (&owner(), NOW, &nonce(1)));
    assert_eq!(checked.finish(Err(Replay::Seen)).unwrap_err(), ApprovalError::Replayed);
    // Only the record of this request's nonce completes it (the nonce store's
    // answer, never a bare "ok").
    let checked = sig.verify_signature("POST", PATH, BODY, NOW, lookup).unwrap();
    let other_nonce = NonceRecord::first_use(&owner(), nonce(2).as_str());
    assert_eq!(checked.finish(Ok(other_nonce)).unwrap_err().code(), "REPLAY_GUARD_UNAVAILABLE");
    let checked = sig.verify_signature("POST", PATH, BODY, NOW, lookup).unwrap();
    let other_owner: OwnerId = "0xb2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2".parse().unwrap();
    assert!(checked.finish(Ok(NonceRecord::first_use(&other_owner, nonce(1).as_str()))).is_err());
    let checked = sig.verify_signature("POST", PATH, BODY, NOW, lookup).unwrap();
    let record = NonceRecord::first_use(&owner(), nonce(1).as_str());
    assert_eq!(checked.finish(Ok(record)).unwrap().owner(), &owner());
    // The signature is checked before any store is involved.
    assert_eq!(
        sig.verify_signature("GET", PATH, BODY, NOW, lookup).unwrap_err(),
        ApprovalError::BadSignature
    );
}
