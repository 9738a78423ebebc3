//! AWS Signature Version 4 in headers (`Authorization`), for the SES and STS
//! query APIs: a POST of a form body to `/`, the body's SHA-256 signed.
//!
//! rusty-s3 (already in the workspace for the S3 blob store) signs S3
//! requests, and we use it for the bucket; its `sign` is fixed to the `s3`
//! service and leaves the payload unsigned, so it cannot sign an SES call.
//! This is the one other request shape we need, with no I/O: the canonical
//! request, the string to sign and the derived key of the AWS documentation,
//! checked against AWS's published `get-vanilla` vector and against botocore.

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// Short-lived or static AWS credentials. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// The access key id (not a secret).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: zeroize::Zeroizing<String>,
    /// The session token of temporary credentials.
    pub session_token: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length: the error cannot happen.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return Vec::new() };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The headers to send with a `POST /` of `body` to `host` (plus
/// `content-type`): `x-amz-date`, `x-amz-security-token` for temporary
/// credentials, and `authorization`. `amz_date` is `YYYYMMDDTHHMMSSZ`.
pub fn sign_post(
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    host: &str,
    content_type: &str,
    body: &[u8],
    amz_date: &str,
) -> Vec<(&'static str, String)> {
    sign_post_with_target(credentials, region, service, host, content_type, None, body, amz_date)
}

/// [`sign_post`] with an `x-amz-target` header signed too (AWS's JSON
/// protocol, e.g. `AmazonSQS.ReceiveMessage`).
#[allow(clippy::too_many_arguments)]
pub fn sign_post_with_target(
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    host: &str,
    content_type: &str,
    target: Option<&str>,
    body: &[u8],
    amz_date: &str,
) -> Vec<(&'static str, String)> {
    let date = &amz_date[..amz_date.len().min(8)];
    let mut headers: Vec<(&'static str, String)> =
        vec![("content-type", content_type.to_owned()), ("host", host.to_owned()), ("x-amz-date", amz_date.to_owned())];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token.as_str().to_owned()));
    }
    // Canonical headers are sorted: x-amz-target comes after x-amz-security-token.
    if let Some(target) = target {
        headers.push(("x-amz-target", target.to_owned()));
    }
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
    let signed_headers = headers.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
    let canonical_request =
        format!("POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}", hex(&Sha256::digest(body)));
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let mut key = hmac(format!("AWS4{}", credentials.secret_access_key.as_str()).as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    headers.retain(|(k, _)| *k != "host");
    headers.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            credentials.access_key_id
        ),
    ));
    headers
}

/// The signature of AWS's `get-vanilla` vector (a `GET /` with no body), to
/// check the key derivation and string to sign against AWS's own numbers.
#[cfg(test)]
fn sign_get_vanilla(credentials: &AwsCredentials, amz_date: &str) -> String {
    let date = &amz_date[..8];
    let canonical_request = format!(
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:{amz_date}\n\nhost;x-amz-date\n{}",
        hex(&Sha256::digest(b""))
    );
    let scope = format!("{date}/us-east-1/service/aws4_request");
    let string_to_sign =
        format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
    let mut key = hmac(format!("AWS4{}", credentials.secret_access_key.as_str()).as_bytes(), date.as_bytes());
    for part in ["us-east-1", "service", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hex(&hmac(&key, string_to_sign.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: zeroize::Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            session_token: token.map(|t| zeroize::Zeroizing::new(t.to_owned())),
        }
    }

    /// AWS's signature test suite, `get-vanilla`.
    #[test]
    fn the_aws_get_vanilla_vector() {
        assert_eq!(
            sign_get_vanilla(&example(None), "20150830T123600Z"),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// An SES `SendRawEmail` form signed by botocore 1.x (`SigV4Auth(creds,
    /// "ses", "us-east-1")` at 2015-08-30T12:36:00Z): the same headers, the same signature.
    #[test]
    fn a_ses_post_signed_as_botocore_signs_it() {
        let headers = sign_post(
            &example(Some("SESSIONTOKEN")),
            "us-east-1",
            "ses",
            "email.us-east-1.amazonaws.com",
            "application/x-www-form-urlencoded; charset=utf-8",
            b"Action=SendRawEmail&RawMessage.Data=SGk%3D&Version=2010-12-01",
            "20150830T123600Z",
        );
        let auth = &headers.iter().find(|(k, _)| *k == "authorization").unwrap().1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ses/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
             Signature=bb46fe2ae4892a5cfe12120d53513001d943d406b9e93e06a9c0e56077632b6f"
        );
        assert!(headers.iter().any(|(k, v)| *k == "x-amz-security-token" && v == "SESSIONTOKEN"));
        assert!(!format!("{:?}", example(Some("SESSIONTOKEN"))).contains("EXAMPLEKEY"));
    }
}
