//! The routes of a profile: `POST /ImageSynapse` (the bittensor axon route a subnet-72 validator
//! calls), `POST /v1/predict` (local clients), `GET /healthz`, `GET /metrics`. Each handler admits
//! the request (in-flight limit), verifies it where the route needs it, runs the cascade, logs the
//! answer durably and replies; every reply, refusals included, is counted by route and status.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::{AuthError, SignedRequest, body_hash, check_uuid, clamp_timeout, parse_nonce};
use super::cascade::{Asker, Outcome, answer, local_request_id, log_answer, offer_shadow};
use super::error::ApiError;
use super::payload::decode_base64_image;
use super::server::AppState;

/// Counts the reply of `route` by its status and turns a refusal into its response.
fn counted(s: &AppState, route: &str, r: Result<Response, ApiError>) -> Response {
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    s.metrics.count(route, resp.status());
    resp
}

/// Decrements the in-flight gauge when a request ends, however it ends.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes an in-flight slot, or refuses with 503 above `max_inflight`.
fn admit(s: &AppState) -> Result<InFlight<'_>, ApiError> {
    let n = s.metrics.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = InFlight(&s.metrics.inflight);
    if n <= s.max_inflight {
        Ok(guard)
    } else {
        Err(ApiError::Overloaded)
    }
}

/// Who sent a verified request, and its unique id (`hotkey:uuid:nonce`).
struct Verified {
    validator: String,
    request_id: String,
    /// The metagraph allowed the hotkey (false: answered under `serve.allow_any_validator`).
    allow_listed: bool,
}

/// Verifies the axon headers.
fn verify(s: &AppState, h: &HeaderMap) -> Result<Verified, ApiError> {
    let get = |name: &'static str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::MissingHeader(name))
    };
    let Some(ours) = &s.axon_hotkey else {
        return Err(ApiError::NoAxonHotkey);
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
    .map_err(ApiError::Unauthorized)?;
    if req.axon_hotkey != ours {
        return Err(ApiError::Unauthorized(AuthError::WrongAxon {
            got: req.axon_hotkey.into(),
        }));
    }
    let want = body_hash(&[]);
    if req.body_hash != want {
        return Err(ApiError::Unauthorized(AuthError::BodyHash {
            got: req.body_hash.into(),
            want,
        }));
    }
    let nonce = parse_nonce(req.nonce).map_err(ApiError::Unauthorized)?;
    check_uuid(req.uuid).map_err(ApiError::Unauthorized)?;
    req.verify_signature().map_err(ApiError::Unauthorized)?;
    let allow_listed = match &s.metagraph {
        Some(m) => {
            m.check(req.dendrite_hotkey)
                .map_err(|why| ApiError::Forbidden(why.to_string()))?;
            true
        }
        None if s.allow_any_validator => false,
        None => {
            return Err(ApiError::Forbidden(
                "no validator allow-list (serve.metagraph) is configured".into(),
            ));
        }
    };
    let timeout = clamp_timeout(h.get("timeout").and_then(|v| v.to_str().ok()));
    let endpoint = format!("{}:{}", req.dendrite_hotkey, req.uuid);
    s.nonces
        .check(&endpoint, nonce, timeout, s.clock.now_ns())
        .map_err(ApiError::Unauthorized)?;
    Ok(Verified {
        validator: req.dendrite_hotkey.to_string(),
        request_id: format!("{}:{}:{}", req.dendrite_hotkey, req.uuid, req.nonce),
        allow_listed,
    })
}

pub(super) async fn image_synapse(
    State(s): State<Arc<AppState>>,
    h: HeaderMap,
    body: Body,
) -> Response {
    let r = synapse_reply(&s, &h, body).await;
    counted(&s, "/ImageSynapse", r)
}

/// Reads the body once the headers have been accepted: at most `serve.body_limit_mib`, within
/// `serve.body_timeout_ms` (a client that stalls mid-body holds its slot no longer than that).
async fn read_body(s: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = s.body_limit_bytes;
    match tokio::time::timeout(s.body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            // `to_bytes` fails for a length over the limit and for a broken stream alike.
            let too_large = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::TooLarge(limit))
            } else {
                Err(ApiError::BadRequest(format!("body could not be read: {e}")))
            }
        }
        Err(_) => Err(ApiError::BodyTimeout),
    }
}

