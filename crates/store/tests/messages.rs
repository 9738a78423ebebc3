//! The message index, the Mailroom (blob → grouped index commit → event),
//! reconciliation and retention, over a real SQLite file and a real blob tree.

#![allow(clippy::unwrap_used)]

use agentkeys_store::roles::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentkeys_audit::{Actor, AuditEvent};
use agentkeys_core::{Address, Domain, OwnerId, UnixTime};
use agentkeys_store::{
    ACK_WINDOW_SECS, BlobKey, BlobStore, CLOCK_SKEW_SECS, FsBlobStore, IndexedMessage, ListOrder, LocalEventHub, MailEvents, Mailroom, MessageIndex,
    NewMessage, PageQuery, SWEEP_BATCH, SqliteStore, StoreError,
};
use async_trait::async_trait;
use bytes::Bytes;
use ulid::Ulid;

const OWNER: &str = "0x00000000000000000000000000000000000000aa";
const BOT: &str = "bot@agents.localhost";
const KEEP: &str = "keep@keep.test";

fn owner() -> OwnerId {
    OWNER.parse().unwrap()
}

fn inbox(a: &str) -> Address {
    a.parse().unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    raw: Arc<FsBlobStore>,
    hub: LocalEventHub,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("meta.sqlite")).await.unwrap());
    for d in ["agents.localhost", "keep.test"] {
        store.ensure_domain(&d.parse().unwrap(), 0).await.unwrap();
    }
    let raw = Arc::new(FsBlobStore::open(&dir.path().join("blobs")).unwrap());
    Fixture { _dir: dir, store, raw, hub: LocalEventHub::new() }
}

impl Fixture {
    fn mailroom(&self, index: Arc<dyn MessageIndex>) -> Mailroom {
        Mailroom::new(self.raw.clone(), index, Arc::new(self.hub.clone()), "mx.agents.localhost")
    }
}

fn page(order: ListOrder, after: Option<Ulid>, before: Option<Ulid>, limit: u32) -> PageQuery {
    PageQuery { after, before, order, limit }
}

fn copy(address: &str, id: Ulid, body: &str) -> (BlobKey, Bytes) {
    (BlobKey::message(&owner(), &inbox(address), id), Bytes::from(body.to_owned()))
}

