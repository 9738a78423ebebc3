//! The hand-out record: per agent and inbox, which messages a wait already
//! handed out (issue 11 §1), so the next wait never returns the previous
//! sign-up's code. `mark_messages` (MCP) and `agentkeys mail mark read|unread`
//! edit it.
//!
//! It lives in the agent's configuration directory (next to `agent.json`), one
//! file per agent (`handouts-<fingerprint>.json`, the fingerprint a hash of the
//! server URL and the agent key, never the key itself), so the CLI's one-shot
//! processes and a long-running `agentkeys mcp` share it. A claim is atomic
//! across processes: an exclusive lock on the file beside it with the extension `.lock`, re-read, check, insert,
//! write to a temporary file and rename. Two waiters on one inbox never hand out
//! one message twice. Ids older than [`KEEP_MS`] are pruned, and each inbox
//! keeps at most [`MAX_PER_INBOX`] ids (the oldest go first). Without a
//! directory the record is kept in memory (one process).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ulid::Ulid;

/// How long a handed-out id is remembered: a little longer than the longest
/// look-back window, so nothing a wait can still see is forgotten.
pub const KEEP_MS: i64 = crate::wait::MAX_LOOKBACK_MS + 60 * 60 * 1000;
/// Most ids remembered per inbox.
pub const MAX_PER_INBOX: usize = 10_000;

type Record = BTreeMap<String, BTreeSet<Ulid>>;

/// The record of one agent (shared by clones).
#[derive(Debug, Clone, Default)]
pub struct Handouts {
    path: Option<PathBuf>,
    memory: Arc<Mutex<Record>>,
}

/// The record file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the hand-out record {path} cannot be {action}: {reason}")]
pub struct HandoutError {
    /// The file.
    pub path: String,
    /// `read`, `written`, `locked`.
    pub action: &'static str,
    /// Why.
    pub reason: String,
}

/// The record file's name for the agent whose key is `agent_key` on `server`.
pub fn file_name(server: &str, agent_key: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"agentkeys handout record v1\0");
    h.update(server.as_bytes());
    h.update(b"\0");
    h.update(agent_key.as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("handouts-{hex}.json")
}

impl Handouts {
    /// A record kept in memory only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// A record in `path` (created on first write, mode 0600).
    pub fn at(path: PathBuf) -> Self {
        Handouts { path: Some(path), memory: Arc::default() }
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The ids handed out for `inbox`.
    pub fn snapshot(&self, inbox: &str) -> Result<BTreeSet<Ulid>, HandoutError> {
        self.with(false, |r| Ok((r.get(inbox).cloned().unwrap_or_default(), false)))
    }

    /// Records `id` as handed out for `inbox`; false when it already was (by
    /// this process or another): the caller must not hand it out then.
    pub fn claim(&self, inbox: &str, id: Ulid, now_ms: i64) -> Result<bool, HandoutError> {
        self.with(true, |r| {
            let set = r.entry(inbox.to_owned()).or_default();
            let fresh = set.insert(id);
            prune(set, now_ms);
            Ok((fresh, fresh))
        })
    }

    /// Marks `ids` read (handed out) or unread (forgotten); returns how many changed.
    pub fn mark(&self, inbox: &str, ids: &[Ulid], read: bool, now_ms: i64) -> Result<usize, HandoutError> {
        self.with(true, |r| {
            let set = r.entry(inbox.to_owned()).or_default();
            let changed = ids.iter().filter(|id| if read { set.insert(**id) } else { set.remove(*id) }).count();
            prune(set, now_ms);
            Ok((changed, changed > 0))
        })
    }

    /// Runs `f` on the record under the lock; writes it back when `f` says so.
    fn with<T>(&self, write: bool, f: impl FnOnce(&mut Record) -> Result<(T, bool), HandoutError>) -> Result<T, HandoutError> {
        let mut memory = self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(path) = &self.path else {
            return f(&mut memory).map(|(t, _)| t);
        };
        let err = |action: &'static str, e: &dyn std::fmt::Display| HandoutError {
            path: path.display().to_string(),
            action,
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("written", &e))?;
        }
        let lock_path = path.with_extension("lock");
        let lock = open_private(&lock_path, false).map_err(|e| err("locked", &e))?;
        if write {
            lock.lock().map_err(|e| err("locked", &e))?;
        } else {
            lock.lock_shared().map_err(|e| err("locked", &e))?;
        }
        let mut record = read(path).map_err(|e| err("read", &e))?;
        let (out, changed) = f(&mut record)?;
        if write && changed {
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            let on_disk: BTreeMap<&String, Vec<String>> =
                record.iter().map(|(k, v)| (k, v.iter().map(Ulid::to_string).collect())).collect();
            let bytes = serde_json::to_vec(&on_disk).map_err(|e| err("written", &e))?;
            let written = (|| {
                use std::io::Write as _;
                let mut file = open_private(&tmp, true)?;
                file.write_all(&bytes)?;
                std::fs::rename(&tmp, path)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(err("written", &e));
            }
        }
        *memory = record;
        Ok(out)
    }
}

