//! The API without a socket: the same router `serve` runs, called in-process over
//! the data directory.
//!
//! Owner commands given no `--server` use it (`owner enroll`, `grant create|change|
//! revoke|list`, `key revoke`, `audit list`, and `demo seed`'s fixtures). Nothing
//! about the gate changes: the request is still signed with the owner's master
//! key, and the router's `OwnerApproval` extractor still checks it against the
//! public key stored at enrollment (±60 s), records the nonce in the database
//! shared with any running server, and the handlers write the same audited,
//! owner-scoped changes. The network hop was never the security boundary:
//! whoever can write the data directory can edit SQLite directly, which the
//! hash chain and the signed checkpoints expose; what the CLI must not offer is
//! a path that changes grants without the owner's signature, and it offers none.

use std::sync::Arc;

use agentkeys_broker::{BrokerConfig, BrokerParts, SystemClock, TokenBroker};
use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::{Request, header};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::config::Config;
use crate::datadir::DataDir;

/// The token broker of a data directory, as `serve` builds it.
pub(crate) fn broker(dir: &DataDir, config: &Config) -> Result<TokenBroker> {
    let authority = Arc::new(dir.token_authority()?);
    let backend = Arc::new(agentkeys_api::StoreBackend::new(dir.meta.clone(), authority.current_kid()));
    Ok(TokenBroker::new(BrokerParts {
        store: backend.clone(),
        audit: backend,
        authority,
        hasher: dir.hasher.clone(),
        clock: Arc::new(SystemClock),
        config: BrokerConfig { issuer: config.public_url.clone(), audience: config.oidc_audience.clone() },
    }))
}

/// The API router over an already open data directory.
pub(crate) fn router_for(dir: &DataDir, config: &Config) -> Result<axum::Router> {
    let broker = Arc::new(broker(dir, config)?);
    let signer = crate::domain::DkimOutboundSigner::for_server(dir);
    let mut state = agentkeys_api::ApiState::new(broker)
        .with_meta(dir.meta.clone())
        .with_webhooks(dir.webhook_settings(config))
        // `review approve` releases a held message here: signed with the
        // server's DKIM keys and queued for the server's runner (its 1 s poll).
        .with_send(agentkeys_api::send::SendService {
            blobs: dir.blobs.clone(),
            signer: Some(signer),
            hasher: dir.hasher.clone(),
            hostname: config.hostname.clone(),
            max_message_size: config.max_message_size,
            queued: None,
            idempotency: Some(dir.meta.clone()),
        });
    // The console's settings, so `owner passkey add` prints the server's link.
    if let Ok(console) = agentkeys_api::console::ConsoleConfig::new(config.public_url.as_str()) {
        state = state.with_console(console);
    }
    Ok(agentkeys_api::router(state))
}

/// The API router over the configured data directory, which must exist already:
/// an owner command without `--server` on a machine without the server's data
/// would otherwise create an empty one and fail with a confusing answer.
pub(crate) async fn router(config: &Config) -> Result<axum::Router> {
    if !DataDir::exists(config) {
        bail!(
            "no --server given and no data directory at {}; give the server's URL with --server (or AGENTKEYS_SERVER), or the data directory with --data-dir",
            config.data_dir.display()
        );
    }
    let dir = DataDir::open(config).await?;
    router_for(&dir, config)
}

/// One request through `router`; answers the status, the body as JSON (`Null` if
/// it is not JSON) and the body text.
pub(crate) async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(u16, Value, String)> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(a) = authorization {
        request = request.header(header::AUTHORIZATION, a);
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Body::from(body.unwrap_or_default().to_vec()))
        .with_context(|| format!("cannot build the request {method} {path}"))?;
    let response = router.clone().oneshot(request).await.with_context(|| format!("{method} {path} failed"))?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .with_context(|| format!("cannot read the answer of {method} {path}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok((status, value, text))
}
