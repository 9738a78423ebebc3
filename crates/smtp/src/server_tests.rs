//! Shell tests over real loopback sockets, with in-memory stores and a self-signed
//! certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::limits::IDLE_TIMEOUT;
use crate::testing::*;

fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let (server, client, _) = tls_configs_with_pem();
    (server, client)
}

/// Server and client configs around a fresh self-signed certificate, and its PEM.
fn tls_configs_with_pem() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = ck.cert.pem();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client), pem)
}

struct TestServer {
    server: Arc<SmtpServer>,
    meta: Arc<FakeMeta>,
    blobs: Arc<FakeBlobs>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    client_tls: Arc<rustls::ClientConfig>,
}

async fn start(kind: ListenerKind, config: SmtpConfig) -> TestServer {
    start_with_tls(kind, config, tls_configs()).await
}

async fn start_with_tls(
    kind: ListenerKind,
    config: SmtpConfig,
    (server_tls, client_tls): (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>),
) -> TestServer {
    let meta = Arc::new(FakeMeta::new());
    let blobs = Arc::new(FakeBlobs::default());
    let server = Arc::new(SmtpServer::new(
        config,
        SmtpStores::of(&meta),
        Arc::clone(&blobs) as Arc<dyn BlobStore>,
        hasher(),
        server_tls,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(Arc::clone(&server).serve(listener, kind, shutdown.clone(), tracker.clone()));
    TestServer {
        server,
        meta,
        blobs,
        addr,
        shutdown,
        tracker,
        client_tls,
    }
}

/// Reads one (possibly multi-line) reply.
async fn reply<R: AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed; got {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            return all;
        }
    }
}

async fn send<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(c: &mut BufReader<S>, text: &str) {
    c.get_mut().write_all(text.as_bytes()).await.unwrap();
    c.get_mut().flush().await.unwrap();
}

async fn assert_eof<R: AsyncBufRead + Unpin>(r: &mut R) {
    let mut line = String::new();
    // Generous: paused-clock tests wait for server-side timeouts of up to a minute.
    let n = tokio::time::timeout(Duration::from_secs(120), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close, got {line:?}");
}

async fn connect(t: &TestServer) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(t.addr).await.unwrap())
}

#[tokio::test]
async fn starttls_auth_plain_and_message_round_trip() {
    let t = start(
        ListenerKind::Submission,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let mut c = connect(&t).await;
    assert_eq!(
        reply(&mut c).await,
        "220 mx.agents.localhost ESMTP AgentKeys Mail\r\n"
    );
    send(&mut c, "EHLO client.test\r\n").await;
    let ehlo = reply(&mut c).await;
    assert!(
        ehlo.contains("250-STARTTLS\r\n") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    send(
        &mut c,
        &format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())),
    )
    .await;
    assert!(reply(&mut c).await.starts_with("538 5.7.11"));
    send(&mut c, "STARTTLS\r\n").await;
    assert_eq!(reply(&mut c).await, "220 2.0.0 Ready to start TLS\r\n");

    let tcp = c.into_inner();
    let connector = TlsConnector::from(Arc::clone(&t.client_tls));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut c = BufReader::new(tls);
    send(&mut c, "EHLO client.test\r\n").await;
    let ehlo = reply(&mut c).await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN\r\n") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    send(
        &mut c,
        &format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())),
    )
    .await;
    assert_eq!(
        reply(&mut c).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    send(
        &mut c,
        "MAIL FROM:<bot@agents.localhost>\r\nRCPT TO:<other@agents.localhost>\r\nRCPT TO:<friend@remote.test>\r\nDATA\r\n",
    )
    .await;
    assert!(reply(&mut c).await.starts_with("250 2.1.0"));
    assert!(reply(&mut c).await.starts_with("250 2.1.5"));
    assert!(reply(&mut c).await.starts_with("250 2.1.5"));
    assert!(reply(&mut c).await.starts_with("354 "));
    let body = "From: Bot <bot@agents.localhost>\r\nTo: friend@remote.test\r\nSubject: hi\r\n\r\n..dot-stuffed\r\nbye\r\n";
    send(&mut c, &format!("{body}.\r\n")).await;
    let accepted = reply(&mut c).await;
    let id = accepted
        .strip_prefix("250 2.0.0 Message accepted as ")
        .unwrap()
        .trim_end()
        .to_owned();
    send(&mut c, "QUIT\r\n").await;
    assert_eq!(reply(&mut c).await, "221 2.0.0 Bye\r\n");
    assert_eof(&mut c).await;

    let puts = t.blobs.puts.lock().unwrap().clone();
    assert_eq!(
        puts,
        vec![vec![
            format!("{}/other@agents.localhost/{id}.eml", owner(1)),
            format!("queue/{id}.eml")
        ]]
    );
    let stored = t
        .blobs
        .blobs
        .lock()
        .unwrap()
        .get(&format!("queue/{id}.eml"))
        .cloned()
        .unwrap();
    let stored = String::from_utf8(stored.to_vec()).unwrap();
    assert!(
        stored.starts_with(&format!(
            "Received: from client.test (127.0.0.1)\r\n\tby mx.agents.localhost with ESMTPSA id {id};\r\n\t"
        )),
        "{stored}"
    );
    assert!(stored.ends_with("\r\nFrom: Bot <bot@agents.localhost>\r\nTo: friend@remote.test\r\nSubject: hi\r\n\r\n.dot-stuffed\r\nbye\r\n"));
    let queue = t.meta.queue.lock().unwrap().clone();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].recipients, vec!["friend@remote.test".to_owned()]);
    assert_eq!(queue[0].message_id, id);

    t.shutdown.cancel();
    t.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), t.tracker.wait())
        .await
        .unwrap();
    assert_eq!(t.server.open_connections(), 0);
}

