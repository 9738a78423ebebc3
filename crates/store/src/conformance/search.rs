//! Threads and search ([`MessageIndex::list_threads`],
//! [`MessageIndex::thread_messages`], [`MessageIndex::search_messages`]), for
//! any backend:
//!
//! - **A reply stays in its thread**: a message joins the thread its
//!   `Message-ID`/`In-Reply-To`/`References` reach, in either arrival order;
//!   the subject, stripped of reply prefixes, joins only a reply without those
//!   headers; a message bridging two threads merges them into the older; keys
//!   never reach across inboxes.
//! - **Search answers exactly the documented rules** (every given field
//!   holds; words whole and case-insensitive; `from`/`to` an address exactly or
//!   a domain with its subdomains), newest first, only within the asked inbox
//!   of the asked owner, and forgets removed messages. Checked on named cases
//!   and against a model over generated corpora.
//! - **Rows indexed before threads and search are backfilled**: they are
//!   listed as pending in `seq` order until refreshed; a refresh gives them
//!   their words and joins them to their threads (merging a reply indexed
//!   before it); a refreshed row is never refreshed again.
//!
//! Run with [`search_conformance_tests!`](crate::search_conformance_tests).

use super::*;
use crate::{HeaderSummary, MessageFacts, SearchQuery};

/// One `#[test]` per threads-and-search contract for the backend given.
#[macro_export]
macro_rules! search_conformance_tests {
    ($backend:ty) => {
        $crate::conformance_tests!(@checks $backend; [];
            replies_stay_in_their_thread,
            search_answers_the_documented_rules,
            search_generated,
            old_rows_are_backfilled,
        );
    };
}

/// A raw message with these headers and body.
fn raw(headers: &[(&str, &str)], body: &str) -> String {
    let mut s = String::new();
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.push_str("\r\n");
    s
}

/// The index row of a raw message, facts taken as the Mailroom takes them.
fn message_of(owner_n: u32, inbox: &str, id: Ulid, raw: &str) -> NewMessage {
    let summary = HeaderSummary::of_message(raw.as_bytes(), "mx.conformance.test");
    let facts = MessageFacts::of_message(raw.as_bytes(), &summary);
    NewMessage { owner: owner(owner_n), inbox: address(inbox), id, size: raw.len() as u64, summary, facts }
}

async fn thread_of<S: StoreUnderTest>(s: &S, owner_n: u32, inbox: &str, id: Ulid) -> Ulid {
    let hits = s
        .search_messages(&owner(owner_n), &address(inbox), &SearchQuery { limit: 1000, ..Default::default() })
        .await
        .unwrap();
    hits.iter().find(|h| h.message.id == id).map(|h| h.thread_id).unwrap_or_else(|| panic!("{id} not in {inbox}"))
}

