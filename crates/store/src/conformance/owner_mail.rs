//! The owner's email channel's contracts ([`OwnerMail`]), for any backend:
//!
//! - **A code is consumed once across handles**: of concurrent presentations
//!   of the right digits on both handles exactly one consumes it; a link is
//!   approved once, and its approval lets the action proceed once.
//! - **Tries are counted and lock the code**: each wrong presentation counts
//!   one try; at the limit the code is locked and the right digits, or its
//!   link, do nothing; an expired code is refused whatever is presented.
//! - **Bound to one owner and one action**: another owner's code, or a code
//!   presented for another action, is `NotFound` and counts no try.
//! - **Issuing is limited** per owner and per requesting address in a window.
//! - **Settings are the owner's**, audited; a notice key is marked sent once.
//!
//! Run with [`owner_mail_conformance_tests!`](crate::owner_mail_conformance_tests).

use super::*;
use crate::{CodeCheck, EmailCodeIssue, EmailCodeLimits, EmailCodeRecord, EmailCodeState, LinkApproval};

/// One `#[test]` per owner-mail contract for the backend given:
/// `agentkeys_store::owner_mail_conformance_tests!(SqliteBackend);`.
#[macro_export]
macro_rules! owner_mail_conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(@checks $backend; [];
            email_codes_are_consumed_once_across_handles,
            email_codes_count_tries_and_lock,
            email_codes_are_bound_to_their_owner_and_action,
            email_code_issuing_is_limited,
            email_codes_generated,
            notification_settings_and_notices,
        );
    };
}

const MAX_TRIES: u32 = 5;
const LIMITS: EmailCodeLimits = EmailCodeLimits { since: NOW - 3600, per_owner: 100, per_address: 100 };

fn code(n: u32, owner_n: u32, from: &str) -> EmailCodeRecord {
    EmailCodeRecord {
        id: format!("ec{n:04}"),
        owner: owner(owner_n),
        bound_to: [u8::try_from(n % 200).unwrap(); 32],
        code_hash: digits(n),
        link_hash: link(n),
        phrase: format!("phrase {n}"),
        summary: format!("action {n}"),
        requested_from: Some(from.to_owned()),
        created_at: NOW,
        expires_at: NOW + 600,
    }
}

fn digits(n: u32) -> [u8; 32] {
    let mut h = [0xd1; 32];
    h[..4].copy_from_slice(&n.to_be_bytes());
    h
}

fn link(n: u32) -> [u8; 32] {
    let mut h = [0x11; 32];
    h[..4].copy_from_slice(&n.to_be_bytes());
    h
}

async fn present<S: StoreUnderTest>(s: &S, n: u32, right: Option<bool>, now: UnixTime) -> CodeCheck {
    let c = code(n, 1, "");
    let wrong = [0xee; 32];
    let presented = right.map(|r| if r { digits(n) } else { wrong });
    s.consume_email_code(&c.owner, &c.id, &c.bound_to, presented.as_ref(), MAX_TRIES, now).await.unwrap()
}

/// Exactly one of concurrent consumptions wins, on either handle; the same
/// for link approvals, and a link approval lets the action proceed once.
pub async fn email_codes_are_consumed_once_across_handles<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    assert_eq!(a.issue_email_code(&code(1, 1, "192.0.2.1"), LIMITS).await.unwrap(), EmailCodeIssue::Issued);
    conflict(b.issue_email_code(&code(1, 1, "192.0.2.1"), LIMITS).await, "a taken code id");
    let raced = on_both(&a, &b, 8, |s, _| async move { present(&s, 1, Some(true), NOW + 1).await }).await;
    let won = raced.iter().filter(|r| **r == CodeCheck::Consumed).count();
    assert_eq!(won, 1, "exactly one consumes the code: {raced:?}");
    assert!(raced.iter().all(|r| matches!(r, CodeCheck::Consumed | CodeCheck::Refused(EmailCodeState::Used))), "{raced:?}");

    b.issue_email_code(&code(2, 1, "192.0.2.1"), LIMITS).await.unwrap();
    assert_eq!(present(&a, 2, None, NOW + 1).await, CodeCheck::NotApproved, "no digits and no link approval");
    let view = a.email_code_view("ec0002", MAX_TRIES, NOW + 1).await.unwrap().unwrap();
    assert_eq!((view.state, view.phrase.as_str(), view.owner.clone()), (EmailCodeState::Waiting, "phrase 2", owner(1)));
    assert_eq!(a.email_code_view("ec0002", MAX_TRIES, NOW + 1).await.unwrap().unwrap().state, EmailCodeState::Waiting, "showing changes nothing");
    assert_eq!(a.approve_email_link("ec0002", &link(1), MAX_TRIES, NOW + 2).await.unwrap(), LinkApproval::NotFound, "another code's link");
    let approvals = on_both(&a, &b, 6, |s, _| async move { s.approve_email_link("ec0002", &link(2), MAX_TRIES, NOW + 2).await.unwrap() }).await;
    assert_eq!(approvals.iter().filter(|r| matches!(r, LinkApproval::Approved(_))).count(), 1, "{approvals:?}");
    assert_eq!(b.email_code_view("ec0002", MAX_TRIES, NOW + 2).await.unwrap().unwrap().state, EmailCodeState::LinkApproved);
    let raced = on_both(&a, &b, 6, |s, _| async move { present(&s, 2, None, NOW + 3).await }).await;
    assert_eq!(raced.iter().filter(|r| **r == CodeCheck::Consumed).count(), 1, "{raced:?}");
    assert_eq!(a.approve_email_link("ec0002", &link(2), MAX_TRIES, NOW + 3).await.unwrap(), LinkApproval::Refused(EmailCodeState::Used));
    assert_eq!(a.approve_email_link("ec0099", &link(99), MAX_TRIES, NOW).await.unwrap(), LinkApproval::NotFound);
    assert_eq!(a.email_code_view("ec0099", MAX_TRIES, NOW).await.unwrap(), None);
}

