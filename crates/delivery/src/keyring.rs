//! The keys of every hosted domain, loaded from the store (created on first use)
//! and cached per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentkeys_audit::{Actor, AuditEvent, ops};
use agentkeys_core::{Domain, MasterSeed, UnixTime};
use agentkeys_store::roles::Directory;
use serde_json::json;

use crate::DkimError;
use crate::keys::{DomainKeys, Selectors};
use crate::sign::DkimSigner;

/// Loads each hosted domain's newest DKIM key version, creating version 1 the
/// first time a domain that has none is needed (the configured default domain
/// exists before any key does). Signers are cached; a rotation written by another
/// process is seen after a restart.
pub struct DomainKeyring {
    seed: MasterSeed,
    meta: Arc<dyn Directory>,
    selectors: Selectors,
    actor: Actor,
    clock: fn() -> UnixTime,
    signers: Mutex<HashMap<Domain, Arc<DkimSigner>>>,
}

impl std::fmt::Debug for DomainKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainKeyring").field("selectors", &self.selectors).finish_non_exhaustive()
    }
}

fn system_clock() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl DomainKeyring {
    /// A keyring over `meta`; keys it creates get the default selectors and are
    /// audited as done by [`Actor::System`].
    pub fn new(seed: MasterSeed, meta: Arc<dyn Directory>) -> Self {
        Self {
            seed,
            meta,
            selectors: Selectors::default(),
            actor: Actor::System,
            clock: system_clock,
            signers: Mutex::new(HashMap::new()),
        }
    }

    /// The same keyring, creating keys with `selectors`.
    #[must_use]
    pub fn with_selectors(mut self, selectors: Selectors) -> Self {
        self.selectors = selectors;
        self
    }

    /// The same keyring, auditing key creation as `actor` (the admin CLI: operator).
    #[must_use]
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// A new first key version for `domain`, ready for
    /// [`Directory::add_domain`], with its audit event (`domain.create`).
    pub fn new_domain(&self, domain: &Domain) -> Result<(agentkeys_store::DomainKeyRecord, AuditEvent), DkimError> {
        let record = DomainKeys::generate_record(&self.seed, domain, 1, &self.selectors, (self.clock)())?;
        let event = AuditEvent::ok(self.actor.clone(), ops::DOMAIN_CREATE, domain.as_str()).with_detail(json!({
            "version": record.version,
            "selector_ed": record.selector_ed,
            "selector_rsa": record.selector_rsa,
        }));
        Ok((record, event))
    }

    /// The newest key version of a hosted domain, creating version 1 if it has none.
    /// [`DkimError::Store`] with `NotFound` if the domain is not hosted.
    pub async fn domain_keys(&self, domain: &Domain) -> Result<DomainKeys, DkimError> {
        let stored = self.meta.domain_keys(domain).await?;
        let record = match stored.into_iter().last() {
            Some(record) => record,
            None => {
                let record = DomainKeys::generate_record(&self.seed, domain, 1, &self.selectors, (self.clock)())?;
                let event = AuditEvent::ok(self.actor.clone(), ops::DKIM_KEY_CREATE, domain.as_str()).with_detail(
                    json!({ "version": 1, "selector_ed": record.selector_ed, "selector_rsa": record.selector_rsa }),
                );
                // Another process may store version 1 first; then we use its key.
                let (record, receipt) = self.meta.add_domain_keys(&record, &event).await?;
                if receipt.is_some() {
                    tracing::info!(domain = %domain, "created DKIM keys (version 1)");
                }
                record
            }
        };
        DomainKeys::open(&self.seed, &record)
    }

    /// The signer of `domain` (cached after the first call).
    pub async fn signer(&self, domain: &Domain) -> Result<Arc<DkimSigner>, DkimError> {
        if let Some(signer) = self.cached(domain) {
            return Ok(signer);
        }
        let signer = Arc::new(self.domain_keys(domain).await?.signer()?);
        if let Ok(mut cache) = self.signers.lock() {
            cache.insert(domain.clone(), signer.clone());
        }
        Ok(signer)
    }

    /// Signs `message` as `domain` ([`DkimSigner::sign`]: normalized, then two
    /// signatures prepended). The signing (about 0.6 ms of RSA-2048 per message)
    /// runs on tokio's blocking pool, not on the async workers that serve the
    /// SMTP sessions.
    pub async fn sign(&self, domain: &Domain, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let signer = self.signer(domain).await?;
        let message = message.to_vec();
        tokio::task::spawn_blocking(move || signer.sign(&message))
            .await
            .map_err(|e| DkimError::Sign(format!("the signing task failed: {e}")))?
    }

    fn cached(&self, domain: &Domain) -> Option<Arc<DkimSigner>> {
        self.signers.lock().ok().and_then(|cache| cache.get(domain).cloned())
    }
}
