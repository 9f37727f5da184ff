//! The HTTP server: `POST /ImageSynapse` (the bittensor axon route a subnet-72 validator calls),
//! `POST /v1/predict` (local clients), `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! Each image runs the cascade: tier 1 (encoder + head) always, tier 2 (a VLM) when the
//! profile has one and tier 1 is unsure, within the deadline.
//!
//! Status codes follow the axon: 401 for a request that fails verification (missing headers,
//! body hash, signature, axon hotkey, nonce), 403 for a hotkey the metagraph does not allow, 404
//! for an unknown route, 503 when the configured in-flight limit is reached, 400 for a body that
//! is not a synapse. Refusals say why in a JSON `message`; internal failures say nothing and log.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::auth::{AuthError, NonceTracker, SignedRequest, body_hash, parse_nonce};
use super::metagraph::Metagraph;
use super::payload::decode_base64_image;
use super::querylog::QueryLog;
use super::tier1::{Tier1, Tier1Error};
use super::tier2::Tier2;
use crate::store::SampleId;
use crate::store::querylog::{QUERY_LOG_VERSION, QueryLogRecord, TierOutput};
use crate::train::UNDECIDED;

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

/// Upper bounds of the latency histograms, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.0, 10.0,
];

/// A Prometheus histogram (cumulative buckets, sum, count), lock-free.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{b}\"}} {}\n",
                self.buckets[i].load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "{name}_bucket{{{labels},le=\"+Inf\"}} {count}\n\
             {name}_sum{{{labels}}} {}\n\
             {name}_count{{{labels}}} {count}\n",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
}

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    tier1: Histogram,
    tier2: Histogram,
    answer: Histogram,
    /// Images answered by tier 1 without escalating.
    early_exit: AtomicU64,
    /// Escalations by outcome (`answered`, `timeout`, `http_error`, `garbage`, …).
    tier2_outcomes: Mutex<BTreeMap<&'static str, u64>>,
    undecodable: AtomicU64,
    /// Images answered undecided because tier 1 gave no score in time (or failed).
    tier1_shed: AtomicU64,
    querylog_errors: AtomicU64,
    inflight: AtomicUsize,
}

