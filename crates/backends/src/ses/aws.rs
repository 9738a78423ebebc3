//! The AWS side of the SES backend: one HTTP request at a time (hyper over
//! TCP or rustls, certificates validated), STS `AssumeRoleWithWebIdentity`
//! with our own OIDC token, a credential cache refreshed before expiry, the
//! bucket through rusty-s3 (presigned `ListObjectsV2` and `GetObject`), and
//! SES `SendRawEmail` signed by [`sigv4`](super::sigv4).
//!
//! Why not the AWS SDK: `aws-sdk-s3`, `-sesv2` and `-sts` with their runtime
//! add some 150 crates and several minutes of build on our 2-core builders,
//! for three calls. The workspace already carries rusty-s3 (S3 signing and the
//! listing parser), hyper, rustls, hmac and sha2.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;
use zeroize::Zeroizing;

use super::sigv4::{AwsCredentials, sign_post, sign_post_with_target};
use crate::PROVIDER_TIMEOUT;

/// Most bytes read of an STS, SES or listing answer.
pub const MAX_API_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Cached credentials are replaced when they have less than this left.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The session length asked of STS (its minimum is 900 s).
pub const SESSION_SECONDS: u64 = 3600;
/// The lifetime of the OIDC token presented to STS (it is used at once).
pub const WEB_IDENTITY_TOKEN_TTL: i64 = 300;
/// How long a presigned S3 URL is valid (it is used at once).
const PRESIGN_TTL: Duration = Duration::from_secs(120);

/// Mints the OIDC tokens the server presents to STS: our own issuer's ES256
/// tokens (the `oidc` module of the broker), `agentkeys_user_wallet` = `wallet`.
pub trait WebIdentityTokens: Send + Sync + 'static {
    /// A token for a session on behalf of `wallet`, valid `ttl` seconds.
    fn mint(&self, wallet: &str, ttl: i64) -> Result<String, String>;
}

