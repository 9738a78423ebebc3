//! `agentkeys agent limits AGENT …` and `agentkeys review …`: an agent's send
//! limits and the owner's review of held messages (issue 13 §3), as signed
//! owner requests (`/v1/agents/{agent}/limits`, `/v1/review…`; without
//! `--server`, the same router in-process).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;
use crate::owner_client::{OwnerConn, Session};

/// A count limit on the command line: a number, or `off` for none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitValue(Option<u32>);

fn limit_arg(s: &str) -> Result<LimitValue, String> {
    match s {
        "off" | "none" => Ok(LimitValue(None)),
        n => n.parse::<u32>().map(|n| LimitValue(Some(n))).map_err(|_| format!("{n:?}: give a number, or off to remove the limit")),
    }
}

/// `agentkeys agent limits`.
#[derive(Debug, Args)]
pub(crate) struct LimitsArgs {
    /// The agent (one of yours): its id, 0x followed by 40 hex digits.
    pub(crate) agent: String,
    /// Messages per sliding hour (`off`: no limit). Over it a send is refused
    /// with 452 4.7.0 (SMTP) or 429 (HTTP) and Retry-After.
    #[arg(long, value_name = "N", value_parser = limit_arg)]
    pub(crate) per_hour: Option<LimitValue>,
    /// Messages per sliding day (`off`: no limit).
    #[arg(long, value_name = "N", value_parser = limit_arg)]
    pub(crate) per_day: Option<LimitValue>,
    /// Recipients the agent never sent to before, per sliding day (`off`: no limit).
    #[arg(long, value_name = "N", value_parser = limit_arg)]
    pub(crate) new_recipients_per_day: Option<LimitValue>,
    /// Pause sending while this percentage (1-100) or more of the last day's
    /// finished deliveries bounced (`off`: never).
    #[arg(long, value_name = "PERCENT", value_parser = limit_arg)]
    pub(crate) max_bounce_percent: Option<LimitValue>,
    /// Hold messages for your review: every one (`all`), those with a new
    /// recipient (`new-recipients`), or none.
    #[arg(long, value_parser = ["all", "new-recipients", "none"])]
    pub(crate) review: Option<String>,
    #[command(flatten)]
    pub(crate) conn: OwnerConn,
}

fn show_limit(v: &Value) -> String {
    v.as_u64().map_or_else(|| "(none)".to_owned(), |n| n.to_string())
}

fn describe_limits(agent: &str, l: &Value) -> String {
    [
        format!("agent {agent}"),
        format!("  {:<24} {}", "per-hour", show_limit(&l["per_hour"])),
        format!("  {:<24} {}", "per-day", show_limit(&l["per_day"])),
        format!("  {:<24} {}", "new-recipients-per-day", show_limit(&l["new_recipients_per_day"])),
        format!("  {:<24} {}", "max-bounce-percent", show_limit(&l["max_bounce_percent"])),
        format!("  {:<24} {}", "review", l["review"].as_str().unwrap_or("?")),
    ]
    .join("\n")
}

/// `agentkeys agent limits AGENT [changes]`: prints the limits in force after
/// the change (or as they are, with no change asked).
pub(crate) async fn limits(args: LimitsArgs, config: &Config, json: bool) -> Result<()> {
    let agent: agentkeys_core::AgentId =
        args.agent.parse().map_err(|e| anyhow::anyhow!("{}: {e} (see `agentkeys agent list`)", args.agent))?;
    let path = format!("/v1/agents/{agent}/limits");
    let session = Session::open(&args.conn, config).await?;
    let mut current = session.call("GET", &path, None).await?;
    let mut changed = false;
    for (field, value) in [
        ("per_hour", args.per_hour),
        ("per_day", args.per_day),
        ("new_recipients_per_day", args.new_recipients_per_day),
        ("max_bounce_percent", args.max_bounce_percent),
    ] {
        if let Some(LimitValue(value)) = value {
            current[field] = json!(value);
            changed = true;
        }
    }
    if let Some(review) = &args.review {
        current["review"] = json!(review);
        changed = true;
    }
    let answer = if changed { session.call("PUT", &path, Some(current.to_string().as_bytes())).await? } else { current };
    if json {
        println!("{answer}");
    } else {
        println!("{}", describe_limits(agent.as_str(), &answer));
    }
    Ok(())
}

