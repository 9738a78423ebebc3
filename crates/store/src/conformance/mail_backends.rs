//! The mail backends' contracts ([`MailBackends`]), for any backend:
//!
//! - **A backend belongs to a hosted domain**: setting one on a domain that is
//!   not hosted is `NotFound`, an unknown kind or status is `Invalid`, and a
//!   refused write changes nothing (no row, no audit record); a set or a clear
//!   is one audit record; removing the domain removes its backend.
//! - **An import cursor is what was last written**, through any handle: the
//!   position, the generation and the pending message read back exactly, so a
//!   restarted follower (another process) resumes where the last one stopped.
//!
//! - **A follower lease has one holder at a time**, across handles: taken
//!   when free, expired or already the caller's; refused (nothing changed)
//!   while another's runs, however many ask at once; a holder that let it
//!   expire and was replaced cannot renew; only the holder releases it.
//!
//! Run with [`mail_backend_conformance_tests!`](crate::mail_backend_conformance_tests).

use super::*;
use crate::{ImportCursor, MailBackendRecord};

/// One `#[test]` per mail backend contract for the backend given.
#[macro_export]
macro_rules! mail_backend_conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(@checks $backend; [];
            mail_backends_belong_to_hosted_domains,
            import_cursors_read_back_what_was_written_generated,
            ses_backends_are_stored_with_or_without_a_sealed_secret,
            a_follower_lease_has_one_holder_at_a_time,
        );
    };
}

fn imap_backend(domain: Domain) -> MailBackendRecord {
    MailBackendRecord {
        domain,
        kind: "imap".to_owned(),
        settings: r#"{"host":"imap.provider.test"}"#.to_owned(),
        secret_sealed: vec![9, 8, 7],
        status: "connecting".to_owned(),
        status_detail: None,
        status_at: None,
        updated_at: NOW,
    }
}

/// Backends exist only on hosted domains; errors change nothing; writes are audited.
pub async fn mail_backends_belong_to_hosted_domains<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    a.ensure_domain(&domain(), NOW).await.unwrap();
    let head = a.audit_head().await.unwrap();
    let e = |op: &str| event(op, "refused");
    let nowhere: Domain = "nowhere.test".parse().unwrap();
    for s in [&a, &b] {
        not_found(s.set_mail_backend(&imap_backend(nowhere.clone()), &e("domain.set_backend")).await, "backend of an unhosted domain");
        invalid(
            s.set_mail_backend(&MailBackendRecord { kind: "pigeon".to_owned(), ..imap_backend(domain()) }, &e("domain.set_backend"))
                .await,
            "unknown kind",
        );
        not_found(s.clear_mail_backend(&domain(), &e("domain.clear_backend")).await, "clear without a backend");
        not_found(s.set_mail_backend_status(&domain(), "running", None, NOW).await, "status without a backend");
        not_found(
            s.save_import_cursor(&nowhere, "INBOX", &ImportCursor::default()).await,
            "cursor of an unhosted domain",
        );
    }
    assert_eq!(a.audit_head().await.unwrap(), head, "refused writes append no audit record");
    assert!(b.mail_backends().await.unwrap().is_empty(), "refused writes leave no row");

    a.set_mail_backend(&imap_backend(domain()), &event("domain.set_backend", DOMAIN)).await.unwrap();
    let listed = b.mail_backends().await.unwrap();
    assert_eq!(listed, vec![imap_backend(domain())], "the other handle reads the backend as written, status connecting");
    invalid(b.set_mail_backend_status(&domain(), "sleeping", None, NOW).await, "unknown status");
    b.set_mail_backend_status(&domain(), "auth_failed", Some("login refused"), NOW + 5).await.unwrap();
    let row = a.mail_backends().await.unwrap().remove(0);
    assert_eq!(
        (row.status.as_str(), row.status_detail.as_deref(), row.status_at),
        ("auth_failed", Some("login refused"), Some(NOW + 5))
    );
    // Setting it again (a new password) starts over at `connecting`.
    b.set_mail_backend(&imap_backend(domain()), &event("domain.set_backend", DOMAIN)).await.unwrap();
    assert_eq!(a.mail_backends().await.unwrap()[0].status, "connecting");
    a.save_import_cursor(&domain(), "INBOX", &ImportCursor { uid_validity: 3, last_uid: 9, pending: None }).await.unwrap();
    b.clear_mail_backend(&domain(), &event("domain.clear_backend", DOMAIN)).await.unwrap();
    assert!(a.mail_backends().await.unwrap().is_empty());
    assert_eq!(a.import_cursor(&domain(), "INBOX").await.unwrap(), None, "clearing a backend forgets its cursors");
    let audited: Vec<String> = a.audit_all().await.unwrap().into_iter().map(|r| r.operation.clone()).collect();
    assert_eq!(
        audited.iter().filter(|op| op.starts_with("domain.") && op.contains("backend")).count(),
        3,
        "two sets and a clear, one record each: {audited:?}"
    );

    // Removing the domain removes its backend.
    let hosted: Domain = "hosted.test".parse().unwrap();
    a.add_domain(&DomainKeyRecord { domain: hosted.clone(), ..domain_keys(1) }, NOW, &event("domain.add", "h"))
        .await
        .unwrap();
    a.set_mail_backend(&imap_backend(hosted.clone()), &event("domain.set_backend", "h")).await.unwrap();
    b.remove_domain(&hosted, &event("domain.remove", "h")).await.unwrap();
    assert!(a.mail_backends().await.unwrap().is_empty(), "a removed domain has no backend");
}

fn cursor_strategy() -> impl Strategy<Value = Vec<(bool, u32, u32, Option<u32>)>> {
    proptest::collection::vec((any::<bool>(), 1..5u32, 0..1000u32, proptest::option::of(0..1000u32)), 1..12)
}

