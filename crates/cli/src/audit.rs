//! `agentkeys audit …`: read the audit log and verify its hash chain.
//!
//! `verify` walks the whole chain page by page (memory stays flat however long
//! the log is), exits 0 with `{"ok": true, "count": N, "head": "<hex>"}`, or exits
//! 1 naming the first broken record and why.

use agentkeys_audit::{AuditRecord, Broken, BrokenReason, Verifier, canonical_json, hash_to_hex};
use agentkeys_core::time::rfc3339;
use agentkeys_store::{MetadataStore, StoreError};
use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::datadir::DataDir;

/// Records `audit verify` reads per query.
const VERIFY_PAGE: u32 = 1000;
/// Records `audit list` prints when no `--limit` is given.
const DEFAULT_LIST_LIMIT: u32 = 100;

/// `agentkeys audit …`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// List audit records, oldest first (JSON: records with hex hashes).
    List {
        /// Only records with a sequence number above SEQ.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// At most N records.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LIST_LIMIT)]
        limit: u32,
        /// With --server or --owner: as the owner, only the records that concern you (signed request).
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
    /// Verify the hash chain from the first record; exit 1 naming the first broken one.
    Verify,
}

pub(crate) async fn run(config: &Config, cmd: AuditCmd, json: bool) -> Result<()> {
    if let AuditCmd::List { after, limit, conn } = &cmd
        && (conn.server.is_some() || conn.owner.is_some())
    {
        return crate::owner_client::audit_list(conn, config, *after, *limit, json).await;
    }
    let dir = DataDir::open(config).await?;
    match cmd {
        AuditCmd::List { after, limit, conn: _ } => list(dir.meta.as_ref(), after, limit, json).await,
        AuditCmd::Verify => {
            let report = verify(dir.meta.as_ref()).await?;
            match report {
                Ok(chain) => {
                    let head = hash_to_hex(&chain.head_hash);
                    if json {
                        println!("{}", json!({ "ok": true, "count": chain.count, "head": head }));
                    } else {
                        println!("audit log intact: {} records, head {head}", chain.count);
                    }
                    Ok(())
                }
                Err((broken, verified)) => {
                    if json {
                        println!(
                            "{}",
                            json!({
                                "ok": false,
                                "seq": broken.seq,
                                "reason": broken.reason.to_string(),
                                "verified": verified,
                            })
                        );
                    }
                    Err(anyhow!("{broken} ({verified} records before it verified)"))
                }
            }
        }
    }
}

async fn list(meta: &dyn MetadataStore, after: u64, limit: u32, json: bool) -> Result<()> {
    let records = meta.audit_list(after, limit).await?;
    if json {
        let rows = records.iter().map(record_json).collect::<Result<Vec<_>>>()?;
        println!("{}", serde_json::Value::Array(rows));
    } else if records.is_empty() {
        println!("no audit records after {after}");
    } else {
        for r in &records {
            let detail = canonical_json(&r.detail).unwrap_or_else(|e| format!("<{e}>"));
            println!(
                "{:>6}  {}  {}  {}  {}  {}  {detail}",
                r.seq,
                rfc3339(r.ts),
                r.actor,
                r.operation,
                r.subject,
                r.outcome
            );
        }
    }
    Ok(())
}

/// A record as JSON: its fields, hashes in hex, plus `time` (RFC 3339 of `ts`).
fn record_json(r: &AuditRecord) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(r)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("time".to_owned(), json!(rfc3339(r.ts)));
    }
    Ok(v)
}

/// Verifies the whole chain. The outer error is a failure to read at all; the
/// inner one is the first broken record with the number verified before it.
async fn verify(meta: &dyn MetadataStore) -> Result<Result<agentkeys_audit::VerifiedChain, (Broken, u64)>> {
    let mut verifier = Verifier::new();
    let mut verified = 0u64;
    loop {
        let after = verifier.head().seq;
        let page = match meta.audit_list(after, VERIFY_PAGE).await {
            Ok(page) => page,
            Err(StoreError::AuditUnreadable { .. }) => {
                // A record in this page does not decode. Walk it one record at a
                // time so a break before the unreadable record is reported first.
                return Ok(Err(walk_singly(meta, verifier, verified).await?));
            }
            Err(e) => return Err(e.into()),
        };
        if page.is_empty() {
            return Ok(Ok(verifier.finish()));
        }
        for record in &page {
            if let Err(broken) = verifier.push(record) {
                return Ok(Err((broken, verified)));
            }
            verified += 1;
        }
    }
}

/// Pushes records one by one until the first that is broken or unreadable.
async fn walk_singly(meta: &dyn MetadataStore, mut verifier: Verifier, mut verified: u64) -> Result<(Broken, u64)> {
    loop {
        let after = verifier.head().seq;
        match meta.audit_list(after, 1).await {
            Ok(page) => {
                let Some(record) = page.first() else {
                    return Err(anyhow!("the unreadable audit record after {after} disappeared while verifying"));
                };
                if let Err(broken) = verifier.push(record) {
                    return Ok((broken, verified));
                }
                verified += 1;
            }
            Err(StoreError::AuditUnreadable { seq, reason }) => {
                return Ok((Broken { seq, reason: BrokenReason::Unreadable(reason) }, verified));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