/// Why an AWS call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// No answer (connection, TLS, timeout).
    #[error("{service}: {detail}")]
    Transport {
        /// `sts`, `s3` or `ses`.
        service: &'static str,
        /// What failed.
        detail: String,
    },
    /// AWS answered with an error.
    #[error("{service}: HTTP {status} {code}: {message}")]
    Refused {
        /// `sts`, `s3` or `ses`.
        service: &'static str,
        /// The HTTP status.
        status: u16,
        /// AWS's error code (`Throttling`, `MessageRejected`, …).
        code: String,
        /// AWS's message.
        message: String,
    },
    /// An answer we cannot read.
    #[error("{service}: unreadable answer: {detail}")]
    Malformed {
        /// `sts`, `s3` or `ses`.
        service: &'static str,
        /// What was wrong.
        detail: String,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 request on its own connection, under [`PROVIDER_TIMEOUT`].
pub(crate) async fn http(
    tls: &Arc<rustls::ClientConfig>,
    service: &'static str,
    method: Method,
    url: &Url,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<(u16, Bytes), AwsError> {
    let failed = |detail: String| AwsError::Transport { service, detail };
    let request = async {
        let host = url.host_str().ok_or_else(|| failed(format!("{url} has no host")))?.to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port))
            .await
            .map_err(|e| failed(format!("cannot connect to {host}:{port}: {e}")))?;
        let stream: Box<dyn Io> = if url.scheme() == "https" {
            let name = ServerName::try_from(host.clone()).map_err(|e| failed(format!("{host}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| failed(format!("TLS with {host}:{port}: {e}")))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(format!("HTTP with {host}:{port}: {e}")))?;
        let conn = tokio::spawn(conn);
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let mut builder = hyper::Request::builder().method(method).uri(path).header("host", authority);
        for (name, value) in headers {
            if *name != "host" {
                builder = builder.header(*name, value.as_str());
            }
        }
        let request = builder.body(Full::new(body)).map_err(|e| failed(format!("cannot build the request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| failed(format!("{host}:{port}: {e}")))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_API_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer of {host}:{port}: {e}")))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    };
    match tokio::time::timeout(PROVIDER_TIMEOUT, request).await {
        Ok(result) => result,
        Err(_) => Err(failed(format!("no answer within {PROVIDER_TIMEOUT:?}"))),
    }
}

/// The text of the first `<name>…</name>` element of an AWS XML answer, the
/// five XML entities decoded. AWS's query-API answers (STS, SES) and error
/// documents put each value we read in an element of its own, with no
/// attributes and no children; anything else is `None`.
pub fn xml_text(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let raw = xml[start..end].trim();
    if raw.contains('<') {
        return None;
    }
    Some(raw.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&"))
}

fn refusal(service: &'static str, status: u16, body: &[u8]) -> AwsError {
    let text = String::from_utf8_lossy(body);
    AwsError::Refused {
        service,
        status,
        code: xml_text(&text, "Code").unwrap_or_else(|| format!("HTTP{status}")),
        message: xml_text(&text, "Message").unwrap_or_default(),
    }
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// Where each service is reached: AWS's regional endpoints, or one endpoint
/// for all three (an emulator).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The region.
    pub region: String,
    /// STS.
    pub sts: Url,
    /// SES (the v1 query API).
    pub ses: Url,
    /// S3.
    pub s3: Url,
    /// Path-style bucket URLs (emulators), else virtual-hosted.
    pub path_style: bool,
}

impl Endpoints {
    /// AWS's endpoints in `region`, or `endpoint` for every service.
    pub fn new(region: &str, endpoint: Option<&str>) -> Result<Self, String> {
        let parse = |s: &str| Url::parse(s).map_err(|e| format!("endpoint {s:?}: {e}"));
        Ok(match endpoint {
            Some(e) => {
                let url = parse(e)?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(format!("endpoint {e:?} must be an http:// or https:// URL with a host"));
                }
                Self { region: region.to_owned(), sts: url.clone(), ses: url.clone(), s3: url, path_style: true }
            }
            None => Self {
                region: region.to_owned(),
                sts: parse(&format!("https://sts.{region}.amazonaws.com/"))?,
                ses: parse(&format!("https://email.{region}.amazonaws.com/"))?,
                s3: parse(&format!("https://s3.{region}.amazonaws.com/"))?,
                path_style: false,
            },
        })
    }
}

/// Where credentials come from.
pub enum CredentialSource {
    /// `AssumeRoleWithWebIdentity` into `role_arn` with our own OIDC token.
    WebIdentity {
        /// The role assumed.
        role_arn: String,
        /// Our issuer.
        tokens: Arc<dyn WebIdentityTokens>,
    },
    /// Static keys (the explicit fallback).
    Static(AwsCredentials),
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WebIdentity { role_arn, .. } => f.debug_struct("WebIdentity").field("role_arn", role_arn).finish(),
            Self::Static(c) => f.debug_tuple("Static").field(c).finish(),
        }
    }
}

/// Credentials per session wallet, from [`CredentialSource`], reused until
/// [`REFRESH_BEFORE_EXPIRY`] before they expire.
#[derive(Debug)]
pub struct CredentialCache {
    source: CredentialSource,
    endpoints: Endpoints,
    tls: Arc<rustls::ClientConfig>,
    session_name: String,
    cached: tokio::sync::Mutex<HashMap<String, (AwsCredentials, jiff::Timestamp)>>,
    /// STS calls made (for tests and metrics).
    pub sts_calls: std::sync::atomic::AtomicU64,
}

impl CredentialCache {
    /// A cache over `source`; `session_name` names the STS sessions.
    pub fn new(source: CredentialSource, endpoints: Endpoints, tls: Arc<rustls::ClientConfig>, session_name: String) -> Self {
        let session_name: String =
            session_name.chars().map(|c| if c.is_ascii_alphanumeric() || "=,.@-".contains(c) { c } else { '-' }).take(64).collect();
        Self { source, endpoints, tls, session_name, cached: tokio::sync::Mutex::new(HashMap::new()), sts_calls: 0.into() }
    }

    /// Credentials for calls on behalf of `wallet` (the owner's id, or
    /// `server` for the server's own calls).
    pub async fn get(&self, wallet: &str) -> Result<AwsCredentials, AwsError> {
        let (role_arn, tokens) = match &self.source {
            CredentialSource::Static(c) => return Ok(c.clone()),
            CredentialSource::WebIdentity { role_arn, tokens } => (role_arn, tokens),
        };
        let mut cached = self.cached.lock().await;
        let now = jiff::Timestamp::now();
        if let Some((credentials, expires)) = cached.get(wallet)
            && now + REFRESH_BEFORE_EXPIRY < *expires
        {
            return Ok(credentials.clone());
        }
        let token = Zeroizing::new(
            tokens.mint(wallet, WEB_IDENTITY_TOKEN_TTL).map_err(|detail| AwsError::Transport { service: "sts", detail })?,
        );
        let duration = SESSION_SECONDS.to_string();
        let body = form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn.as_str()),
            ("RoleSessionName", self.session_name.as_str()),
            ("WebIdentityToken", token.as_str()),
            ("DurationSeconds", duration.as_str()),
        ]);
        self.sts_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Unsigned: the web identity token is the credential.
        let headers = [("content-type", "application/x-www-form-urlencoded; charset=utf-8".to_owned())];
        let (status, answer) = http(&self.tls, "sts", Method::POST, &self.endpoints.sts, &headers, body.into()).await?;
        if !(200..300).contains(&status) {
            return Err(refusal("sts", status, &answer));
        }
        let text = String::from_utf8_lossy(&answer);
        let field = |name: &str| {
            xml_text(&text, name).ok_or_else(|| AwsError::Malformed { service: "sts", detail: format!("no {name}") })
        };
        let credentials = AwsCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: Zeroizing::new(field("SecretAccessKey")?),
            session_token: Some(Zeroizing::new(field("SessionToken")?)),
        };
        let expires: jiff::Timestamp = field("Expiration")?
            .parse()
            .map_err(|e| AwsError::Malformed { service: "sts", detail: format!("Expiration: {e}") })?;
        tracing::info!(role = %role_arn, %wallet, %expires, "SES backend: assumed the role with our OIDC token");
        cached.insert(wallet.to_owned(), (credentials.clone(), expires));
        Ok(credentials)
    }

    /// Forgets `wallet`'s credentials (AWS said they expired or are invalid).
    pub async fn forget(&self, wallet: &str) {
        self.cached.lock().await.remove(wallet);
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its last-modified time.
    pub last_modified: jiff::Timestamp,
    /// Its size, if listed.
    pub size: Option<u64>,
}

