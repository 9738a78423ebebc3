//! XOAUTH2 for the IMAP/SMTP backend: the provider login is an OAuth2 access
//! token, obtained with the refresh-token grant (RFC 6749 §6) from the
//! provider's token endpoint, cached, and refreshed [`REFRESH_MARGIN`] before
//! it expires (and once more when the provider refuses a cached token, which
//! may have expired early). The client secret and refresh token are sealed in
//! the store like a password; tokens are never logged.
//!
//! A token endpoint that refuses the grant (HTTP 400/401, `invalid_grant`: the
//! refresh token was revoked) is a refused login: the follower reports it and
//! waits [`AUTH_FAILED_BACKOFF`](crate::AUTH_FAILED_BACKOFF), never retrying in a tight loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use crate::Credential;
use crate::ses::aws::{AwsError, http};

/// How long before its expiry a cached access token is replaced (at most half
/// its lifetime, for tokens that live less than twice this).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The lifetime assumed when the endpoint names none (`expires_in` is optional).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest access token accepted from an endpoint.
pub const MAX_ACCESS_TOKEN_BYTES: usize = 4096;

/// The sealed half of an OAuth2 login (stored as JSON in the sealed credential).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Secrets {
    /// The OAuth client id.
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: String,
    /// The refresh token the operator obtained once, with consent.
    pub refresh_token: String,
}

impl std::fmt::Debug for OAuth2Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Secrets").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

impl OAuth2Secrets {
    /// The secrets as one sealable credential.
    pub fn to_credential(&self) -> Result<Credential, String> {
        let text = Zeroizing::new(serde_json::to_string(self).map_err(|e| e.to_string())?);
        Credential::new(text.to_string()).map_err(|e| e.replace("the password", "the OAuth2 secrets"))
    }

    /// The secrets back from what [`to_credential`](Self::to_credential) made.
    pub fn from_credential(credential: &Credential) -> Result<Self, String> {
        serde_json::from_str(credential.expose()).map_err(|_| "the sealed OAuth2 secrets are not readable".to_owned())
    }
}

/// Checks a token endpoint: https, or http on a loopback host only (tests).
pub fn check_token_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("token URL {text:?}: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(format!("token URL {text:?} has no host")),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(format!("token URL {text:?} must be https (http only on loopback)")),
    }
}

/// Why no access token was obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint refused the grant (a revoked or wrong refresh token,
    /// a wrong client): retrying cannot help until the operator acts.
    #[error("the token endpoint refused the refresh token: {0}")]
    Refused(String),
    /// No usable answer (connection, timeout, 5xx, unreadable): retry later.
    #[error("the token endpoint failed: {0}")]
    Failed(String),
}

struct Cached {
    token: Credential,
    refresh_at: Instant,
}

/// One login's access tokens: fetched on demand, cached until
/// [`REFRESH_MARGIN`] before expiry. Shared by the IMAP follower and the
/// submission sink of a domain.
pub struct TokenSource {
    url: Url,
    secrets: OAuth2Secrets,
    tls: Arc<rustls::ClientConfig>,
    cache: tokio::sync::Mutex<Option<Cached>>,
    refreshes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

/// The refresh time of a token living `lifetime`.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 2))
}

/// What a token endpoint answered, read: the token and its lifetime.
pub fn read_token_answer(status: u16, body: &[u8]) -> Result<(Credential, Duration), TokenError> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let error = json.get("error").and_then(|v| v.as_str()).unwrap_or("").chars().filter(char::is_ascii_graphic).take(100);
        let error: String = error.collect();
        let why = format!("HTTP {status} {error}").trim().to_owned();
        // RFC 6749 §5.2: 400 (invalid_grant, invalid_client, …) and 401 are refusals.
        return Err(if status == 400 || status == 401 { TokenError::Refused(why) } else { TokenError::Failed(why) });
    }
    let token = json.get("access_token").and_then(|v| v.as_str()).unwrap_or("");
    if token.is_empty() || token.len() > MAX_ACCESS_TOKEN_BYTES || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(TokenError::Failed("the answer has no usable access_token".to_owned()));
    }
    let lifetime = json.get("expires_in").and_then(serde_json::Value::as_u64).map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    let token = Credential::new(token.to_owned()).map_err(|e| TokenError::Failed(e.replace("the password", "the access token")))?;
    Ok((token, lifetime))
}

impl TokenSource {
    /// A source over `url` (checked by [`check_token_url`]) and the secrets.
    pub fn new(url: Url, secrets: OAuth2Secrets, tls: Arc<rustls::ClientConfig>) -> Self {
        Self { url, secrets, tls, cache: tokio::sync::Mutex::new(None), refreshes: 0.into() }
    }

