//! The outbound queue runner: claim due rows → deliver over SMTP → record the
//! outcome, with exponential backoff, a maximum age, a DSN for each bounce and a
//! per-destination connection limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkeys_core::UnixTime;
use agentkeys_store::{AttemptOutcome, BlobKey, BlobStore, Claim, OutboundQueue};
use bytes::Bytes;
use mail_send::SmtpClient;
use smtp_proto::EXT_START_TLS;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ulid::Ulid;

use crate::dsn::{Bounce, build_dsn};
use crate::route::{ResolveError, Resolver, Route, targets};

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
/// How long a claim is leased: longer than any attempt ([`SMTP_TIMEOUT`] per
/// step), so a live worker never loses its row; a crashed one's rows come back
/// after it.
pub const LEASE: Duration = Duration::from_secs(15 * 60);
/// The shortest lease, whatever the backoff scale.
pub const MIN_LEASE: Duration = Duration::from_secs(5);
/// Rows claimed per round.
pub const CLAIM_BATCH: u32 = 32;
/// Concurrent connections to one destination domain.
pub const MAX_PER_DESTINATION: usize = 4;
/// How often the runner looks for due rows when idle.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of each SMTP step (connect, each command, the data transfer).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

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

fn reply_text(r: &smtp_proto::Response<String>) -> String {
    let message = r.message().replace(['\r', '\n'], " ");
    match r.esc {
        [0, ..] => format!("{} {message}", r.code()),
        [a, b, c] => format!("{} {a}.{b}.{c} {message}", r.code()),
    }
}

fn classify(err: mail_send::Error) -> Attempt {
    match err {
        mail_send::Error::UnexpectedReply(r) if (500..600).contains(&r.code()) => {
            Attempt::Permanent(reply_text(&r))
        }
        mail_send::Error::UnexpectedReply(r) => Attempt::Temporary(reply_text(&r)),
        other => Attempt::Temporary(format!("{other}")),
    }
}

async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    from: &str,
    to: &str,
    body: &[u8],
) -> Result<String, mail_send::Error> {
    let params = mail_send::smtp::message::Parameters::default();
    client.mail_from(from, &params).await?;
    client.rcpt_to(to, &params).await?;
    let reply = client.data(body).await?;
    Ok(reply_text(&reply))
}

/// One SMTP delivery to one address: greeting, EHLO, STARTTLS when offered
/// (opportunistic: the certificate is not checked, RFC 7435), MAIL, RCPT, DATA.
pub async fn send_to(
    addr: SocketAddr,
    host: &str,
    helo: &str,
    from: &str,
    to: &str,
    body: &[u8],
    timeout: Duration,
) -> Attempt {
    let run = async {
        let mut client = SmtpClient::connect(addr, timeout).await?;
        let greeting = client.read().await?;
        if !greeting.is_positive_completion() {
            return Err(mail_send::Error::UnexpectedReply(greeting));
        }
        let ehlo = client.ehlo(helo).await?;
        if ehlo.has_capability(EXT_START_TLS) {
            let connector = mail_send::smtp::tls::build_tls_connector(true)
                .map_err(|_| mail_send::Error::MissingStartTls)?;
            let mut tls = client.start_tls(&connector, host).await?;
            tls.ehlo(helo).await?;
            let reply = transaction(&mut tls, from, to, body).await;
            let _ = tls.quit().await;
            reply
        } else {
            let reply = transaction(&mut client, from, to, body).await;
            let _ = client.quit().await;
            reply
        }
    };
    match run.await {
        Ok(reply) => Attempt::Delivered(reply),
        Err(err) => classify(err),
    }
}

