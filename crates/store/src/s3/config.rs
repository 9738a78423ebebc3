//! Where the S3 blob store lives: a `s3://bucket/prefix` URL plus the usual
//! environment variables, validated as a whole (every problem reported at once).

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::blob::BlobKey;

/// Overrides every other endpoint variable (an S3-compatible server only for us).
pub const ENV_ENDPOINT: &str = "AGENTKEYS_S3_ENDPOINT";
/// The AWS SDKs' S3-specific endpoint override.
pub const ENV_AWS_ENDPOINT_S3: &str = "AWS_ENDPOINT_URL_S3";
/// The AWS SDKs' endpoint override for every service.
pub const ENV_AWS_ENDPOINT: &str = "AWS_ENDPOINT_URL";
/// The region requests are signed for.
pub const ENV_REGION: &str = "AWS_REGION";
/// The region, if [`ENV_REGION`] is not set.
pub const ENV_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
/// The access key id.
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// The secret access key (never logged).
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// A session token, for temporary credentials (optional).
pub const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// A PEM file of extra trust anchors for an `https://` endpoint (optional;
/// Mozilla's roots are always trusted).
pub const ENV_CA_BUNDLE: &str = "AWS_CA_BUNDLE";
/// The region signed for when a custom endpoint is set and no region is
/// (what MinIO and most S3-compatible servers expect).
pub const DEFAULT_CUSTOM_REGION: &str = "us-east-1";

/// How a bucket appears in request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/<bucket>/<key>`: custom endpoints (MinIO, Ceph, s3s,
    /// an IP address), and AWS buckets whose name has a dot.
    Path,
    /// `https://<bucket>.s3.<region>.amazonaws.com/<key>`: AWS.
    VirtualHost,
}

/// A validated S3 blob store location and its credentials.
#[derive(Clone)]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// Prepended to every blob key: empty, or `/`-separated components ending
    /// with `/` (`mail/prod/`).
    pub prefix: String,
    /// The service endpoint (scheme, host, port, optional path), without the bucket.
    pub endpoint: Url,
    /// Path-style for custom endpoints, virtual-hosted for AWS.
    pub addressing: Addressing,
    /// The region requests are signed for.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Extra trust anchors (PEM) for an `https://` endpoint.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for S3Config {
    /// Everything but the secret and the session token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_str())
            .field("addressing", &self.addressing)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// Every problem found in an S3 configuration, each naming its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid S3 blob store configuration: {}", .problems.join("; "))]
pub struct S3ConfigError {
    /// One entry per problem, e.g. `AWS_ACCESS_KEY_ID: not set`.
    pub problems: Vec<String>,
}

impl S3Config {
    /// Reads `url` (`s3://bucket` or `s3://bucket/prefix`) and the process
    /// environment (see [`S3Config::from_vars`]).
    pub fn from_env(url: &str) -> Result<Self, S3ConfigError> {
        Self::from_vars(url, |name| std::env::var(name).ok())
    }

    /// Reads `url` and the variables `var` answers (empty values count as unset):
    ///
    /// - endpoint: [`ENV_ENDPOINT`], else [`ENV_AWS_ENDPOINT_S3`], else
    ///   [`ENV_AWS_ENDPOINT`]; a custom endpoint uses path-style addressing.
    ///   Without one, AWS: `https://s3.<region>.amazonaws.com`, virtual-hosted
    ///   (path-style if the bucket name has a dot), and a region is required.
    /// - region: [`ENV_REGION`], else [`ENV_DEFAULT_REGION`], else (custom
    ///   endpoint only) [`DEFAULT_CUSTOM_REGION`].
    /// - credentials: [`ENV_ACCESS_KEY_ID`] and [`ENV_SECRET_ACCESS_KEY`]
    ///   (required), [`ENV_SESSION_TOKEN`] (optional).
    /// - [`ENV_CA_BUNDLE`] (optional).
    pub fn from_vars(url: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, S3ConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut problems = Vec::new();

        let (bucket, prefix) = match parse_location(url) {
            Ok(location) => location,
            Err(why) => {
                problems.push(format!("{url:?}: {why}"));
                (String::new(), String::new())
            }
        };

        let endpoint_var =
            [ENV_ENDPOINT, ENV_AWS_ENDPOINT_S3, ENV_AWS_ENDPOINT].into_iter().find_map(|n| var(n).map(|v| (n, v)));
        let region = var(ENV_REGION).or_else(|| var(ENV_DEFAULT_REGION));
        let region = match (&region, &endpoint_var) {
            (Some(region), _) => {
                if !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    problems.push(format!("{ENV_REGION}: {region:?} is not a region name"));
                }
                region.clone()
            }
            (None, Some(_)) => DEFAULT_CUSTOM_REGION.to_owned(),
            (None, None) => {
                problems.push(format!("{ENV_REGION}: not set (required without a custom endpoint)"));
                String::new()
            }
        };
        // A custom endpoint (path-style); `None` for AWS, built once the region is known good.
        let custom_endpoint = endpoint_var.and_then(|(name, value)| {
            parse_endpoint(&value).map_err(|why| problems.push(format!("{name}: {why}"))).ok()
        });

