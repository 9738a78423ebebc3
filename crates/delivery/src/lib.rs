//! Outbound delivery for AgentKeys Mail. This first part signs what we send:
//!
//! - [`DomainKeys`]: one version of a hosted domain's two DKIM keys. Ed25519 is
//!   derived from the master seed under `dkim/<domain>/v<n>`; RSA-2048 is
//!   generated once (aws-lc-rs) and stored sealed (AES-256-GCM) under a
//!   seed-derived key ([`wrap_rsa_key`]).
//! - [`DkimSigner`]: normalizes a message for relay ([`normalize_for_relay`]) and
//!   prepends an `rsa-sha256` and an `ed25519-sha256` `DKIM-Signature`
//!   (relaxed/relaxed), through `mail-auth`'s aws-lc-rs backend (no `rsa` crate).
//! - [`DomainKeyring`]: each hosted domain's newest keys from the store, created on
//!   first use, signers cached.
//! - [`zone_file`]: the MX, SPF, DMARC and DKIM records to publish, and the
//!   MTA-STS and TLS-RPT records when configured ([`Publication`]), BIND
//!   syntax; [`verify_domain`]: checks them through DNS for `agentkeys domain verify`.
//! - MTA-STS (RFC 8461): [`StsPolicy`] (the policy file, parsed strictly and
//!   written), [`parse_sts_record`], and for sending, [`MtaSts`]: discovery,
//!   HTTPS fetch ([`HttpsPolicyFetcher`]) and cache, which the runner applies
//!   to direct MX delivery ([`Runner::with_mta_sts`]).
//!
//! - [`Runner`]: the queue runner: leased claims, MX or smarthost routes,
//!   pooled SMTP connections (per-host limit, pipelining, opportunistic or
//!   required STARTTLS), backoff, bounces with a DSN.
//!
//! ```
//! use agentkeys_core::{Domain, MasterSeed};
//! use agentkeys_delivery::{DomainKeys, Publication, Selectors, zone_file};
//!
//! let seed = MasterSeed::from_bytes([7; 32]);
//! let domain: Domain = "example.test".parse().unwrap();
//! let record = DomainKeys::generate_record(&seed, &domain, 1, &Selectors::default(), 0).unwrap();
//! let keys = DomainKeys::open(&seed, &record).unwrap();
//!
//! let signed = keys.signer().unwrap().sign(b"From: a@example.test\nSubject: hi\n\nhello\n").unwrap();
//! let text = String::from_utf8(signed).unwrap();
//! assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=rsa1; d=example.test;"));
//! assert!(text.contains("DKIM-Signature: v=1; a=ed25519-sha256; s=ed1; d=example.test;"));
//! assert!(text.ends_with("From: a@example.test\r\nSubject: hi\r\n\r\nhello\r\n"));
//!
//! let zone = zone_file(&keys, &Publication::new("mx.example.test"));
//! assert!(zone.contains("ed1._domainkey.example.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=ed25519; p="));
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod dsn;
mod heartbeat;
mod keyring;
mod keys;
mod mta_sts;
mod mta_sts_client;
mod pool;
mod reaper;
mod route;
mod runner;
mod sign;
mod tls;
mod verify;
mod zone;

pub use dsn::{Bounce, DSN_MAX_ORIGINAL_HEADERS, build_dsn};
pub use heartbeat::{HEARTBEAT_STALE, Heartbeat};
pub use keyring::DomainKeyring;
pub use route::{HickoryResolver, Mx, ResolveError, Resolver, Route, SMTP_PORT, StaticResolver, Target, targets};
pub use client::TlsPolicy;
pub use mta_sts::{
    DEFAULT_MAX_AGE, MAX_EXT_NAME_LEN, MAX_HOST_LEN, MAX_ID_LEN, MAX_LABEL_LEN, MAX_MAX_AGE, MAX_POLICY_BYTES, MxPattern,
    STS_VERSION, StsError, StsMode, StsPolicy, TLSRPT_VERSION, TlsRpt, parse_sts_record, sts_record,
};
pub use mta_sts_client::{
    FETCH_RETRY_AFTER, FetchError, HttpsPolicyFetcher, MAX_CACHED_DOMAINS, MAX_FETCH_ADDRESSES, MTA_STS_PORT, MtaSts,
    POLICY_FETCH_TIMEOUT, POLICY_PATH, PolicyFetcher,
};
pub use tls::{TlsClients, TlsSetupError, load_trust_anchors};
pub use reaper::REAP_GRACE;
pub use pool::{CONNECTION_IDLE, MAX_CONNECTIONS_PER_HOST, MAX_MESSAGES_PER_CONNECTION};
pub use runner::{
    Attempt, BACKOFF, BACKOFF_STEADY, CLAIM_BATCH, DeliveryConfig, LEASE, LEASE_MARGIN, MAX_AGE, MAX_IN_FLIGHT, RECORD_BATCH,
    MIN_LEASE, POLL_INTERVAL, Runner, SMTP_TIMEOUT, SendSink, SendSinks, lease_length, next_attempt, renew_every, retry_delay, send_to,
};
pub use keys::{
    DEFAULT_ED25519_SELECTOR, DEFAULT_RSA_SELECTOR, DomainKeys, RSA_WRAP_LABEL, Selectors, ed25519_label,
    unwrap_rsa_key, wrap_rsa_key,
};
pub use sign::{DkimSigner, SIGNED_HEADERS, normalize_for_relay};
pub use verify::{
    DomainStatus, Finding, RecordCheck, check_dkim, check_dmarc, check_mta_sts, check_mx, check_spf, check_tls_rpt,
    verify_domain,
};
pub use zone::{DMARC_POLICY, MAX_TXT_STRING, Publication, SPF_POLICY, ZONE_TTL, txt_rdata, zone_file};

use agentkeys_store::StoreError;

/// Why keys could not be made or used, or a message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// A stored RSA key does not open: another master seed, another domain or
    /// version, or an altered record.
    #[error("the stored RSA DKIM key of {domain} version {version} cannot be unwrapped (wrong master seed or altered record)")]
    Unwrap {
        /// The domain.
        domain: String,
        /// The key version.
        version: u32,
    },
    /// The crypto library failed at the named step.
    #[error("DKIM crypto failed: {0}")]
    Crypto(&'static str),
    /// Signing failed (for instance a message with none of the signed headers).
    #[error("DKIM signing failed: {0}")]
    Sign(String),
    /// A request that breaks a rule; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