/// A page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    /// The objects.
    pub objects: Vec<Listed>,
    /// The token of the next page.
    pub next: Option<String>,
}

fn bucket(endpoints: &Endpoints, name: &str) -> Result<rusty_s3::Bucket, AwsError> {
    let style = if endpoints.path_style { rusty_s3::UrlStyle::Path } else { rusty_s3::UrlStyle::VirtualHost };
    rusty_s3::Bucket::new(endpoints.s3.clone(), style, name.to_owned(), endpoints.region.clone())
        .map_err(|e| AwsError::Malformed { service: "s3", detail: format!("cannot address bucket {name:?}: {e:?}") })
}

fn s3_credentials(c: &AwsCredentials) -> rusty_s3::Credentials {
    match &c.session_token {
        Some(token) => rusty_s3::Credentials::new_with_token(c.access_key_id.clone(), c.secret_access_key.as_str(), token.as_str()),
        None => rusty_s3::Credentials::new(c.access_key_id.clone(), c.secret_access_key.as_str()),
    }
}

/// One `ListObjectsV2` page of `prefix`.
pub async fn list_page(
    tls: &Arc<rustls::ClientConfig>,
    endpoints: &Endpoints,
    credentials: &AwsCredentials,
    bucket_name: &str,
    prefix: &str,
    token: Option<&str>,
) -> Result<Page, AwsError> {
    use rusty_s3::S3Action as _;
    let bucket = bucket(endpoints, bucket_name)?;
    let creds = s3_credentials(credentials);
    let mut action = bucket.list_objects_v2(Some(&creds));
    action.with_prefix(prefix);
    action.with_max_keys(1000);
    if let Some(token) = token {
        action.with_continuation_token(token);
    }
    let url = action.sign(PRESIGN_TTL);
    let (status, body) = http(tls, "s3", Method::GET, &url, &[], Bytes::new()).await?;
    if !(200..300).contains(&status) {
        return Err(refusal("s3", status, &body));
    }
    let malformed = |detail: String| AwsError::Malformed { service: "s3", detail };
    let text = std::str::from_utf8(&body).map_err(|e| malformed(format!("listing not UTF-8: {e}")))?;
    let page = rusty_s3::actions::ListObjectsV2::parse_response(text).map_err(|e| malformed(format!("listing: {e}")))?;
    let mut objects = Vec::with_capacity(page.contents.len());
    for object in page.contents {
        let Some(modified) = object.last_modified.as_deref() else {
            return Err(malformed(format!("{} has no LastModified", object.key)));
        };
        let last_modified = modified.parse().map_err(|e| malformed(format!("LastModified {modified:?}: {e}")))?;
        objects.push(Listed { key: object.key, last_modified, size: object.size });
    }
    Ok(Page { objects, next: page.next_continuation_token })
}

