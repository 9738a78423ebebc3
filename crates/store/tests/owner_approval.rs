//! `SqliteStore`'s owner approval tables (migration 0004): enrollment tickets,
//! registered master keys, request nonces, and the owner-scoped grant, key and
//! audit operations.
#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::{AgentId, Grant, GrantId, KeyHash, KeyId, OwnerId, UnixTime};
use agentkeys_store::{
    AgentRecord, EnrollmentTicketRecord, KeyRecord, NonceUse, OwnerRecord, SqliteStore, StoreError,
};

const NOW: UnixTime = 1_700_000_000;
const DAY: i64 = 86_400;

fn owner(n: u8) -> OwnerId {
    format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
}

fn agent(n: u8) -> AgentId {
    format!("0x{}", format!("{:02x}", 0xa0 + n).repeat(20)).parse().unwrap()
}

fn event(op: &str) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, op, "test")
}

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    for n in [1, 2] {
        let rec = OwnerRecord { id: owner(n), email: None, created_at: NOW };
        store.add_owner(&rec, &AuditEvent::ok(Actor::Operator, "owner.create", owner(n).as_str())).await.unwrap();
        let rec = AgentRecord { id: agent(n), owner: owner(n), name: None, created_at: NOW };
        store.add_agent(&rec, &AuditEvent::ok(Actor::Operator, "agent.create", agent(n).as_str())).await.unwrap();
    }
    (dir, store)
}

fn ticket(n: u8, hash: u8) -> EnrollmentTicketRecord {
    EnrollmentTicketRecord { owner: owner(n), code_hash: [hash; 32], expires_at: NOW + DAY, consumed_at: None }
}

#[tokio::test]
async fn enrollment_is_single_use_and_uniform() {
    let (_dir, store) = store().await;
    let unknown = EnrollmentTicketRecord { owner: owner(9), ..ticket(9, 1) };
    assert!(matches!(store.issue_enrollment(&unknown, &event("x")).await, Err(StoreError::NotFound { .. })));
    store.issue_enrollment(&ticket(1, 7), &event("owner.enrollment_issue")).await.unwrap();
    assert_eq!(store.enrollment_ticket(&owner(1)).await.unwrap(), Some(ticket(1, 7)));
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), None);

    let pk = [5u8; 32];
    // Wrong code, expired, unknown owner: the same NotFound, nothing changes.
    for (who, hash, at) in [(1, [8u8; 32], NOW), (1, [7u8; 32], NOW + DAY), (9, [7u8; 32], NOW)] {
        let err = store.redeem_enrollment(&owner(who), &hash, &pk, at, &event("owner.enroll")).await.unwrap_err();
        assert!(matches!(&err, StoreError::NotFound { what } if what == "enrollment code"), "{err}");
    }
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), None);

    store.redeem_enrollment(&owner(1), &[7; 32], &pk, NOW + 1, &event("owner.enroll")).await.unwrap();
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), Some(pk));
    assert_eq!(store.enrollment_ticket(&owner(1)).await.unwrap(), None);
    // Used: the same answer as a wrong code.
    let err = store.redeem_enrollment(&owner(1), &[7; 32], &[6; 32], NOW + 2, &event("owner.enroll")).await;
    assert!(matches!(err, Err(StoreError::NotFound { .. })));
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), Some(pk));

    // A new code replaces the key on redemption (a lost key is re-enrolled).
    store.issue_enrollment(&ticket(1, 9), &event("owner.enrollment_issue")).await.unwrap();
    store.redeem_enrollment(&owner(1), &[9; 32], &[6; 32], NOW + 3, &event("owner.enroll")).await.unwrap();
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), Some([6; 32]));
}

#[tokio::test]
async fn nonces_are_fresh_once_and_pruned() {
    let (dir, store) = store().await;
    let again = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    assert!(store.record_owner_nonce(&owner(1), "nonce-aaaaaaaaaaaa", NOW, NOW - 120).await.unwrap().is_fresh());
    // Another process (a second pool on the same file) sees it.
    assert_eq!(
        again.record_owner_nonce(&owner(1), "nonce-aaaaaaaaaaaa", NOW, NOW - 120).await.unwrap(),
        NonceUse::Replayed
    );
    // Per owner.
    assert!(store.record_owner_nonce(&owner(2), "nonce-aaaaaaaaaaaa", NOW, NOW - 120).await.unwrap().is_fresh());
    // Pruned once outside the window (the timestamp check refuses it by then anyway).
    assert_eq!(
        store.record_owner_nonce(&owner(1), "nonce-aaaaaaaaaaaa", NOW, NOW + 1).await.unwrap(),
        NonceUse::Fresh(agentkeys_core::NonceRecord::first_use(&owner(1), "nonce-aaaaaaaaaaaa"))
    );
}