    /// Refresh-token grants requested so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token, and whether it was just obtained (a refused
    /// fresh token is a refused login; a refused cached one is
    /// [`forget`](Self::forget)-ten and tried once more).
    pub async fn token(&self) -> Result<(Credential, bool), TokenError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok((cached.token.clone(), false));
        }
        *cache = None;
        let (token, lifetime) = self.refresh().await?;
        *cache = Some(Cached { token: token.clone(), refresh_at: Instant::now() + refresh_after(lifetime) });
        Ok((token, true))
    }

    /// Drops the cached token (the provider refused it).
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
    }

    async fn refresh(&self) -> Result<(Credential, Duration), TokenError> {
        self.refreshes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "refresh_token"),
                    ("refresh_token", self.secrets.refresh_token.as_str()),
                    ("client_id", self.secrets.client_id.as_str()),
                    ("client_secret", self.secrets.client_secret.as_str()),
                ])
                .finish(),
        );
        let headers = [
            ("content-type", "application/x-www-form-urlencoded".to_owned()),
            ("accept", "application/json".to_owned()),
        ];
        let answer = http(&self.tls, "oauth2", Method::POST, &self.url, &headers, Bytes::from(form.as_bytes().to_vec())).await;
        match answer {
            Ok((status, body)) => read_token_answer(status, &body),
            Err(AwsError::Transport { detail, .. }) => Err(TokenError::Failed(detail)),
            Err(other) => Err(TokenError::Failed(other.to_string())),
        }
    }
}

/// The SASL XOAUTH2 initial response (before base64): `user=U^Aauth=Bearer T^A^A`.
pub fn xoauth2_response(username: &str, token: &Credential) -> Zeroizing<String> {
    Zeroizing::new(format!("user={username}\x01auth=Bearer {}\x01\x01", token.expose()))
}

/// async-imap's side of `AUTHENTICATE XOAUTH2`: answers the (empty)
/// challenge with the initial response; a second challenge (the error JSON
/// the server sends before its NO) is answered empty, as the mechanism says.
pub(crate) struct XOAuth2 {
    pub(crate) response: Option<Zeroizing<String>>,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> Self::Response {
        self.response.take().map(|r| r.to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn token_urls_are_https_or_loopback_http() {
        assert!(check_token_url("https://oauth2.googleapis.com/token").is_ok());
        assert!(check_token_url("http://127.0.0.1:24001/token").is_ok());
        assert!(check_token_url("http://localhost:1/token").is_ok());
        assert!(check_token_url("http://[::1]:1/token").is_ok());
        assert!(check_token_url("http://oauth.example.com/token").unwrap_err().contains("must be https"));
        assert!(check_token_url("ftp://127.0.0.1/").is_err());
        assert!(check_token_url("not a url").is_err());
    }

    #[test]
    fn token_answers_are_read_and_refusals_told_apart() {
        let (token, lifetime) = read_token_answer(200, br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#).unwrap();
        assert_eq!((token.expose(), lifetime), ("ya29.abc", Duration::from_secs(3599)));
        let (_, lifetime) = read_token_answer(200, br#"{"access_token":"t"}"#).unwrap();
        assert_eq!(lifetime, DEFAULT_TOKEN_LIFETIME);
        assert_eq!(
            read_token_answer(400, br#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#).unwrap_err(),
            TokenError::Refused("HTTP 400 invalid_grant".to_owned())
        );
        assert!(matches!(read_token_answer(401, b""), Err(TokenError::Refused(_))));
        assert!(matches!(read_token_answer(503, b"busy"), Err(TokenError::Failed(_))));
        assert!(matches!(read_token_answer(200, br#"{"access_token":""}"#), Err(TokenError::Failed(_))));
        assert!(matches!(read_token_answer(200, br#"{"access_token":"a b"}"#), Err(TokenError::Failed(_))));
        let long = format!(r#"{{"access_token":"{}"}}"#, "x".repeat(MAX_ACCESS_TOKEN_BYTES + 1));
        assert!(matches!(read_token_answer(200, long.as_bytes()), Err(TokenError::Failed(_))));
    }

    #[test]
    fn tokens_are_refreshed_before_expiry() {
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_after(Duration::from_secs(4)), Duration::from_secs(2), "short lives keep half");
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_sasl_string_and_secrets_round_trip_without_printing() {
        let token = Credential::new("tok".to_owned()).unwrap();
        assert_eq!(xoauth2_response("me@x.test", &token).as_str(), "user=me@x.test\x01auth=Bearer tok\x01\x01");
        let secrets = OAuth2Secrets { client_id: "cid".into(), client_secret: "csecret".into(), refresh_token: "rtok".into() };
        let credential = secrets.to_credential().unwrap();
        let back = OAuth2Secrets::from_credential(&credential).unwrap();
        assert_eq!((back.client_id.as_str(), back.refresh_token.as_str()), ("cid", "rtok"));
        assert!(!format!("{secrets:?}").contains("csecret") && !format!("{secrets:?}").contains("rtok"));
        assert!(OAuth2Secrets::from_credential(&Credential::new("plain-password".into()).unwrap()).is_err());
    }
}
