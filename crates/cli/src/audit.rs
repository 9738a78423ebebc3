//! `agentkeys audit …`: read the audit log and verify its hash chain.
//!
//! `verify` walks the whole chain page by page (memory stays flat however long
//! the log is), then checks every signed checkpoint: its signature (with the
//! authority's checkpoint key, derived from the master seed) and that the chain
//! still holds the record it vouches for, with the same hash. It exits 0 with
//! `{"ok": true, "count": N, "head": "<hex>", "checkpoints": K}`, or exits 1
//! naming the first broken record, else the first bad checkpoint, and why.
//! `checkpoint` signs the current head now.

use agentkeys_audit::{AuditRecord, Broken, BrokenReason, ChainHead, Checkpoint, Verifier, canonical_json, hash_to_hex};
use agentkeys_broker::{CheckpointPublicKey, TokenAuthority as _};
use agentkeys_store::CheckpointRecord;
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
        /// Only records about this agent (as the actor, or as the subject).
        #[arg(long, value_name = "AGENT_ID")]
        agent: Option<String>,
        /// Only records of the last DURATION (e.g. 15m, 2h, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// With --server or --owner: as the owner, only the records that concern you (signed request).
        #[command(flatten)]
        conn: crate::owner_client::OwnerConn,
    },
    /// Verify the hash chain from the first record and every signed checkpoint;
    /// exit 1 naming the first broken record or bad checkpoint.
    Verify,
    /// Sign the current head now (the server also does, periodically).
    Checkpoint,
}

