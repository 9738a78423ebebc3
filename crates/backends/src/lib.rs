//! Mail backends (issue 14): where a hosted domain's mail is received and sent.
//!
//! A domain's backend is chosen by the operator (`agentkeys domain add D
//! --backend native|imap|ses`) and stored by the store's [`MailBackends`] role;
//! a running server re-reads it every [`RELOAD_INTERVAL`] and starts, restarts
//! or stops the domain's backend (no restart needed). Every backend is two
//! halves behind one seam:
//!
//! - a **receive source**, which ends in [`SmtpServer::ingest`]: the same
//!   routing (envelope recipients only), `Received:`, verdicts
//!   (`Authentication-Results`), receive lists and `Mailroom` write (blob, index
//!   row, `message.received` event) as mail our MX accepts;
//! - a **send sink** ([`agentkeys_delivery::SendSink`]), which the queue runner
//!   uses for the domain's outbound mail instead of MX delivery, with the queue's
//!   states, backoff, DSNs and records unchanged.
//!
//! The native MTA is the default implementation (no stored row): its receive
//! source is our MX listener, its send sink the runner's own MX path. The
//! [`imap`] backend follows an external mailbox with IMAP IDLE and sends through
//! the provider's submission server with AUTH ([`submit`]). The [`ses`]
//! backend reads what an SES receipt rule writes to S3 and sends with SES
//! `SendRawEmail`, federated into AWS with our own OIDC tokens. The agent never
//! sees the provider's credentials: they are sealed here ([`CredentialSealer`])
//! and opened only by the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_core::Address;
use agentkeys_delivery::{SendSink, SendSinks};
use agentkeys_smtp::SmtpServer;
use agentkeys_store::roles::MetadataStore;
use agentkeys_store::{MailBackendRecord, StoreError};
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::{Zeroize as _, Zeroizing};

pub mod imap;
pub mod lease;
pub mod oauth2;
pub mod ses;
pub mod submit;

/// The seed derivation label of the key that seals provider credentials.
pub const CREDENTIAL_SEAL_LABEL: &str = "mail-backend-credential-seal/v1";
/// XChaCha20-Poly1305 nonce length.
const NONCE_BYTES: usize = 24;
/// The longest provider credential accepted (an app password is 16 characters,
/// an OAuth token about 2 KB).
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// Waits after the 1st, 2nd, … failed connection to a provider (then the last
/// one again), times the backoff scale.
pub const RECONNECT_BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(300),
];
/// The wait after the provider refused the login (a wrong or revoked
/// password), times the backoff scale: long, because retrying sooner cannot
/// help and providers lock accounts that keep failing.
pub const AUTH_FAILED_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long one IDLE lasts before it is renewed (RFC 2177: servers may drop a
/// client idle for 30 minutes).
pub const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);
/// Timeout of each network step with a provider (connect, TLS, login, a command).
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(60);

/// The kinds of backend an operator may choose for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Our own MTA (the default; no stored row).
    Native,
    /// An external IMAP/SMTP mailbox.
    Imap,
    /// AWS SES receiving into S3, sending with `SendRawEmail` ([`ses`]).
    Ses,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(Self::Native),
            "imap" => Ok(Self::Imap),
            "ses" => Ok(Self::Ses),
            other => Err(format!("unknown backend {other:?}; expected native, imap or ses")),
        }
    }
}

/// How the submission server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); refused without it.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// The stored settings of an IMAP/SMTP backend (no secret: the password is
/// sealed apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapSettings {
    /// The IMAP server (TLS from the first byte, port 993 usually).
    pub imap_host: String,
    /// Its port.
    pub imap_port: u16,
    /// The mailbox followed (`INBOX`).
    pub mailbox: String,
    /// The submission server.
    pub smtp_host: String,
    /// Its port.
    pub smtp_port: u16,
    /// STARTTLS or implicit TLS.
    pub smtp_tls: SmtpTls,
    /// The login of both servers.
    pub username: String,
    /// The hosted inbox every message of the mailbox is delivered to: the
    /// mailbox belongs to that one inbox, so routing never reads `To:`.
    pub deliver_to: Address,
    /// With XOAUTH2 ([`oauth2`]): the provider's OAuth2 token endpoint; the
    /// sealed credential then holds the client and refresh token, not a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_token_url: Option<String>,
}

