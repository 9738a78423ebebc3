//! The RCPT cache: a decorator around any [`Recipients`] backend.
//!
//! Every `RCPT TO` asks whose inbox an address is. Under load most of those
//! questions repeat within a second, so the MX asks through [`CachedRecipients`],
//! which remembers a found inbox for [`RECIPIENT_CACHE_TTL`]. The rule is the
//! backend's, not SQLite's: a change made anywhere (this process, the CLI,
//! another node) is seen within the TTL, and a missing inbox is never cached, so
//! one created anywhere receives at once. An inbox with an expiry is never
//! answered from the cache at or after that second: the backend is asked again,
//! and answers it absent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkeys_core::{Address, UnixTime};
use async_trait::async_trait;

use crate::meta::{Recipient, Recipients, StoreError};

/// How long a found recipient is answered from the cache: a change to an inbox
/// (disabled, suspended, removed) reaches RCPT within this time.
pub const RECIPIENT_CACHE_TTL: Duration = Duration::from_secs(1);
/// Most recipients kept; the cache starts over when full.
pub const RECIPIENT_CACHE_MAX: usize = 10_000;

/// [`Recipients`] with found inboxes cached for [`RECIPIENT_CACHE_TTL`].
/// `is_hosted_domain` is asked only for unknown inboxes and is not cached.
pub struct CachedRecipients {
    inner: Arc<dyn Recipients>,
    found: Mutex<HashMap<Address, (Recipient, Instant)>>,
    /// The wall clock an inbox's expiry is compared with (Unix seconds).
    clock: crate::sqlite::Clock,
}

impl std::fmt::Debug for CachedRecipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRecipients").finish_non_exhaustive()
    }
}

impl CachedRecipients {
    /// Caches `inner`'s answers.
    pub fn new(inner: Arc<dyn Recipients>) -> Self {
        Self {
            inner,
            found: Mutex::new(HashMap::new()),
            clock: Arc::new(crate::sqlite::system_clock),
        }
    }

    /// The same cache comparing expiries with `clock` (Unix seconds), for tests.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn found(&self) -> std::sync::MutexGuard<'_, HashMap<Address, (Recipient, Instant)>> {
        self.found.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Recipients for CachedRecipients {
    async fn is_hosted_domain(&self, domain: &str) -> Result<bool, StoreError> {
        self.inner.is_hosted_domain(domain).await
    }

    async fn recipient(&self, address: &Address) -> Result<Option<Recipient>, StoreError> {
        if let Some((found, at)) = self.found().get(address)
            && at.elapsed() < RECIPIENT_CACHE_TTL
            && !agentkeys_core::is_expired(found.expires_at, (self.clock)())
        {
            return Ok(Some(found.clone()));
        }
        // Dated from before the question: a change committed meanwhile is not
        // hidden for longer than the TTL.
        let asked = Instant::now();
        let answer = self.inner.recipient(address).await?;
        let mut cache = self.found();
        match &answer {
            Some(found) => {
                if cache.len() >= RECIPIENT_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(address.clone(), (found.clone(), asked));
            }
            None => {
                cache.remove(address);
            }
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use agentkeys_core::InboxStatus;

    use super::*;

    /// A directory of one inbox whose status the test changes, counting questions.
    struct Counting {
        status: Mutex<Option<InboxStatus>>,
        expires_at: Mutex<Option<UnixTime>>,
        asked: AtomicU32,
    }

    #[async_trait]
    impl Recipients for Counting {
        async fn is_hosted_domain(&self, _: &str) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn recipient(&self, _: &Address) -> Result<Option<Recipient>, StoreError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let status = *self.status.lock().unwrap();
            let expires_at = *self.expires_at.lock().unwrap();
            Ok(status.map(|status| Recipient {
                owner: format!("0x{}", "01".repeat(20)).parse().unwrap(),
                status,
                expires_at,
            }))
        }
    }

    #[tokio::test]
    async fn found_inboxes_are_cached_for_the_ttl_and_missing_ones_never() {
        let inner = Arc::new(Counting {
            status: Mutex::new(None),
            expires_at: Mutex::new(None),
            asked: AtomicU32::new(0),
        });
        let cache = CachedRecipients::new(inner.clone());
        let bot: Address = "bot@agents.localhost".parse().unwrap();

        // Missing: asked every time, so an inbox created elsewhere receives at once.
        assert_eq!(cache.recipient(&bot).await.unwrap(), None);
        assert_eq!(cache.recipient(&bot).await.unwrap(), None);
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2);
        *inner.status.lock().unwrap() = Some(InboxStatus::Active);
        assert_eq!(
            cache.recipient(&bot).await.unwrap().unwrap().status,
            InboxStatus::Active
        );
        assert_eq!(inner.asked.load(Ordering::SeqCst), 3);

        // Found: answered from the cache until the TTL has passed.
        *inner.status.lock().unwrap() = Some(InboxStatus::Disabled);
        for _ in 0..5 {
            assert_eq!(
                cache.recipient(&bot).await.unwrap().unwrap().status,
                InboxStatus::Active
            );
        }
        assert_eq!(inner.asked.load(Ordering::SeqCst), 3);
        std::thread::sleep(RECIPIENT_CACHE_TTL);
        assert_eq!(
            cache.recipient(&bot).await.unwrap().unwrap().status,
            InboxStatus::Disabled
        );
        assert_eq!(inner.asked.load(Ordering::SeqCst), 4);

        // Removed: the next question after the TTL forgets it.
        *inner.status.lock().unwrap() = None;
        std::thread::sleep(RECIPIENT_CACHE_TTL);
        assert_eq!(cache.recipient(&bot).await.unwrap(), None);
        assert_eq!(cache.recipient(&bot).await.unwrap(), None);
        assert_eq!(inner.asked.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn an_expiring_inbox_is_not_answered_from_the_cache_at_its_expiry() {
        let inner = Arc::new(Counting {
            status: Mutex::new(Some(InboxStatus::Active)),
            expires_at: Mutex::new(Some(1_000)),
            asked: AtomicU32::new(0),
        });
        let now = Arc::new(std::sync::atomic::AtomicI64::new(998));
        let clock = Arc::clone(&now);
        let cache = CachedRecipients::new(inner.clone()).with_clock(move || clock.load(Ordering::SeqCst));
        let signup: Address = "signup-gh@agents.localhost".parse().unwrap();
        assert!(cache.recipient(&signup).await.unwrap().is_some());
        assert!(cache.recipient(&signup).await.unwrap().is_some());
        assert_eq!(inner.asked.load(Ordering::SeqCst), 1, "cached before its expiry");
        // At the expiry second the cache asks again, well within the TTL, and
        // the backend (which answers an expired inbox as absent) decides.
        now.store(1_000, Ordering::SeqCst);
        *inner.status.lock().unwrap() = None;
        assert_eq!(cache.recipient(&signup).await.unwrap(), None);
        assert_eq!(inner.asked.load(Ordering::SeqCst), 2);
        assert_eq!(cache.recipient(&signup).await.unwrap(), None, "and never caches the absence");
        assert_eq!(inner.asked.load(Ordering::SeqCst), 3);
    }
}