impl Metrics {
    fn count(&self, route: &str, status: StatusCode) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status.as_u16())).or_default() += 1;
        }
    }

    fn tier2_outcome(&self, outcome: &'static str) {
        if let Ok(mut m) = self.tier2_outcomes.lock() {
            *m.entry(outcome).or_default() += 1;
        }
    }

    fn render(&self, profile: &str, model_version: &str) -> String {
        let mut out = String::new();
        out.push_str("# HELP roadwork_requests_total Requests answered, by route and status.\n# TYPE roadwork_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                out.push_str(&format!(
                    "roadwork_requests_total{{profile=\"{profile}\",route=\"{route}\",status=\"{status}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP roadwork_tier_latency_seconds Latency of each cascade tier.\n# TYPE roadwork_tier_latency_seconds histogram\n");
        self.tier1.render(
            &mut out,
            "roadwork_tier_latency_seconds",
            &format!("profile=\"{profile}\",tier=\"1\""),
        );
        self.tier2.render(
            &mut out,
            "roadwork_tier_latency_seconds",
            &format!("profile=\"{profile}\",tier=\"2\""),
        );
        out.push_str("# HELP roadwork_answer_latency_seconds Receipt to answer, images only.\n# TYPE roadwork_answer_latency_seconds histogram\n");
        self.answer.render(
            &mut out,
            "roadwork_answer_latency_seconds",
            &format!("profile=\"{profile}\""),
        );
        let early = self.early_exit.load(Ordering::Relaxed);
        let answered = self.answer.count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "# HELP roadwork_early_exit_total Images answered by tier 1 alone.\n# TYPE roadwork_early_exit_total counter\nroadwork_early_exit_total{{profile=\"{profile}\"}} {early}\n\
             # HELP roadwork_early_exit_ratio Share of answered images that tier 1 decided alone.\n# TYPE roadwork_early_exit_ratio gauge\nroadwork_early_exit_ratio{{profile=\"{profile}\"}} {}\n",
            if answered == 0 { 0.0 } else { early as f64 / answered as f64 }
        ));
        out.push_str("# HELP roadwork_tier2_total Escalations to tier 2, by outcome.\n# TYPE roadwork_tier2_total counter\n");
        if let Ok(m) = self.tier2_outcomes.lock() {
            for (outcome, n) in m.iter() {
                out.push_str(&format!(
                    "roadwork_tier2_total{{profile=\"{profile}\",outcome=\"{outcome}\"}} {n}\n"
                ));
            }
        }
        out.push_str(&format!(
            "# HELP roadwork_undecodable_total Images answered -1.\n# TYPE roadwork_undecodable_total counter\nroadwork_undecodable_total{{profile=\"{profile}\"}} {}\n",
            self.undecodable.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP roadwork_tier1_shed_total Images answered undecided because tier 1 gave no score in time (deadline, shed unencoded, or failed).\n# TYPE roadwork_tier1_shed_total counter\nroadwork_tier1_shed_total{{profile=\"{profile}\"}} {}\n",
            self.tier1_shed.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP roadwork_querylog_errors_total Answers whose log append failed.\n# TYPE roadwork_querylog_errors_total counter\nroadwork_querylog_errors_total{{profile=\"{profile}\"}} {}\n",
            self.querylog_errors.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP roadwork_queue_depth Requests in flight.\n# TYPE roadwork_queue_depth gauge\nroadwork_queue_depth{{profile=\"{profile}\"}} {}\n",
            self.inflight.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP roadwork_model_info The head answering tier 1.\n# TYPE roadwork_model_info gauge\nroadwork_model_info{{profile=\"{profile}\",version=\"{model_version}\"}} 1\n"
        ));
        out
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
            metrics: Metrics::default(),
            querylog: None,
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
        .route("/ImageSynapse", post(image_synapse))
        .route("/v1/predict", post(predict))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(json!({ "message": message.to_string() })),
    )
        .into_response()
}

/// Decrements the in-flight gauge when a request ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(s: &AppState) -> Option<InFlight<'_>> {
    let n = s.metrics.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = InFlight(&s.metrics.inflight);
    (n <= s.max_inflight).then_some(guard)
}

/// What the cascade made of one image.
struct Outcome {
    /// The answer sent: finite in [0, 1] and never 0.5, or -1.
    prob: f32,
    /// Each tier's own score, when it produced one.
    tier1: Option<f32>,
    tier1_ms: f32,
    tier1_error: Option<String>,
    /// Present when the image was escalated (score or error).
    tier2: Option<TierOutput>,
    decided_by: u8,
    decode_error: Option<String>,
    model_version: String,
}

impl Outcome {
    fn undecodable(s: &AppState, why: String) -> Self {
        s.metrics.undecodable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(profile = %s.profile, "answering -1: {why}");
        Self {
            prob: -1.0,
            tier1: None,
            tier1_ms: 0.0,
            tier1_error: None,
            tier2: None,
            decided_by: 1,
            decode_error: Some(why),
            model_version: s.tier1.model_version(),
        }
    }

    fn tiers(&self) -> Vec<TierOutput> {
        let mut t = vec![TierOutput {
            tier: 1,
            score: self.tier1,
            latency_ms: self.tier1_ms,
            error: self
                .tier1_error
                .clone()
                .or_else(|| self.decode_error.clone()),
        }];
        t.extend(self.tier2.clone());
        t
    }
}

/// Never exactly 0.5 (the validator reads 0.5 as no answer), always finite.
fn servable(p: f32) -> f32 {
    if !p.is_finite() || p == 0.5 {
        UNDECIDED
    } else {
        p.clamp(0.0, 1.0)
    }
}

