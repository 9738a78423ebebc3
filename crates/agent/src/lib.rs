//! The agent side of AgentKeys Mail (DESIGN.md §5 Read / Send): the server hands
//! out capabilities and serves raw bytes; everything that understands a message
//! lives here.
//!
//! - [`message`]: a parsed view of a raw message (headers, text, HTML as readable
//!   text, attachment metadata, the `Authentication-Results` verdicts of our MX).
//! - [`auth_results`]: the RFC 8601 parser behind those verdicts.
//! - [`otp`]: one-time code and magic-link extraction, which never guesses
//!   silently.
//! - [`wait`]: the rules of a wait: the look-back window on the server's clock,
//!   the sender rule (domain or subdomain, never a substring), and the choice of
//!   the newest matching message not handed out before.
//! - [`compose`]: MIME for send, reply and forward (mail-builder).
//!
//! The daemon (`agentkeys mcp`, `agentkeys mail …`):
//!
//! - [`config`]: the agent's settings (`agent.json` from pairing, or
//!   `AGENTKEYS_SERVER` + `AGENTKEYS_AGENT_KEY`).
//! - [`client`]: the server connection: read capabilities minted per inbox and
//!   reused until shortly before expiry, list/fetch/event stream, SMTP
//!   submission or HTTP send.
//! - [`tls`] and [`https`]: whom every client of the server trusts (the
//!   certificate pinned at pairing/enrollment, `AGENTKEYS_CA_FILE`, the webpki
//!   roots) and the HTTP/HTTPS transport built on it.
//! - [`sse`]: a sans-IO `text/event-stream` reader.
//! - [`handout`]: the per-agent, per-inbox record of messages already handed
//!   out by a wait (shared by the CLI and the MCP daemon through a locked file).
//! - [`mailbox`]: the operations (one per MCP tool and CLI verb).
//! - [`mcp`]: the MCP server (rmcp) over stdio or streamable HTTP.

/// The RFC 8601 parser and the `authenticated` rule live in `agentkeys_core`
/// (the server's message index applies the same rule to its header summary).
pub use agentkeys_core::auth_results;
pub mod compose;
pub mod html;
pub mod latest;
pub mod message;
pub mod otp;
pub mod wait;

pub mod client;
pub mod handout;
pub mod config;
pub mod https;
pub mod mailbox;
pub mod mcp;
pub mod sse;
pub mod tls;