pub(crate) async fn run(config: &Config, cmd: AuditCmd, json: bool) -> Result<()> {
    if let AuditCmd::List { after, limit, agent, since, conn } = &cmd
        && (conn.server.is_some() || conn.owner.is_some())
    {
        let filter = Filter::parse(agent.as_deref(), since.as_deref(), crate::now())?;
        return crate::owner_client::audit_list(conn, config, *after, *limit, &filter, json).await;
    }
    let dir = DataDir::open(config).await?;
    match cmd {
        AuditCmd::List { after, limit, agent, since, conn: _ } => {
            let filter = Filter::parse(agent.as_deref(), since.as_deref(), crate::now())?;
            list(dir.meta.as_ref(), after, limit, &filter, json).await
        }
        AuditCmd::Checkpoint => {
            let authority = dir.token_authority()?;
            match crate::checkpoint::take(dir.meta.as_ref(), &authority, crate::now()).await? {
                Some(c) => {
                    let hash = hash_to_hex(&c.hash);
                    if json {
                        println!("{}", json!({ "seq": c.seq, "head": hash, "time": rfc3339(c.ts) }));
                    } else {
                        println!("checkpoint signed at record {} (head {hash})", c.seq);
                    }
                }
                None => {
                    let head = dir.meta.audit_head().await?;
                    if json {
                        println!("{}", json!({ "seq": head.seq, "head": hash_to_hex(&head.hash), "time": null }));
                    } else if head.seq == 0 {
                        println!("the audit log is empty: nothing to checkpoint");
                    } else {
                        println!("record {} is checkpointed already", head.seq);
                    }
                }
            }
            Ok(())
        }
        AuditCmd::Verify => {
            let key = dir.token_authority()?.checkpoint_public_key();
            let report = verify(dir.meta.as_ref()).await?;
            match report {
                Ok(chain) => {
                    let head = hash_to_hex(&chain.head_hash);
                    let (checkpoints, unreadable) = match dir.meta.list_checkpoints().await {
                        Ok(list) => (list, None),
                        Err(StoreError::AuditUnreadable { seq, reason }) => (Vec::new(), Some((seq, format!("unreadable: {reason}")))),
                        Err(e) => return Err(e.into()),
                    };
                    let bad = match unreadable {
                        Some(bad) => Some(bad),
                        None => first_bad_checkpoint(dir.meta.as_ref(), &checkpoints, &chain, &key).await?,
                    };
                    if let Some((seq, reason)) = bad {
                        if json {
                            println!("{}", json!({ "ok": false, "checkpoint": seq, "reason": reason, "verified": chain.count }));
                        }
                        return Err(anyhow!("audit checkpoint at record {seq} is bad: {reason}"));
                    }
                    if json {
                        println!("{}", json!({ "ok": true, "count": chain.count, "head": head, "checkpoints": checkpoints.len() }));
                    } else {
                        println!(
                            "audit log intact: {} records, head {head}; {} signed checkpoint(s) verified",
                            chain.count,
                            checkpoints.len()
                        );
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

/// Records read per page while filtering.
const FILTER_PAGE: u32 = 1_000;

/// `audit list --agent/--since`: which records to show.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    /// `agent:<id>` as the actor, or `<id>` as the subject.
    agent: Option<agentkeys_core::AgentId>,
    /// Records at or after this time.
    since: Option<i64>,
}

impl Filter {
    /// Parses the flags; `since` is a duration back from `now`.
    pub(crate) fn parse(agent: Option<&str>, since: Option<&str>, now: i64) -> Result<Self> {
        let agent = agent
            .map(|a| a.parse().map_err(|e| anyhow::anyhow!("--agent {a}: {e} (an agent id is 0x followed by 40 hex digits)")))
            .transpose()?;
        let since = since
            .map(|d| {
                agentkeys_core::duration::parse_duration(d)
                    .map(|secs| now - secs)
                    .map_err(|e| anyhow::anyhow!("--since {d}: {e} (a duration such as 15m, 2h or 7d)"))
            })
            .transpose()?;
        Ok(Self { agent, since })
    }

    fn is_empty(&self) -> bool {
        self.agent.is_none() && self.since.is_none()
    }

    /// Whether a record with this actor, subject and time is shown.
    pub(crate) fn matches(&self, actor: &str, subject: &str, ts: i64) -> bool {
        let agent_ok = self.agent.as_ref().is_none_or(|a| actor == format!("agent:{a}") || subject == a.as_str());
        agent_ok && self.since.is_none_or(|t| ts >= t)
    }
}

async fn list(meta: &dyn MetadataStore, after: u64, limit: u32, filter: &Filter, json: bool) -> Result<()> {
    let records = if filter.is_empty() {
        meta.audit_list(after, limit).await?
    } else {
        // Walk the chain page by page until `limit` records match.
        let mut found = Vec::new();
        let mut cursor = after;
        while found.len() < limit as usize {
            let page = meta.audit_list(cursor, FILTER_PAGE).await?;
            let Some(last) = page.last() else { break };
            cursor = last.seq;
            found.extend(page.into_iter().filter(|r| filter.matches(&r.actor.to_string(), &r.subject, r.ts)));
        }
        found.truncate(limit as usize);
        found
    };
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

/// The first checkpoint (by seq) whose signature does not verify with `key`, or
/// that vouches for a record the verified `chain` does not hold with that hash;
/// with the reason.
async fn first_bad_checkpoint(
    meta: &dyn MetadataStore,
    checkpoints: &[CheckpointRecord],
    chain: &agentkeys_audit::VerifiedChain,
    key: &CheckpointPublicKey,
) -> Result<Option<(u64, String)>> {
    for c in checkpoints {
        let signed = Checkpoint { head: ChainHead { seq: c.seq, hash: c.hash }, ts: c.ts };
        if !key.verify(&signed, &c.signature) {
            return Ok(Some((c.seq, "its signature does not verify with the authority's checkpoint key".to_owned())));
        }
        if c.seq > chain.head_seq {
            return Ok(Some((
                c.seq,
                format!(
                    "it vouches for record {} but the chain ends at record {}: records were removed from the end",
                    c.seq, chain.head_seq
                ),
            )));
        }
        // The chain verified, so the record at c.seq is the one the walk checked.
        let record = meta.audit_list(c.seq - 1, 1).await?;
        if record.first().is_none_or(|r| r.seq != c.seq || r.hash != c.hash) {
            return Ok(Some((
                c.seq,
                format!("record {} no longer has the signed hash: the chain was rewritten up to it", c.seq),
            )));
        }
    }
    Ok(None)
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
