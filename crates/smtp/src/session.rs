//! The SMTP session as a sans-IO state machine.
//!
//! A [`Session`] never touches a socket, a store or a clock. The shell (or a test)
//! feeds it the bytes the client sent ([`Session::feed`]) and asks it what to do
//! next ([`Session::poll`]), passing the current time. Each [`Step`] is one thing
//! the shell must do: write bytes, read more, wait, look a recipient up, check
//! credentials, store a message, start TLS or close. Answers go back through
//! [`Session::recipient_result`], [`Session::auth_result`],
//! [`Session::delivery_result`] and [`Session::tls_started`].
//!
//! All connection state lives in one private `State` enum, advanced in one `match`
//! (`Session::advance`); all replies come from [`Reply`].

use std::borrow::Cow;
use std::mem;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentkeys_core::{Address, AuthFacts, AuthFailure, Credentials, KeyHasher, SendAuthorized, Subaddressing, UnixTime};
use agentkeys_audit::{AuditEvent, AuditReceipt};
use agentkeys_store::StoreError;
pub use agentkeys_submission::{
    Delivery, InboundEnvelope, LocalRecipient, Outbound, RecipientAnswer, RecipientQuery,
};
use agentkeys_submission::auth_audit::{self, AuthRecorded, Door, RefusalFacts};
use agentkeys_submission::contains_nul;
use agentkeys_submission::guardrails::Accepted;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, MailFrom, RcptTo, Request};
use ulid::Ulid;

use crate::acceptance::{DeliveryError, RecipientRoute, route_recipient};
use crate::data::{Bounded, ChunkReceiver, DataReceiver, Drain};
use crate::limits::{Limits, MAX_LINE_LENGTH};
use crate::received::{Protocol, received_header, sanitize_helo};
use crate::reply::Reply;

/// `Username:` in base64, the first AUTH LOGIN challenge.
const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// `Password:` in base64, the second AUTH LOGIN challenge.
const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Which service a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// The MX (port 25): mail for hosted inboxes only, no AUTH, optional STARTTLS.
    Inbound,
    /// Submission with STARTTLS (port 587): AUTH required, only under TLS.
    Submission,
    /// Submission with implicit TLS (port 465, RFC 8314).
    SubmissionImplicitTls,
}

impl ListenerKind {
    /// The metrics and log label: `inbound`, `submission`, `submissions`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Submission => "submission",
            Self::SubmissionImplicitTls => "submissions",
        }
    }

    /// Whether this is a submission listener (AUTH, sender pinning, relaying).
    pub fn is_submission(self) -> bool {
        !matches!(self, Self::Inbound)
    }
}

/// What every session of one listener shares.
#[derive(Debug)]
pub struct SessionContext {
    /// The server's host name (greeting, EHLO, `Received:`).
    pub hostname: String,
    /// The listener's service.
    pub kind: ListenerKind,
    /// The limits to enforce.
    pub limits: Limits,
    /// Hashes presented agent keys (AUTH step 2).
    pub hasher: KeyHasher,
    /// Whether `STARTTLS` can be offered.
    pub tls_available: bool,
    /// Development only: allow AUTH without TLS from loopback addresses.
    pub allow_plaintext_auth_on_loopback: bool,
    /// How `RCPT TO` addresses with a tag (`bot+tag@d`) resolve to inboxes.
    pub subaddressing: Subaddressing,
}

/// The current time, as the shell sees it: a monotonic instant for timeouts and the
/// wall clock for `Received:`, ULIDs and credential expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub system: SystemTime,
}

impl Now {
    /// Seconds since the Unix epoch (negative before it).
    pub fn unix_secs(&self) -> UnixTime {
        match self.system.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }

