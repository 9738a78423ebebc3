//! The agent side of AgentKeys Mail (DESIGN.md §5 Read / Send): the server hands
//! out capabilities and serves raw bytes; everything that understands a message
//! lives here.
//!
//! - [`message`]: a parsed view of a raw message (headers, text, HTML as readable
//!   text, attachment metadata, the `Authentication-Results` verdicts of our MX).
//! - [`auth_results`]: the RFC 8601 parser behind those verdicts.
//! - [`otp`]: one-time code and magic-link extraction, which never guesses
//!   silently.
//! - [`compose`]: MIME for send, reply and forward (mail-builder).

pub mod auth_results;
pub mod compose;
pub mod html;
pub mod message;
pub mod otp;
