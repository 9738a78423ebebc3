//! The SMTP session over arbitrary bytes, cut into arbitrary reads.
//!
//! Properties (not just "no crash"): every reply is a well-formed SMTP reply
//! line; never more messages than real terminators (`<CRLF>.<CRLF>` or `BDAT …
//! LAST`), i.e. no smuggling; and the replies do not depend on how the bytes
//! were cut into reads. `crates/smtp/src/session_tests.rs` checks the same
//! properties over a fixed sample in every test run.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use agentkeys_core::{AuthFacts, InboxStatus, KeyHasher, MasterSeed};
use agentkeys_smtp::{
    ListenerKind, Limits, Now, RecipientAnswer, Session, SessionContext, Step,
};
use agentkeys_store::Recipient;
use libfuzzer_sys::fuzz_target;

fn context(kind: ListenerKind) -> Arc<SessionContext> {
    Arc::new(SessionContext {
        hostname: "mx.agents.localhost".into(),
        kind,
        limits: Limits::default(),
        hasher: KeyHasher::new(&MasterSeed::from_bytes([3; 32])),
        tls_available: true,
        allow_plaintext_auth_on_loopback: false,
        subaddressing: agentkeys_core::Subaddressing::default(),
    })
}

/// Feeds `input` cut at `cuts`; answers every step the way a healthy store
/// would (every hosted address is an active inbox; no key exists). Returns the
/// replies with message ids masked, and the number of messages stored.
fn drive(kind: ListenerKind, input: &[u8], cuts: &[usize]) -> (Vec<String>, usize) {
    let start = Instant::now();
    let mut now = Now { instant: start, system: UNIX_EPOCH + Duration::from_secs(1_700_000_000) };
    let mut session = Session::new(context(kind), "192.0.2.1".parse().unwrap(), true, now, 7);
    let mut replies = Vec::new();
    let mut delivered = 0;
    let mut from = 0;
    let mut ends = cuts.to_vec();
    ends.push(input.len());
    // `None` first: poll for the greeting before any input.
    for end in std::iter::once(None).chain(ends.into_iter().map(Some)) {
        if let Some(end) = end {
            session.feed(&input[from..end]);
            from = end;
        }
        loop {
            match session.poll(now) {
                Step::Write(bytes) => replies.extend(
                    String::from_utf8_lossy(&bytes)
                        .split_inclusive("\r\n")
                        .map(|l| if l.starts_with("250 2.0.0 Message accepted as ") { "250 <id>".to_owned() } else { l.to_owned() }),
                ),
                Step::NeedInput => break,
                Step::Close => return (replies, delivered),
                Step::Wait(until) => {
                    let d = until.saturating_duration_since(now.instant);
                    now.instant += d;
                    now.system += d;
                }
                Step::LookupRecipient(q) => {
                    let answer = if q.domain == "agents.localhost" {
                        RecipientAnswer::Hosted(q.inbox.map(|_| Recipient {
                            owner: "0x1111111111111111111111111111111111111111".parse().unwrap(),
                            status: InboxStatus::Active,
                            expires_at: None,
                        }))
                    } else {
                        RecipientAnswer::NotHosted
                    };
                    session.recipient_result(Ok(answer), now);
                }
                Step::CheckThrottle(_) => session.throttle_result(Ok(false), now),
                Step::RecordFailure(_) => session.failure_recorded(Ok(()), now),
                Step::Authenticate(_) => session.auth_result(Ok(AuthFacts::default()), now),
                Step::Audit(event) => {
                    // A receipt exists only for a sealed record: seal it as the chain's first.
                    let sealed = agentkeys_audit::SealedRecord::seal(&agentkeys_audit::ChainHead::GENESIS, 0, &event);
                    session.audit_result(Ok(sealed.expect("sealable event").into_receipt()), now);
                }
                Step::Deliver(_) => {
                    delivered += 1;
                    session.delivery_result(Ok(()), now);
                }
                Step::StartTls => session.tls_started(now),
            }
        }
    }
    (replies, delivered)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let kind = if data[0] & 1 == 0 { ListenerKind::Inbound } else { ListenerKind::Submission };
    let input = &data[3..];
    let mut cuts: Vec<usize> = [data[1], data[2]].iter().map(|&b| usize::from(b) % (input.len() + 1)).collect();
    cuts.sort_unstable();

    let (whole, delivered) = drive(kind, input, &[]);
    for line in &whole {
        let b = line.as_bytes();
        assert!(line.ends_with("\r\n") || line == "250 <id>", "unterminated reply {line:?}");
        assert!(b.len() >= 4 && (b'2'..=b'5').contains(&b[0]) && b[1].is_ascii_digit() && b[2].is_ascii_digit());
    }
    assert!(delivered <= count(input, b"\r\n.\r\n") + count(input, b"LAST"), "more messages than terminators");
    let (split, delivered_split) = drive(kind, input, &cuts);
    assert_eq!(whole, split, "the cuts {cuts:?} changed the replies");
    assert_eq!(delivered, delivered_split);
});