    fn unix_millis(&self) -> u64 {
        self.system
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// What the shell must do next.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes (replies, possibly several for pipelined commands), then poll again.
    Write(Vec<u8>),
    /// Read from the client and [`Session::feed`] it, or poll again at
    /// [`Session::deadline`] if nothing arrives.
    NeedInput,
    /// Do nothing until this instant, then poll again (failed-AUTH latency floor).
    Wait(Instant),
    /// Look a recipient up, answer with [`Session::recipient_result`] (see
    /// [`crate::lookup_recipient`]).
    LookupRecipient(RecipientQuery),
    /// Ask the AUTH throttle ([`crate::AuthThrottle::is_blocked`]) whether this
    /// client address must be refused AUTH, answer with
    /// [`Session::throttle_result`].
    CheckThrottle(IpAddr),
    /// Fetch `AuthLookup::auth_facts` for these credentials, answer with
    /// [`Session::auth_result`].
    Authenticate(Credentials),
    /// Append this record of an AUTH decision to the audit log, answer with
    /// [`Session::audit_result`]. The decision takes effect only once it is
    /// recorded (fail-closed: no record, no `235`).
    Audit(AuditEvent),
    /// Count a failed AUTH from this client address
    /// ([`crate::AuthThrottle::record_failure`]), answer with
    /// [`Session::failure_recorded`]. The refusal is sent after it, no earlier
    /// than its latency floor from when the credentials arrived.
    RecordFailure(IpAddr),
    /// Store the message durably, answer with [`Session::delivery_result`] (see
    /// [`crate::store_delivery`]).
    Deliver(Delivery),
    /// Start TLS on the connection, then call [`Session::tls_started`].
    StartTls,
    /// Close the connection.
    Close,
}

/// One transfer of message data (`DATA`, a `BDAT` chunk, or a drained one).
struct Transfer<R> {
    receiver: R,
    started: Instant,
    received: usize,
}

impl<R> Transfer<R> {
    fn new(receiver: R, started: Instant) -> Self {
        Self {
            receiver,
            started,
            received: 0,
        }
    }
}

/// Which SASL response line the session waits for.
enum Sasl {
    Plain,
    LoginUsername,
    LoginPassword { username: Vec<u8> },
}

/// The connection state.
enum State {
    /// Reading command lines.
    Command,
    /// Dropping the rest of an over-long line (already answered).
    DiscardLine,
    /// Reading a SASL response line.
    Sasl(Sasl),
    /// Receiving `DATA` until `<CRLF>.<CRLF>`.
    Data(Transfer<DataReceiver>),
    /// Receiving one `BDAT` chunk.
    Bdat(Transfer<ChunkReceiver>),
    /// Draining data that will not be kept, then answering `reply`.
    SkipData {
        transfer: Transfer<Drain>,
        reply: Reply,
        bad_command: bool,
    },
    /// Waiting for [`Session::recipient_result`].
    LookupRecipient(RecipientQuery),
    /// Waiting for [`Session::throttle_result`] before going on with `AUTH`.
    CheckThrottle {
        mechanism: u64,
        initial_response: String,
        asked_at: Instant,
    },
    /// Waiting for [`Session::auth_result`].
    Authenticate {
        credentials: Credentials,
        received_at: Instant,
    },
    /// Waiting for [`Session::audit_result`].
    AuditAuth(Box<PendingAuth>),
    /// Waiting for [`Session::failure_recorded`], then refusing with `reply`.
    RecordFailure {
        reply: Reply,
        received_at: Instant,
    },
    /// Waiting for [`Session::delivery_result`].
    Deliver(Delivery),
    /// Waiting for [`Session::tls_started`].
    StartTls,
    /// Done; only pending replies remain to be written.
    Closed,
}

/// An AUTH decision waiting for its audit record.
struct PendingAuth {
    event: AuditEvent,
    verdict: Result<SendAuthorized, AuthFailure>,
    received_at: Instant,
    username: Option<Address>,
}

struct Helo {
    name: String,
    extended: bool,
}

/// Who the envelope sender is. A submission transaction exists only with the proof.
enum Sender {
    Inbound,
    Submission {
        proof: AuthRecorded,
        remote: Vec<String>,
    },
}

struct Transaction {
    sender: Sender,
    /// The `MAIL FROM` address as given (empty for `<>`).
    mail_from: String,
    local: Vec<LocalRecipient>,
    /// Every `RCPT` command of the transaction, accepted, repeated or refused
    /// (the recipient limit counts these, so a client cannot probe or repeat
    /// without bound).
    rcpt_commands: usize,
    bdat: bool,
}

impl Transaction {
    fn recipient_count(&self) -> usize {
        self.local.len()
            + match &self.sender {
                Sender::Inbound => 0,
                Sender::Submission { remote, .. } => remote.len(),
            }
    }

    fn has_recipient(&self, query: &RecipientQuery) -> bool {
        let local = query
            .inbox
            .as_ref()
            .is_some_and(|a| self.local.iter().any(|r| &r.inbox == a));
        let remote = match &self.sender {
            Sender::Inbound => false,
            Sender::Submission { remote, .. } => remote.contains(&query.address),
        };
        local || remote
    }
}

/// One SMTP connection's protocol state. See the module docs.
pub struct Session {
    ctx: Arc<SessionContext>,
    peer: IpAddr,
    tls: bool,
    state: State,
    input: Vec<u8>,
    consumed: usize,
    out: Vec<u8>,
    helo: Option<Helo>,
    /// The AUTH proof with the receipt of its audit record: the only way to a
    /// submission transaction.
    auth: Option<AuthRecorded>,
    tx: Option<Transaction>,
    body: Vec<u8>,
    auth_failures: u32,
    bad_commands: u32,
    connected_at: Instant,
    last_command_at: Instant,
    hold_until: Option<Instant>,
    shutting_down: bool,
    rng: u64,
    now: Now,
}

impl Session {
    /// A new session for a client at `peer`; `tls` is true when the connection is
    /// already encrypted (implicit TLS). `seed` feeds the session's random source
    /// (ULIDs, AUTH failure jitter), so tests are deterministic. The greeting is the
    /// first thing [`Session::poll`] returns.
    pub fn new(ctx: Arc<SessionContext>, peer: IpAddr, tls: bool, now: Now, seed: u64) -> Self {
        let mut out = Vec::new();
        Reply::Greeting.write(&ctx.hostname, &mut out);
        Self {
            ctx,
            peer,
            tls,
            state: State::Command,
            input: Vec::new(),
            consumed: 0,
            out,
            helo: None,
            auth: None,
            tx: None,
            body: Vec::new(),
            auth_failures: 0,
            bad_commands: 0,
            connected_at: now.instant,
            last_command_at: now.instant,
            hold_until: None,
            shutting_down: false,
            rng: seed,
            now,
        }
    }

    /// Buffers bytes received from the client. The shell reads again only after
    /// [`Step::NeedInput`], so the buffer stays within one read plus a partial line.
    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.consumed > 0 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The authenticated sender, if any.
    pub fn authenticated(&self) -> Option<&SendAuthorized> {
        self.auth.as_ref().map(AuthRecorded::proof)
    }

    /// Asks the session to end at the next command boundary with `421 4.3.2`.
    /// Transfers and deliveries in progress finish first.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Whether [`Session::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// When the session times out if no input arrives: the idle timeout between
    /// commands, the data-rate bound during transfers, and the session limit.
    pub fn deadline(&self) -> Instant {
        let limits = &self.ctx.limits;
        let session_end = self.connected_at + limits.session_timeout;
        let state_end = match &self.state {
            State::Command | State::DiscardLine | State::Sasl(_) => {
                Some(self.last_command_at + limits.idle_timeout)
            }
            State::Data(t) => self.transfer_deadline(t.started, t.received),
            State::Bdat(t) => self.transfer_deadline(t.started, t.received),
            State::SkipData { transfer: t, .. } => self.transfer_deadline(t.started, t.received),
            _ => None,
        };
        state_end.map_or(session_end, |end| end.min(session_end))
    }

