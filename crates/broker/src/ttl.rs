//! Token lifetimes (DESIGN.md §4) and the clamp every mint goes through.
//!
//! `TTL = min(requested or default, grant remaining, authority max)`, raised to the
//! kind's minimum only when the grant still has that long to live. Asking for more
//! (or less) than allowed is not an error: the clamped value is returned and says
//! so. A grant with no life left is [`MintError::GrantExpired`].

use agentkeys_core::UnixTime;
use serde::{Deserialize, Serialize};

use crate::error::MintError;

/// Default lifetime of a read capability, in seconds.
pub const READ_CAPABILITY_DEFAULT_TTL_SECS: i64 = 300;
/// Shortest lifetime of a read capability the broker issues (unless the grant ends sooner).
pub const READ_CAPABILITY_MIN_TTL_SECS: i64 = 60;
/// Longest lifetime of a read capability.
pub const READ_CAPABILITY_MAX_TTL_SECS: i64 = 1_800;
/// Default lifetime of an OIDC JWT, in seconds.
pub const OIDC_DEFAULT_TTL_SECS: i64 = 300;
/// Shortest lifetime of an OIDC JWT the broker issues (unless the grant ends sooner).
pub const OIDC_MIN_TTL_SECS: i64 = 60;
/// Longest lifetime of an OIDC JWT.
pub const OIDC_MAX_TTL_SECS: i64 = 3_600;

/// The kinds of short-lived token the broker mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A read capability for one inbox's blob prefix.
    ReadCapability,
    /// An ES256 OIDC JWT for cloud federation.
    Oidc,
}

impl TokenKind {
    /// Every kind, for tests and reports.
    pub const ALL: [TokenKind; 2] = [TokenKind::ReadCapability, TokenKind::Oidc];

    /// Lifetime when the client asks for none.
    pub const fn default_ttl(self) -> i64 {
        match self {
            Self::ReadCapability => READ_CAPABILITY_DEFAULT_TTL_SECS,
            Self::Oidc => OIDC_DEFAULT_TTL_SECS,
        }
    }

    /// Shortest lifetime issued while the grant allows it.
    pub const fn min_ttl(self) -> i64 {
        match self {
            Self::ReadCapability => READ_CAPABILITY_MIN_TTL_SECS,
            Self::Oidc => OIDC_MIN_TTL_SECS,
        }
    }

    /// Longest lifetime ever issued. An authority may lower it, never raise it.
    pub const fn max_ttl(self) -> i64 {
        match self {
            Self::ReadCapability => READ_CAPABILITY_MAX_TTL_SECS,
            Self::Oidc => OIDC_MAX_TTL_SECS,
        }
    }

    /// The stable name, as used in audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReadCapability => "read_capability",
            Self::Oidc => "oidc",
        }
    }
}

/// The lifetime a mint will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Clamped {
    /// Lifetime in seconds, always ≥ 1.
    pub ttl: i64,
    /// `now + ttl`.
    pub expires_at: UnixTime,
    /// Whether `ttl` differs from what was asked (the default when nothing was asked).
    pub clamped: bool,
}

/// Clamps a requested lifetime with the kind's own maximum as the authority's.
///
/// See [`clamp_with_ceiling`].
pub fn clamp(
    requested: Option<i64>,
    grant_expires_at: UnixTime,
    now: UnixTime,
    kind: TokenKind,
) -> Result<Clamped, MintError> {
    clamp_with_ceiling(requested, grant_expires_at, now, kind, kind.max_ttl())
}

