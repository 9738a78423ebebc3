//! The audit log in `SqliteStore`: audited writes are fail-closed (the row change
//! and its record commit together or not at all), appends stay contiguous under
//! concurrent writers and several store instances on one file, and tampering with
//! the table shows up in verification.
#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use agentkeys_audit::{Actor, AuditEvent, BrokenReason, ChainHead, Outcome, ops, verify};
use agentkeys_core::{Address, AgentId, Grant, GrantId, InboxStatus, KeyHash, KeyId, OwnerId};
use agentkeys_store::{AgentRecord, InboxRecord, KeyRecord, OwnerRecord, SqliteStore, StoreError};
use serde_json::json;
use sqlx::{ConnectOptions, Connection, SqliteConnection, sqlite::SqliteConnectOptions};

const NOW: i64 = 1_700_000_000;
const DOMAIN: &str = "agents.localhost";

fn owner(n: u8) -> OwnerId {
    format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
}

fn agent(n: u8) -> AgentId {
    format!("0x{}", format!("{:02x}", 0xa0 + n).repeat(20)).parse().unwrap()
}

fn key_id(n: u8) -> KeyId {
    format!("key_{}", format!("{n:02}").repeat(8)).parse().unwrap()
}

fn grant_id(n: u8) -> GrantId {
    format!("gr_{}{}", format!("{n:02}").repeat(10), "zz").parse().unwrap()
}

fn key(n: u8, agent_n: u8) -> KeyRecord {
    KeyRecord {
        id: key_id(n),
        agent: agent(agent_n),
        hash: KeyHash([n; 32]),
        created_at: NOW,
        expires_at: NOW + 86_400,
        revoked_at: None,
    }
}

fn grant(n: u8) -> Grant {
    Grant {
        id: grant_id(n),
        owner: owner(1),
        agent: agent(1),
        pattern: "bot@agents.localhost".parse().unwrap(),
        scopes: "send".parse().unwrap(),
        created_at: NOW,
        expires_at: NOW + 86_400,
        revoked_at: None,
    }
}

fn bot() -> Address {
    "bot@agents.localhost".parse().unwrap()
}

fn event(operation: &str, subject: &str) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, operation, subject).with_detail(json!({ "test": true }))
}

/// A file-backed store whose audit clock ticks one second per record from NOW.
async fn open_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let tick = Arc::new(AtomicI64::new(NOW));
    let store = SqliteStore::open(&dir.path().join("meta.sqlite"))
        .await
        .unwrap()
        .with_clock(move || tick.fetch_add(1, Ordering::SeqCst));
    (dir, store)
}

/// Owner 1, agent 1 and the hosted domain (3 records: owner, agent; the domain is
/// not audited).
async fn with_agent() -> (tempfile::TempDir, SqliteStore) {
    let (dir, store) = open_store().await;
    store.ensure_domain(&DOMAIN.parse().unwrap(), NOW).await.unwrap();
    let o = OwnerRecord { id: owner(1), email: None, created_at: NOW };
    store.add_owner(&o, &event(ops::OWNER_CREATE, owner(1).as_str())).await.unwrap();
    let a = AgentRecord { id: agent(1), owner: owner(1), name: None, created_at: NOW };
    store.add_agent(&a, &event(ops::AGENT_CREATE, agent(1).as_str())).await.unwrap();
    (dir, store)
}

/// A second, raw connection to the same database file, as an operator with
/// `sqlite3` (or an attacker) would have.
async fn raw(dir: &Path) -> SqliteConnection {
    SqliteConnectOptions::new().filename(dir.join("meta.sqlite")).connect().await.unwrap()
}

async fn exec(conn: &mut SqliteConnection, sql: &str) {
    sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
}

const FAIL_AUDIT_INSERT: &str = "CREATE TRIGGER inject_audit_failure BEFORE INSERT ON audit_log
  BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END;";
const UNFAIL_AUDIT_INSERT: &str = "DROP TRIGGER inject_audit_failure;";
const UNLOCK_AUDIT: &str = "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;";

#[track_caller]
fn assert_audit_write_failed<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    match result {
        Err(StoreError::Backend(text)) => assert!(text.contains("cannot write audit record"), "{text}"),
        other => panic!("expected the audit write to fail, got {other:?}"),
    }
}

