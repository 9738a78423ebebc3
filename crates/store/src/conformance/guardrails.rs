//! The send guardrails' contracts ([`SendGuardrails`], issue 13 §3), for any
//! backend:
//!
//! - **A limit of N is never exceeded**, however many sends race through
//!   however many handles: each admission counts every send admitted before
//!   it (one lock per agent), and over generated sequences of sends at
//!   generated times no sliding hour or day holds more admitted sends, and no
//!   day more new recipients, than the limits.
//! - **Limits are owner-scoped**: another owner's agent answers `NotFound`
//!   like a missing one, writes nothing and records nothing.
//! - **A held message is decided once**: of two racing decisions one wins and
//!   the other is `Conflict`; only an approval yields the release proof, and it
//!   makes the recipients known; another owner's held message is `NotFound`.
//! - **A notice is recorded once per key.**
//! - **The agent sees its sends' state**: held, then the queue's rows under the
//!   id it was released as.
//! - **A reply the agent sends stays in its thread**: a send is in a thread of
//!   its inbox when its `In-Reply-To`/`References` name one of the thread's
//!   messages or one of them names its `Message-ID`; never by subject, never
//!   another inbox's or owner's thread.
//!
//! Run with [`guardrail_conformance_tests!`](crate::guardrail_conformance_tests).

use agentkeys_core::SendAuthorized;
use agentkeys_core::send_limits::{DAY_SECS, HOUR_SECS, HoldReason, Limit, ReleaseApproved, ReviewMode, SendLimits};

use super::*;
use crate::{HeldDecision, HeldRecord, HeldState, OwnerNotice, SendAdmission, SendAttempt};

/// One `#[test]` per guardrail contract for the backend given:
/// `agentkeys_store::guardrail_conformance_tests!(SqliteBackend);`.
#[macro_export]
macro_rules! guardrail_conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(@checks $backend; [];
            send_limits_are_owner_scoped,
            send_limits_hold_across_racing_handles,
            send_limits_generated,
            held_messages_are_decided_once,
            owner_notices_are_recorded_once,
            sent_messages_show_their_state,
            sent_messages_join_their_threads,
        );
    };
}

/// Agent `n` of owner `n` sending as `bot@` (owner 1) or `other@` (owner 2).
fn sender(n: u32) -> SendAuthorized {
    let inbox = if n == 1 { address("bot") } else { address("other") };
    ReleaseApproved::recorded("test", inbox, owner(n), agent(n), key_id(n), grant_id(n)).sender().clone()
}

async fn admit<S: StoreUnderTest>(s: &S, who: &SendAuthorized, id: &str, to: &[&str], now: UnixTime) -> SendAdmission {
    let recipients: Vec<String> = to.iter().map(|r| (*r).to_owned()).collect();
    s.admit_send(&SendAttempt { sender: who, message_id: id, recipients: &recipients, subject: None, thread_keys: &[], now })
        .await
        .unwrap()
}

/// Admits a send of the raw message `raw` (its subject and thread keys).
async fn admit_raw<S: StoreUnderTest>(s: &S, who: &SendAuthorized, id: &str, raw: &str, now: UnixTime) -> SendAdmission {
    let keys = crate::message_facts::sent_thread_keys(raw.as_bytes());
    let subject = crate::HeaderSummary::of_message(raw.as_bytes(), "mx.conformance.test").subject;
    let recipients = ["peer@example.com".to_owned()];
    s.admit_send(&SendAttempt { sender: who, message_id: id, recipients: &recipients, subject: subject.as_deref(), thread_keys: &keys, now })
        .await
        .unwrap()
}

async fn set_limits<S: StoreUnderTest>(s: &S, n: u32, limits: &SendLimits) {
    s.set_agent_send_limits(&owner(n), &agent(n), limits, NOW, &event("agent.limits", agent(n).as_str())).await.unwrap();
}