    fn transfer_deadline(&self, started: Instant, received: usize) -> Option<Instant> {
        let limits = &self.ctx.limits;
        if limits.min_data_rate == 0 {
            return None;
        }
        let earned =
            Duration::from_millis((received as u64).saturating_mul(1000) / limits.min_data_rate);
        Some(started + earned.max(limits.data_rate_grace))
    }

    /// Which limit has expired at `now`, if any, while waiting for input.
    fn expired(&self, now: Instant) -> Option<Reply> {
        if now >= self.connected_at + self.ctx.limits.session_timeout {
            return Some(Reply::SessionTimeout);
        }
        if now < self.deadline() {
            return None;
        }
        Some(match self.state {
            State::Data(_) | State::Bdat(_) | State::SkipData { .. } => Reply::DataTooSlow,
            _ => Reply::IdleTimeout,
        })
    }

    /// Advances the session and says what the shell must do next.
    pub fn poll(&mut self, now: Now) -> Step {
        self.now = now;
        loop {
            if let Some(until) = self.hold_until {
                if now.instant < until {
                    return Step::Wait(until);
                }
                self.hold_until = None;
            }
            match &self.state {
                State::Closed => return self.flush_or(Step::Close),
                State::StartTls => return self.flush_or(Step::StartTls),
                State::LookupRecipient(query) => return Step::LookupRecipient(query.clone()),
                State::CheckThrottle { .. } => return Step::CheckThrottle(self.peer),
                State::RecordFailure { .. } => return Step::RecordFailure(self.peer),
                State::Authenticate { credentials, .. } => {
                    return Step::Authenticate(credentials.clone());
                }
                State::AuditAuth(pending) => return Step::Audit(pending.event.clone()),
                State::Deliver(delivery) => return Step::Deliver(delivery.clone()),
                _ => {}
            }
            if self.process_input() {
                continue;
            }
            if let Some(reply) = self.expired(now.instant) {
                self.close_with(reply);
                continue;
            }
            let between_commands = matches!(
                self.state,
                State::Command | State::Sasl(_) | State::DiscardLine
            );
            if self.shutting_down && between_commands {
                self.close_with(Reply::ShuttingDown);
                continue;
            }
            return self.flush_or(Step::NeedInput);
        }
    }

    fn flush_or(&mut self, step: Step) -> Step {
        if self.out.is_empty() {
            step
        } else {
            Step::Write(mem::take(&mut self.out))
        }
    }

    /// Runs the state machine over buffered input; true if anything changed.
    fn process_input(&mut self) -> bool {
        let input = mem::take(&mut self.input);
        let (used, progressed) = self.advance(&input[self.consumed..]);
        self.input = input;
        self.consumed += used;
        if self.consumed >= self.input.len()
            || matches!(self.state, State::StartTls | State::Closed)
        {
            // After STARTTLS nothing sent in plaintext may be acted on (CVE-2011-0411).
            self.input.clear();
            self.consumed = 0;
            if self.input.capacity() > 4 * MAX_LINE_LENGTH {
                self.input = Vec::new();
            }
        }
        progressed
    }

    /// The one `match` over the state: consumes a prefix of `input`, returns how many
    /// bytes it used and whether it made progress.
    fn advance(&mut self, input: &[u8]) -> (usize, bool) {
        let max_size = self.ctx.limits.max_message_size;
        match &mut self.state {
            State::Command | State::Sasl(_) => {
                let Some(lf) = memchr::memchr(b'\n', input) else {
                    if input.len() >= MAX_LINE_LENGTH {
                        self.line_too_long();
                        if !self.is_closed() {
                            self.state = State::DiscardLine;
                        }
                        return (input.len(), true);
                    }
                    return (0, false);
                };
                let line = &input[..=lf];
                self.last_command_at = self.now.instant;
                if line.len() > MAX_LINE_LENGTH {
                    self.line_too_long();
                } else if let State::Sasl(_) = self.state {
                    let State::Sasl(sasl) = mem::replace(&mut self.state, State::Command) else {
                        return (line.len(), true);
                    };
                    self.sasl_response(sasl, line);
                } else {
                    self.command(line);
                }
                (line.len(), true)
            }
            State::DiscardLine => match memchr::memchr(b'\n', input) {
                Some(lf) => {
                    self.state = State::Command;
                    (lf + 1, true)
                }
                None => (input.len(), false),
            },
            State::Data(transfer) => {
                let mut sink = Bounded::new(&mut self.body, max_size);
                let (used, done) = transfer.receiver.ingest(input, &mut sink);
                let overflowed = sink.overflowed();
                transfer.received += used;
                // Oversize or NUL: the rest is drained without buffering, then refused.
                let refusal = if overflowed {
                    Some(Reply::MessageTooBig)
                } else if contains_nul(&input[..used]) {
                    Some(Reply::NulInMessage)
                } else {
                    None
                };
                if let Some(reply) = refusal {
                    let drain = Transfer {
                        receiver: Drain::Data(transfer.receiver.clone()),
                        started: transfer.started,
                        received: transfer.received,
                    };
                    return self.refuse_transfer(drain, done, reply, used);
                }
                if done {
                    self.last_command_at = self.now.instant;
                    self.finish_message();
                }
                (used, done)
            }
            State::Bdat(transfer) => {
                // `bdat` checked that the chunk fits, so the sink never overflows.
                let (used, done) = transfer.receiver.ingest(input, &mut Bounded::new(&mut self.body, max_size));
                transfer.received += used;
                if contains_nul(&input[..used]) {
                    let drain = Transfer {
                        receiver: Drain::Chunk(transfer.receiver.clone()),
                        started: transfer.started,
                        received: transfer.received,
                    };
                    return self.refuse_transfer(drain, done, Reply::NulInMessage, used);
                }
                if done {
                    let (last, size) = (transfer.receiver.last, transfer.received);
                    self.last_command_at = self.now.instant;
                    if last {
                        self.finish_message();
                    } else {
                        self.state = State::Command;
                        self.reply(Reply::ChunkAccepted(size));
                    }
                }
                (used, done)
            }
            State::SkipData {
                transfer,
                reply,
                bad_command,
            } => {
                let (used, done) = transfer.receiver.ingest(input);
                transfer.received += used;
                if done {
                    let (reply, bad_command) = (reply.clone(), *bad_command);
                    self.last_command_at = self.now.instant;
                    self.finish_transfer(reply, bad_command);
                }
                (used, done)
            }
            State::LookupRecipient(_)
            | State::CheckThrottle { .. }
            | State::Authenticate { .. }
            | State::AuditAuth(_)
            | State::RecordFailure { .. }
            | State::Deliver(_)
            | State::StartTls
            | State::Closed => (0, false),
        }
    }

