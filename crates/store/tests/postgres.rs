//! `PgStore` on a real PostgreSQL (`AGENTKEYS_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; each test gets a fresh
//! database, dropped at its end).
//!
//! Two parts: every trait method against its documented contract (the same
//! answers and errors as `SqliteStore`), and the properties that matter once
//! several processes share the database, checked with TWO separate stores
//! (two pools, as two nodes would have) on one database: one audit chain,
//! index rows visible in `seq` order, single claims, replayed nonces, one
//! winner per compare-and-set, events across nodes.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use agentkeys_audit::{
    Actor, AuditEvent, AuditRecord, BrokenReason, ChainHead, ChainedCheckpoint, FORMAT_TAG, Outcome, Verifier,
    canonical_json, hash_to_hex, verify,
};
use agentkeys_core::{
    Address, AgentId, Credentials, Domain, Grant, GrantId, InboxStatus, KeyHash, KeyId, OwnerId, UnixTime,
};
use agentkeys_store::postgres::{ALIVE_BYPASS_WINDOW, MAX_CONNECTIONS, TempDatabase};
use agentkeys_store::postgres::events::LISTENER_APPLICATION_NAME;
use agentkeys_store::roles::*;
use agentkeys_store::{
    AgentRecord, AttemptOutcome, AttemptToRecord, CheckpointRecord, DomainKeyRecord, EnrollmentTicketRecord,
    IDEMPOTENCY_KEY_TTL_SECS, IdempotencyClaim, IdempotencyScope, InboxRecord, KeyRecord, ListOrder, LocalEventHub,
    MailEvents, Missed, NewMessage, NewOutbound, NonceUse, OwnerRecord, PageQuery, PairingRecord, PairingStatus, PgEvents,
    PgStore, QueueStateCount, StoreError,
};
use proptest::prelude::*;
use serde_json::json;
use ulid::Ulid;

const NOW: UnixTime = 1_700_000_000;
const DAY: i64 = 86_400;
const DOMAIN: &str = "agents.localhost";
/// Longest any wait in these tests may take before it counts as a failure
/// (a bound on a loop, not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(20);

fn owner(n: u8) -> OwnerId {
    format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
}

fn agent(n: u8) -> AgentId {
    format!("0x{}", format!("{:02x}", 0xa0 + n).repeat(20)).parse().unwrap()
}

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn domain() -> Domain {
    DOMAIN.parse().unwrap()
}

fn key_id(n: u8) -> KeyId {
    format!("key_{}", format!("{n:02}").repeat(8)).parse().unwrap()
}

fn grant_id(n: u8) -> GrantId {
    format!("gr_{}{}", format!("{n:02}").repeat(10), "zz").parse().unwrap()
}

fn owner_record(n: u8) -> OwnerRecord {
    OwnerRecord { id: owner(n), email: Some(format!("human{n}@example.com")), created_at: NOW }
}

fn agent_record(n: u8, owner_n: u8) -> AgentRecord {
    AgentRecord { id: agent(n), owner: owner(owner_n), name: Some(format!("agent {n}")), created_at: NOW + i64::from(n) }
}

fn inbox(address: &str, owner_n: u8, agent_n: u8) -> InboxRecord {
    InboxRecord { address: addr(address), owner: owner(owner_n), agent: agent(agent_n), status: InboxStatus::Active, created_at: NOW, expires_at: None }
}

fn key(n: u8, agent_n: u8) -> KeyRecord {
    KeyRecord { id: key_id(n), agent: agent(agent_n), hash: KeyHash([n; 32]), created_at: NOW, expires_at: NOW + DAY, revoked_at: None }
}

fn grant(n: u8, owner_n: u8, agent_n: u8, pattern: &str, scopes: &str) -> Grant {
    Grant {
        id: grant_id(n),
        owner: owner(owner_n),
        agent: agent(agent_n),
        pattern: pattern.parse().unwrap(),
        scopes: scopes.parse().unwrap(),
        created_at: NOW + i64::from(n),
        expires_at: NOW + DAY,
        revoked_at: None,
    }
}

fn ev() -> AuditEvent {
    AuditEvent::ok(Actor::Operator, "test.write", "metadata test")
}

fn event(op: &str, subject: &str) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, op, subject)
}

fn dkim(version: u32) -> DomainKeyRecord {
    DomainKeyRecord {
        domain: domain(),
        version,
        selector_ed: format!("ed{version}"),
        selector_rsa: format!("rsa{version}"),
        rsa_key_wrapped: vec![version as u8; 40],
        created_at: NOW,
    }
}

/// A fresh database and one store on it, its audit clock ticking one second per
/// record from NOW.
async fn fresh() -> (TempDatabase, PgStore) {
    let db = TempDatabase::create().await.unwrap();
    let tick = Arc::new(AtomicI64::new(NOW));
    let store = PgStore::connect(db.url()).await.unwrap().with_clock(move || tick.fetch_add(1, Ordering::SeqCst));
    (db, store)
}

/// A fresh database and two stores on it: two nodes.
async fn two_nodes() -> (TempDatabase, PgStore, PgStore) {
    let (db, a) = fresh().await;
    let b = PgStore::connect(db.url()).await.unwrap();
    (db, a, b)
}

/// The hosted domain; owners 1 and 2 with agents 1 and 2; inboxes
/// bot@ (owner 1) and other@ (owner 2).
async fn populate(store: &PgStore) {
    store.ensure_domain(&domain(), NOW).await.unwrap();
    for n in [1, 2] {
        store.add_owner(&owner_record(n), &ev()).await.unwrap();
        store.add_agent(&agent_record(n, n), &ev()).await.unwrap();
    }
    store.create_inbox(&inbox("bot@agents.localhost", 1, 1), &ev()).await.unwrap();
    store.create_inbox(&inbox("other@agents.localhost", 2, 2), &ev()).await.unwrap();
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound { .. }))
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

fn is_invalid<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Invalid(_)))
}

/// Runs `sql` on the test database directly (as an operator would).
async fn psql(db: &TempDatabase, sql: &str) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(db.url()).await?;
    conn.execute(sql).await?;
    conn.close().await
}

// ---------------------------------------------------------------------------
// Schema and connection
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let db = TempDatabase::create().await.unwrap();
    let url = db.url().to_owned();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().expect("every node starts"));
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (applied,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(&mut conn).await.unwrap();
    let (files,): (i64,) = (std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres")).unwrap().count() as i64,);
    assert_eq!(applied, files, "each migration applied once");
    for store in &stores {
        store.check_ready().await.unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_database_is_an_error() {
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/nothing").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    let err = PgStore::connect("not a url").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
}

#[tokio::test]
async fn readiness_probes_pass_and_fail_without_panicking() {
    let (db, store) = fresh().await;
    store.check_ready().await.unwrap();
    store.check_writable().await.unwrap();
    store.check_audit_writable().await.unwrap();
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::GENESIS, "the audit probe writes no record");
    // The database goes away under the running store: every call is an error.
    db.drop_database().await.unwrap();
    assert!(matches!(store.check_ready().await, Err(StoreError::Backend(_))));
    assert!(matches!(store.check_writable().await, Err(StoreError::Backend(_))));
    assert!(matches!(store.check_audit_writable().await, Err(StoreError::Backend(_))));
    assert!(matches!(store.audit_append(&ev()).await, Err(StoreError::Backend(_))));
    assert!(matches!(store.add_owner(&owner_record(1), &ev()).await, Err(StoreError::Backend(_))));
    assert!(matches!(store.claim_due(NOW, 10, NOW + 60).await, Err(StoreError::Backend(_))));
    let row = NewMessage { owner: owner(1), inbox: addr("bot@agents.localhost"), id: Ulid::new(), size: 1, summary: Default::default(), facts: Default::default() };
    assert!(matches!(store.index_messages(&[row]).await, Err(StoreError::Backend(_))));
}

#[tokio::test]
async fn a_full_disk_is_a_backend_error_and_the_next_write_works_again() {
    let (db, store) = fresh().await;
    populate(&store).await;
    // What PostgreSQL answers when it cannot extend a file (SQLSTATE 53100).
    psql(
        &db,
        "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$;
         CREATE TRIGGER full_disk BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION full_disk();
         CREATE TRIGGER full_disk BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION full_disk();",
    )
    .await
    .unwrap();
    let row = message(1, "bot@agents.localhost", 1);
    let err = store.index_messages(std::slice::from_ref(&row)).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("53100")), "{err}");
    let err = store.audit_append(&ev()).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("No space left")), "{err}");
    assert!(matches!(store.add_owner(&owner_record(3), &ev()).await, Err(StoreError::Backend(_))));
    assert_eq!(store.list_owners().await.unwrap().len(), 2, "nothing half-written");
    psql(&db, "DROP TRIGGER full_disk ON messages; DROP TRIGGER full_disk ON audit_log").await.unwrap();
    // Space is back: the same store writes again, no restart. (The failed
    // batch's value is not handed out again: `seq` may have gaps, never
    // reuses a value and keeps its order.)
    let first = store.index_messages(&[row]).await.unwrap()[0].seq;
    assert!(first >= 1);
    assert!(store.index_messages(&[message(1, "bot@agents.localhost", 2)]).await.unwrap()[0].seq > first);
    assert_eq!(store.audit_append(&ev()).await.unwrap().seq(), 7);
    store.check_writable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_errors_and_the_pool_recovers() {
    let (db, store) = fresh().await;
    populate(&store).await;
    // A statement in flight when its connection is killed fails; it does not panic.
    let slow = {
        let store = store.clone();
        tokio::spawn(async move {
            // A long claim: the lock held by the other connection below keeps it waiting.
            store.claim_due(NOW, 10, NOW + 60).await
        })
    };
    use sqlx::{Connection, Executor};
    let mut holder = sqlx::PgConnection::connect(db.url()).await.unwrap();
    holder.execute("BEGIN; LOCK TABLE outbound_queue IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocked = store.clone();
    let waiting = tokio::spawn(async move { blocked.list_queue().await });
    // Wait until the store's statement is waiting for the lock, then kill the store's sessions.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity
              WHERE application_name = 'agentkeys' AND datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut holder)
        .await
        .unwrap();
        if n > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'agentkeys' AND datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    holder.execute("ROLLBACK").await.unwrap();
    let lost = waiting.await.unwrap();
    assert!(matches!(lost, Err(StoreError::Backend(_))), "{lost:?}");
    let _ = slow.await.unwrap(); // an error or an answer, never a panic
    // Every pooled connection is dead now, each idle for less than the alive
    // bypass window, so none is pinged when handed out. A transaction still
    // starts at once: its BEGIN moves on to another connection until a fresh
    // one answers.
    store.add_owner(&owner_record(3), &ev()).await.unwrap();
    // Past the window every idle connection is pinged before it is handed out,
    // so no statement meets a dead one. Fill the pool with live connections,
    // end them all, wait out the window: as many calls at once as the pool holds.
    let owners_at_once = || async {
        let calls: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.list_owners().await })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap().map(|owners| owners.len()));
        }
        answers
    };
    assert!(owners_at_once().await.iter().all(|n| matches!(n, Ok(3))));
    assert!(kill_sessions(&mut holder).await > 1, "the pool held several connections");
    tokio::time::sleep(ALIVE_BYPASS_WINDOW).await;
    let answers = owners_at_once().await;
    assert!(answers.iter().all(|n| matches!(n, Ok(3))), "{answers:?}");
    store.audit_append(&ev()).await.unwrap();
    verify(&store.audit_all().await.unwrap()).unwrap();
}