#[tokio::test]
async fn every_audited_write_appends_one_record_and_returns_its_receipt() {
    let (_dir, store) = with_agent().await;
    let inbox =
        InboxRecord { address: bot(), owner: owner(1), agent: agent(1), status: InboxStatus::Active, created_at: NOW, expires_at: None };
    let receipts = [
        store.create_inbox(&inbox, &event(ops::INBOX_CREATE, bot().as_str())).await.unwrap(),
        store
            .set_inbox_status(&bot(), InboxStatus::Disabled, &event(ops::INBOX_SET_STATUS, bot().as_str()))
            .await
            .unwrap(),
        store.create_key(&key(1, 1), &event(ops::KEY_CREATE, key_id(1).as_str())).await.unwrap(),
        store.revoke_key(&key_id(1), NOW, &event(ops::KEY_REVOKE, key_id(1).as_str())).await.unwrap(),
        store.add_grant(&grant(1), &event(ops::GRANT_CREATE, grant_id(1).as_str())).await.unwrap(),
        store.revoke_grant(&grant_id(1), NOW, &event(ops::GRANT_REVOKE, grant_id(1).as_str())).await.unwrap(),
    ];
    let records = store.audit_all().await.unwrap();
    assert_eq!(records.len(), 8);
    let ops_in_order: Vec<&str> = records.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(
        ops_in_order,
        [
            ops::OWNER_CREATE,
            ops::AGENT_CREATE,
            ops::INBOX_CREATE,
            ops::INBOX_SET_STATUS,
            ops::KEY_CREATE,
            ops::KEY_REVOKE,
            ops::GRANT_CREATE,
            ops::GRANT_REVOKE
        ]
    );
    for (receipt, record) in receipts.iter().zip(&records[2..]) {
        assert_eq!(receipt.seq(), record.seq);
        assert_eq!(receipt.hash(), &record.hash);
    }
    // The injected clock stamped them in order; the detail came back as stored.
    assert_eq!(records.iter().map(|r| r.ts).collect::<Vec<_>>(), (NOW..NOW + 8).collect::<Vec<_>>());
    assert_eq!(records[4].detail, json!({ "test": true }));
    assert_eq!(records[4].actor, Actor::Operator);
    let chain = verify(&records).unwrap();
    assert_eq!(store.audit_head().await.unwrap(), ChainHead { seq: 8, hash: chain.head_hash });
}