impl ImapSettings {
    /// Checks what the store cannot: host names, ports, the mailbox name, and
    /// that `deliver_to` is on `domain`.
    pub fn validate(&self, domain: &agentkeys_core::Domain) -> Result<(), String> {
        for (what, host) in [("imap host", &self.imap_host), ("smtp host", &self.smtp_host)] {
            if host.is_empty() || host.len() > 253 || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
                return Err(format!("{what} {host:?} is not a host name or address"));
            }
        }
        if self.imap_port == 0 || self.smtp_port == 0 {
            return Err("ports must be 1 to 65535".to_owned());
        }
        if self.mailbox.is_empty() || self.mailbox.len() > 200 || self.mailbox.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
            return Err(format!("mailbox name {:?} is not accepted", self.mailbox));
        }
        if self.username.is_empty() || self.username.len() > 320 || self.username.chars().any(char::is_control) {
            return Err("the user name must be 1 to 320 printable characters".to_owned());
        }
        if self.deliver_to.domain() != domain.as_str() {
            return Err(format!("--deliver-to {} is not on {domain}", self.deliver_to));
        }
        if let Some(url) = &self.oauth2_token_url {
            oauth2::check_token_url(url)?;
        }
        Ok(())
    }
}

/// A provider credential (password, app password or token). `Debug` never shows
/// it; dropped, it is wiped.
#[derive(Clone)]
pub struct Credential(Zeroizing<String>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl Credential {
    /// A credential from text (one trailing newline, as a file ends, removed).
    /// Refuses an empty or oversized one.
    pub fn new(mut text: String) -> Result<Self, String> {
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        let credential = Self(Zeroizing::new(text));
        if credential.0.is_empty() {
            return Err("the password is empty".to_owned());
        }
        if credential.0.len() > MAX_CREDENTIAL_BYTES {
            return Err(format!("the password is longer than {MAX_CREDENTIAL_BYTES} bytes"));
        }
        if credential.0.chars().any(char::is_control) {
            return Err("the password contains control characters".to_owned());
        }
        Ok(credential)
    }

    /// The secret, for the login.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How the backend logs in to the provider's servers.
#[derive(Debug, Clone)]
pub enum Login {
    /// LOGIN / AUTH PLAIN with a password (an app password).
    Password(Credential),
    /// AUTHENTICATE XOAUTH2 / AUTH XOAUTH2 with an access token from the source.
    OAuth2(Arc<oauth2::TokenSource>),
}

/// A sealed credential did not open: another seed, another domain's row, or damage.
#[derive(Debug, thiserror::Error)]
#[error("a mail backend credential cannot be opened (sealed under another master seed, for another domain, or damaged)")]
pub struct SealError;

/// Seals and opens provider credentials under one seed-derived key
/// (XChaCha20-Poly1305, the domain as associated data: a sealed credential
/// moved to another domain's row does not open).
#[derive(Clone)]
pub struct CredentialSealer {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for CredentialSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialSealer(<redacted>)")
    }
}

impl CredentialSealer {
    /// A sealer over `key` (derive it with [`CREDENTIAL_SEAL_LABEL`] from the master seed).
    pub fn new(mut key: [u8; 32]) -> Self {
        let sealer = Self { key: Zeroizing::new(key) };
        key.zeroize();
        sealer
    }

    /// `nonce || ciphertext` of `credential`, bound to `domain`.
    pub fn seal(&self, domain: &str, credential: &Credential) -> Result<Vec<u8>, SealError> {
        let cipher = XChaCha20Poly1305::new_from_slice(self.key.as_ref()).map_err(|_| SealError)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: credential.expose().as_bytes(), aad: domain.as_bytes() })
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made for `domain`.
    pub fn open(&self, domain: &str, sealed: &[u8]) -> Result<Credential, SealError> {
        if sealed.len() < NONCE_BYTES {
            return Err(SealError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let cipher = XChaCha20Poly1305::new_from_slice(self.key.as_ref()).map_err(|_| SealError)?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: domain.as_bytes() })
                .map_err(|_| SealError)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| SealError)?;
        Ok(Credential(Zeroizing::new(text.to_owned())))
    }
}