/// Ends every session of ours on this database (as a restart or failover
/// does); returns how many there were.
async fn kill_sessions(holder: &mut sqlx::PgConnection) -> i64 {
    let (ended,): (i64,) = sqlx::query_as(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = 'agentkeys' AND datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(holder)
    .await
    .unwrap();
    ended
}

#[tokio::test]
async fn a_closed_store_refuses_everything() {
    let (_db, store) = fresh().await;
    store.close().await;
    assert!(matches!(store.list_owners().await, Err(StoreError::Backend(_))));
    assert!(matches!(store.audit_append(&ev()).await, Err(StoreError::Backend(_))));
}

// ---------------------------------------------------------------------------
// MetadataStore: directory
// ---------------------------------------------------------------------------

#[tokio::test]
async fn domains_and_their_keys() {
    let (_db, store) = fresh().await;
    store.ensure_domain(&domain(), NOW).await.unwrap();
    store.ensure_domain(&domain(), NOW).await.unwrap();
    assert_eq!(store.list_domains().await.unwrap(), vec![domain()]);
    assert!(store.is_hosted_domain(DOMAIN).await.unwrap());
    assert!(!store.is_hosted_domain("elsewhere.test").await.unwrap());

    let other: Domain = "mail.example.com".parse().unwrap();
    let keys = DomainKeyRecord { domain: other.clone(), ..dkim(1) };
    store.add_domain(&keys, NOW, &event("domain.create", "mail.example.com")).await.unwrap();
    assert!(is_conflict(store.add_domain(&keys, NOW, &ev()).await));
    assert_eq!(store.domain_keys(&other).await.unwrap(), vec![keys.clone()]);
    // A version stored once: the second writer gets the first one's row, no receipt.
    let v2 = DomainKeyRecord { domain: other.clone(), ..dkim(2) };
    let (stored, receipt) = store.add_domain_keys(&v2, &ev()).await.unwrap();
    assert_eq!((stored, receipt.is_some()), (v2.clone(), true));
    let again = DomainKeyRecord { selector_ed: "other".into(), ..v2.clone() };
    let (stored, receipt) = store.add_domain_keys(&again, &ev()).await.unwrap();
    assert_eq!((stored, receipt.is_some()), (v2.clone(), false));
    let unhosted = DomainKeyRecord { domain: "nowhere.test".parse().unwrap(), ..dkim(1) };
    assert!(is_not_found(store.add_domain_keys(&unhosted, &ev()).await));
    assert_eq!(store.domain_keys(&other).await.unwrap().len(), 2);

    // A domain with inboxes stays; without, it goes with its keys.
    store.add_owner(&owner_record(1), &ev()).await.unwrap();
    store.add_agent(&agent_record(1, 1), &ev()).await.unwrap();
    store.create_inbox(&inbox("x@mail.example.com", 1, 1), &ev()).await.unwrap();
    let refused = store.remove_domain(&other, &ev()).await;
    assert!(matches!(&refused, Err(StoreError::Invalid(m)) if m.contains("x@mail.example.com")), "{refused:?}");
    store.remove_domain(&"nowhere.test".parse().unwrap(), &ev()).await.unwrap_err();
    let lonely: Domain = "lonely.test".parse().unwrap();
    store.add_domain(&DomainKeyRecord { domain: lonely.clone(), ..dkim(1) }, NOW, &ev()).await.unwrap();
    store.remove_domain(&lonely, &ev()).await.unwrap();
    assert!(!store.is_hosted_domain("lonely.test").await.unwrap());
    assert!(store.domain_keys(&lonely).await.unwrap().is_empty());
    assert!(is_not_found(store.remove_domain(&lonely, &ev()).await));
    // Only inboxes of exactly this domain block it, not those of a domain it is a suffix of.
    let under: Domain = "ail.example.com".parse().unwrap();
    store.add_domain(&DomainKeyRecord { domain: under.clone(), ..dkim(1) }, NOW, &ev()).await.unwrap();
    store.remove_domain(&under, &ev()).await.unwrap();
}

#[tokio::test]
async fn owners_agents_inboxes() {
    let (_db, store) = fresh().await;
    store.ensure_domain(&domain(), NOW).await.unwrap();
    store.add_owner(&owner_record(1), &ev()).await.unwrap();
    assert!(is_conflict(store.add_owner(&owner_record(1), &ev()).await));
    store.add_owner(&owner_record(2), &ev()).await.unwrap();
    assert_eq!(store.list_owners().await.unwrap(), vec![owner_record(1), owner_record(2)]);

    assert!(is_not_found(store.add_agent(&agent_record(1, 9), &ev()).await));
    store.add_agent(&agent_record(1, 1), &ev()).await.unwrap();
    assert!(is_conflict(store.add_agent(&agent_record(1, 1), &ev()).await));
    store.add_agent(&agent_record(2, 2), &ev()).await.unwrap();
    assert_eq!(store.get_agent(&agent(1)).await.unwrap(), Some(agent_record(1, 1)));
    assert_eq!(store.get_agent(&agent(9)).await.unwrap(), None);
    assert_eq!(store.list_agents(None).await.unwrap(), vec![agent_record(1, 1), agent_record(2, 2)]);
    assert_eq!(store.list_agents(Some(&owner(2))).await.unwrap(), vec![agent_record(2, 2)]);

    assert!(is_invalid(store.create_inbox(&inbox("bot@elsewhere.test", 1, 1), &ev()).await));
    assert!(is_not_found(store.create_inbox(&inbox("bot@agents.localhost", 1, 9), &ev()).await));
    assert!(is_invalid(store.create_inbox(&inbox("bot@agents.localhost", 2, 1), &ev()).await));
    store.create_inbox(&inbox("bot@agents.localhost", 1, 1), &ev()).await.unwrap();
    assert!(is_conflict(store.create_inbox(&inbox("bot@agents.localhost", 1, 1), &ev()).await));
    store.create_inbox(&inbox("a-z@agents.localhost", 1, 1), &ev()).await.unwrap();
    store.create_inbox(&inbox("other@agents.localhost", 2, 2), &ev()).await.unwrap();
    let all: Vec<String> = store.list_inboxes(None).await.unwrap().iter().map(|i| i.address.to_string()).collect();
    assert_eq!(all, ["a-z@agents.localhost", "bot@agents.localhost", "other@agents.localhost"], "bytewise order");
    assert_eq!(store.list_inboxes(Some(&owner(2))).await.unwrap(), vec![inbox("other@agents.localhost", 2, 2)]);

    let bot = addr("bot@agents.localhost");
    assert_eq!(store.recipient(&bot).await.unwrap().unwrap().status, InboxStatus::Active);
    store.set_inbox_status(&bot, InboxStatus::Disabled, &ev()).await.unwrap();
    let r = store.recipient(&bot).await.unwrap().unwrap();
    assert_eq!((r.owner, r.status), (owner(1), InboxStatus::Disabled));
    assert!(store.recipient(&addr("nobody@agents.localhost")).await.unwrap().is_none());
    assert!(is_not_found(store.set_inbox_status(&addr("nobody@agents.localhost"), InboxStatus::Active, &ev()).await));
}

#[tokio::test]
async fn keys_grants_and_auth_facts() {
    let (_db, store) = fresh().await;
    populate(&store).await;
    assert!(is_not_found(store.create_key(&key(1, 9), &ev()).await));
    store.create_key(&key(1, 1), &ev()).await.unwrap();
    let same_id = KeyRecord { hash: KeyHash([77; 32]), ..key(1, 1) };
    assert!(matches!(store.create_key(&same_id, &ev()).await, Err(StoreError::Conflict { what }) if what.contains("key_")));
    let same_secret = KeyRecord { id: key_id(5), ..key(1, 1) };
    assert!(matches!(store.create_key(&same_secret, &ev()).await, Err(StoreError::Conflict { what }) if what.contains("same secret")));
    store.create_key(&key(2, 1), &ev()).await.unwrap();
    store.create_key(&key(4, 2), &ev()).await.unwrap();
    assert_eq!(store.list_keys(&agent(1)).await.unwrap(), vec![key(1, 1), key(2, 1)]);

    // Revoking twice keeps the first time.
    store.revoke_key(&key_id(2), NOW + 5, &ev()).await.unwrap();
    store.revoke_key(&key_id(2), NOW + 9, &ev()).await.unwrap();
    assert_eq!(store.list_keys(&agent(1)).await.unwrap()[1].revoked_at, Some(NOW + 5));
    assert!(is_not_found(store.revoke_key(&key_id(9), NOW, &ev()).await));
    // Another owner's key answers like a missing one.
    assert!(is_not_found(store.revoke_owner_key(&owner(2), &key_id(1), NOW, &ev()).await));
    store.revoke_owner_key(&owner(2), &key_id(4), NOW + 1, &ev()).await.unwrap();

    let facts = store.key_facts_by_hash(&KeyHash([1; 32])).await.unwrap().unwrap();
    assert_eq!((facts.id, facts.agent, facts.owner), (key_id(1), agent(1), owner(1)));
    assert!(store.key_facts_by_hash(&KeyHash([99; 32])).await.unwrap().is_none());

    // Grants: owner must be the agent's; an exact address must be the owner's inbox.
    assert!(is_not_found(store.add_grant(&grant(1, 1, 9, "*@agents.localhost", "send"), &ev()).await));
    assert!(is_invalid(store.add_grant(&grant(1, 2, 1, "*@agents.localhost", "send"), &ev()).await));
    assert!(is_not_found(store.add_grant(&grant(1, 1, 1, "other@agents.localhost", "send"), &ev()).await));
    assert!(is_not_found(store.add_grant(&grant(1, 1, 1, "missing@agents.localhost", "send"), &ev()).await));
    store.add_grant(&grant(1, 1, 1, "*@agents.localhost", "send"), &ev()).await.unwrap();
    assert!(is_conflict(store.add_grant(&grant(1, 1, 1, "*@agents.localhost", "send"), &ev()).await));
    store.add_grant(&grant(2, 1, 1, "bot@agents.localhost", "read"), &ev()).await.unwrap();
    store.add_grant(&grant(3, 2, 2, "other@agents.localhost", "read,send"), &ev()).await.unwrap();
    assert_eq!(store.list_grants(None).await.unwrap().len(), 3);
    assert_eq!(store.list_grants(Some(&agent(1))).await.unwrap(), vec![
        grant(1, 1, 1, "*@agents.localhost", "send"),
        grant(2, 1, 1, "bot@agents.localhost", "read")
    ]);
    assert_eq!(store.list_owner_grants(&owner(2)).await.unwrap(), vec![grant(3, 2, 2, "other@agents.localhost", "read,send")]);
    store.revoke_grant(&grant_id(2), NOW + 3, &ev()).await.unwrap();
    store.revoke_grant(&grant_id(2), NOW + 4, &ev()).await.unwrap();
    assert_eq!(store.list_grants(Some(&agent(1))).await.unwrap()[1].revoked_at, Some(NOW + 3));
    assert!(is_not_found(store.revoke_grant(&grant_id(9), NOW, &ev()).await));
    assert!(is_not_found(store.revoke_owner_grant(&owner(1), &grant_id(3), NOW, &ev()).await));
    store.revoke_owner_grant(&owner(2), &grant_id(3), NOW + 2, &ev()).await.unwrap();

    let (grants, inbox_owner) = store.grants_and_inbox_owner(&agent(1), &addr("bot@agents.localhost")).await.unwrap();
    assert_eq!((grants.len(), inbox_owner), (2, Some(owner(1))));
    let (grants, inbox_owner) = store.grants_and_inbox_owner(&agent(9), &addr("nobody@agents.localhost")).await.unwrap();
    assert!(grants.is_empty() && inbox_owner.is_none());

    let facts = store.auth_facts(&Credentials { address: addr("bot@agents.localhost"), key_hash: KeyHash([1; 32]) }).await.unwrap();
    assert_eq!(facts.key.as_ref().map(|k| k.id.clone()), Some(key_id(1)));
    assert_eq!(facts.grants.len(), 2);
    assert_eq!(facts.inbox, Some((owner(1), InboxStatus::Active)));
    let nothing = store.auth_facts(&Credentials { address: addr("nobody@agents.localhost"), key_hash: KeyHash([99; 32]) }).await.unwrap();
    assert!(nothing.key.is_none() && nothing.grants.is_empty() && nothing.inbox.is_none());
}

#[tokio::test]
async fn a_grant_changes_only_by_compare_and_set_and_only_narrower() {
    let (_db, store) = fresh().await;
    populate(&store).await;
    let before = grant(1, 1, 1, "*@agents.localhost", "read,send");
    store.add_grant(&before, &ev()).await.unwrap();
    let narrower = Grant { scopes: "read".parse().unwrap(), expires_at: NOW + 2 * DAY, ..before.clone() };
    let wider = Grant { scopes: "read,send,admin".parse().unwrap(), ..before.clone() };
    assert!(is_invalid(store.change_owner_grant(&owner(1), &before, &wider, &ev()).await));
    let moved = Grant { pattern: "bot@agents.localhost".parse().unwrap(), ..narrower.clone() };
    assert!(is_invalid(store.change_owner_grant(&owner(1), &before, &moved, &ev()).await));
    assert!(is_invalid(store.change_owner_grant(&owner(2), &before, &narrower, &ev()).await));
    store.change_owner_grant(&owner(1), &before, &narrower, &ev()).await.unwrap();
    assert_eq!(store.list_owner_grants(&owner(1)).await.unwrap(), vec![narrower.clone()]);
    // `before` is stale now.
    assert!(is_conflict(store.change_owner_grant(&owner(1), &before, &narrower, &ev()).await));
    let missing = Grant { id: grant_id(9), ..before.clone() };
    assert!(is_not_found(store.change_owner_grant(&owner(1), &missing, &Grant { id: grant_id(9), ..narrower.clone() }, &ev()).await));
    // A revoked grant does not change.
    store.revoke_grant(&grant_id(1), NOW, &ev()).await.unwrap();
    let revoked = Grant { revoked_at: Some(NOW), ..narrower.clone() };
    let narrowest = Grant { expires_at: NOW + 1, ..narrower.clone() };
    assert!(is_conflict(store.change_owner_grant(&owner(1), &revoked, &narrowest, &ev()).await));
}

// ---------------------------------------------------------------------------
// MetadataStore: owner approval and pairing
// ---------------------------------------------------------------------------

fn ticket(n: u8, hash: u8) -> EnrollmentTicketRecord {
    EnrollmentTicketRecord { owner: owner(n), code_hash: [hash; 32], expires_at: NOW + DAY, consumed_at: None }
}

#[tokio::test]
async fn enrollment_is_single_use_and_uniform() {
    let (_db, store) = fresh().await;
    assert!(is_invalid(store.add_owner_with_enrollment(&owner_record(1), &ticket(2, 7), &ev()).await));
    store.add_owner_with_enrollment(&owner_record(1), &ticket(1, 7), &ev()).await.unwrap();
    assert!(is_conflict(store.add_owner_with_enrollment(&owner_record(1), &ticket(1, 7), &ev()).await));
    assert_eq!(store.enrollment_ticket(&owner(1)).await.unwrap(), Some(ticket(1, 7)));
    assert!(is_not_found(store.issue_enrollment(&ticket(9, 1), &ev()).await));
    let pk = [5u8; 32];
    for (who, hash, at) in [(1, [8u8; 32], NOW), (1, [7u8; 32], NOW + DAY), (9, [7u8; 32], NOW)] {
        let err = store.redeem_enrollment(&owner(who), &hash, &pk, at, &ev()).await.unwrap_err();
        assert!(matches!(&err, StoreError::NotFound { what } if what == "enrollment code"), "{err}");
    }
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), None);
    store.redeem_enrollment(&owner(1), &[7; 32], &pk, NOW + 1, &ev()).await.unwrap();
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), Some(pk));
    assert_eq!(store.enrollment_ticket(&owner(1)).await.unwrap(), None, "spent");
    assert!(is_not_found(store.redeem_enrollment(&owner(1), &[7; 32], &[6; 32], NOW + 2, &ev()).await));
    // A new ticket replaces the key on redemption.
    store.issue_enrollment(&ticket(1, 3), &ev()).await.unwrap();
    store.redeem_enrollment(&owner(1), &[3; 32], &[6; 32], NOW + 3, &ev()).await.unwrap();
    assert_eq!(store.owner_public_key(&owner(1)).await.unwrap(), Some([6; 32]));
}

