//! The metadata store's contracts, stated for any backend, and the checks that
//! hold a backend to them (issue 10 §1).
//!
//! A backend passes when every check here passes against it. Each check is a
//! generic async function over a [`Backend`] (a factory of empty stores and of
//! second handles on the same data, as a second process has), and
//! [`conformance_tests!`](crate::conformance_tests) turns the whole list into one
//! `#[test]` per contract, so a failure names the contract it broke:
//!
//! ```text
//! agentkeys_store::conformance_tests!(MyBackend);
//! ```
//!
//! The contracts, in backend-neutral words:
//!
//! 1. **An owner's index rows become visible in `seq` order.** A reader of an
//!    inbox that saw `seq` n and asks for what came after it never misses a
//!    row: no row of that owner with a lower `seq` becomes visible later.
//!    Writers in several processes included. (Across owners `seq` need not be
//!    commit order; the one reader across owners, the webhook message feed,
//!    returns every row exactly once in an order of its own.)
//! 2. **No (message, recipient) is claimed by two runners** at once, across
//!    processes; a lease that expired hands the row out again, and the old
//!    lease can no longer record anything.
//! 3. **One audit hash chain across processes**: every append and audited write,
//!    from any process, is one record; seqs are contiguous and the chain
//!    verifies. Checkpoints only extend their chain and are never silently
//!    empty.
//! 4. **Grant changes are compare-and-set** and only narrow.
//! 5. **One owner never sees another's rows**: every owner-scoped read and
//!    write treats another owner's object exactly like a missing one.
//! 6. **Single use across processes**: owner nonces, idempotency keys, pairing
//!    approval and collection, enrollment redemption.
//! 7. **Errors as documented**: `NotFound`, `Conflict` and `Invalid` where the
//!    trait documents them, and a refused write changes nothing.
//! 8. **Failure counters are shared** ([`Throttles`]): failures recorded through
//!    any handles add up, concurrent records lose none and each counts itself
//!    and those before it, and every answer is the sliding-window rule
//!    ([`crate::tally`]) over every failure recorded.
//!
//! And with them: reads that gather several facts at once (`auth_facts`,
//! `grants_and_inbox_owner`) agree with the single reads they stand for;
//! concurrent retention sweeps expire each row once, with one audit record per
//! batch; an expired inbox is absent to every lookup and is removed with its
//! index rows once across handles, one audit record each; a DKIM key version is
//! stored once; revoking twice keeps the first
//! time.
//!
//! Each contract is checked with named cases and, where a property exists, over
//! generated inputs ([`proptest`], bounded sizes, no failure files written).
//!
//! Test support: a broken contract is a panic that names it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentkeys_audit::{Actor, AuditEvent, AuditReceipt, AuditRecord, ChainHead, ChainedCheckpoint, Outcome, Verifier};
use agentkeys_core::{
    Address, AgentId, Domain, Grant, GrantId, InboxStatus, KeyHash, KeyId, OwnerId, Scopes, UnixTime,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ulid::Ulid;

use crate::roles::*;
use crate::{
    Admission, AgentRecord, CheckpointRecord, DomainKeyRecord, EnrollmentTicketRecord, FailureTally, FailureWindow,
    IDEMPOTENCY_KEY_TTL_SECS, IdempotencyClaim, IdempotencyScope, InboxRecord, KeyRecord, ListOrder, NewMessage,
    AuditFilter, MAX_AUDIT_SEARCH_PAGE, NewOutbound, NonceUse, OwnerRecord, PageQuery, PairingRecord, PairingStatus, STALE_CLAIM_SECS, StoreError, ThrottleKey,
    UnixMillis, tally,
};

mod owner_mail;
mod search;
mod webhooks;
pub use owner_mail::*;
pub use search::*;
pub use webhooks::*;
mod mail_backends;
pub use mail_backends::*;
mod guardrails;
pub use guardrails::*;
mod console_views;
pub use console_views::*;

/// Everything a metadata backend implements (every role trait, bundled by
/// [`MetadataStore`]), and cheap clones for concurrent tasks.
pub trait StoreUnderTest: MetadataStore + Clone {}

impl<T> StoreUnderTest for T where T: MetadataStore + Clone {}

/// A metadata backend under test: makes empty stores and second handles on them.
pub trait Backend: Send + Sync + Sized + 'static {
    /// The store type.
    type Store: StoreUnderTest;
    /// Sets the backend up for one test (a temporary directory, a server
    /// connection).
    fn start() -> impl Future<Output = Self> + Send;
    /// A new, empty store of its own (its own file, its own database).
    fn fresh(&self) -> impl Future<Output = Self::Store> + Send;
    /// A second handle on `store`'s data, as another process opens it: its own
    /// connections and its own in-process state (writer tasks, caches, locks).
    fn second_handle(&self, store: &Self::Store) -> impl Future<Output = Self::Store> + Send;
    /// Makes the rows of these message ids look as rows indexed before
    /// threads and search existed look after the migrations: no thread keys,
    /// no words, no attachment flag or recipients, a thread of their own,
    /// `facts_version` 0 (for [`old_rows_are_backfilled`]).
    fn forget_facts(&self, store: &Self::Store, ids: &[Ulid]) -> impl Future<Output = ()> + Send;
    /// Removes what the test created (databases); called when the test ends,
    /// passed or failed. Nothing by default.
    fn finish(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Worker threads of a check's runtime: more than one, so tasks on both handles
/// really run at the same time.
const WORKER_THREADS: usize = 4;
/// A check that has not finished after this long is stuck (a lost wake-up, a
/// deadlock between handles); it fails instead of hanging the suite.
const CHECK_TIME_LIMIT: Duration = Duration::from_secs(600);
/// How long the runtime waits for leftover tasks after a check.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs one check against a fresh `B` on its own multi-threaded runtime, then
/// lets the backend clean up, then reports the check's panic, if any.
pub fn run<B, F, Fut>(check: F)
where
    B: Backend,
    F: FnOnce(Arc<B>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance check");
    let outcome = rt.block_on(async {
        let backend = Arc::new(B::start().await);
        let task = tokio::spawn(check(Arc::clone(&backend)));
        let outcome = match tokio::time::timeout(CHECK_TIME_LIMIT, task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(join)) if join.is_panic() => Err(join.into_panic()),
            Ok(Err(join)) => Err(Box::new(format!("the check was cancelled: {join}")) as Box<dyn std::any::Any + Send>),
            Err(_) => Err(Box::new(format!("the check did not finish within {CHECK_TIME_LIMIT:?}: stuck?")) as _),
        };
        backend.finish().await;
        outcome
    });
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[test]` per contract of [`conformance`](crate::conformance), for the
/// [`Backend`](crate::conformance::Backend) given:
/// `agentkeys_store::conformance_tests!(SqliteBackend);`. Checks named after
/// `ignore` are compiled but ignored, with the reason:
/// `conformance_tests!(B; ignore { check_name: "why" })`.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!($backend; ignore {});
    };
    ($backend:ty; ignore { $($ignored:ident : $why:literal),* $(,)? }) => {
        $crate::conformance_tests!(@checks $backend; [$($ignored : $why),*];
            index_rows_become_visible_in_seq_order,
            index_rows_become_visible_in_seq_order_generated,
            index_seq_follows_commit_order_and_indexing_is_idempotent,
            claims_are_exclusive_across_handles,
            claims_are_exclusive_generated,
            an_expired_lease_hands_the_row_out_again,
            one_audit_chain_across_handles,
            one_audit_chain_generated,
            audit_records_of_generated_events_verify,
            checkpoints_extend_their_chain_and_are_never_silently_empty,
            grant_changes_are_compare_and_set,
            grant_changes_only_narrow_generated,
            owners_see_only_their_own_rows,
            owners_see_only_their_own_rows_generated,
            combined_reads_agree_with_single_reads,
            combined_reads_agree_generated,
            owner_nonces_are_single_use_across_handles,
            owner_nonces_generated,
            idempotency_keys_are_claimed_once_across_handles,
            idempotency_claims_generated,
            a_stale_idempotency_claim_is_resolved_by_what_was_stored,
            pairing_approval_and_collection_are_single_use,
            a_pairing_is_denied_once_and_never_approved,
            enrollment_redemption_is_single_use,
            single_use_transitions_generated,
            domain_key_versions_are_stored_once,
            expiry_removes_each_row_once,
            expired_inboxes_are_absent_and_swept_once,
            inboxes_end_with_the_grant_that_created_them,
            a_grant_ended_in_its_inboxs_creation_second_ends_it_a_second_later,
            domains_are_assigned_to_one_owner_or_shared,
            revoking_twice_keeps_the_first_time,
            writes_answer_errors_as_documented,
            audited_writes_refuse_events_that_are_not_ok,
            the_first_seed_fingerprint_is_the_deployments,
            throttle_failures_add_up_across_handles,
            throttle_failures_generated,
            throttle_uses_are_admitted_up_to_the_limit_across_handles,
            throttle_uses_generated,
            cached_inbox_policies_follow_other_handles_within_the_ttl,
            inbox_policies_are_owner_scoped,
            console_challenges_are_single_use_across_handles,
            console_challenges_generated,
            console_passkey_links_register_once,
            console_owners_see_only_their_own,
            audit_search_filters_in_the_store_per_owner,
        );
    };
    (@checks $backend:ty; $ignores:tt; $($check:ident),* $(,)?) => {
        $(
            $crate::conformance_tests!(@one $backend; $ignores; $check);
        )*
    };
    (@one $backend:ty; []; $check:ident) => {
        #[test]
        fn $check() {
            $crate::conformance::run::<$backend, _, _>($crate::conformance::$check::<$backend>);
        }
    };
    (@one $backend:ty; [$first:ident : $why:literal $(, $rest:ident : $rwhy:literal)*]; $check:ident) => {
        $crate::__conformance_if_same_ident! { $first $check
            {
                #[test]
                #[ignore = $why]
                fn $check() {
                    $crate::conformance::run::<$backend, _, _>($crate::conformance::$check::<$backend>);
                }
            }
            {
                $crate::conformance_tests!(@one $backend; [$($rest : $rwhy),*]; $check);
            }
        }
    };
}

/// `__if_same_ident!(a b {then} {else})`: `then` if `a` and `b` are the same
/// identifier. (macro_rules cannot compare identifiers directly; a local macro
/// that matches only `a` can.)
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_if_same_ident {
    ($a:ident $b:ident {$($then:tt)*} {$($else:tt)*}) => {
        macro_rules! __conformance_compare {
            ($a) => { $($then)* };
            ($_other:ident) => { $($else)* };
        }
        __conformance_compare!($b);
    };
}

// ---------------------------------------------------------------------------
// Fixtures: ids, records and events, the same for every backend.

const NOW: UnixTime = 1_700_000_000;
const DAY: i64 = 86_400;
const DOMAIN: &str = "conformance.test";
/// ULID timestamps of generated messages start here (milliseconds).
const ULID_EPOCH_MS: u64 = 1_700_000_000_000;
/// Page size of the reader following the index.
const READ_PAGE: u32 = 7;
/// Read everything in one page.
const ALL: u32 = 100_000;

fn owner(n: u32) -> OwnerId {
    format!("0x0a{n:038x}").parse().expect("owner id")
}

fn agent(n: u32) -> AgentId {
    format!("0x0b{n:038x}").parse().expect("agent id")
}

fn key_id(n: u32) -> KeyId {
    format!("key_{n:016}").parse().expect("key id")
}

fn grant_id(n: u32) -> GrantId {
    format!("gr_{n:022}").parse().expect("grant id")
}

fn key_hash(n: u32) -> KeyHash {
    let mut h = [0x5a; 32];
    h[..4].copy_from_slice(&n.to_be_bytes());
    KeyHash(h)
}

fn address(local: &str) -> Address {
    format!("{local}@{DOMAIN}").parse().expect("address")
}

fn domain() -> Domain {
    DOMAIN.parse().expect("domain")
}

fn ulid(n: u64) -> Ulid {
    Ulid::from_parts(ULID_EPOCH_MS + n, u128::from(n))
}

fn event(operation: &str, subject: &str) -> AuditEvent {
    AuditEvent::ok(Actor::Operator, operation, subject)
}

fn owner_record(n: u32) -> OwnerRecord {
    OwnerRecord { id: owner(n), email: None, created_at: NOW }
}

fn agent_record(n: u32, owner_n: u32) -> AgentRecord {
    AgentRecord { id: agent(n), owner: owner(owner_n), name: Some(format!("agent {n}")), created_at: NOW }
}

fn inbox_record(local: &str, owner_n: u32, agent_n: u32) -> InboxRecord {
    InboxRecord {
        address: address(local),
        owner: owner(owner_n),
        agent: agent(agent_n),
        status: InboxStatus::Active,
        created_at: NOW,
        expires_at: None,
    }
}

fn key_record(n: u32, agent_n: u32) -> KeyRecord {
    KeyRecord {
        id: key_id(n),
        agent: agent(agent_n),
        hash: key_hash(n),
        created_at: NOW,
        expires_at: NOW + DAY,
        revoked_at: None,
    }
}

fn grant_record(n: u32, owner_n: u32, agent_n: u32, pattern: &str, scopes: &str) -> Grant {
    Grant {
        id: grant_id(n),
        owner: owner(owner_n),
        agent: agent(agent_n),
        pattern: pattern.parse().expect("pattern"),
        scopes: scopes.parse().expect("scopes"),
        created_at: NOW,
        expires_at: NOW + DAY,
        revoked_at: None,
    }
}

fn domain_keys(version: u32) -> DomainKeyRecord {
    DomainKeyRecord {
        domain: domain(),
        version,
        selector_ed: format!("ed{version}"),
        selector_rsa: format!("rsa{version}"),
        rsa_key_wrapped: vec![1, 2, 3, u8::try_from(version % 256).unwrap_or(0)],
        created_at: NOW,
    }
}

/// Every scope set: `read`, `send`, `admin` and their unions.
const SCOPE_SETS: [&str; 7] = ["read", "send", "admin", "read,send", "read,admin", "send,admin", "read,send,admin"];

fn scopes(i: usize) -> Scopes {
    SCOPE_SETS[i % SCOPE_SETS.len()].parse().expect("scopes")
}

/// An empty store and a second handle on it.
async fn pair<B: Backend>(backend: &B) -> (B::Store, B::Store) {
    let a = backend.fresh().await;
    let b = backend.second_handle(&a).await;
    (a, b)
}

/// The hosted domain, owners 1 and 2 with agents 1 and 2, and inboxes
/// `bot@` (owner 1) and `other@` (owner 2), written half through each handle.
async fn two_owners<S: StoreUnderTest>(a: &S, b: &S) {
    a.ensure_domain(&domain(), NOW).await.unwrap();
    for (n, s) in [(1, a), (2, b)] {
        s.add_owner(&owner_record(n), &event("owner.create", owner(n).as_str())).await.unwrap();
        s.add_agent(&agent_record(n, n), &event("agent.create", agent(n).as_str())).await.unwrap();
    }
    a.create_inbox(&inbox_record("bot", 1, 1), &event("inbox.create", "bot")).await.unwrap();
    b.create_inbox(&inbox_record("other", 2, 2), &event("inbox.create", "other")).await.unwrap();
}

// ---------------------------------------------------------------------------
// Helpers: concurrency, generated inputs, error shapes.

/// Runs `f(store, i)` for every `i` in `on_second` as concurrent tasks, task `i`
/// on the second handle when `on_second[i]`, all released at once; returns the
/// results in task order. A task's panic is re-raised.
async fn on_handles<S, T, F, Fut>(a: &S, b: &S, on_second: &[bool], f: F) -> Vec<T>
where
    S: StoreUnderTest,
    T: Send + 'static,
    F: Fn(S, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(on_second.len()));
    let tasks: Vec<_> = on_second
        .iter()
        .enumerate()
        .map(|(i, second)| {
            let work = f(if *second { b.clone() } else { a.clone() }, i);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(value) => out.push(value),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => panic!("a concurrent task was cancelled: {join}"),
        }
    }
    out
}

/// [`on_handles`] with `tasks` tasks alternating between the two handles.
async fn on_both<S, T, F, Fut>(a: &S, b: &S, tasks: usize, f: F) -> Vec<T>
where
    S: StoreUnderTest,
    T: Send + 'static,
    F: Fn(S, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let on_second: Vec<bool> = (0..tasks).map(|i| i % 2 == 1).collect();
    on_handles(a, b, &on_second, f).await
}

/// Checks `property` over `cases` inputs from `strategy()` with proptest
/// (shrinking included), each case on this runtime; `PROPTEST_CASES` in the
/// environment overrides `cases` for a deeper run. Writes no failure files: the
/// shrunk input is in the panic message.
async fn for_generated<St, F, Fut>(contract: &'static str, cases: u32, strategy: fn() -> St, property: F)
where
    St: Strategy + 'static,
    F: Fn(St::Value) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let handle = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new(config);
        runner
            .run(&strategy(), |input| {
                handle.block_on(property(input));
                Ok(())
            })
            .map_err(|e| e.to_string())
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("contract {contract} broken over generated inputs: {failure}"),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("contract {contract}: the generated cases were cancelled: {join}"),
    }
}

#[track_caller]
fn not_found<T: Debug>(result: Result<T, StoreError>, context: &str) -> String {
    match result {
        Err(StoreError::NotFound { what }) => what,
        other => panic!("{context}: expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn conflict<T: Debug>(result: Result<T, StoreError>, context: &str) -> String {
    match result {
        Err(StoreError::Conflict { what }) => what,
        other => panic!("{context}: expected Conflict, got {other:?}"),
    }
}

#[track_caller]
fn invalid<T: Debug>(result: Result<T, StoreError>, context: &str) -> String {
    match result {
        Err(StoreError::Invalid(text)) => text,
        other => panic!("{context}: expected Invalid, got {other:?}"),
    }
}

/// Both results are `NotFound`, and their texts differ only by the id asked
/// for: another owner's object answers exactly like a missing one.
#[track_caller]
fn same_not_found<T: Debug>(
    foreign: Result<T, StoreError>,
    foreign_id: &str,
    missing: Result<T, StoreError>,
    missing_id: &str,
    context: &str,
) {
    let foreign = not_found(foreign, &format!("{context} (another owner's {foreign_id})"));
    let missing = not_found(missing, &format!("{context} (missing {missing_id})"));
    assert_eq!(
        foreign.replace(foreign_id, "<id>"),
        missing.replace(missing_id, "<id>"),
        "{context}: another owner's object must answer exactly like a missing one"
    );
}

/// Counts the results that are `Ok`, and checks every other one is the error
/// `is_loser` accepts.
#[track_caller]
fn one_winner<T: Debug>(results: &[Result<T, StoreError>], is_loser: fn(&StoreError) -> bool, context: &str) -> usize {
    let winners: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    for r in results {
        if let Err(e) = r {
            assert!(is_loser(e), "{context}: a loser must get the documented error, got {e:?}");
        }
    }
    assert_eq!(winners.len(), 1, "{context}: exactly one of {} contenders wins, got {results:?}", results.len());
    winners[0]
}

fn is_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::NotFound { .. })
}

fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict { .. })
}

/// The whole audit log through `store`, verified as one chain from genesis with
/// contiguous seqs.
async fn verified_log<S: StoreUnderTest>(store: &S, context: &str) -> Vec<AuditRecord> {
    let records = store.audit_all().await.unwrap();
    let mut verifier = Verifier::new();
    for r in &records {
        if let Err(broken) = verifier.push(r) {
            panic!("{context}: the audit chain does not verify: {broken}");
        }
    }
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let contiguous: Vec<u64> = (1..=records.len() as u64).collect();
    assert_eq!(seqs, contiguous, "{context}: audit seqs are 1..=n without gaps");
    let head = store.audit_head().await.unwrap();
    assert_eq!(head, verifier.head(), "{context}: audit_head is the verified head");
    records
}

/// Each receipt names a record of the log (its seq and hash), and no two name
/// the same one.
#[track_caller]
fn receipts_match(receipts: &[AuditReceipt], log: &[AuditRecord], context: &str) {
    let mut seen = HashSet::new();
    for r in receipts {
        let record = usize::try_from(r.seq())
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|i| log.get(i))
            .unwrap_or_else(|| panic!("{context}: receipt seq {} is not in the log", r.seq()));
        assert_eq!(&record.hash, r.hash(), "{context}: receipt {} has the record's hash", r.seq());
        assert!(seen.insert(r.seq()), "{context}: two receipts for record {}", r.seq());
    }
}

// ---------------------------------------------------------------------------
// 1. Index rows become visible in seq order.

/// One writer: which handle, then its batches, each a list of inbox indexes.
type WriterPlan = (bool, Vec<Vec<usize>>);

/// The inboxes the index checks write to: owner 1 has two, owner 2 one.
fn index_inboxes() -> Vec<(OwnerId, Address)> {
    vec![(owner(1), address("bot")), (owner(1), address("bot2")), (owner(2), address("other"))]
}

/// [`two_owners`] and owner 1's second inbox `bot2@`: the inboxes of
/// [`index_inboxes`] exist, as they do when mail arrives.
async fn index_world<S: StoreUnderTest>(a: &S, b: &S) {
    two_owners(a, b).await;
    b.create_inbox(&inbox_record("bot2", 1, 1), &event("inbox.create", "bot2")).await.unwrap();
}

/// Rows per message-feed read in [`index_and_follow`]: smaller than most
/// batches, so reads are cut inside a batch's transaction.
const FEED_READ: u32 = 2;

/// How long a feeder keeps reading after the writers are done (a PostgreSQL
/// feed waits for every transaction of the cluster older than a row's).
const FEED_SETTLE: Duration = Duration::from_secs(30);

/// A webhook feeder: reads the message feed and commits it with no events,
/// counting the rows it won in `fed` (shared with the other feeder), until
/// `total` rows were fed after `done`, or [`FEED_SETTLE`] passed after it.
/// Returns the ids of the reads it won.
async fn follow_feed<S: StoreUnderTest>(store: S, total: usize, fed: Arc<AtomicUsize>, done: Arc<AtomicBool>) -> Vec<Ulid> {
    let mut won = Vec::new();
    let mut settle_until = None;
    loop {
        if done.load(Ordering::SeqCst) {
            let until = *settle_until.get_or_insert_with(|| tokio::time::Instant::now() + FEED_SETTLE);
            if fed.load(Ordering::SeqCst) >= total || tokio::time::Instant::now() >= until {
                return won;
            }
        }
        let feed = store.message_feed(FEED_READ).await.unwrap();
        if feed.messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        if store.commit_message_feed(feed.from, feed.to, &[], 0).await.unwrap() {
            fed.fetch_add(feed.messages.len(), Ordering::SeqCst);
            won.extend(feed.messages.iter().map(|m| Ulid::from_string(&m.id).unwrap()));
        }
    }
}

/// Writers index their batches concurrently through both handles while one
/// reader per inbox follows `messages_since` from the last seq it saw,
/// alternating handles. The reader never sees a seq at or below one it saw, and
/// in the end has seen every row of its inbox exactly once; both handles list
/// the same rows in the same seq order. Meanwhile two webhook feeders, one per
/// handle, follow the message feed: together their winning reads return every
/// row exactly once.
async fn index_and_follow<S: StoreUnderTest>(a: &S, b: &S, writers: Vec<WriterPlan>, context: &str) {
    let inboxes = index_inboxes();
    let mut next_id = 0u64;
    let mut planned: Vec<(bool, Vec<Vec<NewMessage>>)> = Vec::new();
    let mut expected: Vec<BTreeSet<Ulid>> = vec![BTreeSet::new(); inboxes.len()];
    for (second, batches) in writers {
        let mut rows = Vec::new();
        for batch in batches {
            let mut msgs = Vec::new();
            for i in batch {
                let (o, inbox) = &inboxes[i % inboxes.len()];
                next_id += 1;
                let id = ulid(next_id);
                expected[i % inboxes.len()].insert(id);
                msgs.push(NewMessage { owner: o.clone(), inbox: inbox.clone(), id, size: 100 + next_id, summary: Default::default(), facts: Default::default() });
            }
            rows.push(msgs);
        }
        planned.push((second, rows));
    }
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = inboxes
        .iter()
        .cloned()
        .map(|(o, inbox)| {
            let (a, b, done) = (a.clone(), b.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut last = 0i64;
                let mut seen: Vec<(i64, Ulid)> = Vec::new();
                for poll in 0u64.. {
                    let finished = done.load(Ordering::SeqCst);
                    let store = if poll % 2 == 0 { &a } else { &b };
                    let page = store.messages_since(&o, &inbox, last, None, READ_PAGE).await.unwrap();
                    for m in &page {
                        assert!(
                            m.seq > last,
                            "{inbox}: messages_since({last}) returned seq {} at or below the last seq seen",
                            m.seq
                        );
                        assert_eq!((&m.owner, &m.inbox), (&o, &inbox), "messages_since returned another inbox's row");
                        last = m.seq;
                        seen.push((m.seq, m.id));
                    }
                    if page.is_empty() {
                        if finished {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                seen
            })
        })
        .collect();
    // Two webhook feeders, one per handle, follow the whole index meanwhile.
    let total: usize = expected.iter().map(BTreeSet::len).sum();
    let fed = Arc::new(AtomicUsize::new(0));
    let feeders: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|store| tokio::spawn(follow_feed(store, total, Arc::clone(&fed), Arc::clone(&done))))
        .collect();
    let on_second: Vec<bool> = planned.iter().map(|(second, _)| *second).collect();
    let planned = Arc::new(planned);
    let written = on_handles(a, b, &on_second, |store, w| {
        let planned = Arc::clone(&planned);
        async move {
            let mut out = Vec::new();
            for batch in &planned[w].1 {
                let indexed = store.index_messages(batch).await.unwrap();
                assert_eq!(indexed.len(), batch.len(), "index_messages answers one row per input row");
                for (row, input) in indexed.iter().zip(batch) {
                    assert_eq!(row.id, input.id, "index_messages answers in input order");
                }
                out.extend(indexed);
            }
            out
        }
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let seq_of: HashMap<Ulid, i64> = written.iter().flatten().map(|m| (m.id, m.seq)).collect();
    for (reader, ((o, inbox), expected)) in readers.into_iter().zip(inboxes.iter().zip(&expected)) {
        let seen = match reader.await {
            Ok(seen) => seen,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => panic!("reader cancelled: {join}"),
        };
        let ids: Vec<Ulid> = seen.iter().map(|(_, id)| *id).collect();
        let unique: BTreeSet<Ulid> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{context}: {inbox}: a reader saw a row twice");
        let missed: Vec<(Ulid, i64)> =
            expected.difference(&unique).map(|id| (*id, seq_of.get(id).copied().unwrap_or(-1))).collect();
        assert!(
            missed.is_empty(),
            "{context}: {inbox}: rows became visible out of seq order: the reader, following by seq, never saw \
             {missed:?} (id, seq); it saw {} rows up to seq {}",
            seen.len(),
            seen.last().map_or(0, |(s, _)| *s)
        );
        assert_eq!(&unique, expected, "{context}: {inbox}: the reader saw exactly the inbox's rows");
        for store in [a, b] {
            let all = store.messages_since(o, inbox, 0, None, ALL).await.unwrap();
            let listed: Vec<(i64, Ulid)> = all.iter().map(|m| (m.seq, m.id)).collect();
            assert_eq!(listed, seen, "{context}: {inbox}: every handle lists the rows in the order the reader saw");
        }
    }
    // The feed saw every row once, across owners, whichever feeder won.
    let mut fed: Vec<Ulid> = Vec::new();
    for feeder in feeders {
        match feeder.await {
            Ok(rows) => fed.extend(rows),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => panic!("feeder cancelled: {join}"),
        }
    }
    let fed_once: BTreeSet<Ulid> = fed.iter().copied().collect();
    assert_eq!(fed_once.len(), fed.len(), "{context}: the message feed returned a row in two winning reads");
    let all: BTreeSet<Ulid> = expected.iter().flatten().copied().collect();
    let missed: Vec<(Ulid, i64)> =
        all.difference(&fed_once).map(|id| (*id, seq_of.get(id).copied().unwrap_or(-1))).collect();
    assert!(missed.is_empty(), "{context}: the message feed never returned {missed:?} (id, seq)");
    assert_eq!(fed_once, all, "{context}: the message feed returned exactly the indexed rows");
}

/// Contract 1, named case: three writers per handle, twenty batches each,
/// over three inboxes of two owners.
pub async fn index_rows_become_visible_in_seq_order<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    index_world(&a, &b).await;
    let writers: Vec<WriterPlan> = (0..6)
        .map(|w| {
            let batches = (0..20).map(|k| (0..(w + k) % 4 + 1).map(|i| w + k + i).collect()).collect();
            (w % 2 == 1, batches)
        })
        .collect();
    index_and_follow(&a, &b, writers, "index_rows_become_visible_in_seq_order").await;
}

fn writer_plans() -> impl Strategy<Value = Vec<WriterPlan>> {
    let batch = prop::collection::vec(0usize..3, 1..6);
    prop::collection::vec((any::<bool>(), prop::collection::vec(batch, 1..8)), 1..6)
}

/// Contract 1 over generated writers: any number of writers on either handle,
/// any batch sizes and inboxes.
pub async fn index_rows_become_visible_in_seq_order_generated<B: Backend>(backend: Arc<B>) {
    for_generated("index rows become visible in seq order", 12, writer_plans, move |writers| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            index_world(&a, &b).await;
            index_and_follow(&a, &b, writers, "generated writers").await;
        }
    })
    .await;
}

/// `seq` is commit order: a batch's rows get increasing seqs in input order,
/// every later commit gets higher ones, indexing again keeps a row's seq, and
/// both handles answer the same; listing pages by id in both orders; replay by
/// seq, optionally past an id; unindex removes.
pub async fn index_seq_follows_commit_order_and_indexing_is_idempotent<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    index_world(&a, &b).await;
    let (o, bot) = (owner(1), address("bot"));
    let row = |n: u64| NewMessage { owner: o.clone(), inbox: bot.clone(), id: ulid(n), size: n, summary: Default::default(), facts: Default::default() };
    // Committed newest id first.
    let first: Vec<NewMessage> = (1..=5).rev().map(row).collect();
    let indexed = a.index_messages(&first).await.unwrap();
    let seqs: Vec<i64> = indexed.iter().map(|m| m.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a batch's seqs increase in input order: {seqs:?}");
    for (m, input) in indexed.iter().zip(&first) {
        assert_eq!((&m.owner, &m.inbox, m.id, m.size), (&input.owner, &input.inbox, input.id, input.size));
        assert_eq!(m.received_at, input.received_at(), "received_at is the id's time");
    }
    // Idempotent, from the other handle too; a mixed batch keeps the old seq.
    assert_eq!(b.index_messages(&first[1..3]).await.unwrap(), indexed[1..3].to_vec());
    let mixed = b.index_messages(&[row(3), row(6)]).await.unwrap();
    assert_eq!(mixed[0], indexed[2], "an indexed row keeps its seq");
    assert!(mixed[1].seq > seqs[4], "a later commit's seq is higher than every earlier one: {mixed:?}");
    for (store, name) in [(&a, "first"), (&b, "second")] {
        for m in indexed.iter().chain(&mixed[1..]) {
            assert_eq!(store.indexed_message(&o, &bot, m.id).await.unwrap().map(|m| m.seq), Some(m.seq), "{name} handle: message_seq");
        }
        assert_eq!(store.indexed_message(&o, &bot, ulid(99)).await.unwrap().map(|m| m.seq), None);
        let ids: HashSet<Ulid> = (1..=6).map(ulid).collect();
        assert_eq!(store.indexed_ids(&o, &bot).await.unwrap(), ids, "{name} handle: indexed_ids");
    }
    // Replay after a seq, in seq order; with an id, only ids past it.
    let since: Vec<Ulid> = a.messages_since(&o, &bot, seqs[1], None, ALL).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(since, vec![ulid(3), ulid(2), ulid(1), ulid(6)]);
    let past_id: Vec<Ulid> =
        b.messages_since(&o, &bot, 0, Some(ulid(4)), ALL).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(past_id, vec![ulid(5), ulid(6)]);
    let limited = a.messages_since(&o, &bot, 0, None, 2).await.unwrap();
    assert_eq!(limited.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ulid(5), ulid(4)], "limit");
    // Pages by id.
    let page = |order, after, before, limit| PageQuery { order, after, before, limit };
    let list = async |q: PageQuery| -> Vec<Ulid> {
        b.list_messages(&o, &bot, &q).await.unwrap().iter().map(|m| m.id).collect()
    };
    assert_eq!(list(page(ListOrder::NewestFirst, None, None, 3)).await, vec![ulid(6), ulid(5), ulid(4)]);
    assert_eq!(list(page(ListOrder::NewestFirst, None, Some(ulid(4)), 2)).await, vec![ulid(3), ulid(2)]);
    assert_eq!(
        list(page(ListOrder::OldestFirst, Some(ulid(2)), Some(ulid(6)), ALL)).await,
        vec![ulid(3), ulid(4), ulid(5)]
    );
    // Unindex counts what existed; the rest keeps its seq.
    assert_eq!(a.unindex(&o, &bot, &[ulid(1), ulid(77)]).await.unwrap(), 1);
    assert_eq!(b.indexed_message(&o, &bot, ulid(1)).await.unwrap().map(|m| m.seq), None);
    assert_eq!(b.indexed_message(&o, &bot, ulid(2)).await.unwrap().map(|m| m.seq), Some(seqs[3]));
    // Several processes indexing overlapping batches at once (a reconcile in
    // each): every answer for a row carries the same seq, and the row is there
    // once.
    let batches: Arc<Vec<Vec<NewMessage>>> = Arc::new((0..6).map(|t| (10 + t..16 + t).map(row).collect()).collect());
    let answers = on_both(&a, &b, 6, |s, t| {
        let batches = Arc::clone(&batches);
        async move { s.index_messages(&batches[t]).await.unwrap() }
    })
    .await;
    let mut seq_of: HashMap<Ulid, i64> = HashMap::new();
    for m in answers.iter().flatten() {
        let first = *seq_of.entry(m.id).or_insert(m.seq);
        assert_eq!(first, m.seq, "two answers for row {} disagree on its seq", m.id);
    }
    let all = b.messages_since(&o, &bot, 0, None, ALL).await.unwrap();
    for (id, seq) in &seq_of {
        let stored: Vec<i64> = all.iter().filter(|m| m.id == *id).map(|m| m.seq).collect();
        assert_eq!(stored, vec![*seq], "row {id} is indexed once, with the seq every answer gave");
    }
}

// ---------------------------------------------------------------------------
// 2. No (message, recipient) is claimed by two runners.

/// A queued message: recipients, and when it is due relative to `NOW`.
type QueuedPlan = (u8, i64);

fn outbound(n: usize, recipients: u8, due: i64) -> NewOutbound {
    NewOutbound {
        message_id: format!("01CONF{n:06}"),
        sender: address("bot"),
        owner: owner(1),
        recipients: (0..recipients).map(|r| format!("r{r}@remote.test")).collect(),
        size: 1000,
        queued_at: NOW + due,
    }
}

/// The arguments of the runners' `claim_due` calls.
#[derive(Debug, Clone, Copy)]
struct ClaimRound {
    now: UnixTime,
    limit: u32,
    lease_until: UnixTime,
}

/// Queues `plan` through both handles, then lets `runners` tasks (on the
/// handles given) claim with `limit` until nothing is due at `now`. Every due row
/// is claimed exactly once, in state `sending`; no row that is not due is.
/// Returns the claims.
async fn claim_all<S: StoreUnderTest>(
    a: &S,
    b: &S,
    plan: &[QueuedPlan],
    runners: &[bool],
    round: ClaimRound,
    context: &str,
) -> Vec<crate::Claim> {
    let ClaimRound { now, limit, lease_until } = round;
    for (n, (recipients, due)) in plan.iter().enumerate() {
        let store = if n % 2 == 0 { a } else { b };
        store.enqueue_outbound(&outbound(n, *recipients, *due)).await.unwrap();
    }
    let due: BTreeSet<(String, String)> = plan
        .iter()
        .enumerate()
        .filter(|(_, (_, due))| NOW + due <= now)
        .flat_map(|(n, (recipients, due))| {
            let m = outbound(n, *recipients, *due);
            m.recipients.into_iter().map(move |r| (m.message_id.clone(), r))
        })
        .collect();
    let claimed = on_handles(a, b, runners, |store, _| async move {
        let mut mine = Vec::new();
        // Bounded: each round claims at least one row or ends.
        loop {
            let got = store.claim_due(now, limit, lease_until).await.unwrap();
            assert!(got.len() <= limit as usize, "claim_due returned more than its limit");
            if got.is_empty() {
                return mine;
            }
            mine.extend(got);
        }
    })
    .await;
    let claims: Vec<crate::Claim> = claimed.into_iter().flatten().collect();
    let mut seen = BTreeSet::new();
    for c in &claims {
        let row = (c.entry.message_id.clone(), c.entry.recipient.clone());
        assert!(seen.insert(row.clone()), "{context}: {row:?} was claimed by two runners");
        assert_eq!(c.entry.state, "sending", "{context}: a claimed row is sending");
        assert!(!c.lease.is_empty(), "{context}: a claim carries a lease token");
    }
    assert_eq!(seen, due, "{context}: every due row is claimed, and only those");
    claims
}

/// Contract 2, named case: twelve messages of three recipients, four not yet
/// due, claimed two at a time by three runners on each handle.
pub async fn claims_are_exclusive_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let plan: Vec<QueuedPlan> = (0..12).map(|n| (3, if n % 3 == 0 { 60 } else { -(n as i64) })).collect();
    let runners = [false, true, false, true, false, true];
    let claims =
        claim_all(&a, &b, &plan, &runners, ClaimRound { now: NOW, limit: 2, lease_until: NOW + 600 }, "named queue")
            .await;
    assert_eq!(claims.len(), 8 * 3);
    // Nothing more is due, from either handle, until the later rows' time.
    assert!(a.claim_due(NOW + 59, 100, NOW + 900).await.unwrap().is_empty(), "leased rows are not claimed");
    assert!(b.claim_due(NOW + 59, 100, NOW + 900).await.unwrap().is_empty(), "leased rows are not claimed");
    // The rows that were not due are due at their time, once.
    let later = on_both(&a, &b, 4, |s, _| async move { s.claim_due(NOW + 60, 100, NOW + 900).await.unwrap() }).await;
    let later: Vec<_> = later.into_iter().flatten().collect();
    assert_eq!(later.len(), 4 * 3, "the four later messages, each row once");
}

fn queue_plans() -> impl Strategy<Value = (Vec<QueuedPlan>, Vec<bool>, u32)> {
    (prop::collection::vec((1u8..5, -5i64..5), 1..10), prop::collection::vec(any::<bool>(), 2..8), 1u32..6)
}

/// Contract 2 over generated queues, runners and limits; then every lease
/// expires and the rows are claimed again, once each, and the first claims can
/// record nothing.
pub async fn claims_are_exclusive_generated<B: Backend>(backend: Arc<B>) {
    for_generated("claims are exclusive", 16, queue_plans, move |(plan, runners, limit)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            two_owners(&a, &b).await;
            let first = claim_all(
                &a,
                &b,
                &plan,
                &runners,
                ClaimRound { now: NOW, limit, lease_until: NOW + 100 },
                "generated queue",
            )
            .await;
            let again =
                on_handles(
                    &a,
                    &b,
                    &runners,
                    |s, _| async move { s.claim_due(NOW + 100, 1_000, NOW + 200).await.unwrap() },
                )
                .await;
            let again: Vec<crate::Claim> = again.into_iter().flatten().collect();
            let rows = |c: &[crate::Claim]| -> BTreeSet<(String, String)> {
                c.iter().map(|c| (c.entry.message_id.clone(), c.entry.recipient.clone())).collect()
            };
            assert_eq!(again.len(), rows(&again).len(), "a re-claimed row went to two runners");
            let due_now: BTreeSet<(String, String)> = plan
                .iter()
                .enumerate()
                .flat_map(|(n, (r, due))| {
                    let m = outbound(n, *r, *due);
                    m.recipients.into_iter().map(move |r| (m.message_id.clone(), r))
                })
                .collect();
            assert_eq!(rows(&again), due_now, "at NOW + 100 every row is due or past its lease");
            for old in first.iter().take(3) {
                let lost = a.record_attempt(old, crate::AttemptOutcome::Delivered, 0, Some("250"), NOW + 101).await;
                conflict(lost, "recording under an expired, re-claimed lease");
            }
        }
    })
    .await;
}

/// A lease that expires hands the row out again (to exactly one of several
/// runners), the old lease records nothing and renews nothing, the new one
/// records; deferred rows come back when due, finished ones never.
pub async fn an_expired_lease_hands_the_row_out_again<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    a.enqueue_outbound(&outbound(1, 2, 0)).await.unwrap();
    let first = a.claim_due(NOW, 1, NOW + 10).await.unwrap();
    assert_eq!(first.len(), 1, "limit 1");
    let second = b.claim_due(NOW + 5, 10, NOW + 10).await.unwrap();
    assert_eq!(second.len(), 1, "the other recipient only");
    assert_ne!(first[0].entry.recipient, second[0].entry.recipient);
    assert!(b.claim_due(NOW + 9, 10, NOW + 20).await.unwrap().is_empty(), "both leased");
    assert_eq!(b.renew_lease(&second[0].lease, NOW + 30).await.unwrap(), 1, "a running attempt renews its lease");
    // At the first lease's end, several runners on both handles: one gets it.
    let raced = on_both(&a, &b, 6, |s, _| async move { s.claim_due(NOW + 10, 10, NOW + 40).await.unwrap() }).await;
    let raced: Vec<crate::Claim> = raced.into_iter().flatten().collect();
    assert_eq!(raced.len(), 1, "the expired row goes to exactly one runner, the renewed one to none: {raced:?}");
    let again = &raced[0];
    assert_eq!(again.entry.recipient, first[0].entry.recipient);
    assert_ne!(again.lease, first[0].lease, "a new claim has a new lease");
    // The old lease is lost: nothing is recorded under it.
    let lost = a.record_attempt(&first[0], crate::AttemptOutcome::Delivered, 0, Some("250 ok"), NOW + 11).await;
    conflict(lost, "recording under a lost lease");
    assert_eq!(a.renew_lease(&first[0].lease, NOW + 99).await.unwrap(), 0, "a lost lease renews nothing");
    let detail = b.queue_show(&first[0].entry.message_id).await.unwrap();
    assert!(detail.attempts.is_empty(), "nothing recorded under the lost lease: {detail:?}");
    // The new lease records; a deferred row comes back when due, once.
    let left = b.record_attempt(again, crate::AttemptOutcome::Deferred, NOW + 50, Some("451 later"), NOW + 12).await;
    assert_eq!(left.unwrap(), 2, "both rows still unfinished");
    let left = a.record_attempt(&second[0], crate::AttemptOutcome::Delivered, 0, Some("250 ok"), NOW + 13).await;
    assert_eq!(left.unwrap(), 1);
    assert!(a.claim_due(NOW + 49, 10, NOW + 100).await.unwrap().is_empty(), "deferred until its time");
    let back = on_both(&a, &b, 4, |s, _| async move { s.claim_due(NOW + 50, 10, NOW + 100).await.unwrap() }).await;
    let back: Vec<crate::Claim> = back.into_iter().flatten().collect();
    assert_eq!(back.len(), 1, "the deferred row, once: {back:?}");
    assert_eq!(back[0].entry.attempts, 1);
    assert_eq!(b.record_attempt(&back[0], crate::AttemptOutcome::Bounced, 0, Some("550"), NOW + 51).await.unwrap(), 0);
    assert!(a.claim_due(NOW + 10_000, 10, NOW + 20_000).await.unwrap().is_empty(), "finished rows stay finished");
    assert_eq!(a.unfinished(&first[0].entry.message_id).await.unwrap(), 0);
    let detail = a.queue_show(&first[0].entry.message_id).await.unwrap();
    assert_eq!(detail.attempts.len(), 3, "one history entry per recorded attempt");
    // A batch: a lost lease fails alone.
    b.enqueue_outbound(&outbound(2, 2, 0)).await.unwrap();
    let old = a.claim_due(NOW, 10, NOW + 10).await.unwrap();
    assert_eq!(old.len(), 2);
    let new = b.claim_due(NOW + 10, 1, NOW + 100).await.unwrap();
    assert_eq!(new.len(), 1);
    let (lost, kept) =
        if old[0].entry.recipient == new[0].entry.recipient { (&old[0], &old[1]) } else { (&old[1], &old[0]) };
    let item = |claim: &crate::Claim| crate::AttemptToRecord {
        claim: claim.clone(),
        outcome: crate::AttemptOutcome::Delivered,
        next_attempt_at: 0,
        response: Some("250 ok".to_owned()),
        now: NOW + 11,
    };
    let results = a.record_attempts(&[item(lost), item(kept)]).await.unwrap();
    assert_eq!(results.len(), 2);
    conflict(clone_u64(&results[0]), "a lost lease in a batch");
    assert_eq!(clone_u64(&results[1]).unwrap(), 1, "the other row is recorded; the re-claimed one is unfinished");
    let detail = b.queue_show(&outbound(2, 2, 0).message_id).await.unwrap();
    assert_eq!(detail.attempts.len(), 1, "only the kept lease's attempt: {detail:?}");
    // Delete keeps the row being sent; retry touches only waiting rows.
    assert_eq!(a.queue_retry(&outbound(2, 2, 0).message_id, NOW + 12).await.unwrap(), 0, "nothing is waiting");
    assert_eq!(b.queue_delete(&outbound(2, 2, 0).message_id).await.unwrap(), (1, 1), "the sending row stays");
}

fn clone_u64(r: &Result<u64, StoreError>) -> Result<u64, StoreError> {
    r.as_ref().map(|n| *n).map_err(clone_error)
}

// ---------------------------------------------------------------------------
// 3. One audit hash chain across processes.

/// What one writer does: 0 `audit_append` (outcome denied), 1 `add_agent`,
/// 2 `create_key`, 3 `add_grant`, 4 `set_inbox_status` — each one record.
type AuditOp = u8;

/// Runs `ops` concurrently (task `i` on the second handle when `on_second[i]`)
/// after a setup of owner 1, agent 1 and inbox `bot@`; every write succeeds and
/// its receipt names its record. The log, read through either handle, is one
/// verified chain with exactly one record per write.
async fn audited_race<S: StoreUnderTest>(a: &S, b: &S, ops: &[AuditOp], on_second: &[bool], context: &str) {
    a.ensure_domain(&domain(), NOW).await.unwrap();
    a.add_owner(&owner_record(1), &event("owner.create", "o1")).await.unwrap();
    b.add_agent(&agent_record(1, 1), &event("agent.create", "a1")).await.unwrap();
    a.create_inbox(&inbox_record("bot", 1, 1), &event("inbox.create", "bot")).await.unwrap();
    let setup = 3;
    let ops = Arc::new(ops.to_vec());
    let receipts = on_handles(a, b, on_second, |s, i| {
        let ops = Arc::clone(&ops);
        async move {
            let n = 100 + u32::try_from(i).unwrap();
            let subject = format!("task-{i}");
            match ops[i] % 5 {
                0 => {
                    let denied = AuditEvent::ok(Actor::System, "conf.append", subject.as_str())
                        .with_outcome(Outcome::Denied)
                        .with_detail(serde_json::json!({ "task": i }));
                    s.audit_append(&denied).await
                }
                1 => s.add_agent(&agent_record(n, 1), &event("agent.create", &subject)).await,
                2 => s.create_key(&key_record(n, 1), &event("key.create", &subject)).await,
                3 => {
                    let g = grant_record(n, 1, 1, "bot@conformance.test", "read");
                    s.add_grant(&g, &event("grant.create", &subject)).await
                }
                _ => {
                    let status = if i % 2 == 0 { InboxStatus::Suspended } else { InboxStatus::Active };
                    s.set_inbox_status(&address("bot"), status, &event("inbox.set_status", &subject)).await
                }
            }
            .unwrap_or_else(|e| panic!("{subject}: a write failed under concurrency: {e}"))
        }
    })
    .await;
    let log = verified_log(a, context).await;
    assert_eq!(log, verified_log(b, context).await, "{context}: both handles read the same log");
    assert_eq!(log.len(), setup + ops.len(), "{context}: exactly one record per write");
    receipts_match(&receipts, &log, context);
    // Each task's record carries its subject.
    for (i, r) in receipts.iter().enumerate() {
        let record = &log[usize::try_from(r.seq()).unwrap() - 1];
        assert_eq!(record.subject, format!("task-{i}"), "{context}: receipt {i} names its own record");
    }
    // Paging through audit_list gives the same log.
    let mut paged = Vec::new();
    loop {
        let after = paged.last().map_or(0, |r: &AuditRecord| r.seq);
        let page = b.audit_list(after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, log, "{context}: audit_list pages the log");
}

/// Contract 3, named case: 24 concurrent writes of every kind, half through
/// each handle.
pub async fn one_audit_chain_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let ops: Vec<AuditOp> = (0..24).map(|i| (i % 5) as u8).collect();
    let on_second: Vec<bool> = (0..24).map(|i| i % 2 == 1).collect();
    audited_race(&a, &b, &ops, &on_second, "one_audit_chain_across_handles").await;
}

fn audit_races() -> impl Strategy<Value = Vec<(AuditOp, bool)>> {
    prop::collection::vec((0u8..5, any::<bool>()), 1..24)
}

/// Contract 3 over generated mixes of appends and audited writes on either handle.
pub async fn one_audit_chain_generated<B: Backend>(backend: Arc<B>) {
    for_generated("one audit chain", 12, audit_races, move |mix| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let (ops, on_second): (Vec<AuditOp>, Vec<bool>) = mix.into_iter().unzip();
            audited_race(&a, &b, &ops, &on_second, "generated audit writes").await;
        }
    })
    .await;
}

/// Generated JSON values for audit details: every kind the canonical form
/// allows (integers at the edges of i64/u64, strings with quotes, escapes,
/// control characters, NUL and non-ASCII), nested.
pub fn detail_values() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        prop::collection::vec(any::<char>(), 0..8).prop_map(|c| Value::String(c.into_iter().collect())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("\\PC{0,6}|[\\x00-\\x1f\"\\\\]{1,2}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Generated audit events within the chain's limits: every actor kind, operations
/// of the allowed alphabet, subjects of any printable text, every outcome,
/// details of every JSON shape (also used by `tests/postgres.rs`).
pub fn audit_events() -> impl Strategy<Value = AuditEvent> {
    let actor = prop_oneof![
        Just(Actor::Operator),
        Just(Actor::System),
        (1u32..1000).prop_map(|n| Actor::Owner(owner(n))),
        (1u32..1000).prop_map(|n| Actor::Agent(agent(n))),
    ];
    let outcome = prop_oneof![Just(Outcome::Ok), Just(Outcome::Denied), Just(Outcome::Failed)];
    (actor, "[a-z0-9._-]{1,24}", "\\PC{0,40}", outcome, detail_values()).prop_map(
        |(actor, operation, subject, outcome, detail)| {
            AuditEvent::ok(actor, &operation, subject).with_outcome(outcome).with_detail(serde_json::json!({ "v": detail }))
        },
    )
}

/// Contract 3 over generated record contents: events of every shape appended
/// concurrently through both handles are stored as one chain that
/// [`Verifier`] (the audit crate, recomputing every hash) accepts, each record
/// is the event appended, and each receipt names its record. A backend that
/// seals records itself (PostgreSQL seals them in SQL) is held to the audit
/// crate's hash this way.
pub async fn audit_records_of_generated_events_verify<B: Backend>(backend: Arc<B>) {
    let cases = || prop::collection::vec((audit_events(), any::<bool>()), 1..16);
    for_generated("audit records of generated events verify", 16, cases, move |mix| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let (events, on_second): (Vec<AuditEvent>, Vec<bool>) = mix.into_iter().unzip();
            let events = Arc::new(events);
            let receipts = on_handles(&a, &b, &on_second, |s, i| {
                let events = Arc::clone(&events);
                async move { s.audit_append(&events[i]).await.unwrap_or_else(|e| panic!("event {i}: {e}")) }
            })
            .await;
            let context = "generated audit events";
            let log = verified_log(&b, context).await;
            assert_eq!(log.len(), events.len(), "{context}: one record per append");
            receipts_match(&receipts, &log, context);
            for (i, r) in receipts.iter().enumerate() {
                let record = &log[usize::try_from(r.seq()).unwrap() - 1];
                assert_eq!(record.event(), events[i], "{context}: record {} is event {i} as appended", r.seq());
            }
        }
    })
    .await;
}

fn checkpoint(cp: &ChainedCheckpoint, tag: u8) -> CheckpointRecord {
    CheckpointRecord::chained(cp, vec![tag; 64])
}

/// Checkpoints: none at first (and no start); the first must be counter 1 from
/// the genesis link; each next one must extend the last (counter + 1, its hash,
/// a later seq) or is refused with `false`; a stored one is seen through the
/// other handle, with the chain's start; of several processes storing the same
/// next checkpoint, one does.
pub async fn checkpoints_extend_their_chain_and_are_never_silently_empty<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    for s in [&a, &b] {
        assert!(s.list_checkpoints().await.unwrap().is_empty());
        assert_eq!(s.checkpoint_start().await.unwrap(), None);
        assert_eq!(s.last_checkpoint().await.unwrap(), None);
    }
    let mut heads = Vec::new();
    for i in 0..6 {
        let e = AuditEvent::ok(Actor::System, "conf.append", format!("r{i}"));
        heads.push(a.audit_append(&e).await.unwrap());
    }
    let head = |i: usize| ChainHead { seq: heads[i].seq(), hash: *heads[i].hash() };
    // Not a start: counter 2, or a non-genesis link.
    let one = ChainedCheckpoint::first(head(1), NOW);
    let not_first = ChainedCheckpoint { counter: 2, ..one };
    assert!(!a.add_checkpoint(&checkpoint(&not_first, 1)).await.unwrap(), "a chain starts at counter 1");
    let bad_link = ChainedCheckpoint { prev: [9; 32], ..one };
    assert!(!a.add_checkpoint(&checkpoint(&bad_link, 1)).await.unwrap(), "checkpoint 1 links to genesis");
    assert!(b.list_checkpoints().await.unwrap().is_empty(), "refused checkpoints are not stored");
    // The first, raced by both handles: one stores it.
    let stored = on_both(&a, &b, 6, |s, i| async move {
        let cp = ChainedCheckpoint { ts: NOW + i64::try_from(i).unwrap(), ..one };
        (s.add_checkpoint(&checkpoint(&cp, 1)).await.unwrap(), cp)
    })
    .await;
    let winners: Vec<&ChainedCheckpoint> = stored.iter().filter(|(won, _)| *won).map(|(_, cp)| cp).collect();
    assert_eq!(winners.len(), 1, "exactly one process stores checkpoint 1: {stored:?}");
    let one = *winners[0];
    for s in [&a, &b] {
        assert_eq!(s.list_checkpoints().await.unwrap(), vec![checkpoint(&one, 1)], "no silent default");
        assert_eq!(s.checkpoint_start().await.unwrap(), Some(checkpoint(&one, 1)), "the start is recorded");
        assert_eq!(s.last_checkpoint().await.unwrap(), Some(checkpoint(&one, 1)));
    }
    // The next must extend it: counter + 1, its hash, a later seq.
    let two = one.next(head(3), NOW + 10).unwrap();
    let skip = ChainedCheckpoint { counter: 3, ..two };
    assert!(!b.add_checkpoint(&checkpoint(&skip, 2)).await.unwrap(), "a counter cannot be skipped");
    let wrong_prev = ChainedCheckpoint { prev: [7; 32], ..two };
    assert!(!b.add_checkpoint(&checkpoint(&wrong_prev, 2)).await.unwrap(), "the link must be the last's hash");
    let not_later = one.next(head(1), NOW + 10).unwrap();
    assert!(!b.add_checkpoint(&checkpoint(&not_later, 2)).await.unwrap(), "the head must be past the last's");
    let stored = on_both(&a, &b, 4, |s, _| async move { s.add_checkpoint(&checkpoint(&two, 2)).await.unwrap() }).await;
    assert_eq!(stored.iter().filter(|w| **w).count(), 1, "exactly one process stores checkpoint 2: {stored:?}");
    let three = two.next(head(5), NOW + 20).unwrap();
    assert!(a.add_checkpoint(&checkpoint(&three, 3)).await.unwrap());
    for s in [&a, &b] {
        let listed = s.list_checkpoints().await.unwrap();
        assert_eq!(listed, vec![checkpoint(&one, 1), checkpoint(&two, 2), checkpoint(&three, 3)], "by seq");
        assert_eq!(s.last_checkpoint().await.unwrap(), Some(checkpoint(&three, 3)));
        assert_eq!(s.checkpoint_start().await.unwrap(), Some(checkpoint(&one, 1)), "the start stays the first");
        // Every stored checkpoint vouches for a record that is in the log.
        let log = verified_log(s, "checkpoints").await;
        for cp in &listed {
            let r = &log[usize::try_from(cp.seq).unwrap() - 1];
            assert_eq!(r.hash, cp.hash, "checkpoint {} vouches for the record's hash", cp.seq);
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Grant changes are compare-and-set, narrowing only.

/// Owner 1's grant 1 on `bot@` with all scopes, owner 2's grant 2.
async fn grant_world<S: StoreUnderTest>(a: &S, b: &S, scopes: &str) -> Grant {
    two_owners(a, b).await;
    let g = grant_record(1, 1, 1, "bot@conformance.test", scopes);
    a.add_grant(&g, &event("grant.create", g.id.as_str())).await.unwrap();
    let other = grant_record(2, 2, 2, "other@conformance.test", "read");
    b.add_grant(&other, &event("grant.create", other.id.as_str())).await.unwrap();
    g
}

async fn owner_grant<S: StoreUnderTest>(s: &S, owner_n: u32, id: &GrantId) -> Option<Grant> {
    s.list_owner_grants(&owner(owner_n)).await.unwrap().into_iter().find(|g| &g.id == id)
}

/// Contract 4, named cases: of concurrent changes from the same `before`, on
/// both handles, exactly one wins and the others get `Conflict`; a stale
/// `before` is `Conflict`; widening, or changing the id, agent or pattern, is
/// `Invalid`; another owner's grant is `NotFound` like a missing one; a
/// revoked grant does not change. Only the winning change is audited.
pub async fn grant_changes_are_compare_and_set<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let g = grant_world(&a, &b, "read,send,admin").await;
    let head = a.audit_head().await.unwrap();
    let before = Arc::new(g.clone());
    let results = on_both(&a, &b, 8, |s, i| {
        let before = Arc::clone(&before);
        async move {
            let after =
                Grant { scopes: scopes(i % 6), expires_at: NOW + 100 + i64::try_from(i).unwrap(), ..(*before).clone() };
            let r = s.change_owner_grant(&owner(1), &before, &after, &event("grant.change", "g1")).await;
            (r, after)
        }
    })
    .await;
    let outcomes: Vec<Result<AuditReceipt, StoreError>> = results.iter().map(|(r, _)| clone_result(r)).collect();
    let won = one_winner(&outcomes, is_conflict, "concurrent changes of one grant");
    let winner = results[won].1.clone();
    for s in [&a, &b] {
        assert_eq!(owner_grant(s, 1, &g.id).await, Some(winner.clone()), "the winner's change is stored");
    }
    assert_eq!(a.audit_head().await.unwrap().seq, head.seq + 1, "only the winning change is audited");
    // A stale before: Conflict, nothing changes.
    let stale = Grant { scopes: scopes(0), ..g.clone() };
    conflict(a.change_owner_grant(&owner(1), &g, &stale, &event("grant.change", "g1")).await, "stale before");
    // Widening from the stored scopes: Invalid.
    if winner.scopes != scopes(6) {
        let wider = Grant { scopes: scopes(6), ..winner.clone() };
        invalid(b.change_owner_grant(&owner(1), &winner, &wider, &event("grant.change", "g1")).await, "widening");
    }
    // Another id, agent or pattern: Invalid. (`narrow` alone would be a valid
    // change: the same scopes, another expiry.)
    let narrow = Grant { expires_at: winner.expires_at + 1, ..winner.clone() };
    for (changed, what) in [
        (Grant { id: grant_id(9), ..narrow.clone() }, "id"),
        (Grant { agent: agent(2), ..narrow.clone() }, "agent"),
        (Grant { pattern: "bot-*".parse().unwrap(), ..narrow.clone() }, "pattern"),
    ] {
        invalid(a.change_owner_grant(&owner(1), &winner, &changed, &event("grant.change", "g1")).await, what);
    }
    // Owner 2 naming owner 1's grant, as if it were theirs: NotFound like a missing id.
    let as_theirs = Grant { owner: owner(2), ..winner.clone() };
    let narrowed = Grant { owner: owner(2), ..narrow.clone() };
    let missing = Grant { id: grant_id(77), ..as_theirs.clone() };
    let missing_after = Grant { id: grant_id(77), ..narrowed.clone() };
    same_not_found(
        b.change_owner_grant(&owner(2), &as_theirs, &narrowed, &event("grant.change", "g1")).await,
        g.id.as_str(),
        b.change_owner_grant(&owner(2), &missing, &missing_after, &event("grant.change", "g77")).await,
        grant_id(77).as_str(),
        "change_owner_grant of another owner's grant",
    );
    // A revoked grant: Conflict (it changed), nothing else.
    a.revoke_owner_grant(&owner(1), &g.id, NOW + 1, &event("grant.revoke", "g1")).await.unwrap();
    let revoked = owner_grant(&b, 1, &g.id).await.unwrap();
    conflict(a.change_owner_grant(&owner(1), &winner, &narrow, &event("grant.change", "g1")).await, "revoked");
    assert_eq!(owner_grant(&a, 1, &g.id).await, Some(revoked), "refused changes change nothing");
    assert_eq!(a.audit_head().await.unwrap().seq, head.seq + 2, "refused changes are not audited");
}

fn clone_result(r: &Result<AuditReceipt, StoreError>) -> Result<AuditReceipt, StoreError> {
    match r {
        Ok(r) => Ok(r.clone()),
        Err(e) => Err(clone_error(e)),
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound { what } => StoreError::NotFound { what: what.clone() },
        StoreError::Conflict { what } => StoreError::Conflict { what: what.clone() },
        StoreError::Invalid(t) => StoreError::Invalid(t.clone()),
        StoreError::Backend(t) => StoreError::Backend(t.clone()),
        StoreError::AuditUnreadable { seq, reason } => {
            StoreError::AuditUnreadable { seq: *seq, reason: reason.clone() }
        }
    }
}

fn grant_changes() -> impl Strategy<Value = (usize, Vec<(usize, bool)>)> {
    (0usize..7, prop::collection::vec((0usize..7, any::<bool>()), 1..6))
}

/// Contract 4 over every pair of scope sets and generated contenders: a change
/// to a subset of the stored scopes is compare-and-set (one contender wins,
/// the rest `Conflict`); to anything else it is `Invalid` and nothing changes.
pub async fn grant_changes_only_narrow_generated<B: Backend>(backend: Arc<B>) {
    for_generated("grant changes only narrow", 24, grant_changes, move |(from, contenders)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let g = grant_world(&a, &b, SCOPE_SETS[from]).await;
            let on_second: Vec<bool> = contenders.iter().map(|(_, s)| *s).collect();
            let wanted: Arc<Vec<usize>> = Arc::new(contenders.iter().map(|(to, _)| *to).collect());
            let before = Arc::new(g.clone());
            let results = on_handles(&a, &b, &on_second, |s, i| {
                let (before, wanted) = (Arc::clone(&before), Arc::clone(&wanted));
                async move {
                    // A new expiry each: no contender's change is the identity,
                    // which would rightly succeed after any other.
                    let expires_at = NOW + 1_000 + i64::try_from(i).unwrap();
                    let after = Grant { scopes: scopes(wanted[i]), expires_at, ..(*before).clone() };
                    s.change_owner_grant(&owner(1), &before, &after, &event("grant.change", "g")).await
                }
            })
            .await;
            let narrowing: Vec<bool> = wanted.iter().map(|to| scopes(*to).is_subset_of(g.scopes)).collect();
            for (r, narrows) in results.iter().zip(&narrowing) {
                if !narrows {
                    assert!(matches!(r, Err(StoreError::Invalid(_))), "widening {} → must be Invalid: {r:?}", g.scopes);
                }
            }
            let valid: Vec<Result<AuditReceipt, StoreError>> =
                results.iter().zip(&narrowing).filter(|(_, n)| **n).map(|(r, _)| clone_result(r)).collect();
            let stored = owner_grant(&a, 1, &g.id).await.unwrap();
            if valid.is_empty() {
                assert_eq!(stored, g, "only refused changes: nothing changed");
            } else {
                one_winner(&valid, is_conflict, "concurrent narrowing changes");
                assert!(stored.scopes.is_subset_of(g.scopes), "the stored scopes are a narrowing");
            }
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. One owner never sees another's rows.

/// A generated world: per owner, per agent: (messages per inbox, keys, grant
/// pattern kinds); then audit appends (actor, subject kind and index, detail
/// owner, detail agent).
#[derive(Debug, Clone)]
struct WorldPlan {
    owners: Vec<Vec<AgentPlan>>,
    appends: Vec<AppendPlan>,
}

#[derive(Debug, Clone)]
struct AgentPlan {
    inboxes: Vec<u8>,
    keys: u8,
    grants: Vec<u8>,
}

#[derive(Debug, Clone)]
struct AppendPlan {
    actor: usize,
    subject: (u8, usize),
    detail_owner: Option<usize>,
    detail_agent: Option<usize>,
}

/// What a world holds, by owner index.
#[derive(Debug, Default)]
struct Built {
    owners: Vec<OwnerId>,
    agents: Vec<(AgentId, usize)>,
    inboxes: Vec<(Address, usize)>,
    keys: Vec<(KeyId, usize)>,
    /// The hash of each key of `keys`, in the same order.
    key_hashes: Vec<KeyHash>,
    grants: Vec<(GrantId, usize)>,
    messages: Vec<(usize, Address, Ulid)>,
}

impl Built {
    fn of<T: Clone>(items: &[(T, usize)], o: usize) -> Vec<T> {
        items.iter().filter(|(_, w)| *w == o).map(|(t, _)| t.clone()).collect()
    }

    /// Whether `record` concerns owner `o`, by the rule `audit_list_for_owner`
    /// documents.
    fn concerns(&self, record: &AuditRecord, o: usize) -> bool {
        let id = &self.owners[o];
        let agents: Vec<String> = Self::of(&self.agents, o).iter().map(ToString::to_string).collect();
        let subjects: Vec<String> = std::iter::once(id.to_string())
            .chain(agents.iter().cloned())
            .chain(Self::of(&self.inboxes, o).iter().map(ToString::to_string))
            .chain(Self::of(&self.keys, o).iter().map(ToString::to_string))
            .chain(Self::of(&self.grants, o).iter().map(ToString::to_string))
            .collect();
        let detail = |k: &str| record.detail.get(k).and_then(serde_json::Value::as_str).map(str::to_owned);
        record.actor == Actor::Owner(id.clone())
            || subjects.contains(&record.subject)
            || detail("owner").as_deref() == Some(id.as_str())
            || detail("agent").is_some_and(|a| agents.contains(&a))
    }
}

/// Writes `plan` alternately through both handles.
async fn build_world<S: StoreUnderTest>(a: &S, b: &S, plan: &WorldPlan) -> Built {
    let mut built = Built::default();
    let mut turn = 0usize;
    let mut next = || {
        turn += 1;
        turn
    };
    let pick = |n: usize| if n.is_multiple_of(2) { a } else { b };
    a.ensure_domain(&domain(), NOW).await.unwrap();
    let (mut agent_n, mut key_n, mut grant_n, mut msg_n) = (0u32, 0u32, 0u32, 0u64);
    for (o, agents) in plan.owners.iter().enumerate() {
        let owner_n = u32::try_from(o + 1).unwrap();
        let id = owner(owner_n);
        pick(next()).add_owner(&owner_record(owner_n), &event("owner.create", id.as_str())).await.unwrap();
        built.owners.push(id);
        for ap in agents {
            agent_n += 1;
            let a_id = agent(agent_n);
            let ev = event("agent.create", a_id.as_str())
                .with_detail(serde_json::json!({ "owner": owner(owner_n).as_str() }));
            pick(next()).add_agent(&agent_record(agent_n, owner_n), &ev).await.unwrap();
            built.agents.push((a_id.clone(), o));
            let mut mine = Vec::new();
            for (k, messages) in ap.inboxes.iter().enumerate() {
                let local = format!("in{owner_n}-{agent_n}-{k}");
                let rec = inbox_record(&local, owner_n, agent_n);
                pick(next()).create_inbox(&rec, &event("inbox.create", rec.address.as_str())).await.unwrap();
                let rows: Vec<NewMessage> = (0..*messages)
                    .map(|_| {
                        msg_n += 1;
                        NewMessage { owner: owner(owner_n), inbox: rec.address.clone(), id: ulid(msg_n), size: 10, summary: Default::default(), facts: Default::default() }
                    })
                    .collect();
                if !rows.is_empty() {
                    pick(next()).index_messages(&rows).await.unwrap();
                }
                built.messages.extend(rows.iter().map(|m| (o, m.inbox.clone(), m.id)));
                built.inboxes.push((rec.address.clone(), o));
                mine.push(rec.address);
            }
            for _ in 0..ap.keys {
                key_n += 1;
                let ev = event("key.create", key_id(key_n).as_str())
                    .with_detail(serde_json::json!({ "agent": a_id.as_str() }));
                pick(next()).create_key(&key_record(key_n, agent_n), &ev).await.unwrap();
                built.keys.push((key_id(key_n), o));
                built.key_hashes.push(key_hash(key_n));
            }
            for kind in &ap.grants {
                grant_n += 1;
                let pattern = match (kind % 3, mine.first()) {
                    (0, Some(exact)) => exact.to_string(),
                    (1, _) => format!("in{owner_n}-*"),
                    _ => format!("*@{DOMAIN}"),
                };
                let g = grant_record(grant_n, owner_n, agent_n, &pattern, "read");
                pick(next()).add_grant(&g, &event("grant.create", g.id.as_str())).await.unwrap();
                built.grants.push((g.id, o));
            }
        }
    }
    for ap in &plan.appends {
        let owners = built.owners.len();
        let agents = built.agents.len();
        let actor = match ap.actor % (2 + owners + agents) {
            0 => Actor::Operator,
            1 => Actor::System,
            n if n < 2 + owners => Actor::Owner(built.owners[n - 2].clone()),
            n => Actor::Agent(built.agents[n - 2 - owners].0.clone()),
        };
        let nth = |items: Vec<String>| items.get(ap.subject.1 % items.len().max(1)).cloned();
        let subject = match ap.subject.0 % 6 {
            0 => nth(built.owners.iter().map(ToString::to_string).collect()),
            1 => nth(built.agents.iter().map(|(a, _)| a.to_string()).collect()),
            2 => nth(built.inboxes.iter().map(|(a, _)| a.to_string()).collect()),
            3 => nth(built.keys.iter().map(|(k, _)| k.to_string()).collect()),
            4 => nth(built.grants.iter().map(|(g, _)| g.to_string()).collect()),
            _ => None,
        }
        .unwrap_or_else(|| "unrelated".to_owned());
        let mut detail = serde_json::Map::new();
        if let Some(o) = ap.detail_owner {
            detail.insert("owner".into(), built.owners[o % owners].to_string().into());
        }
        if let Some(x) = ap.detail_agent {
            detail.insert("agent".into(), built.agents[x % agents].0.to_string().into());
        }
        let ev = AuditEvent::ok(actor, "conf.append", subject).with_detail(serde_json::Value::Object(detail));
        pick(next()).audit_append(&ev).await.unwrap();
    }
    built
}

/// Every owner-scoped read, through either handle, shows owner `o` only their
/// own rows; every owner-scoped write of another owner's object is `NotFound`
/// exactly like a missing id and changes nothing.
async fn assert_isolated<S: StoreUnderTest>(a: &S, b: &S, built: &Built, context: &str) {
    let head = a.audit_head().await.unwrap();
    let log = verified_log(a, context).await;
    for (o, id) in built.owners.iter().enumerate() {
        for (s, handle) in [(a, "first"), (b, "second")] {
            let ctx = format!("{context}, owner {o} through the {handle} handle");
            let agents: BTreeSet<AgentId> = s.list_agents(Some(id)).await.unwrap().into_iter().map(|x| x.id).collect();
            assert_eq!(
                agents,
                Built::of(&built.agents, o).into_iter().collect::<BTreeSet<_>>(),
                "{ctx}: list_agents(Some)"
            );
            let inboxes: BTreeSet<Address> =
                s.list_inboxes(Some(id)).await.unwrap().into_iter().map(|x| x.address).collect();
            assert_eq!(
                inboxes,
                Built::of(&built.inboxes, o).into_iter().collect::<BTreeSet<_>>(),
                "{ctx}: list_inboxes(Some)"
            );
            let grants = s.list_owner_grants(id).await.unwrap();
            assert!(grants.iter().all(|g| &g.owner == id), "{ctx}: list_owner_grants shows only the owner's");
            let grants: BTreeSet<GrantId> = grants.into_iter().map(|g| g.id).collect();
            assert_eq!(
                grants,
                Built::of(&built.grants, o).into_iter().collect::<BTreeSet<_>>(),
                "{ctx}: list_owner_grants"
            );
            let expected: Vec<u64> = log.iter().filter(|r| built.concerns(r, o)).map(|r| r.seq).collect();
            let listed: Vec<u64> = s.audit_list_for_owner(id, 0, ALL).await.unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(listed, expected, "{ctx}: audit_list_for_owner is exactly the records that concern the owner");
            let mut paged = Vec::new();
            loop {
                let after = paged.last().copied().unwrap_or(0);
                let page = s.audit_list_for_owner(id, after, 2).await.unwrap();
                if page.is_empty() {
                    break;
                }
                paged.extend(page.iter().map(|r| r.seq));
            }
            assert_eq!(paged, expected, "{ctx}: audit_list_for_owner pages");
            for (inbox, w) in &built.inboxes {
                let mine: BTreeSet<Ulid> =
                    built.messages.iter().filter(|(mo, mi, _)| *mo == o && mi == inbox).map(|(_, _, u)| *u).collect();
                if *w != o {
                    assert!(mine.is_empty());
                }
                let q = PageQuery { after: None, before: None, order: ListOrder::OldestFirst, limit: ALL };
                let listed: BTreeSet<Ulid> =
                    s.list_messages(id, inbox, &q).await.unwrap().iter().map(|m| m.id).collect();
                assert_eq!(listed, mine, "{ctx}: list_messages of {inbox} (owner {w})");
                let since: BTreeSet<Ulid> =
                    s.messages_since(id, inbox, 0, None, ALL).await.unwrap().iter().map(|m| m.id).collect();
                assert_eq!(since, mine, "{ctx}: messages_since of {inbox} (owner {w})");
                let indexed: BTreeSet<Ulid> = s.indexed_ids(id, inbox).await.unwrap().into_iter().collect();
                assert_eq!(indexed, mine, "{ctx}: indexed_ids of {inbox} (owner {w})");
            }
        }
        // Writes: another owner's grant or key is NotFound like a missing id.
        let s = if o % 2 == 0 { a } else { b };
        let ctx = format!("{context}, owner {o}");
        for (g, w) in built.grants.iter().filter(|(_, w)| *w != o) {
            same_not_found(
                s.revoke_owner_grant(id, g, NOW, &event("grant.revoke", g.as_str())).await,
                g.as_str(),
                s.revoke_owner_grant(id, &grant_id(999_999), NOW, &event("grant.revoke", "x")).await,
                grant_id(999_999).as_str(),
                &format!("{ctx}: revoke_owner_grant of owner {w}'s grant"),
            );
        }
        for (k, w) in built.keys.iter().filter(|(_, w)| *w != o) {
            same_not_found(
                s.revoke_owner_key(id, k, NOW, &event("key.revoke", k.as_str())).await,
                k.as_str(),
                s.revoke_owner_key(id, &key_id(999_999), NOW, &event("key.revoke", "x")).await,
                key_id(999_999).as_str(),
                &format!("{ctx}: revoke_owner_key of owner {w}'s key"),
            );
        }
    }
    // The refused revocations changed nothing.
    assert_eq!(a.audit_head().await.unwrap(), head, "{context}: refused writes append nothing");
    for (g, w) in &built.grants {
        let stored = owner_grant(b, u32::try_from(*w + 1).unwrap(), g).await.unwrap();
        assert_eq!(stored.revoked_at, None, "{context}: grant {g} was revoked by another owner");
    }
    for (agent_id, _) in &built.agents {
        for k in a.list_keys(agent_id).await.unwrap() {
            assert_eq!(k.revoked_at, None, "{context}: key {} was revoked by another owner", k.id);
        }
    }
}

/// Contract 5, named case: three owners, one with two agents; inboxes, keys,
/// grants of every pattern kind, messages, and appends that name each owner's
/// objects in every way `audit_list_for_owner` documents.
pub async fn owners_see_only_their_own_rows<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let agent_plan = |inboxes: Vec<u8>, keys, grants| AgentPlan { inboxes, keys, grants };
    let plan = WorldPlan {
        owners: vec![
            vec![agent_plan(vec![2, 1], 2, vec![0, 1, 2]), agent_plan(vec![0], 1, vec![0])],
            vec![agent_plan(vec![3], 1, vec![2, 0])],
            vec![agent_plan(vec![], 0, vec![1])],
        ],
        appends: (0..18)
            .map(|i| AppendPlan {
                actor: i,
                subject: ((i % 6) as u8, i / 3),
                detail_owner: (i % 4 == 0).then_some(i),
                detail_agent: (i % 5 == 0).then_some(i),
            })
            .collect(),
    };
    let built = build_world(&a, &b, &plan).await;
    assert_isolated(&a, &b, &built, "owners_see_only_their_own_rows").await;
}

fn world_plans() -> impl Strategy<Value = WorldPlan> {
    let agent = (prop::collection::vec(0u8..3, 0..3), 0u8..3, prop::collection::vec(0u8..3, 0..3))
        .prop_map(|(inboxes, keys, grants)| AgentPlan { inboxes, keys, grants });
    let owners = prop::collection::vec(prop::collection::vec(agent, 1..3), 2..5);
    let append = (0usize..16, (0u8..6, 0usize..8), prop::option::of(0usize..4), prop::option::of(0usize..8)).prop_map(
        |(actor, subject, detail_owner, detail_agent)| AppendPlan { actor, subject, detail_owner, detail_agent },
    );
    (owners, prop::collection::vec(append, 0..10)).prop_map(|(owners, appends)| WorldPlan { owners, appends })
}

/// Contract 5 over generated worlds.
pub async fn owners_see_only_their_own_rows_generated<B: Backend>(backend: Arc<B>) {
    for_generated("owners see only their own rows", 12, world_plans, move |plan| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let built = build_world(&a, &b, &plan).await;
            assert_isolated(&a, &b, &built, "generated world").await;
        }
    })
    .await;
}

/// Grants in a comparable order (by id).
fn by_id(mut grants: Vec<Grant>) -> Vec<Grant> {
    grants.sort_by(|x, y| x.id.cmp(&y.id));
    grants
}

/// The reads that gather several facts at once agree with the single reads
/// they stand for, through either handle: `auth_facts` with
/// `key_facts_by_hash`, `list_grants` of the key's agent and `recipient`;
/// `grants_and_inbox_owner` with `list_grants` and `recipient`. Unknown keys and
/// inboxes included.
async fn assert_combined_reads_agree<S: StoreUnderTest>(a: &S, b: &S, built: &Built, context: &str) {
    let hashes: Vec<KeyHash> = built.key_hashes.iter().copied().chain([key_hash(999_999)]).collect();
    let inboxes: Vec<Address> = built.inboxes.iter().map(|(x, _)| x.clone()).chain([address("nobody")]).collect();
    let agents: Vec<AgentId> = built.agents.iter().map(|(x, _)| x.clone()).chain([agent(999_999)]).collect();
    for (i, s) in [a, b].into_iter().enumerate() {
        for hash in &hashes {
            let key = s.key_facts_by_hash(hash).await.unwrap();
            let grants = match &key {
                Some(k) => by_id(s.list_grants(Some(&k.agent)).await.unwrap()),
                None => Vec::new(),
            };
            for inbox in &inboxes {
                let ctx = format!("{context}, handle {i}, key {}, inbox {inbox}", hash.to_hex());
                let facts =
                    s.auth_facts(&agentkeys_core::Credentials { address: inbox.clone(), key_hash: *hash }).await;
                let facts = facts.unwrap();
                let fields = |k: &agentkeys_core::KeyFacts| {
                    (k.id.clone(), k.hash.0, k.agent.clone(), k.owner.clone(), k.expires_at, k.revoked_at)
                };
                assert_eq!(facts.key.as_ref().map(fields), key.as_ref().map(fields), "{ctx}: auth_facts' key");
                assert_eq!(by_id(facts.grants), grants, "{ctx}: auth_facts' grants are the key's agent's");
                let rcpt = s.recipient(inbox).await.unwrap().map(|r| (r.owner, r.status));
                assert_eq!(facts.inbox, rcpt, "{ctx}: auth_facts' inbox");
            }
        }
        for x in &agents {
            let grants = by_id(s.list_grants(Some(x)).await.unwrap());
            for inbox in &inboxes {
                let (together, owner_of) = s.grants_and_inbox_owner(x, inbox).await.unwrap();
                let ctx = format!("{context}, handle {i}, agent {x}, inbox {inbox}");
                assert_eq!(by_id(together), grants, "{ctx}: grants_and_inbox_owner's grants");
                let rcpt = s.recipient(inbox).await.unwrap().map(|r| r.owner);
                assert_eq!(owner_of, rcpt, "{ctx}: grants_and_inbox_owner's owner");
            }
        }
    }
}

/// Combined reads, named case: the world of [`owners_see_only_their_own_rows`]
/// with some keys revoked and some grants revoked.
pub async fn combined_reads_agree_with_single_reads<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let agent_plan = |inboxes: Vec<u8>, keys, grants| AgentPlan { inboxes, keys, grants };
    let plan = WorldPlan {
        owners: vec![
            vec![agent_plan(vec![0, 0], 2, vec![0, 1, 2]), agent_plan(vec![0], 1, vec![0])],
            vec![agent_plan(vec![0], 2, vec![2, 0])],
        ],
        appends: Vec::new(),
    };
    let built = build_world(&a, &b, &plan).await;
    a.revoke_key(&built.keys[0].0, NOW, &event("key.revoke", "k")).await.unwrap();
    b.revoke_grant(&built.grants[1].0, NOW, &event("grant.revoke", "g")).await.unwrap();
    assert_combined_reads_agree(&a, &b, &built, "combined_reads_agree_with_single_reads").await;
}

/// Combined reads over generated worlds.
pub async fn combined_reads_agree_generated<B: Backend>(backend: Arc<B>) {
    for_generated("combined reads agree with single reads", 12, world_plans, move |plan| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let built = build_world(&a, &b, &plan).await;
            assert_combined_reads_agree(&a, &b, &built, "generated world").await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. Single use across processes.

/// Contract 6, owner nonces, named cases: of twelve concurrent records of one
/// (owner, nonce) on both handles exactly one is `Fresh`; another owner's use
/// of the same nonce is its own; a nonce older than `forget_before` is
/// forgotten first.
/// Deployment identity: of several processes recording their seed fingerprint
/// at once, the first wins and every process (the winner included) reads it back.
pub async fn the_first_seed_fingerprint_is_the_deployments<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let seen = on_both(&a, &b, 8, |s, n| async move { s.seed_fingerprint(&[n as u8; 32]).await.unwrap() }).await;
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "one fingerprint: {seen:?}");
    assert_eq!(b.seed_fingerprint(&[0xee; 32]).await.unwrap(), seen[0]);
}

pub async fn owner_nonces_are_single_use_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let uses = on_both(&a, &b, 12, |s, _| async move {
        s.record_owner_nonce(&owner(1), "nonce-0123456789ab", NOW, NOW - 120).await.unwrap()
    })
    .await;
    assert_eq!(uses.iter().filter(|u| u.is_fresh()).count(), 1, "one Fresh: {uses:?}");
    assert!(b.record_owner_nonce(&owner(2), "nonce-0123456789ab", NOW, NOW - 120).await.unwrap().is_fresh());
    assert_eq!(
        a.record_owner_nonce(&owner(2), "nonce-0123456789ab", NOW, NOW - 120).await.unwrap(),
        NonceUse::Replayed
    );
    // Forgotten once its time is before forget_before.
    assert!(a.record_owner_nonce(&owner(1), "nonce-0123456789ab", NOW, NOW + 1).await.unwrap().is_fresh());
}

fn nonce_uses() -> impl Strategy<Value = Vec<(u32, u8, bool)>> {
    prop::collection::vec((1u32..4, 0u8..4, any::<bool>()), 1..24)
}

/// Owner nonces over generated concurrent uses: each distinct (owner, nonce)
/// is `Fresh` exactly once.
pub async fn owner_nonces_generated<B: Backend>(backend: Arc<B>) {
    for_generated("owner nonces are single use", 16, nonce_uses, move |uses| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            two_owners(&a, &b).await;
            a.add_owner(&owner_record(3), &event("owner.create", "o3")).await.unwrap();
            let on_second: Vec<bool> = uses.iter().map(|(_, _, s)| *s).collect();
            let uses = Arc::new(uses);
            let answers = on_handles(&a, &b, &on_second, |s, i| {
                let uses = Arc::clone(&uses);
                async move {
                    let (o, n, _) = uses[i];
                    s.record_owner_nonce(&owner(o), &format!("nonce-{n}"), NOW, NOW - 120).await.unwrap()
                }
            })
            .await;
            let mut fresh: BTreeMap<(u32, u8), usize> = BTreeMap::new();
            for ((o, n, _), answer) in uses.iter().zip(&answers) {
                *fresh.entry((*o, *n)).or_default() += usize::from(answer.is_fresh());
            }
            assert!(fresh.values().all(|f| *f == 1), "each (owner, nonce) Fresh exactly once: {fresh:?}");
        }
    })
    .await;
}

/// Contract 6, idempotency keys, named cases: of concurrent claims of one key
/// on both handles, one is `Claimed` and the rest `InProgress` (same request)
/// or `Mismatch` (another); a finished key replays its answer through the
/// other handle and is not released; a released one is claimable again; the
/// key space is per inbox and agent; a day later the key is new.
pub async fn idempotency_keys_are_claimed_once_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let (bot, other, agent1) = (address("bot"), address("other"), agent(1));
    let key = [1u8; 32];
    let claims = on_both(&a, &b, 10, |s, i| {
        let (bot, agent1) = (bot.clone(), agent1.clone());
        async move {
            let scope = IdempotencyScope { inbox: &bot, agent: &agent1, key_hash: &key };
            let body = if i == 9 { [3u8; 32] } else { [2u8; 32] };
            (s.claim(scope, &body, ulid(i as u64), NOW).await.unwrap(), body, ulid(i as u64))
        }
    })
    .await;
    let winners: Vec<(&[u8; 32], Ulid)> =
        claims.iter().filter(|(c, _, _)| *c == IdempotencyClaim::Claimed).map(|(_, body, id)| (body, *id)).collect();
    assert_eq!(winners.len(), 1, "exactly one claim of a key: {claims:?}");
    let (won_body, won_id) = (*winners[0].0, winners[0].1);
    for (c, body, _) in &claims {
        match c {
            IdempotencyClaim::Claimed => {}
            IdempotencyClaim::InProgress => assert_eq!(body, &won_body, "InProgress only for the same request"),
            IdempotencyClaim::Mismatch => assert_ne!(body, &won_body, "Mismatch only for another request"),
            IdempotencyClaim::Replay(_) | IdempotencyClaim::Stored { .. } => panic!("nothing was finished, yet {c:?}"),
        }
    }
    let scope = IdempotencyScope { inbox: &bot, agent: &agent1, key_hash: &key };
    // Per inbox and per agent.
    let agent2 = agent(2);
    let elsewhere = IdempotencyScope { inbox: &other, ..scope };
    assert_eq!(b.claim(elsewhere, &won_body, ulid(20), NOW).await.unwrap(), IdempotencyClaim::Claimed);
    let other_agent = IdempotencyScope { agent: &agent2, ..scope };
    assert_eq!(a.claim(other_agent, &won_body, ulid(21), NOW).await.unwrap(), IdempotencyClaim::Claimed);
    // Finish and release name the claim's message: another id changes nothing.
    a.finish(scope, ulid(99), "{\"message_id\":\"m0\"}").await.unwrap();
    b.release(scope, ulid(99)).await.unwrap();
    assert_eq!(b.claim(scope, &won_body, ulid(22), NOW).await.unwrap(), IdempotencyClaim::InProgress);
    // Finished: replayed through the other handle; release keeps it.
    a.finish(scope, won_id, "{\"message_id\":\"m1\"}").await.unwrap();
    b.release(scope, won_id).await.unwrap();
    let replay = IdempotencyClaim::Replay("{\"message_id\":\"m1\"}".to_owned());
    assert_eq!(b.claim(scope, &won_body, ulid(22), NOW + 1).await.unwrap(), replay);
    // Released before finishing: claimable again.
    b.release(elsewhere, ulid(20)).await.unwrap();
    assert_eq!(a.claim(elsewhere, &[9u8; 32], ulid(23), NOW + 1).await.unwrap(), IdempotencyClaim::Claimed);
    // Forgotten after the TTL.
    let later = NOW + IDEMPOTENCY_KEY_TTL_SECS;
    assert_eq!(b.claim(scope, &[5u8; 32], ulid(24), later).await.unwrap(), IdempotencyClaim::Claimed);
}

/// Contract 6, a claim whose send died (issue 10): a claim unfinished for
/// `STALE_CLAIM_SECS` is resolved by what was stored. Its message not stored:
/// of concurrent retries on both handles exactly one takes the claim over
/// (with its own message id), the rest see it in progress. Its message
/// indexed in some inbox, or queued: every retry, through either handle, is
/// `Stored` with the claim's message id, and once finished, replayed.
pub async fn a_stale_idempotency_claim_is_resolved_by_what_was_stored<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let (bot, agent1) = (address("bot"), agent(1));
    let body = [2u8; 32];
    let scope = |key: &'static [u8; 32]| IdempotencyScope { inbox: &bot, agent: &agent1, key_hash: key };
    // The keys (static: the concurrent retries borrow one).
    static LOST: [u8; 32] = [1u8; 32];
    static INDEXED: [u8; 32] = [3u8; 32];
    static QUEUED: [u8; 32] = [4u8; 32];
    for (key, id) in [(&LOST, ulid(100)), (&INDEXED, ulid(101)), (&QUEUED, ulid(102))] {
        assert_eq!(a.claim(scope(key), &body, id, NOW).await.unwrap(), IdempotencyClaim::Claimed);
    }
    // Not yet stale: in use, whatever was stored.
    let fresh = NOW + STALE_CLAIM_SECS - 1;
    assert_eq!(b.claim(scope(&LOST), &body, ulid(110), fresh).await.unwrap(), IdempotencyClaim::InProgress);
    // What the crashed sends stored: one message indexed (in another owner's
    // inbox: any inbox counts), one queued.
    let other_inbox = NewMessage { owner: owner(2), inbox: address("other"), id: ulid(101), size: 10, summary: Default::default(), facts: Default::default() };
    b.index_messages(&[other_inbox]).await.unwrap();
    a.enqueue_outbound(&NewOutbound { message_id: ulid(102).to_string(), ..outbound(1, 1, 0) }).await.unwrap();

    let stale = NOW + STALE_CLAIM_SECS;
    let retries = on_both(&a, &b, 6, |s, i| {
        let (bot, agent1) = (bot.clone(), agent1.clone());
        async move {
            let scope = IdempotencyScope { inbox: &bot, agent: &agent1, key_hash: &LOST };
            (s.claim(scope, &body, ulid(200 + i as u64), stale).await.unwrap(), ulid(200 + i as u64))
        }
    })
    .await;
    let winners: Vec<Ulid> =
        retries.iter().filter(|(c, _)| *c == IdempotencyClaim::Claimed).map(|(_, id)| *id).collect();
    assert_eq!(winners.len(), 1, "exactly one retry takes a stale claim over: {retries:?}");
    assert!(retries.iter().all(|(c, _)| matches!(c, IdempotencyClaim::Claimed | IdempotencyClaim::InProgress)), "{retries:?}");
    // The new claim is fresh again, and carries the winner's message id.
    assert_eq!(a.claim(scope(&LOST), &body, ulid(300), stale + 1).await.unwrap(), IdempotencyClaim::InProgress);
    b.index_messages(&[NewMessage { owner: owner(1), inbox: address("bot"), id: winners[0], size: 1, summary: Default::default(), facts: Default::default() }]).await.unwrap();
    let later = stale + STALE_CLAIM_SECS;
    assert_eq!(a.claim(scope(&LOST), &body, ulid(301), later).await.unwrap(), IdempotencyClaim::Stored { message: winners[0], queued: false });
    // Another request with the key is still refused.
    assert_eq!(b.claim(scope(&LOST), &[9u8; 32], ulid(302), later).await.unwrap(), IdempotencyClaim::Mismatch);
    // The dead send, waking up, can neither release nor finish the claim it lost.
    a.release(scope(&LOST), ulid(100)).await.unwrap();
    b.finish(scope(&LOST), ulid(100), "{}").await.unwrap();
    assert_eq!(a.claim(scope(&LOST), &body, ulid(303), later).await.unwrap(), IdempotencyClaim::Stored { message: winners[0], queued: false });
    // A claim whose message was stored is never released (a retry must not
    // send it again), even by its own send failing late.
    b.release(scope(&LOST), winners[0]).await.unwrap();
    b.release(scope(&QUEUED), ulid(102)).await.unwrap();
    assert_eq!(a.claim(scope(&LOST), &body, ulid(304), later).await.unwrap(), IdempotencyClaim::Stored { message: winners[0], queued: false });

    for (key, id, queued) in [(&INDEXED, ulid(101), false), (&QUEUED, ulid(102), true)] {
        for s in [&a, &b] {
            let claim = s.claim(scope(key), &body, ulid(400), stale).await.unwrap();
            assert_eq!(claim, IdempotencyClaim::Stored { message: id, queued });
        }
    }
    let answer = format!("{{\"message_id\":\"{}\"}}", ulid(101));
    a.finish(scope(&INDEXED), ulid(101), &answer).await.unwrap();
    assert_eq!(b.claim(scope(&INDEXED), &body, ulid(401), stale).await.unwrap(), IdempotencyClaim::Replay(answer));
}

fn idempotency_races() -> impl Strategy<Value = Vec<(u8, u8, bool)>> {
    prop::collection::vec((0u8..3, 0u8..2, any::<bool>()), 1..20)
}

/// Idempotency claims over generated races (key, request, handle): per key
/// one `Claimed`; every other claim is `InProgress` for the winner's request and
/// `Mismatch` for another.
pub async fn idempotency_claims_generated<B: Backend>(backend: Arc<B>) {
    for_generated("idempotency keys are claimed once", 16, idempotency_races, move |race| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            two_owners(&a, &b).await;
            let on_second: Vec<bool> = race.iter().map(|(_, _, s)| *s).collect();
            let race = Arc::new(race);
            let answers = on_handles(&a, &b, &on_second, |s, i| {
                let race = Arc::clone(&race);
                async move {
                    let (k, body, _) = race[i];
                    let (inbox, agent1) = (address("bot"), agent(1));
                    let scope = IdempotencyScope { inbox: &inbox, agent: &agent1, key_hash: &[k; 32] };
                    s.claim(scope, &[body; 32], ulid(i as u64), NOW).await.unwrap()
                }
            })
            .await;
            let mut winner: BTreeMap<u8, u8> = BTreeMap::new();
            for ((k, body, _), answer) in race.iter().zip(&answers) {
                if *answer == IdempotencyClaim::Claimed {
                    assert!(winner.insert(*k, *body).is_none(), "key {k} claimed twice: {answers:?}");
                }
            }
            for ((k, body, _), answer) in race.iter().zip(&answers) {
                let won = winner.get(k).unwrap_or_else(|| panic!("key {k} never claimed: {answers:?}"));
                match answer {
                    IdempotencyClaim::Claimed => {}
                    IdempotencyClaim::InProgress => assert_eq!(body, won),
                    IdempotencyClaim::Mismatch => assert_ne!(body, won),
                    IdempotencyClaim::Replay(_) | IdempotencyClaim::Stored { .. } => {
                        panic!("nothing finished, yet {answer:?}")
                    }
                }
            }
        }
    })
    .await;
}

fn pairing_request(hash: u8, agent_n: u32) -> PairingRecord {
    PairingRecord {
        code_hash: [hash; 32],
        device_key: [7; 32],
        agent: agent(agent_n),
        name: Some("paired".to_owned()),
        opened_at: NOW,
        status: PairingStatus::Pending,
        owner: None,
        approved_at: None,
        addressed_to: None,
    }
}

/// Opens a pairing request and races `approvers` (owner index, handle) to
/// approve it, then `collectors` (handle) to collect it; one of each wins, the
/// others get `NotFound`, and the request, agent and key are the winners'.
async fn pairing_race<S: StoreUnderTest>(a: &S, b: &S, approvers: &[(u32, bool)], collectors: &[bool], context: &str) {
    two_owners(a, b).await;
    let req = pairing_request(1, 50);
    a.open_pairing(&req, NOW - DAY, &event("pairing.open", "p")).await.unwrap();
    conflict(b.open_pairing(&req, NOW - DAY, &event("pairing.open", "p")).await, "the same code twice");
    let approvers = Arc::new(approvers.to_vec());
    let on_second: Vec<bool> = approvers.iter().map(|(_, s)| *s).collect();
    let approved = on_handles(a, b, &on_second, |s, i| {
        let approvers = Arc::clone(&approvers);
        async move {
            let rec = agent_record(50, approvers[i].0);
            s.approve_pairing(&[1; 32], &rec, NOW + 5, &event("pairing.approve", "p")).await
        }
    })
    .await;
    let won = one_winner(&approved, is_not_found, &format!("{context}: concurrent approvals"));
    let by = owner(approvers[won].0);
    for s in [a, b] {
        let stored = s.pairing(&[1; 32]).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.owner.as_ref()), (PairingStatus::Approved, Some(&by)), "{context}");
        assert_eq!(s.get_agent(&agent(50)).await.unwrap().map(|x| x.owner), Some(by.clone()), "{context}");
    }
    let collected = on_handles(a, b, collectors, |s, i| async move {
        let key = key_record(500 + u32::try_from(i).unwrap(), 50);
        s.collect_pairing(&[1; 32], &key, NOW + 6, &event("pairing.collect", "p")).await
    })
    .await;
    let won = one_winner(&collected, is_not_found, &format!("{context}: concurrent collections"));
    let keys = a.list_keys(&agent(50)).await.unwrap();
    assert_eq!(keys.len(), 1, "{context}: one key stored");
    assert_eq!(keys[0].id, key_id(500 + u32::try_from(won).unwrap()), "{context}: the winner's key");
    assert_eq!(b.pairing(&[1; 32]).await.unwrap().unwrap().status, PairingStatus::Consumed);
    let log = verified_log(b, context).await;
    let count = |op: &str| log.iter().filter(|r| r.operation == op).count();
    assert_eq!((count("pairing.approve"), count("pairing.collect")), (1, 1), "{context}: only winners audited");
}

/// Contract 6, pairing, named case: six approvals (either owner) and six
/// collections, on both handles. Also: an unknown code and collecting before
/// approval are `NotFound`; an agent id of another owner is `Conflict`.
pub async fn pairing_approval_and_collection_are_single_use<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let approvers: Vec<(u32, bool)> = (0..6).map(|i| (i % 2 + 1, i % 3 == 0)).collect();
    let collectors = [false, true, true, false, true, false];
    pairing_race(&a, &b, &approvers, &collectors, "pairing").await;
    not_found(
        a.approve_pairing(&[9; 32], &agent_record(51, 1), NOW, &event("pairing.approve", "p")).await,
        "unknown code",
    );
    b.open_pairing(&pairing_request(2, 51), NOW - DAY, &event("pairing.open", "p2")).await.unwrap();
    not_found(
        a.collect_pairing(&[2; 32], &key_record(600, 51), NOW, &event("pairing.collect", "p2")).await,
        "before approval",
    );
    // Agent 1 belongs to owner 1: owner 2 cannot take it over by pairing.
    b.open_pairing(&pairing_request(3, 1), NOW - DAY, &event("pairing.open", "p3")).await.unwrap();
    conflict(
        a.approve_pairing(&[3; 32], &agent_record(1, 2), NOW, &event("pairing.approve", "p3")).await,
        "taken agent",
    );
    assert_eq!(b.pairing(&[3; 32]).await.unwrap().unwrap().status, PairingStatus::Pending, "rolled back");
    assert_eq!(b.get_agent(&agent(1)).await.unwrap().map(|x| x.owner), Some(owner(1)), "agent 1 stays owner 1's");
    let log = verified_log(&a, "refused pairings").await;
    let approvals = log.iter().filter(|r| r.operation == "pairing.approve" || r.operation == "pairing.collect").count();
    assert_eq!(approvals, 2, "refused approvals and collections are not recorded");
    // Opening prunes requests opened before `forget_before`.
    b.open_pairing(
        &PairingRecord { opened_at: NOW + 10, ..pairing_request(4, 52) },
        NOW + 1,
        &event("pairing.open", "p4"),
    )
    .await
    .unwrap();
    for s in [&a, &b] {
        assert_eq!(s.pairing(&[2; 32]).await.unwrap(), None, "pruned");
        assert!(s.pairing(&[4; 32]).await.unwrap().is_some());
    }
}

/// Contract 6, pairing denial: of a denial racing approvals on both handles
/// exactly one wins; once denied (terminal, the denier stored) no approval,
/// collection or second denial changes it, and only the winner is audited.
/// Denying an unknown or approved request is `NotFound`.
pub async fn a_pairing_is_denied_once_and_never_approved<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    a.open_pairing(&pairing_request(5, 53), NOW - DAY, &event("pairing.open", "p5")).await.unwrap();
    // One denial (handle a) races two approvals (handle b).
    let tries = on_handles(&a, &b, &[false, true, true], |s, i| async move {
        if i == 0 {
            s.deny_pairing(&[5; 32], &owner(1), NOW + 3, &event("pairing.deny", "p5")).await
        } else {
            s.approve_pairing(&[5; 32], &agent_record(53, 1), NOW + 3, &event("pairing.approve", "p5")).await
        }
    })
    .await;
    let won = one_winner(&tries, is_not_found, "deny against approvals");
    let stored = b.pairing(&[5; 32]).await.unwrap().unwrap();
    if won == 0 {
        assert_eq!((stored.status, stored.owner.as_ref(), stored.approved_at), (PairingStatus::Denied, Some(&owner(1)), None));
        assert_eq!(a.get_agent(&agent(53)).await.unwrap(), None, "a denied request creates no agent");
    } else {
        assert_eq!(stored.status, PairingStatus::Approved);
    }
    // A denied request stays denied: nothing moves it on.
    a.open_pairing(&pairing_request(6, 54), NOW - DAY, &event("pairing.open", "p6")).await.unwrap();
    b.deny_pairing(&[6; 32], &owner(2), NOW + 4, &event("pairing.deny", "p6")).await.unwrap();
    not_found(a.deny_pairing(&[6; 32], &owner(1), NOW + 5, &event("pairing.deny", "p6")).await, "denied twice");
    not_found(
        a.approve_pairing(&[6; 32], &agent_record(54, 2), NOW + 5, &event("pairing.approve", "p6")).await,
        "approve after deny",
    );
    not_found(a.collect_pairing(&[6; 32], &key_record(610, 54), NOW + 5, &event("pairing.collect", "p6")).await, "collect after deny");
    for s in [&a, &b] {
        let stored = s.pairing(&[6; 32]).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.owner.as_ref()), (PairingStatus::Denied, Some(&owner(2))));
    }
    not_found(a.deny_pairing(&[9; 32], &owner(1), NOW, &event("pairing.deny", "p9")).await, "unknown code");
    let log = verified_log(&a, "pairing denials").await;
    let count = |op: &str| log.iter().filter(|r| r.operation == op).count();
    assert_eq!(count("pairing.approve") + count("pairing.deny"), 2, "only winners audited");
    assert_eq!(count("pairing.deny"), if won == 0 { 2 } else { 1 });
}

/// Contract 6, enrollment, named case: of concurrent redemptions of one code
/// on both handles exactly one registers its key; a wrong code, an expired one,
/// an unknown owner and a spent one are the same `NotFound`.
pub async fn enrollment_redemption_is_single_use<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let ticket =
        EnrollmentTicketRecord { owner: owner(1), code_hash: [7; 32], expires_at: NOW + DAY, consumed_at: None };
    b.issue_enrollment(&ticket, &event("owner.enrollment_issue", "o1")).await.unwrap();
    assert_eq!(a.enrollment_ticket(&owner(1)).await.unwrap(), Some(ticket.clone()));
    let mut shapes = BTreeSet::new();
    for (who, code, at) in [(1, [8u8; 32], NOW), (1, [7u8; 32], NOW + DAY), (9, [7u8; 32], NOW)] {
        let r = a.redeem_enrollment(&owner(who), &code, &[1; 32], at, &event("owner.enroll", "o")).await;
        shapes.insert(not_found(r, "a code that does not redeem"));
    }
    let raced = on_both(&a, &b, 8, |s, i| async move {
        let pk = [u8::try_from(10 + i).unwrap(); 32];
        s.redeem_enrollment(&owner(1), &[7; 32], &pk, NOW + 1, &event("owner.enroll", "o1")).await
    })
    .await;
    let won = one_winner(&raced, is_not_found, "concurrent redemptions");
    for r in raced.iter().filter_map(|r| r.as_ref().err()) {
        if let StoreError::NotFound { what } = r {
            shapes.insert(what.clone());
        }
    }
    assert_eq!(shapes.len(), 1, "every failed redemption is the same NotFound: {shapes:?}");
    let pk = [u8::try_from(10 + won).unwrap(); 32];
    for s in [&a, &b] {
        assert_eq!(s.owner_public_key(&owner(1)).await.unwrap(), Some(pk), "the winner's key");
        assert_eq!(s.enrollment_ticket(&owner(1)).await.unwrap(), None, "spent");
    }
    // A new ticket makes the owner's earlier code useless; the new one works
    // and replaces the key.
    let first = EnrollmentTicketRecord { code_hash: [20; 32], ..ticket.clone() };
    a.issue_enrollment(&first, &event("owner.enrollment_issue", "o1")).await.unwrap();
    let second = EnrollmentTicketRecord { code_hash: [21; 32], ..ticket };
    b.issue_enrollment(&second, &event("owner.enrollment_issue", "o1")).await.unwrap();
    let stale = a.redeem_enrollment(&owner(1), &[20; 32], &[30; 32], NOW + 2, &event("owner.enroll", "o1")).await;
    not_found(stale, "a code replaced by a newer ticket");
    b.redeem_enrollment(&owner(1), &[21; 32], &[31; 32], NOW + 2, &event("owner.enroll", "o1")).await.unwrap();
    assert_eq!(a.owner_public_key(&owner(1)).await.unwrap(), Some([31; 32]), "re-enrollment replaces the key");
}

fn single_use_races() -> impl Strategy<Value = (Vec<(u32, bool)>, Vec<bool>, Vec<bool>)> {
    (
        prop::collection::vec((1u32..3, any::<bool>()), 1..8),
        prop::collection::vec(any::<bool>(), 1..8),
        prop::collection::vec(any::<bool>(), 1..8),
    )
}

/// Pairing and enrollment over generated races: any number of contenders on
/// either handle, one winner each.
pub async fn single_use_transitions_generated<B: Backend>(backend: Arc<B>) {
    for_generated("single-use transitions", 12, single_use_races, move |(approvers, collectors, redeemers)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            pairing_race(&a, &b, &approvers, &collectors, "generated pairing").await;
            let ticket = EnrollmentTicketRecord {
                owner: owner(2),
                code_hash: [4; 32],
                expires_at: NOW + DAY,
                consumed_at: None,
            };
            a.issue_enrollment(&ticket, &event("owner.enrollment_issue", "o2")).await.unwrap();
            let raced = on_handles(&a, &b, &redeemers, |s, _| async move {
                s.redeem_enrollment(&owner(2), &[4; 32], &[1; 32], NOW + 1, &event("owner.enroll", "o2")).await
            })
            .await;
            one_winner(&raced, is_not_found, "generated redemptions");
        }
    })
    .await;
}

/// Of concurrent stores of one DKIM key version on both handles, one stores
/// it (and gets a receipt); every caller gets the stored version back, the
/// winner's. Hosting a domain that is hosted already is a no-op from any
/// handle.
pub async fn domain_key_versions_are_stored_once<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let hosted = on_both(&a, &b, 4, |s, _| async move { s.ensure_domain(&domain(), NOW).await }).await;
    assert!(hosted.iter().all(Result::is_ok), "ensure_domain is a no-op when hosted: {hosted:?}");
    assert_eq!(b.list_domains().await.unwrap(), vec![domain()]);
    let raced = on_both(&a, &b, 6, |s, i| async move {
        let keys = DomainKeyRecord { rsa_key_wrapped: vec![u8::try_from(i).unwrap(); 8], ..domain_keys(1) };
        let (stored, receipt) = s.add_domain_keys(&keys, &event("domain.keys", DOMAIN)).await.unwrap();
        (stored, receipt.is_some(), keys)
    })
    .await;
    let winners: Vec<&DomainKeyRecord> = raced.iter().filter(|(_, won, _)| *won).map(|(_, _, k)| k).collect();
    assert_eq!(winners.len(), 1, "exactly one process stores version 1");
    for (stored, _, _) in &raced {
        assert_eq!(stored, winners[0], "every caller gets the stored version back");
    }
    for s in [&a, &b] {
        assert_eq!(s.domain_keys(&domain()).await.unwrap(), vec![winners[0].clone()]);
    }
    let (two, receipt) = b.add_domain_keys(&domain_keys(2), &event("domain.keys", DOMAIN)).await.unwrap();
    assert!(receipt.is_some());
    assert_eq!(two, domain_keys(2));
    assert_eq!(a.domain_keys(&domain()).await.unwrap(), vec![winners[0].clone(), domain_keys(2)], "oldest first");
}

/// A message id whose time is `secs` seconds after the ULID epoch.
fn ulid_at(secs: u64, n: u64) -> Ulid {
    Ulid::from_parts(ULID_EPOCH_MS + secs * 1000, u128::from(n))
}

/// Retention sweepers on both handles at once remove each expired row
/// exactly once, only rows of the domain and before the cutoff, oldest first
/// within a batch, and each batch that removed anything is one audit record
/// with its count. Retention settings round-trip.
pub async fn expiry_removes_each_row_once<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let keep_domain: Domain = "keep.test".parse().unwrap();
    a.ensure_domain(&keep_domain, NOW).await.unwrap();
    let keep = InboxRecord { address: "keep@keep.test".parse().unwrap(), ..inbox_record("x", 1, 1) };
    b.create_inbox(&keep, &event("inbox.create", "keep")).await.unwrap();
    // Forty messages a second apart in each domain's inboxes.
    let rows: Vec<NewMessage> = (0..40u64)
        .map(|n| {
            let (o, inbox) = match n % 3 {
                0 => (owner(1), address("bot")),
                1 => (owner(2), address("other")),
                _ => (owner(1), keep.address.clone()),
            };
            NewMessage { owner: o, inbox, id: ulid_at(n, n), size: 10, summary: Default::default(), facts: Default::default() }
        })
        .collect();
    a.index_messages(&rows).await.unwrap();
    let cutoff = crate::received_at(ulid_at(30, 0));
    let expected: BTreeSet<Ulid> =
        rows.iter().filter(|m| m.inbox.domain() == DOMAIN && m.received_at() < cutoff).map(|m| m.id).collect();
    assert!(!expected.is_empty());
    let head = a.audit_head().await.unwrap();
    let swept = on_both(&a, &b, 4, |s, _| async move {
        let mut batches = Vec::new();
        loop {
            let ev = |count: u64| {
                AuditEvent::ok(Actor::System, "message.expire", DOMAIN)
                    .with_detail(serde_json::json!({ "count": count }))
            };
            let batch = s.expire_messages(&domain(), cutoff, 3, &ev).await.unwrap();
            if batch.is_empty() {
                return batches;
            }
            assert!(batch.len() <= 3, "at most the limit");
            batches.push(batch);
        }
    })
    .await;
    let batches: Vec<Vec<crate::IndexedMessage>> = swept.into_iter().flatten().collect();
    let removed: Vec<Ulid> = batches.iter().flatten().map(|m| m.id).collect();
    let unique: BTreeSet<Ulid> = removed.iter().copied().collect();
    assert_eq!(unique.len(), removed.len(), "a row was expired by two sweepers");
    assert_eq!(unique, expected, "exactly the domain's rows before the cutoff");
    for batch in &batches {
        let times: Vec<UnixTime> = batch.iter().map(|m| m.received_at).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first within a batch: {times:?}");
    }
    let log = verified_log(&b, "expiry").await;
    let records: Vec<&AuditRecord> = log.iter().filter(|r| r.seq > head.seq).collect();
    assert_eq!(records.len(), batches.len(), "one record per batch that removed rows");
    let counted: u64 = records.iter().map(|r| r.detail["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(counted, removed.len() as u64, "the records count the removed rows");
    for s in [&a, &b] {
        for inbox in [address("bot"), address("other"), keep.address.clone()] {
            for m in s
                .messages_since(&owner(1), &inbox, 0, None, ALL)
                .await
                .unwrap()
                .into_iter()
                .chain(s.messages_since(&owner(2), &inbox, 0, None, ALL).await.unwrap())
            {
                assert!(!expected.contains(&m.id), "expired row {} is still listed", m.id);
            }
        }
    }
    // Retention settings round-trip through either handle.
    a.set_domain_retention(&domain(), Some(DAY), &event("domain.retention", DOMAIN)).await.unwrap();
    let retentions: BTreeMap<Domain, Option<i64>> = b.domain_retentions().await.unwrap().into_iter().collect();
    assert_eq!(retentions, BTreeMap::from([(domain(), Some(DAY)), (keep_domain.clone(), None)]));
    b.set_domain_retention(&domain(), None, &event("domain.retention", DOMAIN)).await.unwrap();
    let retentions: BTreeMap<Domain, Option<i64>> = a.domain_retentions().await.unwrap().into_iter().collect();
    assert_eq!(retentions, BTreeMap::from([(domain(), None), (keep_domain, None)]), "cleared");
}

/// The wall clock in Unix seconds (lookups answer expiry at the store's clock,
/// which is the system's for every backend under test).
fn wall_clock() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An inbox whose expiry has passed is absent to RCPT, AUTH and the broker's
/// lookup on both handles (while still listed, and still taken for creation);
/// an inbox expiring later and one without expiry are present. Removal
/// (`remove_expired_inbox`) racing on both handles removes each expired inbox
/// with its index rows exactly once, with one `inbox.expire` record per inbox
/// counting its messages, and never touches a live one. An expiry not after
/// the creation is `Invalid`.
pub async fn expired_inboxes_are_absent_and_swept_once<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let wall = wall_clock();
    // Expired long ago (by every clock), four of each owner; one expiring tomorrow.
    let expired: Vec<InboxRecord> = (0..8u32)
        .map(|n| InboxRecord {
            expires_at: Some(NOW + 10 + i64::from(n)),
            ..inbox_record(&format!("gone-{n}"), 1 + n % 2, 1 + n % 2)
        })
        .collect();
    let live = InboxRecord { expires_at: Some(wall + DAY), ..inbox_record("live", 1, 1) };
    for (i, inbox) in expired.iter().chain([&live]).enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        s.create_inbox(inbox, &event("inbox.create", inbox.address.as_str())).await.unwrap();
    }
    let backwards = InboxRecord { expires_at: Some(NOW), ..inbox_record("backwards", 1, 1) };
    invalid(a.create_inbox(&backwards, &event("inbox.create", "backwards")).await, "an expiry not after creation");
    let taken = InboxRecord { expires_at: None, ..expired[0].clone() };
    conflict(b.create_inbox(&taken, &event("inbox.create", "again")).await, "an expired inbox not swept yet is still taken");
    // Messages in every inbox: 1 + n in gone-n, 2 in live, 1 in bot.
    let mut rows = Vec::new();
    for (n, inbox) in expired.iter().enumerate() {
        for m in 0..=n as u64 {
            rows.push(NewMessage { owner: inbox.owner.clone(), inbox: inbox.address.clone(), id: ulid(n as u64 * 100 + m), size: 1, summary: Default::default(), facts: Default::default() });
        }
    }
    for m in 0..2 {
        rows.push(NewMessage { owner: owner(1), inbox: live.address.clone(), id: ulid(10_000 + m), size: 1, summary: Default::default(), facts: Default::default() });
    }
    rows.push(NewMessage { owner: owner(1), inbox: address("bot"), id: ulid(20_000), size: 1, summary: Default::default(), facts: Default::default() });
    a.index_messages(&rows).await.unwrap();

    for (i, s) in [&a, &b].into_iter().enumerate() {
        let ctx = format!("handle {i}");
        for inbox in &expired {
            assert_eq!(s.recipient(&inbox.address).await.unwrap(), None, "{ctx}: RCPT to expired {}", inbox.address);
            let facts = s
                .auth_facts(&agentkeys_core::Credentials { address: inbox.address.clone(), key_hash: key_hash(1) })
                .await
                .unwrap();
            assert_eq!(facts.inbox, None, "{ctx}: AUTH facts of expired {}", inbox.address);
            let (_, owner_of) = s.grants_and_inbox_owner(&inbox.agent, &inbox.address).await.unwrap();
            assert_eq!(owner_of, None, "{ctx}: the broker's lookup of expired {}", inbox.address);
        }
        let found = s.recipient(&live.address).await.unwrap();
        assert_eq!(found.map(|r| (r.owner, r.expires_at)), Some((owner(1), live.expires_at)), "{ctx}: live inbox");
        let found = s.recipient(&address("bot")).await.unwrap();
        assert_eq!(found.map(|r| r.expires_at), Some(None), "{ctx}: an inbox without expiry");
        let listed: BTreeMap<Address, Option<UnixTime>> =
            s.list_inboxes(None).await.unwrap().into_iter().map(|i| (i.address, i.expires_at)).collect();
        for inbox in expired.iter().chain([&live]) {
            assert_eq!(listed.get(&inbox.address), Some(&inbox.expires_at), "{ctx}: listed with its expiry");
        }
        let due: Vec<Address> = s.expired_inboxes(wall, 100).await.unwrap().into_iter().map(|i| i.address).collect();
        let want: Vec<Address> = expired.iter().map(|i| i.address.clone()).collect();
        assert_eq!(due, want, "{ctx}: the expired ones, earliest expiry first");
        assert_eq!(s.expired_inboxes(wall, 3).await.unwrap().len(), 3, "{ctx}: at most the limit");
    }

    // Sweepers on both handles race over every expired inbox (and the live one).
    let head = a.audit_head().await.unwrap();
    let mut targets: Vec<Address> = expired.iter().map(|i| i.address.clone()).collect();
    targets.push(live.address.clone());
    targets.push(address("nobody"));
    let targets = Arc::new(targets);
    let results = on_both(&a, &b, 6, |s, task| {
        let targets = Arc::clone(&targets);
        async move {
            let mut removed = Vec::new();
            // Each task walks the list from another start.
            for k in 0..targets.len() {
                let target = &targets[(k + task * 3) % targets.len()];
                let ev = |messages: u64| {
                    AuditEvent::ok(Actor::System, crate::OP_INBOX_EXPIRE, target.as_str())
                        .with_detail(serde_json::json!({ "messages": messages }))
                };
                if s.remove_expired_inbox(target, wall, &ev).await.unwrap().is_some() {
                    removed.push(target.clone());
                }
            }
            removed
        }
    })
    .await;
    let removed: Vec<Address> = results.into_iter().flatten().collect();
    let unique: BTreeSet<Address> = removed.iter().cloned().collect();
    assert_eq!(unique.len(), removed.len(), "an inbox was removed by two sweepers: {removed:?}");
    assert_eq!(unique, expired.iter().map(|i| i.address.clone()).collect(), "exactly the expired inboxes");
    let log = verified_log(&b, "inbox expiry").await;
    let records: Vec<&AuditRecord> = log.iter().filter(|r| r.seq > head.seq).collect();
    assert_eq!(records.len(), expired.len(), "one record per removed inbox");
    for (n, inbox) in expired.iter().enumerate() {
        let record = records.iter().find(|r| r.subject == inbox.address.as_str()).expect("a record per inbox");
        assert_eq!(record.detail["messages"].as_u64(), Some(n as u64 + 1), "{}: counts its index rows", inbox.address);
    }
    for (i, s) in [&a, &b].into_iter().enumerate() {
        assert!(s.expired_inboxes(wall, 100).await.unwrap().is_empty(), "handle {i}: nothing left to sweep");
        let listed: BTreeSet<Address> = s.list_inboxes(None).await.unwrap().into_iter().map(|i| i.address).collect();
        for inbox in &expired {
            assert!(!listed.contains(&inbox.address), "handle {i}: {} is still listed", inbox.address);
            let left = s.messages_since(&inbox.owner, &inbox.address, 0, None, ALL).await.unwrap();
            assert!(left.is_empty(), "handle {i}: index rows of {} remain", inbox.address);
        }
        assert_eq!(s.messages_since(&owner(1), &live.address, 0, None, ALL).await.unwrap().len(), 2, "handle {i}");
        assert_eq!(s.messages_since(&owner(1), &address("bot"), 0, None, ALL).await.unwrap().len(), 1, "handle {i}");
        assert!(listed.contains(&live.address) && listed.contains(&address("bot")), "handle {i}");
    }
    // Removed, the address is free again.
    a.create_inbox(&taken, &event("inbox.create", "again")).await.unwrap();
    assert_eq!(b.recipient(&taken.address).await.unwrap().map(|r| r.expires_at), Some(None));
}

/// Inboxes an agent created under a grant (`create_granted_inbox`) end with
/// it: shortening the grant ends them no later than its new expiry, narrowing
/// away `create` ends them now (the store's clock), revoking it ends them at
/// the revocation time (a second revocation changes nothing). Each change that
/// ends inboxes appends one `inbox.end_with_grant` record, with the change's
/// actor, in its transaction; other grants' inboxes, inboxes created without a
/// grant and another owner's are untouched. A granted inbox needs an expiry.
pub async fn inboxes_end_with_the_grant_that_created_them<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let g1 = grant_record(11, 1, 1, "signup-*@conformance.test", "read,create");
    let g3 = grant_record(13, 1, 1, "signup-*@conformance.test", "read,create");
    let g2 = grant_record(12, 2, 2, "signup-*@conformance.test", "read,create");
    for g in [&g1, &g2, &g3] {
        a.add_grant(g, &event("grant.create", g.id.as_str())).await.unwrap();
    }
    let granted = |local: &str, owner_n: u32, expires_at: UnixTime| InboxRecord {
        expires_at: Some(expires_at),
        ..inbox_record(local, owner_n, owner_n)
    };
    let s1 = granted("signup-1", 1, NOW + DAY - 10);
    let s2 = granted("signup-2", 1, NOW + DAY);
    // Ends "now" only if it would live past the store's clock.
    let wall = wall_clock();
    let s3 = granted("signup-3", 1, wall + DAY);
    let o1 = granted("signup-o", 2, NOW + DAY);
    let plain = inbox_record("signup-plain", 1, 1);
    a.create_granted_inbox(&s1, &g1.id, &event("inbox.create", "s1")).await.unwrap();
    b.create_granted_inbox(&s2, &g1.id, &event("inbox.create", "s2")).await.unwrap();
    a.create_granted_inbox(&s3, &g3.id, &event("inbox.create", "s3")).await.unwrap();
    b.create_granted_inbox(&o1, &g2.id, &event("inbox.create", "o1")).await.unwrap();
    a.create_inbox(&plain, &event("inbox.create", "plain")).await.unwrap();
    let no_expiry = inbox_record("signup-x", 1, 1);
    invalid(a.create_granted_inbox(&no_expiry, &g1.id, &event("inbox.create", "x")).await, "a granted inbox without expiry");
    let head = a.audit_head().await.unwrap();

    // Shortened: g1's inboxes end no later than the grant.
    let shorter = Grant { expires_at: NOW + 100, ..g1.clone() };
    b.change_owner_grant(&owner(1), &g1, &shorter, &AuditEvent::ok(Actor::Owner(owner(1)), "grant.change", "g11")).await.unwrap();
    for s in [&a, &b] {
        let e = expiries(s).await;
        assert_eq!((e["signup-1"], e["signup-2"]), (Some(NOW + 100), Some(NOW + 100)), "shortened with the grant");
        assert_eq!((e["signup-3"], e["signup-o"], e["signup-plain"]), (Some(wall + DAY), Some(NOW + DAY), None), "others untouched");
    }
    // Narrowed away `create`: g3's inbox ends now.
    let before_narrowing = wall_clock();
    let narrowed = Grant { scopes: "read".parse().unwrap(), ..g3.clone() };
    a.change_owner_grant(&owner(1), &g3, &narrowed, &event("grant.change", "g13")).await.unwrap();
    let s3_end = expiries(&b).await["signup-3"].unwrap();
    assert!((before_narrowing..=wall_clock()).contains(&s3_end), "ended at the store's now: {s3_end}");
    let due: Vec<String> = b.expired_inboxes(wall_clock(), 100).await.unwrap().iter().map(|i| i.address.local_part().to_owned()).collect();
    assert!(due.contains(&"signup-3".to_owned()), "the sweeper sees it: {due:?}");
    // Revoked (twice): ends at the first revocation; another owner's grant alike.
    a.revoke_owner_grant(&owner(1), &g1.id, NOW + 50, &event("grant.revoke", "g11")).await.unwrap();
    b.revoke_owner_grant(&owner(1), &g1.id, NOW + 60, &event("grant.revoke", "g11")).await.unwrap();
    b.revoke_grant(&g2.id, NOW + 70, &event("grant.revoke", "g12")).await.unwrap();
    for s in [&a, &b] {
        let e = expiries(s).await;
        assert_eq!((e["signup-1"], e["signup-2"], e["signup-o"]), (Some(NOW + 50), Some(NOW + 50), Some(NOW + 70)));
        assert_eq!(e["signup-plain"], None, "an inbox created without a grant never ends with one");
    }

    let log = verified_log(&a, "grant-ended inboxes").await;
    let ended: Vec<&AuditRecord> =
        log.iter().filter(|r| r.seq > head.seq && r.operation == crate::OP_INBOX_END_WITH_GRANT).collect();
    let summary: Vec<(String, u64, String)> = ended
        .iter()
        .map(|r| (r.subject.clone(), r.detail["count"].as_u64().unwrap(), r.detail["owner"].as_str().unwrap().to_owned()))
        .collect();
    let row = |g: &Grant, count: u64, o: u32| (g.id.to_string(), count, owner(o).to_string());
    assert_eq!(
        summary,
        vec![row(&g1, 2, 1), row(&g3, 1, 1), row(&g1, 2, 1), row(&g2, 1, 2)],
        "one record per ending change, none for the second revocation"
    );
    assert_eq!(ended[0].actor, Actor::Owner(owner(1)), "with the change's actor");
    assert_eq!(ended[0].detail["inboxes"], serde_json::json!([address("signup-1"), address("signup-2")]));
}

/// A grant revoked in the very second an inbox was created under it (an agent
/// creates a sign-up inbox, its owner stops it at once): the revocation
/// succeeds and the inbox ends one second after its creation, since an
/// expiry is always after the creation.
pub async fn a_grant_ended_in_its_inboxs_creation_second_ends_it_a_second_later<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let g = grant_record(21, 1, 1, "signup-*@conformance.test", "read,create");
    a.add_grant(&g, &event("grant.create", g.id.as_str())).await.unwrap();
    let created = InboxRecord { created_at: NOW + 50, expires_at: Some(NOW + DAY), ..inbox_record("signup-now", 1, 1) };
    b.create_granted_inbox(&created, &g.id, &event("inbox.create", "now")).await.unwrap();
    b.revoke_owner_grant(&owner(1), &g.id, NOW + 50, &event("grant.revoke", "g21")).await.unwrap();
    for s in [&a, &b] {
        assert_eq!(expiries(s).await["signup-now"], Some(NOW + 51), "one second after its creation");
    }
}

/// A hosted domain is shared until assigned; `assign_domain` sets (or, with
/// `None`, clears) its owner, audited, seen by every handle; an unknown domain
/// or owner is `NotFound` and records nothing.
pub async fn domains_are_assigned_to_one_owner_or_shared<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    assert_eq!(b.domain_owner(&domain()).await.unwrap(), None, "shared until assigned");
    a.assign_domain(&domain(), Some(&owner(2)), &event(crate::OP_DOMAIN_ASSIGN, DOMAIN)).await.unwrap();
    assert_eq!(b.domain_owner(&domain()).await.unwrap(), Some(owner(2)));
    b.assign_domain(&domain(), Some(&owner(1)), &event(crate::OP_DOMAIN_ASSIGN, DOMAIN)).await.unwrap();
    assert_eq!(a.domain_owner(&domain()).await.unwrap(), Some(owner(1)));
    let head = a.audit_head().await.unwrap();
    let elsewhere: Domain = "elsewhere.test".parse().unwrap();
    not_found(a.assign_domain(&elsewhere, Some(&owner(1)), &event(crate::OP_DOMAIN_ASSIGN, "x")).await, "a domain not hosted");
    not_found(b.assign_domain(&domain(), Some(&owner(9)), &event(crate::OP_DOMAIN_ASSIGN, "x")).await, "an unknown owner");
    assert_eq!(a.audit_head().await.unwrap().seq, head.seq, "refusals record nothing");
    assert_eq!(b.domain_owner(&domain()).await.unwrap(), Some(owner(1)), "a refused change changes nothing");
    assert_eq!(b.domain_owner(&elsewhere).await.unwrap(), None);
    a.assign_domain(&domain(), None, &event(crate::OP_DOMAIN_ASSIGN, DOMAIN)).await.unwrap();
    assert_eq!(b.domain_owner(&domain()).await.unwrap(), None, "shared again");
    let log = verified_log(&b, "domain assignment").await;
    assert_eq!(log.iter().filter(|r| r.operation == crate::OP_DOMAIN_ASSIGN).count(), 3);
}

/// Every inbox's expiry by local part, as `s` lists them.
async fn expiries<S: StoreUnderTest>(s: &S) -> BTreeMap<String, Option<UnixTime>> {
    s.list_inboxes(None).await.unwrap().into_iter().map(|i| (i.address.local_part().to_owned(), i.expires_at)).collect()
}

// ---------------------------------------------------------------------------
// 7. Errors as documented; refused writes change nothing.

/// Every documented `NotFound`, `Conflict` and `Invalid` of the main writes,
/// through both handles; none of them appends an audit record or leaves a row.
pub async fn writes_answer_errors_as_documented<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    a.create_key(&key_record(1, 1), &event("key.create", "k1")).await.unwrap();
    b.add_grant(&grant_record(1, 1, 1, "bot@conformance.test", "send"), &event("grant.create", "g1")).await.unwrap();
    a.add_domain(
        &DomainKeyRecord { domain: "hosted.test".parse().unwrap(), ..domain_keys(1) },
        NOW,
        &event("domain.add", "h"),
    )
    .await
    .unwrap();
    a.enqueue_outbound(&outbound(1, 1, 0)).await.unwrap();
    let head = a.audit_head().await.unwrap();
    let e = |op: &str| event(op, "refused");
    for (s, h) in [(&a, "first"), (&b, "second")] {
        let c = |what: &str| format!("{h} handle: {what}");
        // Domains.
        let hosted = DomainKeyRecord { domain: "hosted.test".parse().unwrap(), ..domain_keys(1) };
        conflict(s.add_domain(&hosted, NOW, &e("domain.add")).await, &c("add_domain of a hosted domain"));
        not_found(
            s.remove_domain(&"nowhere.test".parse().unwrap(), &e("domain.remove")).await,
            &c("remove_domain unknown"),
        );
        let text = invalid(s.remove_domain(&domain(), &e("domain.remove")).await, &c("remove_domain with inboxes"));
        assert!(text.contains("bot@conformance.test"), "{}: the refusal names the inboxes: {text}", c("remove_domain"));
        let unhosted = DomainKeyRecord { domain: "nowhere.test".parse().unwrap(), ..domain_keys(2) };
        not_found(s.add_domain_keys(&unhosted, &e("domain.keys")).await, &c("add_domain_keys of an unhosted domain"));
        not_found(
            s.set_domain_retention(&"nowhere.test".parse().unwrap(), Some(DAY), &e("domain.retention")).await,
            &c("retention of an unhosted domain"),
        );
        invalid(
            s.set_domain_retention(&domain(), Some(0), &e("domain.retention")).await,
            &c("a non-positive retention"),
        );
        // Owners and agents.
        conflict(s.add_owner(&owner_record(1), &e("owner.create")).await, &c("add_owner twice"));
        not_found(s.add_agent(&agent_record(9, 9), &e("agent.create")).await, &c("add_agent of an unknown owner"));
        conflict(s.add_agent(&agent_record(1, 2), &e("agent.create")).await, &c("add_agent twice"));
        let t = |o: u32| EnrollmentTicketRecord {
            owner: owner(o),
            code_hash: [1; 32],
            expires_at: NOW + DAY,
            consumed_at: None,
        };
        conflict(
            s.add_owner_with_enrollment(&owner_record(1), &t(1), &e("owner.create")).await,
            &c("add_owner_with_enrollment twice"),
        );
        invalid(
            s.add_owner_with_enrollment(&owner_record(8), &t(7), &e("owner.create")).await,
            &c("a ticket for another owner"),
        );
        not_found(
            s.issue_enrollment(&t(9), &e("owner.enrollment_issue")).await,
            &c("issue_enrollment of an unknown owner"),
        );
        // Inboxes.
        let foreign = InboxRecord { address: "x@nowhere.test".parse().unwrap(), ..inbox_record("x", 1, 1) };
        invalid(s.create_inbox(&foreign, &e("inbox.create")).await, &c("create_inbox in an unhosted domain"));
        not_found(
            s.create_inbox(&inbox_record("new", 1, 9), &e("inbox.create")).await,
            &c("create_inbox of an unknown agent"),
        );
        conflict(s.create_inbox(&inbox_record("bot", 1, 1), &e("inbox.create")).await, &c("create_inbox twice"));
        invalid(
            s.create_inbox(&inbox_record("new", 2, 1), &e("inbox.create")).await,
            &c("create_inbox for another owner"),
        );
        not_found(
            s.set_inbox_status(&address("nobody"), InboxStatus::Disabled, &e("inbox.set_status")).await,
            &c("status of no inbox"),
        );
        // Keys.
        not_found(s.create_key(&key_record(9, 9), &e("key.create")).await, &c("create_key of an unknown agent"));
        conflict(
            s.create_key(&KeyRecord { hash: key_hash(99), ..key_record(1, 1) }, &e("key.create")).await,
            &c("create_key id twice"),
        );
        conflict(
            s.create_key(&KeyRecord { id: key_id(98), ..key_record(1, 1) }, &e("key.create")).await,
            &c("create_key secret twice"),
        );
        not_found(s.revoke_key(&key_id(9), NOW, &e("key.revoke")).await, &c("revoke_key unknown"));
        not_found(
            s.revoke_owner_key(&owner(1), &key_id(9), NOW, &e("key.revoke")).await,
            &c("revoke_owner_key unknown"),
        );
        // Grants.
        not_found(
            s.add_grant(&grant_record(9, 1, 9, "bot-*", "read"), &e("grant.create")).await,
            &c("add_grant to an unknown agent"),
        );
        invalid(
            s.add_grant(&grant_record(9, 2, 1, "bot-*", "read"), &e("grant.create")).await,
            &c("add_grant by another owner"),
        );
        conflict(s.add_grant(&grant_record(1, 1, 1, "bot-*", "read"), &e("grant.create")).await, &c("add_grant twice"));
        for inbox in ["other@conformance.test", "nobody@conformance.test"] {
            not_found(
                s.add_grant(&grant_record(9, 1, 1, inbox, "read"), &e("grant.create")).await,
                &c("an exact grant of no own inbox"),
            );
        }
        not_found(s.revoke_grant(&grant_id(9), NOW, &e("grant.revoke")).await, &c("revoke_grant unknown"));
        not_found(
            s.revoke_owner_grant(&owner(1), &grant_id(9), NOW, &e("grant.revoke")).await,
            &c("revoke_owner_grant unknown"),
        );
        // Pairing.
        not_found(
            s.approve_pairing(&[9; 32], &agent_record(60, 1), NOW, &e("pairing.approve")).await,
            &c("approve no request"),
        );
        not_found(
            s.collect_pairing(&[9; 32], &key_record(60, 1), NOW, &e("pairing.collect")).await,
            &c("collect no request"),
        );
        // The outbound queue.
        conflict(s.enqueue_outbound(&outbound(1, 1, 0)).await, &c("enqueue a queued message again"));
        invalid(s.enqueue_outbound(&outbound(2, 0, 0)).await, &c("enqueue without recipients"));
        invalid(
            s.enqueue_outbound(&NewOutbound { size: u64::MAX, ..outbound(3, 1, 0) }).await,
            &c("enqueue a size that does not fit"),
        );
        not_found(s.queue_show("01NOSUCH").await, &c("queue_show unknown"));
        not_found(s.queue_retry("01NOSUCH", NOW).await, &c("queue_retry unknown"));
        not_found(s.queue_delete("01NOSUCH").await, &c("queue_delete unknown"));
    }
    // Nothing was written by any refusal.
    for s in [&a, &b] {
        assert_eq!(s.audit_head().await.unwrap(), head, "refused writes append no audit record");
        assert_eq!(s.list_owners().await.unwrap().len(), 2, "no owner left behind");
        assert_eq!(s.list_agents(None).await.unwrap().len(), 2, "no agent left behind");
        assert_eq!(s.list_inboxes(None).await.unwrap().len(), 2, "no inbox left behind");
        assert_eq!(s.list_keys(&agent(1)).await.unwrap(), vec![key_record(1, 1)], "no key left behind, none revoked");
        assert_eq!(s.list_grants(None).await.unwrap().len(), 1, "no grant left behind");
        assert_eq!(s.list_queue().await.unwrap().len(), 1, "no queue row left behind");
        assert_eq!(s.list_domains().await.unwrap().len(), 2, "no domain added or removed");
        assert_eq!(s.domain_keys(&domain()).await.unwrap(), vec![], "no keys for the refused domain");
        assert_eq!(s.enrollment_ticket(&owner(8)).await.unwrap(), None);
    }
}

/// Revoking a key or grant twice (any of the three doors) succeeds, keeps the
/// first revocation time and records both attempts.
pub async fn revoking_twice_keeps_the_first_time<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    for n in [1, 2] {
        a.create_key(&key_record(n, 1), &event("key.create", "k")).await.unwrap();
        b.add_grant(&grant_record(n, 1, 1, "bot@conformance.test", "read"), &event("grant.create", "g")).await.unwrap();
    }
    let head = a.audit_head().await.unwrap();
    a.revoke_key(&key_id(1), NOW + 1, &event("key.revoke", "k1")).await.unwrap();
    b.revoke_owner_key(&owner(1), &key_id(1), NOW + 2, &event("key.revoke", "k1")).await.unwrap();
    b.revoke_owner_key(&owner(1), &key_id(2), NOW + 3, &event("key.revoke", "k2")).await.unwrap();
    a.revoke_key(&key_id(2), NOW + 4, &event("key.revoke", "k2")).await.unwrap();
    b.revoke_grant(&grant_id(1), NOW + 5, &event("grant.revoke", "g1")).await.unwrap();
    a.revoke_owner_grant(&owner(1), &grant_id(1), NOW + 6, &event("grant.revoke", "g1")).await.unwrap();
    a.revoke_owner_grant(&owner(1), &grant_id(2), NOW + 7, &event("grant.revoke", "g2")).await.unwrap();
    b.revoke_grant(&grant_id(2), NOW + 8, &event("grant.revoke", "g2")).await.unwrap();
    for s in [&a, &b] {
        let keys: Vec<Option<UnixTime>> = s.list_keys(&agent(1)).await.unwrap().iter().map(|k| k.revoked_at).collect();
        assert_eq!(keys, vec![Some(NOW + 1), Some(NOW + 3)], "the first revocation time stays");
        let grants: Vec<Option<UnixTime>> =
            by_id(s.list_owner_grants(&owner(1)).await.unwrap()).iter().map(|g| g.revoked_at).collect();
        assert_eq!(grants, vec![Some(NOW + 5), Some(NOW + 7)], "the first revocation time stays");
    }
    assert_eq!(b.audit_head().await.unwrap().seq, head.seq + 8, "every attempt is recorded");
}

/// Audited writes describe a change that happened: an event whose outcome is
/// not `ok` is refused as `Invalid`, and nothing is written (refusals go
/// through `audit_append`, which takes any outcome).
pub async fn audited_writes_refuse_events_that_are_not_ok<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let head = a.audit_head().await.unwrap();
    for outcome in [Outcome::Denied, Outcome::Failed] {
        let e = |op: &str| AuditEvent::ok(Actor::Operator, op, "x").with_outcome(outcome);
        invalid(a.add_owner(&owner_record(3), &e("owner.create")).await, "add_owner with a refusal event");
        invalid(b.add_agent(&agent_record(3, 1), &e("agent.create")).await, "add_agent with a refusal event");
        invalid(a.create_inbox(&inbox_record("new", 1, 1), &e("inbox.create")).await, "create_inbox");
        invalid(b.create_key(&key_record(3, 1), &e("key.create")).await, "create_key");
        invalid(a.add_grant(&grant_record(3, 1, 1, "bot-*", "read"), &e("grant.create")).await, "add_grant");
        invalid(
            b.set_inbox_status(&address("bot"), InboxStatus::Disabled, &e("inbox.set_status")).await,
            "set_inbox_status",
        );
    }
    assert_eq!(b.audit_head().await.unwrap(), head, "nothing appended");
    assert_eq!(a.list_owners().await.unwrap().len(), 2);
    assert_eq!(b.list_inboxes(None).await.unwrap().len(), 2);
    // audit_append takes them.
    let denied = AuditEvent::ok(Actor::Operator, "owner.create", "x").with_outcome(Outcome::Denied);
    let r = a.audit_append(&denied).await.unwrap();
    assert_eq!(r.seq(), head.seq + 1);
    let log = verified_log(&b, "refusal appended").await;
    assert_eq!(log.last().map(|r| r.outcome), Some(Outcome::Denied));
}

// ---------------------------------------------------------------------------
// 8. Failure counters are shared.

/// [`NOW`] in milliseconds: the clock of the failure counters.
const NOW_MS: UnixMillis = NOW * 1000;

fn throttle_key(n: u32) -> ThrottleKey {
    ThrottleKey::new(format!("conformance/{n}")).expect("throttle key")
}

fn failure_window(limit: u32, secs: u64) -> FailureWindow {
    FailureWindow::new(limit, Duration::from_secs(secs)).expect("a window that is on")
}

/// Contract 8, a budget of uses: concurrent `record_unless_full` through two
/// handles admits exactly `limit` uses of a fresh key; a full key records
/// nothing (its refusals do not push its end later) and admits again once the
/// oldest counted use has left the window; failures and uses share a key's tally.
pub async fn throttle_uses_are_admitted_up_to_the_limit_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let five = failure_window(5, 60);
    for round in 0..3u32 {
        let key = throttle_key(100 + round);
        let admitted = on_both(&a, &b, 16, |s, i| {
            let key = key.clone();
            async move { s.record_unless_full(&key, NOW_MS + i as i64, five).await.unwrap() }
        })
        .await;
        let recorded: Vec<u32> = admitted.iter().filter(|x| x.recorded).map(|x| x.tally.count).collect();
        let mut counts = recorded.clone();
        counts.sort_unstable();
        assert_eq!(counts, [1, 2, 3, 4, 5], "round {round}: exactly the limit admitted, each count once");
        assert!(admitted.iter().filter(|x| !x.recorded).all(|x| x.tally.is_full_at(NOW_MS + 16)), "refusals see it full");
    }
    // One use a second: the sixth is refused until the first leaves, and a
    // refusal does not move that time.
    let key = throttle_key(110);
    for i in 0..5i64 {
        let s = if i % 2 == 0 { &a } else { &b };
        assert!(s.record_unless_full(&key, NOW_MS + i * 1000, five).await.unwrap().recorded);
    }
    for at in [5_000, 30_000, 59_999] {
        let refused = a.record_unless_full(&key, NOW_MS + at, five).await.unwrap();
        assert_eq!(refused, Admission { recorded: false, tally: FailureTally { count: 5, full_until: Some(NOW_MS + 60_000) } });
    }
    let again = b.record_unless_full(&key, NOW_MS + 60_000, five).await.unwrap();
    assert!(again.recorded, "admitted when the oldest use left the window");
    assert_eq!(again.tally, FailureTally { count: 5, full_until: Some(NOW_MS + 61_000) });
    // Failures recorded on a key count against its uses.
    let key = throttle_key(111);
    for _ in 0..5 {
        a.record_failure(&key, NOW_MS, five).await.unwrap();
    }
    assert!(!b.record_unless_full(&key, NOW_MS + 1, five).await.unwrap().recorded);
}

/// Contract 8, named cases: failures recorded through two handles add up and
/// are read the same through both; reading records nothing; 24 concurrent
/// records on both handles answer the counts 1 to 24, each once; past the
/// limit a key counts its `limit` newest failures and is full until the oldest
/// of them leaves the window; a window's end forgets its failures.
pub async fn throttle_failures_add_up_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let wide = failure_window(1000, 600);
    for i in 0..3 {
        let t = a.record_failure(&throttle_key(1), NOW_MS + i, wide).await.unwrap();
        assert_eq!(t.count, u32::try_from(i + 1).unwrap(), "record {i} through the first handle");
    }
    for i in 3..7 {
        let t = b.record_failure(&throttle_key(1), NOW_MS + i, wide).await.unwrap();
        assert_eq!(t.count, u32::try_from(i + 1).unwrap(), "record {i} through the second handle adds to the first's");
    }
    for s in [&a, &b, &a] {
        assert_eq!(s.failures(&throttle_key(1), NOW_MS + 10, wide).await.unwrap(), FailureTally { count: 7, full_until: None });
    }
    assert_eq!(b.failures(&throttle_key(2), NOW_MS + 10, wide).await.unwrap().count, 0, "another key is its own");

    // Concurrent records on both handles: none lost, each counted once.
    let mut counts = on_both(&a, &b, 24, |s, i| async move {
        s.record_failure(&throttle_key(3), NOW_MS + 100 + i as i64, wide).await.unwrap().count
    })
    .await;
    counts.sort_unstable();
    assert_eq!(counts, (1..=24).collect::<Vec<u32>>(), "concurrent records answer 1..=24");
    assert_eq!(a.failures(&throttle_key(3), NOW_MS + 200, wide).await.unwrap().count, 24);

    // Concurrent records past the limit: the answers climb to the limit and stay.
    let five = failure_window(5, 60);
    let mut counts =
        on_both(&a, &b, 12, |s, _| async move { s.record_failure(&throttle_key(4), NOW_MS, five).await.unwrap().count })
            .await;
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5]);
    let full = b.failures(&throttle_key(4), NOW_MS + 1, five).await.unwrap();
    assert_eq!(full, FailureTally { count: 5, full_until: Some(NOW_MS + 60_000) });

    // The limit and the window, one failure a second on alternating handles.
    let narrow = failure_window(3, 60);
    let mut answers = Vec::new();
    for i in 0..5i64 {
        let s = if i % 2 == 0 { &a } else { &b };
        answers.push(s.record_failure(&throttle_key(5), NOW_MS + i * 1000, narrow).await.unwrap());
    }
    let expected: Vec<FailureTally> = [(1, None), (2, None), (3, Some(0)), (3, Some(1000)), (3, Some(2000))]
        .into_iter()
        .map(|(count, oldest): (u32, Option<i64>)| FailureTally { count, full_until: oldest.map(|o| NOW_MS + o + 60_000) })
        .collect();
    assert_eq!(answers, expected, "the newest three count; full until the oldest of them leaves");
    let at = |ms: i64| NOW_MS + ms;
    assert!(a.failures(&throttle_key(5), at(61_999), narrow).await.unwrap().is_full_at(at(61_999)));
    assert_eq!(b.failures(&throttle_key(5), at(62_000), narrow).await.unwrap(), FailureTally { count: 2, full_until: None });
    assert_eq!(a.failures(&throttle_key(5), at(64_000), narrow).await.unwrap().count, 0, "the window passed");
    // Reading recorded nothing: a new failure after the window counts alone.
    assert_eq!(b.record_failure(&throttle_key(5), at(70_000), narrow).await.unwrap().count, 1);
}

/// One generated failure-counter call: key, milliseconds after the previous
/// call, through the second handle, record (or read).
type ThrottleStep = (u32, u16, bool, bool);

/// A generated history of failure-counter calls: limit, window (seconds), steps.
fn throttle_history() -> impl Strategy<Value = (u32, u64, Vec<ThrottleStep>)> {
    (1u32..6, 1u64..30, prop::collection::vec((0u32..3, 0u16..12_000, any::<bool>(), any::<bool>()), 1..40))
}

/// Contract 8, a budget of uses, over generated histories on both handles:
/// `record_unless_full` admits exactly when the rule ([`tally`]) over the uses
/// admitted so far says the key is not full, and answers that tally.
pub async fn throttle_uses_generated<B: Backend>(backend: Arc<B>) {
    for_generated("a budget of uses is shared", 12, throttle_history, move |(limit, secs, steps)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let rule = failure_window(limit, secs);
            let mut admitted: HashMap<u32, Vec<UnixMillis>> = HashMap::new();
            let mut now = NOW_MS;
            for (i, (key, later, second, _)) in steps.into_iter().enumerate() {
                now += i64::from(later);
                let s = if second { &b } else { &a };
                let before = tally(admitted.get(&key).cloned().unwrap_or_default(), now, rule);
                let expected = if before.is_full_at(now) {
                    Admission { recorded: false, tally: before }
                } else {
                    admitted.entry(key).or_default().push(now);
                    Admission { recorded: true, tally: tally(admitted[&key].clone(), now, rule) }
                };
                let answer = s.record_unless_full(&throttle_key(key + 1000), now, rule).await.unwrap();
                assert_eq!(answer, expected, "step {i} (key {key}) at +{} ms", now - NOW_MS);
            }
        }
    })
    .await;
}

/// Contract 8 over generated histories on both handles: every answer, of a
/// record or a read, is the rule ([`tally`]) over every failure recorded for
/// the key so far.
pub async fn throttle_failures_generated<B: Backend>(backend: Arc<B>) {
    for_generated("failure counters are shared", 12, throttle_history, move |(limit, secs, steps)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let rule = failure_window(limit, secs);
            let mut recorded: HashMap<u32, Vec<UnixMillis>> = HashMap::new();
            let mut now = NOW_MS;
            for (i, (key, later, second, record)) in steps.into_iter().enumerate() {
                now += i64::from(later);
                let s = if second { &b } else { &a };
                let answer = if record {
                    recorded.entry(key).or_default().push(now);
                    s.record_failure(&throttle_key(key), now, rule).await.unwrap()
                } else {
                    s.failures(&throttle_key(key), now, rule).await.unwrap()
                };
                let expected = tally(recorded.get(&key).cloned().unwrap_or_default(), now, rule);
                assert_eq!(answer, expected, "step {i} (key {key}, record {record}) at +{} ms", now - NOW_MS);
            }
        }
    })
    .await;
}

/// The MX's policy cache over one handle: a policy set through the other
/// handle (another node) is answered within the cache's TTL and not before;
/// one set through the cache applies at once; the open default is cached like
/// any answer.
pub async fn cached_inbox_policies_follow_other_handles_within_the_ttl<B: Backend>(backend: Arc<B>) {
    use agentkeys_core::policy::InboxPolicy;
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let bot = address("bot");
    let ttl = Duration::from_millis(300);
    let cache = crate::CachedInboxPolicies::with_ttl(Arc::new(a.clone()), ttl);
    assert_eq!(cache.inbox_policy(&bot).await.unwrap(), InboxPolicy::default());
    let blocking = InboxPolicy { receive_block: vec!["evil.test".parse().unwrap()], ..Default::default() };
    b.set_inbox_policy(&owner(1), &bot, &blocking, NOW, &event("inbox.policy", bot.as_str())).await.unwrap();
    assert_eq!(cache.inbox_policy(&bot).await.unwrap(), InboxPolicy::default(), "another node's change: not before the TTL");
    tokio::time::sleep(ttl).await;
    assert_eq!(cache.inbox_policy(&bot).await.unwrap(), blocking, "within the TTL");
    let open = InboxPolicy::default();
    cache.set_inbox_policy(&owner(1), &bot, &open, NOW, &event("inbox.policy", bot.as_str())).await.unwrap();
    assert_eq!(cache.inbox_policy(&bot).await.unwrap(), open, "set through the cache: at once");
}

/// Inbox policies (issue 13 §2) are owner-scoped: an owner reads and sets the
/// policy of their own inboxes only; another owner's inbox answers `NotFound`
/// exactly like a missing one, writes nothing and records nothing; the
/// unscoped read (MX, sending doors) sees the policy the inbox's owner set,
/// through either handle, and the open default for inboxes without one.
pub async fn inbox_policies_are_owner_scoped<B: Backend>(backend: Arc<B>) {
    use agentkeys_core::policy::{InboxPolicy, Unauthenticated};
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let (bot, other, missing) = (address("bot"), address("other"), address("nobody"));
    let policy = InboxPolicy {
        receive_allow: vec!["github.com".parse().unwrap()],
        send_block: vec!["x@evil.test".parse().unwrap()],
        unauthenticated: Unauthenticated::Hide,
        ..Default::default()
    };
    for s in [&a, &b] {
        assert_eq!(s.inbox_policy(&bot).await.unwrap(), InboxPolicy::default(), "no policy yet: open");
        assert_eq!(s.owner_inbox_policy(&owner(1), &bot).await.unwrap(), InboxPolicy::default());
    }
    a.set_inbox_policy(&owner(1), &bot, &policy, NOW, &event("inbox.policy", bot.as_str())).await.unwrap();
    let before = verified_log(&a, "after the owner's own change").await.len();
    // Owner 2 on owner 1's inbox, and anyone on a missing inbox: one NotFound.
    let theirs = not_found(b.set_inbox_policy(&owner(2), &bot, &InboxPolicy::default(), NOW, &event("inbox.policy", "x")).await, "another owner's inbox");
    let nobody = not_found(b.set_inbox_policy(&owner(2), &missing, &InboxPolicy::default(), NOW, &event("inbox.policy", "x")).await, "a missing inbox");
    assert_eq!(theirs.replace(bot.as_str(), "?"), nobody.replace(missing.as_str(), "?"), "same answer as a missing inbox");
    not_found(b.owner_inbox_policy(&owner(2), &bot).await, "another owner's policy");
    not_found(a.owner_inbox_policy(&owner(1), &missing).await, "a missing inbox's policy");
    assert_eq!(verified_log(&b, "after refused changes").await.len(), before, "refused changes record nothing");
    for s in [&a, &b] {
        assert_eq!(s.inbox_policy(&bot).await.unwrap(), policy, "the owner's policy, through either handle");
        assert_eq!(s.owner_inbox_policy(&owner(1), &bot).await.unwrap(), policy);
        assert_eq!(s.inbox_policy(&other).await.unwrap(), InboxPolicy::default(), "other inboxes stay open");
        assert_eq!(s.inbox_policy(&missing).await.unwrap(), InboxPolicy::default());
    }
    // A replacement is whole, and the second handle sees it.
    b.set_inbox_policy(&owner(1), &bot, &InboxPolicy::default(), NOW + 1, &event("inbox.policy", bot.as_str())).await.unwrap();
    assert_eq!(a.inbox_policy(&bot).await.unwrap(), InboxPolicy::default());
    // Over the limit: Invalid, nothing written.
    let too_many = InboxPolicy {
        send_block: vec!["a.test".parse().unwrap(); agentkeys_core::policy::MAX_POLICY_PATTERNS + 1],
        ..Default::default()
    };
    invalid(a.set_inbox_policy(&owner(1), &bot, &too_many, NOW, &event("inbox.policy", bot.as_str())).await, "too many patterns");
    assert_eq!(a.inbox_policy(&bot).await.unwrap(), InboxPolicy::default());
}

// ---------------------------------------------------------------------------
// The owner's console (crate::Console): challenges, passkey links, sessions.

fn challenge(n: u32, owner_n: Option<u32>, expires_at: UnixTime) -> crate::ChallengeRecord {
    crate::ChallengeRecord {
        id: format!("ch{n:04}"),
        owner: owner_n.map(owner),
        purpose: "action".to_owned(),
        bound_to: [u8::try_from(n % 251).unwrap(); 32],
        state: format!("{{\"state\":{n}}}"),
        expires_at,
    }
}

fn passkey(n: u32, owner_n: u32) -> crate::PasskeyRecord {
    crate::PasskeyRecord {
        credential_id: format!("cred{n}"),
        owner: owner(owner_n),
        name: format!("passkey {n}"),
        passkey: format!("{{\"pk\":{n}}}"),
        created_at: NOW,
        last_used_at: None,
    }
}

/// Contract 6, console challenges: of concurrent takes of one challenge on
/// both handles exactly one gets it, with what was stored; an expired one is
/// never handed out; a taken one is gone for every handle.
pub async fn console_challenges_are_single_use_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let stored = challenge(1, Some(1), NOW + 60);
    a.put_challenge(&stored, NOW).await.unwrap();
    conflict(b.put_challenge(&stored, NOW).await, "a taken challenge id");
    let raced = on_both(&a, &b, 8, |s, _| async move { s.take_challenge("ch0001", NOW + 1).await.unwrap() }).await;
    let won: Vec<_> = raced.into_iter().flatten().collect();
    assert_eq!(won, vec![stored], "exactly one take gets the challenge, as stored");
    for s in [&a, &b] {
        assert_eq!(s.take_challenge("ch0001", NOW + 1).await.unwrap(), None, "taken once");
        assert_eq!(s.take_challenge("unknown", NOW).await.unwrap(), None, "unknown");
    }
    b.put_challenge(&challenge(2, None, NOW + 60), NOW).await.unwrap();
    assert_eq!(a.take_challenge("ch0002", NOW + 60).await.unwrap(), None, "expired at its expiry second");
    assert_eq!(b.take_challenge("ch0002", NOW).await.unwrap(), None, "an expired take still spends it");
}

/// Contract 6 over generated histories: challenges put and taken in any order
/// through either handle, at any time: each is handed out at most once, only
/// before its expiry, and exactly when it was live and not taken before.
pub async fn console_challenges_generated<B: Backend>(backend: Arc<B>) {
    let strategy = || prop::collection::vec((0u32..6, 0i64..120, any::<bool>(), any::<bool>()), 1..30);
    for_generated("console challenges are single use", 12, strategy, move |steps| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            let mut live: HashMap<u32, UnixTime> = HashMap::new();
            let mut now = NOW;
            for (i, (n, later, second, put)) in steps.into_iter().enumerate() {
                now += later / 10;
                let s = if second { &b } else { &a };
                if put {
                    let expires = now + later;
                    let result = s.put_challenge(&challenge(n, Some(1), expires), now).await;
                    // Putting prunes expired ones first: an id is free again once its challenge expired.
                    live.retain(|_, e| *e > now);
                    match live.entry(n) {
                        std::collections::hash_map::Entry::Occupied(_) => {
                            conflict(result, "a live challenge id");
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            result.unwrap();
                            slot.insert(expires);
                        }
                    }
                } else {
                    let got = s.take_challenge(&format!("ch{n:04}"), now).await.unwrap();
                    let expected = live.remove(&n).filter(|e| *e > now);
                    assert_eq!(got.map(|c| c.expires_at), expected, "step {i}: take of {n} at +{}", now - NOW);
                }
            }
        }
    })
    .await;
}

/// Contract 6, passkey links: of concurrent registrations with one link on
/// both handles exactly one stores its passkey; an expired link, another
/// owner's and a spent one are the same `NotFound`, and change nothing.
pub async fn console_passkey_links_register_once<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let link = crate::PasskeyLinkRecord { token_hash: [5; 32], owner: owner(1), expires_at: NOW + 600 };
    a.issue_passkey_link(&link, &event("owner.passkey_link", "o1")).await.unwrap();
    not_found(
        b.issue_passkey_link(
            &crate::PasskeyLinkRecord { owner: owner(9), token_hash: [6; 32], ..link.clone() },
            &event("owner.passkey_link", "o9"),
        )
        .await,
        "a link for an unknown owner",
    );
    assert_eq!(b.passkey_link_owner(&[5; 32], NOW).await.unwrap(), Some(owner(1)));
    assert_eq!(b.passkey_link_owner(&[5; 32], NOW + 600).await.unwrap(), None, "expired");
    not_found(a.add_passkey(&[5; 32], &passkey(1, 1), NOW + 600, &event("owner.passkey_add", "o1")).await, "expired link");
    not_found(a.add_passkey(&[5; 32], &passkey(2, 2), NOW, &event("owner.passkey_add", "o2")).await, "another owner's link");
    let raced = on_both(&a, &b, 6, |s, i| async move {
        let n = u32::try_from(10 + i).unwrap();
        s.add_passkey(&[5; 32], &passkey(n, 1), NOW + 1, &event("owner.passkey_add", "o1")).await
    })
    .await;
    let won = one_winner(&raced, is_not_found, "concurrent registrations with one link");
    let expected = vec![passkey(u32::try_from(10 + won).unwrap(), 1)];
    assert_eq!(a.list_passkeys(&owner(1)).await.unwrap(), expected);
    assert_eq!(b.passkey_link_owner(&[5; 32], NOW + 2).await.unwrap(), None, "spent");
    let log = verified_log(&a, "passkey links").await;
    assert_eq!(log.iter().filter(|r| r.operation == "owner.passkey_add").count(), 1, "one registration recorded");
    // A credential is registered once, whoever's link.
    b.issue_passkey_link(&crate::PasskeyLinkRecord { token_hash: [7; 32], owner: owner(2), expires_at: NOW + 600 }, &event("owner.passkey_link", "o2"))
        .await
        .unwrap();
    let taken = crate::PasskeyRecord { owner: owner(2), ..expected[0].clone() };
    conflict(b.add_passkey(&[7; 32], &taken, NOW, &event("owner.passkey_add", "o2")).await, "a registered credential");
    assert_eq!(a.passkey_link_owner(&[7; 32], NOW).await.unwrap(), Some(owner(2)), "the refused registration spent nothing");
}

/// Contract 5, console: one owner never sees or changes another's passkeys,
/// sessions or agents; sessions end when idle or past their end.
pub async fn console_owners_see_only_their_own<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    for (n, s) in [(1u32, &a), (2, &b)] {
        let link = crate::PasskeyLinkRecord { token_hash: [u8::try_from(n).unwrap(); 32], owner: owner(n), expires_at: NOW + 600 };
        s.issue_passkey_link(&link, &event("owner.passkey_link", "o")).await.unwrap();
        s.add_passkey(&link.token_hash, &passkey(n, n), NOW, &event("owner.passkey_add", "o")).await.unwrap();
    }
    for s in [&a, &b] {
        assert_eq!(s.list_passkeys(&owner(1)).await.unwrap(), vec![passkey(1, 1)]);
        assert_eq!(s.list_passkeys(&owner(2)).await.unwrap(), vec![passkey(2, 2)]);
    }
    not_found(b.update_passkey(&owner(2), "cred1", "{}", NOW + 5).await, "another owner's passkey");
    assert_eq!(a.list_passkeys(&owner(1)).await.unwrap(), vec![passkey(1, 1)], "unchanged");
    b.update_passkey(&owner(1), "cred1", "{\"pk\":\"moved\"}", NOW + 5).await.unwrap();
    let moved = a.list_passkeys(&owner(1)).await.unwrap();
    assert_eq!((moved[0].passkey.as_str(), moved[0].last_used_at), ("{\"pk\":\"moved\"}", Some(NOW + 5)));

    // Sessions: touched through either handle; idle or past the end, gone.
    let session = crate::SessionRecord { token_hash: [8; 32], owner: owner(1), created_at: NOW, last_seen_at: NOW, expires_at: NOW + 3600 };
    a.create_session(&session, NOW).await.unwrap();
    let seen = b.touch_session(&[8; 32], NOW + 100, NOW - 100).await.unwrap();
    assert_eq!(seen, Some(crate::SessionRecord { last_seen_at: NOW + 100, ..session.clone() }));
    assert_eq!(a.touch_session(&[9; 32], NOW + 100, NOW).await.unwrap(), None, "unknown token");
    assert_eq!(a.touch_session(&[8; 32], NOW + 200, NOW + 101).await.unwrap(), None, "idle since before the limit");
    assert_eq!(b.touch_session(&[8; 32], NOW + 201, NOW).await.unwrap(), None, "an idle session is deleted");
    a.create_session(&crate::SessionRecord { token_hash: [10; 32], ..session.clone() }, NOW).await.unwrap();
    assert_eq!(b.touch_session(&[10; 32], NOW + 3600, NOW).await.unwrap(), None, "past its absolute end");
    a.create_session(&crate::SessionRecord { token_hash: [11; 32], ..session.clone() }, NOW).await.unwrap();
    b.end_session(&[11; 32]).await.unwrap();
    assert_eq!(a.touch_session(&[11; 32], NOW + 1, NOW).await.unwrap(), None, "signed out");

    // Stopping an agent: only the owner's, every live key and grant at once.
    a.create_key(&key_record(1, 1), &event("key.create", "k1")).await.unwrap();
    a.create_key(&key_record(2, 1), &event("key.create", "k2")).await.unwrap();
    a.revoke_key(&key_id(2), NOW + 1, &event("key.revoke", "k2")).await.unwrap();
    let grant = Grant {
        id: grant_id(901),
        owner: owner(1),
        agent: agent(1),
        pattern: "bot@conformance.test".parse().unwrap(),
        scopes: "read,send".parse().unwrap(),
        created_at: NOW,
        expires_at: NOW + DAY,
        revoked_at: None,
    };
    a.add_grant(&grant, &event("grant.create", "g1")).await.unwrap();
    not_found(b.stop_owner_agent(&owner(2), &agent(1), NOW + 10, &event("agent.stop", "a1")).await, "another owner's agent");
    assert!(a.list_keys(&agent(1)).await.unwrap().iter().any(|k| k.revoked_at.is_none()), "nothing revoked by the refusal");
    let (_, keys, grants) = b.stop_owner_agent(&owner(1), &agent(1), NOW + 10, &event("agent.stop", "a1")).await.unwrap();
    assert_eq!((keys, grants), (1, 1), "the live key and grant");
    let revoked: Vec<Option<UnixTime>> = a.list_keys(&agent(1)).await.unwrap().iter().map(|k| k.revoked_at).collect();
    assert_eq!(revoked.iter().filter(|r| **r == Some(NOW + 1)).count(), 1, "an earlier revocation keeps its time");
    assert_eq!(revoked.iter().filter(|r| **r == Some(NOW + 10)).count(), 1);
    assert_eq!(a.list_grants(Some(&agent(1))).await.unwrap()[0].revoked_at, Some(NOW + 10));

    // Pending pairing requests addressed to an owner: theirs only, pending, in the window.
    let to = |n: u32| Some(owner(n).as_str().to_owned());
    let opened = [
        PairingRecord { addressed_to: to(1), ..pairing_request(41, 41) },
        PairingRecord { addressed_to: to(2), ..pairing_request(42, 42) },
        PairingRecord { addressed_to: Some("nobody@conformance.test".to_owned()), ..pairing_request(43, 43) },
        PairingRecord { addressed_to: None, ..pairing_request(44, 44) },
        PairingRecord { addressed_to: to(1), opened_at: NOW - 700, ..pairing_request(45, 45) },
    ];
    for (i, p) in opened.iter().enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        s.open_pairing(p, NOW - DAY, &event("pairing.open", "p")).await.unwrap();
    }
    for s in [&a, &b] {
        assert_eq!(s.pending_pairings_for(&owner(1), NOW - 600).await.unwrap(), vec![opened[0].clone()]);
        assert_eq!(s.pending_pairings_for(&owner(2), NOW - 600).await.unwrap(), vec![opened[1].clone()]);
        assert_eq!(s.pairing(&[43; 32]).await.unwrap(), Some(opened[2].clone()), "the addressee is stored as given");
    }
    assert_eq!(a.pending_pairings_for(&owner(1), NOW - 800).await.unwrap(), vec![opened[4].clone(), opened[0].clone()]);
    let agent41 = AgentRecord { id: agent(41), owner: owner(1), name: None, created_at: NOW + 1 };
    b.approve_pairing(&[41; 32], &agent41, NOW + 1, &event("pairing.approve", "p")).await.unwrap();
    assert_eq!(a.pending_pairings_for(&owner(1), NOW - 600).await.unwrap(), vec![], "approved: no longer pending");
}

/// The console's audit search ([`AuditLog::audit_search_for_owner`]): the
/// same records as [`AuditLog::audit_list_for_owner`] for the owner, newest
/// first; filtered by operation, agent (subject, detail or actor) and time
/// window in the store; another owner's records never appear, whatever the
/// filter names; pages continue with `before_seq` and hold at most
/// [`MAX_AUDIT_SEARCH_PAGE`].
pub async fn audit_search_filters_in_the_store_per_owner<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let by = |n: u32, op: &str, subject: &str| AuditEvent::ok(Actor::Owner(owner(n)), op, subject);
    for i in 0..3 {
        a.audit_append(&by(1, "grant.revoke", &format!("g1-{i}"))).await.unwrap();
    }
    for i in 0..2 {
        b.audit_append(&by(2, "grant.revoke", &format!("g2-{i}")).with_detail(serde_json::json!({ "owner": owner(2) }))).await.unwrap();
    }
    // An agent's read, in scope through the detail's agent only.
    let read = AuditEvent::ok(Actor::Agent(agent(1)), "credential.read", "bot").with_detail(serde_json::json!({ "agent": agent(1) }));
    b.audit_append(&read).await.unwrap();
    // The operator's record naming owner 1 in its detail.
    a.audit_append(&event("domain.verify", "d").with_detail(serde_json::json!({ "owner": owner(1) }))).await.unwrap();
    // Owner 2's agent, named by owner 2's record.
    b.audit_append(&by(2, "agent.rename", agent(2).as_str())).await.unwrap();

    let all = AuditFilter::default();
    let search = |s: &B::Store, n: u32, filter: AuditFilter| {
        let s = s.clone();
        async move { s.audit_search_for_owner(&owner(n), &filter, None, MAX_AUDIT_SEARCH_PAGE).await.unwrap() }
    };
    for (n, s) in [(1, &a), (2, &b)] {
        let mut listed = s.audit_list_for_owner(&owner(n), 0, 1000).await.unwrap();
        listed.reverse();
        let found = search(s, n, all.clone()).await;
        assert!(!found.is_empty(), "owner {n} has records");
        assert_eq!(found, listed, "owner {n}: the same records as audit_list_for_owner, newest first");
        let other = owner(3 - n);
        assert!(found.iter().all(|r| r.actor != Actor::Owner(other.clone())), "owner {n} sees none of owner {}'s", 3 - n);
    }
    // Operation.
    let revokes = || AuditFilter { operation: Some("grant.revoke".to_owned()), ..AuditFilter::default() };
    let mine = search(&b, 1, revokes()).await;
    assert_eq!(mine.iter().map(|r| r.subject.as_str()).collect::<Vec<_>>(), ["g1-2", "g1-1", "g1-0"]);
    assert_eq!(search(&a, 2, revokes()).await.len(), 2);
    assert!(search(&a, 1, AuditFilter { operation: Some("grant".to_owned()), ..all.clone() }).await.is_empty(), "exact operation");
    // Agent: its subject, the detail's agent, or the agent as actor.
    let of_agent = |n: u32| AuditFilter { agent: Some(agent(n).to_string()), ..AuditFilter::default() };
    let ops: Vec<String> = search(&a, 1, of_agent(1)).await.iter().map(|r| r.operation.clone()).collect();
    assert_eq!(ops, ["credential.read", "agent.create"]);
    assert!(search(&a, 2, of_agent(1)).await.is_empty(), "another owner's agent: nothing");
    assert!(search(&b, 1, of_agent(2)).await.is_empty(), "another owner's agent: nothing");
    assert_eq!(search(&b, 2, of_agent(2)).await.len(), 2, "agent.create and agent.rename");
    // Time window: [from, to).
    let found = search(&a, 1, all.clone()).await;
    let (first, last) = (found.iter().map(|r| r.ts).min().unwrap(), found.iter().map(|r| r.ts).max().unwrap());
    let window = |from, to| AuditFilter { from, to, ..AuditFilter::default() };
    assert_eq!(search(&b, 1, window(Some(first), Some(last + 1))).await, found);
    assert!(search(&b, 1, window(Some(last + 1), None)).await.is_empty());
    assert!(search(&b, 1, window(None, Some(first))).await.is_empty());
    let both = AuditFilter { operation: Some("grant.revoke".to_owned()), from: Some(first), to: Some(last + 1), ..AuditFilter::default() };
    assert_eq!(search(&a, 1, both).await, mine);
    // Pages: before_seq continues, newest first, each at most the page size.
    let page1 = a.audit_search_for_owner(&owner(1), &all, None, 2).await.unwrap();
    let page2 = a.audit_search_for_owner(&owner(1), &all, page1.last().map(|r| r.seq), 2).await.unwrap();
    assert_eq!([page1, page2].concat(), found[..4.min(found.len())].to_vec());
    let bulk = usize::try_from(MAX_AUDIT_SEARCH_PAGE).unwrap() + 1;
    for i in 0..bulk {
        a.audit_append(&by(1, "bulk.op", &format!("b{i}"))).await.unwrap();
    }
    let bulk_filter = AuditFilter { operation: Some("bulk.op".to_owned()), ..AuditFilter::default() };
    let big = b.audit_search_for_owner(&owner(1), &bulk_filter, None, u32::MAX).await.unwrap();
    assert_eq!(big.len(), usize::try_from(MAX_AUDIT_SEARCH_PAGE).unwrap(), "a page is at most MAX_AUDIT_SEARCH_PAGE");
    let rest = b.audit_search_for_owner(&owner(1), &bulk_filter, big.last().map(|r| r.seq), u32::MAX).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].subject, "b0");
    assert!(b.audit_search_for_owner(&owner(2), &bulk_filter, None, u32::MAX).await.unwrap().is_empty());
}
