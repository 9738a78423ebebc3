//! The webhook outbox's contracts ([`Webhooks`]), for any backend:
//!
//! - **A delivery is claimed by one worker at a time**, across handles; an
//!   expired lease hands it out again, and the old lease can no longer record.
//! - **An event makes one delivery per matching subscription**, however often
//!   and through however many handles it is fed; the message feed's position
//!   moves by compare-and-set (one of two feeders from the same position wins).
//! - **One owner never sees another's subscriptions or deliveries**: list,
//!   delete, rotate, the delivery log and redelivery answer another owner's
//!   object exactly like a missing one, and an owner's events never reach
//!   another owner's subscriptions (nor an inbox filter's other inboxes).
//!
//! - **An agent's subscription lives under its grants**: an event is recorded
//!   for it only while the grant behind that kind of event (`read` for
//!   `message.received`, `send` for the outbound events) is active and still
//!   has that scope; a subscription asking for the body gets the body's payload.
//!
//! Run with [`webhook_conformance_tests!`](crate::webhook_conformance_tests).

use std::collections::BTreeMap;

use super::*;
use crate::{NewWebhookEvent, WebhookRecord};

/// One `#[test]` per webhook contract for the backend given:
/// `agentkeys_store::webhook_conformance_tests!(SqliteBackend);`.
#[macro_export]
macro_rules! webhook_conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(@checks $backend; [];
            webhook_deliveries_are_claimed_once_across_handles,
            webhook_claims_generated,
            webhook_events_make_one_delivery_per_subscription,
            webhook_owners_see_only_their_own,
            webhook_agent_subscriptions_live_under_their_grants,
        );
    };
}

fn hook(id: &str, owner_n: u32, events: &[&str], inbox: Option<&str>) -> WebhookRecord {
    WebhookRecord {
        id: id.to_owned(),
        owner: owner(owner_n),
        url: format!("https://hooks.example/{id}"),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        inbox: inbox.map(address),
        secret_sealed: vec![1, 2, 3],
        previous_secret_sealed: None,
        previous_until: None,
        created_at: NOW,
        agent: None,
        include_body: false,
    }
}

fn received(owner_n: u32, inbox: &str, n: usize) -> NewWebhookEvent {
    NewWebhookEvent {
        owner: owner(owner_n),
        inbox: Some(address(inbox)),
        event_type: "message.received".to_owned(),
        event_key: format!("message.received:{inbox}:{n}"),
        payload: format!("{{\"n\":{n}}}"),
        payload_with_body: Some(format!("{{\"n\":{n},\"body\":true}}")),
    }
}

const NOW_MS: i64 = NOW * 1000;

/// Owners 1 and 2 (inboxes `bot@`, `other@`), owner 1 with `subs` subscriptions
/// to `message.received`, and `events` events of `bot@`, each enqueued through
/// both handles.
async fn outbox_world<S: StoreUnderTest>(a: &S, b: &S, subs: usize, events: usize) -> usize {
    two_owners(a, b).await;
    for i in 0..subs {
        a.create_webhook(&hook(&format!("wh_{i}"), 1, &["message.received"], None), &event("webhook.create", "wh"))
            .await
            .unwrap();
    }
    let batch: Vec<NewWebhookEvent> = (0..events).map(|n| received(1, "bot", n)).collect();
    a.enqueue_webhook_events(&batch, NOW_MS).await.unwrap();
    b.enqueue_webhook_events(&batch, NOW_MS).await.unwrap();
    subs * events
}

/// Claims from both handles with `batch`-sized claims until nothing is due;
/// every claimed id, with the handle that got it.
async fn claim_everything<S: StoreUnderTest>(a: &S, b: &S, tasks: usize, batch: u32) -> Vec<String> {
    let claimed = on_both(a, b, tasks, move |s, _| async move {
        let mut mine = Vec::new();
        loop {
            let claims = s.claim_webhook_deliveries(NOW_MS, batch, NOW_MS + 60_000).await.unwrap();
            if claims.is_empty() {
                return mine;
            }
            mine.extend(claims.into_iter().map(|c| c.delivery.id));
        }
    })
    .await;
    claimed.into_iter().flatten().collect()
}

fn assert_claimed_once(ids: &[String], expected: usize, context: &str) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{context}: deliveries claimed twice: {twice:?}");
    assert_eq!(counts.len(), expected, "{context}: every due delivery is claimed");
}