#[tokio::test]
async fn implicit_tls_listener_starts_with_tls() {
    let t = start(
        ListenerKind::SubmissionImplicitTls,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let tcp = TcpStream::connect(t.addr).await.unwrap();
    let connector = TlsConnector::from(Arc::clone(&t.client_tls));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut c = BufReader::new(tls);
    assert!(reply(&mut c).await.starts_with("220 mx.agents.localhost"));
    send(&mut c, "EHLO c\r\n").await;
    let ehlo = reply(&mut c).await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    send(
        &mut c,
        &format!("AUTH PLAIN {}\r\n", plain(BOT, &good_key())),
    )
    .await;
    assert!(reply(&mut c).await.starts_with("235 2.7.0"));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes_the_connection_with_421_4_4_2() {
    let t = start(
        ListenerKind::Inbound,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let mut c = connect(&t).await;
    let connected = tokio::time::Instant::now();
    assert!(reply(&mut c).await.starts_with("220 "));
    send(&mut c, "EHLO c\r\n").await;
    assert!(reply(&mut c).await.starts_with("250-"));
    let after_ehlo = tokio::time::Instant::now();
    assert_eq!(reply(&mut c).await, "421 4.4.2 Idle timeout, closing\r\n");
    assert!(after_ehlo - connected < IDLE_TIMEOUT);
    assert!(tokio::time::Instant::now() - after_ehlo >= IDLE_TIMEOUT);
    assert_eof(&mut c).await;
}

#[tokio::test]
async fn connection_caps_answer_421_4_7_0() {
    let mut config = SmtpConfig::new("mx.agents.localhost");
    config.max_connections_per_ip = 2;
    let t = start(ListenerKind::Inbound, config).await;
    let mut a = connect(&t).await;
    assert!(reply(&mut a).await.starts_with("220 "));
    let mut b = connect(&t).await;
    assert!(reply(&mut b).await.starts_with("220 "));
    let mut over = connect(&t).await;
    assert_eq!(
        reply(&mut over).await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert_eof(&mut over).await;
    drop(a);
    for _ in 0..100 {
        if t.server.open_connections() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(t.server.open_connections(), 1);
    let mut again = connect(&t).await;
    assert!(reply(&mut again).await.starts_with("220 "));

    let mut config = SmtpConfig::new("mx.agents.localhost");
    config.max_connections = 1;
    let t = start(ListenerKind::Inbound, config).await;
    let mut a = connect(&t).await;
    assert!(reply(&mut a).await.starts_with("220 "));
    let mut over = connect(&t).await;
    assert!(reply(&mut over).await.starts_with("421 4.7.0"));
}

#[test]
fn default_connection_caps() {
    let defaults = SmtpConfig::new("h");
    assert_eq!(
        defaults.max_connections,
        crate::limits::DEFAULT_MAX_CONNECTIONS
    );
    assert_eq!(
        defaults.max_connections_per_ip,
        crate::limits::DEFAULT_MAX_CONNECTIONS_PER_IP
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_and_ends_idle_sessions() {
    let t = start(
        ListenerKind::Inbound,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let mut idle = connect(&t).await;
    assert!(reply(&mut idle).await.starts_with("220 "));
    let mut busy = connect(&t).await;
    assert!(reply(&mut busy).await.starts_with("220 "));
    send(
        &mut busy,
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bot@agents.localhost>\r\nDATA\r\n",
    )
    .await;
    for _ in 0..4 {
        reply(&mut busy).await;
    }
    send(&mut busy, "Subject: in flight\r\n\r\n").await;
    // Let the server read the partial data before shutdown starts.
    tokio::time::sleep(Duration::from_millis(50)).await;

    t.shutdown.cancel();
    assert_eq!(
        reply(&mut idle).await,
        "421 4.3.2 Server shutting down, try again later\r\n"
    );
    assert_eof(&mut idle).await;
    // The message in flight is still accepted, then the session ends.
    send(&mut busy, "body\r\n.\r\n").await;
    assert!(
        reply(&mut busy)
            .await
            .starts_with("250 2.0.0 Message accepted")
    );
    assert!(reply(&mut busy).await.starts_with("421 4.3.2"));
    t.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), t.tracker.wait())
        .await
        .unwrap();
    assert!(
        TcpStream::connect(t.addr).await.is_err(),
        "listener is closed"
    );
    assert_eq!(t.blobs.puts.lock().unwrap().len(), 1);
}

/// A real peer: Python's smtplib does EHLO, STARTTLS (verifying our certificate),
/// AUTH, MAIL with SIZE, several RCPTs (one refused), dot-stuffed DATA and QUIT.
#[tokio::test]
async fn python_smtplib_interoperates() {
    const SCRIPT: &str = r#"
import smtplib, ssl, sys
port, cafile, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.client.test", timeout=10)
s.ehlo()
assert s.has_extn("starttls") and not s.has_extn("auth"), s.esmtp_features
s.starttls(context=ctx)
s.ehlo()
assert "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
s.login("bot@agents.localhost", key)
msg = "From: bot@agents.localhost\r\nTo: friend@remote.test\r\nSubject: py\r\n\r\n.leading dot\r\nbody\r\n"
refused = s.sendmail("bot@agents.localhost", ["friend@remote.test", "other@agents.localhost", "nobody@agents.localhost"], msg)
assert list(refused) == ["nobody@agents.localhost"] and refused["nobody@agents.localhost"][0] == 550, refused
code, _ = s.quit()
assert code == 221
print("ok")
"#;
    let (server_tls, client_tls, pem) = tls_configs_with_pem();
    let t = start_with_tls(
        ListenerKind::Submission,
        SmtpConfig::new("mx.agents.localhost"),
        (server_tls, client_tls),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("agentkeys-smtp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cafile = dir.join("ca.pem");
    std::fs::write(&cafile, pem).unwrap();
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(t.addr.port().to_string())
        .arg(&cafile)
        .arg(good_key())
        .output()
        .await
        .expect("python3 is a test peer (scripts/test.sh installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "smtplib failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let puts = t.blobs.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 1);
    assert_eq!(
        puts[0].len(),
        2,
        "one local copy and one queue copy: {puts:?}"
    );
    let stored = t
        .blobs
        .blobs
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
    let stored = String::from_utf8(stored.to_vec()).unwrap();
    assert!(
        stored.starts_with("Received: from py.client.test (127.0.0.1)"),
        "{stored}"
    );
    assert!(
        stored.ends_with("\r\n\r\n.leading dot\r\nbody\r\n"),
        "{stored}"
    );
}

#[tokio::test(start_paused = true)]
async fn tls_handshake_timeout_drops_a_silent_client() {
    let t = start(
        ListenerKind::SubmissionImplicitTls,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let mut c = connect(&t).await;
    let connected = tokio::time::Instant::now();
    assert_eof(&mut c).await;
    assert!(tokio::time::Instant::now() - connected >= crate::limits::TLS_HANDSHAKE_TIMEOUT);

    // The same after STARTTLS on the submission port.
    let t = start(
        ListenerKind::Submission,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let mut c = connect(&t).await;
    reply(&mut c).await;
    send(&mut c, "EHLO c\r\nSTARTTLS\r\n").await;
    reply(&mut c).await;
    assert_eq!(reply(&mut c).await, "220 2.0.0 Ready to start TLS\r\n");
    let asked = tokio::time::Instant::now();
    assert_eof(&mut c).await;
    assert!(tokio::time::Instant::now() - asked >= crate::limits::TLS_HANDSHAKE_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn write_timeout_drops_a_client_that_never_reads() {
    let t = start(
        ListenerKind::Inbound,
        SmtpConfig::new("mx.agents.localhost"),
    )
    .await;
    let (_read_half, mut write_half) = TcpStream::connect(t.addr).await.unwrap().into_split();
    let started = tokio::time::Instant::now();
    let flood = "NOOP\r\n".repeat(10_000);
    let writer =
        tokio::spawn(async move { while write_half.write_all(flood.as_bytes()).await.is_ok() {} });
    while t.server.open_connections() == 0 {
        tokio::task::yield_now().await;
    }
    while t.server.open_connections() > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(tokio::time::Instant::now() - started >= crate::limits::WRITE_TIMEOUT);
    assert!(tokio::time::Instant::now() - started < IDLE_TIMEOUT);
    writer.abort();
}
