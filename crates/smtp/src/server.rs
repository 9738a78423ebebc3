//! The tokio shell: accept loop, connection caps, TLS, and the loop that carries
//! out a [`Session`]'s [`Step`]s against a socket and the stores.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentkeys_core::{KeyHasher, Subaddressing};
use agentkeys_core::peer::{ConnectionLimiter, ConnectionPermit};
use agentkeys_store::BlobStore;
use agentkeys_store::roles::{AuditLog, AuthLookup, MetadataStore, Outbox, Recipients, Throttles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::acceptance::{DeliveryError, InboundVerifier, OutboundSigner, add_verdicts, lookup_recipient, store_delivery_signed};
use crate::limits::{
    DEFAULT_AUTH_THROTTLE_FAILURES, DEFAULT_AUTH_THROTTLE_WINDOW, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP, Limits, READ_BUFFER_SIZE, ACCEPT_ERROR_BACKOFF, TLS_HANDSHAKE_TIMEOUT, WRITE_TIMEOUT,
};
use crate::reply::Reply;
use crate::session::{ListenerKind, Now, Session, SessionContext, Step};
use crate::throttle::AuthThrottle;
use agentkeys_submission::guardrails::Accepted;

/// Configuration of the SMTP service. [`SmtpConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// The server's host name, used in the greeting, EHLO and `Received:`.
    pub hostname: String,
    /// Per-session limits (message size, recipients, timeouts, AUTH failures).
    pub limits: Limits,
    /// Concurrent connections over all listeners ([`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Concurrent connections per address, IPv6 per /64 ([`DEFAULT_MAX_CONNECTIONS_PER_IP`]).
    pub max_connections_per_ip: usize,
    /// AUTH failures per address within the window before AUTH is refused
    /// ([`DEFAULT_AUTH_THROTTLE_FAILURES`]; 0 disables).
    pub auth_throttle_failures: u32,
    /// The AUTH throttle's sliding window ([`DEFAULT_AUTH_THROTTLE_WINDOW`]).
    pub auth_throttle_window: Duration,
    /// Development only: allow AUTH without TLS from loopback (default false).
    pub allow_plaintext_auth_on_loopback: bool,
    /// Subaddressing of `RCPT TO` (default: `+`).
    pub subaddressing: Subaddressing,
}

impl SmtpConfig {
    /// The defaults, with this host name.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            limits: Limits::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            auth_throttle_failures: DEFAULT_AUTH_THROTTLE_FAILURES,
            auth_throttle_window: DEFAULT_AUTH_THROTTLE_WINDOW,
            allow_plaintext_auth_on_loopback: false,
            subaddressing: Subaddressing::default(),
        }
    }
}

/// How a connection loop ended.
enum Outcome {
    Closed,
    StartTls,
}

fn now() -> Now {
    Now {
        instant: tokio::time::Instant::now().into_std(),
        system: SystemTime::now(),
    }
}

/// What the SMTP service needs from the metadata store, and nothing else: the
/// RCPT lookup, the AUTH facts, the audit log and the outbox. Each is a role of
/// the store ([`agentkeys_store::roles`]); a backend provides all four, a test
/// fake only these.
#[derive(Clone)]
pub struct SmtpStores {
    /// RCPT: is the domain ours, whose inbox is the address.
    pub recipients: Arc<dyn Recipients>,
    /// AUTH: the key, its agent's grants and the inbox, in one read.
    pub auth: Arc<dyn AuthLookup>,
    /// Where AUTH outcomes are recorded; the session waits for the receipt.
    pub audit: Arc<dyn AuditLog>,
    /// Where submitted mail for remote recipients is queued.
    pub outbox: Arc<dyn Outbox>,
}

impl SmtpStores {
    /// All four roles from one backend.
    pub fn of<S: Recipients + AuthLookup + AuditLog + Outbox>(store: &Arc<S>) -> Self {
        Self {
            recipients: store.clone(),
            auth: store.clone(),
            audit: store.clone(),
            outbox: store.clone(),
        }
    }
}

impl From<Arc<dyn MetadataStore>> for SmtpStores {
    fn from(store: Arc<dyn MetadataStore>) -> Self {
        Self {
            recipients: store.clone(),
            auth: store.clone(),
            audit: store.clone(),
            outbox: store,
        }
    }
}