/// Replies stay in their thread (module docs).
pub async fn replies_stay_in_their_thread<B: Backend>(backend: Arc<B>) {
    let a = backend.fresh().await;
    let b = backend.second_handle(&a).await;
    let m = |n: u64, headers: &[(&str, &str)]| message_of(1, "bot", ulid(n), &raw(headers, "hello"));
    // The original, a reply by In-Reply-To (through the second handle), a
    // reply by References only.
    a.index_messages(&[m(1, &[("Message-ID", "<a@x>"), ("Subject", "Plan")])]).await.unwrap();
    b.index_messages(&[m(2, &[("Message-ID", "<b@x>"), ("In-Reply-To", "<a@x>"), ("Subject", "Re: Plan")])]).await.unwrap();
    a.index_messages(&[m(3, &[("Message-ID", "<c@x>"), ("References", "<a@x> <b@x>"), ("Subject", "AW: Plan")])]).await.unwrap();
    // No id headers, a reply prefix: the subject joins it.
    a.index_messages(&[m(4, &[("Subject", "SV: Re: plan")])]).await.unwrap();
    // The same subject without a prefix starts its own thread.
    a.index_messages(&[m(5, &[("Message-ID", "<e@x>"), ("Subject", "Plan")])]).await.unwrap();
    // Id headers that reach nothing here: no subject fallback.
    a.index_messages(&[m(6, &[("Message-ID", "<f@x>"), ("In-Reply-To", "<elsewhere@x>"), ("Subject", "Re: Plan")])]).await.unwrap();
    for n in [2, 3, 4] {
        assert_eq!(thread_of(&a, 1, "bot", ulid(n)).await, ulid(1), "message {n} joins the thread of 1");
    }
    assert_eq!(thread_of(&a, 1, "bot", ulid(5)).await, ulid(5), "not a reply: a thread of its own");
    assert_eq!(thread_of(&a, 1, "bot", ulid(6)).await, ulid(6), "links exist: no subject fallback");

    // The reply first, then the message it answers (in one batch, then in two).
    a.index_messages(&[
        m(10, &[("Message-ID", "<r@x>"), ("In-Reply-To", "<p@x>"), ("Subject", "Re: Late")]),
        m(11, &[("Message-ID", "<p@x>"), ("Subject", "Late")]),
    ])
    .await
    .unwrap();
    assert_eq!(thread_of(&a, 1, "bot", ulid(11)).await, ulid(10));
    b.index_messages(&[m(12, &[("Message-ID", "<r2@x>"), ("References", "<q@x>")])]).await.unwrap();
    a.index_messages(&[m(13, &[("Message-ID", "<q@x>")])]).await.unwrap();
    assert_eq!(thread_of(&a, 1, "bot", ulid(13)).await, ulid(12));

    // A message that answers two threads merges them into the older.
    a.index_messages(&[m(20, &[("Message-ID", "<t1@x>")]), m(21, &[("Message-ID", "<t2@x>")])]).await.unwrap();
    a.index_messages(&[m(22, &[("Message-ID", "<t3@x>"), ("References", "<t2@x> <t1@x>")])]).await.unwrap();
    for n in [20, 21, 22] {
        assert_eq!(thread_of(&a, 1, "bot", ulid(n)).await, ulid(20), "message {n}");
    }

    // Another inbox (same owner) and another owner answering <a@x>: their own threads.
    a.index_messages(&[message_of(1, "other", ulid(30), &raw(&[("In-Reply-To", "<a@x>"), ("Subject", "Re: Plan")], "x"))])
        .await
        .unwrap();
    a.index_messages(&[message_of(2, "bot", ulid(31), &raw(&[("In-Reply-To", "<a@x>"), ("Subject", "Re: Plan")], "x"))])
        .await
        .unwrap();
    assert_eq!(thread_of(&a, 1, "other", ulid(30)).await, ulid(30));
    assert_eq!(thread_of(&a, 2, "bot", ulid(31)).await, ulid(31));

    // A thread's messages, oldest first; another inbox's or owner's: none.
    let thread: Vec<Ulid> =
        b.thread_messages(&owner(1), &address("bot"), ulid(1), 100).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(thread, [ulid(1), ulid(2), ulid(3), ulid(4)]);
    assert!(b.thread_messages(&owner(2), &address("bot"), ulid(1), 100).await.unwrap().is_empty());
    assert!(b.thread_messages(&owner(1), &address("other"), ulid(1), 100).await.unwrap().is_empty());
    assert_eq!(b.thread_messages(&owner(1), &address("bot"), ulid(1), 2).await.unwrap().len(), 2);

    // Threads, the most recently active first, with counts; paging by `before`.
    let threads = b.list_threads(&owner(1), &address("bot"), None, 100).await.unwrap();
    let seen: Vec<(Ulid, u64, Ulid)> = threads.iter().map(|t| (t.thread_id, t.message_count, t.latest.id)).collect();
    assert_eq!(
        seen,
        [(ulid(20), 3, ulid(22)), (ulid(12), 2, ulid(13)), (ulid(10), 2, ulid(11)), (ulid(6), 1, ulid(6)), (ulid(5), 1, ulid(5)), (ulid(1), 4, ulid(4))]
    );
    let page = b.list_threads(&owner(1), &address("bot"), Some(ulid(11)), 2).await.unwrap();
    assert_eq!(page.iter().map(|t| t.thread_id).collect::<Vec<_>>(), [ulid(6), ulid(5)]);
    assert!(b.list_threads(&owner(3), &address("bot"), None, 100).await.unwrap().is_empty());

    // A removed message leaves its thread.
    a.unindex(&owner(1), &address("bot"), &[ulid(4)]).await.unwrap();
    assert_eq!(b.thread_messages(&owner(1), &address("bot"), ulid(1), 100).await.unwrap().len(), 3);
}

