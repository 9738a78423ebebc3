//! The MCP server (rmcp): the [`MailService`] operations as tools, over stdio
//! (`agentkeys mcp`) or streamable HTTP on a loopback address
//! (`agentkeys mcp --http 127.0.0.1:8788`, endpoint `/mcp`).
//!
//! Every tool has a JSON Schema for its input (schemars, from the parameter types
//! in [`crate::mailbox`]) and annotations: reads and waits are `readOnlyHint`,
//! sending, replying and forwarding are `destructiveHint` (they cannot be
//! undone), and `create_inbox` and `request_grant` are neither (they add an inbox that expires, or a request the owner decides). A failure is a tool error (`isError: true`) whose text says what
//! went wrong and what to do, never a protocol error.

use std::net::SocketAddr;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::mailbox::{
    CreateInboxParams, ExtractOtpParams, ForwardParams, GetAttachmentParams, GetMessageParams, ListInboxesParams, ListMessagesParams,
    ListSentParams, MailError, MailService, MarkParams, ReplyParams, SendMessageParams, WaitForOtpParams, WaitParams,
    GetThreadParams, ListThreadsParams, SearchParams, RequestGrantParams, ListGrantRequestsParams,
};

/// The path of the streamable HTTP endpoint.
pub const HTTP_PATH: &str = "/mcp";

/// Longest wait of one MCP tool call, in seconds: clients time tool calls out
/// (often at 60 s), so a longer wait answers "timed out: call again with
/// since = <cursor>" and the next call continues the same window.
pub const MCP_MAX_WAIT_SECS: u64 = 40;

/// What the server tells clients about itself.
const INSTRUCTIONS: &str = "Mail for this agent on an AgentKeys Mail server. \
Start with list_inboxes. If the owner allows it (a grant with the create scope), \
create_inbox makes a fresh address per service (e.g. signup-github@…) that \
expires on its own. To receive a sign-up code: submit the form, then call \
wait_for_otp with the inbox and the service's from_domain (e.g. example.com). \
It returns the newest code or link from that domain that no earlier call handed \
out, from the last 2 minutes or arriving while it waits, so a mail that came \
first is not missed and an old one is not returned again. If it answers \
'timed out', call it again with since set to the cursor it gave. If it answers \
'refused sender', the mail did not come from the service (or could not be \
authenticated): do not use it. If `ambiguous` is true, read `reason` and \
`candidates` before using the code. send_message, reply_to_message and \
forward_message send real mail.";

/// Caps a valid wait at [`MCP_MAX_WAIT_SECS`]; an invalid one (0, over
/// [`crate::mailbox::MAX_WAIT_SECS`]) is left for the operation to refuse.
fn cap_wait(asked: Option<u64>) -> Option<u64> {
    match asked {
        Some(s) if s == 0 || s > crate::mailbox::MAX_WAIT_SECS => Some(s),
        other => Some(other.unwrap_or(MCP_MAX_WAIT_SECS).min(MCP_MAX_WAIT_SECS)),
    }
}

/// The tools over one [`MailService`].
#[derive(Debug, Clone)]
pub struct MailTools {
    mailbox: MailService,
    #[allow(dead_code)] // read by the `tool_handler` expansion
    tool_router: ToolRouter<Self>,
}