/// Limits are owner-scoped and audited; the open default for agents without.
pub async fn send_limits_are_owner_scoped<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let limits = SendLimits { per_hour: Some(3), review: ReviewMode::NewRecipients, ..Default::default() };
    for s in [&a, &b] {
        assert_eq!(s.agent_send_limits(&agent(1)).await.unwrap(), SendLimits::default(), "open by default");
        assert_eq!(s.owner_agent_send_limits(&owner(1), &agent(1)).await.unwrap(), SendLimits::default());
    }
    set_limits(&a, 1, &limits).await;
    let before = verified_log(&a, "after the owner's change").await.len();
    let theirs = not_found(
        b.set_agent_send_limits(&owner(2), &agent(1), &SendLimits::default(), NOW, &event("agent.limits", "x")).await,
        "another owner's agent",
    );
    let missing = not_found(
        b.set_agent_send_limits(&owner(2), &agent(9), &SendLimits::default(), NOW, &event("agent.limits", "x")).await,
        "a missing agent",
    );
    assert_eq!(theirs.replace(agent(1).as_str(), "?"), missing.replace(agent(9).as_str(), "?"));
    not_found(b.owner_agent_send_limits(&owner(2), &agent(1)).await, "another owner's limits");
    assert_eq!(verified_log(&b, "after refused changes").await.len(), before, "refused changes record nothing");
    for s in [&a, &b] {
        assert_eq!(s.agent_send_limits(&agent(1)).await.unwrap(), limits, "through either handle");
        assert_eq!(s.agent_send_limits(&agent(2)).await.unwrap(), SendLimits::default());
    }
    let bad = SendLimits { max_bounce_percent: Some(0), ..Default::default() };
    invalid(a.set_agent_send_limits(&owner(1), &agent(1), &bad, NOW, &event("agent.limits", "x")).await, "0%");
    assert_eq!(a.agent_send_limits(&agent(1)).await.unwrap(), limits);
}

/// Many sends of one agent racing through two handles: exactly `per_hour` go.
pub async fn send_limits_hold_across_racing_handles<B: Backend>(backend: Arc<B>) {
    const LIMIT: u32 = 5;
    const SENDS: usize = 24;
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    set_limits(&a, 1, &SendLimits { per_hour: Some(LIMIT), ..Default::default() }).await;
    let results = on_both(&a, &b, SENDS, |s, i| async move {
        let who = sender(1);
        admit(&s, &who, &format!("race-{i:03}"), &["r@example.com"], NOW + 10).await
    })
    .await;
    let sent = results.iter().filter(|r| **r == SendAdmission::Send).count();
    assert_eq!(sent, LIMIT as usize, "exactly the limit went through two racing handles: {results:?}");
    for r in &results {
        if let SendAdmission::Refused(refusal) = r {
            assert_eq!((refusal.limit, refusal.max), (Limit::PerHour, LIMIT), "{refusal:?}");
            assert!(refusal.retry_after_secs == HOUR_SECS as u64, "the oldest of the hour leaves in an hour: {refusal:?}");
        } else {
            assert_eq!(*r, SendAdmission::Send);
        }
    }
    // An hour later the window has room again, through the other handle.
    assert_eq!(admit(&b, &sender(1), "later", &["r@example.com"], NOW + 10 + HOUR_SECS).await, SendAdmission::Send);
    // Another agent's budget is its own.
    assert_eq!(admit(&b, &sender(2), "theirs", &["r@example.com"], NOW + 10).await, SendAdmission::Send);
    // An id is admitted once.
    conflict(
        a.admit_send(&SendAttempt {
            sender: &sender(2),
            message_id: "theirs",
            recipients: &[],
            subject: None,
            thread_keys: &[],
            now: NOW + 11,
        })
        .await,
        "the same id again",
    );
}

/// A generated send: seconds after the previous one, which handle, and
/// recipients out of a small set (so some are new, some known).
type PlannedSend = (u16, bool, Vec<u8>);

fn send_plans() -> impl Strategy<Value = (u32, u32, u32, Vec<PlannedSend>)> {
    (
        1u32..5,
        0u32..6,
        1u32..6,
        proptest::collection::vec(
            (prop_oneof![0u16..30, 0u16..2_000, 10_000u16..40_000], any::<bool>(), proptest::collection::vec(0u8..8, 1..3)),
            1..40,
        ),
    )
}