fn q() -> SearchQuery {
    SearchQuery { limit: 1000, ..Default::default() }
}

async fn found<S: StoreUnderTest>(s: &S, owner_n: u32, inbox: &str, query: &SearchQuery) -> Vec<u64> {
    let base = ulid(0).timestamp_ms();
    s.search_messages(&owner(owner_n), &address(inbox), query)
        .await
        .unwrap()
        .iter()
        .map(|h| h.message.id.timestamp_ms() - base)
        .collect()
}


/// Search answers exactly the documented rules (module docs), named cases.
pub async fn search_answers_the_documented_rules<B: Backend>(backend: Arc<B>) {
    let a = backend.fresh().await;
    let b = backend.second_handle(&a).await;
    let attachment_body = "--b\r\nContent-Type: text/plain\r\n\r\nsee the attached invoice\r\n--b\r\n\
Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=i.pdf\r\n\r\nJVBERi0=\r\n--b--";
    let mut rows = vec![
        message_of(1, "bot", ulid_at(0, 1), &raw(&[("From", "GitHub <noreply@GitHub.com>"), ("To", "bot@conformance.test"), ("Subject", "Your verification code")], "Your code is 123456. Café ouvert.")),
        message_of(1, "bot", ulid_at(10, 2), &raw(&[("From", "alerts@mail.github.com"), ("To", "Bob <bob@example.org>, bot@conformance.test"), ("Subject", "Security alert")], "A new sign-in from Berlin")),
        message_of(1, "bot", ulid_at(20, 3), &raw(&[("From", "phish@github.com.evil.test"), ("Subject", "Verification needed")], "Send your code")),
        message_of(1, "bot", ulid_at(30, 4), &raw(&[("From", "billing@shop.test"), ("Cc", "boss@corp.test"), ("Subject", "Invoice 42"), ("MIME-Version", "1.0"), ("Content-Type", "multipart/mixed; boundary=b")], attachment_body)),
        message_of(1, "bot", ulid_at(40, 5), &raw(&[("From", "tanaka@example.jp"), ("Subject", "=?utf-8?b?6KuL5rGC5pu444Gu6YCB5LuY?=")], "請求書を送付します")),
        // The same words in another inbox and under another owner.
        message_of(1, "other", ulid_at(50, 6), &raw(&[("From", "noreply@github.com"), ("Subject", "Your verification code")], "Your code is 654321")),
        message_of(2, "bot", ulid_at(60, 7), &raw(&[("From", "noreply@github.com"), ("Subject", "Your verification code")], "Your code is 111111")),
    ];
    b.index_messages(&rows[..3]).await.unwrap();
    a.index_messages(&rows.split_off(3)).await.unwrap();

    let s = &a;
    assert_eq!(found(s, 1, "bot", &q()).await, [40_000, 30_000, 20_000, 10_000, 0], "everything, newest first");
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("CODE".into()), ..q() }).await, [20_000, 0], "whole words, any case, body or subject");
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("123456".into()), ..q() }).await, [0]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("12345".into()), ..q() }).await, Vec::<u64>::new(), "no partial words");
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("café".into()), ..q() }).await, [0]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("code verification".into()), ..q() }).await, [20_000, 0], "every word");
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("code berlin".into()), ..q() }).await, Vec::<u64>::new());
    assert_eq!(found(s, 1, "bot", &SearchQuery { subject: Some("verification".into()), ..q() }).await, [20_000, 0]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { subject: Some("code".into()), ..q() }).await, [0], "subject only");
    // from: an address exactly, a domain with its subdomains, never a look-alike.
    assert_eq!(found(s, 1, "bot", &SearchQuery { from: Some("NoReply@github.com".into()), ..q() }).await, [0]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { from: Some("github.com".into()), ..q() }).await, [10_000, 0]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { from: Some("hub.com".into()), ..q() }).await, Vec::<u64>::new());
    assert_eq!(found(s, 1, "bot", &SearchQuery { from: Some("github.com.evil.test".into()), ..q() }).await, [20_000]);
    // to: To and Cc.
    assert_eq!(found(s, 1, "bot", &SearchQuery { to: Some("bob@example.org".into()), ..q() }).await, [10_000]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { to: Some("corp.test".into()), ..q() }).await, [30_000]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { to: Some("conformance.test".into()), ..q() }).await, [10_000, 0]);
    // Dates (received_at: since inclusive, until exclusive), attachments.
    let t0 = crate::received_at(ulid_at(0, 0));
    assert_eq!(found(s, 1, "bot", &SearchQuery { since: Some(t0 + 10), until: Some(t0 + 30), ..q() }).await, [20_000, 10_000]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { has_attachment: Some(true), ..q() }).await, [30_000]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { has_attachment: Some(false), text: Some("invoice".into()), ..q() }).await, Vec::<u64>::new());
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("attached invoice".into()), from: Some("shop.test".into()), ..q() }).await, [30_000]);
    // Japanese: a word inside a run without spaces, in the body and the decoded subject.
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("請求書".into()), ..q() }).await, [40_000]);
    assert_eq!(found(s, 1, "bot", &SearchQuery { subject: Some("送付".into()), ..q() }).await, [40_000]);
    // Only the asked inbox of the asked owner.
    assert_eq!(found(s, 1, "other", &SearchQuery { text: Some("code".into()), ..q() }).await, [50_000]);
    assert_eq!(found(s, 2, "bot", &SearchQuery { text: Some("code".into()), ..q() }).await, [60_000]);
    assert_eq!(found(s, 3, "bot", &q()).await, Vec::<u64>::new());
    // Nothing to match: punctuation only, an address that is none.
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("?!".into()), ..q() }).await, Vec::<u64>::new());
    assert_eq!(found(s, 1, "bot", &SearchQuery { from: Some("a b".into()), ..q() }).await, Vec::<u64>::new());
    // Paging by seq.
    let first = a.search_messages(&owner(1), &address("bot"), &SearchQuery { limit: 2, ..q() }).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = found(s, 1, "bot", &SearchQuery { before_seq: Some(first[1].message.seq), ..q() }).await;
    assert_eq!(rest, [20_000, 10_000, 0]);
    // Removed messages are forgotten.
    b.unindex(&owner(1), &address("bot"), &[ulid_at(0, 1)]).await.unwrap();
    assert_eq!(found(s, 1, "bot", &SearchQuery { text: Some("code".into()), ..q() }).await, [20_000]);
}

