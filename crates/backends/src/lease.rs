//! One follower per domain across nodes. Every node runs [`run_leased`] for
//! each backend domain; a domain's receive source (the IMAP follower, the SES
//! lister) runs only on the node that holds the domain's follower lease
//! (`MailBackends::lease_follower`, one holder at a time across processes).
//!
//! - The holder renews every third of [`LEASE_TTL`]. A renewal that is refused
//!   (this node stalled past its lease and another took it), or that keeps
//!   failing until one period before the lease ends, stops the source at once.
//! - A node that does not hold the lease asks again every third of the TTL, so
//!   it takes over within about one TTL after the holder dies (SIGKILL, lost
//!   host); a holder that shuts down releases the lease, and another node
//!   takes over at its next ask.
//! - There is no fencing token: a holder stalled past its lease (a frozen VM)
//!   may finish the one message it was copying after another node started.
//!   Both then copy it at most once each (the IMAP cursor's pending id and the
//!   SES object id are checked in the index), so the worst case is one
//!   duplicate, never a loss.
//!
//! Times are the nodes' wall clocks in Unix milliseconds; nodes keep them in
//! step (NTP), as the shared throttles assume.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentkeys_core::Domain;
use agentkeys_store::roles::MetadataStore;
use agentkeys_store::unix_millis;
use tokio_util::sync::CancellationToken;

/// How long a follower lease lasts without renewal (production; tests scale it
/// with [`BackendContext::scaled`](crate::BackendContext::scaled)).
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// The shortest lease, whatever the scale.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(300);

/// Why a holder stopped its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    SourceEnded,
    /// Another node holds the lease now.
    Lost,
    /// Renewals failed until one period before the lease ends.
    Unrenewable,
}

fn now_ms() -> i64 {
    unix_millis(SystemTime::now())
}

/// Runs `start(token)` for `domain` while `holder` holds its follower lease,
/// until `shutdown` (module docs). `start` makes a fresh source each time the
/// lease is taken; the source must stop when its token is cancelled.
pub async fn run_leased<F, Fut>(
    store: Arc<dyn MetadataStore>,
    domain: Domain,
    holder: String,
    ttl: Duration,
    shutdown: CancellationToken,
    start: F,
) where
    F: Fn(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ttl = ttl.max(MIN_LEASE_TTL);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let period = ttl / 3;
    let period_ms = ttl_ms / 3;
    loop {
        // Not the holder: ask every period.
        let mut until = loop {
            match store.lease_follower(&domain, &holder, now_ms(), ttl_ms).await {
                Ok(Some(until)) => break until,
                Ok(None) => {}
                Err(err) => tracing::warn!(%domain, %err, "mail backend: cannot ask for the follower lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        };
        tracing::info!(%domain, %holder, "mail backend: this node follows the domain (lease taken)");
        metrics::counter!("agentkeys_backend_leases_taken_total").increment(1);
        let token = shutdown.child_token();
        let mut source = tokio::spawn(start(token.clone()));
        let why = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Stop::Shutdown,
                _ = &mut source => break Stop::SourceEnded,
                () = tokio::time::sleep(period) => {
                    match store.lease_follower(&domain, &holder, now_ms(), ttl_ms).await {
                        Ok(Some(renewed)) => until = renewed,
                        Ok(None) => break Stop::Lost,
                        Err(err) => {
                            tracing::warn!(%domain, %err, "mail backend: cannot renew the follower lease");
                            if now_ms() >= until.saturating_sub(period_ms) {
                                break Stop::Unrenewable;
                            }
                        }
                    }
                }
            }
        };
        token.cancel();
        if !source.is_finished() {
            let _ = source.await;
        }
        // Still ours: give it up, so another node need not wait for it to expire.
        if matches!(why, Stop::Shutdown | Stop::SourceEnded)
            && let Err(err) = store.release_follower(&domain, &holder).await
        {
            tracing::warn!(%domain, %err, "mail backend: cannot release the follower lease (it expires by itself)");
        }
        if why == Stop::Shutdown {
            return;
        }
        tracing::warn!(%domain, ?why, "mail backend: this node stopped following the domain");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use agentkeys_store::SqliteStore;
    use agentkeys_store::roles::Directory as _;
    use agentkeys_store::MailBackends as _;

    use super::*;

    const TTL: Duration = Duration::from_millis(300);

    /// One node's runner: its source counts itself while it runs, and stops
    /// on its token or when the node "dies".
    struct Node {
        shutdown: CancellationToken,
        death: CancellationToken,
        runner: tokio::task::JoinHandle<()>,
        starts: Arc<AtomicUsize>,
    }

    fn node(store: &Arc<SqliteStore>, domain: &Domain, name: &str, running: &Arc<AtomicUsize>, most: &Arc<AtomicUsize>) -> Node {
        let (shutdown, death, starts) = (CancellationToken::new(), CancellationToken::new(), Arc::new(AtomicUsize::new(0)));
        let (dies, counted) = (death.clone(), starts.clone());
        let (running, most) = (running.clone(), most.clone());
        let runner = tokio::spawn(run_leased(
            store.clone(),
            domain.clone(),
            name.to_owned(),
            TTL,
            shutdown.clone(),
            move |token: CancellationToken| {
                let (dies, running, most) = (dies.clone(), running.clone(), most.clone());
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = dies.cancelled() => {}
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            },
        ));
        Node { shutdown, death, runner, starts }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Two nodes follow one domain: one source at a time; the holder killed
    /// (no release) is replaced within about a TTL; a holder shut down
    /// releases the lease at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_node_follows_a_domain_and_another_takes_over_when_it_dies() {
        let store = Arc::new(SqliteStore::open_in_memory().await.unwrap());
        let domain: Domain = "agents.test".parse().unwrap();
        store.ensure_domain(&domain, 1).await.unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let nodes = [node(&store, &domain, "a", &running, &most), node(&store, &domain, "b", &running, &most)];
        let total = || nodes.iter().map(|n| n.starts.load(Ordering::SeqCst)).sum::<usize>();
        until("a first follower", || total() == 1).await;
        tokio::time::sleep(TTL * 4).await;
        assert_eq!((total(), most.load(Ordering::SeqCst)), (1, 1), "renewed: still one source, never two");
        let (holder, other) = if nodes[0].starts.load(Ordering::SeqCst) == 1 { (0, 1) } else { (1, 0) };
        // The holder dies: no release, its lease runs out.
        nodes[holder].runner.abort();
        nodes[holder].death.cancel();
        let died = tokio::time::Instant::now();
        until("the other node to take over", || nodes[other].starts.load(Ordering::SeqCst) == 1).await;
        assert!(died.elapsed() >= TTL / 2, "not before the dead holder's lease ran out");
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two sources at once");
        // The survivor shuts down: its source stops and the lease is free at once.
        nodes[other].shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), async { while !nodes[other].runner.is_finished() { tokio::time::sleep(Duration::from_millis(10)).await } }).await.unwrap();
        assert_eq!(running.load(Ordering::SeqCst), 0);
        assert!(store.lease_follower(&domain, "c", now_ms(), 1_000).await.unwrap().is_some(), "released on shutdown");
    }
}
