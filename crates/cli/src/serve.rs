//! `agentkeys serve`: opens the data directory, binds every listener, runs until
//! SIGINT/SIGTERM, then stops accepting and lets in-flight sessions finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentkeys_smtp::{ListenerKind, SmtpConfig, SmtpServer, SmtpStores};
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
    let mut filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("log filter {:?} is not valid (AGENTKEYS_LOG)", config.log))?;
    if !config.log.contains("sqlx") {
        // PostgreSQL's NOTICEs ("relation … already exists, skipping" at every
        // start) are not the operator's business unless the filter names sqlx.
        filter = filter.add_directive("sqlx::postgres::notice=warn".parse().context("log directive")?);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let metrics = PrometheusBuilder::new().install_recorder().context("cannot install the metrics recorder")?;

    // Watch the signals before anything is announced, so a SIGTERM right after
    // the listeners are printed is a graceful stop, not the default kill.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let dir = DataDir::create_or_open(&config).await?;
    let tls = crate::tls::load(&config)?;
    check_subaddressing(&dir, &config).await?;

    let inbound = bind(config.listen_inbound, "listen.inbound / AGENTKEYS_LISTEN_INBOUND").await?;
    let submission = bind(config.listen_submission, "listen.submission / AGENTKEYS_LISTEN_SUBMISSION").await?;
    let submission_tls = bind(config.listen_submission_tls, "listen.submission_tls / AGENTKEYS_LISTEN_SUBMISSION_TLS").await?;
    let http = bind(config.listen_http, "listen.http / AGENTKEYS_LISTEN_HTTP").await?;
    let https = match config.listen_https {
        Some(addr) => Some(bind(addr, "listen.https / AGENTKEYS_LISTEN_HTTPS").await?),
        None => None,
    };

    let (dns_config, dns_options) = crate::dns::resolver_config(&config.dns_nameservers)?;
    // SPF/DKIM/DMARC on the MX (crates/smtp/src/verdicts.rs), over the same DNS as delivery.
    let verifier = agentkeys_smtp::MailAuthVerifier::new(dns_config.clone(), dns_options.clone())
        .map_err(|e| anyhow::anyhow!("cannot set up the DNS resolver for SPF/DKIM/DMARC: {e}"))?;

    // Descriptors: the soft limit raised to the hard one, then shared out so
    // HTTP clients can never take the MX's (crates/cli/src/descriptors.rs).
    let fds = crate::descriptors::share(
        crate::descriptors::raise_nofile_limit(),
        config.max_connections,
        config.http.max_connections,
    );

    let mut smtp_config = SmtpConfig::new(config.hostname.clone());
    smtp_config.subaddressing = config.subaddressing;
    smtp_config.limits.max_message_size = config.max_message_size;
    smtp_config.max_connections = fds.smtp;
    smtp_config.max_connections_per_ip = config.max_connections_per_ip;
    smtp_config.auth_throttle_failures = config.auth_failures_per_ip;
    smtp_config.auth_throttle_window = Duration::from_secs(config.auth_failure_window_secs);
    // One DKIM signer for both submission doors (SMTP and HTTP send).
    let signer = crate::domain::DkimOutboundSigner::for_server(&dir);
    // Submissions that queue remote mail wake the delivery runner through this.
    let queued = Arc::new(tokio::sync::Notify::new());
    let mut smtp =
        SmtpServer::new(smtp_config, smtp_stores(&dir), dir.blobs.clone(), dir.hasher.clone(), tls.config.clone())
            // DKIM-sign the queued copy of submitted mail (crates/cli/src/domain.rs).
            .with_outbound_signer(signer.clone())
            .with_inbound_verifier(Arc::new(verifier))
            .with_queue_notify(queued.clone())
            // Inbox allow/block lists (issue 13 §2, crates/submission/src/guard.rs),
            // read through a one-second cache (store/src/policies.rs).
            .with_inbox_policies(Arc::new(agentkeys_store::CachedInboxPolicies::new(dir.meta.clone())), config.refuse_blocked_senders)
            // Per-agent send limits and review (issue 13 §3).
            .with_send_guardrails(dir.meta.clone());
    // Several nodes on one database: an address's AUTH failures, refused agent
    // keys and pairing opens on any node count against one budget
    // (crates/store/src/throttles.rs).
    let mut http_throttle = agentkeys_api::throttle::HttpThrottle::default();
    if let Some(counters) = &dir.shared_counters {
        smtp = smtp.with_auth_counters(counters.clone());
        http_throttle = http_throttle.with_shared_counters(counters.clone());
    }
    let server = Arc::new(smtp);

    let broker = Arc::new(crate::local_api::broker(&dir, &config)?);

    let data_dir = std::fs::canonicalize(&dir.path).unwrap_or_else(|_| dir.path.clone());
    println!("agentkeys {} serving hosted domain {}", env!("CARGO_PKG_VERSION"), config.domain);
    println!("  data dir          {}", data_dir.display());
    println!("  metadata          {}", dir.metadata_location);
    println!("  blobs             {}", dir.blob_location);
    println!(
        "  message bytes     {}",
        if dir.presigner.is_some() {
            "read by agents straight from the object store (presigned URLs)"
        } else {
            "served by this server"
        }
    );
    println!("  inbound MX        {}", inbound.local_addr()?);
    println!("  submission        {} (STARTTLS)", submission.local_addr()?);
    println!("  submission TLS    {} (implicit TLS)", submission_tls.local_addr()?);
    println!("  HTTP              {} (/healthz, /readyz, /metrics, /v1)", http.local_addr()?);
    if let Some(https) = &https {
        println!("  HTTPS             {} (the same API over TLS 1.2+)", https.local_addr()?);
    }
    println!(
        "  connections       SMTP {}, HTTP {} ({} per address); {} file descriptors",
        fds.smtp, fds.http, config.http.max_connections_per_ip, fds.limit
    );
    if fds.smtp < config.max_connections || fds.http < config.http.max_connections {
        tracing::warn!(
            limit = fds.limit,
            smtp = fds.smtp,
            http = fds.http,
            "the file descriptor limit is below the configured connection caps; caps lowered (raise `ulimit -n`)"
        );
    }
    println!("  OIDC issuer       {} (audience {})", config.public_url, config.oidc_audience);
    println!(
        "  TLS certificate   {}{}",
        tls.cert_path.display(),
        if tls.generated { " (self-signed, generated now)" } else { "" }
    );
    println!("  TLS fingerprint   SHA-256 {}", tls.fingerprint);

    // The MTA-STS policy of the hosted domains (RFC 8461), served to mta-sts.<domain>.
    let mta_sts_policy = config.mta_sts_policy().map_err(|e| anyhow::anyhow!("mta_sts: {e}"))?;
    if let Some(policy) = &mta_sts_policy {
        println!(
            "  MTA-STS           {} (id {}), /.well-known/mta-sts.txt for mta-sts.<hosted domain> behind an HTTPS front",
            policy.mode,
            policy.id()
        );
    }

    let shutdown = CancellationToken::new();
    let mut api_state = agentkeys_api::ApiState::new(broker.clone());
    if let Some(policy) = &mta_sts_policy {
        api_state = api_state.with_mta_sts_policy(policy.to_text());
    }
    // What a paired agent needs to send (crates/api/src/pairing.rs `ServerInfo`).
    api_state = api_state.with_server_info(agentkeys_api::pairing::ServerInfo {
        hostname: config.hostname.clone(),
        submission_port: submission.local_addr()?.port(),
    });
    // The owner's web console (crates/api/src/console): passkeys need the public
    // URL to be https:// or http://localhost.
    let mut console_origin = None;
    match agentkeys_api::console::ConsoleConfig::new(config.public_url.as_str()) {
        Ok(mut console) => {
            console = console.with_code_key(dir.console_code_key());
            // Agents pairing over HTTPS pin this certificate: the approvals page shows it to compare.
            if https.is_some() {
                console = console.with_certificate_fingerprint(tls.fingerprint.to_string());
            }
            println!("  console           {}/console (owners sign in with passkeys)", console.origin());
            console_origin = Some(console.origin().to_owned());
            api_state = api_state.with_console(console);
        }
        Err(e) => println!("  console           off ({e})"),
    }
    // Mail to owners' addresses (crates/api/src/notify.rs): DKIM-signed and
    // queued like any outbound mail, from notifications@<domain>.
    let notifier = if config.delivery_enabled {
        let notifier = agentkeys_api::notify::Notifier::new(
            dir.meta.clone(),
            dir.blobs.clone(),
            signer.clone(),
            &config.domain,
            console_origin,
            Some(queued.clone()),
        )
        .map_err(|e| anyhow::anyhow!("the notification sender: {e}"))?;
        println!("  owner notices     from {} (pairing requests, expiries, refused AUTHs, send limits and reviews, audit)", notifier.from_address().as_str());
        let notifier = Arc::new(notifier);
        api_state = api_state.with_notifier(notifier.clone());
        Some(notifier)
    } else {
        println!("  owner notices     off (delivery.enabled = false)");
        None
    };
    if let Some(presigner) = &dir.presigner {
        // Broker, not proxy: message bytes go from the object store to the agent.
        api_state = api_state.with_presigner(presigner.clone());
    }
    let api = agentkeys_api::router(
        api_state
            .with_meta(dir.meta.clone())
            .with_subaddressing(config.subaddressing)
            .with_mailroom(dir.blobs.clone())
            .with_shutdown(shutdown.clone())
            .with_throttle(http_throttle)
            .with_pairing_wakeups(dir.pairings.clone())
            .with_webhooks(dir.webhook_settings(&config))
            .with_send(agentkeys_api::send::SendService {
                blobs: dir.blobs.clone(),
                signer: Some(signer.clone()),
                hasher: dir.hasher.clone(),
                hostname: config.hostname.clone(),
                max_message_size: config.max_message_size,
                queued: Some(queued.clone()),
                idempotency: Some(dir.meta.clone()),
            }),
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
    // Our own accept loop: caps, header/idle timeouts, lifetimes (crates/cli/src/http_listener.rs).
    // Readiness (crates/cli/src/readiness.rs); the queue runner beats this heartbeat.
    let runner_heartbeat = config.delivery_enabled.then(agentkeys_delivery::Heartbeat::default);
    let readiness = crate::readiness::Readiness::new(dir.meta.clone(), dir.blobs.clone(), runner_heartbeat.clone());
    let http_listener = crate::http_listener::HttpListener::new(
        crate::http::router(metrics, readiness, api),
        config.http.clone(),
        fds.http,
    );
    if let Some(https) = https {
        // Same listener object: HTTP and HTTPS share the caps and the limits.
        let acceptor = tls.https_acceptor();
        listeners.spawn(Arc::clone(&http_listener).serve(https, Some(acceptor), shutdown.clone(), sessions.clone()));
    }
    listeners.spawn(http_listener.serve(http, None, shutdown.clone(), sessions.clone()));
    listeners.close();

    // Signed audit checkpoints (crates/cli/src/checkpoint.rs), a last one at shutdown.
    let checkpoints = tokio::spawn(crate::checkpoint::run(
        dir.meta.clone(),
        broker.authority().clone(),
        shutdown.clone(),
    ));

    // ---- Mail backends (crates/backends): domains whose mail lives at an external provider ----
    // TLS to providers always validates certificates: webpki roots plus delivery.ca_file.
    let provider_anchors = match &config.delivery_ca_file {
        Some(path) => agentkeys_delivery::load_trust_anchors(path)
            .map_err(|e| anyhow::anyhow!("delivery.ca_file / AGENTKEYS_DELIVERY_CA_FILE: {e}"))?,
        None => Vec::new(),
    };
    let provider_tls = agentkeys_delivery::TlsClients::new(&provider_anchors)
        .map_err(|e| anyhow::anyhow!("cannot set up the TLS client for mail backends: {e}"))?
        .validating_config();
    let backend_tasks = TaskTracker::new();
    let backends = agentkeys_backends::Backends::start(
            agentkeys_backends::BackendContext {
                store: dir.meta.clone(),
                smtp: server.clone(),
                sealer: dir.backend_sealer(),
                tls: provider_tls,
                hostname: config.hostname.clone(),
                backoff_scale: config.backends_backoff_scale,
                web_identity: Some(Arc::new(ServerWebIdentity {
                    authority: broker.authority().clone(),
                    issuer: config.public_url.clone(),
                    audience: config.oidc_audience.clone(),
                    subject: format!("agentkeys:server:{}", config.hostname),
                })),
            },
            shutdown.clone(),
            &backend_tasks,
        )
        .await
        .context("cannot start the mail backends (see `agentkeys domain list`)")?;
    backend_tasks.close();
    for (domain, kind) in backends.domains().await {
        println!("  backend           {domain}: {kind}");
    }
    // ---- end of mail backends ----

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
        let resolver: Arc<dyn agentkeys_delivery::Resolver> = Arc::new(
            agentkeys_delivery::HickoryResolver::new(dns_config.clone(), dns_options.clone())
                .context("cannot set up the DNS resolver (dns.nameservers / AGENTKEYS_DNS_NAMESERVERS)")?,
        );
        // TLS: the webpki roots plus delivery.ca_file, for MTA-STS MX connections and policy fetches.
        let anchors = match &config.delivery_ca_file {
            Some(path) => agentkeys_delivery::load_trust_anchors(path)
                .map_err(|e| anyhow::anyhow!("delivery.ca_file / AGENTKEYS_DELIVERY_CA_FILE: {e}"))?,
            None => Vec::new(),
        };
        let tls_clients = agentkeys_delivery::TlsClients::new(&anchors)
            .map_err(|e| anyhow::anyhow!("cannot set up the delivery TLS clients: {e}"))?;
        // MTA-STS (RFC 8461) for direct MX delivery: policies fetched over validated HTTPS.
        let mta_sts = Arc::new(agentkeys_delivery::MtaSts::new(
            resolver.clone(),
            Arc::new(agentkeys_delivery::HttpsPolicyFetcher::new(
                resolver.clone(),
                tls_clients.validating_config(),
                config.delivery_mta_sts_port,
            )),
        ));
        let runner = agentkeys_delivery::Runner::new(
            dir.meta.clone(),
            dir.blobs.clone(),
            resolver,
            agentkeys_delivery::DeliveryConfig {
                hostname: config.hostname.clone(),
                route: route.clone(),
                backoff_scale: config.delivery_backoff_scale,
                max_age: Duration::from_secs(config.delivery_max_age_secs),
                tls: if config.delivery_require_tls {
                    agentkeys_delivery::TlsPolicy::Required
                } else {
                    agentkeys_delivery::TlsPolicy::Opportunistic
                },
            },
        )
        .with_tls_clients(tls_clients)
        .with_send_sinks(backends.clone())
        .with_waker(queued)
        .with_heartbeat(runner_heartbeat.clone().unwrap_or_default());
        let runner = Arc::new(match &route {
            agentkeys_delivery::Route::Mx { .. } => runner.with_mta_sts(mta_sts),
            agentkeys_delivery::Route::Smarthost { .. } => runner,
        });
        Some(tokio::spawn(runner.run(shutdown.clone())))
    } else {
        println!("  delivery          off (delivery.enabled = false)");
        None
    };
    // ---- end of outbound delivery ----

    // ---- Webhooks: events fed from the store, delivered by a worker (crates/webhooks) ----
    let webhooks = start_webhooks(&dir, &config, shutdown.clone())?;
    println!(
        "  webhooks          {} deliveries at once; private targets {}",
        config.webhooks_concurrency,
        if config.webhooks_allow_private { "allowed (webhooks.allow_private)" } else { "refused" }
    );
    // ---- end of webhooks ----

    // ---- Owner notices: expiring grants and keys, refused AUTHs, the audit chain (crates/cli/src/notices.rs) ----
    let notices = notifier.map(|notifier| {
        tokio::spawn(crate::notices::run(
            notifier,
            dir.meta.clone(),
            Duration::from_secs(config.notice_sweep_secs),
            Duration::from_secs(config.notice_audit_secs),
            shutdown.clone(),
        ))
    });
    // ---- end of owner notices ----

    // ---- Retention: delete messages past their domain's retention, and expired inboxes ----
    let sweeper = tokio::spawn(sweep_retention(
        dir.blobs.clone(),
        dir.meta.clone(),
        config.retention_secs,
        Duration::from_secs(config.retention_sweep_secs),
        shutdown.clone(),
    ));
    // ---- end of retention ----
    // Crash leftovers (blobs no commit acknowledged), after readiness: see reconcile_blobs.
    let reconciler = tokio::spawn(reconcile_blobs(dir.blobs.clone(), dir.meta.clone(), shutdown.clone()));
    // Threads and words of rows indexed before they existed: see backfill_facts.
    let backfill = tokio::spawn(backfill_facts(dir.blobs.clone(), shutdown.clone()));

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
    sweeper.await.ok();
    if let Some(notices) = notices {
        notices.await.ok();
    }
    if tokio::time::timeout(grace, backend_tasks.wait()).await.is_err() {
        println!("grace period over; mail backends stop mid-copy and resume after restart");
    }
    // Attempts in flight end within their timeout; unrecorded ones are sent
    // again after their lease by the next start (at least once).
    if tokio::time::timeout(grace, webhooks).await.is_err() {
        println!("grace period over; webhook attempts in flight resume after restart");
    }
    reconciler.await.ok();
    backfill.await.ok();
    if tokio::time::timeout(grace, checkpoints).await.is_err() {
        println!("grace period over; no final audit checkpoint");
    }
    println!("stopped");
    Ok(())
}