#[tokio::test]
async fn nonces_are_fresh_once_and_forgotten_after_the_window() {
    let (_db, store) = fresh().await;
    assert!(store.record_owner_nonce(&owner(1), "n1", NOW, NOW - 60).await.unwrap().is_fresh());
    assert_eq!(store.record_owner_nonce(&owner(1), "n1", NOW, NOW - 60).await.unwrap(), NonceUse::Replayed);
    assert!(store.record_owner_nonce(&owner(2), "n1", NOW, NOW - 60).await.unwrap().is_fresh(), "per owner");
    // Past the window the old nonce is pruned first, so it is fresh again.
    assert!(store.record_owner_nonce(&owner(1), "n1", NOW + 200, NOW + 100).await.unwrap().is_fresh());
}

fn pairing_request(hash: u8, opened_at: UnixTime) -> PairingRecord {
    PairingRecord {
        code_hash: [hash; 32],
        device_key: [7; 32],
        agent: agent(7),
        name: Some("bot".to_owned()),
        opened_at,
        status: PairingStatus::Pending,
        owner: None,
        approved_at: None,
        addressed_to: None,
    }
}

#[tokio::test]
async fn pairing_transitions_are_compare_and_set() {
    let (_db, store) = fresh().await;
    for n in [1, 2] {
        store.add_owner(&owner_record(n), &ev()).await.unwrap();
    }
    store.open_pairing(&pairing_request(1, NOW), NOW - DAY, &ev()).await.unwrap();
    assert!(is_conflict(store.open_pairing(&pairing_request(1, NOW), NOW - DAY, &ev()).await));
    assert_eq!(store.pairing(&[1; 32]).await.unwrap().unwrap(), pairing_request(1, NOW));
    assert!(store.pairing(&[9; 32]).await.unwrap().is_none());
    let new_agent = AgentRecord { id: agent(7), owner: owner(1), name: Some("bot".into()), created_at: NOW };
    let key7 = KeyRecord { agent: agent(7), ..key(7, 7) };
    assert!(is_not_found(store.collect_pairing(&[1; 32], &key7, NOW, &ev()).await), "not approved yet");
    let other_agent = AgentRecord { id: agent(8), ..new_agent.clone() };
    assert!(is_not_found(store.approve_pairing(&[1; 32], &other_agent, NOW, &ev()).await), "another agent's request");
    store.approve_pairing(&[1; 32], &new_agent, NOW + 1, &ev()).await.unwrap();
    assert!(is_not_found(store.approve_pairing(&[1; 32], &new_agent, NOW + 2, &ev()).await), "approved once");
    let approved = store.pairing(&[1; 32]).await.unwrap().unwrap();
    assert_eq!((approved.status, approved.owner, approved.approved_at), (PairingStatus::Approved, Some(owner(1)), Some(NOW + 1)));
    assert_eq!(store.get_agent(&agent(7)).await.unwrap(), Some(new_agent.clone()));
    store.collect_pairing(&[1; 32], &key7, NOW + 2, &ev()).await.unwrap();
    assert!(is_not_found(store.collect_pairing(&[1; 32], &key7, NOW + 3, &ev()).await), "collected once");
    assert_eq!(store.pairing(&[1; 32]).await.unwrap().unwrap().status, PairingStatus::Consumed);
    assert_eq!(store.list_keys(&agent(7)).await.unwrap(), vec![key7]);
    // The same agent id for another owner is a conflict; the owner must exist.
    store.open_pairing(&pairing_request(2, NOW), NOW - DAY, &ev()).await.unwrap();
    let stolen = AgentRecord { owner: owner(2), ..new_agent.clone() };
    assert!(is_conflict(store.approve_pairing(&[2; 32], &stolen, NOW, &ev()).await));
    assert_eq!(store.pairing(&[2; 32]).await.unwrap().unwrap().status, PairingStatus::Pending, "nothing changed");
    let ownerless = AgentRecord { id: agent(9), owner: owner(9), ..new_agent.clone() };
    let request9 = PairingRecord { agent: agent(9), ..pairing_request(3, NOW) };
    store.open_pairing(&request9, NOW - DAY, &ev()).await.unwrap();
    assert!(is_not_found(store.approve_pairing(&[3; 32], &ownerless, NOW, &ev()).await));
    // Requests opened before `forget_before` are pruned by the next open.
    store.open_pairing(&pairing_request(4, NOW + 10 * DAY), NOW + DAY, &ev()).await.unwrap();
    assert!(store.pairing(&[2; 32]).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------
// MetadataStore: audit log and checkpoints
// ---------------------------------------------------------------------------

#[tokio::test]
async fn audited_writes_and_appends_form_one_verified_chain() {
    let (_db, store) = fresh().await;
    populate(&store).await; // 6 audited writes
    let r = store.audit_append(&event("credential.read", "bot@agents.localhost").with_outcome(Outcome::Denied)).await.unwrap();
    assert_eq!(r.seq(), 7);
    let records = store.audit_all().await.unwrap();
    assert_eq!(records.len(), 7);
    assert_eq!(verify(&records).unwrap().count, 7);
    assert_eq!(store.audit_head().await.unwrap(), records[6].head());
    assert_eq!(records[0].ts, NOW, "stamped by the store's clock");
    let page = store.audit_list(2, 3).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(store.audit_list(u64::MAX, 3).await.unwrap().is_empty());

    // An audited change must be a change that happened; an invalid event is
    // refused alone and takes no seq.
    let denied = ev().with_outcome(Outcome::Denied);
    assert!(is_invalid(store.add_owner(&owner_record(3), &denied).await));
    assert!(is_invalid(store.audit_append(&AuditEvent::ok(Actor::System, "Not An Op", "s")).await));
    assert_eq!(store.audit_head().await.unwrap().seq, 7);
    assert_eq!(store.list_owners().await.unwrap().len(), 2);
}

#[tokio::test]
async fn no_change_without_its_record_and_no_record_without_its_change() {
    let (db, store) = fresh().await;
    populate(&store).await;
    psql(
        &db,
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.subject = 'poison' THEN RAISE EXCEPTION 'injected audit failure'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .await
    .unwrap();
    let poison = event("owner.create", "poison");
    let err = store.add_owner(&owner_record(3), &poison).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("injected audit failure")), "{err}");
    assert_eq!(store.list_owners().await.unwrap().len(), 2, "the owner rolled back with its record");
    // A batch of stand-alone appends with one poisoned record fails entirely.
    let appends = ["x1", "poison", "x2"].map(|s| {
        let store = store.clone();
        tokio::spawn(async move { store.audit_append(&event("test.append", s)).await })
    });
    let mut failed = 0;
    for a in appends {
        if a.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert!(failed >= 1);
    let head = store.audit_head().await.unwrap().seq;
    assert_eq!(head as usize, 6 + 3 - failed, "a failed batch leaves nothing");
    // No record when the change fails.
    assert!(is_conflict(store.add_owner(&owner_record(1), &ev()).await));
    assert_eq!(store.audit_head().await.unwrap().seq, head);
    verify(&store.audit_all().await.unwrap()).unwrap();
}

#[tokio::test]
async fn the_log_is_append_only_and_tampering_is_reported() {
    let (db, store) = fresh().await;
    populate(&store).await;
    for sql in ["UPDATE audit_log SET subject = 'x' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 2", "TRUNCATE audit_log"] {
        let err = psql(&db, sql).await.unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    psql(&db, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only; UPDATE audit_log SET subject = 'edited' WHERE seq = 2")
        .await
        .unwrap();
    let broken = verify(&store.audit_all().await.unwrap()).unwrap_err();
    assert_eq!((broken.seq, broken.reason), (2, BrokenReason::HashMismatch));
    psql(&db, "UPDATE audit_log SET detail = 'not json' WHERE seq = 3").await.unwrap();
    assert!(matches!(store.audit_list(2, 5).await, Err(StoreError::AuditUnreadable { seq: 3, .. })));
}

/// The columns `agentkeys_audit_hash` takes, one array each: prev_hash (hex),
/// seq, ts, actor, operation, subject, outcome, canonical detail.
type HashColumns = (Vec<String>, Vec<i64>, Vec<i64>, Vec<String>, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// `agentkeys_audit_hash` (migration 0017) of each record, computed by the
/// database in one query.
async fn sql_hashes(pool: &sqlx::PgPool, records: &[AuditRecord]) -> Vec<String> {
    let mut cols: HashColumns = Default::default();
    for r in records {
        cols.0.push(hash_to_hex(&r.prev_hash));
        cols.1.push(i64::try_from(r.seq).unwrap());
        cols.2.push(r.ts);
        cols.3.push(r.actor.to_string());
        cols.4.push(r.operation.clone());
        cols.5.push(r.subject.clone());
        cols.6.push(r.outcome.as_str().to_owned());
        cols.7.push(canonical_json(&r.detail).unwrap());
    }
    sqlx::query_scalar(
        "SELECT encode(agentkeys_audit_hash(decode(k.prev, 'hex'), $1, k.seq, k.ts, k.actor, k.op, k.subject, k.outcome, k.detail), 'hex')
           FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
                WITH ORDINALITY AS k (prev, seq, ts, actor, op, subject, outcome, detail, n)
          ORDER BY k.n",
    )
    .bind(FORMAT_TAG)
    .bind(&cols.0)
    .bind(&cols.1)
    .bind(&cols.2)
    .bind(&cols.3)
    .bind(&cols.4)
    .bind(&cols.5)
    .bind(&cols.6)
    .bind(&cols.7)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Generated records at any place of a chain: any link, seq from 1 to the
/// largest the database stores, any ts (negative included).
fn any_record() -> impl Strategy<Value = AuditRecord> {
    (any::<[u8; 32]>(), 1..=i64::MAX, any::<i64>(), agentkeys_store::conformance::audit_events()).prop_map(
        |(prev_hash, seq, ts, e)| AuditRecord {
            seq: u64::try_from(seq).unwrap(),
            ts,
            actor: e.actor,
            operation: e.operation,
            subject: e.subject,
            outcome: e.outcome,
            detail: e.detail,
            prev_hash,
            hash: [0; 32],
        },
    )
}

/// The hash the database computes when it appends (`agentkeys_audit_hash`) is
/// the audit crate's, byte for byte: on the committed vectors
/// (`crates/audit/testdata/vectors.json`, made by an independent Python
/// implementation) and over generated records.
#[test]
fn the_databases_record_hash_is_the_audit_crates() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let db = runtime.block_on(TempDatabase::create()).unwrap();
    let pool = runtime.block_on(async {
        PgStore::connect(db.url()).await.unwrap().close().await; // the schema
        sqlx::PgPool::connect(db.url()).await.unwrap()
    });
    let vectors: serde_json::Value = serde_json::from_str(include_str!("../../audit/testdata/vectors.json")).unwrap();
    let records: Vec<AuditRecord> = vectors["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("canonical");
            serde_json::from_value(v).unwrap()
        })
        .collect();
    assert!(records.len() >= 5, "the vectors are there");
    let expected: Vec<String> = records.iter().map(|r| hash_to_hex(&r.hash)).collect();
    assert_eq!(runtime.block_on(sql_hashes(&pool, &records)), expected, "the committed vectors");
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(records in proptest::collection::vec(any_record(), 1..24))| {
        let rust: Vec<String> = records.iter().map(|r| hash_to_hex(&r.compute_hash().unwrap())).collect();
        prop_assert_eq!(runtime.block_on(sql_hashes(&pool, &records)), rust);
    });
    runtime.block_on(pool.close());
    drop(db);
}

/// The node seals every record the database appended again in Rust: if the
/// database's hash differed, no receipt is handed out, an audited change rolls
/// back, and `audit verify` reports the committed stand-alone record.
#[tokio::test]
async fn a_record_the_database_hashes_otherwise_gets_no_receipt() {
    let (db, store) = fresh().await;
    populate(&store).await;
    psql(
        &db,
        "CREATE OR REPLACE FUNCTION agentkeys_audit_hash(
             p_prev bytea, p_tag text, p_seq bigint, p_ts bigint, p_actor text, p_operation text,
             p_subject text, p_outcome text, p_detail text) RETURNS bytea
         LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT sha256(p_prev || convert_to(p_subject, 'UTF8')) $$",
    )
    .await
    .unwrap();
    // Fresh connections, so no cached plan keeps the real function.
    let node = PgStore::connect(db.url()).await.unwrap();
    let err = node.add_owner(&owner_record(3), &ev()).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("the audit crate computes")), "{err}");
    assert_eq!(node.list_owners().await.unwrap().len(), 2, "the owner rolled back with its record");
    assert_eq!(node.audit_head().await.unwrap().seq, 6);
    let err = node.audit_append(&ev()).await.unwrap_err();
    assert!(matches!(&err, StoreError::Backend(m) if m.contains("the audit crate computes")), "{err}");
    let broken = verify(&node.audit_all().await.unwrap()).unwrap_err();
    assert_eq!((broken.seq, broken.reason), (7, BrokenReason::HashMismatch));
}

