//! Write failures in SQLite never leave the store broken (crate::write_tx): after
//! a fault clears, the first attempt of every kind of write succeeds, with no
//! restart. Two real faults, both injected in SQLite itself:
//!
//! - a full database (`PRAGMA max_page_count` on every connection, a filler table
//!   grown until `SQLITE_FULL`, then emptied so its pages are free again);
//! - `RAISE(ROLLBACK)` triggers, which make SQLite roll the whole transaction back
//!   on its own, exactly as it does on `SQLITE_FULL`/`SQLITE_IOERR`: the state in
//!   which sqlx's own `ROLLBACK` fails and its transaction count stuck at 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::roles::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use agentkeys_audit::{Actor, AuditEvent, ops, verify};
use agentkeys_core::{AgentId, Grant, GrantId, KeyHash, KeyId, OwnerId};
use proptest::prelude::*;
use ulid::Ulid;

use crate::meta::{AgentRecord, InboxRecord, KeyRecord, NewOutbound, OwnerRecord, StoreError};
use crate::{MessageIndex, NewMessage, SqliteStore};

const NOW: i64 = 1_700_000_000;
const DOMAIN: &str = "agents.localhost";
/// Pages the full-disk database may have (4 KiB each): room for the schema and
/// the fixtures, then the filler takes the rest.
const PAGE_LIMIT: u32 = 200;

fn owner() -> OwnerId {
    format!("0x{}", "01".repeat(20)).parse().unwrap()
}

fn agent() -> AgentId {
    format!("0x{}", "a1".repeat(20)).parse().unwrap()
}

fn key_id(n: u32) -> KeyId {
    format!("key_{n:016}").parse().unwrap()
}

fn event(operation: &str, subject: &str) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, operation, subject)
}

/// Every kind of write the servers make: stand-alone audit appends (mints,
/// refusals: the group commit), audited changes (their own transaction),
/// single-statement writes (index inserts, queue inserts) and a transaction
/// without audit (unindex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Mint,
    AddGrant,
    CreateKey,
    RevokeKey,
    SetRetention,
    IndexMessage,
    Unindex,
    Enqueue,
}

const OPS: [Op; 8] =
    [Op::Mint, Op::AddGrant, Op::CreateKey, Op::RevokeKey, Op::SetRetention, Op::IndexMessage, Op::Unindex, Op::Enqueue];

impl Op {
    /// Whether a success appends one audit record.
    fn audited(self) -> bool {
        !matches!(self, Op::IndexMessage | Op::Unindex | Op::Enqueue)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    next: u32,
    /// Indexed messages, for `Unindex` to remove.
    indexed: Vec<Ulid>,
}

impl Fixture {
    async fn open(page_limit: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        let store = SqliteStore::open_with(&path, |o| match page_limit {
            Some(pages) => o.pragma("max_page_count", pages.to_string()),
            None => o,
        })
        .await
        .unwrap();
        let tick = Arc::new(AtomicI64::new(NOW));
        let store = store.with_clock(move || tick.fetch_add(1, Ordering::SeqCst));
        store.ensure_domain(&DOMAIN.parse().unwrap(), NOW).await.unwrap();
        store
            .add_owner(&OwnerRecord { id: owner(), email: None, created_at: NOW }, &event(ops::OWNER_CREATE, "o"))
            .await
            .unwrap();
        store
            .add_agent(
                &AgentRecord { id: agent(), owner: owner(), name: None, created_at: NOW },
                &event(ops::AGENT_CREATE, "a"),
            )
            .await
            .unwrap();
        let inbox = InboxRecord {
            address: format!("bot@{DOMAIN}").parse().unwrap(),
            owner: owner(),
            agent: agent(),
            status: agentkeys_core::InboxStatus::Active,
            created_at: NOW,
            expires_at: None,
        };
        store.create_inbox(&inbox, &event(ops::INBOX_CREATE, "bot")).await.unwrap();
        let mut fixture = Self { _dir: dir, store, next: 0, indexed: Vec::new() };
        fixture.run(Op::CreateKey).await.unwrap(); // key 1, for RevokeKey
        for _ in 0..40 {
            fixture.run(Op::IndexMessage).await.unwrap();
        }
        fixture
    }

