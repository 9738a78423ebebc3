//! Session tests: transcripts over bytes with fake answers and an explicit clock.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::throttle::AuthThrottle;
use agentkeys_store::LocalThrottles;
use agentkeys_core::{InboxStatus, Subaddressing};
use agentkeys_store::Recipient;
use crate::limits::*;
use crate::testing::*;

/// The receipt a real audit log gives for `event` as its record number `n + 1`:
/// sealed into a chain, the only way to make one.
fn receipt_for(event: &agentkeys_audit::AuditEvent, n: usize) -> agentkeys_audit::AuditReceipt {
    let head = agentkeys_audit::ChainHead { seq: n as u64, ..agentkeys_audit::ChainHead::GENESIS };
    agentkeys_audit::SealedRecord::seal(&head, 0, event).unwrap().into_receipt()
}

/// Drives a session the way the shell does, answering steps from the fakes.
struct Harness {
    session: Session,
    now: Now,
    meta: FakeMeta,
    /// Every AUTH decision the session asked to record.
    audits: Vec<agentkeys_audit::AuditEvent>,
    blob_fault: BlobFault,
    deliveries: Vec<Delivery>,
    /// (time the wait was requested, time it ends)
    waits: Vec<(Instant, Instant)>,
    /// Every step the harness saw, by name, for assertions on what was asked.
    steps: Vec<&'static str>,
    closed: bool,
    throttle: Throttle,
}

/// The AUTH throttle the harness answers [`Step::CheckThrottle`] and
/// [`Step::RecordFailure`] from: counters in memory, kept to look at, and a
/// switch that makes them fail like an unreachable store.
#[derive(Clone)]
struct Throttle {
    counters: Arc<LocalThrottles>,
    auth: AuthThrottle,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Throttle {
    fn new(max_failures: u32, window: Duration) -> Self {
        let counters = Arc::new(LocalThrottles::new());
        let auth = AuthThrottle::over(counters.clone(), max_failures, window);
        Self { counters, auth, broken: Arc::default() }
    }

    fn tracked(&self) -> usize {
        self.counters.tracked()
    }

    fn fail(&self, broken: bool) {
        self.broken.store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    fn fault(&self) -> Option<StoreError> {
        self.broken
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| StoreError::Backend("injected".into()))
    }

    fn is_blocked(&self, peer: std::net::IpAddr, now: Now) -> Result<bool, StoreError> {
        match self.fault() {
            Some(err) => Err(err),
            None => ready(self.auth.is_blocked(peer, now.system)),
        }
    }

    fn record_failure(&self, peer: std::net::IpAddr, now: Now) -> Result<(), StoreError> {
        match self.fault() {
            Some(err) => Err(err),
            None => ready(self.auth.record_failure(peer, now.system)),
        }
    }
}

/// The value of a future that is ready at once (the in-memory counters').
fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => panic!("in-memory counters answer at once"),
    }
}

fn context(kind: ListenerKind, limits: Limits) -> Arc<SessionContext> {
    Arc::new(SessionContext {
        hostname: "mx.agents.localhost".into(),
        kind,
        limits,
        hasher: hasher(),
        tls_available: true,
        allow_plaintext_auth_on_loopback: false,
        subaddressing: Subaddressing::default(),
    })
}

fn start_now() -> Now {
    Now {
        instant: Instant::now(),
        system: UNIX_EPOCH + Duration::from_secs(T0 as u64),
    }
}

impl Harness {
    fn new(kind: ListenerKind, tls: bool) -> Self {
        Self::with(
            kind,
            tls,
            Limits::default(),
            Throttle::new(10, Duration::from_secs(600)),
        )
    }

    fn with(kind: ListenerKind, tls: bool, limits: Limits, throttle: Throttle) -> Self {
        let mut h = Self::with_context(context(kind, limits), "192.0.2.10", tls);
        h.throttle = throttle;
        h
    }

    fn with_context(ctx: Arc<SessionContext>, peer: &str, tls: bool) -> Self {
        let now = start_now();
        let throttle = Throttle::new(10, Duration::from_secs(600));
        let session = Session::new(ctx, peer.parse().unwrap(), tls, now, 7);
        let mut h = Self {
            session,
            now,
            meta: FakeMeta::new(),
            audits: Vec::new(),
            blob_fault: BlobFault::None,
            deliveries: Vec::new(),
            waits: Vec::new(),
            steps: Vec::new(),
            closed: false,
            throttle,
        };
        let greeting = h.run();
        assert_eq!(greeting, "220 mx.agents.localhost ESMTP AgentKeys Mail\r\n");
        h
    }

    /// An authenticated submission session under TLS.
    fn submission() -> Self {
        let mut h = Self::new(ListenerKind::Submission, true);
        h.send("EHLO client.test\r\n");
        assert_eq!(
            h.send(&format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key()))),
            "235 2.7.0 Authentication successful\r\n"
        );
        h
    }

    fn advance(&mut self, d: Duration) {
        self.now.instant += d;
        self.now.system += d;
    }

    /// Polls until the session needs input or closes; returns what it wrote.
    fn run(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            match self.session.poll(self.now) {
                Step::Write(bytes) => {
                    self.steps.push("write");
                    out.extend_from_slice(&bytes);
                }
                Step::NeedInput => return String::from_utf8(out).unwrap(),
                Step::Close => {
                    self.steps.push("close");
                    self.closed = true;
                    return String::from_utf8(out).unwrap();
                }
                Step::Wait(until) => {
                    self.steps.push("wait");
                    assert!(until > self.now.instant);
                    self.waits.push((self.now.instant, until));
                    let d = until - self.now.instant;
                    self.advance(d);
                }
                Step::LookupRecipient(q) => {
                    self.steps.push("lookup");
                    let answer = self.meta.answer_recipient(&q);
                    self.session.recipient_result(answer, self.now);
                }
                Step::CheckThrottle(peer) => {
                    self.steps.push("throttle");
                    let blocked = self.throttle.is_blocked(peer, self.now);
                    self.session.throttle_result(blocked, self.now);
                }
                Step::RecordFailure(peer) => {
                    self.steps.push("count failure");
                    let recorded = self.throttle.record_failure(peer, self.now);
                    self.session.failure_recorded(recorded, self.now);
                }
                Step::Authenticate(c) => {
                    self.steps.push("authenticate");
                    let facts = self.meta.facts(&c);
                    self.session.auth_result(facts, self.now);
                }
                Step::Audit(event) => {
                    self.steps.push("audit");
                    let result = if *self.meta.fault.lock().unwrap() == Fault::Audit {
                        Err(StoreError::Backend("injected".into()))
                    } else {
                        let receipt = receipt_for(&event, self.audits.len());
                        self.audits.push(event);
                        Ok(receipt)
                    };
                    self.session.audit_result(result, self.now);
                }
                Step::Deliver(d) => {
                    self.steps.push("deliver");
                    let result = match self.blob_fault.error() {
                        Some(err) => Err(DeliveryError::Blob(err)),
                        None if d.outbound.is_some()
                            && *self.meta.fault.lock().unwrap() == Fault::Enqueue =>
                        {
                            Err(DeliveryError::Queue(StoreError::Backend("injected".into())))
                        }
                        None => {
                            self.deliveries.push(d);
                            Ok(agentkeys_submission::guardrails::Accepted::Stored)
                        }
                    };
                    self.session.delivery_result(result, self.now);
                }
                Step::StartTls => {
                    self.steps.push("starttls");
                    self.session.tls_started(self.now);
                }
            }
        }
    }

    fn send(&mut self, input: &str) -> String {
        self.send_bytes(input.as_bytes())
    }

    fn send_bytes(&mut self, input: &[u8]) -> String {
        self.session.feed(input);
        self.run()
    }

    fn body(&self, i: usize) -> String {
        String::from_utf8(self.deliveries[i].message.to_vec()).unwrap()
    }

    /// The message as the client sent it (our `Received:` stripped).
    fn client_body(&self, i: usize) -> String {
        let body = self.body(i);
        assert!(body.starts_with("Received: from "), "{body}");
        let end = body.find(" +0000\r\n").unwrap() + " +0000\r\n".len();
        body[end..].to_owned()
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.split_inclusive("\r\n").collect()
}

// ----- transcripts ---------------------------------------------------------------

/// The bytes of a transcript's `B:` line: `\r`, `\n`, `\0` and `\\` are CR, LF,
/// NUL and a backslash; nothing is added.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            match chars.next() {
                Some('r') => '\r',
                Some('n') => '\n',
                Some('0') => '\0',
                Some('\\') => '\\',
                other => panic!("unknown escape \\{other:?} in {text:?}"),
            }
        } else {
            c
        });
    }
    out
}