#[tokio::test]
async fn the_owner_sees_the_records_that_concern_them() {
    let (_db, store) = fresh().await;
    populate(&store).await;
    store.create_key(&key(1, 1), &event("key.create", key_id(1).as_str())).await.unwrap();
    store.add_grant(&grant(1, 1, 1, "*@agents.localhost", "send"), &event("grant.create", grant_id(1).as_str())).await.unwrap();
    let o1 = owner(1);
    let mine = [
        AuditEvent::ok(Actor::Owner(o1.clone()), "owner.login", "x"),
        event("owner.touch", o1.as_str()),
        event("agent.touch", agent(1).as_str()),
        event("inbox.touch", "bot@agents.localhost"),
        event("x.detail_owner", "x").with_detail(json!({ "owner": o1.as_str() })),
        event("x.detail_agent", "x").with_detail(json!({ "agent": agent(1).as_str() })),
    ];
    let theirs = [
        event("owner.touch", owner(2).as_str()),
        event("inbox.touch", "other@agents.localhost"),
        event("x.detail_owner", "x").with_detail(json!({ "owner": owner(2).as_str() })),
        event("x.number", "x").with_detail(json!({ "owner": 5 })),
    ];
    let mut expected = BTreeSet::new();
    for e in &mine {
        expected.insert(store.audit_append(e).await.unwrap().seq());
    }
    for e in &theirs {
        store.audit_append(e).await.unwrap();
    }
    let all = store.audit_all().await.unwrap();
    // Populate's own records about owner 1: owner, agent, inbox; key and grant.
    for r in &all {
        if [o1.as_str(), agent(1).as_str(), "bot@agents.localhost", key_id(1).as_str(), grant_id(1).as_str()].contains(&r.subject.as_str()) {
            expected.insert(r.seq);
        }
    }
    let listed: BTreeSet<u64> = store.audit_list_for_owner(&o1, 0, 1000).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(listed, expected);
    let paged = store.audit_list_for_owner(&o1, 3, 2).await.unwrap();
    assert_eq!(paged.iter().map(|r| r.seq).collect::<Vec<_>>(), expected.iter().copied().filter(|s| *s > 3).take(2).collect::<Vec<_>>());
}

fn checkpoint(c: &ChainedCheckpoint) -> CheckpointRecord {
    CheckpointRecord::chained(c, vec![c.counter as u8; 64])
}

