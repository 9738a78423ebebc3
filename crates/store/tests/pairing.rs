//! `SqliteStore`'s pairing requests (migration 0006): compare-and-set
//! transitions, the agent and key written with their audit records, pruning.
#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::{AgentId, KeyHash, KeyId, OwnerId, UnixTime};
use agentkeys_store::{
    AgentRecord, KeyRecord, OwnerRecord, PairingRecord, PairingStatus, SqliteStore, StoreError,
};

const NOW: UnixTime = 1_700_000_000;

fn owner(n: u8) -> OwnerId {
    format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
}

fn agent() -> AgentId {
    format!("0x{}", "a7".repeat(20)).parse().unwrap()
}

fn event(op: &str) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, op, "test")
}

fn request(hash: u8, opened_at: UnixTime) -> PairingRecord {
    PairingRecord {
        code_hash: [hash; 32],
        device_key: [7; 32],
        agent: agent(),
        name: Some("bot".to_owned()),
        opened_at,
        status: PairingStatus::Pending,
        owner: None,
        approved_at: None,
        addressed_to: None,
    }
}

fn key(n: u8) -> KeyRecord {
    KeyRecord {
        id: format!("key_{}", "k".repeat(15) + &n.to_string()).parse::<KeyId>().unwrap(),
        agent: agent(),
        hash: KeyHash([n; 32]),
        created_at: NOW,
        expires_at: NOW + 86_400,
        revoked_at: None,
    }
}

#[tokio::test]
async fn transitions_are_compare_and_set_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    for n in [1, 2] {
        store.add_owner(&OwnerRecord { id: owner(n), email: None, created_at: NOW }, &event("owner.create")).await.unwrap();
    }
    store.open_pairing(&request(1, NOW), NOW - 86_400, &event("pairing.open")).await.unwrap();
    assert!(matches!(store.open_pairing(&request(1, NOW), NOW - 86_400, &event("pairing.open")).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.pairing(&[1; 32]).await.unwrap().unwrap(), request(1, NOW));
    assert!(store.pairing(&[9; 32]).await.unwrap().is_none());

    // Collect before approval: nothing to collect.
    assert!(matches!(store.collect_pairing(&[1; 32], &key(1), NOW, &event("pairing.collect")).await, Err(StoreError::NotFound { .. })));

    let rec = |o: u8| AgentRecord { id: agent(), owner: owner(o), name: Some("bot".to_owned()), created_at: NOW };
    store.approve_pairing(&[1; 32], &rec(1), NOW + 5, &event("pairing.approve")).await.unwrap();
    // The second approval (any owner) loses.
    for o in [1, 2] {
        let lost = store.approve_pairing(&[1; 32], &rec(o), NOW + 6, &event("pairing.approve")).await;
        assert!(matches!(lost, Err(StoreError::NotFound { .. })), "{lost:?}");
    }
    let stored = store.pairing(&[1; 32]).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.owner, stored.approved_at), (PairingStatus::Approved, Some(owner(1)), Some(NOW + 5)));
    assert_eq!(store.get_agent(&agent()).await.unwrap().unwrap().owner, owner(1));

    store.collect_pairing(&[1; 32], &key(1), NOW + 7, &event("pairing.collect")).await.unwrap();
    assert!(matches!(store.collect_pairing(&[1; 32], &key(2), NOW + 8, &event("pairing.collect")).await, Err(StoreError::NotFound { .. })));
    assert_eq!(store.list_keys(&agent()).await.unwrap().len(), 1);
    assert_eq!(store.pairing(&[1; 32]).await.unwrap().unwrap().status, PairingStatus::Consumed);

    // The same device paired again by its owner keeps the agent; by another owner: Conflict.
    store.open_pairing(&request(2, NOW + 10), NOW - 86_400, &event("pairing.open")).await.unwrap();
    store.approve_pairing(&[2; 32], &rec(1), NOW + 11, &event("pairing.approve")).await.unwrap();
    store.open_pairing(&request(3, NOW + 10), NOW - 86_400, &event("pairing.open")).await.unwrap();
    let taken = store.approve_pairing(&[3; 32], &rec(2), NOW + 11, &event("pairing.approve")).await;
    assert!(matches!(taken, Err(StoreError::Conflict { .. })), "{taken:?}");
    assert_eq!(store.pairing(&[3; 32]).await.unwrap().unwrap().status, PairingStatus::Pending, "rolled back");

    let ops: Vec<String> = store.audit_all().await.unwrap().into_iter().map(|r| r.operation).collect();
    assert_eq!(ops.iter().filter(|o| *o == "pairing.approve").count(), 2);
    assert_eq!(ops.iter().filter(|o| *o == "pairing.collect").count(), 1);

    // Opening prunes requests opened before the cut-off.
    store.open_pairing(&request(4, NOW + 100_000), NOW + 1_000, &event("pairing.open")).await.unwrap();
    assert!(store.pairing(&[1; 32]).await.unwrap().is_none());
    assert!(store.pairing(&[4; 32]).await.unwrap().is_some());
}
