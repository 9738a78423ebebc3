//! `/readyz`: whether this server can take mail and requests **now**, with the
//! reason when it cannot. `/healthz` stays liveness (the process answers).
//!
//! Checks, run concurrently, each within [`READINESS_CHECK_TIMEOUT`]:
//! - `metadata`: a write transaction on the metadata database commits (and the
//!   database's filesystem has [`agentkeys_store::READINESS_MIN_FREE_BYTES`]);
//! - `audit`: the audit writer commits a transaction on its own path;
//! - `blobs`: the blob store takes a durable write of
//!   [`agentkeys_store::READINESS_PROBE_BYTES`];
//! - `queue_runner`: the delivery loop beat within
//!   [`agentkeys_delivery::HEARTBEAT_STALE`] (or delivery is off).
//!
//! `200` with `"status": "ready"` when every check passes, otherwise `503` with
//! `"not ready"`; the body names every check. Nothing is cached between
//! failures and recoveries beyond [`READINESS_CACHE`], so a full disk shows not
//! ready and the first probe after space returns shows ready, with no restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentkeys_delivery::Heartbeat;
use agentkeys_store::roles::StoreHealth;
use agentkeys_store::{BlobError, Mailroom};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Longest a check may take before it fails with "no answer".
pub(crate) const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// A report this young is answered again instead of probing anew, so a flood of
/// `/readyz` requests costs at most one round of probes per this long.
pub(crate) const READINESS_CACHE: Duration = Duration::from_secs(1);

/// What `/readyz` probes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Readiness {
    meta: Arc<dyn StoreHealth>,
    mailroom: Arc<Mailroom>,
    /// The queue runner's heartbeat; `None` when delivery is off.
    runner: Option<Heartbeat>,
    last: Arc<tokio::sync::Mutex<Option<(Instant, Report)>>>,
    /// The readiness last reported, to log changes once.
    was_ready: Arc<AtomicBool>,
}

/// The body of `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// `ready` or `not ready`.
    status: &'static str,
    /// Every check by name.
    checks: BTreeMap<&'static str, Check>,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    ok: bool,
    /// Why not, when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Anything worth knowing when `ok` is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl Check {
    fn ok() -> Self {
        Self { ok: true, reason: None, detail: None }
    }

    fn failed(reason: String) -> Self {
        Self { ok: false, reason: Some(reason), detail: None }
    }
}

impl Report {
    fn is_ready(&self) -> bool {
        self.checks.values().all(|c| c.ok)
    }
}

/// Runs `check` within [`READINESS_CHECK_TIMEOUT`].
async fn timed<E: std::fmt::Display>(check: impl Future<Output = Result<(), E>>, describe: fn(E) -> String) -> Check {
    match tokio::time::timeout(READINESS_CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Check::ok(),
        Ok(Err(e)) => Check::failed(describe(e)),
        Err(_) => Check::failed(format!("no answer within {} s", READINESS_CHECK_TIMEOUT.as_secs())),
    }
}

/// A blob failure without its path (the body is public, paths are for the log).
fn blob_reason(err: BlobError) -> String {
    match err {
        BlobError::StorageFull(io) => format!("blob storage is full: {io}"),
        BlobError::Io { err, .. } => format!("blob storage write failed: {err}"),
    }
}

impl Readiness {
    pub(crate) fn new(meta: Arc<dyn StoreHealth>, mailroom: Arc<Mailroom>, runner: Option<Heartbeat>) -> Self {
        Self { meta, mailroom, runner, last: Arc::default(), was_ready: Arc::new(AtomicBool::new(true)) }
    }

    /// The current report: a fresh one unless one younger than
    /// [`READINESS_CACHE`] exists. Concurrent callers share one round.
    pub(crate) async fn report(&self) -> Report {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < READINESS_CACHE
        {
            return report.clone();
        }
        let report = self.probe().await;
        let ready = report.is_ready();
        if self.was_ready.swap(ready, Ordering::Relaxed) != ready {
            if ready {
                tracing::info!("ready again");
            } else {
                let failing: Vec<String> = report
                    .checks
                    .iter()
                    .filter(|(_, c)| !c.ok)
                    .map(|(name, c)| format!("{name}: {}", c.reason.as_deref().unwrap_or("")))
                    .collect();
                tracing::warn!(failing = failing.join("; "), "not ready");
            }
        }
        *last = Some((Instant::now(), report.clone()));
        report
    }

    async fn probe(&self) -> Report {
        let (metadata, audit, blobs) = tokio::join!(
            timed(self.meta.check_writable(), |e| e.to_string()),
            timed(self.meta.check_audit_writable(), |e| e.to_string()),
            timed(self.mailroom.check_blobs_writable(), blob_reason),
        );
        let runner = match &self.runner {
            None => Check { ok: true, reason: None, detail: Some("delivery is off (delivery.enabled = false)".into()) },
            Some(beat) if beat.is_alive() => Check::ok(),
            Some(beat) => Check::failed(match beat.age() {
                None => "the queue runner has not started".to_owned(),
                Some(age) => format!(
                    "the queue runner's last heartbeat was {} s ago (limit {} s)",
                    age.as_secs(),
                    agentkeys_delivery::HEARTBEAT_STALE.as_secs()
                ),
            }),
        };
        let checks = BTreeMap::from([("metadata", metadata), ("audit", audit), ("blobs", blobs), ("queue_runner", runner)]);
        let status = if checks.values().all(|c| c.ok) { "ready" } else { "not ready" };
        Report { status, checks }
    }
}

/// `GET /readyz`.
pub(crate) async fn readyz(State(readiness): State<Readiness>) -> Response {
    let report = readiness.report().await;
    let status = if report.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}
