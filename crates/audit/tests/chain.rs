//! Tampering with a chain in every way the verifier must notice, each named
//! after what an attacker with write access to the database would do.
#![allow(clippy::unwrap_used)]

use agentkeys_audit::{
    Actor, AuditEvent, AuditRecord, Broken, BrokenReason, ChainHead, GENESIS_PREV_HASH, Outcome, SealedRecord,
    Verifier, verify,
};
use serde_json::json;

const OWNER: &str = "0x00000000000000000000000000000000000000aa";
const AGENT: &str = "0x00000000000000000000000000000000000000bb";

/// Five records from genesis, one of each actor kind.
fn chain() -> Vec<AuditRecord> {
    let events = [
        AuditEvent::ok(Actor::Operator, "owner.create", OWNER),
        AuditEvent::ok(Actor::Operator, "agent.create", AGENT).with_detail(json!({ "owner": OWNER })),
        AuditEvent::ok(Actor::Owner(OWNER.parse().unwrap()), "grant.create", "gr_AbCdEfGhIjKlMnOpQrStUv")
            .with_detail(json!({ "scopes": "read,send", "inbox": "*@agents.localhost" })),
        AuditEvent::ok(Actor::Agent(AGENT.parse().unwrap()), "capability.mint", "bot@agents.localhost")
            .with_outcome(Outcome::Denied)
            .with_detail(json!({ "reason": "GRANT_EXPIRED" })),
        AuditEvent::ok(Actor::System, "key.expire", "key_0123456789abcdef"),
    ];
    let mut head = ChainHead::GENESIS;
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let sealed = SealedRecord::seal(&head, 1_700_000_000 + i as i64, e).unwrap();
        head = sealed.record().head();
        out.push(sealed.record().clone());
    }
    out
}

#[track_caller]
fn assert_broken(records: &[AuditRecord], seq: u64, reason: BrokenReason) {
    assert_eq!(verify(records), Err(Broken { seq, reason }));
}

#[test]
fn intact_chain_verifies() {
    let c = chain();
    let v = verify(&c).unwrap();
    assert_eq!((v.count, v.head_seq, v.head_hash), (5, 5, c[4].hash));
    assert_eq!(c[0].prev_hash, GENESIS_PREV_HASH);
    let empty = verify(&[]).unwrap();
    assert_eq!((empty.count, empty.head_seq, empty.head_hash), (0, 0, GENESIS_PREV_HASH));
}

/// One way of changing a stored record.
type Edit = fn(&mut AuditRecord);

#[test]
fn editing_any_hashed_field_breaks_that_record() {
    let edits: [(&str, Edit); 8] = [
        ("ts", |r| r.ts += 1),
        ("actor", |r| r.actor = Actor::System),
        ("operation", |r| r.operation.push('x')),
        ("subject", |r| r.subject = "key_forged00000000".into()),
        ("outcome", |r| r.outcome = Outcome::Ok),
        ("detail value", |r| r.detail = json!({ "reason": "OK" })),
        ("detail key added", |r| r.detail["extra"] = json!(1)),
        ("hash", |r| r.hash[0] ^= 1),
    ];
    for (what, edit) in edits {
        for target in 0..5 {
            let mut c = chain();
            let before = c[target].clone();
            edit(&mut c[target]);
            if c[target] == before {
                continue; // the edit is a no-op on this record (e.g. outcome already ok)
            }
            assert_eq!(
                verify(&c),
                Err(Broken { seq: target as u64 + 1, reason: BrokenReason::HashMismatch }),
                "edit of {what} in record {}",
                target + 1
            );
        }
    }
}

#[test]
fn editing_a_record_and_its_hash_breaks_the_next_link() {
    let mut c = chain();
    c[1].subject = "0x00000000000000000000000000000000000000cc".into();
    c[1].hash = c[1].compute_hash().unwrap();
    assert_broken(&c, 3, BrokenReason::PrevHashMismatch);
}

#[test]
fn editing_prev_hash_breaks_that_record() {
    let mut c = chain();
    c[2].prev_hash[31] ^= 0x80;
    assert_broken(&c, 3, BrokenReason::PrevHashMismatch);
    let mut c = chain();
    c[0].prev_hash = [1; 32];
    assert_broken(&c, 1, BrokenReason::PrevHashMismatch);
}

#[test]
fn deleting_a_record_leaves_a_gap() {
    let mut c = chain();
    c.remove(2);
    assert_broken(&c, 4, BrokenReason::Gap { expected: 3 });
    let mut c = chain();
    c.remove(0);
    assert_broken(&c, 2, BrokenReason::Gap { expected: 1 });
}

#[test]
fn deleting_and_renumbering_breaks_the_link() {
    let mut c = chain();
    c.remove(2);
    for r in &mut c[2..] {
        r.seq -= 1;
    }
    // Record 3 is now the old record 4: its seq changed, so its hash no longer
    // matches, and its prev_hash still names the deleted record.
    assert_broken(&c, 3, BrokenReason::PrevHashMismatch);
}

#[test]
fn reordering_is_out_of_order() {
    let mut c = chain();
    c.swap(1, 3);
    assert_broken(&c, 4, BrokenReason::Gap { expected: 2 });
    let mut c = chain();
    c.swap(3, 4);
    assert_broken(&c, 5, BrokenReason::Gap { expected: 4 });
    let mut c = chain();
    let dup = c[1].clone();
    c.insert(2, dup);
    assert_broken(&c, 2, BrokenReason::OutOfOrder { expected: 3 });
}

#[test]
fn a_float_in_the_detail_is_unreadable_not_a_panic() {
    let mut c = chain();
    c[3].detail = json!({ "ratio": 0.25 });
    let err = verify(&c).unwrap_err();
    assert_eq!(err.seq, 4);
    assert!(matches!(err.reason, BrokenReason::Unreadable(_)), "{err}");
}

#[test]
fn verifier_resumes_from_a_trusted_head() {
    let c = chain();
    let mut v = Verifier::resume(c[1].head());
    for r in &c[2..] {
        v.push(r).unwrap();
    }
    let done = v.finish();
    assert_eq!((done.count, done.head_seq), (3, 5));
    // Resuming from a head the records do not extend is a broken link.
    let mut v = Verifier::resume(ChainHead { seq: 2, hash: [7; 32] });
    assert_eq!(v.push(&c[2]).unwrap_err().reason, BrokenReason::PrevHashMismatch);
}

#[test]
fn broken_names_the_record_and_the_reason() {
    let mut c = chain();
    c.remove(1);
    let text = verify(&c).unwrap_err().to_string();
    assert_eq!(text, "audit record 3 is broken: expected record 2 next; the records before it are missing");
}
