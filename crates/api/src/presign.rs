//! Broker, not proxy (issue 10 §3): when blobs live in an object store, the
//! read path hands out presigned URLs and message bytes go from the store to
//! the agent, never through this server.
//!
//! A [`Presigner`] signs URLs for one object or one prefix listing; the
//! handlers ([`crate::messages`], [`crate::credentials`]) ask for them through
//! [`PresignedReads`], which fixes the two rules in one place:
//!
//! - **What:** only keys under the verified capability's prefix
//!   (`<owner>/<inbox>/`), built from the capability, never from the request.
//! - **How long:** a URL lives [`url_ttl`] = the capability's remaining life,
//!   at most the store's own ceiling ([`Presigner::max_ttl`]), signed as of
//!   the broker's clock: it expires no later than the capability.
//!
//! Without a presigner (the embedded default, blobs in files) the server keeps
//! serving the bytes itself.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentkeys_broker::ReadCapability;
use agentkeys_core::{Address, OwnerId, UnixTime};
use agentkeys_store::BlobKey;
use ulid::Ulid;
use url::Url;

/// Signs URLs that read the blob store directly. Signing is local (no I/O).
pub trait Presigner: Send + Sync + fmt::Debug {
    /// A URL that GETs the blob `key`, valid for `ttl` from `signed_at`.
    fn get_url(&self, key: &BlobKey, ttl: Duration, signed_at: SystemTime) -> Url;
    /// A URL that lists the blobs whose key starts with `prefix`
    /// (`<owner>/<inbox>/`), valid for `ttl` from `signed_at`. The prefix is
    /// part of what is signed: a URL changed to list another is refused.
    fn list_url(&self, prefix: &str, ttl: Duration, signed_at: SystemTime) -> Url;
    /// The longest lifetime this store signs; longer asks are cut to it.
    fn max_ttl(&self) -> Duration;
}

/// The lifetime of a URL handed out at `now` under a capability (or mint) that
/// expires at `expires_at`: what it has left, at most `ceiling`. `None` when
/// nothing is left. Signed as of `now` ([`signing_time`]), the URL expires at
/// `now + ttl <= expires_at`.
pub fn url_ttl(expires_at: UnixTime, now: UnixTime, ceiling: Duration) -> Option<Duration> {
    let remaining = expires_at.checked_sub(now).filter(|r| *r > 0)?;
    Some(Duration::from_secs(remaining.unsigned_abs()).min(ceiling))
}

/// `now` (Unix seconds, the broker's clock) as the signing time of a URL.
pub fn signing_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.max(0).unsigned_abs())
}

/// The read path's view of a [`Presigner`]: URLs bounded by a capability.
#[derive(Debug, Clone)]
pub struct PresignedReads {
    presigner: Arc<dyn Presigner>,
}

impl PresignedReads {
    /// Reads through `presigner`.
    pub fn new(presigner: Arc<dyn Presigner>) -> Self {
        Self { presigner }
    }

    /// A URL that GETs message `id` of the capability's own inbox, expiring
    /// no later than the capability; `None` if it has expired by `now`.
    pub fn message_url(&self, capability: &ReadCapability, id: Ulid, now: UnixTime) -> Option<Url> {
        let key = BlobKey::message(capability.owner(), capability.inbox(), id);
        // The key is built from the capability; this only restates it.
        if !capability.allows(key.as_str()) {
            return None;
        }
        let ttl = url_ttl(capability.expires_at(), now, self.presigner.max_ttl())?;
        Some(self.presigner.get_url(&key, ttl, signing_time(now)))
    }

    /// A URL that lists `owner`'s `inbox` (the prefix `<owner>/<inbox>/`),
    /// expiring no later than `expires_at`; `None` if that is not after `now`.
    pub fn inbox_list_url(&self, owner: &OwnerId, inbox: &Address, expires_at: UnixTime, now: UnixTime) -> Option<Url> {
        let ttl = url_ttl(expires_at, now, self.presigner.max_ttl())?;
        let prefix = agentkeys_broker::capability::blob_prefix(owner, inbox);
        Some(self.presigner.list_url(&prefix, ttl, signing_time(now)))
    }
}

/// The S3 blob store signs its own URLs (SigV4 query strings, lifetime clamped
/// to [`MAX_PRESIGN_TTL`](agentkeys_store::s3::MAX_PRESIGN_TTL)).
#[cfg(feature = "s3")]
impl Presigner for agentkeys_store::S3BlobStore {
    fn get_url(&self, key: &BlobKey, ttl: Duration, signed_at: SystemTime) -> Url {
        self.presign_get_at(key, ttl, signed_at)
    }

    fn list_url(&self, prefix: &str, ttl: Duration, signed_at: SystemTime) -> Url {
        self.presign_list_page(prefix, None, ttl, signed_at)
    }

