//! Domain types and rules of AgentKeys Mail.
//!
//! Everything here is pure: no I/O, no clock, no global randomness. Callers pass
//! the current time and a random source in, so every rule is testable with fixed
//! inputs. The crate holds the identifiers of DESIGN.md §3, the credential
//! lifetimes of §4 and the submission AUTH order of §5.
//!
//! ```
//! use agentkeys_core::{Address, InboxPattern};
//!
//! let inbox: Address = "bot-1@agents.localhost".parse().unwrap();
//! let pattern: InboxPattern = "*@agents.localhost".parse().unwrap();
//! assert!(pattern.covers(&inbox));
//! ```

pub mod auth;
pub mod auth_results;
pub mod duration;
pub mod grant;
pub mod ids;
pub mod inbox;
pub mod key;
pub mod nonce;
pub mod peer;
pub mod policy;
pub mod seed;
pub mod send_limits;
pub mod time;

pub use auth::{AuthFacts, AuthFailure, Credentials, KeyFacts, SendAuthorized};
pub use duration::{TtlError, format_duration, parse_duration, parse_ttl};
pub use grant::{
    Grant, GrantChange, GrantChangeError, GrantMiss, InboxPattern, RANDOM_NAME_LEN, Scope, Scopes, covering_grant,
};
pub use ids::{Address, AgentId, Domain, GrantId, IdError, KeyId, OwnerId, RESERVED_LOCAL_PARTS, Resolved, Subaddressing, is_reserved_local_part};
pub use inbox::{
    InboxExpiryError, InboxStatus, MAX_AGENT_INBOX_LIFETIME_SECS, agent_inbox_expiry, is_expired, may_create_on_domain, owner_inbox_expiry,
};
pub use key::{AgentKey, KeyHash, KeyHasher};
pub use nonce::NonceRecord;
pub use seed::MasterSeed;

/// Seconds since the Unix epoch. All stored times use this unit.
pub type UnixTime = i64;

/// Longest lifetime of an agent key (DESIGN.md §4): 30 days, also the default.
pub const MAX_AGENT_KEY_TTL_SECS: i64 = 30 * 86_400;
/// Longest lifetime of a grant (DESIGN.md §4): 30 days, also the default.
pub const MAX_GRANT_TTL_SECS: i64 = 30 * 86_400;