#[tokio::test]
async fn checkpoints_append_only_the_next_link() {
    let (_db, store) = fresh().await;
    assert!(store.list_checkpoints().await.unwrap().is_empty());
    assert!(store.checkpoint_start().await.unwrap().is_none());
    assert!(store.last_checkpoint().await.unwrap().is_none());
    let h = |seq: u64| ChainHead { seq, hash: [seq as u8; 32] };
    let first = ChainedCheckpoint::first(h(3), NOW);
    let second = first.next(h(5), NOW + 1).unwrap();
    let third = second.next(h(9), NOW + 2).unwrap();
    assert!(!store.add_checkpoint(&checkpoint(&second)).await.unwrap(), "not the first link");
    assert!(store.add_checkpoint(&checkpoint(&first)).await.unwrap());
    assert!(!store.add_checkpoint(&checkpoint(&first)).await.unwrap(), "already there");
    assert!(!store.add_checkpoint(&checkpoint(&third)).await.unwrap(), "skips a link");
    assert!(store.add_checkpoint(&checkpoint(&second)).await.unwrap());
    let stale = first.next(h(4), NOW).unwrap().next(h(4), NOW).unwrap();
    assert!(!store.add_checkpoint(&checkpoint(&stale)).await.unwrap());
    assert!(store.add_checkpoint(&checkpoint(&third)).await.unwrap());
    let all = store.list_checkpoints().await.unwrap();
    assert_eq!(all, vec![checkpoint(&first), checkpoint(&second), checkpoint(&third)]);
    assert_eq!(store.last_checkpoint().await.unwrap(), Some(checkpoint(&third)));
    assert_eq!(store.checkpoint_start().await.unwrap(), Some(checkpoint(&first)));
}

#[tokio::test]
async fn a_chain_whose_checkpoints_vanished_is_not_restarted() {
    let (db, store) = fresh().await;
    let first = ChainedCheckpoint::first(ChainHead { seq: 1, hash: [1; 32] }, NOW);
    assert!(store.add_checkpoint(&checkpoint(&first)).await.unwrap());
    psql(&db, "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER; DELETE FROM audit_checkpoints").await.unwrap();
    assert!(is_invalid(store.add_checkpoint(&checkpoint(&first)).await));
}

// ---------------------------------------------------------------------------
// MessageIndex
// ---------------------------------------------------------------------------

fn message(owner_n: u8, inbox: &str, ms: u64) -> NewMessage {
    NewMessage { owner: owner(owner_n), inbox: addr(inbox), id: Ulid::from_parts(ms, u128::from(ms)), size: ms, summary: Default::default(), facts: Default::default() }
}

#[tokio::test]
async fn the_index_lists_pages_and_replays_by_seq() {
    let (_db, store) = fresh().await;
    let bot = "bot@agents.localhost";
    let rows: Vec<NewMessage> = (1..=5).map(|i| message(1, bot, 1_700_000_000_000 + i * 1000)).collect();
    let indexed = store.index_messages(&rows[..3]).await.unwrap();
    assert_eq!(indexed.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(indexed[0].received_at, 1_700_000_001);
    // Idempotent: indexed rows keep their seq, new ones follow, input order kept.
    let again = store.index_messages(&[rows[3].clone(), rows[0].clone(), rows[4].clone(), rows[3].clone()]).await.unwrap();
    assert_eq!(again.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 1, 5, 4]);
    assert!(store.index_messages(&[]).await.unwrap().is_empty());
    store.index_messages(&[message(2, "other@agents.localhost", 1_700_000_000_500)]).await.unwrap();

    let (o1, inbox) = (owner(1), addr(bot));
    let page = |after: Option<usize>, before: Option<usize>, order, limit| PageQuery {
        after: after.map(|i| rows[i].id),
        before: before.map(|i| rows[i].id),
        order,
        limit,
    };
    let ids = |v: Vec<agentkeys_store::IndexedMessage>| v.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_messages(&o1, &inbox, &page(None, None, ListOrder::NewestFirst, 2)).await.unwrap()), [rows[4].id, rows[3].id]);
    assert_eq!(ids(store.list_messages(&o1, &inbox, &page(Some(1), None, ListOrder::OldestFirst, 10)).await.unwrap()), [rows[2].id, rows[3].id, rows[4].id]);
    assert_eq!(ids(store.list_messages(&o1, &inbox, &page(Some(0), Some(3), ListOrder::OldestFirst, 10)).await.unwrap()), [rows[1].id, rows[2].id]);
    assert!(store.list_messages(&owner(2), &inbox, &page(None, None, ListOrder::NewestFirst, 10)).await.unwrap().is_empty());

    assert_eq!(store.indexed_message(&o1, &inbox, rows[4].id).await.unwrap().map(|m| m.seq), Some(5));
    assert_eq!(store.indexed_message(&o1, &inbox, Ulid::new()).await.unwrap().map(|m| m.seq), None);
    assert_eq!(store.messages_since(&o1, &inbox, 2, None, 10).await.unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(store.messages_since(&o1, &inbox, 2, Some(rows[3].id), 10).await.unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [5]);
    assert_eq!(store.messages_since(&o1, &inbox, 0, None, 2).await.unwrap().len(), 2);

    assert_eq!(store.indexed_ids(&o1, &inbox).await.unwrap(), rows.iter().map(|m| m.id).collect::<HashSet<_>>());
    assert_eq!(store.unindex(&o1, &inbox, &[rows[0].id, Ulid::new()]).await.unwrap(), 1);
    assert_eq!(store.unindex(&o1, &inbox, &[]).await.unwrap(), 0);
    assert_eq!(store.indexed_ids(&o1, &inbox).await.unwrap().len(), 4);
    // A seq is never handed out again, even after its row is gone.
    assert_eq!(store.index_messages(&[rows[0].clone()]).await.unwrap()[0].seq, 7);
}

#[tokio::test]
async fn retention_is_per_domain_and_expiry_is_audited() {
    let (_db, store) = fresh().await;
    store.ensure_domain(&domain(), NOW).await.unwrap();
    store.ensure_domain(&"ail.example.com".parse().unwrap(), NOW).await.unwrap();
    assert!(is_invalid(store.set_domain_retention(&domain(), Some(0), &ev()).await));
    assert!(is_not_found(store.set_domain_retention(&"nowhere.test".parse().unwrap(), Some(5), &ev()).await));
    store.set_domain_retention(&domain(), Some(3600), &ev()).await.unwrap();
    let retentions = store.domain_retentions().await.unwrap();
    assert_eq!(retentions, vec![("agents.localhost".parse().unwrap(), Some(3600)), ("ail.example.com".parse().unwrap(), None)]);
    store.set_domain_retention(&domain(), None, &ev()).await.unwrap();
    assert_eq!(store.domain_retentions().await.unwrap()[0].1, None);

    let old: Vec<NewMessage> = (1..=3).map(|i| message(1, "bot@agents.localhost", i * 1000)).collect();
    let other_domain = message(1, "bot@ail.example.com", 500);
    let new = message(1, "bot@agents.localhost", 9_000_000);
    store.index_messages(&[old.clone(), vec![other_domain.clone(), new.clone()]].concat()).await.unwrap();
    let head = store.audit_head().await.unwrap().seq;
    let expire_event = |n: u64| AuditEvent::ok(Actor::System, "message.expire", DOMAIN).with_detail(json!({ "count": n }));
    let gone = store.expire_messages(&domain(), 5, 2, &expire_event).await.unwrap();
    assert_eq!(gone.iter().map(|m| m.id).collect::<Vec<_>>(), [old[0].id, old[1].id], "oldest first, at most the limit");
    let gone = store.expire_messages(&domain(), 5, 10, &expire_event).await.unwrap();
    assert_eq!(gone.iter().map(|m| m.id).collect::<Vec<_>>(), [old[2].id], "never another domain's");
    assert!(store.expire_messages(&domain(), 5, 10, &expire_event).await.unwrap().is_empty());
    let records = store.audit_list(head, 10).await.unwrap();
    assert_eq!(records.iter().map(|r| r.detail["count"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 1], "one record per batch, none for nothing");
    assert_eq!(store.indexed_ids(&owner(1), &addr("bot@agents.localhost")).await.unwrap(), HashSet::from([new.id]));
}

// ---------------------------------------------------------------------------
// OutboundQueue and the queue side of MetadataStore
// ---------------------------------------------------------------------------

fn outbound(id: &str, recipients: &[&str], queued_at: UnixTime) -> NewOutbound {
    NewOutbound {
        message_id: id.to_owned(),
        sender: addr("bot@agents.localhost"),
        owner: owner(1),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        size: 10,
        queued_at,
    }
}

#[tokio::test]
async fn enqueue_lists_and_refuses_like_sqlite() {
    let (_db, store) = fresh().await;
    store.enqueue_outbound(&outbound("01B", &["z@remote.test"], NOW + 5)).await.unwrap();
    store.enqueue_outbound(&outbound("01A", &["y@remote.test", "x@remote.test", "y@remote.test"], NOW)).await.unwrap();
    let queue = store.list_queue().await.unwrap();
    let rows: Vec<(&str, &str)> = queue.iter().map(|e| (e.message_id.as_str(), e.recipient.as_str())).collect();
    assert_eq!(rows, [("01A", "x@remote.test"), ("01A", "y@remote.test"), ("01B", "z@remote.test")]);
    assert!(queue.iter().all(|e| e.state == "queued" && e.attempts == 0));
    // A duplicate row fails the whole message: nothing of it is queued.
    assert!(is_conflict(store.enqueue_outbound(&outbound("01B", &["a@remote.test", "z@remote.test"], NOW)).await));
    assert_eq!(store.list_queue().await.unwrap().len(), 3);
    assert!(is_invalid(store.enqueue_outbound(&outbound("01C", &[], NOW)).await));
    let huge = NewOutbound { size: u64::MAX, ..outbound("01D", &["a@remote.test"], NOW) };
    assert!(is_invalid(store.enqueue_outbound(&huge).await));
}

async fn queued(recipients: &[&str]) -> (TempDatabase, PgStore) {
    let (db, store) = fresh().await;
    let mut message = outbound("01HMSG", recipients, 100);
    message.owner = "0x00000000000000000000000000000000000000aa".parse().unwrap();
    store.enqueue_outbound(&message).await.unwrap();
    (db, store)
}

#[tokio::test]
async fn a_claimed_row_is_not_claimed_again_until_its_lease_expires() {
    let (_db, store) = queued(&["a@example.com"]).await;
    assert!(store.claim_due(99, 10, 200).await.unwrap().is_empty(), "not due yet");
    let first = store.claim_due(100, 10, 200).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].entry.state.as_str(), first[0].owner.as_str()), ("sending", "0x00000000000000000000000000000000000000aa"));
    assert!(store.claim_due(150, 10, 300).await.unwrap().is_empty(), "leased");
    let second = store.claim_due(200, 10, 400).await.unwrap();
    assert_eq!(second.len(), 1);
    let lost = store.record_attempt(&first[0], AttemptOutcome::Delivered, 0, Some("250 ok"), 201).await;
    assert!(is_conflict(lost));
    assert_eq!(store.record_attempt(&second[0], AttemptOutcome::Delivered, 0, Some("250 ok"), 201).await.unwrap(), 0);
    let detail = store.queue_show("01HMSG").await.unwrap();
    assert_eq!((detail.recipients[0].state.as_str(), detail.recipients[0].attempts, detail.attempts.len()), ("delivered", 1, 1));
    assert_eq!(detail.attempts[0].response.as_deref(), Some("250 ok"));
    assert_eq!(store.unfinished("01HMSG").await.unwrap(), 0);
}

