//! [`BlobStore`] over a local directory tree, with durable writes and group commit.
//!
//! Layout: a blob with key `a/b/c.eml` is the file `<root>/a/b/c.eml`. Staging
//! happens in `<root>/.tmp/<instance>/` (same filesystem, so the final step is a
//! link, never a copy); keys cannot start with a dot, so `.tmp` is never a key.
//!
//! A durable put goes through two stages:
//!
//! 1. **Write and link**, on the blocking pool, concurrently across callers: each
//!    item is written to a fresh staging file, fsynced, and hard-linked under its
//!    key (creating the key's directories if needed). Concurrent fsyncs share the
//!    filesystem journal's commits (ext4 and XFS merge them).
//! 2. **Commit**, on one committer thread, in batches: the thread takes every put
//!    waiting, fsyncs each distinct key directory once for the whole batch (and,
//!    the first time it meets a directory, its ancestors up to the root, so newly
//!    created directories are durable too), and only then answers every caller
//!    of the batch. While it fsyncs, the next batch gathers: this is the group
//!    commit. Only directory fsyncs are serialised; all per-item work is parallel.
//!
//! Keys are write-once: the staged file is hard-linked under its key, which fails
//! if the key exists, so a put can never replace a stored message and undoing a
//! failed put only ever removes what that put created. A linked item may be
//! listed a moment before its directory fsync returns; if that fsync fails, the
//! put is undone and answers an error.
//!
//! `list` takes a plain string prefix, as S3 does: `<owner>/<inbox>/` lists one
//! inbox, `<owner>/bot` every key of that owner's inboxes starting with `bot`.
//! A prefix that no key can start with (absolute, with `..`, into `.tmp`) lists
//! nothing and never leaves the root.
//!
//! A crash leaves at worst files in a staging directory, never a partial file
//! under a key (the data is fsynced before it is linked). [`FsBlobStore::open`]
//! removes the staging directories of stores that are gone; each live store
//! holds an exclusive lock on `<root>/.tmp/<instance>.lock`, so two processes
//! sharing a root (the server and the CLI) never remove each other's files.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;
use ulid::Ulid;

use crate::BlobStore;
use crate::blob::{BlobError, BlobKey};

/// Name of the staging directory under the root.
const STAGING_DIR: &str = ".tmp";
/// Most jobs (puts) committed in one batch, to bound a batch's latency.
const MAX_BATCH_JOBS: usize = 1024;
/// Most directories the committer remembers as durable before starting over
/// (each costs a path; forgetting only costs a few extra, cheap, fsyncs).
const MAX_KNOWN_DIRS: usize = 65_536;
/// How many fresh instance names `open` tries if a cleaner races it.
const OPEN_ATTEMPTS: u32 = 3;
/// Mode of stored files: mail is private to the server's user.
const FILE_MODE: u32 = 0o600;
/// Mode of created directories.
const DIR_MODE: u32 = 0o700;

/// A [`BlobStore`] over a directory tree, with durable group commit.
///
/// Cheap to clone: clones share the committer. Must be used inside a Tokio runtime.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// This instance's staging directory, `<root>/.tmp/<instance>/`.
    staging: PathBuf,
    next_staged: AtomicU64,
    committer: mpsc::Sender<CommitJob>,
}

/// One `put_durable` call whose items are written, fsynced and linked under their
/// keys, handed to the committer to make the directory entries durable.
#[derive(Debug)]
struct CommitJob {
    /// The files created under the keys.
    linked: Vec<PathBuf>,
    done: oneshot::Sender<Result<(), BlobError>>,
}

/// An I/O error with the path it concerned.
type PathError = (PathBuf, io::Error);

fn blob_error((path, err): PathError) -> BlobError {
    BlobError::from_io(path.display().to_string(), err)
}

impl FsBlobStore {
    /// Opens the store at `root`, creating the root and its staging directory if
    /// needed, and removes what crashed stores left in staging.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        create_dir_durable(root).map_err(blob_error)?;
        let staging_root = root.join(STAGING_DIR);
        create_dir_durable(&staging_root).map_err(blob_error)?;
        remove_stale_staging(&staging_root).map_err(blob_error)?;