const WORDS: &[&str] = &["alpha", "beta", "gamma", "delta", "invoice", "code", "Zürich", "東京都"];
const DOMAINS: &[&str] = &["a.test", "mail.a.test", "b.test", "a.test.evil"];

/// A generated message: from-domain index, local part, body words, subject
/// words, attachment, inbox (0: `bot`).
type GenMessage = (usize, usize, Vec<usize>, Vec<usize>, bool, u32);
/// A generated query: text word, subject word, from (a domain index, or past
/// them an address), attachment, since (seconds).
type GenQuery = (Option<usize>, Option<usize>, Option<usize>, Option<bool>, Option<u64>);

fn search_plans() -> impl Strategy<Value = (Vec<GenMessage>, Vec<GenQuery>)> {
    let message = (
        0..DOMAINS.len(),
        0..3usize,
        proptest::collection::vec(0..WORDS.len(), 0..4),
        proptest::collection::vec(0..WORDS.len(), 0..2),
        any::<bool>(),
        0..2u32,
    );
    let query = (
        proptest::option::of(0..WORDS.len()),
        proptest::option::of(0..WORDS.len()),
        proptest::option::of(0..DOMAINS.len() + 3),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0..30u64),
    );
    (proptest::collection::vec(message, 1..25), proptest::collection::vec(query, 1..6))
}

