//! The console views' contracts ([`ConsoleViews`](crate::ConsoleViews)), for any backend:
//!
//! - **A pairing request gives out at most `limit` tries of its 6 digits**, in
//!   total across handles and concurrent callers, and only while it is
//!   pending; an approved request gives none.
//! - **A key's last use is written at most once per
//!   [`KEY_USE_RESOLUTION_SECS`](crate::KEY_USE_RESOLUTION_SECS)**, and read
//!   only through the agent's owner.
//! - **One owner never sees another's sent mail nor changes another's inbox**
//!   (the same `NotFound` as a missing inbox, nothing changed).
//! - **A grant request is decided once, by its owner**: of concurrent
//!   decisions on both handles one wins; an approval creates its grant in the
//!   same transaction under the checks of `add_grant` (a refused grant leaves
//!   the request pending); an agent has at most `max_pending` pending requests.
//!
//! - **An agent sees its own grant requests only**, with their decisions,
//!   newest first; a pairing request's taken tries are readable (0 unknown).
//!
//! Run with [`console_views_conformance_tests!`](crate::console_views_conformance_tests).

use super::*;
use crate::{GrantDecision, GrantRequestRecord, GrantRequestStatus, KEY_USE_RESOLUTION_SECS};

/// One `#[test]` per console-view contract for the backend given:
/// `agentkeys_store::console_views_conformance_tests!(SqliteBackend);`.
#[macro_export]
macro_rules! console_views_conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(@checks $backend; [];
            pairing_tries_are_limited_across_handles,
            pairing_tries_generated,
            key_uses_are_written_once_per_resolution,
            console_views_are_owner_scoped,
            grant_requests_are_decided_once_by_their_owner,
            agents_see_their_own_grant_requests_and_pairing_tries,
        );
    };
}

/// Contract: of concurrent tries on both handles exactly `limit` succeed,
/// numbered 1..=limit; then none, and an approved request gives none.
pub async fn pairing_tries_are_limited_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    a.open_pairing(&pairing_request(61, 61), NOW - DAY, &event("pairing.open", "p")).await.unwrap();
    let got = on_both(&a, &b, 12, |s, _| async move { s.take_pairing_try(&[61; 32], 5).await.unwrap() }).await;
    let mut numbers: Vec<u32> = got.into_iter().flatten().collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5], "exactly the limit, each number once");
    assert_eq!(b.take_pairing_try(&[61; 32], 5).await.unwrap(), None, "spent");
    assert_eq!(a.take_pairing_try(&[61; 32], 6).await.unwrap(), Some(6), "the limit is the caller's");
    assert_eq!(a.take_pairing_try(&[99; 32], 5).await.unwrap(), None, "unknown request");
    // Approved: no more tries, whatever the limit.
    a.open_pairing(&pairing_request(62, 62), NOW - DAY, &event("pairing.open", "p")).await.unwrap();
    assert_eq!(b.take_pairing_try(&[62; 32], 5).await.unwrap(), Some(1));
    let agent62 = AgentRecord { id: agent(62), owner: owner(1), name: None, created_at: NOW + 1 };
    a.approve_pairing(&[62; 32], &agent62, NOW + 1, &event("pairing.approve", "p")).await.unwrap();
    assert_eq!(b.take_pairing_try(&[62; 32], 5).await.unwrap(), None, "not pending");
    assert_eq!(a.pairing(&[62; 32]).await.unwrap().map(|p| p.status), Some(PairingStatus::Approved), "unchanged by the refusal");
}

fn tries_strategy() -> impl Strategy<Value = (u32, Vec<bool>)> {
    (1u32..8, proptest::collection::vec(any::<bool>(), 0..14))
}

/// Contract over generated inputs: any sequence of tries on either handle gets
/// 1, 2, … up to `limit` and `None` after, never more than `limit` successes.
pub async fn pairing_tries_generated<B: Backend>(backend: Arc<B>) {
    for_generated("pairing tries are limited", 16, tries_strategy, move |(limit, handles)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            two_owners(&a, &b).await;
            a.open_pairing(&pairing_request(63, 63), NOW - DAY, &event("pairing.open", "p")).await.unwrap();
            for (i, second) in handles.iter().enumerate() {
                let s = if *second { &b } else { &a };
                let expected = u32::try_from(i + 1).unwrap();
                let got = s.take_pairing_try(&[63; 32], limit).await.unwrap();
                assert_eq!(got, (expected <= limit).then_some(expected), "try {expected} of limit {limit}");
            }
        }
    })
    .await;
}

