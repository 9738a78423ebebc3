//! `SqliteStore` against the `MetadataStore` contract: records round-trip, every
//! error maps to the right `StoreError`, and `auth_facts` gathers what the AUTH
//! order needs.
#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::{
    Address, AgentId, AuthFailure, Credentials, Domain, Grant, GrantId, InboxStatus, KeyHash, KeyId, OwnerId, UnixTime,
};
use agentkeys_store::{
    AgentRecord, InboxRecord, KeyRecord, NewOutbound, OwnerRecord, SqliteStore, StoreError,
};

const NOW: UnixTime = 1_700_000_000;
const DAY: i64 = 86_400;
const DOMAIN: &str = "agents.localhost";

fn owner(n: u8) -> OwnerId {
    format!("0x{}", format!("{n:02x}").repeat(20)).parse().unwrap()
}

fn agent(n: u8) -> AgentId {
    format!("0x{}", format!("{:02x}", 0xa0 + n).repeat(20)).parse().unwrap()
}

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn key_id(n: u8) -> KeyId {
    format!("key_{}", format!("{n:02}").repeat(8)).parse().unwrap()
}

fn grant_id(n: u8) -> GrantId {
    format!("gr_{}{}", format!("{n:02}").repeat(10), "zz").parse().unwrap()
}

fn hash(n: u8) -> KeyHash {
    KeyHash([n; 32])
}

fn owner_record(n: u8) -> OwnerRecord {
    OwnerRecord { id: owner(n), email: Some(format!("human{n}@example.com")), created_at: NOW }
}

fn agent_record(n: u8, owner_n: u8) -> AgentRecord {
    AgentRecord {
        id: agent(n),
        owner: owner(owner_n),
        name: Some(format!("agent {n}")),
        created_at: NOW + i64::from(n),
    }
}

fn inbox(address: &str, owner_n: u8, agent_n: u8) -> InboxRecord {
    InboxRecord {
        address: addr(address),
        owner: owner(owner_n),
        agent: agent(agent_n),
        status: InboxStatus::Active,
        created_at: NOW,
        expires_at: None,
    }
}

fn key(n: u8, agent_n: u8) -> KeyRecord {
    KeyRecord {
        id: key_id(n),
        agent: agent(agent_n),
        hash: hash(n),
        created_at: NOW,
        expires_at: NOW + DAY,
        revoked_at: None,
    }
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

/// A file-backed store (the real configuration) in a fresh directory.
async fn open_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    (dir, store)
}

/// Two owners, each with one agent and one inbox; owner 1's agent holds keys
/// 1 (valid), 2 (revoked), 3 (expired) and a send grant on the whole domain;
/// owner 2's agent holds key 4 and a read grant.
async fn populated() -> (tempfile::TempDir, SqliteStore) {
    let (dir, store) = open_store().await;
    store.ensure_domain(&DOMAIN.parse().unwrap(), NOW).await.unwrap();
    for n in [1, 2] {
        store.add_owner(&owner_record(n), &ev()).await.unwrap();
        store.add_agent(&agent_record(n, n), &ev()).await.unwrap();
    }
    store.create_inbox(&inbox("bot@agents.localhost", 1, 1), &ev()).await.unwrap();
    store.create_inbox(&inbox("other@agents.localhost", 2, 2), &ev()).await.unwrap();
    store.create_key(&key(1, 1), &ev()).await.unwrap();
    store.create_key(&KeyRecord { revoked_at: Some(NOW - 5), ..key(2, 1) }, &ev()).await.unwrap();
    store.create_key(&KeyRecord { expires_at: NOW - 1, ..key(3, 1) }, &ev()).await.unwrap();
    store.create_key(&key(4, 2), &ev()).await.unwrap();
    store.add_grant(&grant(1, 1, 1, "*@agents.localhost", "send"), &ev()).await.unwrap();
    store.add_grant(&grant(2, 2, 2, "other@agents.localhost", "read"), &ev()).await.unwrap();
    (dir, store)
}

