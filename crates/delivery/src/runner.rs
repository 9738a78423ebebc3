//! The outbound queue runner: claim due rows → deliver over SMTP → record the
//! outcome, with exponential backoff, a maximum age, a DSN for each bounce,
//! pooled connections with a per-host limit, and leases renewed while attempts
//! run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkeys_core::UnixTime;
use agentkeys_store::{AttemptOutcome, AttemptToRecord, BlobKey, BlobStore, Claim, OutboundQueue, StoreError};
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ulid::Ulid;

use crate::client::{Connection, OpenError, TlsPolicy};
use crate::dsn::{Bounce, build_dsn};
use crate::mta_sts::StsMode;
use crate::mta_sts_client::{Applied, MtaSts};
use crate::pool::Pool;
use crate::route::{ResolveError, Resolver, Route, Target, targets};
use crate::tls::TlsClients;

/// Waits after the 1st, 2nd, 3rd and 4th failed attempt; then [`BACKOFF_STEADY`].
pub const BACKOFF: [Duration; 4] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(3600),
];
/// The wait between attempts after the [`BACKOFF`] steps.
pub const BACKOFF_STEADY: Duration = Duration::from_secs(4 * 3600);
/// A message still undelivered this long after it was queued bounces.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);
/// How long a claim is leased. The runner renews the leases of attempts still
/// running every third of it ([`renew_every`]), so a slow attempt keeps its row;
/// a crashed worker's rows come back at most this long after its last renewal.
pub const LEASE: Duration = Duration::from_secs(15 * 60);
/// The shortest lease, whatever the backoff scale.
pub const MIN_LEASE: Duration = Duration::from_secs(5);
/// An attempt whose lease could not be renewed stops this long before the lease
/// ends, so no other worker can start the same delivery while it still runs.
pub const LEASE_MARGIN: Duration = Duration::from_secs(2);
/// Rows claimed per round (one `UPDATE … RETURNING`).
pub const CLAIM_BATCH: u32 = 64;
/// Claimed rows being attempted at once, over all destinations; the runner
/// claims no more until some finish.
pub const MAX_IN_FLIGHT: usize = 256;
/// The safety poll: how often the runner looks for due rows when nothing woke
/// it. Submissions wake it at once ([`Runner::waker`]); deferred rows become
/// due by the clock and are found by this poll, at most this late.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of each SMTP step (connect, each command, the data transfer).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Most finished attempts recorded in one transaction (one commit, one fsync):
/// the recorder takes whatever has finished since its last commit, up to this.
pub const RECORD_BATCH: usize = 64;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Our name: EHLO, `Reporting-MTA` and the DSN's `From:` domain.
    pub hostname: String,
    /// MX delivery (with its port) or a smarthost.
    pub route: Route,
    /// Multiplies [`BACKOFF`], [`BACKOFF_STEADY`] and [`LEASE`]: 1.0 in production,
    /// small in tests so retries happen within seconds.
    pub backoff_scale: f64,
    /// Bounce after this age ([`MAX_AGE`] by default).
    pub max_age: Duration,
    /// TLS for every destination: opportunistic (default) or required.
    pub tls: TlsPolicy,
}

fn scaled(d: Duration, scale: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * scale).unwrap_or(d)
}

/// The wait after `failures` failed attempts (1 = the first failure).
pub fn retry_delay(failures: u32, scale: f64) -> Duration {
    let step = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
    scaled(BACKOFF.get(step).copied().unwrap_or(BACKOFF_STEADY), scale)
}

