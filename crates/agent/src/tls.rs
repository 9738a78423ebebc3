//! Whom the clients of the server trust: the HTTPS API (owner CLI, agent CLI,
//! daemon, MCP) and SMTP submission share one rule.
//!
//! A server certificate is accepted when
//! 1. its SHA-256 fingerprint is the one **pinned** at pairing or enrollment
//!    (`server_fingerprint` in `agent.json`, the owner's `known_servers.json`)
//!    or it is one of the certificates of the CA file taken as is, or
//! 2. it chains to Mozilla's roots (the webpki roots) or to a certificate of the
//!    CA file (`--ca-file` / [`CA_FILE_ENV`]) and is valid for the host name
//!    (rustls's [`WebPkiServerVerifier`]).
//!
//! Either way the server must prove it holds the certificate's key: the
//! handshake signature is checked by rustls (`verify_tls1x_signature` over the
//! provider's algorithms). Nothing here is hand-rolled crypto: the fingerprint is
//! aws-lc-rs's SHA-256 of the DER certificate, the rest is rustls.
//!
//! Only [`Trust::first_contact`] (pairing and enrollment, before there is a pin)
//! accepts a certificate that passes neither check, and only to record its
//! fingerprint ([`SeenCert`]) so a person can compare it and it can be pinned.
//! A pinned client that meets another untrusted certificate refuses the
//! handshake; [`TrustLog::refusal`] then says which fingerprint it saw, which
//! one is pinned, and what to do.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A PEM file of extra certificates to trust (a private CA, or the server's
/// own certificate).
pub const CA_FILE_ENV: &str = "AGENTKEYS_CA_FILE";
/// A server certificate fingerprint to pin (SHA-256, hex, colons optional).
pub const SERVER_FINGERPRINT_ENV: &str = "AGENTKEYS_SERVER_FINGERPRINT";

/// The SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `der` (a DER X.509 certificate).
    pub fn of(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The fingerprint of the first certificate of a PEM file.
    pub fn of_pem_file(path: &std::path::Path) -> Result<Self, String> {
        let cert = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .next()
            .ok_or_else(|| format!("{} holds no certificate", path.display()))?
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Self::of(&cert))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Uppercase hex pairs joined by colons, as `openssl x509 -fingerprint -sha256` prints.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a fingerprint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 certificate fingerprint (64 hex digits, colons allowed, e.g. as `agentkeys serve` prints it)")]
pub struct FingerprintError(pub String);

/// Accepts 64 hex digits, optionally in colon-separated pairs, optionally after
/// `sha256:` / `SHA256=`; any case.
impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintError(s.chars().take(120).collect());
        let t = s.trim();
        let t = ["sha256:", "sha256=", "sha-256:"]
            .iter()
            .find_map(|p| t.get(..p.len()).filter(|h| h.eq_ignore_ascii_case(p)).map(|_| &t[p.len()..]))
            .unwrap_or(t);
        let digits: Vec<u8> = if t.contains(':') {
            let pairs: Vec<&str> = t.split(':').collect();
            if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
                return Err(err());
            }
            pairs.concat().into_bytes()
        } else {
            t.as_bytes().to_vec()
        };
        if digits.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| err())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| err())?;
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(err());
            }
        }
        Ok(Self(out))
    }
}

/// What a client trusts (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Extra trust anchors (PEM), also accepted as exact certificates.
    pub ca_file: Option<PathBuf>,
    /// The server certificate pinned at pairing or enrollment.
    pub pin: Option<Fingerprint>,
    /// Pairing/enrollment before a pin exists: an untrusted certificate is
    /// accepted and recorded, to be shown to a person and pinned.
    pub first_contact: bool,
}

/// Why a certificate was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// It is the pinned certificate (or one of the CA file's, taken as is).
    Pinned,
    /// It chains to the webpki roots or the CA file and fits the host name.
    Chain,
    /// First contact: neither; recorded to be compared by a person and pinned.
    FirstContact,
}

/// The end-entity certificate a client last met, and why it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenCert {
    /// Its SHA-256 fingerprint.
    pub fingerprint: Fingerprint,
    /// Why it was accepted.
    pub accepted: Accepted,
}

/// What the verifier saw, for messages: the last accepted certificate and the
/// last refusal (with the fix).
#[derive(Debug, Default)]
pub struct TrustLog {
    seen: Mutex<Option<SeenCert>>,
    refusal: Mutex<Option<String>>,
}

impl TrustLog {
    /// The last certificate accepted.
    pub fn seen(&self) -> Option<SeenCert> {
        *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The last refusal's explanation (taken: a later failure starts afresh).
    pub fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn accept(&self, fingerprint: Fingerprint, accepted: Accepted) {
        *self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SeenCert { fingerprint, accepted });
    }

    fn refuse(&self, why: String) {
        *self.refusal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }
}

/// A certificate refused by [`Trust`]: carried inside the rustls error, so the
/// TLS alert and every error chain say why.
#[derive(Debug)]
struct Untrusted(String);

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untrusted {}

