//! `agentkeys audit …`: read the audit log and verify its hash chain.
//!
//! `verify` walks the whole chain page by page (memory stays flat however long
//! the log is), then checks the signed checkpoints
//! ([`agentkeys_audit::verify_checkpoints`]): every signature (with the
//! authority's checkpoint key, derived from the master seed), that the chain
//! still holds each record a checkpoint vouches for, that chained checkpoints
//! run 1, 2, 3, … from the recorded start each linked to the one before, and
//! that no record the latest checkpoint does not cover is older than
//! [`CHECKPOINT_MAX_AGE`](crate::checkpoint::CHECKPOINT_MAX_AGE). With
//! `--against FILE` it also checks a checkpoint exported earlier (`checkpoint
//! --export FILE`, kept off the machine): same key, valid signature, the live
//! chain still has that record with that hash, and the database still has that
//! checkpoint. It exits 0 with `{"ok": true, "count": N, "head": "<hex>",
//! "checkpoints": K, …}`, or exits 1 naming the first broken record, else the
//! first checkpoint problem, and why. `checkpoint` signs the current head now.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use agentkeys_audit::{
    AuditRecord, Broken, BrokenReason, ChainHead, ChainedCheckpoint, CheckpointRules, Hash, SignedCheckpoint, Verifier,
    canonical_json, hash_from_hex, hash_to_hex, verify_checkpoints,
};
use agentkeys_broker::{CheckpointPublicKey, TokenAuthority as _};
use agentkeys_core::time::rfc3339;
use agentkeys_store::roles::*;
use agentkeys_store::{CheckpointRecord, StoreError};
use anyhow::{Context as _, Result, anyhow};
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
    /// Verify the hash chain from the first record and the signed checkpoints
    /// (chained, none missing, the head covered in time); exit 1 naming the
    /// first broken record or checkpoint problem.
    Verify {
        /// Also check the log against a checkpoint exported earlier with
        /// `audit checkpoint --export` (kept off this machine): nothing up to it
        /// may have changed.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
        /// How old a record may be without a checkpoint covering it (default:
        /// the checkpoint interval, one poll and a minute: 6m).
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
    },
    /// Sign the current head now (the server also does, periodically).
    Checkpoint {
        /// Also write the latest checkpoint to FILE (JSON), to keep off this
        /// machine for `audit verify --against FILE`.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        /// Start the checkpoint chain even though records older than the
        /// allowed age exist and no checkpoint covers them (a log from before
        /// checkpoints; otherwise a sign that checkpoints were deleted).
        #[arg(long)]
        start_over: bool,
    },
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
        AuditCmd::Checkpoint { export, start_over } => {
            let authority = dir.token_authority()?;
            match crate::checkpoint::take(dir.meta.as_ref(), &authority, crate::now(), start_over).await? {
                Some(c) => {
                    let hash = hash_to_hex(&c.hash);
                    if json {
                        println!("{}", json!({ "seq": c.seq, "counter": c.counter, "head": hash, "time": rfc3339(c.ts) }));
                    } else {
                        println!("checkpoint {} signed at record {} (head {hash})", c.counter.unwrap_or(0), c.seq);
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
            if let Some(file) = export {
                let last = dir.meta.last_checkpoint().await?;
                let Some(SignedCheckpoint::V2 { checkpoint, signature }) = last.map(|c| c.signed()) else {
                    return Err(anyhow!(
                        "no chained checkpoint to export yet: the first is signed after the next audited change"
                    ));
                };
                let exported = Exported { checkpoint, signature, key: authority.checkpoint_public_key() };
                write_export(&file, &exported)?;
                if !json {
                    println!("checkpoint {} exported to {}: keep it off this machine", checkpoint.counter, file.display());
                }
            }
            Ok(())
        }
        AuditCmd::Verify { against, max_age } => {
            let max_age = match max_age {
                Some(d) => agentkeys_core::duration::parse_duration(&d)
                    .map_err(|e| anyhow!("--max-age {d}: {e} (a duration such as 30s, 6m or 1h)"))?,
                None => i64::try_from(crate::checkpoint::CHECKPOINT_MAX_AGE.as_secs()).unwrap_or(i64::MAX),
            };
            let key = dir.token_authority()?.checkpoint_public_key();
            let exported = against.as_deref().map(read_export).transpose()?;
            let stored = match (dir.meta.list_checkpoints().await, dir.meta.checkpoint_start().await) {
                (Ok(list), Ok(start)) => Ok((list, start)),
                (Err(StoreError::AuditUnreadable { seq, reason }), _) | (_, Err(StoreError::AuditUnreadable { seq, reason })) => {
                    Err((seq, format!("unreadable: {reason}")))
                }
                (Err(e), _) | (_, Err(e)) => return Err(e.into()),
            };
            // The records the checkpoint rules look at: each checkpoint's, the
            // one after it (the first a checkpoint does not cover), the first,
            // and the exported checkpoint's.
            let mut wanted = BTreeSet::from([1]);
            if let Ok((list, _)) = &stored {
                for c in list {
                    wanted.extend([c.seq, c.seq.saturating_add(1)]);
                }
            }
            if let Some(e) = &exported {
                wanted.insert(e.checkpoint.head.seq);
            }
            let (chain, seen) = match verify(dir.meta.as_ref(), &wanted).await? {
                Ok(done) => done,
                Err((broken, verified)) => {
                    if json {
                        println!(
                            "{}",
                            json!({ "ok": false, "seq": broken.seq, "reason": broken.reason.to_string(), "verified": verified })
                        );
                    }
                    return Err(anyhow!("{broken} ({verified} records before it verified)"));
                }
            };
            let fail = |seq: Option<u64>, reason: String, message: String| {
                if json {
                    println!("{}", json!({ "ok": false, "checkpoint": seq, "reason": reason, "verified": chain.count }));
                }
                Err(anyhow!(message))
            };
            let record_at = |seq: u64| seen.get(&seq).copied();
            if let Some(e) = &exported
                && let Err(reason) = check_exported(e, &key, &record_at, chain.head_seq, stored.as_ref().ok().map(|s| &s.0))
            {
                let seq = e.checkpoint.head.seq;
                return fail(
                    Some(seq),
                    reason.clone(),
                    format!("exported audit checkpoint {} (record {seq}) does not match: {reason}", e.checkpoint.counter),
                );
            }
            let (list, start) = match stored {
                Ok(s) => s,
                Err((seq, reason)) => {
                    return fail(Some(seq), reason.clone(), format!("audit checkpoint at record {seq} is bad: {reason}"));
                }
            };
            let signed: Vec<SignedCheckpoint> = list.iter().map(CheckpointRecord::signed).collect();
            let start = start.map(|s| s.signed());
            let head = ChainHead { seq: chain.head_seq, hash: chain.head_hash };
            let rules = CheckpointRules { now: crate::now(), max_age };
            let report = verify_checkpoints(&signed, start.as_ref(), head, record_at, |m, s| key.verify_bytes(m, s), rules);
            let verified = match report {
                Ok(v) => v,
                Err(problem) => return fail(problem.seq, problem.reason.to_string(), problem.to_string()),
            };
            let hex = hash_to_hex(&chain.head_hash);
            let covered = verified.last.map_or(0, |(h, _)| h.seq);
            if json {
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "count": chain.count,
                        "head": hex,
                        "checkpoints": verified.count,
                        "chained": verified.chained,
                        "covered": covered,
                        "against": exported.as_ref().map(|e| json!({ "counter": e.checkpoint.counter, "seq": e.checkpoint.head.seq })),
                    })
                );
            } else {
                let tail = if covered < chain.head_seq {
                    format!("; records {}..={} are recent and not yet checkpointed", covered + 1, chain.head_seq)
                } else {
                    String::new()
                };
                println!(
                    "audit log intact: {} records, head {hex}; {} signed checkpoint(s) verified ({} chained), the latest covers record {covered}{tail}",
                    chain.count, verified.count, verified.chained
                );
                if let Some(e) = &exported {
                    println!("matches the exported checkpoint {} (record {})", e.checkpoint.counter, e.checkpoint.head.seq);
                }
            }
            Ok(())
        }
    }
}