        let access_key_id = var(ENV_ACCESS_KEY_ID).unwrap_or_else(|| {
            problems.push(format!("{ENV_ACCESS_KEY_ID}: not set"));
            String::new()
        });
        let secret_access_key = var(ENV_SECRET_ACCESS_KEY).unwrap_or_else(|| {
            problems.push(format!("{ENV_SECRET_ACCESS_KEY}: not set"));
            String::new()
        });
        let session_token = var(ENV_SESSION_TOKEN);
        let ca_file = var(ENV_CA_BUNDLE).map(PathBuf::from);

        if !problems.is_empty() {
            return Err(S3ConfigError { problems });
        }
        let (endpoint, addressing) = match custom_endpoint {
            Some(endpoint) => (endpoint, Addressing::Path),
            None => {
                let endpoint = Url::parse(&format!("https://s3.{region}.amazonaws.com")).map_err(|e| {
                    S3ConfigError { problems: vec![format!("{ENV_REGION}: {region:?} gives no endpoint URL: {e}")] }
                })?;
                // AWS's wildcard certificate covers one label before `s3.<region>`.
                let addressing = if bucket.contains('.') { Addressing::Path } else { Addressing::VirtualHost };
                (endpoint, addressing)
            }
        };
        Ok(Self {
            bucket,
            prefix,
            endpoint,
            addressing,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            ca_file,
        })
    }

    /// `s3://bucket/prefix`, for messages and logs.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// `s3://bucket[/prefix]` → the bucket and the normalized prefix (`""` or `a/b/`).
fn parse_location(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("s3://").ok_or("not an s3://bucket/prefix URL")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket_name(bucket)?;
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Ok((bucket.to_owned(), String::new()));
    }
    // The same alphabet as blob keys: no `..`, no empty or hidden components,
    // nothing that needs escaping in a URL.
    if BlobKey::parse(prefix).is_none() {
        return Err(format!(
            "prefix {prefix:?}: components must be non-empty, not start with a dot, and use only A-Z a-z 0-9 . _ @ -"
        ));
    }
    Ok((bucket.to_owned(), format!("{prefix}/")))
}

/// S3's bucket naming rules (3–63 of `a-z 0-9 . -`, starting and ending with a
/// letter or digit, no `..`).
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let valid = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && alnum(bucket.as_bytes().first())
        && alnum(bucket.as_bytes().last())
        && !bucket.contains("..");
    if valid {
        Ok(())
    } else {
        Err(format!("bucket {bucket:?}: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit"))
    }
}