#[tokio::test]
async fn a_renewed_lease_keeps_the_row_and_recording_counts_what_is_left() {
    let (_db, store) = queued(&["a@example.com", "b@example.com"]).await;
    let claims = store.claim_due(100, 1, 200).await.unwrap();
    assert_eq!(store.renew_lease(&claims[0].lease, 400).await.unwrap(), 1);
    assert_eq!(store.renew_lease("not-a-lease", 400).await.unwrap(), 0);
    let others = store.claim_due(250, 10, 500).await.unwrap();
    assert_eq!(others.len(), 1, "past the first lease, only the unclaimed row");
    assert_ne!(others[0].entry.recipient, claims[0].entry.recipient);
    // Two attempts in one transaction, each with its own answer.
    let batch = [
        AttemptToRecord { claim: claims[0].clone(), outcome: AttemptOutcome::Delivered, next_attempt_at: 0, response: None, now: 260 },
        AttemptToRecord { claim: claims[0].clone(), outcome: AttemptOutcome::Delivered, next_attempt_at: 0, response: None, now: 260 },
        AttemptToRecord { claim: others[0].clone(), outcome: AttemptOutcome::Bounced, next_attempt_at: 0, response: Some("550".into()), now: 261 },
    ];
    let results = store.record_attempts(&batch).await.unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap(), &0);
    assert!(matches!(results[1], Err(StoreError::Conflict { .. })), "the lease was used");
    assert_eq!(results[2].as_ref().unwrap(), &0);
    assert_eq!(store.renew_lease(&claims[0].lease, 900).await.unwrap(), 0, "finished rows are not leased");
}

#[tokio::test]
async fn deferred_rows_come_back_when_due_and_retry_makes_them_due_now() {
    let (_db, store) = queued(&["a@example.com", "b@example.com"]).await;
    let claims = store.claim_due(100, 1, 200).await.unwrap();
    assert_eq!(claims.len(), 1, "limit");
    assert_eq!(store.record_attempt(&claims[0], AttemptOutcome::Deferred, 500, Some("451 later"), 101).await.unwrap(), 2);
    let other = store.claim_due(101, 10, 200).await.unwrap();
    assert_eq!(other.len(), 1);
    store.record_attempt(&other[0], AttemptOutcome::Bounced, 101, Some("550 no"), 101).await.unwrap();
    assert!(store.claim_due(102, 10, 200).await.unwrap().is_empty());
    assert_eq!(store.queue_retry("01HMSG", 102).await.unwrap(), 1, "bounced rows stay bounced");
    let again = store.claim_due(102, 10, 200).await.unwrap();
    assert_eq!((again.len(), again[0].entry.attempts), (1, 1));
    let counts = store.queue_counts().await.unwrap();
    assert_eq!(counts, vec![
        QueueStateCount { state: "bounced".into(), count: 1 },
        QueueStateCount { state: "sending".into(), count: 1 }
    ]);
    assert!(is_not_found(store.queue_retry("nope", 1).await));
    assert!(is_not_found(store.queue_show("nope").await));
}

#[tokio::test]
async fn delete_keeps_rows_being_sent() {
    let (_db, store) = queued(&["a@example.com", "b@example.com"]).await;
    let claims = store.claim_due(100, 1, 200).await.unwrap();
    assert_eq!(store.queue_delete("01HMSG").await.unwrap(), (1, 1));
    store.record_attempt(&claims[0], AttemptOutcome::Delivered, 0, None, 101).await.unwrap();
    assert_eq!(store.queue_delete("01HMSG").await.unwrap(), (1, 0));
    assert!(is_not_found(store.queue_show("01HMSG").await));
    assert!(is_not_found(store.queue_delete("01HMSG").await));
}

// ---------------------------------------------------------------------------
// SendIdempotency, DomainStatusStore
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_idempotency_key_is_claimed_once_replayed_refused_for_another_body_and_forgotten_after_a_day() {
    let (_db, store) = fresh().await;
    let inbox = addr("bot@agents.localhost");
    let other_inbox = addr("other@agents.localhost");
    let agent = agent(1);
    let key = [1u8; 32];
    let scope = IdempotencyScope { inbox: &inbox, agent: &agent, key_hash: &key };
    let (body, other_body) = ([2u8; 32], [3u8; 32]);
    let t0 = 1_000_000;
    let id = ulid::Ulid::new();
    assert_eq!(store.claim(scope, &body, id, t0).await.unwrap(), IdempotencyClaim::Claimed);
    assert_eq!(store.claim(scope, &body, id, t0).await.unwrap(), IdempotencyClaim::InProgress);
    assert_eq!(store.claim(scope, &other_body, id, t0).await.unwrap(), IdempotencyClaim::Mismatch);
    let elsewhere = IdempotencyScope { inbox: &other_inbox, ..scope };
    assert_eq!(store.claim(elsewhere, &other_body, id, t0).await.unwrap(), IdempotencyClaim::Claimed);
    store.finish(scope, id, "{\"message_id\":\"x\"}").await.unwrap();
    store.release(scope, id).await.unwrap();
    let replay = IdempotencyClaim::Replay("{\"message_id\":\"x\"}".to_owned());
    assert_eq!(store.claim(scope, &body, id, t0 + IDEMPOTENCY_KEY_TTL_SECS - 1).await.unwrap(), replay);
    assert_eq!(store.claim(scope, &body, id, t0 + IDEMPOTENCY_KEY_TTL_SECS).await.unwrap(), IdempotencyClaim::Claimed);
    store.release(scope, id).await.unwrap();
    assert_eq!(store.claim(scope, &other_body, id, t0 + IDEMPOTENCY_KEY_TTL_SECS).await.unwrap(), IdempotencyClaim::Claimed);
}

#[tokio::test]
async fn a_new_domain_has_not_started_and_the_status_is_stored() {
    let (_db, store) = fresh().await;
    store.ensure_domain(&domain(), NOW).await.unwrap();
    let all = store.domain_statuses().await.unwrap();
    assert_eq!((all[0].status.as_str(), all[0].checked_at), ("not_started", None));
    store.set_domain_status(&domain(), "invalid", Some("{\"mx\":\"missing\"}"), Some(42)).await.unwrap();
    let all = store.domain_statuses().await.unwrap();
    assert_eq!((all[0].status.as_str(), all[0].detail.as_deref(), all[0].checked_at), ("invalid", Some("{\"mx\":\"missing\"}"), Some(42)));
    assert!(is_invalid(store.set_domain_status(&domain(), "bogus", None, None).await));
    assert!(is_not_found(store.set_domain_status(&"other.example.com".parse().unwrap(), "pending", None, None).await));
}

// ---------------------------------------------------------------------------
// Two nodes on one database
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_two_nodes_keep_one_valid_chain() {
    let (_db, a, b) = two_nodes().await;
    populate(&a).await;
    const PER_NODE: u32 = 40;
    let mut tasks = Vec::new();
    for (name, node) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..PER_NODE {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                if i % 4 == 0 {
                    // Audited writes interleave with stand-alone appends.
                    let n = u8::try_from(10 + i).unwrap() + if name == "a" { 0 } else { 100 };
                    let rec = OwnerRecord { id: owner(n), email: None, created_at: NOW };
                    node.add_owner(&rec, &event("owner.create", owner(n).as_str())).await.map(|r| r.seq())
                } else {
                    node.audit_append(&event("test.append", &format!("{name}{i}"))).await.map(|r| r.seq())
                }
            }));
        }
    }
    let mut seqs = BTreeSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap().unwrap()), "a seq handed out twice");
    }
    let records = a.audit_all().await.unwrap();
    let mut verifier = Verifier::new();
    for r in &records {
        verifier.push(r).unwrap();
    }
    let chain = verifier.finish();
    assert_eq!(chain.count, 6 + 2 * u64::from(PER_NODE));
    assert_eq!(seqs, (7..=chain.head_seq).collect::<BTreeSet<_>>(), "every receipt is a record of the one chain");
    assert_eq!(b.audit_head().await.unwrap(), ChainHead { seq: chain.head_seq, hash: chain.head_hash });
}

/// Indexes `batches` (sizes) on `node` into `inbox`, one transaction each.
async fn index_batches(node: PgStore, inbox: Address, batches: Vec<usize>, tag: u64) -> Vec<i64> {
    let mut seqs = Vec::new();
    for (b, size) in batches.into_iter().enumerate() {
        let rows: Vec<NewMessage> = (0..size)
            .map(|i| NewMessage { owner: owner(1), inbox: inbox.clone(), id: Ulid::from_parts(tag, ((b * 1000 + i) as u128) << 8 | u128::from(tag as u8)), size: 1, summary: Default::default(), facts: Default::default() })
            .collect();
        seqs.extend(node.index_messages(&rows).await.unwrap().iter().map(|m| m.seq));
    }
    seqs
}

/// A reader polling `messages_since` from the last seq it saw until it has
/// `total` rows: whatever it reads must come in increasing seq and nothing may
/// be skipped (a row appearing behind the reader's position would be).
async fn read_in_seq_order(node: PgStore, inbox: Address, total: usize) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut last = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.len() < total && tokio::time::Instant::now() < deadline {
        let page = node.messages_since(&owner(1), &inbox, last, None, 7).await.unwrap();
        for m in page {
            assert!(m.seq > last);
            last = m.seq;
            seen.push(m.seq);
        }
        tokio::task::yield_now().await;
    }
    seen
}

async fn visible_in_seq_order(db_url: &str, inbox: Address, a_batches: Vec<usize>, b_batches: Vec<usize>) {
    let a = PgStore::connect(db_url).await.unwrap();
    let b = PgStore::connect(db_url).await.unwrap();
    let total = a_batches.iter().sum::<usize>() + b_batches.iter().sum::<usize>();
    let reader = tokio::spawn(read_in_seq_order(a.clone(), inbox.clone(), total));
    let wa = tokio::spawn(index_batches(a.clone(), inbox.clone(), a_batches, 1));
    let wb = tokio::spawn(index_batches(b.clone(), inbox.clone(), b_batches, 2));
    let mut written = wa.await.unwrap();
    written.extend(wb.await.unwrap());
    written.sort_unstable();
    let seen = reader.await.unwrap();
    assert_eq!(seen, written, "the reader saw every row, in seq order, none skipped");
    a.close().await;
    b.close().await;
}