/// The SMTP service: one per process, shared by its listeners.
pub struct SmtpServer {
    stores: SmtpStores,
    blobs: Arc<dyn BlobStore>,
    acceptor: TlsAcceptor,
    inbound: Arc<SessionContext>,
    submission: Arc<SessionContext>,
    submission_tls: Arc<SessionContext>,
    /// AUTH failures per address, shared by every listener (and, with shared
    /// counters, by every node).
    throttle: AuthThrottle,
    limiter: Arc<ConnectionLimiter>,
    signer: Option<Arc<dyn OutboundSigner>>,
    verifier: Option<Arc<dyn InboundVerifier>>,
    queued: Option<Arc<tokio::sync::Notify>>,
    /// Inbox allow/block lists; without them every inbox is open.
    policies: Option<Arc<dyn agentkeys_store::InboxPolicies>>,
    /// Whether the MX refuses mail the receive lists refuse (else it stores
    /// it and the agent's tools withhold it).
    refuse_blocked_senders: bool,
    /// Per-agent send limits and review; without them submissions are stored
    /// as they come.
    guardrails: Option<Arc<dyn agentkeys_store::SendGuardrails>>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("hostname", &self.inbound.hostname)
            .finish_non_exhaustive()
    }
}

impl SmtpServer {
    /// Builds the service. `hasher` hashes presented agent keys; `tls` serves
    /// STARTTLS and the implicit-TLS listener.
    pub fn new(
        config: SmtpConfig,
        stores: SmtpStores,
        blobs: Arc<dyn BlobStore>,
        hasher: KeyHasher,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        let throttle = AuthThrottle::new(config.auth_throttle_failures, config.auth_throttle_window);
        let context = |kind| {
            Arc::new(SessionContext {
                hostname: config.hostname.clone(),
                kind,
                limits: config.limits.clone(),
                hasher: hasher.clone(),
                tls_available: true,
                allow_plaintext_auth_on_loopback: config.allow_plaintext_auth_on_loopback,
                subaddressing: config.subaddressing,
            })
        };
        Self {
            stores,
            blobs,
            acceptor: TlsAcceptor::from(tls),
            inbound: context(ListenerKind::Inbound),
            submission: context(ListenerKind::Submission),
            submission_tls: context(ListenerKind::SubmissionImplicitTls),
            throttle,
            limiter: ConnectionLimiter::observed(
                config.max_connections,
                config.max_connections_per_ip,
                Some(|open| metrics::gauge!("agentkeys_smtp_active_connections").set(open as f64)),
            ),
            signer: None,
            verifier: None,
            queued: None,
            policies: None,
            guardrails: None,
            refuse_blocked_senders: true,
        }
    }

    /// The same service, counting AUTH failures in `counters` instead of this
    /// process's memory: nodes sharing a store (PostgreSQL) then refuse an
    /// address at the configured limit in total, not per node. Same limit and
    /// window ([`SmtpConfig`]).
    #[must_use]
    pub fn with_auth_counters(mut self, counters: Arc<dyn Throttles>) -> Self {
        self.throttle = self.throttle.with_counters(counters);
        self
    }