/// An `http(s)://host[:port][/path]` endpoint, nothing else.
fn parse_endpoint(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{value:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?}: no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{value:?}: credentials belong in {ENV_ACCESS_KEY_ID}/{ENV_SECRET_ACCESS_KEY}, not the URL"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{value:?}: no query or fragment"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    const KEYS: [(&str, &str); 2] = [(ENV_ACCESS_KEY_ID, "AKID"), (ENV_SECRET_ACCESS_KEY, "secret")];

    #[test]
    fn custom_endpoint_is_path_style_with_a_default_region() {
        let config = S3Config::from_vars(
            "s3://mail/prod/eu/",
            vars(&[KEYS[0], KEYS[1], (ENV_AWS_ENDPOINT, "http://127.0.0.1:9000")]),
        )
        .unwrap();
        assert_eq!(config.bucket, "mail");
        assert_eq!(config.prefix, "prod/eu/");
        assert_eq!(config.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(config.addressing, Addressing::Path);
        assert_eq!(config.region, DEFAULT_CUSTOM_REGION);
        assert_eq!(config.location(), "s3://mail/prod/eu/");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn our_endpoint_variable_wins_over_the_aws_ones() {
        let config = S3Config::from_vars(
            "s3://mail",
            vars(&[
                KEYS[0],
                KEYS[1],
                (ENV_AWS_ENDPOINT, "http://a.test"),
                (ENV_AWS_ENDPOINT_S3, "http://b.test"),
                (ENV_ENDPOINT, "https://c.test:8443/s3"),
                (ENV_REGION, "eu-west-3"),
            ]),
        )
        .unwrap();
        assert_eq!(config.endpoint.as_str(), "https://c.test:8443/s3");
        assert_eq!(config.region, "eu-west-3");
        assert_eq!(config.prefix, "");
    }

    #[test]
    fn aws_without_endpoint_needs_a_region_and_is_virtual_hosted() {
        let config =
            S3Config::from_vars("s3://mail", vars(&[KEYS[0], KEYS[1], (ENV_DEFAULT_REGION, "eu-west-1")])).unwrap();
        assert_eq!(config.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
        assert_eq!(config.addressing, Addressing::VirtualHost);
        let dotted =
            S3Config::from_vars("s3://mail.example", vars(&[KEYS[0], KEYS[1], (ENV_REGION, "eu-west-1")])).unwrap();
        assert_eq!(dotted.addressing, Addressing::Path, "a dotted bucket cannot match AWS's wildcard certificate");
        let err = S3Config::from_vars("s3://mail", vars(&KEYS)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].starts_with(ENV_REGION), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            S3Config::from_vars("s3://Bad_Bucket/../x", vars(&[(ENV_ENDPOINT, "ftp://x"), (ENV_ACCESS_KEY_ID, "  ")]))
                .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        for needle in ["Bad_Bucket", ENV_ENDPOINT, ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn bad_locations_and_endpoints() {
        for url in
            ["mail", "http://mail/x", "s3://", "s3://ab", "s3://-mail", "s3://mail./", "s3://a..b", "s3://mail/a//b"]
        {
            assert!(S3Config::from_vars(url, vars(&[KEYS[0], KEYS[1], (ENV_REGION, "x")])).is_err(), "{url}");
        }
        for url in ["s3://mail/.hidden", "s3://mail/a/../b", "s3://mail/a b", "s3://mail/a?b"] {
            assert!(S3Config::from_vars(url, vars(&[KEYS[0], KEYS[1], (ENV_REGION, "x")])).is_err(), "{url}");
        }
        for endpoint in ["127.0.0.1:9000", "http://u:p@h.test", "http://h.test/?x=1", "http://h.test/#f", "file:///x"] {
            let err = S3Config::from_vars("s3://mail", vars(&[KEYS[0], KEYS[1], (ENV_ENDPOINT, endpoint)]));
            assert!(err.is_err(), "{endpoint}");
        }
    }

    proptest! {
        /// Any prefix the parser accepts is empty or `/`-terminated components
        /// that are valid key components: the object key of a blob never leaves it.
        #[test]
        fn accepted_prefixes_are_key_components(prefix in "[a-z0-9./_@ -]{0,24}") {
            if let Ok(config) = S3Config::from_vars(&format!("s3://mail/{prefix}"), vars(&[KEYS[0], KEYS[1], (ENV_REGION, "x")])) {
                prop_assert!(config.prefix.is_empty() || config.prefix.ends_with('/'));
                if !config.prefix.is_empty() {
                    prop_assert!(BlobKey::parse(config.prefix.trim_end_matches('/')).is_some());
                }
            }
        }
    }
}
