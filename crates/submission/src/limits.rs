//! The limits both sending doors enforce, as named constants. `agentkeys-smtp`
//! re-exports them with its own; each has a test there or here.

use std::time::Duration;

/// Default largest message, in bytes (10 MiB), advertised as `SIZE`. Larger
/// messages get `552 5.3.4` (SMTP) or 413 (HTTP send).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// Most recipients per message. SMTP counts every `RCPT` command of a
/// transaction, repeated and refused ones included, and answers the next one
/// `452 4.5.3`; HTTP send counts every address listed in `to`, `cc` and `bcc`
/// (or the raw message's To/Cc/Bcc), repeated ones included.
pub const MAX_RECIPIENTS: usize = 50;

/// A failed `AUTH` is answered no earlier than this after the credentials arrived,
/// whichever step failed, so the reply time does not tell the steps apart.
pub const AUTH_FAILURE_FLOOR: Duration = Duration::from_millis(250);

/// Upper bound of the random delay added on top of [`AUTH_FAILURE_FLOOR`].
pub const AUTH_FAILURE_JITTER: Duration = Duration::from_millis(50);