/// Runs one transcript file. Format: `C: <line>` is sent (CRLF added; consecutive
/// C lines are sent in one read, i.e. pipelined), `B: <bytes>` is sent as written
/// with escapes (see [`unescape`]) and nothing added, `S: <prefix>` must match the
/// next reply line, `@kind …`, `@tls`, `@max-recipients <n>`, `@fault
/// lookup|auth|enqueue|none`, `@blob full|io|none`, `X: delivered <n>` and `X:
/// closed` check the outcome.
fn run_transcript(name: &str, text: &str) {
    let mut header = text
        .lines()
        .filter(|l| l.starts_with("@kind ") || *l == "@tls" || l.starts_with("@max-recipients "));
    let mut kind = ListenerKind::Inbound;
    let mut tls = false;
    let mut limits = Limits::default();
    for line in header.by_ref() {
        match line {
            "@kind inbound" => kind = ListenerKind::Inbound,
            "@kind submission" => kind = ListenerKind::Submission,
            "@tls" => tls = true,
            other => match other.strip_prefix("@max-recipients ") {
                Some(n) => limits.max_recipients = n.parse().unwrap(),
                None => panic!("{name}: unknown header {other}"),
            },
        }
    }
    let mut h = Harness::with(kind, tls, limits, Throttle::new(10, Duration::from_secs(600)));
    let mut pending = String::new();
    let mut replies: std::collections::VecDeque<String> = Default::default();
    let flush = |h: &mut Harness,
                 pending: &mut String,
                 replies: &mut std::collections::VecDeque<String>| {
        if !pending.is_empty() {
            let out = h.send(pending);
            pending.clear();
            replies.extend(lines(&out).into_iter().map(str::to_owned));
        }
    };
    for (n, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", n + 1);
        if let Some(c) = line
            .strip_prefix("C: ")
            .or_else(|| (line == "C:").then_some(""))
        {
            pending.push_str(c);
            pending.push_str("\r\n");
            continue;
        }
        if let Some(b) = line.strip_prefix("B: ") {
            pending.push_str(&unescape(b));
            continue;
        }
        flush(&mut h, &mut pending, &mut replies);
        if let Some(prefix) = line.strip_prefix("S: ") {
            let got = replies
                .pop_front()
                .unwrap_or_else(|| panic!("{at}: expected {prefix:?}, got nothing"));
            assert!(
                got.starts_with(prefix),
                "{at}: expected {prefix:?}, got {got:?}"
            );
        } else if let Some(fault) = line.strip_prefix("@fault ") {
            h.meta.set_fault(match fault {
                "lookup" => Fault::Lookup,
                "auth" => Fault::AuthFacts,
                "enqueue" => Fault::Enqueue,
                "none" => Fault::None,
                other => panic!("{at}: unknown fault {other}"),
            });
        } else if let Some(fault) = line.strip_prefix("@blob ") {
            h.blob_fault = match fault {
                "full" => BlobFault::Full,
                "io" => BlobFault::Io,
                "none" => BlobFault::None,
                other => panic!("{at}: unknown blob fault {other}"),
            };
        } else if let Some(n) = line.strip_prefix("X: delivered ") {
            assert_eq!(h.deliveries.len(), n.parse::<usize>().unwrap(), "{at}");
        } else if line == "X: closed" {
            assert!(h.closed, "{at}: session not closed");
        } else if line == "X: open" {
            assert!(!h.closed, "{at}: session closed");
        } else if !line.starts_with("@max-recipients ") {
            assert!(
                line.is_empty() || line.starts_with('#') || line.starts_with('@'),
                "{at}: bad line {line:?}"
            );
        }
    }
    flush(&mut h, &mut pending, &mut replies);
    assert!(replies.is_empty(), "{name}: unexpected replies {replies:?}");
}

#[test]
fn transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/transcripts");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "smtp"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "transcript corpus is missing: {names:?}");
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        run_transcript(&name, &text);
    }
}

// ----- DATA end detection and SMTP smuggling ---------------------------------------

const ENVELOPE: &str =
    "EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n";

/// Sends a DATA body split at `split` (two reads), followed by QUIT; returns the harness.
fn data_session(body: &[u8], split: usize) -> Harness {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    let out = h.send(ENVELOPE);
    assert!(
        out.ends_with("354 Start mail input; end with <CRLF>.<CRLF>\r\n"),
        "{out}"
    );
    h.send_bytes(&body[..split]);
    h.send_bytes(&body[split..]);
    h
}

/// The smuggled second transaction of the CVE-2023-51764 family.
const SMUGGLED: &str = "MAIL FROM:<admin@bank.test>\r\nRCPT TO:<other@agents.localhost>\r\nDATA\r\nFrom: admin@bank.test\r\n\r\nsmuggled\r\n";

fn assert_not_smuggled(terminator: &str) {
    let body = format!("From: a@remote.test\r\n\r\nhello{terminator}{SMUGGLED}.\r\nQUIT\r\n");
    for split in 0..=body.len() {
        let h = data_session(body.as_bytes(), split);
        assert_eq!(
            h.deliveries.len(),
            1,
            "{terminator:?} split at {split}: a second message was produced"
        );
        let d = &h.deliveries[0];
        assert_eq!(d.local.len(), 1);
        assert_eq!(
            d.local[0].inbox.as_str(),
            BOT,
            "smuggled RCPT must not be a recipient"
        );
        let client = h.client_body(0);
        assert!(
            client.contains("smuggled"),
            "{terminator:?}: smuggled text must stay inside the one message"
        );
        assert!(client.contains("MAIL FROM:<admin@bank.test>"));
        assert!(h.closed, "QUIT after the real end of data closes");
    }
}

#[test]
fn cve_2023_51764_lf_dot_lf_does_not_end_data() {
    assert_not_smuggled("\n.\n");
}

#[test]
fn cve_2023_51764_lf_dot_crlf_does_not_end_data() {
    assert_not_smuggled("\n.\r\n");
}

#[test]
fn cve_2023_51764_cr_dot_crlf_does_not_end_data() {
    assert_not_smuggled("\r.\r\n");
}

#[test]
fn cve_2023_51764_crlf_dot_lf_does_not_end_data() {
    assert_not_smuggled("\r\n.\n");
}

#[test]
fn cve_2023_51764_cr_dot_cr_does_not_end_data() {
    assert_not_smuggled("\r.\r");
}

#[test]
fn cve_2023_51764_crlf_dot_cr_crlf_does_not_end_data() {
    // smtp-proto 0.2.5 ended DATA on `<CRLF> "." <CR>+ <LF>`.
    assert_not_smuggled("\r\n.\r\r\n");
}

#[test]
fn cve_2023_51764_cr_crlf_dot_cr_crlf_does_not_end_data() {
    assert_not_smuggled("\r\r\n.\r\r\n");
}

#[test]
fn cve_2023_51765_sendmail_lf_dot_crlf_does_not_end_data() {
    // sendmail's form of the attack: a bare LF before the dot.
    assert_not_smuggled("\r\n\n.\r\n");
}

#[test]
fn cve_2023_51766_exim_lf_dot_lf_does_not_end_data() {
    // Exim's form: bare LFs around the dot, after a proper line end.
    assert_not_smuggled("\r\n.\n");
    assert_not_smuggled("\n.\n\r\n");
}

#[test]
fn nul_before_a_dot_line_is_refused_550_5_6_0_and_smuggles_nothing() {
    // `<CRLF>NUL.<CRLF>` ends data at receivers that drop NULs; we refuse the
    // message (on every listener) and the rest of it stays data.
    for kind in [ListenerKind::Inbound, ListenerKind::Submission] {
        let mut h = Harness::new(kind, true);
        h.send("EHLO client.test\r\n");
        if kind.is_submission() {
            h.send(&format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())));
        }
        let out = h.send(&format!(
            "MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n\
             From: bot@agents.localhost\r\n\r\nhello\r\n\0.\r\n{SMUGGLED}.\r\n"
        ));
        assert!(out.ends_with("354 Start mail input; end with <CRLF>.<CRLF>\r\n550 5.6.0 NUL characters are not allowed in messages\r\n"), "{kind:?}: {out}");
        assert!(h.deliveries.is_empty(), "{kind:?}");
        assert!(!h.steps.contains(&"deliver"));
        // The transaction is over, the session is not.
        assert!(h.send("MAIL FROM:<bot@agents.localhost>\r\n").starts_with("250 2.1.0"), "{kind:?}");
    }
}

#[test]
fn nul_anywhere_in_data_or_bdat_is_refused_and_not_buffered() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send(ENVELOPE);
    assert_eq!(h.send("a\0b\r\n"), "");
    assert!(matches!(h.session.state, State::SkipData { .. }), "drained from the first NUL on");
    assert_eq!(h.session.body.capacity(), 0);
    assert_eq!(h.send("more\r\n.\r\n"), "550 5.6.0 NUL characters are not allowed in messages\r\n");
    // BDAT: the chunk is consumed whole, then refused; the transaction is reset.
    h.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\n");
    assert_eq!(h.send("BDAT 4\r\nab\0\n"), "550 5.6.0 NUL characters are not allowed in messages\r\n");
    assert!(h.send("BDAT 2 LAST\r\nhi").starts_with("503 5.5.1"), "transaction was reset");
    h.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\n");
    assert_eq!(h.send("BDAT 6 LAST\r\n\0"), "", "the chunk is drained to its end");
    assert_eq!(h.send("QUIT\r"), "550 5.6.0 NUL characters are not allowed in messages\r\n");
    assert!(h.deliveries.is_empty());
    assert!(h.send("\nQUIT\r\n").starts_with("500 5.5.1"), "a partial line after the chunk is a command again");
}

