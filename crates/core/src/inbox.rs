//! Inbox status and the lifetime rules of an inbox an agent creates.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::UnixTime;

/// Whether an inbox takes mail. Only `Active` inboxes receive or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxStatus {
    /// Receives and sends.
    Active,
    /// Turned off by its owner or the operator.
    Disabled,
    /// Turned off for abuse or policy.
    Suspended,
}

impl InboxStatus {
    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Suspended => "suspended",
        }
    }
}

impl fmt::Display for InboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InboxStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            "suspended" => Ok(Self::Suspended),
            other => Err(format!("unknown inbox status {other:?}: expected active, disabled or suspended")),
        }
    }
}

/// Longest life of an inbox an agent creates for itself (`create` scope): 30
/// days, like a grant. Its expiry is also never later than the grant's.
pub const MAX_AGENT_INBOX_LIFETIME_SECS: i64 = 30 * 86_400;

/// Whether an inbox with expiry `expires_at` (`None`: never) has expired at
/// `now`. An expired inbox is absent: RCPT answers `550 5.1.1`, AUTH and mints
/// refuse it, and the retention sweeper removes it with its mail.
pub fn is_expired(expires_at: Option<UnixTime>, now: UnixTime) -> bool {
    expires_at.is_some_and(|t| t <= now)
}

/// Why an agent may not create an inbox with the lifetime it asked for. The
/// rule refuses rather than clamps: the agent named a lifetime, and a shorter
/// one it did not ask for could end a sign-up early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxExpiryError {
    /// The lifetime is zero or negative.
    #[error("expires_in {requested} is not allowed: an inbox lifetime is a positive number of seconds")]
    NotPositive {
        /// What was asked for.
        requested: i64,
    },
    /// The inbox would outlive the grant that allows it.
    #[error(
        "expires_in {requested} would end after the grant that allows it (at {grant_expires_at}); \
         at most {latest} seconds are left"
    )]
    BeyondGrant {
        /// What was asked for.
        requested: i64,
        /// The grant's expiry (Unix seconds).
        grant_expires_at: UnixTime,
        /// The longest lifetime allowed now, in seconds.
        latest: i64,
    },
    /// The lifetime is over [`MAX_AGENT_INBOX_LIFETIME_SECS`].
    #[error("expires_in {requested} is over the {max} seconds (30 days) an agent's inbox may live")]
    TooLong {
        /// What was asked for.
        requested: i64,
        /// [`MAX_AGENT_INBOX_LIFETIME_SECS`].
        max: i64,
    },
}

/// The expiry of an inbox an agent creates at `now` under a grant that expires
/// at `grant_expires_at` (after `now`: the grant is active), asking for
/// `expires_in` seconds. Without a request, as long as the grant and
/// [`MAX_AGENT_INBOX_LIFETIME_SECS`] allow. A request is refused, never
/// clamped, when it is not positive, ends after the grant, or is longer than
/// the maximum: the owner's grant stays the limit.
pub fn agent_inbox_expiry(
    expires_in: Option<i64>,
    grant_expires_at: UnixTime,
    now: UnixTime,
) -> Result<UnixTime, InboxExpiryError> {
    let ceiling = grant_expires_at.min(now.saturating_add(MAX_AGENT_INBOX_LIFETIME_SECS));
    let Some(requested) = expires_in else { return Ok(ceiling) };
    if requested <= 0 {
        return Err(InboxExpiryError::NotPositive { requested });
    }
    if requested > MAX_AGENT_INBOX_LIFETIME_SECS {
        return Err(InboxExpiryError::TooLong { requested, max: MAX_AGENT_INBOX_LIFETIME_SECS });
    }
    let expires_at = now.saturating_add(requested);
    if expires_at > grant_expires_at {
        return Err(InboxExpiryError::BeyondGrant {
            requested,
            grant_expires_at,
            latest: grant_expires_at.saturating_sub(now).max(0),
        });
    }
    Ok(expires_at)
}

/// Whether `owner`'s agents may create inboxes (`create` scope) on a domain
/// the operator assigned to `domain_owner` (`None`: a shared domain). Only on
/// a domain assigned to that owner: on a shared domain, names under a pattern
/// would be first come, first served across owners, and an address one
/// owner's agent gave a service could, once ended, be created again by
/// another owner's agent and receive the first owner's password resets.
/// Exact inboxes on shared domains stay the operator's and owners' to create.
pub fn may_create_on_domain(owner: &crate::OwnerId, domain_owner: Option<&crate::OwnerId>) -> bool {
    domain_owner == Some(owner)
}