    /// The same service, signing the queued copy of submitted mail with `signer`
    /// (DKIM) before it is stored. Without one, queued copies are stored as received.
    #[must_use]
    pub fn with_outbound_signer(mut self, signer: Arc<dyn OutboundSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The same service, adding SPF/DKIM/DMARC verdicts (`Authentication-Results:`)
    /// from `verifier` to every message the MX stores. Without one, MX mail is
    /// stored without verdicts (but forged ones claiming our host name are still
    /// removed).
    #[must_use]
    pub fn with_inbound_verifier(mut self, verifier: Arc<dyn InboundVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The same service, calling `notify_one` on `queued` each time a message
    /// with remote recipients is queued, so the delivery runner starts at once
    /// instead of at its next poll.
    #[must_use]
    pub fn with_queue_notify(mut self, queued: Arc<tokio::sync::Notify>) -> Self {
        self.queued = Some(queued);
        self
    }

    /// Applies the agents' send limits and review to submitted mail
    /// ([`agentkeys_submission::guardrails`]): `452 4.7.0` over a limit, `250
    /// … held for review` when held.
    #[must_use]
    pub fn with_send_guardrails(mut self, guardrails: Arc<dyn agentkeys_store::SendGuardrails>) -> Self {
        self.guardrails = Some(guardrails);
        self
    }

    /// The same service, applying each inbox's allow/block lists
    /// ([`agentkeys_submission::guard`]): a submission's recipients against the
    /// sending inbox's send lists at `RCPT` (`550 5.7.1`), an MX message's
    /// sender against each recipient inbox's receive lists at the end of
    /// `DATA` (refused copies are not stored; `550 5.7.1` when none is left).
    /// With `refuse_blocked_senders` false the MX stores every copy and only
    /// the send lists apply here (the agent's tools withhold what the receive
    /// lists refuse).
    #[must_use]
    pub fn with_inbox_policies(mut self, policies: Arc<dyn agentkeys_store::InboxPolicies>, refuse_blocked_senders: bool) -> Self {
        self.policies = Some(policies);
        self.refuse_blocked_senders = refuse_blocked_senders;
        self
    }

    fn context(&self, kind: ListenerKind) -> &Arc<SessionContext> {
        match kind {
            ListenerKind::Inbound => &self.inbound,
            ListenerKind::Submission => &self.submission,
            ListenerKind::SubmissionImplicitTls => &self.submission_tls,
        }
    }

    /// How recipients resolve to inboxes (`local+tag@` → `local@`), as the MX
    /// and [`SmtpServer::ingest`] resolve them.
    pub fn subaddressing(&self) -> &Subaddressing {
        &self.inbound.subaddressing
    }

    /// Number of open connections over all listeners.
    pub fn open_connections(&self) -> usize {
        self.limiter.open()
    }

    /// Accepts connections on `listener` until `shutdown` is cancelled, running each
    /// session on `tracker`. After cancellation no new connection is accepted; open
    /// sessions end at their next command boundary with `421 4.3.2`, while transfers
    /// and deliveries in progress finish. The caller bounds the wait (`tracker.wait()`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        kind: ListenerKind,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let local = listener.local_addr().ok();
        tracing::info!(listener = kind.label(), addr = ?local, "SMTP listener started");
        while let Some((stream, peer)) = next_connection(&listener, &shutdown, kind.label()).await {
            metrics::counter!("agentkeys_smtp_connections_total", "listener" => kind.label())
                .increment(1);
            let permit = self.limiter.try_acquire(peer.ip());
            let server = Arc::clone(&self);
            let shutdown = shutdown.clone();
            let span = tracing::info_span!("smtp", listener = kind.label(), %peer);
            tracker.spawn(
                async move {
                    match permit {
                        Some(permit) => {
                            server
                                .connection(stream, peer, kind, shutdown, permit)
                                .await
                        }
                        None => refuse(stream, kind, &server.inbound.hostname).await,
                    }
                }
                .instrument(span),
            );
        }
        tracing::info!(listener = kind.label(), "SMTP listener stopped accepting");
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        kind: ListenerKind,
        shutdown: CancellationToken,
        _permit: ConnectionPermit,
    ) {
        let _ = tcp.set_nodelay(true);
        let ctx = Arc::clone(self.context(kind));
        // The session enforces its own time limit; this outer bound also covers
        // time spent in TLS handshakes and stores.
        let hard_limit = ctx.limits.session_timeout + TLS_HANDSHAKE_TIMEOUT + WRITE_TIMEOUT;
        let session = Session::new(
            ctx,
            peer.ip(),
            kind == ListenerKind::SubmissionImplicitTls,
            now(),
            rand::random(),
        );
        tracing::debug!("connection opened");
        match tokio::time::timeout(hard_limit, self.drive(tcp, session, kind, &shutdown)).await {
            Ok(Ok(())) => tracing::debug!("connection closed"),
            Ok(Err(err)) => tracing::debug!(error = %err, "connection ended"),
            Err(_) => tracing::info!("connection exceeded its hard time limit"),
        }
    }

    async fn drive(
        &self,
        mut tcp: TcpStream,
        mut session: Session,
        kind: ListenerKind,
        shutdown: &CancellationToken,
    ) -> io::Result<()> {
        if kind == ListenerKind::SubmissionImplicitTls {
            let mut tls = handshake(&self.acceptor, tcp).await?;
            self.run(&mut tls, &mut session, kind, shutdown).await?;
            return Ok(());
        }
        match self.run(&mut tcp, &mut session, kind, shutdown).await? {
            Outcome::Closed => Ok(()),
            Outcome::StartTls => {
                let mut tls = handshake(&self.acceptor, tcp).await?;
                session.tls_started(now());
                self.run(&mut tls, &mut session, kind, shutdown).await?;
                Ok(())
            }
        }
    }

    /// Carries out the session's steps until it closes or asks for TLS.
    async fn run<S>(
        &self,
        stream: &mut S,
        session: &mut Session,
        kind: ListenerKind,
        shutdown: &CancellationToken,
    ) -> io::Result<Outcome>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; READ_BUFFER_SIZE];
        loop {
            match session.poll(now()) {
                Step::Write(bytes) => {
                    tokio::time::timeout(WRITE_TIMEOUT, async {
                        stream.write_all(&bytes).await?;
                        stream.flush().await
                    })
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
                }
                Step::NeedInput => {
                    if shutdown.is_cancelled() && !session.is_shutting_down() {
                        session.shutdown();
                        continue;
                    }
                    let deadline = tokio::time::Instant::from_std(session.deadline());
                    let listening = !session.is_shutting_down();
                    tokio::select! {
                        read = stream.read(&mut buf) => {
                            let n = read?;
                            if n == 0 {
                                return Ok(Outcome::Closed);
                            }
                            session.feed(&buf[..n]);
                        }
                        () = tokio::time::sleep_until(deadline) => {}
                        () = shutdown.cancelled(), if listening => session.shutdown(),
                    }
                }
                Step::Wait(until) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await
                }
                Step::LookupRecipient(query) => {
                    if let (Some(policies), Some(inbox)) = (&self.policies, session.sending_inbox()) {
                        match agentkeys_submission::guard::send_policy(policies.as_ref(), inbox, &query.address).await {
                            Ok(Ok(())) => {}
                            Ok(Err(refusal)) => {
                                tracing::info!(%inbox, list = refusal.list().as_str(), "recipient refused by the send policy");
                                metrics::counter!("agentkeys_policy_refusals_total", "door" => "smtp", "list" => refusal.list().as_str())
                                    .increment(1);
                                session.recipient_refused_by_policy(refusal.list(), now());
                                continue;
                            }
                            Err(err) => {
                                session.recipient_result(Err(err), now());
                                continue;
                            }
                        }
                    }
                    let answer = lookup_recipient(self.stores.recipients.as_ref(), &query).await;
                    session.recipient_result(answer, now());
                }
                Step::CheckThrottle(peer) => {
                    let blocked = self.throttle.is_blocked(peer, SystemTime::now()).await;
                    session.throttle_result(blocked, now());
                }
                Step::Authenticate(credentials) => {
                    let facts = self.stores.auth.auth_facts(&credentials).await;
                    session.auth_result(facts, now());
                }
                Step::RecordFailure(peer) => {
                    let recorded = self.throttle.record_failure(peer, SystemTime::now()).await;
                    session.failure_recorded(recorded, now());
                }
                Step::Audit(event) => {
                    let recorded = self.stores.audit.audit_append(&event).await;
                    session.audit_result(recorded, now());
                }
                Step::Deliver(delivery) => {
                    let delivery = match (&self.verifier, kind) {
                        (Some(verifier), ListenerKind::Inbound) => {
                            add_verdicts(verifier.as_ref(), &self.inbound.hostname, delivery).await
                        }
                        (None, ListenerKind::Inbound) => strip_forged_verdicts(&self.inbound.hostname, delivery),
                        _ => delivery,
                    };
                    let (delivery, refused) = self.apply_receive_policies(delivery).await;
                    let result = match refused {
                        Some(err) => Err(err),
                        None => match (&self.guardrails, delivery.submitted.is_some()) {
                            (Some(guardrails), true) => {
                                let stores = agentkeys_submission::guardrails::SubmissionStores {
                                    blobs: self.blobs.as_ref(),
                                    outbox: self.stores.outbox.as_ref(),
                                    guardrails: guardrails.as_ref(),
                                    audit: self.stores.audit.as_ref(),
                                };
                                let unix = now().unix_secs();
                                agentkeys_submission::guardrails::accept_submission(stores, self.signer.as_deref(), &delivery, unix)
                                    .await
                            }
                            _ => store_delivery_signed(self.blobs.as_ref(), self.stores.outbox.as_ref(), self.signer.as_deref(), &delivery)
                                .await
                                .map(|()| Accepted::Stored),
                        },
                    };
                    if result.as_ref().is_ok_and(|a| *a == Accepted::Stored) {
                        metrics::counter!("agentkeys_smtp_messages_accepted_total", "listener" => kind.label())
                            .increment(1);
                        if let (Some(queued), Some(_)) = (&self.queued, &delivery.outbound) {
                            queued.notify_one();
                        }
                    }
                    session.delivery_result(result, now());
                }
                Step::StartTls => return Ok(Outcome::StartTls),
                Step::Close => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
                    return Ok(Outcome::Closed);
                }
            }
        }
    }
}