#[tokio::test]
async fn listing_pages_by_id_in_both_orders_and_replay_is_by_commit_order() {
    let f = fixture().await;
    let ids: Vec<Ulid> = (0..10u64).map(|i| Ulid::from_parts(1_700_000_000_000 + i, 7)).collect();
    // Committed out of id order: newest first.
    let rows: Vec<NewMessage> =
        ids.iter().rev().map(|&id| NewMessage { owner: owner(), inbox: inbox(BOT), id, size: 100, summary: Default::default(), facts: Default::default() }).collect();
    let indexed = f.store.index_messages(&rows).await.unwrap();
    let seqs: Vec<i64> = indexed.iter().map(|m| m.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq follows commit order: {seqs:?}");
    assert_eq!(indexed[0].received_at, 1_700_000_000, "received_at is the ULID's second");
    // Idempotent: the same rows keep their seq.
    assert_eq!(f.store.index_messages(&rows[..2]).await.unwrap(), indexed[..2].to_vec());

    let (o, b) = (owner(), inbox(BOT));
    let list = |p: PageQuery| {
        let store = f.store.clone();
        let (o, b) = (o.clone(), b.clone());
        async move { store.list_messages(&o, &b, &p).await.unwrap().iter().map(|m| m.id).collect::<Vec<_>>() }
    };
    assert_eq!(list(page(ListOrder::NewestFirst, None, None, 3)).await, vec![ids[9], ids[8], ids[7]]);
    assert_eq!(list(page(ListOrder::NewestFirst, None, Some(ids[7]), 3)).await, vec![ids[6], ids[5], ids[4]]);
    assert_eq!(list(page(ListOrder::OldestFirst, Some(ids[7]), None, 5)).await, vec![ids[8], ids[9]]);
    assert_eq!(list(page(ListOrder::OldestFirst, Some(ids[2]), Some(ids[5]), 100)).await, vec![ids[3], ids[4]]);
    // Another inbox and another owner see none of it.
    assert!(f.store.list_messages(&o, &inbox(KEEP), &page(ListOrder::NewestFirst, None, None, 10)).await.unwrap().is_empty());
    let other: OwnerId = "0x00000000000000000000000000000000000000bb".parse().unwrap();
    assert!(f.store.list_messages(&other, &b, &page(ListOrder::NewestFirst, None, None, 10)).await.unwrap().is_empty());

    // Replay: after a seq, in commit order; by id when the seq is unknown.
    let seq_of_8 = f.store.indexed_message(&o, &b, ids[8]).await.unwrap().map(|m| m.seq).unwrap();
    let since: Vec<Ulid> = f.store.messages_since(&o, &b, seq_of_8, None, 100).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(since, ids[..8].iter().rev().copied().collect::<Vec<_>>(), "committed after ids[8]: the older ones");
    let by_id: Vec<Ulid> =
        f.store.messages_since(&o, &b, 0, Some(ids[7]), 100).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(by_id, vec![ids[9], ids[8]]);
    assert_eq!(f.store.indexed_message(&o, &b, Ulid::from_parts(1, 1)).await.unwrap().map(|m| m.seq), None);

    // A batch mixing an indexed row and a new one: the old keeps its seq, the new
    // one comes after every earlier commit.
    let late = NewMessage { owner: owner(), inbox: inbox(BOT), id: Ulid::from_parts(1_700_000_000_100, 7), size: 100, summary: Default::default(), facts: Default::default() };
    let mixed = f.store.index_messages(&[rows[3].clone(), late]).await.unwrap();
    assert_eq!(mixed[0], indexed[3]);
    assert!(mixed[1].seq > indexed[9].seq, "{mixed:?}");
}

/// The query plan of `sql` on the store's database file, by the sqlite3 CLI.
fn query_plan(f: &Fixture, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(f._dir.path().join("meta.sqlite"))
        .arg(format!("EXPLAIN QUERY PLAN {sql}"))
        .output()
        .expect("the sqlite3 CLI (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn listing_and_replay_are_index_range_scans() {
    let f = fixture().await;
    for order in ["DESC", "ASC"] {
        let plan = query_plan(
            &f,
            &format!("SELECT seq, owner, inbox, id, received_at, size FROM messages WHERE owner = 'o' AND inbox = 'i' AND id > '' AND id < '~' ORDER BY id {order} LIMIT 10"),
        );
        assert!(plan.contains("USING INDEX messages_by_inbox "), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
    }
    let plan = query_plan(
        &f,
        "SELECT seq FROM messages INDEXED BY messages_by_inbox_seq WHERE owner = 'o' AND inbox = 'i' AND seq > 5 AND id > '' ORDER BY seq LIMIT 10",
    );
    assert!(plan.contains("messages_by_inbox_seq") && plan.contains("rowid>?"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
}

#[tokio::test]
async fn a_put_stores_then_indexes_then_publishes_inbox_copies_only() {
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let mut sub = f.hub.subscribe(&owner(), &inbox(BOT), 4).unwrap();
    let id = Ulid::new();
    let items = vec![copy(BOT, id, "Subject: x\r\n\r\nhello\r\n"), copy(KEEP, id, "Subject: x\r\n\r\nhello\r\n"), (BlobKey::queued(id), Bytes::from_static(b"queued"))];
    mail.put_durable(items).await.unwrap();
    let event = sub.recv().await.unwrap();
    assert_eq!((event.id, event.size, &event.inbox), (id, 21, &inbox(BOT)));
    // Indexed before it was announced, and the blob is there.
    assert_eq!(f.store.indexed_message(&owner(), &inbox(BOT), id).await.unwrap().map(|m| m.seq), Some(event.seq));
    assert!(f.raw.get(&event.key()).await.unwrap().is_some());
    assert!(f.store.indexed_message(&owner(), &inbox(KEEP), id).await.unwrap().map(|m| m.seq).is_some());
    // The queue copy is not a message of any inbox.
    let mut all = 0;
    for a in [BOT, KEEP] {
        all += f.store.indexed_ids(&owner(), &inbox(a)).await.unwrap().len();
    }
    assert_eq!(all, 2);
    // remove() drops the row with the blob.
    assert!(mail.remove(&event.key()).await.unwrap());
    assert_eq!(f.store.indexed_message(&owner(), &inbox(BOT), id).await.unwrap().map(|m| m.seq), None);
}

/// An index that counts transactions, can be slowed down or made to fail.
struct Instrumented {
    inner: Arc<SqliteStore>,
    calls: AtomicUsize,
    delay: Duration,
    fail: AtomicBool,
}

#[async_trait]
impl MessageIndex for Instrumented {
    async fn index_messages(&self, rows: &[NewMessage]) -> Result<Vec<IndexedMessage>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected index failure".into()));
        }
        self.inner.index_messages(rows).await
    }
    async fn list_messages(&self, o: &OwnerId, i: &Address, p: &PageQuery) -> Result<Vec<IndexedMessage>, StoreError> {
        self.inner.list_messages(o, i, p).await
    }
    async fn indexed_message(&self, o: &OwnerId, i: &Address, id: Ulid) -> Result<Option<IndexedMessage>, StoreError> {
        self.inner.indexed_message(o, i, id).await
    }
    async fn messages_since(
        &self,
        o: &OwnerId,
        i: &Address,
        s: i64,
        a: Option<Ulid>,
        l: u32,
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        self.inner.messages_since(o, i, s, a, l).await
    }
    async fn indexed_ids(&self, o: &OwnerId, i: &Address) -> Result<HashSet<Ulid>, StoreError> {
        self.inner.indexed_ids(o, i).await
    }
    async fn unindex(&self, o: &OwnerId, i: &Address, ids: &[Ulid]) -> Result<u64, StoreError> {
        self.inner.unindex(o, i, ids).await
    }
    async fn domain_retentions(&self) -> Result<Vec<(Domain, Option<i64>)>, StoreError> {
        self.inner.domain_retentions().await
    }
    async fn set_domain_retention(
        &self,
        d: &Domain,
        r: Option<i64>,
        e: &AuditEvent,
    ) -> Result<agentkeys_audit::AuditReceipt, StoreError> {
        self.inner.set_domain_retention(d, r, e).await
    }
    async fn expire_messages(
        &self,
        d: &Domain,
        c: UnixTime,
        l: u32,
        e: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<Vec<IndexedMessage>, StoreError> {
        self.inner.expire_messages(d, c, l, e).await
    }
    async fn list_threads(
        &self,
        o: &OwnerId,
        i: &Address,
        b: Option<Ulid>,
        l: u32,
    ) -> Result<Vec<agentkeys_store::ThreadSummary>, StoreError> {
        self.inner.list_threads(o, i, b, l).await
    }
    async fn thread_messages(&self, o: &OwnerId, i: &Address, t: Ulid, l: u32) -> Result<Vec<IndexedMessage>, StoreError> {
        self.inner.thread_messages(o, i, t, l).await
    }
    async fn search_messages(
        &self,
        o: &OwnerId,
        i: &Address,
        q: &agentkeys_store::SearchQuery,
    ) -> Result<Vec<agentkeys_store::SearchHit>, StoreError> {
        self.inner.search_messages(o, i, q).await
    }
    async fn facts_pending(&self, after_seq: i64, limit: u32) -> Result<Vec<IndexedMessage>, StoreError> {
        self.inner.facts_pending(after_seq, limit).await
    }
    async fn refresh_facts(&self, rows: &[NewMessage]) -> Result<u64, StoreError> {
        self.inner.refresh_facts(rows).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_share_index_transactions() {
    const PUTS: usize = 40;
    let f = fixture().await;
    let index = Arc::new(Instrumented {
        inner: f.store.clone(),
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(20),
        fail: AtomicBool::new(false),
    });
    let mail = f.mailroom(index.clone());
    let puts: Vec<_> = (0..PUTS)
        .map(|i| {
            let mail = mail.clone();
            tokio::spawn(async move { mail.put_durable(vec![copy(BOT, Ulid::new(), &format!("m{i}"))]).await })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    let calls = index.calls.load(Ordering::SeqCst);
    assert!(calls < PUTS, "{calls} index transactions for {PUTS} puts");
    assert_eq!(f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap().len(), PUTS);
}

#[tokio::test]
async fn a_failed_index_write_fails_the_put_and_takes_the_blobs_back() {
    let f = fixture().await;
    let index = Arc::new(Instrumented {
        inner: f.store.clone(),
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
        fail: AtomicBool::new(true),
    });
    let mail = f.mailroom(index);
    let mut sub = f.hub.subscribe(&owner(), &inbox(BOT), 1).unwrap();
    let id = Ulid::new();
    let err = mail.put_durable(vec![copy(BOT, id, "x"), (BlobKey::queued(id), Bytes::from_static(b"q"))]).await;
    assert!(err.unwrap_err().to_string().contains("injected index failure"));
    assert!(f.raw.get(&BlobKey::message(&owner(), &inbox(BOT), id)).await.unwrap().is_none());
    assert!(f.raw.get(&BlobKey::queued(id)).await.unwrap().is_none());
    assert!(tokio::time::timeout(Duration::from_millis(100), sub.recv()).await.is_err(), "no event for a failed put");
}

fn unix_now() -> UnixTime {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Issue 10: a blob without an index row is a write nobody acknowledged (the
/// index commit is the acknowledgement), so reconcile removes it instead of
/// indexing it (which made the sender's retry a second copy), but only once no
/// node can still commit it.
#[tokio::test]
async fn reconcile_removes_unacknowledged_blobs_once_settled_and_drops_rows_without_blobs() {
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let (kept, orphan, gone) = (Ulid::new(), Ulid::new(), Ulid::new());
    mail.put_durable(vec![copy(BOT, kept, "kept"), copy(BOT, gone, "gone")]).await.unwrap();
    // A crash between the blob write and the index commit; a blob lost by hand.
    f.raw.put_durable(vec![copy(BOT, orphan, "orphan!")]).await.unwrap();
    f.raw.remove(&BlobKey::message(&owner(), &inbox(BOT), gone)).await.unwrap();
    let orphan_key = BlobKey::message(&owner(), &inbox(BOT), orphan);
    let inboxes = [(owner(), inbox(BOT)), (owner(), inbox(KEEP))];
    // Now: another node might still be about to commit the orphan: left alone, unlisted.
    let report = mail.reconcile(&inboxes, unix_now()).await.unwrap();
    assert_eq!((report.removed, report.pending, report.dropped), (0, 1, 1));
    assert_eq!(f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap(), HashSet::from([kept]));
    assert!(f.raw.get(&orphan_key).await.unwrap().is_some());
    // One second before it settles, still left; from then on removed.
    let settled = unix_now() + ACK_WINDOW_SECS + CLOCK_SKEW_SECS + 1;
    let report = mail.reconcile(&inboxes, settled - 2).await.unwrap();
    assert_eq!((report.removed, report.pending), (0, 1));
    let report = mail.reconcile(&inboxes, settled).await.unwrap();
    assert_eq!((report.removed, report.pending, report.dropped), (1, 0, 0));
    assert!(f.raw.get(&orphan_key).await.unwrap().is_none());
    assert_eq!(f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap(), HashSet::from([kept]));
    assert!(f.raw.get(&BlobKey::message(&owner(), &inbox(BOT), kept)).await.unwrap().is_some());
    // Idempotent.
    let again = mail.reconcile(&inboxes, settled).await.unwrap();
    assert_eq!(again, Default::default());
}

/// The other half of the rule: the committer never indexes a message received
/// more than ACK_WINDOW_SECS ago (reconcile may have removed its blob), so the
/// put fails (451) and leaves nothing.
#[tokio::test]
async fn a_message_past_the_acknowledgement_window_is_refused_and_taken_back() {
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let ms = |secs_ago: i64| u64::try_from((unix_now() - secs_ago) * 1000).unwrap();
    let late = Ulid::from_parts(ms(ACK_WINDOW_SECS + 5), 1);
    let fresh = Ulid::from_parts(ms(ACK_WINDOW_SECS - 60), 2);
    let err = mail.put_durable(vec![copy(BOT, late, "late")]).await.unwrap_err();
    assert!(err.to_string().contains("not indexed"), "{err}");
    assert!(f.raw.get(&BlobKey::message(&owner(), &inbox(BOT), late)).await.unwrap().is_none());
    mail.put_durable(vec![copy(BOT, fresh, "fresh")]).await.unwrap();
    assert_eq!(f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap(), HashSet::from([fresh]));
}

/// When, relative to the reconciling node's blob listing, another node stores
/// a message (blob, then index row) in [`RacingList`].
#[derive(Clone, Copy, Debug)]
enum Race {
    BeforeListing,
    AfterListing,
}

/// The reconciling node's view of the blob store: while armed, its next
/// `list` lets another node (a second [`Mailroom`] over the same blobs and
/// index) store one message just before or just after the listing is taken.
struct RacingList {
    inner: Arc<FsBlobStore>,
    other: Mailroom,
    race: Race,
    stored: std::sync::Mutex<Option<Ulid>>,
}

impl RacingList {
    async fn other_node_stores(&self) {
        let Some(id) = self.stored.lock().unwrap().take() else { return };
        self.other.put_durable(vec![copy(BOT, id, "stored by another node")]).await.unwrap();
    }
}

#[async_trait]
impl BlobStore for RacingList {
    async fn put_durable(&self, items: Vec<(BlobKey, Bytes)>) -> Result<(), agentkeys_store::BlobError> {
        self.inner.put_durable(items).await
    }
    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, agentkeys_store::BlobError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<BlobKey>, agentkeys_store::BlobError> {
        if matches!(self.race, Race::BeforeListing) {
            self.other_node_stores().await;
        }
        let listed = self.inner.list(prefix).await;
        if matches!(self.race, Race::AfterListing) {
            self.other_node_stores().await;
        }
        listed
    }
    async fn remove(&self, key: &BlobKey) -> Result<bool, agentkeys_store::BlobError> {
        self.inner.remove(key).await
    }
}

/// Found by crates/cli/tests/multinode.rs's review of a restarting node:
/// reconcile listed the blobs before reading the index, so a message another
/// node stored (and acknowledged) between the two reads looked like a row
/// without a blob and was dropped from the index.
#[tokio::test]
async fn a_reconcile_never_drops_mail_another_node_stores_meanwhile() {
    for race in [Race::BeforeListing, Race::AfterListing] {
        let f = fixture().await;
        let other = f.mailroom(f.store.clone());
        let before = Ulid::new();
        other.put_durable(vec![copy(BOT, before, "stored earlier")]).await.unwrap();
        let racing = Ulid::new();
        let blobs = Arc::new(RacingList {
            inner: f.raw.clone(),
            other,
            race,
            stored: std::sync::Mutex::new(Some(racing)),
        });
        let restarting = Mailroom::new(blobs, f.store.clone(), Arc::new(f.hub.clone()), "mx.agents.localhost");
        let report = restarting.reconcile(&[(owner(), inbox(BOT))], unix_now()).await.unwrap();
        assert_eq!(report.dropped, 0, "{race:?}: {report:?}");
        let ids = f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap();
        assert_eq!(ids, HashSet::from([before, racing]), "{race:?}");
        // Indexed once, whoever indexed it: one row, with the seq it was first given.
        let rows = f.store.list_messages(&owner(), &inbox(BOT), &page(ListOrder::OldestFirst, None, None, 10)).await.unwrap();
        assert_eq!(rows.len(), 2, "{race:?}: {rows:?}");
    }
}

#[tokio::test]
async fn retention_expires_per_domain_in_audited_batches() {
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let now: UnixTime = 1_900_000_000;
    let at = |secs_ago: i64, n: u128| Ulid::from_parts(((now - secs_ago) * 1000) as u64, n);
    // agents.localhost: 1 day retention. keep.test: the default (10 days).
    let day = 86_400;
    let domain: Domain = "agents.localhost".parse().unwrap();
    let event = AuditEvent::ok(Actor::Operator, "domain.set_retention", domain.as_str());
    f.store.set_domain_retention(&domain, Some(day), &event).await.unwrap();
    let old_count = SWEEP_BATCH as usize + 3;
    let old: Vec<Ulid> = (0..old_count).map(|i| at(2 * day, i as u128)).collect();
    let mut items: Vec<(BlobKey, Bytes)> = old.iter().map(|&id| copy(BOT, id, "old")).collect();
    let fresh = at(day - 60, 1);
    items.push(copy(BOT, fresh, "fresh"));
    let keep_old = at(2 * day, 99_999);
    items.push(copy(KEEP, keep_old, "kept by the default"));
    mail.put_durable(items).await.unwrap();

    let removed = mail.sweep_expired(now, 10 * day).await.unwrap();
    assert_eq!(removed, old_count as u64);
    assert_eq!(f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap(), HashSet::from([fresh]));
    assert!(f.raw.get(&BlobKey::message(&owner(), &inbox(BOT), old[0])).await.unwrap().is_none());
    assert!(f.raw.get(&BlobKey::message(&owner(), &inbox(KEEP), keep_old)).await.unwrap().is_some());
    // Two batches, two audit records, counts adding up; the chain verifies.
    let records = f.store.audit_all().await.unwrap();
    let sweeps: Vec<_> = records.iter().filter(|r| r.operation == "message.expire").collect();
    let counts: Vec<u64> = sweeps.iter().map(|r| r.detail["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![SWEEP_BATCH as u64, 3]);
    assert!(sweeps.iter().all(|r| r.subject == "agents.localhost" && r.detail["retention"] == day));
    // Nothing left to expire: no record.
    assert_eq!(mail.sweep_expired(now, 10 * day).await.unwrap(), 0);
    assert_eq!(f.store.audit_all().await.unwrap().len(), records.len());

    // The setting's own rules.
    let unknown: Domain = "nope.test".parse().unwrap();
    assert!(matches!(f.store.set_domain_retention(&unknown, Some(day), &event).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(f.store.set_domain_retention(&domain, Some(0), &event).await, Err(StoreError::Invalid(_))));
    f.store.set_domain_retention(&domain, None, &event).await.unwrap();
    let retentions = f.store.domain_retentions().await.unwrap();
    assert!(retentions.iter().all(|(_, r)| r.is_none()), "{retentions:?}");
}

#[tokio::test]
async fn expired_inboxes_are_swept_with_their_blobs_and_index_rows_once_each() {
    use agentkeys_core::InboxStatus;
    use agentkeys_store::{AgentRecord, InboxRecord, OwnerRecord};
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let agent: agentkeys_core::AgentId = "0x00000000000000000000000000000000000000a1".parse().unwrap();
    let ev = |op: &str| AuditEvent::ok(Actor::Operator, op, "x");
    f.store.add_owner(&OwnerRecord { id: owner(), email: None, created_at: 0 }, &ev("owner.create")).await.unwrap();
    f.store
        .add_agent(&AgentRecord { id: agent.clone(), owner: owner(), name: None, created_at: 0 }, &ev("agent.create"))
        .await
        .unwrap();
    let now: UnixTime = 1_900_000_000;
    let record = |a: &str, expires_at: Option<UnixTime>| InboxRecord {
        address: inbox(a),
        owner: owner(),
        agent: agent.clone(),
        status: InboxStatus::Active,
        created_at: 1_000,
        expires_at,
    };
    let gone = record("signup-gh@agents.localhost", Some(now - 5));
    let later = record("signup-later@agents.localhost", Some(now + 60));
    for i in [&gone, &later, &record(BOT, None)] {
        f.store.create_inbox(i, &ev("inbox.create")).await.unwrap();
    }
    let at = |n: u128| Ulid::from_parts(((now - 100) * 1000) as u64, n);
    mail.put_durable(vec![
        copy("signup-gh@agents.localhost", at(1), "otp 1"),
        copy("signup-gh@agents.localhost", at(2), "otp 2"),
        copy("signup-later@agents.localhost", at(3), "stays"),
        copy(BOT, at(4), "stays too"),
    ])
    .await
    .unwrap();

    assert_eq!(mail.sweep_expired_inboxes(f.store.as_ref(), now).await.unwrap(), 1);
    assert!(f.raw.list(&format!("{OWNER}/signup-gh@agents.localhost/")).await.unwrap().is_empty(), "its blobs");
    assert!(f.store.indexed_ids(&owner(), &gone.address).await.unwrap().is_empty(), "its index rows");
    let left: Vec<Address> = f.store.list_inboxes(None).await.unwrap().into_iter().map(|i| i.address).collect();
    assert_eq!(left, vec![inbox(BOT), later.address.clone()]);
    assert_eq!(f.raw.list(&format!("{OWNER}/signup-later@agents.localhost/")).await.unwrap().len(), 1);
    assert_eq!(f.store.indexed_ids(&owner(), &inbox(BOT)).await.unwrap(), HashSet::from([at(4)]));
    let records = f.store.audit_all().await.unwrap();
    let expired: Vec<_> = records.iter().filter(|r| r.operation == "inbox.expire").collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].subject, "signup-gh@agents.localhost");
    assert_eq!((expired[0].actor.to_string().as_str(), &expired[0].detail["owner"], &expired[0].detail["messages"]),
        ("system", &serde_json::json!(OWNER), &serde_json::json!(2)));
    // Swept already: nothing more, no record; the later one goes at its time.
    assert_eq!(mail.sweep_expired_inboxes(f.store.as_ref(), now).await.unwrap(), 0);
    assert_eq!(f.store.audit_all().await.unwrap().len(), records.len());
    assert_eq!(mail.sweep_expired_inboxes(f.store.as_ref(), now + 60).await.unwrap(), 1);
    assert!(f.raw.list(&format!("{OWNER}/signup-later@agents.localhost/")).await.unwrap().is_empty());
}

#[tokio::test]
async fn subscribers_are_only_told_about_their_own_inbox() {
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let mut keep = f.hub.subscribe(&owner(), &inbox(KEEP), 1).unwrap();
    mail.put_durable(vec![copy(BOT, Ulid::new(), "not for keep")]).await.unwrap();
    let mine = Ulid::new();
    mail.put_durable(vec![copy(KEEP, mine, "for keep")]).await.unwrap();
    assert_eq!(keep.recv().await.unwrap().id, mine);
}


#[tokio::test]
async fn backfill_reads_the_stored_copies_in_batches_resumes_and_skips_what_is_done() {
    let f = fixture().await;
    let mail = f.mailroom(f.store.clone());
    let ids: Vec<Ulid> = (0..5u64).map(|i| Ulid::from_parts(unix_now() as u64 * 1000 + i, 9)).collect();
    let bodies: Vec<String> = (0..5)
        .map(|i| {
            let reply = if i > 0 { format!("In-Reply-To: <m{}@x.test>\r\n", i - 1) } else { String::new() };
            format!("Message-ID: <m{i}@x.test>\r\n{reply}From: a@x.test\r\nSubject: plan {i}\r\n\r\nword{i} shared\r\n")
        })
        .collect();
    mail.put_durable(ids.iter().zip(&bodies).map(|(id, b)| copy(BOT, *id, b)).collect()).await.unwrap();
    f.store.forget_facts(&ids).await.unwrap();
    let search = |text: &str| agentkeys_store::SearchQuery { text: Some(text.into()), limit: 100, ..Default::default() };
    assert!(f.store.search_messages(&owner(), &inbox(BOT), &search("shared")).await.unwrap().is_empty());
    // A lost blob: left for reconcile, counted.
    f.raw.remove(&BlobKey::message(&owner(), &inbox(BOT), ids[4])).await.unwrap();

    // Batches of 2: three batches, four rows written, one missing.
    let report = mail.backfill_facts(2).await.unwrap();
    assert_eq!((report.refreshed, report.missing), (4, 1));
    let hits = f.store.search_messages(&owner(), &inbox(BOT), &search("shared")).await.unwrap();
    assert_eq!(hits.len(), 4);
    assert!(hits.iter().all(|h| h.thread_id == ids[0]), "one thread, the first message's: {hits:?}");
    assert_eq!(f.store.search_messages(&owner(), &inbox(BOT), &search("word2")).await.unwrap().len(), 1);
    // Done stays done: a second run writes nothing (the missing row is still pending).
    let again = mail.backfill_facts(2).await.unwrap();
    assert_eq!((again.refreshed, again.missing), (0, 1));
    assert_eq!(f.store.facts_pending(0, 10).await.unwrap().iter().map(|m| m.id).collect::<Vec<_>>(), [ids[4]]);
}

/// Every query shape is one walk of the full-text index, newest first, that
/// stops at the page: FTS5 takes the `ORDER BY` (no temporary B-tree sorting
/// every match before the first row comes out) and each candidate's row is
/// found by its primary key. The backfill reads its partial index.
#[tokio::test]
async fn search_and_backfill_plans_use_their_indexes() {
    use agentkeys_store::SearchQuery;
    let f = fixture().await;
    let q = |q: SearchQuery| SearchQuery { limit: 51, ..q };
    let shapes = [
        q(SearchQuery { text: Some("invoice".into()), ..Default::default() }),
        q(SearchQuery { text: Some("invoice paid".into()), ..Default::default() }),
        q(SearchQuery { from: Some("github.com".into()), ..Default::default() }),
        q(SearchQuery { from: Some("user12@github.com".into()), text: Some("invoice".into()), ..Default::default() }),
        q(SearchQuery { to: Some("bob@example.org".into()), ..Default::default() }),
        q(SearchQuery { text: Some("invoice".into()), since: Some(1_700_000_000), ..Default::default() }),
        q(SearchQuery { has_attachment: Some(true), subject: Some("invoice".into()), ..Default::default() }),
        q(SearchQuery { has_attachment: Some(false), subject: Some("invoice".into()), ..Default::default() }),
        q(SearchQuery { text: Some("invoice".into()), before_seq: Some(1000), ..Default::default() }),
    ];
    for shape in &shapes {
        let plan = f.store.search_plan(&owner(), &inbox(BOT), shape).await.unwrap().join("\n");
        assert!(plan.contains("SCAN message_search VIRTUAL TABLE INDEX"), "{shape:?}:\n{plan}");
        assert!(plan.contains("SEARCH m USING INTEGER PRIMARY KEY"), "{shape:?}:\n{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{shape:?}:\n{plan}");
    }
    let plan = f.store.facts_pending_plan().await.unwrap().join("\n");
    assert!(plan.contains("messages_facts_pending"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
}
