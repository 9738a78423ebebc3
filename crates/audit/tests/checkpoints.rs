//! Chained checkpoints against generated tamperings (issue 15 item 4): starting
//! from an honest log whose latest checkpoint covers the head, every deletion,
//! reordering or alteration of a record or a checkpoint, with or without the
//! chain recomputed afterwards, makes verification fail. The signature is a
//! keyed hash here (the attacker does not hold the key); Ed25519 is tested
//! through the real binary in `crates/cli/tests/audit_cli.rs`.
#![allow(clippy::unwrap_used)]

use agentkeys_audit::{
    Actor, AuditEvent, AuditRecord, ChainHead, ChainedCheckpoint, Checkpoint, CheckpointFault, CheckpointRules,
    Hash, Outcome, SealedRecord, SignedCheckpoint, verify, verify_checkpoints,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const KEY: &[u8] = b"test checkpoint key";
const T0: i64 = 1_700_000_000;
const MAX_AGE: i64 = 360;

fn sign(bytes: &[u8]) -> Vec<u8> {
    Sha256::new().chain_update(KEY).chain_update(bytes).finalize().to_vec()
}

fn signature_ok(bytes: &[u8], sig: &[u8]) -> bool {
    sign(bytes) == sig
}

/// Record `i` (from 0): alternating outcomes so a rewrite has something to flip.
fn event(i: usize) -> AuditEvent {
    let e = AuditEvent::ok(Actor::Operator, "key.create", format!("key_{i:016}"));
    if i % 3 == 2 { e.with_outcome(Outcome::Denied) } else { e }
}

/// Seals `events` from genesis at the given times.
fn seal_all(events: &[AuditEvent], times: &[i64]) -> Vec<AuditRecord> {
    let mut head = ChainHead::GENESIS;
    let mut out = Vec::new();
    for (e, ts) in events.iter().zip(times) {
        let r = SealedRecord::seal(&head, *ts, e).unwrap().record().clone();
        head = r.head();
        out.push(r);
    }
    out
}

/// An honest log: `n` records, checkpoints after the records in `cuts` (and
/// always one at the head), the first `v1` of them in the old format.
#[derive(Debug, Clone)]
struct Log {
    records: Vec<AuditRecord>,
    checkpoints: Vec<SignedCheckpoint>,
    start: Option<SignedCheckpoint>,
}

fn honest(n: usize, cuts: &[usize], v1: usize) -> Log {
    let events: Vec<AuditEvent> = (0..n).map(event).collect();
    let times: Vec<i64> = (0..n).map(|i| T0 + 60 * i as i64).collect();
    let records = seal_all(&events, &times);
    let mut at: Vec<usize> = cuts.iter().map(|c| c % n + 1).chain([n]).collect();
    at.sort_unstable();
    at.dedup();
    let mut checkpoints = Vec::new();
    let mut prev: Option<ChainedCheckpoint> = None;
    let mut start = None;
    for (k, seq) in at.iter().enumerate() {
        let r = &records[seq - 1];
        let ts = r.ts + 30;
        if k < v1 && k + 1 < at.len() {
            let checkpoint = Checkpoint { head: r.head(), ts };
            checkpoints.push(SignedCheckpoint::V1 { signature: sign(&checkpoint.signing_bytes()), checkpoint });
            continue;
        }
        let checkpoint = match prev {
            None => ChainedCheckpoint::first(r.head(), ts),
            Some(p) => p.next(r.head(), ts).unwrap(),
        };
        let signed = SignedCheckpoint::V2 { signature: sign(&checkpoint.signing_bytes()), checkpoint };
        if prev.is_none() {
            start = Some(signed.clone());
        }
        prev = Some(checkpoint);
        checkpoints.push(signed);
    }
    Log { records, checkpoints, start }
}

/// What `agentkeys audit verify` decides, without I/O: the chain, then the checkpoints.
fn check(log: &Log, now: i64) -> Result<(), String> {
    let chain = verify(&log.records).map_err(|b| b.to_string())?;
    let record_at = |seq: u64| {
        let r = log.records.get(usize::try_from(seq).ok()?.checked_sub(1)?)?;
        Some((r.hash, r.ts))
    };
    let head = ChainHead { seq: chain.head_seq, hash: chain.head_hash };
    verify_checkpoints(&log.checkpoints, log.start.as_ref(), head, record_at, signature_ok, CheckpointRules { now, max_age: MAX_AGE })
        .map(|_| ())
        .map_err(|p| p.to_string())
}

/// Recomputes every hash, as an attacker with sqlite3 does after an edit.
fn recompute(records: &mut [AuditRecord]) {
    let events: Vec<AuditEvent> = records.iter().map(AuditRecord::event).collect();
    let times: Vec<i64> = records.iter().map(|r| r.ts).collect();
    let fresh = seal_all(&events, &times);
    records.clone_from_slice(&fresh);
}

#[derive(Debug, Clone)]
enum Tamper {
    DeleteCheckpoint(usize),
    DeleteAllCheckpoints,
    DeleteAllCheckpointsAndStart,
    SwapCheckpoints(usize, usize),
    AlterCheckpoint(usize, u8),
    AlterRecord(usize, bool),
    DeleteRecord(usize, bool),
    SwapRecords(usize, usize, bool),
    Truncate(usize),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        any::<usize>().prop_map(Tamper::DeleteCheckpoint),
        Just(Tamper::DeleteAllCheckpoints),
        Just(Tamper::DeleteAllCheckpointsAndStart),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Tamper::SwapCheckpoints(a, b)),
        (any::<usize>(), 0u8..6).prop_map(|(a, f)| Tamper::AlterCheckpoint(a, f)),
        (any::<usize>(), any::<bool>()).prop_map(|(a, r)| Tamper::AlterRecord(a, r)),
        (any::<usize>(), any::<bool>()).prop_map(|(a, r)| Tamper::DeleteRecord(a, r)),
        (any::<usize>(), any::<usize>(), any::<bool>()).prop_map(|(a, b, r)| Tamper::SwapRecords(a, b, r)),
        any::<usize>().prop_map(Tamper::Truncate),
    ]
}