impl SmtpServer {
    /// Drops the copies of an MX delivery whose inbox's receive lists refuse
    /// its sender; `Some(error)` when nothing is left to store (every
    /// recipient refused, `550 5.7.1`) or the lists could not be read (`451`).
    async fn apply_receive_policies(&self, mut delivery: crate::Delivery) -> (crate::Delivery, Option<DeliveryError>) {
        let Some(policies) = &self.policies else { return (delivery, None) };
        if delivery.inbound.is_none() || !self.refuse_blocked_senders {
            return (delivery, None);
        }
        match agentkeys_submission::guard::apply_receive_policies(policies.as_ref(), &mut delivery).await {
            Err(err) => (delivery, Some(DeliveryError::Queue(err))),
            Ok(refused) => {
                for r in &refused {
                    tracing::info!(id = %delivery.id, inbox = %r.inbox, list = r.refusal.list().as_str(), "inbound copy refused by the receive policy");
                    metrics::counter!("agentkeys_policy_refusals_total", "door" => "mx", "list" => r.refusal.list().as_str())
                        .increment(1);
                }
                let none_left = !refused.is_empty() && delivery.local.is_empty();
                (delivery, none_left.then_some(DeliveryError::RefusedByPolicy))
            }
        }
    }
}

/// A message an external mail backend fetched (an IMAP mailbox), with the
/// envelope its provider recorded: what [`SmtpServer::ingest`] stores.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The id to store it under (chosen by the caller, which records it first
    /// so that a restart can tell whether it was stored).
    pub id: ulid::Ulid,
    /// Where it came from, for `Received:` (`imap.provider.example`).
    pub source: String,
    /// How (`IMAP`), for `Received:`'s `via`.
    pub via: &'static str,
    /// The envelope sender the provider recorded (`Return-Path`), `""` if none.
    pub mail_from: String,
    /// The envelope recipients: the only routing (never `To:`).
    pub recipients: Vec<String>,
    /// The raw message as the provider holds it.
    pub message: bytes::Bytes,
    /// When we fetched it.
    pub received_at: agentkeys_core::UnixTime,
    /// Verdicts the source evaluated when it received the message (Amazon
    /// SES), as the `resinfo` of our `Authentication-Results: <hostname>;`
    /// field (everything after the `;`); `None`: our verifier evaluates it.
    pub results: Option<String>,
}