/// Clamps a requested lifetime: `min(requested or default, grant remaining,
/// authority max)`, raised to the kind's minimum only if the grant lives that long.
///
/// `authority_max` is the authority's [`max_token_ttl`](crate::TokenAuthority::max_token_ttl);
/// it is itself bounded to the kind's `[min, max]`.
///
/// Errors: [`MintError::InvalidTtl`] when `requested` is zero or negative,
/// [`MintError::GrantExpired`] when the grant has no life left at `now`.
pub fn clamp_with_ceiling(
    requested: Option<i64>,
    grant_expires_at: UnixTime,
    now: UnixTime,
    kind: TokenKind,
    authority_max: i64,
) -> Result<Clamped, MintError> {
    let asked = match requested {
        None => kind.default_ttl(),
        Some(t) if t <= 0 => return Err(MintError::InvalidTtl { requested: t }),
        Some(t) => t,
    };
    let remaining = grant_expires_at.saturating_sub(now);
    if remaining <= 0 {
        return Err(MintError::GrantExpired);
    }
    let ceiling = authority_max.clamp(kind.min_ttl(), kind.max_ttl());
    let ttl = asked.clamp(kind.min_ttl(), ceiling).min(remaining);
    Ok(Clamped {
        ttl,
        expires_at: now.saturating_add(ttl),
        clamped: ttl != asked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_700_000_000;
    const FAR: UnixTime = NOW + 30 * 86_400;

    fn ok(requested: Option<i64>, grant_expires_at: UnixTime, kind: TokenKind) -> (i64, bool) {
        let c = clamp(requested, grant_expires_at, NOW, kind).unwrap();
        assert_eq!(c.expires_at, NOW + c.ttl);
        assert!(c.expires_at <= grant_expires_at);
        (c.ttl, c.clamped)
    }

    #[test]
    fn constants_match_the_design() {
        assert_eq!(
            (
                READ_CAPABILITY_DEFAULT_TTL_SECS,
                READ_CAPABILITY_MIN_TTL_SECS,
                READ_CAPABILITY_MAX_TTL_SECS
            ),
            (300, 60, 1_800)
        );
        assert_eq!(
            (OIDC_DEFAULT_TTL_SECS, OIDC_MIN_TTL_SECS, OIDC_MAX_TTL_SECS),
            (300, 60, 3_600)
        );
        for kind in TokenKind::ALL {
            assert!(kind.min_ttl() <= kind.default_ttl() && kind.default_ttl() <= kind.max_ttl());
        }
        assert_eq!(TokenKind::ReadCapability.as_str(), "read_capability");
        assert_eq!(TokenKind::Oidc.as_str(), "oidc");
    }

    #[test]
    fn default_when_nothing_asked() {
        for kind in TokenKind::ALL {
            assert_eq!(ok(None, FAR, kind), (kind.default_ttl(), false));
        }
    }

    #[test]
    fn within_bounds_is_kept() {
        for kind in TokenKind::ALL {
            for t in [
                kind.min_ttl(),
                kind.min_ttl() + 1,
                kind.default_ttl(),
                kind.max_ttl() - 1,
                kind.max_ttl(),
            ] {
                assert_eq!(ok(Some(t), FAR, kind), (t, false), "{kind:?} {t}");
            }
        }
    }

    #[test]
    fn above_max_is_clamped_down() {
        for kind in TokenKind::ALL {
            assert_eq!(
                ok(Some(kind.max_ttl() + 1), FAR, kind),
                (kind.max_ttl(), true)
            );
            assert_eq!(ok(Some(i64::MAX), FAR, kind), (kind.max_ttl(), true));
        }
        assert_eq!(
            ok(Some(3_600), FAR, TokenKind::ReadCapability),
            (1_800, true)
        );
        assert_eq!(ok(Some(3_600), FAR, TokenKind::Oidc), (3_600, false));
    }

    #[test]
    fn below_min_is_raised_when_the_grant_allows() {
        for kind in TokenKind::ALL {
            assert_eq!(ok(Some(1), FAR, kind), (kind.min_ttl(), true));
            assert_eq!(
                ok(Some(kind.min_ttl() - 1), FAR, kind),
                (kind.min_ttl(), true)
            );
            // The grant has exactly the minimum left: raised to it.
            assert_eq!(
                ok(Some(1), NOW + kind.min_ttl(), kind),
                (kind.min_ttl(), true)
            );
        }
    }

    #[test]
    fn grant_remaining_caps_the_ttl() {
        for kind in TokenKind::ALL {
            // Remaining below the asked value but above the minimum.
            assert_eq!(ok(Some(kind.max_ttl()), NOW + 100, kind), (100, true));
            assert_eq!(ok(None, NOW + 100, kind), (100, true));
            // Remaining exactly the asked value: not clamped.
            assert_eq!(ok(Some(200), NOW + 200, kind), (200, false));
            // Remaining below the minimum: the remaining life, marked clamped.
            assert_eq!(
                ok(Some(kind.min_ttl()), NOW + kind.min_ttl() - 1, kind),
                (kind.min_ttl() - 1, true)
            );
            assert_eq!(ok(None, NOW + 1, kind), (1, true));
            assert_eq!(ok(Some(1), NOW + 1, kind), (1, false));
            assert_eq!(ok(Some(30), NOW + 10, kind), (10, true));
        }
    }

    #[test]
    fn expired_grant_is_an_error() {
        for kind in TokenKind::ALL {
            for expires in [NOW, NOW - 1, NOW - 86_400, i64::MIN] {
                assert!(
                    matches!(
                        clamp(None, expires, NOW, kind),
                        Err(MintError::GrantExpired)
                    ),
                    "{expires}"
                );
                assert!(matches!(
                    clamp(Some(60), expires, NOW, kind),
                    Err(MintError::GrantExpired)
                ));
            }
        }
    }

    #[test]
    fn non_positive_request_is_invalid() {
        for kind in TokenKind::ALL {
            for t in [0, -1, i64::MIN] {
                assert!(
                    matches!(clamp(Some(t), FAR, NOW, kind), Err(MintError::InvalidTtl { requested }) if requested == t)
                );
            }
        }
    }

    #[test]
    fn authority_ceiling_lowers_the_max_but_stays_in_bounds() {
        let kind = TokenKind::Oidc;
        let c = clamp_with_ceiling(Some(3_600), FAR, NOW, kind, 900).unwrap();
        assert_eq!((c.ttl, c.clamped), (900, true));
        let c = clamp_with_ceiling(None, FAR, NOW, kind, 120).unwrap();
        assert_eq!((c.ttl, c.clamped), (120, true));
        // An authority max above the kind max cannot raise it.
        let c = clamp_with_ceiling(Some(10_000), FAR, NOW, kind, 10_000).unwrap();
        assert_eq!(c.ttl, OIDC_MAX_TTL_SECS);
        // An authority max below the kind min cannot push the TTL below it.
        let c = clamp_with_ceiling(Some(10), FAR, NOW, kind, 1).unwrap();
        assert_eq!((c.ttl, c.clamped), (OIDC_MIN_TTL_SECS, true));
    }

    #[test]
    fn extreme_clocks_do_not_overflow() {
        let c = clamp(None, i64::MAX, i64::MAX - 10, TokenKind::Oidc).unwrap();
        assert_eq!((c.ttl, c.expires_at), (10, i64::MAX));
        let c = clamp(None, i64::MAX, i64::MIN, TokenKind::Oidc).unwrap();
        assert_eq!(c.ttl, OIDC_DEFAULT_TTL_SECS);
    }
}