/// Wrong digits count tries; at the limit the code locks for good.
pub async fn email_codes_count_tries_and_lock<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    a.issue_email_code(&code(3, 1, "192.0.2.1"), LIMITS).await.unwrap();
    for left in (0..MAX_TRIES).rev() {
        let s = if left % 2 == 0 { &a } else { &b };
        assert_eq!(present(s, 3, Some(false), NOW + 1).await, CodeCheck::Wrong { tries_left: left });
    }
    assert_eq!(present(&a, 3, Some(true), NOW + 1).await, CodeCheck::Refused(EmailCodeState::Locked), "locked: the right digits do nothing");
    assert_eq!(b.approve_email_link("ec0003", &link(3), MAX_TRIES, NOW + 1).await.unwrap(), LinkApproval::Refused(EmailCodeState::Locked));
    // Concurrent wrong tries lose no count: 5 at once lock a fresh code.
    a.issue_email_code(&code(4, 1, "192.0.2.1"), LIMITS).await.unwrap();
    on_both(&a, &b, 5, |s, _| async move { present(&s, 4, Some(false), NOW + 1).await }).await;
    assert_eq!(present(&b, 4, Some(true), NOW + 1).await, CodeCheck::Refused(EmailCodeState::Locked));
    // Expired at its expiry second, whatever is presented.
    a.issue_email_code(&code(5, 1, "192.0.2.1"), LIMITS).await.unwrap();
    assert_eq!(present(&b, 5, Some(true), NOW + 600).await, CodeCheck::Refused(EmailCodeState::Expired));
    assert_eq!(a.approve_email_link("ec0005", &link(5), MAX_TRIES, NOW + 600).await.unwrap(), LinkApproval::Refused(EmailCodeState::Expired));
    assert_eq!(present(&a, 5, Some(true), NOW + 599).await, CodeCheck::Consumed, "valid until then");
}

/// Another owner's code, or another action's, is `NotFound` and counts nothing.
pub async fn email_codes_are_bound_to_their_owner_and_action<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let c = code(6, 1, "192.0.2.1");
    a.issue_email_code(&c, LIMITS).await.unwrap();
    for _ in 0..MAX_TRIES + 2 {
        let other_owner = b.consume_email_code(&owner(2), &c.id, &c.bound_to, Some(&[0xee; 32]), MAX_TRIES, NOW + 1).await.unwrap();
        assert_eq!(other_owner, CodeCheck::NotFound);
        let other_action = a.consume_email_code(&owner(1), &c.id, &[0x77; 32], Some(&c.code_hash), MAX_TRIES, NOW + 1).await.unwrap();
        assert_eq!(other_action, CodeCheck::NotFound);
    }
    let unknown = a.consume_email_code(&owner(1), "ec9999", &c.bound_to, Some(&c.code_hash), MAX_TRIES, NOW).await.unwrap();
    assert_eq!(unknown, CodeCheck::NotFound);
    assert_eq!(present(&b, 6, Some(true), NOW + 1).await, CodeCheck::Consumed, "no try was counted");
    let mut foreign = code(7, 9, "192.0.2.1");
    foreign.owner = owner(9);
    not_found(a.issue_email_code(&foreign, LIMITS).await, "a code for an unknown owner");
}