/// `GetObject`; `None` if it is gone.
pub async fn get_object(
    tls: &Arc<rustls::ClientConfig>,
    endpoints: &Endpoints,
    credentials: &AwsCredentials,
    bucket_name: &str,
    key: &str,
) -> Result<Option<Bytes>, AwsError> {
    use rusty_s3::S3Action as _;
    let bucket = bucket(endpoints, bucket_name)?;
    let creds = s3_credentials(credentials);
    let url = bucket.get_object(Some(&creds), key).sign(PRESIGN_TTL);
    let (status, body) = http(tls, "s3", Method::GET, &url, &[], Bytes::new()).await?;
    match status {
        200..=299 => Ok(Some(body)),
        404 => Ok(None),
        _ => Err(refusal("s3", status, &body)),
    }
}

/// SES `SendRawEmail` (API version 2010-12-01): `raw` from `source` to `to`
/// exactly as given. `Ok` is SES's message id.
pub async fn send_raw_email(
    tls: &Arc<rustls::ClientConfig>,
    endpoints: &Endpoints,
    credentials: &AwsCredentials,
    source: &str,
    to: &str,
    raw: &[u8],
) -> Result<String, AwsError> {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(raw);
    let body = form(&[
        ("Action", "SendRawEmail"),
        ("Version", "2010-12-01"),
        ("Source", source),
        ("Destinations.member.1", to),
        ("RawMessage.Data", data.as_str()),
    ]);
    let url = &endpoints.ses;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(AwsError::Transport { service: "ses", detail: format!("{url} has no host") }),
    };
    let amz_date = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = sign_post(credentials, &endpoints.region, "ses", &host, content_type, body.as_bytes(), &amz_date);
    let headers: Vec<(&str, String)> = headers.into_iter().collect();
    let (status, answer) = http(tls, "ses", Method::POST, url, &headers, body.into()).await?;
    if !(200..300).contains(&status) {
        return Err(refusal("ses", status, &answer));
    }
    let text = String::from_utf8_lossy(&answer);
    xml_text(&text, "MessageId").ok_or_else(|| AwsError::Malformed { service: "ses", detail: "no MessageId".to_owned() })
}

/// How long one SQS `ReceiveMessage` waits for a message (SQS's longest long poll).
pub const SQS_WAIT_SECONDS: u64 = 20;
/// Messages asked of SQS per `ReceiveMessage` (SQS's most).
pub const SQS_MAX_MESSAGES: u64 = 10;

/// One message received from an SQS queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// SQS's id of the message (the same on every redelivery).
    pub message_id: String,
    /// The handle that deletes this delivery of it.
    pub receipt_handle: String,
    /// Its body (an SNS envelope, or SES's notification itself with raw delivery).
    pub body: String,
}

/// Checks a queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`,
/// or an emulator's): http(s), a host, and a path naming the queue.
pub fn check_queue_url(queue_url: &str) -> Result<Url, String> {
    let url = Url::parse(queue_url).map_err(|e| format!("queue URL {queue_url:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("queue URL {queue_url:?} must be an http:// or https:// URL with a host"));
    }
    if url.path().trim_matches('/').is_empty() || url.query().is_some() || queue_url.len() > 1024 {
        return Err(format!("queue URL {queue_url:?} does not name a queue (https://sqs.<region>.amazonaws.com/<account>/<name>)"));
    }
    Ok(url)
}

/// One call of SQS's JSON protocol (`AmazonSQS.<action>`), signed, to the
/// queue URL's host; the answer's JSON.
async fn sqs_call(
    tls: &Arc<rustls::ClientConfig>,
    region: &str,
    credentials: &AwsCredentials,
    queue_url: &str,
    action: &str,
    request: &serde_json::Value,
) -> Result<serde_json::Value, AwsError> {
    let queue = check_queue_url(queue_url).map_err(|detail| AwsError::Transport { service: "sqs", detail })?;
    let host = match (queue.host_str(), queue.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(AwsError::Transport { service: "sqs", detail: format!("{queue} has no host") }),
    };
    let mut endpoint = queue.clone();
    endpoint.set_path("/");
    let body = request.to_string();
    let target = format!("AmazonSQS.{action}");
    let amz_date = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let content_type = "application/x-amz-json-1.0";
    let headers =
        sign_post_with_target(credentials, region, "sqs", &host, content_type, Some(&target), body.as_bytes(), &amz_date);
    let (status, answer) = http(tls, "sqs", Method::POST, &endpoint, &headers, body.into()).await?;
    let value: serde_json::Value = if answer.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&answer).map_err(|e| AwsError::Malformed { service: "sqs", detail: format!("not JSON: {e}") })?
    };
    if !(200..300).contains(&status) {
        let kind = value.get("__type").and_then(|v| v.as_str()).unwrap_or("");
        return Err(AwsError::Refused {
            service: "sqs",
            status,
            code: kind.rsplit('#').next().filter(|c| !c.is_empty()).map_or_else(|| format!("HTTP{status}"), str::to_owned),
            message: value.get("message").or_else(|| value.get("Message")).and_then(|v| v.as_str()).unwrap_or("").to_owned(),
        });
    }
    Ok(value)
}

