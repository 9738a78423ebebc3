//! The listener over real loopback sockets with a small router: caps, header
//! and idle timeouts, lifetimes with and without an event stream, shutdown.
//! Waits are bounded; the assertions are on what happened, never on how long
//! it took.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Longest any test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/events",
            get(|| async {
                // One event every 100 ms, 30 of them: about 3 s of stream.
                let ticks = futures_util::stream::unfold(0u32, |n| async move {
                    if n == 30 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, Infallible>(Event::default().data(n.to_string())), n + 1))
                });
                Sse::new(ticks)
            }),
        )
}

struct Running {
    addr: SocketAddr,
    listener: Arc<HttpListener>,
    shutdown: CancellationToken,
    connections: TaskTracker,
}

async fn start(limits: HttpLimits) -> Running {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = HttpListener::new(app(), limits.clone(), limits.max_connections);
    let (shutdown, connections) = (CancellationToken::new(), TaskTracker::new());
    tokio::spawn(Arc::clone(&listener).serve(socket, None, shutdown.clone(), connections.clone()));
    Running { addr, listener, shutdown, connections }
}

fn limits() -> HttpLimits {
    HttpLimits {
        max_connections: 8,
        max_connections_per_ip: 4,
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        connection_lifetime: Duration::from_secs(2),
    }
}

/// Connects from `source` (a loopback address).
async fn connect_from(addr: SocketAddr, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the peer closes (or resets) the connection; returns what came.
/// Panics if it stays open past [`PATIENCE`].
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    out
}

