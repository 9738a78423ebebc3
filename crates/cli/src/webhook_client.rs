//! `agentkeys webhook create|list|delete|rotate|deliveries|redeliver`: the
//! owner's webhook subscriptions, each command one request signed with the
//! owner's master key like `grant create` ([`crate::owner_client::Session`]):
//! to `--server`, or without it to the router in-process over `--data-dir`.

use agentkeys_core::duration::parse_ttl;
use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;
use crate::owner_client::{OwnerConn, Session};

/// `agentkeys webhook …`.
#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCmd {
    /// Subscribe a URL to events; prints the signing secret once (whsec_…).
    Create(CreateArgs),
    /// Your subscriptions (never their secrets).
    List {
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// Delete a subscription and its delivery log.
    Delete {
        /// The subscription (wh_…).
        id: String,
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// A new secret; the previous one keeps signing during the overlap.
    Rotate {
        /// The subscription (wh_…).
        id: String,
        /// How long the previous secret keeps signing, e.g. 1h, 1d (default 1d, at most 7d; 0 ends it now).
        #[arg(long, value_name = "DURATION")]
        overlap: Option<String>,
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// A subscription's delivery log, newest first.
    Deliveries {
        /// The subscription (wh_…).
        id: String,
        /// Most deliveries shown (default 100, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        conn: OwnerConn,
    },
    /// Send a delivery again now, with the same webhook-id.
    Redeliver {
        /// The delivery (msg_…), from `webhook deliveries`.
        delivery_id: String,
        #[command(flatten)]
        conn: OwnerConn,
    },
}

/// `agentkeys webhook create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Where events are POSTed (https://…, or http://…).
    #[arg(long)]
    url: String,
    /// Comma-separated event types: message.received, message.sent,
    /// message.delivered, message.deferred, message.bounced, grant.expiring, key.expiring.
    #[arg(long)]
    events: String,
    /// Only events of this inbox (one of yours).
    #[arg(long, value_name = "ADDR")]
    inbox: Option<String>,
    /// message.received carries the message's text (at most 64 KiB), not only sender, subject and size.
    #[arg(long)]
    include_body: bool,
    #[command(flatten)]
    conn: OwnerConn,
}

fn print(json: bool, value: &Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Ids are `wh_`/`msg_` + a ULID: anything else never reaches the server
/// (it would otherwise land in the signed path).
fn valid_id(kind: &str, prefix: &str, id: &str) -> Result<()> {
    let ok = id.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        bail!("{kind} id {id:?} is not valid: expected {prefix}… as `agentkeys webhook list`/`deliveries` print it");
    }
    Ok(())
}

/// Runs a `webhook` command.
pub(crate) async fn run(config: &Config, cmd: WebhookCmd, json: bool) -> Result<()> {
    match cmd {
        WebhookCmd::Create(args) => {
            let events: Vec<&str> = args.events.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
            if events.is_empty() {
                bail!("--events: give at least one event type, e.g. --events message.received,message.bounced");
            }
            let mut body = json!({ "url": args.url, "events": events });
            if args.include_body {
                body["include_body"] = json!(true);
            }
            if let Some(inbox) = &args.inbox {
                body["inbox"] = json!(inbox);
            }
            let session = Session::open(&args.conn, config).await?;
            let answer = session.call("POST", "/v1/webhooks", Some(body.to_string().as_bytes())).await?;
            print(json, &answer, || {
                format!(
                    "webhook {} created for {}\nsecret {}\n(shown once: give it to the receiver to verify webhook-signature; it cannot be read again, only rotated)",
                    s(&answer["id"]),
                    s(&answer["webhook"]["url"]),
                    s(&answer["secret"])
                )
            });
        }
        WebhookCmd::List { conn } => {
            let answer = Session::open(&conn, config).await?.call("GET", "/v1/webhooks", None).await?;
            print(json, &answer, || {
                answer
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|w| {
                        let events: Vec<&str> =
                            w["events"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                        let inbox = w["inbox"].as_str().map(|i| format!("  inbox {i}")).unwrap_or_default();
                        format!("{}  {}  {}{inbox}", s(&w["id"]), s(&w["url"]), events.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        WebhookCmd::Delete { id, conn } => {
            valid_id("webhook", "wh_", &id)?;
            let answer = Session::open(&conn, config).await?.call("DELETE", &format!("/v1/webhooks/{id}"), None).await?;
            print(json, &answer, || format!("webhook {id} deleted"));
        }
        WebhookCmd::Rotate { id, overlap, conn } => {
            valid_id("webhook", "wh_", &id)?;
            let mut body = json!({});
            if let Some(overlap) = overlap.as_deref() {
                let secs = if overlap == "0" {
                    0
                } else {
                    parse_ttl(overlap, agentkeys_webhooks::MAX_ROTATION_OVERLAP_SECS).map_err(|e| anyhow!("--overlap: {e}"))?
                };
                body["overlap"] = json!(secs);
            }
            let session = Session::open(&conn, config).await?;
            let answer = session.call("POST", &format!("/v1/webhooks/{id}/rotate"), Some(body.to_string().as_bytes())).await?;
            print(json, &answer, || {
                let until = answer["webhook"]["previous_secret_until"].as_str().map_or_else(
                    || "the previous secret no longer signs".to_owned(),
                    |t| format!("the previous secret also signs until {t}"),
                );
                format!("webhook {id}: new secret {} (shown once); {until}", s(&answer["secret"]))
            });
        }
        WebhookCmd::Deliveries { id, limit, conn } => {
            valid_id("webhook", "wh_", &id)?;
            let path = match limit {
                Some(n) => format!("/v1/webhooks/{id}/deliveries?limit={n}"),
                None => format!("/v1/webhooks/{id}/deliveries"),
            };
            let answer = Session::open(&conn, config).await?.call("GET", &path, None).await?;
            print(json, &answer, || {
                answer
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|d| {
                        let status = d["last_status"].as_u64().map(|c| format!("  last {c}")).unwrap_or_default();
                        let error = d["last_error"].as_str().map(|e| format!("  ({e})")).unwrap_or_default();
                        format!(
                            "{}  {}  {}  {} attempt(s)  {}{status}{error}",
                            s(&d["id"]),
                            s(&d["event"]),
                            s(&d["state"]),
                            d["attempts"],
                            s(&d["created_at"])
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        WebhookCmd::Redeliver { delivery_id, conn } => {
            valid_id("delivery", "msg_", &delivery_id)?;
            let path = format!("/v1/webhook-deliveries/{delivery_id}/redeliver");
            let answer = Session::open(&conn, config).await?.call("POST", &path, None).await?;
            print(json, &answer, || format!("delivery {delivery_id} is due again"));
        }
    }
    Ok(())
}