#[test]
fn index_rows_from_two_nodes_become_visible_in_seq_order() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let db = runtime.block_on(TempDatabase::create()).unwrap();
    // One named case big enough to interleave.
    runtime.block_on(visible_in_seq_order(db.url(), addr("named@agents.localhost"), vec![3; 30], vec![5; 20]));
    let case = AtomicU32::new(0);
    let config = ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(a_batches in proptest::collection::vec(1usize..12, 1..12),
                        b_batches in proptest::collection::vec(1usize..12, 1..12))| {
        let inbox = addr(&format!("p{}@agents.localhost", case.fetch_add(1, Ordering::Relaxed)));
        runtime.block_on(visible_in_seq_order(db.url(), inbox, a_batches, b_batches));
    });
    drop(db);
}

/// The mechanism behind "an owner's rows become visible in seq order" and the
/// webhook feed, with an indexing transaction held open on purpose (a node
/// paused between its values and its commit): it took the owner's lock and a
/// `seq`, exactly as `agentkeys_index_messages` does (migration 0022).
/// - The same owner's next indexer waits for it, so its later `seq` cannot
///   become visible first.
/// - Another owner's indexer does not wait, and its larger `seq` commits first.
/// - The message feed returns nothing of either while the older transaction is
///   open, then every row once, in commit order of their transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_indexing_transaction_holds_back_its_owner_and_the_feed_only() {
    use sqlx::{Connection, Row};
    let (db, a, b) = two_nodes().await;
    populate(&a).await;
    let bot = "bot@agents.localhost";
    let position = a.message_feed(100).await.unwrap();
    assert!(position.messages.is_empty());

    // A paused indexer of owner 1: lock, value, row; no commit yet.
    let mut paused = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut paused).await.unwrap();
    sqlx::query("SELECT agentkeys_lock_owners_for_index($1)").bind(vec![owner(1).as_str()]).execute(&mut paused).await.unwrap();
    let held = Ulid::from_parts(1_700_000_000_000, 1);
    let held_seq: i64 = sqlx::query(
        "INSERT INTO messages (seq, owner, inbox, id, received_at, size)
         VALUES (nextval('message_seq_values'), $1, $2, $3, 1700000000, 1) RETURNING seq",
    )
    .bind(owner(1).as_str())
    .bind(bot)
    .bind(held.to_string())
    .fetch_one(&mut paused)
    .await
    .unwrap()
    .get(0);

    // Owner 2's indexer, on the other node, does not wait; its seq is larger.
    let other = b.index_messages(&[message(2, "other@agents.localhost", 1_700_000_001_000)]).await.unwrap();
    assert!(other[0].seq > held_seq);
    // Owner 1's next indexer waits for the paused one.
    let next = tokio::spawn({
        let a = a.clone();
        async move { a.index_messages(&[message(1, bot, 1_700_000_002_000)]).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "owner 1's second indexer went ahead of its open first one");
    assert!(
        a.messages_since(&owner(1), &addr(bot), 0, None, 10).await.unwrap().is_empty(),
        "nothing of owner 1 is visible yet"
    );
    // The feed does not pass the open transaction, though owner 2's row is visible.
    assert_eq!(b.messages_since(&owner(2), &addr("other@agents.localhost"), 0, None, 10).await.unwrap().len(), 1);
    let feed = b.message_feed(100).await.unwrap();
    assert!(feed.messages.is_empty(), "the feed returned rows behind an open indexing transaction: {feed:?}");

    sqlx::query("COMMIT").execute(&mut paused).await.unwrap();
    paused.close().await.unwrap();
    let next = tokio::time::timeout(PATIENCE, next).await.unwrap().unwrap();
    assert!(next[0].seq > other[0].seq, "owner 1's second row took its value after the first committed");
    let seqs: Vec<i64> =
        a.messages_since(&owner(1), &addr(bot), 0, None, 10).await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [held_seq, next[0].seq]);

    // Now the feed returns all three once: the paused transaction's row first.
    let mut fed = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while fed.len() < 3 && tokio::time::Instant::now() < deadline {
        let feed = a.message_feed(1).await.unwrap();
        if feed.messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        assert!(a.commit_message_feed(feed.from, feed.to, &[], 0).await.unwrap());
        fed.extend(feed.messages.iter().map(|m| m.seq));
    }
    assert_eq!(fed, [held_seq, other[0].seq, next[0].seq], "every row once, in the order their transactions began");
    assert!(b.message_feed(100).await.unwrap().messages.is_empty());
}

/// Claims from `node` with `limit` until nothing is due; returns every claim.
async fn claim_all(node: PgStore, limit: u32) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let claims = node.claim_due(NOW, limit, NOW + 3600).await.unwrap();
        if claims.is_empty() || tokio::time::Instant::now() > deadline {
            return got;
        }
        got.extend(claims.into_iter().map(|c| (c.entry.message_id, c.entry.recipient)));
    }
}

