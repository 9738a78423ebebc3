//! DKIM signing of outbound mail (RFC 6376 with `rsa-sha256`, RFC 8463 with
//! `ed25519-sha256`), through `mail-auth` on its aws-lc-rs backend.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::DkimError;
use crate::keys::Selectors;

/// The header fields the signatures cover, when present. Trace and transport
/// headers (`Received`, `Return-Path`) are left out: relays add and rewrite them.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Makes message bytes safe to relay: every bare CR and bare LF becomes CRLF, and
/// the message ends with CRLF.
///
/// After this no line ending other than CRLF exists, so no SMTP-smuggling
/// sequence (`<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>`…) can be in what we sign or
/// send, and what the receiver canonicalizes is what we hashed. Dot-stuffing
/// (a leading `.` doubled) is NOT done here: it belongs to the SMTP transfer and is
/// undone by the receiver, so the SMTP client applies it on the wire.
pub fn normalize_for_relay(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Empties the whitespace-only lines at the end of the body ("  \r\n" becomes
/// "\r\n"). Relaxed body canonicalization (RFC 6376 §3.4.4) treats them as empty
/// trailing lines and drops them, but mail-auth 0.13 hashes them, so independent
/// verifiers (dkimpy) would compute another body hash. The change is invisible:
/// the same lines remain, without their trailing blanks.
fn clear_trailing_blank_lines(message: &mut Vec<u8>) {
    let Some(sep) = message.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let body_start = sep + 4;
    let mut lines: Vec<&[u8]> = message[body_start..].split_inclusive(|&b| b == b'\n').collect();
    let blank = |l: &[u8]| l.strip_suffix(b"\r\n").unwrap_or(l).iter().all(|&b| b == b' ' || b == b'\t');
    let trailing = lines.iter().rev().take_while(|l| blank(l)).count();
    if trailing == 0 || lines.iter().rev().take(trailing).all(|l| *l == b"\r\n") {
        return;
    }
    let keep = lines.len() - trailing;
    lines.truncate(keep);
    let mut body: Vec<u8> = lines.concat();
    for _ in 0..trailing {
        body.extend_from_slice(b"\r\n");
    }
    message.truncate(body_start);
    message.extend_from_slice(&body);
}

/// Signs messages of one domain with its RSA and Ed25519 keys, relaxed/relaxed.
pub struct DkimSigner {
    rsa: mail_auth::dkim::DkimSigner<RsaKey<Sha256>, Done>,
    ed: mail_auth::dkim::DkimSigner<Ed25519Key, Done>,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DkimSigner(<keys redacted>)")
    }
}

impl DkimSigner {
    /// Builds a signer from the Ed25519 seed and public key and the RSA key (PKCS#8 DER).
    pub(crate) fn new(
        domain: &str,
        selectors: &Selectors,
        ed_seed: &[u8],
        ed_public: &[u8],
        rsa_pkcs8: &[u8],
    ) -> Result<Self, DkimError> {
        let rsa_key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(rsa_pkcs8.to_vec())))
            .map_err(|e| DkimError::Sign(format!("RSA key: {e}")))?;
        let ed_key = Ed25519Key::from_seed_and_public_key(ed_seed, ed_public)
            .map_err(|e| DkimError::Sign(format!("Ed25519 key: {e}")))?;
        let rsa = mail_auth::dkim::DkimSigner::from_key(rsa_key)
            .domain(domain)
            .selector(selectors.rsa.as_str())
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let ed = mail_auth::dkim::DkimSigner::from_key(ed_key)
            .domain(domain)
            .selector(selectors.ed25519.as_str())
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Self { rsa, ed })
    }

    /// Normalizes `message` with [`normalize_for_relay`], then prepends two
    /// `DKIM-Signature` headers: `rsa-sha256` first, then `ed25519-sha256`.
    /// [`DkimError::Sign`] if the message has none of the [`SIGNED_HEADERS`].
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let mut normalized = normalize_for_relay(message);
        clear_trailing_blank_lines(&mut normalized);
        let rsa = self.rsa.sign(&normalized).map_err(|e| DkimError::Sign(format!("rsa-sha256: {e}")))?;
        let ed = self.ed.sign(&normalized).map_err(|e| DkimError::Sign(format!("ed25519-sha256: {e}")))?;
        let rsa = rsa.to_header();
        let ed = ed.to_header();
        let mut out = Vec::with_capacity(rsa.len() + ed.len() + normalized.len());
        out.extend_from_slice(rsa.as_bytes());
        out.extend_from_slice(ed.as_bytes());
        out.extend_from_slice(&normalized);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_whitespace_only_lines_are_emptied() {
        let mut m = b"S: x\r\n\r\na  \r\n \t\r\n  \r\n".to_vec();
        clear_trailing_blank_lines(&mut m);
        assert_eq!(m, b"S: x\r\n\r\na  \r\n\r\n\r\n");
        let mut m = b"S: x\r\n\r\n  \r\nb\r\n".to_vec();
        clear_trailing_blank_lines(&mut m);
        assert_eq!(m, b"S: x\r\n\r\n  \r\nb\r\n");
    }

    #[test]
    fn bare_cr_and_lf_become_crlf_and_smuggling_sequences_disappear() {
        assert_eq!(normalize_for_relay(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(normalize_for_relay(b"x\r\n.\n.\r\r\n"), b"x\r\n.\r\n.\r\n\r\n");
        assert_eq!(normalize_for_relay(b""), b"");
        assert_eq!(normalize_for_relay(b"\r\r\n\n"), b"\r\n\r\n\r\n");
        for input in [&b"a\n.\nb"[..], b"a\r.\rb", b"a\n.\r\nb", b"a\r\n.\nb", b"a\r\n.\rb"] {
            let out = normalize_for_relay(input);
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(out[i - 1], b'\r', "{input:?}");
                }
                if b == b'\r' {
                    assert_eq!(out[i + 1], b'\n', "{input:?}");
                }
            }
        }
    }
}