/// Claims are exclusive across handles; an expired lease is handed out again
/// and the lost lease records nothing.
pub async fn webhook_deliveries_are_claimed_once_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(backend.as_ref()).await;
    let total = outbox_world(&a, &b, 3, 20).await;
    let ids = claim_everything(&a, &b, 6, 4).await;
    assert_claimed_once(&ids, total, "claims across handles");
    // The leases run until NOW + 60 s: at NOW + 61 s every row is due again,
    // under a new lease; the old one records nothing.
    let old = a.claim_webhook_deliveries(NOW_MS + 61_000, 1, NOW_MS + 120_000).await.unwrap();
    assert_eq!(old.len(), 1, "an expired lease hands the delivery out again");
    let first = old[0].clone();
    let again = b.claim_webhook_deliveries(NOW_MS + 121_000, 1000, NOW_MS + 200_000).await.unwrap();
    let taken = again.iter().find(|c| c.delivery.id == first.delivery.id).expect("re-claimed after its lease").clone();
    let stale = crate::DeliveryAttempt {
        id: first.delivery.id.clone(),
        lease: first.lease.clone(),
        delivered: true,
        retry_at_ms: None,
        status: Some(200),
        error: None,
        now: NOW,
    };
    a.record_webhook_attempts(std::slice::from_ref(&stale)).await.unwrap();
    let log = a.list_webhook_deliveries(&owner(1), &first.delivery.subscription_id, ALL).await.unwrap();
    let row = log.iter().find(|d| d.id == first.delivery.id).unwrap();
    assert_eq!(row.state, crate::DeliveryState::Sending, "a lost lease records nothing");
    let fresh = crate::DeliveryAttempt { lease: taken.lease.clone(), retry_at_ms: Some(NOW_MS + 500_000), delivered: false, ..stale };
    b.record_webhook_attempts(std::slice::from_ref(&fresh)).await.unwrap();
    let log = b.list_webhook_deliveries(&owner(1), &first.delivery.subscription_id, ALL).await.unwrap();
    let row = log.iter().find(|d| d.id == first.delivery.id).unwrap();
    assert_eq!((row.state, row.attempts, row.next_attempt_ms), (crate::DeliveryState::Pending, 1, NOW_MS + 500_000));
}

fn webhook_claim_plans() -> impl Strategy<Value = (usize, usize, usize, u32)> {
    (1usize..4, 1usize..25, 2usize..6, 1u32..6)
}

/// Claims are exclusive over generated subscriptions, events and claimers.
pub async fn webhook_claims_generated<B: Backend>(backend: Arc<B>) {
    for_generated("webhook deliveries are claimed once", 8, webhook_claim_plans, move |(subs, events, tasks, batch)| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(backend.as_ref()).await;
            let total = outbox_world(&a, &b, subs, events).await;
            let ids = claim_everything(&a, &b, tasks, batch).await;
            assert_claimed_once(&ids, total, &format!("{subs} subscriptions, {events} events, {tasks} claimers of {batch}"));
        }
    })
    .await;
}

/// One delivery per (event, matching subscription); the feed position is compare-and-set.
pub async fn webhook_events_make_one_delivery_per_subscription<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(backend.as_ref()).await;
    two_owners(&a, &b).await;
    a.create_webhook(&hook("wh_all", 1, &["message.received", "grant.expiring"], None), &event("webhook.create", "wh"))
        .await
        .unwrap();
    a.create_webhook(&hook("wh_bot", 1, &["message.received"], Some("bot")), &event("webhook.create", "wh"))
        .await
        .unwrap();
    a.create_webhook(&hook("wh_sent", 1, &["message.sent"], None), &event("webhook.create", "wh")).await.unwrap();
    // The same event fed concurrently through both handles, several times.
    let added: Vec<u64> = on_both(&a, &b, 6, |s, _| async move {
        s.enqueue_webhook_events(&[received(1, "bot", 7)], NOW_MS).await.unwrap()
    })
    .await;
    assert_eq!(added.iter().sum::<u64>(), 2, "one delivery per matching subscription (all + bot), however often fed");
    // An owner-wide event goes only to subscriptions without an inbox filter.
    let grant = NewWebhookEvent {
        owner: owner(1),
        inbox: None,
        event_type: "grant.expiring".to_owned(),
        event_key: "grant.expiring:g:1".to_owned(),
        payload: "{}".to_owned(),
        payload_with_body: None,
    };
    assert_eq!(a.enqueue_webhook_events(&[grant], NOW_MS).await.unwrap(), 1);
    // The message feed moves by compare-and-set: of two commits from one position, one wins.
    let position = a.message_feed(10).await.unwrap().from;
    let wins: Vec<bool> = on_both(&a, &b, 2, move |s, i| async move {
        s.commit_message_feed(position, position + 5, &[received(1, "bot", 100 + i)], NOW_MS).await.unwrap()
    })
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "one feeder moves the position: {wins:?}");
    assert_eq!(b.message_feed(10).await.unwrap().from, position + 5);
    let all = a.list_webhook_deliveries(&owner(1), "wh_all", ALL).await.unwrap();
    assert_eq!(all.len(), 3, "wh_all: the message, the grant, the winning feeder's event only");
}