/// Contract: a key's use is written once per resolution, from either handle,
/// and read back only through its agent's owner.
pub async fn key_uses_are_written_once_per_resolution<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    a.create_key(&key_record(1, 1), &event("key.create", "k1")).await.unwrap();
    a.create_key(&key_record(2, 1), &event("key.create", "k2")).await.unwrap();
    assert_eq!(a.key_last_uses(&owner(1), &agent(1)).await.unwrap(), vec![], "never used");
    let wrote = on_both(&a, &b, 6, |s, _| async move { s.record_key_use(&key_id(1), NOW + 10).await.unwrap() }).await;
    assert_eq!(wrote.iter().filter(|w| **w).count(), 1, "one write for concurrent uses in one second: {wrote:?}");
    assert!(!b.record_key_use(&key_id(1), NOW + 9 + KEY_USE_RESOLUTION_SECS).await.unwrap(), "within the resolution");
    assert_eq!(b.key_last_uses(&owner(1), &agent(1)).await.unwrap(), vec![(key_id(1), NOW + 10)]);
    assert!(a.record_key_use(&key_id(1), NOW + 10 + KEY_USE_RESOLUTION_SECS).await.unwrap(), "a resolution later");
    assert!(!a.record_key_use(&key_id(99), NOW).await.unwrap(), "an unknown key writes nothing");
    assert_eq!(a.key_last_uses(&owner(1), &agent(1)).await.unwrap(), vec![(key_id(1), NOW + 10 + KEY_USE_RESOLUTION_SECS)]);
    assert_eq!(a.key_last_uses(&owner(2), &agent(1)).await.unwrap(), vec![], "another owner's agent");
}

/// Contract: sent mail and inbox status changes are the owner's only.
pub async fn console_views_are_owner_scoped<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    // Owner 1's `bot@` sends two messages; owner 2's `other@` one.
    a.enqueue_outbound(&outbound(1, 2, 0)).await.unwrap();
    a.enqueue_outbound(&outbound(2, 1, 5)).await.unwrap();
    let theirs = NewOutbound { sender: address("other"), owner: owner(2), ..outbound(3, 1, 7) };
    b.enqueue_outbound(&theirs).await.unwrap();
    for s in [&a, &b] {
        let mine = s.sent_by_owner(&owner(1), None, 100).await.unwrap();
        let ids: Vec<(&str, &str)> = mine.iter().map(|e| (e.message_id.as_str(), e.recipient.as_str())).collect();
        assert_eq!(ids, vec![("01CONF000002", "r0@remote.test"), ("01CONF000001", "r0@remote.test"), ("01CONF000001", "r1@remote.test")], "newest first");
        assert!(mine.iter().all(|e| e.sender == address("bot") && e.state == "queued"));
        assert_eq!(s.sent_by_owner(&owner(1), None, 1).await.unwrap().len(), 1, "the limit");
        assert_eq!(s.sent_by_owner(&owner(1), Some(&address("other")), 100).await.unwrap(), vec![], "another owner's sender");
        assert_eq!(s.sent_by_owner(&owner(2), None, 100).await.unwrap().len(), 1);
        assert_eq!(s.sent_by_owner(&owner(2), Some(&address("other")), 100).await.unwrap()[0].message_id, "01CONF000003");
    }
    // Inbox status: only the owner's.
    not_found(
        b.set_owner_inbox_status(&owner(2), &address("bot"), InboxStatus::Disabled, &event("inbox.set_status", "bot")).await,
        "another owner's inbox",
    );
    not_found(
        a.set_owner_inbox_status(&owner(1), &address("missing"), InboxStatus::Disabled, &event("inbox.set_status", "x")).await,
        "a missing inbox",
    );
    let status = |s: &B::Store| {
        let s = s.clone();
        async move { s.list_inboxes(Some(&owner(1))).await.unwrap()[0].status }
    };
    assert_eq!(status(&a).await, InboxStatus::Active, "unchanged by the refusals");
    b.set_owner_inbox_status(&owner(1), &address("bot"), InboxStatus::Disabled, &event("inbox.set_status", "bot")).await.unwrap();
    assert_eq!(status(&a).await, InboxStatus::Disabled);
    assert_eq!(a.recipient(&address("bot")).await.unwrap().map(|r| r.status), Some(InboxStatus::Disabled), "RCPT sees it");
}

