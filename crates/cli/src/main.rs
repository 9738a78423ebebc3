//! `agentkeys`: the AgentKeys Mail server and its admin commands.

mod admin;
mod audit;
mod checkpoint;
mod config;
mod datadir;
mod descriptors;
mod dns;
mod demo;
mod domain;
mod http;
mod http_listener;
mod guardrails_client;
mod inbox_policy;
mod local_api;
mod mail;
mod notices;
mod owner_client;
mod pairing_client;
mod readiness;
mod serve;
mod store_location;
mod tls;
mod webhook_client;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Seconds since the Unix epoch, now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// AgentKeys Mail: hosted inboxes for AI agents, under their owners' control.
#[derive(Debug, Parser)]
#[command(name = "agentkeys", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
struct Global {
    /// Configuration file (default: ./agentkeys.toml if present). Env: AGENTKEYS_CONFIG.
    #[arg(long, global = true, env = "AGENTKEYS_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (default ./agentkeys-data). Env: AGENTKEYS_DATA_DIR.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: inbound MX, submission, HTTP.
    Serve,
    /// Manage hosted domains and their DKIM keys.
    #[command(subcommand)]
    Domain(domain::DomainCmd),
    /// Manage owners (the humans).
    #[command(subcommand)]
    Owner(admin::OwnerCmd),
    /// Manage agents; `agent pair` pairs this machine as an agent.
    #[command(subcommand)]
    Agent(admin::AgentCmd),
    /// Approve an agent's pairing request (owner; signed with the master key).
    Approve(pairing_client::ApproveArgs),
    /// Deny an agent's pairing request outright (owner; signed with the master key).
    Deny(pairing_client::DenyArgs),
    /// Manage inboxes.
    #[command(subcommand)]
    Inbox(admin::InboxCmd),
    /// Manage agent keys.
    #[command(subcommand)]
    Key(admin::KeyCmd),
    /// Manage grants (what an agent may do with which inboxes).
    #[command(subcommand)]
    Grant(admin::GrantCmd),
    /// Webhook subscriptions: events POSTed to your URLs, Standard Webhooks signed (owner).
    #[command(subcommand)]
    Webhook(webhook_client::WebhookCmd),
    /// Messages held for your review: list, show, approve, reject (owner; signed).
    #[command(subcommand)]
    Review(guardrails_client::ReviewCmd),
    /// Inspect the outbound queue.
    #[command(subcommand)]
    Queue(admin::QueueCmd),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Demo fixtures.
    #[command(subcommand)]
    Demo(demo::DemoCmd),
    /// Show configuration keys.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The agent's mail: list, show, send, reply, forward, wait, otp (agent key).
    #[command(subcommand)]
    Mail(mail::MailCmd),
    /// Serve this agent's mail as MCP tools (stdio, or streamable HTTP with --http).
    Mcp(mail::McpArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// List every configuration key with its environment variable.
    Keys,
}

/// Exit status of a command whose reader went away: 128 + SIGPIPE, what a shell
/// reports for a command a closed pipe stopped.
const BROKEN_PIPE_EXIT: i32 = 141;

/// `agentkeys inbox list | head -1`: once the reader is gone, `println!` panics
/// with a broken pipe. Stop quietly with [`BROKEN_PIPE_EXIT`] instead of
/// printing a panic and a backtrace; nothing was lost (the command's work is
/// done or atomic) and there is nobody left to read a message. Any other panic
/// is reported as before.
fn stop_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    stop_quietly_when_stdout_closes();
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut config = match config::load(cli.global.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprint!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = cli.global.data_dir.clone() {
        config.data_dir = dir;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.global.json;
    let result = runtime.block_on(async move {
        // Local commands that may write audit records sign the head before they
        // exit (crates/cli/src/checkpoint.rs); the server signs its own.
        let writes = !matches!(
            cli.command,
            Command::Serve | Command::Audit(_) | Command::Mail(_) | Command::Mcp(_) | Command::Config(_)
        );
        let checkpoint_config = writes.then(|| config.clone());
        let result = match cli.command {
            Command::Serve => serve::run(config).await,
            Command::Domain(c) => domain::run(&config, c, json).await,
            Command::Owner(c) => admin::owner(&config, c, json).await,
            Command::Agent(c) => admin::agent(&config, c, json).await,
            Command::Approve(args) => pairing_client::approve(args, &config, json).await,
            Command::Deny(args) => pairing_client::deny(args, &config, json).await,
            Command::Inbox(c) => admin::inbox(&config, c, json).await,
            Command::Key(c) => admin::key(&config, c, json).await,
            Command::Grant(c) => admin::grant(&config, c, json).await,
            Command::Queue(c) => admin::queue(&config, c, json).await,
            Command::Webhook(c) => webhook_client::run(&config, c, json).await,
            Command::Review(c) => guardrails_client::review(&config, c, json).await,
            Command::Audit(c) => audit::run(&config, c, json).await,
            Command::Demo(c) => demo::run(&config, c, json).await,
            Command::Mail(c) => mail::run(c, json).await,
            Command::Mcp(args) => mail::mcp(args).await,
            Command::Config(ConfigCmd::Keys) => {
                admin::print_config_keys(json);
                Ok(())
            }
        };
        if let Some(config) = checkpoint_config {
            checkpoint::after_local_command(&config).await;
        }
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost message and its causes, joined.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            match e.downcast_ref::<mail::Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