    /// A transfer whose message is refused (`reply`) as soon as that is known:
    /// the transaction ends, and the rest of the data is drained, not kept.
    fn refuse_transfer(&mut self, drain: Transfer<Drain>, done: bool, reply: Reply, used: usize) -> (usize, bool) {
        self.abort_transaction();
        if done {
            self.last_command_at = self.now.instant;
            self.finish_transfer(reply, false);
        } else {
            self.state = State::SkipData {
                transfer: drain,
                reply,
                bad_command: false,
            };
        }
        (used, true)
    }

    fn finish_transfer(&mut self, reply: Reply, bad_command: bool) {
        self.state = State::Command;
        if bad_command {
            self.reject(reply)
        } else {
            self.reply(reply)
        }
    }

    fn line_too_long(&mut self) {
        if matches!(self.state, State::Sasl(_)) {
            self.state = State::Command;
        }
        self.reject(Reply::LineTooLong);
    }

    // ----- replies -------------------------------------------------------------

    fn reply(&mut self, reply: Reply) {
        let code = reply.code();
        if code >= 400 {
            metrics::counter!("agentkeys_smtp_rejections_total", "code" => code.to_string())
                .increment(1);
        }
        reply.write(&self.ctx.hostname, &mut self.out);
    }

    /// Answers a protocol error and counts it against [`Limits::max_bad_commands`].
    fn reject(&mut self, reply: Reply) {
        self.reply(reply);
        self.bad_commands += 1;
        if self.bad_commands >= self.ctx.limits.max_bad_commands {
            self.close_with(Reply::TooManyErrors);
        }
    }

    fn close_with(&mut self, reply: Reply) {
        self.reply(reply);
        self.state = State::Closed;
        self.abort_transaction();
    }

    fn abort_transaction(&mut self) {
        self.tx = None;
        self.body = Vec::new();
    }

