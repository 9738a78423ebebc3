//! Durable blob write throughput: `FsBlobStore` (group commit) against naive
//! per-put durable writes.
//!
//! ```text
//! cargo run --release -p agentkeys-store --example blob_throughput -- [options]
//!   --mode group|serial|naive|all   which writer(s) to measure (default all)
//!   -n N                            puts per mode (default 5000)
//!   -c C                            concurrent tasks (default 20)
//!   --size BYTES                    message size (default 10240)
//!   --inboxes K                     distinct inbox directories (default 20)
//!   --dir PATH                      where to create the scratch root (default the temp dir)
//!   --max-secs S                    stop a mode after S seconds (default 60)
//! ```
//!
//! Modes: `group` is `FsBlobStore::put_durable`; `serial` writes one message at a
//! time (temp file, fsync, rename, fsync directory) behind a lock; `naive` does the
//! same per put but concurrently, with no sharing of directory fsyncs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentkeys_store::{BlobKey, BlobStore, FsBlobStore};
use bytes::Bytes;

#[derive(Debug, Clone)]
struct Options {
    modes: Vec<String>,
    count: u64,
    concurrency: u64,
    size: usize,
    inboxes: u64,
    dir: PathBuf,
    max_time: Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        modes: vec!["group".into(), "serial".into(), "naive".into()],
        count: 5000,
        concurrency: 20,
        size: 10_240,
        inboxes: 20,
        dir: std::env::temp_dir(),
        max_time: Duration::from_secs(60),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--mode" => {
                let mode = value()?;
                options.modes = match mode.as_str() {
                    "all" => vec!["group".into(), "serial".into(), "naive".into()],
                    "group" | "serial" | "naive" => vec![mode],
                    other => return Err(format!("unknown mode {other:?}: expected group, serial, naive or all")),
                };
            }
            "-n" => options.count = number(value()?)?,
            "-c" => options.concurrency = number(value()?)?.max(1),
            "--size" => options.size = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?,
            "--inboxes" => options.inboxes = number(value()?)?.max(1),
            "--dir" => options.dir = PathBuf::from(value()?),
            "--max-secs" => options.max_time = Duration::from_secs(number(value()?)?),
            other => return Err(format!("unknown option {other:?}; see the header of examples/blob_throughput.rs")),
        }
    }
    Ok(options)
}

/// A durable writer under test.
#[derive(Clone)]
enum Writer {
    Group(FsBlobStore),
    /// Naive durable put; `Some(lock)` serialises puts.
    Naive {
        root: PathBuf,
        lock: Option<Arc<tokio::sync::Mutex<()>>>,
        next: Arc<AtomicU64>,
    },
}

impl Writer {
    async fn put(&self, key: BlobKey, data: Bytes) -> Result<(), String> {
        match self {
            Self::Group(store) => store.put_durable(vec![(key, data)]).await.map_err(|e| e.to_string()),
            Self::Naive { root, lock, next } => {
                let _guard = match lock {
                    Some(lock) => Some(lock.lock().await),
                    None => None,
                };
                let temp = root.join(".tmp").join(format!("{}.tmp", next.fetch_add(1, Ordering::Relaxed)));
                let dest = root.join(key.as_str());
                tokio::task::spawn_blocking(move || naive_put(&temp, &dest, &data))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Write temp, fsync it, rename into place, fsync the directory.
fn naive_put(temp: &Path, dest: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create_new(temp)?;
    file.write_all(data)?;
    file.sync_data()?;
    let dir = dest.parent().ok_or_else(|| std::io::Error::other("key without a directory"))?;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::rename(temp, dest)?;
    std::fs::File::open(dir)?.sync_all()
}

async fn run_mode(mode: &str, options: &Options) -> Result<(), String> {
    let scratch = tempfile::tempdir_in(&options.dir).map_err(|e| e.to_string())?;
    let root = scratch.path().join("blobs");
    let writer = match mode {
        "group" => Writer::Group(FsBlobStore::open(&root).map_err(|e| e.to_string())?),
        _ => {
            std::fs::create_dir_all(root.join(".tmp")).map_err(|e| e.to_string())?;
            let lock = (mode == "serial").then(|| Arc::new(tokio::sync::Mutex::new(())));
            Writer::Naive { root: root.clone(), lock, next: Arc::new(AtomicU64::new(0)) }
        }
    };
    // Create the inbox directories first, as in a running server: the measure is
    // the steady state, not first-message directory creation.
    for inbox in 0..options.inboxes {
        let warm = BlobKey::parse(&format!("0xaa/inbox{inbox}@bench.test/00warm.eml")).ok_or("bad key")?;
        writer.put(warm, Bytes::from_static(b"warm")).await?;
    }

    let data = Bytes::from(vec![b'x'; options.size]);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + options.max_time;
    let tasks: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (writer, data, next, options) = (writer.clone(), data.clone(), Arc::clone(&next), options.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= options.count || Instant::now() >= deadline {
                        return Ok::<_, String>(latencies);
                    }
                    let inbox = n % options.inboxes;
                    let key = BlobKey::parse(&format!("0xaa/inbox{inbox}@bench.test/{}.eml", ulid::Ulid::new()))
                        .ok_or("bad key")?;
                    let t = Instant::now();
                    writer.put(key, data.clone()).await?;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let done = latencies.len();
    let pct = |p: f64| {
        let index = ((done as f64 * p) as usize).min(done.saturating_sub(1));
        latencies.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{mode:>6}: {done} puts of {} B, {} tasks, {} inboxes in {:.2} s = {:.0} msgs/s; latency p50 {:.2} ms, p99 {:.2} ms",
        options.size,
        options.concurrency,
        options.inboxes,
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let options = parse_options()?;
    for mode in &options.modes {
        run_mode(mode, &options).await?;
    }
    Ok(())
}
