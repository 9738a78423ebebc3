//! Blob keys and blob errors.

use std::fmt;

use agentkeys_core::{Address, OwnerId};
use ulid::Ulid;

/// A validated blob key: `/`-separated components of `[A-Za-z0-9._@-]`, none empty,
/// none starting with a dot. Built only through the constructors, so a key can never
/// escape its prefix (`..`, absolute paths).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// The key of one stored copy of a received message: `<owner>/<inbox>/<ulid>.eml`.
    pub fn message(owner: &OwnerId, inbox: &Address, id: Ulid) -> Self {
        Self(format!("{owner}/{inbox}/{id}.eml"))
    }

    /// The owner, inbox and id of an inbox copy (`<owner>/<inbox>/<ulid>.eml`, in
    /// the canonical form [`BlobKey::message`] writes); `None` for any other key
    /// (the outbound queue's `queue/<ulid>.eml`, or a name that is not canonical).
    pub fn message_parts(&self) -> Option<(OwnerId, Address, Ulid)> {
        let mut parts = self.0.split('/');
        let (Some(owner), Some(inbox), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let owner: OwnerId = owner.parse().ok()?;
        let inbox: Address = inbox.parse().ok()?;
        let id = Ulid::from_string(name.strip_suffix(".eml")?).ok()?;
        // Only the exact text `message` builds: no case or alias variants.
        (Self::message(&owner, &inbox, id) == *self).then_some((owner, inbox, id))
    }

    /// The key of a message waiting in the outbound queue: `queue/<ulid>.eml`.
    pub fn queued(id: Ulid) -> Self {
        Self(format!("queue/{id}.eml"))
    }

    /// The id of an outbound queue copy (the inverse of [`BlobKey::queued`]);
    /// `None` for any other key.
    pub fn queued_id(&self) -> Option<Ulid> {
        let id = Ulid::from_string(self.0.strip_prefix("queue/")?.strip_suffix(".eml")?).ok()?;
        (Self::queued(id) == *self).then_some(id)
    }

    /// The key of a message held for the owner's review: `held/<ulid>.eml`
    /// (issue 13 §3). Released or rejected, it is removed.
    pub fn held(id: Ulid) -> Self {
        Self(format!("held/{id}.eml"))
    }

    /// Parses a stored key, refusing anything that could escape the store root.
    pub fn parse(s: &str) -> Option<Self> {
        let valid_component = |c: &str| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
        };
        s.split('/').all(valid_component).then(|| Self(s.to_owned()))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob storage failure. Maps to SMTP `452 4.3.1` (full) or `451 4.3.0` (other).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The device is full or over quota.
    #[error("blob storage is full: {0}")]
    StorageFull(#[source] std::io::Error),
    /// Any other I/O failure, with the path it concerned.
    #[error("blob storage I/O error at {path}: {err}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        #[source]
        err: std::io::Error,
    },
}

impl BlobError {
    /// Classifies an I/O error: `ENOSPC`/`EDQUOT` become [`BlobError::StorageFull`].
    pub fn from_io(path: impl Into<String>, err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => Self::StorageFull(err),
            _ => Self::Io { path: path.into(), err },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        assert!(BlobKey::parse("0xab/bot@agents.localhost/01H.eml").is_some());
        for bad in ["", "/a", "a//b", "../a", "a/../b", "a/.hidden", "a/b c", "a\\b"] {
            assert!(BlobKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn message_keys_round_trip_and_nothing_else_is_a_message() {
        let owner: OwnerId = "0x00000000000000000000000000000000000000ab".parse().unwrap();
        let inbox: Address = "bot@agents.localhost".parse().unwrap();
        let id = Ulid::from_parts(1_700_000_000_000, 42);
        let key = BlobKey::message(&owner, &inbox, id);
        assert_eq!(key.message_parts(), Some((owner.clone(), inbox.clone(), id)));
        assert_eq!(BlobKey::queued(id).message_parts(), None);
        assert_eq!(BlobKey::queued(id).queued_id(), Some(id));
        assert_eq!(key.queued_id(), None);
        let lower = key.as_str().to_ascii_lowercase();
        for other in [
            lower.as_str(),
            "0x00000000000000000000000000000000000000ab/bot@agents.localhost/x.eml",
            "0x00000000000000000000000000000000000000ab/bot@agents.localhost",
            "0x00000000000000000000000000000000000000ab/bot@agents.localhost/a/b.eml",
        ] {
            assert_eq!(BlobKey::parse(other).and_then(|k| k.message_parts()), None, "{other}");
        }
    }
}