/// The audit event every write here carries (the audit log has its own tests in
/// `tests/audit.rs`).
fn ev() -> AuditEvent {
    AuditEvent::ok(Actor::Operator, "test.write", "metadata test")
}

fn credentials(address: &str, key_n: u8) -> Credentials {
    Credentials { address: addr(address), key_hash: hash(key_n) }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, expected: &str) {
    match result {
        Err(StoreError::NotFound { what }) => assert_eq!(what, expected),
        other => panic!("expected NotFound {{ {expected} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, expected: &str) {
    match result {
        Err(StoreError::Conflict { what }) => assert_eq!(what, expected),
        other => panic!("expected Conflict {{ {expected} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, expected_part: &str) {
    match result {
        Err(StoreError::Invalid(text)) => assert!(text.contains(expected_part), "{text:?} lacks {expected_part:?}"),
        other => panic!("expected Invalid(..{expected_part}..), got {other:?}"),
    }
}

#[tokio::test]
async fn domains() {
    let (_dir, store) = open_store().await;
    let d: Domain = "b.example".parse().unwrap();
    assert!(!store.is_hosted_domain("b.example").await.unwrap());
    store.ensure_domain(&d, NOW).await.unwrap();
    store.ensure_domain(&d, NOW + 1).await.unwrap();
    store.ensure_domain(&"a.example".parse().unwrap(), NOW).await.unwrap();
    assert!(store.is_hosted_domain("b.example").await.unwrap());
    assert!(!store.is_hosted_domain("c.example").await.unwrap());
    let names: Vec<String> = store.list_domains().await.unwrap().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["a.example", "b.example"]);
}

#[tokio::test]
async fn owners_and_agents() {
    let (_dir, store) = open_store().await;
    store.add_owner(&owner_record(1), &ev()).await.unwrap();
    store.add_owner(&OwnerRecord { email: None, ..owner_record(2) }, &ev()).await.unwrap();
    assert_conflict(store.add_owner(&owner_record(1), &ev()).await, &format!("owner {}", owner(1)));
    let owners = store.list_owners().await.unwrap();
    assert_eq!(owners, vec![owner_record(1), OwnerRecord { email: None, ..owner_record(2) }]);

    assert_not_found(store.add_agent(&agent_record(1, 9), &ev()).await, &format!("owner {}", owner(9)));
    store.add_agent(&agent_record(1, 1), &ev()).await.unwrap();
    store.add_agent(&AgentRecord { name: None, ..agent_record(2, 2) }, &ev()).await.unwrap();
    store.add_agent(&agent_record(3, 1), &ev()).await.unwrap();
    assert_conflict(store.add_agent(&agent_record(1, 2), &ev()).await, &format!("agent {}", agent(1)));

    assert_eq!(store.get_agent(&agent(1)).await.unwrap(), Some(agent_record(1, 1)));
    assert_eq!(store.get_agent(&agent(9)).await.unwrap(), None);
    let all: Vec<AgentId> = store.list_agents(None).await.unwrap().into_iter().map(|a| a.id).collect();
    assert_eq!(all, [agent(1), agent(2), agent(3)]);
    let mine = store.list_agents(Some(&owner(1))).await.unwrap();
    assert_eq!(mine, vec![agent_record(1, 1), agent_record(3, 1)]);
}

#[tokio::test]
async fn inbox_errors() {
    let (_dir, store) = populated().await;
    assert_invalid(
        store.create_inbox(&inbox("bot@example.com", 1, 1), &ev()).await,
        "domain example.com is not hosted here; add it with `agentkeys domain add example.com`",
    );
    assert_not_found(
        store.create_inbox(&inbox("new@agents.localhost", 1, 9), &ev()).await,
        &format!("agent {}", agent(9)),
    );
    assert_conflict(
        store.create_inbox(&inbox("bot@agents.localhost", 1, 1), &ev()).await,
        "inbox bot@agents.localhost",
    );
    // The inbox's owner must be its agent's owner.
    assert_invalid(store.create_inbox(&inbox("new@agents.localhost", 2, 1), &ev()).await, "must belong to");
    assert_not_found(
        store.set_inbox_status(&addr("nobody@agents.localhost"), InboxStatus::Disabled, &ev()).await,
        "inbox nobody@agents.localhost",
    );
    // None of the failures left a row behind.
    assert_eq!(store.list_inboxes(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn inboxes_and_recipients() {
    let (_dir, store) = populated().await;
    store.create_inbox(&inbox("a-first@agents.localhost", 1, 1), &ev()).await.unwrap();
    let mine: Vec<String> =
        store.list_inboxes(Some(&owner(1))).await.unwrap().iter().map(|i| i.address.to_string()).collect();
    assert_eq!(mine, ["a-first@agents.localhost", "bot@agents.localhost"]);
    assert_eq!(store.list_inboxes(None).await.unwrap()[2], inbox("other@agents.localhost", 2, 2));

    let rcpt = store.recipient(&addr("bot@agents.localhost")).await.unwrap().unwrap();
    assert_eq!((rcpt.owner, rcpt.status), (owner(1), InboxStatus::Active));
    assert_eq!(store.recipient(&addr("nobody@agents.localhost")).await.unwrap(), None);

    store.set_inbox_status(&addr("bot@agents.localhost"), InboxStatus::Suspended, &ev()).await.unwrap();
    let rcpt = store.recipient(&addr("bot@agents.localhost")).await.unwrap().unwrap();
    assert_eq!(rcpt.status, InboxStatus::Suspended);
}

#[tokio::test]
async fn keys() {
    let (_dir, store) = populated().await;
    assert_not_found(store.create_key(&key(9, 9), &ev()).await, &format!("agent {}", agent(9)));
    assert_conflict(
        store.create_key(&KeyRecord { hash: hash(9), ..key(1, 1) }, &ev()).await,
        &format!("key {}", key_id(1)),
    );
    assert_conflict(
        store.create_key(&KeyRecord { id: key_id(9), ..key(1, 1) }, &ev()).await,
        "an agent key with the same secret",
    );
    let keys = store.list_keys(&agent(1)).await.unwrap();
    let ids: Vec<&KeyId> = keys.iter().map(|k| &k.id).collect();
    assert_eq!(ids, [&key_id(1), &key_id(2), &key_id(3)]);
    assert_eq!(keys[0], key(1, 1));
    assert!(keys[0].hash.ct_eq(&hash(1)));

    assert_not_found(store.revoke_key(&key_id(9), NOW, &ev()).await, &format!("key {}", key_id(9)));
    store.revoke_key(&key_id(1), NOW + 10, &ev()).await.unwrap();
    store.revoke_key(&key_id(1), NOW + 20, &ev()).await.unwrap();
    let k = &store.list_keys(&agent(1)).await.unwrap()[0];
    assert_eq!(k.revoked_at, Some(NOW + 10), "the first revocation time stays");
}

#[tokio::test]
async fn grants() {
    let (_dir, store) = populated().await;
    assert_not_found(store.add_grant(&grant(9, 1, 9, "bot-*", "send"), &ev()).await, &format!("agent {}", agent(9)));
    assert_invalid(store.add_grant(&grant(9, 2, 1, "bot-*", "send"), &ev()).await, "is not the owner of agent");
    assert_conflict(store.add_grant(&grant(1, 1, 1, "bot-*", "send"), &ev()).await, &format!("grant {}", grant_id(1)));
    // An exact address must be an inbox of the grant's owner: another owner's
    // inbox and a missing one answer alike, and nothing is stored or audited.
    let head = store.audit_head().await.unwrap();
    for foreign in ["other@agents.localhost", "nobody@agents.localhost"] {
        assert_not_found(store.add_grant(&grant(9, 1, 1, foreign, "read"), &ev()).await, &format!("inbox {foreign}"));
    }
    assert_eq!(store.audit_head().await.unwrap(), head);

    let wide = grant(3, 1, 1, "bot-*", "admin,send,read");
    store.add_grant(&wide, &ev()).await.unwrap();
    assert_eq!(
        store.list_grants(Some(&agent(1))).await.unwrap(),
        vec![grant(1, 1, 1, "*@agents.localhost", "send"), wide.clone()]
    );
    assert_eq!(store.list_grants(None).await.unwrap().len(), 3);

    assert_not_found(store.revoke_grant(&grant_id(9), NOW, &ev()).await, &format!("grant {}", grant_id(9)));
    store.revoke_grant(&grant_id(3), NOW + 1, &ev()).await.unwrap();
    store.revoke_grant(&grant_id(3), NOW + 2, &ev()).await.unwrap();
    let stored = store.list_grants(Some(&agent(1))).await.unwrap();
    assert_eq!(stored[1], Grant { revoked_at: Some(NOW + 1), ..wide });
}

#[tokio::test]
async fn auth_facts_valid_key() {
    let (_dir, store) = populated().await;
    let creds = credentials("bot@agents.localhost", 1);
    let facts = store.auth_facts(&creds).await.unwrap();
    let k = facts.key.as_ref().unwrap();
    assert_eq!((&k.id, &k.agent, &k.owner), (&key_id(1), &agent(1), &owner(1)));
    assert!(k.hash.ct_eq(&hash(1)));
    assert_eq!((k.expires_at, k.revoked_at), (NOW + DAY, None));
    assert_eq!(facts.grants, vec![grant(1, 1, 1, "*@agents.localhost", "send")], "only this agent's grants");
    assert_eq!(facts.inbox, Some((owner(1), InboxStatus::Active)));
    let ok = creds.evaluate(&facts, NOW).unwrap();
    assert_eq!((ok.key_id(), ok.grant_id()), (&key_id(1), &grant_id(1)));
}

#[tokio::test]
async fn auth_facts_failures() {
    let (_dir, store) = populated().await;
    let check = async |address: &str, key_n: u8| {
        let creds = credentials(address, key_n);
        let facts = store.auth_facts(&creds).await.unwrap();
        (creds.evaluate(&facts, NOW).err(), facts)
    };

    let (failure, facts) = check("bot@agents.localhost", 2).await;
    assert_eq!(failure, Some(AuthFailure::KeyRevoked));
    assert_eq!(facts.key.unwrap().revoked_at, Some(NOW - 5));

    let (failure, facts) = check("bot@agents.localhost", 3).await;
    assert_eq!(failure, Some(AuthFailure::KeyExpired));
    assert_eq!(facts.key.unwrap().expires_at, NOW - 1);

    let (failure, facts) = check("other@agents.localhost", 1).await;
    assert_eq!(failure, Some(AuthFailure::OwnerMismatch));
    assert_eq!(facts.inbox, Some((owner(2), InboxStatus::Active)));

    let (failure, facts) = check("nobody@agents.localhost", 1).await;
    assert_eq!(failure, Some(AuthFailure::InboxNotFound));
    assert!(facts.key.is_some() && facts.inbox.is_none());

    let (failure, facts) = check("bot@agents.localhost", 77).await;
    assert_eq!(failure, Some(AuthFailure::KeyNotFound));
    assert!(facts.key.is_none() && facts.grants.is_empty());
    assert!(facts.inbox.is_some(), "the inbox is found even without a key");

    // Owner 2's agent holds only a read grant.
    let (failure, facts) = check("other@agents.localhost", 4).await;
    assert_eq!(failure, Some(AuthFailure::NoSendGrant));
    assert_eq!(facts.grants, vec![grant(2, 2, 2, "other@agents.localhost", "read")]);

    store.set_inbox_status(&addr("bot@agents.localhost"), InboxStatus::Disabled, &ev()).await.unwrap();
    assert_eq!(check("bot@agents.localhost", 1).await.0, Some(AuthFailure::InboxInactive));
    store.revoke_grant(&grant_id(1), NOW, &ev()).await.unwrap();
    assert_eq!(check("bot@agents.localhost", 1).await.0, Some(AuthFailure::NoSendGrant));
}

fn outbound(id: &str, recipients: &[&str], queued_at: UnixTime) -> NewOutbound {
    NewOutbound {
        message_id: id.to_owned(),
        sender: addr("bot@agents.localhost"),
        owner: owner(1),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        size: 10_240,
        queued_at,
    }
}

#[tokio::test]
async fn outbound_queue() {
    let (_dir, store) = populated().await;
    assert!(store.list_queue().await.unwrap().is_empty());
    store.enqueue_outbound(&outbound("01B", &["z@remote.test"], NOW + 5)).await.unwrap();
    store.enqueue_outbound(&outbound("01A", &["y@remote.test", "x@remote.test", "y@remote.test"], NOW)).await.unwrap();

    let queue = store.list_queue().await.unwrap();
    let rows: Vec<(&str, &str)> = queue.iter().map(|e| (e.message_id.as_str(), e.recipient.as_str())).collect();
    assert_eq!(rows, [("01A", "x@remote.test"), ("01A", "y@remote.test"), ("01B", "z@remote.test")]);
    let first = &queue[0];
    assert_eq!(first.sender, addr("bot@agents.localhost"));
    assert_eq!((first.state.as_str(), first.size, first.attempts), ("queued", 10_240, 0));
    assert_eq!((first.queued_at, first.next_attempt_at, first.last_response.as_deref()), (NOW, NOW, None));

    // All or nothing: `a@` sorts first and would be inserted before `z@` collides.
    assert_conflict(
        store.enqueue_outbound(&outbound("01B", &["z@remote.test", "a@remote.test"], NOW)).await,
        "queued message 01B for a@remote.test, z@remote.test",
    );
    assert_eq!(store.list_queue().await.unwrap().len(), 3);
    assert_invalid(store.enqueue_outbound(&outbound("01C", &[], NOW)).await, "no recipients");
    let huge = NewOutbound { size: u64::MAX, ..outbound("01D", &["a@remote.test"], NOW) };
    assert_invalid(store.enqueue_outbound(&huge).await, "too large");
}

/// Concurrent inserts share statements (the enqueue writer); a duplicate among
/// them fails alone, all or nothing for its own recipients, and every other
/// message is queued with all of its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_are_batched_and_a_duplicate_fails_alone() {
    let (_dir, store) = populated().await;
    store.enqueue_outbound(&outbound("01DUP", &["a@remote.test"], NOW)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = if i == 100 { "01DUP".to_owned() } else { format!("01M{i:04}") };
            store.enqueue_outbound(&outbound(&id, &["a@remote.test", "b@remote.test"], NOW)).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if i == 100 {
            assert_conflict(result, "queued message 01DUP for a@remote.test, b@remote.test");
        } else {
            result.unwrap();
        }
    }
    let queue = store.list_queue().await.unwrap();
    assert_eq!(queue.len(), 1 + 199 * 2);
    assert_eq!(queue.iter().filter(|e| e.message_id == "01DUP").count(), 1, "the duplicate added no row");
}

#[tokio::test]
async fn survives_reopen_and_shares_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.sqlite");
    let server = SqliteStore::open(&path).await.unwrap();
    server.add_owner(&owner_record(1), &ev()).await.unwrap();
    // The CLI opens the same file while the server has it open.
    let cli = SqliteStore::open(&path).await.unwrap();
    cli.ensure_domain(&DOMAIN.parse().unwrap(), NOW).await.unwrap();
    assert!(server.is_hosted_domain(DOMAIN).await.unwrap());
    assert_eq!(cli.list_owners().await.unwrap(), vec![owner_record(1)]);
    server.close().await;
    cli.close().await;

    let again = SqliteStore::open(&path).await.unwrap();
    assert_eq!(again.list_owners().await.unwrap(), vec![owner_record(1)]);
    assert!(again.is_hosted_domain(DOMAIN).await.unwrap());
}

/// The MX asks through the RCPT cache (`CachedRecipients` around the store): a
/// change made by another process (the CLI) shows within `RECIPIENT_CACHE_TTL`,
/// and a missing inbox is never cached, so one created elsewhere receives at once.
#[tokio::test]
async fn recipient_lookups_see_changes_of_other_processes_within_the_ttl() {
    let (dir, store) = populated().await;
    let server = agentkeys_store::CachedRecipients::new(std::sync::Arc::new(store));
    let cli = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    let bot = addr("bot@agents.localhost");
    assert_eq!(server.recipient(&bot).await.unwrap().unwrap().status, InboxStatus::Active);
    cli.set_inbox_status(&bot, InboxStatus::Disabled, &ev()).await.unwrap();
    tokio::time::sleep(agentkeys_store::RECIPIENT_CACHE_TTL).await;
    assert_eq!(server.recipient(&bot).await.unwrap().unwrap().status, InboxStatus::Disabled);

    let fresh = addr("fresh@agents.localhost");
    assert_eq!(server.recipient(&fresh).await.unwrap(), None);
    cli.create_inbox(&inbox("fresh@agents.localhost", 1, 1), &ev()).await.unwrap();
    assert_eq!(server.recipient(&fresh).await.unwrap().unwrap().status, InboxStatus::Active);
}

#[tokio::test]
async fn concurrent_writers_do_not_fail() {
    let (_dir, store) = open_store().await;
    store.add_owner(&owner_record(1), &ev()).await.unwrap();
    let tasks: Vec<_> = (0..40u8)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.add_agent(&agent_record(n, 1), &ev()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.list_agents(Some(&owner(1))).await.unwrap().len(), 40);
}

#[tokio::test]
async fn open_reports_an_unusable_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    match SqliteStore::open(&file.join("meta.sqlite")).await {
        Err(StoreError::Backend(text)) => assert!(text.contains("cannot open metadata database"), "{text}"),
        other => panic!("expected Backend, got {other:?}"),
    }
}

#[tokio::test]
async fn in_memory_store_has_the_schema() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.add_owner(&owner_record(1), &ev()).await.unwrap();
    assert_not_found(store.add_agent(&agent_record(1, 2), &ev()).await, &format!("owner {}", owner(2)));
    assert_eq!(store.list_owners().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_first_opens_both_succeed() {
    // The server and the CLI starting together on a fresh file both migrate.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.sqlite");
    let (a, b, c) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path), SqliteStore::open(&path));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    a.add_owner(&owner_record(1), &ev()).await.unwrap();
    assert_eq!(b.list_owners().await.unwrap().len(), 1);
    assert_eq!(c.list_owners().await.unwrap().len(), 1);
}

/// Issue 15 item 7, over generated worlds: owners with inboxes whose addresses
/// share prefixes and domains, and grants naming any address, any prefix of one
/// and any domain, by any owner. Whatever is stored, no grant ever covers an
/// inbox of another owner (through the store's `grants_and_inbox_owner` and the
/// shared `covering_grant` rule), and an exact address of another owner's inbox
/// (or of none) is refused as not found.
mod grants_stay_with_their_owner {
    use super::*;
    use agentkeys_core::{Scope, covering_grant};
    use proptest::prelude::*;

    const LOCALS: [&str; 6] = ["bot", "bot-1", "bot-12", "b", "ops", "ops.x"];
    const DOMAINS: [&str; 2] = ["agents.localhost", "else.test"];

    #[derive(Debug, Clone)]
    enum Pat {
        Exact(usize),
        Prefix(usize, usize),
        Domain(usize),
        Unknown,
    }

    /// Inboxes as (local part, domain, owner); grants as (owner, pattern).
    type World = (Vec<(usize, usize, u8)>, Vec<(u8, Pat)>);

    fn world() -> impl Strategy<Value = World> {
        // Inboxes: (local, domain, owner 1..=3); grants: (owner, pattern).
        let inboxes = prop::collection::vec((0..LOCALS.len(), 0..DOMAINS.len(), 1u8..=3), 1..8);
        let pat = prop_oneof![
            (0usize..8).prop_map(Pat::Exact),
            (0usize..8, 1usize..12).prop_map(|(i, n)| Pat::Prefix(i, n)),
            (0..DOMAINS.len()).prop_map(Pat::Domain),
            Just(Pat::Unknown),
        ];
        let grants = prop::collection::vec((1u8..=3, pat), 1..10);
        (inboxes, grants)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn no_grant_covers_another_owners_inbox((inboxes, grants) in world()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (_dir, store) = open_store().await;
                for d in DOMAINS {
                    store.ensure_domain(&d.parse().unwrap(), NOW).await.unwrap();
                }
                for n in 1..=3 {
                    store.add_owner(&owner_record(n), &ev()).await.unwrap();
                    store.add_agent(&agent_record(n, n), &ev()).await.unwrap();
                }
                let mut made: Vec<(Address, u8)> = Vec::new();
                for (l, d, o) in &inboxes {
                    let a = format!("{}@{}", LOCALS[*l], DOMAINS[*d]);
                    if made.iter().any(|(m, _)| m.as_str() == a) {
                        continue;
                    }
                    store.create_inbox(&inbox(&a, *o, *o), &ev()).await.unwrap();
                    made.push((addr(&a), *o));
                }
                for (i, (o, pat)) in grants.iter().enumerate() {
                    let text = match pat {
                        Pat::Exact(i) => made[i % made.len()].0.to_string(),
                        Pat::Prefix(i, n) => {
                            let a = made[i % made.len()].0.to_string();
                            format!("{}*", &a[..(*n).min(a.len())])
                        }
                        Pat::Domain(d) => format!("*@{}", DOMAINS[*d]),
                        Pat::Unknown => "ghost@agents.localhost".to_owned(),
                    };
                    let n = u8::try_from(i + 10).unwrap();
                    let result = store.add_grant(&grant(n, *o, *o, &text, "read,send"), &ev()).await;
                    let exact_owner = match pat {
                        Pat::Exact(i) => Some(Some(made[i % made.len()].1)),
                        Pat::Unknown => Some(None),
                        _ => None,
                    };
                    match exact_owner {
                        Some(found) if found != Some(*o) => {
                            assert!(matches!(result, Err(StoreError::NotFound { .. })), "{text} by owner {o}: {result:?}");
                        }
                        _ => { result.unwrap(); }
                    }
                }
                for n in 1..=3u8 {
                    for (address, inbox_owner) in &made {
                        let (stored, found_owner) = store.grants_and_inbox_owner(&agent(n), address).await.unwrap();
                        let found_owner = found_owner.unwrap();
                        assert_eq!(found_owner, owner(*inbox_owner));
                        for g in &stored {
                            assert!(g.covers(address, &found_owner) == (g.owner == found_owner && g.pattern.covers(address)));
                            if *inbox_owner != n {
                                assert!(!g.covers(address, &found_owner), "grant {} of owner {n} covers {address} of owner {inbox_owner}", g.pattern);
                            }
                            if let agentkeys_core::InboxPattern::Exact(a) = &g.pattern {
                                assert!(made.iter().any(|(m, o)| m == a && *o == n), "a stored exact grant names a foreign inbox");
                            }
                        }
                        for scope in [Scope::Read, Scope::Send] {
                            let hit = covering_grant(&stored, &agent(n), &owner(n), scope, address, &found_owner, NOW);
                            if *inbox_owner != n {
                                assert!(hit.is_err(), "owner {n}'s agent covered by {hit:?} on {address} of owner {inbox_owner}");
                            }
                        }
                    }
                }
            });
        }
    }
}

/// The first process records the deployment's seed fingerprint; later ones with
/// another seed read the first one back (and `serve` refuses to start).
#[tokio::test]
async fn the_first_seed_fingerprint_recorded_is_the_deployments() {
    let (dir, store) = open_store().await;
    assert_eq!(store.seed_fingerprint(&[1; 32]).await.unwrap(), [1; 32]);
    let other = SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap();
    assert_eq!(other.seed_fingerprint(&[2; 32]).await.unwrap(), [1; 32]);
    assert_eq!(store.seed_fingerprint(&[1; 32]).await.unwrap(), [1; 32]);
}