#[test]
fn cve_2023_51764_pipelined_in_one_read() {
    // Envelope, body with a bogus terminator and smuggled commands, all in one read.
    let mut h = Harness::new(ListenerKind::Inbound, false);
    let all = format!("{ENVELOPE}hello\n.\n{SMUGGLED}.\r\nQUIT\r\n");
    // The client must wait for 354, but a hostile one does not: bytes after DATA are data.
    let out = h.send(&all);
    assert_eq!(h.deliveries.len(), 1);
    assert!(out.contains("250 2.0.0 Message accepted as"));
    assert!(out.ends_with("221 2.0.0 Bye\r\n"));
    assert_eq!(out.matches("354 ").count(), 1, "{out}");
}

#[test]
fn only_crlf_dot_crlf_ends_data_and_pipelined_commands_after_it_run() {
    let body = "Subject: x\r\n\r\nline\r\n.\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<other@agents.localhost>\r\nDATA\r\n";
    for split in 0..=body.len() {
        let mut h = data_session(body.as_bytes(), split);
        assert_eq!(h.deliveries.len(), 1, "split {split}");
        assert_eq!(h.client_body(0), "Subject: x\r\n\r\nline\r\n");
        // The second transaction is a real one.
        h.send("second\r\n.\r\n");
        assert_eq!(h.deliveries.len(), 2);
        assert_eq!(
            h.deliveries[1].local[0].inbox.as_str(),
            "other@agents.localhost"
        );
        assert_eq!(h.client_body(1), "second\r\n");
    }
}

#[test]
fn dot_right_after_data_ends_an_empty_message() {
    // The DATA line's CRLF is the first CRLF of `<CRLF>.<CRLF>`.
    let h = data_session(b".\r\nQUIT\r\n", 0);
    assert_eq!(h.deliveries.len(), 1);
    assert_eq!(h.client_body(0), "");
    assert!(h.closed);
}

#[test]
fn leading_dot_on_first_line_is_unstuffed() {
    let h = data_session(b"..hidden\r\n..\r\nend\r\n.\r\n", 3);
    assert_eq!(h.client_body(0), ".hidden\r\n.\r\nend\r\n");
}

// ----- STARTTLS -------------------------------------------------------------------

#[test]
fn cve_2011_0411_plaintext_pipelined_after_starttls_is_discarded() {
    let mut h = Harness::new(ListenerKind::Submission, false);
    h.send("EHLO client.test\r\n");
    let out = h.send(&format!(
        "STARTTLS\r\nAUTH PLAIN {}\r\n",
        plain(BOT, &good_key())
    ));
    assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n");
    assert!(h.session.is_tls());
    assert!(h.session.authenticated().is_none());
    // The session starts over: the injected AUTH was not run, EHLO is required again.
    assert!(!h.steps.contains(&"authenticate"));
    assert!(
        h.send("MAIL FROM:<bot@agents.localhost>\r\n")
            .starts_with("503 5.5.1")
    );
    let ehlo = h.send("EHLO client.test\r\n");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
}

// ----- limits ---------------------------------------------------------------------

#[test]
fn max_line_length_is_answered_500_5_5_6_and_the_session_continues() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    // Exactly MAX_LINE_LENGTH bytes including CRLF is fine.
    let ok = format!("NOOP {}\r\n", "a".repeat(MAX_LINE_LENGTH - 7));
    assert_eq!(ok.len(), MAX_LINE_LENGTH);
    assert_eq!(h.send(&ok), "250 2.0.0 OK\r\n");
    let long = format!("NOOP {}\r\n", "a".repeat(MAX_LINE_LENGTH - 6));
    assert_eq!(h.send(&long), "500 5.5.6 Line too long\r\n");
    // An endless line arriving in pieces is answered once and not buffered.
    assert_eq!(
        h.send(&"b".repeat(MAX_LINE_LENGTH)),
        "500 5.5.6 Line too long\r\n"
    );
    for _ in 0..10 {
        assert_eq!(h.send(&"b".repeat(MAX_LINE_LENGTH)), "");
        assert!(h.session.input.len() <= MAX_LINE_LENGTH);
    }
    assert_eq!(h.send("bbb\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn max_recipients_then_452_4_5_3() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    h.send(&format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())));
    h.send("MAIL FROM:<bot@agents.localhost>\r\n");
    let mut cmds = String::new();
    for i in 0..MAX_RECIPIENTS {
        cmds.push_str(&format!("RCPT TO:<r{i}@remote.test>\r\n"));
    }
    let out = h.send(&cmds);
    assert_eq!(out.matches("250 2.1.5").count(), MAX_RECIPIENTS);
    assert_eq!(
        h.send("RCPT TO:<one-more@remote.test>\r\n"),
        "452 4.5.3 Too many recipients\r\n"
    );
    assert!(h.send("DATA\r\n").starts_with("354"));
    h.send("From: bot@agents.localhost\r\n\r\nhi\r\n.\r\n");
    let d = &h.deliveries[0];
    assert_eq!(
        d.outbound.as_ref().unwrap().recipients.len(),
        MAX_RECIPIENTS
    );
}

#[test]
fn max_recipients_counts_every_rcpt_command_repeated_and_refused_ones_too() {
    // The same recipient over and over: one copy, but every command counts.
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send("EHLO c\r\nMAIL FROM:<a@remote.test>\r\n");
    let out = h.send(&"RCPT TO:<bot@agents.localhost>\r\n".repeat(MAX_RECIPIENTS + 3));
    assert_eq!(out.matches("250 2.1.5").count(), MAX_RECIPIENTS, "{out}");
    assert_eq!(out.matches("452 4.5.3 Too many recipients\r\n").count(), 3, "{out}");
    // Refused recipients count too: no unbounded probing inside one transaction.
    h.send("RSET\r\nMAIL FROM:<a@remote.test>\r\n");
    let probes: String = (0..MAX_RECIPIENTS).map(|i| format!("RCPT TO:<nobody{i}@agents.localhost>\r\n")).collect();
    assert_eq!(h.send(&probes).matches("550 5.1.1").count(), MAX_RECIPIENTS);
    let lookups = h.steps.iter().filter(|s| **s == "lookup").count();
    assert_eq!(h.send("RCPT TO:<bot@agents.localhost>\r\n"), "452 4.5.3 Too many recipients\r\n");
    assert_eq!(h.steps.iter().filter(|s| **s == "lookup").count(), lookups, "no lookup after the limit");
    // A new transaction starts counting again.
    h.send("RSET\r\nMAIL FROM:<a@remote.test>\r\n");
    assert_eq!(h.send("RCPT TO:<bot@agents.localhost>\r\n"), "250 2.1.5 Recipient OK\r\n");
}

/// One address validator: the MX takes mail for a local part exactly when
/// `inbox create` (core's `Address`) accepts it. Every local part of up to 4
/// characters from `a . - _ +`, created as an inbox when it can be.
#[test]
fn the_mx_accepts_exactly_the_local_parts_inbox_create_accepts() {
    let domain: agentkeys_core::Domain = HOSTED.parse().unwrap();
    let alphabet = ['a', '.', '-', '_', '+'];
    let (mut accepted, mut refused) = (0, 0);
    for len in 1..=4u32 {
        for n in 0..5usize.pow(len) {
            let local: String = (0..len).map(|i| alphabet[n / 5usize.pow(i) % 5]).collect();
            let created = Address::new(&local, &domain).ok();
            let mut h = Harness::new(ListenerKind::Inbound, false);
            if let Some(inbox) = &created {
                h.meta.recipients.insert(inbox.clone(), Recipient { owner: owner(1), status: InboxStatus::Active, expires_at: None });
            }
            h.send("EHLO c\r\nMAIL FROM:<a@remote.test>\r\n");
            let reply = h.send(&format!("RCPT TO:<{local}@{HOSTED}>\r\n"));
            let ok = reply == "250 2.1.5 Recipient OK\r\n";
            assert_eq!(ok, created.is_some(), "{local:?}: {reply:?}");
            assert!(ok || reply.starts_with("550 5.1.1") || reply.starts_with("501 5.1.3"), "{local:?}: {reply:?}");
            if ok { accepted += 1 } else { refused += 1 }
        }
    }
    assert!(accepted > 100 && refused > 100, "{accepted} {refused}");
}

#[test]
fn the_recipient_limit_follows_the_configured_limit() {
    let limits = Limits { max_recipients: 2, ..Limits::default() };
    let mut h = Harness::with(ListenerKind::Inbound, false, limits, Throttle::new(10, Duration::from_secs(60)));
    h.send("EHLO c\r\nMAIL FROM:<a@remote.test>\r\n");
    let out = h.send("RCPT TO:<bot@agents.localhost>\r\nRCPT TO:<BOT@agents.localhost>\r\nRCPT TO:<other@agents.localhost>\r\n");
    assert_eq!(out, "250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n452 4.5.3 Too many recipients\r\n");
}

#[test]
fn declared_size_over_default_max_message_size_is_552_5_3_4_at_mail() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send("EHLO c\r\n");
    let over = format!(
        "MAIL FROM:<a@remote.test> SIZE={}\r\n",
        DEFAULT_MAX_MESSAGE_SIZE + 1
    );
    assert_eq!(h.send(&over), "552 5.3.4 Message too big\r\n");
    let at = format!(
        "MAIL FROM:<a@remote.test> SIZE={}\r\n",
        DEFAULT_MAX_MESSAGE_SIZE
    );
    assert_eq!(h.send(&at), "250 2.1.0 Sender OK\r\n");
}