/// The queue runner. Cheap to share; [`Runner::run`] is its loop.
pub struct Runner {
    queue: Arc<dyn OutboundQueue>,
    blobs: Arc<dyn BlobStore>,
    resolver: Arc<dyn Resolver>,
    config: DeliveryConfig,
    clock: Arc<dyn Fn() -> UnixTime + Send + Sync>,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
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
        Self {
            queue,
            blobs,
            resolver,
            config,
            clock: Arc::new(system_now),
            destinations: Mutex::new(HashMap::new()),
        }
    }

    /// Claims and delivers until `shutdown`, then waits for attempts in flight.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        loop {
            let claimed = self.claim_round(&tasks).await;
            self.update_depth().await;
            let idle = if claimed == 0 {
                POLL_INTERVAL
            } else {
                Duration::ZERO
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(idle) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    async fn claim_round(self: &Arc<Self>, tasks: &TaskTracker) -> usize {
        let now = (self.clock)();
        let lease = scaled(LEASE, self.config.backoff_scale).max(MIN_LEASE);
        let claims = match self
            .queue
            .claim_due(now, CLAIM_BATCH, now.saturating_add(secs_ceil(lease)))
            .await
        {
            Ok(claims) => claims,
            Err(err) => {
                tracing::error!(%err, "cannot claim due queue rows");
                return 0;
            }
        };
        let n = claims.len();
        for claim in claims {
            let runner = Arc::clone(self);
            tasks.spawn(async move { runner.deliver(claim).await });
        }
        n
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

    fn destination(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(domain.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_PER_DESTINATION))),
        )
    }

    /// One attempt for one claimed row, recorded.
    async fn deliver(&self, claim: Claim) {
        let entry = &claim.entry;
        let started = Instant::now();
        let key = entry.message_id.parse::<Ulid>().ok().map(BlobKey::queued);
        let body = match &key {
            Some(key) => self.blobs.get(key).await,
            None => Ok(None),
        };
        let attempt = match body {
            Ok(Some(body)) => {
                self.attempt(entry.sender.as_str(), &entry.recipient, &body)
                    .await
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
        if outcome == AttemptOutcome::Bounced {
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
        tracing::info!(
            message = %entry.message_id, outcome = %outcome, attempt = entry.attempts + 1,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), %response,
            "delivery attempt"
        );
        if let Err(err) = self
            .queue
            .record_attempt(&claim, outcome, next, Some(&response), now)
            .await
        {
            tracing::error!(message = %entry.message_id, %err, "cannot record the delivery attempt");
            return;
        }
        if outcome != AttemptOutcome::Deferred
            && let (Some(key), Ok(0)) = (key, self.queue.unfinished(&entry.message_id).await)
            && let Err(err) = self.blobs.remove(&key).await
        {
            tracing::warn!(message = %entry.message_id, %err, "cannot remove the delivered message");
        }
    }

    async fn attempt(&self, from: &str, to: &str, body: &[u8]) -> Attempt {
        let Some((_, domain)) = to.rsplit_once('@') else {
            return Attempt::Permanent(format!("553 5.1.3 {to} is not an address"));
        };
        let domain = domain.to_ascii_lowercase();
        let slot = self.destination(&domain);
        let Ok(_permit) = slot.acquire().await else {
            return Attempt::Temporary("451 4.3.0 delivery is shutting down".to_owned());
        };
        let hosts = match targets(self.resolver.as_ref(), &self.config.route, &domain).await {
            Ok(hosts) => hosts,
            Err(ResolveError::Permanent(why)) => {
                return Attempt::Permanent(format!("550 5.1.2 {why}"));
            }
            Err(ResolveError::Temporary(why)) => {
                return Attempt::Temporary(format!("451 4.4.3 DNS: {why}"));
            }
        };
        let mut last = Attempt::Temporary("451 4.4.1 no host answered".to_owned());
        for target in hosts {
            for addr in &target.addrs {
                match send_to(
                    *addr,
                    &target.host,
                    &self.config.hostname,
                    from,
                    to,
                    body,
                    SMTP_TIMEOUT,
                )
                .await
                {
                    Attempt::Temporary(why) => last = Attempt::Temporary(why),
                    done => return done,
                }
            }
        }
        last
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
    fn reply_classes_map_to_outcomes() {
        let r = |code: u16| {
            mail_send::Error::UnexpectedReply(smtp_proto::Response::new(
                code,
                0,
                0,
                0,
                "x".to_owned(),
            ))
        };
        assert!(matches!(classify(r(451)), Attempt::Temporary(t) if t.starts_with("451")));
        assert!(matches!(classify(r(550)), Attempt::Permanent(t) if t.starts_with("550")));
        assert!(matches!(
            classify(mail_send::Error::Timeout),
            Attempt::Temporary(_)
        ));
        let enhanced = mail_send::Error::UnexpectedReply(smtp_proto::Response::new(
            550,
            5,
            1,
            1,
            "no\r\nuser".to_owned(),
        ));
        assert_eq!(
            classify(enhanced),
            Attempt::Permanent("550 5.1.1 no  user".to_owned()),
            "one line, with the enhanced code"
        );
    }

    #[test]
    fn limits_are_named_and_sane() {
        assert!(
            LEASE > SMTP_TIMEOUT,
            "a live attempt never outlives its lease by one step"
        );
        assert_eq!(MAX_PER_DESTINATION, 4);
        assert_eq!(MAX_AGE, Duration::from_secs(5 * 24 * 3600));
    }
}
