//! OIDC issuer documents and token claims for cloud federation (DESIGN.md §5).
//!
//! The broker is an OIDC identity provider that only issues ID tokens to itself:
//! AWS STS `AssumeRoleWithWebIdentity` fetches [`discovery_document`] and the JWKS,
//! checks the ES256 signature, `iss`, `aud` and `exp`, and turns the
//! `https://aws.amazon.com/tags` claim into session tags. `docs/aws-federation.md`
//! has the matching IAM trust policy and bucket policy.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use agentkeys_core::{AgentId, OwnerId, UnixTime};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Default `aud`: AWS STS.
pub const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// `sub` is this prefix followed by the agent id.
pub const SUBJECT_PREFIX: &str = "agentkeys:agent:";
/// Name of the claim (and AWS session tag) carrying the owner's wallet.
pub const WALLET_CLAIM: &str = "agentkeys_user_wallet";
/// Name of the claim AWS reads session tags from.
pub const AWS_TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
/// The only signing algorithm.
pub const SIGNING_ALG: &str = "ES256";
/// Path of the discovery document under the issuer URL.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Path of the JWKS under the issuer URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Every claim a token carries, in serialization order.
pub const CLAIMS_SUPPORTED: [&str; 8] = [
    "iss",
    "sub",
    "aud",
    "iat",
    "exp",
    "jti",
    WALLET_CLAIM,
    AWS_TAGS_CLAIM,
];

/// The issuer: the server's configured public URL, exactly as `iss` carries it.
///
/// `https://host[:port][/path]`, or `http://` for `localhost`, `127.0.0.1` and
/// `[::1]` (development). No query, fragment or credentials; a trailing `/` is
/// dropped, so `https://mail.example.com/` and `https://mail.example.com` are the
/// same issuer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssuerUrl(String);

/// Why an issuer URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("INVALID_ISSUER: {value:?}: {reason}")]
pub struct IssuerUrlError {
    /// The refused input.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for IssuerUrl {
    type Err = IssuerUrlError;
    fn from_str(s: &str) -> Result<Self, IssuerUrlError> {
        let err = |reason| IssuerUrlError {
            value: s.to_owned(),
            reason,
        };
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        if trimmed
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80)
        {
            return Err(err("must be plain ASCII without spaces"));
        }
        if trimmed.contains(['?', '#']) {
            return Err(err("must not have a query or fragment"));
        }
        let (scheme_is_https, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(err("must start with https:// (http:// only for localhost)"));
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(err("must name a host, without credentials"));
        }
        if rest.contains("//") || rest.ends_with('/') {
            return Err(err("must not have empty path segments"));
        }
        if !scheme_is_https {
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => authority.split(':').next().unwrap_or(""),
            };
            if !matches!(host, "localhost" | "127.0.0.1" | "::1") {
                return Err(err("http:// is only allowed for localhost; use https://"));
            }
        }
        Ok(Self(trimmed.to_owned()))
    }
}

impl IssuerUrl {
    /// The issuer as `iss` carries it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<issuer>/.well-known/jwks.json`.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.0)
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_uri(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.0)
    }
}

impl fmt::Display for IssuerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner id as the wallet claim and tag carry it: lowercase hex, no `0x`.
pub fn wallet_tag(owner: &OwnerId) -> String {
    let s = owner.as_str();
    s.strip_prefix("0x").unwrap_or(s).to_ascii_lowercase()
}

/// The `https://aws.amazon.com/tags` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSessionTags {
    /// Tag name → values (AWS takes the first value).
    pub principal_tags: BTreeMap<String, Vec<String>>,
    /// Tags that stay on the session through role chaining.
    pub transitive_tag_keys: Vec<String>,
}

/// The claims of an OIDC token: exactly these, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcClaims {
    /// The issuer URL.
    pub iss: String,
    /// `agentkeys:agent:<agent id>`.
    pub sub: String,
    /// The audience (default [`DEFAULT_AUDIENCE`]).
    pub aud: String,
    /// Issue time.
    pub iat: UnixTime,
    /// Expiry.
    pub exp: UnixTime,
    /// Unique token id, recorded in the audit log.
    pub jti: String,
    /// The owner's id, lowercase, without `0x`.
    pub agentkeys_user_wallet: String,
    /// AWS session tags: the wallet again, as a transitive principal tag.
    #[serde(rename = "https://aws.amazon.com/tags")]
    pub aws_tags: AwsSessionTags,
}

impl OidcClaims {
    /// Starts the claims of a token for `agent` of `owner`, valid
    /// `[issued_at, expires_at)`. Audience and `jti` have defaults.
    pub fn builder<'a>(
        issuer: &'a IssuerUrl,
        agent: &'a AgentId,
        owner: &'a OwnerId,
        issued_at: UnixTime,
        expires_at: UnixTime,
    ) -> OidcClaimsBuilder<'a> {
        OidcClaimsBuilder {
            issuer,
            agent,
            owner,
            issued_at,
            expires_at,
            audience: None,
            jti: None,
        }
    }
}

/// Builds [`OidcClaims`]; see [`OidcClaims::builder`].
#[derive(Debug, Clone)]
pub struct OidcClaimsBuilder<'a> {
    issuer: &'a IssuerUrl,
    agent: &'a AgentId,
    owner: &'a OwnerId,
    issued_at: UnixTime,
    expires_at: UnixTime,
    audience: Option<String>,
    jti: Option<String>,
}