/// At most `per_owner` codes per owner and `per_address` per address in the window.
pub async fn email_code_issuing_is_limited<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    let limits = EmailCodeLimits { since: NOW - 900, per_owner: 3, per_address: 4 };
    for n in 10..13 {
        let s = if n % 2 == 0 { &a } else { &b };
        assert_eq!(s.issue_email_code(&code(n, 1, "192.0.2.1"), limits).await.unwrap(), EmailCodeIssue::Issued);
    }
    assert_eq!(a.issue_email_code(&code(13, 1, "192.0.2.9"), limits).await.unwrap(), EmailCodeIssue::OwnerLimited);
    assert_eq!(b.issue_email_code(&code(14, 2, "192.0.2.1"), limits).await.unwrap(), EmailCodeIssue::Issued, "another owner");
    assert_eq!(a.issue_email_code(&code(15, 2, "192.0.2.1"), limits).await.unwrap(), EmailCodeIssue::AddressLimited);
    assert_eq!(a.issue_email_code(&code(16, 2, "192.0.2.2"), limits).await.unwrap(), EmailCodeIssue::Issued, "another address");
    let later = EmailCodeLimits { since: NOW + 1, ..limits };
    assert_eq!(a.issue_email_code(&code(17, 1, "192.0.2.1"), later).await.unwrap(), EmailCodeIssue::Issued, "the window moved");
    assert!(a.consume_email_code(&owner(1), "ec0013", &code(13, 1, "").bound_to, Some(&digits(13)), MAX_TRIES, NOW).await.unwrap() == CodeCheck::NotFound, "a refused issue stored nothing");
}

/// Generated histories of presentations (right, wrong, none, link) through
/// either handle at any time: the answers follow the model, and the code is
/// consumed at most once.
pub async fn email_codes_generated<B: Backend>(backend: Arc<B>) {
    let strategy = || prop::collection::vec((0u8..4, any::<bool>(), 0i64..200), 1..16);
    for_generated("email codes are consumed once and lock", 12, strategy, move |steps| {
        let backend = Arc::clone(&backend);
        async move {
            let (a, b) = pair(&*backend).await;
            two_owners(&a, &b).await;
            a.issue_email_code(&code(20, 1, "192.0.2.1"), LIMITS).await.unwrap();
            let (mut tries, mut approved, mut used) = (0u32, false, false);
            let mut now = NOW;
            let mut consumed = 0;
            for (i, (what, second, later)) in steps.into_iter().enumerate() {
                now += later;
                let s = if second { &b } else { &a };
                let state = if used {
                    Some(EmailCodeState::Used)
                } else if tries >= MAX_TRIES {
                    Some(EmailCodeState::Locked)
                } else if now >= NOW + 600 {
                    Some(EmailCodeState::Expired)
                } else {
                    None
                };
                if what == 3 {
                    let got = s.approve_email_link("ec0020", &link(20), MAX_TRIES, now).await.unwrap();
                    let expected_ok = state.is_none() && !approved;
                    assert_eq!(matches!(got, LinkApproval::Approved(_)), expected_ok, "step {i}: {got:?}");
                    approved |= expected_ok;
                    continue;
                }
                let right = match what { 0 => Some(true), 1 => Some(false), _ => None };
                let got = present(s, 20, right, now).await;
                let expected = match (state, right) {
                    (Some(st), _) => CodeCheck::Refused(st),
                    (None, Some(true)) => CodeCheck::Consumed,
                    (None, Some(false)) => CodeCheck::Wrong { tries_left: MAX_TRIES - tries - 1 },
                    (None, None) if approved => CodeCheck::Consumed,
                    (None, None) => CodeCheck::NotApproved,
                };
                assert_eq!(got, expected, "step {i}");
                match got {
                    CodeCheck::Consumed => {
                        used = true;
                        consumed += 1;
                    }
                    CodeCheck::Wrong { .. } => tries += 1,
                    _ => {}
                }
            }
            assert!(consumed <= 1);
        }
    })
    .await;
}

/// Settings belong to their owner and are audited; a notice is marked once.
pub async fn notification_settings_and_notices<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    two_owners(&a, &b).await;
    assert!(a.notification_settings(&owner(1)).await.unwrap().is_empty(), "every kind on by default");
    let head = a.audit_head().await.unwrap().seq;
    a.set_notification_settings(&owner(1), &["pairing".to_owned(), "audit".to_owned(), "pairing".to_owned()], NOW, &event("owner.notifications", "o1"))
        .await
        .unwrap();
    assert_eq!(b.audit_head().await.unwrap().seq, head + 1, "audited");
    assert_eq!(b.notification_settings(&owner(1)).await.unwrap(), ["audit", "pairing"]);
    assert!(b.notification_settings(&owner(2)).await.unwrap().is_empty(), "another owner's are their own");
    b.set_notification_settings(&owner(1), &[], NOW, &event("owner.notifications", "o1")).await.unwrap();
    assert!(a.notification_settings(&owner(1)).await.unwrap().is_empty());
    not_found(a.set_notification_settings(&owner(9), &[], NOW, &event("owner.notifications", "o9")).await, "unknown owner");
    invalid(a.set_notification_settings(&owner(1), &["a,b".to_owned()], NOW, &event("owner.notifications", "o1")).await, "a comma");
    let marks = on_both(&a, &b, 6, |s, _| async move { s.mark_notice_sent(&owner(1), "expiring/grant/gr_1", NOW).await.unwrap() }).await;
    assert_eq!(marks.iter().filter(|m| **m).count(), 1, "marked once: {marks:?}");
    assert!(a.mark_notice_sent(&owner(2), "expiring/grant/gr_1", NOW).await.unwrap(), "per owner");
}
