//! The runner in process over the real stores, with the injectable resolver
//! pointing a domain's MX at a real receiving MTA on loopback (aiosmtpd,
//! tests/resources/smtp_sink.py).

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeys_delivery::{DeliveryConfig, MAX_AGE, Route, Runner, StaticResolver};
use agentkeys_store::{
    BlobKey, BlobStore, FsBlobStore, MetadataStore, NewOutbound, OutboundQueue, SqliteStore,
};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn mx_of_the_recipient_domain_from_the_resolver_reaches_the_mta() {
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir_all(&sink_dir).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/resources/smtp_sink.py");
    let mut sink = Command::new("python3")
        .arg(&script)
        .arg(&sink_dir)
        .args(["--tempfail", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3 smtp_sink.py (run scripts/test.sh, which installs aiosmtpd)");
    let mut line = String::new();
    BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();

    let meta = Arc::new(
        SqliteStore::open(&dir.path().join("meta.sqlite"))
            .await
            .unwrap(),
    );
    let blobs = Arc::new(FsBlobStore::open(&dir.path().join("blobs")).unwrap());
    let id = ulid::Ulid::new();
    let body = b"From: bot@agents.localhost\r\nTo: x@example.test\r\nSubject: via-mx\r\n\r\n.leading dot\r\n".to_vec();
    blobs
        .put_durable(vec![(BlobKey::queued(id), Bytes::from(body))])
        .await
        .unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    meta.enqueue_outbound(&NewOutbound {
        message_id: id.to_string(),
        sender: "bot@agents.localhost".parse().unwrap(),
        owner: "0x00000000000000000000000000000000000000aa"
            .parse()
            .unwrap(),
        recipients: vec!["x@example.test".to_owned()],
        size: 10,
        queued_at: now,
    })
    .await
    .unwrap();

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
        },
    ));
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let detail = meta.queue_show(&id.to_string()).await.unwrap();
        if detail.recipients[0].state == "delivered" {
            assert_eq!(detail.attempts.len(), 2, "{detail:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {detail:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.unwrap();
    sink.kill().ok();
    sink.wait().ok();
    let received = std::fs::read_to_string(sink_dir.join("1.eml")).unwrap();
    assert!(
        received.contains("\r\n.leading dot\r\n"),
        "dot-stuffing undone by the receiver: {received:?}"
    );
    assert!(
        blobs.get(&BlobKey::queued(id)).await.unwrap().is_none(),
        "the queued copy is removed once delivered"
    );
}
