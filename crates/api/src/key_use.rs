//! When each agent key was last used, for the owner's console: recorded on
//! every authentication with it (the agent-key routes through
//! [`authenticate`], the mints, the HTTP send) at most once per key per
//! [`KEY_USE_RESOLUTION_SECS`], cheaply.
//!
//! A process remembers when it last wrote each key's use and writes again only
//! after the resolution has passed, so a busy key costs one statement a minute
//! per node; the statement itself is conditional
//! ([`ConsoleViews::record_key_use`]), so across nodes the row still changes at
//! most once a minute. The write runs after the token is answered, off the
//! mint's latency; a failed write is logged and tried at the next mint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentkeys_broker::{KeyVerified, MintError};
use agentkeys_core::{KeyId, UnixTime};
use agentkeys_store::{KEY_USE_RESOLUTION_SECS, MetadataStore};

/// [`TokenBroker::authenticate`](agentkeys_broker::TokenBroker::authenticate)
/// for an agent-key route, recording the key's use when it passes.
pub(crate) async fn authenticate(state: &crate::ApiState, presented: &str) -> Result<KeyVerified, MintError> {
    let verified = state.broker.authenticate(presented).await?;
    state.key_uses.record(state.meta.as_ref(), verified.key_id(), state.clock.now());
    Ok(verified)
}

/// Most keys remembered; past it, entries older than the resolution are dropped
/// (they would write again anyway), and if all are recent the map is cleared.
pub const KEY_USE_MEMORY: usize = 100_000;

/// The per-process memory of written key uses.
#[derive(Debug, Default)]
pub struct KeyUses {
    written: Mutex<HashMap<KeyId, UnixTime>>,
}

impl KeyUses {
    /// Whether a use of `key` at `now` should be written, remembering it if so.
    pub fn due(&self, key: &KeyId, now: UnixTime) -> bool {
        let Ok(mut written) = self.written.lock() else { return true };
        if written.get(key).is_some_and(|at| now - at < KEY_USE_RESOLUTION_SECS) {
            return false;
        }
        if written.len() >= KEY_USE_MEMORY {
            written.retain(|_, at| now - *at < KEY_USE_RESOLUTION_SECS);
            if written.len() >= KEY_USE_MEMORY {
                written.clear();
            }
        }
        written.insert(key.clone(), now);
        true
    }

    /// Forgets a write that failed, so the next mint tries again.
    fn forget(&self, key: &KeyId) {
        if let Ok(mut written) = self.written.lock() {
            written.remove(key);
        }
    }

    /// Records a mint by `key` at `now` in the background when it is due.
    pub fn record(self: &Arc<Self>, meta: Option<&Arc<dyn MetadataStore>>, key: &KeyId, now: UnixTime) {
        let Some(meta) = meta else { return };
        if !self.due(key, now) {
            return;
        }
        let (meta, key, uses) = (Arc::clone(meta), key.clone(), Arc::clone(self));
        tokio::spawn(async move {
            if let Err(e) = meta.record_key_use(&key, now).await {
                tracing::warn!(error = %e, key = %key, "could not record the key's last use");
                uses.forget(&key);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn key(n: u32) -> KeyId {
        format!("key_{n:016}").parse().unwrap()
    }

    #[test]
    fn one_write_per_key_per_resolution() {
        let uses = KeyUses::default();
        assert!(uses.due(&key(1), 1000));
        assert!(!uses.due(&key(1), 1000 + KEY_USE_RESOLUTION_SECS - 1));
        assert!(uses.due(&key(2), 1001), "another key");
        assert!(uses.due(&key(1), 1000 + KEY_USE_RESOLUTION_SECS));
        uses.forget(&key(2));
        assert!(uses.due(&key(2), 1002), "a failed write is tried again");
    }

    #[test]
    fn the_memory_is_bounded() {
        let uses = KeyUses::default();
        for n in 0..u32::try_from(KEY_USE_MEMORY).unwrap() + 10 {
            assert!(uses.due(&key(n), 5000));
        }
        assert!(uses.written.lock().unwrap().len() <= KEY_USE_MEMORY);
    }

    proptest! {
        /// Over any sequence of mints of a few keys, writes of one key are at
        /// least the resolution apart, and a mint that finds none in the last
        /// resolution writes.
        #[test]
        fn writes_are_a_resolution_apart(mints in proptest::collection::vec((0u32..3, 0i64..200), 0..60)) {
            let uses = KeyUses::default();
            let mut mints = mints;
            mints.sort_by_key(|(_, t)| *t);
            let mut last: HashMap<u32, i64> = HashMap::new();
            for (k, t) in mints {
                let due = uses.due(&key(k), t);
                let expected = last.get(&k).is_none_or(|at| t - at >= KEY_USE_RESOLUTION_SECS);
                prop_assert_eq!(due, expected);
                if due { last.insert(k, t); }
            }
        }
    }
}
