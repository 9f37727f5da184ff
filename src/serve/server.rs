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
    /// With no metagraph, answer any hotkey that signs (logged as unverified); else refuse.
    pub allow_any_validator: bool,
    pub nonces: NonceTracker,
    pub clock: Clock,
    /// Answer by this long after receipt.
    pub deadline: Duration,
    pub body_limit_bytes: usize,
    /// The body must arrive within this long once the headers were accepted.
    pub body_timeout: Duration,
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
            allow_any_validator: false,
            nonces: NonceTracker::default(),
            clock: Clock::System,
            deadline: Duration::from_millis(d.deadline_ms),
            body_limit_bytes: d.body_limit_mib << 20,
            body_timeout: Duration::from_millis(d.body_timeout_ms),
            max_inflight: d.max_inflight,
            predict_local_only: d.predict_local_only,
            metrics: Metrics::new(profile),
            querylog: None,
            shadow: None,
        }
    }
}

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at most; one more is closed at once.
    pub max_connections: usize,
    /// Headers must arrive within this long, for the first request and between kept-alive ones.
    pub header_timeout: Duration,
    /// How long a graceful shutdown waits for connections to finish before closing them.
    pub drain: Duration,
}

impl ConnLimits {
    /// The limits of a serve configuration.
    pub fn of(cfg: &super::ServeConfig) -> Self {
        Self {
            max_connections: cfg.max_connections,
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            drain: Duration::from_millis(cfg.deadline_ms + 2000),
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self::of(&super::ServeConfig::default())
    }
}

/// Serves `router` on `listener` with the default [`ConnLimits`]; see [`serve_with_limits`].
pub async fn serve_with_peers(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, shutdown, ConnLimits::default()).await
}

/// Serves `router` on `listener` until `shutdown` completes, with the peer address available to
/// handlers (`/v1/predict` refuses non-loopback peers by default, and needs it).
///
/// A public port meets slow and idle clients, so unlike `axum::serve` every connection has a
/// header timeout (which also closes idle kept-alive connections), at most `max_connections` are
/// open (one more is closed at once, counted by the caller's logs), and shutdown waits at most
/// `drain` for requests in flight before it closes what is left: a client that never finishes
/// cannot hold the process, nor the last query-log move after it.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: ConnLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    max = limits.max_connections,
                    "connection limit reached; closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let app = router.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let app = app.clone();
                async move {
                    use tower_service::Service as _;
                    let mut app = app;
                    app.call(req.map(axum::body::Body::new)).await
                }
            });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.drain) => {
            tracing::warn!("connections still open after {:?}; closing them", limits.drain);
        }
    }
    Ok(())
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
