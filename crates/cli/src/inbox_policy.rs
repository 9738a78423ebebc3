//! `agentkeys inbox policy ADDR …`: an inbox's allow and block lists (issue 13
//! §2), read and changed by its owner with signed requests
//! (`GET`/`PATCH /v1/inboxes/{address}/policy`; without `--server`, the same
//! router in-process).

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::config::Config;
use crate::owner_client::{OwnerConn, Session};

/// The lists, by their names in the policy document and on the command line.
const LISTS: [(&str, &str); 4] = [
    ("receive_allow", "receive-allow"),
    ("receive_block", "receive-block"),
    ("send_allow", "send-allow"),
    ("send_block", "send-block"),
];

/// `agentkeys inbox policy`.
#[derive(Debug, Args)]
pub(crate) struct PolicyArgs {
    /// The inbox (one of yours).
    pub(crate) address: String,
    /// Add a sender (address, or domain: the domain and its subdomains) whose
    /// mail may reach the inbox; once the list has an entry, only those may. Repeatable.
    #[arg(long = "receive-allow", value_name = "P")]
    pub(crate) receive_allow: Vec<String>,
    /// Add a sender whose mail is refused (550 5.7.1). Repeatable.
    #[arg(long = "receive-block", value_name = "P")]
    pub(crate) receive_block: Vec<String>,
    /// Add a recipient the inbox may send to; once the list has an entry, only those. Repeatable.
    #[arg(long = "send-allow", value_name = "P")]
    pub(crate) send_allow: Vec<String>,
    /// Add a recipient the inbox may never send to. Repeatable.
    #[arg(long = "send-block", value_name = "P")]
    pub(crate) send_block: Vec<String>,
    /// Empty a list first: receive-allow, receive-block, send-allow or send-block. Repeatable.
    #[arg(long, value_name = "LIST")]
    pub(crate) clear: Vec<String>,
    /// What the agent is shown of mail that failed authentication.
    #[arg(long, value_parser = ["show", "label", "hide"])]
    pub(crate) unauthenticated: Option<String>,
    #[command(flatten)]
    pub(crate) conn: OwnerConn,
}

impl PolicyArgs {
    fn added(&self, list: &str) -> &[String] {
        match list {
            "receive_allow" => &self.receive_allow,
            "receive_block" => &self.receive_block,
            "send_allow" => &self.send_allow,
            _ => &self.send_block,
        }
    }
}

/// The change to send: for every list touched, the stored list (emptied when
/// `--clear`ed) plus the added patterns. `None` when nothing changes.
fn change(args: &PolicyArgs, current: &Value) -> Result<Option<Value>> {
    for c in &args.clear {
        if !LISTS.iter().any(|(_, flag)| flag == c) {
            bail!("--clear {c}: give receive-allow, receive-block, send-allow or send-block");
        }
    }
    let mut body = json!({});
    for (name, flag) in LISTS {
        let cleared = args.clear.iter().any(|c| c == flag);
        let added = args.added(name);
        if !cleared && added.is_empty() {
            continue;
        }
        let mut list: Vec<String> = if cleared {
            Vec::new()
        } else {
            current[name].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        list.extend(added.iter().cloned());
        body[name] = json!(list);
    }
    if let Some(mode) = &args.unauthenticated {
        body["unauthenticated"] = json!(mode);
    }
    Ok((body.as_object().is_some_and(|o| !o.is_empty())).then_some(body))
}

fn describe(policy: &Value) -> String {
    let mut lines = vec![format!("inbox {}", policy["inbox"].as_str().unwrap_or("?"))];
    for (name, flag) in LISTS {
        let items: Vec<&str> = policy[name].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let shown = if items.is_empty() {
            if name.ends_with("allow") { "(any)".to_owned() } else { "(none)".to_owned() }
        } else {
            items.join(", ")
        };
        lines.push(format!("  {flag:<14} {shown}"));
    }
    lines.push(format!("  {:<14} {}", "unauthenticated", policy["unauthenticated"].as_str().unwrap_or("?")));
    lines.join("\n")
}

/// `agentkeys inbox policy ADDR [changes]`: prints the policy in force after
/// the change (or as it is, with no change asked).
pub(crate) async fn run(args: PolicyArgs, config: &Config, json: bool) -> Result<()> {
    let address: agentkeys_core::Address =
        args.address.parse().map_err(|e| anyhow::anyhow!("{}: {e}", args.address))?;
    let path = format!("/v1/inboxes/{address}/policy");
    let session = Session::open(&args.conn, config).await?;
    let current = session.call("GET", &path, None).await?;
    let answer = match change(&args, &current)? {
        None => current,
        Some(body) => session.call("PATCH", &path, Some(body.to_string().as_bytes())).await?,
    };
    if json {
        println!("{answer}");
    } else {
        println!("{}", describe(&answer));
    }
    Ok(())
}
