//! `agentkeys serve`: opens the data directory, binds every listener, runs until
//! SIGINT/SIGTERM, then stops accepting and lets in-flight sessions finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_broker::{BrokerConfig, BrokerParts, SystemClock, TokenBroker};
use agentkeys_smtp::{ListenerKind, SmtpConfig, SmtpServer};
use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::datadir::DataDir;

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (change it with {key})"))
}

pub(crate) async fn run(config: Config) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("log filter {:?} is not valid (AGENTKEYS_LOG)", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let metrics = PrometheusBuilder::new().install_recorder().context("cannot install the metrics recorder")?;

    let dir = DataDir::open(&config).await?;
    let tls = crate::tls::load(&config)?;

    let inbound = bind(config.listen_inbound, "listen.inbound / AGENTKEYS_LISTEN_INBOUND").await?;
    let submission = bind(config.listen_submission, "listen.submission / AGENTKEYS_LISTEN_SUBMISSION").await?;
    let submission_tls = bind(config.listen_submission_tls, "listen.submission_tls / AGENTKEYS_LISTEN_SUBMISSION_TLS").await?;
    let http = bind(config.listen_http, "listen.http / AGENTKEYS_LISTEN_HTTP").await?;

    let mut smtp_config = SmtpConfig::new(config.hostname.clone());
    smtp_config.limits.max_message_size = config.max_message_size;
    smtp_config.max_connections = config.max_connections;
    smtp_config.max_connections_per_ip = config.max_connections_per_ip;
    smtp_config.auth_throttle_failures = config.auth_failures_per_ip;
    smtp_config.auth_throttle_window = Duration::from_secs(config.auth_failure_window_secs);
    // Submissions that queue remote mail wake the delivery runner through this.
    let queued = Arc::new(tokio::sync::Notify::new());
    let server = Arc::new(
        SmtpServer::new(smtp_config, dir.meta.clone(), dir.blobs.clone(), dir.hasher.clone(), tls.config.clone())
            // DKIM-sign the queued copy of submitted mail (crates/cli/src/domain.rs).
            .with_outbound_signer(crate::domain::DkimOutboundSigner::for_server(&dir))
            .with_queue_notify(queued.clone()),
    );

    let authority = Arc::new(dir.token_authority()?);
    let backend = Arc::new(agentkeys_api::StoreBackend::new(dir.meta.clone(), authority.current_kid()));
    let broker = Arc::new(TokenBroker::new(BrokerParts {
        store: backend.clone(),
        audit: backend,
        authority,
        hasher: dir.hasher.clone(),
        clock: Arc::new(SystemClock),
        config: BrokerConfig { issuer: config.public_url.clone(), audience: config.oidc_audience.clone() },
    }));

    let data_dir = std::fs::canonicalize(&dir.path).unwrap_or_else(|_| dir.path.clone());
    println!("agentkeys {} serving hosted domain {}", env!("CARGO_PKG_VERSION"), config.domain);
    println!("  data dir          {}", data_dir.display());
    println!("  inbound MX        {}", inbound.local_addr()?);
    println!("  submission        {} (STARTTLS)", submission.local_addr()?);
    println!("  submission TLS    {} (implicit TLS)", submission_tls.local_addr()?);
    println!("  HTTP              {} (/healthz, /metrics, /v1)", http.local_addr()?);
    println!("  OIDC issuer       {} (audience {})", config.public_url, config.oidc_audience);
    println!(
        "  TLS certificate   {}{}",
        tls.cert_path.display(),
        if tls.generated { " (self-signed, generated now)" } else { "" }
    );

    let shutdown = CancellationToken::new();
    let api = agentkeys_api::router(
        agentkeys_api::ApiState::new(broker).with_meta(dir.meta.clone()).with_shutdown(shutdown.clone()),
    );
    let sessions = TaskTracker::new();
    let listeners = TaskTracker::new();
    for (listener, kind) in [
        (inbound, ListenerKind::Inbound),
        (submission, ListenerKind::Submission),
        (submission_tls, ListenerKind::SubmissionImplicitTls),
    ] {
        listeners.spawn(server.clone().serve(listener, kind, shutdown.clone(), sessions.clone()));
    }
    let http_shutdown = shutdown.clone();
    listeners.spawn(async move {
        let app = crate::http::router(metrics, api);
        if let Err(e) = axum::serve(http, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    listeners.close();

    // ---- Outbound delivery: the queue runner (crates/delivery) ----
    let delivery = if config.delivery_enabled {
        let route = match &config.delivery_smarthost {
            Some((host, port)) => agentkeys_delivery::Route::Smarthost { host: host.clone(), port: *port },
            None => agentkeys_delivery::Route::Mx { port: config.delivery_mx_port },
        };
        println!(
            "  delivery          {}",
            match &route {
                agentkeys_delivery::Route::Smarthost { host, port } => format!("smarthost {host}:{port}"),
                agentkeys_delivery::Route::Mx { port } => format!("MX, port {port}"),
            }
        );
        let resolver = agentkeys_delivery::HickoryResolver::from_system().context("cannot set up the DNS resolver")?;
        let runner = Arc::new(agentkeys_delivery::Runner::new(
            dir.meta.clone(),
            dir.blobs.clone(),
            Arc::new(resolver),
            agentkeys_delivery::DeliveryConfig {
                hostname: config.hostname.clone(),
                route,
                backoff_scale: config.delivery_backoff_scale,
                max_age: Duration::from_secs(config.delivery_max_age_secs),
                tls: if config.delivery_require_tls {
                    agentkeys_delivery::TlsPolicy::Required
                } else {
                    agentkeys_delivery::TlsPolicy::Opportunistic
                },
            },
        )
        .with_waker(queued));
        Some(tokio::spawn(runner.run(shutdown.clone())))
    } else {
        println!("  delivery          off (delivery.enabled = false)");
        None
    };
    // ---- end of outbound delivery ----

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    println!("{which}: no longer accepting; waiting up to {}s for in-flight sessions", grace.as_secs());
    shutdown.cancel();
    listeners.wait().await;
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        println!("grace period over; closing {} remaining session(s)", sessions.len());
    }
    // The runner stopped claiming at the cancel; unfinished attempts keep their
    // lease and are retried after it by the next start.
    if let Some(delivery) = delivery
        && tokio::time::timeout(grace, delivery).await.is_err()
    {
        println!("grace period over; delivery attempts in flight resume after restart");
    }
    println!("stopped");
    Ok(())
}