/// Whatever sequence of cursors is written through either handle, both read
/// back the last one exactly, per mailbox.
pub async fn import_cursors_read_back_what_was_written_generated<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    a.ensure_domain(&domain(), NOW).await.unwrap();
    assert_eq!(b.import_cursor(&domain(), "INBOX").await.unwrap(), None, "no cursor before the first import");
    let (a, b) = (Arc::new(a), Arc::new(b));
    for_generated("import cursors read back", 24, cursor_strategy, move |writes| {
        let (a, b) = (Arc::clone(&a), Arc::clone(&b));
        async move {
            let mut last: BTreeMap<&str, ImportCursor> = BTreeMap::new();
            for (i, (second, validity, uid, pending)) in writes.into_iter().enumerate() {
                let mailbox = if i % 3 == 0 { "Archive" } else { "INBOX" };
                let cursor = ImportCursor {
                    uid_validity: i64::from(validity),
                    last_uid: i64::from(uid),
                    pending: pending.map(|p| (i64::from(uid) + i64::from(p) + 1, ulid(u64::from(p)).to_string())),
                };
                let s = if second { &b } else { &a };
                s.save_import_cursor(&domain(), mailbox, &cursor).await.unwrap();
                last.insert(mailbox, cursor);
            }
            for (mailbox, cursor) in last {
                for s in [&a, &b] {
                    assert_eq!(s.import_cursor(&domain(), mailbox).await.unwrap().as_ref(), Some(&cursor), "{mailbox}");
                }
            }
        }
    })
    .await;
}

/// The `ses` kind (issue 14) is stored like `imap`; its secret may be empty
/// (no static keys: credentials come from `AssumeRoleWithWebIdentity`), and
/// its S3 cursor is named by a location, not a mailbox.
pub async fn ses_backends_are_stored_with_or_without_a_sealed_secret<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    a.ensure_domain(&domain(), NOW).await.unwrap();
    let ses = MailBackendRecord {
        kind: "ses".to_owned(),
        settings: r#"{"bucket":"inbound","prefix":"in/","region":"us-east-1","poll_seconds":10}"#.to_owned(),
        secret_sealed: Vec::new(),
        ..imap_backend(domain())
    };
    a.set_mail_backend(&ses, &event("domain.set_backend", DOMAIN)).await.unwrap();
    assert_eq!(b.mail_backends().await.unwrap(), vec![ses.clone()], "an empty secret reads back empty");
    let cursor = ImportCursor { uid_validity: 0, last_uid: 1_765_000_000_123, pending: None };
    b.save_import_cursor(&domain(), "s3://inbound/in/", &cursor).await.unwrap();
    assert_eq!(a.import_cursor(&domain(), "s3://inbound/in/").await.unwrap(), Some(cursor), "a millisecond watermark fits");
    let with_keys = MailBackendRecord { secret_sealed: vec![1, 2, 3], ..ses };
    b.set_mail_backend(&with_keys, &event("domain.set_backend", DOMAIN)).await.unwrap();
    assert_eq!(a.mail_backends().await.unwrap(), vec![with_keys]);
}

/// Follower leases (module docs): one holder at a time across handles.
pub async fn a_follower_lease_has_one_holder_at_a_time<B: Backend>(backend: Arc<B>) {
    let (a, b) = pair(&*backend).await;
    let missing: Domain = "not-hosted.example".parse().unwrap();
    assert!(matches!(a.lease_follower(&missing, "node-a", NOW_MS, 30_000).await, Err(StoreError::NotFound { .. })));
    a.ensure_domain(&domain(), NOW).await.unwrap();
    let d = domain();
    assert_eq!(a.lease_follower(&d, "node-a", NOW_MS, 30_000).await.unwrap(), Some(NOW_MS + 30_000), "free: taken");
    assert_eq!(b.lease_follower(&d, "node-b", NOW_MS + 1, 30_000).await.unwrap(), None, "held by another");
    assert_eq!(a.lease_follower(&d, "node-a", NOW_MS + 10_000, 30_000).await.unwrap(), Some(NOW_MS + 40_000), "renewed");
    assert_eq!(b.lease_follower(&d, "node-b", NOW_MS + 39_999, 30_000).await.unwrap(), None, "still running");
    b.release_follower(&d, "node-b").await.unwrap();
    assert_eq!(b.lease_follower(&d, "node-b", NOW_MS + 39_999, 30_000).await.unwrap(), None, "only the holder releases");
    assert_eq!(b.lease_follower(&d, "node-b", NOW_MS + 40_000, 30_000).await.unwrap(), Some(NOW_MS + 70_000), "expired: taken over");
    assert_eq!(a.lease_follower(&d, "node-a", NOW_MS + 41_000, 30_000).await.unwrap(), None, "the old holder cannot renew");
    a.release_follower(&d, "node-b").await.unwrap();
    assert_eq!(a.lease_follower(&d, "node-a", NOW_MS + 41_000, 30_000).await.unwrap(), Some(NOW_MS + 71_000), "released: free at once");

    // Many at once, on both handles, each its own holder: exactly one wins.
    let other: Domain = "mail.example.com".parse().unwrap();
    a.ensure_domain(&other, NOW).await.unwrap();
    for round in 0..3i64 {
        let at = NOW_MS + round * 100_000;
        let wins = on_both(&a, &b, 16, |s, i| {
            let other = other.clone();
            async move { s.lease_follower(&other, &format!("node-{i}"), at, 30_000).await.unwrap() }
        })
        .await;
        assert_eq!(wins.iter().flatten().count(), 1, "round {round}: one holder");
    }
}