#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<Fingerprint>,
    /// The CA file's certificates, each also accepted as is.
    exact: Vec<Fingerprint>,
    webpki: Arc<WebPkiServerVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
    first_contact: bool,
    log: Arc<TrustLog>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if self.pin == Some(fingerprint) || self.exact.contains(&fingerprint) {
            self.log.accept(fingerprint, Accepted::Pinned);
            return Ok(ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(verified) => {
                self.log.accept(fingerprint, Accepted::Chain);
                Ok(verified)
            }
            Err(_) if self.first_contact => {
                self.log.accept(fingerprint, Accepted::FirstContact);
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => {
                let why = match self.pin {
                    Some(pin) => format!(
                        "the server's TLS certificate (SHA-256 {fingerprint}) is not the one pinned at pairing/enrollment (SHA-256 {pin}) and no trusted CA vouches for it ({e}). If the server's certificate was replaced on purpose (`agentkeys serve` prints its fingerprint), trust the new one: an agent pairs again (`agentkeys agent pair --server URL`), an owner runs the command once with `--server-fingerprint {fingerprint}` (it is pinned again); or set {CA_FILE_ENV} to the new certificate. Otherwise something is intercepting the connection: do not go on"
                    ),
                    None => format!(
                        "the server's TLS certificate (SHA-256 {fingerprint}) is not trusted ({e}). Compare it with the fingerprint `agentkeys serve` printed (ask the operator); if they match, trust it with `--server-fingerprint {fingerprint}` (owner commands; it is then pinned) or {SERVER_FINGERPRINT_ENV} (the agent), or set {CA_FILE_ENV} to the server's certificate. An agent that pairs (`agentkeys agent pair --server URL`) pins it for good"
                    ),
                };
                self.log.refuse(why.clone());
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    Untrusted(why),
                )))))
            }
        }
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads the CA file's certificates.
fn ca_certificates(trust: &Trust) -> Result<Vec<CertificateDer<'static>>, String> {
    let Some(path) = &trust.ca_file else { return Ok(Vec::new()) };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| format!("cannot read {} ({CA_FILE_ENV} / --ca-file): {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} ({CA_FILE_ENV} / --ca-file) holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A rustls client configuration for `trust` (TLS 1.2 and 1.3 only), and the
/// log its verifier writes. `alpn`: the protocols to offer (`http/1.1` for the API).
pub fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<(Arc<ClientConfig>, Arc<TrustLog>), String> {
    let provider = provider();
    let extra = ca_certificates(trust)?;
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    // A certificate that cannot be an anchor (a self-signed leaf webpki refuses
    // as a CA) is still accepted as is, through `exact`.
    let exact: Vec<Fingerprint> = extra.iter().map(|c| Fingerprint::of(c)).collect();
    roots.add_parsable_certificates(extra);
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let log = Arc::new(TrustLog::default());
    let verifier = PinnedVerifier {
        pin: trust.pin,
        exact,
        webpki,
        algorithms: provider.signature_verification_algorithms,
        first_contact: trust.first_contact,
        log: Arc::clone(&log),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_in_every_accepted_spelling() {
        let f = Fingerprint::of(b"not really a certificate");
        let shown = f.to_string();
        assert_eq!(shown.len(), 95);
        for spelling in [
            shown.clone(),
            shown.to_ascii_lowercase(),
            shown.replace(':', ""),
            format!("SHA256:{shown}"),
            format!("sha256={}", shown.replace(':', "")),
            format!("  {shown}\n"),
        ] {
            assert_eq!(spelling.parse::<Fingerprint>().unwrap(), f, "{spelling}");
        }
        for bad in ["", "AB", &shown[..94], &format!("{shown}:00"), &shown.replace('A', "G"), &shown.replacen(':', "", 1), &"+1".repeat(32)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Every digest prints as 32 colon-joined pairs that parse back to it,
        /// with or without colons and in either case; any other string of hex
        /// digits and colons parses only if it has exactly 64 digits in pairs.
        #[test]
        fn display_and_parse_agree(bytes in proptest::array::uniform32(proptest::num::u8::ANY), noise in "[0-9a-fA-F:]{0,100}") {
            let f = Fingerprint(bytes);
            let shown = f.to_string();
            proptest::prop_assert_eq!(shown.parse::<Fingerprint>().unwrap(), f);
            proptest::prop_assert_eq!(shown.replace(':', "").to_ascii_lowercase().parse::<Fingerprint>().unwrap(), f);
            let digits = noise.chars().filter(char::is_ascii_hexdigit).count();
            let well_formed = if noise.contains(':') {
                noise.split(':').count() == 32 && noise.split(':').all(|p| p.len() == 2)
            } else {
                digits == 64
            };
            proptest::prop_assert_eq!(noise.parse::<Fingerprint>().is_ok(), well_formed, "{}", noise);
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing\n").unwrap();
        let e = client_config(&Trust { ca_file: Some(empty), ..Trust::default() }, &[]).unwrap_err();
        assert!(e.contains("holds no certificate") && e.contains(CA_FILE_ENV), "{e}");
        let e = client_config(&Trust { ca_file: Some(dir.path().join("missing.pem")), ..Trust::default() }, &[]).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