impl OidcClaimsBuilder<'_> {
    /// Sets `aud` (default [`DEFAULT_AUDIENCE`]).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets `jti` (default: 128 random bits, base64url).
    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    /// The claims.
    pub fn build(self) -> OidcClaims {
        let wallet = wallet_tag(self.owner);
        OidcClaims {
            iss: self.issuer.as_str().to_owned(),
            sub: format!("{SUBJECT_PREFIX}{}", self.agent),
            aud: self.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.to_owned()),
            iat: self.issued_at,
            exp: self.expires_at,
            jti: self.jti.unwrap_or_else(crate::random_jti),
            aws_tags: AwsSessionTags {
                principal_tags: BTreeMap::from([(WALLET_CLAIM.to_owned(), vec![wallet.clone()])]),
                transitive_tag_keys: vec![WALLET_CLAIM.to_owned()],
            },
            agentkeys_user_wallet: wallet,
        }
    }
}

/// One public key of the JWKS (RFC 7517/7518): an ES256 P-256 key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Always `EC`.
    pub kty: String,
    /// Always `P-256`.
    pub crv: String,
    /// X coordinate, base64url of 32 bytes.
    pub x: String,
    /// Y coordinate, base64url of 32 bytes.
    pub y: String,
    /// Key id, the `kid` of the tokens it verifies.
    pub kid: String,
    /// Always `ES256`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// The JWKS document served at [`JWKS_PATH`]: the current key first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// Public keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The key with `kid`, if published.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The JSON document.
    pub fn to_json(&self) -> Value {
        json!({ "keys": self.keys })
    }
}

/// The document served at [`DISCOVERY_PATH`].
pub fn discovery_document(issuer: &IssuerUrl) -> Value {
    json!({
        "issuer": issuer.as_str(),
        "jwks_uri": issuer.jwks_uri(),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [SIGNING_ALG],
        "claims_supported": CLAIMS_SUPPORTED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "0xABCDEF0123456789abcdef0123456789ABCDEF01";
    const AGENT: &str = "0x00000000000000000000000000000000000000a1";

    #[test]
    fn issuer_urls() {
        for (input, canonical) in [
            ("https://mail.example.com", "https://mail.example.com"),
            ("https://mail.example.com/", "https://mail.example.com"),
            (
                "https://mail.example.com:8443/oidc",
                "https://mail.example.com:8443/oidc",
            ),
            ("http://localhost:8080", "http://localhost:8080"),
            ("http://127.0.0.1", "http://127.0.0.1"),
            ("http://[::1]:80", "http://[::1]:80"),
        ] {
            assert_eq!(
                input.parse::<IssuerUrl>().unwrap().as_str(),
                canonical,
                "{input}"
            );
        }
        for bad in [
            "",
            "mail.example.com",
            "ftp://mail.example.com",
            "http://mail.example.com",
            "http://localhost.evil.com",
            "https://",
            "https:///path",
            "https://user@mail.example.com",
            "https://mail.example.com?x=1",
            "https://mail.example.com#f",
            "https://mail.example.com//",
            "https://mail.example.com/a//b",
            "https://mail example.com",
            "https://mäil.example.com",
        ] {
            assert!(bad.parse::<IssuerUrl>().is_err(), "{bad:?} accepted");
        }
        let i: IssuerUrl = "https://mail.example.com/".parse().unwrap();
        assert_eq!(
            i.jwks_uri(),
            "https://mail.example.com/.well-known/jwks.json"
        );
        assert_eq!(
            i.discovery_uri(),
            "https://mail.example.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn claims_have_exactly_the_issue_layout() {
        let issuer: IssuerUrl = "https://mail.example.com".parse().unwrap();
        let owner: OwnerId = OWNER.parse().unwrap();
        let agent: AgentId = AGENT.parse().unwrap();
        let claims = OidcClaims::builder(&issuer, &agent, &owner, 1_000, 1_300)
            .jti("j1")
            .build();
        let wallet = "abcdef0123456789abcdef0123456789abcdef01";
        assert_eq!(
            serde_json::to_value(&claims).unwrap(),
            json!({
                "iss": "https://mail.example.com",
                "sub": format!("agentkeys:agent:{AGENT}"),
                "aud": "sts.amazonaws.com",
                "iat": 1_000,
                "exp": 1_300,
                "jti": "j1",
                "agentkeys_user_wallet": wallet,
                "https://aws.amazon.com/tags": {
                    "principal_tags": {"agentkeys_user_wallet": [wallet]},
                    "transitive_tag_keys": ["agentkeys_user_wallet"],
                },
            })
        );
        let custom = OidcClaims::builder(&issuer, &agent, &owner, 1, 2)
            .audience("my-aud")
            .build();
        assert_eq!(custom.aud, "my-aud");
        assert_eq!(custom.jti.len(), 22);
        let other = OidcClaims::builder(&issuer, &agent, &owner, 1, 2).build();
        assert_ne!(custom.jti, other.jti);
    }

    #[test]
    fn wallet_is_lowercase_without_0x() {
        let owner: OwnerId = OWNER.parse().unwrap();
        let w = wallet_tag(&owner);
        assert_eq!(w.len(), 40);
        assert!(
            !w.starts_with("0x")
                && w.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn discovery() {
        let issuer: IssuerUrl = "https://mail.example.com".parse().unwrap();
        let d = discovery_document(&issuer);
        assert_eq!(d["issuer"], "https://mail.example.com");
        assert_eq!(
            d["jwks_uri"],
            "https://mail.example.com/.well-known/jwks.json"
        );
        assert_eq!(d["response_types_supported"], json!(["id_token"]));
        assert_eq!(d["subject_types_supported"], json!(["public"]));
        assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
        assert_eq!(
            d["claims_supported"],
            json!([
                "iss",
                "sub",
                "aud",
                "iat",
                "exp",
                "jti",
                "agentkeys_user_wallet",
                "https://aws.amazon.com/tags"
            ])
        );
    }
}