fn open_private(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(truncate).mode(0o600).open(path)
}

fn read(path: &Path) -> std::io::Result<Record> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => Ok(Record::new()),
        Ok(bytes) => {
            let on_disk: BTreeMap<String, Vec<String>> =
                serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            Ok(on_disk
                .into_iter()
                .map(|(k, v)| (k, v.iter().filter_map(|id| Ulid::from_string(id).ok()).collect()))
                .collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::new()),
        Err(e) => Err(e),
    }
}

fn prune(set: &mut BTreeSet<Ulid>, now_ms: i64) {
    let oldest = u64::try_from(now_ms.saturating_sub(KEEP_MS).max(0)).unwrap_or(0);
    let keep = set.split_off(&Ulid::from_parts(oldest, 0));
    *set = keep;
    while set.len() > MAX_PER_INBOX {
        set.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_shared_through_the_file_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name("http://x", "ak_test"));
        let a = Handouts::at(path.clone());
        let b = Handouts::at(path.clone());
        let now = 1_796_605_000_000i64;
        let id = Ulid::from_parts(now as u64 - 1000, 1);
        assert!(a.claim("bot@x", id, now).unwrap());
        assert!(!b.claim("bot@x", id, now).unwrap(), "another process sees the claim");
        assert!(b.claim("other@x", id, now).unwrap(), "per inbox");
        assert_eq!(b.mark("bot@x", &[id], false, now).unwrap(), 1);
        assert!(a.snapshot("bot@x").unwrap().is_empty());
        assert_eq!(a.mark("bot@x", &[id], true, now).unwrap(), 1);
        // Older than KEEP_MS: pruned at the next write.
        let old = Ulid::from_parts((now - KEEP_MS - 1) as u64, 1);
        a.mark("bot@x", &[old], true, now).unwrap();
        assert_eq!(a.snapshot("bot@x").unwrap().into_iter().collect::<Vec<_>>(), vec![id]);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!file_name("http://x", "ak_test").contains("ak_test"));
    }

    #[test]
    fn per_inbox_limit() {
        let h = Handouts::in_memory();
        let now = 1_796_605_000_000i64;
        let ids: Vec<Ulid> = (0..MAX_PER_INBOX as u128 + 5).map(|i| Ulid::from_parts(now as u64 - 10, i)).collect();
        h.mark("a@x", &ids, true, now).unwrap();
        let kept = h.snapshot("a@x").unwrap();
        assert_eq!(kept.len(), MAX_PER_INBOX);
        assert!(!kept.contains(&ids[0]) && kept.contains(ids.last().unwrap()));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handouts-x.json");
        std::fs::write(&path, b"{not json").unwrap();
        let e = Handouts::at(path).snapshot("a@x").unwrap_err();
        assert!(e.to_string().contains("handouts-x.json") && e.action == "read", "{e}");
    }
}