#[test]
fn undeclared_oversize_data_is_drained_without_buffering_then_552_5_3_4() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send(ENVELOPE);
    let chunk = format!("{}\r\n", "x".repeat(998)).repeat(64); // 64 000 bytes per read
    let mut sent = 0;
    let mut peak = 0;
    while sent <= DEFAULT_MAX_MESSAGE_SIZE + 2 * chunk.len() {
        assert_eq!(h.send(&chunk), "");
        sent += chunk.len();
        peak = peak.max(h.session.body.capacity());
    }
    assert!(matches!(h.session.state, State::SkipData { .. }));
    assert_eq!(
        h.session.body.capacity(),
        0,
        "nothing is buffered while draining"
    );
    assert!(peak <= 2 * (DEFAULT_MAX_MESSAGE_SIZE + chunk.len()));
    // Smuggling-shaped bytes inside the drained data are not commands either.
    assert_eq!(h.send("\n.\nQUIT\r\n"), "");
    assert_eq!(h.send(".\r\n"), "552 5.3.4 Message too big\r\n");
    assert!(h.deliveries.is_empty());
    // The session goes on: a normal message is accepted.
    h.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n");
    assert!(
        h.send("small\r\n.\r\n")
            .starts_with("250 2.0.0 Message accepted")
    );
}

#[test]
fn configurable_message_size_applies_to_bdat() {
    let limits = Limits {
        max_message_size: 10,
        ..Limits::default()
    };
    let mut h = Harness::with(
        ListenerKind::Inbound,
        false,
        limits,
        Throttle::new(10, Duration::from_secs(60)),
    );
    h.send("EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\n");
    assert_eq!(h.send("BDAT 6\r\n123456"), "250 2.0.0 6 bytes received\r\n");
    // 6 + 5 > 10: the chunk is drained as data (it looks like commands, it is not).
    assert_eq!(
        h.send("BDAT 5 LAST\r\nQUIT\n"),
        "552 5.3.4 Message too big\r\n"
    );
    assert!(!h.closed);
    assert!(
        h.send("BDAT 3 LAST\r\nabc").starts_with("503 5.5.1"),
        "transaction was reset"
    );
    assert!(h.deliveries.is_empty());
}

#[test]
fn idle_timeout_is_421_4_4_2_and_close() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    assert_eq!(h.session.deadline(), h.now.instant + IDLE_TIMEOUT);
    h.advance(IDLE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(h.run(), "");
    // A command resets the idle clock.
    h.send("NOOP\r\n");
    h.advance(IDLE_TIMEOUT - Duration::from_millis(1));
    assert_eq!(h.run(), "");
    h.advance(Duration::from_millis(1));
    assert_eq!(h.run(), "421 4.4.2 Idle timeout, closing\r\n");
    assert!(h.closed);
}

#[test]
fn session_timeout_is_421_4_4_2_even_for_a_busy_client() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    let step = Duration::from_secs(60);
    let mut elapsed = Duration::ZERO;
    while elapsed + step < SESSION_TIMEOUT {
        h.advance(step);
        elapsed += step;
        assert_eq!(h.send("NOOP\r\n"), "250 2.0.0 OK\r\n", "at {elapsed:?}");
    }
    h.advance(SESSION_TIMEOUT - elapsed);
    assert_eq!(
        h.send("NOOP\r\n"),
        "421 4.4.2 Session time limit reached, closing\r\n"
    );
    assert!(h.closed);
}

#[test]
fn min_data_rate_after_grace_is_451_4_4_2_and_close() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send(ENVELOPE);
    let start = h.now.instant;
    // Nothing during the grace period is fine…
    h.advance(DATA_RATE_GRACE - Duration::from_millis(1));
    assert_eq!(h.run(), "");
    // …then 1 KiB/s keeps the connection open.
    h.send(&"a".repeat(30 * MIN_DATA_RATE as usize));
    for _ in 0..30 {
        h.advance(Duration::from_secs(1));
        assert_eq!(h.send(&"b".repeat(MIN_DATA_RATE as usize)), "");
    }
    let received = 60 * MIN_DATA_RATE;
    assert_eq!(
        h.session.deadline(),
        start + Duration::from_secs(received / MIN_DATA_RATE)
    );
    // Stalling below the average rate fails.
    h.advance(h.session.deadline() - h.now.instant);
    assert_eq!(h.run(), "451 4.4.2 Data rate too low, closing\r\n");
    assert!(h.closed);
    assert!(h.deliveries.is_empty());
}

#[test]
fn min_data_rate_applies_to_bdat_and_drained_data() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send(
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nBDAT 100000\r\n",
    );
    h.advance(DATA_RATE_GRACE);
    assert_eq!(h.run(), "451 4.4.2 Data rate too low, closing\r\n");
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send("EHLO c\r\nBDAT 100000\r\n");
    h.advance(DATA_RATE_GRACE);
    assert_eq!(h.run(), "451 4.4.2 Data rate too low, closing\r\n");
}

fn auth_plain(h: &mut Harness, user: &str, pass: &str) -> String {
    h.send(&format!("AUTH PLAIN {}\r\n", plain(user, pass)))
}

#[test]
fn max_auth_failures_then_421_4_7_0_and_close() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    for _ in 1..MAX_AUTH_FAILURES {
        assert_eq!(
            auth_plain(&mut h, BOT, &unknown_key()),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
    }
    assert_eq!(
        auth_plain(&mut h, BOT, &unknown_key()),
        "535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 Too many authentication failures, closing\r\n"
    );
    assert!(h.closed);
}

#[test]
fn auth_failure_floor_hides_which_step_failed() {
    let cases: Vec<(&str, String)> = vec![
        ("not an address", good_key()),          // step 1
        (BOT, "ak_short".into()),                // step 2
        (BOT, unknown_key()),                    // step 3
        (BOT, revoked_key()),                    // step 4
        ("other@agents.localhost", good_key()),  // step 9
        ("off@agents.localhost", good_key()),    // step 8
        ("nobody@agents.localhost", good_key()), // step 7
    ];
    for (user, pass) in cases {
        let mut h = Harness::new(ListenerKind::Submission, true);
        h.send("EHLO c\r\n");
        let before = h.now.instant;
        assert_eq!(
            auth_plain(&mut h, user, &pass),
            "535 5.7.8 Authentication credentials invalid\r\n",
            "{user}"
        );
        let (requested, until) = h.waits[0];
        assert_eq!(requested, before);
        let delay = until - before;
        assert!(
            delay >= AUTH_FAILURE_FLOOR && delay <= AUTH_FAILURE_FLOOR + AUTH_FAILURE_JITTER,
            "{user}: {delay:?}"
        );
        // The reply was held until then.
        assert_eq!(
            h.steps.iter().filter(|s| **s == "write").count(),
            3,
            "greeting, EHLO, then the held 535"
        );
        assert_eq!(h.steps.last(), Some(&"write"));
        assert_eq!(h.steps[h.steps.len() - 2], "wait");
    }
    // Success is not delayed.
    let h = Harness::submission();
    assert!(h.waits.is_empty());
}

#[test]
fn auth_failure_jitter_varies_between_sessions() {
    let delays: std::collections::HashSet<Duration> = (0..8u64)
        .map(|seed| {
            let now = start_now();
            let ctx = context(ListenerKind::Submission, Limits::default());
            let mut s = Session::new(ctx, "192.0.2.1".parse().unwrap(), true, now, seed);
            s.feed(format!("EHLO c\r\nAUTH PLAIN {}\r\n", plain("x", "y")).as_bytes());
            loop {
                match s.poll(now) {
                    Step::Wait(until) => break until - now.instant,
                    Step::Write(_) => {}
                    Step::CheckThrottle(_) => s.throttle_result(Ok(false), now),
                    Step::RecordFailure(_) => s.failure_recorded(Ok(()), now),
                    Step::Audit(event) => s.audit_result(Ok(receipt_for(&event, 0)), now),
                    other => panic!("{other:?}"),
                }
            }
        })
        .collect();
    assert!(delays.len() > 1, "{delays:?}");
}