/// Shortest tier-2 budget worth a request, milliseconds.
const MIN_TIER2_MS: u64 = 20;

/// Runs the cascade within the deadline. Tier 1 first: an undecodable image answers -1; a
/// deadline miss or a failed task answers undecided (a valid, finite answer is worth more than
/// none). A tier-1 probability inside the escalation band goes to tier 2 with whatever time is
/// left; a slow, failing or nonsensical tier 2 leaves tier 1's answer standing.
async fn answer(s: &Arc<AppState>, bytes: Bytes, started: Instant) -> Outcome {
    let t1 = s.tier1.clone();
    let left = s.deadline.saturating_sub(started.elapsed());
    let t = Instant::now();
    let img = bytes.clone();
    let by = started + s.deadline;
    let job = tokio::task::spawn_blocking(move || t1.predict_before(&img, by));
    let mut o = Outcome {
        prob: UNDECIDED,
        tier1: None,
        tier1_ms: 0.0,
        tier1_error: None,
        tier2: None,
        decided_by: 1,
        decode_error: None,
        model_version: s.tier1.model_version(),
    };
    let r = tokio::time::timeout(left, job).await;
    o.tier1_ms = t.elapsed().as_secs_f32() * 1000.0;
    match r {
        Ok(Ok(Ok(a))) => {
            s.metrics.tier1.observe(t.elapsed());
            (o.prob, o.tier1, o.model_version) = (a.prob, Some(a.prob), a.model_version);
        }
        Ok(Ok(Err(Tier1Error::Undecodable(e)))) => {
            let mut u = Outcome::undecodable(s, format!("image cannot be decoded: {e}"));
            u.tier1_ms = o.tier1_ms;
            return u;
        }
        Ok(Ok(Err(e))) => {
            s.metrics.tier1_shed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(profile = %s.profile, "tier 1 gave no answer ({e}); answering undecided");
            o.tier1_error = Some(e.to_string());
        }
        Ok(Err(e)) => {
            s.metrics.tier1_shed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(profile = %s.profile, "tier 1 task failed: {e}; answering undecided");
            o.tier1_error = Some("tier 1 task failed".into());
        }
        Err(_) => {
            // The encoder worker drops the image unencoded if it has not started on it yet.
            s.metrics.tier1_shed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(profile = %s.profile, "tier 1 missed the deadline; answering undecided");
            o.tier1_error = Some("deadline".into());
        }
    }
    let escalate = match (&s.tier2, o.tier1) {
        (Some(t2), Some(p1)) if t2.cfg.escalates(p1) => Some((t2.clone(), p1)),
        _ => None,
    };
    let Some((t2, p1)) = escalate else {
        if o.tier1.is_some() {
            s.metrics.early_exit.fetch_add(1, Ordering::Relaxed);
        }
        s.metrics.answer.observe(started.elapsed());
        return o;
    };
    let budget = s
        .deadline
        .saturating_sub(started.elapsed())
        .saturating_sub(Duration::from_millis(t2.cfg.reserve_ms));
    let mut out = TierOutput {
        tier: 2,
        score: None,
        latency_ms: 0.0,
        error: None,
    };
    if budget < Duration::from_millis(MIN_TIER2_MS) {
        s.metrics.tier2_outcome("no_time");
        out.error = Some("no time left before the deadline".into());
    } else {
        let t = Instant::now();
        let r = t2.ask(&bytes, budget).await;
        out.latency_ms = t.elapsed().as_secs_f32() * 1000.0;
        match r {
            Ok(a) => {
                s.metrics.tier2.observe(t.elapsed());
                s.metrics.tier2_outcome("answered");
                out.score = Some(a.p_yes);
                o.prob = servable(t2.cfg.combine(p1, a.p_yes));
                o.decided_by = 2;
            }
            Err(e) => {
                s.metrics.tier2_outcome(e.kind());
                tracing::warn!(profile = %s.profile, "tier 2 gave no answer ({e}); keeping tier 1's");
                out.error = Some(e.to_string());
            }
        }
    }
    o.tier2 = Some(out);
    s.metrics.answer.observe(started.elapsed());
    o
}

