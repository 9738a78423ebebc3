//! SMTP for AgentKeys Mail: the inbound MX and authenticated submission.
//!
//! - [`Session`] is the protocol, as a sans-IO state machine built on `smtp-proto`:
//!   bytes in, [`Step`]s out, the clock passed in. One `State` enum, one `match`,
//!   one reply table ([`Reply`]).
//! - [`SmtpServer`] is the thin tokio shell: accept loop, connection caps, STARTTLS
//!   and implicit TLS, and the store calls each step asks for.
//! - [`acceptance`] holds those store calls: recipient lookup and durable storage
//!   (one `put_durable` per message, before `250`), shared with the HTTP send door
//!   through `agentkeys-submission`, which also holds the message rules (NUL,
//!   `From:`, `Sender:`) both doors apply.
//! - `data` finds the end of `DATA` (only `<CRLF>.<CRLF>`) and undoes
//!   dot-stuffing, and counts `BDAT` chunks; its own sans-IO receivers.
//! - [`verdicts`] evaluates SPF, DKIM and DMARC for MX mail ([`InboundVerifier`],
//!   [`MailAuthVerifier`]) and writes `Authentication-Results:`, over
//!   [`verdict_dns`], the server's shared DNS answers (cache, single flight,
//!   failing names, per-message budget).
//! - [`limits`] names every abuse limit; [`AuthThrottle`] counts AUTH failures per
//!   address, in memory or, for several nodes, in the store they share.
//!
//! Driving a session by hand, as the tests do:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Instant, SystemTime};
//! use agentkeys_core::{KeyHasher, MasterSeed};
//! use agentkeys_smtp::{Limits, ListenerKind, Now, Session, SessionContext, Step};
//!
//! let ctx = Arc::new(SessionContext {
//!     hostname: "mx.example.test".into(),
//!     kind: ListenerKind::Inbound,
//!     limits: Limits::default(),
//!     hasher: KeyHasher::new(&MasterSeed::from_bytes([7; 32])),
//!     tls_available: false,
//!     allow_plaintext_auth_on_loopback: false,
//!     subaddressing: Default::default(),
//! });
//! let now = Now { instant: Instant::now(), system: SystemTime::now() };
//! let mut session = Session::new(ctx, "192.0.2.1".parse().unwrap(), false, now, 42);
//!
//! let Step::Write(greeting) = session.poll(now) else { panic!() };
//! assert!(greeting.starts_with(b"220 mx.example.test"));
//! assert!(matches!(session.poll(now), Step::NeedInput));
//!
//! session.feed(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@example.test>\r\n");
//! // RCPT needs a lookup: the shell asks the metadata store and answers.
//! let Step::LookupRecipient(query) = session.poll(now) else { panic!() };
//! assert_eq!(query.domain, "example.test");
//! session.recipient_result(Ok(agentkeys_smtp::RecipientAnswer::NotHosted), now);
//! let Step::Write(replies) = session.poll(now) else { panic!() };
//! assert!(String::from_utf8_lossy(&replies).ends_with("550 5.7.1 Relay access denied\r\n"));
//! ```

// Tests may unwrap; the library proper is linted without this (non-test build).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod acceptance;
mod data;
pub mod limits;
mod received;
mod reply;
mod server;
mod session;
mod throttle;
pub mod verdict_dns;
pub mod verdicts;

#[cfg(test)]
mod testing;

pub use acceptance::{
    DeliveryError, InboundVerifier, OutboundSigner, RecipientRoute, add_verdicts, blob_keys, http_submission,
    lookup_recipient, route_recipient, store_delivery, store_delivery_signed,
};
pub use agentkeys_submission::auth_audit;
pub use limits::*;
pub use reply::Reply;
pub use server::{Fetched, IngestError, Ingested, SmtpConfig, SmtpServer, SmtpStores, next_connection};
pub use session::{
    Delivery, InboundEnvelope, ListenerKind, LocalRecipient, Now, Outbound, RecipientAnswer, RecipientQuery,
    Session, SessionContext, Step,
};
pub use throttle::{AUTH_THROTTLE_BUDGET, AuthThrottle, address_key};
pub use verdict_dns::{AnswerTable, DnsCounts};
pub use verdicts::{MailAuthVerifier, VERDICT_BUDGET};