#[test]
fn default_auth_throttle_refuses_even_correct_credentials_with_454_4_7_0() {
    let throttle = Throttle::new(DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_WINDOW);
    let mut failures = 0;
    // Several connections from the same address, each below the per-connection cap.
    while failures < DEFAULT_AUTH_THROTTLE_FAILURES {
        let mut h = Harness::with(
            ListenerKind::Submission,
            true,
            Limits::default(),
            throttle.clone(),
        );
        h.send("EHLO c\r\n");
        for _ in 0..2 {
            if failures < DEFAULT_AUTH_THROTTLE_FAILURES {
                assert!(auth_plain(&mut h, BOT, &unknown_key()).starts_with("535 5.7.8"));
                failures += 1;
            }
        }
    }
    let mut h = Harness::with(
        ListenerKind::Submission,
        true,
        Limits::default(),
        throttle.clone(),
    );
    h.send("EHLO c\r\n");
    assert_eq!(
        auth_plain(&mut h, BOT, &good_key()),
        "454 4.7.0 Too many authentication failures from your address, try again later\r\n"
    );
    assert!(
        !h.steps.contains(&"authenticate"),
        "credentials were not checked"
    );
    assert!(
        h.send("AUTH LOGIN\r\n").starts_with("454 4.7.0"),
        "no SASL exchange either"
    );
    // Once the window has passed, the correct key works again.
    let mut h = Harness::with(
        ListenerKind::Submission,
        true,
        Limits::default(),
        throttle.clone(),
    );
    h.advance(DEFAULT_AUTH_THROTTLE_WINDOW + Duration::from_secs(10));
    h.send("EHLO c\r\n");
    assert_eq!(
        auth_plain(&mut h, BOT, &good_key()),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(h.throttle.tracked(), 0, "expired entries are pruned");
}

/// The order of a failed AUTH's steps: the throttle before anything of the
/// credentials is looked at, the failure counted after the decision is
/// recorded, and the refusal held to its floor from when the credentials
/// arrived (the count's time included).
#[test]
fn a_failed_auth_asks_the_throttle_first_and_counts_the_failure_before_answering() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    let asked = h.steps.len();
    let before = h.now.instant;
    assert!(auth_plain(&mut h, BOT, &unknown_key()).starts_with("535 5.7.8"));
    assert_eq!(h.steps[asked..], ["throttle", "authenticate", "audit", "count failure", "wait", "write"]);
    assert_eq!(h.waits[0].0, before);
    assert!(h.waits[0].1 >= before + AUTH_FAILURE_FLOOR);
    assert_eq!(h.throttle.tracked(), 1, "counted against the address");
    // A success is counted nowhere.
    let mut ok = Harness::new(ListenerKind::Submission, true);
    ok.send("EHLO c\r\n");
    assert!(auth_plain(&mut ok, BOT, &good_key()).starts_with("235 2.7.0"));
    assert!(!ok.steps.contains(&"count failure"));
    assert_eq!(ok.throttle.tracked(), 0);
}

/// When the failure counters cannot be read (the shared store is down) AUTH
/// is `454 4.7.0` without the credentials being checked; when a failure cannot
/// be counted, its refusal still goes out, held to its floor.
#[test]
fn failure_counters_that_fail_refuse_auth_with_454_and_never_let_a_refusal_through() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    h.throttle.fail(true);
    assert_eq!(
        auth_plain(&mut h, BOT, &good_key()),
        "454 4.7.0 Temporary authentication failure, try again later\r\n"
    );
    assert!(!h.steps.contains(&"authenticate"), "credentials were not checked");
    assert!(h.send("MAIL FROM:<bot@agents.localhost>\r\n").starts_with("530 5.7.0"), "not authenticated");

    // Counters readable, but the write fails: the refusal stands, after its floor.
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    let throttle = h.throttle.clone();
    let mut steps = 0;
    h.session.feed(format!("AUTH PLAIN {}\r\n", plain(BOT, &unknown_key())).as_bytes());
    let received = h.now.instant;
    let mut out = String::new();
    loop {
        match h.session.poll(h.now) {
            Step::CheckThrottle(peer) => h.session.throttle_result(throttle.is_blocked(peer, h.now), h.now),
            Step::Authenticate(c) => {
                let facts = h.meta.facts(&c);
                h.session.auth_result(facts, h.now);
            }
            Step::Audit(event) => h.session.audit_result(Ok(receipt_for(&event, 0)), h.now),
            Step::RecordFailure(_) => {
                steps += 1;
                h.session.failure_recorded(Err(StoreError::Backend("injected".into())), h.now);
            }
            Step::Wait(until) => {
                assert!(until >= received + AUTH_FAILURE_FLOOR);
                let d = until - h.now.instant;
                h.advance(d);
            }
            Step::Write(bytes) => out.push_str(std::str::from_utf8(&bytes).unwrap()),
            Step::NeedInput => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(steps, 1);
    assert_eq!(out, "535 5.7.8 Authentication credentials invalid\r\n");
    assert_eq!(throttle.tracked(), 0, "nothing was counted");
}

#[test]
fn max_bad_commands_then_421_4_7_0() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    for _ in 1..MAX_BAD_COMMANDS {
        assert_eq!(h.send("FOO\r\n"), "500 5.5.1 Command not recognized\r\n");
    }
    assert_eq!(
        h.send("FOO\r\n"),
        "500 5.5.1 Command not recognized\r\n421 4.7.0 Too many errors, closing\r\n"
    );
    assert!(h.closed);
}

// ----- AUTH and submission -----------------------------------------------------------

#[test]
fn auth_login_and_plain_without_initial_response() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    assert_eq!(h.send("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.send(&format!("{}\r\n", b64(BOT))), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        h.send(&format!("{}\r\n", b64(&good_key()))),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(h.session.authenticated().unwrap().inbox().as_str(), BOT);
    assert!(h.send("AUTH LOGIN\r\n").starts_with("503 5.5.1"));

    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    assert_eq!(
        h.send(&format!("AUTH LOGIN {}\r\n", b64(BOT))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        h.send(&format!("{}\r\n", b64(&good_key()))),
        "235 2.7.0 Authentication successful\r\n"
    );

    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    assert_eq!(h.send("AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(
        h.send(&format!("{}\r\n", plain(BOT, &good_key()))),
        "235 2.7.0 Authentication successful\r\n"
    );
}

#[test]
fn auth_plain_authzid_must_be_empty_or_the_user() {
    use base64::Engine as _;
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    let other = base64::engine::general_purpose::STANDARD
        .encode(format!("other@agents.localhost\0{BOT}\0{}", good_key()));
    assert!(
        h.send(&format!("AUTH PLAIN {other}\r\n"))
            .starts_with("535 5.7.8")
    );
    let same =
        base64::engine::general_purpose::STANDARD.encode(format!("{BOT}\0{BOT}\0{}", good_key()));
    assert!(
        h.send(&format!("AUTH PLAIN {same}\r\n"))
            .starts_with("235 2.7.0")
    );
}

#[test]
fn every_auth_decision_is_audited_before_it_takes_effect() {
    // Success: one record, actor the agent, subject the inbox, no secret.
    let h = Harness::submission();
    assert_eq!(h.audits.len(), 1);
    let granted = &h.audits[0];
    assert_eq!(granted.operation, crate::auth_audit::OP_SUBMISSION_AUTH);
    assert_eq!(granted.outcome, agentkeys_audit::Outcome::Ok);
    assert_eq!(granted.subject, BOT);
    assert!(matches!(granted.actor, agentkeys_audit::Actor::Agent(_)));
    let authenticate = h.steps.iter().position(|s| *s == "authenticate").unwrap();
    assert_eq!(h.steps[authenticate + 1], "audit", "recorded before the 235 is written");

    // Each failing step is recorded with its reason; the username only when it
    // names one of our inboxes; never the password.
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("not an address", good_key(), "INVALID_USERNAME", "-"),
        (BOT, "ak_short".into(), "MALFORMED_KEY", "-"),
        (BOT, unknown_key(), "KEY_NOT_FOUND", BOT),
        (BOT, revoked_key(), "KEY_REVOKED", BOT),
        ("nobody@agents.localhost", good_key(), "INBOX_NOT_FOUND", "-"),
        ("off@agents.localhost", good_key(), "INBOX_INACTIVE", "off@agents.localhost"),
    ];
    for (user, pass, reason, subject) in cases {
        let mut h = Harness::new(ListenerKind::Submission, true);
        h.send("EHLO c\r\n");
        assert!(auth_plain(&mut h, user, &pass).starts_with("535 5.7.8"), "{user}");
        assert_eq!(h.audits.len(), 1, "{user}");
        let refused = &h.audits[0];
        assert_eq!(refused.outcome, agentkeys_audit::Outcome::Denied, "{user}");
        assert_eq!(refused.detail["reason"], reason, "{user}");
        assert_eq!(refused.detail["door"], "smtp", "{user}");
        assert_eq!(refused.subject, subject, "{user}");
        let text = serde_json::to_string(refused).unwrap();
        assert!(!text.contains(&pass[3..]), "{user}: the password is in {text}");
    }
}

#[test]
fn an_auth_decision_that_cannot_be_audited_does_not_take_effect() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    h.meta.set_fault(Fault::Audit);
    assert_eq!(
        auth_plain(&mut h, BOT, &good_key()),
        "454 4.7.0 Temporary authentication failure, try again later\r\n"
    );
    // Still unauthenticated: MAIL needs AUTH.
    assert!(h.send("MAIL FROM:<bot@agents.localhost>\r\n").starts_with("530 5.7.0"));
    // Once the log works again, the same credentials succeed.
    h.meta.set_fault(Fault::None);
    assert!(auth_plain(&mut h, BOT, &good_key()).starts_with("235 2.7.0"));
    assert_eq!(h.audits.len(), 1);
}

#[test]
fn auth_store_failure_is_454_4_7_0_and_not_a_credential_failure() {
    let mut h = Harness::new(ListenerKind::Submission, true);
    h.send("EHLO c\r\n");
    h.meta.set_fault(Fault::AuthFacts);
    for _ in 0..MAX_AUTH_FAILURES + 1 {
        assert_eq!(
            auth_plain(&mut h, BOT, &good_key()),
            "454 4.7.0 Temporary authentication failure, try again later\r\n"
        );
    }
    assert!(!h.closed);
    assert_eq!(h.throttle.tracked(), 0);
}

#[test]
fn submission_routes_local_and_remote_recipients_from_the_envelope_only() {
    let mut h = Harness::submission();
    let out = h.send(concat!(
        "MAIL FROM:<BOT@Agents.Localhost>\r\n",
        "RCPT TO:<other@agents.localhost>\r\n",
        "RCPT TO:<Someone+tag@Gmail.test>\r\n",
        "RCPT TO:<someone+tag@gmail.test>\r\n",
        "DATA\r\n",
    ));
    assert_eq!(
        out,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    );
    let out = h.send(
        "From: \"Bot\" <Bot@agents.localhost>\r\nTo: foreign@agents.localhost\r\n\r\nhi\r\n.\r\n",
    );
    assert!(out.starts_with("250 2.0.0 Message accepted as "), "{out}");
    let d = &h.deliveries[0];
    assert_eq!(
        d.local,
        vec![LocalRecipient {
            inbox: "other@agents.localhost".parse().unwrap(),
            owner: owner(1),
            delivered_to: None,
        }]
    );
    let outbound = d.outbound.as_ref().unwrap();
    assert_eq!(
        outbound.recipients,
        vec![
            "Someone+tag@gmail.test".to_owned(),
            "someone+tag@gmail.test".to_owned()
        ]
    );
    assert_eq!(outbound.sender.proof().inbox().as_str(), BOT);
    // The queued copy carries the receipt of this session's AUTH record.
    let auth = h.audits.iter().position(|e| e.operation == "submission.auth").unwrap();
    assert_eq!(outbound.sender.receipt(), &receipt_for(&h.audits[auth], auth));
    let body = h.body(0);
    assert!(
        body.starts_with(
            "Received: from client.test (192.0.2.10)\r\n\tby mx.agents.localhost with ESMTPSA id "
        ),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "id {};\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\nFrom: ",
            d.id
        )),
        "{body}"
    );
}

