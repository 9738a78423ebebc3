//! Where DATA ends, over arbitrary message bytes cut into arbitrary reads.
//!
//! Property (not just "no crash"): after `DATA`, the session ends the message
//! exactly at the first `<CRLF>.<CRLF>` (the `DATA` line's `<CRLF>` counting as
//! the first), and what it stores is the bytes up to there with dot-stuffing
//! undone (RFC 5321 §4.5.2, written out plainly below) — or, when that content
//! holds a NUL, it stores nothing and answers `550 5.6.0`. No other dot line
//! (`<LF>.<LF>`, `<CR>.<CR>`, `<CRLF>.<CR><CRLF>`, …) ends it, so nothing after
//! such a line ever runs as a command. `crates/smtp/src/data_tests.rs` checks the
//! same property exhaustively over short inputs and with proptest.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use agentkeys_core::{InboxStatus, KeyHasher, MasterSeed};
use agentkeys_smtp::{Limits, ListenerKind, Now, RecipientAnswer, Session, SessionContext, Step};
use agentkeys_store::Recipient;
use libfuzzer_sys::fuzz_target;

/// RFC 5321 §4.5.2 line by line: the content before the first line that is
/// exactly `.`, each line's leading `.` removed; `None` if no line is.
fn reference(input: &[u8]) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    let mut rest = input;
    loop {
        let i = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..i];
        if line == b"." {
            return Some(content);
        }
        content.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        content.extend_from_slice(b"\r\n");
        rest = &rest[i + 2..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, body)) = data.split_first() else { return };
    let mut input = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n".to_vec();
    let data_at = input.len();
    input.extend_from_slice(body);
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    let expected = reference(&input[data_at..]).expect("terminated");

    let ctx = Arc::new(SessionContext {
        hostname: "mx.agents.localhost".into(),
        kind: ListenerKind::Inbound,
        limits: Limits::default(),
        hasher: KeyHasher::new(&MasterSeed::from_bytes([3; 32])),
        tls_available: false,
        allow_plaintext_auth_on_loopback: false,
        subaddressing: agentkeys_core::Subaddressing::default(),
    });
    let now = Now { instant: Instant::now(), system: UNIX_EPOCH + Duration::from_secs(1_700_000_000) };
    let mut session = Session::new(ctx, "192.0.2.1".parse().unwrap(), false, now, 7);
    let step = usize::from(cut_seed).max(1);
    let mut replies = String::new();
    let mut stored = Vec::new();
    let mut from = 0;
    'feed: loop {
        loop {
            match session.poll(now) {
                Step::Write(bytes) => replies.push_str(&String::from_utf8_lossy(&bytes)),
                Step::NeedInput => break,
                Step::Close => break 'feed,
                Step::LookupRecipient(q) => {
                    let answer = RecipientAnswer::Hosted(q.inbox.map(|_| Recipient {
                        owner: "0x1111111111111111111111111111111111111111".parse().unwrap(),
                        status: InboxStatus::Active,
                        expires_at: None,
                    }));
                    session.recipient_result(Ok(answer), now);
                }
                Step::Deliver(d) => {
                    stored.push(d.message.clone());
                    session.delivery_result(Ok(()), now);
                }
                Step::StartTls => session.tls_started(now),
                // Inbound: no AUTH; no failure latency.
                Step::CheckThrottle(_)
                | Step::Authenticate(_)
                | Step::Audit(_)
                | Step::RecordFailure(_)
                | Step::Wait(_) => break 'feed,
            }
        }
        if from == input.len() {
            break;
        }
        let end = (from + step).min(input.len());
        session.feed(&input[from..end]);
        from = end;
    }
    // The first reply after `354` answers our message; bytes after an earlier
    // real `<CRLF>.<CRLF>` inside `body` are commands and may do anything else.
    let after_data = replies.split_once("\r\n354 ").and_then(|(_, r)| r.split_once("\r\n")).map(|(_, r)| r).expect("354");
    if expected.contains(&0) {
        assert!(after_data.starts_with("550 5.6.0 "), "{replies}");
    } else {
        assert!(after_data.starts_with("250 2.0.0 Message accepted"), "{replies}");
        // Our `Received:` line ends with the date's zone, then the client's bytes.
        let message = &stored[0];
        let start = message.windows(8).position(|w| w == b" +0000\r\n").expect("Received") + 8;
        assert_eq!(&message[start..], &expected[..]);
    }
});
