//! The delivery worker: claims due deliveries under a lease, sends each
//! (at most [`WorkerConfig::concurrency`] at once, each within the client's
//! timeouts), and records the outcome under the lease: `delivered` on a 2xx,
//! else the next attempt from [`RETRY_SCHEDULE`], or `failed` once the next
//! attempt would fall past [`RETRY_PERIOD`] after the event.
//!
//! At least once: a node killed after the receiver's 2xx but before the
//! record leaves the row `sending`; when its lease runs out another worker
//! sends it again, with the same `webhook-id`, which receivers use to drop
//! the duplicate.

use std::sync::Arc;
use std::time::Duration;

use agentkeys_store::{DeliveryAttempt, DeliveryClaim, Webhooks};
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{ATTEMPT_TIMEOUT, WebhookClient};
use crate::secret::SecretSealer;
use crate::signature::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature_header};
use crate::target::Target;
use crate::now_ms;

/// The wait before retry n (after attempt n failed); the last entry repeats.
/// Together about 23.7 h, so a receiver that is down for a day is tried about
/// eleven times before the delivery fails.
pub const RETRY_SCHEDULE: [Duration; 10] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(1800),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
    Duration::from_secs(8 * 3600),
    Duration::from_secs(8 * 3600),
];
/// How long after its event a delivery is retried before it is marked failed.
pub const RETRY_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// Most finished attempts recorded in one transaction. Attempts are recorded
/// by one task, in batches of whatever has finished meanwhile: on SQLite every
/// write transaction takes the lock mail acceptance needs too, so ten
/// subscriptions must not mean ten transactions per message.
pub const RECORD_BATCH: usize = 256;
/// Default cap on concurrent attempts per node.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How often the worker looks for due deliveries when nothing wakes it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A claim's lease: the attempt's timeout plus a margin; a worker that dies
/// holding it leaves the delivery to others once it has passed.
pub const LEASE: Duration = Duration::from_secs(ATTEMPT_TIMEOUT.as_secs() + 30);

/// The worker's settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Most attempts in flight.
    pub concurrency: usize,
    /// Multiplies [`RETRY_SCHEDULE`] and [`RETRY_PERIOD`] (1; tests use less).
    pub backoff_scale: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { concurrency: DEFAULT_CONCURRENCY, backoff_scale: 1.0 }
    }
}

fn scaled(d: Duration, scale: f64) -> i64 {
    let ms = d.as_secs_f64() * 1000.0 * scale;
    if ms.is_finite() && ms >= 0.0 { ms.min(i64::MAX as f64) as i64 } else { 0 }
}

/// When attempt `attempts + 1` is due after attempt `attempts` failed at
/// `now_ms`, for an event recorded at `created_at` (Unix seconds); `None`:
/// past the retry period, give up.
pub fn next_attempt(attempts: u32, created_at: i64, now_ms: i64, scale: f64) -> Option<i64> {
    let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX).min(RETRY_SCHEDULE.len() - 1);
    let at = now_ms.saturating_add(scaled(RETRY_SCHEDULE[index], scale));
    let deadline = created_at.saturating_mul(1000).saturating_add(scaled(RETRY_PERIOD, scale));
    (at <= deadline).then_some(at)
}

/// Records finished attempts until every sender is gone, each batch (what has
/// finished meanwhile, at most [`RECORD_BATCH`]) in one transaction. A failed
/// write loses nothing: those leases run out and the deliveries are tried
/// again, with the same ids (at least once).
async fn record_batches(store: Arc<dyn Webhooks>, mut finished: mpsc::UnboundedReceiver<DeliveryAttempt>) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        if let Err(err) = store.record_webhook_attempts(&batch).await {
            tracing::error!(%err, attempts = batch.len(), "cannot record webhook attempts; they are repeated after their leases");
        }
        batch.clear();
    }
}

/// Sends deliveries.
pub struct Worker {
    store: Arc<dyn Webhooks>,
    sealer: SecretSealer,
    client: WebhookClient,
    config: WorkerConfig,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker over `store`; `wake` makes it look for due deliveries now.
    pub fn new(
        store: Arc<dyn Webhooks>,
        sealer: SecretSealer,
        client: WebhookClient,
        config: WorkerConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Self { store, sealer, client, config, wake }
    }