/// What [`SmtpServer::ingest`] did with a [`Fetched`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The inboxes that got a copy.
    pub stored: Vec<agentkeys_core::Address>,
    /// Recipients that are not a hosted, active inbox (their copy was not stored).
    pub unroutable: Vec<String>,
}

/// Why a fetched message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No recipient is a hosted, active inbox: nothing stored; the caller keeps
    /// the message where it is and reports it.
    #[error("no envelope recipient is a hosted, active inbox: {}", .0.join(", "))]
    Unroutable(Vec<String>),
    /// Larger than the MX accepts.
    #[error("the message is {0} bytes, over the {1}-byte limit")]
    TooLarge(usize, usize),
    /// Every recipient inbox's receive lists refuse the sender: nothing stored.
    #[error("every recipient inbox's receive policy refuses the sender")]
    Refused,
    /// The store failed; nothing visible; try again.
    #[error(transparent)]
    Store(DeliveryError),
}

impl SmtpServer {
    /// Stores a message an external backend fetched exactly as the MX stores
    /// what it accepts: routed by the envelope recipients only (subaddressing
    /// included), a `Received:` field, our `Authentication-Results` (the MX's
    /// verifier; no client address, so SPF is `none`), the inboxes' receive
    /// lists, then the one durable write through the `Mailroom` (blob, index
    /// row, `message.received` event). `Ok` once it is acknowledged (indexed).
    pub async fn ingest(&self, fetched: Fetched) -> Result<Ingested, IngestError> {
        use agentkeys_submission::{LocalRecipient, RecipientQuery, RecipientRoute, route_recipient};
        let ctx = &self.inbound;
        if fetched.message.len() > ctx.limits.max_message_size {
            return Err(IngestError::TooLarge(fetched.message.len(), ctx.limits.max_message_size));
        }
        let mut local: Vec<LocalRecipient> = Vec::new();
        let mut unroutable = Vec::new();
        for rcpt in &fetched.recipients {
            let Some(query) = RecipientQuery::parse_with(rcpt, &ctx.subaddressing) else {
                unroutable.push(rcpt.clone());
                continue;
            };
            let answer = lookup_recipient(self.stores.recipients.as_ref(), &query)
                .await
                .map_err(|e| IngestError::Store(DeliveryError::Queue(e)))?;
            match route_recipient(query, answer) {
                RecipientRoute::Local(r) => {
                    if !local.iter().any(|l| l.inbox == r.inbox) {
                        local.push(r);
                    }
                }
                _ => unroutable.push(rcpt.clone()),
            }
        }
        if local.is_empty() {
            return Err(IngestError::Unroutable(unroutable));
        }
        let source = crate::received::sanitize_helo(&fetched.source);
        let received = format!(
            "Received: from {source}\r\n\tby {} via {} id {};\r\n\t{}\r\n",
            ctx.hostname,
            fetched.via,
            fetched.id,
            agentkeys_core::time::rfc5322(fetched.received_at)
        );
        let mut message = Vec::with_capacity(received.len() + fetched.message.len());
        message.extend_from_slice(received.as_bytes());
        message.extend_from_slice(&fetched.message);
        let delivery = crate::Delivery {
            id: fetched.id,
            message: message.into(),
            received_at: fetched.received_at,
            local,
            outbound: None,
            inbound: Some(Box::new(crate::InboundEnvelope {
                client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                helo: source,
                mail_from: fetched.mail_from,
            })),
            submitted: None,
        };
        let delivery = match (&fetched.results, &self.verifier) {
            (Some(resinfo), _) => {
                let header = format!("Authentication-Results: {};{resinfo}\r\n", ctx.hostname);
                let mut delivery = delivery;
                delivery.message = crate::verdicts::stripped_with_header(&header, &delivery.message, &ctx.hostname).into();
                delivery
            }
            (None, Some(verifier)) => add_verdicts(verifier.as_ref(), &ctx.hostname, delivery).await,
            (None, None) => strip_forged_verdicts(&ctx.hostname, delivery),
        };
        let (delivery, refused) = self.apply_receive_policies(delivery).await;
        match refused {
            Some(DeliveryError::RefusedByPolicy) => return Err(IngestError::Refused),
            Some(err) => return Err(IngestError::Store(err)),
            None => {}
        }
        store_delivery_signed(self.blobs.as_ref(), self.stores.outbox.as_ref(), None, &delivery)
            .await
            .map_err(IngestError::Store)?;
        metrics::counter!("agentkeys_smtp_messages_accepted_total", "listener" => fetched.via).increment(1);
        Ok(Ingested { stored: delivery.local.iter().map(|l| l.inbox.clone()).collect(), unroutable })
    }
}