/// `agentkeys review …`
#[derive(Debug, Subcommand)]
pub(crate) enum ReviewCmd {
    /// Messages held for your review (newest first).
    List {
        /// Decided ones too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// One held message, with its text while it waits.
    Show {
        /// The held message's id.
        id: String,
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// Release a held message: DKIM-signed and queued now.
    Approve {
        /// The held message's id.
        id: String,
        /// Send this file's message instead (an edit: the whole RFC 5322
        /// message; From must stay the sending inbox, the recipients stay).
        #[arg(long, value_name = "FILE")]
        edit: Option<std::path::PathBuf>,
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// Never send a held message.
    Reject {
        /// The held message's id.
        id: String,
        #[command(flatten)]
        conn: OwnerConn,
    },
}

fn describe_held(h: &Value) -> String {
    let recipients: Vec<&str> = h["recipients"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut line = format!(
        "{}  {:<8}  {}  from {}  to {}  subject {:?}",
        h["id"].as_str().unwrap_or("?"),
        h["state"].as_str().unwrap_or("?"),
        h["reason"].as_str().unwrap_or("?"),
        h["inbox"].as_str().unwrap_or("?"),
        recipients.join(", "),
        h["subject"].as_str().unwrap_or(""),
    );
    if let Some(released) = h["released_as"].as_str() {
        line.push_str(&format!("  released as {released}"));
    }
    line
}

fn id_path(id: &str) -> Result<String> {
    let id: ulid::Ulid = id.parse().map_err(|_| anyhow::anyhow!("{id:?} is not a held message id (see `agentkeys review list`)"))?;
    Ok(format!("/v1/review/{id}"))
}

/// `agentkeys review …`.
pub(crate) async fn review(config: &Config, cmd: ReviewCmd, json: bool) -> Result<()> {
    let answer = match &cmd {
        ReviewCmd::List { all, conn } => {
            let session = Session::open(conn, config).await?;
            session.call("GET", if *all { "/v1/review?state=all" } else { "/v1/review" }, None).await?
        }
        ReviewCmd::Show { id, conn } => Session::open(conn, config).await?.call("GET", &id_path(id)?, None).await?,
        ReviewCmd::Approve { id, edit, conn } => {
            let body = match edit {
                Some(file) => {
                    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
                    if text.trim().is_empty() {
                        bail!("{} is empty: give the whole message to send instead", file.display());
                    }
                    json!({ "message": text })
                }
                None => json!({}),
            };
            let path = format!("{}/approve", id_path(id)?);
            Session::open(conn, config).await?.call("POST", &path, Some(body.to_string().as_bytes())).await?
        }
        ReviewCmd::Reject { id, conn } => {
            let path = format!("{}/reject", id_path(id)?);
            Session::open(conn, config).await?.call("POST", &path, Some(b"{}")).await?
        }
    };
    if json {
        println!("{answer}");
        return Ok(());
    }
    match cmd {
        ReviewCmd::List { .. } => {
            let held = answer["held"].as_array().cloned().unwrap_or_default();
            if held.is_empty() {
                println!("nothing held");
            }
            for h in &held {
                println!("{}", describe_held(h));
            }
        }
        ReviewCmd::Show { .. } => {
            println!("{}", describe_held(&answer));
            if let Some(message) = answer["message"].as_str() {
                println!("\n{message}");
            }
        }
        ReviewCmd::Approve { .. } => println!(
            "approved: {} released as {}",
            answer["id"].as_str().unwrap_or("?"),
            answer["released_as"].as_str().unwrap_or("?")
        ),
        ReviewCmd::Reject { .. } => println!("rejected: {} will never be sent", answer["id"].as_str().unwrap_or("?")),
    }
    Ok(())
}