/// What every backend of a server shares.
#[derive(Clone)]
pub struct BackendContext {
    /// The metadata store (status, cursors, audit, the index).
    pub store: Arc<dyn MetadataStore>,
    /// Where fetched mail is stored, exactly as the MX stores mail.
    pub smtp: Arc<SmtpServer>,
    /// Opens the stored credentials.
    pub sealer: CredentialSealer,
    /// TLS to providers: certificates are always validated (the webpki roots
    /// plus `delivery.ca_file`).
    pub tls: Arc<rustls::ClientConfig>,
    /// Our host name (EHLO).
    pub hostname: String,
    /// Multiplies [`RECONNECT_BACKOFF`] and [`AUTH_FAILED_BACKOFF`] (1 in
    /// production; tests use less).
    pub backoff_scale: f64,
    /// Our OIDC issuer, for the SES backend's `AssumeRoleWithWebIdentity`.
    pub web_identity: Option<Arc<dyn ses::aws::WebIdentityTokens>>,
}

impl std::fmt::Debug for BackendContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendContext").field("hostname", &self.hostname).finish_non_exhaustive()
    }
}

impl BackendContext {
    /// `d` times the backoff scale.
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.backoff_scale.clamp(0.0, 1.0e6))
    }
}

/// A receive source as [`lease::run_leased`] starts it.
type SourceFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
/// What makes a fresh receive source each time the lease is taken.
type SourceStart = Box<dyn Fn(CancellationToken) -> SourceFuture + Send>;

/// How often a running server re-reads the domains' backends (times the
/// backoff scale, at least [`MIN_RELOAD_INTERVAL`]): `domain set-backend`
/// takes effect within about this long, without a restart.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest reload interval, whatever the scale.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(500);

/// One running backend: what it was started from, and how to stop it.
struct Running {
    /// The stored kind, settings and sealed secret it was started from.
    started_from: (String, String, Vec<u8>),
    /// Cancels its lease loop (and so its receive source).
    stop: CancellationToken,
    kind: &'static str,
}

/// The running backends of a server: each domain's receive source as a task,
/// and its send sink for the queue runner. A supervisor re-reads the stored
/// backends every [`RELOAD_INTERVAL`] and starts, restarts or stops domains
/// whose backend changed.
pub struct Backends {
    sinks: std::sync::RwLock<HashMap<String, Arc<dyn SendSink>>>,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// A stored backend that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored backend is not usable (bad settings, a credential that does not open).
    #[error("the mail backend of {domain} cannot start: {why}")]
    Unusable {
        /// The domain.
        domain: String,
        /// Why.
        why: String,
    },
}

/// What starting one domain's backend needs besides its record.
struct Launcher {
    ctx: BackendContext,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// This process's name as a follower-lease holder (lease.rs).
    holder: String,
    /// Starts so far: each start holds the lease under a name of its own, so
    /// a restarted domain's new source waits for the old one to stop and
    /// release the lease.
    generation: std::sync::atomic::AtomicU64,
}

impl Launcher {
    /// Starts `record`'s receive source (under its follower lease) and builds
    /// its send sink.
    fn launch(&self, record: &MailBackendRecord) -> Result<(Running, Arc<dyn SendSink>), StartError> {
        let ctx = &self.ctx;
        let stop = self.shutdown.child_token();
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let holder = format!("{}/{generation}", self.holder);
        let ttl = ctx.scaled(lease::LEASE_TTL);
        let leased = |start| lease::run_leased(ctx.store.clone(), record.domain.clone(), holder.clone(), ttl, stop.clone(), start);
        let started_from = (record.kind.clone(), record.settings.clone(), record.secret_sealed.clone());
        if record.kind == "ses" {
            // Checked here, so a bad setting is refused before anything runs;
            // each lease taken opens a fresh receiver.
            let (_, sink) = open_ses(ctx, record)?;
            let (source_ctx, source_record) = (ctx.clone(), record.clone());
            self.tasks.spawn(leased(Box::new(move |token: CancellationToken| {
                let opened = open_ses(&source_ctx, &source_record);
                Box::pin(async move {
                    match opened {
                        Ok((receiver, _)) => receiver.run(token).await,
                        Err(err) => tracing::error!(%err, "SES backend: cannot open the receiver"),
                    }
                }) as SourceFuture
            }) as SourceStart));
            return Ok((Running { started_from, stop, kind: "ses" }, Arc::new(sink)));
        }
        let (settings, credential) = open_imap(&ctx.sealer, record)?;
        let credential = login(ctx, &settings, credential).map_err(|why| StartError::Unusable { domain: record.domain.to_string(), why })?;
        let (source_ctx, source_domain) = (ctx.clone(), record.domain.clone());
        let (source_settings, source_credential) = (settings.clone(), credential.clone());
        self.tasks.spawn(leased(Box::new(move |token: CancellationToken| {
            let follower =
                imap::Follower::new(source_ctx.clone(), source_domain.clone(), source_settings.clone(), source_credential.clone());
            Box::pin(follower.run(token)) as SourceFuture
        }) as SourceStart));
        let sink = Arc::new(submit::SubmissionSink::new(ctx.clone(), settings, credential));
        Ok((Running { started_from, stop, kind: "imap" }, sink))
    }
}

