//! The HTTP listener: `/healthz` (liveness), `/readyz` (readiness,
//! crates/cli/src/readiness.rs), Prometheus `/metrics`, and the API
//! (`agentkeys_api::router`: `/v1/…` and the OIDC issuer's `/.well-known/…`).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Builds the router: the operational routes merged with the API's `api`.
pub(crate) fn router(metrics: PrometheusHandle, readiness: crate::readiness::Readiness, api: Router) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
        .merge(Router::new().route("/readyz", get(crate::readiness::readyz)).with_state(readiness))
        .merge(api)
}

async fn render_metrics(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}