/// The next accepted connection of `listener`, or `None` once `shutdown` is
/// cancelled (the one accept loop of every listener, SMTP and HTTP). A failed
/// accept (`EMFILE` when descriptors run out, `ECONNABORTED`, …) is counted in
/// `agentkeys_accept_errors_total{listener}`, logged and retried after
/// [`ACCEPT_ERROR_BACKOFF`]: the connection waits in the backlog meanwhile, and
/// the listener neither spins nor stops.
pub async fn next_connection(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    label: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(err) => {
                metrics::counter!("agentkeys_accept_errors_total", "listener" => label).increment(1);
                tracing::warn!(listener = label, error = %err, "accept failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

/// Without a verifier, MX mail still loses the verdicts that claim to be ours.
fn strip_forged_verdicts(hostname: &str, mut delivery: crate::Delivery) -> crate::Delivery {
    delivery.message = crate::verdicts::strip_own_results(&delivery.message, hostname).into();
    delivery
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Over the connection cap: `421 4.7.0` and close (implicit TLS: just close, a
/// plaintext reply would not be understood).
async fn refuse(mut stream: TcpStream, kind: ListenerKind, hostname: &str) {
    tracing::info!("connection refused: too many connections");
    let reply = Reply::TooManyConnections;
    metrics::counter!("agentkeys_smtp_rejections_total", "code" => reply.code().to_string())
        .increment(1);
    if kind != ListenerKind::SubmissionImplicitTls {
        let mut out = Vec::new();
        reply.write(hostname, &mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