/// Over generated sequences, the admitted sends never exceed any window, and
/// a refusal names a limit that really was full.
pub async fn send_limits_generated<B: Backend>(backend: Arc<B>) {
    for_generated("send limits are never exceeded", 12, send_plans, move |(per_hour, extra_day, new_per_day, plan)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            two_owners(&a, &b).await;
            let per_day = per_hour + extra_day;
            let limits =
                SendLimits { per_hour: Some(per_hour), per_day: Some(per_day), new_recipients_per_day: Some(new_per_day), ..Default::default() };
            set_limits(&a, 1, &limits).await;
            let mut now = NOW;
            let mut admitted: Vec<(UnixTime, Vec<String>)> = Vec::new();
            for (i, (gap, second, to)) in plan.iter().enumerate() {
                now += i64::from(*gap);
                let mut to: Vec<String> = to.iter().map(|r| format!("r{r}@example.com")).collect();
                to.sort();
                to.dedup();
                let s = if *second { &b } else { &a };
                let refs: Vec<&str> = to.iter().map(String::as_str).collect();
                match admit(s, &sender(1), &format!("gen-{i:03}"), &refs, now).await {
                    SendAdmission::Send => admitted.push((now, to)),
                    SendAdmission::Hold(_) => panic!("no review mode set"),
                    SendAdmission::Refused(r) => {
                        let in_window = |secs: i64| admitted.iter().filter(|(t, _)| *t > now - secs).count();
                        match r.limit {
                            Limit::PerHour => assert!(in_window(HOUR_SECS) >= per_hour as usize, "{r:?}"),
                            Limit::PerDay => assert!(in_window(DAY_SECS) >= per_day as usize, "{r:?}"),
                            Limit::NewRecipientsPerDay => {}
                            Limit::BounceRate => panic!("no bounce limit set"),
                        }
                        assert!(r.retry_after_secs >= 1 && r.retry_after_secs <= DAY_SECS as u64, "{r:?}");
                    }
                }
            }
            // Every window ending at an admitted send holds at most the limit.
            let mut known: BTreeSet<String> = BTreeSet::new();
            let mut new_at: Vec<UnixTime> = Vec::new();
            for (i, (t, to)) in admitted.iter().enumerate() {
                let upto = &admitted[..=i];
                let in_hour = upto.iter().filter(|(s, _)| *s > t - HOUR_SECS).count();
                let in_day = upto.iter().filter(|(s, _)| *s > t - DAY_SECS).count();
                assert!(in_hour <= per_hour as usize, "hour ending {t}: {in_hour} > {per_hour}");
                assert!(in_day <= per_day as usize, "day ending {t}: {in_day} > {per_day}");
                for r in to {
                    if known.insert(r.clone()) {
                        new_at.push(*t);
                    }
                }
                let new_in_day = new_at.iter().filter(|s| **s > t - DAY_SECS).count();
                assert!(new_in_day <= new_per_day as usize, "new recipients in the day ending {t}: {new_in_day} > {new_per_day}");
            }
        }
    })
    .await;
}

fn held_record(id: &str, n: u32, recipients: &[&str]) -> HeldRecord {
    let who = sender(n);
    HeldRecord {
        id: id.to_owned(),
        owner: who.owner().clone(),
        agent: who.agent().clone(),
        inbox: who.inbox().clone(),
        key_id: who.key_id().clone(),
        grant_id: who.grant_id().clone(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        reason: HoldReason::NewRecipients,
        size: 42,
        subject: Some("hello".to_owned()),
        held_at: NOW,
        state: HeldState::Held,
        decided_at: None,
        released_as: None,
    }
}

/// Held messages: one decision wins, only approval releases, and the
/// approval makes the recipients known.
pub async fn held_messages_are_decided_once<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    set_limits(&a, 1, &SendLimits { review: ReviewMode::NewRecipients, ..Default::default() }).await;
    let to = ["new@example.com"];
    for (id, s) in [("h1", &a), ("h2", &b)] {
        assert_eq!(admit(s, &sender(1), id, &to, NOW).await, SendAdmission::Hold(HoldReason::NewRecipients));
        s.hold_message(&held_record(id, 1, &to), &event("review.hold", id)).await.unwrap();
    }
    for s in [&a, &b] {
        let listed: Vec<String> = s.held_messages(&owner(1), true, 10).await.unwrap().into_iter().map(|h| h.id).collect();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(s.held_messages(&owner(2), false, 10).await.unwrap().is_empty(), "another owner sees none");
        assert_eq!(s.owner_held_message(&owner(1), "h1").await.unwrap(), held_record("h1", 1, &to));
    }
    let theirs = not_found(b.owner_held_message(&owner(2), "h1").await, "another owner's held message");
    let missing = not_found(b.owner_held_message(&owner(2), "h9").await, "a missing one");
    assert_eq!(theirs.replace("h1", "?"), missing.replace("h9", "?"));
    let before = verified_log(&a, "before the decisions").await.len();
    not_found(
        b.decide_held(&owner(2), "h1", &HeldDecision::Reject, NOW, &event("review.reject", "h1")).await,
        "another owner's decision",
    );
    assert_eq!(verified_log(&a, "after a refused decision").await.len(), before, "nothing recorded");
    // Approve and reject race through both handles: one wins.
    let results = on_both(&a, &b, 4, |s, i| async move {
        let decision = if i % 2 == 0 {
            HeldDecision::Approve { released_as: format!("rel-{i}") }
        } else {
            HeldDecision::Reject
        };
        s.decide_held(&owner(1), "h1", &decision, NOW + 5, &event("review.decide", "h1")).await
    })
    .await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "one decision wins: {results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(is_conflict(e), "{e:?}");
        }
    }
    let won = winners[0];
    assert_eq!(won.release.is_some(), won.held.state == HeldState::Approved, "only an approval releases");
    if let Some(release) = &won.release {
        assert_eq!(release.held_id(), "h1");
        assert_eq!(release.sender(), &sender(1), "released under the sender it was held with");
    }
    assert_eq!(verified_log(&b, "after the decision").await.len(), before + 1, "one record for the one decision");
    // h2 approved: its recipient is known now, so the next send to it is not held.
    let decided = b
        .decide_held(&owner(1), "h2", &HeldDecision::Approve { released_as: "rel-h2".to_owned() }, NOW + 6, &event("review.approve", "h2"))
        .await
        .unwrap();
    assert_eq!(decided.held.released_as.as_deref(), Some("rel-h2"));
    assert!(decided.release.is_some());
    assert_eq!(admit(&a, &sender(1), "after", &to, NOW + 7).await, SendAdmission::Send, "known after approval");
    assert_eq!(
        admit(&a, &sender(1), "another", &["other-new@example.com"], NOW + 8).await,
        SendAdmission::Hold(HoldReason::NewRecipients)
    );
    assert_eq!(a.held_messages(&owner(1), true, 10).await.unwrap().len(), 0, "none waiting");
    assert_eq!(a.held_messages(&owner(1), false, 10).await.unwrap().len(), 2);
}