fn generated_message(n: usize, m: &GenMessage) -> NewMessage {
    let (d, local, body, subject, attach, inbox_n) = m;
    let from = format!("u{local}@{}", DOMAINS[*d]);
    let subject = subject.iter().map(|w| WORDS[*w]).collect::<Vec<_>>().join(" ");
    let body = body.iter().map(|w| WORDS[*w]).collect::<Vec<_>>().join(" ");
    let mut headers = vec![("From", from.as_str()), ("Subject", subject.as_str())];
    let text = if *attach {
        headers.push(("MIME-Version", "1.0"));
        headers.push(("Content-Type", "multipart/mixed; boundary=b"));
        format!(
            "--b\r\nContent-Type: text/plain\r\n\r\n{body}\r\n--b\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=x\r\n\r\nAA==\r\n--b--"
        )
    } else {
        body
    };
    let inbox = if *inbox_n == 0 { "bot" } else { "other" };
    message_of(1, inbox, ulid_at(n as u64, n as u64), &raw(&headers, &text))
}

/// Search over generated corpora answers what a model of the rules answers.
pub async fn search_generated<B: Backend>(backend: Arc<B>) {
    for_generated("search answers the documented rules", 12, search_plans, move |(corpus, queries)| {
        let backend = Arc::clone(&backend);
        async move {
            let s = backend.fresh().await;
            let rows: Vec<NewMessage> = corpus.iter().enumerate().map(|(n, m)| generated_message(n, m)).collect();
            s.index_messages(&rows).await.unwrap();
            let t0 = crate::received_at(ulid_at(0, 0));
            for (text, subj, from, attach, since) in queries {
                let from_s = from.map(|f| {
                    if f < DOMAINS.len() { DOMAINS[f].to_owned() } else { format!("u{}@{}", f - DOMAINS.len(), DOMAINS[0]) }
                });
                let query = SearchQuery {
                    text: text.map(|w| WORDS[w].to_uppercase()),
                    subject: subj.map(|w| WORDS[w].to_owned()),
                    from: from_s.clone(),
                    has_attachment: attach,
                    since: since.map(|s| t0 + s as i64),
                    ..q()
                };
                let got = found(&s, 1, "bot", &query).await;
                let mut want: Vec<u64> = Vec::new();
                for (n, (d, local, body, subject, att, inbox_n)) in corpus.iter().enumerate().rev() {
                    let addr = format!("u{local}@{}", DOMAINS[*d]);
                    let has = |ws: &Vec<usize>, w: usize| ws.iter().any(|x| WORDS[*x] == WORDS[w]);
                    let from_ok = from_s.as_ref().is_none_or(|f| {
                        if f.contains('@') {
                            &addr == f
                        } else {
                            addr.ends_with(&format!("@{f}")) || addr.ends_with(&format!(".{f}"))
                        }
                    });
                    let ok = *inbox_n == 0
                        && text.is_none_or(|w| has(body, w) || has(subject, w))
                        && subj.is_none_or(|w| has(subject, w))
                        && from_ok
                        && attach.is_none_or(|a| a == *att)
                        && since.is_none_or(|s| n as u64 >= s);
                    if ok {
                        want.push(n as u64 * 1000);
                    }
                }
                assert_eq!(got, want, "query {query:?} over {corpus:?}");
            }
        }
    })
    .await;
}