/// Logs an answered request durably before its reply goes out. A failed append is counted and
/// logged; the answer is still sent (a validator's reward is lost for good, a log line can be
/// recovered from the reply logs).
async fn log_answer(
    s: &Arc<AppState>,
    request_id: String,
    validator: Option<String>,
    received_at: chrono::DateTime<chrono::Utc>,
    started: Instant,
    bytes: &[u8],
    o: &Outcome,
) {
    let Some(log) = s.querylog.clone() else {
        return;
    };
    use base64::Engine as _;
    let rec = QueryLogRecord {
        v: QUERY_LOG_VERSION,
        request_id,
        received_at,
        answered_at: chrono::Utc::now(),
        validator_hotkey: validator,
        profile: s.profile.clone(),
        image_b64: base64::engine::general_purpose::STANDARD.encode(bytes),
        image_sha256: SampleId::of_bytes(bytes).to_string(),
        model_version: o.model_version.clone(),
        tiers: o.tiers(),
        decided_by: o.decided_by,
        final_score: o.prob,
        latency_ms: started.elapsed().as_secs_f32() * 1000.0,
        decode_error: o.decode_error.clone(),
    };
    match tokio::task::spawn_blocking(move || log.append(&rec)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            s.metrics.querylog_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("query log append failed: {e}");
        }
        Err(e) => {
            s.metrics.querylog_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("query log task failed: {e}");
        }
    }
}

/// A unique id for a local request.
fn local_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "local-{}-{}-{}",
        Clock::System.now_ns(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A refusal before any work: status and the reason sent back.
struct Refused(StatusCode, String);

impl Refused {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

fn auth_error(e: AuthError) -> Refused {
    Refused(StatusCode::UNAUTHORIZED, e.to_string())
}

/// Who sent a verified request, and its unique id (`hotkey:uuid:nonce`).
struct Verified {
    validator: String,
    request_id: String,
}

/// Verifies the axon headers.
fn verify(s: &AppState, h: &HeaderMap) -> Result<Verified, Refused> {
    let get = |name: &'static str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::MissingHeader(name))
    };
    let Some(ours) = &s.axon_hotkey else {
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no axon hotkey configured (serve.axon_hotkey)".into(),
        ));
    };
    let req = (|| {
        Ok::<_, AuthError>(SignedRequest {
            nonce: get("bt_header_dendrite_nonce")?,
            dendrite_hotkey: get("bt_header_dendrite_hotkey")?,
            axon_hotkey: get("bt_header_axon_hotkey")?,
            uuid: get("bt_header_dendrite_uuid")?,
            body_hash: get("computed_body_hash")?,
            signature: get("bt_header_dendrite_signature")?,
        })
    })()
    .map_err(auth_error)?;
    if req.axon_hotkey != ours {
        return Err(auth_error(AuthError::WrongAxon {
            got: req.axon_hotkey.into(),
        }));
    }
    let want = body_hash(&[]);
    if req.body_hash != want {
        return Err(auth_error(AuthError::BodyHash {
            got: req.body_hash.into(),
            want,
        }));
    }
    let nonce = parse_nonce(req.nonce).map_err(auth_error)?;
    req.verify_signature().map_err(auth_error)?;
    if let Some(m) = &s.metagraph
        && let Err(why) = m.check(req.dendrite_hotkey)
    {
        return Err(Refused(StatusCode::FORBIDDEN, why.to_string()));
    }
    let timeout = h
        .get("timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(12.0);
    let endpoint = format!("{}:{}", req.dendrite_hotkey, req.uuid);
    s.nonces
        .check(&endpoint, nonce, timeout, s.clock.now_ns())
        .map_err(auth_error)?;
    Ok(Verified {
        validator: req.dendrite_hotkey.to_string(),
        request_id: format!("{}:{}:{}", req.dendrite_hotkey, req.uuid, req.nonce),
    })
}