fn grant_request(n: u32, owner_n: u32, agent_n: u32, pattern: &str, created_at: UnixTime) -> GrantRequestRecord {
    GrantRequestRecord {
        id: format!("ar_{n:016}"),
        owner: owner(owner_n),
        agent: agent(agent_n),
        pattern: pattern.parse().unwrap(),
        scopes: "read".parse().unwrap(),
        ttl: DAY,
        reason: Some(format!("request {n}")),
        created_at,
        status: GrantRequestStatus::Pending,
        decided_at: None,
        grant: None,
    }
}

fn granted(request: &GrantRequestRecord, n: u32) -> Grant {
    Grant {
        id: grant_id(n),
        owner: request.owner.clone(),
        agent: request.agent.clone(),
        pattern: request.pattern.clone(),
        scopes: request.scopes,
        created_at: NOW + 5,
        expires_at: NOW + 5 + request.ttl,
        revoked_at: None,
    }
}

/// Contract: grant requests are the owner's, limited per agent, decided once;
/// an approval's grant is created with it or not at all.
pub async fn grant_requests_are_decided_once_by_their_owner<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let since = NOW - DAY;
    // The limit of pending requests per agent; another owner's agent is NotFound.
    for n in 1..=3 {
        let s = if n % 2 == 0 { &b } else { &a };
        s.add_grant_request(&grant_request(n, 1, 1, "bot@conformance.test", NOW + i64::from(n)), since, 3, &event("grant.request", "r")).await.unwrap();
    }
    conflict(a.add_grant_request(&grant_request(4, 1, 1, "bot@conformance.test", NOW + 4), since, 3, &event("grant.request", "r")).await, "over the limit");
    a.add_grant_request(&grant_request(5, 1, 1, "bot@conformance.test", NOW + 5), NOW + 2, 3, &event("grant.request", "r")).await.unwrap();
    not_found(b.add_grant_request(&grant_request(6, 2, 1, "bot@conformance.test", NOW), since, 3, &event("grant.request", "r")).await, "another owner's agent");
    conflict(b.add_grant_request(&grant_request(1, 1, 1, "bot@conformance.test", NOW), since, 10, &event("grant.request", "r")).await, "a taken id");
    for s in [&a, &b] {
        let ids: Vec<String> = s.pending_grant_requests(&owner(1), since).await.unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["ar_0000000000000001", "ar_0000000000000002", "ar_0000000000000003", "ar_0000000000000005"], "oldest first");
        assert_eq!(s.pending_grant_requests(&owner(2), since).await.unwrap(), vec![], "another owner sees none");
        assert_eq!(s.pending_grant_requests(&owner(1), NOW + 3).await.unwrap().len(), 2, "only since");
    }
    let first = a.pending_grant_requests(&owner(1), since).await.unwrap().remove(0);
    assert_eq!(first, grant_request(1, 1, 1, "bot@conformance.test", NOW + 1), "stored as given");

    // Another owner cannot decide it; an old one is not decidable.
    let g1 = granted(&first, 801);
    not_found(b.decide_grant_request(&owner(2), &first.id, since, GrantDecision::Deny, NOW + 5, &event("grant.request_deny", "r")).await, "another owner's request");
    not_found(a.decide_grant_request(&owner(1), &first.id, NOW + 2, GrantDecision::Approve(&g1), NOW + 5, &event("grant.create", "g")).await, "older than since");
    // A grant that is not the request's is refused, the request stays pending.
    let wider = Grant { scopes: "read,send".parse().unwrap(), ..g1.clone() };
    invalid(a.decide_grant_request(&owner(1), &first.id, since, GrantDecision::Approve(&wider), NOW + 5, &event("grant.create", "g")).await, "a wider grant");
    assert_eq!(a.pending_grant_requests(&owner(1), since).await.unwrap().len(), 4, "still pending");

    // Concurrent decisions on both handles: one wins, its grant exists once.
    let results = on_both(&a, &b, 6, |s, i| async move {
        let request = grant_request(1, 1, 1, "bot@conformance.test", NOW + 1);
        let g = granted(&request, 810 + u32::try_from(i).unwrap());
        let decision = if i.is_multiple_of(3) { GrantDecision::Deny } else { GrantDecision::Approve(&g) };
        s.decide_grant_request(&owner(1), &request.id, NOW - DAY, decision, NOW + 5, &event("grant.create", "g")).await.map(|_| i)
    })
    .await;
    let won: Vec<usize> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::NotFound { .. }), "the losers: {e:?}");
        }
    }
    let grants = b.list_owner_grants(&owner(1)).await.unwrap();
    let expected = if won[0].is_multiple_of(3) { 0 } else { 1 };
    assert_eq!(grants.iter().filter(|g| g.pattern == first.pattern).count(), expected, "a grant only for an approval: {grants:?}");
    assert_eq!(a.pending_grant_requests(&owner(1), since).await.unwrap().len(), 3);

    // An approval whose grant the store refuses (an exact inbox that is not the
    // owner's) is rolled back whole: no grant, the request still pending.
    a.add_grant_request(&grant_request(7, 1, 1, "other@conformance.test", NOW + 6), since, 10, &event("grant.request", "r")).await.unwrap();
    let foreign = grant_request(7, 1, 1, "other@conformance.test", NOW + 6);
    not_found(
        b.decide_grant_request(&owner(1), &foreign.id, since, GrantDecision::Approve(&granted(&foreign, 820)), NOW + 7, &event("grant.create", "g")).await,
        "a grant on another owner's inbox",
    );
    assert!(a.pending_grant_requests(&owner(1), since).await.unwrap().iter().any(|r| r.id == foreign.id), "still pending");
    assert!(b.list_owner_grants(&owner(1)).await.unwrap().iter().all(|g| g.id != grant_id(820)));
    // Denied: decided, no grant.
    b.decide_grant_request(&owner(1), &foreign.id, since, GrantDecision::Deny, NOW + 8, &event("grant.request_deny", "r")).await.unwrap();
    assert!(a.pending_grant_requests(&owner(1), since).await.unwrap().iter().all(|r| r.id != foreign.id));
}

