//! Abuse limits: every bound the SMTP service enforces, as a named constant.
//!
//! The constants are the defaults; [`Limits`] and [`crate::SmtpConfig`] carry the
//! values a deployment actually uses, so tests and operators can change them. Each
//! limit has a test named after it in `session_tests.rs`, `throttle.rs` or
//! `server.rs` (the AUTH throttle's key cap in `agentkeys_store::throttles`).

use std::time::Duration;

// The limits both sending doors share live with the doors' shared sequence.
pub use agentkeys_submission::limits::{
    AUTH_FAILURE_FLOOR, AUTH_FAILURE_JITTER, DEFAULT_MAX_MESSAGE_SIZE, MAX_RECIPIENTS,
};

/// Longest command or SASL line, CRLF included (smtp-proto's own bound). Longer
/// lines are answered `500 5.5.6` and discarded without buffering.
pub const MAX_LINE_LENGTH: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

/// How long a client may stay silent between commands before `421 4.4.2`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Longest session, from connect; then `421 4.4.2` and close.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Slowest accepted average transfer rate during `DATA`/`BDAT`, in bytes per
/// second, measured after [`DATA_RATE_GRACE`]; slower gets `451 4.4.2` and close.
pub const MIN_DATA_RATE: u64 = 1024;

/// Time at the start of a `DATA` or `BDAT` transfer during which the rate is not
/// checked.
pub const DATA_RATE_GRACE: Duration = Duration::from_secs(30);

/// Failed `AUTH` attempts allowed on one connection; the last one is followed by
/// `421 4.7.0` and the connection closes.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Default per-IP `AUTH` failure budget: this many failures within
/// [`DEFAULT_AUTH_THROTTLE_WINDOW`] and every further `AUTH` from the address is
/// answered `454 4.7.0` without checking credentials.
pub const DEFAULT_AUTH_THROTTLE_FAILURES: u32 = 10;

/// Default sliding window of the per-IP `AUTH` failure budget.
pub const DEFAULT_AUTH_THROTTLE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Most addresses the `AUTH` throttle tracks at once when it counts in memory;
/// beyond it the entry with the oldest last failure is forgotten, so memory stays
/// bounded under address spraying (the store's `LocalThrottles`, tested there;
/// shared counters bound their rows by the window instead).
pub const MAX_THROTTLE_KEYS: usize = agentkeys_store::MAX_LOCAL_THROTTLE_KEYS;

/// Default cap on concurrent connections over all listeners (`421 4.7.0` beyond).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Default cap on concurrent connections from one address (IPv6: one /64).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 100;

/// Unknown, malformed or out-of-order commands tolerated per session before
/// `421 4.7.0` and close.
pub const MAX_BAD_COMMANDS: u32 = 20;

/// How long an accept loop waits after a failed `accept` (shared with the HTTP listener).
pub use agentkeys_core::peer::ACCEPT_ERROR_BACKOFF;

/// Longest TLS handshake (STARTTLS or implicit TLS).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest time one write to the client may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Size of a connection's socket read buffer. Message data is accumulated
/// separately and grows only as it arrives.
pub const READ_BUFFER_SIZE: usize = 8 * 1024;

/// The limits one session enforces. `Default` gives the constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes ([`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub max_message_size: usize,
    /// Most `RCPT` commands per transaction, every one counted ([`MAX_RECIPIENTS`]).
    pub max_recipients: usize,
    /// Silence allowed between commands ([`IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Longest session ([`SESSION_TIMEOUT`]).
    pub session_timeout: Duration,
    /// Slowest data rate in bytes per second, 0 to disable ([`MIN_DATA_RATE`]).
    pub min_data_rate: u64,
    /// Unchecked start of a data transfer ([`DATA_RATE_GRACE`]).
    pub data_rate_grace: Duration,
    /// Failed AUTHs per connection ([`MAX_AUTH_FAILURES`]).
    pub max_auth_failures: u32,
    /// Minimum latency of a failed AUTH ([`AUTH_FAILURE_FLOOR`]).
    pub auth_failure_floor: Duration,
    /// Random extra latency of a failed AUTH ([`AUTH_FAILURE_JITTER`]).
    pub auth_failure_jitter: Duration,
    /// Bad commands per session ([`MAX_BAD_COMMANDS`]).
    pub max_bad_commands: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: MAX_RECIPIENTS,
            idle_timeout: IDLE_TIMEOUT,
            session_timeout: SESSION_TIMEOUT,
            min_data_rate: MIN_DATA_RATE,
            data_rate_grace: DATA_RATE_GRACE,
            max_auth_failures: MAX_AUTH_FAILURES,
            auth_failure_floor: AUTH_FAILURE_FLOOR,
            auth_failure_jitter: AUTH_FAILURE_JITTER,
            max_bad_commands: MAX_BAD_COMMANDS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_constants() {
        let l = Limits::default();
        assert_eq!(l.max_message_size, 10 * 1024 * 1024);
        assert_eq!(l.max_recipients, 50);
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.session_timeout, Duration::from_secs(1800));
        assert_eq!(l.max_auth_failures, 3);
        assert_eq!(MAX_LINE_LENGTH, 4096);
        // The benchmark holds 1,000 idle connections: the total cap must allow twice that.
        const { assert!(DEFAULT_MAX_CONNECTIONS >= 2000) };
        const { assert!(READ_BUFFER_SIZE <= 8 * 1024) };
    }
}
