//! The agent's commands: `agentkeys mail list|show|send|reply|forward|wait|otp|inboxes|inbox-create|grant-request|grant-requests`
//! and `agentkeys mcp [--http ADDR]`. Both run the same operations
//! (`agentkeys_agent::mailbox::MailService`) the MCP tools run. Configuration:
//! the `agent.json` pairing wrote, or `AGENTKEYS_SERVER` + `AGENTKEYS_AGENT_KEY`
//! (see `agentkeys_agent::config`). Text for people by default, `--json` for
//! scripts; a spinner on stderr while waiting, only when stderr is a terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentkeys_agent::client::ApiClient;
use agentkeys_agent::config::AgentConfig;
use agentkeys_agent::mailbox::{
    AttachmentInput, CreateInboxParams, TightenPolicyParams, ExtractOtpParams, ForwardParams, GetAttachmentParams, GetMessageParams, ListMessagesParams,
    MailError, MailService, MarkParams, ReplyParams, SendMessageParams, WaitParams,
    GetThreadParams, ListThreadsParams, SearchParams,
};
use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde::Serialize;

/// The inbox to use when `--inbox` is not given.
pub(crate) const INBOX_ENV: &str = "AGENTKEYS_INBOX";

/// Exit status of `mail wait`/`mail otp` when nothing matching arrived in time.
pub(crate) const EXIT_TIMED_OUT: u8 = 3;
/// Exit status of `mail otp` when the message holds several distinct codes
/// (or links) and `--first` was not given; the best is still printed.
pub(crate) const EXIT_AMBIGUOUS: u8 = 4;
/// Exit status when the only claimants were refused: a look-alike sender, or
/// one our MX did not authenticate (without `--allow-unauthenticated`).
pub(crate) const EXIT_REFUSED_SENDER: u8 = 5;

/// A failure with its own exit status (see the `EXIT_*` constants).
#[derive(Debug)]
pub(crate) struct Exit {
    /// The status.
    pub(crate) code: u8,
    /// What to print after `error: `.
    pub(crate) message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Maps the wait errors to their exit statuses.
fn exit_for(e: MailError) -> anyhow::Error {
    let code = match &e {
        MailError::TimedOut { .. } => EXIT_TIMED_OUT,
        MailError::Refused { .. } => EXIT_REFUSED_SENDER,
        _ => return e.into(),
    };
    Exit { code, message: e.to_string() }.into()
}

/// Options every `mail` verb takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct InboxArg {
    /// The inbox (default: the only inbox this agent may use). Env: AGENTKEYS_INBOX.
    #[arg(long, env = INBOX_ENV, value_name = "ADDRESS")]
    inbox: Option<String>,
}