#[test]
fn inbound_routes_by_envelope_never_by_to_header() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send(ENVELOPE);
    h.send("To: foreign@agents.localhost\r\nCc: other@agents.localhost\r\n\r\nhi\r\n.\r\n");
    let d = &h.deliveries[0];
    assert_eq!(d.local.len(), 1);
    assert_eq!(d.local[0].inbox.as_str(), BOT);
    assert_eq!(d.local[0].owner, owner(1));
    assert!(d.outbound.is_none());
    assert!(h.body(0).contains("with ESMTP id"));
}

#[test]
fn a_subaddress_reaches_its_base_inbox_once_and_keeps_its_address() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    let out = h.send(concat!(
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\n",
        "RCPT TO:<Bot+GitHub@agents.localhost>\r\n",
        "RCPT TO:<bot+other@agents.localhost>\r\n",
        "RCPT TO:<nobody+github@agents.localhost>\r\n",
        "DATA\r\n",
    ));
    assert!(out.contains("250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1"), "{out}");
    h.send("Subject: x\r\n\r\nhi\r\n.\r\n");
    let d = &h.deliveries[0];
    assert_eq!(d.local.len(), 1, "one copy per inbox");
    assert_eq!(d.local[0].inbox.as_str(), BOT);
    assert_eq!(d.local[0].delivered_to.as_deref(), Some("bot+github@agents.localhost"));
}

#[test]
fn from_header_must_be_exactly_the_authenticated_inbox() {
    let bad = [
        "From: other@agents.localhost\r\n\r\nx\r\n",
        "From: bot@agents.localhost, other@agents.localhost\r\n\r\nx\r\n",
        "From: bot@agents.localhost\r\nFrom: other@agents.localhost\r\n\r\nx\r\n",
        "From: friends: bot@agents.localhost;\r\n\r\nx\r\n",
        "Subject: no from\r\n\r\nx\r\n",
        "",
        "From: \"bot@agents.localhost\" <evil@remote.test>\r\n\r\nx\r\n",
    ];
    for body in bad {
        let mut h = Harness::submission();
        h.send("MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n");
        let out = h.send(&format!("{body}.\r\n"));
        assert_eq!(
            out, "550 5.7.1 From: header must hold exactly the authenticated inbox\r\n",
            "{body:?}"
        );
        assert!(h.deliveries.is_empty());
        // The transaction is over; a new one may start.
        assert!(
            h.send("MAIL FROM:<bot@agents.localhost>\r\n")
                .starts_with("250")
        );
    }
    for body in [
        "From: bot@agents.localhost\r\n\r\nx\r\n",
        "From: Bot <BOT@AGENTS.LOCALHOST>\r\n\r\nx\r\n",
        "from:   <bot@agents.localhost> (comment)\r\n\r\nx\r\n",
    ] {
        let mut h = Harness::submission();
        h.send("MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n");
        assert!(
            h.send(&format!("{body}.\r\n")).starts_with("250 2.0.0"),
            "{body:?}"
        );
    }
}

#[test]
fn bdat_from_header_is_checked_too() {
    let mut h = Harness::submission();
    h.send("MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\n");
    let msg = "From: evil@remote.test\r\n\r\nx\r\n";
    assert!(
        h.send(&format!("BDAT {} LAST\r\n{msg}", msg.len()))
            .starts_with("550 5.7.1")
    );
}

#[test]
fn storage_failure_never_answers_250() {
    for (fault, reply) in [
        (BlobFault::Full, "452 4.3.1 Insufficient system storage\r\n"),
        (
            BlobFault::Io,
            "451 4.3.0 Temporary local error, try again later\r\n",
        ),
    ] {
        let mut h = Harness::new(ListenerKind::Inbound, false);
        h.blob_fault = fault;
        h.send(ENVELOPE);
        assert_eq!(h.send("x\r\n.\r\n"), reply);
    }
    let mut h = Harness::submission();
    h.meta.set_fault(Fault::Enqueue);
    h.send("MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n");
    assert_eq!(
        h.send("From: bot@agents.localhost\r\n\r\nx\r\n.\r\n"),
        "451 4.3.0 Temporary local error, try again later\r\n"
    );
}

#[test]
fn shutdown_closes_at_the_next_command_boundary_after_finishing_data() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send(ENVELOPE);
    h.send("part one\r\n");
    h.session.shutdown();
    assert_eq!(h.run(), "", "a transfer in progress is not cut");
    let out = h.send("part two\r\n.\r\n");
    assert!(out.starts_with("250 2.0.0 Message accepted"), "{out}");
    assert!(
        out.ends_with("421 4.3.2 Server shutting down, try again later\r\n"),
        "{out}"
    );
    assert!(h.closed);
    assert_eq!(h.deliveries.len(), 1);
}

#[test]
fn pipelined_replies_are_sent_in_one_write() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send("EHLO c\r\n");
    let writes_before = h.steps.iter().filter(|s| **s == "write").count();
    let out = h.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nRCPT TO:<nobody@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n");
    assert_eq!(
        out,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 Mailbox unknown\r\n550 5.7.1 Relay access denied\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    );
    assert_eq!(
        h.steps.iter().filter(|s| **s == "write").count(),
        writes_before + 1
    );
}

#[test]
fn message_ids_are_time_ordered_ulids() {
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send("EHLO c\r\n");
    for i in 0..3 {
        h.advance(Duration::from_millis(5));
        h.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n");
        h.send(&format!("m{i}\r\n.\r\n"));
    }
    let ids: Vec<_> = h.deliveries.iter().map(|d| d.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids[0].timestamp_ms(), T0 as u64 * 1000 + 5);
}

#[test]
fn now_unix_secs_handles_times_before_the_epoch() {
    let n = Now {
        instant: Instant::now(),
        system: UNIX_EPOCH - Duration::from_secs(5),
    };
    assert_eq!(n.unix_secs(), -5);
    let n = Now {
        instant: Instant::now(),
        system: SystemTime::UNIX_EPOCH + Duration::from_secs(5),
    };
    assert_eq!(n.unix_secs(), 5);
}