    fn next_random(&mut self) -> u64 {
        // SplitMix64: small, fast, seeded by the shell. Not for secrets.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    // ----- commands ------------------------------------------------------------

    fn command(&mut self, line: &[u8]) {
        if self.now.instant >= self.connected_at + self.ctx.limits.session_timeout {
            self.close_with(Reply::SessionTimeout);
            return;
        }
        match Request::parse(&mut line.iter()) {
            Ok(request) => self.request(request),
            Err(err) => self.reject(match err {
                smtp_proto::Error::UnknownCommand | smtp_proto::Error::InvalidResponse { .. } => {
                    Reply::UnknownCommand
                }
                smtp_proto::Error::InvalidSenderAddress => Reply::BadSenderSyntax,
                smtp_proto::Error::InvalidRecipientAddress => Reply::BadRecipientSyntax,
                smtp_proto::Error::SyntaxError { syntax } => Reply::Syntax(syntax),
                smtp_proto::Error::InvalidParameter { param } => Reply::BadParameter(param),
                smtp_proto::Error::UnsupportedParameter { .. } => Reply::UnsupportedParameter,
                smtp_proto::Error::ResponseTooLong => Reply::LineTooLong,
                smtp_proto::Error::NeedsMoreData { .. } => Reply::Syntax("incomplete command"),
            }),
        }
    }

    fn request(&mut self, request: Request<Cow<'_, str>>) {
        match request {
            Request::Ehlo { host } => self.hello(&host, true),
            Request::Helo { host } => self.hello(&host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            Request::StartTls => self.starttls(),
            Request::Rset => {
                self.abort_transaction();
                self.reply(Reply::Ok);
            }
            Request::Noop { .. } => self.reply(Reply::Ok),
            Request::Vrfy { .. } => self.reply(Reply::CannotVerify),
            Request::Help { .. } => self.reply(Reply::Help),
            Request::Quit => self.close_with(Reply::Bye),
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.reject(Reply::NotImplemented),
        }
    }

    fn auth_allowed(&self) -> bool {
        self.ctx.kind.is_submission()
            && (self.tls || (self.ctx.allow_plaintext_auth_on_loopback && self.peer.is_loopback()))
    }

    fn hello(&mut self, host: &str, extended: bool) {
        self.abort_transaction();
        self.helo = Some(Helo {
            name: sanitize_helo(host),
            extended,
        });
        if extended {
            self.reply(Reply::Ehlo {
                starttls: !self.tls && self.ctx.tls_available,
                auth: self.auth_allowed(),
                max_size: self.ctx.limits.max_message_size,
            });
        } else {
            self.reply(Reply::Helo);
        }
    }

    fn mail(&mut self, from: MailFrom<Cow<'_, str>>) {
        if self.helo.is_none() {
            return self.reject(Reply::BadSequence("send EHLO first"));
        }
        if self.tx.is_some() {
            return self.reject(Reply::BadSequence("nested MAIL command"));
        }
        let sender = if self.ctx.kind.is_submission() {
            // The only way to a submission transaction is through the AUTH proof.
            let Some(recorded) = &self.auth else {
                return self.reply(Reply::AuthRequired);
            };
            let proof = recorded.proof();
            if from.size > self.ctx.limits.max_message_size {
                return self.reply(Reply::MessageTooBig);
            }
            if !from.address.eq_ignore_ascii_case(proof.inbox().as_str()) {
                return self.reply(Reply::SenderNotAuthorized);
            }
            Sender::Submission {
                proof: recorded.clone(),
                remote: Vec::new(),
            }
        } else {
            if from.size > self.ctx.limits.max_message_size {
                return self.reply(Reply::MessageTooBig);
            }
            Sender::Inbound
        };
        self.tx = Some(Transaction {
            sender,
            mail_from: from.address.to_string(),
            local: Vec::new(),
            rcpt_commands: 0,
            bdat: false,
        });
        self.body = Vec::new();
        self.reply(Reply::SenderOk);
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) {
        let Some(tx) = &mut self.tx else {
            return self.reject(Reply::BadSequence("need MAIL before RCPT"));
        };
        // Every RCPT counts, whatever its answer: repeating one address or
        // probing unknown ones does not get past the limit.
        if tx.rcpt_commands >= self.ctx.limits.max_recipients {
            return self.reply(Reply::TooManyRecipients);
        }
        tx.rcpt_commands += 1;
        let Some(query) = RecipientQuery::parse_with(&to.address, &self.ctx.subaddressing) else {
            // `<>` or `<postmaster>`: no such inbox here.
            return self.reply(Reply::UnknownRecipient);
        };
        if tx.has_recipient(&query) {
            return self.reply(Reply::RecipientOk);
        }
        self.state = State::LookupRecipient(query);
    }

    /// Answers a [`Step::LookupRecipient`].
    pub fn recipient_result(&mut self, result: Result<RecipientAnswer, StoreError>, now: Now) {
        self.now = now;
        let query = match mem::replace(&mut self.state, State::Command) {
            State::LookupRecipient(query) => query,
            other => {
                self.state = other;
                tracing::error!("recipient_result called while no lookup was pending");
                return;
            }
        };
        let inbound = !self.ctx.kind.is_submission();
        let reply = match result {
            Err(err) => {
                tracing::warn!(error = %err, "recipient lookup failed");
                Reply::LookupFailed
            }
            Ok(answer) => match route_recipient(query, answer) {
                RecipientRoute::Remote(_) if inbound => Reply::RelayDenied,
                RecipientRoute::Remote(address) => {
                    match self.tx.as_mut().map(|tx| &mut tx.sender) {
                        Some(Sender::Submission { remote, .. }) => {
                            remote.push(address);
                            Reply::RecipientOk
                        }
                        _ => Reply::RelayDenied,
                    }
                }
                RecipientRoute::Unknown => Reply::UnknownRecipient,
                RecipientRoute::Inactive => Reply::InactiveRecipient,
                RecipientRoute::Local(recipient) => {
                    if let Some(tx) = self.tx.as_mut() {
                        tx.local.push(recipient);
                        Reply::RecipientOk
                    } else {
                        Reply::BadSequence("need MAIL before RCPT")
                    }
                }
            },
        };
        self.reply(reply);
    }

    /// The inbox this submission session sends as, once `MAIL FROM` opened a
    /// transaction: the shell checks its send lists before answering a
    /// [`Step::LookupRecipient`] ([`agentkeys_submission::guard`]).
    pub fn sending_inbox(&self) -> Option<&agentkeys_core::Address> {
        match self.tx.as_ref().map(|tx| &tx.sender) {
            Some(Sender::Submission { proof, .. }) => Some(proof.proof().inbox()),
            _ => None,
        }
    }

    /// Answers a [`Step::LookupRecipient`] with a refusal by the sending
    /// inbox's send lists (`550 5.7.1`, naming the list); the recipient is not
    /// added and the transaction goes on.
    pub fn recipient_refused_by_policy(&mut self, list: agentkeys_core::policy::PolicyList, now: Now) {
        self.now = now;
        match mem::replace(&mut self.state, State::Command) {
            State::LookupRecipient(_) => self.reply(Reply::SendPolicy(list.as_str())),
            other => {
                self.state = other;
                tracing::error!("recipient_refused_by_policy called while no lookup was pending");
            }
        }
    }

    fn data(&mut self) {
        let Some(tx) = &self.tx else {
            return self.reject(Reply::BadSequence("need MAIL before DATA"));
        };
        if tx.recipient_count() == 0 {
            return self.reject(Reply::BadSequence("need RCPT before DATA"));
        }
        if tx.bdat {
            return self.reject(Reply::BadSequence("DATA after BDAT"));
        }
        self.reply(Reply::StartData);
        self.body = Vec::new();
        // At the start of the first line: the DATA line's CRLF counts as the
        // first CRLF of `<CRLF>.<CRLF>`.
        self.state = State::Data(Transfer::new(DataReceiver::new(), self.now.instant));
    }

    fn bdat(&mut self, chunk_size: usize, is_last: bool) {
        // Whatever the answer, the chunk's bytes must be consumed as data, never as
        // commands.
        let now = self.now.instant;
        let skip = |reply, bad_command| State::SkipData {
            transfer: Transfer::new(Drain::Chunk(ChunkReceiver::new(chunk_size, is_last)), now),
            reply,
            bad_command,
        };
        let problem = match &self.tx {
            None => Some("need MAIL before BDAT"),
            Some(tx) if tx.recipient_count() == 0 => Some("need RCPT before BDAT"),
            Some(_) => None,
        };
        if let Some(why) = problem {
            self.state = skip(Reply::BadSequence(why), true);
            return;
        }
        if self.body.len().saturating_add(chunk_size) > self.ctx.limits.max_message_size {
            self.state = skip(Reply::MessageTooBig, false);
            self.abort_transaction();
            return;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.bdat = true;
        }
        self.state = State::Bdat(Transfer::new(
            ChunkReceiver::new(chunk_size, is_last),
            self.now.instant,
        ));
    }

    /// The end of `DATA` or the last `BDAT` chunk: checks, then hands the message to
    /// the shell for durable storage.
    fn finish_message(&mut self) {
        self.state = State::Command;
        let Some(tx) = self.tx.take() else { return };
        let mut message = mem::take(&mut self.body);
        // The sending doors' message rules (the receivers already refused NUL).
        if let Sender::Submission { proof, .. } = &tx.sender
            && let Err(refusal) = agentkeys_submission::check_message(&message, proof.proof().inbox())
        {
            tracing::warn!(inbox = %proof.proof().inbox(), %refusal, door = "smtp", "message refused");
            return self.reply(Reply::from(refusal));
        }
        let id = Ulid::from_parts(
            self.now.unix_millis(),
            (u128::from(self.next_random()) << 64) | u128::from(self.next_random()),
        );
        let (helo, extended) = self
            .helo
            .as_ref()
            .map_or(("", true), |h| (h.name.as_str(), h.extended));
        let protocol = Protocol {
            extended,
            tls: self.tls,
            authenticated: self.auth.is_some(),
        };
        let header = received_header(
            helo,
            self.peer,
            &self.ctx.hostname,
            protocol,
            id,
            self.now.unix_secs(),
        );
        message.splice(0..0, header.bytes());
        let submitted = match &tx.sender {
            Sender::Submission { proof, .. } => Some(Box::new(proof.clone())),
            Sender::Inbound => None,
        };
        let (outbound, inbound) = match tx.sender {
            Sender::Inbound => (
                None,
                Some(Box::new(InboundEnvelope {
                    client_ip: self.peer,
                    helo: helo.to_owned(),
                    mail_from: tx.mail_from,
                })),
            ),
            Sender::Submission { proof, remote } => (
                (!remote.is_empty()).then_some(Outbound {
                    sender: proof,
                    recipients: remote,
                }),
                None,
            ),
        };
        self.state = State::Deliver(Delivery {
            id,
            message: Bytes::from(message),
            received_at: self.now.unix_secs(),
            local: tx.local,
            outbound,
            inbound,
            submitted,
        });
    }

    /// Answers a [`Step::Deliver`]: `250` only if everything is durably stored
    /// (or, for a submission under review, held: `250 … held for review`).
    pub fn delivery_result(&mut self, result: Result<Accepted, DeliveryError>, now: Now) {
        self.now = now;
        self.last_command_at = now.instant;
        let delivery = match mem::replace(&mut self.state, State::Command) {
            State::Deliver(delivery) => delivery,
            other => {
                self.state = other;
                tracing::error!("delivery_result called while no delivery was pending");
                return;
            }
        };
        match result {
            Ok(Accepted::Stored) => {
                tracing::info!(
                    id = %delivery.id,
                    size = delivery.message.len(),
                    local = delivery.local.len(),
                    remote = delivery.outbound.as_ref().map_or(0, |o| o.recipients.len()),
                    "message accepted"
                );
                self.reply(Reply::MessageAccepted(delivery.id));
            }
            Ok(Accepted::Held) => {
                tracing::info!(id = %delivery.id, size = delivery.message.len(), "message held for review");
                self.reply(Reply::MessageHeld(delivery.id));
            }
            // A limit's refusal is a decision (the guardrails logged it).
            Err(err @ DeliveryError::SendLimit(_)) => self.reply(Reply::from(&err)),
            // A refusal by the recipients' lists is a decision, not a failure
            // (the shell logged each refusing inbox).
            Err(err @ DeliveryError::RefusedByPolicy) => self.reply(Reply::from(&err)),
            Err(err) => {
                tracing::error!(id = %delivery.id, error = %err, "storing message failed");
                self.reply(Reply::from(&err));
            }
        }
    }

    fn starttls(&mut self) {
        if self.tls {
            return self.reject(Reply::BadSequence("TLS already active"));
        }
        if !self.ctx.tls_available {
            return self.reject(Reply::NotImplemented);
        }
        self.reply(Reply::ReadyToStartTls);
        self.state = State::StartTls;
    }

    /// Answers a [`Step::StartTls`]: the connection is now encrypted, and the session
    /// starts over (RFC 3207 §4.2): a new `EHLO` is required.
    pub fn tls_started(&mut self, now: Now) {
        self.now = now;
        if !matches!(self.state, State::StartTls) {
            tracing::error!("tls_started called while no STARTTLS was pending");
            return;
        }
        self.tls = true;
        self.helo = None;
        self.auth = None;
        self.abort_transaction();
        self.input.clear();
        self.consumed = 0;
        self.last_command_at = now.instant;
        self.state = State::Command;
    }

    // ----- AUTH ----------------------------------------------------------------

    fn auth(&mut self, mechanism: u64, initial_response: &str) {
        if !self.ctx.kind.is_submission() {
            return self.reject(Reply::NotImplemented);
        }
        if self.helo.is_none() {
            return self.reject(Reply::BadSequence("send EHLO first"));
        }
        if self.auth.is_some() {
            return self.reject(Reply::BadSequence("already authenticated"));
        }
        if self.tx.is_some() {
            return self.reject(Reply::BadSequence("AUTH during a mail transaction"));
        }
        if !self.auth_allowed() {
            return self.reply(Reply::EncryptionRequired);
        }
        if mechanism != AUTH_PLAIN && mechanism != AUTH_LOGIN {
            return self.reply(Reply::MechanismUnsupported);
        }
        // The throttle first: a refused address is answered without its
        // credentials being read.
        self.state = State::CheckThrottle {
            mechanism,
            initial_response: initial_response.to_owned(),
            asked_at: self.now.instant,
        };
    }

    /// Answers a [`Step::CheckThrottle`]: whether the client's address is
    /// refused AUTH. A throttled address gets `454 4.7.0` with a failure's
    /// latency floor; when the counters cannot be read, `454 4.7.0` too (the
    /// credentials could not be checked either).
    pub fn throttle_result(&mut self, blocked: Result<bool, StoreError>, now: Now) {
        self.now = now;
        let (mechanism, initial_response, asked_at) = match mem::replace(&mut self.state, State::Command) {
            State::CheckThrottle { mechanism, initial_response, asked_at } => (mechanism, initial_response, asked_at),
            other => {
                self.state = other;
                tracing::error!("throttle_result called while no AUTH was waiting for the throttle");
                return;
            }
        };
        match blocked {
            Ok(false) => self.auth_unthrottled(mechanism, &initial_response),
            Ok(true) => {
                tracing::warn!(peer = %self.peer, "AUTH refused: address throttled after repeated failures");
                metrics::counter!("agentkeys_smtp_auth_total", "result" => "throttled").increment(1);
                self.auth_refused(Reply::AuthThrottled, asked_at);
            }
            Err(err) => {
                tracing::error!(peer = %self.peer, error = %err, "AUTH refused: the failure counters cannot be read");
                metrics::counter!("agentkeys_smtp_auth_total", "result" => "error").increment(1);
                self.reply(Reply::AuthUnavailable);
            }
        }
    }

    /// `AUTH` once the address is not throttled: the first challenge, or the
    /// initial response.
    fn auth_unthrottled(&mut self, mechanism: u64, initial_response: &str) {
        if initial_response.is_empty() {
            if mechanism == AUTH_PLAIN {
                self.reply(Reply::AuthChallenge(""));
                self.state = State::Sasl(Sasl::Plain);
            } else {
                self.reply(Reply::AuthChallenge(LOGIN_USERNAME_CHALLENGE));
                self.state = State::Sasl(Sasl::LoginUsername);
            }
            return;
        }
        let sasl = if mechanism == AUTH_PLAIN {
            Sasl::Plain
        } else {
            Sasl::LoginUsername
        };
        self.sasl_response(sasl, initial_response.as_bytes());
    }

    fn sasl_response(&mut self, sasl: Sasl, line: &[u8]) {
        let text = line.trim_ascii_end();
        if text == b"*" {
            return self.reply(Reply::AuthCancelled);
        }
        let decoded = if text == b"=" {
            Ok(Vec::new())
        } else {
            BASE64.decode(text)
        };
        let Ok(decoded) = decoded else {
            return self.reject(Reply::AuthBadBase64);
        };
        match sasl {
            Sasl::Plain => {
                // authzid NUL authcid NUL passwd; acting as someone else is not allowed.
                let mut parts = decoded.split(|&b| b == 0);
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(authz), Some(user), Some(pass), None)
                        if authz.is_empty() || authz == user =>
                    {
                        self.check_credentials(user, pass);
                    }
                    _ => self.decide_auth(
                        Err(AuthFailure::InvalidUsername),
                        self.now.instant,
                        RefusalFacts::default(),
                    ),
                }
            }
            Sasl::LoginUsername => {
                self.reply(Reply::AuthChallenge(LOGIN_PASSWORD_CHALLENGE));
                self.state = State::Sasl(Sasl::LoginPassword { username: decoded });
            }
            Sasl::LoginPassword { username } => self.check_credentials(&username, &decoded),
        }
    }