/// One request on an open connection; returns the response head and body text
/// as far as `Content-Length` says.
async fn request(stream: &mut TcpStream, raw: &str) -> String {
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                    .unwrap_or(0);
                if body.len() >= length {
                    return text.into_owned();
                }
            }
        }
    })
    .await
    .expect("no response")
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test]
async fn over_a_cap_the_client_gets_503_problem_json_and_the_slot_comes_back() {
    let limits = HttpLimits { header_timeout: Duration::from_secs(30), ..limits() };
    let r = start(limits.clone()).await;
    // The per-address cap, from 127.0.0.1.
    let mut held = Vec::new();
    for _ in 0..limits.max_connections_per_ip {
        let mut s = connect_from(r.addr, [127, 0, 0, 1]).await;
        assert!(request(&mut s, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut over = connect_from(r.addr, [127, 0, 0, 1]).await;
    over.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.ok();
    let answer = String::from_utf8(read_to_close(&mut over).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("Retry-After: 5"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!((body["code"].as_str(), body["status"].as_u64()), (Some("TOO_MANY_CONNECTIONS"), Some(503)));
    // Another address still gets in, up to the total cap.
    for _ in 0..(limits.max_connections - limits.max_connections_per_ip) {
        let mut s = connect_from(r.addr, [127, 0, 0, 2]).await;
        assert!(request(&mut s, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut over = connect_from(r.addr, [127, 0, 0, 3]).await;
    assert!(String::from_utf8(read_to_close(&mut over).await).unwrap().starts_with("HTTP/1.1 503 "), "total cap");
    // Closing one frees its slot.
    drop(held.remove(0));
    wait_until("the slot was not freed", || r.listener.open_connections() < limits.max_connections).await;
    let mut again = connect_from(r.addr, [127, 0, 0, 3]).await;
    assert!(request(&mut again, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_silent_client_and_a_slowloris_are_closed_by_the_header_timeout() {
    let r = start(HttpLimits { idle_timeout: Duration::from_secs(60), ..limits() }).await;
    // Connects and says nothing.
    let mut silent = connect_from(r.addr, [127, 0, 0, 1]).await;
    // One byte of a request head every 200 ms, forever.
    let mut slow = connect_from(r.addr, [127, 0, 0, 1]).await;
    let trickle = tokio::spawn(async move {
        for byte in b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')).take(200) {
            if slow.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    read_to_close(&mut silent).await;
    assert!(tokio::time::timeout(PATIENCE, trickle).await.unwrap().unwrap(), "the slow client was never cut off");
    wait_until("connections still counted", || r.listener.open_connections() == 0).await;
}

#[tokio::test]
async fn keep_alive_waits_for_the_next_request_up_to_the_header_timeout() {
    let r = start(HttpLimits { idle_timeout: Duration::from_secs(60), connection_lifetime: Duration::from_secs(60), ..limits() }).await;
    let mut s = connect_from(r.addr, [127, 0, 0, 1]).await;
    for _ in 0..3 {
        assert!(request(&mut s, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.starts_with("HTTP/1.1 200"));
    }
    assert!(read_to_close(&mut s).await.is_empty(), "closed while waiting for the next head");
}

#[tokio::test]
async fn a_stalled_upload_is_closed_by_the_idle_timeout() {
    let r = start(HttpLimits { connection_lifetime: Duration::from_secs(60), ..limits() }).await;
    let mut s = connect_from(r.addr, [127, 0, 0, 1]).await;
    // A whole head, then 5 of the 100 body bytes it announced, then nothing.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhello").await.unwrap();
    read_to_close(&mut s).await;
}

#[tokio::test]
async fn a_busy_connection_is_closed_at_its_lifetime() {
    let r = start(HttpLimits { header_timeout: Duration::from_secs(1), idle_timeout: Duration::from_secs(60), ..limits() }).await;
    let mut s = connect_from(r.addr, [127, 0, 0, 1]).await;
    // Requests back to back keep it neither idle nor waiting long for a head.
    let mut served = 0;
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            if s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => served += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "never closed");
    assert!(served > 1, "served {served}");
}

#[tokio::test]
async fn an_event_stream_outlives_the_connection_lifetime_and_then_the_connection_closes() {
    // Lifetime 1 s; the stream runs about 3 s.
    let r = start(HttpLimits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        connection_lifetime: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let mut s = connect_from(r.addr, [127, 0, 0, 1]).await;
    s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let text = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("text/event-stream"), "{text}");
    for n in 0..30 {
        assert!(text.contains(&format!("data: {n}\n")), "event {n} missing: {text}");
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_streams_in_flight() {
    let r = start(HttpLimits { header_timeout: Duration::from_secs(30), idle_timeout: Duration::from_secs(60), connection_lifetime: Duration::from_secs(60), ..limits() }).await;
    let mut idle = connect_from(r.addr, [127, 0, 0, 1]).await;
    assert!(request(&mut idle, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await.starts_with("HTTP/1.1 200"));
    let mut streaming = connect_from(r.addr, [127, 0, 0, 1]).await;
    streaming.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let mut first = [0u8; 64];
    assert!(streaming.read(&mut first).await.unwrap() > 0);
    r.shutdown.cancel();
    r.connections.close();
    read_to_close(&mut idle).await;
    let rest = String::from_utf8(read_to_close(&mut streaming).await).unwrap();
    assert!(rest.contains("data: 29\n"), "the stream in flight was cut: {rest}");
    tokio::time::timeout(PATIENCE, r.connections.wait()).await.unwrap();
    assert_eq!(r.listener.open_connections(), 0);
}

/// A listener serving [`app`] over TLS with a fresh self-signed certificate,
/// and the certificate's fingerprint.
async fn start_tls(limits: HttpLimits) -> (Running, agentkeys_agent::tls::Fingerprint) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let fingerprint = agentkeys_agent::tls::Fingerprint::of(certified.cert.der());
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = HttpListener::new(app(), limits.clone(), limits.max_connections);
    let (shutdown, connections) = (CancellationToken::new(), TaskTracker::new());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(Arc::clone(&listener).serve(socket, Some(acceptor), shutdown.clone(), connections.clone()));
    (Running { addr, listener, shutdown, connections }, fingerprint)
}

/// `GET /ok` over TLS from `source`, trusting only `pin`.
async fn tls_get(addr: SocketAddr, source: [u8; 4], pin: agentkeys_agent::tls::Fingerprint) -> std::io::Result<String> {
    let trust = agentkeys_agent::tls::Trust { pin: Some(pin), ..Default::default() };
    let (config, _log) = agentkeys_agent::tls::client_config(&trust, &[b"http/1.1"]).unwrap();
    let tcp = connect_from(addr, source).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    tls.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await?;
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut out)).await.expect("no answer")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn https_serves_the_router_and_handshakes_count_against_the_caps() {
    let limits = HttpLimits { header_timeout: Duration::from_secs(30), ..limits() };
    let (r, pin) = start_tls(limits.clone()).await;
    let answer = tls_get(r.addr, [127, 0, 0, 1], pin).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    wait_until("the TLS connection is still counted", || r.listener.open_connections() == 0).await;
    // Connections that never finish their handshake hold their slots…
    let mut held = Vec::new();
    for _ in 0..limits.max_connections_per_ip {
        held.push(connect_from(r.addr, [127, 0, 0, 2]).await);
    }
    wait_until("stalled handshakes are not counted", || r.listener.open_connections() == limits.max_connections_per_ip)
        .await;
    // …so the next one from that address is closed without a (plaintext) answer,
    assert!(tls_get(r.addr, [127, 0, 0, 2], pin).await.is_err(), "over the per-address cap");
    let mut over = connect_from(r.addr, [127, 0, 0, 2]).await;
    assert!(read_to_close(&mut over).await.is_empty(), "a TLS listener must not answer in plaintext");
    // while another address is served.
    assert!(tls_get(r.addr, [127, 0, 0, 3], pin).await.unwrap().starts_with("HTTP/1.1 200"));
    drop(held);
    wait_until("the slots were not freed", || r.listener.open_connections() == 0).await;
    r.shutdown.cancel();
    r.connections.close();
}

#[tokio::test]
async fn a_silent_or_trickling_tls_handshake_is_closed_by_the_header_timeout() {
    let (r, pin) = start_tls(HttpLimits { idle_timeout: Duration::from_secs(60), ..limits() }).await;
    let mut silent = connect_from(r.addr, [127, 0, 0, 1]).await;
    // A TLS record header announcing a 512-byte ClientHello, then a byte every 200 ms.
    let mut slow = connect_from(r.addr, [127, 0, 0, 1]).await;
    let trickle = tokio::spawn(async move {
        for byte in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01].iter().chain(std::iter::repeat(&0u8)).take(200) {
            if slow.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(tokio::time::timeout(PATIENCE, trickle).await.unwrap().unwrap(), "the slow handshake was never cut off");
    wait_until("connections still counted", || r.listener.open_connections() == 0).await;
    // The listener still serves.
    assert!(tls_get(r.addr, [127, 0, 0, 1], pin).await.unwrap().starts_with("HTTP/1.1 200"));
}