/// Owner isolation of subscriptions, deliveries and events.
pub async fn webhook_owners_see_only_their_own<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(backend.as_ref()).await;
    two_owners(&a, &b).await;
    a.create_webhook(&hook("wh_one", 1, &["message.received"], None), &event("webhook.create", "wh")).await.unwrap();
    b.create_webhook(&hook("wh_two", 2, &["message.received"], None), &event("webhook.create", "wh")).await.unwrap();
    // Owner 1's mail never reaches owner 2's subscription, nor the other way round.
    a.enqueue_webhook_events(&[received(1, "bot", 1), received(2, "other", 2)], NOW_MS).await.unwrap();
    let ones = a.list_webhook_deliveries(&owner(1), "wh_one", ALL).await.unwrap();
    let twos = b.list_webhook_deliveries(&owner(2), "wh_two", ALL).await.unwrap();
    assert_eq!((ones.len(), twos.len()), (1, 1));
    assert_ne!(ones[0].id, twos[0].id);
    let listed: Vec<String> = b.list_webhooks(&owner(2)).await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(listed, ["wh_two"], "owner 2 lists only its own");
    let context = "owner 2 on owner 1's subscription";
    same_not_found(
        b.list_webhook_deliveries(&owner(2), "wh_one", 10).await,
        "wh_one",
        b.list_webhook_deliveries(&owner(2), "wh_none", 10).await,
        "wh_none",
        context,
    );
    same_not_found(
        b.redeliver_webhook(&owner(2), None, &ones[0].id, NOW_MS).await,
        &ones[0].id,
        b.redeliver_webhook(&owner(2), None, "msg_none", NOW_MS).await,
        "msg_none",
        context,
    );
    same_not_found(
        b.rotate_webhook_secret(&owner(2), "wh_one", &[9], NOW, &event("webhook.rotate", "wh_one")).await,
        "wh_one",
        b.rotate_webhook_secret(&owner(2), "wh_none", &[9], NOW, &event("webhook.rotate", "wh_none")).await,
        "wh_none",
        context,
    );
    same_not_found(
        b.delete_webhook(&owner(2), "wh_one", &event("webhook.delete", "wh_one")).await,
        "wh_one",
        b.delete_webhook(&owner(2), "wh_none", &event("webhook.delete", "wh_none")).await,
        "wh_none",
        context,
    );
    // Nothing changed for owner 1: still there, same secret, same delivery.
    let mine = a.list_webhooks(&owner(1)).await.unwrap();
    assert_eq!((mine.len(), mine[0].secret_sealed.as_slice()), (1, [1u8, 2, 3].as_slice()));
    assert_eq!(a.list_webhook_deliveries(&owner(1), "wh_one", 10).await.unwrap(), ones);
    // Rotation keeps the previous secret; deletion takes the deliveries along.
    a.rotate_webhook_secret(&owner(1), "wh_one", &[4], NOW + 60, &event("webhook.rotate", "wh_one")).await.unwrap();
    let rotated = a.list_webhooks(&owner(1)).await.unwrap().remove(0);
    assert_eq!((rotated.secret_sealed, rotated.previous_secret_sealed, rotated.previous_until), (vec![4], Some(vec![1, 2, 3]), Some(NOW + 60)));
    // Scoped to a subscription (an agent's own): another's delivery is not found.
    not_found(a.redeliver_webhook(&owner(1), Some("wh_two"), &ones[0].id, NOW_MS).await, "another subscription's delivery");
    let again = a.redeliver_webhook(&owner(1), Some("wh_one"), &ones[0].id, NOW_MS + 1).await.unwrap();
    assert_eq!((again.id.as_str(), again.next_attempt_ms), (ones[0].id.as_str(), NOW_MS + 1));
    a.delete_webhook(&owner(1), "wh_one", &event("webhook.delete", "wh_one")).await.unwrap();
    not_found(a.list_webhook_deliveries(&owner(1), "wh_one", 10).await, "deleted");
    not_found(a.redeliver_webhook(&owner(1), None, &ones[0].id, NOW_MS).await, "a deleted subscription's delivery");
}

