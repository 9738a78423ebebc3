//! The data directory: metadata database, blob tree, master seed, TLS material.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentkeys_api::Presigner;
use agentkeys_broker::{AuthorityConfig, SoftwareAuthority};
use agentkeys_core::{KeyHasher, MasterSeed};
use agentkeys_store::{
    BlobStore, CachedThrottles, FsBlobStore, LocalEventHub, MailEvents, Mailroom, MetadataStore, PairingWakeups, PgEvents,
    PgStore, SqliteStore, Throttles,
};
use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::store_location::{BlobLocation, MetadataLocation};

/// File name of the master seed inside the data directory.
pub(crate) const SEED_FILE: &str = "master.seed";
/// File name of the SQLite database inside the data directory.
pub(crate) const META_FILE: &str = "meta.sqlite";
/// Directory of the blob tree inside the data directory.
pub(crate) const BLOB_DIR: &str = "blobs";
/// Set (to anything), the server aborts after storing a message's blob and
/// before its index commit: fault injection for crash tests, never for use.
const CRASH_BEFORE_INDEX_ENV: &str = "AGENTKEYS_TEST_CRASH_BEFORE_INDEX";

/// Everything opened from the data directory.
pub(crate) struct DataDir {
    pub(crate) path: PathBuf,
    /// The metadata backend the configuration names (SQLite by default).
    pub(crate) meta: Arc<dyn MetadataStore>,
    /// Where metadata and blobs live, for the start-up lines.
    pub(crate) metadata_location: MetadataLocation,
    pub(crate) blob_location: BlobLocation,
    /// The blob store as everything that writes mail must see it: a
    /// [`Mailroom`] that indexes every inbox copy and publishes its event (the
    /// bare `FsBlobStore` stays inside it).
    pub(crate) blobs: Arc<Mailroom>,
    /// Signs URLs that read the blob store directly, when it is an object
    /// store (S3): the read path then brokers instead of proxying. `None` for
    /// files, whose bytes the server serves itself.
    pub(crate) presigner: Option<Arc<dyn Presigner>>,
    /// The failure counters every node sharing the metadata counts in (SMTP AUTH
    /// failures, refused agent keys), behind a cache of full keys; `None` on
    /// SQLite, where `serve` is the one process that counts and counts in memory.
    pub(crate) shared_counters: Option<Arc<dyn Throttles>>,
    /// What wakes pairing collects: on PostgreSQL also approvals committed on
    /// other nodes (`PgEvents`).
    pub(crate) pairings: PairingWakeups,
    pub(crate) hasher: KeyHasher,
    /// Key for hashing third-party addresses in audit records.
    pub(crate) address_key: [u8; 32],
    /// The master seed, kept only to derive the token authority's keys. Never
    /// printed (`Debug` is redacted) and never leaves this module.
    seed: MasterSeed,
}

impl DataDir {
    /// Opens an existing data directory. Commands that only read or change what
    /// is there never create one: run somewhere else by mistake, they would
    /// otherwise leave a new `./agentkeys-data` with a new master seed behind
    /// and answer as if the server had no data.
    pub(crate) async fn open(config: &Config) -> Result<Self> {
        if !Self::exists(config) {
            bail!(
                "no data directory at {}: start the server once there (`agentkeys serve`), pass --data-dir \
                 (or AGENTKEYS_DATA_DIR) to point at the server's, or, as an owner on another machine, \
                 give the server's URL with --server",
                config.data_dir.display()
            );
        }
        Self::create_or_open(config).await
    }

    /// Whether the configured data directory was created already: its SQLite
    /// database exists, or, with metadata on PostgreSQL (shared by every node),
    /// this node's master seed does.
    pub(crate) fn exists(config: &Config) -> bool {
        match metadata_location(config) {
            MetadataLocation::Sqlite(file) => file.exists(),
            MetadataLocation::Postgres(_) => config.data_dir.join(SEED_FILE).exists(),
        }
    }

