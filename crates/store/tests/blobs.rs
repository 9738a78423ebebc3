//! `FsBlobStore` against the `BlobStore` contract: durable puts become visible
//! whole or not at all, listing stays inside the root, staging leftovers of a
//! crash are removed, and concurrent puts all land.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentkeys_store::{BlobError, BlobKey, BlobStore, FsBlobStore};
use bytes::Bytes;

fn key(s: &str) -> BlobKey {
    BlobKey::parse(s).unwrap()
}

fn body(n: usize) -> Bytes {
    Bytes::from(format!("Subject: message {n}\r\n\r\n{}\r\n", "x".repeat(n % 97)))
}

fn names(keys: &[BlobKey]) -> Vec<&str> {
    keys.iter().map(BlobKey::as_str).collect()
}

/// Entries of a directory, sorted, or empty if it is missing.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(read) => read.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The staging directories (not lock files) under `<root>/.tmp`.
fn staging_dirs(root: &Path) -> Vec<PathBuf> {
    entries(&root.join(".tmp"))
        .into_iter()
        .map(|name| root.join(".tmp").join(name))
        .filter(|path| path.is_dir())
        .collect()
}

/// Files still staged: there must be none once puts have returned.
fn staged_files(root: &Path) -> usize {
    staging_dirs(root).iter().map(|dir| entries(dir).len()).sum()
}

#[tokio::test]
async fn put_get_list() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = FsBlobStore::open(&root).unwrap();
    let keys =
        ["0xaa/bot@a.test/01B.eml", "0xaa/bot@a.test/01A.eml", "0xaa/bot2@a.test/01C.eml", "0xbb/x@a.test/01D.eml"];
    store.put_durable(vec![(key(keys[0]), body(0)), (key(keys[1]), body(1))]).await.unwrap();
    store.put_durable(vec![(key(keys[2]), body(2))]).await.unwrap();
    store.put_durable(vec![(key(keys[3]), body(3))]).await.unwrap();
    store.put_durable(Vec::new()).await.unwrap();

    for (n, k) in keys.iter().enumerate() {
        assert_eq!(store.get(&key(k)).await.unwrap(), Some(body(n)), "{k}");
    }
    assert_eq!(store.get(&key("0xaa/bot@a.test/missing.eml")).await.unwrap(), None);
    assert_eq!(store.get(&key("0xaa/bot@a.test")).await.unwrap(), None, "a directory is not a blob");
    assert_eq!(store.get(&key("0xaa/bot@a.test/01A.eml/x")).await.unwrap(), None);

    assert_eq!(
        names(&store.list("0xaa/bot@a.test/").await.unwrap()),
        ["0xaa/bot@a.test/01A.eml", "0xaa/bot@a.test/01B.eml"]
    );
    assert_eq!(names(&store.list("0xaa/").await.unwrap()).len(), 3);
    assert_eq!(
        names(&store.list("0xaa/bot").await.unwrap()),
        ["0xaa/bot2@a.test/01C.eml", "0xaa/bot@a.test/01A.eml", "0xaa/bot@a.test/01B.eml"],
        "a partial name is a string prefix, sorted by key"
    );
    assert_eq!(names(&store.list("").await.unwrap()).len(), 4, "staging is never listed");
    assert!(store.list("0xcc/").await.unwrap().is_empty());
    assert_eq!(staged_files(&root), 0, "staged files are removed once linked");

    let reopened = FsBlobStore::open(&root).unwrap();
    assert_eq!(reopened.get(&key(keys[3])).await.unwrap(), Some(body(3)));
}

#[tokio::test]
async fn keys_are_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    let k = key("0xaa/bot@a.test/01A.eml");
    store.put_durable(vec![(k.clone(), body(1))]).await.unwrap();
    let err = store.put_durable(vec![(key("0xaa/bot@a.test/01B.eml"), body(2)), (k.clone(), body(3))]).await;
    assert!(matches!(err, Err(BlobError::Io { .. })), "{err:?}");
    assert_eq!(store.get(&k).await.unwrap(), Some(body(1)), "the stored blob is untouched");
    assert_eq!(names(&store.list("").await.unwrap()), ["0xaa/bot@a.test/01A.eml"], "the whole put was undone");
    assert_eq!(staged_files(dir.path()), 0);
}

#[tokio::test]
async fn listing_never_leaves_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let store = FsBlobStore::open(&root).unwrap();
    store.put_durable(vec![(key("0xaa/bot@a.test/01A.eml"), body(1))]).await.unwrap();
    // A sibling of the root that a traversal would reach.
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    std::fs::write(dir.path().join("secret/passwd"), b"x").unwrap();
    // A staged file that must never be listed.
    std::fs::write(root.join(".tmp/loose.tmp"), b"partial").unwrap();

    for bad in
        ["../", "../secret/", "..", "/", "/etc/", "0xaa/../", "0xaa/../../secret/", ".tmp/", ".tmp", "a b/", "0xaa//"]
    {
        assert!(store.list(bad).await.unwrap().is_empty(), "{bad:?}");
    }
    assert_eq!(names(&store.list("0xaa/bot@a.test/").await.unwrap()), ["0xaa/bot@a.test/01A.eml"]);
    // Keys themselves cannot be built to escape.
    for bad in ["../secret/passwd", "/etc/passwd", ".tmp/loose.tmp", "0xaa/../../secret/passwd"] {
        assert!(BlobKey::parse(bad).is_none(), "{bad:?}");
    }
}