fn answer<T: Serialize>(result: Result<T, MailError>) -> Result<String, String> {
    match result {
        Ok(v) => serde_json::to_string_pretty(&v).map_err(|e| format!("cannot encode the answer: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tool_router]
impl MailTools {
    /// Tools over `mailbox`.
    pub fn new(mailbox: MailService) -> Self {
        Self { mailbox, tool_router: Self::tool_router() }
    }

    /// The inboxes this agent may use, with its scopes (read, send, create) on
    /// each and, for one it created, when it expires.
    /// Give one of these addresses to a service as the sign-up address and pass
    /// it as `inbox` to the other tools. An empty list means the owner has not
    /// granted any inbox yet: ask them for one with `request_grant`.
    #[tool(
        name = "list_inboxes",
        annotations(title = "List inboxes", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_inboxes(&self, Parameters(_p): Parameters<ListInboxesParams>) -> Result<String, String> {
        answer(self.mailbox.list_inboxes().await)
    }

    /// Creates a new inbox for this agent, to use as the sign-up address of
    /// one service (one per service: mail and codes stay apart, and the address
    /// can simply expire afterwards). Only works where the owner granted the
    /// `create` scope on a pattern such as `signup-*@domain`: the name must fall
    /// under it (omit `name` for a fresh random one). `expires_in_s` sets when
    /// it stops receiving and is deleted with all its mail (default and maximum:
    /// when the grant ends, at most 30 days); asking for longer than the grant
    /// is refused. Returns the `address` and `expires_at` (Unix seconds); then
    /// use `wait_for_otp` with that address as `inbox`. A refusal naming the
    /// grant means the owner has not allowed creating this address.
    #[tool(
        name = "create_inbox",
        annotations(title = "Create an inbox", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn create_inbox(&self, Parameters(p): Parameters<CreateInboxParams>) -> Result<String, String> {
        answer(self.mailbox.create_inbox(&p).await)
    }

    /// Messages of an inbox, newest first, with From and Subject and
    /// `authenticated` (false: anyone could have written that From:, do not
    /// act on it as the service's mail); filter by
    /// sender or subject text (substrings, for searching: to wait for a
    /// service's code use `wait_for_otp`), or by `to_tag` (mail sent to
    /// `inbox-local+tag@domain`: give each service its own tagged address).
    /// More pages: call again with `before` = `next_cursor`; read one with `get_message`.
    #[tool(
        name = "list_messages",
        annotations(title = "List messages", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_messages(&self, Parameters(p): Parameters<ListMessagesParams>) -> Result<String, String> {
        answer(self.mailbox.list_messages(&p).await)
    }

    /// Conversations of an inbox, the most recently active first: each thread
    /// with its message count and newest message (replies are joined by their
    /// Message-ID/In-Reply-To/References headers, or by subject when a reply
    /// has none). Read one with `get_thread`.
    #[tool(
        name = "list_threads",
        annotations(title = "List threads", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_threads(&self, Parameters(p): Parameters<ListThreadsParams>) -> Result<String, String> {
        answer(self.mailbox.list_threads(&p).await)
    }

    /// One conversation's messages, oldest first (From, Subject,
    /// `authenticated`); read each with `get_message`, whose `latest_text` is
    /// the new part of a reply without the quoted history.
    #[tool(
        name = "get_thread",
        annotations(title = "Read a thread", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_thread(&self, Parameters(p): Parameters<GetThreadParams>) -> Result<String, String> {
        answer(self.mailbox.get_thread(&p).await)
    }

    /// Searches an inbox on the server's index: From or To address/domain,
    /// subject words, words of the subject or decoded body (`text`), received
    /// time range (`since`/`until`, Unix seconds) and attachments, newest
    /// first, each with its `thread_id`. Words match whole and in any case.
    #[tool(
        name = "search_messages",
        annotations(title = "Search messages", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn search_messages(&self, Parameters(p): Parameters<SearchParams>) -> Result<String, String> {
        answer(self.mailbox.search_messages(&p).await)
    }

    /// One message, parsed: headers, text, HTML converted to readable text,
    /// attachment metadata and the server's authentication verdicts
    /// (SPF/DKIM/DMARC, `authenticated`). Treat the content of a message whose
    /// `authentication.authenticated` is false as coming from anyone; fetch an
    /// attachment by its `index` with `get_attachment`. The id of a message
    /// this inbox sent answers its delivery state instead (as `list_sent`).
    #[tool(
        name = "get_message",
        annotations(title = "Read a message", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_message(&self, Parameters(p): Parameters<GetMessageParams>) -> Result<String, String> {
        match self.mailbox.get_message(&p).await {
            // Not in the inbox: a message it sent answers its delivery state.
            Err(e @ MailError::Client(crate::client::ClientError::NotFound { .. })) => {
                match self.mailbox.sent_message(&p.inbox, &p.message_id).await {
                    Ok(sent) => answer(Ok(sent)),
                    Err(_) => answer::<()>(Err(e)),
                }
            }
            other => answer(other),
        }
    }

    /// Messages this inbox sent, newest first, with where each stands:
    /// `held` (waiting for the owner's review), `rejected`, `queued`,
    /// `deferred` (retrying), `bounced` (a DSN is in the inbox) or
    /// `delivered`, with the receiving server's last response per recipient.
    /// Give `message_id` for one (the id `send_message` answered with).
    #[tool(
        name = "list_sent",
        annotations(title = "List sent messages", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_sent(&self, Parameters(p): Parameters<ListSentParams>) -> Result<String, String> {
        answer(self.mailbox.list_sent(&p).await)
    }

    /// One attachment's bytes (base64), by the index `get_message` lists.
    #[tool(
        name = "get_attachment",
        annotations(title = "Get an attachment", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_attachment(&self, Parameters(p): Parameters<GetAttachmentParams>) -> Result<String, String> {
        answer(self.mailbox.get_attachment(&p).await)
    }

    /// Sends a new message from an inbox (needs a `send` grant). Real mail: it
    /// cannot be recalled. Pass `idempotency_key` (a new UUID per message) and
    /// reuse it when retrying after a timeout or error: the message is then sent
    /// at most once. A refusal naming the grant means the owner must grant `send`
    /// on this inbox.
    #[tool(
        name = "send_message",
        annotations(title = "Send a message", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn send_message(&self, Parameters(p): Parameters<SendMessageParams>) -> Result<String, String> {
        answer(self.mailbox.send_message(&p).await)
    }

    /// Replies to a message (threaded: In-Reply-To, References, `Re:` subject);
    /// `reply_all` also answers the other recipients. Real mail.
    #[tool(
        name = "reply_to_message",
        annotations(title = "Reply to a message", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn reply_to_message(&self, Parameters(p): Parameters<ReplyParams>) -> Result<String, String> {
        answer(self.mailbox.reply_to_message(&p).await)
    }

    /// Forwards a message (attached whole) to new recipients. Real mail.
    #[tool(
        name = "forward_message",
        annotations(title = "Forward a message", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn forward_message(&self, Parameters(p): Parameters<ForwardParams>) -> Result<String, String> {
        answer(self.mailbox.forward_message(&p).await)
    }

    /// Waits for a message: the newest in the look-back window (`since`,
    /// default the last 2 minutes) that matches and that no earlier wait handed
    /// out, else the first to arrive (pushed, no polling). At most 40 s per
    /// call: on "timed out", call again with `since` = the cursor it names.
    /// `from_domain` matches the From address's domain or a subdomain only.
    /// The message is then handed out: later waits skip it (`include_seen`
    /// shows it again; `get_message`/`extract_otp` with its `message_id` always
    /// read it). The answer lists `other_messages` it looked at and why they
    /// were skipped. For a sign-up code, use `wait_for_otp` instead.
    #[tool(
        name = "wait_for_message",
        annotations(title = "Wait for a message", read_only_hint = true, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn wait_for_message(&self, Parameters(mut p): Parameters<WaitParams>) -> Result<String, String> {
        p.timeout_s = cap_wait(p.timeout_s);
        answer(self.mailbox.wait_for_message(&p).await)
    }

    /// The sign-up tool: after submitting a form, waits for the service's code
    /// or magic link and returns it with `message_id`, `from`, `authenticated`,
    /// `ambiguous`, `reason`, `candidates` and `other_messages`. Returns the
    /// newest code from `from_domain` (or a subdomain; never a look-alike) that
    /// no earlier call handed out, from the last 2 minutes (`since`) or arriving
    /// while it waits (at most 40 s per call). What to do with the answer: a
    /// `code` → type it into the form; a `link` → open it; `ambiguous: true` →
    /// read `reason` and `candidates` and pick deliberately; "timed out" → call
    /// again with `since` = the cursor in the message; "refused sender" → the
    /// mail claimed to be the service but is a look-alike or unauthenticated:
    /// do not use it (`require_authenticated: false` accepts unauthenticated
    /// mail, and the answer then carries a `warning`).
    #[tool(
        name = "wait_for_otp",
        annotations(title = "Wait for a sign-up code or link", read_only_hint = true, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn wait_for_otp(&self, Parameters(mut p): Parameters<WaitForOtpParams>) -> Result<String, String> {
        p.timeout_s = cap_wait(p.timeout_s);
        answer(self.mailbox.wait_for_otp(&p).await)
    }

    /// The one-time code or magic link of a given message (`message_id`), or,
    /// without it, as `wait_for_otp` (`wait: true` waits, at most 40 s per call).
    /// Says when a message has several candidates (`ambiguous`, with `reason`)
    /// and whether the sender was authenticated; an unauthenticated sender is
    /// refused unless `require_authenticated: false`.
    #[tool(
        name = "extract_otp",
        annotations(title = "Extract a one-time code", read_only_hint = true, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn extract_otp(&self, Parameters(mut p): Parameters<ExtractOtpParams>) -> Result<String, String> {
        if p.wait {
            p.timeout_s = cap_wait(p.timeout_s);
        }
        answer(self.mailbox.extract_otp(&p).await)
    }

    /// Marks messages read (handed out: waits skip them) or unread (waits may
    /// return them again), e.g. to retry a code that did not work.
    #[tool(
        name = "mark_messages",
        annotations(title = "Mark messages read or unread", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn mark_messages(&self, Parameters(p): Parameters<MarkParams>) -> Result<String, String> {
        answer(self.mailbox.mark_messages(&p))
    }

    /// Asks the owner for a grant this agent lacks (an inbox to read or send
    /// from, or the `create` scope on a pattern such as `signup-*@domain`),
    /// saying why in `reason`. Nothing is granted until the owner approves it
    /// on their console (or with their master key); at most 10 requests wait at
    /// a time, each for 7 days. Returns the request's `id`; follow it with
    /// `list_grant_requests`.
    #[tool(
        name = "request_grant",
        annotations(title = "Ask the owner for a grant", read_only_hint = false, destructive_hint = false, idempotent_hint = false, open_world_hint = false)
    )]
    async fn request_grant(&self, Parameters(p): Parameters<RequestGrantParams>) -> Result<String, String> {
        answer(self.mailbox.request_grant(&p).await)
    }

    /// This agent's grant requests of the last 30 days, newest first, each
    /// `pending` (the owner has not decided), `approved` (its `grant` now
    /// works: call `list_inboxes`), `denied`, or `expired` (not decided within 7 days).
    #[tool(
        name = "list_grant_requests",
        annotations(title = "List grant requests", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_grant_requests(&self, Parameters(_p): Parameters<ListGrantRequestsParams>) -> Result<String, String> {
        answer(self.mailbox.grant_requests().await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for MailTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentkeys-mail", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Why the MCP server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// `--http` names an address that is not loopback.
    #[error("{0} is not a loopback address: the MCP endpoint has no authentication of its own, so it only listens on 127.0.0.0/8 or ::1")]
    NotLoopback(SocketAddr),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("the MCP server failed: {0}")]
    Transport(String),
}

/// Serves the tools over stdin/stdout until the client closes them or `stop` is cancelled.
pub async fn serve_stdio(mailbox: MailService, stop: CancellationToken) -> Result<(), McpError> {
    let running = MailTools::new(mailbox)
        .serve_with_ct(rmcp::transport::stdio(), stop)
        .await
        .map_err(|e| McpError::Transport(e.to_string()))?;
    running.waiting().await.map_err(|e| McpError::Transport(e.to_string()))?;
    Ok(())
}

/// Binds the streamable HTTP endpoint on `addr` (loopback only).
pub async fn bind_http(addr: SocketAddr) -> Result<tokio::net::TcpListener, McpError> {
    if !addr.ip().is_loopback() {
        return Err(McpError::NotLoopback(addr));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|source| McpError::Bind { addr, source })
}

/// Serves the tools over streamable HTTP at [`HTTP_PATH`] on `listener` until
/// `stop` is cancelled.
pub async fn serve_http(mailbox: MailService, listener: tokio::net::TcpListener, stop: CancellationToken) -> Result<(), McpError> {
    use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
    use rmcp::transport::streamable_http_server::StreamableHttpService;
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = stop.child_token();
    let service = StreamableHttpService::new(
        move || Ok(MailTools::new(mailbox.clone())),
        std::sync::Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().nest_service(HTTP_PATH, service);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|e| McpError::Transport(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_schema_and_the_right_annotations() {
        let tools = MailTools::tool_router().list_all();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names.iter().copied().collect::<std::collections::BTreeSet<_>>(),
            [
                "list_inboxes",
                "create_inbox",
                "list_messages",
                "get_message",
                "list_sent",
                "get_attachment",
                "send_message",
                "reply_to_message",
                "forward_message",
                "wait_for_message",
                "wait_for_otp",
                "extract_otp",
                "mark_messages",
                "list_threads",
                "get_thread",
                "search_messages",
                "request_grant",
                "list_grant_requests"
            ]
            .into_iter()
            .collect()
        );
        for tool in &tools {
            assert_eq!(tool.input_schema.get("type").and_then(|t| t.as_str()), Some("object"), "{}", tool.name);
            let a = tool.annotations.as_ref().unwrap_or_else(|| panic!("{} has no annotations", tool.name));
            let sends = matches!(tool.name.as_ref(), "send_message" | "reply_to_message" | "forward_message");
            // Creating an inbox changes state but destroys nothing.
            let creates = matches!(tool.name.as_ref(), "create_inbox" | "request_grant");
            assert_eq!(a.destructive_hint, Some(sends), "{}", tool.name);
            assert_eq!(a.read_only_hint, Some(!sends && !creates), "{}", tool.name);
            assert!(tool.description.as_deref().is_some_and(|d| d.len() > 20), "{}", tool.name);
        }
    }

    #[test]
    fn mcp_waits_are_capped_and_invalid_ones_left_to_refuse() {
        assert_eq!(cap_wait(None), Some(MCP_MAX_WAIT_SECS));
        assert_eq!(cap_wait(Some(5)), Some(5));
        assert_eq!(cap_wait(Some(crate::mailbox::MAX_WAIT_SECS)), Some(MCP_MAX_WAIT_SECS));
        assert_eq!(cap_wait(Some(0)), Some(0));
        assert_eq!(cap_wait(Some(100_000)), Some(100_000));
    }

    #[tokio::test]
    async fn http_refuses_non_loopback() {
        let e = bind_http("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert!(matches!(e, McpError::NotLoopback(_)));
        assert!(bind_http("127.0.0.1:0".parse().unwrap()).await.is_ok());
    }
}
