//! Webhooks (issue 13 §1): push events to agents that do not run our daemon.
//!
//! - [`secret`]: a secret per subscription, shown once (`whsec_<base64>`),
//!   stored sealed under a key derived from the master seed.
//! - [`signature`]: the Standard Webhooks headers (`webhook-id`,
//!   `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), one
//!   signature per secret that signs (the previous one during a rotation's overlap).
//! - [`target`]: which URLs may be called (SSRF rules over the resolved
//!   addresses, checked again at connect time).
//! - [`events`]: the event types and bodies (never a message's content).
//! - [`feeder`]: turns the store's facts (message index, outbound queue,
//!   expiring credentials) into delivery rows, off the acceptance path.
//! - [`worker`] and [`client`]: claim, sign, send, retry with backoff for a
//!   day, then mark failed.
//!
//! Storage is the store's [`agentkeys_store::Webhooks`] role.
//!
//! ```
//! use agentkeys_webhooks::secret::{SecretSealer, WebhookSecret};
//! let sealer = SecretSealer::new([7; 32]);
//! let secret = WebhookSecret::generate();
//! let sealed = sealer.seal("wh_1", &secret).unwrap();
//! assert_eq!(sealer.open("wh_1", &sealed).unwrap().as_bytes(), secret.as_bytes());
//! ```

pub mod client;
pub mod events;
pub mod feeder;
pub mod secret;
pub mod signature;
pub mod target;
pub mod worker;

pub use client::WebhookClient;
pub use events::EVENT_TYPES;
pub use feeder::{Feeder, FeederConfig};
pub use secret::{SecretSealer, WebhookSecret};
pub use target::{Target, TargetError, TargetPolicy};
pub use worker::{Worker, WorkerConfig};

/// Audit operation: a subscription was created.
pub const OP_WEBHOOK_CREATE: &str = "webhook.create";
/// Audit operation: a subscription was deleted.
pub const OP_WEBHOOK_DELETE: &str = "webhook.delete";
/// Audit operation: a subscription's secret was rotated.
pub const OP_WEBHOOK_ROTATE: &str = "webhook.rotate";

/// Most subscriptions one owner may have.
pub const MAX_WEBHOOKS_PER_OWNER: usize = 50;
/// Longest overlap of a rotation (the previous secret keeps signing), seconds.
pub const MAX_ROTATION_OVERLAP_SECS: i64 = 7 * 24 * 3600;
/// Default overlap of a rotation, seconds.
pub const DEFAULT_ROTATION_OVERLAP_SECS: i64 = 24 * 3600;

/// Unix milliseconds, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What the API needs to create subscriptions: the sealer and the target policy.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Seals new secrets.
    pub sealer: SecretSealer,
    /// Which targets are allowed.
    pub policy: TargetPolicy,
}