#[tokio::test]
async fn store_delivery_uses_one_put_durable_then_enqueues() {
    let blobs = FakeBlobs::default();
    let meta = FakeMeta::new();
    let mut h = Harness::submission();
    h.send("MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<other@agents.localhost>\r\nRCPT TO:<foreign@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n");
    h.send("From: bot@agents.localhost\r\n\r\nhi\r\n.\r\n");
    let d = received_now(h.deliveries.pop().unwrap());
    store_delivery_ok(&blobs, &meta, &d).await;
    let puts = blobs.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 1, "one put_durable per message");
    assert_eq!(
        puts[0],
        vec![
            format!("{}/other@agents.localhost/{}.eml", owner(1), d.id),
            format!("{}/foreign@agents.localhost/{}.eml", owner(2), d.id),
            format!("queue/{}.eml", d.id),
        ]
    );
    let queue = meta.queue.lock().unwrap().clone();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].message_id, d.id.to_string());
    assert_eq!(queue[0].sender.as_str(), BOT);
    assert_eq!(queue[0].owner, owner(1));
    assert_eq!(queue[0].recipients, vec!["x@remote.test".to_owned()]);
    assert_eq!(queue[0].size, d.message.len() as u64);
    assert_eq!(queue[0].queued_at, T0);
    // A failed blob write queues nothing.
    let meta = FakeMeta::new();
    *blobs.fault.lock().unwrap() = BlobFault::Full;
    let err = crate::store_delivery(&blobs, &meta, &d).await.unwrap_err();
    assert_eq!(Reply::from(&err), Reply::StorageFull);
    assert!(meta.queue.lock().unwrap().is_empty());
}

/// Stands in for the DKIM signer: tags the bytes and records the domain.
struct TagSigner(std::sync::Mutex<Vec<String>>, bool);

#[async_trait::async_trait]
impl crate::OutboundSigner for TagSigner {
    async fn sign(&self, sender_domain: &str, message: &[u8]) -> Result<Vec<u8>, String> {
        self.0.lock().unwrap().push(sender_domain.to_owned());
        if self.1 {
            return Err("no key (injected)".to_owned());
        }
        let mut out = b"DKIM-Signature: test\r\n".to_vec();
        out.extend_from_slice(message);
        Ok(out)
    }
}

#[tokio::test]
async fn only_the_queued_copy_is_signed_and_a_signing_failure_stores_nothing() {
    let blobs = FakeBlobs::default();
    let meta = FakeMeta::new();
    let mut h = Harness::submission();
    h.send("MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<other@agents.localhost>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n");
    h.send("From: bot@agents.localhost\r\n\r\nhi\r\n.\r\n");
    let d = received_now(h.deliveries.pop().unwrap());
    let signer = TagSigner(std::sync::Mutex::new(Vec::new()), false);
    crate::store_delivery_signed(&blobs, &meta, Some(&signer), &d).await.unwrap();
    assert_eq!(*signer.0.lock().unwrap(), vec!["agents.localhost".to_owned()]);
    let stored = blobs.blobs.lock().unwrap().clone();
    let local = &stored[&format!("{}/other@agents.localhost/{}.eml", owner(1), d.id)];
    let queued = &stored[&format!("queue/{}.eml", d.id)];
    assert_eq!(local, &d.message, "hosted copy stays as received");
    assert!(queued.starts_with(b"DKIM-Signature: test\r\n"));
    assert!(queued.ends_with(&d.message));
    assert_eq!(meta.queue.lock().unwrap()[0].size, queued.len() as u64);

    let blobs = FakeBlobs::default();
    let meta = FakeMeta::new();
    let failing = TagSigner(std::sync::Mutex::new(Vec::new()), true);
    let err = crate::store_delivery_signed(&blobs, &meta, Some(&failing), &d).await.unwrap_err();
    assert_eq!(Reply::from(&err), Reply::StorageFailed);
    assert!(blobs.puts.lock().unwrap().is_empty(), "nothing written");
    assert!(meta.queue.lock().unwrap().is_empty());
}

/// `d` with an id of now: the harness's clock stands at `T0`, but queueing
/// refuses an id whose acknowledgement window has closed by the wall clock
/// (`agentkeys_store::acknowledgement_closed`).
fn received_now(mut d: Delivery) -> Delivery {
    d.id = ulid::Ulid::new();
    d
}

async fn store_delivery_ok(blobs: &FakeBlobs, meta: &FakeMeta, d: &Delivery) {
    crate::store_delivery(blobs, meta, d).await.unwrap();
}

#[tokio::test]
async fn lookup_recipient_checks_the_domain_first() {
    let meta = FakeMeta::new();
    let q = |a: &str| {
        let (_, domain) = a.rsplit_once('@').unwrap();
        RecipientQuery {
            address: a.into(),
            domain: domain.into(),
            inbox: a.parse().ok(),
            tag: None,
        }
    };
    assert_eq!(
        crate::lookup_recipient(&meta, &q("x@remote.test"))
            .await
            .unwrap(),
        RecipientAnswer::NotHosted
    );
    assert_eq!(
        crate::lookup_recipient(&meta, &q("nobody@agents.localhost"))
            .await
            .unwrap(),
        RecipientAnswer::Hosted(None)
    );
    assert_eq!(
        crate::lookup_recipient(&meta, &q("a+b@agents.localhost"))
            .await
            .unwrap(),
        RecipientAnswer::Hosted(None)
    );
    assert!(matches!(
        crate::lookup_recipient(&meta, &q("off@agents.localhost"))
            .await
            .unwrap(),
        RecipientAnswer::Hosted(Some(Recipient {
            status: InboxStatus::Disabled,
            ..
        }))
    ));
}

#[test]
fn plaintext_auth_only_from_loopback_and_only_when_enabled() {
    let dev = |enabled| {
        let ctx = SessionContext {
            allow_plaintext_auth_on_loopback: enabled,
            ..Arc::try_unwrap(context(ListenerKind::Submission, Limits::default())).unwrap()
        };
        Arc::new(ctx)
    };
    let mut h = Harness::with_context(dev(true), "127.0.0.1", false);
    let ehlo = h.send("EHLO c\r\n");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(auth_plain(&mut h, BOT, &good_key()).starts_with("235 2.7.0"));
    let mut h = Harness::with_context(dev(true), "192.0.2.10", false);
    h.send("EHLO c\r\n");
    assert!(auth_plain(&mut h, BOT, &good_key()).starts_with("538 5.7.11"));
    let mut h = Harness::with_context(dev(false), "127.0.0.1", false);
    h.send("EHLO c\r\n");
    assert!(auth_plain(&mut h, BOT, &good_key()).starts_with("538 5.7.11"));
}

#[test]
fn an_idle_session_is_small() {
    // 1,000 idle connections must fit in well under 64 MB: the session itself is a
    // few hundred bytes, and its buffers are empty between commands.
    assert!(
        std::mem::size_of::<Session>() <= 1024,
        "{}",
        std::mem::size_of::<Session>()
    );
    let mut h = Harness::new(ListenerKind::Inbound, false);
    h.send("EHLO client.test\r\n");
    assert_eq!(
        h.session.out.capacity(),
        0,
        "replies were handed to the shell"
    );
    assert_eq!(
        h.session.body.capacity(),
        0,
        "no message buffer outside DATA/BDAT"
    );
    assert!(h.session.input.capacity() <= 4 * MAX_LINE_LENGTH);
}