    /// Opens the data directory, creating it on first use, and the hosted
    /// default domain: `serve`, `demo seed` and the operator's first commands
    /// (`owner add`, `domain add`).
    pub(crate) async fn create_or_open(config: &Config) -> Result<Self> {
        let path = config.data_dir.clone();
        fs::create_dir_all(&path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let seed = load_or_create_seed(&path.join(SEED_FILE))?;
        let metadata_location = metadata_location(config);
        let blob_location = blob_location(config);
        let Metadata { meta, events, shared_counters, pairings } = open_metadata(&metadata_location).await?;
        let (blobs, presigner) = open_blobs(&blob_location)?;
        check_seed(meta.as_ref(), &seed, &metadata_location).await?;
        meta.ensure_domain(&config.domain, crate::now()).await?;
        let mut mailroom = Mailroom::new(blobs, meta.clone(), events, &config.hostname);
        if std::env::var_os(CRASH_BEFORE_INDEX_ENV).is_some() {
            // Crash tests only (crates/cli/tests/crash.rs): die in the window
            // between a durable blob and its index commit.
            mailroom = mailroom.crash_before_indexing();
        }
        let blobs = Arc::new(mailroom);
        Ok(Self {
            path,
            meta,
            metadata_location,
            blob_location,
            blobs,
            presigner,
            shared_counters,
            pairings,
            hasher: KeyHasher::new(&seed),
            address_key: agentkeys_audit::address_key(&seed),
            seed,
        })
    }

    /// The token authority: OIDC signing keys and the capability key, derived
    /// from the master seed in memory.
    pub(crate) fn token_authority(&self) -> Result<SoftwareAuthority> {
        SoftwareAuthority::new(&self.seed, AuthorityConfig::default())
            .context("cannot derive the token authority's keys from the master seed")
    }
}

impl DataDir {
    /// Seals and opens mail backends' provider credentials under a key derived
    /// from the master seed.
    pub(crate) fn backend_sealer(&self) -> agentkeys_backends::CredentialSealer {
        agentkeys_backends::CredentialSealer::new(self.seed.derive(agentkeys_backends::CREDENTIAL_SEAL_LABEL))
    }

    /// The key the console stores emailed codes under, the same on every node.
    pub(crate) fn console_code_key(&self) -> [u8; 32] {
        self.seed.derive(agentkeys_api::console::CODE_KEY_LABEL)
    }

    /// Seals and opens webhook secrets under a key derived from the master seed.
    pub(crate) fn webhook_sealer(&self) -> agentkeys_webhooks::SecretSealer {
        agentkeys_webhooks::SecretSealer::new(self.seed.derive(agentkeys_webhooks::secret::SEALING_KEY_LABEL))
    }

    /// What the API's webhook routes need, under `config`'s target policy.
    pub(crate) fn webhook_settings(&self, config: &Config) -> agentkeys_webhooks::WebhookSettings {
        agentkeys_webhooks::WebhookSettings {
            sealer: self.webhook_sealer(),
            policy: agentkeys_webhooks::TargetPolicy { allow_private: config.webhooks_allow_private },
        }
    }