/// Starts the webhook feeder and delivery worker; the handle ends when both have.
fn start_webhooks(dir: &DataDir, config: &Config, shutdown: CancellationToken) -> Result<tokio::task::JoinHandle<()>> {
    let store: Arc<dyn agentkeys_store::Webhooks> = dir.meta.clone();
    let added = Arc::new(tokio::sync::Notify::new());
    let feeder = agentkeys_webhooks::Feeder::new(
        store.clone(),
        dir.blobs.clone(),
        agentkeys_webhooks::FeederConfig {
            hostname: config.hostname.clone(),
            expiry_notice: Duration::from_secs(config.webhooks_expiry_notice_secs),
            expiry_check: Duration::from_secs(config.webhooks_expiry_check_secs.max(1)),
        },
        added.clone(),
    );
    let tls = agentkeys_webhooks::client::default_tls_config()
        .map_err(|e| anyhow::anyhow!("cannot set up the webhook TLS client: {e}"))?;
    let client = agentkeys_webhooks::WebhookClient::new(
        agentkeys_webhooks::TargetPolicy { allow_private: config.webhooks_allow_private },
        tls,
    );
    let worker = Arc::new(agentkeys_webhooks::Worker::new(
        store,
        dir.webhook_sealer(),
        client,
        agentkeys_webhooks::WorkerConfig {
            concurrency: config.webhooks_concurrency,
            backoff_scale: config.webhooks_backoff_scale,
        },
        added,
    ));
    let feeding = tokio::spawn(feeder.run(shutdown.clone()));
    let delivering = tokio::spawn(worker.run(shutdown));
    Ok(tokio::spawn(async move {
        feeding.await.ok();
        delivering.await.ok();
    }))
}

