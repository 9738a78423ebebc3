//! Extractors that fail with [`ApiError`], never with axum's plain-text rejections.

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The agent key from `Authorization: Bearer ak_…`. The scheme is matched without
/// regard to case; anything else (no header, another scheme, a token that does not
/// start with `ak_`, non-ASCII bytes) is [`ApiError::Unauthorized`] with the same
/// body as a key the broker refuses. `Debug` hides the key.
pub struct AgentBearer(String);

impl AgentBearer {
    /// The presented key, to hand to the broker and nowhere else.
    pub fn key(&self) -> &str {
        &self.0
    }

    /// Parses an `Authorization` header value.
    pub fn parse(headers: &HeaderMap) -> Result<Self, &'static str> {
        bearer_token(headers, "ak_", "bearer token is not an agent key").map(Self)
    }
}

/// The token of `Authorization: Bearer <token>` when it starts with `prefix`
/// (the one reader of bearer tokens: agent keys and read capabilities); the
/// error names what is wrong, for the log only.
pub(crate) fn bearer_token(headers: &HeaderMap, prefix: &str, wrong_kind: &'static str) -> Result<String, &'static str> {
    let value = headers.get(header::AUTHORIZATION).ok_or("no Authorization header")?;
    let value = value.to_str().map_err(|_| "Authorization header is not visible ASCII")?;
    let (scheme, token) = value.split_once(' ').ok_or("Authorization header has no scheme")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization scheme is not Bearer");
    }
    let token = token.trim_matches(' ');
    if !token.starts_with(prefix) {
        return Err(wrong_kind);
    }
    Ok(token.to_owned())
}

impl fmt::Debug for AgentBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentBearer(<redacted>)")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AgentBearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Self::parse(&parts.headers).map_err(|reason| {
            tracing::info!(reason, "agent key refused");
            ApiError::Unauthorized
        })
    }
}

/// A JSON body whose every failure is an [`ApiError`]: a missing or other content
/// type (415), an oversized body (413), bad JSON, unknown or missing fields and
/// wrong types (400 `INVALID_REQUEST`, naming the field when it can).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The name between the first pair of backticks in a serde message
/// (``unknown field `foo`, expected …``, ``missing field `inbox` ``).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// Deserializes an optional JSON integer the way JSON Schema defines one: `300`
/// and `300.0` alike (a number whose fraction is zero is an integer), so every
/// body valid against the published schema is read; `300.5` or a value out of
/// `i64`'s range is refused (400 naming the field).
pub fn optional_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    use serde::de::{Error, Unexpected};
    let Some(number) = <Option<serde_json::Number> as serde::Deserialize>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        // i64::MAX as f64 rounds up to 2^63, so the upper bound is exclusive.
        Some(x) if x.fract() == 0.0 && x >= i64::MIN as f64 && x < i64::MAX as f64 => Ok(Some(x as i64)),
        Some(x) => Err(D::Error::invalid_value(Unexpected::Float(x), &"a whole number of seconds")),
        None => Err(D::Error::invalid_value(Unexpected::Other("number"), &"a whole number of seconds")),
    }
}

/// Decodes a JSON document into `T`, naming the field at fault.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::InvalidRequest { field: None, detail: format!("the body is not valid JSON: {message}") };
        }
        let field = if path == "." { backticked(&message) } else { Some(path) };
        let detail = match &field {
            Some(f) => format!("{f}: {message}"),
            None => message,
        };
        ApiError::InvalidRequest { field, detail }
    })?;
    de.end().map_err(|e| ApiError::InvalidRequest {
        field: None,
        detail: format!("the body is not valid JSON: {e}"),
    })?;
    Ok(value)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidRequest { field: None, detail: "the request body could not be read".to_owned() }
            }
        })?;
        decode(&bytes).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(AgentBearer::parse(&headers("Bearer ak_abc")).unwrap().key(), "ak_abc");
        assert_eq!(AgentBearer::parse(&headers("bearer ak_abc")).unwrap().key(), "ak_abc");
        for bad in ["Basic ak_abc", "Bearer", "Bearer abc", "ak_abc", "Bearer  "] {
            assert!(AgentBearer::parse(&headers(bad)).is_err(), "{bad}");
        }
        assert!(AgentBearer::parse(&HeaderMap::new()).is_err());
        let b = AgentBearer::parse(&headers("Bearer ak_secret")).unwrap();
        assert!(!format!("{b:?}").contains("secret"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        inbox: String,
        ttl: Option<i64>,
    }

    fn field_of(json: &str) -> Option<String> {
        match decode::<Body>(json.as_bytes()) {
            Err(ApiError::InvalidRequest { field, .. }) => field,
            other => panic!("{json}: {other:?}"),
        }
    }

    #[derive(Debug, serde::Deserialize)]
    struct Ttl {
        #[serde(default, deserialize_with = "optional_integer")]
        ttl: Option<i64>,
    }

    #[test]
    fn integers_are_read_as_json_schema_defines_them() {
        let ttl = |json: &str| decode::<Ttl>(json.as_bytes()).map(|t| t.ttl);
        assert_eq!(ttl(r#"{"ttl":300}"#), Ok(Some(300)));
        assert_eq!(ttl(r#"{"ttl":300.0}"#), Ok(Some(300)));
        assert_eq!(ttl(r#"{"ttl":-5e2}"#), Ok(Some(-500)));
        assert_eq!(ttl(r#"{"ttl":null}"#), Ok(None));
        assert_eq!(ttl("{}"), Ok(None));
        for bad in [r#"{"ttl":300.5}"#, r#"{"ttl":1e300}"#, r#"{"ttl":"300"}"#, r#"{"ttl":18446744073709551615}"#] {
            match ttl(bad) {
                Err(ApiError::InvalidRequest { field, .. }) => assert_eq!(field.as_deref(), Some("ttl"), "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn decode_names_the_field() {
        assert_eq!(field_of(r#"{"inbox":"a@b.c","nope":1}"#).as_deref(), Some("nope"));
        assert_eq!(field_of(r#"{"ttl":5}"#).as_deref(), Some("inbox"));
        assert_eq!(field_of(r#"{"inbox":"a@b.c","ttl":"x"}"#).as_deref(), Some("ttl"));
        assert_eq!(field_of(r#"{"inbox":"a@b.c","ttl":1.5}"#).as_deref(), Some("ttl"));
        assert_eq!(field_of(r#"{"inbox":5}"#).as_deref(), Some("inbox"));
        assert_eq!(field_of(r#"{"inbox":"#), None);
        assert_eq!(field_of(r#"{"inbox":"a@b.c"} x"#), None);
        assert!(decode::<Body>(br#"{"inbox":"a@b.c"}"#).is_ok());
    }
}