#[tokio::test]
async fn a_refused_write_appends_nothing() {
    let (_dir, store) = with_agent().await;
    let head = store.audit_head().await.unwrap();
    let o = OwnerRecord { id: owner(1), email: None, created_at: NOW };
    assert!(matches!(store.add_owner(&o, &event(ops::OWNER_CREATE, "dup")).await, Err(StoreError::Conflict { .. })));
    assert!(matches!(
        store.create_key(&key(1, 9), &event(ops::KEY_CREATE, "k")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.revoke_grant(&grant_id(9), NOW, &event(ops::GRANT_REVOKE, "g")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.audit_head().await.unwrap(), head);
}

#[tokio::test]
async fn no_side_effect_when_the_audit_record_cannot_be_written() {
    let (dir, store) = with_agent().await;
    let inbox =
        InboxRecord { address: bot(), owner: owner(1), agent: agent(1), status: InboxStatus::Active, created_at: NOW, expires_at: None };
    store.create_inbox(&inbox, &event(ops::INBOX_CREATE, bot().as_str())).await.unwrap();
    store.create_key(&key(1, 1), &event(ops::KEY_CREATE, "k1")).await.unwrap();
    store.add_grant(&grant(1), &event(ops::GRANT_CREATE, "g1")).await.unwrap();
    let head = store.audit_head().await.unwrap();

    let mut conn = raw(dir.path()).await;
    exec(&mut conn, FAIL_AUDIT_INSERT).await;

    let o = OwnerRecord { id: owner(2), email: None, created_at: NOW };
    assert_audit_write_failed(store.add_owner(&o, &event(ops::OWNER_CREATE, "o2")).await);
    let a = AgentRecord { id: agent(2), owner: owner(1), name: None, created_at: NOW };
    assert_audit_write_failed(store.add_agent(&a, &event(ops::AGENT_CREATE, "a2")).await);
    let other = InboxRecord { address: "other@agents.localhost".parse().unwrap(), ..inbox.clone() };
    assert_audit_write_failed(store.create_inbox(&other, &event(ops::INBOX_CREATE, "other")).await);
    assert_audit_write_failed(
        store.set_inbox_status(&bot(), InboxStatus::Suspended, &event(ops::INBOX_SET_STATUS, "bot")).await,
    );
    assert_audit_write_failed(store.create_key(&key(2, 1), &event(ops::KEY_CREATE, "k2")).await);
    assert_audit_write_failed(store.revoke_key(&key_id(1), NOW, &event(ops::KEY_REVOKE, "k1")).await);
    assert_audit_write_failed(store.add_grant(&grant(2), &event(ops::GRANT_CREATE, "g2")).await);
    assert_audit_write_failed(store.revoke_grant(&grant_id(1), NOW, &event(ops::GRANT_REVOKE, "g1")).await);
    assert_audit_write_failed(store.audit_append(&event("mail.send", "bot")).await);

    // Nothing of any of them happened.
    assert_eq!(store.list_owners().await.unwrap().len(), 1);
    assert_eq!(store.list_agents(None).await.unwrap().len(), 1);
    let inboxes = store.list_inboxes(None).await.unwrap();
    assert_eq!(inboxes.len(), 1);
    assert_eq!(inboxes[0].status, InboxStatus::Active);
    let keys = store.list_keys(&agent(1)).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].revoked_at, None);
    let grants = store.list_grants(None).await.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].revoked_at, None);
    assert_eq!(store.audit_head().await.unwrap(), head);

    // Once records can be written again, so can the changes.
    exec(&mut conn, UNFAIL_AUDIT_INSERT).await;
    store.create_key(&key(2, 1), &event(ops::KEY_CREATE, "k2")).await.unwrap();
    assert_eq!(store.list_keys(&agent(1)).await.unwrap().len(), 2);
    verify(&store.audit_all().await.unwrap()).unwrap();
}

#[tokio::test]
async fn no_audit_record_when_the_side_effect_fails() {
    let (dir, store) = with_agent().await;
    let head = store.audit_head().await.unwrap();
    let mut conn = raw(dir.path()).await;
    // The key insert fails after every check in create_key has passed.
    exec(
        &mut conn,
        "CREATE TRIGGER inject_key_failure BEFORE INSERT ON agent_keys BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .await;
    assert!(matches!(store.create_key(&key(1, 1), &event(ops::KEY_CREATE, "k1")).await, Err(StoreError::Backend(_))));
    assert_eq!(store.audit_head().await.unwrap(), head);
}

#[tokio::test]
async fn a_closed_store_writes_nothing() {
    let (dir, store) = with_agent().await;
    store.close().await;
    assert!(store.create_key(&key(1, 1), &event(ops::KEY_CREATE, "k1")).await.is_err());
    assert!(store.audit_append(&event("x.y", "s")).await.is_err());
    let reopened = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    assert!(reopened.list_keys(&agent(1)).await.unwrap().is_empty());
    assert_eq!(reopened.audit_head().await.unwrap().seq, 2);
}

#[tokio::test]
async fn audited_changes_must_have_happened_and_events_must_be_valid() {
    let (_dir, store) = with_agent().await;
    let denied = event(ops::KEY_CREATE, "k1").with_outcome(Outcome::Denied);
    match store.create_key(&key(1, 1), &denied).await {
        Err(StoreError::Invalid(text)) => assert!(text.contains("outcome ok"), "{text}"),
        other => panic!("{other:?}"),
    }
    let bad = event("Key Create", "k1");
    assert!(matches!(store.create_key(&key(1, 1), &bad).await, Err(StoreError::Invalid(_))));
    let float = event(ops::KEY_CREATE, "k1").with_detail(json!({ "x": 1.5 }));
    assert!(matches!(store.create_key(&key(1, 1), &float).await, Err(StoreError::Invalid(_))));
    assert!(store.list_keys(&agent(1)).await.unwrap().is_empty());
    // A refusal is recorded on its own.
    let receipt = store.audit_append(&denied).await.unwrap();
    assert_eq!(receipt.seq(), 3);
    assert_eq!(store.audit_list(2, 10).await.unwrap()[0].outcome, Outcome::Denied);
}

#[tokio::test]
async fn list_pages_by_seq() {
    let (_dir, store) = open_store().await;
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::GENESIS);
    assert!(store.audit_all().await.unwrap().is_empty());
    for n in 0..25 {
        store.audit_append(&event("x.y", &format!("s{n}"))).await.unwrap();
    }
    let page = store.audit_list(10, 5).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [11, 12, 13, 14, 15]);
    assert!(store.audit_list(25, 5).await.unwrap().is_empty());
    assert!(store.audit_list(u64::MAX, 5).await.unwrap().is_empty());
    assert_eq!(store.audit_list(0, 0).await.unwrap().len(), 0);
    assert_eq!(store.audit_all().await.unwrap().len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_two_store_instances_are_contiguous() {
    // Two instances on one file stand for the server and the CLI: separate pools,
    // so only SQLite's write lock (BEGIN IMMEDIATE) keeps their appends apart.
    let (dir, a) = with_agent().await;
    let b = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    let tasks: Vec<_> = (0..60u8)
        .map(|n| {
            let store = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                if n % 3 == 0 {
                    store.create_key(&key(n, 1), &event(ops::KEY_CREATE, key_id(n).as_str())).await.map(|r| r.seq())
                } else {
                    store.audit_append(&event("test.append", &format!("task {n}"))).await.map(|r| r.seq())
                }
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (3..63).collect::<Vec<u64>>(), "every append got its own seq");
    let records = a.audit_all().await.unwrap();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..63).collect::<Vec<u64>>());
    assert_eq!(verify(&records).unwrap().count, 62);
    assert_eq!(a.list_keys(&agent(1)).await.unwrap().len(), 20);
}