/// The store roles the MX uses, with RCPT asked through the recipient cache.
fn smtp_stores(dir: &DataDir) -> SmtpStores {
    let mut stores = SmtpStores::from(dir.meta.clone());
    stores.recipients = Arc::new(agentkeys_store::CachedRecipients::new(stores.recipients));
    stores
}

/// Removes the blobs no index commit acknowledged (a crash between a blob's
/// write and its index commit; the sender got no `250` and sent again) and the
/// rows whose blob is gone (`Mailroom::reconcile`). Runs in the background once
/// the node serves: the index, not the blob listing, decides what is delivered,
/// so nothing waits for it. Blobs too young to be judged (a node may still
/// commit them) are looked at once more when they are old enough. Ends at
/// shutdown.
async fn reconcile_blobs(
    mailroom: Arc<agentkeys_store::Mailroom>,
    meta: Arc<dyn agentkeys_store::MetadataStore>,
    shutdown: CancellationToken,
) {
    let later = Duration::from_secs((agentkeys_store::ACK_WINDOW_SECS + agentkeys_store::CLOCK_SKEW_SECS + 1).unsigned_abs());
    for pass in 0..2 {
        if pass > 0 {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(later) => {}
            }
        }
        let inboxes = match meta.list_inboxes(None).await {
            Ok(inboxes) => inboxes.into_iter().map(|i| (i.owner, i.address)).collect::<Vec<_>>(),
            Err(err) => {
                tracing::error!(%err, "cannot list inboxes to reconcile the blob store");
                return;
            }
        };
        let report = tokio::select! {
            () = shutdown.cancelled() => return,
            report = mailroom.reconcile(&inboxes, crate::now()) => report,
        };
        match report {
            Ok(r) => {
                if r.removed > 0 || r.dropped > 0 {
                    tracing::warn!(
                        removed = r.removed,
                        dropped = r.dropped,
                        "blob store reconciled with the message index (unacknowledged blobs removed, rows without blob dropped)"
                    );
                }
                if r.pending == 0 {
                    return;
                }
            }
            Err(err) => tracing::error!(%err, "cannot reconcile the blob store with the message index"),
        }
    }
}

