//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): the
//! headers `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`, a space-separated list of `v1,<base64 of
//! HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`, one per secret that signs
//! (during a rotation's overlap, the new and the previous one).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::secret::WebhookSecret;

/// Header of the delivery id.
pub const HEADER_ID: &str = "webhook-id";
/// Header of the signing time.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header of the signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// `v1,<base64>` of one secret over `id.timestamp.body`.
pub fn sign_one(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts any key length"),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` value: one `v1,…` per secret, space-separated.
pub fn signature_header(secrets: &[&WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|s| sign_one(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of the Standard Webhooks specification (and of its reference
    /// libraries' tests): secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`.
    #[test]
    fn the_specification_example_signs_as_the_reference_libraries_do() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let secret = WebhookSecret::from_bytes_for_tests(key);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign_one(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_signing_secret_gets_its_own_signature() {
        let (a, b) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[&a, &b], "msg_1", 5, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [sign_one(&a, "msg_1", 5, b"{}"), sign_one(&b, "msg_1", 5, b"{}")]);
        assert_ne!(parts[0], parts[1]);
    }
}