    /// AUTH steps 1–2 here; steps 3–9 after the shell fetched the facts.
    fn check_credentials(&mut self, username: &[u8], password: &[u8]) {
        let received_at = self.now.instant;
        let parsed = match (std::str::from_utf8(username), std::str::from_utf8(password)) {
            (Err(_), _) => Err(AuthFailure::InvalidUsername),
            (Ok(user), Err(_)) => Credentials::parse(user, "", &self.ctx.hasher),
            (Ok(user), Ok(pass)) => Credentials::parse(user, pass, &self.ctx.hasher),
        };
        match parsed {
            Ok(credentials) => {
                self.state = State::Authenticate {
                    credentials,
                    received_at,
                }
            }
            Err(failure) => {
                let username = std::str::from_utf8(username)
                    .ok()
                    .and_then(|u| u.parse::<Address>().ok());
                // Steps 1–2 fail before any lookup: whether the address is ours
                // is not known, so it is not recorded.
                let facts = RefusalFacts { username, hosted: false, agent: None };
                self.decide_auth(Err(failure), received_at, facts);
            }
        }
    }

    /// Answers a [`Step::Authenticate`] with the store's facts.
    pub fn auth_result(&mut self, facts: Result<AuthFacts, StoreError>, now: Now) {
        self.now = now;
        let (credentials, received_at) = match mem::replace(&mut self.state, State::Command) {
            State::Authenticate {
                credentials,
                received_at,
            } => (credentials, received_at),
            other => {
                self.state = other;
                tracing::error!("auth_result called while no AUTH was pending");
                return;
            }
        };
        let facts = match facts {
            Ok(facts) => facts,
            Err(err) => {
                tracing::error!(peer = %self.peer, error = %err, "AUTH lookup failed");
                metrics::counter!("agentkeys_smtp_auth_total", "result" => "error").increment(1);
                return self.reply(Reply::AuthUnavailable);
            }
        };
        let refusal = RefusalFacts {
            username: Some(credentials.address.clone()),
            hosted: facts.inbox.is_some(),
            agent: facts.key.as_ref().map(|k| k.agent.clone()),
        };
        let verdict = credentials.evaluate(&facts, now.unix_secs());
        self.decide_auth(verdict, received_at, refusal);
    }

