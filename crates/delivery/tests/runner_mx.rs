//! The runner in process over the real stores, with the injectable resolver
//! pointing a domain's MX at a real receiving MTA on loopback (aiosmtpd,
//! tests/resources/smtp_sink.py).

#![allow(clippy::unwrap_used, missing_docs)]

use agentkeys_store::roles::*;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeys_delivery::{
    DeliveryConfig, MAX_AGE, MAX_CONNECTIONS_PER_HOST, MIN_LEASE, Route, Runner, StaticResolver,
    TlsPolicy,
};
use agentkeys_store::{
    BlobKey, BlobStore, FsBlobStore, NewOutbound, OutboundQueue, SqliteStore,
};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// aiosmtpd on a loopback port, killed on drop.
struct Sink {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sink {
    fn start(dir: &Path, args: &[&str]) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3 smtp_sink.py (run scripts/test.sh, which installs aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap();
        Sink {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.join(name)).map_or(0, |s| s.lines().count())
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The stores, with `bodies` queued for `x@example.test`, and a runner whose
/// resolver points example.test's MX at the sink.
async fn setup(
    dir: &Path,
    port: u16,
    bodies: &[Vec<u8>],
    tls: TlsPolicy,
) -> (Arc<SqliteStore>, Arc<FsBlobStore>, Arc<Runner>, Vec<ulid::Ulid>) {
    std::fs::create_dir_all(dir).unwrap();
    let meta = Arc::new(SqliteStore::open(&dir.join("meta.sqlite")).await.unwrap());
    let blobs = Arc::new(FsBlobStore::open(&dir.join("blobs")).unwrap());
    let mut ids = Vec::new();
    for body in bodies {
        let id = ulid::Ulid::new();
        blobs
            .put_durable(vec![(BlobKey::queued(id), Bytes::from(body.clone()))])
            .await
            .unwrap();
        meta.enqueue_outbound(&NewOutbound {
            message_id: id.to_string(),
            sender: "bot@agents.localhost".parse().unwrap(),
            owner: "0x00000000000000000000000000000000000000aa"
                .parse()
                .unwrap(),
            recipients: vec!["x@example.test".to_owned()],
            size: body.len() as u64,
            queued_at: now(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let resolver = StaticResolver::new()
        .with_mx("example.test", 10, "mx1.example.test")
        .with_ip("mx1.example.test", IpAddr::V4(Ipv4Addr::LOCALHOST));
    let runner = Arc::new(Runner::new(
        meta.clone(),
        blobs.clone(),
        Arc::new(resolver),
        DeliveryConfig {
            hostname: "mx.agents.localhost".into(),
            route: Route::Mx { port },
            backoff_scale: 0.001,
            max_age: MAX_AGE,
            tls,
        },
    ));
    (meta, blobs, runner, ids)
}

/// Waits until every message is in `state` (or panics after `limit`).
async fn wait_all(meta: &SqliteStore, ids: &[ulid::Ulid], state: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut done = true;
        for id in ids {
            let detail = meta.queue_show(&id.to_string()).await.unwrap();
            if detail.recipients[0].state != state {
                assert!(Instant::now() < deadline, "not {state}: {detail:?}");
                done = false;
                break;
            }
        }
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn mx_of_the_recipient_domain_from_the_resolver_reaches_the_mta() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(&dir.path().join("sink"), &["--tempfail", "1"]);
    let body = b"From: bot@agents.localhost\r\nTo: x@example.test\r\nSubject: via-mx\r\n\r\n.leading dot\r\n".to_vec();
    let (meta, blobs, runner, ids) =
        setup(dir.path(), sink.port, std::slice::from_ref(&body), TlsPolicy::Opportunistic).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_all(&meta, &ids, "delivered", Duration::from_secs(30)).await;
    let detail = meta.queue_show(&ids[0].to_string()).await.unwrap();
    assert_eq!(detail.attempts.len(), 2, "{detail:?}");
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        sink.read("1.eml").as_bytes(),
        body,
        "dot-stuffing undone by the receiver, nothing added or lost"
    );
    assert!(
        blobs.get(&BlobKey::queued(ids[0])).await.unwrap().is_none(),
        "the queued copy is removed once delivered"
    );
}

#[tokio::test]
async fn many_messages_share_a_few_pooled_pipelined_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(&dir.path().join("sink"), &["--pipelining"]);
    let count = 3 * MAX_CONNECTIONS_PER_HOST;
    let bodies: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("From: bot@agents.localhost\r\nSubject: pooled-{i}\r\n\r\n..two dots\r\n.\r\nend {i}\r\n").into_bytes())
        .collect();
    let (meta, _blobs, runner, ids) =
        setup(dir.path(), sink.port, &bodies, TlsPolicy::Opportunistic).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&runner).run(stop.clone()));
    wait_all(&meta, &ids, "delivered", Duration::from_secs(60)).await;
    assert!(
        runner.idle_connections("mx1.example.test") >= 1,
        "connections are kept for the next message"
    );
    stop.cancel();
    task.await.unwrap();
    let connections = sink.lines("connections");
    assert!(
        (1..=MAX_CONNECTIONS_PER_HOST).contains(&connections),
        "{count} messages over {connections} connections (limit {MAX_CONNECTIONS_PER_HOST})"
    );
    assert_eq!(sink.lines("attempts"), count, "one DATA per message, no duplicate");
    let mut received: Vec<Vec<u8>> = (1..=count)
        .map(|n| std::fs::read(sink.dir.join(format!("{n}.eml"))).unwrap())
        .collect();
    received.sort();
    let mut sent = bodies.clone();
    sent.sort();
    assert_eq!(received, sent, "every message arrived once, byte for byte");
}

#[tokio::test]
async fn an_attempt_longer_than_the_lease_keeps_it_and_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver takes longer to answer DATA than a whole (test-scaled) lease.
    let delay = MIN_LEASE + Duration::from_secs(3);
    let sink = Sink::start(
        &dir.path().join("sink"),
        &["--data-delay", &delay.as_secs().to_string()],
    );
    let body = b"From: bot@agents.localhost\r\nSubject: slow\r\n\r\nslow\r\n".to_vec();
    let (meta, _blobs, runner, ids) =
        setup(dir.path(), sink.port, &[body], TlsPolicy::Opportunistic).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_all(&meta, &ids, "delivered", Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap();
    let detail = meta.queue_show(&ids[0].to_string()).await.unwrap();
    assert_eq!(detail.attempts.len(), 1, "{detail:?}");
    assert_eq!(sink.lines("attempts"), 1, "the row was not claimed again while it ran");
}

#[tokio::test]
async fn required_tls_defers_a_plaintext_destination_and_uses_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Sink::start(&dir.path().join("plain"), &[]);
    let body = b"From: bot@agents.localhost\r\nSubject: secret\r\n\r\nsecret\r\n".to_vec();
    let (meta, _blobs, runner, ids) =
        setup(&dir.path().join("a"), plain.port, std::slice::from_ref(&body), TlsPolicy::Required).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_all(&meta, &ids, "deferred", Duration::from_secs(30)).await;
    stop.cancel();
    task.await.unwrap();
    let detail = meta.queue_show(&ids[0].to_string()).await.unwrap();
    let response = detail.recipients[0].last_response.clone().unwrap();
    assert!(response.starts_with("451 4.7.5"), "{response}");
    assert!(response.contains("STARTTLS"), "{response}");
    assert_eq!(plain.lines("attempts"), 0, "nothing was sent in plaintext");

