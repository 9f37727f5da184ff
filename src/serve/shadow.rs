//! Shadow scoring: the challenger named in the registry (`CHALLENGER.json`) scores every image the
//! champion answered, after the answer, and its score is logged beside the champion's.
//!
//! The challenger reads the champion's features (it must fit the same encoder), so a shadow score
//! costs one head forward and never an encoder pass. The request handler only offers a job to a
//! bounded queue (`try_send`, no waiting) once its reply is ready; one background thread scores
//! jobs and appends shadow lines to the query log without an fsync of their own. Under load shadow
//! work is what goes first: a job is dropped when the profile has more than half its in-flight
//! limit busy or the queue is full, and each drop is counted (`roadwork_shadow{outcome}`).
//! Nothing here can change an answer: the job is made from an answer already final.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::ServeError;
use super::metrics::Outcome;
use super::querylog::QueryLog;
use super::tier1::{Tier1, head_prob};
use crate::store::SampleId;
use crate::store::querylog::{QUERY_LOG_VERSION, SHADOW_KIND, ShadowRecord};

/// Shadow records written per log append at most.
const WRITE_BATCH: usize = 64;

/// One answered image waiting for the challenger.
pub(super) struct ShadowJob {
    pub request_id: String,
    /// The image (hashed on the scorer's thread, not the request's).
    pub image: axum::body::Bytes,
    pub validator: Option<String>,
    pub champion_version: String,
    pub champion_score: f32,
    pub tier1_ms: f32,
    pub champion_head_ms: f32,
    pub features: Vec<f32>,
    /// The offering profile's `roadwork_shadow` counters.
    pub counts: Family<Outcome, Counter>,
}

/// The shadow scorer shared by every profile; its thread stops when this is dropped.
pub struct Shadow {
    tx: SyncSender<ShadowJob>,
}

impl Shadow {
    /// Starts the scoring thread with a queue of `queue` jobs.
    pub fn start(tier1: Arc<Tier1>, log: Arc<QueryLog>, queue: usize) -> Result<Self, ServeError> {
        let (tx, rx) = sync_channel::<ShadowJob>(queue.max(1));
        std::thread::Builder::new()
            .name("shadow-scorer".into())
            .spawn(move || work(&rx, &tier1, &log))
            .map_err(|e| ServeError::Config(format!("cannot start the shadow scorer: {e}")))?;
        Ok(Self { tx })
    }

    /// Queues a job without waiting; `false` when the queue is full (the job is dropped).
    pub(super) fn offer(&self, job: ShadowJob) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

fn count(f: &Family<Outcome, Counter>, outcome: &'static str) {
    f.get_or_create(&Outcome { outcome }).inc();
}

fn work(rx: &Receiver<ShadowJob>, tier1: &Tier1, log: &QueryLog) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let challenger = tier1.challenger();
        let mut recs = Vec::with_capacity(jobs.len());
        let mut written = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some(head) = challenger
                .as_ref()
                .filter(|h| h.card.model_version != job.champion_version)
            else {
                count(&job.counts, "no_challenger");
                continue;
            };
            let t = Instant::now();
            let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                head_prob(head, &job.features)
            }));
            let Ok(score) = scored else {
                tracing::error!(version = %head.card.model_version, "the challenger head panicked");
                count(&job.counts, "failed");
                continue;
            };
            recs.push(ShadowRecord {
                v: QUERY_LOG_VERSION,
                kind: SHADOW_KIND.into(),
                request_id: job.request_id,
                image_sha256: SampleId::of_bytes(&job.image).to_string(),
                validator_hotkey: job.validator,
                champion_version: job.champion_version,
                champion_score: job.champion_score,
                challenger_version: head.card.model_version.clone(),
                challenger_score: score,
                tier1_ms: job.tier1_ms,
                champion_head_ms: job.champion_head_ms,
                challenger_head_ms: t.elapsed().as_secs_f32() * 1000.0,
                scored_at: chrono::Utc::now(),
            });
            written.push(job.counts);
        }
        let outcome = match log.append_shadow(&recs) {
            Ok(()) => "scored",
            Err(e) => {
                tracing::error!("shadow log append failed: {e}");
                "log_error"
            }
        };
        for c in &written {
            count(c, outcome);
        }
    }
}