impl Backends {
    /// Starts every stored backend: its receive source on `tasks` (until
    /// `shutdown`), its send sink kept for [`SendSinks`]; then a supervisor
    /// (on `tasks`) that follows later changes (module docs). A stored
    /// backend that cannot start fails the server's start; one set later
    /// that cannot start is reported in its status and the log.
    pub async fn start(ctx: BackendContext, shutdown: CancellationToken, tasks: &TaskTracker) -> Result<Arc<Self>, StartError> {
        let launcher = Launcher {
            holder: format!("{}/{}/{}", ctx.hostname, std::process::id(), ulid::Ulid::new()),
            ctx,
            shutdown,
            tasks: tasks.clone(),
            generation: 0.into(),
        };
        let backends = Arc::new(Self { sinks: std::sync::RwLock::new(HashMap::new()), running: tokio::sync::Mutex::new(HashMap::new()) });
        for record in launcher.ctx.store.mail_backends().await? {
            let (running, sink) = launcher.launch(&record)?;
            backends.install(record.domain.to_string(), running, Some(sink)).await;
        }
        let supervised = backends.clone();
        tasks.spawn(async move {
            let every = launcher.ctx.scaled(RELOAD_INTERVAL).max(MIN_RELOAD_INTERVAL);
            loop {
                tokio::select! {
                    () = launcher.shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(err) = supervised.reload(&launcher).await {
                    tracing::warn!(%err, "mail backends: cannot re-read the domains' backends");
                }
            }
        });
        Ok(backends)
    }

    async fn install(&self, domain: String, running: Running, sink: Option<Arc<dyn SendSink>>) {
        {
            let mut sinks = self.sinks.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            match sink {
                Some(sink) => sinks.insert(domain.clone(), sink),
                None => sinks.remove(&domain),
            };
        }
        if let Some(old) = self.running.lock().await.insert(domain, running) {
            old.stop.cancel();
        }
    }

    /// Stops `domain`'s backend (its source releases the lease) and its sink.
    async fn remove(&self, domain: &str) {
        {
            self.sinks.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(domain);
        }
        if let Some(old) = self.running.lock().await.remove(domain) {
            old.stop.cancel();
        }
    }

    /// Compares the stored backends with the running ones: a new or changed
    /// one is (re)started, a removed one (the domain made native) stopped.
    async fn reload(&self, launcher: &Launcher) -> Result<(), StoreError> {
        let records = launcher.ctx.store.mail_backends().await?;
        let stored: HashMap<String, &MailBackendRecord> = records.iter().map(|r| (r.domain.to_string(), r)).collect();
        let gone: Vec<String> = self.running.lock().await.keys().filter(|d| !stored.contains_key(*d)).cloned().collect();
        for domain in gone {
            tracing::info!(%domain, "mail backends: the domain is native again; its backend stops");
            self.remove(&domain).await;
        }
        for (domain, record) in stored {
            let started_from = (record.kind.clone(), record.settings.clone(), record.secret_sealed.clone());
            if self.running.lock().await.get(&domain).is_some_and(|r| r.started_from == started_from) {
                continue;
            }
            // Stop first: a new source must not run beside the old one.
            self.remove(&domain).await;
            match launcher.launch(record) {
                Ok((running, sink)) => {
                    tracing::info!(%domain, kind = running.kind, "mail backends: the domain's backend (re)started");
                    self.install(domain, running, Some(sink)).await;
                }
                Err(err) => {
                    tracing::error!(%domain, %err, "mail backends: the domain's new backend cannot start");
                    // Remembered, so it is not retried (and reported) every interval.
                    let running = Running { started_from, stop: CancellationToken::new(), kind: "unusable" };
                    self.install(domain, running, None).await;
                    if let Err(e) = launcher.ctx.store.set_mail_backend_status(&record.domain, "failing", Some(&err.to_string()), now()).await {
                        tracing::warn!(%e, "cannot record the mail backend's status");
                    }
                }
            }
        }
        Ok(())
    }

    /// The domains with a running backend and its kind.
    pub async fn domains(&self) -> Vec<(String, &'static str)> {
        let mut list: Vec<(String, &'static str)> =
            self.running.lock().await.iter().map(|(d, r)| (d.clone(), r.kind)).collect();
        list.sort();
        list
    }
}

/// Reads an SES backend's settings, opens its static keys if it has them,
/// and builds its receiver and send sink over one credential cache.
pub fn open_ses(ctx: &BackendContext, record: &MailBackendRecord) -> Result<(ses::Receiver, ses::SesSink), StartError> {
    let unusable = |why: String| StartError::Unusable { domain: record.domain.to_string(), why };
    let settings: ses::SesSettings =
        serde_json::from_str(&record.settings).map_err(|e| unusable(format!("stored settings are invalid: {e}")))?;
    let keys = if record.secret_sealed.is_empty() {
        None
    } else {
        let text = ctx.sealer.open(record.domain.as_str(), &record.secret_sealed).map_err(|e| unusable(e.to_string()))?;
        Some(ses::static_keys(text.expose()).map_err(unusable)?)
    };
    settings.validate(keys.is_some()).map_err(unusable)?;
    let endpoints = ses::aws::Endpoints::new(&settings.region, settings.endpoint.as_deref()).map_err(unusable)?;
    let source = match (keys, &settings.role_arn, &ctx.web_identity) {
        (Some(keys), _, _) => ses::aws::CredentialSource::Static(keys),
        (None, Some(role_arn), Some(tokens)) => {
            ses::aws::CredentialSource::WebIdentity { role_arn: role_arn.clone(), tokens: tokens.clone() }
        }
        (None, _, None) => return Err(unusable("no OIDC issuer to federate with".to_owned())),
        (None, None, _) => return Err(unusable("neither a role nor static keys".to_owned())),
    };
    let session = format!("agentkeys-{}", record.domain);
    let credentials = Arc::new(ses::aws::CredentialCache::new(source, endpoints.clone(), ctx.tls.clone(), session));
    let receiver = ses::Receiver::new(ctx.clone(), record.domain.clone(), settings, endpoints.clone(), credentials.clone());
    Ok((receiver, ses::SesSink::new(ctx.clone(), endpoints, credentials)))
}

/// The login of `settings`: the password, or (with a token endpoint) a token
/// source over the sealed OAuth2 secrets, shared by the follower and the sink.
pub fn login(ctx: &BackendContext, settings: &ImapSettings, credential: Credential) -> Result<Login, String> {
    match &settings.oauth2_token_url {
        None => Ok(Login::Password(credential)),
        Some(url) => {
            let url = oauth2::check_token_url(url)?;
            let secrets = oauth2::OAuth2Secrets::from_credential(&credential)?;
            Ok(Login::OAuth2(Arc::new(oauth2::TokenSource::new(url, secrets, ctx.tls.clone()))))
        }
    }
}

/// Reads an IMAP backend's settings and opens its credential.
pub fn open_imap(sealer: &CredentialSealer, record: &MailBackendRecord) -> Result<(ImapSettings, Credential), StartError> {
    let unusable = |why: String| StartError::Unusable { domain: record.domain.to_string(), why };
    if record.kind != "imap" {
        return Err(unusable(format!("unknown kind {:?}", record.kind)));
    }
    let settings: ImapSettings =
        serde_json::from_str(&record.settings).map_err(|e| unusable(format!("stored settings are invalid: {e}")))?;
    let credential = sealer.open(record.domain.as_str(), &record.secret_sealed).map_err(|e| unusable(e.to_string()))?;
    Ok((settings, credential))
}

#[async_trait]
impl SendSinks for Backends {
    async fn sink_for(&self, sender_domain: &str) -> Option<Arc<dyn SendSink>> {
        self.sinks.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(sender_domain).cloned()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> agentkeys_core::UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_sealed_credential_opens_only_for_its_domain_and_key_and_never_prints() {
        let sealer = CredentialSealer::new([7; 32]);
        let credential = Credential::new("app-pass-1234\n".to_owned()).unwrap();
        assert_eq!(credential.expose(), "app-pass-1234", "a file's trailing newline is not part of it");
        let sealed = sealer.seal("a.test", &credential).unwrap();
        assert_eq!(sealer.open("a.test", &sealed).unwrap().expose(), "app-pass-1234");
        assert!(sealer.open("b.test", &sealed).is_err(), "another domain's row");
        assert!(CredentialSealer::new([8; 32]).open("a.test", &sealed).is_err(), "another seed");
        assert!(sealer.open("a.test", &sealed[..10]).is_err());
        assert!(!format!("{credential:?} {sealer:?}").contains("app-pass"));
        assert!(!sealed.windows(8).any(|w| w == b"app-pass"), "sealed bytes do not carry the text");
    }

    #[test]
    fn credentials_are_refused_when_empty_oversized_or_with_control_characters() {
        assert!(Credential::new(String::new()).is_err());
        assert!(Credential::new("\n".to_owned()).is_err());
        assert!(Credential::new("a\u{0}b".to_owned()).is_err());
        assert!(Credential::new("x".repeat(MAX_CREDENTIAL_BYTES + 1)).is_err());
        assert!(Credential::new("x".repeat(MAX_CREDENTIAL_BYTES)).is_ok());
    }

    #[test]
    fn backend_kinds_parse() {
        assert_eq!("native".parse::<BackendKind>(), Ok(BackendKind::Native));
        assert_eq!("imap".parse::<BackendKind>(), Ok(BackendKind::Imap));
        assert_eq!("ses".parse::<BackendKind>(), Ok(BackendKind::Ses));
        assert!("pop3".parse::<BackendKind>().unwrap_err().contains("native, imap or ses"));
    }

    fn settings() -> ImapSettings {
        ImapSettings {
            imap_host: "imap.provider.test".to_owned(),
            imap_port: 993,
            mailbox: "INBOX".to_owned(),
            smtp_host: "smtp.provider.test".to_owned(),
            smtp_port: 587,
            smtp_tls: SmtpTls::Starttls,
            username: "bot@provider.test".to_owned(),
            deliver_to: "bot@agents.test".parse().unwrap(),
            oauth2_token_url: None,
        }
    }

    #[test]
    fn settings_are_checked_and_round_trip_as_json() {
        let domain: agentkeys_core::Domain = "agents.test".parse().unwrap();
        let s = settings();
        s.validate(&domain).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ImapSettings>(&json).unwrap(), s);
        assert!(ImapSettings { deliver_to: "bot@elsewhere.test".parse().unwrap(), ..settings() }.validate(&domain).is_err());
        assert!(ImapSettings { imap_host: "a b".to_owned(), ..settings() }.validate(&domain).is_err());
        assert!(ImapSettings { mailbox: "In\"box".to_owned(), ..settings() }.validate(&domain).is_err());
        assert!(ImapSettings { smtp_port: 0, ..settings() }.validate(&domain).is_err());
        let oauth = ImapSettings { oauth2_token_url: Some("https://oauth2.googleapis.com/token".to_owned()), ..settings() };
        oauth.validate(&domain).unwrap();
        assert_eq!(serde_json::from_str::<ImapSettings>(&serde_json::to_string(&oauth).unwrap()).unwrap(), oauth);
        assert!(!json.contains("oauth2"), "password settings are stored as before");
        let plain_http = ImapSettings { oauth2_token_url: Some("http://oauth.example.com/token".to_owned()), ..settings() };
        assert!(plain_http.validate(&domain).unwrap_err().contains("https"));
    }

    proptest! {
        /// Any credential of printable text seals and opens to itself, for its domain only.
        #[test]
        fn any_credential_round_trips(text in "[ -~]{1,200}", key in any::<[u8; 32]>()) {
            let sealer = CredentialSealer::new(key);
            let credential = Credential::new(text.clone()).unwrap();
            let sealed = sealer.seal("d.test", &credential).unwrap();
            let opened = sealer.open("d.test", &sealed).unwrap();
            prop_assert_eq!(opened.expose(), text.as_str());
            prop_assert!(sealer.open("e.test", &sealed).is_err());
        }
    }
}