#[tokio::test]
async fn owner_scoped_revocations_hide_other_owners_objects() {
    let (_dir, store) = store().await;
    let grant = |n: u8| Grant {
        id: format!("gr_{}zz", format!("{n:02}").repeat(10)).parse::<GrantId>().unwrap(),
        owner: owner(n),
        agent: agent(n),
        pattern: "*@agents.localhost".parse().unwrap(),
        scopes: "read".parse().unwrap(),
        created_at: NOW,
        expires_at: NOW + DAY,
        revoked_at: None,
    };
    for n in [1, 2] {
        store.add_grant(&grant(n), &event("grant.create")).await.unwrap();
        let key = KeyRecord {
            id: format!("key_{}", format!("{n:02}").repeat(8)).parse::<KeyId>().unwrap(),
            agent: agent(n),
            hash: KeyHash([n; 32]),
            created_at: NOW,
            expires_at: NOW + DAY,
            revoked_at: None,
        };
        store.create_key(&key, &event("key.create")).await.unwrap();
    }
    assert_eq!(store.list_owner_grants(&owner(1)).await.unwrap(), vec![grant(1)]);

    let other = store.revoke_owner_grant(&owner(1), &grant(2).id, NOW, &event("grant.revoke")).await.unwrap_err();
    let missing_id: GrantId = "gr_99999999999999999999zz".parse().unwrap();
    let missing = store.revoke_owner_grant(&owner(1), &missing_id, NOW, &event("grant.revoke")).await.unwrap_err();
    assert!(matches!(other, StoreError::NotFound { .. }) && matches!(missing, StoreError::NotFound { .. }));
    assert_eq!(store.list_owner_grants(&owner(2)).await.unwrap()[0].revoked_at, None);
    store.revoke_owner_grant(&owner(1), &grant(1).id, NOW, &event("grant.revoke")).await.unwrap();
    assert_eq!(store.list_owner_grants(&owner(1)).await.unwrap()[0].revoked_at, Some(NOW));

    let key2: KeyId = "key_0202020202020202".parse().unwrap();
    let err = store.revoke_owner_key(&owner(1), &key2, NOW, &event("key.revoke")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(store.list_keys(&agent(2)).await.unwrap()[0].revoked_at, None);
    let key1: KeyId = "key_0101010101010101".parse().unwrap();
    store.revoke_owner_key(&owner(1), &key1, NOW, &event("key.revoke")).await.unwrap();
    assert_eq!(store.list_keys(&agent(1)).await.unwrap()[0].revoked_at, Some(NOW));
}

#[tokio::test]
async fn audit_for_owner_filters_by_actor_subject_and_detail() {
    let (_dir, store) = store().await;
    store.audit_append(&AuditEvent::ok(Actor::Owner(owner(1)), "x.by_owner", "elsewhere")).await.unwrap();
    store
        .audit_append(&AuditEvent::ok(Actor::System, "x.detail", "s").with_detail(serde_json::json!({"owner": owner(1)})))
        .await
        .unwrap();
    store.audit_append(&AuditEvent::ok(Actor::Owner(owner(2)), "x.other", "elsewhere")).await.unwrap();
    let ops: Vec<String> =
        store.audit_list_for_owner(&owner(1), 0, 100).await.unwrap().into_iter().map(|r| r.operation).collect();
    // owner.create has subject = owner; agent.create's subject is the owner's agent.
    assert_eq!(ops, ["owner.create", "agent.create", "x.by_owner", "x.detail"]);
    let page = store.audit_list_for_owner(&owner(1), 0, 1).await.unwrap();
    let rest = store.audit_list_for_owner(&owner(1), page[0].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 3);
}

#[tokio::test]
async fn owner_and_first_ticket_in_one_record() {
    let (_dir, store) = store().await;
    let head = store.audit_head().await.unwrap();
    let rec = OwnerRecord { id: owner(3), email: None, created_at: NOW };
    store.add_owner_with_enrollment(&rec, &ticket(3, 4), &event("owner.create")).await.unwrap();
    assert_eq!(store.audit_head().await.unwrap().seq, head.seq + 1);
    assert_eq!(store.enrollment_ticket(&owner(3)).await.unwrap(), Some(ticket(3, 4)));
    // A duplicate owner: nothing written, not even the ticket.
    let err = store.add_owner_with_enrollment(&rec, &ticket(3, 5), &event("owner.create")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    assert_eq!(store.enrollment_ticket(&owner(3)).await.unwrap(), Some(ticket(3, 4)));
    let wrong = OwnerRecord { id: owner(4), email: None, created_at: NOW };
    let err = store.add_owner_with_enrollment(&wrong, &ticket(3, 5), &event("owner.create")).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
}
