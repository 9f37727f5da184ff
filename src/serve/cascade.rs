//! The cascade one image runs: tier 1 (encoder + head) always, tier 2 (a VLM) when the profile has
//! one and tier 1 is unsure, within the deadline; then the durable log line before the reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::server::{AppState, Clock};
use super::shadow::ShadowJob;
use super::tier1::Tier1Error;
use crate::store::SampleId;
use crate::store::querylog::{QUERY_LOG_VERSION, QueryLogRecord, TierOutput};
use crate::train::UNDECIDED;

/// What the cascade made of one image.
pub(super) struct Outcome {
    /// The answer sent: finite in [0, 1] and never 0.5, or -1.
    pub prob: f32,
    /// Each tier's own score, when it produced one.
    pub tier1: Option<f32>,
    pub tier1_ms: f32,
    pub tier1_error: Option<String>,
    /// Present when the image was escalated (score or error).
    pub tier2: Option<TierOutput>,
    pub decided_by: u8,
    pub decode_error: Option<String>,
    pub model_version: String,
    /// Tier 1's features and head time, for a challenger scored in shadow.
    pub features: Option<Vec<f32>>,
    pub head_ms: f32,
}

impl Outcome {
    pub fn undecodable(s: &AppState, why: String) -> Self {
        s.metrics.undecodable();
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
            features: None,
            head_ms: 0.0,
        }
    }

    pub fn tiers(&self) -> Vec<TierOutput> {
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
pub(super) async fn answer(s: &Arc<AppState>, bytes: Bytes, started: Instant) -> Outcome {
    let t1 = s.tier1.clone();
    let left = s.deadline.saturating_sub(started.elapsed());
    let t = Instant::now();
    let img = bytes.clone();
    let by = started + s.deadline;
    let slot = tokio::time::timeout(left, s.tier1.decode_slots().acquire_owned()).await;
    let job = match slot {
        // The slot goes back when the decode ends, not when the deadline answers.
        Ok(Ok(permit)) => Some(tokio::task::spawn_blocking(move || {
            t1.predict_holding(&img, by, Some(permit))
        })),
        _ => None,
    };
    let mut o = Outcome {
        prob: UNDECIDED,
        tier1: None,
        tier1_ms: 0.0,
        tier1_error: None,
        tier2: None,
        decided_by: 1,
        decode_error: None,
        model_version: s.tier1.model_version(),
        features: None,
        head_ms: 0.0,
    };
    let Some(job) = job else {
        s.metrics.shed();
        tracing::warn!(profile = %s.profile, "no decode slot before the deadline; answering undecided");
        o.tier1_error = Some("deadline (every decode slot busy)".into());
        o.tier1_ms = t.elapsed().as_secs_f32() * 1000.0;
        s.metrics.answer_latency(started.elapsed());
        return o;
    };
    let left = s.deadline.saturating_sub(started.elapsed());
    let r = tokio::time::timeout(left, job).await;
    o.tier1_ms = t.elapsed().as_secs_f32() * 1000.0;
    match r {
        Ok(Ok(Ok(a))) => {
            s.metrics.tier1_latency(t.elapsed());
            (o.prob, o.tier1, o.model_version) = (a.prob, Some(a.prob), a.model_version);
            (o.features, o.head_ms) = (Some(a.features), a.head_ms);
        }
        Ok(Ok(Err(Tier1Error::Undecodable(e)))) => {
            let mut u = Outcome::undecodable(s, format!("image cannot be decoded: {e}"));
            u.tier1_ms = o.tier1_ms;
            return u;
        }
        Ok(Ok(Err(e))) => {
            s.metrics.shed();
            tracing::warn!(profile = %s.profile, "tier 1 gave no answer ({e}); answering undecided");
            o.tier1_error = Some(e.to_string());
        }
        Ok(Err(e)) => {
            s.metrics.shed();
            tracing::error!(profile = %s.profile, "tier 1 task failed: {e}; answering undecided");
            o.tier1_error = Some("tier 1 task failed".into());
        }
        Err(_) => {
            // The encoder worker drops the image unencoded if it has not started on it yet.
            s.metrics.shed();
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
            s.metrics.early_exit();
        }
        s.metrics.answer_latency(started.elapsed());
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
                s.metrics.tier2_latency(t.elapsed());
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
    s.metrics.answer_latency(started.elapsed());
    o
}

/// Who asked.
pub(super) struct Asker {
    pub request_id: String,
    /// The validator hotkey (`/ImageSynapse`); `None` for a local client.
    pub validator: Option<String>,
    /// False when no allow-list vouched for the hotkey (`serve.allow_any_validator`).
    pub allow_listed: bool,
}

/// Logs an answered request durably before its reply goes out. A failed append is counted and
/// logged; the answer is still sent (a validator's reward is lost for good, a log line can be
/// recovered from the reply logs).
pub(super) async fn log_answer(
    s: &Arc<AppState>,
    asker: Asker,
    received_at: chrono::DateTime<chrono::Utc>,
    started: Instant,
    bytes: &[u8],
    o: &Outcome,
) {
    let Some(log) = s.querylog.clone() else {
        return;
    };
    use base64::Engine as _;
    let (kept, cut) = log.image_to_log(bytes, o.decode_error.is_none());
    if let Some(c) = cut {
        s.metrics.querylog_image_cut(c.as_str());
    }
    let rec = QueryLogRecord {
        v: QUERY_LOG_VERSION,
        request_id: asker.request_id,
        received_at,
        answered_at: chrono::Utc::now(),
        validator_hotkey: asker.validator,
        unverified: !asker.allow_listed,
        profile: s.profile.clone(),
        image_b64: base64::engine::general_purpose::STANDARD.encode(kept),
        image_sha256: SampleId::of_bytes(bytes).to_string(),
        image_cut: cut,
        image_len: cut.map(|_| bytes.len() as u64),
        model_version: o.model_version.clone(),
        tiers: o.tiers(),
        decided_by: o.decided_by,
        final_score: o.prob,
        latency_ms: started.elapsed().as_secs_f32() * 1000.0,
        decode_error: o.decode_error.clone(),
    };
    if let Err(e) = log.log(&rec).await {
        s.metrics.querylog_error();
        tracing::error!("query log append failed: {e}");
    }
}

/// Offers the answered image to the shadow scorer, if one runs and a challenger is named. Called
/// with the answer already final; it never waits: under load (more than half the in-flight
/// limit busy) or with a full queue the job is dropped and counted.
pub(super) fn offer_shadow(
    s: &AppState,
    request_id: &str,
    validator: Option<String>,
    image: &Bytes,
    o: &mut Outcome,
) {
    let Some(shadow) = &s.shadow else {
        return;
    };
    if s.tier1.challenger().is_none() {
        return;
    }
    let (Some(features), Some(score)) = (o.features.take(), o.tier1) else {
        s.metrics.shadow_outcome("no_features");
        return;
    };
    if s.metrics.inflight.load(Ordering::Relaxed) > s.max_inflight / 2 {
        s.metrics.shadow_outcome("dropped_load");
        return;
    }
    let job = ShadowJob {
        request_id: request_id.to_string(),
        image: image.clone(),
        validator,
        champion_version: o.model_version.clone(),
        champion_score: score,
        tier1_ms: o.tier1_ms,
        champion_head_ms: o.head_ms,
        features,
        counts: s.metrics.shadow_counts(),
    };
    if !shadow.offer(job) {
        s.metrics.shadow_outcome("dropped_queue_full");
    }
}

/// A unique id for a local request.
pub(super) fn local_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "local-{}-{}-{}",
        Clock::System.now_ns(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