/// Gives the rows indexed before threads and search existed their thread keys
/// and words (`Mailroom::backfill_facts`, batches of `BACKFILL_BATCH`, each
/// row marked done in the transaction that writes it, so a restart resumes and
/// a second node skips what is done). Runs once, in the background after the
/// node is ready; on a store with nothing to do it is one index read. Until it
/// ends, a search does not find the rows it has not reached. Ends at shutdown
/// (the batch in flight, one transaction, is abandoned and done at the next
/// start).
async fn backfill_facts(mailroom: Arc<agentkeys_store::Mailroom>, shutdown: CancellationToken) {
    let report = tokio::select! {
        () = shutdown.cancelled() => return,
        report = mailroom.backfill_facts(agentkeys_store::BACKFILL_BATCH) => report,
    };
    match report {
        Ok(r) if r.refreshed > 0 || r.missing > 0 => tracing::info!(
            refreshed = r.refreshed,
            missing = r.missing,
            "threads and search backfilled for messages indexed before them"
        ),
        Ok(_) => {}
        Err(err) => tracing::error!(%err, "cannot backfill threads and search; the next start tries again"),
    }
}

/// The retention sweeper: at start and then every `interval`, deletes the
/// messages older than their domain's retention (`default_secs` where the domain
/// sets none), each batch audited with its count, then removes the inboxes whose
/// expiry has passed with all their mail, one `inbox.expire` record each. Ends
/// at shutdown.
async fn sweep_retention(
    mailroom: Arc<agentkeys_store::Mailroom>,
    meta: Arc<dyn agentkeys_store::MetadataStore>,
    default_secs: u64,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let default_retention = i64::try_from(default_secs).unwrap_or(i64::MAX);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match mailroom.sweep_expired(crate::now(), default_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention sweep deleted expired messages"),
            Err(err) => tracing::error!(%err, "retention sweep failed; retrying at the next interval"),
        }
        match mailroom.sweep_expired_inboxes(meta.as_ref(), crate::now() - agentkeys_store::INBOX_SWEEP_GRACE_SECS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expiry sweep removed expired inboxes with their mail"),
            Err(err) => tracing::error!(%err, "expiry sweep failed; retrying at the next interval"),
        }
    }
}