/// Format tag of an exported checkpoint file.
const EXPORT_FORMAT: &str = "agentkeys-audit-checkpoint/v2";

/// A checkpoint exported to a file: what was signed, the signature and the key.
struct Exported {
    checkpoint: ChainedCheckpoint,
    signature: Vec<u8>,
    key: CheckpointPublicKey,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_export(file: &Path, e: &Exported) -> Result<()> {
    let c = &e.checkpoint;
    let body = json!({
        "format": EXPORT_FORMAT,
        "counter": c.counter,
        "prev": hash_to_hex(&c.prev),
        "seq": c.head.seq,
        "head": hash_to_hex(&c.head.hash),
        "ts": c.ts,
        "time": rfc3339(c.ts),
        "signature": hex(&e.signature),
        "public_key": hex(&e.key.to_bytes()),
    });
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{body:#}\n")).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))
}

fn read_export(file: &Path) -> Result<Exported> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the exported checkpoint {}", file.display()))?;
    let bad = |what: &str| anyhow!("{} is not an exported audit checkpoint: {what}", file.display());
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    if v["format"] != EXPORT_FORMAT {
        return Err(bad(&format!("format is not {EXPORT_FORMAT:?}")));
    }
    let num = |k: &str| v[k].as_u64().ok_or_else(|| bad(&format!("{k} is not a number")));
    let hash = |k: &str| v[k].as_str().and_then(hash_from_hex).ok_or_else(|| bad(&format!("{k} is not 64 hex digits")));
    let bytes = |k: &str| {
        let s = v[k].as_str().ok_or_else(|| bad(&format!("{k} is missing")))?;
        (0..s.len() / 2)
            .map(|i| s.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .filter(|_| s.len() % 2 == 0)
            .ok_or_else(|| bad(&format!("{k} is not hex")))
    };
    let key: [u8; 32] = bytes("public_key")?.try_into().map_err(|_| bad("public_key is not 32 bytes"))?;
    let checkpoint = ChainedCheckpoint {
        counter: num("counter")?,
        prev: hash("prev")?,
        head: ChainHead { seq: num("seq")?, hash: hash("head")? },
        ts: v["ts"].as_i64().ok_or_else(|| bad("ts is not a number"))?,
    };
    Ok(Exported {
        checkpoint,
        signature: bytes("signature")?,
        key: CheckpointPublicKey::from_bytes(&key).ok_or_else(|| bad("public_key is not an Ed25519 key"))?,
    })
}

/// Why the live log does not match an exported checkpoint, if it does not.
fn check_exported(
    e: &Exported,
    key: &CheckpointPublicKey,
    record_at: &dyn Fn(u64) -> Option<(Hash, i64)>,
    head_seq: u64,
    stored: Option<&Vec<CheckpointRecord>>,
) -> std::result::Result<(), String> {
    let c = &e.checkpoint;
    if e.key != *key {
        return Err(format!(
            "it was signed by another key ({}) than this server's checkpoint key ({}): another data directory, or the master seed changed",
            hex(&e.key.to_bytes()),
            hex(&key.to_bytes())
        ));
    }
    if !key.verify_bytes(&c.signing_bytes(), &e.signature) {
        return Err("its signature does not verify: the file was edited".to_owned());
    }
    if c.head.seq > head_seq {
        return Err(format!(
            "it vouches for record {} but the chain ends at record {head_seq}: records were removed",
            c.head.seq
        ));
    }
    if record_at(c.head.seq).is_none_or(|(hash, _)| hash != c.head.hash) {
        return Err(format!(
            "record {} no longer has the exported hash: the log was rewritten up to it",
            c.head.seq
        ));
    }
    // Unreadable stored checkpoints are reported by the checkpoint rules next.
    let same = stored.is_none_or(|list| {
        list.iter().any(|s| s.counter == Some(c.counter) && s.seq == c.head.seq && s.hash == c.head.hash && s.ts == c.ts && s.prev == Some(c.prev))
    });
    if !same {
        return Err(format!(
            "the database no longer holds checkpoint {} as exported: checkpoints were deleted or replaced",
            c.counter
        ));
    }
    Ok(())
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

/// The verified chain, with the hash and time of each `wanted` record it holds.
pub(crate) type Walked = (agentkeys_audit::VerifiedChain, BTreeMap<u64, (Hash, i64)>);

/// Verifies the whole chain, keeping the hash and time of the `wanted` records.
/// The outer error is a failure to read at all; the inner one is the first
/// broken record with the number verified before it.
pub(crate) async fn verify(meta: &dyn MetadataStore, wanted: &BTreeSet<u64>) -> Result<Result<Walked, (Broken, u64)>> {
    let mut verifier = Verifier::new();
    let mut verified = 0u64;
    let mut seen = BTreeMap::new();
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
            return Ok(Ok((verifier.finish(), seen)));
        }
        for record in &page {
            if let Err(broken) = verifier.push(record) {
                return Ok(Err((broken, verified)));
            }
            verified += 1;
            if wanted.contains(&record.seq) {
                seen.insert(record.seq, (record.hash, record.ts));
            }
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