    /// Runs one operation with fresh data.
    async fn run(&mut self, op: Op) -> Result<(), StoreError> {
        self.next += 1;
        let n = self.next;
        let store = &self.store;
        let inbox: agentkeys_core::Address = format!("bot@{DOMAIN}").parse().unwrap();
        match op {
            Op::Mint => store.audit_append(&event("credential.read", &format!("mint {n}"))).await.map(drop),
            Op::AddGrant => {
                let grant = Grant {
                    id: format!("gr_{n:020}zz").parse::<GrantId>().unwrap(),
                    owner: owner(),
                    agent: agent(),
                    pattern: inbox.as_str().parse().unwrap(),
                    scopes: "send".parse().unwrap(),
                    created_at: NOW,
                    expires_at: NOW + 86_400,
                    revoked_at: None,
                };
                store.add_grant(&grant, &event(ops::GRANT_CREATE, grant.id.as_str())).await.map(drop)
            }
            Op::CreateKey => {
                let key = KeyRecord {
                    id: key_id(n),
                    agent: agent(),
                    hash: KeyHash(Ulid::new().0.to_be_bytes().repeat(2).try_into().unwrap()),
                    created_at: NOW,
                    expires_at: NOW + 86_400,
                    revoked_at: None,
                };
                store.create_key(&key, &event(ops::KEY_CREATE, key.id.as_str())).await.map(drop)
            }
            Op::RevokeKey => store.revoke_key(&key_id(1), NOW, &event(ops::KEY_REVOKE, "key 1")).await.map(drop),
            Op::SetRetention => store
                .set_domain_retention(
                    &DOMAIN.parse().unwrap(),
                    Some(86_400 + i64::from(n)),
                    &event(crate::OP_DOMAIN_SET_RETENTION, DOMAIN),
                )
                .await
                .map(drop),
            Op::IndexMessage => {
                let row = NewMessage { owner: owner(), inbox, id: Ulid::new(), size: 100 + u64::from(n), summary: Default::default(), facts: Default::default() };
                store.index_messages(std::slice::from_ref(&row)).await?;
                self.indexed.push(row.id);
                Ok(())
            }
            Op::Unindex => {
                let id = *self.indexed.last().expect("the fixture indexes enough messages");
                let removed = store.unindex(&owner(), &inbox, &[id]).await?;
                assert_eq!(removed, 1);
                self.indexed.pop();
                Ok(())
            }
            Op::Enqueue => store
                .enqueue_outbound(&NewOutbound {
                    message_id: Ulid::new().to_string(),
                    sender: inbox,
                    owner: owner(),
                    recipients: vec![format!("rcpt{n}@example.com")],
                    size: 100,
                    queued_at: NOW,
                })
                .await,
        }
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.store.pool).await.unwrap();
    }

    async fn audit_count(&self) -> usize {
        let records = self.store.audit_all().await.unwrap();
        verify(&records).unwrap();
        records.len()
    }
}

/// Tables the operations write, for the `RAISE(ROLLBACK)` fault.
const FAULT_TABLES: [&str; 6] = ["audit_log", "grants", "agent_keys", "domains", "messages", "outbound_queue"];

async fn set_rollback_fault(f: &Fixture, on: bool) {
    for table in FAULT_TABLES {
        for (when, what) in [("INSERT", "i"), ("UPDATE", "u"), ("DELETE", "d")] {
            let sql = if on {
                format!(
                    "CREATE TRIGGER IF NOT EXISTS fault_{what}_{table} BEFORE {when} ON {table}
                     BEGIN SELECT RAISE(ROLLBACK, 'injected fault'); END;"
                )
            } else {
                format!("DROP TRIGGER IF EXISTS fault_{what}_{table};")
            };
            f.exec(&sql).await;
        }
    }
}