/// `agentkeys mail …`.
#[derive(Debug, Subcommand)]
pub(crate) enum MailCmd {
    /// The inboxes this agent may use.
    Inboxes,
    /// Create an inbox for this agent (one per service's sign-up), under a grant
    /// with the `create` scope; it stops receiving and is deleted with its mail
    /// when it expires. Prints the address.
    InboxCreate {
        /// The local part, e.g. signup-github (default: a fresh name under the grant's pattern).
        #[arg(long)]
        name: Option<String>,
        /// The domain (default: the one the agent's create grant names).
        #[arg(long)]
        domain: Option<String>,
        /// Lifetime, e.g. 10m, 2h, 7d (default: as long as the grant allows; at most 30d).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Show the inbox's allow/block lists, or tighten them (needs a grant with
    /// `admin` on the inbox; only the owner loosens them: agentkeys inbox policy).
    Policy {
        #[command(flatten)]
        inbox: InboxArg,
        /// Refuse mail from this sender (an address or a domain; repeatable).
        #[arg(long, value_name = "PATTERN")]
        block_sender: Vec<String>,
        /// Never send to this recipient (an address or a domain; repeatable).
        #[arg(long, value_name = "PATTERN")]
        block_recipient: Vec<String>,
        /// Accept mail only from these senders (repeatable; replaces the receive
        /// allow list, within the one there is).
        #[arg(long, value_name = "PATTERN")]
        allow_sender: Vec<String>,
        /// Send only to these recipients (repeatable; replaces the send allow
        /// list, within the one there is).
        #[arg(long, value_name = "PATTERN")]
        allow_recipient: Vec<String>,
        /// Unauthenticated mail: label or hide (never back to show).
        #[arg(long, value_name = "MODE")]
        unauthenticated: Option<String>,
    },
    /// Ask the owner for a grant: it waits on the owner's console (approvals
    /// page), where the owner approves it with a passkey or denies it. Prints
    /// the request's id; mint once the owner approved.
    GrantRequest {
        /// The inbox or pattern (bot@example.com, signup-*@example.com, *@example.com).
        #[arg(long, value_name = "INBOX")]
        inbox: String,
        /// Comma-separated: read, send, admin, create.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. 2h, 7d (default and at most 30d).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Why, shown to the owner (at most 200 characters).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List messages, newest first.
    List {
        #[command(flatten)]
        inbox: InboxArg,
        /// How many (1-100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only messages whose From contains this text.
        #[arg(long)]
        from: Option<String>,
        /// Only messages whose subject contains this text.
        #[arg(long)]
        subject: Option<String>,
        /// Only messages sent to the subaddress with this tag (`github` for bot+github@domain).
        #[arg(long)]
        to_tag: Option<String>,
        /// Only messages older than this id (the previous page's next cursor).
        #[arg(long)]
        before: Option<String>,
        /// Only messages newer than this id.
        #[arg(long)]
        after: Option<String>,
    },
    /// List conversations (threads), the most recently active first.
    Threads {
        #[command(flatten)]
        inbox: InboxArg,
        /// How many (1-100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The previous page's next cursor.
        #[arg(long)]
        before: Option<String>,
    },
    /// Show one thread's messages, oldest first.
    Thread {
        /// The thread id (from `mail threads` or `mail search`).
        thread_id: String,
        #[command(flatten)]
        inbox: InboxArg,
    },
    /// Search an inbox (the server's index): every option given must hold.
    Search {
        #[command(flatten)]
        inbox: InboxArg,
        /// From address (exactly) or domain (with subdomains), e.g. github.com.
        #[arg(long)]
        from: Option<String>,
        /// To/Cc address or domain.
        #[arg(long)]
        to: Option<String>,
        /// Words that must all be in the subject.
        #[arg(long)]
        subject: Option<String>,
        /// Words that must each be in the subject or the body (whole words, any case).
        #[arg(long, value_name = "WORDS")]
        text: Option<String>,
        /// Received since T: a duration ago (30m, 2h, 7d), a date (2026-12-07, UTC) or Unix seconds.
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Received before T (same forms as --since).
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Only messages with (true) or without (false) attachments.
        #[arg(long, value_name = "BOOL")]
        has_attachment: Option<bool>,
        /// How many (1-100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The previous page's next cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one message (parsed), or save one attachment.
    Show {
        /// The message id, or enough of its start to name one message.
        message_id: String,
        #[command(flatten)]
        inbox: InboxArg,
        /// Save attachment N (as `get_message` numbers them) to --out.
        #[arg(long, value_name = "N", requires = "out")]
        attachment: Option<u32>,
        /// Where to save the attachment.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Messages this inbox sent, newest first, with their delivery state
    /// (held, rejected, queued, deferred, bounced, delivered) and last response.
    Sent {
        /// Only this message (the id the send answered with).
        message_id: Option<String>,
        #[command(flatten)]
        inbox: InboxArg,
    },
    /// Send a message.
    Send {
        #[command(flatten)]
        inbox: InboxArg,
        /// Recipient (repeat for several).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Copy recipient.
        #[arg(long)]
        cc: Vec<String>,
        /// Blind copy recipient.
        #[arg(long)]
        bcc: Vec<String>,
        /// The subject.
        #[arg(long, default_value = "")]
        subject: String,
        #[command(flatten)]
        body: BodyArgs,
        /// Attach a file (repeat for several).
        #[arg(long, value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// Send at most once per key: rerunning with the same key and message
        /// within 24 h sends nothing again (a new message needs a new key, e.g. a UUID).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Reply to a message (threaded, `Re:` subject).
    Reply {
        /// The message to answer.
        message_id: String,
        #[command(flatten)]
        inbox: InboxArg,
        /// Also answer the original's other recipients.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        body: BodyArgs,
        /// Attach a file (repeat for several).
        #[arg(long, value_name = "FILE")]
        attach: Vec<PathBuf>,
    },
    /// Forward a message (attached whole).
    Forward {
        /// The message to forward.
        message_id: String,
        #[command(flatten)]
        inbox: InboxArg,
        /// Recipient (repeat for several).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Copy recipient.
        #[arg(long)]
        cc: Vec<String>,
        /// Blind copy recipient.
        #[arg(long)]
        bcc: Vec<String>,
        /// A note above the forwarded message.
        #[arg(long)]
        text: Option<String>,
    },
    /// Wait for a message: the newest in the look-back window (--since, default
    /// 2m) that matches and no earlier wait handed out, else the next to arrive.
    /// Exit status 3: timed out.
    Wait {
        #[command(flatten)]
        inbox: InboxArg,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print the one-time code or magic link: of the given message, or of the
    /// newest message from --from not handed out before (--wait: waiting for
    /// one). Only senders our MX authenticated count, unless
    /// --allow-unauthenticated. Exit status 3: timed out; 4: ambiguous (several
    /// codes; the best is printed; --first accepts it); 5: refused sender
    /// (look-alike or unauthenticated).
    Otp {
        /// The message (default: see --wait).
        message_id: Option<String>,
        #[command(flatten)]
        inbox: InboxArg,
        /// Wait for a matching message if none is there yet.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        filter: WaitArgs,
        /// Accept a sender our MX did not authenticate (the answer says so on stderr).
        #[arg(long)]
        allow_unauthenticated: bool,
        /// With several codes in the message, accept the best instead of exiting with status 4.
        #[arg(long)]
        first: bool,
    },
    /// Mark messages read (handed out: waits skip them) or unread (waits may
    /// return them again).
    Mark {
        /// `read` or `unread`.
        #[arg(value_parser = ["read", "unread"])]
        state: String,
        /// The message ids.
        #[arg(required = true)]
        message_ids: Vec<String>,
        #[command(flatten)]
        inbox: InboxArg,
    },
    /// This agent's grant requests of the last 30 days and where each stands:
    /// pending, approved (with the grant), denied or expired.
    GrantRequests,
}

/// A message body: `--text`, `--text-file` (`-` for stdin), `--html-file`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BodyArgs {
    /// The plain-text body.
    #[arg(long, conflicts_with = "text_file")]
    text: Option<String>,
    /// Read the plain-text body from a file (`-`: stdin).
    #[arg(long, value_name = "FILE")]
    text_file: Option<PathBuf>,
    /// Read an HTML body from a file.
    #[arg(long, value_name = "FILE")]
    html_file: Option<PathBuf>,
}

/// Filters and bounds of a wait.
#[derive(Debug, Clone, Args)]
pub(crate) struct WaitArgs {
    /// Only mail whose From address is in this domain or a subdomain
    /// (example.com matches mail.example.com; never a substring, never the display name).
    #[arg(long, value_name = "DOMAIN")]
    from: Option<String>,
    /// Only mail from exactly this From address.
    #[arg(long, value_name = "ADDRESS")]
    from_address: Option<String>,
    /// Only a message whose subject contains this text.
    #[arg(long)]
    subject: Option<String>,
    /// Give up after this many seconds (at most 600).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// How far back to look, on the server's clock: 2m (default), 90s, an RFC
    /// 3339 time, or a message id (after it).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Also return a message an earlier wait already handed out.
    #[arg(long)]
    include_seen: bool,
}

/// `agentkeys mcp`.
#[derive(Debug, Clone, Args)]
pub(crate) struct McpArgs {
    /// Serve streamable HTTP on this loopback address (endpoint /mcp) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

fn service() -> Result<MailService> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let path = crate::pairing_client::agent_config_path().ok();
    let config = AgentConfig::load(path.as_deref(), &env).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
    // The hand-out record sits next to agent.json, shared by every process of this agent.
    let handouts = match agentkeys_approval::key_file::config_dir() {
        Ok(dir) => agentkeys_agent::handout::Handouts::at(
            dir.join(agentkeys_agent::handout::file_name(&config.server, config.agent_key.expose())),
        ),
        Err(_) => agentkeys_agent::handout::Handouts::in_memory(),
    };
    Ok(MailService::new(ApiClient::new(config)?).with_handouts(handouts))
}

async fn resolve_inbox(mail: &MailService, arg: &InboxArg) -> Result<String> {
    if let Some(inbox) = &arg.inbox {
        return Ok(inbox.clone());
    }
    let list = mail.list_inboxes().await?;
    match list.inboxes.as_slice() {
        [only] => Ok(only.address.clone()),
        [] => bail!("this agent has no inbox it may use: ask the owner for a grant"),
        many => {
            let names: Vec<&str> = many.iter().map(|i| i.address.as_str()).collect();
            bail!("this agent may use several inboxes ({}): choose one with --inbox or {INBOX_ENV}", names.join(", "))
        }
    }
}

/// Length of a full message id (a ULID).
const MESSAGE_ID_LEN: usize = 26;
/// Most messages a prefix is looked for among, newest first.
const MAX_PREFIX_SCAN: usize = 2_000;

/// The full id of the message `id` names: itself when it is a whole ULID, else
/// the one message of `inbox` whose id starts with it (case-insensitive), as
/// `git` resolves a short hash. Ids are ULIDs, so they sort by arrival: the
/// newest-first scan stops at the first id below the prefix.
async fn full_message_id(mail: &MailService, inbox: &str, id: &str) -> Result<String> {
    if id.len() >= MESSAGE_ID_LEN {
        return Ok(id.to_owned());
    }
    let prefix = id.to_ascii_uppercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("{id:?} is not a message id or the start of one (ids look like 01J…; see `agentkeys mail list`)");
    }
    let mut found: Vec<String> = Vec::new();
    let mut before = None;
    let mut scanned = 0;
    'pages: while scanned < MAX_PREFIX_SCAN {
        let page = mail
            .list_messages(&ListMessagesParams {
                inbox: inbox.to_owned(),
                limit: Some(100),
                after: None,
                before: before.take(),
                from: None,
                subject_contains: None,
                to_tag: None,
            })
            .await?;
        for m in &page.messages {
            scanned += 1;
            if m.message_id.starts_with(&prefix) {
                found.push(m.message_id.clone());
            } else if m.message_id.as_str() < prefix.as_str() {
                break 'pages;
            }
        }
        match page.next_cursor {
            Some(c) => before = Some(c),
            None => break,
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no message in {inbox} has an id starting with {id} (see `agentkeys mail list`)"),
        many => bail!(
            "{} messages in {inbox} have ids starting with {id} ({}{}): give more of the id",
            many.len(),
            many.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if many.len() > 3 { ", …" } else { "" }
        ),
    }
}

fn body(args: &BodyArgs) -> Result<(Option<String>, Option<String>)> {
    let text = match (&args.text, &args.text_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the body from stdin")?;
            Some(s)
        }
        (None, Some(p)) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?),
        (None, None) => None,
    };
    let html = match &args.html_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    if text.is_none() && html.is_none() {
        bail!("give a body: --text, --text-file (- for stdin) or --html-file");
    }
    Ok((text, html))
}

fn attachments(files: &[PathBuf]) -> Result<Vec<AttachmentInput>> {
    files
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let filename = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| anyhow!("{} has no file name", p.display()))?;
            Ok(AttachmentInput {
                filename,
                content_type: None,
                content_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        })
        .collect()
}

/// One sent message: id, state, recipients, then each delivery's state and response.
fn print_sent(m: &agentkeys_agent::mailbox::SentMessage) {
    println!("{}  {:<9}  to {}", m.message_id, m.state, m.recipients.join(", "));
    for d in &m.deliveries {
        println!("    {:<30} {:<9} attempts {}  {}", d.recipient, d.state, d.attempts, d.last_response.as_deref().unwrap_or(""));
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn time(unix: i64) -> String {
    agentkeys_core::time::rfc3339(unix)
}

/// A spinner on stderr while `work` runs, only when stderr is a terminal.
async fn with_spinner<T>(label: String, timeout: u64, work: impl Future<Output = T>) -> T {
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let spin_stop = stop.clone();
    let spinner = tokio::spawn(async move {
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let start = Instant::now();
        let mut i = 0usize;
        loop {
            let left = timeout.saturating_sub(start.elapsed().as_secs());
            {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{} {label} ({left} s left) ", FRAMES[i % FRAMES.len()]);
                let _ = err.flush();
            }
            i += 1;
            tokio::select! {
                () = spin_stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    });
    let result = work.await;
    stop.cancel();
    let _ = spinner.await;
    result
}

/// `agentkeys mail …`.
pub(crate) async fn run(cmd: MailCmd, json: bool) -> Result<()> {
    let mail = service()?;
    match cmd {
        MailCmd::Inboxes => {
            let list = mail.list_inboxes().await?;
            if json {
                return print_json(&list);
            }
            if list.inboxes.is_empty() {
                println!("no inboxes: ask the owner for a grant");
            }
            for i in &list.inboxes {
                println!(
                    "{}  {}  grant until {}{}{}",
                    i.address,
                    i.scopes.join(","),
                    time(i.grant_expires_at),
                    i.expires_at.map(|t| format!("  inbox expires {}", time(t))).unwrap_or_default(),
                    i.status.as_deref().filter(|s| *s != "active").map(|s| format!("  ({s})")).unwrap_or_default()
                );
            }
        }
        MailCmd::InboxCreate { name, domain, expires_in } => {
            let expires_in_s = expires_in
                .as_deref()
                .map(|d| {
                    let secs = agentkeys_core::parse_duration(d).map_err(|e| anyhow!("--expires-in: {e}"))?;
                    u64::try_from(secs).map_err(|_| anyhow!("--expires-in: {d} is not a positive duration"))
                })
                .transpose()?;
            let created = mail.create_inbox(&CreateInboxParams { name, domain, expires_in_s }).await?;
            if json {
                return print_json(&created);
            }
            println!("{}  expires {}", created.address, time(created.expires_at));
        }
        MailCmd::Policy { inbox, block_sender, block_recipient, allow_sender, allow_recipient, unauthenticated } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let params = TightenPolicyParams {
                inbox: inbox.clone(),
                block_senders: block_sender,
                block_recipients: block_recipient,
                allow_senders: (!allow_sender.is_empty()).then_some(allow_sender),
                allow_recipients: (!allow_recipient.is_empty()).then_some(allow_recipient),
                unauthenticated,
            };
            let unchanged = params.block_senders.is_empty()
                && params.block_recipients.is_empty()
                && params.allow_senders.is_none()
                && params.allow_recipients.is_none()
                && params.unauthenticated.is_none();
            let policy = if unchanged { mail.inbox_policy(&inbox).await? } else { mail.tighten_policy(&params).await? };
            if json {
                return print_json(&policy);
            }
            let list = |l: &[agentkeys_core::policy::AddressPattern]| {
                if l.is_empty() { "-".to_owned() } else { l.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") }
            };
            println!("{inbox}");
            println!("  receive allow: {}", list(&policy.receive_allow));
            println!("  receive block: {}", list(&policy.receive_block));
            println!("  send allow:    {}", list(&policy.send_allow));
            println!("  send block:    {}", list(&policy.send_block));
            println!("  unauthenticated: {}", policy.unauthenticated.as_str());
        }
        MailCmd::GrantRequest { inbox, scopes, ttl, reason } => {
            let ttl = ttl.as_deref().map(|d| agentkeys_core::parse_duration(d).map_err(|e| anyhow!("--ttl: {e}"))).transpose()?;
            let asked = mail.client().request_grant(&inbox, &scopes, ttl, reason.as_deref()).await?;
            if json {
                return print_json(&asked);
            }
            println!(
                "asked: {}  {} on {}  (waiting for the owner's console until {})",
                asked["id"].as_str().unwrap_or("-"),
                asked["scopes"].as_str().unwrap_or("-"),
                asked["inbox"].as_str().unwrap_or("-"),
                asked["decide_by"].as_str().unwrap_or("-")
            );
        }
        MailCmd::List { inbox, limit, from, subject, to_tag, before, after } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let list = mail
                .list_messages(&ListMessagesParams {
                    inbox,
                    limit: Some(limit),
                    after,
                    before,
                    from,
                    subject_contains: subject,
                    to_tag,
                })
                .await?;
            if json {
                return print_json(&list);
            }
            if list.messages.is_empty() {
                println!("no messages in {}", list.inbox);
            }
            for m in &list.messages {
                println!(
                    "{}  {}  {:<32}  {}{}{}",
                    m.message_id,
                    time(m.received_at),
                    m.from.as_deref().unwrap_or("-"),
                    m.subject.as_deref().unwrap_or("(no subject)"),
                    m.to_tag.as_deref().map(|t| format!("  (to tag {t})")).unwrap_or_default(),
                    // Our MX's verdict on the From: header, said where it matters.
                    if m.authenticated == Some(false) { "  (From not authenticated)" } else { "" }
                );
            }
            if let Some(c) = &list.next_cursor {
                println!("more: agentkeys mail list --before {c}");
            }
        }
        MailCmd::Threads { inbox, limit, before } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let list = mail.list_threads(&ListThreadsParams { inbox, limit: Some(limit), before }).await?;
            if json {
                return print_json(&list);
            }
            if list.threads.is_empty() {
                println!("no threads in {}", list.inbox);
            }
            for t in &list.threads {
                let m = &t.latest;
                println!(
                    "{}  {:>3} msg  {}  {:<32}  {}",
                    t.thread_id,
                    t.message_count,
                    time(m.received_at),
                    m.from.as_deref().unwrap_or("-"),
                    m.subject.as_deref().unwrap_or("(no subject)")
                );
            }
            if let Some(c) = &list.next_cursor {
                println!("more: agentkeys mail threads --before {c}");
            }
        }
        MailCmd::Thread { thread_id, inbox } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let t = mail.get_thread(&GetThreadParams { inbox, thread_id }).await?;
            if json {
                return print_json(&t);
            }
            println!("thread {} in {} ({} messages, {} sent)", t.thread_id, t.inbox, t.messages.len(), t.sent.len());
            // Received and sent, oldest first; a sent one is marked `sent` and
            // names its recipients and delivery state.
            let mut lines: Vec<(i64, String)> = t
                .messages
                .iter()
                .map(|m| {
                    let line = format!(
                        "{}  {}  {:<32}  {}{}",
                        m.message_id,
                        time(m.received_at),
                        m.from.as_deref().unwrap_or("-"),
                        m.subject.as_deref().unwrap_or("(no subject)"),
                        if m.authenticated == Some(false) { "  (From not authenticated)" } else { "" }
                    );
                    (m.received_at, line)
                })
                .collect();
            for s in &t.sent {
                let to = format!("sent to {}", s.recipients.join(", "));
                let line = format!(
                    "{}  {}  {:<32}  {}  ({})",
                    s.message_id,
                    time(s.sent_at),
                    to,
                    s.subject.as_deref().unwrap_or("(no subject)"),
                    s.state
                );
                lines.push((s.sent_at, line));
            }
            lines.sort_by_key(|(at, _)| *at);
            for (_, line) in lines {
                println!("{line}");
            }
        }
        MailCmd::Search { inbox, from, to, subject, text, since, until, has_attachment, limit, cursor } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let now = agentkeys_agent::client::unix_now();
            let since = since.as_deref().map(|t| point_in_time(t, now).map_err(|e| anyhow!("--since: {e}"))).transpose()?;
            let until = until.as_deref().map(|t| point_in_time(t, now).map_err(|e| anyhow!("--until: {e}"))).transpose()?;
            let found = mail
                .search_messages(&SearchParams { inbox, from, to, subject, text, since, until, has_attachment, limit: Some(limit), cursor })
                .await?;
            if json {
                return print_json(&found);
            }
            if found.messages.is_empty() {
                println!("nothing found in {}", found.inbox);
            }
            for h in &found.messages {
                let m = &h.message;
                println!(
                    "{}  {}  {:<32}  {}  (thread {}){}",
                    m.message_id,
                    time(m.received_at),
                    m.from.as_deref().unwrap_or("-"),
                    m.subject.as_deref().unwrap_or("(no subject)"),
                    h.thread_id,
                    if m.authenticated == Some(false) { "  (From not authenticated)" } else { "" }
                );
            }
            if let Some(c) = &found.next_cursor {
                println!("more: agentkeys mail search --cursor {c} (same options)");
            }
        }
        MailCmd::Show { message_id, inbox, attachment, out } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let message_id = full_message_id(&mail, &inbox, &message_id).await?;
            if let (Some(index), Some(out)) = (attachment, out) {
                let a = mail.get_attachment(&GetAttachmentParams { inbox, message_id, index }).await?;
                let bytes = base64::engine::general_purpose::STANDARD.decode(&a.content_base64)?;
                std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
                if json {
                    return print_json(&serde_json::json!({
                        "index": a.index, "filename": a.filename, "content_type": a.content_type,
                        "size": a.size, "saved_to": out,
                    }));
                }
                println!("saved attachment {} ({} bytes) to {}", a.index, a.size, out.display());
                return Ok(());
            }
            let m = match mail.get_message(&GetMessageParams { inbox: inbox.clone(), message_id: message_id.clone() }).await {
                // Not in the inbox: a message it sent shows its delivery state.
                Err(e @ agentkeys_agent::mailbox::MailError::Client(agentkeys_agent::client::ClientError::NotFound { .. })) => {
                    let Ok(sent) = mail.sent_message(&inbox, &message_id).await else { return Err(e.into()) };
                    if json {
                        return print_json(&sent);
                    }
                    print_sent(&sent);
                    return Ok(());
                }
                other => other?,
            };
            if json {
                return print_json(&m);
            }
            print_message(&m);
        }
        MailCmd::Sent { message_id, inbox } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let list = mail.list_sent(&agentkeys_agent::mailbox::ListSentParams { inbox, message_id }).await?;
            if json {
                return print_json(&list);
            }
            if list.sent.is_empty() {
                println!("nothing sent from {}", list.inbox);
            }
            for m in &list.sent {
                print_sent(m);
            }
        }
        MailCmd::Send { inbox, to, cc, bcc, subject, body: b, attach, idempotency_key } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let (text, html) = body(&b)?;
            let receipt = mail
                .send_message(&SendMessageParams {
                    inbox: inbox.clone(),
                    to,
                    cc,
                    bcc,
                    subject,
                    text,
                    html,
                    attachments: attachments(&attach)?,
                    idempotency_key,
                })
                .await?;
            if json {
                return print_json(&receipt);
            }
            if receipt.replayed {
                println!("already sent with this idempotency key: nothing sent again");
            }
            println!(
                "sent from {inbox} to {} recipient(s) via {}{}",
                receipt.recipients,
                receipt.via,
                receipt.rfc5322_message_id.map(|m| format!(", Message-ID {m}")).unwrap_or_default()
            );
        }
        MailCmd::Reply { message_id, inbox, all, body: b, attach } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let message_id = full_message_id(&mail, &inbox, &message_id).await?;
            let (text, html) = body(&b)?;
            let receipt = mail
                .reply_to_message(&ReplyParams { inbox, message_id, text, html, reply_all: all, attachments: attachments(&attach)? })
                .await?;
            if json {
                return print_json(&receipt);
            }
            println!("replied to {} recipient(s) via {}", receipt.recipients, receipt.via);
        }
        MailCmd::Forward { message_id, inbox, to, cc, bcc, text } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let message_id = full_message_id(&mail, &inbox, &message_id).await?;
            let receipt = mail.forward_message(&ForwardParams { inbox, message_id, to, cc, bcc, text }).await?;
            if json {
                return print_json(&receipt);
            }
            println!("forwarded to {} recipient(s) via {}", receipt.recipients, receipt.via);
        }
        MailCmd::Wait { inbox, wait } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let params = WaitParams {
                inbox: inbox.clone(),
                from_domain: wait.from,
                from_address: wait.from_address,
                subject_contains: wait.subject,
                timeout_s: Some(wait.timeout),
                since: wait.since,
                include_seen: wait.include_seen,
                require_authenticated: None,
            };
            let m = with_spinner(format!("waiting for mail in {inbox}"), wait.timeout, mail.wait_for_message(&params))
                .await
                .map_err(exit_for)?;
            if json {
                return print_json(&m);
            }
            println!(
                "{}  {}  {}  {}",
                m.message.message_id,
                time(m.message.received_at),
                m.message.from.as_deref().unwrap_or("-"),
                m.message.subject.as_deref().unwrap_or("(no subject)")
            );
        }
        MailCmd::Otp { message_id, inbox, wait, filter, allow_unauthenticated, first } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let params = ExtractOtpParams {
                inbox: inbox.clone(),
                message_id,
                wait,
                from_domain: filter.from,
                from_address: filter.from_address,
                subject_contains: filter.subject,
                timeout_s: wait.then_some(filter.timeout),
                since: filter.since,
                require_authenticated: Some(!allow_unauthenticated),
                include_seen: filter.include_seen,
            };
            let work = mail.extract_otp(&params);
            let answer = if wait {
                with_spinner(format!("waiting for a code in {inbox}"), filter.timeout, work).await
            } else {
                work.await
            }
            .map_err(exit_for)?;
            if json {
                print_json(&answer)?;
            } else {
                print_otp(&answer)?;
            }
            if answer.otp.ambiguous && !first {
                return Err(Exit {
                    code: EXIT_AMBIGUOUS,
                    message: format!(
                        "ambiguous: {}; printed the best, candidates: {}; pass --first to accept it",
                        answer.otp.reason,
                        answer.otp.candidates.iter().map(|c| c.value().to_owned()).collect::<Vec<_>>().join(", ")
                    ),
                }
                .into());
            }
        }
        MailCmd::Mark { state, message_ids, inbox } => {
            let inbox = resolve_inbox(&mail, &inbox).await?;
            let answer = mail.mark_messages(&MarkParams { inbox, message_ids, read: state == "read" })?;
            if json {
                return print_json(&answer);
            }
            println!("{} message(s) now {} in {}", answer.changed, answer.now, answer.inbox);
        }
        MailCmd::GrantRequests => {
            let listed = mail.grant_requests().await?;
            if json {
                return print_json(&listed);
            }
            let requests = listed["requests"].as_array().cloned().unwrap_or_default();
            if requests.is_empty() {
                println!("no grant requests in the last 30 days (ask with `agentkeys mail grant-request`)");
            }
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            for r in requests {
                let status = text(&r["status"]);
                let tail = match status.as_str() {
                    "approved" => format!("grant {}", text(&r["grant"])),
                    "pending" => format!("owner decides by {}", text(&r["decide_by"])),
                    _ => text(&r["decided_at"]),
                };
                println!("{}  {status:<8}  {} on {}  {tail}", text(&r["id"]), text(&r["scopes"]), text(&r["inbox"]));
            }
        }
    }
    Ok(())
}