/// SQS `ReceiveMessage`: waits up to `wait_seconds` for up to
/// [`SQS_MAX_MESSAGES`] messages of `queue_url`.
pub async fn sqs_receive(
    tls: &Arc<rustls::ClientConfig>,
    region: &str,
    credentials: &AwsCredentials,
    queue_url: &str,
    wait_seconds: u64,
) -> Result<Vec<QueueMessage>, AwsError> {
    let request = serde_json::json!({
        "QueueUrl": queue_url,
        "MaxNumberOfMessages": SQS_MAX_MESSAGES,
        "WaitTimeSeconds": wait_seconds.min(SQS_WAIT_SECONDS),
    });
    let answer = sqs_call(tls, region, credentials, queue_url, "ReceiveMessage", &request).await?;
    let malformed = |detail: &str| AwsError::Malformed { service: "sqs", detail: detail.to_owned() };
    let Some(messages) = answer.get("Messages") else { return Ok(Vec::new()) };
    let messages = messages.as_array().ok_or_else(|| malformed("Messages is not a list"))?;
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let field = |name: &str| {
            m.get(name).and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| malformed(&format!("a message without {name}")))
        };
        out.push(QueueMessage { message_id: field("MessageId")?, receipt_handle: field("ReceiptHandle")?, body: field("Body")? });
    }
    Ok(out)
}

/// SQS `DeleteMessage` of one received delivery.
pub async fn sqs_delete(
    tls: &Arc<rustls::ClientConfig>,
    region: &str,
    credentials: &AwsCredentials,
    queue_url: &str,
    receipt_handle: &str,
) -> Result<(), AwsError> {
    let request = serde_json::json!({ "QueueUrl": queue_url, "ReceiptHandle": receipt_handle });
    sqs_call(tls, region, credentials, queue_url, "DeleteMessage", &request).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_reads_plain_elements_only() {
        let xml = "<R><Credentials><AccessKeyId>ASIA1</AccessKeyId><SessionToken> a&amp;b&lt; </SessionToken></Credentials></R>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_text(xml, "SessionToken").as_deref(), Some("a&b<"));
        assert_eq!(xml_text(xml, "Credentials"), None, "an element with children is not a value");
        assert_eq!(xml_text(xml, "Missing"), None);
        assert_eq!(xml_text("<Code>Throttling", "Code"), None, "unterminated");
    }

    #[test]
    fn endpoints_are_aws_regional_or_one_emulator_url() {
        let aws = Endpoints::new("eu-west-1", None).unwrap();
        assert_eq!(aws.ses.as_str(), "https://email.eu-west-1.amazonaws.com/");
        assert_eq!(aws.sts.as_str(), "https://sts.eu-west-1.amazonaws.com/");
        assert!(!aws.path_style);
        let emu = Endpoints::new("us-east-1", Some("http://127.0.0.1:5000")).unwrap();
        assert_eq!((emu.s3.as_str(), emu.path_style), ("http://127.0.0.1:5000/", true));
        assert!(Endpoints::new("us-east-1", Some("ftp://x")).is_err());
        assert!(Endpoints::new("us-east-1", Some("not a url")).is_err());
    }

    #[test]
    fn queue_urls_name_a_queue() {
        assert!(check_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/agentkeys-inbound").is_ok());
        assert!(check_queue_url("http://127.0.0.1:5000/123456789012/q").is_ok());
        assert!(check_queue_url("https://sqs.eu-west-1.amazonaws.com/").is_err(), "no queue in the path");
        assert!(check_queue_url("ftp://h/1/q").is_err());
        assert!(check_queue_url("sqs-queue").is_err());
    }
}