async fn synapse_reply(s: &Arc<AppState>, h: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let started = Instant::now();
    let _slot = admit(s)?;
    // The headers alone authenticate: nothing of the body is read for a stranger.
    let Verified {
        validator,
        request_id,
        allow_listed,
    } = verify(s, h)?;
    let body = read_body(s, body).await?;
    let mut synapse: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(ApiError::BadRequest(
                "body is not a synapse JSON object".into(),
            ));
        }
    };
    let received_at = chrono::Utc::now();
    let image = synapse.get("image").and_then(Value::as_str).unwrap_or("");
    let (bytes, mut o) = match decode_base64_image(image, s.body_limit_bytes) {
        Ok(bytes) => {
            let bytes = Bytes::from(bytes);
            let o = answer(s, bytes.clone(), started).await;
            (bytes, o)
        }
        Err(e) => (Bytes::new(), Outcome::undecodable(s, e.to_string())),
    };
    let prediction = o.prob;
    let asker = Asker {
        request_id: request_id.clone(),
        validator: Some(validator.clone()),
        allow_listed,
    };
    log_answer(s, asker, received_at, started, &bytes, &o).await;
    synapse["prediction"] = json!(prediction);
    offer_shadow(s, &request_id, Some(validator.clone()), &bytes, &mut o);
    tracing::debug!(%validator, prediction, ms = started.elapsed().as_millis() as u64, "answered");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        synapse.to_string(),
    )
        .into_response())
}

pub(super) async fn predict(
    State(s): State<Arc<AppState>>,
    ext: axum::http::Extensions,
    h: HeaderMap,
    body: Body,
) -> Response {
    let r = predict_reply(&s, &ext, &h, body).await;
    counted(&s, "/v1/predict", r)
}

async fn predict_reply(
    s: &Arc<AppState>,
    ext: &axum::http::Extensions,
    h: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let peer = ext
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if s.predict_local_only && !peer.is_some_and(|ip| ip.is_loopback()) {
        return Err(ApiError::Forbidden(
            "/v1/predict answers local clients only (serve.predict_local_only)".into(),
        ));
    }
    let _slot = admit(s)?;
    let body = read_body(s, body).await?;
    let is_json = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = if is_json {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("bad JSON: {e}")))?;
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
    let (bytes, mut o) = match bytes {
        Ok(b) => {
            let o = answer(s, b.clone(), started).await;
            (b, o)
        }
        Err(e) => (Bytes::new(), Outcome::undecodable(s, e)),
    };
    let request_id = local_request_id();
    let asker = Asker {
        request_id: request_id.clone(),
        validator: None,
        allow_listed: true,
    };
    log_answer(s, asker, received_at, started, &bytes, &o).await;
    offer_shadow(s, &request_id, None, &bytes, &mut o);
    let tiers: Vec<Value> = o
        .tiers()
        .iter()
        .map(|t| json!({"tier": t.tier, "score": t.score, "latency_ms": t.latency_ms, "error": t.error}))
        .collect();
    Ok(axum::Json(json!({
        "prediction": o.prob,
        "decided_by": o.decided_by,
        "tiers": tiers,
        "model_version": o.model_version,
        "request_id": request_id,
        "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
        "error": o.decode_error,
    }))
    .into_response())
}

pub(super) async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    let metagraph = s.metagraph.as_ref().map(|m| m.status());
    // A stale or missing allow-list refuses every validator: not "ok", though the process runs.
    // So is a query log below its disk floor: answers go on, their images are not kept.
    let querylog = s.querylog.as_ref().map(|q| q.status());
    let degraded =
        metagraph.as_ref().is_some_and(|m| m.stale) || querylog.is_some_and(|q| q.below_floor);
    axum::Json(json!({
        "status": if degraded { "degraded" } else { "ok" },
        "profile": s.profile,
        "model_version": s.tier1.model_version(),
        "challenger": s.tier1.challenger().map(|h| h.card.model_version.clone()),
        "metagraph": metagraph,
        "allow_any_validator": s.metagraph.is_none() && s.allow_any_validator,
        "querylog": querylog,
    }))
    .into_response()
}

pub(super) async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mg = s.metagraph.as_ref().map(|m| m.status());
    let ql = s.querylog.as_ref().map(|q| q.status());
    match s.metrics.render(&s.tier1.model_version(), mg.as_ref(), ql) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