    /// The hosted domains' DKIM keys: Ed25519 derived from the master seed, RSA
    /// stored wrapped under a seed-derived key. Keys it creates are audited as `actor`.
    pub(crate) fn dkim_keyring(&self, actor: agentkeys_audit::Actor) -> agentkeys_delivery::DomainKeyring {
        agentkeys_delivery::DomainKeyring::new(self.seed.clone(), self.meta.clone()).with_actor(actor)
    }
}

/// Where metadata lives: `[store] metadata`, else `meta.sqlite` in the data directory.
pub(crate) fn metadata_location(config: &Config) -> MetadataLocation {
    config.store_metadata.clone().unwrap_or_else(|| MetadataLocation::Sqlite(config.data_dir.join(META_FILE)))
}

/// Where blobs live: `[store] blobs`, else `blobs/` in the data directory.
pub(crate) fn blob_location(config: &Config) -> BlobLocation {
    config.store_blobs.clone().unwrap_or_else(|| BlobLocation::Files(config.data_dir.join(BLOB_DIR)))
}

/// The metadata backend and what goes with it.
struct Metadata {
    meta: Arc<dyn MetadataStore>,
    events: Arc<dyn MailEvents>,
    shared_counters: Option<Arc<dyn Throttles>>,
    pairings: PairingWakeups,
}

/// Opens (and migrates) the metadata backend, with the new-mail events, failure
/// counters and pairing wake-ups that match it: for SQLite one process's hub,
/// its memory and its own approvals; for PostgreSQL a hub fed by the database's
/// notifications (a waiter on this node hears of mail any node accepted, a
/// collect of an approval any node committed) and the database's counters
/// (an address's failures on every node count together).
async fn open_metadata(location: &MetadataLocation) -> Result<Metadata> {
    match location {
        MetadataLocation::Sqlite(file) => {
            let store = SqliteStore::open(file)
                .await
                .with_context(|| format!("cannot open the metadata database {}", file.display()))?;
            Ok(Metadata {
                meta: Arc::new(store),
                events: Arc::new(LocalEventHub::new()),
                shared_counters: None,
                pairings: PairingWakeups::default(),
            })
        }
        MetadataLocation::Postgres(url) => {
            let store = PgStore::connect(url).await.with_context(|| format!("cannot open {location}"))?;
            let pairings = PairingWakeups::default();
            let events = PgEvents::start_with(&store, LocalEventHub::new(), pairings.clone());
            let counters: Arc<dyn Throttles> = Arc::new(CachedThrottles::new(Arc::new(store.clone())));
            Ok(Metadata {
                meta: Arc::new(store),
                events: Arc::new(events),
                shared_counters: Some(counters),
                pairings,
            })
        }
    }
}

/// Label of the seed fingerprint (a one-way derivation) the database records.
const SEED_FINGERPRINT_LABEL: &str = "agentkeys deployment seed fingerprint v1";

/// Refuses a master seed other than the one the metadata was created with: keys
/// hashed and tokens signed under another seed would fail everywhere, silently.
/// Several nodes share one database, and each must be given the first node's seed.
async fn check_seed(meta: &dyn MetadataStore, seed: &MasterSeed, location: &MetadataLocation) -> Result<()> {
    let ours = seed.derive(SEED_FINGERPRINT_LABEL);
    let recorded = meta.seed_fingerprint(&ours).await.with_context(|| format!("cannot read the deployment's seed fingerprint from {location}"))?;
    if recorded != ours {
        bail!(
            "this data directory's master seed is not the one {location} was created with: every node sharing \
             the metadata needs the same master.seed (copy it from the first node's data directory, mode 0600) \
             before it may serve"
        );
    }
    Ok(())
}

/// An open blob store, and for an object store its URL signer.
type OpenBlobs = (Arc<dyn BlobStore>, Option<Arc<dyn Presigner>>);

/// Opens the blob store, and for an object store its URL signer.
fn open_blobs(location: &BlobLocation) -> Result<OpenBlobs> {
    match location {
        BlobLocation::Files(dir) => {
            let store = FsBlobStore::open(dir).with_context(|| format!("cannot open the blob store {}", dir.display()))?;
            Ok((Arc::new(store), None))
        }
        BlobLocation::S3 { bucket, prefix } => {
            let url = format!("s3://{bucket}/{prefix}");
            let config = agentkeys_store::S3Config::from_env(&url).with_context(|| format!("cannot configure {location}"))?;
            let store = agentkeys_store::S3BlobStore::open(&config).with_context(|| format!("cannot open {location}"))?;
            // Clones share the connection pool and the credentials.
            Ok((Arc::new(store.clone()), Some(Arc::new(store))))
        }
    }
}

/// Reads the master seed, or creates it (mode 0600) if absent.
///
/// Creation writes a temporary file and publishes it with `link`, which fails if
/// another process won the race; the loser then reads the winner's seed.
pub(crate) fn load_or_create_seed(path: &Path) -> Result<MasterSeed> {
    match fs::read(path) {
        Ok(bytes) => return seed_from(path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read master seed {}", path.display())),
    }
    let seed = MasterSeed::generate(&mut rand::rngs::OsRng);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(seed.as_bytes())?;
        f.sync_all()?;
    }
    let linked = fs::hard_link(&tmp, path);
    fs::remove_file(&tmp).ok();
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                fs::File::open(dir).and_then(|d| d.sync_all()).ok();
            }
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => seed_from(path, &fs::read(path)?),
        Err(e) => Err(e).with_context(|| format!("cannot create master seed {}", path.display())),
    }
}

fn seed_from(path: &Path, bytes: &[u8]) -> Result<MasterSeed> {
    let Ok(arr) = <[u8; 32]>::try_from(bytes) else {
        bail!("master seed {} is corrupt: expected 32 bytes, found {}", path.display(), bytes.len());
    };
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("master seed {} is readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
    }
    Ok(MasterSeed::from_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(SEED_FILE);
        let a = load_or_create_seed(&p).unwrap();
        let b = load_or_create_seed(&p).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_seed(&p).unwrap_err().to_string().contains("chmod 600"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, b"short").unwrap();
        assert!(load_or_create_seed(&p).unwrap_err().to_string().contains("corrupt"));
    }
}