/// `messages` messages of two recipients each, claimed by two nodes at once.
/// Rows of earlier cases on the same database stay leased (not due), so only
/// this case's rows (ids starting with `prefix`) are claimed.
async fn single_claims(db_url: &str, prefix: &str, messages: usize, a_limit: u32, b_limit: u32) {
    let a = PgStore::connect(db_url).await.unwrap();
    let b = PgStore::connect(db_url).await.unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..messages {
        let id = format!("{prefix}{i:04}");
        a.enqueue_outbound(&outbound(&id, &["x@remote.test", "y@remote.test"], NOW - (i % 7) as i64)).await.unwrap();
        expected.insert((id.clone(), "x@remote.test".to_owned()));
        expected.insert((id, "y@remote.test".to_owned()));
    }
    let (ca, cb) = tokio::join!(tokio::spawn(claim_all(a.clone(), a_limit)), tokio::spawn(claim_all(b.clone(), b_limit)));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let mut all = BTreeSet::new();
    for c in ca.iter().chain(&cb) {
        assert!(all.insert(c.clone()), "{c:?} claimed twice");
    }
    assert_eq!(all, expected, "every due row claimed by one node");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_from_two_nodes_never_hand_a_row_to_both() {
    let db = TempDatabase::create().await.unwrap();
    let _schema = PgStore::connect(db.url()).await.unwrap();
    single_claims(db.url(), "M", 150, 3, 5).await;
}

#[test]
fn claims_stay_single_over_generated_sizes_and_limits() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let db = runtime.block_on(TempDatabase::create()).unwrap();
    let case = AtomicU32::new(0);
    let config = ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(messages in 1usize..60, a_limit in 1u32..8, b_limit in 1u32..8)| {
        let prefix = format!("C{}-", case.fetch_add(1, Ordering::Relaxed));
        runtime.block_on(single_claims(db.url(), &prefix, messages, a_limit, b_limit));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_recorded_on_one_node_is_a_replay_on_the_other() {
    let (_db, a, b) = two_nodes().await;
    assert!(a.record_owner_nonce(&owner(1), "n1", NOW, NOW - 60).await.unwrap().is_fresh());
    assert_eq!(b.record_owner_nonce(&owner(1), "n1", NOW, NOW - 60).await.unwrap(), NonceUse::Replayed);
    // The same nonce on both at once: exactly one is fresh.
    let o1 = owner(1);
    for i in 0..20 {
        let nonce = format!("race{i}");
        let (ra, rb) = tokio::join!(
            a.record_owner_nonce(&o1, &nonce, NOW, NOW - 60),
            b.record_owner_nonce(&o1, &nonce, NOW, NOW - 60)
        );
        let fresh = [ra.unwrap(), rb.unwrap()].iter().filter(|u| u.is_fresh()).count();
        assert_eq!(fresh, 1, "{nonce}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grant_changes_from_two_nodes_have_one_winner() {
    let (_db, a, b) = two_nodes().await;
    populate(&a).await;
    for n in 1..=10u8 {
        let before = grant(n, 1, 1, "*@agents.localhost", "read,send");
        a.add_grant(&before, &ev()).await.unwrap();
        let to_read = Grant { scopes: "read".parse().unwrap(), ..before.clone() };
        let to_send = Grant { scopes: "send".parse().unwrap(), ..before.clone() };
        let (o1, change) = (owner(1), event("grant.change", grant_id(n).as_str()));
        let (ra, rb) = tokio::join!(
            a.change_owner_grant(&o1, &before, &to_read, &change),
            b.change_owner_grant(&o1, &before, &to_send, &change)
        );
        let won: Vec<bool> = [&ra, &rb].iter().map(|r| r.is_ok()).collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{ra:?} {rb:?}");
        let loser = if won[0] { rb } else { ra };
        assert!(is_conflict(loser));
        let stored = a.list_grants(None).await.unwrap().into_iter().find(|g| g.id == grant_id(n)).unwrap();
        assert_eq!(stored, if won[0] { to_read } else { to_send });
    }
    let changes = a.audit_all().await.unwrap().iter().filter(|r| r.operation == "grant.change").count();
    assert_eq!(changes, 10, "one record per winning change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_time_things_are_taken_once_across_nodes() {
    let (_db, a, b) = two_nodes().await;
    for n in 1..=8u8 {
        a.add_owner_with_enrollment(&owner_record(n), &ticket(n, n), &ev()).await.unwrap();
        let (who, e, code, (pk1, pk2)) = (owner(n), ev(), [n; 32], ([1; 32], [2; 32]));
        let (ra, rb) = tokio::join!(
            a.redeem_enrollment(&who, &code, &pk1, NOW, &e),
            b.redeem_enrollment(&who, &code, &pk2, NOW, &e)
        );
        assert_eq!([ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(), 1, "enrollment {n}: {ra:?} {rb:?}");
    }
    for n in 1..=8u8 {
        let request = PairingRecord { agent: agent(n), ..pairing_request(n, NOW) };
        a.open_pairing(&request, NOW - DAY, &ev()).await.unwrap();
        let rec = AgentRecord { id: agent(n), owner: owner(n), name: None, created_at: NOW };
        let (code, e) = ([n; 32], ev());
        let (ra, rb) = tokio::join!(a.approve_pairing(&code, &rec, NOW, &e), b.approve_pairing(&code, &rec, NOW, &e));
        assert_eq!([ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(), 1, "approval {n}: {ra:?} {rb:?}");
        let (ka, kb) = (KeyRecord { agent: agent(n), ..key(n, n) }, KeyRecord { agent: agent(n), ..key(n + 50, n) });
        let (ra, rb) = tokio::join!(a.collect_pairing(&code, &ka, NOW, &e), b.collect_pairing(&code, &kb, NOW, &e));
        assert_eq!([ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(), 1, "collection {n}: {ra:?} {rb:?}");
        assert_eq!(a.list_keys(&agent(n)).await.unwrap().len(), 1);
    }
    let inbox = addr("bot@agents.localhost");
    for n in 1..=8u8 {
        let key = [n; 32];
        let agent1 = agent(1);
        let scope = IdempotencyScope { inbox: &inbox, agent: &agent1, key_hash: &key };
        let body = [0; 32];
        let (ra, rb) = tokio::join!(a.claim(scope, &body, ulid::Ulid::new(), NOW), b.claim(scope, &body, ulid::Ulid::new(), NOW));
        let claimed = [ra.unwrap(), rb.unwrap()].iter().filter(|c| **c == IdempotencyClaim::Claimed).count();
        assert_eq!(claimed, 1, "idempotency key {n}");
    }
    let mut last: Option<ChainedCheckpoint> = None;
    for n in 1..=4u64 {
        let head = ChainHead { seq: n, hash: [n as u8; 32] };
        let link = match &last {
            None => ChainedCheckpoint::first(head, NOW),
            Some(last) => last.next(head, NOW).unwrap(),
        };
        let record = checkpoint(&link);
        last = Some(link);
        let (ra, rb) = tokio::join!(a.add_checkpoint(&record), b.add_checkpoint(&record));
        assert_eq!([ra.unwrap(), rb.unwrap()].iter().filter(|added| **added).count(), 1, "checkpoint {n}");
    }
    verify(&a.audit_all().await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_being_removed_never_keeps_a_new_inbox() {
    let (_db, a, b) = two_nodes().await;
    a.add_owner(&owner_record(1), &ev()).await.unwrap();
    a.add_agent(&agent_record(1, 1), &ev()).await.unwrap();
    for n in 0..10 {
        let name = format!("race{n}.test");
        let d: Domain = name.parse().unwrap();
        a.add_domain(&DomainKeyRecord { domain: d.clone(), ..dkim(1) }, NOW, &ev()).await.unwrap();
        let address = format!("bot@{name}");
        let (e, new_inbox) = (ev(), inbox(&address, 1, 1));
        let (removed, created) = tokio::join!(a.remove_domain(&d, &e), b.create_inbox(&new_inbox, &e));
        assert_ne!(removed.is_ok(), created.is_ok(), "exactly one wins: {removed:?} {created:?}");
        let hosted = a.is_hosted_domain(&name).await.unwrap();
        let has_inbox = a.recipient(&addr(&address)).await.unwrap().is_some();
        assert_eq!(hosted, has_inbox, "no inbox on a removed domain, no removal under an inbox");
    }
}

// ---------------------------------------------------------------------------
// Events across nodes
// ---------------------------------------------------------------------------

/// The next event of `sub` within [`PATIENCE`].
async fn next(sub: &mut agentkeys_store::Subscription) -> Result<agentkeys_store::IndexedMessage, Missed> {
    tokio::time::timeout(PATIENCE, sub.recv()).await.expect("an event within the test's patience")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_indexed_on_one_node_wakes_a_subscriber_on_the_other_in_seq_order() {
    let (_db, a, b) = two_nodes().await;
    let events_b = PgEvents::start(&b, LocalEventHub::new());
    events_b.listening().await;
    let inbox = addr("bot@agents.localhost");
    let mut sub = events_b.subscribe(&owner(1), &inbox, 4).unwrap();

    let on_a = a.index_messages(&[message(1, "bot@agents.localhost", 1000)]).await.unwrap();
    assert_eq!(next(&mut sub).await.unwrap(), on_a[0], "woken by mail accepted on node A");
    // `publish` is no event source of its own: the database is.
    events_b.publish(&on_a[0]);

    // Both nodes index at once: the subscriber sees every row once, in seq order.
    let (wa, wb) = tokio::join!(
        index_batches(a.clone(), inbox.clone(), vec![2; 15], 1),
        index_batches(b.clone(), inbox.clone(), vec![3; 10], 2)
    );
    let mut expected: Vec<i64> = wa.into_iter().chain(wb).collect();
    expected.sort_unstable();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(next(&mut sub).await.expect("no gap while connected").seq);
    }
    assert_eq!(got, expected);
    // Another inbox's rows are not this subscriber's.
    a.index_messages(&[message(2, "other@agents.localhost", 5)]).await.unwrap();
    let mine = a.index_messages(&[message(1, "bot@agents.localhost", 6)]).await.unwrap();
    assert_eq!(next(&mut sub).await.unwrap(), mine[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_listener_reconnects_and_tells_subscribers_to_catch_up() {
    let (db, a, b) = two_nodes().await;
    let events_b = PgEvents::start(&b, LocalEventHub::new());
    events_b.listening().await;
    let inbox = addr("bot@agents.localhost");
    let mut sub = events_b.subscribe(&owner(1), &inbox, 4).unwrap();
    let first = a.index_messages(&[message(1, "bot@agents.localhost", 1)]).await.unwrap();
    assert_eq!(next(&mut sub).await.unwrap(), first[0]);

    // The listener's connection is killed; mail arrives meanwhile.
    psql(
        &db,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = '{LISTENER_APPLICATION_NAME}' AND datname = current_database()"
        ),
    )
    .await
    .unwrap();
    let during = a.index_messages(&[message(1, "bot@agents.localhost", 2)]).await.unwrap();
    // Whatever was delivered before the cut, the subscriber is told to catch up,
    // and the index holds what it may have missed.
    let mut told = false;
    while !told {
        match next(&mut sub).await {
            Err(Missed::Lagged(0)) => told = true,
            Ok(m) => assert_eq!(m, during[0], "only the row indexed around the cut"),
            other => panic!("unexpected {other:?}"),
        }
    }
    events_b.listening().await;
    let missed = b.messages_since(&owner(1), &inbox, first[0].seq, None, 10).await.unwrap();
    assert_eq!(missed, during);
    // Live again.
    let after = a.index_messages(&[message(1, "bot@agents.localhost", 3)]).await.unwrap();
    let mut got = next(&mut sub).await;
    while got.as_ref().is_ok_and(|m| m.seq < after[0].seq) || got == Err(Missed::Lagged(0)) {
        got = next(&mut sub).await;
    }
    assert_eq!(got.unwrap(), after[0]);
}

/// The first node records the deployment's seed fingerprint; every node, the
/// first included, reads that one back, also when several race to record theirs.
#[tokio::test]
async fn the_first_seed_fingerprint_recorded_is_the_deployments() {
    let (_db, a, b) = two_nodes().await;
    let tries: Vec<_> = (0u8..8)
        .map(|n| {
            let node = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { node.seed_fingerprint(&[n; 32]).await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tries {
        seen.push(t.await.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert_eq!(a.seed_fingerprint(&[99; 32]).await.unwrap(), seen[0]);
}

/// A node that stalls inside a transaction cannot hold the shared locks (chain
/// head, seq counter) for longer than `IDLE_IN_TRANSACTION_TIMEOUT`: every
/// session the store opens carries the setting.
#[tokio::test]
async fn sessions_carry_the_idle_in_transaction_timeout() {
    let (_db, store) = fresh().await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(store.connect_options()).await.unwrap();
    let (shown,): (String,) = sqlx::query_as("SHOW idle_in_transaction_session_timeout").fetch_one(&pool).await.unwrap();
    let want = agentkeys_store::postgres::IDLE_IN_TRANSACTION_TIMEOUT.as_secs();
    assert_eq!(shown, format!("{want}s"));
    pool.close().await;
}

// ---------------------------------------------------------------------------
// Shared failure counters: what the contract cannot see, the storage's bound.
// ---------------------------------------------------------------------------

/// Rows and array lengths of `throttle_failures`, read directly.
async fn throttle_rows(db: &TempDatabase) -> Vec<(String, i32)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let rows = sqlx::query_as("SELECT key, cardinality(times) FROM throttle_failures ORDER BY key")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

/// A key keeps at most `limit` failure times however many are recorded, on
/// both nodes; once its window has passed, a node's next prune (every
/// THROTTLE_PRUNE_INTERVAL) deletes its row, and the other key's stays.
#[tokio::test]
async fn throttle_counters_keep_at_most_the_limit_and_expired_keys_are_pruned() {
    use agentkeys_store::postgres::THROTTLE_PRUNE_INTERVAL;
    use agentkeys_store::{FailureWindow, ThrottleKey};
    let (db, a, b) = two_nodes().await;
    let rule = FailureWindow::new(3, Duration::from_secs(60)).unwrap();
    let (busy, quiet) = (ThrottleKey::new("test/busy").unwrap(), ThrottleKey::new("test/quiet").unwrap());
    let t0 = NOW * 1000;
    for i in 0..50 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(node.record_failure(&busy, t0 + i, rule).await.unwrap().count, 3.min(u32::try_from(i + 1).unwrap()));
    }
    assert_eq!(throttle_rows(&db).await, [("test/busy".to_owned(), 3)]);
    // Past busy's window and a prune interval: the next failure on either node prunes it.
    let later = t0 + 50 + 60_000 + i64::try_from(THROTTLE_PRUNE_INTERVAL.as_millis()).unwrap();
    a.record_failure(&quiet, later, rule).await.unwrap();
    b.record_failure(&quiet, later, rule).await.unwrap();
    assert_eq!(throttle_rows(&db).await, [("test/quiet".to_owned(), 2)]);
    assert_eq!(a.failures(&busy, later, rule).await.unwrap().count, 0);
}

/// An approval committed on node A wakes the collect waiting on node B for
/// that code, and no other; a refused approval (not committed) wakes nobody;
/// a listener that reconnects wakes every waiter once, to re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pairing_approval_on_one_node_wakes_the_collect_waiting_on_another() {
    use agentkeys_store::PairingWakeups;
    let (db, a, b) = two_nodes().await;
    a.add_owner(&owner_record(1), &ev()).await.unwrap();
    for n in [1, 2] {
        let request = PairingRecord { agent: agent(n), ..pairing_request(n, NOW) };
        a.open_pairing(&request, NOW - DAY, &ev()).await.unwrap();
    }
    let events_b = PgEvents::start_with(&b, LocalEventHub::new(), PairingWakeups::default());
    events_b.listening().await;
    let (one, two) = (events_b.pairings().subscribe(&[1; 32]), events_b.pairings().subscribe(&[2; 32]));
    let (woken_one, woken_two) = (one.notified(), two.notified());
    tokio::pin!(woken_one, woken_two);
    woken_one.as_mut().enable();
    woken_two.as_mut().enable();

    // A refused approval (another agent's request) commits nothing: no wake-up.
    let wrong = AgentRecord { id: agent(9), owner: owner(1), name: None, created_at: NOW };
    assert!(is_not_found(a.approve_pairing(&[1; 32], &wrong, NOW, &ev()).await));
    let approved = AgentRecord { id: agent(1), owner: owner(1), name: None, created_at: NOW };
    a.approve_pairing(&[1; 32], &approved, NOW, &ev()).await.unwrap();
    tokio::time::timeout(PATIENCE, woken_one).await.expect("node B's waiter on code 1 is woken");
    assert_eq!(b.pairing(&[1; 32]).await.unwrap().unwrap().status, PairingStatus::Approved);
    // Code 2's waiter sleeps on; a reconnect of the listener wakes it to re-read.
    assert!(tokio::time::timeout(Duration::from_millis(200), woken_two.as_mut()).await.is_err());
    psql(
        &db,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = '{LISTENER_APPLICATION_NAME}' AND datname = current_database()"
        ),
    )
    .await
    .unwrap();
    tokio::time::timeout(PATIENCE, woken_two).await.expect("woken after the reconnect");
}
