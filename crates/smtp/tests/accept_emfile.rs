//! Fault injection: the accept loop every listener uses (SMTP and HTTP) runs
//! out of file descriptors for real (`EMFILE`), keeps listening, and accepts
//! the waiting connection once descriptors are back, without a restart.
//! Alone in its test binary: the descriptor limit is the process's.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use agentkeys_smtp::{ACCEPT_ERROR_BACKOFF, next_connection};
use rustix::process::{Resource, getrlimit, setrlimit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "current_thread")]
async fn the_accept_loop_survives_running_out_of_descriptors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The client's connection completes in the listen backlog, before any accept.
    let client = std::net::TcpStream::connect(addr).unwrap();
    let original = getrlimit(Resource::Nofile);

    // Lower the soft limit to what is open now, then take every descriptor left
    // below it: the next accept has none.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut lowered = original;
    lowered.current = Some(open);
    setrlimit(Resource::Nofile, lowered).unwrap();
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
        assert!(fillers.len() < 100_000);
    }

    let shutdown = CancellationToken::new();
    let accepting = tokio::spawn(async move { next_connection(&listener, &shutdown, "test").await.map(|(_, peer)| peer) });
    // Several back-offs later it is still trying, not ended.
    tokio::time::sleep(ACCEPT_ERROR_BACKOFF * 5).await;
    assert!(!accepting.is_finished(), "the accept loop ended on EMFILE");

    drop(fillers);
    setrlimit(Resource::Nofile, original).unwrap();
    let peer = tokio::time::timeout(Duration::from_secs(30), accepting).await.expect("never accepted").unwrap();
    assert_eq!(peer, Some(client.local_addr().unwrap()), "the waiting connection is accepted once descriptors are back");
}
