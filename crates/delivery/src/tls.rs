//! The TLS clients of outbound delivery.
//!
//! - **Opportunistic** (RFC 7435): any certificate is accepted, but the
//!   handshake's signatures are still checked against the certificate's key,
//!   so a connection that [`TlsClients::check_certificate`] later finds valid
//!   was made with the holder of that key (a man in the middle cannot replay a
//!   real chain). Used when no policy asks for more.
//! - **Validating**: the chain must lead to a trust anchor (Mozilla's roots from
//!   `webpki-root-certs`, plus the operator's `[delivery] ca_file`) and be valid
//!   for the host name. Used for MTA-STS `enforce` MX connections and for
//!   fetching MTA-STS policies.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

/// Why the TLS clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The extra trust anchors file cannot be read or has no certificate.
    #[error("{path}: {why}")]
    TrustAnchors {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS client setup failed: {0}")]
    Rustls(String),
}

/// Reads a PEM file of extra trust anchors (`[delivery] ca_file`): every
/// `CERTIFICATE` block; at least one.
pub fn load_trust_anchors(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bad = |why: String| TlsSetupError::TrustAnchors { path: path.display().to_string(), why };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// Accepts any certificate chain; checks the handshake signatures with the
/// certificate's key like a validating client does.
#[derive(Debug)]
struct AnyChain {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The opportunistic and the validating TLS client, over one set of trust anchors.
#[derive(Clone)]
pub struct TlsClients {
    opportunistic: TlsConnector,
    validating: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
    extra_anchors: usize,
}

impl std::fmt::Debug for TlsClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClients").field("extra_anchors", &self.extra_anchors).finish_non_exhaustive()
    }
}

impl TlsClients {
    /// Clients trusting Mozilla's roots and `extra_anchors` (aws-lc-rs crypto).
    pub fn new(extra_anchors: &[CertificateDer<'static>]) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        for anchor in extra_anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| TlsSetupError::Rustls(format!("a certificate of ca_file is not a usable trust anchor: {e}")))?;
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
        let validating = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .with_webpki_verifier(Arc::clone(&verifier))
            .with_no_client_auth();
        let any = AnyChain { algorithms: provider.signature_verification_algorithms };
        let opportunistic = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(any))
            .with_no_client_auth();
        Ok(Self {
            opportunistic: TlsConnector::from(Arc::new(opportunistic)),
            validating: Arc::new(validating),
            verifier,
            extra_anchors: extra_anchors.len(),
        })
    }

    /// For STARTTLS without a certificate requirement.
    pub(crate) fn opportunistic(&self) -> &TlsConnector {
        &self.opportunistic
    }

    /// For STARTTLS that must present a valid certificate for the host.
    pub(crate) fn validating(&self) -> TlsConnector {
        TlsConnector::from(Arc::clone(&self.validating))
    }

    /// The validating client's configuration (the MTA-STS policy fetch uses it).
    pub fn validating_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.validating)
    }

    /// Whether the certificate chain `conn` received is valid for `host` and
    /// leads to a trust anchor (what an MTA-STS `testing` policy reports on).
    pub(crate) fn check_certificate(&self, conn: &ClientConnection, host: &str) -> Result<(), String> {
        let Some((end_entity, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
            return Err("the server sent no certificate".to_owned());
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|_| format!("{host} is not a TLS server name"))?;
        self.verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_anchor_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(load_trust_anchors(&missing).unwrap_err().to_string().contains("cannot read"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(load_trust_anchors(&empty).unwrap_err().to_string().contains("no CERTIFICATE block"));
        let clients = TlsClients::new(&[]).unwrap();
        assert_eq!(clients.extra_anchors, 0);
    }
}