/// The expiry of an inbox its owner creates at `now` asking for `expires_in`
/// seconds: `None` (never) without a request; else the same limits as an
/// agent's inbox without a grant to stay within: positive and at most
/// [`MAX_AGENT_INBOX_LIFETIME_SECS`], refused (never clamped) otherwise.
pub fn owner_inbox_expiry(expires_in: Option<i64>, now: UnixTime) -> Result<Option<UnixTime>, InboxExpiryError> {
    expires_in.map(|requested| agent_inbox_expiry(Some(requested), UnixTime::MAX, now)).transpose()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    #[test]
    fn named_cases() {
        let grant = NOW + 3_600;
        assert_eq!(agent_inbox_expiry(None, grant, NOW), Ok(grant));
        assert_eq!(agent_inbox_expiry(Some(60), grant, NOW), Ok(NOW + 60));
        assert_eq!(agent_inbox_expiry(Some(3_600), grant, NOW), Ok(grant), "up to the grant's expiry exactly");
        assert!(matches!(agent_inbox_expiry(Some(3_601), grant, NOW), Err(InboxExpiryError::BeyondGrant { latest: 3_600, .. })));
        assert_eq!(agent_inbox_expiry(Some(0), grant, NOW), Err(InboxExpiryError::NotPositive { requested: 0 }));
        assert_eq!(agent_inbox_expiry(Some(-5), grant, NOW), Err(InboxExpiryError::NotPositive { requested: -5 }));
        let far = NOW + 10 * MAX_AGENT_INBOX_LIFETIME_SECS;
        assert_eq!(agent_inbox_expiry(None, far, NOW), Ok(NOW + MAX_AGENT_INBOX_LIFETIME_SECS), "the named maximum");
        assert!(matches!(
            agent_inbox_expiry(Some(MAX_AGENT_INBOX_LIFETIME_SECS + 1), far, NOW),
            Err(InboxExpiryError::TooLong { .. })
        ));
        assert_eq!(agent_inbox_expiry(Some(i64::MAX), i64::MAX, NOW).ok(), None);
        // Agents create only on a domain assigned to their owner.
        let (a, b): (crate::OwnerId, crate::OwnerId) = (
            "0x000000000000000000000000000000000000000a".parse().unwrap(),
            "0x000000000000000000000000000000000000000b".parse().unwrap(),
        );
        assert!(may_create_on_domain(&a, Some(&a)));
        assert!(!may_create_on_domain(&a, Some(&b)), "another owner's domain");
        assert!(!may_create_on_domain(&a, None), "a shared domain");
        // The owner's own inboxes: no expiry unless asked, the same limits when asked.
        assert_eq!(owner_inbox_expiry(None, NOW), Ok(None));
        assert_eq!(owner_inbox_expiry(Some(60), NOW), Ok(Some(NOW + 60)));
        assert_eq!(owner_inbox_expiry(Some(MAX_AGENT_INBOX_LIFETIME_SECS), NOW), Ok(Some(NOW + MAX_AGENT_INBOX_LIFETIME_SECS)));
        assert!(matches!(owner_inbox_expiry(Some(MAX_AGENT_INBOX_LIFETIME_SECS + 1), NOW), Err(InboxExpiryError::TooLong { .. })));
        assert!(matches!(owner_inbox_expiry(Some(0), NOW), Err(InboxExpiryError::NotPositive { .. })));
        assert!(!is_expired(None, i64::MAX));
        assert!(is_expired(Some(NOW), NOW), "the expiry second itself is past");
        assert!(!is_expired(Some(NOW + 1), NOW));
    }

    proptest! {
        /// Whatever is asked, an accepted expiry is in the future, never after
        /// the grant's and never more than the maximum away; a request is
        /// accepted exactly when it fits, and then honoured to the second.
        #[test]
        fn an_agent_inbox_never_outlives_its_grant_or_the_maximum(
            now in 0i64..4_000_000_000,
            grant_left in 1i64..(3 * MAX_AGENT_INBOX_LIFETIME_SECS),
            requested in proptest::option::of(-10i64..(3 * MAX_AGENT_INBOX_LIFETIME_SECS)),
        ) {
            let grant_expires_at = now + grant_left;
            match agent_inbox_expiry(requested, grant_expires_at, now) {
                Ok(expires_at) => {
                    prop_assert!(expires_at > now);
                    prop_assert!(expires_at <= grant_expires_at);
                    prop_assert!(expires_at - now <= MAX_AGENT_INBOX_LIFETIME_SECS);
                    if let Some(r) = requested {
                        prop_assert_eq!(expires_at, now + r);
                    } else {
                        prop_assert_eq!(expires_at, grant_expires_at.min(now + MAX_AGENT_INBOX_LIFETIME_SECS));
                    }
                }
                Err(e) => {
                    let r = requested.expect("no request is always accepted under an active grant");
                    prop_assert!(r <= 0 || r > MAX_AGENT_INBOX_LIFETIME_SECS || now + r > grant_expires_at, "{e}");
                }
            }
        }
    }
}