/// A point in time from `--since`/`--until`: Unix seconds, a date
/// (`YYYY-MM-DD`, midnight UTC) or a duration before `now` (`30m`, `2h`, `7d`).
fn point_in_time(t: &str, now: i64) -> Result<i64, String> {
    let t = t.trim();
    if let Ok(secs) = t.parse::<i64>() {
        return if secs >= 0 { Ok(secs) } else { Err(format!("{t} is before 1970")) };
    }
    let parts: Vec<&str> = t.split('-').collect();
    if let [y, m, d] = parts[..]
        && y.len() == 4
        && let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<i64>(), d.parse::<i64>())
    {
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
            return Err(format!("{t} is not a date (YYYY-MM-DD)"));
        }
        // Days from the civil date (Howard Hinnant's algorithm).
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return Ok((era * 146_097 + doe - 719_468) * 86_400);
    }
    agentkeys_core::parse_duration(t)
        .map(|d| now - d)
        .map_err(|e| format!("{e}; give a duration (30m, 2h, 7d), a date (2026-12-07) or Unix seconds"))
}

fn print_message(m: &agentkeys_agent::message::ParsedMessage) {
    let v = serde_json::to_value(m).unwrap_or_default();
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    let addr = |x: &serde_json::Value| match (x["name"].as_str(), x["address"].as_str()) {
        (Some(n), Some(a)) => format!("{n} <{a}>"),
        (None, Some(a)) => a.to_owned(),
        _ => "-".to_owned(),
    };
    let list = |k: &str| v[k].as_array().map(|a| a.iter().map(addr).collect::<Vec<_>>().join(", ")).unwrap_or_default();
    println!("Message:  {}", s("message_id").unwrap_or_default());
    println!("From:     {}", if v["from"].is_null() { "-".to_owned() } else { addr(&v["from"]) });
    println!("To:       {}", list("to"));
    let cc = list("cc");
    if !cc.is_empty() {
        println!("Cc:       {cc}");
    }
    println!("Subject:  {}", s("subject").unwrap_or_default());
    println!("Date:     {}", s("date").unwrap_or_default());
    println!("Verified: {}", if v["authentication"]["authenticated"].as_bool() == Some(true) { "yes (SPF/DKIM/DMARC of our MX)" } else { "no" });
    if let Some(atts) = v["attachments"].as_array().filter(|a| !a.is_empty()) {
        for a in atts {
            println!(
                "Attached: [{}] {} ({}, {} bytes)",
                a["index"],
                a["filename"].as_str().unwrap_or("(no name)"),
                a["content_type"].as_str().unwrap_or("?"),
                a["size"]
            );
        }
    }
    println!();
    let text = s("text").or_else(|| s("html_text")).unwrap_or_default();
    println!("{}", text.trim_end());
}