/// Refuses to start when an existing inbox's name contains the configured
/// subaddress separator: mail to it would silently go to another inbox.
async fn check_subaddressing(dir: &DataDir, config: &Config) -> anyhow::Result<()> {
    let clashing: Vec<String> = dir
        .meta
        .list_inboxes(None)
        .await?
        .into_iter()
        .filter(|i| config.subaddressing.check_inbox(&i.address).is_err())
        .map(|i| i.address.to_string())
        .collect();
    if let Some(first) = clashing.first() {
        anyhow::bail!(
            "subaddress_separator / AGENTKEYS_SUBADDRESS_SEPARATOR {:?} occurs in {} existing inbox name(s), e.g. {first}: \
             mail to them would go to the name before the separator; pick another separator (+ is the default)",
            config.subaddressing.separator().map(String::from).unwrap_or_default(),
            clashing.len()
        );
    }
    Ok(())
}

/// The OIDC tokens the SES backend presents to STS: signed by the broker's own
/// issuer key (the JWKS AWS's OIDC provider trusts), `sub` naming this server,
/// `agentkeys_user_wallet` (claim and AWS session tag) naming the owner a
/// call is made for, or `agentkeys-server` for the server's own listing.
struct ServerWebIdentity {
    authority: Arc<dyn agentkeys_broker::TokenAuthority>,
    issuer: agentkeys_broker::oidc::IssuerUrl,
    audience: String,
    subject: String,
}

impl agentkeys_backends::ses::aws::WebIdentityTokens for ServerWebIdentity {
    fn mint(&self, wallet: &str, ttl: i64) -> Result<String, String> {
        use agentkeys_broker::oidc::{AwsSessionTags, OidcClaims, WALLET_CLAIM};
        let now = crate::now();
        let claims = OidcClaims {
            iss: self.issuer.as_str().to_owned(),
            sub: self.subject.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + ttl,
            jti: ulid::Ulid::new().to_string(),
            agentkeys_user_wallet: wallet.to_owned(),
            aws_tags: AwsSessionTags {
                principal_tags: std::collections::BTreeMap::from([(WALLET_CLAIM.to_owned(), vec![wallet.to_owned()])]),
                transitive_tag_keys: vec![WALLET_CLAIM.to_owned()],
            },
        };
        self.authority.sign_oidc(&claims).map_err(|e| format!("cannot sign the OIDC token: {e}"))
    }
}