fn secs_ceil(d: Duration) -> i64 {
    i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

/// The lease length for a backoff scale: [`LEASE`] scaled, at least [`MIN_LEASE`].
pub fn lease_length(scale: f64) -> Duration {
    scaled(LEASE, scale).max(MIN_LEASE)
}

/// How often running attempts' leases are renewed: a third of the lease.
pub fn renew_every(scale: f64) -> Duration {
    lease_length(scale) / 3
}

/// After a temporary failure: when to try next, or `None` when the next attempt
/// would be past the maximum age (the row bounces).
pub fn next_attempt(
    failures: u32,
    queued_at: UnixTime,
    now: UnixTime,
    config: &DeliveryConfig,
) -> Option<UnixTime> {
    let next = now.saturating_add(secs_ceil(retry_delay(failures, config.backoff_scale)));
    let deadline =
        queued_at.saturating_add(secs_ceil(scaled(config.max_age, config.backoff_scale)));
    (next <= deadline).then_some(next)
}

/// How one SMTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Accepted; the final reply.
    Delivered(String),
    /// Try again later (4xx, connection, TLS, timeout, DNS).
    Temporary(String),
    /// Never (5xx, no such domain, null MX).
    Permanent(String),
}

/// Where a hosted domain's outbound mail goes when it is not our own MTA (issue
/// 14): a mail backend's send side (an IMAP/SMTP provider's submission server).
/// The runner asks [`SendSinks::sink_for`] with the sender's domain before each
/// attempt; `None` is the native path (MX or smarthost, below). The queue's
/// states, backoff, bounces (DSN into the sender's inbox) and records are the
/// same for every sink: a sink only answers how one attempt ended.
#[async_trait::async_trait]
pub trait SendSink: Send + Sync + 'static {
    /// One attempt to hand `body` (already DKIM-signed) from `from` to `to`.
    async fn send(&self, from: &str, to: &str, body: &[u8]) -> Attempt;
}

/// Finds the send side of a sender domain's backend.
#[async_trait::async_trait]
pub trait SendSinks: Send + Sync + 'static {
    /// The sink of `sender_domain` (lowercase), or `None` for the native MTA.
    async fn sink_for(&self, sender_domain: &str) -> Option<Arc<dyn SendSink>>;
}

/// Logs and counts (`agentkeys_mta_sts_failures_total{mode, reason}`) one
/// MTA-STS failure: under `enforce` the host was not used; under `testing` it
/// was, and this is what would have stopped it.
fn sts_failure(sts: &Applied, reason: &'static str, host: &str, why: &str) {
    let mode = sts.policy.mode.as_str();
    metrics::counter!("agentkeys_mta_sts_failures_total", "mode" => mode, "reason" => reason).increment(1);
    if sts.policy.mode == StsMode::Enforce {
        tracing::warn!(domain = %sts.domain, %host, reason, %why, "MTA-STS enforce: not delivering to this host");
    } else {
        tracing::warn!(domain = %sts.domain, %host, reason, %why, "MTA-STS testing: delivering, but enforce would have refused this host");
    }
}

/// One SMTP delivery to one address on a new connection: greeting, EHLO,
/// STARTTLS when offered (opportunistic: the certificate is not checked, RFC
/// 7435), MAIL, RCPT, DATA, QUIT. No MTA-STS: the caller chose the host.
pub async fn send_to(
    addr: std::net::SocketAddr,
    host: &str,
    helo: &str,
    from: &str,
    to: &str,
    body: &[u8],
    timeout: Duration,
) -> Attempt {
    let clients = TlsClients::new(&[]).ok();
    match Connection::open(addr, host, helo, TlsPolicy::Opportunistic, clients.as_ref(), "", timeout).await {
        Ok(mut conn) => {
            let out = conn.send(from, to, body, timeout).await;
            if out.reusable {
                conn.quit().await;
            }
            out.attempt
        }
        Err(err) => err.attempt,
    }
}

/// A claim batch's lease, shared by its rows' attempts and renewed while any runs.
#[derive(Debug)]
struct Lease {
    token: String,
    /// Unix seconds; moved forward by each successful renewal.
    until: AtomicI64,
}

impl Lease {
    /// Resolves when the lease is about to end without having been renewed.
    async fn lost(&self, clock: &(dyn Fn() -> UnixTime + Send + Sync)) {
        loop {
            let until = self.until.load(Ordering::Acquire);
            let left = until
                .saturating_sub(clock())
                .saturating_sub(secs_ceil(LEASE_MARGIN));
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0))).await;
            if self.until.load(Ordering::Acquire) == until {
                return; // not renewed in the meantime
            }
        }
    }
}