/// Rows indexed before threads and search are backfilled (module docs).
pub async fn old_rows_are_backfilled<B: Backend>(backend: Arc<B>) {
    let a = backend.fresh().await;
    let b = backend.second_handle(&a).await;
    let attachment_body = "--b\r\nContent-Type: text/plain\r\n\r\nthe quarterly ledger\r\n--b\r\n\
Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=l.pdf\r\n\r\nJVBERi0=\r\n--b--";
    let old = [
        message_of(1, "bot", ulid(1), &raw(&[("Message-ID", "<a@x>"), ("From", "ann@corp.test"), ("Subject", "Budget")], "draft budget attached soon")),
        message_of(1, "bot", ulid(2), &raw(&[("Message-ID", "<b@x>"), ("In-Reply-To", "<a@x>"), ("Subject", "Re: Budget")], "looks fine")),
        message_of(1, "bot", ulid(3), &raw(&[("Message-ID", "<c@x>"), ("From", "cfo@corp.test"), ("Subject", "Ledger"), ("MIME-Version", "1.0"), ("Content-Type", "multipart/mixed; boundary=b")], attachment_body)),
        message_of(2, "bot", ulid(4), &raw(&[("Message-ID", "<d@x>"), ("Subject", "Budget")], "another owner's budget")),
    ];
    a.index_messages(&old).await.unwrap();
    let ids: Vec<Ulid> = old.iter().map(|m| m.id).collect();
    backend.forget_facts(&a, &ids).await;
    // After the upgrade, before the backfill: a reply to <b@x> arrives; the
    // keys of <b@x> are not known yet, so it starts a thread of its own.
    let late = message_of(1, "bot", ulid(5), &raw(&[("Message-ID", "<e@x>"), ("In-Reply-To", "<b@x>"), ("Subject", "Re: Re: Budget")], "agreed"));
    b.index_messages(std::slice::from_ref(&late)).await.unwrap();
    assert_eq!(thread_of(&a, 1, "bot", ulid(5)).await, ulid(5));
    let base = ulid(0).timestamp_ms();
    let ms = |n: u64| ulid(n).timestamp_ms() - base;
    assert_eq!(found(&a, 1, "bot", &SearchQuery { text: Some("budget".into()), ..q() }).await, [ms(5)], "old rows have no words yet");

    // Pending: the old rows only, in seq order, paged by seq.
    let page = a.facts_pending(0, 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), [ulid(1), ulid(2)]);
    let rest = b.facts_pending(page[1].seq, 10).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), [ulid(3), ulid(4)]);

    // One batch refreshed; then the rest through the other handle, with a row
    // that does not exist and one done already.
    assert_eq!(a.refresh_facts(&old[..2]).await.unwrap(), 2);
    let pending: Vec<Ulid> = b.facts_pending(0, 10).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(pending, [ulid(3), ulid(4)], "resumable: what is done stays done");
    let missing = message_of(1, "bot", ulid(9), &raw(&[("Subject", "never indexed")], "x"));
    assert_eq!(b.refresh_facts(&[old[1].clone(), old[2].clone(), old[3].clone(), missing]).await.unwrap(), 2);
    assert!(a.facts_pending(0, 10).await.unwrap().is_empty());
    assert_eq!(a.refresh_facts(&old).await.unwrap(), 0, "idempotent");

    // Threads: the original, its reply and the late reply are one thread, the oldest's.
    for n in [1, 2, 5] {
        assert_eq!(thread_of(&a, 1, "bot", ulid(n)).await, ulid(1), "message {n}");
    }
    let thread: Vec<Ulid> = b.thread_messages(&owner(1), &address("bot"), ulid(1), 10).await.unwrap().iter().map(|m| m.id).collect();
    assert_eq!(thread, [ulid(1), ulid(2), ulid(5)]);
    assert_eq!(thread_of(&a, 2, "bot", ulid(4)).await, ulid(4), "keys never reach across owners");
    // Words, sender, attachment flag: as if indexed now.
    assert_eq!(found(&a, 1, "bot", &SearchQuery { text: Some("budget".into()), ..q() }).await, [ms(5), ms(2), ms(1)]);
    assert_eq!(found(&a, 1, "bot", &SearchQuery { from: Some("corp.test".into()), ..q() }).await, [ms(3), ms(1)]);
    assert_eq!(found(&a, 1, "bot", &SearchQuery { has_attachment: Some(true), ..q() }).await, [ms(3)]);
    assert_eq!(found(&a, 1, "bot", &SearchQuery { has_attachment: Some(false), text: Some("ledger".into()), ..q() }).await, Vec::<u64>::new());
    assert_eq!(found(&a, 2, "bot", &SearchQuery { text: Some("budget".into()), ..q() }).await, [ms(4)]);
}