    /// Records an AUTH decision: the session waits in [`State::AuditAuth`] until
    /// the shell appended the record ([`Step::Audit`]).
    fn decide_auth(
        &mut self,
        verdict: Result<SendAuthorized, AuthFailure>,
        received_at: Instant,
        refusal: RefusalFacts,
    ) {
        let event = match &verdict {
            Ok(proof) => auth_audit::granted_event(proof, Door::Smtp, Some(self.peer)),
            Err(failure) => auth_audit::refused_event(*failure, &refusal, Door::Smtp, Some(self.peer)),
        };
        self.state = State::AuditAuth(Box::new(PendingAuth {
            event,
            verdict,
            received_at,
            username: refusal.username,
        }));
    }

    /// Answers a [`Step::Audit`] with the receipt of the appended record: only a
    /// recorded decision takes effect, and only the audit log can make a receipt
    /// ([`AuditReceipt`] comes from sealing the record into the chain), so no
    /// shell can answer "recorded" without recording. When the record cannot be
    /// written the client gets `454 4.7.0` and stays unauthenticated (a refusal
    /// keeps its latency floor and still counts against the address).
    pub fn audit_result(&mut self, result: Result<AuditReceipt, StoreError>, now: Now) {
        self.now = now;
        let pending = match mem::replace(&mut self.state, State::Command) {
            State::AuditAuth(pending) => pending,
            other => {
                self.state = other;
                tracing::error!("audit_result called while no AUTH decision was pending");
                return;
            }
        };
        let PendingAuth { verdict, received_at, username, .. } = *pending;
        let receipt = match result {
            Ok(receipt) => receipt,
            Err(err) => {
                tracing::error!(peer = %self.peer, error = %err, "AUTH decision could not be audited; refused");
                metrics::counter!("agentkeys_smtp_auth_total", "result" => "error").increment(1);
                return match verdict {
                    Ok(_) => self.reply(Reply::AuthUnavailable),
                    Err(_) => self.count_failure(Reply::AuthUnavailable, received_at),
                };
            }
        };
        match verdict {
            Ok(proof) => {
                tracing::info!(
                    peer = %self.peer,
                    audit_seq = receipt.seq(),
                    inbox = %proof.inbox(),
                    agent = %proof.agent(),
                    key = %proof.key_id(),
                    grant = %proof.grant_id(),
                    "AUTH succeeded"
                );
                metrics::counter!("agentkeys_smtp_auth_total", "result" => "success").increment(1);
                // The receipt goes with the proof: every submission
                // transaction, and the outbound copy it queues, carries it.
                self.auth = Some(AuthRecorded::new(proof, receipt));
                self.reply(Reply::AuthSucceeded);
            }
            Err(failure) => self.auth_failed(failure, received_at, username.as_ref()),
        }
    }