/// Agent subscriptions: recorded only under an active grant with the event's
/// scope; revoking it (or the payload asked for) changes what is recorded.
pub async fn webhook_agent_subscriptions_live_under_their_grants<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(backend.as_ref()).await;
    two_owners(&a, &b).await;
    let bot = format!("bot@{DOMAIN}");
    a.add_grant(&grant_record(1, 1, 1, &bot, "read"), &event("grant.create", "g1")).await.unwrap();
    a.add_grant(&grant_record(2, 1, 1, &bot, "send"), &event("grant.create", "g2")).await.unwrap();
    let by_agent = |id: &str, events: &[&str], read: Option<u32>, send: Option<u32>, body: bool| WebhookRecord {
        agent: Some(crate::AgentSubscriber {
            agent: agent(1),
            read_grant: read.map(grant_id),
            send_grant: send.map(grant_id),
        }),
        include_body: body,
        ..hook(id, 1, events, Some("bot"))
    };
    let hooks = [
        by_agent("wh_read", &["message.received", "message.sent"], Some(1), None, false),
        by_agent("wh_body", &["message.received"], Some(1), None, true),
        by_agent("wh_send", &["message.sent"], None, Some(2), false),
        // A `send` grant named where a `read` one is needed records nothing.
        by_agent("wh_wrong", &["message.received"], Some(2), None, true),
    ];
    for h in &hooks {
        a.create_webhook(h, &event("webhook.create", &h.id)).await.unwrap();
    }
    let listed = b.list_webhooks(&owner(1)).await.unwrap();
    assert_eq!(listed.iter().find(|w| w.id == "wh_body"), Some(&hooks[1]), "stored as given");
    let sent = |n: usize| NewWebhookEvent {
        owner: owner(1),
        inbox: Some(address("bot")),
        event_type: "message.sent".to_owned(),
        event_key: format!("message.sent:{n}"),
        payload: format!("{{\"sent\":{n}}}"),
        payload_with_body: None,
    };
    assert_eq!(b.enqueue_webhook_events(&[received(1, "bot", 1), sent(1)], NOW_MS).await.unwrap(), 3);
    let payloads = |id: &'static str| {
        let a = a.clone();
        async move {
            let claims = a.claim_webhook_deliveries(NOW_MS, 1000, NOW_MS + 1000).await.unwrap();
            let mut mine: Vec<String> = claims.into_iter().filter(|c| c.delivery.subscription_id == id).map(|c| c.payload).collect();
            mine.sort();
            mine
        }
    };
    // Claimed once each: the first call takes every row, keep them by subscription.
    let claims = a.claim_webhook_deliveries(NOW_MS, 1000, NOW_MS + 1000).await.unwrap();
    let mut by_sub: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in claims {
        by_sub.entry(c.delivery.subscription_id.clone()).or_default().push(c.payload);
    }
    assert_eq!(by_sub.get("wh_read"), Some(&vec!["{\"n\":1}".to_owned()]), "message.sent needs the send grant: {by_sub:?}");
    assert_eq!(by_sub.get("wh_body"), Some(&vec!["{\"n\":1,\"body\":true}".to_owned()]), "{by_sub:?}");
    assert_eq!(by_sub.get("wh_send"), Some(&vec!["{\"sent\":1}".to_owned()]), "{by_sub:?}");
    assert_eq!(by_sub.get("wh_wrong"), None, "{by_sub:?}");
    // Revoked: nothing more for the read grant's subscriptions; the send grant's go on.
    a.revoke_grant(&grant_id(1), NOW, &event("grant.revoke", "g1")).await.unwrap();
    assert_eq!(b.enqueue_webhook_events(&[received(1, "bot", 2), sent(2)], NOW_MS).await.unwrap(), 1);
    assert_eq!(payloads("wh_send").await, ["{\"sent\":2}"]);
    // Past the send grant's expiry: nothing.
    let later = (NOW + DAY + 1) * 1000;
    assert_eq!(b.enqueue_webhook_events(&[sent(3)], later).await.unwrap(), 0);
}