#[test]
fn random_input_never_panics_and_buffers_stay_bounded() {
    use rand::{Rng, SeedableRng};
    const PIECES: &[&str] = &[
        "EHLO x\r\n",
        "HELO x\r\n",
        "MAIL FROM:<a@remote.test>\r\n",
        "RCPT TO:<bot@agents.localhost>\r\n",
        "RCPT TO:<x@remote.test>\r\n",
        "DATA\r\n",
        "BDAT 5\r\n",
        "BDAT 3 LAST\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "AUTH PLAIN\r\n",
        "AUTH LOGIN\r\n",
        "STARTTLS\r\n",
        ".\r\n",
        "\r\n.\r\n",
        "\n.\n",
        "\r.\r\n",
        "..\r\n",
        "\r\n",
        "\n",
        "\r",
        ".",
        "x",
        "=\r\n",
        "*\r\n",
        "\0",
        "\u{e9}",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for kind in [ListenerKind::Inbound, ListenerKind::Submission] {
        for _ in 0..200 {
            let mut h = Harness::new(kind, rng.gen_bool(0.5));
            for _ in 0..60 {
                if h.closed {
                    break;
                }
                let mut chunk = String::new();
                for _ in 0..rng.gen_range(1..6) {
                    chunk.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
                }
                if rng.gen_bool(0.02) {
                    chunk.push_str(&"y".repeat(rng.gen_range(0..3 * MAX_LINE_LENGTH)));
                }
                let out = h.send(&chunk);
                // Every reply line is well formed.
                for line in lines(&out) {
                    assert!(line.ends_with("\r\n") && line.len() >= 5, "{line:?}");
                    assert!(
                        line.as_bytes()[..3].iter().all(u8::is_ascii_digit),
                        "{line:?}"
                    );
                }
                assert!(h.session.input.len() <= 3 * MAX_LINE_LENGTH + 200);
                assert!(h.session.body.len() <= DEFAULT_MAX_MESSAGE_SIZE);
            }
        }
    }
}

// ----- properties over generated input ------------------------------------------
//
// The same properties the fuzz target in `fuzz/fuzz_targets/smtp_session.rs`
// checks, over a fixed, deterministic sample so every test run covers them.

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces a client (or an attacker) might send: commands, data lines, the
/// smuggling terminators, chunks, garbage.
fn piece(g: &mut Gen) -> Vec<u8> {
    const PIECES: &[&str] = &[
        "EHLO client.test\r\n",
        "HELO client.test\r\n",
        "MAIL FROM:<sender@elsewhere.test>\r\n",
        "MAIL FROM:<bot@agents.localhost>\r\n",
        "MAIL FROM:<bot@agents.localhost> SIZE=999999999\r\n",
        "RCPT TO:<bot@agents.localhost>\r\n",
        "RCPT TO:<other@agents.localhost>\r\n",
        "RCPT TO:<nobody@agents.localhost>\r\n",
        "RCPT TO:<off@agents.localhost>\r\n",
        "RCPT TO:<someone@elsewhere.test>\r\n",
        "DATA\r\n",
        "From: bot@agents.localhost\r\n",
        "Subject: hello\r\n",
        "\r\n",
        "body line\r\n",
        ".\r\n",
        "\r\n.\r\n",
        "\n.\n",
        "\n.\r\n",
        "\r.\r\n",
        "..leading dot\r\n",
        "BDAT 5\r\nhello",
        "BDAT 7 LAST\r\n.\r\nabc",
        "BDAT 0 LAST\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "VRFY bot\r\n",
        "STARTTLS\r\n",
        "AUTH LOGIN\r\n",
        "*\r\n",
        "QUIT\r\n",
        "\r",
        "\n",
    ];
    if g.below(4) == 0 {
        // A whole transaction, with a smuggling attempt inside the body half the time.
        let mut t = b"MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<other@agents.localhost>\r\nDATA\r\n\
                      From: bot@agents.localhost\r\nSubject: t\r\n\r\nbody\r\n"
            .to_vec();
        if g.below(2) == 0 {
            t.extend_from_slice(PIECES[16 + g.below(4)].as_bytes());
            t.extend_from_slice(b"MAIL FROM:<evil@elsewhere.test>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\nsmuggled\r\n");
        }
        t.extend_from_slice(b".\r\n");
        return t;
    }
    match g.below(PIECES.len() + 4) {
        i if i < PIECES.len() => PIECES[i].as_bytes().to_vec(),
        i if i == PIECES.len() => format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())).into_bytes(),
        i if i == PIECES.len() + 1 => vec![b'a'; MAX_LINE_LENGTH + g.below(64)],
        _ => (0..g.below(24)).map(|_| g.next() as u8).collect(),
    }
}

/// Feeds `input` in pieces cut at `cuts` (sorted offsets); returns every reply
/// byte and the harness.
fn drive(kind: ListenerKind, input: &[u8], cuts: &[usize]) -> (String, Harness) {
    let mut h = Harness::new(kind, true);
    let mut out = String::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        if h.closed {
            break;
        }
        h.session.feed(&input[start..end]);
        out.push_str(&h.run());
        start = end;
    }
    (out, h)
}

/// A reply with the message id (a fresh ULID per run) masked.
fn masked(replies: &str) -> String {
    replies
        .split_inclusive("\r\n")
        .map(|l| match l.strip_prefix("250 2.0.0 Message accepted as ") {
            Some(_) => "250 2.0.0 Message accepted as <id>\r\n".to_owned(),
            None => l.to_owned(),
        })
        .collect()
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn generated_sessions_keep_the_protocol_properties() {
    let (mut delivered, mut authenticated, mut refused) = (0, 0, 0);
    for seed in 1..=400u64 {
        let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let kind = if seed % 2 == 0 { ListenerKind::Inbound } else { ListenerKind::Submission };
        let mut input = b"EHLO c\r\n".to_vec();
        if seed % 4 == 1 {
            input.extend(format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())).into_bytes());
        }
        for _ in 0..g.below(40) {
            input.extend(piece(&mut g));
        }
        let mut cuts: Vec<usize> = (0..g.below(12)).map(|_| g.below(input.len() + 1)).collect();
        cuts.sort_unstable();

        let (whole, h1) = drive(kind, &input, &[]);
        let (split, h2) = drive(kind, &input, &cuts);
        delivered += h1.deliveries.len();
        authenticated += usize::from(whole.contains("235 2.7.0"));
        refused += usize::from(whole.contains("500 5.5.6") || whole.contains("503 5.5.1"));

        // 1. Every reply is a well-formed SMTP reply line.
        for line in whole.split_inclusive("\r\n") {
            let b = line.as_bytes();
            assert!(
                line.ends_with("\r\n")
                    && b.len() >= 6
                    && (b'2'..=b'5').contains(&b[0])
                    && b[1].is_ascii_digit()
                    && b[2].is_ascii_digit()
                    && (b[3] == b' ' || b[3] == b'-'),
                "seed {seed}: malformed reply {line:?}"
            );
        }
        // 2. No smuggling: never more messages than real terminators
        //    (`<CRLF>.<CRLF>` or a `BDAT … LAST`).
        let terminators = count(&input, b"\r\n.\r\n") + count(&input, b"LAST\r\n");
        assert!(
            h1.deliveries.len() <= terminators,
            "seed {seed}: {} messages from {terminators} terminators",
            h1.deliveries.len()
        );
        // 3. How the bytes were cut into reads changes nothing.
        assert_eq!(masked(&whole), masked(&split), "seed {seed}: cuts {cuts:?} changed the replies");
        assert_eq!(h1.deliveries.len(), h2.deliveries.len(), "seed {seed}");
        for (a, b) in h1.deliveries.iter().zip(&h2.deliveries) {
            let strip = |m: &Bytes| {
                let s = String::from_utf8_lossy(m).into_owned();
                s.find(" +0000\r\n").map_or(s.clone(), |i| s[i..].to_owned())
            };
            assert_eq!(strip(&a.message), strip(&b.message), "seed {seed}");
            assert_eq!(a.local, b.local, "seed {seed}");
        }
    }
    // The sample reaches the interesting states, so the properties are not vacuous.
    assert!(delivered >= 20 && authenticated >= 20 && refused >= 20, "{delivered} {authenticated} {refused}");
}

/// The DATA end rule through the whole session, over generated bodies with a
/// forged second transaction inside, cut into reads anywhere: the message ends
/// exactly where RFC 5321 §4.5.2 says (the data receiver's reference), its
/// content is the input up to there with dot-stuffing undone, a NUL anywhere in
/// it refuses it (`550 5.6.0`), and the forged transaction never runs.
mod smuggling_properties {
    use super::*;
    use crate::data::tests::{piece, reference};
    use proptest::prelude::*;

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(piece(), 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn data_ends_only_at_crlf_dot_crlf_in_the_session(
            submission in any::<bool>(),
            before in body(),
            after in body(),
            cut_points in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let kind = if submission { ListenerKind::Submission } else { ListenerKind::Inbound };
            let mut data = b"From: bot@agents.localhost\r\n\r\n".to_vec();
            data.extend_from_slice(&before);
            data.extend_from_slice(SMUGGLED.as_bytes());
            data.extend_from_slice(&after);
            data.extend_from_slice(b"\r\n.\r\n");
            let mut input = b"EHLO c\r\n".to_vec();
            if submission {
                input.extend(format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())).into_bytes());
            }
            input.extend_from_slice(b"MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n");
            input.extend_from_slice(&data);
            input.extend_from_slice(b"QUIT\r\n");
            let mut cuts: Vec<usize> = cut_points.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();

            let (replies, h) = drive(kind, &input, &cuts);
            let (content, end) = reference(&data);
            let end = end.expect("the data is terminated");
            let after_354 = replies.split_once("354 Start mail input; end with <CRLF>.<CRLF>\r\n").map(|(_, r)| r).unwrap_or_default();
            if contains_nul(&content) {
                prop_assert!(after_354.starts_with("550 5.6.0 "), "{:?}", replies);
                prop_assert!(h.deliveries.is_empty() || end < data.len());
            } else {
                prop_assert!(after_354.starts_with("250 2.0.0 Message accepted as "), "{:?}", replies);
                prop_assert_eq!(h.client_body(0).into_bytes(), content);
            }
            if end == data.len() {
                // No `<CRLF>.<CRLF>` before the real one: one transaction, ours.
                prop_assert!(h.deliveries.len() <= 1);
                prop_assert!(h.deliveries.iter().all(|d| d.local.len() == 1 && d.local[0].inbox.as_str() == BOT));
                prop_assert_eq!(after_354.matches("\r\n").count(), 2, "{:?}", replies);
                prop_assert!(after_354.ends_with("221 2.0.0 Bye\r\n"));
                prop_assert!(h.closed);
            }
        }
    }
}