/// A notice is recorded once per key, through either handle; the owner's
/// listing follows positions.
pub async fn owner_notices_are_recorded_once<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let notice = |key: &str, n: u32| OwnerNotice {
        key: key.to_owned(),
        owner: owner(n),
        agent: agent(n),
        kind: "send.limited".to_owned(),
        detail: "{\"limit\":\"per-hour\"}".to_owned(),
        at: NOW,
    };
    let results = on_both(&a, &b, 6, |s, _| async move { s.record_owner_notice(&notice("k1", 1), &[], 0).await.unwrap() }).await;
    assert_eq!(results.iter().filter(|new| **new).count(), 1, "{results:?}");
    assert!(b.record_owner_notice(&notice("k2", 1), &[], 0).await.unwrap());
    assert!(a.record_owner_notice(&notice("k3", 2), &[], 0).await.unwrap());
    let mine = a.owner_notices(&owner(1), 0, 10).await.unwrap();
    assert_eq!(mine.iter().map(|(_, n)| n.key.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(mine[0].1, notice("k1", 1));
    let after = b.owner_notices(&owner(1), mine[0].0, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(b.owner_notices(&owner(2), 0, 10).await.unwrap().len(), 1, "another owner's are theirs");
}

/// `sent_messages`: a held send shows as held with no deliveries; a direct
/// one shows the queue's rows; another inbox's are not listed.
pub async fn sent_messages_show_their_state<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let id = ulid(1).to_string();
    assert_eq!(admit(&a, &sender(1), &id, &["x@example.com", "y@example.com"], NOW).await, SendAdmission::Send);
    a.enqueue_outbound(&NewOutbound {
        message_id: id.clone(),
        sender: address("bot"),
        owner: owner(1),
        recipients: vec!["x@example.com".to_owned(), "y@example.com".to_owned()],
        size: 10,
        queued_at: NOW,
    })
    .await
    .unwrap();
    set_limits(&a, 1, &SendLimits { review: ReviewMode::All, ..Default::default() }).await;
    assert_eq!(admit(&b, &sender(1), "held-1", &["x@example.com"], NOW + 1).await, SendAdmission::Hold(HoldReason::ReviewAll));
    b.hold_message(&held_record("held-1", 1, &["x@example.com"]), &event("review.hold", "held-1")).await.unwrap();
    for s in [&a, &b] {
        let sent = s.sent_messages(&address("bot"), None, 10).await.unwrap();
        assert_eq!(sent.iter().map(|m| m.message_id.as_str()).collect::<Vec<_>>(), ["held-1", id.as_str()], "newest first");
        assert_eq!(sent[0].held, Some(HeldState::Held));
        assert!(sent[0].deliveries.is_empty() && sent[0].queue_id.is_none());
        assert_eq!(sent[1].held, None);
        assert_eq!(sent[1].queue_id.as_deref(), Some(id.as_str()));
        let states: Vec<(&str, &str)> = sent[1].deliveries.iter().map(|d| (d.recipient.as_str(), d.state.as_str())).collect();
        assert_eq!(states, [("x@example.com", "queued"), ("y@example.com", "queued")]);
        let one = s.sent_messages(&address("bot"), Some(&id), 10).await.unwrap();
        assert_eq!(one.len(), 1);
        assert!(s.sent_messages(&address("other"), None, 10).await.unwrap().is_empty(), "another inbox's");
        assert!(s.sent_messages(&address("other"), Some(&id), 10).await.unwrap().is_empty());
    }
    // Cancelled: gone from the list, and it no longer counts.
    a.cancel_send("held-1").await.unwrap();
    assert_eq!(b.sent_messages(&address("bot"), Some("held-1"), 10).await.unwrap().len(), 0);
}

/// A reply the agent sends stays in its thread (module docs).
pub async fn sent_messages_join_their_threads<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let received = |n: u64, owner_n: u32, inbox: &str, headers: &str| {
        let raw = format!("{headers}\r\nSubject: Plan\r\n\r\nhello\r\n");
        let summary = crate::HeaderSummary::of_message(raw.as_bytes(), "mx.conformance.test");
        let facts = crate::MessageFacts::of_message(raw.as_bytes(), &summary);
        NewMessage { owner: owner(owner_n), inbox: address(inbox), id: ulid(n), size: raw.len() as u64, summary, facts }
    };
    let in_thread = |s: &B::Store, owner_n: u32, inbox: &'static str, thread: u64| {
        let s = s.clone();
        async move {
            s.sent_in_thread(&owner(owner_n), &address(inbox), ulid(thread), 100)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.message_id)
                .collect::<Vec<_>>()
        }
    };
    // A received message, the agent's reply to it, and a reply by References
    // only: both in its thread, oldest first.
    a.index_messages(&[received(1, 1, "bot", "Message-ID: <a@x>")]).await.unwrap();
    let reply = "Message-ID: <s1@x>\r\nIn-Reply-To: <a@x>\r\nReferences: <a@x>\r\nSubject: Re: Plan\r\n\r\nyes\r\n";
    assert_eq!(admit_raw(&a, &sender(1), "s1", reply, NOW).await, SendAdmission::Send);
    let by_references = "Message-ID: <s2@x>\r\nReferences: <a@x> <s1@x>\r\nSubject: Plan\r\n\r\nand\r\n";
    assert_eq!(admit_raw(&b, &sender(1), "s2", by_references, NOW + 1).await, SendAdmission::Send);
    // A new conversation the agent starts: in no thread until a reply to it arrives.
    let started = "Message-ID: <s3@x>\r\nSubject: Hello\r\n\r\nhi\r\n";
    assert_eq!(admit_raw(&a, &sender(1), "s3", started, NOW + 2).await, SendAdmission::Send);
    // A reply prefix and the thread's subject, but no ids: not in it.
    let by_subject = "Message-ID: <s4@x>\r\nSubject: Re: Plan\r\n\r\nhm\r\n";
    assert_eq!(admit_raw(&a, &sender(1), "s4", by_subject, NOW + 3).await, SendAdmission::Send);
    a.index_messages(&[received(2, 1, "bot", "Message-ID: <r3@x>\r\nIn-Reply-To: <s3@x>")]).await.unwrap();
    // Another owner's inbox receives a message naming the agent's reply.
    b.index_messages(&[received(3, 2, "other", "Message-ID: <o@x>\r\nIn-Reply-To: <s1@x>")]).await.unwrap();
    for s in [&a, &b] {
        assert_eq!(in_thread(s, 1, "bot", 1).await, ["s1", "s2"], "replies by In-Reply-To and References, oldest first");
        assert_eq!(in_thread(s, 1, "bot", 2).await, ["s3"], "the reply to a started conversation brings it in");
        assert!(in_thread(s, 2, "bot", 1).await.is_empty(), "another owner asking");
        assert!(in_thread(s, 2, "other", 3).await.is_empty(), "another inbox's thread naming the reply");
        assert!(in_thread(s, 1, "bot", 9).await.is_empty(), "no such thread");
        let shown = s.sent_in_thread(&owner(1), &address("bot"), ulid(1), 100).await.unwrap();
        assert_eq!(shown[0].subject.as_deref(), Some("Re: Plan"));
        assert_eq!(shown[0].queue_id.as_deref(), Some("s1"));
        assert_eq!(s.sent_in_thread(&owner(1), &address("bot"), ulid(1), 1).await.unwrap().len(), 1, "limit");
    }
    // A send forgotten (never stored) leaves its thread.
    b.cancel_send("s1").await.unwrap();
    assert_eq!(in_thread(&a, 1, "bot", 1).await, ["s2"]);
}