/// Contract: an agent's listing holds its own requests in every status, newest
/// first, within `since` and `limit`; another agent's are never in it; the
/// tries of a pairing request read back as taken, from either handle.
pub async fn agents_see_their_own_grant_requests_and_pairing_tries<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let since = NOW - DAY;
    for n in 1..=3 {
        a.add_grant_request(&grant_request(n, 1, 1, "bot@conformance.test", NOW + i64::from(n)), since, 10, &event("grant.request", "r")).await.unwrap();
    }
    b.add_grant_request(&grant_request(4, 2, 2, "other@conformance.test", NOW + 4), since, 10, &event("grant.request", "r")).await.unwrap();
    b.decide_grant_request(&owner(1), "ar_0000000000000002", since, GrantDecision::Deny, NOW + 9, &event("grant.request_deny", "r")).await.unwrap();
    for s in [&a, &b] {
        let mine = s.agent_grant_requests(&agent(1), since, 100).await.unwrap();
        let seen: Vec<(String, GrantRequestStatus)> = mine.iter().map(|r| (r.id.clone(), r.status)).collect();
        assert_eq!(
            seen,
            vec![
                ("ar_0000000000000003".to_owned(), GrantRequestStatus::Pending),
                ("ar_0000000000000002".to_owned(), GrantRequestStatus::Denied),
                ("ar_0000000000000001".to_owned(), GrantRequestStatus::Pending),
            ],
            "newest first, decided ones included"
        );
        assert_eq!(mine[1].decided_at, Some(NOW + 9));
        assert_eq!(s.agent_grant_requests(&agent(1), since, 1).await.unwrap().len(), 1, "the limit");
        assert_eq!(s.agent_grant_requests(&agent(1), NOW + 3, 100).await.unwrap().len(), 1, "only since");
        let theirs = s.agent_grant_requests(&agent(2), since, 100).await.unwrap();
        assert_eq!(theirs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["ar_0000000000000004"], "another agent's only");
        assert_eq!(s.agent_grant_requests(&agent(9), since, 100).await.unwrap(), vec![], "an agent without requests");
    }
    a.open_pairing(&pairing_request(64, 64), NOW - DAY, &event("pairing.open", "p")).await.unwrap();
    assert_eq!(b.pairing_tries(&[64; 32]).await.unwrap(), 0);
    for _ in 0..3 {
        a.take_pairing_try(&[64; 32], 3).await.unwrap();
    }
    assert_eq!(a.take_pairing_try(&[64; 32], 3).await.unwrap(), None, "spent");
    assert_eq!(b.pairing_tries(&[64; 32]).await.unwrap(), 3, "read from the other handle");
    assert_eq!(a.pairing_tries(&[98; 32]).await.unwrap(), 0, "unknown");
}