#[tokio::test]
async fn the_table_is_append_only_for_honest_mistakes() {
    let (dir, store) = with_agent().await;
    let mut conn = raw(dir.path()).await;
    let update = sqlx::raw_sql("UPDATE audit_log SET subject = 'x' WHERE seq = 1").execute(&mut conn).await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::raw_sql("DELETE FROM audit_log WHERE seq = 2").execute(&mut conn).await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    verify(&store.audit_all().await.unwrap()).unwrap();
}

#[tokio::test]
async fn tampering_with_rows_is_reported_at_the_record() {
    let (dir, store) = with_agent().await;
    for n in 1..=4 {
        store.create_key(&key(n, 1), &event(ops::KEY_CREATE, key_id(n).as_str())).await.unwrap();
    }
    let mut conn = raw(dir.path()).await;
    exec(&mut conn, UNLOCK_AUDIT).await;

    // An edited detail: same shape, different fact.
    exec(&mut conn, r#"UPDATE audit_log SET detail = '{"test":false}' WHERE seq = 4"#).await;
    let broken = verify(&store.audit_all().await.unwrap()).unwrap_err();
    assert_eq!((broken.seq, broken.reason), (4, BrokenReason::HashMismatch));

    // A deleted record, on top: the earlier break still comes first.
    exec(&mut conn, "DELETE FROM audit_log WHERE seq = 2").await;
    let broken = verify(&store.audit_all().await.unwrap()).unwrap_err();
    assert_eq!((broken.seq, broken.reason), (3, BrokenReason::Gap { expected: 2 }));

    // A value that does not even decode names its record.
    exec(&mut conn, "UPDATE audit_log SET actor = 'root' WHERE seq = 5").await;
    match store.audit_list(0, 100).await {
        Err(StoreError::AuditUnreadable { seq, reason }) => {
            assert_eq!(seq, 5);
            assert!(reason.contains("actor"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // And an append onto an unreadable head is refused, with its side effect.
    exec(&mut conn, "UPDATE audit_log SET hash = 'not hex' || substr(hash, 8) WHERE seq = 6").await;
    match store.create_key(&key(9, 1), &event(ops::KEY_CREATE, "k9")).await {
        Err(StoreError::AuditUnreadable { seq: 6, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(store.list_keys(&agent(1)).await.unwrap().len(), 4);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_waiting_for_the_write_lock_share_one_commit() {
    // The clock ticks once per call, and a batch reads it once: records of one
    // batch (one transaction, one commit) share their ts.
    let (dir, store) = open_store().await;
    store.audit_append(&event("test.append", "first")).await.unwrap();
    // Another process holds the write lock while 40 mints wait to be audited.
    let mut conn = raw(dir.path()).await;
    exec(&mut conn, "BEGIN IMMEDIATE").await;
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.audit_append(&event("test.append", &format!("t{n}"))).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    exec(&mut conn, "COMMIT").await;
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap().seq());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..42).collect::<Vec<u64>>(), "each caller got its own record");
    let records = store.audit_all().await.unwrap();
    assert_eq!(verify(&records).unwrap().count, 41);
    let batches: std::collections::BTreeSet<i64> = records[1..].iter().map(|r| r.ts).collect();
    assert!(batches.len() < 10, "40 waiting appends took {} commits", batches.len());
}

/// Chained checkpoints in the store (issue 15 item 4): rows of format v1 stay
/// readable and the chain starts after them; only the next link is appended
/// (a stale, duplicate, gapped or unlinked one is `false`, nothing stored);
/// checkpoint 1 is also kept as the chain's start, and the chain does not
/// restart once that start is recorded.
#[tokio::test]
async fn checkpoints_append_only_the_next_link() {
    use agentkeys_audit::{ChainedCheckpoint, Checkpoint, SignedCheckpoint};
    use agentkeys_store::CheckpointRecord;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    for n in 0..6 {
        store.audit_append(&AuditEvent::ok(Actor::System, "test.op", format!("r{n}"))).await.unwrap();
    }
    let records = store.audit_list(0, 10).await.unwrap();
    let head = |seq: usize| records[seq - 1].head();
    let sig = vec![7; 64];
    let v1 = CheckpointRecord { seq: 1, hash: head(1).hash, ts: NOW, signature: sig.clone(), counter: None, prev: None };
    assert!(store.add_checkpoint(&v1).await.unwrap());
    assert!(matches!(v1.signed(), SignedCheckpoint::V1 { checkpoint: Checkpoint { .. }, .. }));

    let first = ChainedCheckpoint::first(head(2), NOW + 1);
    let second = first.next(head(4), NOW + 2).unwrap();
    let record = |c: &ChainedCheckpoint| CheckpointRecord::chained(c, sig.clone());
    // Out of turn: checkpoint 2 before 1, a non-zero prev for 1.
    assert!(!store.add_checkpoint(&record(&second)).await.unwrap());
    assert!(!store.add_checkpoint(&record(&ChainedCheckpoint { prev: [1; 32], ..first })).await.unwrap());
    assert!(store.add_checkpoint(&record(&first)).await.unwrap());
    assert_eq!(store.checkpoint_start().await.unwrap(), Some(record(&first)));
    // A duplicate, a gap, a wrong link, a head not past the last: refused quietly.
    assert!(!store.add_checkpoint(&record(&first)).await.unwrap());
    assert!(!store.add_checkpoint(&record(&ChainedCheckpoint { counter: 3, ..second })).await.unwrap());
    assert!(!store.add_checkpoint(&record(&ChainedCheckpoint { prev: [2; 32], ..second })).await.unwrap());
    assert!(!store.add_checkpoint(&record(&first.next(head(2), NOW + 2).unwrap())).await.unwrap());
    assert!(store.add_checkpoint(&record(&second)).await.unwrap());
    let listed = store.list_checkpoints().await.unwrap();
    assert_eq!(listed, vec![v1, record(&first), record(&second)]);
    assert_eq!(store.last_checkpoint().await.unwrap(), Some(record(&second)));

    // Someone deletes every checkpoint but the start survives: the chain does
    // not start again over the deletion.
    let mut raw = SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
    sqlx::query("DROP TRIGGER audit_checkpoints_no_delete").execute(&mut raw).await.unwrap();
    sqlx::query("DELETE FROM audit_checkpoints").execute(&mut raw).await.unwrap();
    raw.close().await.unwrap();
    let again = ChainedCheckpoint::first(head(6), NOW + 3);
    match store.add_checkpoint(&record(&again)).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("its checkpoints are gone"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(store.list_checkpoints().await.unwrap(), vec![]);
}