/// Applies `t`; `false` when it changes nothing (for example swapping a
/// checkpoint with itself), so there is nothing to detect.
fn apply(log: &mut Log, t: &Tamper) -> bool {
    let nc = log.checkpoints.len();
    let nr = log.records.len();
    match *t {
        Tamper::DeleteCheckpoint(i) => {
            // Format v1 checkpoints (written before the chain existed) are not
            // linked to each other, so deleting one of them is not detectable:
            // only chained ones are candidates.
            let chained: Vec<usize> = (0..nc).filter(|k| log.checkpoints[*k].counter().is_some()).collect();
            log.checkpoints.remove(chained[i % chained.len()]);
        }
        Tamper::DeleteAllCheckpoints => log.checkpoints.clear(),
        Tamper::DeleteAllCheckpointsAndStart => {
            log.checkpoints.clear();
            log.start = None;
        }
        Tamper::SwapCheckpoints(a, b) => {
            if a % nc == b % nc {
                return false;
            }
            log.checkpoints.swap(a % nc, b % nc);
        }
        Tamper::AlterCheckpoint(i, field) => {
            let c = &mut log.checkpoints[i % nc];
            match c {
                SignedCheckpoint::V1 { checkpoint, signature } => match field % 3 {
                    0 => checkpoint.head.seq ^= 1,
                    1 => checkpoint.ts += 1,
                    _ => signature[0] ^= 1,
                },
                SignedCheckpoint::V2 { checkpoint, signature } => match field {
                    0 => checkpoint.counter += 1,
                    1 => checkpoint.prev[0] ^= 1,
                    2 => checkpoint.head.seq ^= 1,
                    3 => checkpoint.head.hash[0] ^= 1,
                    4 => checkpoint.ts -= 1,
                    _ => signature[0] ^= 1,
                },
            }
        }
        Tamper::AlterRecord(i, again) => {
            let r = &mut log.records[i % nr];
            r.outcome = if r.outcome == Outcome::Ok { Outcome::Denied } else { Outcome::Ok };
            if again {
                recompute(&mut log.records);
            }
        }
        Tamper::DeleteRecord(i, again) => {
            log.records.remove(i % nr);
            if again {
                for (k, r) in log.records.iter_mut().enumerate() {
                    r.seq = k as u64 + 1;
                }
                recompute(&mut log.records);
            }
        }
        Tamper::SwapRecords(a, b, again) => {
            if a % nr == b % nr {
                return false;
            }
            log.records.swap(a % nr, b % nr);
            if again {
                for (k, r) in log.records.iter_mut().enumerate() {
                    r.seq = k as u64 + 1;
                }
                recompute(&mut log.records);
            }
        }
        Tamper::Truncate(k) => {
            let keep = k % nr;
            log.records.truncate(keep);
        }
    }
    true
}