    /// Runs until `shutdown`; attempts in flight then finish (each within its timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let tasks = TaskTracker::new();
        let (records, finished) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_batches(Arc::clone(&self.store), finished));
        loop {
            let free = slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                let now = now_ms();
                let lease_until = now + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
                match self.store.claim_webhook_deliveries(now, u32::try_from(free).unwrap_or(u32::MAX), lease_until).await {
                    Ok(claims) => {
                        claimed = claims.len();
                        for claim in claims {
                            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                            let worker = Arc::clone(&self);
                            let records = records.clone();
                            tasks.spawn(async move {
                                worker.attempt(claim, &records).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(err) => tracing::error!(%err, "cannot claim webhook deliveries; retrying"),
                }
            }
            // More may be due right away when the batch filled the free slots:
            // claim again once half of them are free, not at every freed slot
            // (each claim is a write transaction, on SQLite under the lock
            // mail acceptance needs too).
            if claimed > 0 && claimed == free {
                let half = u32::try_from(self.config.concurrency.max(1).div_ceil(2)).unwrap_or(1);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = slots.acquire_many(half) => continue,
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
        // Every attempt has sent its record: the recorder drains them and ends.
        drop(records);
        recorder.await.ok();
    }

    /// One attempt of `claim`; its outcome goes to the recorder (written under its lease).
    async fn attempt(&self, claim: DeliveryClaim, records: &mpsc::UnboundedSender<DeliveryAttempt>) {
        let id = claim.delivery.id.clone();
        let outcome = self.send(&claim).await;
        let now = now_ms();
        let attempts = claim.delivery.attempts.saturating_add(1);
        let (delivered, status, error) = match outcome {
            Ok(status) if (200..300).contains(&status) => (true, Some(status), None),
            Ok(status) => (false, Some(status), Some(format!("the receiver answered {status}"))),
            Err(e) => (false, None, Some(e)),
        };
        let retry_at_ms =
            if delivered { None } else { next_attempt(attempts, claim.delivery.created_at, now, self.config.backoff_scale) };
        match (&error, retry_at_ms) {
            (None, _) => tracing::debug!(delivery = %id, attempts, "webhook delivered"),
            (Some(e), Some(_)) => tracing::info!(delivery = %id, attempts, error = %e, "webhook attempt failed; will retry"),
            (Some(e), None) => tracing::warn!(delivery = %id, attempts, error = %e, "webhook delivery failed for good"),
        }
        let record = DeliveryAttempt {
            id: id.clone(),
            lease: claim.lease.clone(),
            delivered,
            retry_at_ms,
            status,
            error,
            now: now / 1000,
        };
        if records.send(record).is_err() {
            tracing::error!(delivery = %id, "the webhook recorder has stopped; the attempt is repeated after its lease");
        }
        // A retry due before the next poll wakes the loop itself.
        if let Some(at) = retry_at_ms {
            let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            if wait < u64::try_from(POLL_INTERVAL.as_millis()).unwrap_or(u64::MAX) {
                let wake = Arc::clone(&self.wake);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    wake.notify_one();
                });
            }
        }
    }

    /// Signs and sends; the receiver's status, or why there is none. Error texts
    /// never contain a secret.
    async fn send(&self, claim: &DeliveryClaim) -> Result<u16, String> {
        let sub = &claim.delivery.subscription_id;
        let current = self.sealer.open(sub, &claim.secret_sealed).map_err(|e| e.to_string())?;
        let previous = match &claim.previous_secret_sealed {
            Some(sealed) => Some(self.sealer.open(sub, sealed).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut secrets = vec![&current];
        secrets.extend(previous.as_ref());
        let target = Target::parse(&claim.url).map_err(|e| e.to_string())?;
        let timestamp = now_ms() / 1000;
        let body = Bytes::from(claim.payload.clone());
        let headers = [
            (HEADER_ID, claim.delivery.id.clone()),
            (HEADER_TIMESTAMP, timestamp.to_string()),
            (HEADER_SIGNATURE, signature_header(&secrets, &claim.delivery.id, timestamp, &body)),
        ];
        self.client.post(&target, &headers, body).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spans_about_a_day_and_then_gives_up() {
        let total: Duration = RETRY_SCHEDULE.iter().sum();
        assert!(total < RETRY_PERIOD && total > RETRY_PERIOD - Duration::from_secs(3600), "{total:?}");
        let created = 1_000_000;
        let mut now = created * 1000;
        let mut attempts = 0;
        while let Some(at) = next_attempt(attempts + 1, created, now, 1.0) {
            attempts += 1;
            now = at;
        }
        // 1 first attempt + every retry of the schedule that fits in the period.
        assert_eq!(attempts as usize, RETRY_SCHEDULE.len());
        assert!(now <= created * 1000 + RETRY_PERIOD.as_millis() as i64);
        assert_eq!(next_attempt(1, created, created * 1000, 1.0), Some(created * 1000 + 5000));
        assert_eq!(next_attempt(1, created, created * 1000, 0.001), Some(created * 1000 + 5));
    }
}
