//! Durable put latency: `FsBlobStore` against `S3BlobStore` on a local
//! S3-compatible server.
//!
//! ```text
//! cargo run --release -p agentkeys-store --features s3 --example blob_put_latency -- [options]
//!   -n N            puts per store (default 2000)
//!   -c C            concurrent writers (default 1: latency of one writer alone)
//!   --size BYTES    message size (default 10240)
//!   --port P        port for the s3s-fs this example starts (default 19150)
//!   --dir PATH      where to create the scratch roots (default the temp dir)
//! ```
//!
//! Starts `s3s-fs` (on PATH) on 127.0.0.1 over a scratch root, creates a
//! bucket, then times `put_durable` of one message (one recipient) N times on
//! each store, C writers at once. Each line reports the latency percentiles
//! and the rate.
//!
//! Not the same durability: `FsBlobStore` fsyncs file and directory before
//! answering; s3s-fs writes without fsync, and a real S3 answers after
//! replicating. The S3 column measures the client: signing, HTTP, the
//! checksum, the server's write to the page cache.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeys_store::s3::{ENV_ACCESS_KEY_ID, ENV_ENDPOINT, ENV_SECRET_ACCESS_KEY};
use agentkeys_store::{BlobKey, BlobStore, FsBlobStore, S3BlobStore, S3Config};
use bytes::Bytes;
use ulid::Ulid;

const ACCESS_KEY: &str = "bench-access";
const SECRET_KEY: &str = "bench-secret-0123456789";
/// How long s3s-fs may take to listen.
const SERVER_START: Duration = Duration::from_secs(20);

struct Options {
    count: usize,
    concurrency: usize,
    size: usize,
    port: u16,
    dir: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options { count: 2000, concurrency: 1, size: 10_240, port: 19150, dir: std::env::temp_dir() };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "-n" => options.count = number(&value)?.max(1),
            "-c" => options.concurrency = number(&value)?.max(1),
            "--size" => options.size = number(&value)?,
            "--port" => options.port = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--dir" => options.dir = PathBuf::from(value),
            other => return Err(format!("unknown option {other:?}; see the header of examples/blob_put_latency.rs")),
        }
    }
    Ok(options)
}

/// The s3s-fs this example started, killed by its PID on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(root: &Path, port: u16) -> Result<Server, String> {
    let child = Command::new("s3s-fs")
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot run s3s-fs ({e}): cargo install s3s-fs --version 0.14.1 --features binary --locked")
        })?;
    let server = Server(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > SERVER_START {
            return Err(format!("s3s-fs did not listen on {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// Runs `count` single-item puts with `concurrency` writers; returns every
/// put's latency, sorted, and the wall time.
async fn measure(store: Arc<dyn BlobStore>, options: &Options) -> Result<(Vec<Duration>, Duration), String> {
    let body = Bytes::from(vec![b'x'; options.size]);
    let per_writer = options.count.div_ceil(options.concurrency);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..options.concurrency {
        let (store, body) = (Arc::clone(&store), body.clone());
        writers.spawn(async move {
            let inbox = format!("0xbench/w{writer}@bench.test");
            let mut latencies = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let key = BlobKey::parse(&format!("{inbox}/{}.eml", Ulid::new())).ok_or("bad key")?;
                let put = Instant::now();
                store.put_durable(vec![(key, body.clone())]).await.map_err(|e| e.to_string())?;
                latencies.push(put.elapsed());
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut all = Vec::with_capacity(options.count);
    while let Some(joined) = writers.join_next().await {
        all.extend(joined.map_err(|e| e.to_string())??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok((all, wall))
}

fn report(name: &str, latencies: &[Duration], wall: Duration) {
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<5} puts={:<6} p50={:.3}ms p90={:.3}ms p99={:.3}ms max={:.3}ms rate={:.0}/s",
        latencies.len(),
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(at(1.0)),
        latencies.len() as f64 / wall.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let options = parse_options()?;
    let scratch = options.dir.join(format!("s3-bench-{}", Ulid::new()));
    std::fs::create_dir_all(scratch.join("s3")).map_err(|e| e.to_string())?;
    let outcome = run(&options, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

async fn run(options: &Options, scratch: &Path) -> Result<(), String> {
    let _server = start_server(&scratch.join("s3"), options.port)?;
    let endpoint = format!("http://127.0.0.1:{}", options.port);
    let config = S3Config::from_vars("s3://bench/mail", |name| match name {
        ENV_ENDPOINT => Some(endpoint.clone()),
        ENV_ACCESS_KEY_ID => Some(ACCESS_KEY.to_owned()),
        ENV_SECRET_ACCESS_KEY => Some(SECRET_KEY.to_owned()),
        _ => None,
    })
    .map_err(|e| e.to_string())?;
    let s3 = S3BlobStore::open(&config).map_err(|e| e.to_string())?;
    s3.create_bucket().await.map_err(|e| e.to_string())?;
    let fs = FsBlobStore::open(&scratch.join("fs")).map_err(|e| e.to_string())?;

    println!(
        "n={} c={} size={} bytes, scratch {}",
        options.count,
        options.concurrency,
        options.size,
        scratch.display()
    );
    let (latencies, wall) = measure(Arc::new(fs), options).await?;
    report("fs", &latencies, wall);
    let (latencies, wall) = measure(Arc::new(s3), options).await?;
    report("s3", &latencies, wall);
    Ok(())
}
