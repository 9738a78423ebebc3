//! TLS for submission and HTTPS: the configured certificate, or a self-signed one
//! generated on first start (rcgen) and kept in `<data-dir>/tls/`. Its SHA-256
//! fingerprint is what clients pin at pairing and enrollment
//! (`agentkeys_agent::tls`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Where the generated development certificate lives, and whether it was created now.
pub(crate) struct TlsMaterial {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) cert_path: PathBuf,
    pub(crate) generated: bool,
    /// SHA-256 of the end-entity certificate.
    pub(crate) fingerprint: agentkeys_agent::tls::Fingerprint,
}

impl TlsMaterial {
    /// The HTTPS listener's acceptor: the same certificate and key, offering
    /// ALPN `http/1.1` (TLS 1.2 and 1.3 only, like submission).
    pub(crate) fn https_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// The fingerprint of the certificate `serve` would present (configured, or
/// generated in the data dir), if it exists yet; for the operator's commands.
pub(crate) fn existing_fingerprint(config: &Config) -> Option<agentkeys_agent::tls::Fingerprint> {
    let path = match &config.tls_cert {
        Some(c) => c.clone(),
        None => config.data_dir.join("tls").join("cert.pem"),
    };
    agentkeys_agent::tls::Fingerprint::of_pem_file(&path).ok()
}

/// Loads the configured pair, or the generated one (creating it if needed).
pub(crate) fn load(config: &Config) -> Result<TlsMaterial> {
    let (cert_path, key_path, generated) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let dir = config.data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let generated = !c.exists() || !k.exists();
            if generated {
                generate(&dir, &c, &k, &config.hostname)?;
            }
            (c, k, generated)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(Iterator::collect)
        .map_err(|e| anyhow!("cannot read TLS certificate {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("TLS certificate {} holds no certificate", cert_path.display()));
    }
    let fingerprint = agentkeys_agent::tls::Fingerprint::of(&certs[0]);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow!("cannot read TLS key {}: {e}", key_path.display()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("TLS key {} does not match certificate {}", key_path.display(), cert_path.display()))?;
    // Our preference, not the client's: see `provider`.
    server.ignore_client_order = true;
    // SMTP clients rarely resume TLS 1.3 sessions; one ticket keeps resumption
    // possible without paying for two on every handshake.
    server.send_tls13_tickets = 1;
    Ok(TlsMaterial { config: Arc::new(server), cert_path, generated, fingerprint })
}

fn generate(dir: &Path, cert: &Path, key: &Path, hostname: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names = vec![hostname.to_owned(), "localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).context("cannot generate a self-signed certificate")?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)
        .with_context(|| format!("cannot write {}", key.display()))?;
    f.write_all(certified.signing_key.serialize_pem().as_bytes())?;
    f.sync_all()?;
    fs::write(cert, certified.cert.pem()).with_context(|| format!("cannot write {}", cert.display()))?;
    Ok(())
}

/// aws-lc-rs with AES-128-GCM/SHA-256 preferred: as strong as mail needs, and its
/// SHA-256 key schedule costs less per handshake than SHA-384's.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}
