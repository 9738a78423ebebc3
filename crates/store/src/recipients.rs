//! The RCPT cache: a decorator around any [`Recipients`] backend.
//!
//! Every `RCPT TO` asks whose inbox an address is. Under load most of those
//! questions repeat within a second, so the MX asks through [`CachedRecipients`],
//! which remembers a found inbox for [`RECIPIENT_CACHE_TTL`]. The rule is the
//! backend's, not SQLite's: a change made anywhere (this process, the CLI,
//! another node) is seen within the TTL, and a missing inbox is never cached, so
//! one created anywhere receives at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentkeys_core::Address;
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
        }
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
            Ok(status.map(|status| Recipient {
                owner: format!("0x{}", "01".repeat(20)).parse().unwrap(),
                status,
            }))
        }
    }

    #[tokio::test]
    async fn found_inboxes_are_cached_for_the_ttl_and_missing_ones_never() {
        let inner = Arc::new(Counting {
            status: Mutex::new(None),
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
}