fn log_strategy() -> impl Strategy<Value = Log> {
    (1usize..24, prop::collection::vec(any::<usize>(), 0..6), 0usize..3).prop_map(|(n, cuts, v1)| honest(n, &cuts, v1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn honest_logs_verify(log in log_strategy()) {
        let last = log.records.last().unwrap().ts;
        // Whenever it is checked: the head is always covered.
        for now in [last, last + MAX_AGE + 1, last + 10 * 86_400] {
            prop_assert_eq!(check(&log, now), Ok(()));
        }
    }

    #[test]
    fn every_tampering_is_caught(log in log_strategy(), t in tamper()) {
        let mut bad = log.clone();
        prop_assume!(apply(&mut bad, &t));
        let now = log.records.last().unwrap().ts + MAX_AGE + 1;
        prop_assert!(check(&bad, now).is_err(), "{:?} went unnoticed", t);
    }
}

/// The attack the issue reports: a refused AUTH rewritten as `ok`, the chain
/// recomputed, every checkpoint (and the recorded start) deleted.
#[test]
fn the_reported_attack_is_an_overdue_tail() {
    let mut log = honest(6, &[1, 3], 0);
    let now = log.records.last().unwrap().ts + MAX_AGE + 1;
    assert_eq!(check(&log, now), Ok(()));
    assert_eq!(log.records[2].outcome, Outcome::Denied);
    log.records[2].outcome = Outcome::Ok;
    recompute(&mut log.records);
    log.checkpoints.clear();
    log.start = None;
    let err = check(&log, now).unwrap_err();
    assert!(err.contains("records 1..=6 are not covered by a signed checkpoint"), "{err}");
    // Keeping the start alone names the deletion, however fresh the records.
    let mut kept = honest(6, &[1, 3], 0);
    kept.checkpoints.clear();
    let fresh = kept.records.last().unwrap().ts;
    let problem = {
        let chain = verify(&kept.records).unwrap();
        let head = ChainHead { seq: chain.head_seq, hash: chain.head_hash };
        let record_at = |seq: u64| kept.records.get(seq as usize - 1).map(|r| (r.hash, r.ts));
        verify_checkpoints(&[], kept.start.as_ref(), head, record_at, signature_ok, CheckpointRules { now: fresh, max_age: MAX_AGE })
            .unwrap_err()
    };
    assert!(matches!(problem.reason, CheckpointFault::StartMissing { .. }), "{problem}");
}

#[test]
fn chained_signing_bytes_layout_and_links() {
    let head = ChainHead { seq: 7, hash: [0xab; 32] };
    let first = ChainedCheckpoint::first(head, 1_700_000_000);
    let b = first.signing_bytes();
    let tag = agentkeys_audit::CHECKPOINT_TAG_V2;
    assert_eq!(&b[..4], &(tag.len() as u32).to_be_bytes());
    assert_eq!(&b[4..4 + tag.len()], tag.as_bytes());
    let rest = &b[4 + tag.len()..];
    assert_eq!(&rest[..8], &1u64.to_be_bytes());
    assert_eq!(&rest[8..40], &[0; 32]);
    assert_eq!(&rest[40..48], &7u64.to_be_bytes());
    assert_eq!(&rest[48..80], &[0xab; 32]);
    assert_eq!(&rest[80..], &1_700_000_000i64.to_be_bytes());
    let second = first.next(ChainHead { seq: 9, hash: [1; 32] }, 1_700_000_100).unwrap();
    assert_eq!((second.counter, second.prev), (2, first.hash()));
    let h: Hash = Sha256::digest(&b).into();
    assert_eq!(first.hash(), h);
    let full = ChainedCheckpoint { counter: u64::MAX, ..first };
    assert_eq!(full.next(head, 0), None);
}