#[tokio::test]
async fn open_removes_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tmp = root.join(".tmp");
    // What a crashed store leaves: its lock file (no longer locked), its staging
    // directory with a half-written file, and a loose file; plus a staging
    // directory whose lock file is already gone.
    std::fs::create_dir_all(tmp.join("01CRASHED")).unwrap();
    std::fs::write(tmp.join("01CRASHED/7.tmp"), b"Subject: half").unwrap();
    std::fs::write(tmp.join("01CRASHED.lock"), b"").unwrap();
    std::fs::create_dir_all(tmp.join("01ORPHAN")).unwrap();
    std::fs::write(tmp.join("01ORPHAN/1.tmp"), b"x").unwrap();
    std::fs::write(tmp.join("loose.tmp"), b"x").unwrap();

    let store = FsBlobStore::open(root).unwrap();
    let left = entries(&tmp);
    assert_eq!(left.len(), 2, "only the new store's lock and directory remain: {left:?}");
    assert!(left.iter().any(|n| n.ends_with(".lock")));
    assert!(!left.iter().any(|n| n.contains("CRASHED") || n.contains("ORPHAN") || n.contains("loose")));
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn open_keeps_a_live_store_staging() {
    let dir = tempfile::tempdir().unwrap();
    let server = FsBlobStore::open(dir.path()).unwrap();
    let before = staging_dirs(dir.path());
    assert_eq!(before.len(), 1);
    // The CLI opens the same root while the server runs.
    let cli = FsBlobStore::open(dir.path()).unwrap();
    let after = staging_dirs(dir.path());
    assert_eq!(after.len(), 2);
    assert!(after.contains(&before[0]), "the server's staging survived the CLI's open");
    server.put_durable(vec![(key("0xaa/bot@a.test/01A.eml"), body(1))]).await.unwrap();
    assert_eq!(cli.get(&key("0xaa/bot@a.test/01A.eml")).await.unwrap(), Some(body(1)));

    // A dropped store removes its own staging once its committer stops.
    drop(cli);
    let deadline = Instant::now() + Duration::from_secs(5);
    while entries(&dir.path().join(".tmp")).len() != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(staging_dirs(dir.path()), before);
    assert_eq!(entries(&dir.path().join(".tmp")).len(), 2, "the dropped store's lock file is gone too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let n = task * 10 + i;
                    let k = key(&format!("0x{:02x}/inbox{}@a.test/{n:04}.eml", task % 3, n % 7));
                    store.put_durable(vec![(k, body(n))]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let listed = store.list("").await.unwrap();
    assert_eq!(listed.len(), 200);
    for n in 0..200 {
        let k = key(&format!("0x{:02x}/inbox{}@a.test/{n:04}.eml", (n / 10) % 3, n % 7));
        assert_eq!(store.get(&k).await.unwrap(), Some(body(n)), "{k}");
    }
    assert_eq!(staged_files(dir.path()), 0);
}

#[tokio::test]
async fn failed_put_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    // A regular file where the second item's owner directory would go.
    std::fs::write(dir.path().join("0xbb"), b"not a directory").unwrap();
    let result = store
        .put_durable(vec![(key("0xaa/bot@a.test/01A.eml"), body(1)), (key("0xbb/bot@a.test/01B.eml"), body(2))])
        .await;
    match result {
        Err(BlobError::Io { path, .. }) => assert!(path.contains("0xbb"), "{path}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(store.get(&key("0xaa/bot@a.test/01A.eml")).await.unwrap(), None, "the first item was undone");
    assert!(store.list("0xaa/").await.unwrap().is_empty());
    assert_eq!(staged_files(dir.path()), 0);
    // The store still works afterwards.
    store.put_durable(vec![(key("0xaa/bot@a.test/01C.eml"), body(3))]).await.unwrap();
}

#[tokio::test]
async fn root_under_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = FsBlobStore::open(&file.join("blobs")).unwrap_err();
    assert!(matches!(err, BlobError::Io { .. }), "{err:?}");

    // A root that turns into a file after opening: puts fail and nothing appears.
    let root = dir.path().join("blobs");
    let store = FsBlobStore::open(&root).unwrap();
    std::fs::rename(&root, dir.path().join("moved-away")).unwrap();
    std::fs::write(&root, b"now a file").unwrap();
    let result = store.put_durable(vec![(key("0xaa/bot@a.test/01A.eml"), body(1))]).await;
    assert!(matches!(result, Err(BlobError::Io { .. })), "{result:?}");
    assert_eq!(store.get(&key("0xaa/bot@a.test/01A.eml")).await.unwrap(), None);
    assert!(entries(&dir.path().join("moved-away")).iter().all(|n| n == ".tmp"));
    assert_eq!(staged_files(&dir.path().join("moved-away")), 0);
}

#[tokio::test]
async fn cancelled_put_leaves_no_staged_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    let k = key("0xaa/bot@a.test/01A.eml");
    // Dropped at its first await: the write carries on in the background.
    let put = store.put_durable(vec![(k.clone(), body(1))]);
    let _ = tokio::time::timeout(Duration::ZERO, put).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get(&k).await.unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.get(&k).await.unwrap(), Some(body(1)), "a cancelled put still commits, whole");
    assert_eq!(staged_files(dir.path()), 0);
}

#[test]
fn storage_full_is_classified() {
    let full = BlobError::from_io("x", std::io::Error::from_raw_os_error(28)); // ENOSPC
    assert!(matches!(full, BlobError::StorageFull(_)));
    let other = BlobError::from_io("x", std::io::Error::from_raw_os_error(5)); // EIO
    assert!(matches!(other, BlobError::Io { .. }));
}

#[tokio::test]
async fn the_readiness_probe_writes_durably_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path()).unwrap();
    for _ in 0..3 {
        store.check_writable().await.unwrap();
    }
    assert_eq!(staged_files(dir.path()), 0);
    assert!(store.list("").await.unwrap().is_empty());
    assert_eq!(entries(dir.path()), [".tmp"]);
}