/// The queue runner. Cheap to share; [`Runner::run`] is its loop.
pub struct Runner {
    queue: Arc<dyn OutboundQueue>,
    blobs: Arc<dyn BlobStore>,
    resolver: Arc<dyn Resolver>,
    config: DeliveryConfig,
    clock: Arc<dyn Fn() -> UnixTime + Send + Sync>,
    pool: Pool,
    tls: Option<TlsClients>,
    /// MTA-STS discovery for direct MX delivery; `None`: not honoured.
    sts: Option<Arc<MtaSts>>,
    wake: Arc<Notify>,
    /// Beaten once per round of [`Runner::run`] (readiness).
    heartbeat: crate::Heartbeat,
    in_flight: Arc<Semaphore>,
    /// Leases with attempts still running, by token, with how many.
    leases: Mutex<HashMap<String, (Arc<Lease>, usize)>>,
    /// Finished attempts on their way to the recorder task ([`RECORD_BATCH`]).
    records: mpsc::UnboundedSender<Record>,
    record_queue: Mutex<Option<mpsc::UnboundedReceiver<Record>>>,
    /// Keys of finished messages' queue copies, for the reaper task
    /// ([`crate::reaper`]).
    reap: mpsc::UnboundedSender<BlobKey>,
    reap_queue: Mutex<Option<mpsc::UnboundedReceiver<BlobKey>>>,
    /// The send sides of domains with a mail backend.
    sinks: Option<Arc<dyn SendSinks>>,
}

/// A finished attempt waiting to be recorded, and where its result goes.
struct Record {
    item: AttemptToRecord,
    done: oneshot::Sender<Result<u64, StoreError>>,
}