/// Grows a filler table until the database is full: big rows first, then
/// smaller ones, so no page keeps room for another record.
async fn fill(f: &Fixture) {
    f.exec("CREATE TABLE IF NOT EXISTS filler (b BLOB)").await;
    for size in [16_000, 2_000, 200] {
        for _ in 0..10_000 {
            let result = sqlx::query("INSERT INTO filler (b) VALUES (zeroblob(?1))").bind(size).execute(&f.store.pool).await;
            match result {
                Ok(_) => {}
                Err(e) => {
                    assert!(e.to_string().contains("full"), "filling failed for another reason: {e}");
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn after_the_database_was_full_the_first_retry_of_every_write_succeeds() {
    let mut f = Fixture::open(Some(PAGE_LIMIT)).await;
    for round in 0..2 {
        fill(&f).await;
        // Pages of their own tables may still hold a few rows: every write that
        // needs space fails before long, each failure on some pooled connection.
        for op in OPS {
            if op == Op::Unindex {
                // Deleting frees space; it may well succeed on a full database.
                let _ = f.run(op).await;
                continue;
            }
            let mut refused = None;
            for _ in 0..500 {
                if let Err(e) = f.run(op).await {
                    refused = Some(e);
                    break;
                }
            }
            let err = refused.unwrap_or_else(|| panic!("round {round}: {op:?} never failed on a full database"));
            let text = err.to_string();
            assert!(text.contains("full"), "round {round}: {op:?} failed for another reason: {text}");
        }
        // Space comes back: the filler's pages go to the free list.
        f.exec("DELETE FROM filler").await;
        let before = f.audit_count().await;
        for op in OPS {
            f.run(op).await.unwrap_or_else(|e| panic!("round {round}: first retry of {op:?} failed: {e}"));
        }
        let audited = OPS.iter().filter(|op| op.audited()).count();
        assert_eq!(f.audit_count().await, before + audited, "round {round}");
    }
}

#[tokio::test]
async fn a_transaction_sqlite_rolled_back_by_itself_leaves_no_connection_dirty() {
    let mut f = Fixture::open(None).await;
    set_rollback_fault(&f, true).await;
    // More failures than the pool has connections: each one would poison one.
    for _ in 0..3 {
        for op in OPS {
            let err = f.run(op).await.expect_err(&format!("{op:?} succeeded under the fault"));
            assert!(err.to_string().contains("injected fault"), "{op:?}: {err}");
        }
    }
    set_rollback_fault(&f, false).await;
    for _ in 0..3 {
        for op in OPS {
            f.run(op).await.unwrap_or_else(|e| panic!("{op:?} failed after the fault cleared: {e}"));
        }
    }
}

#[tokio::test]
async fn an_abandoned_transaction_is_settled_before_the_next_writer() {
    let f = Fixture::open(None).await;
    // Begun, written, dropped uncommitted (a cancelled request).
    for _ in 0..20 {
        let mut tx = f.store.write_tx().await.unwrap();
        sqlx::query("UPDATE domains SET retention = 1").execute(&mut *tx).await.unwrap();
        drop(tx);
    }
    // The same, after SQLite rolled back by itself.
    set_rollback_fault(&f, true).await;
    for _ in 0..20 {
        let mut tx = f.store.write_tx().await.unwrap();
        let _ = sqlx::query("UPDATE domains SET retention = 1").execute(&mut *tx).await.unwrap_err();
        tx.rollback().await;
    }
    set_rollback_fault(&f, false).await;
    let mut tx = f.store.write_tx().await.unwrap();
    sqlx::query("UPDATE domains SET retention = 2").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let kept: Option<i64> =
        sqlx::query_scalar("SELECT retention FROM domains").fetch_one(&f.store.pool).await.unwrap();
    assert_eq!(kept, Some(2));
}

fn op_strategy() -> impl Strategy<Value = Op> {
    proptest::sample::select(OPS.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The rule over generated histories: under the fault every write fails;
    /// without it every write succeeds at its first attempt, whatever failed
    /// before; the audit chain holds exactly the audited writes that succeeded.
    #[test]
    fn every_write_succeeds_at_once_when_no_fault_is_active(steps in proptest::collection::vec((op_strategy(), any::<bool>()), 1..16)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut f = Fixture::open(None).await;
            let mut expected = f.audit_count().await;
            let mut faulted = false;
            for (op, fault) in steps {
                if fault != faulted {
                    set_rollback_fault(&f, fault).await;
                    faulted = fault;
                }
                let result = f.run(op).await;
                if fault {
                    assert!(result.is_err(), "{op:?} succeeded under the fault");
                } else {
                    result.unwrap_or_else(|e| panic!("{op:?} failed with no fault active: {e}"));
                    // Readiness agrees at once, and its probes append nothing.
                    f.store.check_writable().await.unwrap();
                    f.store.check_audit_writable().await.unwrap();
                    if op.audited() {
                        expected += 1;
                    }
                }
            }
            set_rollback_fault(&f, false).await;
            assert_eq!(f.audit_count().await, expected);
        });
    }
}

#[tokio::test]
async fn readiness_probes_commit_without_touching_the_audit_chain() {
    let f = Fixture::open(None).await;
    let before = f.audit_count().await;
    for _ in 0..3 {
        f.store.check_writable().await.unwrap();
        f.store.check_audit_writable().await.unwrap();
    }
    assert_eq!(f.audit_count().await, before);
    // Probes and appends sharing batches get the batch's outcome.
    let store = f.store.clone();
    let probes = tokio::spawn(async move {
        for _ in 0..20 {
            store.check_audit_writable().await.unwrap();
        }
    });
    for n in 0..20 {
        f.store.audit_append(&event("credential.read", &format!("next {n}"))).await.unwrap();
    }
    probes.await.unwrap();
    assert_eq!(f.audit_count().await, before + 20);
}