fn print_otp(answer: &agentkeys_agent::mailbox::OtpAnswer) -> Result<()> {
    let otp = &answer.otp;
    let Some(value) = otp.code.as_deref().or(otp.link.as_deref()) else {
        bail!("no code or link found in message {} (see `agentkeys mail show {}`)", otp.message_id, otp.message_id);
    };
    println!("{value}");
    let mut err = std::io::stderr().lock();
    if let Some(w) = &answer.warning {
        writeln!(err, "WARNING: {w}")?;
    }
    let kind = serde_json::to_value(otp.kind)?;
    writeln!(
        err,
        "{} from {} in message {}; authenticated: {}; confidence {}; {}",
        kind.as_str().unwrap_or("?"),
        otp.from.as_ref().map_or("-", |m| m.address.as_str()),
        otp.message_id,
        otp.authenticated,
        otp.confidence,
        otp.reason
    )?;
    for other in &answer.other_messages {
        writeln!(err, "  also seen: {} from {}: {}", other.message_id, other.from.as_deref().unwrap_or("-"), other.why_not)?;
    }
    Ok(())
}

/// `agentkeys mcp [--http ADDR]`.
pub(crate) async fn mcp(args: McpArgs) -> Result<()> {
    let mail = service()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal.cancel();
    });
    match args.http {
        None => agentkeys_agent::mcp::serve_stdio(mail, stop).await?,
        Some(addr) => {
            let listener = agentkeys_agent::mcp::bind_http(addr).await?;
            let local = listener.local_addr()?;
            println!("MCP (streamable HTTP) on http://{local}{}", agentkeys_agent::mcp::HTTP_PATH);
            std::io::stdout().flush()?;
            agentkeys_agent::mcp::serve_http(mail, listener, stop).await?;
        }
    }
    Ok(())
}