    let tls = Sink::start(&dir.path().join("tls"), &["--starttls"]);
    let (meta, _blobs, runner, ids) =
        setup(&dir.path().join("b"), tls.port, std::slice::from_ref(&body), TlsPolicy::Required).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    wait_all(&meta, &ids, "delivered", Duration::from_secs(30)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(tls.lines("tls"), 1, "delivered after STARTTLS");
    assert_eq!(tls.read("1.eml").as_bytes(), body);
}

/// What a crash left in `queue/` is swept at the next start: the copy of a
/// finished message (old enough) goes, a young copy without rows (a submission
/// between its blob and its rows) and the copy of an unfinished message stay.
#[tokio::test]
async fn the_start_up_sweep_removes_only_old_copies_of_finished_messages() {
    let dir = tempfile::tempdir().unwrap();
    // A sink that answers 4xx forever keeps the queued message unfinished.
    let sink = Sink::start(&dir.path().join("sink"), &["--tempfail", "1000000"]);
    let body = b"From: bot@agents.localhost\r\nTo: x@example.test\r\nSubject: kept\r\n\r\nkept\r\n".to_vec();
    let (_meta, blobs, runner, ids) =
        setup(dir.path(), sink.port, std::slice::from_ref(&body), TlsPolicy::Opportunistic).await;
    let old_ms = u64::try_from(now() - 2 * i64::try_from(agentkeys_delivery::REAP_GRACE.as_secs()).unwrap()).unwrap() * 1000;
    let old_finished = ulid::Ulid::from_parts(old_ms, 1);
    let young = ulid::Ulid::new();
    for id in [old_finished, young] {
        blobs.put_durable(vec![(BlobKey::queued(id), Bytes::from_static(b"x"))]).await.unwrap();
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while blobs.get(&BlobKey::queued(old_finished)).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the old copy of a finished message was not swept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    assert!(blobs.get(&BlobKey::queued(young)).await.unwrap().is_some(), "a young copy stays");
    assert!(blobs.get(&BlobKey::queued(ids[0])).await.unwrap().is_some(), "an unfinished message's copy stays");
}