async fn image_synapse(State(s): State<Arc<AppState>>, h: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let route = "/ImageSynapse";
    let Some(_slot) = admit(&s) else {
        s.metrics.count(route, StatusCode::SERVICE_UNAVAILABLE);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    };
    let Verified {
        validator,
        request_id,
    } = match verify(&s, &h) {
        Ok(v) => v,
        Err(r) => {
            s.metrics.count(route, r.0);
            return r.into_response();
        }
    };
    let mut synapse: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            s.metrics.count(route, StatusCode::BAD_REQUEST);
            return refuse(StatusCode::BAD_REQUEST, "body is not a synapse JSON object");
        }
    };
    let received_at = chrono::Utc::now();
    let image = synapse.get("image").and_then(Value::as_str).unwrap_or("");
    let (bytes, o) = match decode_base64_image(image, s.body_limit_bytes) {
        Ok(bytes) => {
            let bytes = Bytes::from(bytes);
            let o = answer(&s, bytes.clone(), started).await;
            (bytes, o)
        }
        Err(e) => (Bytes::new(), Outcome::undecodable(&s, e.to_string())),
    };
    let prediction = o.prob;
    log_answer(
        &s,
        request_id,
        Some(validator.clone()),
        received_at,
        started,
        &bytes,
        &o,
    )
    .await;
    synapse["prediction"] = json!(prediction);
    tracing::debug!(%validator, prediction, ms = started.elapsed().as_millis() as u64, "answered");
    s.metrics.count(route, StatusCode::OK);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        synapse.to_string(),
    )
        .into_response()
}

async fn predict(
    State(s): State<Arc<AppState>>,
    ext: axum::http::Extensions,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let route = "/v1/predict";
    let peer = ext
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if s.predict_local_only && !peer.is_some_and(|ip| ip.is_loopback()) {
        s.metrics.count(route, StatusCode::FORBIDDEN);
        return refuse(
            StatusCode::FORBIDDEN,
            "/v1/predict answers local clients only (serve.predict_local_only)",
        );
    }
    let Some(_slot) = admit(&s) else {
        s.metrics.count(route, StatusCode::SERVICE_UNAVAILABLE);
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    };
    let is_json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = if is_json {
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                s.metrics.count(route, StatusCode::BAD_REQUEST);
                return refuse(StatusCode::BAD_REQUEST, format!("bad JSON: {e}"));
            }
        };
        decode_base64_image(
            v.get("image").and_then(Value::as_str).unwrap_or(""),
            s.body_limit_bytes,
        )
        .map(Bytes::from)
        .map_err(|e| e.to_string())
    } else {
        Ok(body)
    };
    let received_at = chrono::Utc::now();
    let (bytes, o) = match bytes {
        Ok(b) => {
            let o = answer(&s, b.clone(), started).await;
            (b, o)
        }
        Err(e) => (Bytes::new(), Outcome::undecodable(&s, e)),
    };
    let request_id = local_request_id();
    log_answer(
        &s,
        request_id.clone(),
        None,
        received_at,
        started,
        &bytes,
        &o,
    )
    .await;
    s.metrics.count(route, StatusCode::OK);
    let tiers: Vec<Value> = o
        .tiers()
        .iter()
        .map(|t| json!({"tier": t.tier, "score": t.score, "latency_ms": t.latency_ms, "error": t.error}))
        .collect();
    axum::Json(json!({
        "prediction": o.prob,
        "decided_by": o.decided_by,
        "tiers": tiers,
        "model_version": o.model_version,
        "request_id": request_id,
        "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
        "error": o.decode_error,
    }))
    .into_response()
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "profile": s.profile,
        "model_version": s.tier1.model_version(),
    }))
    .into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&s.profile, &s.tier1.model_version()),
    )
        .into_response()
}