    fn max_ttl(&self) -> Duration {
        agentkeys_store::s3::MAX_PRESIGN_TTL
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn named_cases() {
        let ceiling = Duration::from_secs(1_800);
        assert_eq!(url_ttl(1_000, 1_000, ceiling), None, "expired at this second");
        assert_eq!(url_ttl(999, 1_000, ceiling), None);
        assert_eq!(url_ttl(1_001, 1_000, ceiling), Some(Duration::from_secs(1)));
        assert_eq!(url_ttl(1_300, 1_000, ceiling), Some(Duration::from_secs(300)));
        assert_eq!(url_ttl(1_000 + 86_400, 1_000, ceiling), Some(ceiling));
        assert_eq!(url_ttl(i64::MAX, i64::MIN, ceiling), None, "no overflow");
        assert_eq!(signing_time(5), UNIX_EPOCH + Duration::from_secs(5));
    }

    proptest! {
        /// However the capability's expiry, the clock and the ceiling fall, a
        /// URL's end (signing time + lifetime) is never after the capability's,
        /// never past the ceiling, and as late as both allow.
        #[test]
        fn a_url_never_outlives_its_capability(
            now in 1_600_000_000i64..2_000_000_000,
            left in -100_000i64..100_000,
            ceiling in 1u64..10_000,
        ) {
            let expires_at = now + left;
            let ceiling = Duration::from_secs(ceiling);
            match url_ttl(expires_at, now, ceiling) {
                None => prop_assert!(left <= 0),
                Some(ttl) => {
                    let ends = signing_time(now) + ttl;
                    prop_assert!(ends <= signing_time(expires_at));
                    prop_assert!(ttl <= ceiling);
                    prop_assert!(ttl >= Duration::from_secs(1));
                    prop_assert_eq!(ttl.as_secs(), ceiling.as_secs().min(left.unsigned_abs()));
                }
            }
        }
    }
}

/// The same property on the real S3 signer: the signed `X-Amz-Date` plus
/// `X-Amz-Expires` of every URL handed out under a capability is at or
/// before the capability's expiry.
#[cfg(all(test, feature = "s3"))]
mod s3_tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use agentkeys_broker::{AuthorityConfig, CapabilityClaims, SoftwareAuthority, TokenAuthority as _};
    use agentkeys_core::MasterSeed;
    use agentkeys_store::S3BlobStore;
    use agentkeys_store::s3::{ENV_ACCESS_KEY_ID, ENV_ENDPOINT, ENV_SECRET_ACCESS_KEY, MAX_PRESIGN_TTL, S3Config};
    use proptest::prelude::*;

    use super::*;

    const OWNER: &str = "0x00000000000000000000000000000000000000aa";
    const INBOX: &str = "bot@agents.example.com";

    fn store() -> Arc<S3BlobStore> {
        let config = S3Config::from_vars("s3://mail/prod", |name| {
            match name {
                ENV_ENDPOINT => Some("http://127.0.0.1:1"),
                ENV_ACCESS_KEY_ID => Some("AKID"),
                ENV_SECRET_ACCESS_KEY => Some("secret"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .unwrap();
        Arc::new(S3BlobStore::open(&config).unwrap())
    }

    /// Unix seconds at which a SigV4 presigned URL stops being valid.
    fn url_end(url: &Url) -> i64 {
        let q: HashMap<_, _> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let signed = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", &q["X-Amz-Date"]).unwrap();
        let signed = signed.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().as_second();
        signed + q["X-Amz-Expires"].parse::<i64>().unwrap()
    }

    fn capability(authority: &SoftwareAuthority, issued_at: i64, expires_at: i64) -> ReadCapability {
        let token = authority
            .sign_capability(&CapabilityClaims {
                owner: OWNER.parse().unwrap(),
                inbox: INBOX.parse().unwrap(),
                issued_at,
                expires_at,
                jti: "t".into(),
            })
            .unwrap();
        authority.verify_capability(&token, issued_at).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn signed_urls_end_no_later_than_the_capability(
            now in 1_700_000_000i64..1_900_000_000,
            left in 1i64..7_200,
            id in any::<u128>(),
        ) {
            let authority = SoftwareAuthority::new(&MasterSeed::from_bytes([3; 32]), AuthorityConfig::default()).unwrap();
            let cap = capability(&authority, now, now + left);
            let reads = PresignedReads::new(store());
            let get = reads.message_url(&cap, Ulid(id), now).unwrap();
            let list = reads.inbox_list_url(cap.owner(), cap.inbox(), cap.expires_at(), now).unwrap();
            for url in [&get, &list] {
                let end = url_end(url);
                prop_assert!(end <= cap.expires_at(), "{url} ends at {end}, the capability at {}", cap.expires_at());
                prop_assert_eq!(end, now + left.min(MAX_PRESIGN_TTL.as_secs() as i64));
            }
            let object = format!("/mail/prod/{OWNER}/{}/{}.eml", INBOX.replace('@', "%40"), Ulid(id));
            prop_assert_eq!(get.path(), object.as_str());
            let prefix: Vec<_> = list.query_pairs().filter(|(k, _)| k == "prefix").map(|(_, v)| v.into_owned()).collect();
            prop_assert_eq!(prefix, vec![format!("prod/{OWNER}/{INBOX}/")]);
            // Past its expiry a capability yields no URL at all.
            prop_assert!(reads.message_url(&cap, Ulid(id), now + left).is_none());
            prop_assert!(reads.inbox_list_url(cap.owner(), cap.inbox(), cap.expires_at(), now + left).is_none());
        }
    }
}
