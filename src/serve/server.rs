//! The HTTP server of one serving profile: its shared state and router. The routes are in
//! [`super::routes`], the cascade each image runs in [`super::cascade`], `/metrics` in
//! [`super::metrics`] and refusals in [`super::error`].
//!
//! Status codes follow the axon: 401 for a request that fails verification (missing headers,
//! body hash, signature, axon hotkey, nonce), 403 for a hotkey the metagraph does not allow, 404
//! for an unknown route, 503 when the configured in-flight limit is reached, 400 for a body that
//! is not a synapse. Refusals say why in a JSON `message`; internal failures say nothing and log.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use super::auth::NonceTracker;
use super::metagraph::Metagraph;
use super::metrics::Metrics;
use super::querylog::QueryLog;
use super::routes;
use super::shadow::Shadow;
use super::tier1::Tier1;
use super::tier2::Tier2;

/// Where "now" comes from: the system clock, or a fixed instant (tests replaying a captured
/// request at its capture time).
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    FixedNs(u128),
}

impl Clock {
    pub fn now_ns(&self) -> u128 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            Clock::FixedNs(t) => *t,
        }
    }
}

/// Everything a profile's handlers share.
pub struct AppState {
    pub profile: String,
    pub tier1: Arc<Tier1>,
    /// The VLM this profile escalates to; `None` answers with tier 1 alone (`speed`).
    pub tier2: Option<Arc<Tier2>>,
    /// Our hotkey (SS58); `/ImageSynapse` answers 503 without one.
    pub axon_hotkey: Option<String>,
    pub metagraph: Option<Arc<Metagraph>>,
    pub nonces: NonceTracker,
    pub clock: Clock,
    /// Answer by this long after receipt.
    pub deadline: Duration,
    pub body_limit_bytes: usize,
    pub max_inflight: usize,
    /// Answer `/v1/predict` only for loopback peers (the route has no authentication; a miner's
    /// public port must not lend its encoder or fill its query log for strangers).
    pub predict_local_only: bool,
    pub metrics: Metrics,
    /// Where answered requests are logged (fsync'd before the reply); `None` logs nothing.
    pub querylog: Option<Arc<QueryLog>>,
    /// Scores the registry's challenger after each answer (`None`: no shadow scoring).
    pub shadow: Option<Arc<Shadow>>,
}

impl AppState {
    /// A tier-1-only profile with the configuration defaults, no axon hotkey, no metagraph and
    /// no query log; callers set what they need with struct update syntax.
    pub fn new(profile: &str, tier1: Arc<Tier1>) -> Self {
        let d = super::ServeConfig::default();
        Self {
            profile: profile.to_string(),
            tier1,
            tier2: None,
            axon_hotkey: None,
            metagraph: None,
            nonces: NonceTracker::default(),
            clock: Clock::System,
            deadline: Duration::from_millis(d.deadline_ms),
            body_limit_bytes: d.body_limit_mib << 20,
            max_inflight: d.max_inflight,
            predict_local_only: d.predict_local_only,
            metrics: Metrics::new(profile),
            querylog: None,
            shadow: None,
        }
    }
}

/// Serves `router` on `listener` with the peer address available to handlers (`/v1/predict`
/// refuses non-loopback peers by default, and needs it), until `shutdown` completes.
pub async fn serve_with_peers(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The router of one profile.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.body_limit_bytes;
    Router::new()
        .route("/ImageSynapse", post(routes::image_synapse))
        .route("/v1/predict", post(routes::predict))
        .route("/healthz", get(routes::healthz))
        .route("/metrics", get(routes::metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