        let (lock_path, lock, staging) = claim_staging(&staging_root).map_err(blob_error)?;
        let (committer, jobs) = mpsc::channel();
        let thread_staging = staging.clone();
        let mut thread_committer = Committer { root: root.to_path_buf(), known_dirs: HashSet::new() };
        std::thread::Builder::new()
            .name("blob-committer".to_owned())
            .spawn(move || {
                thread_committer.run(&jobs);
                // Every sender is gone, so no put is in flight: tidy up our staging.
                if let Err(err) = fs::remove_dir_all(&thread_staging) {
                    tracing::warn!(path = %thread_staging.display(), %err, "cannot remove blob staging directory");
                }
                let _ = fs::remove_file(&lock_path);
                drop(lock);
            })
            .map_err(|err| blob_error((staging.clone(), err)))?;

        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                staging,
                next_staged: AtomicU64::new(0),
                committer,
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put_durable(&self, items: Vec<(BlobKey, Bytes)>) -> Result<(), BlobError> {
        if items.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        let inner = Arc::clone(&self.inner);
        // Staging and the hand-off run to completion even if this future is dropped,
        // so a cancelled put never leaks staged files: it commits or cleans up.
        drop(tokio::task::spawn_blocking(move || match inner.write_and_link(items) {
            Ok(linked) => {
                if let Err(mpsc::SendError(job)) = inner.committer.send(CommitJob { linked, done }) {
                    // Only if the committer thread died (a panic): fail the put and
                    // leave nothing of it visible.
                    remove_files(&job.linked);
                    let err = io::Error::other("the blob committer has stopped");
                    let _ = job.done.send(Err(blob_error((inner.staging.clone(), err))));
                }
            }
            Err(err) => {
                let _ = done.send(Err(err));
            }
        }));
        answer.await.unwrap_or_else(|_| {
            let err = io::Error::other("the blob write was abandoned (a storage task panicked)");
            Err(blob_error((self.inner.staging.clone(), err)))
        })
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Bytes>, BlobError> {
        let path = self.inner.root.join(key.as_str());
        let context = path.clone();
        run_blocking(context, move || match fs::read(&path) {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(err) if is_absent(&err) => Ok(None),
            Err(err) => Err(blob_error((path, err))),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobKey>, BlobError> {
        let Some((dir, name_start)) = split_prefix(prefix) else {
            return Ok(Vec::new());
        };
        let root = self.inner.root.clone();
        let context = root.join(&dir);
        let prefix = prefix.to_owned();
        run_blocking(context, move || list_keys(&root, &dir, &name_start, &prefix).map_err(blob_error)).await
    }
}

impl Inner {
    /// Writes and fsyncs every item in staging and links it under its key. On
    /// error, removes everything this call created and says what failed.
    fn write_and_link(&self, items: Vec<(BlobKey, Bytes)>) -> Result<Vec<PathBuf>, BlobError> {
        let mut linked = Vec::with_capacity(items.len());
        for (key, data) in items {
            let n = self.next_staged.fetch_add(1, Ordering::Relaxed);
            let staged = self.staging.join(format!("{n}.tmp"));
            let dest = self.root.join(key.as_str());
            let result = write_synced(&staged, &data)
                .map_err(|err| (staged.clone(), err))
                .and_then(|()| create_parent(&dest))
                .and_then(|()| fs::hard_link(&staged, &dest).map_err(|err| (dest.clone(), err)));
            // Linked or failed, the staging name has served its purpose.
            let _ = fs::remove_file(&staged);
            if let Err(err) = result {
                remove_files(&linked);
                return Err(blob_error(err));
            }
            linked.push(dest);
        }
        Ok(linked)
    }
}

/// Creates `path` (which must not exist), writes `data` and fsyncs the file.
fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path)?;
    file.write_all(data)?;
    file.sync_data()
}

/// Creates the directories above `dest` if missing. Their durability is the
/// committer's job (it fsyncs the ancestors of directories it has not seen).
fn create_parent(dest: &Path) -> Result<(), PathError> {
    let Some(dir) = dest.parent() else { return Ok(()) };
    if fs::metadata(dir).is_ok_and(|meta| meta.is_dir()) {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|err| (dir.to_path_buf(), err))
}

fn remove_files(paths: &[PathBuf]) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// Whether a read error means "no blob there": missing, or a path through or to a
/// directory rather than a file.
fn is_absent(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

/// Runs blocking file work on Tokio's blocking pool.
async fn run_blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|join_err| {
        Err(blob_error((path, io::Error::other(format!("storage task failed: {join_err}")))))
    })
}

// ---------------------------------------------------------------------------
// The committer.

/// The committer thread's state.
struct Committer {
    root: PathBuf,
    /// Directories whose own entry (and their ancestors') is known durable, so
    /// only the directory itself needs an fsync for new files in it.
    known_dirs: HashSet<PathBuf>,
}

impl Committer {
    /// Commits batches of jobs until every sender is gone.
    fn run(&mut self, jobs: &mpsc::Receiver<CommitJob>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_JOBS {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Fsyncs each directory the batch touched (and the ancestors of those not
    /// seen before) once, then answers every job.
    fn commit(&mut self, batch: Vec<CommitJob>) {
        let dirs: BTreeSet<&Path> =
            batch.iter().flat_map(|job| job.linked.iter().filter_map(|path| path.parent())).collect();
        let mut to_sync: BTreeSet<&Path> = BTreeSet::new();
        for dir in &dirs {
            if self.known_dirs.contains(*dir) {
                to_sync.insert(dir);
            } else {
                // The directory may be new: its entry in its parent, and so on up
                // to the root, must be durable too.
                to_sync.extend(dir.ancestors().take_while(|a| a.starts_with(&self.root)));
            }
        }
        let failed: Vec<PathError> = to_sync
            .into_iter()
            .filter_map(|dir| fsync_dir(dir).err().map(|err| (dir.to_path_buf(), err)))
            .collect();

        if failed.is_empty() {
            if self.known_dirs.len() + dirs.len() > MAX_KNOWN_DIRS {
                self.known_dirs.clear();
            }
            self.known_dirs.extend(dirs.into_iter().map(Path::to_path_buf));
        }
        for job in batch {
            let failure = failed.iter().find(|(failed_dir, _)| {
                job.linked.iter().any(|path| path.parent().is_some_and(|dir| dir.starts_with(failed_dir)))
            });
            let answer = match failure {
                None => Ok(()),
                Some((dir, err)) => {
                    // Not durable, so not stored: take the items back (best effort).
                    remove_files(&job.linked);
                    Err(blob_error((dir.clone(), copy_io_error(err))))
                }
            };
            // The caller may have gone away (cancelled); the outcome stands either way.
            let _ = job.done.send(answer);
        }
    }
}

/// `io::Error` is not `Clone`; one directory failure answers several jobs.
fn copy_io_error(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Directories.

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of each directory
/// it creates so the new entries survive a crash. Does nothing if `dir` exists.
fn create_dir_durable(dir: &Path) -> Result<(), PathError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            let err = io::Error::new(io::ErrorKind::NotADirectory, "exists and is not a directory");
            return Err((dir.to_path_buf(), err));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err((dir.to_path_buf(), err)),
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    create_dir_durable(parent)?;
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fsync_dir(parent).map_err(|err| (parent.to_path_buf(), err)),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(err) => Err((dir.to_path_buf(), err)),
    }
}

/// Creates this instance's lock file (locked) and staging directory under
/// `staging_root`. Returns the lock's path, the locked file and the directory.
fn claim_staging(staging_root: &Path) -> Result<(PathBuf, File, PathBuf), PathError> {
    let mut attempt = 1;
    loop {
        let instance = Ulid::new().to_string();
        let lock_path = staging_root.join(format!("{instance}.lock"));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(|err| (lock_path.clone(), err))?;
        lock.lock().map_err(|err| (lock_path.clone(), err))?;
        // A cleaner in another process may have locked and removed the file between
        // our create and our lock; then our lock guards nothing and we start over.
        let ours = lock.metadata().map_err(|err| (lock_path.clone(), err))?;
        let still_linked = fs::metadata(&lock_path)
            .is_ok_and(|linked| linked.dev() == ours.dev() && linked.ino() == ours.ino());
        if still_linked {
            let staging = staging_root.join(&instance);
            if let Err(err) = DirBuilder::new().mode(DIR_MODE).create(&staging) {
                let _ = fs::remove_file(&lock_path);
                return Err((staging, err));
            }
            return Ok((lock_path, lock, staging));
        }
        if attempt == OPEN_ATTEMPTS {
            let err = io::Error::other("the staging lock file keeps being removed by another process");
            return Err((lock_path, err));
        }
        attempt += 1;
    }
}

/// Removes staging left by stores that are gone: directories whose lock file is
/// missing or not locked, their lock files, and any loose file.
fn remove_stale_staging(staging_root: &Path) -> Result<(), PathError> {
    let entries = fs::read_dir(staging_root).map_err(|err| (staging_root.to_path_buf(), err))?;
    for entry in entries {
        let entry = entry.map_err(|err| (staging_root.to_path_buf(), err))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_dir = entry.file_type().map_err(|err| (path.clone(), err))?.is_dir();
        let removed = if let Some(instance) = name.strip_suffix(".lock").filter(|_| !is_dir) {
            match File::open(&path) {
                Ok(lock) => match lock.try_lock() {
                    // Its store is gone: its staging first, then the lock file.
                    Ok(()) => remove_tree(&staging_root.join(instance)).and_then(|()| remove_tree(&path)),
                    Err(TryLockError::WouldBlock) => Ok(()),
                    Err(TryLockError::Error(err)) => Err(err),
                },
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(err),
            }
        } else if is_dir {
            // A live store creates its lock file before its directory.
            let lock = staging_root.join(format!("{name}.lock"));
            if lock.exists() { Ok(()) } else { remove_tree(&path) }
        } else {
            remove_tree(&path)
        };
        removed.map_err(|err| (path, err))?;
    }
    Ok(())
}

/// Removes a file or a directory tree; already gone is fine.
fn remove_tree(path: &Path) -> io::Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match removed {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Listing.

/// Splits a list prefix into the directory to walk (a valid key path, possibly
/// empty) and the start of the names to keep in it. `None` if no key can have
/// this prefix (absolute, `..`, characters keys never contain).
fn split_prefix(prefix: &str) -> Option<(String, String)> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"._@-/".contains(&b);
    if prefix.starts_with('/') || prefix.contains("..") || !prefix.bytes().all(allowed) {
        return None;
    }
    let (dir, name_start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    if !dir.is_empty() && BlobKey::parse(dir).is_none() {
        return None;
    }
    if name_start.starts_with('.') {
        return None;
    }
    Some((dir.to_owned(), name_start.to_owned()))
}

/// Every key under `<root>/<dir>` whose name (directly in `dir`) starts with
/// `name_start` and whose full text starts with `prefix`, sorted.
fn list_keys(root: &Path, dir: &str, name_start: &str, prefix: &str) -> Result<Vec<BlobKey>, PathError> {
    let mut keys = Vec::new();
    let mut pending = vec![(root.join(dir), dir.to_owned(), true)];
    while let Some((path, key_dir, top)) = pending.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            // Missing, or removed while we walked: nothing under it.
            Err(err) if is_absent(&err) => continue,
            Err(err) => return Err((path, err)),
        };
        for entry in entries {
            let entry = entry.map_err(|err| (path.clone(), err))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || (top && !name.starts_with(name_start)) {
                continue;
            }
            let key = if key_dir.is_empty() { name.to_owned() } else { format!("{key_dir}/{name}") };
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(err) if is_absent(&err) => continue,
                Err(err) => return Err((entry.path(), err)),
            };
            if file_type.is_dir() {
                pending.push((entry.path(), key, false));
            } else if file_type.is_file() && key.starts_with(prefix) {
                keys.extend(BlobKey::parse(&key));
            }
        }
    }
    keys.sort();
    Ok(keys)
}