    fn auth_failed(&mut self, failure: AuthFailure, received_at: Instant, inbox: Option<&Address>) {
        // The reason goes to the log only; never the key, never the password. The
        // username is logged only once it parsed as an inbox address.
        match inbox {
            Some(inbox) => {
                tracing::warn!(peer = %self.peer, %inbox, reason = %failure, "AUTH failed")
            }
            None => tracing::warn!(peer = %self.peer, reason = %failure, "AUTH failed"),
        }
        metrics::counter!("agentkeys_smtp_auth_total", "result" => "failure").increment(1);
        self.count_failure(Reply::AuthFailed, received_at);
    }

    /// A failed AUTH counts against the address ([`Step::RecordFailure`]) before
    /// its refusal `reply` is sent.
    fn count_failure(&mut self, reply: Reply, received_at: Instant) {
        self.state = State::RecordFailure { reply, received_at };
    }

    /// Answers a [`Step::RecordFailure`]: the refusal goes out now, held to its
    /// latency floor from when the credentials arrived (so the time the count
    /// took is not seen). A count that could not be written is logged; the
    /// refusal stands.
    pub fn failure_recorded(&mut self, result: Result<(), StoreError>, now: Now) {
        self.now = now;
        let (reply, received_at) = match mem::replace(&mut self.state, State::Command) {
            State::RecordFailure { reply, received_at } => (reply, received_at),
            other => {
                self.state = other;
                tracing::error!("failure_recorded called while no AUTH failure was being counted");
                return;
            }
        };
        if let Err(err) = result {
            tracing::error!(peer = %self.peer, error = %err, "a failed AUTH could not be counted against its address");
            metrics::counter!("agentkeys_smtp_auth_throttle_errors_total").increment(1);
        }
        self.auth_refused(reply, received_at);
    }

    /// A refused AUTH: answered no earlier than the floor plus jitter after the
    /// credentials arrived; the last allowed failure closes the connection.
    fn auth_refused(&mut self, reply: Reply, received_at: Instant) {
        self.auth_failures += 1;
        self.reply(reply);
        let limits = &self.ctx.limits;
        let (floor, jitter_max) = (limits.auth_failure_floor, limits.auth_failure_jitter);
        let jitter_nanos = u64::try_from(jitter_max.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(self.next_random() % jitter_nanos.saturating_add(1));
        self.hold_until = Some(received_at + floor + jitter);
        if self.auth_failures >= self.ctx.limits.max_auth_failures {
            self.close_with(Reply::TooManyAuthFailures);
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
