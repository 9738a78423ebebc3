//! What both sending doors of AgentKeys Mail share, so the SMTP submission
//! listeners (`agentkeys-smtp`) and `POST /v1/inboxes/{address}/send`
//! (`agentkeys-api`) apply one sequence without depending on each other:
//!
//! 1. **AUTH** is `agentkeys_core::Credentials` (parse → facts → evaluate →
//!    `SendAuthorized`), recorded with [`auth_audit`] before it takes effect,
//!    refusals answered no earlier than [`AUTH_FAILURE_FLOOR`] plus jitter.
//! 2. **Recipients** go through [`lookup_recipient`] and [`route_recipient`], at
//!    most [`MAX_RECIPIENTS`].
//! 3. **The message** passes [`check_message`]: no NUL, `From:` and `Sender:`
//!    pinned to the inbox (the MX applies [`contains_nul`] only).
//! 4. **Allow/block lists** ([`guard`]): recipients against the sending inbox's
//!    send lists; on the MX, the sender against each recipient inbox's receive lists.
//! 5. **Send limits and review** ([`guardrails`]): the agent's limits refuse
//!    (`452 4.7.0` / 429), or the message is held for its owner's review.
//! 6. **Storing** is one [`Delivery`] written by [`store_delivery_signed`]: one
//!    durable write, then the queue rows, before the door says yes.
//!
//! ```
//! use agentkeys_core::Address;
//! use agentkeys_submission::{MessageRefusal, check_message};
//!
//! let inbox: Address = "bot@agents.example".parse().unwrap();
//! assert_eq!(check_message(b"From: Bot <bot@agents.example>\r\n\r\nhi\r\n", &inbox), Ok(()));
//! let forged = b"From: \"ceo@bank.example\" <bot@agents.example>\r\n\r\nhi\r\n";
//! assert_eq!(check_message(forged, &inbox), Err(MessageRefusal::From));
//! ```

// Tests may unwrap; the library proper is linted without this (non-test build).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth_audit;
mod delivery;
pub mod guard;
pub mod guardrails;
pub mod limits;
mod message;
mod recipient;

pub use delivery::{
    Delivery, DeliveryError, InboundEnvelope, Outbound, OutboundSigner, blob_keys, http_submission, local_copy,
    queue_stored, store_delivery, store_delivery_signed,
};
pub use limits::{AUTH_FAILURE_FLOOR, AUTH_FAILURE_JITTER, DEFAULT_MAX_MESSAGE_SIZE, MAX_RECIPIENTS};
pub use message::{MessageRefusal, check_message, contains_nul};
pub use recipient::{LocalRecipient, RecipientAnswer, RecipientQuery, RecipientRoute, lookup_recipient, route_recipient};