/// Records finished attempts in batches: whatever arrived since the last
/// commit, up to [`RECORD_BATCH`], in one transaction.
async fn recorder(queue: Arc<dyn OutboundQueue>, mut records: mpsc::UnboundedReceiver<Record>) {
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match records.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let items: Vec<AttemptToRecord> = batch.iter().map(|r| r.item.clone()).collect();
        match queue.record_attempts(&items).await {
            Ok(results) => {
                for (record, result) in batch.into_iter().zip(results) {
                    let _ = record.done.send(result);
                }
            }
            Err(err) => {
                let text = err.to_string();
                for record in batch {
                    let _ = record.done.send(Err(StoreError::Backend(text.clone())));
                }
            }
        }
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn system_now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Runner {
    /// A runner over the queue, the blobs and a resolver.
    pub fn new(
        queue: Arc<dyn OutboundQueue>,
        blobs: Arc<dyn BlobStore>,
        resolver: Arc<dyn Resolver>,
        config: DeliveryConfig,
    ) -> Self {
        // TLS for STARTTLS uses the process-wide provider: make it aws-lc-rs.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (records, record_queue) = mpsc::unbounded_channel();
        let (reap, reap_queue) = mpsc::unbounded_channel();
        let tls = match TlsClients::new(&[]) {
            Ok(tls) => Some(tls),
            Err(err) => {
                tracing::error!(%err, "no TLS client for STARTTLS; servers offering it are deferred");
                None
            }
        };
        Self {
            queue,
            blobs,
            resolver,
            config,
            clock: Arc::new(system_now),
            pool: Pool::default(),
            tls,
            sts: None,
            wake: Arc::new(Notify::new()),
            heartbeat: crate::Heartbeat::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            leases: Mutex::new(HashMap::new()),
            records,
            record_queue: Mutex::new(Some(record_queue)),
            reap,
            reap_queue: Mutex::new(Some(reap_queue)),
            sinks: None,
        }
    }

    /// The same runner, sending the mail of domains with a mail backend through
    /// that backend ([`SendSinks`]); other domains' mail goes the native way.
    #[must_use]
    pub fn with_send_sinks(mut self, sinks: Arc<dyn SendSinks>) -> Self {
        self.sinks = Some(sinks);
        self
    }

    /// The same runner, woken by `wake` (give the same `Notify` to the SMTP
    /// server's `with_queue_notify`, so a submission starts its delivery at once).
    #[must_use]
    pub fn with_waker(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// The same runner with these TLS clients (trust anchors from
    /// `[delivery] ca_file` besides the webpki roots).
    #[must_use]
    pub fn with_tls_clients(mut self, clients: TlsClients) -> Self {
        self.tls = Some(clients);
        self
    }

    /// The same runner honouring MTA-STS (RFC 8461) for direct MX delivery:
    /// each recipient domain's policy is looked up through `sts` before its MX
    /// hosts are contacted. The smarthost route does not use it.
    #[must_use]
    pub fn with_mta_sts(mut self, sts: Arc<MtaSts>) -> Self {
        self.sts = Some(sts);
        self
    }

    /// What wakes the runner: `notify_one` after queueing a message.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The same runner beating `heartbeat` (made before the runner, e.g. for a
    /// readiness endpoint that starts first).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: crate::Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// The heartbeat [`Runner::run`] beats every round, for readiness: alive
    /// while the loop goes round ([`crate::HEARTBEAT_STALE`]).
    pub fn heartbeat(&self) -> crate::Heartbeat {
        self.heartbeat.clone()
    }

    /// Claims and delivers until `shutdown`, then waits for attempts in flight
    /// (still renewing their leases).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let record_queue = self
            .record_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let recording = record_queue.map(|q| tokio::spawn(recorder(Arc::clone(&self.queue), q)));
        let reap_queue = self.reap_queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        let drain = CancellationToken::new();
        let reaping = reap_queue.map(|keys| {
            let (blobs, queue, now) = (Arc::clone(&self.blobs), Arc::clone(&self.queue), (self.clock)());
            tokio::spawn(crate::reaper::reaper(blobs, queue, now, keys, drain.clone()))
        });
        let tasks = TaskTracker::new();
        let renew = renew_every(self.config.backoff_scale);
        let mut last_renew = Instant::now();
        let mut last_housekeeping = Instant::now();
        loop {
            self.heartbeat.beat();
            if last_renew.elapsed() >= renew {
                self.renew_leases().await;
                last_renew = Instant::now();
            }
            if last_housekeeping.elapsed() >= POLL_INTERVAL {
                self.update_depth().await;
                self.close_expired();
                last_housekeeping = Instant::now();
            }
            let (claimed, asked) = self.claim_round(&tasks).await;
            if asked > 0 && claimed == asked {
                // Probably more due: claim again (after yielding to the attempts).
                tokio::task::yield_now().await;
                if !shutdown.is_cancelled() {
                    continue;
                }
            }
            let wait = POLL_INTERVAL.min(renew.saturating_sub(last_renew.elapsed()));
            let in_flight = Arc::clone(&self.in_flight);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified(), if asked > 0 => {}
                // Every slot busy: go on when one frees up.
                Ok(_) = in_flight.acquire_owned(), if asked == 0 => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tasks.close();
        loop {
            tokio::select! {
                () = tasks.wait() => break,
                () = tokio::time::sleep(renew) => self.renew_leases().await,
            }
        }
        // Every attempt has its result back, so nothing waits for the recorder.
        if let Some(recording) = recording {
            recording.abort();
        }
        for conn in self.pool.drain() {
            conn.quit().await;
        }
        // Every attempt has handed over its finished message: remove those, then stop.
        drain.cancel();
        if let Some(reaping) = reaping {
            let _ = reaping.await;
        }
    }

    /// Records one finished attempt through the batching recorder (or directly
    /// when the runner loop is not running).
    async fn record(
        &self,
        claim: &Claim,
        outcome: AttemptOutcome,
        next: UnixTime,
        response: &str,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let item = AttemptToRecord {
            claim: claim.clone(),
            outcome,
            next_attempt_at: next,
            response: Some(response.to_owned()),
            now,
        };
        let (done, result) = oneshot::channel();
        if self.records.send(Record { item, done }).is_ok()
            && let Ok(result) = result.await
        {
            return result;
        }
        self.queue
            .record_attempt(claim, outcome, next, Some(response), now)
            .await
    }

    fn close_expired(&self) {
        let old = self.pool.expired();
        if !old.is_empty() {
            tokio::spawn(async move {
                for conn in old {
                    conn.quit().await;
                }
            });
        }
    }

    async fn renew_leases(&self) {
        let leases: Vec<Arc<Lease>> = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(lease, _)| Arc::clone(lease))
            .collect();
        let length = secs_ceil(lease_length(self.config.backoff_scale));
        for lease in leases {
            let until = (self.clock)().saturating_add(length);
            match self.queue.renew_lease(&lease.token, until).await {
                Ok(_) => lease.until.store(until, Ordering::Release),
                Err(err) => tracing::warn!(%err, "cannot renew a delivery lease; its attempts stop before it ends"),
            }
        }
    }

    /// One claim: as many rows as there are free in-flight slots (at most
    /// [`CLAIM_BATCH`]). Returns (claimed, asked for).
    async fn claim_round(self: &Arc<Self>, tasks: &TaskTracker) -> (usize, usize) {
        let free = self.in_flight.available_permits().min(CLAIM_BATCH as usize);
        if free == 0 {
            return (0, 0);
        }
        let Ok(permits) = Arc::clone(&self.in_flight).acquire_many_owned(u32::try_from(free).unwrap_or(1)).await else {
            return (0, 0);
        };
        let now = (self.clock)();
        let until = now.saturating_add(secs_ceil(lease_length(self.config.backoff_scale)));
        let claims = match self
            .queue
            .claim_due(now, u32::try_from(free).unwrap_or(CLAIM_BATCH), until)
            .await
        {
            Ok(claims) => claims,
            Err(err) => {
                tracing::error!(%err, "cannot claim due queue rows");
                return (0, free);
            }
        };
        let n = claims.len();
        let mut permits = permits;
        let Some(first) = claims.first() else {
            return (0, free);
        };
        let lease = Arc::new(Lease {
            token: first.lease.clone(),
            until: AtomicI64::new(until),
        });
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lease.token.clone(), (Arc::clone(&lease), n));
        for claim in claims {
            let runner = Arc::clone(self);
            let lease = Arc::clone(&lease);
            let permit = permits.split(1);
            tasks.spawn(async move {
                runner.deliver(claim, &lease).await;
                runner.release(&lease);
                drop(permit);
            });
        }
        (n, free)
    }

    fn release(&self, lease: &Lease) {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, running)) = leases.get_mut(&lease.token) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                leases.remove(&lease.token);
            }
        }
    }

    async fn update_depth(&self) {
        if let Ok(counts) = self.queue.queue_counts().await {
            for state in ["queued", "sending", "deferred"] {
                let n = counts
                    .iter()
                    .find(|c| c.state == state)
                    .map_or(0, |c| c.count);
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!("agentkeys_queue_depth", "state" => state).set(n as f64);
            }
        }
    }

    /// One attempt for one claimed row, recorded.
    async fn deliver(&self, claim: Claim, lease: &Lease) {
        let entry = &claim.entry;
        let started = Instant::now();
        let key = entry.message_id.parse::<Ulid>().ok().map(BlobKey::queued);
        let body = match &key {
            Some(key) => self.blobs.get(key).await,
            None => Ok(None),
        };
        let attempt = match body {
            Ok(Some(body)) => {
                tokio::select! {
                    attempt = self.attempt(entry.sender.as_str(), &entry.recipient, &body) => attempt,
                    () = lease.lost(self.clock.as_ref()) => Attempt::Temporary(
                        "451 4.4.7 attempt stopped: its queue lease could not be renewed".to_owned(),
                    ),
                }
            }
            Ok(None) => Attempt::Permanent(format!(
                "554 5.3.0 queued message {} is missing",
                entry.message_id
            )),
            Err(err) => {
                Attempt::Temporary(format!("451 4.3.0 cannot read the queued message: {err}"))
            }
        };
        let now = (self.clock)();
        let (outcome, next, response) = match attempt {
            Attempt::Delivered(reply) => (AttemptOutcome::Delivered, now, reply),
            Attempt::Permanent(reply) => (AttemptOutcome::Bounced, now, reply),
            Attempt::Temporary(reply) => {
                match next_attempt(entry.attempts + 1, entry.queued_at, now, &self.config) {
                    Some(next) => (AttemptOutcome::Deferred, next, reply),
                    None => (
                        AttemptOutcome::Bounced,
                        now,
                        format!("{reply} (gave up: the message is too old to retry)"),
                    ),
                }
            }
        };
        metrics::counter!("agentkeys_delivery_attempts_total", "result" => outcome.as_str())
            .increment(1);
        if outcome == AttemptOutcome::Delivered {
            let latency = now.saturating_sub(entry.queued_at).max(0);
            #[allow(clippy::cast_precision_loss)]
            metrics::histogram!("agentkeys_delivery_latency_seconds").record(latency as f64);
        }
        if outcome == AttemptOutcome::Bounced && claim.owner.as_str() == agentkeys_store::SYSTEM_OWNER {
            // System mail (a notice to an owner's address) has no inbox to
            // bounce into: the failure stays in the queue's record only.
            tracing::warn!(message = %entry.message_id, %response, "a notice to an owner bounced");
        } else if outcome == AttemptOutcome::Bounced {
            // The DSN is durable before the row says bounced: a crash in between
            // retries (and may bounce twice), never loses the notice.
            if let Err(err) = self.write_dsn(&claim, &response, now).await {
                tracing::error!(message = %entry.message_id, %err, "cannot store the DSN; will retry");
                let retry =
                    now.saturating_add(secs_ceil(retry_delay(1, self.config.backoff_scale)));
                let _ = self
                    .queue
                    .record_attempt(
                        &claim,
                        AttemptOutcome::Deferred,
                        retry,
                        Some(&response),
                        now,
                    )
                    .await;
                return;
            }
        }
        tracing::debug!(
            message = %entry.message_id, outcome = %outcome, attempt = entry.attempts + 1,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), %response,
            "delivery attempt"
        );
        let unfinished = match self.record(&claim, outcome, next, &response, now).await {
            Ok(unfinished) => unfinished,
            Err(err) => {
                tracing::error!(message = %entry.message_id, %err, "cannot record the delivery attempt");
                return;
            }
        };
        if outcome != AttemptOutcome::Deferred
            && unfinished == 0
            && let Some(key) = key
        {
            // Removed in the background, off every delivery's and submission's path.
            let _ = self.reap.send(key);
        }
    }

    async fn attempt(&self, from: &str, to: &str, body: &[u8]) -> Attempt {
        if let (Some(sinks), Some((_, sender_domain))) = (&self.sinks, from.rsplit_once('@'))
            && let Some(sink) = sinks.sink_for(&sender_domain.to_ascii_lowercase()).await
        {
            return sink.send(from, to, body).await;
        }
        self.attempt_native(from, to, body).await
    }

    /// The native MTA's attempt: MX (or smarthost) routing, MTA-STS, the pool.
    async fn attempt_native(&self, from: &str, to: &str, body: &[u8]) -> Attempt {
        let Some((_, domain)) = to.rsplit_once('@') else {
            return Attempt::Permanent(format!("553 5.1.3 {to} is not an address"));
        };
        let domain = domain.to_ascii_lowercase();
        let hosts = match targets(self.resolver.as_ref(), &self.config.route, &domain).await {
            Ok(hosts) => hosts,
            Err(ResolveError::Permanent(why)) => {
                return Attempt::Permanent(format!("550 5.1.2 {why}"));
            }
            Err(ResolveError::Temporary(why)) => {
                return Attempt::Temporary(format!("451 4.4.3 DNS: {why}"));
            }
        };
        let applied = match (&self.config.route, &self.sts) {
            (Route::Mx { .. }, Some(sts)) => Applied::active(&domain, sts.policy_for(&domain).await),
            _ => None,
        };
        let (tls, hosts) = match &applied {
            Some(sts) if sts.policy.mode == StsMode::Enforce => {
                let (allowed, refused): (Vec<Target>, Vec<Target>) =
                    hosts.into_iter().partition(|t| sts.policy.allows_mx(&t.host));
                for t in &refused {
                    sts_failure(sts, "mx_mismatch", &t.host, "it matches no mx pattern of the policy");
                }
                if allowed.is_empty() {
                    let names: Vec<&str> = refused.iter().map(|t| t.host.as_str()).collect();
                    return Attempt::Temporary(format!(
                        "451 4.7.5 {}: no MX host may receive its mail ({} not in mx: {})",
                        sts.because(),
                        names.join(", "),
                        sts.policy.mx_list()
                    ));
                }
                (TlsPolicy::Validated, allowed)
            }
            _ => (self.config.tls, hosts),
        };
        let mut last = Attempt::Temporary("451 4.4.1 no host answered".to_owned());
        for target in hosts {
            let slot = self.pool.slot(&target.host);
            let Ok(_permit) = slot.acquire().await else {
                return Attempt::Temporary("451 4.3.0 delivery is shutting down".to_owned());
            };
            match self.on_host(&target, from, to, body, tls, applied.as_ref()).await {
                Attempt::Temporary(why) => last = Attempt::Temporary(why),
                done => return done,
            }
        }
        last
    }

    /// One host: a pooled connection if there is one (a stale one is replaced
    /// at once), else each of its addresses in turn. Under an MTA-STS
    /// `testing` policy, what would have failed `enforce` is logged and counted.
    async fn on_host(
        &self,
        target: &Target,
        from: &str,
        to: &str,
        body: &[u8],
        tls: TlsPolicy,
        sts: Option<&Applied>,
    ) -> Attempt {
        let testing = sts.filter(|a| a.policy.mode == StsMode::Testing);
        if let Some(sts) = testing
            && !sts.policy.allows_mx(&target.host)
        {
            sts_failure(sts, "mx_mismatch", &target.host, "it matches no mx pattern of the policy");
        }
        if let Some(mut conn) = self.pool.take(&target.host, tls) {
            if let Some(sts) = testing {
                self.report_testing(sts, &mut conn, &target.host);
            }
            let out = conn.send(from, to, body, SMTP_TIMEOUT).await;
            if !out.untouched {
                self.hand_back(&target.host, conn, out.reusable).await;
                return out.attempt;
            }
            // The server closed it while idle; nothing was sent: try a new one.
        }
        let because = match sts {
            Some(sts) if tls == TlsPolicy::Validated => sts.because(),
            _ => "delivery.require_tls".to_owned(),
        };
        let mut last = Attempt::Temporary("451 4.4.1 no address answered".to_owned());
        for addr in &target.addrs {
            let mut conn = match Connection::open(
                *addr,
                &target.host,
                &self.config.hostname,
                tls,
                self.tls.as_ref(),
                &because,
                SMTP_TIMEOUT,
            )
            .await
            {
                Ok(conn) => conn,
                Err(OpenError { attempt: Attempt::Temporary(why), tls: failure }) => {
                    if let (Some(sts), Some(failure)) = (sts, failure) {
                        sts_failure(sts, failure.as_str(), &target.host, &why);
                    }
                    last = Attempt::Temporary(why);
                    continue;
                }
                Err(OpenError { attempt, .. }) => return attempt,
            };
            if let Some(sts) = testing {
                self.report_testing(sts, &mut conn, &target.host);
            }
            let out = conn.send(from, to, body, SMTP_TIMEOUT).await;
            self.hand_back(&target.host, conn, out.reusable).await;
            match out.attempt {
                Attempt::Temporary(why) => last = Attempt::Temporary(why),
                done => return done,
            }
        }
        last
    }

    /// Under a `testing` policy: would this session have met `enforce`?
    fn report_testing(&self, sts: &Applied, conn: &mut Connection, host: &str) {
        if let Some((failure, why)) = conn.sts_problem(self.tls.as_ref(), host) {
            sts_failure(sts, failure.as_str(), host, &why);
        }
    }

    async fn hand_back(&self, host: &str, conn: Connection, reusable: bool) {
        if let Some(full) = self.pool.give_back(host, conn, reusable) {
            full.quit().await;
        }
    }

    /// Idle pooled connections to `host` (tests).
    pub fn idle_connections(&self, host: &str) -> usize {
        self.pool.idle_count(host)
    }

    async fn write_dsn(
        &self,
        claim: &Claim,
        diagnostic: &str,
        now: UnixTime,
    ) -> Result<(), agentkeys_store::BlobError> {
        let key = claim
            .entry
            .message_id
            .parse::<Ulid>()
            .ok()
            .map(BlobKey::queued);
        let original = match key {
            Some(key) => self.blobs.get(&key).await?.unwrap_or_default(),
            None => Bytes::new(),
        };
        let dsn = build_dsn(&Bounce {
            reporting_mta: &self.config.hostname,
            sender: &claim.entry.sender,
            recipient: &claim.entry.recipient,
            diagnostic,
            message_id: &claim.entry.message_id,
            original: &original,
            now,
        });
        let key = BlobKey::message(&claim.owner, &claim.entry.sender, Ulid::new());
        self.blobs.put_durable(vec![(key, Bytes::from(dsn))]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scale: f64) -> DeliveryConfig {
        DeliveryConfig {
            hostname: "mx.test".into(),
            route: Route::Mx { port: 25 },
            backoff_scale: scale,
            max_age: MAX_AGE,
            tls: TlsPolicy::Opportunistic,
        }
    }

    #[test]
    fn backoff_schedule_is_1m_5m_15m_1h_then_4h() {
        let mins: Vec<u64> = (1..=7)
            .map(|n| retry_delay(n, 1.0).as_secs() / 60)
            .collect();
        assert_eq!(mins, [1, 5, 15, 60, 240, 240, 240]);
        assert_eq!(
            retry_delay(1, 0.001),
            Duration::from_millis(60),
            "test scale"
        );
    }

    #[test]
    fn a_message_past_the_maximum_age_bounces_instead_of_retrying() {
        let c = config(1.0);
        let queued = 1_000;
        assert_eq!(next_attempt(1, queued, queued, &c), Some(queued + 60));
        let almost = queued + i64::try_from(MAX_AGE.as_secs()).unwrap() - 100;
        assert_eq!(
            next_attempt(9, queued, almost, &c),
            None,
            "4h later is past 5 days"
        );
        assert_eq!(
            next_attempt(1, 0, 0, &config(0.001)),
            Some(1),
            "rounded up to whole seconds"
        );
    }

    #[test]
    fn limits_are_named_and_sane() {
        assert_eq!(lease_length(1.0), LEASE);
        assert_eq!(lease_length(0.001), MIN_LEASE, "tests still get a usable lease");
        assert!(
            renew_every(0.001) + LEASE_MARGIN < MIN_LEASE,
            "a renewal comes before a running attempt would give up"
        );
        assert!(CLAIM_BATCH as usize <= MAX_IN_FLIGHT);
        assert!(POLL_INTERVAL < MIN_LEASE);
        assert_eq!(MAX_AGE, Duration::from_secs(5 * 24 * 3600));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrenewed_lease_is_lost_before_it_ends_and_a_renewed_one_is_not() {
        let now = Arc::new(AtomicI64::new(1_000));
        let clock_now = Arc::clone(&now);
        let clock = move || clock_now.load(Ordering::Acquire);
        let lease = Arc::new(Lease { token: "t".into(), until: AtomicI64::new(1_005) });
        // Not renewed: lost at until - LEASE_MARGIN (3 s of the 5).
        let lost = tokio::time::timeout(Duration::from_secs(4), lease.lost(&clock)).await;
        assert!(lost.is_ok(), "given up before the lease ended");
        // Renewed while waiting: still held after the first deadline.
        let lease = Arc::new(Lease { token: "t".into(), until: AtomicI64::new(1_005) });
        let renewer = Arc::clone(&lease);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            renewer.until.store(1_100, Ordering::Release);
        });
        let held = tokio::time::timeout(Duration::from_secs(10), lease.lost(&clock)).await;
        assert!(held.is_err(), "a renewed lease is not given up");
    }
}
